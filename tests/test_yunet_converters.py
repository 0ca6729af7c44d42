"""YuNet through the converters (export/onnx_converters.py, onnx_quantize.py, tflite_converters.py): structure, agreement
with PyTorch fp32 through the runtime's FaceDetector (boxes and keypoints), determinism.

Everything is converted once per session at 320x192 (the smallest target size; the converters do not depend on it
otherwise), yunet_n only: yunet_s shares every converter.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tddfa_edge.export.artifacts import CONVERTERS, converter_for
from tddfa_edge.export.tflite_flatbuffer import output_tensor_name
from tddfa_edge.runtime.detector import YUNET_OUTPUTS, FaceDetector
from tddfa_edge.runtime.manifest import DetectorSettings

SIZE = (320, 192)
ARCH = "yunet_n"
VARIANTS = ("onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8")
# What the int8 converters reach on the reference photos at 320x192, relative to the box side, as a regression guard:
# - the final boxes (after NMS), as the exporter checks them: the worst ones are NMS winner flips between neighbouring
#   cells whose fp32 scores differ by < 0.001 (their fp32 boxes differ by 2-6%), not regression error;
# - the boxes of the cells fp32 keeps (same cell in both models): what int8 precision controls.
INT8_BOX_REL = {"onnx-int8": 0.08, "tflite-int8": 0.08}
# The worst same-cell boxes are the ~12-px faces of test photo 2 at this size (1% of their side is 0.12 px).
INT8_SAME_CELL_REL = {"onnx-int8": 0.06, "tflite-int8": 0.06}
INT8_SAME_CELL_REL_MEAN = 0.012


@pytest.fixture(scope="session")
def yunet_n(data_dir):
    from tddfa_edge.models.checkpoints import build_detector

    return build_detector(data_dir / "weights" / "yunet_n.pth", ARCH)


@pytest.fixture(scope="session")
def yunet_context(export_context, yunet_n):
    return export_context(SIZE, detector=yunet_n, architecture=ARCH)


@pytest.fixture(scope="session")
def yunet_settings():
    return DetectorSettings("yunet", SIZE, (1280, 736), "linear_exact", 0.6, 0.3, 64)


@pytest.fixture(scope="session")
def converted(yunet_context, tmp_path_factory):
    """variant -> (artifact, folder), each converted once."""
    out = {}
    for variant in VARIANTS:
        folder = tmp_path_factory.mktemp(f"yunet-{variant}")
        artifact = converter_for("yunet", variant)(yunet_context, "detector", folder)
        artifact.architecture = ARCH
        out[variant] = (artifact, folder)
    return out


@pytest.fixture(scope="session")
def reference_detector(yunet_context, yunet_settings):
    from tddfa_edge.export.reference import TorchDetector

    return FaceDetector(TorchDetector(yunet_context.detector, "yunet"), yunet_settings)


def _detector(converted, variant, settings) -> FaceDetector:
    from tddfa_edge.export.verification import load_artifact

    artifact, folder = converted[variant]
    return FaceDetector(load_artifact(folder, artifact), settings)


def _onnx_session(path: Path, level: str = "ORT_ENABLE_ALL"):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_every_variant_is_registered():
    converter_for("yunet", "onnx-fp32")  # fills the registry
    assert {f"{f}-{p}" for n, f, p in CONVERTERS if n == "yunet"} >= set(VARIANTS)


def test_onnx_fp32_takes_uint8_pixels_at_any_multiple_of_32(converted, yunet_context):
    from tddfa_edge.export.reference import TorchDetector

    artifact, folder = converted["onnx-fp32"]
    model = onnx.load(str(folder / artifact.file))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in model.graph.output] == list(YUNET_OUTPUTS) == [o["name"] for o in artifact.outputs]
    session = _onnx_session(folder / artifact.file)
    reference = TorchDetector(yunet_context.detector, "yunet")
    rng = np.random.default_rng(0)
    for h, w in ((192, 320), (384, 640), (96, 160)):
        pixels = rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
        got = session.run(None, {"image": pixels})
        want = reference(pixels)
        k = [1] * 6 + [4] * 3 + [10] * 3
        assert [o.shape for o in got] == [(1, (h // s) * (w // s), k[i]) for i, s in enumerate([8, 16, 32] * 4)]
        for g, r in zip(got, want):
            np.testing.assert_allclose(g, r, rtol=0, atol=2e-4)


def test_onnx_int8_reads_pixels_in_integer_kernels(converted):
    artifact, folder = converted["onnx-int8"]
    graph = onnx.load(str(folder / artifact.file)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in graph.output] == list(YUNET_OUTPUTS)
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in graph.output)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    reached, first = {"image"}, None
    for n in graph.node:  # uint8 pixels -> shape-only ops -> the first DequantizeLinear
        if n.input and n.input[0] in reached:
            if n.op_type == "DequantizeLinear":
                first = n
                break
            assert n.op_type in ("Reshape", "Transpose"), n.op_type
            reached.update(n.output)
    assert first is not None and inits[first.input[1]].item() == 1.0 and inits[first.input[2]].item() == 0
    (pixel_conv,) = [n for n in graph.node if n.op_type == "Conv" and n.input[0] == first.output[0]]
    weights = inits[producers[pixel_conv.input[1]].input[0]]
    scales = inits[producers[pixel_conv.input[1]].input[1]]
    assert weights.min() >= -64 and weights.max() <= 64  # 7 bits: no int16 saturation on AVX2 without VNNI
    assert scales.size == weights.shape[0]  # per output channel
    runs = artifact.details["onnxruntime_ops"]
    assert runs["QLinearConv"] == 35 and runs["QLinearAdd"] == 2  # backbone, neck, shared head convs
    assert artifact.details["float_ops_at_runtime"] == {"Conv": 6}  # the merged prediction heads (1x1 + depthwise per level)
    assert artifact.details["preparation"]["weight_rounding"]["pixel_conv_qmax"] == 64


def test_onnx_int8_fused_kernels_match_the_qdq_graph(converted, yunet_context, yunet_settings):
    """The integer kernels (ORT_ENABLE_ALL) compute what the QDQ graph describes (ORT_DISABLE_ALL): no overflow."""
    from tddfa_edge.runtime.detector import prepare_detector_input

    artifact, folder = converted["onnx-int8"]
    sessions = {level: _onnx_session(folder / artifact.file, level) for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL")}
    for _, frame in yunet_context.detector_check_frames()[:3]:
        x = prepare_detector_input(frame, yunet_settings).image[None]
        simulated, fused = (sessions[level].run(None, {"image": x}) for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL"))
        for name, s, f in zip(YUNET_OUTPUTS, simulated, fused):
            assert np.abs(f - s).mean() < 0.01 * max(1.0, float(np.abs(s).max())), name


def test_tflite_graphs_run_in_one_xnnpack_partition(converted):
    fp32, int8 = (converted[v][0] for v in ("tflite-fp32", "tflite-int8"))
    for artifact in (fp32, int8):
        assert artifact.details["xnnpack"]["partitions"] == 1
        assert [o["name"] for o in artifact.outputs] == [output_tensor_name(n) for n in YUNET_OUTPUTS]
        assert all(o["dtype"] == "float32" for o in artifact.outputs)
    assert fp32.details["tensor_inputs"][0]["dtype"] == "uint8"
    assert int8.details["tensor_inputs"][0]["dtype"] == "int8"
    assert int8.details["tensor_inputs"][0]["quantization"] == {"scale": [1.0], "zero_point": [-128]}
    assert int8.details["xnnpack"]["ops_outside_at_boundaries"] == {}
    ops = int8.details["ops_by_dtype"]
    assert ops["CONV_2D:INT8->INT8"] == 18 and ops["DEPTHWISE_CONV_2D:INT8->INT8"] == 17
    # Only the merged prediction heads run in float: per level one 1x1 and one depthwise conv on dequantized features.
    assert ops["CONV_2D:FLOAT32->FLOAT32"] == 3 and ops["DEPTHWISE_CONV_2D:FLOAT32->FLOAT32"] == 3
    assert ops["DEQUANTIZE:INT8->FLOAT32"] == 3
    assert "RESIZE_NEAREST_NEIGHBOR" not in int8.details["ops"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_boxes_and_keypoints_agree_with_pytorch(converted, yunet_context, yunet_settings, reference_detector, variant):
    """The exporter's check (every face PyTorch finds on the reference photos, within tolerance), and the five keypoints
    decoded from the converted model's own outputs."""
    from tddfa_edge.export.verification import verify_detector
    from tddfa_edge.runtime.boxes import match_boxes

    artifact, folder = converted[variant]
    check = verify_detector(yunet_context, folder, artifact, yunet_settings, reference_detector)
    m = check.measures
    assert m["faces_fp32"] >= 8 and m["recall_vs_fp32"] == 1.0 and m["extra_boxes"] == 0, m
    if artifact.precision == "fp32":
        assert check.passed and m["box_err_px_max"] <= 0.05, m
    else:
        assert m["box_err_rel_max"] <= INT8_BOX_REL[variant], m
    detector = _detector(converted, variant, yunet_settings)
    worst = 0.0
    for _, frame in yunet_context.detector_check_frames():
        want, got = reference_detector(frame), detector(frame)
        assert got.keypoints is not None and got.keypoints.shape == (len(got), 5, 2)
        for i, j, _ in match_boxes(want.boxes, got.boxes, 0.5).pairs:
            side = float(max(want.boxes[i, 2] - want.boxes[i, 0], want.boxes[i, 3] - want.boxes[i, 1]))
            worst = max(worst, float(np.abs(got.keypoints[j] - want.keypoints[i]).max()) / side)
    assert worst <= (1e-4 if artifact.precision == "fp32" else 2 * INT8_BOX_REL[variant]), worst


