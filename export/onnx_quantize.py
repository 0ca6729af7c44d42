"""ONNX int8 converters (onnxruntime static QDQ): the regressor with its FC in fp32, the full-integer
regressor, and FaceBoxes.

All three start from ``ctx.fp32_onnx(role)`` and rewrite the float graph before ``quantize_static`` so that
every quantized op lands on one of MLAS's fast integer kernels:

- no float preprocessing: the graph input is the uint8 BGR frame and the first op is a DequantizeLinear
  whose zero point does the centring (the regressor's ``(x - 127.5) / 128`` becomes ``(x - 128) / 128`` with the
  half-step folded into the first conv bias; FaceBoxes' per-channel BGR mean becomes one zero point, 115,
  with the rest folded into the conv1 bias);
- the first conv (3 input channels, which MLAS runs through a slow im2col GEMM) is rewritten over groups of
  4 neighbouring pixels: a free NHWC reshape ``(H, W, 3) -> (H, W/4, 12)`` plus an equivalent conv with 12
  input channels, which the symmetric indirect-conv kernel accepts;
- FaceBoxes: CReLU (``relu(cat(x, -x))``) becomes one conv with ``[W; -W]`` weights, avg-pool + 1x1 conv
  becomes one 3x3 conv with the 1x1 weights / 9, and the inception concat inputs share one scale so the
  int8 concat is a copy, not a requantization.

Calibration uses only ``ctx.calibration_crops()`` (regressor) and ``ctx.detector_frames()`` (detector) in
their fixed order, and every session here runs one thread, so the same export gives the same bytes.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from tddfa_edge.runtime.detector import BGR_MEAN
from tddfa_edge.runtime.errors import ExportError

from .artifacts import ExportContext, ModelArtifact, check_file, register, regressor_io
from .onnx_converters import detector_io

# Regressor input: (pixel - 128) / 128 is exactly uint8 with scale 1/128 and zero point 128.
REGRESSOR_PIXEL_SCALE = 1.0 / 128.0
REGRESSOR_PIXEL_ZERO_POINT = 128
# Detector input: pixel - 115 (115 ~ mean of the BGR mean) is exactly uint8 with scale 1, zero point 115.
DETECTOR_PIXEL_ZERO_POINT = 115
# Pixels per column group of the rewritten first conv (= its stride for FaceBoxes, 2x it for MobileNet).
COLUMN_GROUP = 4
# Cross-layer equalization exponents: into depthwise convs the rescale is free (per-channel weights on both
# sides); into pointwise convs it trades activation for weight precision, 0.5 balances the two.
EQUALIZE_INTO_DEPTHWISE = 1.0
EQUALIZE_INTO_POINTWISE = 0.5
EQUALIZE_MAX_GAIN = 16.0
# Full-integer output: each of the 62 outputs gets its own range, widened by this fraction of it so
# held-out faces (extreme poses) clip less often.
OUTPUT_RANGE_MARGIN = 0.10
OUTPUT_LEVELS = 255
CALIBRATION_BATCH = 50

# ----------------------------------------------------------------------------------------------------------
# Graph helpers
# ----------------------------------------------------------------------------------------------------------


def _onnx():
    import onnx

    return onnx


def _initializers(graph) -> dict:
    return {t.name: t for t in graph.initializer}


def _array(inits: dict, name: str) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(inits[name])


def _store(inits: dict, name: str, value: np.ndarray) -> None:
    from onnx import numpy_helper

    inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), name))


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _set_attrs(node, **values) -> None:
    from onnx import helper

    for a in list(node.attribute):
        if a.name in values:
            node.attribute.remove(a)
    node.attribute.extend([helper.make_attribute(k, v) for k, v in values.items()])


def _producers(graph) -> dict:
    return {out: n for n in graph.node for out in n.output}


def _consumers(graph) -> dict:
    found: dict[str, list] = {}
    for n in graph.node:
        for t in n.input:
            found.setdefault(t, []).append(n)
    return found


def _copy(model):
    return _onnx().load_from_string(model.SerializeToString())


def _session(model, optimize: bool = True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one thread: reductions in a fixed order, so calibration is reproducible
    options.inter_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _with_outputs(model, names: list[str]):
    from onnx import TensorProto, helper

    m = _copy(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in have])
    return m


def _run_batches(session, feed: str, x: np.ndarray, names: list[str] | None = None, batch: int = CALIBRATION_BATCH):
    """Yields the outputs of consecutive batches of ``x``."""
    for start in range(0, len(x), batch):
        yield session.run(names, {feed: x[start:start + batch]})


def _strip_pixel_preprocessing(graph, expected: list[str]):
    """Removes the in-graph Transpose/Cast/Sub(/Mul) at the input; returns the first conv."""
    head = list(graph.node)[: len(expected)]
    if [n.op_type for n in head] != expected:
        raise ExportError(f"unexpected fp32 graph head {[n.op_type for n in head]}, expected {expected}")
    first_conv = list(graph.node)[len(expected)]
    if first_conv.op_type != "Conv":
        raise ExportError(f"the preprocessing is followed by {first_conv.op_type}, expected Conv")
    del graph.node[: len(expected)]
    return first_conv


def _column_group_weights(w: np.ndarray, kernel: int, stride: int, pad: int) -> np.ndarray:
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


def _group_first_conv(graph, conv, input_name: str, kernel: int, stride: int, pad: int) -> tuple[str, int]:
    """Rewrites ``conv`` (NCHW input from an NHWC float tensor ``input_name``) to read column groups.

    Inserts ``Reshape(N, H, W/4, 12) -> Transpose`` in front; when the conv produced several output columns
    per group (phases > 1) also ``Transpose -> Reshape -> Transpose`` behind it, which only reinterpret NHWC
    memory. Returns (name of the grouped NCHW tensor, number of phases).
    """
    from onnx import helper, numpy_helper

    inits = _initializers(graph)
    w = _array(inits, conv.input[1]).astype(np.float32)
    b = _array(inits, conv.input[2]).astype(np.float32)
    phases = COLUMN_GROUP // stride
    _store(inits, conv.input[1], _column_group_weights(w, kernel, stride, pad))
    _store(inits, conv.input[2], np.tile(b, phases))
    span = _array(inits, conv.input[1]).shape[3]
    # Right padding: whatever keeps one output group per input group.
    _set_attrs(conv, kernel_shape=[kernel, span], pads=[pad, 1, pad, span - 2], strides=[stride, 1])
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
        activation = _consumers(graph)[conv.output[0]]
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


def _set_float_input(graph, name: str, shape: list) -> None:
    from onnx import TensorProto, helper

    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    del graph.value_info[:]


class _Batches:
    """CalibrationDataReader over fixed batches of one input."""

    def __init__(self, name: str, x: np.ndarray, batch: int) -> None:
        self.feeds = [{name: x[i:i + batch]} for i in range(0, len(x), batch)]
        self.index = 0

    def get_next(self):
        if self.index >= len(self.feeds):
            return None
        self.index += 1
        return self.feeds[self.index - 1]

    def rewind(self):
        self.index = 0


def _quantize(float_model, work: Path, feed: str, x: np.ndarray, *, method: str, overrides: dict,
              exclude: list[str] = (), extra: dict | None = None, batch: int = CALIBRATION_BATCH):
    """quant_pre_process + quantize_static (QDQ, per-channel int8 weights, uint8 activations)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_Batches, CalibrationDataReader):
        pass

    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        src, pre, out = Path(tmp) / "float.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "qdq.onnx"
        _onnx().save(float_model, str(src))
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
        options = {"TensorQuantOverrides": overrides}
        options.update(extra or {})
        quantize_static(
            str(pre), str(out), Reader(feed, x, batch), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
            calibrate_method=getattr(CalibrationMethod, method), extra_options=options,
        )
        return _onnx().load(str(out))


