"""``tddfa-run`` against hostile input, one test (or more) per finding of the outside fuzz run.

1 one bad image ends a folder run; 2 decompression bombs; 3 ``kill -9`` leaves a partial line; 5 intact AVI/MKV
called truncated, a JPEG named .mp4; 6 ``--out`` = input; 7 stalled streams; 8 signals during start-up;
9 folder hazards and CLI hygiene; plus the new flags and the dense binary output. Real processes where the
behaviour is the process's (signals, SIGKILL, closed stdout, peak RSS, timeouts); click's CliRunner otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from tddfa_edge.benchmarks.fuzz_inputs import (
    SPECIAL_OK,
    TcpServer,
    gif_bytes,
    overcount,
    patch_jpeg_sof,
    png_bytes,
    special_entries,
    webp_vp8x,
)
from tddfa_edge.benchmarks.fuzz_run import run_measured
from tddfa_edge.contracts.errors import InputImageError
from tddfa_edge.runtime import interrupts
from tddfa_edge.runtime.cli import main
from tddfa_edge.runtime.jsonl import RecordWriter, read_records

EXIT_USAGE, EXIT_BUNDLE, EXIT_BACKEND, EXIT_INPUT, EXIT_PARTIAL, EXIT_OUTPUT = 2, 4, 5, 6, 9, 1
SCRIPT = Path(sys.executable).with_name("tddfa-run")
CLI = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "tddfa_edge.runtime.cli"]
BUDGET_MB = 200.0  # max_peak_rss_mb of the session bundle's target (x86-1core)


# --- helpers ----------------------------------------------------------------------------------------------------
def _arg(value) -> str:
    return os.fspath(value) if isinstance(value, (str, os.PathLike)) else str(value)


def run_cli(bundle, *args, env=None):
    result = CliRunner().invoke(main, ["--bundle", str(bundle), *map(_arg, args)], catch_exceptions=False, env=env)
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return result, records


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@dataclass
class Proc:
    code: int
    stdout: str
    stderr: str
    seconds: float


def start(bundle, *args, **popen):
    return subprocess.Popen([*CLI, "--bundle", str(bundle), *map(_arg, args)], **popen)


def finish(proc: subprocess.Popen, out, err, t0: float, timeout: float = 120) -> Proc:
    """Wait for ``proc`` and read its captured output files. (Its peak RSS is not measured here: a child forked
    from this big process inherits its high-water mark; ``fuzz_run.run_measured`` forks from a small launcher.)"""
    deadline = time.monotonic() + timeout
    while True:
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            os.waitpid(proc.pid, 0)
            raise AssertionError(f"{proc.args} did not end within {timeout} s")
        time.sleep(0.01)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    return Proc(proc.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"), time.monotonic() - t0)


def run_process(bundle, *args, timeout: float = 120, **popen) -> Proc:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        proc = start(bundle, *args, stdout=out, stderr=err, **popen)
        return finish(proc, out, err, t0, timeout)


def handler_installed(pid: int) -> bool:
    """tddfa-run has taken SIGTERM over (Python alone never catches it): /proc/<pid>/status SigCgt bit 15."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = int(re.search(r"^SigCgt:\s*([0-9a-f]+)", text, re.M).group(1), 16)
    return bool(mask & (1 << (signal.SIGTERM - 1)))


def whole_records(path: Path) -> tuple[list[dict], bytes]:
    """The records of a file that may have been killed: every complete line must parse; returns the trailing fragment."""
    data = path.read_bytes() if path.exists() else b""
    end = data.rfind(b"\n") + 1
    records = [json.loads(line) for line in data[:end].splitlines()]
    return records, data[end:]


@pytest.fixture(scope="module")
def face_jpeg(data_dir) -> bytes:
    return (data_dir / "images" / "JianzhuGuo.jpg").read_bytes()


@pytest.fixture(scope="module")
def face_image(data_dir) -> np.ndarray:
    return cv2.imread(str(data_dir / "images" / "JianzhuGuo.jpg"))


@pytest.fixture(scope="module")
def clip_mkv(tmp_path_factory, data_dir) -> bytes:
    """40 frames of obama.mp4 at 320x180 as MJPG Matroska (streamable over a socket)."""
    cap = cv2.VideoCapture(str(data_dir / "videos" / "obama.mp4"))
    path = tmp_path_factory.mktemp("clip") / "clip.mkv"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (320, 180))
    for _ in range(40):
        writer.write(cv2.resize(cap.read()[1], (320, 180)))
    writer.release()
    cap.release()
    return path.read_bytes()


