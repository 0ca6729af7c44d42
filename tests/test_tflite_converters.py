"""TFLite converters (export/tflite_converters.py): structure, drift on the calibration hold-out, determinism.

Every converter runs once per session into one folder (about 40 s for all six); the byte-identity checks
export the two calibrated models a second time.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from tddfa_edge.export import tflite_converters as tc
from tddfa_edge.export.artifacts import CONVERTERS, ExportContext, converter_for
from tddfa_edge.export.exporter import FLOAT_TOLERANCE_PX, load_artifact, verify_detector, verify_regressor
from tddfa_edge.runtime.backends import TensorSpec, build_input

DETECTOR_SIZE = (320, 192)  # rpi4's detector input
# rpi4's max_landmark_drift_px, x2 for full integer (the exporter's rule), and what this converter reaches
# today (hold-out mean, 120 px crop): a regression guard well inside the budget.
DRIFT_BUDGET_PX = {"int8": 0.5, "int8-full": 1.0}
DRIFT_REACHED_PX = {"fp32": 0.001, "fp16": 0.01, "int8": 0.23, "int8-full": 0.42}
REGRESSOR_VARIANTS = ("tflite-fp32", "tflite-fp16", "tflite-int8", "tflite-int8-full")
DETECTOR_VARIANTS = ("tflite-fp32", "tflite-int8")


@pytest.fixture(scope="session")
def tfl_ctx(tmp_path_factory, data_dir) -> ExportContext:
    from tddfa_edge.export.morphable_files import load_param_mean_std
    from tddfa_edge.models.checkpoints import build_detector, build_regressor
    from tddfa_edge.models.registry import resolve

    mean, std = load_param_mean_std(resolve("param_mean_std_62d_120x120", data_dir=data_dir)[0])
    return ExportContext(
        regressor=build_regressor(resolve("mb05_120x120", data_dir=data_dir)[0], 0.5),
        detector=build_detector(resolve("faceboxes", data_dir=data_dir)[0]),
        param_mean=mean, param_std=std, detector_input_size=DETECTOR_SIZE, data_dir=str(data_dir),
        work_dir=tmp_path_factory.mktemp("tflite-work"), progress=False,
    )


@pytest.fixture(scope="session")
def exported(tfl_ctx, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tflite")
    artifacts = {}
    for role, variants in (("regressor", REGRESSOR_VARIANTS), ("detector", DETECTOR_VARIANTS)):
        for variant in variants:
            artifacts[(role, variant)] = converter_for(role, variant)(tfl_ctx, role, folder)
    return folder, artifacts


@pytest.fixture(scope="session")
def morphable(data_dir):
    from tddfa_edge.export.morphable_files import landmark_arrays, load_dense_model
    from tddfa_edge.models.registry import resolve
    from tddfa_edge.runtime.morphable_model import MorphableModel

    return MorphableModel.from_arrays(**landmark_arrays(load_dense_model(resolve("bfm_noneck_v3", data_dir=data_dir)[0], None)))


@pytest.fixture(scope="session")
def reference_params(tfl_ctx):
    from tddfa_edge.export.onnx_export import torch_regressor_outputs

    return torch_regressor_outputs(tfl_ctx.regressor, tfl_ctx.holdout_crops()) * tfl_ctx.param_std + tfl_ctx.param_mean


def _structure(exported, role, variant) -> dict:
    folder, artifacts = exported
    return tc.model_structure((folder / artifacts[(role, variant)].file).read_bytes())


def test_all_tflite_variants_registered():
    converter_for("regressor", "tflite-fp32")  # fills the registry
    registered = {f"{f}-{p}" for r, f, p in CONVERTERS if f == "tflite" and r == "regressor"}
    assert registered == set(REGRESSOR_VARIANTS)
    assert {f"{f}-{p}" for r, f, p in CONVERTERS if f == "tflite" and r == "detector"} == set(DETECTOR_VARIANTS)


def test_float_regressors_take_uint8_and_fp16_halves_the_weights(exported):
    folder, artifacts = exported
    fp32 = _structure(exported, "regressor", "tflite-fp32")
    fp16 = _structure(exported, "regressor", "tflite-fp16")
    for s in (fp32, fp16):
        assert s["inputs"][0]["dtype"] == "uint8" and s["outputs"][0]["dtype"] == "float32"
        assert not any(":INT8" in k or k.endswith("->INT8") for k in s["ops_by_dtype"])
    assert fp16["ops_by_dtype"]["DEQUANTIZE:FLOAT16->FLOAT32"] == 28  # 27 convolutions + the FC
    size = {v: (folder / artifacts[("regressor", v)].file).stat().st_size for v in ("tflite-fp32", "tflite-fp16")}
    assert size["tflite-fp16"] < 0.55 * size["tflite-fp32"]


def test_int8_regressor_is_int8_except_the_head(exported):
    s = _structure(exported, "regressor", "tflite-int8")
    ops = s["ops_by_dtype"]
    assert ops["CONV_2D:INT8->INT8"] == 14 and ops["DEPTHWISE_CONV_2D:INT8->INT8"] == 13
    assert ops["FULLY_CONNECTED:FLOAT32->FLOAT32"] == 1 and ops["MEAN:FLOAT32->FLOAT32"] == 1
    assert ops["DEQUANTIZE:INT8->FLOAT32"] == 1
    assert set(ops) <= {"CONV_2D:INT8->INT8", "DEPTHWISE_CONV_2D:INT8->INT8", "PAD:INT8->INT8", "DEQUANTIZE:INT8->FLOAT32",
                        "MEAN:FLOAT32->FLOAT32", "FULLY_CONNECTED:FLOAT32->FLOAT32"}
    assert s["inputs"][0]["dtype"] == "int8" and s["inputs"][0]["quantization"] == {"scale": [1 / 128], "zero_point": [0]}
    assert s["outputs"][0]["dtype"] == "float32"


def test_full_integer_regressor_has_no_float_op(exported):
    folder, artifacts = exported
    s = _structure(exported, "regressor", "tflite-int8-full")
    assert all(k.endswith("->INT8") for k in s["ops_by_dtype"]), s["ops_by_dtype"]
    assert s["ops_by_dtype"]["FULLY_CONNECTED:INT8->INT8"] == 1
    assert s["inputs"][0]["dtype"] == "int8" and s["outputs"][0]["dtype"] == "int8"
    quant = artifacts[("regressor", "tflite-int8-full")].outputs[0]["quantization"]
    assert len(quant["scale"]) == len(quant["zero_point"]) == 62
    assert all(isinstance(z, int) for z in quant["zero_point"])


@pytest.mark.parametrize("variant", ["tflite-int8", "tflite-int8-full"])
def test_int8_models_run_in_one_xnnpack_partition(exported, variant):
    folder, artifacts = exported
    details = artifacts[("regressor", variant)].details
    assert details["xnnpack"] == {"partitions": 1, "ops_outside_at_boundaries": {}}


@pytest.mark.parametrize("variant", REGRESSOR_VARIANTS)
def test_regressor_drift_on_holdout(exported, tfl_ctx, morphable, reference_params, variant):
    folder, artifacts = exported
    artifact = artifacts[("regressor", variant)]
    precision = artifact.precision
    budget = FLOAT_TOLERANCE_PX.get(precision, DRIFT_BUDGET_PX.get(precision))
    check = verify_regressor(tfl_ctx, folder, artifact, morphable, reference_params, budget)
    assert check["passed"], check
    assert check["landmark_drift_px_mean"] <= DRIFT_REACHED_PX[precision], check


@pytest.mark.parametrize("variant", ["tflite-fp32", "tflite-int8", "tflite-int8-full"])
def test_batch_resize_gives_the_batch_one_result(exported, tfl_ctx, variant):
    folder, artifacts = exported
    model = load_artifact(folder, artifacts[("regressor", variant)])
    crops = tfl_ctx.holdout_crops()[:7]
    one = np.concatenate([model(crops[i : i + 1])[0] for i in range(len(crops))])
    batch = model(crops)[0]
    np.testing.assert_allclose(batch, one, rtol=0, atol=1e-5)


def test_int8_input_is_the_flipped_top_bit():
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 1, 256, 1).repeat(3, axis=3)
    spec = TensorSpec("image", (1, 1, 256, 3), "int8", "NHWC", (128.0,), (1.0,))
    np.testing.assert_array_equal(build_input(pixels, spec), tc.as_int8_pixels(pixels))
    assert tc.as_int8_pixels(pixels).min() == -128 and tc.as_int8_pixels(pixels).max() == 127


def test_output_specs_name_the_tensors(exported):
    folder, artifacts = exported
    for (role, variant), artifact in artifacts.items():
        names = {t["name"] for t in tc.model_structure((folder / artifact.file).read_bytes())["outputs"]}
        assert {o["name"] for o in artifact.outputs} == names, variant
    det = artifacts[("detector", "tflite-int8")].outputs
    assert [o["name"] for o in det] == [tc.output_tensor_name("loc"), tc.output_tensor_name("conf")]


def test_detector_structure(exported):
    fp32 = _structure(exported, "detector", "tflite-fp32")
    int8 = _structure(exported, "detector", "tflite-int8")
    assert "PADV2" not in fp32["ops"]  # the -inf max-pool padding that stays outside XNNPACK
    assert int8["inputs"][0]["dtype"] == "int8"
    ops = int8["ops_by_dtype"]
    assert ops["CONV_2D:INT8->INT8"] == 33 and ops["DEPTHWISE_CONV_2D:INT8->INT8"] == 3
    # CReLU negation, lone ReLUs, average pools and padded max pools are gone; only the softmax runs in float.
    for op in ("MUL", "NEG", "RELU", "AVERAGE_POOL_2D", "PADV2", "TRANSPOSE", "CAST"):
        assert op not in int8["ops"], op
    assert {k for k in ops if k.endswith("FLOAT32")} == {"DEQUANTIZE:INT8->FLOAT32", "SOFTMAX:FLOAT32->FLOAT32"}
    _, artifacts = exported
    assert artifacts[("detector", "tflite-int8")].details["xnnpack"]["partitions"] == 1
    loc = artifacts[("detector", "tflite-int8")].outputs[0]
    assert loc["dtype"] == "int8" and loc["quantization"]["scale"] > 0


def test_detector_matches_fp32(exported, tfl_ctx):
    folder, artifacts = exported
    fp32 = verify_detector(tfl_ctx, folder, artifacts[("detector", "tflite-fp32")], tolerance_px=0.5)
    assert fp32["passed"] and fp32["faces_fp32"] >= 10, fp32
    int8 = verify_detector(tfl_ctx, folder, artifacts[("detector", "tflite-int8")], tolerance_px=3.0)
    # Every face found, nothing extra. The box error (frame pixels, frames up to 3913 px wide read at 320 px) is
    # what int8 reaches today, above the exporter's 3 px: see the converter's notes.
    assert int8["recall_vs_fp32"] == 1.0 and int8["extra_boxes"] == 0, int8
    assert int8["box_err_px_max"] <= 10.0 and int8["box_err_px_mean"] <= 4.5, int8


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("role,variant", [("regressor", "tflite-int8-full"), ("detector", "tflite-int8")])
def test_export_is_deterministic(exported, tfl_ctx, tmp_path, role, variant):
    folder, artifacts = exported
    again = converter_for(role, variant)(tfl_ctx, role, tmp_path)
    assert _digest((tmp_path / again.file).read_bytes()) == _digest((folder / artifacts[(role, variant)].file).read_bytes())
    assert again.outputs == artifacts[(role, variant)].outputs
