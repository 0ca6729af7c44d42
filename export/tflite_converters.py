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
- FaceBoxes fp32 / int8: rewritten so everything runs inside XNNPACK (see ``EdgeFaceBoxes``); int8 from the prepared
  detector (weights GPTQ-rounded onto their int8 grid, ``detector_prep``), deep activations with a range margin.
- YuNet fp32 / int8: ``EdgeYuNet`` (merged prediction heads, upsampling as concatenations: one XNNPACK partition);
  int8 from the prepared (equalized, GPTQ-rounded) YuNet, int8 input ``pixel - 128`` with zero point -128, the
  merged prediction heads in float.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from tddfa_edge.contracts.errors import ExportError

from .artifacts import ExportContext, ModelArtifact, check_file, register
from .fc_refit import choose_ridge, refit_linear
from .faceboxes_xnnpack import EdgeFaceBoxes
from .graph_wrappers import CenteredPixelRegressor, NamedOutputs, RegressorFromPixels
from .model_io import detector_io, regressor_io, yunet_io
from .pt2e import float_tflite, fp16_weights, make_quantizer, pt2e_tflite
from .tflite_flatbuffer import (
    buffer_array, last_fc, model_structure, output_tensor_name, read_model, run_with_features, set_buffer, tflite_schema, write_model,
    xnnpack_partitions,
)
from .yunet_edge import EdgeYuNet

CALIBRATION_BATCH = 50


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
    """Consecutive batches of equal size (the largest divisor of ``len(array)`` up to ``size``): PT2E calibrates a graph
    exported for one batch size."""
    size = next(b for b in range(min(size, len(array)), 0, -1) if len(array) % b == 0)
    return [array[i : i + size] for i in range(0, len(array), size)]


def _fp32_outputs(ctx: ExportContext, crops: np.ndarray) -> np.ndarray:
    from .reference import torch_regressor_outputs

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
    quantizer = make_quantizer(REGRESSOR_INPUT_SCALE, 0, global_pool=settings.global_pool,
                                output_scale=FULL_OUTPUT_SCALE if settings.full_integer else None,
                                float_linear=not settings.full_integer, observer=settings.activation_observer)
    model = pt2e_tflite(module, (1, 120, 120, 3), _batches(_centered(crops)), quantizer)
    if settings.refit:
        model, facts["refit"] = _refit_fc(model, crops, reference, center, half)
    if settings.full_integer:
        facts["output_grid"] = {"center": center, "half_range": half, "zero_point": zero_point}
    return model, facts


def _refit_fc(model: bytes, crops: np.ndarray, reference: np.ndarray, center, half) -> tuple[bytes, dict]:
    obj = read_model(model)
    graph, fc = last_fc(obj)
    feature_index, weight_t, bias_t = (int(i) for i in fc.inputs[:3])
    outputs, features = run_with_features(model, feature_index, _batches(as_int8_pixels(crops)))
    target = reference if center is None else (reference - center) / half
    w_tensor, b_tensor = graph.tensors[weight_t], graph.tensors[bias_t]
    is_float = w_tensor.type == tflite_schema().TensorType.FLOAT32
    if is_float:
        weight, bias = buffer_array(obj, w_tensor), buffer_array(obj, b_tensor)
    else:
        in_scale = float(graph.tensors[feature_index].quantization.scale[0])
        w_scale = np.asarray(w_tensor.quantization.scale, dtype=np.float64)
        weight = buffer_array(obj, w_tensor).astype(np.float64) * w_scale[:, None]
        bias = buffer_array(obj, b_tensor).astype(np.float64) * (in_scale * w_scale)
    ridge = choose_ridge(features, target, weight, bias)
    before = float(np.abs(outputs - target).mean())
    if ridge is None:
        return model, {"ridge": None, "crops": int(len(crops)), "fc_abs_err": round(before, 5), "note": "kept the trained FC"}
    new_w, new_b = refit_linear(features, target, weight, bias, ridge)
    if is_float:
        set_buffer(obj, w_tensor, new_w)
        set_buffer(obj, b_tensor, new_b)
    else:
        new_scale = np.maximum(np.abs(new_w).max(axis=1).astype(np.float64) / 127.0, 1e-12)
        set_buffer(obj, w_tensor, np.clip(np.round(new_w / new_scale[:, None]), -127, 127).astype(np.int8))
        w_tensor.quantization.scale = [float(s) for s in new_scale.astype(np.float32)]
        bias_scale = np.float32(in_scale) * new_scale.astype(np.float32)
        set_buffer(obj, b_tensor, np.round(new_b / bias_scale).astype(np.int32))
        b_tensor.quantization.scale = [float(s) for s in bias_scale]
    after = float(np.abs(features @ new_w.T.astype(np.float64) + new_b - target).mean())
    return write_model(obj), {"ridge": ridge, "crops": int(len(crops)), "fc_abs_err_before": round(before, 5), "fc_abs_err_after_float": round(after, 5)}