def _fixed_qparams(scale: float, zero_point: int) -> list[dict]:
    return [{"scale": np.array(scale, np.float32), "zero_point": np.array(zero_point, np.uint8)}]


def _pixels_as_input(qmodel, quantized_tensor: str, float_input: str, shape: list) -> None:
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


def _integer_output(qmodel, name: str) -> None:
    """Drops the final DequantizeLinear: the graph returns the quantized tensor itself."""
    graph = qmodel.graph
    prod = _producers(graph)
    dq = prod.get(name)
    if dq is None or dq.op_type != "DequantizeLinear":
        raise ExportError(f"output {name} is not produced by a DequantizeLinear")
    q = prod[dq.input[0]]
    graph.node.remove(dq)
    q.output[0] = name
    out = [o for o in graph.output if o.name == name][0]
    out.type.tensor_type.elem_type = _initializers(graph)[q.input[2]].data_type


def _save(model, path: Path) -> None:
    onnx = _onnx()
    model.producer_name = "tddfa-edge"
    model.producer_version = ""
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def structure(path: Path) -> dict:
    """Op counts of the saved QDQ graph and of the graph onnxruntime actually runs (ORT_ENABLE_ALL)."""
    import onnxruntime as ort

    onnx = _onnx()
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


# ----------------------------------------------------------------------------------------------------------
# Regressor
# ----------------------------------------------------------------------------------------------------------


