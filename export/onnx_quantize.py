"""ONNX int8 converters (onnxruntime static QDQ): the regressor with its FC in fp32, the full-integer
regressor, FaceBoxes and YuNet.

The regressor starts from ``ctx.fp32_onnx("regressor")``, the detectors from ``ctx.prepared_onnx(PIXEL_CONV_QMAX)``
(BN folded, YuNet equalized, every quantized convolution's weights already GPTQ-rounded onto the int8 grid
onnxruntime derives from them: ``detector_prep``). Each float graph is rewritten before ``quantize_static`` so that
every quantized op lands on one of MLAS's fast integer kernels:

- no float preprocessing: the graph input is the uint8 BGR frame and the first op is a DequantizeLinear
  whose zero point does the centring (the regressor's ``(x - 127.5) / 128`` becomes ``(x - 128) / 128`` with the
  half-step folded into the first conv bias; FaceBoxes' per-channel BGR mean becomes one zero point, 115,
  with the rest folded into the conv1 bias; YuNet takes raw pixels: zero point 0);
- the first conv (3 input channels, which MLAS runs through a slow im2col GEMM) is rewritten over groups of
  4 neighbouring pixels: a free NHWC reshape ``(H, W, 3) -> (H, W/4, 12)`` plus an equivalent conv with 12
  input channels, which the symmetric indirect-conv kernel accepts; its weights have 7 bits per output channel;
- FaceBoxes: CReLU (``relu(cat(x, -x))``) becomes one conv with ``[W; -W]`` weights, avg-pool + 1x1 conv
  becomes one 3x3 conv with the 1x1 weights / 9; the activations from the inception blocks on are calibrated with a
  range margin (``DEEP_RANGE_MARGIN``);
- YuNet: the four prediction branches of each level are merged into one 1x1 + one depthwise conv and stay float.

Calibration uses only ``ctx.calibration_crops()`` (regressor) and ``ctx.detector_frames()`` with their mirror images
(detectors) in their fixed order, and every session here runs one thread, so the same export gives the same bytes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from tddfa_edge.contracts.errors import ExportError
from tddfa_edge.runtime.faceboxes_decoding import BGR_MEAN

from .artifacts import ExportContext, ModelArtifact, check_file, register
from .model_io import detector_io, regressor_io, yunet_io
from .onnx_graph import (
    CALIBRATION_BATCH, COLUMN_GROUP, array, attrs, consumers, fold_avgpool, fold_crelu, group_first_conv, initializers, integer_output,
    merge_yunet_heads, onnx_module, ort_session, pixels_as_input, producers, run_batches, save_model, set_float_input, store, strip_pixel_preprocessing,
    structure, with_outputs,
)

# Regressor input: (pixel - 128) / 128 is exactly uint8 with scale 1/128 and zero point 128.
REGRESSOR_PIXEL_SCALE = 1.0 / 128.0


REGRESSOR_PIXEL_ZERO_POINT = 128


# Detector input: pixel - 115 (115 ~ mean of the BGR mean) is exactly uint8 with scale 1, zero point 115.
DETECTOR_PIXEL_ZERO_POINT = 115




# Cross-layer equalization exponents: into depthwise convs the rescale is free (per-channel weights on both
# sides); into pointwise convs it trades activation for weight precision, 0.5 balances the two.
EQUALIZE_INTO_DEPTHWISE = 1.0


EQUALIZE_INTO_POINTWISE = 0.5


EQUALIZE_MAX_GAIN = 16.0


# Full-integer output: each of the 62 outputs gets its own range, widened by this fraction of it so
# held-out faces (extreme poses) clip less often.
OUTPUT_RANGE_MARGIN = 0.10


OUTPUT_LEVELS = 255




class _Batches:
    """CalibrationDataReader over fixed batches of one input, read one batch at a time (``set_range``).

    onnxruntime's calibrators keep every intermediate tensor of everything one ``collect_data`` call reads: the
    regressor's 800 crops at once took the export to 7 GB. Given ``CalibStridedMinMax`` (any calibration method,
    despite the name) it calls ``collect_data`` once per range and merges the ranges / histograms.
    """

    def __init__(self, name: str, x: np.ndarray, batch: int) -> None:
        # Equal batches: onnxruntime's histogram collector (Percentile) cannot stack a shorter last batch.
        batch = next(b for b in range(min(batch, len(x)), 0, -1) if len(x) % b == 0)
        self.feeds = [{name: x[i:i + batch]} for i in range(0, len(x), batch)]
        self.start, self.end = 0, len(self.feeds)
        self.index = 0

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, min(end_index, len(self.feeds))
        self.index = self.start

    def get_next(self):
        if self.index >= self.end:
            return None
        self.index += 1
        return self.feeds[self.index - 1]

    def rewind(self):
        self.index = self.start


def _quantize(float_model, work: Path, feed: str, x: np.ndarray, *, method: str, overrides: dict,
              exclude: list[str] = (), extra: dict | None = None, batch: int = CALIBRATION_BATCH, symbolic_shapes: bool = True):
    """quant_pre_process + quantize_static (QDQ, per-channel int8 weights, uint8 activations).

    ``symbolic_shapes=False`` skips the symbolic shape inference (YuNet's dynamic Resize/Reshape defeat it; onnx's
    own shape inference still runs)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_Batches, CalibrationDataReader):
        pass

    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        src, pre, out = Path(tmp) / "float.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "qdq.onnx"
        onnx_module().save(float_model, str(src))
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=not symbolic_shapes)
        options = {"TensorQuantOverrides": overrides, "CalibStridedMinMax": 1}  # one batch per collect_data: bounded memory
        options.update(extra or {})
        quantize_static(
            str(pre), str(out), Reader(feed, x, batch), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
            calibrate_method=getattr(CalibrationMethod, method), extra_options=options,
        )
        return onnx_module().load(str(out))


