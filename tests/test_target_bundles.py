"""Every shipped target exports, its bundle loads and runs here, and it meets its drift budget.

(TFLite and ONNX runtimes run both the arm and the x86 files on x86; speed budgets are checked by
tddfa-bench, not here.)
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from tddfa_edge.runtime.aligner import FaceAligner
from tddfa_edge.targets import available_targets, load_target


@pytest.mark.parametrize("name", available_targets())
def test_target_bundle_exports_loads_and_meets_budgets(name, target_bundle, data_dir):
    target = load_target(name)
    bundle = target_bundle(name)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["target"]["name"] == name
    assert set(manifest["defaults"].values()) == {target.regressor.default, target.detector.default}
    variants = {m["variant"] for m in manifest["models"].values()}
    assert set(target.regressor.variants) | set(target.detector.variants) == variants

    model_bytes = sum(f["size"] for f in manifest["files"].values())
    assert model_bytes / 1e6 <= target.budgets.max_bundle_mb, f"{model_bytes / 1e6:.1f} MB over budget"
    assert ("bfm_dense.npz" in manifest["files"]) == target.pipeline.dense
    assert "NOTICE-3DMM.txt" in manifest["files"]

    for key, entry in manifest["models"].items():
        check = entry["verification"]
        assert check["passed"], f"{key}: {check}"
        if entry["role"] == "regressor":
            limit = {"fp32": 0.01, "fp16": 0.05, "int8": target.budgets.max_landmark_drift_px,
                     "int8-full": 2 * target.budgets.max_landmark_drift_px}[entry["precision"]]
            assert check["landmark_drift_px_mean"] <= limit, f"{key}: drift {check['landmark_drift_px_mean']} > {limit}"
        else:
            assert check["recall_vs_fp32"] >= 1.0

    image = cv2.imread(str(data_dir / "images" / "trump_hillary.jpg"))
    aligner = FaceAligner.from_bundle(bundle)
    faces = aligner(image)
    assert len(faces) == 2
    assert aligner.regressor.variant == target.regressor.default
    assert all(np.isfinite(f.landmarks_68).all() and abs(f.pose_ypr[0]) < 60 for f in faces)


def test_int8_models_really_are_int8(target_bundle):
    """Structure, not only values: quantized files hold integer weights and integer kernels."""
    bundle = target_bundle("rpi4")
    manifest = json.loads((bundle / "manifest.json").read_text())
    sizes = {m["variant"]: (bundle / m["file"]).stat().st_size for m in manifest["models"].values() if m["role"] == "regressor"}
    assert sizes["tflite-int8"] < 0.5 * sizes["tflite-fp32"]
    assert sizes["tflite-int8-full"] < 0.5 * sizes["tflite-fp32"]
    assert sizes["tflite-fp16"] < 0.6 * sizes["tflite-fp32"]
    full = manifest["models"]["regressor/tflite-int8-full"]
    assert full["inputs"][0]["dtype"] in ("uint8", "int8")
    assert full["outputs"][0]["dtype"] in ("uint8", "int8", "int16")
