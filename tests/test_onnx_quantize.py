"""ONNX int8 converters (export/onnx_quantize.py): structure, kernels that do not overflow, drift, determinism.

The regressor files come from the x86-1core bundle the suite exports once (``target_bundle``); FaceBoxes int8, which
no target ships, is converted and verified once by ``faceboxes_converted``. The determinism check converts the
calibrated variants twice from fresh contexts and compares the bytes.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tddfa_edge.export.artifacts import converter_for
from tddfa_edge.runtime.bundle import Bundle
from tddfa_edge.targets import load_target

from conftest import FACEBOXES_TEST_SIZE


TARGET = "x86-1core"
VARIANTS = (("regressor", "onnx-int8"), ("regressor", "onnx-int8-full"), ("detector", "onnx-int8"))



@pytest.fixture(scope="module")
def faceboxes_int8(faceboxes_converted):
    """(graph path, record) of FaceBoxes onnx-int8, converted and verified at 832x464 (no shipped target carries it)."""
    artifact, folder, check = faceboxes_converted("onnx-int8")
    return folder / artifact.file, artifact.record(check)


@pytest.fixture(scope="module")
def bundle(target_bundle):
    return Bundle.open(target_bundle(TARGET))


def _graph(bundle, key):
    return onnx.load(str(bundle.root / bundle.manifest.models[key].file)).graph


def _elem(value_info) -> int:
    return value_info.type.tensor_type.elem_type


def _first_dequantize(graph):
    """The DequantizeLinear reached from the graph input through shape-only ops."""
    reached = {graph.input[0].name}
    for n in graph.node:
        if n.input and n.input[0] in reached:
            if n.op_type == "DequantizeLinear":
                return n
            assert n.op_type in ("Reshape", "Transpose"), f"float work on the pixels: {n.op_type}"
            reached.update(n.output)
    raise AssertionError("no DequantizeLinear on the input path")


def _initializer(graph, name):
    return onnx.numpy_helper.to_array(next(t for t in graph.initializer if t.name == name))


def _weight_is_quantized(graph, node) -> bool:
    producers = {o: n for n in graph.node for o in n.output}
    source = producers.get(node.input[1])
    return source is not None and source.op_type == "DequantizeLinear"


def test_regressor_int8_graph(bundle):
    record = bundle.manifest.models["regressor/onnx-int8"]
    graph = _graph(bundle, "regressor/onnx-int8")
    assert _elem(graph.input[0]) == onnx.TensorProto.UINT8 and _elem(graph.output[0]) == onnx.TensorProto.FLOAT
    first = _first_dequantize(graph)
    assert _initializer(graph, first.input[1]).item() == pytest.approx(1 / 128) and _initializer(graph, first.input[2]).item() == 128
    convs = [n for n in graph.node if n.op_type == "Conv"]
    gemm = [n for n in graph.node if n.op_type == "Gemm"]
    assert len(convs) == 27 and all(_weight_is_quantized(graph, n) for n in convs)
    assert len(gemm) == 1 and not _weight_is_quantized(graph, gemm[0])  # the FC stays fp32
    runs = record.details["onnxruntime_ops"]
    assert runs["QLinearConv"] == 27 and "QGemm" not in runs
    assert record.details["float_ops_at_runtime"] == {"Gemm": 1}
    assert record.inputs[0].dtype == "uint8" and record.outputs[0].dtype == "float32" and record.outputs[0].quantization is None


def test_regressor_int8_full_graph(bundle):
    record = bundle.manifest.models["regressor/onnx-int8-full"]
    graph = _graph(bundle, "regressor/onnx-int8-full")
    assert _elem(graph.input[0]) == onnx.TensorProto.UINT8 and _elem(graph.output[0]) == onnx.TensorProto.UINT8
    compute = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(compute) == 28 and all(_weight_is_quantized(graph, n) for n in compute)
    runs = record.details["onnxruntime_ops"]
    assert runs["QLinearConv"] == 27 and runs["QGemm"] == 1
    assert record.details["float_ops_at_runtime"] == {}
    quant = record.outputs[0].quantization
    assert record.outputs[0].dtype == "uint8" and len(quant.scale) == 62 and len(quant.zero_point) == 62
    assert all(0 <= z <= 255 for z in quant.zero_point) and min(quant.scale) > 0


def test_detector_int8_graph(faceboxes_int8):
    path, record = faceboxes_int8
    graph = onnx.load(str(path)).graph
    assert _elem(graph.input[0]) == onnx.TensorProto.UINT8
    assert [_elem(o) for o in graph.output] == [onnx.TensorProto.FLOAT] * 2 and [o.name for o in graph.output] == ["loc", "conf"]
    first = _first_dequantize(graph)
    assert _initializer(graph, first.input[1]).item() == 1.0 and _initializer(graph, first.input[2]).item() == 115
    ops = {n.op_type for n in graph.node}
    assert not ops & {"Neg", "AveragePool", "Cast", "Sub"}  # CReLU and avg-pool folded into convs, no float preprocessing
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == 33 and all(_weight_is_quantized(graph, n) for n in convs)
    assert record.details["onnxruntime_ops"]["QLinearConv"] == 33
    assert set(record.details["float_ops_at_runtime"]) <= {"Concat", "Softmax"}  # only the small box/score tail


@pytest.mark.parametrize("key", ["regressor/onnx-int8", "regressor/onnx-int8-full", "detector/onnx-int8"])
def test_the_pixel_convolution_has_7_bit_weights_and_the_fused_kernels_do_not_overflow(bundle, faceboxes_int8, faceboxes_converted,
                                                                                      key, export_context):
    """On CPUs without VNNI the u8s8 kernels add product pairs in int16; full-range pixels with 8-bit weights overflowed
    there. The integer kernels (ORT_ENABLE_ALL) must give what the QDQ graph computes in float (ORT_DISABLE_ALL)."""
    path = faceboxes_int8[0] if key.startswith("detector") else bundle.root / bundle.manifest.models[key].file
    graph = onnx.load(str(path)).graph
    producers = {o: n for n in graph.node for o in n.output}
    (pixel_conv,) = [n for n in graph.node if n.op_type == "Conv" and producers[n.input[0]].op_type == "DequantizeLinear"
                     and producers[producers[n.input[0]].input[0]].op_type in ("Reshape", "Transpose")]
    weights = _initializer(graph, producers[pixel_conv.input[1]].input[0])
    assert weights.min() >= -64 and weights.max() <= 64  # 7-bit symmetric: a pair is at most 2 x 255 x 64 = 32640
    scales = _initializer(graph, producers[pixel_conv.input[1]].input[1])
    assert scales.size == weights.shape[0]  # per output channel (an override without "axis" had made them per tensor)
    if key.startswith("regressor"):
        x = export_context(load_target(TARGET).detector.input_size).holdout_crops()[:100]
    else:
        from tddfa_edge.runtime.detector import prepare_detector_input

        frames = export_context(faceboxes_converted.settings.input_size).detector_check_frames()[:3]
        x = np.stack([prepare_detector_input(f, faceboxes_converted.settings).image for _, f in frames])
    outputs = {}
    for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL"):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        outputs[level] = np.concatenate([session.run(None, {"image": x[i : i + 1 if key.startswith("detector") else i + 50]})[0]
                                         for i in range(0, len(x), 1 if key.startswith("detector") else 50)]).astype(np.float32)
    simulated, fused = outputs["ORT_DISABLE_ALL"], outputs["ORT_ENABLE_ALL"]
    spread = float(np.abs(simulated).max())
    assert np.abs(fused - simulated).mean() < 0.01 * spread, f"{key}: fused kernels differ from the QDQ graph"


@pytest.mark.parametrize("variant", ["onnx-int8", "onnx-int8-full"])
def test_regressor_drift_on_holdout(bundle, variant):
    """What the exporter measured on the held-out crops, within the x86-1core budgets (and what the converter reaches)."""
    budget = load_target(TARGET).budgets.max_landmark_drift_px * (2 if variant.endswith("full") else 1)
    measures = bundle.manifest.models[f"regressor/{variant}"].verification.measures
    assert measures["landmark_drift_px_mean"] <= min(budget, {"onnx-int8": 0.30, "onnx-int8-full": 0.45}[variant]), measures


def test_detector_recall_and_boxes(faceboxes_int8):
    """Every face fp32 finds is found, and every box stays within 1% of its side (the exporter's limit; before
    GPTQ-rounded weights, calibration mosaics with faces of every size and the deep range margin: 2.3%)."""
    check = faceboxes_int8[1].verification
    assert check.passed and check.measures["faces_fp32"] >= 10 and check.measures["recall_vs_fp32"] == 1.0, check
    assert check.measures["extra_boxes"] == 0 and check.measures["box_err_rel_max"] <= 0.01, check.measures


def test_detector_int8_weights_and_ranges(faceboxes_int8):
    """The weights onnxruntime stores are the GPTQ-rounded ones (the converter checks it), the deep activations carry
    the range margin."""
    details = faceboxes_int8[1].details
    assert details["preparation"]["weight_rounding"]["layers"] == 33
    assert details["preparation"]["weight_rounding"]["pixel_conv_qmax"] == 64
    assert details["deep_range_margin"]["factor"] == 1.5
    assert details["calibration"]["frames"] == 96  # 48 mosaics and their mirror images


def _fresh_context(networks, data_dir, work, detector_input_size):
    """A context of its own: no state carried over from another conversion."""
    from tddfa_edge.export.artifacts import ExportContext

    work.mkdir(parents=True)
    return ExportContext(regressor=networks.regressor, detector=networks.detector, detector_architecture="faceboxes",
                         param_mean=networks.param_mean, param_std=networks.param_std, detector_input_size=detector_input_size,
                         data_dir=str(data_dir), work_dir=work, calibration_size=64)


def test_exports_are_byte_identical(tmp_path, data_dir, networks, faceboxes_converted):
    """The same inputs give the same bytes: the regressors twice from fresh contexts (calibrated on 64 crops here:
    determinism does not depend on the count), FaceBoxes once more against the session's conversion."""
    results = []
    for name in ("a", "b"):
        ctx = _fresh_context(networks, data_dir, tmp_path / name / "work", None)
        converted = {}
        for role, variant in VARIANTS:
            if role == "regressor":
                artifact = converter_for("regressor", variant)(ctx, role, tmp_path / name)
                converted[variant] = (hashlib.sha256((tmp_path / name / artifact.file).read_bytes()).hexdigest(), artifact.details)
        results.append(converted)
    for key in results[0]:
        assert results[0][key] == results[1][key], f"{key}: two exports differ"
    first, folder, _ = faceboxes_converted("onnx-int8")
    ctx = _fresh_context(networks, data_dir, tmp_path / "det" / "work", FACEBOXES_TEST_SIZE)
    again = converter_for("faceboxes", "onnx-int8")(ctx, "detector", tmp_path / "det")
    assert (tmp_path / "det" / again.file).read_bytes() == (folder / first.file).read_bytes()
    assert again.details == first.details