# --- 1: one bad image must not end a folder run --------------------------------------------------------------------
def test_images_opencv_refuses_become_error_records_and_the_run_goes_on(upstream_bundle, face_jpeg, tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a_face.jpg").write_bytes(face_jpeg)
    (folder / "b_png_40000.png").write_bytes(png_bytes(40000, 40000))  # OpenCV: pixels <= CV_IO_MAX_IMAGE_PIXELS
    (folder / "c_jpeg_40000.jpg").write_bytes(patch_jpeg_sof(face_jpeg, 40000, 40000))
    (folder / "d_face.jpg").write_bytes(face_jpeg)
    (folder / "e_raises.jpg").write_bytes(face_jpeg + b"\0")  # one byte longer: the file the fake decoder fails on
    (folder / "f_face.jpg").write_bytes(face_jpeg)
    real = cv2.imdecode

    def imdecode(buf, flags):  # one file makes the decoder raise something unexpected
        if len(buf) == len(face_jpeg) + 1:
            raise RuntimeError("decoder exploded\nsecond line")
        return real(buf, flags)

    monkeypatch.setattr(cv2, "imdecode", imdecode)
    # A budget so large the bombs reach OpenCV, which raises on them (its own 2^30-pixel limit).
    result, records = run_cli(upstream_bundle, folder, "--max-pixels", 4_000_000_000)
    assert result.exit_code == EXIT_PARTIAL, result.stderr
    assert [r["source"] for r in records] == sorted(p.name for p in folder.iterdir())
    errors = {r["source"]: r["error"] for r in records if "error" in r}
    assert set(errors) == {"b_png_40000.png", "c_jpeg_40000.jpg", "e_raises.jpg"}
    assert "OpenCV refused the PNG data (pixels <= CV_IO_MAX_IMAGE_PIXELS)" in errors["b_png_40000.png"]
    assert "OpenCV refused the JPEG data" in errors["c_jpeg_40000.jpg"]
    assert errors["e_raises.jpg"] == "cannot read e_raises.jpg: RuntimeError: decoder exploded second line"
    assert all(len(r["faces"]) == 1 for r in records if "error" not in r), "every later file still gets its record"
    assert "unexpected" not in result.stderr


# --- 2: decompression bombs ----------------------------------------------------------------------------------------
def test_bombs_are_refused_from_the_header_within_the_memory_budget(upstream_bundle, face_jpeg, face_image, tmp_path):
    folder = tmp_path / "bombs"
    folder.mkdir()
    small = cv2.imencode(".jpg", cv2.resize(face_image, (120, 120)))[1].tobytes()
    (folder / "png_30000.png").write_bytes(png_bytes(30000, 30000, raw=bytes(1 << 16)))
    (folder / "jpeg_120_says_30000.jpg").write_bytes(patch_jpeg_sof(small, 30000, 30000))
    (folder / "rgba16_20000.png").write_bytes(png_bytes(20000, 20000, 16, 6))
    webp = cv2.imencode(".webp", np.zeros((4, 4, 3), np.uint8), [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()
    (folder / "webp_16384.webp").write_bytes(webp_vp8x(webp, 16384, 16384))
    (folder / "gif_65535.gif").write_bytes(gif_bytes(65535, 65535, frame=(1, 1)))
    (folder / "rgba16_2500.png").write_bytes(png_bytes(2500, 2500, 16, 6))  # 6.25 MP < 8.7 MP, but 50 MB of 16-bit RGBA
    flipped = bytearray(cv2.imencode(".png", cv2.resize(face_image, (142, 63)))[1].tobytes())
    assert flipped[37:41] == b"IDAT"
    flipped[33:37] = (0x40002000).to_bytes(4, "big")  # one flipped bit in the IDAT length: OpenCV would allocate 1 GB
    (folder / "idat_1gb.png").write_bytes(bytes(flipped))
    (folder / "z_face.jpg").write_bytes(face_jpeg)
    proc = run_measured(["--bundle", str(upstream_bundle), str(folder), "--out", str(tmp_path / "bombs.jsonl")], timeout=120)
    assert proc.code == EXIT_PARTIAL, proc.stderr
    records = read_records(tmp_path / "bombs.jsonl")
    assert len(records) == 8 and "Traceback" not in proc.stderr
    errors = {r["source"]: r["error"] for r in records if "error" in r}
    assert set(errors) == {p.name for p in folder.iterdir()} - {"z_face.jpg"}
    assert errors.pop("idat_1gb.png").endswith("corrupt or truncated PNG (IDAT chunk of 1073750016 bytes runs past the end of the file)")
    for name, error in errors.items():
        assert re.search(r"over the decode limit of 8\.7 MP \(--max-pixels 8738133\); not decoded$|needs \d+ MB to decode, over the "
                         r"limit of \d+ MB", error), (name, error)
    assert "30000 x 30000 (900.0 MP)" in errors["jpeg_120_says_30000.jpg"]
    assert proc.maxrss_mb < BUDGET_MB, f"peak RSS {proc.maxrss_mb:.0f} MB"  # measured in a fresh child (wait4)


def test_decode_budget_follows_the_target(face_image, tmp_path):
    from tddfa_edge.runtime.frames import default_max_pixels, read_image_file

    assert default_max_pixels(200) == 8_738_133 and default_max_pixels(120) == 5_242_880
    assert default_max_pixels(None) == default_max_pixels(200)
    assert 3840 * 2160 <= default_max_pixels(200), "a 4K still fits the x86 budget"
    # A TIFF whose directory (with the size) comes after 5.5 MB of pixels: read whole because its header needs it.
    big = cv2.resize(face_image, (1200, 1600))
    data = cv2.imencode(".tiff", big, [cv2.IMWRITE_TIFF_COMPRESSION, 1])[1].tobytes()
    assert int.from_bytes(data[4:8], "little") > 1 << 20
    (tmp_path / "big.tif").write_bytes(data)
    image, mtime = read_image_file(tmp_path / "big.tif", "big.tif", default_max_pixels(200))
    assert image.shape == (1600, 1200, 3) and mtime == (tmp_path / "big.tif").stat().st_mtime
    # A PNG whose header is broken is refused from its first MiB, the rest never read.
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40 << 20))
    with pytest.raises(InputImageError, match="PNG does not start with an IHDR chunk"):
        read_image_file(tmp_path / "bad.png", "bad.png", default_max_pixels(200))


# --- 3: kill -9 and --resume ---------------------------------------------------------------------------------------
def test_one_write_per_record(monkeypatch):
    calls = []
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: calls.append(bytes(data)) or len(data))
    writer = RecordWriter(99)
    writer.write({"frame": 0, "faces": [{"landmarks_68": [[float(i)] * 3 for i in range(68)]}] * 8})  # > 4 KB
    writer.write({"frame": 1, "value": float("nan")})
    monkeypatch.setattr(os, "write", real_write)
    assert len(calls) == 2 and len(calls[0]) > 4096 and all(c.endswith(b"\n") and c.count(b"\n") == 1 for c in calls)
    assert json.loads(calls[1]) == {"frame": 1, "value": None}, "NaN is not JSON: written as null"