DETECTOR_INPUT_ZERO_PIXEL = 128.0  # int8 q = pixel - 128 reads as pixel - 128 (scale 1, zero point 0)
# EdgeFaceBoxes submodules whose activations get the deep range margin (everything after the second max pool).
FACEBOXES_DEEP_MODULES = ("inceptions", "det.conv3", "det.conv4", "det.loc", "det.conf")


@dataclass(frozen=True)
class DetectorQuantization:
    """Settings of the int8 FaceBoxes; recorded in the manifest ``details``.

    Measured at 832x464 on the reference photos (box error vs fp32 relative to the side): 2.3% worst / 0.8% mean with
    round-to-nearest weights and 48-240 px calibration faces; 1.8% / 0.6% with GPTQ-rounded weights, faces of every
    size and the deep range margin. What is left is mostly the 23-px faces of test photo 2 (1% of their side is
    0.23 px of the network input), which the int8 trunk moves by ~1.7%; onnxruntime's int8 (u8 activations with
    their own range per inception branch) reaches 0.95%.
    """

    activation_observer: str = "minmax"  # full range: rare large activations carry the big boxes
    weights: str = "int8 symmetric per output channel, scale floor 2^-30"
    crelu: str = "one conv with [W, -W], bias [b, -b], fused ReLU"
    max_pool_padding: str = "zero PAD (inputs are ReLU outputs)"
    inception_avg_pool: str = "depthwise 3x3 conv, weights 1/9"
    head_concat: str = "one int8 grid over all sources' full range"
    calibration: str = "ctx.detector_frames() + mirrored, all also shifted by (16, 16) px: 4 x 48 frames"
    conf: str = "int8 logits, dequantized, float softmax"
    weights_rounding: str = "GPTQ against the calibration inputs (detector_prep), on the per-channel grid PT2E derives"
    deep_range_margin: float = 1.5  # inception blocks and later, head outputs: see onnx_quantize.DEEP_RANGE_MARGIN
    # Head convs stay int8: kept float (PT2E simulation: 2x finer boxes), litert-torch 0.10 converted the int8 trunk
    # feeding them 4x less accurately than PT2E simulates it (box error up to 26% of the side on hold-out mosaics).
    heads: str = "int8"


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
    prepared, _ = ctx.prepared_detector(127)  # BN folded, weights GPTQ-rounded onto their int8 grid
    module = EdgeFaceBoxes(prepared, int8_input=True, input_zero_pixel=DETECTOR_INPUT_ZERO_PIXEL)
    quantizer = make_quantizer(1.0, 0, observer=settings.activation_observer, head_cat_minmax=True,
                               margin_modules=FACEBOXES_DEEP_MODULES, range_margin=settings.deep_range_margin)
    return pt2e_tflite(module, (1, h, w, 3), _batches(frames, 8), quantizer)


def detector_calibration(ctx: ExportContext) -> np.ndarray:
    """``ctx.detector_frames()`` plus their mirror images, and all of them shifted by half an anchor cell.

    FaceBoxes' boxes come from a stride-32 grid: shifting the mosaics by 16 px shows every face at the other
    phase of the grid. With the mirrors this cut the box error vs fp32 by ~25% at 480x272, 320x192 and 256x144.
    """
    frames = np.stack(ctx.detector_frames())
    frames = np.concatenate([frames, frames[:, :, ::-1]])
    return np.ascontiguousarray(np.concatenate([frames, np.roll(frames, (16, 16), axis=(1, 2))]))


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