def _pixel_conv_weights(model, pixel_tensor: str = "pixel_groups") -> dict:
    """7-bit weights for the convolution that reads the uint8 pixels.

    Without VNNI, onnxruntime's u8s8 kernels add pairs of u8 x s8 products in int16 (vpmaddubsw), which saturates
    when both are large: pixels span the full 0-255 range, so the first convolution overflowed on AVX2-only CPUs
    (mean landmark drift 0.75 px there against 0.25 px simulated). 7-bit weights bound each pair by 2 x 255 x 64 <
    32767; measured on the regressor, they cost nothing (0.254 px), while 7 bits everywhere cost 0.50 px.
    """
    users = [n for n in model.graph.node if n.op_type == "Conv" and n.input[0] == pixel_tensor]
    if len(users) != 1:
        raise ExportError(f"expected one convolution reading {pixel_tensor}, found {len(users)}")
    # "axis" keeps the weights per output channel: an override without it made them per tensor.
    return {users[0].input[1]: [{"reduce_range": True, "axis": 0}]}


def _fixed_qparams(scale: float, zero_point: int) -> list[dict]:
    return [{"scale": np.array(scale, np.float32), "zero_point": np.array(zero_point, np.uint8)}]


def _relu_channel_max(model, crops: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel max of every Relu output of the fp32 pixel-input graph over the calibration crops."""
    relus = [n.output[0] for n in model.graph.node if n.op_type == "Relu"]
    session = ort_session(with_outputs(model, relus))
    peak = None
    for outs in run_batches(session, "image", crops, relus):
        cur = [o.max(axis=(0, 2, 3)) for o in outs]
        peak = cur if peak is None else [np.maximum(a, b) for a, b in zip(peak, cur)]
    return dict(zip(relus, peak))


def _equalize(model, channel_max: dict[str, np.ndarray], into_fc: float) -> list[dict]:
    """Cross-layer equalization driven by activation ranges.

    For each Relu output, channel o is scaled by g_o = (M / m_o)^alpha (M: tensor max, m_o: channel max,
    clipped to [1, EQUALIZE_MAX_GAIN]): the producing conv's row o and bias times g_o, the consumer's input
    channel o divided by g_o, so the float function is unchanged while small channels use more of the
    per-tensor uint8 activation range.
    """
    graph = model.graph
    inits = initializers(graph)
    prod, cons = producers(graph), consumers(graph)
    log = []
    for relu_out, peak in channel_max.items():
        conv = prod[prod[relu_out].input[0]]
        users = cons.get(relu_out, [])
        if conv.op_type != "Conv" or len(users) != 1:
            continue
        user = users[0]
        if user.op_type == "Conv":
            depthwise = attrs(user).get("group", 1) > 1
            alpha = EQUALIZE_INTO_DEPTHWISE if depthwise else EQUALIZE_INTO_POINTWISE
        elif user.op_type == "GlobalAveragePool":
            user = cons[cons[user.output[0]][0].output[0]][0]  # GlobalAveragePool -> Flatten -> Gemm
            if user.op_type != "Gemm":
                continue
            depthwise, alpha = False, into_fc
        else:
            continue
        if alpha <= 0:
            continue
        top = float(peak.max())
        live = peak > top * 1e-4
        gain = np.ones_like(peak, dtype=np.float32)
        gain[live] = np.clip((top / peak[live]) ** alpha, 1.0, EQUALIZE_MAX_GAIN)
        store(inits, conv.input[1], (array(inits, conv.input[1]) * gain[:, None, None, None]).astype(np.float32))
        store(inits, conv.input[2], (array(inits, conv.input[2]) * gain).astype(np.float32))
        w = array(inits, user.input[1])
        if user.op_type == "Gemm":
            w = w / gain[None, :]
        elif depthwise:
            w = w / gain[:, None, None, None]
        else:
            w = w / gain[None, :, None, None]
        store(inits, user.input[1], w.astype(np.float32))
        log.append(float(np.median(gain)))
    return log


def _regressor_float_core(ctx: ExportContext, into_fc: float):
    """fp32 graph -> equalized float graph whose input ``pixels_centered`` is (pixel - 128) / 128, NHWC, and
    whose first conv reads 4-pixel column groups. Returns (model, calibration input, equalization gains)."""
    onnx = onnx_module()
    model = onnx.load(str(ctx.fp32_onnx("regressor")))
    crops = ctx.calibration_crops()
    gains = _equalize(model, _relu_channel_max(model, crops), into_fc)
    graph = model.graph
    conv1 = strip_pixel_preprocessing(graph, ["Transpose", "Cast", "Sub", "Mul"])
    inits = initializers(graph)
    w = array(inits, conv1.input[1]).astype(np.float32)
    b = array(inits, conv1.input[2]).astype(np.float32)
    # (x - 127.5) / 128 = (x - 128) / 128 + 0.5 / 128: fold the half step into the bias (exact except at the
    # zero-padded border, where it is 1/256 of one tap).
    store(inits, conv1.input[2], (b + w.sum(axis=(1, 2, 3)) * np.float32(0.5 / 128)).astype(np.float32))
    group_first_conv(graph, conv1, "pixels_centered", kernel=3, stride=2, pad=1)
    set_float_input(graph, "pixels_centered", ["batch", 120, 120, 3])
    centered = ((crops.astype(np.float32) - REGRESSOR_PIXEL_ZERO_POINT) * np.float32(REGRESSOR_PIXEL_SCALE))
    return model, centered, gains


def _fc(model):
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    if len(gemms) != 1:
        raise ExportError(f"expected one Gemm (the FC) in the regressor, found {len(gemms)}")
    return gemms[0]


# Calibrated on the user's own photos or video (--calibration), the regressor's activations get this many times their
# calibrated range: one person's video gave ranges 1.3-2x narrower than faces in general, and AFLW2000-3D NME went
# from 3.80 (curated crops) to 5.15; with 2x, 3.88 for that video and 3.796 for 400 photos of many people.
USER_CALIBRATION_MARGIN = 2.0


def _user_calibration_margins(ctx: ExportContext, model, x: np.ndarray) -> dict:
    """TensorQuantOverrides widening every activation range by ``USER_CALIBRATION_MARGIN`` for user calibration."""
    if ctx.user_calibration is None:
        return {}
    names = [o for n in model.graph.node if n.op_type in ("Relu", "Clip", "GlobalAveragePool", "Conv", "Add") for o in n.output]
    return {t: [{"rmin": np.array(min(0.0, lo) * USER_CALIBRATION_MARGIN, np.float32),
                 "rmax": np.array(hi * USER_CALIBRATION_MARGIN, np.float32)}]
            for t, (lo, hi) in _activation_ranges(model, x, names).items()}


def _calibration_facts(ctx: ExportContext) -> dict:
    if ctx.user_calibration is None:
        return {"source": "ctx.calibration_crops() (AFLW calibration set, not AFLW2000-3D)", "method": "Percentile 99.999"}
    return {"source": ctx.user_calibration.describe(), "method": "Percentile 99.999",
            "range_margin": USER_CALIBRATION_MARGIN}


def _regressor_details(kind: str, path: Path, gains: list[float], extra: dict, ctx: ExportContext) -> dict:
    details = {
        "format": "QDQ (onnxruntime quantize_static), opset 17",
        "weights": "int8 symmetric, per output channel",
        "activations": "uint8 asymmetric, per tensor",
        "calibration": _calibration_facts(ctx),
        "input": "uint8 NHWC BGR pixels; first op DequantizeLinear(scale 1/128, zero point 128); the 0.5/128 offset of "
                 "(x - 127.5)/128 is folded into the first conv bias",
        "first_conv": "3x3/s2 conv rewritten over 4-pixel column groups (12 input channels, 2 output columns per group) "
                      "so MLAS's symmetric indirect-conv kernel runs it; the group reshapes are free NHWC views",
        "equalization": {"into_depthwise": EQUALIZE_INTO_DEPTHWISE, "into_pointwise": EQUALIZE_INTO_POINTWISE,
                         "max_gain": EQUALIZE_MAX_GAIN, "pairs": len(gains)},
        "variant": kind,
    }
    details.update(extra)
    details.update(structure(path))
    return details


@register("regressor", "onnx", "int8")
def regressor_onnx_int8(ctx: ExportContext, role: str, folder: Path) -> ModelArtifact:
    """Static QDQ, per-channel U8S8, every conv int8, the last FC (which carries most of the int8 loss) fp32."""
    model, centered, gains = _regressor_float_core(ctx, into_fc=1.0)  # the FC stays float: equalizing into it is free
    fc = _fc(model)
    qmodel = _quantize(model, ctx.work_dir / "onnxq-regressor-int8", "pixels_centered", centered, method="Percentile",
                       overrides={**_user_calibration_margins(ctx, model, centered),
                                  "pixel_groups": _fixed_qparams(REGRESSOR_PIXEL_SCALE, REGRESSOR_PIXEL_ZERO_POINT),
                                  **_pixel_conv_weights(model)},
                       exclude=[fc.name])
    pixels_as_input(qmodel, "pixel_groups", "pixels_centered", ["batch", 120, 120, 3])
    name = "regressor.int8.onnx"
    save_model(qmodel, folder / name)
    check_file(folder / name)
    inputs, outputs = regressor_io()
    inputs[0]["description"] = "BGR crop, uint8 as is; the graph reads it as (x - 128) / 128 through its first DequantizeLinear"
    details = _regressor_details("int8: all convs int8, last FC fp32", folder / name, gains,
                                 {"fc": "fp32 (DequantizeLinear of the pooled features -> float Gemm)", "output": "float32 param_norm"}, ctx)
    return ModelArtifact(name, role, "onnx", "int8", inputs, outputs, param_normalized=True, details=details)


def _renormalize_fc(model, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Folds a per-output affine into the FC so each output spans [0, OUTPUT_LEVELS] on the calibration crops
    (plus the margin); one uint8 scale (1.0) then fits all 62. Returns per-output (step, zero_point) with
    param_norm = (q - zero_point) * step."""
    lo, hi = outputs.min(axis=0), outputs.max(axis=0)
    margin = (hi - lo) * OUTPUT_RANGE_MARGIN
    lo, hi = np.minimum(lo - margin, 0.0), np.maximum(hi + margin, 0.0)  # keep 0 representable
    step = (np.maximum(hi - lo, 1e-2) / OUTPUT_LEVELS).astype(np.float32)
    zero_point = np.round(-lo / step).astype(np.int64)
    fc = _fc(model)
    inits = initializers(model.graph)
    w = array(inits, fc.input[1]).astype(np.float32)
    b = array(inits, fc.input[2]).astype(np.float32)
    if attrs(fc).get("transB", 0) != 1:
        raise ExportError("the FC Gemm is expected with transB=1")
    store(inits, fc.input[1], (w / step[:, None]).astype(np.float32))
    store(inits, fc.input[2], (b / step + zero_point).astype(np.float32))
    return step, zero_point


def _mean_output(model, tensor: str, feed: str, x: np.ndarray, optimize: bool = True) -> np.ndarray:
    session = ort_session(with_outputs(model, [tensor]), optimize=optimize)
    return np.concatenate([out[0] for out in run_batches(session, feed, x, [tensor])]).mean(axis=0)


def _correct_fc_bias(qmodel, float_model, feed: str, x: np.ndarray) -> float:
    """Empirical bias correction of the FC alone: its mean (int8 - float) output error over the calibration
    crops, per output, comes off its int32 bias. Returns the largest correction in output steps."""
    fc_q = _fc(qmodel)
    reference = _mean_output(float_model, _fc(float_model).output[0], feed, x)
    # Unoptimized, the QDQ graph computes the Gemm in float on dequantized operands: exactly the integer
    # kernel's accumulator before requantization.
    quantized = _mean_output(qmodel, fc_q.output[0], feed, x, optimize=False)
    inits = initializers(qmodel.graph)
    bias_dq = producers(qmodel.graph)[fc_q.input[2]]
    bias_q = array(inits, bias_dq.input[0]).astype(np.int64)
    bias_scale = array(inits, bias_dq.input[1]).astype(np.float64)
    error = (quantized - reference).astype(np.float64)
    store(inits, bias_dq.input[0], (bias_q - np.round(error / bias_scale).astype(np.int64)).astype(np.int32))
    return float(np.abs(error).max())


@register("regressor", "onnx", "int8-full")
def regressor_onnx_int8_full(ctx: ExportContext, role: str, folder: Path) -> ModelArtifact:
    """Every layer int8 including the FC; uint8 pixels in, uint8 parameters out (dequantized per output)."""
    model, centered, gains = _regressor_float_core(ctx, into_fc=0.0)  # equalizing into the FC costs FC weight precision
    outputs = np.concatenate([o[0] for o in run_batches(ort_session(model), "pixels_centered", centered)])
    step, zero_point = _renormalize_fc(model, outputs)
    out_name = _fc(model).output[0]
    qmodel = _quantize(model, ctx.work_dir / "onnxq-regressor-int8-full", "pixels_centered", centered, method="Percentile",
                       overrides={**_user_calibration_margins(ctx, model, centered),
                                  "pixel_groups": _fixed_qparams(REGRESSOR_PIXEL_SCALE, REGRESSOR_PIXEL_ZERO_POINT),
                                  out_name: _fixed_qparams(1.0, 0), **_pixel_conv_weights(model)})
    largest_fix = _correct_fc_bias(qmodel, model, "pixels_centered", centered)
    pixels_as_input(qmodel, "pixel_groups", "pixels_centered", ["batch", 120, 120, 3])
    integer_output(qmodel, out_name)
    name = "regressor.int8-full.onnx"
    save_model(qmodel, folder / name)
    check_file(folder / name)
    quant_out = {"scale": [float(s) for s in step], "zero_point": [int(z) for z in zero_point], "axis": 1}
    inputs, outputs_spec = regressor_io(output_dtype="uint8", quant_out=quant_out)
    inputs[0]["description"] = "BGR crop, uint8 as is; the graph reads it as (x - 128) / 128 through its first DequantizeLinear"
    outputs_spec[0]["description"] = ("62 normalized 3DMM parameters as uint8, one scale per parameter: "
                                      "param_norm = (q - zero_point[i]) * scale[i]; the graph itself has one output scale (1.0)")
    details = _regressor_details("int8-full: every layer int8, FC included", folder / name, gains, {
        "fc": "int8 (QGemm), rows re-normalized so every output spans the uint8 range on the calibration crops "
              f"(+{OUTPUT_RANGE_MARGIN:.0%} margin); empirical FC bias correction, largest {largest_fix:.3f} steps",
        "output": "uint8 param_norm, per-parameter dequantization in the output spec (graph: one uint8 scale, NPU-friendly)",
        "equalization_into_fc": 0.0,
    }, ctx)
    return ModelArtifact(name, role, "onnx", "int8-full", inputs, outputs_spec, param_normalized=True, details=details)


def _detector_frames(ctx: ExportContext) -> np.ndarray:
    """uint8 calibration frames of a detector: ``ctx.detector_frames()`` and their mirror images, in a fixed order."""
    frames = np.stack(ctx.detector_frames())
    return np.ascontiguousarray(np.concatenate([frames, frames[:, :, ::-1]]))


def _detector_float_core(ctx: ExportContext, grouped: bool):
    """FaceBoxes ready for quantization (BN folded, weights on their int8 grid: ``ctx.prepared_onnx``) -> float graph
    with input ``pixels_centered`` = pixel - 115 (NHWC) and the rewrites above."""
    onnx = onnx_module()
    model = onnx.load(str(ctx.prepared_onnx(PIXEL_CONV_QMAX)))
    shape = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    graph = model.graph
    conv1 = strip_pixel_preprocessing(graph, ["Transpose", "Cast", "Sub"])
    inits = initializers(graph)
    w = array(inits, conv1.input[1]).astype(np.float32)
    b = array(inits, conv1.input[2]).astype(np.float32)
    # pixel - mean_c = (pixel - 115) + (115 - mean_c): fold the per-channel rest into the bias. Exact except
    # in conv1's 3-px zero padding, which now stands for pixel 115 instead of the mean colour.
    shift = np.float32(DETECTOR_PIXEL_ZERO_POINT) - np.asarray(BGR_MEAN, np.float32)
    store(inits, conv1.input[2], (b + (w * shift[None, :, None, None]).sum(axis=(1, 2, 3))).astype(np.float32))
    if grouped:
        group_first_conv(graph, conv1, "pixels_centered", kernel=7, stride=4, pad=3)
    else:
        from onnx import helper

        graph.node.insert(0, helper.make_node("Transpose", ["pixels_centered"], ["pixel_groups"], name="pixels_nchw", perm=[0, 3, 1, 2]))
        conv1.input[0] = "pixel_groups"
    crelu = fold_crelu(graph)
    pools = fold_avgpool(graph)
    set_float_input(graph, "pixels_centered", shape)
    return model, shape, {"crelu_folded": crelu, "avgpool_folded": pools}


# FaceBoxes' activations from the inception blocks on (stride 32 and coarser, the box and score head outputs included)
# are calibrated to this multiple of their range on the calibration frames. Real photos of large, sharp faces drive
# them up to 1.6x above what mosaics of 120-px calibration crops reach (the crops upscaled to a large face are blurry);
# clipped, they shifted the score logits of a 204-px face by -0.9 and its box by 2.3% (the winning prior changed).
# The early, high-resolution layers see local contrast the mosaics do cover, and keep their fine grid.
DEEP_RANGE_MARGIN = 1.5


def _deep_tensors(graph, tail: list[str]) -> list[str]:
    """Activations after FaceBoxes' second max pool (inception blocks, conv3/conv4, head outputs), outside the float tail."""
    pools = [i for i, n in enumerate(graph.node) if n.op_type == "MaxPool"]
    if len(pools) < 2:
        raise ExportError(f"expected FaceBoxes' two max pools, found {len(pools)}")
    skip = set(tail)
    return [n.output[0] for n in list(graph.node)[pools[1] + 1:]
            if n.op_type in ("Conv", "Relu", "Concat", "MaxPool") and n.name not in skip]


def _activation_ranges(model, frames: np.ndarray, names: list[str]) -> dict[str, tuple[float, float]]:
    session = ort_session(with_outputs(model, names))
    lo = {n: np.inf for n in names}
    hi = {n: -np.inf for n in names}
    for outs in run_batches(session, "pixels_centered", frames, names, batch=1):
        for n, v in zip(names, outs):
            lo[n], hi[n] = min(lo[n], float(v.min())), max(hi[n], float(v.max()))
    return {n: (lo[n], hi[n]) for n in names}


def _range_overrides(model, frames: np.ndarray, tail: list[str], margin: float = DEEP_RANGE_MARGIN) -> dict:
    """TensorQuantOverrides (rmin, rmax) giving the deep activations ``margin`` times their calibrated range.

    The inception concats' inputs keep their own ranges: one shared range (a copy instead of a requantizing concat)
    put every branch on the widest branch's grid, which cost more box accuracy (photos' worst box 1.3% against 0.95%)
    than the requantization costs time (the concats run at stride 32: no measurable difference).
    """
    deep = _deep_tensors(model.graph, tail)
    ranges = _activation_ranges(model, frames, deep)
    return {t: [{"rmin": np.array(min(0.0, lo) * margin, np.float32), "rmax": np.array(hi * margin, np.float32)}]
            for t, (lo, hi) in ranges.items()}


def _head_convs(graph) -> list:
    """FaceBoxes' six head convolutions (box offsets and scores of the three sources): each feeds only a Transpose."""
    cons = consumers(graph)
    return [n for n in graph.node if n.op_type == "Conv" and cons.get(n.output[0])
            and all(u.op_type == "Transpose" for u in cons[n.output[0]])]


def _head_tail(graph) -> list[str]:
    """Layout/concat/softmax nodes after the box and score heads: kept float (small tensors, full precision)."""
    frontier = {n.output[0] for n in _head_convs(graph)}
    tail: list[str] = []
    for n in graph.node:  # topological order
        if n.op_type in ("Transpose", "Reshape", "Concat", "Softmax") and any(t in frontier for t in n.input):
            tail.append(n.name)
            frontier.update(n.output)
    return tail


def _weights_off_grid(float_model, qmodel) -> list[str]:
    """Quantized convolutions whose stored int8 weights are not exactly the prepared float weights (which
    ``detector_prep`` put on their int8 grid): empty unless onnxruntime derived another scale than the weights were
    rounded on, which would silently turn the GPTQ rounding into a second, round-to-nearest one."""
    from onnx import numpy_helper

    float_weights = {n.name: array(initializers(float_model.graph), n.input[1]) for n in float_model.graph.node if n.op_type == "Conv"}
    graph = qmodel.graph
    inits, prod = initializers(graph), producers(graph)
    off = []
    for node in graph.node:
        dq = prod.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if dq is None or dq.op_type != "DequantizeLinear" or node.name not in float_weights:
            continue
        q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64).reshape(-1, *([1] * (q.ndim - 1)))
        if not np.allclose(float_weights[node.name] / scale, q, rtol=0, atol=1e-3):
            off.append(node.name)
    return off