def test_sigkill_mid_video_leaves_whole_lines_and_resume_completes(upstream_bundle, data_dir, tmp_path):
    video = data_dir / "videos" / "obama.mp4"
    outs = [tmp_path / f"killed{i}.jsonl" for i in range(3)]
    procs = [start(upstream_bundle, video, "--out", out, "--dense", "--no-track", "--threads", "1",
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for out in outs]
    targets = [3, 9, 17]
    deadline = time.monotonic() + 120
    try:
        pending = set(range(3))
        while pending and time.monotonic() < deadline:
            for i in list(pending):
                if outs[i].exists() and outs[i].read_bytes().count(b"\n") >= targets[i]:
                    procs[i].kill()  # SIGKILL: no cleanup of any kind
                    pending.discard(i)
                elif procs[i].poll() is not None:
                    pending.discard(i)
            time.sleep(0.002)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    for out in outs:
        records, fragment = whole_records(out)
        assert 1 <= len(records) < 55, "the run must be stopped mid-video"
        assert [r["frame"] for r in records] == list(range(len(records)))
        for r in records:  # every array a record names is whole
            (face,) = r["faces"]
            array = np.load(out.parent / face["dense"]["file"])
            assert array.shape == (1, 38365, 3) and array.dtype == np.float32 and face["dense"]["index"] == 0
    # --resume: cut any fragment, skip the frames recorded, finish the video.
    out = outs[1]
    with open(out, "ab") as fh:
        fh.write(b'{"frame": 99, "sou')  # a fragment as a killed write could leave
    proc = run_process(upstream_bundle, video, "--out", out, "--dense", "--resume", "--threads", "1")
    assert proc.code == 0, proc.stderr
    assert lines(proc.stderr) == [f"tddfa-run: note: cut an unfinished last line (18 bytes) off {out}"]
    records = read_records(out)
    assert [r["frame"] for r in records] == list(range(55)) and out.read_bytes().endswith(b"\n")
    assert not [p for p in (out.parent / "killed1.dense").iterdir() if p.name.startswith(".")], "temporary files removed"
    proc = run_process(upstream_bundle, video, "--out", out, "--resume")
    assert proc.code == 0 and read_records(out) == records
    assert lines(proc.stderr) == [f"tddfa-run: nothing left to do: every input of {video} already has a record in {out}"]


def test_resume_a_folder_processes_only_what_has_no_record(upstream_bundle, face_jpeg, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (folder / name).write_bytes(face_jpeg)
    out = tmp_path / "faces.jsonl"
    result, _ = run_cli(upstream_bundle, folder, "--out", out, "--max-frames", "1")
    assert result.exit_code == 0
    first = out.read_bytes()
    out.write_bytes(first + b'{"frame":1,"source":"b.j')
    result, _ = run_cli(upstream_bundle, folder, "--out", out, "--resume")
    assert result.exit_code == 0, result.stderr
    records = read_records(out)
    assert [r["source"] for r in records] == ["a.jpg", "b.jpg", "c.jpg"] and out.read_bytes().startswith(first)


# --- 5: video containers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".avi", ".mkv"])
def test_intact_video_whose_container_overcounts_is_not_truncated(upstream_bundle, data_dir, tmp_path, suffix):
    cap = cv2.VideoCapture(str(data_dir / "videos" / "obama.mp4"))
    path = tmp_path / f"clip{suffix}"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (320, 180))
    for _ in range(12):
        writer.write(cv2.resize(cap.read()[1], (320, 180)))
    writer.release()
    path.write_bytes(overcount(path.read_bytes(), suffix))
    assert int(cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FRAME_COUNT)) == 36
    result, records = run_cli(upstream_bundle, path, "--progress")
    assert result.exit_code == 0, result.stderr
    assert [r["frame"] for r in records] == list(range(12))
    assert "truncated" not in result.stderr
    assert result.stderr.rstrip("\n").rsplit("\r", 1)[-1].endswith("100%  12/12"), "the bar finishes at the real count"


