"""The runtime on aarch64 (qemu user-mode, real aarch64 wheels) gives the same results as on x86.

The guest is Debian bookworm arm64 with CPython 3.11 (Raspberry Pi OS 12's), QEMU_CPU set to the board's
core (cortex-a72 = Pi 4, cortex-a76 = Pi 5) so the kernels a Pi would pick are the ones exercised.
Emulated timings mean nothing and are not measured here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import cross_platform_probe

ROOT = Path(__file__).resolve().parents[1]
GUEST = ROOT / ".ci" / "aarch64_python"
BOARDS = [("rpi4", "cortex-a72"), ("rpi5", "cortex-a76")]


@pytest.fixture(scope="session")
def guest_site(tmp_path_factory) -> Path:
    """This toolkit (pure Python) installed into a folder the guest puts on its path."""
    site = tmp_path_factory.mktemp("guest-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(site), str(ROOT)],
                   check=True, capture_output=True)
    return site


@pytest.fixture(scope="session")
def probe_frames(tmp_path_factory, data_dir, upstream_aligner) -> Path:
    frames = [cv2.imread(str(data_dir / rel)) for rel in (
        "reference/test_images/2.jpeg", "reference/test_images/4.jpeg", "images/trump_hillary.jpg", "images/JianzhuGuo.jpg")]
    cap = cv2.VideoCapture(str(data_dir / "videos" / "obama.mp4"))
    for index in range(40):
        ok, frame = cap.read()
        if ok and index % 20 == 0:
            frames.append(frame)
    arrays = {"count": np.array(len(frames))}
    for i, frame in enumerate(frames):
        arrays[f"frame{i}"] = frame
        arrays[f"boxes{i}"] = upstream_aligner.detect(frame).boxes
    path = tmp_path_factory.mktemp("probe") / "frames.npz"
    np.savez(path, **arrays)
    return path


def _run_guest(cpu: str, site: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, TDDFA_EXTRA_PYTHONPATH=str(site))
    return subprocess.run([str(GUEST), "--cpu", cpu, *args], capture_output=True, text=True, env=env, timeout=timeout)


def _host_has_vnni() -> bool:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


# int8 models with float outputs, largest landmark difference in the 120 px crop. With VNNI (and on ARM) onnxruntime
# adds int8 products exactly; plain AVX2 adds u8 x s8 pairs in int16 (vpmaddubsw), which saturates now and then
# (onnxruntime's quantization docs), so an AVX2 host differs from the board by up to ~0.2 px (measured 0.199).
INT8_FLOAT_OUT_TOLERANCE_PX = 0.05 if _host_has_vnni() else 0.25


def _compare(host: dict, guest: dict, bundle: Path) -> list[str]:
    """Every result on both sides, and within the tolerance of its precision. Landmarks compare in pixels of the
    120x120 crop: fp32/fp16 within 1e-3 px, integer outputs within one step (then 0.05 px)."""
    from tddfa_edge.runtime.bundle import Bundle

    manifest = Bundle.open(bundle, verify=False).manifest
    precision = {f"{m.role}/{m.variant}": m.precision for m in manifest.models.values()}
    default_float = precision[f"regressor/{manifest.defaults.regressor}"] in ("fp32", "fp16")
    problems = []
    assert str(guest["machine"]) == "aarch64" and str(host["machine"]) == "x86_64"
    if set(host) != set(guest):
        problems.append(f"results only on x86: {sorted(set(host) - set(guest))}; only on aarch64: {sorted(set(guest) - set(host))}")
    for key in sorted(set(host) & set(guest)):
        h, g = host[key], guest[key]
        if key in ("machine", "crops") or key.endswith("/crop_boxes"):
            continue
        if h.shape != g.shape:
            problems.append(f"{key}: shape {h.shape} on x86, {g.shape} on aarch64")
            continue
        if key.startswith("regressor/") and key.endswith("/landmarks"):
            variant = key.split("/")[1]
            diff = float(np.abs(h - g).max())
            raw_h, raw_g = host[f"regressor/{variant}/raw"], guest[f"regressor/{variant}/raw"]
            if precision[f"regressor/{variant}"] in ("fp32", "fp16"):
                if diff > 1e-3:
                    problems.append(f"regressor {variant}: landmarks differ by {diff:.2e} px (> 1e-3)")
            elif raw_h.dtype.kind in "iu":
                step = int(np.abs(raw_h.astype(np.int64) - raw_g.astype(np.int64)).max())
                if step > 1:
                    problems.append(f"regressor {variant}: integer outputs differ by {step} steps (> 1)")
            elif diff > INT8_FLOAT_OUT_TOLERANCE_PX:
                problems.append(f"regressor {variant}: landmarks differ by {diff:.3f} px (> {INT8_FLOAT_OUT_TOLERANCE_PX})")
        elif key.startswith("detector/") and len(h):
            diff = float(np.abs(h[:, :4] - g[:, :4]).max())
            if diff > 0.5:
                problems.append(f"{key}: boxes differ by {diff:.3f} px")
        elif key.startswith("pipeline/") and key.endswith("/landmarks") and len(h):
            side = host[key.replace("/landmarks", "/crop_boxes")][:, 2:3] - host[key.replace("/landmarks", "/crop_boxes")][:, 0:1]
            diff = float((np.abs(h[..., :2] - g[..., :2]).max(axis=2) / (side / 120.0)).max())
            if diff > (1e-2 if default_float else 0.1):
                problems.append(f"{key}: landmarks differ by {diff:.3f} crop px")
    if not np.array_equal(host["crops"], guest["crops"]):
        problems.append(f"crops differ in {(host['crops'] != guest['crops']).mean():.1%} of pixels (preprocessing is not deterministic)")
    return problems


@pytest.mark.slow
@pytest.mark.parametrize("target,cpu", BOARDS, ids=[b[0] for b in BOARDS])
def test_aarch64_results_match_x86(target, cpu, target_bundle, guest_site, probe_frames, tmp_path):
    bundle = target_bundle(target)
    host_out, guest_out = tmp_path / "host.npz", tmp_path / "guest.npz"
    assert cross_platform_probe.main(str(bundle), str(probe_frames), str(host_out)) == 0
    proc = _run_guest(cpu, guest_site, str(ROOT / "tests" / "cross_platform_probe.py"), str(bundle), str(probe_frames), str(guest_out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    host, guest = dict(np.load(host_out)), dict(np.load(guest_out))
    problems = _compare(host, guest, bundle)
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_wheelhouse_installs_offline_and_runs_on_aarch64(target_bundle, tmp_path, data_dir):
    """What a firmware image build does: install from the bundle's wheelhouse with no index, then run."""
    bundle = target_bundle("rpi4")
    requirements = (bundle / "requirements.txt").read_text()
    assert "tddfa-edge==" in requirements and "ai-edge-litert==" in requirements and "--hash=sha256:" in requirements
    import zipfile

    (wheel,) = (bundle / "wheelhouse").glob("tddfa_edge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())  # the data files a wheel user's export and runtime read
    assert {"tddfa_edge/export/morphable_check.json", "tddfa_edge/export/licences/LICENSE-yunet.txt",
            "tddfa_edge/targets/rpi4.toml"} <= names
    site = tmp_path / "site"
    env = dict(os.environ, TDDFA_EXTRA_PYTHONPATH=str(site))
    install = subprocess.run([str(GUEST), "--cpu", "cortex-a72", "--site", "none", "-m", "pip", "install", "--quiet", "--no-index",
                              "--no-compile", "--find-links", str(bundle / "wheelhouse"), "--require-hashes", "-r",
                              str(bundle / "requirements.txt"), "--target", str(site)],
                             capture_output=True, text=True, env=env, timeout=1500)
    assert install.returncode == 0, install.stderr[-2000:]
    code = (
        "import platform, cv2, sys; from tddfa_edge.runtime import FaceAligner;"
        f"a = FaceAligner.from_bundle({str(bundle)!r}); faces = a(cv2.imread({str(data_dir / 'images' / 'JianzhuGuo.jpg')!r}));"
        "print(platform.machine(), len(faces), a.regressor.session.backend, a.regressor.variant);"
        "sys.exit(0 if len(faces) == 1 else 1)"
    )
    run = subprocess.run([str(GUEST), "--cpu", "cortex-a72", "--site", "none", "-c", code], capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
    assert run.stdout.split()[:4] == ["aarch64", "1", "litert", "tflite-int8"]
