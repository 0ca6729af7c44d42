"""``tddfa-export`` as a new user runs it: a 3DDFA_V2 checkout, their own photos, no data folder.

The checkout is laid out from ../shared/data the way upstream ships it (weights/, FaceBoxes/weights/, configs/*.pkl);
inputs that a checkout does not have (YuNet's weights) come from ``--download`` through a mirror on 127.0.0.1.
The run must leave stdout to the summary, our lines on stderr, the converters' output in the log file, and a
bundle that loads and finds the faces.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import pytest

from tddfa_edge.models.registry import REGISTRY
from tddfa_edge.runtime.aligner import FaceAligner
from tddfa_edge.runtime.bundle import Bundle
from tddfa_edge.targets import load_target

from test_inputs import UPSTREAM_FILES, write_upstream_pickles

CLI = [sys.executable, "-m", "tddfa_edge.export.cli"]


@pytest.fixture(scope="module")
def user_setup(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("new-user")
    checkout = root / "3DDFA_V2"
    for rel, source in UPSTREAM_FILES.items():
        (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_dir / source, checkout / rel)
    write_upstream_pickles(checkout / "configs", data_dir)
    photos = root / "photos"
    photos.mkdir()
    for rel in ("reference/test_images/1.jpeg", "reference/test_images/2.jpeg", "reference/test_images/3.jpeg",
                "reference/test_images/4.jpeg", "reference/test_images/5.jpeg", "images/trump_hillary.jpg", "images/JianzhuGuo.jpg"):
        shutil.copyfile(data_dir / rel, photos / Path(rel).name)
    cap = cv2.VideoCapture(str(data_dir / "videos" / "obama.mp4"))
    for i in range(40):
        ok, frame = cap.read()
        if ok and i % 4 == 0:
            cv2.imwrite(str(photos / f"frame{i:02d}.jpg"), frame)
    mirror = root / "www"
    for name in ("yunet_n", "yunet_s"):
        url = REGISTRY[name].url
        path = mirror / url.split("github.com/", 1)[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_dir / REGISTRY[name].relative_path, path)
    handler = functools.partial(_QuietHandler, directory=str(mirror))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    env = dict(os.environ, TDDFA_EDGE_MIRROR=f"http://127.0.0.1:{httpd.server_address[1]}", XDG_CACHE_HOME=str(root / "cache"),
               TDDFA_EDGE_DATA=str(root / "no-data-folder"))
    yield root, checkout, photos, env
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_a_new_user_builds_and_runs_a_bundle(user_setup, data_dir):
    root, checkout, photos, env = user_setup
    out = root / "bundles" / "rpi4"
    args = [*CLI, "--target", "rpi4", "--upstream", str(checkout), "--calibration", str(photos), "--download", "--out", str(out),
            "--precision", "int8", "--calibration-size", "64", "--no-measure-latency"]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # stdout: our summary only; stderr: our own lines; the converters' chatter: the log beside the bundle.
    assert proc.stdout.splitlines()[0].startswith(f"bundle: {out}") and "manifest sha256:" in proc.stdout
    assert all(line.startswith("tddfa-export: ") for line in proc.stderr.splitlines()), proc.stderr[-2000:]
    for noise in ("LiteRT", "Collecting tensor data", "Warning", "absl"):
        assert noise not in proc.stdout and noise not in proc.stderr, noise
    assert (root / "bundles" / "rpi4.export.log").stat().st_size > 0
    bundle = Bundle.open(out)
    manifest = bundle.manifest
    assert manifest.sources["regressor"].sha256 == REGISTRY["mb05_120x120"].sha256
    assert manifest.sources["morphable_model"].file == "bfm_noneck_v3.pkl" and manifest.sources["triangles"].file == "tri.pkl"
    assert manifest.calibration.source.startswith("user calibration photos:")
    onnx_calibration = manifest.models["regressor/onnx-int8"].details["calibration"]
    assert onnx_calibration["source"] == manifest.calibration.source and onnx_calibration["range_margin"] == 2.0
    assert {m.precision for m in manifest.models_of("regressor")} == {"int8"}
    assert all(m.verification.passed for m in manifest.models.values())
    assert manifest.pipeline.detector.architecture == load_target("rpi4").detector.architecture.split("_")[0]
    faces = FaceAligner.from_bundle(out)(cv2.imread(str(data_dir / "images" / "trump_hillary.jpg")))
    assert len(faces) == 2

    # A second export to the same place is refused without --force, before any work.
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 2 and again.stderr.strip() == f"tddfa-export: error: {out} exists: pass --force to replace it, or --out another folder"


def test_without_the_export_extra_the_message_says_what_to_install(tmp_path):
    """A base install has no torch: tddfa-export says which extra to install. Simulated by a sitecustomize whose import
    hook refuses torch (the same ModuleNotFoundError a base install raises)."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NoTorch())\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([*CLI, "--target", "x86-1core", "--out", str(tmp_path / "b")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 5, proc.stderr
    assert proc.stderr.startswith("tddfa-export: error: exporting needs torch==2.13.0") and "tddfa-edge[export]" in proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "b").exists()


def test_the_export_report_as_json_on_stdout(tmp_path, data_dir):
    out = tmp_path / "b"
    proc = subprocess.run([*CLI, "--target", "x86-1core", "--precision", "fp32", "--out", str(out), "--data-dir", str(data_dir),
                           "--json", "-", "-q", "--no-measure-latency"], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["manifest_sha256"] == Bundle.open(out).identity
    assert set(report["files"]) == set(Bundle.open(out).manifest.files) and proc.stderr == ""