def test_obama_progress_bar_finishes_at_the_frames_decoded(upstream_bundle, data_dir):
    result, records = run_cli(upstream_bundle, data_dir / "videos" / "obama.mp4", "--progress", "--max-faces", "1")
    assert result.exit_code == 0 and len(records) == 55
    assert result.stderr.endswith("  [" + "#" * 30 + "]  100%  55/55\n"), result.stderr[-200:]


def test_jpeg_named_mp4_is_not_a_video_and_no_raw_bytes_are_printed(upstream_bundle, face_jpeg, tmp_path):
    path = tmp_path / "holiday.mp4"
    path.write_bytes(face_jpeg)
    result, records = run_cli(upstream_bundle, path)
    assert result.exit_code == EXIT_INPUT
    assert lines(result.stderr) == [f"tddfa-run: error: not a video: {path} holds a JPEG image"]
    assert records[0]["error"] == f"not a video: {path} holds a JPEG image"
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\xff\xd8\x00\x00\x1b[31m\x00\x07" + os.urandom(200))
    result, _ = run_cli(upstream_bundle, junk)
    assert result.exit_code == EXIT_INPUT and all(32 <= ord(c) < 127 for c in result.stderr.strip()), result.stderr


# --- 6: --out must never destroy an input --------------------------------------------------------------------------
def test_outputs_that_would_destroy_or_be_read_as_inputs_are_refused(upstream_bundle, face_jpeg, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    image = folder / "face.jpg"
    image.write_bytes(face_jpeg)
    os.link(image, tmp_path / "hardlink.jpg")
    os.symlink(image, tmp_path / "symlink.jsonl")
    digest = hashlib.sha256(face_jpeg).hexdigest()
    cases = [
        ((image, "--out", image), f"--out {image} is the input {image}: refusing to overwrite an input"),
        ((image, "--out", tmp_path / "hardlink.jpg"), "is the input"),
        ((image, "--out", tmp_path / "symlink.jsonl"), "is the input"),
        ((folder, "--out", image), "is the input"),
        ((folder, "--out", folder / "faces.jpg"), "is inside the input folder with an image suffix: it would be read as an input"),
        ((folder, "--draw", folder), "is the input folder: the annotated images would replace the inputs"),
        ((image, "--draw", image), "is the input"),
    ]
    for args, message in cases:
        result, records = run_cli(upstream_bundle, *args)
        assert result.exit_code == EXIT_USAGE, (args, result.stderr)
        (line,) = lines(result.stderr)
        assert message in line, (args, line)
        assert hashlib.sha256(image.read_bytes()).hexdigest() == digest and sorted(os.listdir(folder)) == ["face.jpg"]
    # An existing output survives a run that cannot start (refused bundle), and a new one is not left behind.
    keep = tmp_path / "old.jsonl"
    keep.write_text('{"frame":0}\n')
    result, _ = run_cli(upstream_bundle, image, "--out", keep, "--bundle-sha256", "0" * 64)
    assert result.exit_code == EXIT_BUNDLE and keep.read_text() == '{"frame":0}\n'
    result, _ = run_cli(upstream_bundle, image, "--out", tmp_path / "new.jsonl", "--bundle-sha256", "0" * 64)
    assert result.exit_code == EXIT_BUNDLE and not (tmp_path / "new.jsonl").exists()
    result, _ = run_cli(upstream_bundle, folder, "--out", folder / "faces.jsonl")  # not an image suffix: not read
    assert result.exit_code == 0 and [r["source"] for r in read_records(folder / "faces.jsonl")] == ["face.jpg"]


# --- 7: stalled streams --------------------------------------------------------------------------------------------
def test_stalled_and_garbage_streams_end_within_the_timeout(upstream_bundle, clip_mkv, tmp_path):
    with socket.socket() as s:  # a closed port: fails at once; the baseline for start-up time
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with TcpServer("silent") as silent, TcpServer("garbage") as garbage, TcpServer("stall", clip_mkv) as stall, \
            TcpServer("silent") as silent_default:
        runs = {
            "closed": ("--timeout", "1", "--out", tmp_path / "closed.jsonl", f"rtsp://127.0.0.1:{closed_port}/live"),
            "silent": ("--timeout", "1", "--out", tmp_path / "silent.jsonl", f"rtsp://127.0.0.1:{silent}/live"),
            "garbage": ("--timeout", "1", "--out", tmp_path / "garbage.jsonl", f"http://127.0.0.1:{garbage}/cam.mjpg"),
            "stall": ("--timeout", "1", "--out", tmp_path / "stall.jsonl", f"tcp://127.0.0.1:{stall}"),
            "default": ("--out", tmp_path / "default.jsonl", f"http://user:secret@127.0.0.1:{silent_default}/cam"),
        }
        files, procs = {}, {}
        for name, args in runs.items():
            files[name] = (tempfile.TemporaryFile(), tempfile.TemporaryFile())
            procs[name] = (start(upstream_bundle, *args, stdout=files[name][0], stderr=files[name][1]), time.monotonic())
        done = {name: finish(proc, *files[name], t0, timeout=90) for name, (proc, t0) in procs.items()}
    base = done["closed"].seconds
    assert done["closed"].code == EXIT_INPUT
    for name in ("silent", "garbage"):
        assert done[name].code == EXIT_INPUT, done[name].stderr
        assert done[name].seconds - base < 1 + 4.0, (name, done[name].seconds, base)  # was 30 s
        (line,) = lines(done[name].stderr)
        assert "nothing usable within 1 s" in line
    assert 3.0 < done["default"].seconds - base < 5 + 4.0, "--timeout defaults to 5 s"
    assert "secret" not in done["default"].stderr and "user:***@" in read_records(tmp_path / "default.jsonl")[0]["source"]
    stalled = read_records(tmp_path / "stall.jsonl")
    assert done["stall"].code == EXIT_PARTIAL and len(stalled) == 40
    assert lines(done["stall"].stderr) == [f"tddfa-run: camera:tcp://127.0.0.1:{stall} stopped delivering frames after 40 frame(s)"]


# --- 8: signals ----------------------------------------------------------------------------------------------------
def test_sigint_and_sigterm_at_any_moment_stop_with_one_line(upstream_bundle, data_dir, tmp_path):
    """From the moment tddfa-run has the handlers (during its imports, the bundle load, the first frames and
    mid-video) a signal gives exit 130, one line, whole records."""
    video = data_dir / "videos" / "obama.mp4"
    delays = [0.0, 0.02, 0.08, 0.2, 0.4, 0.7, 1.1]
    rng = random.Random(7)
    trials = []
    for i, delay in enumerate(delays):
        out, err = tmp_path / f"sig{i}.jsonl", tempfile.TemporaryFile()
        # Detection on every frame and dense meshes as JSON (~0.1 s per frame): the video outlasts every delay.
        proc = start(upstream_bundle, video, "--out", out, "--no-track", "--threads", "1", "--dense", "--dense-format", "json",
                     stdout=subprocess.DEVNULL, stderr=err)
        trials.append((proc, err, out, delay, signal.SIGINT if i % 2 == 0 else signal.SIGTERM, time.monotonic()))
    for proc, err, out, delay, sig, t0 in trials:
        while not handler_installed(proc.pid) and proc.poll() is None and time.monotonic() - t0 < 60:
            time.sleep(0.001)
    t = time.monotonic()
    for proc, err, out, delay, sig, t0 in sorted(trials, key=lambda trial: trial[3]):
        time.sleep(max(0.0, t + delay + rng.uniform(0, 0.01) - time.monotonic()))
        proc.send_signal(sig)
    stopped = 0
    for proc, err, out, delay, sig, t0 in trials:
        proc.wait(timeout=60)
        err.seek(0)
        text = err.read().decode()
        records, fragment = whole_records(out)
        assert fragment == b"" and [r["frame"] for r in records] == list(range(len(records)))
        assert "Traceback" not in text
        if proc.returncode == 0 and len(records) == 55:
            continue  # finished before the signal came
        stopped += 1
        assert proc.returncode == 130, (delay, proc.returncode, text)
        (line,) = lines(text)
        assert re.fullmatch(rf"tddfa-run: interrupted by {sig.name}: stopped after {len(records)} frame\(s\)( \(before the first record\))?",
                            line), line
    assert stopped >= len(delays) - 1, "the signals must land before the runs end"


def test_a_live_stream_stopped_on_purpose_exits_0(upstream_bundle, clip_mkv, tmp_path):
    out = tmp_path / "live.jsonl"
    with TcpServer("stall", clip_mkv * 4) as port, tempfile.TemporaryFile() as err:
        proc = start(upstream_bundle, f"tcp://127.0.0.1:{port}", "--out", out, "--timeout", "3", stdout=subprocess.DEVNULL, stderr=err)
        t0 = time.monotonic()
        while (not out.exists() or out.read_bytes().count(b"\n") < 3) and time.monotonic() - t0 < 60 and proc.poll() is None:
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        err.seek(0)
        text = err.read().decode()
    records, fragment = whole_records(out)
    assert proc.returncode == 0, text
    assert lines(text) == [f"tddfa-run: camera:tcp://127.0.0.1:{port} stopped by SIGINT after {len(records)} frame(s)"]
    assert fragment == b"" and len(records) >= 3


def test_a_signal_inside_a_critical_section_waits_for_its_end():
    assert interrupts.install()
    try:
        interrupts.arm()
        with pytest.raises(KeyboardInterrupt):
            with interrupts.critical():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.01)
                finished = True  # not cut: the signal is raised when the section ends
        assert finished
        os.kill(os.getpid(), signal.SIGINT)  # a second signal while stopping is ignored
        time.sleep(0.01)
    finally:
        interrupts.restore()
    assert interrupts.install()
    try:
        interrupts.arm()
        reached = []
        with pytest.raises(KeyboardInterrupt):
            with interrupts.critical():  # a section stuck (a write to a pipe nobody reads): the second signal stops it
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)
                reached.append(1)
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)
                reached.append(2)
        assert reached == [1] and interrupts.received() == signal.SIGINT
    finally:
        interrupts.restore()