def _save_detector(float_model, qmodel, folder: Path, name: str = "detector.int8.onnx") -> str:
    """Write a quantized detector after checking it kept the prepared (GPTQ-rounded) int8 weights."""
    off_grid = _weights_off_grid(float_model, qmodel)
    if off_grid:
        raise ExportError(f"quantized convolutions lost their prepared int8 weights (scale mismatch): {', '.join(off_grid[:3])}")
    save_model(qmodel, folder / name)
    check_file(folder / name)
    return name


def _detector_details(ctx: ExportContext, path: Path, frames: int, extra: dict) -> dict:
    _, prep = ctx.prepared_detector(PIXEL_CONV_QMAX)
    details = {
        "format": "QDQ (onnxruntime quantize_static), opset 17",
        "weights": "int8 symmetric, per output channel, GPTQ-rounded against the calibration inputs (detector_prep)",
        "activations": "uint8 asymmetric, per tensor",
        "calibration": {"source": "ctx.detector_frames() (mosaics of calibration crops) and their mirror images",
                        "frames": int(frames), "method": "MinMax"},
        "preparation": prep,
        "dynamic_shape": ctx.detector_input_size is None,
        **extra,
    }
    details.update(structure(path))
    return details


# Weights of the convolution reading the uint8 pixels: 7 bits (see ``_pixel_conv_weights``).
PIXEL_CONV_QMAX = 64


