"""Reading and patching TFLite flatbuffers: structure facts, XNNPACK partitions, extra outputs, constant buffers.

Uses the flatbuffer schema and tools that ship with ai-edge-litert; the interpreter runs the model as deployed
(XNNPACK) when inner tensors are needed for calibration.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from tddfa_edge.contracts.errors import ExportError

SIGNATURE = "serving_default"


def output_tensor_name(key: str) -> str:
    """litert-torch names the tensor of dict output ``key`` like this; the runtime matches outputs by it."""
    return f"{SIGNATURE}_{key}_output"


def tflite_schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def read_model(model: bytes):
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(model))


def write_model(obj) -> bytes:
    from ai_edge_litert.tools import flatbuffer_utils

    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


def _names(enum_cls) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def op_name(obj, op) -> str:
    code = obj.operatorCodes[op.opcodeIndex]
    return _names(tflite_schema().BuiltinOperator)[max(code.builtinCode, code.deprecatedBuiltinCode)]


def tensor_name(tensor) -> str:
    name = tensor.name
    return name.decode() if isinstance(name, bytes) else str(name)


def model_structure(model: bytes) -> dict:
    """Op histogram and dtypes of a TFLite flatbuffer (what the manifest's ``details`` records)."""
    obj = read_model(model)
    graph = obj.subgraphs[0]
    types = _names(tflite_schema().TensorType)
    ops: Counter = Counter()
    typed: Counter = Counter()
    for op in graph.operators:
        name = op_name(obj, op)
        ops[name] += 1
        # Keyed by the first activation input (the first constant when there is none, e.g. DEQUANTIZE of fp16 weights).
        inputs = [graph.tensors[i] for i in op.inputs if i >= 0]
        data_in = [t for t in inputs if obj.buffers[t.buffer].data is None] or inputs
        typed[f"{name}:{types[data_in[0].type] if data_in else '-'}->{types[graph.tensors[op.outputs[0]].type]}"] += 1

    def io(index):
        t = graph.tensors[index]
        q = t.quantization
        quant = None
        if q is not None and q.scale is not None and len(q.scale):
            quant = {"scale": [float(v) for v in q.scale], "zero_point": [int(v) for v in q.zeroPoint]}
        return {"name": tensor_name(t), "dtype": types[t.type].lower(), "shape": [int(v) for v in t.shape], "quantization": quant}

    return {
        "ops": dict(sorted(ops.items())),
        "ops_by_dtype": dict(sorted(typed.items())),
        "inputs": [io(i) for i in graph.inputs],
        "outputs": [io(i) for i in graph.outputs],
    }


def with_extra_outputs(model: bytes, tensor_indices: list[int]) -> bytes:
    obj = read_model(model)
    graph = obj.subgraphs[0]
    graph.outputs = list(graph.outputs) + [int(i) for i in tensor_indices]
    return write_model(obj)


def buffer_array(obj, tensor) -> np.ndarray:
    schema = tflite_schema()
    dtype = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.INT32: np.int32, schema.TensorType.INT8: np.int8}[tensor.type]
    return np.frombuffer(bytes(obj.buffers[tensor.buffer].data), dtype=dtype).reshape([int(v) for v in tensor.shape])


def set_buffer(obj, tensor, array: np.ndarray) -> None:
    obj.buffers[tensor.buffer].data = np.frombuffer(np.ascontiguousarray(array).tobytes(), dtype=np.uint8)


def last_fc(obj):
    graph = obj.subgraphs[0]
    fcs = [op for op in graph.operators if op_name(obj, op) == "FULLY_CONNECTED"]
    if len(fcs) != 1:
        raise ExportError(f"expected one FULLY_CONNECTED in the regressor, found {len(fcs)}")
    return graph, fcs[0]


def run_with_features(model: bytes, feature_tensor: int, batches: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` (XNNPACK, as deployed) on int8 batches; return (its output, the given inner tensor) dequantized."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=with_extra_outputs(model, [feature_tensor]), num_threads=1)
    inp = interp.get_input_details()[0]
    outputs = interp.get_output_details()
    batch_size = None
    out, feat = [], []
    for batch in batches:
        if batch.shape[0] != batch_size:
            interp.resize_tensor_input(inp["index"], list(batch.shape), strict=False)
            interp.allocate_tensors()
            batch_size = batch.shape[0]
        interp.set_tensor(inp["index"], batch)
        interp.invoke()
        for d in outputs:
            value = interp.get_tensor(d["index"])
            scale, zero = d["quantization"]
            value = (value.astype(np.float32) - zero) * scale if scale else value.astype(np.float32)
            (feat if d["index"] == feature_tensor else out).append(value.reshape(len(batch), -1))
    return np.concatenate(out), np.concatenate(feat)


def xnnpack_partitions(model: bytes) -> dict:
    """How ai-edge-litert's XNNPACK delegate splits the graph (one partition = everything delegated)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model, num_threads=1)
    interp.allocate_tensors()
    ops = interp._get_ops_details()  # the public API has no execution plan; delegate nodes are listed here
    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    produced = {int(t) for d in delegates for t in d["outputs"]}
    consumed = {int(t) for d in delegates for t in d["inputs"]}
    graph_outputs = {int(d["index"]) for d in interp.get_output_details()}
    outside = Counter(
        o["op_name"] for o in ops
        if o["op_name"] != "DELEGATE" and not any(int(t) in produced for t in o["outputs"])
        and any(int(t) in consumed or int(t) in graph_outputs for t in o["outputs"])
    )
    return {"partitions": len(delegates), "ops_outside_at_boundaries": dict(sorted(outside.items()))}
