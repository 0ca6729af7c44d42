"""ONNX graph access for the converters: initializers, producers/consumers, attributes, sessions, op counts,
and the graph rewrites that put every quantized op on one of onnxruntime's fast integer kernels.

Rewrites (all exact, up to float rounding):
- the in-graph pixel preprocessing (Transpose/Cast/Sub/Mul) is stripped so a uint8 input feeds a
  DequantizeLinear whose zero point does the centring;
- a first conv over 3 channels (a slow im2col GEMM in MLAS) is re-expressed over groups of 4 neighbouring
  pixels: a free NHWC reshape (H, W, 3) -> (H, W/4, 12) plus an equivalent 12-channel conv;
- FaceBoxes' CReLU becomes one conv with [W; -W], its average pool + 1x1 conv one 3x3 conv.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from tddfa_edge.contracts.errors import ExportError

# Pixels per column group of the rewritten first conv (= its stride for FaceBoxes, 2x it for MobileNet).
COLUMN_GROUP = 4
CALIBRATION_BATCH = 50

def onnx_module():
    import onnx

    return onnx


def initializers(graph) -> dict:
    return {t.name: t for t in graph.initializer}


def array(inits: dict, name: str) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(inits[name])


def store(inits: dict, name: str, value: np.ndarray) -> None:
    from onnx import numpy_helper

    inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), name))


def attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def set_attrs(node, **values) -> None:
    from onnx import helper

    for a in list(node.attribute):
        if a.name in values:
            node.attribute.remove(a)
    node.attribute.extend([helper.make_attribute(k, v) for k, v in values.items()])


def producers(graph) -> dict:
    return {out: n for n in graph.node for out in n.output}


def consumers(graph) -> dict:
    found: dict[str, list] = {}
    for n in graph.node:
        for t in n.input:
            found.setdefault(t, []).append(n)
    return found


def copy_model(model):
    return onnx_module().load_from_string(model.SerializeToString())


def ort_session(model, optimize: bool = True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one thread: reductions in a fixed order, so calibration is reproducible
    options.inter_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def with_outputs(model, names: list[str]):
    from onnx import TensorProto, helper

    m = copy_model(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in have])
    return m


def run_batches(session, feed: str, x: np.ndarray, names: list[str] | None = None, batch: int = CALIBRATION_BATCH):
    """Yields the outputs of consecutive batches of ``x``."""
    for start in range(0, len(x), batch):
        yield session.run(names, {feed: x[start:start + batch]})


def save_model(model, path: Path) -> None:
    onnx = onnx_module()
    model.producer_name = "tddfa-edge"
    model.producer_version = ""
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def structure(path: Path) -> dict:
    """Op counts of the saved QDQ graph and of the graph onnxruntime actually runs (ORT_ENABLE_ALL)."""
    import onnxruntime as ort

    onnx = onnx_module()
    saved = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        runs = Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    float_compute = ("Conv", "Gemm", "MatMul", "Softmax", "Add", "Sub", "Mul", "Neg", "Cast", "AveragePool",
                     "GlobalAveragePool", "Relu", "Concat")
    return {
        "qdq_graph_ops": dict(sorted(saved.items())),
        "onnxruntime_ops": dict(sorted(runs.items())),
        "float_ops_at_runtime": {k: v for k, v in sorted(runs.items()) if k in float_compute},
    }


def strip_pixel_preprocessing(graph, expected: list[str]):
    """Removes the in-graph Transpose/Cast/Sub(/Mul) at the input; returns the first conv."""
    head = list(graph.node)[: len(expected)]
    if [n.op_type for n in head] != expected:
        raise ExportError(f"unexpected fp32 graph head {[n.op_type for n in head]}, expected {expected}")
    first_conv = list(graph.node)[len(expected)]
    if first_conv.op_type != "Conv":
        raise ExportError(f"the preprocessing is followed by {first_conv.op_type}, expected Conv")
    del graph.node[: len(expected)]
    return first_conv


def column_group_weights(w: np.ndarray, kernel: int, stride: int, pad: int) -> np.ndarray:
    """Weights of a ``kernel`` x ``kernel`` conv (stride ``stride``, padding ``pad``) re-expressed over groups of
    COLUMN_GROUP neighbouring pixels (channel = pixel-in-group * C + c).

    Output column j of the original conv reads input columns ``stride*j - pad + k``. Grouped, output columns
    ``COLUMN_GROUP/stride`` at a time become extra output channels (phase-major), and the kernel spans the
    groups those columns touch. Returns (O * phases, C * COLUMN_GROUP, kernel, groups_spanned) for a conv
    with stride 1 over groups and left padding of one group.
    """
    out_channels, channels = w.shape[:2]
    phases = COLUMN_GROUP // stride
    taps = {}
    for phase in range(phases):
        for k in range(kernel):
            column = (phase * stride - pad + k)  # relative to the first column of the output's own group
            group, pixel = divmod(column, COLUMN_GROUP)
            taps[(phase, k)] = (group + 1, pixel)  # +1: the conv pads one group on the left
    span = max(g for g, _ in taps.values()) + 1
    grouped = np.zeros((phases * out_channels, COLUMN_GROUP * channels, kernel, span), dtype=w.dtype)
    for (phase, k), (group, pixel) in taps.items():
        grouped[phase * out_channels:(phase + 1) * out_channels, pixel * channels:(pixel + 1) * channels, :, group] += w[:, :, :, k]
    return grouped


def group_first_conv(graph, conv, input_name: str, kernel: int, stride: int, pad: int) -> tuple[str, int]:
    """Rewrites ``conv`` (NCHW input from an NHWC float tensor ``input_name``) to read column groups.

    Inserts ``Reshape(N, H, W/4, 12) -> Transpose`` in front; when the conv produced several output columns
    per group (phases > 1) also ``Transpose -> Reshape -> Transpose`` behind it, which only reinterpret NHWC
    memory. Returns (name of the grouped NCHW tensor, number of phases).
    """
    from onnx import helper, numpy_helper

    inits = initializers(graph)
    w = array(inits, conv.input[1]).astype(np.float32)
    b = array(inits, conv.input[2]).astype(np.float32)
    phases = COLUMN_GROUP // stride
    store(inits, conv.input[1], column_group_weights(w, kernel, stride, pad))
    store(inits, conv.input[2], np.tile(b, phases))
    span = array(inits, conv.input[1]).shape[3]
    # Right padding: whatever keeps one output group per input group.
    set_attrs(conv, kernel_shape=[kernel, span], pads=[pad, 1, pad, span - 2], strides=[stride, 1])
    channels = w.shape[1] * COLUMN_GROUP
    graph.initializer.append(numpy_helper.from_array(np.array([0, 0, -1, channels], np.int64), "pixel_groups_shape"))
    front = [
        helper.make_node("Reshape", [input_name, "pixel_groups_shape"], ["pixel_groups_nhwc"], name="pixel_groups_reshape"),
        helper.make_node("Transpose", ["pixel_groups_nhwc"], ["pixel_groups"], name="pixel_groups_nchw", perm=[0, 3, 1, 2]),
    ]
    conv.input[0] = "pixel_groups"
    for i, n in enumerate(front):
        graph.node.insert(i, n)
    if phases > 1:
        activation = consumers(graph)[conv.output[0]]
        if len(activation) != 1 or activation[0].op_type != "Relu":
            raise ExportError("the grouped first conv must be followed by one Relu")
        relu = activation[0]
        final = relu.output[0]
        relu.output[0] = "first_conv_grouped"
        graph.initializer.append(numpy_helper.from_array(np.array([0, 0, -1, w.shape[0]], np.int64), "first_conv_ungroup_shape"))
        back = [
            helper.make_node("Transpose", ["first_conv_grouped"], ["first_conv_grouped_nhwc"], name="first_conv_nhwc", perm=[0, 2, 3, 1]),
            helper.make_node("Reshape", ["first_conv_grouped_nhwc", "first_conv_ungroup_shape"], ["first_conv_nhwc"], name="first_conv_ungroup"),
            helper.make_node("Transpose", ["first_conv_nhwc"], [final], name="first_conv_nchw", perm=[0, 3, 1, 2]),
        ]
        at = list(graph.node).index(relu) + 1
        for i, n in enumerate(back):
            graph.node.insert(at + i, n)
    return "pixel_groups", phases


def set_float_input(graph, name: str, shape: list) -> None:
    from onnx import TensorProto, helper

    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    del graph.value_info[:]


def pixels_as_input(qmodel, quantized_tensor: str, float_input: str, shape: list) -> None:
    """Drops the QuantizeLinear of ``quantized_tensor``: the uint8 graph input ``image`` feeds its consumers,
    through the same shape-only ops (Reshape/Transpose) that fed the QuantizeLinear."""
    from onnx import TensorProto, helper

    graph = qmodel.graph
    q = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == quantized_tensor]
    if len(q) != 1:
        raise ExportError(f"expected one QuantizeLinear on {quantized_tensor}, found {len(q)}")
    q = q[0]
    graph.node.remove(q)
    for n in graph.node:
        for i, t in enumerate(n.input):
            if t == q.output[0]:
                n.input[i] = quantized_tensor if quantized_tensor != float_input else "image"
            elif t == float_input:
                n.input[i] = "image"
    # The shape-only ops now carry uint8; drop their stale float type annotations.
    uint8_path = set()
    frontier = {"image"}
    for n in graph.node:
        if n.op_type in ("Reshape", "Transpose") and n.input[0] in frontier:
            frontier.update(n.output)
            uint8_path.update(n.output)
    keep = [v for v in graph.value_info if v.name not in uint8_path]
    del graph.value_info[:]
    graph.value_info.extend(keep)
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info("image", TensorProto.UINT8, shape))


def integer_output(qmodel, name: str) -> None:
    """Drops the final DequantizeLinear: the graph returns the quantized tensor itself."""
    graph = qmodel.graph
    prod = producers(graph)
    dq = prod.get(name)
    if dq is None or dq.op_type != "DequantizeLinear":
        raise ExportError(f"output {name} is not produced by a DequantizeLinear")
    q = prod[dq.input[0]]
    graph.node.remove(dq)
    q.output[0] = name
    out = [o for o in graph.output if o.name == name][0]
    out.type.tensor_type.elem_type = initializers(graph)[q.input[2]].data_type


def fold_crelu(graph) -> int:
    """``relu(cat(conv(x), -conv(x)))`` -> ``relu(conv'(x))`` with weights [W; -W], bias [b; -b]."""
    inits = initializers(graph)
    prod = producers(graph)
    folded = 0
    for neg in [n for n in graph.node if n.op_type == "Neg"]:
        conv = prod[neg.input[0]]
        cats = [n for n in graph.node if n.op_type == "Concat" and list(n.input) == [conv.output[0], neg.output[0]]]
        if conv.op_type != "Conv" or len(cats) != 1 or attrs(cats[0]).get("axis") != 1:
            raise ExportError(f"unexpected CReLU pattern at {neg.name}")
        w = array(inits, conv.input[1]).astype(np.float32)
        b = array(inits, conv.input[2]).astype(np.float32)
        store(inits, conv.input[1], np.concatenate([w, -w]))
        store(inits, conv.input[2], np.concatenate([b, -b]))
        conv.output[0] = cats[0].output[0]
        graph.node.remove(neg)
        graph.node.remove(cats[0])
        folded += 1
    return folded


def fold_avgpool(graph) -> int:
    """3x3/s1 average pool (padding counted) + 1x1 conv -> one 3x3 conv with the 1x1 weights / 9 on every tap."""
    inits = initializers(graph)
    cons = consumers(graph)
    folded = 0
    for pool in [n for n in graph.node if n.op_type == "AveragePool"]:
        a = attrs(pool)
        users = cons.get(pool.output[0], [])
        if (a.get("kernel_shape") != [3, 3] or a.get("strides") != [1, 1] or a.get("pads") != [1, 1, 1, 1]
                or a.get("count_include_pad") != 1 or len(users) != 1 or users[0].op_type != "Conv"):
            continue
        conv = users[0]
        w = array(inits, conv.input[1]).astype(np.float32)
        if w.shape[2:] != (1, 1):
            continue
        store(inits, conv.input[1], np.repeat(np.repeat(w, 3, axis=2), 3, axis=3) / np.float32(9.0))
        set_attrs(conv, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        conv.input[0] = pool.input[0]
        graph.node.remove(pool)
        folded += 1
    return folded


YUNET_HEADS = (("cls", 1, True), ("obj", 1, True), ("bbox", 4, False), ("kps", 10, False))  # (kind, channels, sigmoid)


def merge_yunet_heads(graph, strides=(8, 16, 32)) -> list[str]:
    """YuNet's four prediction branches per level (each a 1x1 conv + a depthwise 3x3 conv) -> one 1x1 conv (C -> 16),
    one depthwise conv over the 16 channels, one Transpose/Reshape to (1, cells, 16) and a Split into cls/obj/bbox/kps
    (sigmoid on cls/obj). Exact (the branches only share their input). Output names are kept. Returns the new nodes'
    names (the float head the int8 converter leaves unquantized)."""
    from onnx import helper, numpy_helper

    inits = initializers(graph)
    by_name = {n.name: n for n in graph.node}
    cons = consumers(graph)
    head_nodes: list[str] = []
    for level, stride in enumerate(strides):
        try:
            pws = [by_name[f"/detector/bbox_head/multi_level_{k}.{level}/conv1/Conv"] for k, _, _ in YUNET_HEADS]
            dws = [by_name[f"/detector/bbox_head/multi_level_{k}.{level}/conv2/Conv"] for k, _, _ in YUNET_HEADS]
        except KeyError as exc:
            raise ExportError(f"unexpected YuNet head graph: no node {exc}") from None
        source = pws[0].input[0]
        if any(p.input[0] != source for p in pws):
            raise ExportError(f"YuNet head branches of stride {stride} do not share their input")
        old = list(pws) + list(dws)
        outputs = []
        for (kind, _, sigmoid), dw in zip(YUNET_HEADS, dws):
            transpose = cons[dw.output[0]][0]
            reshape = cons[transpose.output[0]][0]
            old += [transpose, reshape]
            last = reshape
            if sigmoid:
                last = cons[reshape.output[0]][0]
                old.append(last)
            if (transpose.op_type, reshape.op_type, last.op_type) != ("Transpose", "Reshape", "Sigmoid" if sigmoid else "Reshape"):
                raise ExportError(f"unexpected YuNet {kind}_{stride} tail: {transpose.op_type}, {reshape.op_type}, {last.op_type}")
            outputs.append(last.output[0])
        w1 = np.concatenate([array(inits, p.input[1]) for p in pws]).astype(np.float32)
        b1 = np.concatenate([array(inits, p.input[2]) for p in pws]).astype(np.float32)
        w2 = np.concatenate([array(inits, d.input[1]) for d in dws]).astype(np.float32)
        b2 = np.concatenate([array(inits, d.input[2]) for d in dws]).astype(np.float32)
        channels = int(w1.shape[0])
        p = f"/detector/bbox_head/merged_{stride}"
        graph.initializer.extend([
            numpy_helper.from_array(w1, f"{p}/pw.weight"), numpy_helper.from_array(b1, f"{p}/pw.bias"),
            numpy_helper.from_array(w2, f"{p}/dw.weight"), numpy_helper.from_array(b2, f"{p}/dw.bias"),
            numpy_helper.from_array(np.array([1, -1, channels], np.int64), f"{p}/cells_shape"),
            numpy_helper.from_array(np.array([k for _, k, _ in YUNET_HEADS], np.int64), f"{p}/split"),
        ])
        split_out = [f"{p}/{kind}_logits" if sigmoid else out for (kind, _, sigmoid), out in zip(YUNET_HEADS, outputs)]
        new = [
            helper.make_node("Conv", [source, f"{p}/pw.weight", f"{p}/pw.bias"], [f"{p}/pw"], name=f"{p}/pw/Conv", kernel_shape=[1, 1]),
            helper.make_node("Conv", [f"{p}/pw", f"{p}/dw.weight", f"{p}/dw.bias"], [f"{p}/dw"], name=f"{p}/dw/Conv",
                             kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=channels),
            helper.make_node("Transpose", [f"{p}/dw"], [f"{p}/nhwc"], name=f"{p}/Transpose", perm=[0, 2, 3, 1]),
            helper.make_node("Reshape", [f"{p}/nhwc", f"{p}/cells_shape"], [f"{p}/cells"], name=f"{p}/Reshape"),
            helper.make_node("Split", [f"{p}/cells", f"{p}/split"], split_out, name=f"{p}/Split", axis=2),
        ]
        new += [helper.make_node("Sigmoid", [f"{p}/{kind}_logits"], [out], name=f"{p}/{kind}/Sigmoid")
                for (kind, _, sigmoid), out in zip(YUNET_HEADS, outputs) if sigmoid]
        at = min(list(graph.node).index(n) for n in old)
        for n in old:
            graph.node.remove(n)
        for i, n in enumerate(new):
            graph.node.insert(at + i, n)
        head_nodes += [n.name for n in new]
    used = {t for n in graph.node for t in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    del graph.value_info[:]
    return head_nodes