@register("faceboxes", "onnx", "int8")
def detector_onnx_int8(ctx: ExportContext, role: str, folder: Path) -> ModelArtifact:
    """FaceBoxes, static QDQ per-channel U8S8, all convs int8 (heads included); the box/score tail stays float."""
    size = ctx.detector_input_size
    # The column-group view needs the width to be a multiple of 4; dynamic-size detectors keep the plain conv1.
    grouped = size is not None and size[0] % COLUMN_GROUP == 0
    model, shape, rewrites = _detector_float_core(ctx, grouped)
    frames = _detector_frames(ctx).astype(np.float32) - np.float32(DETECTOR_PIXEL_ZERO_POINT)
    tail = _head_tail(model.graph)
    overrides = _range_overrides(model, frames, tail)
    overrides.update({"pixel_groups": _fixed_qparams(1.0, DETECTOR_PIXEL_ZERO_POINT), **_pixel_conv_weights(model)})
    qmodel = _quantize(model, ctx.work_dir / "onnxq-detector-int8", "pixels_centered", frames, method="MinMax",
                       overrides=overrides, exclude=tail, batch=1)
    pixels_as_input(qmodel, "pixel_groups", "pixels_centered", shape)
    name = _save_detector(model, qmodel, folder)
    inputs, outputs = detector_io(size)
    inputs[0]["description"] = ("BGR frame (letterboxed when the size is fixed), uint8 as is; the graph reads it as pixel - 115 "
                                "through its first DequantizeLinear, the rest of the BGR mean is in the conv1 bias")
    details = _detector_details(ctx, folder / name, len(frames), {
        "input": "uint8 NHWC BGR; first op DequantizeLinear(scale 1, zero point 115)",
        "first_conv": ("7x7/s4 conv over 4-pixel column groups (12 input channels), 7-bit weights per channel" if grouped
                       else "plain 7x7/s4 conv (dynamic or non-multiple-of-4 width), 7-bit weights per channel"),
        "rewrites": rewrites,
        "deep_range_margin": {"factor": DEEP_RANGE_MARGIN, "tensors": "inception blocks, conv3/conv4, head outputs (after the 2nd max pool)"},
        "float_tail": sorted({n.split("/")[-1].rstrip("_0123456789") for n in tail}),
    })
    return ModelArtifact(name, role, "onnx", "int8", inputs, outputs, details=details)


