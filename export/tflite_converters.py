"""TFLite converters: litert-torch straight from PyTorch, PT2E quantization, no TensorFlow.

Inputs are pixels the way frames arrive (NHWC, BGR, batch resizable by the runtime):
- float models (fp32, fp16 weights) take uint8 pixels; the graph casts, centres and scales;
- integer models take int8 ``pixel - 128`` (a uint8 image with its top bit flipped, no arithmetic):
  the input tensor's own quantization makes it the network's real input and the remaining
  per-network offset is folded into the first BatchNorm, so the board does no float work.

Calibration uses only ``ctx.calibration_crops()`` and ``ctx.detector_frames()`` (never AFLW2000-3D), in a
fixed order, with deterministic observers and numpy least squares: the same export gives the same bytes.

What each variant is, and why (numbers on this project's data, see the test file and the manifest details):
- regressor fp32 / fp16: the fp32 graph; fp16 stores weights as float16 (DEQUANTIZE in front of each op).
- regressor int8: int8 backbone, global average + FC in fp32; the FC is re-fitted on the int8 features.
- regressor int8-full: every op int8. The loss sat in the FC output: one per-tensor int8 grid for 62 parameters
  whose ranges differ 10^5x. The FC rows are rescaled in the graph so every parameter fills the grid and the
  manifest carries one scale/zero point per parameter; the FC is then re-fitted like int8's.
- detector fp32 / int8: FaceBoxes rewritten so everything runs inside XNNPACK (see ``EdgeFaceBoxes``).
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tddfa_edge.runtime.detector import BGR_MEAN
from tddfa_edge.runtime.errors import ExportError

from .artifacts import ExportContext, ModelArtifact, check_file, register, regressor_io
from .graph_wrappers import RegressorFromPixels
from .onnx_converters import detector_io

SIGNATURE = "serving_default"
# PT2E's module-type filter compares the exported module stack, which holds type names as strings.
LINEAR_MODULE = "torch.nn.modules.linear.Linear"
# Observer scale floor for weights. PT2E's default 2**-12 flattens per-channel scales of small BN-folded
# MobileNet channels (their max |w| < 0.03) to a coarse grid.
WEIGHT_SCALE_FLOOR = 2.0**-30
CALIBRATION_BATCH = 50


def output_tensor_name(key: str) -> str:
    """litert-torch names the tensor of dict output ``key`` like this; the runtime matches outputs by it."""
    return f"{SIGNATURE}_{key}_output"


def _litert():
    try:
        import litert_torch
    except ImportError as exc:
        raise ExportError(f"TFLite export needs litert-torch ({exc.name} missing): pip install 'tddfa-edge[export]'") from None
    return litert_torch


# ----------------------------------------------------------------------------------------------------------
# Wrappers: mathematically identical rewrites of the fp32 networks that quantize well
# ----------------------------------------------------------------------------------------------------------


class NamedOutputs(nn.Module):
    """Returns a dict so the flatbuffer's output tensors carry meaningful names."""

    def __init__(self, module: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.module = module
        self.names = tuple(names)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.module(x)
        out = out if isinstance(out, (tuple, list)) else (out,)
        return dict(zip(self.names, out))


class CenteredPixelRegressor(nn.Module):
    """(N, 120, 120, 3) float ``(pixel - 128) / 128`` -> ``param_norm`` (N, 62) of the (optionally re-scaled) FC.

    The network wants ``(pixel - 127.5) / 128``: the missing ``0.5 / 128`` enters the first convolution as
    a constant per channel, folded into ``bn1.running_mean`` (exact except on taps over the zero padding).
    ``out_center``/``out_half_range`` re-express each FC output as ``(y - center) / half_range`` so one
    per-tensor int8 grid serves all 62 parameters; the runtime undoes it with per-element scales.
    """

    def __init__(self, regressor: nn.Module, out_center: np.ndarray | None = None, out_half_range: np.ndarray | None = None,
                 fc_weight: np.ndarray | None = None, fc_bias: np.ndarray | None = None) -> None:
        super().__init__()
        net = copy.deepcopy(regressor).eval()
        with torch.no_grad():
            net.bn1.running_mean -= (0.5 / 128.0) * net.conv1.weight.sum(dim=(1, 2, 3))
            if fc_weight is not None:
                net.fc.weight.copy_(torch.as_tensor(fc_weight, dtype=torch.float32))
                net.fc.bias.copy_(torch.as_tensor(fc_bias, dtype=torch.float32))
            if out_center is not None:
                center = torch.as_tensor(out_center, dtype=torch.float32)
                half = torch.as_tensor(out_half_range, dtype=torch.float32)
                net.fc.weight.div_(half[:, None])
                net.fc.bias.sub_(center).div_(half)
        self.regressor = net

    def forward(self, centered: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"param_norm": self.regressor(centered.permute(0, 3, 1, 2))}


# ----------------------------------------------------------------------------------------------------------
# PT2E quantization
# ----------------------------------------------------------------------------------------------------------


def _activation_spec(observer: str = "histogram"):
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver
    from torchao.quantization.pt2e.quantizer import QuantizationSpec

    # histogram: range that minimizes the L2 quantization error (measured best on the hold-out split).
    ctr = {"histogram": HistogramObserver, "minmax": MinMaxObserver}[observer]
    return QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine,
                            observer_or_fake_quant_ctr=ctr.with_args(eps=2**-12))