def test_int8_exports_are_byte_identical(converted, yunet_context, export_context, yunet_n, tmp_path):
    """The same inputs give the same bytes: ONNX int8 from a fresh context (preparation, calibration and quantization
    all redone), TFLite int8 converted again."""
    from tddfa_edge.export.artifacts import ExportContext

    fresh = ExportContext(
        regressor=yunet_context.regressor, detector=yunet_n, detector_architecture=ARCH, param_mean=yunet_context.param_mean,
        param_std=yunet_context.param_std, detector_input_size=SIZE, data_dir=yunet_context.data_dir, work_dir=tmp_path / "work")
    fresh.work_dir.mkdir()
    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    for variant, ctx in (("onnx-int8", fresh), ("tflite-int8", yunet_context)):
        artifact, folder = converted[variant]
        again = converter_for("yunet", variant)(ctx, "detector", tmp_path)
        assert digest(tmp_path / again.file) == digest(folder / artifact.file), variant


def _candidates(outputs, settings):
    """All cells' decoded boxes (threshold 0, fixed order) and the indices fp32-style NMS keeps."""
    from tddfa_edge.runtime.boxes import nms
    from tddfa_edge.runtime.yunet_decoding import decode_yunet

    w, h = settings.input_size
    boxes, keypoints = decode_yunet(dict(zip(YUNET_OUTPUTS, outputs)), h, w, 0.0)
    candidates = np.flatnonzero(boxes[:, 4] >= settings.score_threshold)
    return boxes, keypoints, candidates[nms(boxes[candidates], boxes[candidates, 4], settings.nms_threshold)]