def _write_artifact(folder: Path, name: str, model: bytes) -> None:
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
    _write_artifact(folder, name, model)
    inputs, outputs = regressor_io(out_name=output_tensor_name("param_norm"))
    return ModelArtifact(name, role, "tflite", "fp32", inputs, outputs, param_normalized=True,
                         details=_details(model, batch=_BATCH_NOTE))


@register("regressor", "tflite", "fp16")
def regressor_tflite_fp16(ctx: ExportContext, role: str, folder: Path) -> ModelArtifact:
    name = "regressor.fp16.tflite"
    model = fp16_weights(_regressor_fp32_bytes(ctx))
    _write_artifact(folder, name, model)
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
    _write_artifact(folder, name, model)
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
    _write_artifact(folder, name, model)
    grid = facts.pop("output_grid")
    scales = [float(v) for v in (grid["half_range"] * FULL_OUTPUT_SCALE).astype(np.float32)]
    quant_out = {"scale": scales, "zero_point": [int(v) for v in grid["zero_point"]], "axis": -1}
    inputs, outputs = regressor_io(precision_dtype="int8", output_dtype="int8", quant_out=quant_out,
                                   out_name=output_tensor_name("param_norm"))
    _int8_pixel_input(inputs, _INT8_PIXELS)
    outputs[0]["description"] = ("62 normalized 3DMM parameters as int8; the FC rows are scaled in the graph so each parameter's "
                                 "calibrated range (+20%) fills the int8 grid, the per-element scales undo it")
    return ModelArtifact(name, role, "tflite", "int8-full", inputs, outputs, param_normalized=True,
                         details=_details(model, batch=_BATCH_NOTE, quantization=asdict(settings), **facts))


def _named_outputs(model: bytes, outputs: list[dict]) -> list[dict]:
    """The output specs with the converted file's tensor names, dtypes and quantization."""
    tensors = {t["name"]: t for t in model_structure(model)["outputs"]}
    for spec in outputs:
        tensor = tensors[output_tensor_name(spec["name"])]
        spec["name"] = tensor["name"]
        spec["dtype"] = tensor["dtype"]
        if tensor["quantization"] is not None:
            spec["quantization"] = {"scale": tensor["quantization"]["scale"][0], "zero_point": tensor["quantization"]["zero_point"][0]}
    return outputs


def _detector_outputs(model: bytes, input_size) -> list[dict]:
    return _named_outputs(model, detector_io(input_size)[1])


@register("faceboxes", "tflite", "fp32")
def detector_tflite_fp32(ctx: ExportContext, role: str, folder: Path) -> ModelArtifact:
    name = "detector.fp32.tflite"
    model = build_detector_fp32(ctx)
    _write_artifact(folder, name, model)
    inputs, _ = detector_io(ctx.detector_input_size)
    return ModelArtifact(name, role, "tflite", "fp32", inputs, _detector_outputs(model, ctx.detector_input_size),
                         details=_details(model, input_size=list(ctx.detector_input_size),
                                          rewrites={"max_pool_padding": "zero PAD (PADV2 with -inf stays outside XNNPACK)"}))


@register("faceboxes", "tflite", "int8")
def detector_tflite_int8(ctx: ExportContext, role: str, folder: Path) -> ModelArtifact:
    name = "detector.int8.tflite"
    settings = DetectorQuantization()
    model = build_detector_int8(ctx, settings)
    _write_artifact(folder, name, model)
    inputs, _ = detector_io(ctx.detector_input_size)
    _int8_pixel_input(inputs, "BGR frame (letterboxed) as int8 pixel - 128; the BGR mean is folded into conv1's bias "
                              "(exact except on conv1's 3-px zero padding, which now stands for pixel 128)")
    details = _details(model, input_size=list(ctx.detector_input_size), quantization=asdict(settings))
    return ModelArtifact(name, role, "tflite", "int8", inputs, _detector_outputs(model, ctx.detector_input_size), details=details)