def _fixed_spec(scale: float, zero_point: int = 0):
    from torchao.quantization.pt2e.quantizer import FixedQParamsQuantizationSpec

    return FixedQParamsQuantizationSpec(dtype=torch.int8, scale=float(scale), zero_point=int(zero_point), quant_min=-128,
                                        quant_max=127, qscheme=torch.per_tensor_affine)


def _quant_config(observer: str = "histogram"):
    from litert_torch.quantize.pt2e_quantizer_utils import QuantizationConfig
    from torchao.quantization.pt2e.observer import PerChannelMinMaxObserver
    from torchao.quantization.pt2e.quantizer import QuantizationSpec

    weight = QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_channel_symmetric, ch_axis=0,
                              observer_or_fake_quant_ctr=PerChannelMinMaxObserver.with_args(eps=WEIGHT_SCALE_FLOOR))
    act = _activation_spec(observer)
    # Softmax / sigmoid outputs: TFLite's fixed int8 grid.
    fixed = _fixed_spec(1.0 / 256.0, -128)
    return QuantizationConfig(act, act, weight, None, fixed, False, False)


_POOL_TARGETS = ("aten.mean.dim", "aten.adaptive_avg_pool2d.default")
_PASSTHROUGH = ("aten.pad.default", "aten.constant_pad_nd.default", "aten.max_pool2d.default", "aten.permute.default")


def _is_call(node, names) -> bool:
    return node.op == "call_function" and any(str(node.target).endswith(n) or str(node.target) == n for n in names)


def _make_quantizer(input_scale: float, input_zero_point: int = 0, global_pool: str = "shared", output_scale: float | None = None,
                    float_linear: bool = False, observer: str = "histogram", head_cat_minmax: bool = False):
    """A litert-torch PT2E quantizer with the few annotations this project needs on top of its defaults.

    input_scale/zero_point: the int8 input grid (fixed, so the input tensor is exactly ``pixel - 128``).
    global_pool: "shared" (PT2E default: output on the input's grid), "own" (requantized to its own,
    finer grid) or "float" (dequantize before the global average, the FC then runs in float).
    output_scale: fixed grid of the final linear layer's output (the equalized regressor output).
    head_cat_minmax: concatenations of the top module (the detector's head outputs) get one grid covering all
    inputs' full range (left alone, the converter puts them on the last input's grid and clips the others).
    Always: zero pads, max pools and layout permutes keep their input's grid (no requantization, no transposes).
    """
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec
    from torchao.quantization.pt2e.quantizer.quantizer import QuantizationAnnotation

    input_spec = _fixed_spec(input_scale, input_zero_point)

    class PixelQuantizer(PT2EQuantizer):
        def annotate(self, model):
            model = super().annotate(model)
            graph = model.graph
            for node in graph.nodes:
                ann = node.meta.get("quantization_annotation")
                if ann is None:
                    continue
                for src in list(ann.input_qspec_map):
                    # The permute of the NHWC input placeholder feeds the first convolution.
                    if _is_call(src, ("aten.permute.default",)) and src.args[0].op == "placeholder":
                        ann.input_qspec_map[src] = input_spec
                if output_scale is not None and _is_call(node, ("aten.linear.default",)):
                    ann.output_qspec = _fixed_spec(output_scale)
            for node in graph.nodes:  # topological order: each pass-through op sees its input annotated
                if _is_call(node, _PASSTHROUGH) and "quantization_annotation" not in node.meta:
                    src = node.args[0]
                    src_ann = src.meta.get("quantization_annotation")
                    if src_ann is not None and src_ann.output_qspec is not None:
                        node.meta["quantization_annotation"] = QuantizationAnnotation(
                            input_qspec_map={src: SharedQuantizationSpec(src)}, output_qspec=SharedQuantizationSpec(src), _annotated=True)
            if global_pool == "own":
                for node in graph.nodes:
                    if _is_call(node, _POOL_TARGETS):
                        node.meta["quantization_annotation"].output_qspec = _activation_spec(observer)
            if global_pool == "float":
                removed: set = set()
                for node in graph.nodes:
                    ann = node.meta.get("quantization_annotation")
                    if ann is not None and (_is_call(node, _POOL_TARGETS) or _shares_with(ann, removed)):
                        node.meta.pop("quantization_annotation", None)
                        removed.add(node)
            if head_cat_minmax:
                for node in graph.nodes:
                    paths = [path for path, _ in node.meta.get("nn_module_stack", {}).values()]
                    if _is_call(node, ("aten.cat.default",)) and max(map(len, paths), default=0) == 0:
                        inputs = node.args[0]
                        shared = SharedQuantizationSpec((inputs[0], node))
                        qmap = {inp: (_activation_spec("minmax") if i == 0 else shared) for i, inp in enumerate(inputs)}
                        node.meta["quantization_annotation"] = QuantizationAnnotation(input_qspec_map=qmap, output_qspec=shared, _annotated=True)
            return model

    quantizer = PixelQuantizer().set_global(_quant_config(observer))
    if float_linear:
        quantizer.set_module_type(LINEAR_MODULE, None)
    return quantizer