# --- 9: folder hazards and CLI hygiene -----------------------------------------------------------------------------
def test_folder_hazards_each_get_one_record_and_never_block(upstream_bundle, face_image, tmp_path):
    folder = tmp_path / "camera"
    made = special_entries(folder, face_image)
    out = tmp_path / "hazards.jsonl"
    proc = run_process(upstream_bundle, folder, "--out", out, timeout=60)
    assert proc.code == EXIT_PARTIAL, proc.stderr
    assert "Traceback" not in proc.stderr and "unexpected" not in proc.stderr
    records = read_records(out)
    names = [json.loads(json.dumps(r["source"])) for r in records]
    from tddfa_edge.runtime.text import display_name

    assert sorted(names) == sorted(display_name(name) for name, _ in made), "one record per entry with an image suffix"
    by_name = {r["source"]: r for r in records}
    for name, kind in made:
        record = by_name[display_name(name)]
        assert ("error" in record) == (kind not in SPECIAL_OK), (kind, record.get("error"))
        record["source"].encode("utf-8")  # valid Unicode, printable
        assert not re.search(r"[\x00-\x1f\x7f]", record["source"] + record.get("error", ""))
    assert "HEIF" in by_name["phone.heic"]["error"] and "FIFO" in by_name["pipe.jpg"]["error"]
    assert by_name["caf\\xe9-\\xff\\xfe.jpg"]["faces"] and by_name["evil\\x0a\\x1b[31mred\\x0d\\u202e.jpg"]["faces"]
    assert all(not re.search(r"[\x00-\x08\x0a-\x1f\x7f]", line) for line in proc.stderr.splitlines())


