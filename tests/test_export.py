"""Exporter behaviour: CLI errors, atomic writes, reproducible bundles, safe pickle reading."""

from __future__ import annotations

import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tddfa_edge.contracts.errors import DataFileError, ExportError, TargetError
from tddfa_edge.export import artifacts
from tddfa_edge.export.exporter import ExportOptions, export_bundle, plan
from tddfa_edge.export.model_io import regressor_io
from tddfa_edge.export.morphable_files import load_array_pickle, load_dense_model, load_param_mean_std
from tddfa_edge.runtime.bundle import Bundle
from tddfa_edge.targets import load_target

from conftest import export_quietly, upstream_target

CLI = [sys.executable, "-m", "tddfa_edge.export.cli"]


def run_cli(*args, env=None):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=600)


def test_list_targets():
    proc = run_cli("--list-targets")
    assert proc.returncode == 0
    for name in ("x86-1core", "rpi4", "rpi5", "rpi3", "rpi-zero2w"):
        assert name in proc.stdout


def test_unknown_target_is_one_line_with_valid_choices():
    proc = run_cli("--target", "rpi9")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "valid targets" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_checkpoint_says_where_to_put_it(tmp_path):
    proc = run_cli("--target", "x86-1core", "--data-dir", str(tmp_path), "--out", str(tmp_path / "b"))
    assert proc.returncode == 3
    assert "not found: put it at" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "b").exists()


def test_corrupt_checkpoint_is_refused(tmp_path, data_dir):
    bad = tmp_path / "mb05.pth"
    bad.write_bytes(b"\x00" * 1000)
    proc = run_cli("--target", "x86-1core", "--data-dir", str(data_dir), "--regressor-weights", str(bad), "--out", str(tmp_path / "b"))
    assert proc.returncode == 3 and "corrupt or not the expected file" in proc.stderr
    assert not (tmp_path / "b").exists()


def test_unwritable_output_folder(data_dir):
    proc = run_cli("--target", "x86-1core", "--precision", "fp32", "--data-dir", str(data_dir), "--out", "/proc/tddfa-edge/bundle")
    assert proc.returncode == 1 and proc.stderr.startswith("tddfa-export: error: cannot write the export log /proc/tddfa-edge/")
    assert proc.stderr.count("\n") == 1


def _perturbed_onnx_converter(ctx, role, folder):
    """A broken conversion: the artifact comes from a network whose FC weights were changed."""
    import copy

    import torch

    from tddfa_edge.export.onnx_export import export_regressor_onnx

    broken = copy.deepcopy(ctx.regressor)
    with torch.no_grad():
        broken.fc.weight.mul_(1.2)
    export_regressor_onnx(broken, folder / "regressor.fp32.onnx")
    inputs, outputs = regressor_io()
    return artifacts.ModelArtifact("regressor.fp32.onnx", role, "onnx", "fp32", inputs, outputs)


def test_failed_verification_writes_nothing_and_keeps_previous_bundle(tmp_path, data_dir, upstream_bundle, monkeypatch):
    out = tmp_path / "bundle"
    previous = dict((p.name, p.read_bytes()) for p in upstream_bundle.iterdir())
    out.mkdir()
    for name, data in previous.items():
        (out / name).write_bytes(data)
    artifacts.converter_for("regressor", "onnx-fp32")  # fill the registry before patching it
    monkeypatch.setitem(artifacts.CONVERTERS, ("regressor", "onnx", "fp32"), _perturbed_onnx_converter)
    with pytest.raises(ExportError, match=r"verification failed, nothing written: regressor onnx-fp32: landmark_drift_px_mean="):
        export_bundle(ExportOptions(target=upstream_target(), out=out, data_dir=str(data_dir), measure_latency=False), log=lambda m: None)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == previous
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"], "staging folders left behind"


def test_reexport_is_byte_identical(tmp_path, data_dir, upstream_bundle):
    """Manifest included: this machine's latency measurements go to the export report, not into the bundle."""
    again = tmp_path / "again"
    result = export_quietly(upstream_target(), again, data_dir, archive=True, measure_latency=True)
    assert set(result.latency) == {"regressor/onnx-fp32", "detector/onnx-fp32"}
    assert sorted(p.name for p in again.iterdir()) == sorted(p.name for p in upstream_bundle.iterdir())
    for path in sorted(upstream_bundle.iterdir()):
        assert (again / path.name).read_bytes() == path.read_bytes(), f"{path.name} differs between exports"
    assert result.identity == Bundle.open(upstream_bundle).identity
    archive = Path(str(again) + ".tar.gz")
    first = archive.read_bytes()
    export_quietly(upstream_target(), again, data_dir, archive=True)
    assert archive.read_bytes() == first