def _yunet_float_core(ctx: ExportContext):
    """YuNet ready for quantization (BN folded, equalized, weights on their int8 grid) -> float graph whose input
    ``pixels`` is the raw NHWC frame (YuNet takes 0-255 pixels, no mean), whose stem conv reads 4-pixel column groups
    and whose four prediction branches per level are merged (``merge_yunet_heads``). Returns (model, shape, head nodes)."""
    onnx = onnx_module()
    model = onnx.load(str(ctx.prepared_onnx(PIXEL_CONV_QMAX)))
    shape = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    graph = model.graph
    stem = strip_pixel_preprocessing(graph, ["Transpose", "Cast"])
    # Heights and widths are multiples of 32, so the column-group view always applies (dynamic shapes included).
    group_first_conv(graph, stem, "pixels", kernel=3, stride=2, pad=1)
    heads = merge_yunet_heads(graph)
    set_float_input(graph, "pixels", shape)
    return model, shape, heads


@register("yunet", "onnx", "int8")
def yunet_onnx_int8(ctx: ExportContext, role: str, folder: Path) -> ModelArtifact:
    """YuNet, static QDQ per-channel U8S8: backbone, neck and shared head convs int8; the prediction convs (cls, obj,
    bbox, kps: 1x1 + depthwise, merged per level) and their tail run in float on the dequantized features."""
    size = ctx.detector_input_size
    model, shape, heads = _yunet_float_core(ctx)
    frames = _detector_frames(ctx).astype(np.float32)
    overrides = {"pixel_groups": _fixed_qparams(1.0, 0), **_pixel_conv_weights(model, "pixel_groups")}
    qmodel = _quantize(model, ctx.work_dir / "onnxq-yunet-int8", "pixels", frames, method="MinMax", overrides=overrides,
                       exclude=heads, batch=1, symbolic_shapes=False)
    pixels_as_input(qmodel, "pixel_groups", "pixels", shape)
    name = _save_detector(model, qmodel, folder)
    inputs, outputs = yunet_io(size)
    inputs[0]["description"] = ("BGR frame (zero-padded to the input size or to multiples of 32), uint8 as is: the graph's first "
                                "op is DequantizeLinear(scale 1, zero point 0), YuNet takes raw pixels")
    details = _detector_details(ctx, folder / name, len(frames), {
        "input": "uint8 NHWC BGR; first op DequantizeLinear(scale 1, zero point 0)",
        "first_conv": "3x3/s2 stem conv over 4-pixel column groups (12 input channels, 2 output columns per group), "
                      "7-bit weights per channel",
        "float_head": "per level: the cls/obj/bbox/kps 1x1 convs merged into one (64 -> 16), their depthwise convs into one, "
                      "then Transpose/Reshape/Split/Sigmoid, all float on the dequantized shared features",
    })
    return ModelArtifact(name, role, "onnx", "int8", inputs, outputs, details=details)