def test_device_named_like_an_image_is_not_a_camera(upstream_bundle, tmp_path):
    os.symlink("/dev/zero", tmp_path / "zero.jpg")
    result, records = run_cli(upstream_bundle, tmp_path / "zero.jpg")  # was opened as a camera
    assert result.exit_code == EXIT_INPUT
    assert "it is a character device that is not a camera (video4linux)" in records[0]["error"]
    os.symlink("/dev/null", tmp_path / "null")
    result, _ = run_cli(upstream_bundle, tmp_path / "null")
    assert result.exit_code == EXIT_INPUT
    assert lines(result.stderr) == [f"tddfa-run: error: cannot use input {tmp_path / 'null'}: it is a character device that is not a camera (video4linux)"]


def test_names_of_any_length_and_bytes(upstream_bundle, face_jpeg, tmp_path):
    long_path = tmp_path / ("x" * 300 + ".jpg")
    result, records = run_cli(upstream_bundle, long_path)
    assert result.exit_code == EXIT_INPUT
    (line,) = lines(result.stderr)
    assert line.endswith("file name too long") and "..." in line and len(line) < 300
    odd = tmp_path / os.fsdecode(b"\xff\xfe caf\xe9\n.jpg")
    odd.write_bytes(face_jpeg)
    result, records = run_cli(upstream_bundle, odd)
    assert result.exit_code == 0 and records[0]["source"] == "\\xff\\xfe caf\\xe9\\x0a.jpg" and records[0]["faces"]


