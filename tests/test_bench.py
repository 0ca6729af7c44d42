"""tddfa-bench on a real fp32 ONNX bundle (quick mode), the budget gate, and the runtime fast paths it measures."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from tddfa_edge.benchmarks.cli import main as bench_main
from tddfa_edge.benchmarks.runner import evaluate_gate
from tddfa_edge.contracts.errors import BudgetError
from tddfa_edge.targets import TARGET_DIR


def _target_copy(tmp_path, name: str, **budgets) -> str:
    """x86-1core.toml with some budgets replaced (a TOML outside targets/ may have any file name)."""
    text = (TARGET_DIR / "x86-1core.toml").read_text()
    for key, value in budgets.items():
        text, n = re.subn(rf"^{key} = [^\n#]*", f"{key} = {value}", text, flags=re.M)
        assert n == 1, key
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory, upstream_bundle, data_dir):
    tmp = tmp_path_factory.mktemp("bench")
    lenient = _target_copy(tmp, "lenient", min_fps_image_mode=1.0, min_fps_tracking=1.0, max_peak_rss_mb=4000.0)
    out = tmp / "report.json"
    result = CliRunner().invoke(bench_main, [
        "--bundle", str(upstream_bundle), "--quick", "--aflw-limit", "120", "--budget", "0.2", "--data-dir", str(data_dir),
        "--target", lenient, "--json", str(out), "--markdown", str(tmp / "report.md"), "--ced", str(tmp / "ced.png"), "-q",
    ])
    return result, json.loads(out.read_text()) if out.exists() else None, tmp


def test_quick_run_writes_every_section(quick_report):
    result, report, tmp = quick_report
    assert result.exit_code == 0, result.output
    for section in ("machine", "config", "bundle", "latency", "cold_start", "accuracy", "stability", "detector_recall", "variants", "gate"):
        assert section in report, section
    lat = report["latency"]
    for mode in ("image_mode", "tracking_sparse", "tracking_dense"):
        assert lat[mode]["total"]["p50_ms"] > 0 and lat[mode]["fps"] > 0 and lat[mode]["cpu"]["p50_ms"] > 0
    assert {"detection", "crop_preprocess", "regression", "landmarks_68", "pose"} <= set(lat["image_mode"]["stages"])
    assert "dense" in lat["tracking_dense"]["stages"] and "detection" not in lat["tracking_sparse"]["stages"]
    assert lat["image_mode"]["faces_per_frame"] == 1.0
    cold = report["cold_start"]
    assert 0 < cold["total_s_median"] < 30 and 0 < cold["cpu_s_median"] and cold["faces_first_frame"] == 1
    assert cold["memory"]["peak_rss_mb"] > 50 and cold["memory"]["video_frames"] == 55
    assert report["bundle"]["size"]["total_mb"] > 1
    assert report["detector_recall"]["sizes"][0]["recall"] == 1.0  # the original rule against itself
    stab = report["stability"]["variants"]["onnx-fp32"]
    assert stab["frames_with_face"] == 55 and 0 < stab["jitter_pct"] < 20
    row = report["variants"]["regressor/onnx-fp32"]
    assert row["status"] == "ok" and row["model_latency"]["p50_ms"] > 0 and row["size_mb"] > 1
    assert report["variants"]["detector/onnx-fp32"]["recall_vs_default"] == 1.0
    assert report["gate"]["passed"] and report["gate"]["checks"]
    assert (tmp / "ced.png").read_bytes()[:4] == b"\x89PNG"
    assert "| variant (* default) |" in (tmp / "report.md").read_text()
    assert "gate: PASS" in result.output


def test_accuracy_section_recomputes_the_protocol(quick_report, upstream_aligner, data_dir):
    """The report's NME is the 3DDFA protocol computed independently here on the same crops (nme.py's own code)."""
    from tddfa_edge.benchmarks.nme import evaluate_aligner, load_aflw2000

    _, report, _ = quick_report
    acc = report["accuracy"]
    assert acc["reference"] == "onnx-fp32" and acc["images"] == 120
    entry = acc["variants"]["onnx-fp32"]
    assert entry["nme"]["original"]["bin_counts"] == {"0-30": 84, "30-60": 11, "60-90": 25}
    reports, _ = evaluate_aligner(upstream_aligner, load_aflw2000(data_dir, limit=120))
    assert entry["nme"]["original"]["headline"] == round(reports["original"].headline, 4)
    assert entry["nme"]["reannotated"]["headline"] == round(reports["reannotated"].headline, 4)
    assert "drift" in entry


def test_gate_exits_with_budget_error_when_a_budget_is_missed(tmp_path, upstream_bundle, data_dir):
    impossible = _target_copy(tmp_path, "impossible", min_fps_image_mode=1e9, min_fps_tracking=1.0)
    args = ["--bundle", str(upstream_bundle), "--quick", "--only", "latency", "--budget", "0.05", "--data-dir", str(data_dir),
            "--target", impossible, "-q"]
    result = CliRunner().invoke(bench_main, args)
    assert result.exit_code == BudgetError.exit_code, result.output
    assert "gate: FAIL (min_fps_image_mode)" in result.output
    report = CliRunner().invoke(bench_main, args + ["--no-gate"])
    assert report.exit_code == 0, report.output


def test_gate_applies_the_budget_of_each_precision():
    def variant(precision, drift):
        return {"precision": precision, "nme": {}, "drift": {"original": {"headline": drift}}}

    report = {
        "bundle": {"target_arch": "aarch64", "size": {"total_mb": 10.0}},
        "machine": {"arch": "x86_64"},
        "config": {"threads": 1},
        "latency": {"image_mode": {"fps": 5.0}, "tracking_sparse": {"fps": 5.0}},
        "accuracy": {"reference": "tflite-fp32", "images": 2000, "variants": {
            "tflite-fp32": variant("fp32", 0.0), "tflite-int8": variant("int8", 0.004),
            "tflite-int8-full": variant("int8-full", 0.03), "onnx-int8": variant("int8", 0.02)}},
    }
    budgets = {"max_nme_drift": 0.01, "max_nme_drift_full_integer": 0.05, "max_bundle_mb": 25.0, "min_fps_image_mode": 100.0}
    gate = evaluate_gate(report, budgets, "test")
    by = {(c["budget"], c["note"].split(",")[0]): c["status"] for c in gate["checks"]}
    assert by[("max_nme_drift", "tflite-int8")] == "pass"
    assert by[("max_nme_drift_full_integer", "tflite-int8-full")] == "pass"
    assert by[("max_nme_drift", "onnx-int8")] == "FAIL"
    assert by[("min_fps_image_mode", "target is aarch64")] == "skipped"  # speed budgets hold on the board only
    assert gate["failed"] == ["max_nme_drift"] and not gate["passed"]


# --- the runtime fast paths the benchmark times: same results as the straightforward code ----------------
def test_letterbox_into_canvas_equals_resize_then_pad(data_dir):
    from tddfa_edge.runtime.detector import prepare_detector_input
    from tddfa_edge.runtime.faceboxes_decoding import BGR_MEAN
    from tddfa_edge.runtime.manifest import DetectorSettings

    frame = cv2.imread(str(data_dir / "images" / "emma.jpg"))  # 3913x1901: padded at the bottom
    for size, image in (((480, 272), frame), ((256, 256), frame), ((480, 272), frame[:, :900])):
        cfg = DetectorSettings("faceboxes", size, (1080, 720), "linear_exact", 0.5, 0.3, 64)
        got = prepare_detector_input(image, cfg)
        h, w = image.shape[:2]
        new_w, new_h = max(1, min(size[0], round(w * got.scale))), max(1, min(size[1], round(h * got.scale)))
        want = np.empty((size[1], size[0], 3), np.uint8)
        want[:] = BGR_MEAN
        want[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR_EXACT)
        assert np.array_equal(got.image, want)


def _plain_3dmm(u, w_shp, w_exp, p, box) -> np.ndarray:
    """3DDFA_V2 in float64: R @ (u + W_shp a_shp + W_exp a_exp) + t, then the crop-to-frame map; (V, 3)."""
    shape = (u.reshape(-1) + w_shp[:, :40] @ p[12:52] + w_exp[:, :10] @ p[52:62]).reshape(3, -1, order="F")
    pose = p[:12].reshape(3, 4)
    v = pose[:, :3] @ shape + pose[:, 3:]
    sx, sy, ex, ey = box
    scale_x, scale_y = (ex - sx) / 120, (ey - sy) / 120
    out = np.stack([(v[0] - 1) * scale_x + sx, (120 - v[1]) * scale_y + sy, (v[2] - 1) * (scale_x + scale_y) / 2])
    out[2] -= out[2].min()
    return out.T


def test_fused_reconstruction_matches_the_3dmm_formula(upstream_aligner, data_dir):
    """Transposed basis with the mean folded in, pose and crop mapping folded into one 3x3 per face: same
    landmarks and dense mesh as the plain formula, to float32 noise (parity tolerance is 0.01 px)."""
    aligner = upstream_aligner
    rng = np.random.default_rng(0)
    params = aligner.param_mean + rng.standard_normal((3, 62)).astype(np.float32) * aligner.param_std
    boxes = np.array([[100.5, 50.25, 420.5, 370.25], [-40, -30, 200, 210], [900, 400, 1300, 800]], np.float64)
    with np.load(data_dir / "bfm" / "bfm_noneck_v3.npz") as z:  # the source arrays, not the bundle's transposed copy
        dense_arrays = [z[k].astype(np.float64) for k in ("u", "w_shp", "w_exp")]
    with np.load(aligner.bundle.file("bfm_68.npz")) as z:
        lm_arrays = [z[k].astype(np.float64) for k in ("u_base", "w_shp_base", "w_exp_base")]
    dense = aligner.dense(params, boxes)
    landmarks = aligner.landmarks(params, boxes)
    for p, box, got_dense, got_lm in zip(params.astype(np.float64), boxes, dense, landmarks):
        tolerance = 5e-4 * max(1.0, (box[2] - box[0]) / 120)
        want = _plain_3dmm(*dense_arrays, p, box)
        assert got_dense.shape == want.shape and np.abs(got_dense - want).max() < tolerance
        assert np.abs(got_lm - _plain_3dmm(*lm_arrays, p, box)).max() < tolerance
    assert np.abs(aligner.dense(params[1:2], boxes[1:2])[0] - dense[1]).max() < 1e-3  # gemv vs gemm rounding only


def test_a_variant_that_cannot_run_gets_a_row(tmp_path, upstream_bundle, data_dir):
    import hashlib
    import shutil

    from conftest import rewrite_manifest

    bundle = tmp_path / "bundle"
    shutil.copytree(upstream_bundle, bundle)
    broken = bundle / "regressor.int8.onnx"
    broken.write_bytes(b"not an onnx graph")

    def add_broken(m):
        entry = json.loads(json.dumps(m["models"]["regressor/onnx-fp32"]))
        entry.update(variant="onnx-int8", precision="int8", file=broken.name)
        m["models"]["regressor/onnx-int8"] = entry
        m["files"][broken.name] = {"sha256": hashlib.sha256(broken.read_bytes()).hexdigest(), "size": broken.stat().st_size,
                                   "install_only": False}

    rewrite_manifest(bundle, add_broken)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(bench_main, ["--bundle", str(bundle), "--quick", "--only", "variants", "--budget", "0.05",
                                             "--data-dir", str(data_dir), "--json", str(out), "--no-gate", "-q"])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["variants"]
    assert rows["regressor/onnx-fp32"]["status"] == "ok"
    assert rows["regressor/onnx-int8"]["status"].startswith("failed: BundleError: onnxruntime cannot load")
    assert "failed: BundleError" in result.output


def test_pose_matches_the_reference_formula_including_gimbal_lock():
    from tddfa_edge.runtime.head_pose import pose_from_params

    def reference(p):
        r = p[:12].reshape(3, 4)[:, :3].astype(np.float64)
        r1, r2 = r[0] / np.linalg.norm(r[0]), r[1] / np.linalg.norm(r[1])
        rot = np.stack([r1, r2, np.cross(r1, r2)])
        if rot[2, 0] > 0.998:
            return np.degrees([np.pi / 2, np.arctan2(-rot[0, 1], -rot[0, 2]), 0.0])
        if rot[2, 0] < -0.998:
            return np.degrees([-np.pi / 2, np.arctan2(rot[0, 1], rot[0, 2]), 0.0])
        yaw = np.arcsin(rot[2, 0])
        c = np.cos(yaw)
        return np.degrees([yaw, np.arctan2(rot[2, 1] / c, rot[2, 2] / c), np.arctan2(rot[1, 0] / c, rot[0, 0] / c)])

    rng = np.random.default_rng(1)
    params = rng.standard_normal((64, 62)).astype(np.float32) * 1e-3
    for i, yaw in enumerate((np.pi / 2, -1.56, 1.50, -1.45)):  # two in the gimbal-lock branch (|sin| > 0.998), two near it
        c, s = np.cos(yaw), np.sin(yaw)
        params[i, :12] = (np.array([[c, 0, -s, 1], [0, 1, 0, 2], [s, 0, c, 3]]) * 5e-4).reshape(-1)
    got = pose_from_params(params)
    want = np.stack([reference(p) for p in params])
    assert np.abs(got - want).max() < 1e-9
    # Small batches take the scalar path: the same angles one face at a time.
    one_by_one = np.concatenate([pose_from_params(p[None]) for p in params])
    assert np.abs(one_by_one - want).max() < 1e-9