def _shares_with(ann, nodes: set) -> bool:
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec

    for spec in list(ann.input_qspec_map.values()) + [ann.output_qspec]:
        if isinstance(spec, SharedQuantizationSpec):
            ref = spec.edge_or_node
            if ref in nodes or (isinstance(ref, tuple) and ref[0] in nodes):
                return True
    return False


def pt2e_tflite(module: nn.Module, input_shape: tuple[int, ...], calibration: list[np.ndarray], quantizer) -> bytes:
    """Quantize ``module`` with PT2E (calibrated on ``calibration`` batches, in order) and convert to TFLite.

    litert-torch converts only static shapes here, so the batch-1 graph that is converted takes its observer
    state from an identical graph calibrated on whole batches (much faster than one crop at a time).
    """
    litert_torch = _litert()
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.observer import get_observer_state_dict, load_observer_state_dict
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    module = module.eval()
    example = (torch.zeros(input_shape),)
    with torch.no_grad():
        final = prepare_pt2e(torch.export.export(module, example).module(), quantizer)
        size = len(calibration[0])
        if any(len(batch) != size for batch in calibration):
            raise ExportError("calibration batches must all have the same size")
        calibrated = final
        if size != input_shape[0]:
            calibrated = prepare_pt2e(torch.export.export(module, (torch.zeros((size, *input_shape[1:])),)).module(), quantizer)
        for batch in calibration:
            calibrated(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        if calibrated is not final:
            load_observer_state_dict(final, get_observer_state_dict(calibrated))
        final = convert_pt2e(final, fold_quantize=False)
    final.training = False  # exported graphs keep the flag although they were traced in eval mode
    edge = litert_torch.convert(final, example, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    return bytes(edge.model_content())


def float_tflite(module: nn.Module, example: torch.Tensor) -> bytes:
    litert_torch = _litert()
    with torch.no_grad():
        edge = litert_torch.convert(module.eval(), (example,))
    return bytes(edge.model_content())


def fp16_weights(model: bytes) -> bytes:
    """fp32 model -> the same graph with fp16 weights (DEQUANTIZE fp16 -> fp32 in front of each op)."""
    from ai_edge_quantizer import qtyping, quantizer
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    q = quantizer.Quantizer(bytearray(model))
    q.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
                             algorithm_key=AlgorithmName.FLOAT_CASTING)
    return bytes(q.quantize(enable_progress_report=False).quantized_model)


# ----------------------------------------------------------------------------------------------------------
# Flatbuffer access: structure facts, extra outputs for calibration, patching the last FC
# ----------------------------------------------------------------------------------------------------------


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _read(model: bytes):
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(model))


def _write(obj) -> bytes:
    from ai_edge_litert.tools import flatbuffer_utils

    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


def _names(enum_cls) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def _op_name(obj, op) -> str:
    code = obj.operatorCodes[op.opcodeIndex]
    return _names(_schema().BuiltinOperator)[max(code.builtinCode, code.deprecatedBuiltinCode)]


def _tensor_name(tensor) -> str:
    name = tensor.name
    return name.decode() if isinstance(name, bytes) else str(name)


def model_structure(model: bytes) -> dict:
    """Op histogram and dtypes of a TFLite flatbuffer (what the manifest's ``details`` records)."""
    obj = _read(model)
    graph = obj.subgraphs[0]
    types = _names(_schema().TensorType)
    ops: Counter = Counter()
    typed: Counter = Counter()
    for op in graph.operators:
        name = _op_name(obj, op)
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
        return {"name": _tensor_name(t), "dtype": types[t.type].lower(), "shape": [int(v) for v in t.shape], "quantization": quant}

    return {
        "ops": dict(sorted(ops.items())),
        "ops_by_dtype": dict(sorted(typed.items())),
        "inputs": [io(i) for i in graph.inputs],
        "outputs": [io(i) for i in graph.outputs],
    }


def _with_extra_outputs(model: bytes, tensor_indices: list[int]) -> bytes:
    obj = _read(model)
    graph = obj.subgraphs[0]
    graph.outputs = list(graph.outputs) + [int(i) for i in tensor_indices]
    return _write(obj)


def _buffer_array(obj, tensor) -> np.ndarray:
    schema = _schema()
    dtype = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.INT32: np.int32, schema.TensorType.INT8: np.int8}[tensor.type]
    return np.frombuffer(bytes(obj.buffers[tensor.buffer].data), dtype=dtype).reshape([int(v) for v in tensor.shape])