def test_threads_beyond_the_cpus_are_clamped(upstream_bundle, face_jpeg, tmp_path):
    (tmp_path / "a.jpg").write_bytes(face_jpeg)
    t0 = time.monotonic()
    result, records = run_cli(upstream_bundle, tmp_path / "a.jpg", "--threads", "256")
    assert result.exit_code == 0 and len(records[0]["faces"]) == 1
    cpus = len(os.sched_getaffinity(0))
    assert lines(result.stderr) == [f"tddfa-run: note: --threads 256 is more than the {cpus} CPU(s) this process may use; using {cpus}"]
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--frobnicate"], None, "No such option"),
        ([], None, "Missing argument 'INPUT'"),
        (["x.jpg", "--threads", "0"], None, "Invalid value for '--threads'"),
        (["x.jpg", "--timeout", "-1"], None, "Invalid value for '--timeout'"),
        (["x.jpg", "--max-pixels", "many"], None, "Invalid value for '--max-pixels'"),
        (["x.jpg", "--mesh-format", "stl"], None, "Invalid value for '--mesh-format'"),
        (["x.jpg", "--resume"], None, "--resume needs --out FILE"),
        (["x.jpg", "--bundle-sha256", "abc"], None, "--bundle-sha256 must be 64 hexadecimal digits"),
        (["x.jpg", "--dense"], None, "--dense writes one .npy file per frame"),
        (["x.jpg"], {"TDDFA_EDGE_DECODE_THREADS": "two"}, "$TDDFA_EDGE_DECODE_THREADS must be a whole number from 0 to 64, got 'two'"),
    ],
)
def test_every_usage_error_is_one_line(upstream_bundle, args, env, message):
    result, records = run_cli(upstream_bundle, *args, env=env)
    assert result.exit_code == EXIT_USAGE and records == []
    (line,) = lines(result.stderr)
    assert line.startswith("tddfa-run: error: ") and message in line, line


def test_closed_stdout_and_a_reader_that_goes_away(upstream_bundle, data_dir, face_jpeg, tmp_path):
    image = tmp_path / "a.jpg"
    image.write_bytes(face_jpeg)
    closed = run_process(upstream_bundle, image, preexec_fn=lambda: os.close(1))  # `>&-`
    assert closed.code == EXIT_OUTPUT and lines(closed.stderr) == ["tddfa-run: error: stdout is closed: nothing can receive the records (give --out FILE)"]
    closed = run_process(upstream_bundle, image, "--out", tmp_path / "a.jsonl", preexec_fn=lambda: os.close(1))
    assert closed.code == 0 and closed.stderr == "" and len(read_records(tmp_path / "a.jsonl")) == 1
    with tempfile.TemporaryFile() as err:  # `| head -1`
        proc = start(upstream_bundle, data_dir / "videos" / "obama.mp4", stdout=subprocess.PIPE, stderr=err)
        first = proc.stdout.readline()
        proc.stdout.close()
        proc.wait(timeout=60)
        err.seek(0)
        assert json.loads(first)["frame"] == 0
        assert proc.returncode == EXIT_OUTPUT and err.read() == b"", "quiet: no message, no traceback"