@pytest.mark.parametrize("variant", ["onnx-int8", "tflite-int8"])
def test_int8_boxes_and_keypoints_of_the_fp32_winners(converted, yunet_context, yunet_settings, variant):
    """Same cell in both models: the int8 regression error, free of NMS winner flips."""
    from tddfa_edge.export.reference import TorchDetector
    from tddfa_edge.export.verification import load_artifact
    from tddfa_edge.runtime.detector import prepare_detector_input

    artifact, folder = converted[variant]
    model = load_artifact(folder, artifact)
    reference = TorchDetector(yunet_context.detector, "yunet")
    worst_box = worst_kps = 0.0
    errors = []
    for _, frame in yunet_context.detector_check_frames():
        x = prepare_detector_input(frame, yunet_settings).image[None]
        ref_boxes, ref_kps, kept = _candidates(reference(x), yunet_settings)
        got_boxes, got_kps, _ = _candidates(model(x), yunet_settings)
        for i in kept:
            side = float(max(ref_boxes[i, 2] - ref_boxes[i, 0], ref_boxes[i, 3] - ref_boxes[i, 1]))
            errors.append(float(np.abs(got_boxes[i, :4] - ref_boxes[i, :4]).max()) / side)
            worst_box = max(worst_box, errors[-1])
            worst_kps = max(worst_kps, float(np.abs(got_kps[i] - ref_kps[i]).max()) / side)
    assert worst_box <= INT8_SAME_CELL_REL[variant] and np.mean(errors) <= INT8_SAME_CELL_REL_MEAN, (worst_box, np.mean(errors))
    assert worst_kps <= INT8_SAME_CELL_REL[variant], worst_kps