def _set_buffer(obj, tensor, array: np.ndarray) -> None:
    obj.buffers[tensor.buffer].data = np.frombuffer(np.ascontiguousarray(array).tobytes(), dtype=np.uint8)


def _last_fc(obj):
    graph = obj.subgraphs[0]
    fcs = [op for op in graph.operators if _op_name(obj, op) == "FULLY_CONNECTED"]
    if len(fcs) != 1:
        raise ExportError(f"expected one FULLY_CONNECTED in the regressor, found {len(fcs)}")
    return graph, fcs[0]


def _run_with_features(model: bytes, feature_tensor: int, batches: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` (XNNPACK, as deployed) on int8 batches; return (its output, the given inner tensor) dequantized."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=_with_extra_outputs(model, [feature_tensor]), num_threads=1)
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


RIDGE_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)


def choose_ridge(features: np.ndarray, target: np.ndarray, weight: np.ndarray, bias: np.ndarray, folds: int = 5) -> float | None:
    """Ridge strength with the lowest 5-fold (index % 5) squared error on the calibration features; None when
    no refit beats the trained layer on the held-out folds (e.g. too few crops for a wide FC)."""
    fold = np.arange(len(features)) % folds
    kept = float(((features.astype(np.float64) @ weight.T.astype(np.float64) + bias - target) ** 2).sum())
    errors = []
    for ridge in RIDGE_GRID:
        err = 0.0
        for k in range(folds):
            w, b = refit_linear(features[fold != k], target[fold != k], weight, bias, ridge)
            err += float(((features[fold == k] @ w.T.astype(np.float64) + b - target[fold == k]) ** 2).sum())
        errors.append(err)
    best = int(np.argmin(errors))
    return RIDGE_GRID[best] if errors[best] < kept else None


def refit_linear(features: np.ndarray, target: np.ndarray, weight: np.ndarray, bias: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Least squares ``features @ W.T + b ~ target``, pulled toward the original (W, b) by ``ridge`` (bias free).

    The int8 backbone's features differ from fp32 ones in a consistent way; re-fitting the last layer on the
    calibration crops absorbs that (bias correction is the ridge -> infinity limit).
    """
    f = features.astype(np.float64)
    n = len(f)
    x = np.hstack([f, np.ones((n, 1))])
    prior = np.hstack([weight, bias[:, None]]).astype(np.float64)
    penalty = np.full(x.shape[1], ridge * n)
    penalty[-1] = 0.0
    # Shift the bias of the prior so the unpenalized intercept fits the mean residual.
    lhs = x.T @ x + np.diag(penalty)
    rhs = x.T @ target.astype(np.float64) + penalty[:, None] * prior.T
    solution = np.linalg.solve(lhs, rhs).T
    return solution[:, :-1].astype(np.float32), solution[:, -1].astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Regressor
# ----------------------------------------------------------------------------------------------------------

REGRESSOR_INPUT_SCALE = 1.0 / 128.0  # int8 q = pixel - 128 reads as (pixel - 128) / 128
FULL_OUTPUT_SCALE = 1.0 / 127.0  # equalized outputs live in [-1, 1]


@dataclass(frozen=True)
class RegressorQuantization:
    """Settings of an int8 regressor; recorded in the manifest ``details``."""

    full_integer: bool
    activation_observer: str = "histogram"
    weights: str = "int8 symmetric per output channel, scale floor 2^-30"
    global_pool: str = "float"  # float | own | shared
    output_margin: float = 0.0  # full integer: widen each parameter's calibrated range by this fraction
    refit: bool = True  # re-fit the FC on the int8 features (ridge toward the trained FC, strength by 5-fold CV)
    calibration_crops: int = 800


def regressor_calibration(ctx: ExportContext) -> np.ndarray:
    return ctx.calibration_crops()


def _centered(crops: np.ndarray) -> np.ndarray:
    return (crops.astype(np.float32) - 128.0) * np.float32(REGRESSOR_INPUT_SCALE)


def as_int8_pixels(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels -> int8 ``pixel - 128``, bit for bit (what the runtime feeds integer models)."""
    return (np.asarray(pixels, dtype=np.uint8) ^ np.uint8(0x80)).view(np.int8)


def _batches(array: np.ndarray, size: int = CALIBRATION_BATCH) -> list[np.ndarray]:
    return [array[i : i + size] for i in range(0, len(array), size)]


def _fp32_outputs(ctx: ExportContext, crops: np.ndarray) -> np.ndarray:
    from .onnx_export import torch_regressor_outputs

    return torch_regressor_outputs(ctx.regressor, crops)


def _output_grid(reference: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-parameter (center, half_range, zero_point) so that ``y = (q - zero_point) * half_range * FULL_OUTPUT_SCALE``.

    The centre is snapped to the output grid so every zero point is an integer.
    """
    lo, hi = reference.min(axis=0).astype(np.float64), reference.max(axis=0).astype(np.float64)
    half = np.maximum((hi - lo) / 2.0 * (1.0 + margin), 1e-6)
    step = half * FULL_OUTPUT_SCALE
    zero_point = -np.round((hi + lo) / 2.0 / step)
    center = -zero_point * step
    return center, half, zero_point.astype(np.int64)


def build_regressor_int8(ctx: ExportContext, settings: RegressorQuantization) -> tuple[bytes, dict]:
    """int8 regressor (and its facts). Full integer: the FC too, with an equalized int8 output."""
    crops = regressor_calibration(ctx)
    reference = ctx.cached("tflite:regressor_fp32_calibration", lambda: _fp32_outputs(ctx, crops))
    facts: dict = {}
    center = half = zero_point = None
    if settings.full_integer:
        center, half, zero_point = _output_grid(reference, settings.output_margin)
    module = CenteredPixelRegressor(ctx.regressor, center, half)
    quantizer = _make_quantizer(REGRESSOR_INPUT_SCALE, 0, global_pool=settings.global_pool,
                                output_scale=FULL_OUTPUT_SCALE if settings.full_integer else None,
                                float_linear=not settings.full_integer, observer=settings.activation_observer)
    model = pt2e_tflite(module, (1, 120, 120, 3), _batches(_centered(crops)), quantizer)
    if settings.refit:
        model, facts["refit"] = _refit_fc(model, crops, reference, center, half)
    if settings.full_integer:
        facts["output_grid"] = {"center": center, "half_range": half, "zero_point": zero_point}
    return model, facts


def _refit_fc(model: bytes, crops: np.ndarray, reference: np.ndarray, center, half) -> tuple[bytes, dict]:
    obj = _read(model)
    graph, fc = _last_fc(obj)
    feature_index, weight_t, bias_t = (int(i) for i in fc.inputs[:3])
    outputs, features = _run_with_features(model, feature_index, _batches(as_int8_pixels(crops)))
    target = reference if center is None else (reference - center) / half
    w_tensor, b_tensor = graph.tensors[weight_t], graph.tensors[bias_t]
    is_float = w_tensor.type == _schema().TensorType.FLOAT32
    if is_float:
        weight, bias = _buffer_array(obj, w_tensor), _buffer_array(obj, b_tensor)
    else:
        in_scale = float(graph.tensors[feature_index].quantization.scale[0])
        w_scale = np.asarray(w_tensor.quantization.scale, dtype=np.float64)
        weight = _buffer_array(obj, w_tensor).astype(np.float64) * w_scale[:, None]
        bias = _buffer_array(obj, b_tensor).astype(np.float64) * (in_scale * w_scale)
    ridge = choose_ridge(features, target, weight, bias)
    before = float(np.abs(outputs - target).mean())
    if ridge is None:
        return model, {"ridge": None, "crops": int(len(crops)), "fc_abs_err": round(before, 5), "note": "kept the trained FC"}
    new_w, new_b = refit_linear(features, target, weight, bias, ridge)
    if is_float:
        _set_buffer(obj, w_tensor, new_w)
        _set_buffer(obj, b_tensor, new_b)
    else:
        new_scale = np.maximum(np.abs(new_w).max(axis=1).astype(np.float64) / 127.0, 1e-12)
        _set_buffer(obj, w_tensor, np.clip(np.round(new_w / new_scale[:, None]), -127, 127).astype(np.int8))
        w_tensor.quantization.scale = [float(s) for s in new_scale.astype(np.float32)]
        bias_scale = np.float32(in_scale) * new_scale.astype(np.float32)
        _set_buffer(obj, b_tensor, np.round(new_b / bias_scale).astype(np.int32))
        b_tensor.quantization.scale = [float(s) for s in bias_scale]
    after = float(np.abs(features @ new_w.T.astype(np.float64) + new_b - target).mean())
    return _write(obj), {"ridge": ridge, "crops": int(len(crops)), "fc_abs_err_before": round(before, 5), "fc_abs_err_after_float": round(after, 5)}


# ----------------------------------------------------------------------------------------------------------
# Detector
# ----------------------------------------------------------------------------------------------------------


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv.weight * scale[:, None, None, None], bias


def _conv(weight: torch.Tensor, bias: torch.Tensor, stride, padding) -> nn.Conv2d:
    out_c, in_c, kh, kw = weight.shape
    conv = nn.Conv2d(in_c, out_c, (kh, kw), stride, padding, bias=True)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    return conv


class _ConvRelu(nn.Module):
    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


def _crelu_as_conv(block, input_offset: torch.Tensor | None = None) -> _ConvRelu:
    """conv + BN + ReLU([x, -x]) == ReLU(conv with weights [W, -W], bias [b, -b]): one int8 conv, no negation or concat.

    ``input_offset`` (per input channel) is what the real input lacks, e.g. ``128 - mean`` when the graph reads
    ``pixel - 128`` but the network wants ``pixel - mean``; it enters the bias as ``W . offset``.
    """
    weight, bias = _fold_bn(block.conv, block.bn)
    if input_offset is not None:
        bias = bias + (weight * input_offset.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
    return _ConvRelu(_conv(torch.cat([weight, -weight]), torch.cat([bias, -bias]), block.conv.stride, block.conv.padding))


class _PaddedMaxPool(nn.Module):
    """3x3/2 max pool with PyTorch's padding 1, as a zero PAD (XNNPACK) + unpadded pool.

    Exact because the input is a ReLU output: a zero in the window never beats the real maximum, so it can
    stand in for the -inf padding that becomes a PADV2 op XNNPACK does not take.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Padded in NHWC: the converter then cancels the layout transposes around the int8 PAD.
        x = torch.nn.functional.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1)).permute(0, 3, 1, 2)
        return torch.nn.functional.max_pool2d(x, kernel_size=3, stride=2)


class _MeanPool3x3(nn.Module):
    """3x3/1 average pool (count_include_pad) as a depthwise conv with 1/9 weights: int8 AVERAGE_POOL_2D stays
    outside XNNPACK, an int8 depthwise conv does not."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0 / 9.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _Inception(nn.Module):
    def __init__(self, block, mean_pool: bool) -> None:
        super().__init__()
        self.block = block
        self.pool = _MeanPool3x3(128) if mean_pool else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        pooled = self.pool(x) if self.pool is not None else torch.nn.functional.avg_pool2d(x, 3, 1, 1)
        return torch.cat([b.branch1x1(x), b.branch1x1_2(pooled), b.branch3x3(b.branch3x3_reduce(x)),
                          b.branch3x3_3(b.branch3x3_2(b.branch3x3_reduce_2(x)))], 1)


class EdgeFaceBoxes(nn.Module):
    """FaceBoxes rewritten for XNNPACK, mathematically identical to ``FaceBoxesDetector`` (up to float rounding).

    Input NHWC: uint8 pixels (``int8_input=False``; the graph subtracts the BGR mean) or the real value
    ``pixel - 128`` of an int8 input tensor (``int8_input=True``; the mean offset is folded into conv1's bias,
    exact except on the taps over conv1's zero padding).
    Rewrites: CReLU -> one conv with [W, -W]; max-pool padding -> zero PAD; avg pool -> depthwise 1/9 conv.
    Outputs ``loc`` (1, P, 4) and ``conf`` (1, P, 2) softmax, as the ONNX detector.
    """

    def __init__(self, detector: nn.Module, int8_input: bool, crelu_conv: bool = True, mean_pool_conv: bool = True,
                 input_zero_pixel: float = 128.0) -> None:
        super().__init__()
        det = copy.deepcopy(detector).eval()
        self.int8_input = int8_input
        mean = torch.tensor(BGR_MEAN, dtype=torch.float32)
        offset = (input_zero_pixel - mean) if int8_input else None
        with torch.no_grad():
            if crelu_conv:
                self.conv1 = _crelu_as_conv(det.conv1, offset)
                self.conv2 = _crelu_as_conv(det.conv2)
            else:
                if offset is not None:
                    w = det.conv1.conv.weight
                    det.conv1.bn.running_mean -= (w * offset.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
                self.conv1, self.conv2 = det.conv1, det.conv2
        self.register_buffer("mean", mean.view(1, 3, 1, 1))
        self.pool = _PaddedMaxPool()
        self.inceptions = nn.ModuleList([_Inception(b, mean_pool_conv) for b in (det.inception1, det.inception2, det.inception3)])
        self.det = det

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        x = pixels.permute(0, 3, 1, 2)
        x = x if self.int8_input else x.float() - self.mean
        x = self.pool(self.conv2(self.pool(self.conv1(x))))
        for block in self.inceptions:
            x = block(x)
        det = self.det
        sources = [x]
        x = det.conv3_2(det.conv3_1(x))
        sources.append(x)
        x = det.conv4_2(det.conv4_1(x))
        sources.append(x)
        loc = torch.cat([head(s).permute(0, 2, 3, 1).reshape(1, -1) for s, head in zip(sources, det.loc)], 1)
        conf = torch.cat([head(s).permute(0, 2, 3, 1).reshape(1, -1) for s, head in zip(sources, det.conf)], 1)
        return {"loc": loc.reshape(1, -1, 4), "conf": torch.softmax(conf.reshape(1, -1, 2), dim=-1)}


DETECTOR_INPUT_ZERO_PIXEL = 128.0  # int8 q = pixel - 128 reads as pixel - 128 (scale 1, zero point 0)


@dataclass(frozen=True)
class DetectorQuantization:
    """Settings of the int8 detector; recorded in the manifest ``details``."""

    activation_observer: str = "minmax"  # full range: rare large activations carry the big boxes
    weights: str = "int8 symmetric per output channel, scale floor 2^-30"
    crelu: str = "one conv with [W, -W], bias [b, -b], fused ReLU"
    max_pool_padding: str = "zero PAD (inputs are ReLU outputs)"
    inception_avg_pool: str = "depthwise 3x3 conv, weights 1/9"
    head_concat: str = "one int8 grid over all sources' full range"
    calibration: str = "ctx.detector_frames() + mirrored, all also shifted by (16, 16) px: 4 x 32 frames"
    conf: str = "int8 logits, dequantized, float softmax"


def _detector_size(ctx: ExportContext) -> tuple[int, int]:
    if ctx.detector_input_size is None:
        raise ExportError("TFLite detectors need a fixed input size: set detector.input_size in the target")
    w, h = (int(v) for v in ctx.detector_input_size)
    return w, h


def build_detector_fp32(ctx: ExportContext) -> bytes:
    w, h = _detector_size(ctx)
    # Only the max-pool padding is rewritten: CReLU and average pools are already XNNPACK ops in fp32,
    # and doubling conv1/conv2 for the [W, -W] form costs more than the negation it saves.
    module = EdgeFaceBoxes(ctx.detector, int8_input=False, crelu_conv=False, mean_pool_conv=False)
    return float_tflite(module, torch.zeros((1, h, w, 3), dtype=torch.uint8))


def build_detector_int8(ctx: ExportContext, settings: DetectorQuantization = DetectorQuantization()) -> bytes:
    w, h = _detector_size(ctx)
    frames = detector_calibration(ctx).astype(np.float32) - np.float32(DETECTOR_INPUT_ZERO_PIXEL)
    module = EdgeFaceBoxes(ctx.detector, int8_input=True, input_zero_pixel=DETECTOR_INPUT_ZERO_PIXEL)
    quantizer = _make_quantizer(1.0, 0, observer=settings.activation_observer, head_cat_minmax=True)
    return pt2e_tflite(module, (1, h, w, 3), _batches(frames, 8), quantizer)


def detector_calibration(ctx: ExportContext) -> np.ndarray:
    """``ctx.detector_frames()`` plus their mirror images, and all of them shifted by half an anchor cell.

    FaceBoxes' boxes come from a stride-32 grid: shifting the mosaics by 16 px shows every face at the other
    phase of the grid. With the mirrors this cut the box error vs fp32 by ~25% at 480x272, 320x192 and 256x144.
    """
    frames = np.stack(ctx.detector_frames())
    frames = np.concatenate([frames, frames[:, :, ::-1]])
    return np.ascontiguousarray(np.concatenate([frames, np.roll(frames, (16, 16), axis=(1, 2))]))


# ----------------------------------------------------------------------------------------------------------
# Artifacts
# ----------------------------------------------------------------------------------------------------------


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


def _details(model: bytes, **extra) -> dict:
    import litert_torch

    structure = model_structure(model)
    by_dtype = structure["ops_by_dtype"]
    integer = sum(n for k, n in by_dtype.items() if k.endswith("->INT8"))
    floating = sum(n for k, n in by_dtype.items() if k.endswith("->FLOAT32"))
    return {
        "converter": f"litert-torch {litert_torch.__version__} (PT2E for integer models), no TensorFlow",
        "size_bytes": len(model),
        "ops": structure["ops"],
        "ops_by_dtype": by_dtype,
        "int8_ops": integer,  # ops with an int8 output
        "float_ops": floating,  # ops with a float32 output (DEQUANTIZE included)
        "tensor_inputs": structure["inputs"],
        "tensor_outputs": structure["outputs"],
        "xnnpack": xnnpack_partitions(model),
        **extra,
    }


def _save(folder: Path, name: str, model: bytes) -> None:
    (folder / name).write_bytes(model)
    check_file(folder / name)


def _regressor_fp32_bytes(ctx: ExportContext) -> bytes:
    def build():
        module = NamedOutputs(RegressorFromPixels(ctx.regressor), ("param_norm",))
        return float_tflite(module, torch.zeros((1, 120, 120, 3), dtype=torch.uint8))

    return ctx.cached("tflite:regressor_fp32", build)


_BATCH_NOTE = "file has batch 1; the runtime resizes the input for larger batches (verified under ai-edge-litert)"
_INT8_PIXELS = ("BGR crop as int8 pixel - 128 (uint8 with the top bit flipped); the input tensor's own quantization "
                "(scale 1/128, zero point 0) makes it (pixel - 128) / 128 and conv1's BatchNorm holds the remaining 0.5/128")


@register("regressor", "tflite", "fp32")
def regressor_tflite_fp32(ctx: ExportContext, role: str, folder: Path) -> ModelArtifact:
    name = "regressor.fp32.tflite"
    model = _regressor_fp32_bytes(ctx)
    _save(folder, name, model)
    inputs, outputs = regressor_io(out_name=output_tensor_name("param_norm"))
    return ModelArtifact(name, role, "tflite", "fp32", inputs, outputs, param_normalized=True,
                         details=_details(model, batch=_BATCH_NOTE))


@register("regressor", "tflite", "fp16")
def regressor_tflite_fp16(ctx: ExportContext, role: str, folder: Path) -> ModelArtifact:
    name = "regressor.fp16.tflite"
    model = fp16_weights(_regressor_fp32_bytes(ctx))
    _save(folder, name, model)
    inputs, outputs = regressor_io(out_name=output_tensor_name("param_norm"))
    return ModelArtifact(name, role, "tflite", "fp16", inputs, outputs, param_normalized=True,
                         details=_details(model, batch=_BATCH_NOTE, weights="float16 (ai-edge-quantizer float casting), computed in fp32"))


def _int8_pixel_input(inputs: list[dict], description: str) -> None:
    inputs[0]["dtype"] = "int8"
    inputs[0]["normalization"] = {"mean": [128.0], "scale": [1.0]}
    inputs[0]["quantization"] = None
    inputs[0]["description"] = description


@register("regressor", "tflite", "int8")
def regressor_tflite_int8(ctx: ExportContext, role: str, folder: Path) -> ModelArtifact:
    """int8 backbone (per-channel weights, histogram-calibrated activations), global average and FC in fp32."""
    name = "regressor.int8.tflite"
    settings = RegressorQuantization(full_integer=False)
    model, facts = build_regressor_int8(ctx, settings)
    _save(folder, name, model)
    inputs, outputs = regressor_io(precision_dtype="int8", out_name=output_tensor_name("param_norm"))
    _int8_pixel_input(inputs, _INT8_PIXELS)
    return ModelArtifact(name, role, "tflite", "int8", inputs, outputs, param_normalized=True,
                         details=_details(model, batch=_BATCH_NOTE, quantization=asdict(settings), **facts))


@register("regressor", "tflite", "int8-full")
def regressor_tflite_int8_full(ctx: ExportContext, role: str, folder: Path) -> ModelArtifact:
    """Every layer int8, FC included; int8 output whose 62 elements each have their own scale and zero point."""
    name = "regressor.int8-full.tflite"
    settings = RegressorQuantization(full_integer=True, global_pool="own", output_margin=0.2)
    model, facts = build_regressor_int8(ctx, settings)
    _save(folder, name, model)
    grid = facts.pop("output_grid")
    scales = [float(v) for v in (grid["half_range"] * FULL_OUTPUT_SCALE).astype(np.float32)]
    quant_out = {
        "scale": scales, "zero_point": [int(v) for v in grid["zero_point"]], "axis": -1,
        "note": "per element of the last axis: param_norm[i] = (q[i] - zero_point[i]) * scale[i]",
    }
    inputs, outputs = regressor_io(precision_dtype="int8", output_dtype="int8", quant_out=quant_out,
                                   out_name=output_tensor_name("param_norm"))
    _int8_pixel_input(inputs, _INT8_PIXELS)
    outputs[0]["description"] = ("62 normalized 3DMM parameters as int8; the FC rows are scaled in the graph so each parameter's "
                                 "calibrated range (+20%) fills the int8 grid, the per-element scales undo it")
    return ModelArtifact(name, role, "tflite", "int8-full", inputs, outputs, param_normalized=True,
                         details=_details(model, batch=_BATCH_NOTE, quantization=asdict(settings), **facts))


def _detector_outputs(model: bytes, input_size) -> list[dict]:
    _, outputs = detector_io(input_size)
    tensors = {t["name"]: t for t in model_structure(model)["outputs"]}
    for spec in outputs:
        tensor = tensors[output_tensor_name(spec["name"])]
        spec["name"] = tensor["name"]
        spec["dtype"] = tensor["dtype"]
        if tensor["quantization"] is not None:
            spec["quantization"] = {"scale": tensor["quantization"]["scale"][0], "zero_point": tensor["quantization"]["zero_point"][0]}
    return outputs


@register("detector", "tflite", "fp32")
def detector_tflite_fp32(ctx: ExportContext, role: str, folder: Path) -> ModelArtifact:
    name = "detector.fp32.tflite"
    model = build_detector_fp32(ctx)
    _save(folder, name, model)
    inputs, _ = detector_io(ctx.detector_input_size)
    return ModelArtifact(name, role, "tflite", "fp32", inputs, _detector_outputs(model, ctx.detector_input_size),
                         details=_details(model, input_size=list(ctx.detector_input_size),
                                          rewrites={"max_pool_padding": "zero PAD (PADV2 with -inf stays outside XNNPACK)"}))


@register("detector", "tflite", "int8")
def detector_tflite_int8(ctx: ExportContext, role: str, folder: Path) -> ModelArtifact:
    name = "detector.int8.tflite"
    settings = DetectorQuantization()
    model = build_detector_int8(ctx, settings)
    _save(folder, name, model)
    inputs, _ = detector_io(ctx.detector_input_size)
    _int8_pixel_input(inputs, "BGR frame (letterboxed) as int8 pixel - 128; the BGR mean is folded into conv1's bias "
                              "(exact except on conv1's 3-px zero padding, which now stands for pixel 128)")
    details = _details(model, input_size=list(ctx.detector_input_size), quantization=asdict(settings))
    return ModelArtifact(name, role, "tflite", "int8", inputs, _detector_outputs(model, ctx.detector_input_size), details=details)