# --- the new flags -------------------------------------------------------------------------------------------------
def test_bundle_pin_and_signature_flags(upstream_bundle, face_jpeg, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tddfa_edge.runtime.signing import sign

    image = tmp_path / "a.jpg"
    image.write_bytes(face_jpeg)
    identity = hashlib.sha256((upstream_bundle / "manifest.json").read_bytes()).hexdigest()
    result, records = run_cli(upstream_bundle, image, "--bundle-sha256", identity.upper())
    assert result.exit_code == 0 and records[0]["faces"]
    result, records = run_cli(upstream_bundle, image, "--bundle-sha256", "f" * 64)
    assert result.exit_code == EXIT_BUNDLE and records == []
    assert lines(result.stderr) == [f"tddfa-run: error: bundle {upstream_bundle} refused: its manifest sha256 is {identity}, expected {'f' * 64}"]

    keys = {}
    for name in ("good", "other"):
        key = Ed25519PrivateKey.generate()
        (tmp_path / f"{name}.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                                 serialization.NoEncryption()))
        (tmp_path / f"{name}.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                             serialization.PublicFormat.SubjectPublicKeyInfo))
        keys[name] = tmp_path / f"{name}.pub"
    result, _ = run_cli(upstream_bundle, image, "--trust", keys["good"])
    assert result.exit_code == EXIT_BUNDLE and "it is not signed (manifest.json.sig missing)" in lines(result.stderr)[0]
    signed = tmp_path / "signed"
    shutil.copytree(upstream_bundle, signed)
    (signed / "manifest.json.sig").write_bytes(sign((signed / "manifest.json").read_bytes(), tmp_path / "good.pem"))
    result, records = run_cli(signed, image, "--trust", keys["other"], "--trust", keys["good"])
    assert result.exit_code == 0 and records[0]["faces"]
    result, _ = run_cli(signed, image, "--trust", keys["other"])
    assert result.exit_code == EXIT_BUNDLE and lines(result.stderr) == [
        f"tddfa-run: error: bundle {signed} refused: manifest.json.sig does not verify with the trusted key(s)"]


def test_allow_fallback_and_missing_backend(upstream_bundle, face_jpeg, tmp_path, monkeypatch):
    from tddfa_edge.runtime import aligner as aligner_module
    from tddfa_edge.runtime import bundle as bundle_module

    image = tmp_path / "a.jpg"
    image.write_bytes(face_jpeg)
    seen = {}
    real = aligner_module.FaceAligner.from_bundle.__func__

    def spy(cls, path, **kwargs):
        seen.update(kwargs)
        return real(cls, path, **kwargs)

    monkeypatch.setattr(aligner_module.FaceAligner, "from_bundle", classmethod(spy))
    result, _ = run_cli(upstream_bundle, image, "--allow-fallback", "--threads", "1")
    assert result.exit_code == 0 and seen["allow_fallback"] is True and seen["threads"] == 1
    monkeypatch.setattr(bundle_module, "backend_available", lambda name: False)
    result, records = run_cli(upstream_bundle, image)
    assert result.exit_code == EXIT_BACKEND and records == [] and seen["allow_fallback"] is False
    (line,) = lines(result.stderr)
    assert line.startswith("tddfa-run: error: the bundle's default ") and "pip install" in line


# --- dense output at pipeline speed --------------------------------------------------------------------------------
def test_dense_npy_output_is_referenced_whole_and_matches_the_json_form(upstream_bundle, data_dir, tmp_path):
    video = data_dir / "videos" / "obama.mp4"
    out = tmp_path / "run" / "faces.jsonl"
    out.parent.mkdir()
    result, _ = run_cli(upstream_bundle, video, "--out", out, "--dense", "--max-faces", "1")
    assert result.exit_code == 0, result.stderr
    records = read_records(out)
    assert len(records) == 55 and sorted(os.listdir(tmp_path / "run" / "faces.dense")) == [f"{i:06d}.npy" for i in range(55)]
    assert [r["faces"][0]["dense"] for r in records[:2]] == [{"file": "faces.dense/000000.npy", "index": 0},
                                                           {"file": "faces.dense/000001.npy", "index": 0}]
    array = np.load(out.parent / records[0]["faces"][0]["dense"]["file"])
    result, as_json = run_cli(upstream_bundle, video, "--dense", "--dense-format", "json", "--max-frames", "1", "--max-faces", "1")
    assert np.abs(array[0] - np.array(as_json[0]["faces"][0]["dense_vertices"])).max() <= 0.005 + 1e-6
    assert "dense" not in as_json[0]["faces"][0]


def test_dense_npy_costs_little_per_frame(tmp_path):
    from tddfa_edge.runtime.aligner import Face
    from tddfa_edge.runtime.runner import DenseSink, face_record
    from tddfa_edge.runtime.sources import Frame

    rng = np.random.default_rng(0)
    face = Face(box=np.zeros(4, np.float32), score=1.0, crop_box=np.zeros(4), param_62=np.zeros(62, np.float32),
                landmarks_68=rng.random((68, 3), dtype=np.float32), pose_ypr=np.zeros(3, np.float32),
                keypoints_5=rng.random((5, 2), dtype=np.float32), dense_vertices=rng.random((38365, 3), dtype=np.float32) * 1000)
    sink = DenseSink(tmp_path / "dense", tmp_path, sequential=True)
    t0 = time.process_time()
    for i in range(50):
        sink.write(Frame(i, "v.mp4", None, 0.0), [face])
    per_frame = (time.process_time() - t0) / 50
    assert per_frame < 0.005, f"{per_frame * 1000:.2f} ms per frame"
    assert "keypoints_5" in face_record(face), "YuNet's five points stay in the record"


def test_degenerate_faces_are_recorded_but_not_drawn():
    from tddfa_edge.runtime.aligner import Face
    from tddfa_edge.runtime.drawing import draw_faces
    from tddfa_edge.runtime.jsonl import encode_record
    from tddfa_edge.runtime.runner import face_record

    nan = np.full((68, 3), np.nan, np.float32)
    face = Face(box=np.array([np.nan, 1, 2, 3], np.float32), score=0.5, crop_box=np.zeros(4), param_62=np.zeros(62, np.float32),
                landmarks_68=nan, pose_ypr=np.zeros(3, np.float32), dense_vertices=np.full((10, 3), np.inf, np.float32))
    canvas = np.zeros((20, 20, 3), np.uint8)
    assert draw_faces(canvas, [face]).sum() == 0
    line = encode_record({"faces": [face_record(face)]})
    assert json.loads(line)["faces"][0]["landmarks_68"][0] == [None, None, None]


def test_a_source_that_breaks_still_leaves_a_record(upstream_aligner):
    from tddfa_edge.runtime.jsonl import RecordWriter
    from tddfa_edge.runtime.runner import run
    from tddfa_edge.runtime.sources import FrameSource

    class Broken(FrameSource):
        kind, name = "video", "broken.mp4"

        def __iter__(self):
            raise OSError("device vanished\nwith details")
            yield

    lines_written = []

    class Sink:
        def write(self, text):
            lines_written.append(text)

        def flush(self):
            pass

    summary = run(upstream_aligner, Broken(), RecordWriter(Sink()))
    (record,) = [json.loads(line) for line in lines_written]
    assert record["error"] == "broken.mp4: reading stopped: OSError: with details" and summary.failed == summary.frames == 1