def test_bundle_contents_and_notice(upstream_bundle):
    bundle = Bundle.open(upstream_bundle)
    manifest = bundle.manifest
    assert set(manifest.files) == {"regressor.fp32.onnx", "detector.fp32.onnx", "bfm_68.npz", "bfm_dense.npz", "NOTICE-3DMM.txt"}
    assert sorted(p.name for p in upstream_bundle.iterdir()) == sorted(set(manifest.files) | {"manifest.json", "manifest.json.sha256"})
    assert "non-commercial" in (upstream_bundle / "NOTICE-3DMM.txt").read_text()
    assert manifest.sources["regressor"].sha256.startswith("f93ed7f1")
    reg = manifest.models["regressor/onnx-fp32"]
    assert reg.architecture == "mobilenet_v1_x0.5" and manifest.models["detector/onnx-fp32"].architecture == "faceboxes"
    assert reg.verification.passed and reg.verification.measures["landmark_drift_px_mean"] < 0.01
    with np.load(upstream_bundle / "bfm_68.npz", allow_pickle=False) as lm:
        assert lm["u_base"].shape == (204,) and lm["w_shp_base"].shape == (204, 40)


def test_a_precision_the_target_does_not_offer_is_refused_before_any_work(tmp_path, data_dir):
    with pytest.raises(TargetError, match="target x86-1core offers fp32, int8, int8-full; --precision fp16 is not among them"):
        plan(load_target("x86-1core"), "fp16")
    rpi4 = plan(load_target("rpi4"), "fp16")
    assert rpi4.regressor.variants == ("tflite-fp16",) and rpi4.regressor.default == "tflite-fp16"
    assert rpi4.detector.variants == (load_target("rpi4").detector.default,), "a role without the precision keeps its default"
    start = time.monotonic()
    proc = run_cli("--target", "x86-1core", "--precision", "fp16", "--data-dir", str(data_dir), "--out", str(tmp_path / "b"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "offers fp32, int8, int8-full" in proc.stderr
    assert time.monotonic() - start < 10, "refused after work was done"
    assert not (tmp_path / "b").exists()


def test_upstream_pickles_are_read_without_executing_code(tmp_path, data_dir):
    mean, std = load_param_mean_std(data_dir / "weights" / "param_mean_std_62d_120x120.pkl")
    assert mean.shape == (62,) and std.shape == (62,) and (std > 0).all()

    # An upstream-style bfm pickle (dict of arrays) converts to the same arrays as our npz.
    dense = load_dense_model(data_dir / "bfm" / "bfm_noneck_v3.npz")
    small = {k: (v[:300] if k in ("u", "w_shp", "w_exp") else v) for k, v in dense.items()}
    small["keypoints"] = small["keypoints"][small["keypoints"] < 300]
    pkl = tmp_path / "bfm_noneck_v3.pkl"
    with open(pkl, "wb") as fh:
        pickle.dump({k: v for k, v in small.items() if k != "tri"} | {"tri": small["tri"].T}, fh)
    tri = tmp_path / "tri.pkl"
    with open(tri, "wb") as fh:
        pickle.dump(small["tri"].T, fh)
    loaded = load_dense_model(pkl, tri)
    assert np.array_equal(loaded["u"], small["u"]) and np.array_equal(loaded["tri"], small["tri"])

    marker = tmp_path / "payload-ran"

    class Exploit:
        def __reduce__(self):  # unpickling would create the marker file
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as fh:
        pickle.dump({"mean": Exploit()}, fh)
    assert not marker.exists()
    with pytest.raises(DataFileError, match="refused global (io|builtins).open"):
        load_array_pickle(evil)
    assert not marker.exists(), "the pickle's payload ran"
    pickle.loads(evil.read_bytes())  # the payload is live: a plain unpickler runs it
    assert marker.exists()
