"""ONNX int8 converters (export/onnx_quantize.py): structure, accuracy on the calibration hold-out, determinism.

Each converter runs once per session (calibration on 200 of the 800 calibration crops to keep this file fast;
the exporter uses all 800) and once more for the byte-identity check.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest

from tddfa_edge.export.artifacts import ExportContext, converter_for
from tddfa_edge.export.exporter import detector_verification_frames, landmark_drift_px, load_artifact, regressor_params
from tddfa_edge.runtime.detector import DetectorConfig, postprocess_detections, prepare_detector_input

CALIBRATION_CROPS = 200
DETECTOR_SIZE = (480, 272)  # x86-1core's detector input
DRIFT_BUDGET_PX = {"int8": 0.5, "int8-full": 1.0}  # the exporter's budgets (x86-1core max_landmark_drift_px, x2 for full)
VARIANTS = (("regressor", "onnx-int8"), ("regressor", "onnx-int8-full"), ("detector", "onnx-int8"))


@pytest.fixture(scope="session")
def quant_ctx(tmp_path_factory, data_dir) -> ExportContext:
    from tddfa_edge.export.morphable_files import load_param_mean_std
    from tddfa_edge.models.checkpoints import build_detector, build_regressor
    from tddfa_edge.models.registry import resolve

    mean, std = load_param_mean_std(resolve("param_mean_std_62d_120x120", data_dir=data_dir)[0])
    return ExportContext(
        regressor=build_regressor(resolve("mb05_120x120", data_dir=data_dir)[0], 0.5),
        detector=build_detector(resolve("faceboxes", data_dir=data_dir)[0]),
        param_mean=mean, param_std=std, detector_input_size=DETECTOR_SIZE, data_dir=str(data_dir),
        work_dir=tmp_path_factory.mktemp("onnxq-work"), calibration_size=CALIBRATION_CROPS, progress=False,
    )


def _export_all(ctx: ExportContext, folder: Path) -> dict:
    return {(role, variant): converter_for(role, variant)(ctx, role, folder) for role, variant in VARIANTS}


@pytest.fixture(scope="session")
def exported(quant_ctx, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnxq")
    return folder, _export_all(quant_ctx, folder)


@pytest.fixture(scope="session")
def morphable(data_dir):
    from tddfa_edge.export.morphable_files import landmark_arrays, load_dense_model
    from tddfa_edge.models.registry import resolve
    from tddfa_edge.runtime.morphable_model import MorphableModel

    return MorphableModel.from_arrays(**landmark_arrays(load_dense_model(resolve("bfm_noneck_v3", data_dir=data_dir)[0], None)))


def _graph(folder: Path, artifact):
    return onnx.load(str(folder / artifact.file)).graph


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


def _scalar(graph, name):
    return onnx.numpy_helper.to_array(next(t for t in graph.initializer if t.name == name)).item()


def _weight_is_quantized(graph, node) -> bool:
    producers = {o: n for n in graph.node for o in n.output}
    source = producers.get(node.input[1])
    return source is not None and source.op_type == "DequantizeLinear"


def test_regressor_int8_graph(exported):
    folder, artifacts = exported
    art = artifacts[("regressor", "onnx-int8")]
    graph = _graph(folder, art)
    assert _elem(graph.input[0]) == onnx.TensorProto.UINT8 and _elem(graph.output[0]) == onnx.TensorProto.FLOAT
    first = _first_dequantize(graph)
    assert _scalar(graph, first.input[1]) == pytest.approx(1 / 128) and _scalar(graph, first.input[2]) == 128
    convs = [n for n in graph.node if n.op_type == "Conv"]
    gemm = [n for n in graph.node if n.op_type == "Gemm"]
    assert len(convs) == 27 and all(_weight_is_quantized(graph, n) for n in convs)
    assert len(gemm) == 1 and not _weight_is_quantized(graph, gemm[0])  # the FC stays fp32
    runs = art.details["onnxruntime_ops"]
    assert runs["QLinearConv"] == 27 and "QGemm" not in runs
    assert art.details["float_ops_at_runtime"] == {"Gemm": 1}
    assert art.inputs[0]["dtype"] == "uint8" and art.outputs[0]["dtype"] == "float32" and art.outputs[0]["quantization"] is None


def test_regressor_int8_full_graph(exported):
    folder, artifacts = exported
    art = artifacts[("regressor", "onnx-int8-full")]
    graph = _graph(folder, art)
    assert _elem(graph.input[0]) == onnx.TensorProto.UINT8 and _elem(graph.output[0]) == onnx.TensorProto.UINT8
    first = _first_dequantize(graph)
    assert _scalar(graph, first.input[1]) == pytest.approx(1 / 128) and _scalar(graph, first.input[2]) == 128
    compute = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(compute) == 28 and all(_weight_is_quantized(graph, n) for n in compute)
    runs = art.details["onnxruntime_ops"]
    assert runs["QLinearConv"] == 27 and runs["QGemm"] == 1
    assert art.details["float_ops_at_runtime"] == {}
    quant = art.outputs[0]["quantization"]
    assert art.outputs[0]["dtype"] == "uint8" and len(quant["scale"]) == 62 and len(quant["zero_point"]) == 62
    assert all(0 <= z <= 255 for z in quant["zero_point"]) and min(quant["scale"]) > 0


def test_detector_int8_graph(exported):
    folder, artifacts = exported
    art = artifacts[("detector", "onnx-int8")]
    graph = _graph(folder, art)
    assert _elem(graph.input[0]) == onnx.TensorProto.UINT8
    assert [_elem(o) for o in graph.output] == [onnx.TensorProto.FLOAT] * 2 and [o.name for o in graph.output] == ["loc", "conf"]
    first = _first_dequantize(graph)
    assert _scalar(graph, first.input[1]) == 1.0 and _scalar(graph, first.input[2]) == 115
    ops = {n.op_type for n in graph.node}
    assert not ops & {"Neg", "AveragePool", "Cast", "Sub"}  # CReLU and avg-pool folded into convs, no float preprocessing
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == 33 and all(_weight_is_quantized(graph, n) for n in convs)
    runs = art.details["onnxruntime_ops"]
    assert runs["QLinearConv"] == 33
    assert set(art.details["float_ops_at_runtime"]) <= {"Concat", "Softmax"}  # only the small box/score tail


@pytest.mark.parametrize("variant", ["onnx-int8", "onnx-int8-full"])
def test_regressor_drift_on_holdout(exported, quant_ctx, morphable, variant):
    from tddfa_edge.export.onnx_export import torch_regressor_outputs

    folder, artifacts = exported
    art = artifacts[("regressor", variant)]
    crops = quant_ctx.holdout_crops()
    reference = quant_ctx.cached("test_ref", lambda: torch_regressor_outputs(quant_ctx.regressor, crops) * quant_ctx.param_std + quant_ctx.param_mean)
    params = regressor_params(load_artifact(folder, art), crops, quant_ctx.param_mean, quant_ctx.param_std, art.param_normalized)
    drift = landmark_drift_px(morphable, params, reference)
    assert drift.mean() <= DRIFT_BUDGET_PX[art.precision], f"{variant}: mean drift {drift.mean():.3f} px (max {drift.max():.3f})"
    assert np.isfinite(params).all()


def test_detector_recall_and_boxes(exported, quant_ctx):
    """Every face fp32 finds is found, within 3 px in the network's input (frame px times the letterbox scale)."""
    from tddfa_edge.export.exporter import _match_boxes
    from tddfa_edge.export.onnx_export import torch_detector_outputs

    folder, artifacts = exported
    model = load_artifact(folder, artifacts[("detector", "onnx-int8")])
    config = DetectorConfig(input_size=DETECTOR_SIZE)
    faces = found = 0
    worst = 0.0
    for name, frame in detector_verification_frames(quant_ctx.data_dir):
        prepared = prepare_detector_input(frame, config)
        h, w = prepared.image.shape[:2]
        loc, conf = torch_detector_outputs(quant_ctx.detector, prepared.image)
        ref = postprocess_detections(loc, conf[:, 1], h, w, prepared.scale, config)
        loc, conf = model(prepared.image[None])
        got = postprocess_detections(loc[0], conf[0, :, 1], h, w, prepared.scale, config)
        n, errors, _ = _match_boxes(ref, got)
        faces, found = faces + len(ref), found + n
        worst = max([worst] + [e * prepared.scale for e in errors])
    assert faces >= 10 and found == faces
    assert worst <= 3.0, f"box error {worst:.2f} px at the network input"


def test_exports_are_byte_identical(exported, quant_ctx, tmp_path):
    folder, artifacts = exported
    again = _export_all(quant_ctx, tmp_path)
    for key, art in artifacts.items():
        first = hashlib.sha256((folder / art.file).read_bytes()).hexdigest()
        second = hashlib.sha256((tmp_path / again[key].file).read_bytes()).hexdigest()
        assert first == second, f"{key}: two exports differ"
        assert again[key].details == art.details and again[key].outputs == art.outputs
