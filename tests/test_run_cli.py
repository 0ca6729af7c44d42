"""``tddfa-run`` end to end on the real bundle: images, folders, video, cameras, interruption and bad input.

Everything written goes to ``tmp_path``. Most runs go through click's CliRunner (in-process); the ones
that need a real process (SIGKILL mid-video, native libraries' stderr) run ``python -m`` in a subprocess.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from tddfa_edge.runtime import sources
from tddfa_edge.runtime.cli import main
from tddfa_edge.runtime.sources import mp4_truncation

from conftest import rewrite_manifest

REF = "reference/upstream_mb05"
EXIT_INPUT, EXIT_PARTIAL, EXIT_BUNDLE = 6, 9, 4


def run_cli(bundle, *args):
    result = CliRunner().invoke(main, ["--bundle", str(bundle), *map(str, args)], catch_exceptions=False)
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return result, records


def stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, data_dir) -> Path:
    """The bad and odd inputs of the issue, made from a real face photo."""
    folder = tmp_path_factory.mktemp("bad_inputs")
    image = cv2.imread(str(data_dir / "images" / "JianzhuGuo.jpg"))
    jpeg = (data_dir / "images" / "JianzhuGuo.jpg").read_bytes()
    (folder / "a_truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "b_text.png").write_text("this is a text file with an image suffix\n")
    cv2.imwrite(str(folder / "c_deep16.png"), image.astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "d_gray.png"), cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(folder / "e_rgba.png"), cv2.cvtColor(image, cv2.COLOR_BGR2BGRA))
    (folder / "f_zero.jpg").write_bytes(b"")
    cv2.imwrite(str(folder / "g_cut_by_border.png"), image[:, 180:])
    cv2.imwrite(str(folder / "h_no_face.png"), np.full((300, 400, 3), 127, np.uint8))
    cv2.imwrite(str(folder / "i_original.png"), image)
    (folder / "notes.txt").write_text("not an image suffix: skipped")
    video = (data_dir / "videos" / "obama.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(video[: len(video) // 2])
    return folder


# --- images, folders, video ------------------------------------------------------------------------------
def test_image_records_drawing_dense_and_obj_mesh(upstream_bundle, data_dir, tmp_path):
    image = data_dir / "images" / "JianzhuGuo.jpg"
    drawn, meshes = tmp_path / "drawn.jpg", tmp_path / "meshes"
    result, records = run_cli(upstream_bundle, image, "--draw", drawn, "--dense", "--dense-format", "json", "--mesh-dir", meshes,
                              "--mesh-format", "obj")
    assert result.exit_code == 0, result.stderr
    assert len(records) == 1 and records[0]["frame"] == 0 and records[0]["source"] == "JianzhuGuo.jpg"
    assert records[0]["detected"] is True, "image mode runs the detector on every image"
    assert records[0]["timestamp"] == round(image.stat().st_mtime, 6), "images carry their file's modification time"
    ref = np.load(data_dir / REF / "JianzhuGuo.npz")
    (face,) = records[0]["faces"]
    assert set(face) == {"track_id", "box", "score", "landmarks_68", "pose_ypr", "dense_vertices"} and face["track_id"] is None
    assert np.abs(np.array(face["landmarks_68"]).T - ref["sparse"][0]).max() < 0.011
    assert np.abs(np.array(face["pose_ypr"]) - ref["pose"][0]).max() < 0.01
    assert np.array(face["dense_vertices"]).shape == (38365, 3)
    assert cv2.imread(str(drawn)).shape == cv2.imread(str(image)).shape
    (obj,) = meshes.glob("*.obj")
    kinds = [line[:2] for line in obj.read_text().splitlines()]
    assert kinds.count("v ") == 38365 and kinds.count("f ") == 76073


def test_folder_in_natural_order_with_ply_meshes_and_max_faces(upstream_bundle, data_dir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(data_dir / "reference/test_images/2.jpeg", folder / "img10.jpeg")
    shutil.copy(data_dir / "images/JianzhuGuo.jpg", folder / "img9.jpg")
    (folder / "README.txt").write_text("skipped")
    drawn, meshes = tmp_path / "drawn", tmp_path / "meshes"
    result, records = run_cli(upstream_bundle, folder, "--draw", drawn, "--mesh-dir", meshes, "--max-faces", "2")
    assert result.exit_code == 0, result.stderr
    assert [(r["frame"], r["source"]) for r in records] == [(0, "img9.jpg"), (1, "img10.jpeg")]
    ref = np.load(data_dir / REF / "2.npz")
    boxes = np.array([f["box"] for f in records[1]["faces"]])
    assert len(boxes) == 2 and np.abs(boxes - ref["boxes"][:2, :4]).max() < 0.5, "--max-faces keeps the best scores"
    assert "dense_vertices" not in records[1]["faces"][0], "meshes alone do not bloat the records"
    assert sorted(p.name for p in drawn.iterdir()) == ["img10.jpeg", "img9.jpg"]
    plys = sorted(meshes.glob("*.ply"))
    assert [p.name for p in plys] == ["img10_000001_0.ply", "img10_000001_1.ply", "img9_000000_0.ply"]
    header = plys[0].read_bytes().split(b"end_header\n")[0].decode()
    assert "element vertex 38365" in header and "element face 76073" in header
    # Binary body: 38,365 x (3 float32 + 3 uint8 colour) + 76,073 x (uint8 count + 3 int32).
    assert plys[0].stat().st_size == len(header) + len("end_header\n") + 38365 * 15 + 76073 * 13


def test_video_tracks_and_reproduces_upstream(upstream_bundle, data_dir, tmp_path):
    out, drawn = tmp_path / "obama.jsonl", tmp_path / "obama_drawn.mp4"
    result, _ = run_cli(upstream_bundle, data_dir / "videos" / "obama.mp4", "--out", out, "--draw", drawn, "--no-smoothing",
                        "--max-faces", "1")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    records = read_records(out)
    assert [r["frame"] for r in records] == list(range(55))
    assert np.allclose([r["timestamp"] for r in records], np.arange(55) * 0.04, atol=1e-3), "video pts in seconds"
    assert all(len(r["faces"]) == 1 and r["faces"][0]["track_id"] == 0 for r in records)
    ref = np.load(data_dir / REF / "obama_tracking.npz")
    landmarks = np.array([r["faces"][0]["landmarks_68"] for r in records]).transpose(0, 2, 1)
    assert np.abs(landmarks - ref["sparse"]).max() < 0.011
    assert [r["detected"] for r in records][1:] == list(ref["redetect"][1:])
    cap = cv2.VideoCapture(str(drawn))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 55


def test_interrupted_run_keeps_every_finished_frame(upstream_bundle, data_dir, tmp_path):
    out = tmp_path / "killed.jsonl"
    # Detection on every frame (~20 ms each) so there is time to kill it mid-video.
    cmd = [sys.executable, "-m", "tddfa_edge.runtime.cli", "--bundle", str(upstream_bundle), str(data_dir / "videos" / "obama.mp4"),
           "--out", str(out), "--no-track", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 5:
                break
            time.sleep(0.005)
        proc.kill()  # SIGKILL: no cleanup of any kind
    finally:
        proc.wait()
    lines = out.read_text().splitlines()
    assert 5 <= len(lines) < 55, "the run must be stopped mid-video"
    records = [json.loads(line) for line in lines]  # every line is a whole record
    assert [r["frame"] for r in records] == list(range(len(records)))


# --- cameras -----------------------------------------------------------------------------------------------
class FakeCamera:
    """Stands in for cv2.VideoCapture(index): delivers some frames, then nothing."""

    def __init__(self, frames, opened=True):
        self.frames, self.opened = list(frames), opened

    def isOpened(self):
        return self.opened

    def read(self, image=None):
        return (True, self.frames.pop(0).copy()) if self.frames else (False, None)

    def get(self, prop):
        return 30.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self):
        pass


def test_camera_that_stops_delivering(upstream_bundle, data_dir, monkeypatch):
    frame = cv2.imread(str(data_dir / "images" / "JianzhuGuo.jpg"))
    monkeypatch.setattr(sources, "open_camera", lambda index, timeout=None: FakeCamera([frame] * 3))
    monkeypatch.setattr(sources, "CAMERA_STALL_SECONDS", 0.1)
    result, records = run_cli(upstream_bundle, "0")
    assert result.exit_code == EXIT_PARTIAL
    assert [r["frame"] for r in records] == [0, 1, 2] and all(r["source"] == "camera:0" for r in records)
    assert all(abs(r["timestamp"] - time.time()) < 60 for r in records), "cameras carry wall time"
    assert [r["faces"][0]["track_id"] for r in records] == [0, 0, 0]
    assert stderr_lines(result) == ["tddfa-run: camera:0 stopped delivering frames after 3 frame(s)"]


def test_camera_that_cannot_be_opened(upstream_bundle, monkeypatch):
    monkeypatch.setattr(sources, "open_camera", lambda index, timeout=None: FakeCamera([], opened=False))
    result, records = run_cli(upstream_bundle, "3")
    message = "cannot open camera 3 (no such device, in use by another program, or no permission)"
    assert result.exit_code == EXIT_INPUT
    assert records == [{"frame": 0, "timestamp": None, "source": "camera:3", "detected": False, "faces": [], "error": message}]
    assert stderr_lines(result) == [f"tddfa-run: error: {message}"]


# --- bad input -----------------------------------------------------------------------------------------------
def test_folder_of_bad_and_odd_images_goes_on(upstream_bundle, bad_inputs):
    result, records = run_cli(upstream_bundle, bad_inputs)
    assert result.exit_code == EXIT_PARTIAL
    by_name = {r["source"]: r for r in records}
    assert [r["frame"] for r in records] == list(range(9)) and "notes.txt" not in by_name
    errors = {name: r["error"] for name, r in by_name.items() if "error" in r}
    assert set(errors) == {"a_truncated.jpg", "b_text.png", "f_zero.jpg"}
    assert "truncated JPEG" in errors["a_truncated.jpg"]
    assert "not an image" in errors["b_text.png"]
    assert "empty file" in errors["f_zero.jpg"]
    lines = stderr_lines(result)
    assert len(lines) == 4 and lines[-1] == "tddfa-run: 3 of 9 frames failed; the others are in the output"
    original = np.array(by_name["i_original.png"]["faces"][0]["landmarks_68"])
    for name in ("c_deep16.png", "e_rgba.png"):
        assert np.abs(np.array(by_name[name]["faces"][0]["landmarks_68"]) - original).max() < 0.011, name
    gray = np.array(by_name["d_gray.png"]["faces"][0]["landmarks_68"])
    assert np.abs(gray[:, :2] - original[:, :2]).mean() < 3.0
    assert by_name["h_no_face.png"]["faces"] == []
    (cut,) = by_name["g_cut_by_border.png"]["faces"]
    cut_xy = np.array(cut["landmarks_68"])[:, :2]
    assert np.isfinite(cut_xy).all() and cut_xy[:, 0].min() < 0, "a face cut by the border is reported, partly outside"
    # Same face 180 px further left: its visible landmarks agree with the uncut photo.
    visible = cut_xy[:, 0] > 20
    assert np.abs(cut_xy[visible] + [180, 0] - original[visible, :2]).mean() < 6.0


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("a_truncated.jpg", "truncated JPEG"),
        ("b_text.png", "not an image in a supported format"),
        ("f_zero.jpg", "empty file (0 bytes)"),
        ("truncated.mp4", "cannot open video"),
        ("notes.txt", "unsupported input"),
        ("missing.jpg", "input not found"),
    ],
)
def test_single_bad_input_is_one_line_and_exit_6(upstream_bundle, bad_inputs, name, message):
    result, records = run_cli(upstream_bundle, bad_inputs / name)
    assert result.exit_code == EXIT_INPUT
    lines = stderr_lines(result)
    assert len(lines) == 1 and message in lines[0], lines
    assert len(records) <= 1 and all(r["faces"] == [] and "error" in r for r in records)


def test_truncated_video_in_a_real_process_prints_one_line_and_no_traceback(upstream_bundle, bad_inputs):
    # FFmpeg would print "moov atom not found" on fd 2 itself; tddfa-run keeps native chatter off stderr.
    proc = subprocess.run([sys.executable, "-m", "tddfa_edge.runtime.cli", "--bundle", str(upstream_bundle), str(bad_inputs / "truncated.mp4")],
                          capture_output=True, text=True, timeout=60)
    message = f"cannot open video {bad_inputs / 'truncated.mp4'}: truncated file (mdat box ends past the end of the file and has no index (moov box))"
    assert proc.returncode == EXIT_INPUT
    assert proc.stderr.splitlines() == [f"tddfa-run: error: {message}"]
    (record,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert record["source"] == "truncated.mp4" and record["error"] == message and record["faces"] == []


def test_video_cut_mid_stream_keeps_its_frames(upstream_bundle, data_dir, tmp_path):
    cap = cv2.VideoCapture(str(data_dir / "videos" / "obama.mp4"))
    path = tmp_path / "short.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (640, 360))
    for _ in range(10):
        writer.write(cv2.resize(cap.read()[1], (640, 360)))
    writer.release()
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    result, records = run_cli(upstream_bundle, path)
    assert result.exit_code == EXIT_PARTIAL
    assert 3 <= len(records) < 10 and all(len(r["faces"]) == 1 for r in records)
    (line,) = stderr_lines(result)
    assert line.startswith("tddfa-run: short.avi: truncated file (its AVI RIFF chunk ends ") and line.endswith(
        f"bytes past the end of the file); ended after {len(records)} frame(s)"), line


def test_mp4_truncation_check(tmp_path):
    def box(kind: bytes, size: int, body_len: int | None = None) -> bytes:
        return size.to_bytes(4, "big") + kind + b"\0" * ((size if body_len is None else body_len + 8) - 8)

    def check(data: bytes):
        path = tmp_path / "clip.mp4"
        path.write_bytes(data)
        return mp4_truncation(path)

    whole = box(b"ftyp", 24) + box(b"moov", 100) + box(b"mdat", 1000)
    assert check(whole) is None
    assert "mdat box ends past the end" in check(whole[:-10])
    assert "no index (moov box)" in check(box(b"ftyp", 24) + box(b"mdat", 1000, 500))


def test_huge_image_is_detected_downscaled_and_reported_in_original_pixels(upstream_bundle, upstream_aligner, data_dir, tmp_path):
    image = cv2.imread(str(data_dir / "images" / "JianzhuGuo.jpg"))
    h, w = image.shape[:2]
    scale = min(8000 / w, 6000 / h)
    up = cv2.resize(image, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_CUBIC)
    canvas = np.zeros((6000, 8000, 3), np.uint8)
    canvas[: up.shape[0], : up.shape[1]] = up
    path = tmp_path / "huge.jpg"
    cv2.imwrite(str(path), canvas, [cv2.IMWRITE_JPEG_QUALITY, 95])
    result, records = run_cli(upstream_bundle, path)  # 48 MP: over the x86 target's default decode budget (8.7 MP)
    assert result.exit_code == EXIT_INPUT and "error" in records[0] and "width" not in records[0]
    assert stderr_lines(result) == [f"tddfa-run: {records[0]['error']}"]
    assert "declares 8000 x 6000 (48.0 MP), over the decode limit of 8.7 MP (--max-pixels 8738133); not decoded" in records[0]["error"]
    result, records = run_cli(upstream_bundle, path, "--max-pixels", 48_000_000)
    assert result.exit_code == 0 and (records[0]["width"], records[0]["height"]) == (8000, 6000)
    (face,) = records[0]["faces"]
    (small,) = upstream_aligner(image)
    sx, sy = up.shape[1] / w, up.shape[0] / h
    box = np.array(face["box"]) / [sx, sy, sx, sy]
    size = float(small.box[2] - small.box[0])
    assert np.abs(box - small.box).max() < 0.05 * size
    landmarks = np.array(face["landmarks_68"])[:, :2] / [sx, sy]
    assert np.abs(landmarks - small.landmarks_68[:, :2]).mean() < 0.01 * size


# --- bundles -----------------------------------------------------------------------------------------------
def test_bundle_failing_sha256_is_refused(upstream_bundle, data_dir, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(upstream_bundle, copy)
    model = copy / "regressor.fp32.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 3] ^= 0x01
    model.write_bytes(bytes(data))
    result, records = run_cli(copy, data_dir / "images" / "JianzhuGuo.jpg")
    assert result.exit_code == EXIT_BUNDLE and records == []
    assert stderr_lines(result) == [f"tddfa-run: error: bundle {copy} refused: regressor.fp32.onnx fails its sha256"]


def test_bundle_for_another_machine_runs_quietly(upstream_bundle, data_dir, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(upstream_bundle, copy)
    rewrite_manifest(copy, lambda m: m["target"].update(arch="aarch64"))
    result, records = run_cli(copy, data_dir / "images" / "JianzhuGuo.jpg")
    assert result.exit_code == 0 and len(records[0]["faces"]) == 1
    assert stderr_lines(result) == []


def test_dense_needs_a_bundle_with_the_dense_basis(upstream_bundle, data_dir, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(upstream_bundle, copy)
    (copy / "bfm_dense.npz").unlink()

    def drop_dense(m):
        m["morphable_model"]["dense"] = None
        del m["files"]["bfm_dense.npz"]

    rewrite_manifest(copy, drop_dense)
    result, _ = run_cli(copy, data_dir / "images" / "JianzhuGuo.jpg", "--dense", "--dense-format", "json")
    assert result.exit_code == EXIT_BUNDLE
    assert "no dense 3DMM basis" in stderr_lines(result)[0]


def test_pose_axes_use_the_reported_pose_convention():
    from tddfa_edge.runtime.drawing import rotation_from_ypr
    from tddfa_edge.runtime.head_pose import pose_from_params

    for ypr in [(30.0, 10.0, -5.0), (-50.0, -20.0, 15.0), (5.0, 40.0, 30.0)]:
        params = np.zeros((1, 62))
        params[0, :12] = np.hstack([2.0 * rotation_from_ypr(ypr), np.zeros((3, 1))]).ravel()
        assert np.allclose(pose_from_params(params)[0], ypr, atol=1e-6)
