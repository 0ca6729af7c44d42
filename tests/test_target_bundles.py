"""Every shipped target exports, its bundle loads and runs here, and it meets its drift budget.

(TFLite and ONNX runtimes run both the arm and the x86 files on x86; speed budgets are checked by
tddfa-bench, not here.)
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tddfa_edge.runtime.aligner import FaceAligner
from tddfa_edge.runtime.bundle import Bundle
from tddfa_edge.targets import available_targets, load_target


@pytest.mark.parametrize("name", available_targets())
def test_target_bundle_exports_loads_and_meets_budgets(name, target_bundle, data_dir):
    target = load_target(name)
    bundle = Bundle.open(target_bundle(name))
    manifest = bundle.manifest
    assert manifest.target.name == name
    assert (manifest.defaults.regressor, manifest.defaults.detector) == (target.regressor.default, target.detector.default)
    assert {m.variant for m in manifest.models_of("regressor")} == set(target.regressor.variants)
    assert {m.variant for m in manifest.models_of("detector")} == set(target.detector.variants)
    assert {m.architecture for m in manifest.models_of("detector")} == {target.detector.architecture}

    runtime_bytes = sum(f.size for f in manifest.files.values() if not f.install_only)
    assert runtime_bytes / 1e6 <= target.budgets.max_bundle_mb, f"{runtime_bytes / 1e6:.1f} MB over budget"
    assert ("bfm_dense.npz" in manifest.files) == target.pipeline.dense
    assert "NOTICE-3DMM.txt" in manifest.files

    for key, record in manifest.models.items():
        check = record.verification
        assert check.passed, f"{key}: {check}"
        if record.role == "regressor":
            limit = {"fp32": 0.01, "fp16": 0.05, "int8": target.budgets.max_landmark_drift_px,
                     "int8-full": 2 * target.budgets.max_landmark_drift_px}[record.precision]
            assert check.measures["landmark_drift_px_mean"] <= limit, f"{key}: drift {check.measures['landmark_drift_px_mean']} > {limit}"
        else:
            assert check.measures["recall_vs_fp32"] >= 1.0

    image = cv2.imread(str(data_dir / "images" / "trump_hillary.jpg"))
    aligner = FaceAligner.from_bundle(bundle.root)
    faces = aligner(image)
    assert len(faces) == 2
    assert aligner.regressor.variant == target.regressor.default and aligner.detector.variant == target.detector.default
    assert all(np.isfinite(f.landmarks_68).all() and abs(f.pose_ypr[0]) < 60 for f in faces)


def test_int8_models_really_are_int8(target_bundle):
    """Structure, not only values: quantized files hold integer weights and integer kernels."""
    manifest = Bundle.open(target_bundle("rpi4")).manifest
    sizes = {m.variant: manifest.files[m.file].size for m in manifest.models_of("regressor")}
    assert sizes["tflite-int8"] < 0.5 * sizes["tflite-fp32"]
    assert sizes["tflite-int8-full"] < 0.5 * sizes["tflite-fp32"]
    assert sizes["tflite-fp16"] < 0.6 * sizes["tflite-fp32"]
    full = manifest.models["regressor/tflite-int8-full"]
    assert full.inputs[0].dtype == "int8" and full.outputs[0].dtype == "int8"


def test_an_api_user_sees_nothing_on_stderr(target_bundle, data_dir):
    """LiteRT prints its XNNPACK line from C++ whatever TF_CPP_MIN_LOG_LEVEL says; the runtime keeps it out."""
    import subprocess
    import sys

    code = ("import cv2; from tddfa_edge.runtime import FaceAligner;"
            f"a = FaceAligner.from_bundle({str(target_bundle('rpi4'))!r});"
            f"faces = a(cv2.imread({str(data_dir / 'images' / 'trump_hillary.jpg')!r}));"
            "assert a.regressor.session.backend == 'litert'; print(len(faces))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "2", proc.stderr
    assert proc.stderr == ""