# --- YuNet ----------------------------------------------------------------------------------------------------------
YUNET_INPUT_ZERO_POINT = -128  # int8 q = pixel - 128 reads as the pixel itself: YuNet takes raw 0-255 pixels


@dataclass(frozen=True)
class YunetQuantization:
    """Settings of the int8 YuNet TFLite; recorded in the manifest ``details``."""

    activation_observer: str = "minmax"
    weights: str = "int8 symmetric per output channel, GPTQ-rounded against the calibration inputs (detector_prep)"
    equalization: str = "cross-layer, from the calibration activations (detector_prep)"
    input: str = "int8 pixel - 128 with zero point -128: the graph's real input is the raw pixel, its zero padding real 0"
    heads: str = "per level one merged 1x1 + depthwise conv (cls, obj, bbox, kps) in float on the dequantized features"
    calibration: str = "ctx.detector_frames() and their mirror images: 2 x 48 frames"


def _yunet_size(ctx: ExportContext) -> tuple[int, int]:
    w, h = _detector_size(ctx)
    if w % 32 or h % 32:
        raise ExportError(f"YuNet's input size must be multiples of 32, got {w}x{h}")
    return w, h


def _yunet_outputs(model: bytes, input_size) -> list[dict]:
    return _named_outputs(model, yunet_io(input_size)[1])


def build_yunet_fp32(ctx: ExportContext) -> bytes:
    w, h = _yunet_size(ctx)
    return float_tflite(EdgeYuNet(ctx.detector, int8_input=False), torch.zeros((1, h, w, 3), dtype=torch.uint8))


def build_yunet_int8(ctx: ExportContext, settings: YunetQuantization = YunetQuantization()) -> bytes:
    w, h = _yunet_size(ctx)
    frames = np.stack(ctx.detector_frames())
    # Mirrors, but no half-cell shift: YuNet has one prior per cell at every stride (FaceBoxes' 32-px anchor grid
    # is what the shift covers), and the wider ranges of the extra frames cost precision.
    frames = np.concatenate([frames, frames[:, :, ::-1]]).astype(np.float32)  # the graph's real input is the pixel itself
    prepared, _ = ctx.prepared_detector(127)
    module = EdgeYuNet(prepared, int8_input=True)
    quantizer = make_quantizer(1.0, YUNET_INPUT_ZERO_POINT, observer=settings.activation_observer, float_modules=("heads",))
    return pt2e_tflite(module, (1, h, w, 3), _batches(frames, 8), quantizer)


@register("yunet", "tflite", "fp32")
def yunet_tflite_fp32(ctx: ExportContext, role: str, folder: Path) -> ModelArtifact:
    name = "detector.fp32.tflite"
    model = build_yunet_fp32(ctx)
    _write_artifact(folder, name, model)
    inputs, _ = yunet_io(ctx.detector_input_size)
    return ModelArtifact(name, role, "tflite", "fp32", inputs, _yunet_outputs(model, ctx.detector_input_size),
                         details=_details(model, input_size=list(ctx.detector_input_size),
                                          rewrites={"heads": "per level the four prediction branches merged into one 1x1 + "
                                                             "one depthwise conv (exact)"}))


@register("yunet", "tflite", "int8")
def yunet_tflite_int8(ctx: ExportContext, role: str, folder: Path) -> ModelArtifact:
    name = "detector.int8.tflite"
    settings = YunetQuantization()
    model = build_yunet_int8(ctx, settings)
    _write_artifact(folder, name, model)
    inputs, _ = yunet_io(ctx.detector_input_size)
    _int8_pixel_input(inputs, "BGR frame (letterboxed, zero padding) as int8 pixel - 128; the input tensor's zero point (-128) "
                              "makes the graph's real input the raw pixel YuNet takes")
    _, prep = ctx.prepared_detector(127)
    details = _details(model, input_size=list(ctx.detector_input_size), quantization=asdict(settings), preparation=prep)
    return ModelArtifact(name, role, "tflite", "int8", inputs, _yunet_outputs(model, ctx.detector_input_size), details=details)