def _relu_channel_max(model, crops: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel max of every Relu output of the fp32 pixel-input graph over the calibration crops."""
    relus = [n.output[0] for n in model.graph.node if n.op_type == "Relu"]
    session = _session(_with_outputs(model, relus))
    peak = None
    for outs in _run_batches(session, "image", crops, relus):
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
    inits = _initializers(graph)
    prod, cons = _producers(graph), _consumers(graph)
    log = []
    for relu_out, peak in channel_max.items():
        conv = prod[prod[relu_out].input[0]]
        users = cons.get(relu_out, [])
        if conv.op_type != "Conv" or len(users) != 1:
            continue
        user = users[0]
        if user.op_type == "Conv":
            depthwise = _attrs(user).get("group", 1) > 1
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
        _store(inits, conv.input[1], (_array(inits, conv.input[1]) * gain[:, None, None, None]).astype(np.float32))
        _store(inits, conv.input[2], (_array(inits, conv.input[2]) * gain).astype(np.float32))
        w = _array(inits, user.input[1])
        if user.op_type == "Gemm":
            w = w / gain[None, :]
        elif depthwise:
            w = w / gain[:, None, None, None]
        else:
            w = w / gain[None, :, None, None]
        _store(inits, user.input[1], w.astype(np.float32))
        log.append(float(np.median(gain)))
    return log


def _regressor_float_core(ctx: ExportContext, into_fc: float):
    """fp32 graph -> equalized float graph whose input ``pixels_centered`` is (pixel - 128) / 128, NHWC, and
    whose first conv reads 4-pixel column groups. Returns (model, calibration input, equalization gains)."""
    onnx = _onnx()
    model = onnx.load(str(ctx.fp32_onnx("regressor")))
    crops = ctx.calibration_crops()
    gains = _equalize(model, _relu_channel_max(model, crops), into_fc)
    graph = model.graph
    conv1 = _strip_pixel_preprocessing(graph, ["Transpose", "Cast", "Sub", "Mul"])
    inits = _initializers(graph)
    w = _array(inits, conv1.input[1]).astype(np.float32)
    b = _array(inits, conv1.input[2]).astype(np.float32)
    # (x - 127.5) / 128 = (x - 128) / 128 + 0.5 / 128: fold the half step into the bias (exact except at the
    # zero-padded border, where it is 1/256 of one tap).
    _store(inits, conv1.input[2], (b + w.sum(axis=(1, 2, 3)) * np.float32(0.5 / 128)).astype(np.float32))
    _group_first_conv(graph, conv1, "pixels_centered", kernel=3, stride=2, pad=1)
    _set_float_input(graph, "pixels_centered", ["batch", 120, 120, 3])
    centered = ((crops.astype(np.float32) - REGRESSOR_PIXEL_ZERO_POINT) * np.float32(REGRESSOR_PIXEL_SCALE))
    return model, centered, gains


def _fc(model):
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    if len(gemms) != 1:
        raise ExportError(f"expected one Gemm (the FC) in the regressor, found {len(gemms)}")
    return gemms[0]


def _regressor_details(kind: str, path: Path, gains: list[float], extra: dict) -> dict:
    details = {
        "format": "QDQ (onnxruntime quantize_static), opset 17",
        "weights": "int8 symmetric, per output channel",
        "activations": "uint8 asymmetric, per tensor",
        "calibration": {"source": "ctx.calibration_crops() (AFLW calibration set, not AFLW2000-3D)", "method": "Percentile 99.999"},
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
                       overrides={"pixel_groups": _fixed_qparams(REGRESSOR_PIXEL_SCALE, REGRESSOR_PIXEL_ZERO_POINT)},
                       exclude=[fc.name])
    _pixels_as_input(qmodel, "pixel_groups", "pixels_centered", ["batch", 120, 120, 3])
    name = "regressor.int8.onnx"
    _save(qmodel, folder / name)
    check_file(folder / name)
    inputs, outputs = regressor_io()
    inputs[0]["description"] = "BGR crop, uint8 as is; the graph reads it as (x - 128) / 128 through its first DequantizeLinear"
    details = _regressor_details("int8: all convs int8, last FC fp32", folder / name, gains,
                                 {"fc": "fp32 (DequantizeLinear of the pooled features -> float Gemm)", "output": "float32 param_norm"})
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
    inits = _initializers(model.graph)
    w = _array(inits, fc.input[1]).astype(np.float32)
    b = _array(inits, fc.input[2]).astype(np.float32)
    if _attrs(fc).get("transB", 0) != 1:
        raise ExportError("the FC Gemm is expected with transB=1")
    _store(inits, fc.input[1], (w / step[:, None]).astype(np.float32))
    _store(inits, fc.input[2], (b / step + zero_point).astype(np.float32))
    return step, zero_point


def _mean_output(model, tensor: str, feed: str, x: np.ndarray, optimize: bool = True) -> np.ndarray:
    session = _session(_with_outputs(model, [tensor]), optimize=optimize)
    return np.concatenate([out[0] for out in _run_batches(session, feed, x, [tensor])]).mean(axis=0)


def _correct_fc_bias(qmodel, float_model, feed: str, x: np.ndarray) -> float:
    """Empirical bias correction of the FC alone: its mean (int8 - float) output error over the calibration
    crops, per output, comes off its int32 bias. Returns the largest correction in output steps."""
    fc_q = _fc(qmodel)
    reference = _mean_output(float_model, _fc(float_model).output[0], feed, x)
    # Unoptimized, the QDQ graph computes the Gemm in float on dequantized operands: exactly the integer
    # kernel's accumulator before requantization.
    quantized = _mean_output(qmodel, fc_q.output[0], feed, x, optimize=False)
    inits = _initializers(qmodel.graph)
    bias_dq = _producers(qmodel.graph)[fc_q.input[2]]
    bias_q = _array(inits, bias_dq.input[0]).astype(np.int64)
    bias_scale = _array(inits, bias_dq.input[1]).astype(np.float64)
    error = (quantized - reference).astype(np.float64)
    _store(inits, bias_dq.input[0], (bias_q - np.round(error / bias_scale).astype(np.int64)).astype(np.int32))
    return float(np.abs(error).max())


@register("regressor", "onnx", "int8-full")
def regressor_onnx_int8_full(ctx: ExportContext, role: str, folder: Path) -> ModelArtifact:
    """Every layer int8 including the FC; uint8 pixels in, uint8 parameters out (dequantized per output)."""
    model, centered, gains = _regressor_float_core(ctx, into_fc=0.0)  # equalizing into the FC costs FC weight precision
    outputs = np.concatenate([o[0] for o in _run_batches(_session(model), "pixels_centered", centered)])
    step, zero_point = _renormalize_fc(model, outputs)
    out_name = _fc(model).output[0]
    qmodel = _quantize(model, ctx.work_dir / "onnxq-regressor-int8-full", "pixels_centered", centered, method="Percentile",
                       overrides={"pixel_groups": _fixed_qparams(REGRESSOR_PIXEL_SCALE, REGRESSOR_PIXEL_ZERO_POINT),
                                  out_name: _fixed_qparams(1.0, 0)})
    largest_fix = _correct_fc_bias(qmodel, model, "pixels_centered", centered)
    _pixels_as_input(qmodel, "pixel_groups", "pixels_centered", ["batch", 120, 120, 3])
    _integer_output(qmodel, out_name)
    name = "regressor.int8-full.onnx"
    _save(qmodel, folder / name)
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
    })
    return ModelArtifact(name, role, "onnx", "int8-full", inputs, outputs_spec, param_normalized=True, details=details)


# ----------------------------------------------------------------------------------------------------------
# Detector
# ----------------------------------------------------------------------------------------------------------


def _fold_crelu(graph) -> int:
    """``relu(cat(conv(x), -conv(x)))`` -> ``relu(conv'(x))`` with weights [W; -W], bias [b; -b]."""
    inits = _initializers(graph)
    prod = _producers(graph)
    folded = 0
    for neg in [n for n in graph.node if n.op_type == "Neg"]:
        conv = prod[neg.input[0]]
        cats = [n for n in graph.node if n.op_type == "Concat" and list(n.input) == [conv.output[0], neg.output[0]]]
        if conv.op_type != "Conv" or len(cats) != 1 or _attrs(cats[0]).get("axis") != 1:
            raise ExportError(f"unexpected CReLU pattern at {neg.name}")
        w = _array(inits, conv.input[1]).astype(np.float32)
        b = _array(inits, conv.input[2]).astype(np.float32)
        _store(inits, conv.input[1], np.concatenate([w, -w]))
        _store(inits, conv.input[2], np.concatenate([b, -b]))
        conv.output[0] = cats[0].output[0]
        graph.node.remove(neg)
        graph.node.remove(cats[0])
        folded += 1
    return folded


def _fold_avgpool(graph) -> int:
    """3x3/s1 average pool (padding counted) + 1x1 conv -> one 3x3 conv with the 1x1 weights / 9 on every tap."""
    inits = _initializers(graph)
    cons = _consumers(graph)
    folded = 0
    for pool in [n for n in graph.node if n.op_type == "AveragePool"]:
        a = _attrs(pool)
        users = cons.get(pool.output[0], [])
        if (a.get("kernel_shape") != [3, 3] or a.get("strides") != [1, 1] or a.get("pads") != [1, 1, 1, 1]
                or a.get("count_include_pad") != 1 or len(users) != 1 or users[0].op_type != "Conv"):
            continue
        conv = users[0]
        w = _array(inits, conv.input[1]).astype(np.float32)
        if w.shape[2:] != (1, 1):
            continue
        _store(inits, conv.input[1], np.repeat(np.repeat(w, 3, axis=2), 3, axis=3) / np.float32(9.0))
        _set_attrs(conv, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        conv.input[0] = pool.input[0]
        graph.node.remove(pool)
        folded += 1
    return folded


def _detector_float_core(ctx: ExportContext, grouped: bool):
    """fp32 FaceBoxes -> float graph with input ``pixels_centered`` = pixel - 115 (NHWC) and the rewrites above."""
    onnx = _onnx()
    model = onnx.load(str(ctx.fp32_onnx("detector")))
    shape = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    graph = model.graph
    conv1 = _strip_pixel_preprocessing(graph, ["Transpose", "Cast", "Sub"])
    inits = _initializers(graph)
    w = _array(inits, conv1.input[1]).astype(np.float32)
    b = _array(inits, conv1.input[2]).astype(np.float32)
    # pixel - mean_c = (pixel - 115) + (115 - mean_c): fold the per-channel rest into the bias. Exact except
    # in conv1's 3-px zero padding, which now stands for pixel 115 instead of the mean colour.
    shift = np.float32(DETECTOR_PIXEL_ZERO_POINT) - np.asarray(BGR_MEAN, np.float32)
    _store(inits, conv1.input[2], (b + (w * shift[None, :, None, None]).sum(axis=(1, 2, 3))).astype(np.float32))
    if grouped:
        _group_first_conv(graph, conv1, "pixels_centered", kernel=7, stride=4, pad=3)
    else:
        from onnx import helper

        graph.node.insert(0, helper.make_node("Transpose", ["pixels_centered"], ["pixel_groups"], name="pixels_nchw", perm=[0, 3, 1, 2]))
        conv1.input[0] = "pixel_groups"
    crelu = _fold_crelu(graph)
    pools = _fold_avgpool(graph)
    _set_float_input(graph, "pixels_centered", shape)
    return model, shape, {"crelu_folded": crelu, "avgpool_folded": pools}


def _inception_concats(graph) -> list:
    prod = _producers(graph)
    return [n for n in graph.node if n.op_type == "Concat" and all(t in prod and prod[t].op_type == "Relu" for t in n.input)]


def _shared_concat_ranges(model, frames: np.ndarray) -> dict:
    """TensorQuantOverrides giving each concat's inputs and output one (rmin, rmax): the int8 concat is then a copy."""
    cats = _inception_concats(model.graph)
    names = sorted({t for c in cats for t in list(c.input) + [c.output[0]]})
    session = _session(_with_outputs(model, names))
    lo = {n: np.inf for n in names}
    hi = {n: -np.inf for n in names}
    for outs in _run_batches(session, "pixels_centered", frames, names, batch=1):
        for n, v in zip(names, outs):
            lo[n], hi[n] = min(lo[n], float(v.min())), max(hi[n], float(v.max()))
    overrides = {}
    for c in cats:
        members = list(c.input) + [c.output[0]]
        rmin, rmax = min(0.0, min(lo[t] for t in members)), max(hi[t] for t in members)
        for t in members:
            overrides[t] = [{"rmin": np.array(rmin, np.float32), "rmax": np.array(rmax, np.float32)}]
    return overrides


def _head_tail(graph) -> list[str]:
    """Layout/concat/softmax nodes after the box and score heads: kept float (small tensors, full precision)."""
    cons = _consumers(graph)
    heads = [n for n in graph.node if n.op_type == "Conv" and cons.get(n.output[0])
             and all(u.op_type == "Transpose" for u in cons[n.output[0]])]
    frontier = {n.output[0] for n in heads}
    tail: list[str] = []
    for n in graph.node:  # topological order
        if n.op_type in ("Transpose", "Reshape", "Concat", "Softmax") and any(t in frontier for t in n.input):
            tail.append(n.name)
            frontier.update(n.output)
    return tail


@register("detector", "onnx", "int8")
def detector_onnx_int8(ctx: ExportContext, role: str, folder: Path) -> ModelArtifact:
    """FaceBoxes, static QDQ per-channel U8S8, all convs int8 (heads included); the box/score tail stays float."""
    size = ctx.detector_input_size
    # The column-group view needs the width to be a multiple of 4; dynamic-size detectors keep the plain conv1.
    grouped = size is not None and size[0] % COLUMN_GROUP == 0
    model, shape, rewrites = _detector_float_core(ctx, grouped)
    frames = np.stack(ctx.detector_frames()).astype(np.float32) - np.float32(DETECTOR_PIXEL_ZERO_POINT)
    overrides = {"pixel_groups": _fixed_qparams(1.0, DETECTOR_PIXEL_ZERO_POINT)}
    overrides.update(_shared_concat_ranges(model, frames))
    tail = _head_tail(model.graph)
    qmodel = _quantize(model, ctx.work_dir / "onnxq-detector-int8", "pixels_centered", frames, method="MinMax",
                       overrides=overrides, exclude=tail, batch=1)
    _pixels_as_input(qmodel, "pixel_groups", "pixels_centered", shape)
    name = "detector.int8.onnx"
    _save(qmodel, folder / name)
    check_file(folder / name)
    inputs, outputs = detector_io(size)
    inputs[0]["description"] = ("BGR frame (letterboxed when the size is fixed), uint8 as is; the graph reads it as pixel - 115 "
                                "through its first DequantizeLinear, the rest of the BGR mean is in the conv1 bias")
    details = {
        "format": "QDQ (onnxruntime quantize_static), opset 17",
        "weights": "int8 symmetric, per output channel",
        "activations": "uint8 asymmetric, per tensor",
        "calibration": {"source": "ctx.detector_frames() (mosaics of calibration crops)", "frames": int(len(frames)), "method": "MinMax"},
        "input": "uint8 NHWC BGR; first op DequantizeLinear(scale 1, zero point 115)",
        "first_conv": ("7x7/s4 conv over 4-pixel column groups (12 input channels)" if grouped
                       else "plain 7x7/s4 conv (dynamic or non-multiple-of-4 width)"),
        "rewrites": {**rewrites, "concat_inputs_share_scale": len(_inception_concats(model.graph))},
        "float_tail": sorted({n.split("/")[-1].rstrip("_0123456789") for n in tail}),
        "dynamic_shape": size is None,
    }
    details.update(structure(folder / name))
    return ModelArtifact(name, role, "onnx", "int8", inputs, outputs, details=details)
