"""The full fuzz run of ``tddfa-run``: thousands of malformed inputs, SIGKILL and signal trials, misbehaving
streams, bundle tampering and CLI misuse, each through real ``tddfa-run`` processes; prints a summary table.

    python -m tddfa_edge.benchmarks.fuzz_run --bundle bundles/x86-1core [--images 10000] [--kills 100] [--json out.json]

Sections (each can be sized or skipped with its option):

- images: ``--images`` seeded malformed images (``fuzz_inputs.malformed_images``) plus the folder hazards
  (``special_entries``) in folder runs of ``--batch`` files, and ``--single`` of them as single-file runs;
- videos: ``--videos`` seeded malformed videos, one run each;
- kills: ``--kills`` runs on the video with ``--dense`` killed with SIGKILL at a random moment; every line of
  the records must be whole JSON, every array a record names must load;
- signals: ``--signals`` runs sent SIGINT or SIGTERM at a random moment after tddfa-run took the signals over;
- streams: local TCP servers that stay silent, send garbage, stall or close mid-stream (rtsp/http/tcp);
- tamper: every byte of the bundle's small files and one byte per 4 KiB page of the large ones changed
  (``Bundle.open`` in this process), plus ``--tamper-cli`` of them through ``tddfa-run`` (one line naming the file);
- misuse: usage errors, closed stdout, a reader that goes away, outputs that name inputs, bad environment.

The summary counts what must be zero: aborted runs (an exit code outside the scenario's set, or an
"unexpected" error), inputs without exactly one record, tracebacks, hangs over 5 s (a run that takes more
than 5 s beyond its expected time: start-up plus its work, plus ``--timeout`` for streams), invalid record
lines after SIGKILL, bundle changes accepted; and the peak RSS of every run against the bundle target's
``max_peak_rss_mb`` (measured with ``wait4`` in a small launcher process, so the parent's memory is not
counted).
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# Runs a command in a fresh child (forked from this small process) and writes "maxrss_kb exit_code" to a file.
MEASURE = r"""
import os, signal, sys
out, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, lambda n, f: os.kill(pid, n))
while True:
    try:
        _, status, usage = os.wait4(pid, 0)
        break
    except InterruptedError:
        continue
code = os.waitstatus_to_exitcode(status)
with open(out, "w") as fh:
    fh.write(f"{usage.ru_maxrss} {code}")
sys.exit(code if code >= 0 else 128 - code)
"""

HANG_SECONDS = 5.0


def tddfa_run_command() -> list[str]:
    script = Path(sys.executable).with_name("tddfa-run")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tddfa_edge.runtime.cli"]


@dataclass
class Result:
    scenario: str
    code: int
    stderr: str
    stdout: str
    seconds: float
    maxrss_mb: float | None
    record_gap: float = 0.0  # longest wait for the next record line (after the first)
    first_record: float | None = None


def run_measured(args: list[str], timeout: float, env: dict | None = None, watch: Path | None = None,
                 stdin=subprocess.DEVNULL, preexec_fn=None, stdout_pipe: bool = False) -> Result:
    """``tddfa-run args`` in a measured child; ``watch``: a records file whose growth is timed (hangs)."""
    with tempfile.TemporaryDirectory(prefix="fuzz-measure-") as tmp:
        rss_file = Path(tmp) / "rss"
        with open(Path(tmp) / "out", "w+b") as out, open(Path(tmp) / "err", "w+b") as err:
            t0 = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-c", MEASURE, str(rss_file), *tddfa_run_command(), *args], stdin=stdin,
                                    stdout=out, stderr=err, env=env, preexec_fn=preexec_fn)
            gap, first, last_lines, last_change = 0.0, None, 0, t0
            while proc.poll() is None:
                now = time.monotonic()
                if now - t0 > timeout:
                    proc.kill()
                    proc.wait()
                    break
                if watch is not None:
                    try:
                        n = watch.read_bytes().count(b"\n")
                    except OSError:
                        n = 0
                    if n != last_lines:
                        if first is None:
                            first = now - t0
                        else:
                            gap = max(gap, now - last_change)
                        last_lines, last_change = n, now
                time.sleep(0.02)
            seconds = time.monotonic() - t0
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        maxrss, code = None, proc.returncode
        if rss_file.exists():
            kb, code_text = rss_file.read_text().split()
            maxrss, code = int(kb) / 1024, int(code_text)
        elif code is not None and code < 0:
            code = 128 - code
    return Result("", code, stderr, stdout, seconds, maxrss, gap, first)


@dataclass
class Tally:
    runs: int = 0
    inputs: int = 0
    aborted: list[str] = field(default_factory=list)
    not_one_record: list[str] = field(default_factory=list)
    tracebacks: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    rss: list[tuple[float, str]] = field(default_factory=list)
    invalid_lines: int = 0
    fragments: int = 0
    broken_refs: int = 0
    kills: int = 0
    kills_mid_video: int = 0
    tamper_tried: int = 0
    tamper_accepted: list[str] = field(default_factory=list)
    tamper_bad_message: list[str] = field(default_factory=list)
    multi_line_errors: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check_common(self, what: str, result: Result, allowed: set[int], expected_seconds: float) -> None:
        with self.lock:
            self.runs += 1
            if result.maxrss_mb is not None:
                self.rss.append((result.maxrss_mb, what))
            if "Traceback" in result.stderr:
                self.tracebacks.append(what)
            if result.code not in allowed or "unexpected" in result.stderr:
                self.aborted.append(f"{what}: exit {result.code}: {result.stderr.strip().splitlines()[-1:]}")
            if result.seconds > expected_seconds + HANG_SECONDS or result.record_gap > HANG_SECONDS:
                self.hangs.append(f"{what}: {result.seconds:.1f} s (expected <= {expected_seconds:.1f} s), longest gap {result.record_gap:.1f} s")
            stray = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("tddfa-run: ")
                     and not re.match(r"^.{0,60}  \[[#-]+\]", line)]
            if stray:
                self.multi_line_errors.append(f"{what}: {stray[:2]}")


def _records(path: Path) -> tuple[list[dict], int, int]:
    """(whole records, complete lines that are not JSON, trailing fragment bytes)."""
    try:
        data = path.read_bytes()
    except OSError:
        return [], 0, 0
    end = data.rfind(b"\n") + 1
    records, invalid = [], 0
    for line in data[:end].splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            invalid += 1
    return records, invalid, len(data) - end


# --- sections ------------------------------------------------------------------------------------------------------
class FuzzRun:
    def __init__(self, args) -> None:
        self.args = args
        self.bundle = Path(args.bundle).resolve()
        self.work = Path(args.work or tempfile.mkdtemp(prefix="tddfa-fuzz-")).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.data_dir = Path(args.data_dir) if args.data_dir else _find_data_dir()
        self.video = self.data_dir / "videos" / "obama.mp4"
        self.tally = Tally()
        self.pool = futures.ThreadPoolExecutor(max_workers=max(1, args.jobs))
        from tddfa_edge.runtime.bundle import Bundle

        budgets = Bundle.open(self.bundle).target.budgets
        self.budget_mb = float(budgets.max_peak_rss_mb or 200.0)
        self.startup = 0.0

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def section(self, name, fn) -> None:
        t0 = time.monotonic()
        self.log(f"{name} ...")
        fn()
        self.tally.seconds[name] = time.monotonic() - t0
        self.log(f"{name}: {self.tally.seconds[name]:.0f} s")

    def baseline(self) -> None:
        import cv2

        image = cv2.imread(str(self.data_dir / "images" / "JianzhuGuo.jpg"))
        path = self.work / "baseline.jpg"
        cv2.imwrite(str(path), image)
        times = []
        for _ in range(3):
            r = run_measured(["--bundle", str(self.bundle), str(path), "--out", str(self.work / "baseline.jsonl")], 120)
            times.append(r.seconds)
        self.startup = min(times) * (1 + self.args.jobs) / 2  # jobs share the cores
        self.log(f"start-up and one image: {min(times):.2f} s (allowance {self.startup:.2f} s per run with {self.args.jobs} jobs)")

    # images ---------------------------------------------------------------------------------------------------------
    def images(self) -> None:
        import cv2

        from tddfa_edge.benchmarks.fuzz_inputs import malformed_images, special_entries
        from tddfa_edge.runtime.text import display_name

        bases = [cv2.imread(str(p)) for p in sorted((self.data_dir / "images").glob("*.jpg"))]
        total, batch = self.args.images, self.args.batch
        jobs = []
        items = malformed_images(self.args.seed, total, bases)
        singles_every = max(1, total // max(1, self.args.single)) if self.args.single else 0
        singles: list[Path] = []
        for b in range(0, total, batch):
            folder = self.work / f"images{b // batch:03d}"
            folder.mkdir(exist_ok=True)
            for k in range(min(batch, total - b)):
                name, data, kind = next(items)
                (folder / name).write_bytes(data)
                if singles_every and (b + k) % singles_every == 0:
                    singles.append(folder / name)
            if b == 0:
                special_entries(folder / "hazards", bases[0])
                jobs.append(self.pool.submit(self._folder_run, folder / "hazards"))
            jobs.append(self.pool.submit(self._folder_run, folder))
        for path in singles:
            jobs.append(self.pool.submit(self._single_run, path))
        for job in jobs:
            job.result()
        self.display_name = display_name

    def _folder_run(self, folder: Path) -> None:
        from tddfa_edge.runtime.sources import IMAGE_SUFFIXES
        from tddfa_edge.runtime.text import display_name

        out = folder.with_name(folder.name + ".jsonl") if folder.name != "hazards" else folder.parent / "hazards.jsonl"
        entries = sorted(display_name(n) for n in os.listdir(folder) if os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES)
        r = run_measured(["--bundle", str(self.bundle), str(folder), "--out", str(out)], timeout=600, watch=out)
        records, invalid, fragment = _records(out)
        what = f"folder {folder.name} ({len(entries)} inputs)"
        self.tally.check_common(what, r, {0, 6, 9}, self.startup + 0.05 * len(entries))
        with self.tally.lock:
            self.tally.inputs += len(entries)
            counts: dict[str, int] = {}
            for rec in records:
                counts[rec.get("source")] = counts.get(rec.get("source"), 0) + 1
            wrong = [n for n in entries if counts.get(n, 0) != 1] + [n for n in counts if n not in set(entries)]
            self.tally.not_one_record += [f"{folder.name}/{n}" for n in wrong]
            self.tally.invalid_lines += invalid

    def _single_run(self, path: Path) -> None:
        out = path.with_name(path.name + ".single.jsonl")
        r = run_measured(["--bundle", str(self.bundle), str(path), "--out", str(out)], timeout=120)
        records, invalid, _ = _records(out)
        self.tally.check_common(f"single {path.name}", r, {0, 6}, self.startup + 1.0)
        with self.tally.lock:
            self.tally.inputs += 1
            if len(records) != 1:
                self.tally.not_one_record.append(f"single {path.name}: {len(records)} records")
            self.tally.invalid_lines += invalid
            if len([line for line in r.stderr.splitlines() if line.strip()]) > 1:
                self.tally.multi_line_errors.append(f"single {path.name}: {r.stderr.strip()[:200]}")

    # videos ---------------------------------------------------------------------------------------------------------
    def videos(self) -> None:
        from tddfa_edge.benchmarks.fuzz_inputs import malformed_videos

        folder = self.work / "videos"
        jobs = [self.pool.submit(self._video_run, path, kind)
                for _, path, kind in malformed_videos(self.args.seed, self.args.videos, self.video, folder)]
        for job in jobs:
            job.result()

    def _video_run(self, path: Path, kind: str) -> None:
        out = path.with_name(path.name + ".jsonl")
        r = run_measured(["--bundle", str(self.bundle), str(path), "--out", str(out), "--threads", "1"], timeout=300, watch=out)
        records, invalid, _ = _records(out)
        self.tally.check_common(f"video {path.name}", r, {0, 6, 9}, self.startup + 0.1 * max(1, len(records)))
        with self.tally.lock:
            self.tally.inputs += 1
            frames = [rec.get("frame") for rec in records]
            if not records or frames != list(range(len(frames))):
                self.tally.not_one_record.append(f"video {path.name} ({kind}): frames {frames[:5]}... ({len(frames)})")
            if kind.startswith(("valid", "overcount")) and (r.code != 0 or "truncated" in r.stderr):
                self.tally.aborted.append(f"video {path.name} ({kind}): intact video reported: exit {r.code} {r.stderr.strip()[:200]}")
            if kind == "image-as-mp4" and "not a video" not in r.stderr:
                self.tally.aborted.append(f"video {path.name}: a JPEG named .mp4 not called 'not a video': {r.stderr.strip()[:200]}")
            if re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", r.stderr):
                self.tally.multi_line_errors.append(f"video {path.name}: raw bytes in a message")
            self.tally.invalid_lines += invalid

    # SIGKILL ----------------------------------------------------------------------------------------------------------
    def kills(self) -> None:
        rng = random.Random(self.args.seed)
        jobs = [self.pool.submit(self._kill_trial, i, rng.uniform(0.0, 1.0)) for i in range(self.args.kills)]
        for job in jobs:
            job.result()

    def _kill_trial(self, i: int, fraction: float) -> None:
        out = self.work / "kills" / f"kill{i:03d}.jsonl"
        out.parent.mkdir(exist_ok=True)
        target = 1 + int(fraction * 50)
        cmd = [*tddfa_run_command(), "--bundle", str(self.bundle), str(self.video), "--out", str(out), "--dense", "--no-track",
               "--threads", "1"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        try:
            while proc.poll() is None and time.monotonic() - t0 < 120:
                try:
                    if out.read_bytes().count(b"\n") >= target:
                        break
                except OSError:
                    pass
                time.sleep(0.001)
            proc.kill()
        finally:
            proc.wait()
        records, invalid, fragment = _records(out)
        broken = 0
        for rec in records:
            for face in rec.get("faces", []):
                ref = face.get("dense")
                try:
                    import numpy as np

                    array = np.load(out.parent / ref["file"])
                    if array.shape[1:] != (38365, 3) or ref["index"] >= len(array):
                        broken += 1
                except Exception:  # noqa: BLE001
                    broken += 1
        with self.tally.lock:
            self.tally.kills += 1
            self.tally.kills_mid_video += int(0 < len(records) < 55)
            self.tally.invalid_lines += invalid
            self.tally.fragments += int(fragment > 0)
            self.tally.broken_refs += broken
            if [r.get("frame") for r in records] != list(range(len(records))):
                self.tally.not_one_record.append(f"kill {i}: frames out of order")
        shutil.rmtree(out.parent / (out.stem + ".dense"), ignore_errors=True)

    # signals ----------------------------------------------------------------------------------------------------------
    def signals(self) -> None:
        rng = random.Random(self.args.seed + 1)
        jobs = [self.pool.submit(self._signal_trial, i, rng.choice([signal.SIGINT, signal.SIGTERM]), rng.uniform(0, 6.0))
                for i in range(self.args.signals)]
        for job in jobs:
            job.result()

    def _signal_trial(self, i: int, sig: int, delay: float) -> None:
        out = self.work / "signals" / f"sig{i:03d}.jsonl"
        out.parent.mkdir(exist_ok=True)
        with tempfile.TemporaryFile() as err:
            cmd = [*tddfa_run_command(), "--bundle", str(self.bundle), str(self.video), "--out", str(out), "--no-track", "--threads", "1"]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
            t0 = time.monotonic()
            while proc.poll() is None and not _handler_installed(proc.pid) and time.monotonic() - t0 < 60:
                time.sleep(0.001)
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(sig)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            err.seek(0)
            text = err.read().decode(errors="replace")
        records, invalid, fragment = _records(out)
        r = Result("signal", proc.returncode, text, "", time.monotonic() - t0, None)
        finished = proc.returncode == 0 and len(records) == 55
        self.tally.check_common(f"signal {i} ({signal.Signals(sig).name} after {delay:.2f} s)", r, {130} | ({0} if finished else set()),
                                self.startup + 4.0)
        with self.tally.lock:
            self.tally.invalid_lines += invalid
            self.tally.fragments += int(fragment > 0)
            lines = [line for line in text.splitlines() if line.strip()]
            if not finished and (len(lines) != 1 or not lines[0].startswith("tddfa-run: interrupted by")):
                self.tally.multi_line_errors.append(f"signal {i}: {lines[:3]}")

    # streams ----------------------------------------------------------------------------------------------------------
    def streams(self) -> None:
        import cv2

        from tddfa_edge.benchmarks.fuzz_inputs import TcpServer

        cap = cv2.VideoCapture(str(self.video))
        clip = self.work / "stream.mkv"
        writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 25, (320, 180))
        for _ in range(30):
            ok, frame = cap.read()
            if ok:
                writer.write(cv2.resize(frame, (320, 180)))
        writer.release()
        payload = clip.read_bytes()
        timeout = 1.0
        cases = []
        for mode in ("silent", "garbage", "stall", "close"):
            for scheme in ("rtsp", "http", "tcp"):
                if mode in ("stall", "close") and scheme != "tcp":
                    continue
                cases.append((mode, scheme))
        servers = []
        jobs = []
        try:
            for mode, scheme in cases * self.args.stream_repeats:
                server = TcpServer(mode, payload if mode in ("stall", "close") else b"")
                port = server.__enter__()
                servers.append(server)
                jobs.append(self.pool.submit(self._stream_run, mode, f"{scheme}://127.0.0.1:{port}/live", timeout))
            for job in jobs:
                job.result()
        finally:
            for server in servers:
                server.__exit__(None, None, None)

    def _stream_run(self, mode: str, url: str, timeout: float) -> None:
        out = self.work / "streams" / f"{mode}-{url.split(':')[0]}-{url.rsplit(':', 1)[1].split('/')[0]}.jsonl"
        out.parent.mkdir(exist_ok=True)
        r = run_measured(["--bundle", str(self.bundle), url, "--out", str(out), "--timeout", str(timeout)], timeout=120, watch=out)
        records, invalid, _ = _records(out)
        allowed = {6} if mode in ("silent", "garbage") else {9, 0}
        self.tally.check_common(f"stream {mode} {url}", r, allowed, self.startup + timeout + 0.1 * len(records))
        with self.tally.lock:
            self.tally.inputs += 1
            self.tally.invalid_lines += invalid
            if not records:
                self.tally.not_one_record.append(f"stream {mode} {url}: no record")

    # bundle tampering -------------------------------------------------------------------------------------------------
    def tamper(self) -> None:
        from tddfa_edge.contracts.errors import BundleError
        from tddfa_edge.runtime.bundle import Bundle

        small = self.work / "bundle-small"
        make_small_bundle(self.bundle, small)
        rng = random.Random(self.args.seed + 2)
        cli_sample = []
        for path in sorted(p for p in small.iterdir() if p.is_file()):
            data = path.read_bytes()
            offsets = range(len(data)) if len(data) <= self.args.tamper_full_below else sorted(
                {0, len(data) - 1} | {min(len(data) - 1, page + rng.randrange(4096)) for page in range(0, len(data), 4096)})
            with open(path, "r+b") as fh:
                for offset in offsets:
                    original = data[offset]
                    changed = (original + rng.randrange(1, 256)) % 256
                    fh.seek(offset)
                    fh.write(bytes([changed]))
                    fh.flush()
                    self.tally.tamper_tried += 1
                    try:
                        Bundle.open(small)
                        self.tally.tamper_accepted.append(f"{path.name}@{offset}")
                    except BundleError as exc:
                        if path.name not in str(exc):
                            self.tally.tamper_bad_message.append(f"{path.name}@{offset}: {exc}")
                    except Exception as exc:  # noqa: BLE001 - must be a BundleError
                        self.tally.tamper_bad_message.append(f"{path.name}@{offset}: {type(exc).__name__}: {exc}")
                    fh.seek(offset)
                    fh.write(bytes([original]))
                    fh.flush()
            cli_sample += [(path.name, offset) for offset in rng.sample(list(offsets), min(len(offsets), self.args.tamper_cli))]
        image = self.work / "baseline.jpg"
        jobs = [self.pool.submit(self._tamper_cli, small, name, offset, image) for name, offset in cli_sample]
        for job in jobs:
            job.result()

    def _tamper_cli(self, small: Path, name: str, offset: int, image: Path) -> None:
        copy = Path(tempfile.mkdtemp(prefix="tamper-", dir=self.work))
        try:
            for p in small.iterdir():
                os.link(p, copy / p.name) if p.name != name else shutil.copy(p, copy / p.name)
            with open(copy / name, "r+b") as fh:
                fh.seek(offset)
                b = fh.read(1)
                fh.seek(offset)
                fh.write(bytes([(b[0] + 1) % 256]))
            r = run_measured(["--bundle", str(copy), str(image)], timeout=120)
            self.tally.check_common(f"tamper-cli {name}@{offset}", r, {4}, self.startup + 1.0)
            with self.tally.lock:
                self.tally.tamper_tried += 1
                lines = [line for line in r.stderr.splitlines() if line.strip()]
                if r.code != 4:
                    self.tally.tamper_accepted.append(f"cli {name}@{offset}: exit {r.code}")
                elif len(lines) != 1 or name not in lines[0]:
                    self.tally.tamper_bad_message.append(f"cli {name}@{offset}: {lines}")
        finally:
            shutil.rmtree(copy, ignore_errors=True)

    # CLI misuse -------------------------------------------------------------------------------------------------------
    def misuse(self) -> None:
        image = self.work / "baseline.jpg"
        folder = self.work / "misuse"
        folder.mkdir(exist_ok=True)
        shutil.copy(image, folder / "a.jpg")
        b = str(self.bundle)
        env_bad = dict(os.environ, TDDFA_EDGE_DECODE_THREADS="lots")
        long_name = str(self.work / ("n" * 300 + ".jpg"))
        odd = self.work / os.fsdecode(b"\xff\xfe\x1b[2J.jpg")
        shutil.copy(image, odd)
        cases = [
            ("unknown option", ["--bundle", b, str(image), "--bogus"], {2}, None, None),
            ("missing input", ["--bundle", b], {2}, None, None),
            ("missing bundle option", [str(image)], {2}, dict((k, v) for k, v in os.environ.items() if k != "TDDFA_EDGE_BUNDLE"), None),
            ("threads 0", ["--bundle", b, str(image), "--threads", "0"], {2}, None, None),
            ("threads 256", ["--bundle", b, str(image), "--threads", "256"], {0}, None, None),
            ("timeout negative", ["--bundle", b, str(image), "--timeout", "-3"], {2}, None, None),
            ("max-pixels text", ["--bundle", b, str(image), "--max-pixels", "huge"], {2}, None, None),
            ("resume without out", ["--bundle", b, str(image), "--resume"], {2}, None, None),
            ("bad sha256", ["--bundle", b, str(image), "--bundle-sha256", "xyz"], {2}, None, None),
            ("wrong sha256", ["--bundle", b, str(image), "--bundle-sha256", "0" * 64], {4}, None, None),
            ("missing key", ["--bundle", b, str(image), "--trust", str(self.work / "nokey.pub")], {2, 5}, None, None),
            ("dense to stdout", ["--bundle", b, str(image), "--dense"], {2}, None, None),
            ("decode threads env", ["--bundle", b, str(image)], {2}, env_bad, None),
            ("300-char name", ["--bundle", b, long_name], {6}, None, None),
            ("non-UTF-8 name", ["--bundle", b, str(odd), "--out", str(self.work / "odd.jsonl")], {0}, None, None),
            ("out is the input", ["--bundle", b, str(image), "--out", str(image)], {2}, None, None),
            ("out in input folder", ["--bundle", b, str(folder), "--out", str(folder / "x.png")], {2}, None, None),
            ("draw is the input folder", ["--bundle", b, str(folder), "--draw", str(folder)], {2}, None, None),
            ("bundle missing", ["--bundle", str(self.work / "nope"), str(image)], {4}, None, None),
            ("input missing", ["--bundle", b, str(self.work / "nope.jpg")], {6}, None, None),
            ("stdout closed", ["--bundle", b, str(image)], {1}, None, lambda: os.close(1)),
            ("stdout closed with --out", ["--bundle", b, str(image), "--out", str(self.work / "closed.jsonl")], {0}, None, lambda: os.close(1)),
            ("dev zero as jpg", ["--bundle", b, str(self._zero_link())], {6}, None, None),
        ]
        jobs = [self.pool.submit(self._misuse_run, *case) for case in cases]
        jobs.append(self.pool.submit(self._head_one))
        for job in jobs:
            job.result()
        digest = hashlib.sha256((folder / "a.jpg").read_bytes()).hexdigest()
        if digest != hashlib.sha256(image.read_bytes()).hexdigest() or sorted(os.listdir(folder)) != ["a.jpg"]:
            self.tally.aborted.append("misuse: an input was changed")

    def _zero_link(self) -> Path:
        link = self.work / "zero.jpg"
        if not link.is_symlink():
            os.symlink("/dev/zero", link)
        return link

    def _misuse_run(self, what, args, allowed, env, preexec) -> None:
        r = run_measured(args, timeout=60, env=env, preexec_fn=preexec)
        self.tally.check_common(f"misuse: {what}", r, allowed, self.startup + 1.0)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        if r.code != 0 and len(lines) != 1:
            with self.tally.lock:
                self.tally.multi_line_errors.append(f"misuse {what}: {lines[:4]}")

    def _head_one(self) -> None:
        cmd = [*tddfa_run_command(), "--bundle", str(self.bundle), str(self.video)]
        with tempfile.TemporaryFile() as err:
            t0 = time.monotonic()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
            proc.stdout.readline()
            proc.stdout.close()
            proc.wait(timeout=60)
            err.seek(0)
            text = err.read().decode(errors="replace")
        self.tally.check_common("misuse: | head -1", Result("", proc.returncode, text, "", time.monotonic() - t0, None), {1}, self.startup + 3)
        if text.strip():
            with self.tally.lock:
                self.tally.multi_line_errors.append(f"| head -1: {text.strip()[:200]}")

    # ------------------------------------------------------------------------------------------------------------------
    def summary(self) -> dict:
        t = self.tally
        peak = max(t.rss, default=(0.0, "-"))
        over = [what for mb, what in t.rss if mb > self.budget_mb]
        rows = [
            ("runs (processes)", t.runs, ""),
            ("inputs (files, videos, streams)", t.inputs, ""),
            ("aborted runs", len(t.aborted), "0"),
            ("inputs without exactly one record", len(t.not_one_record), "0"),
            ("tracebacks", len(t.tracebacks), "0"),
            ("hangs > 5 s", len(t.hangs), "0"),
            (f"peak RSS per run (max; budget {self.budget_mb:.0f} MB)", f"{peak[0]:.0f} MB ({peak[1]})", f"<= {self.budget_mb:.0f} MB"),
            ("runs over the RSS budget", len(over), "0"),
            ("SIGKILL trials (mid-video)", f"{t.kills} ({t.kills_mid_video})", ""),
            ("invalid lines after SIGKILL/signals", t.invalid_lines, "0"),
            ("trailing fragments after SIGKILL", t.fragments, "(cut by --resume)"),
            ("dense files referenced but broken", t.broken_refs, "0"),
            ("bundle changes tried", t.tamper_tried, ""),
            ("bundle changes accepted", len(t.tamper_accepted), "0"),
            ("bundle refusals not naming the file", len(t.tamper_bad_message), "0"),
            ("messages not one line / stray output", len(t.multi_line_errors), "0"),
        ]
        width = max(len(r[0]) for r in rows)
        print()
        print(f"| {'measure'.ljust(width)} | value | goal |")
        print(f"|{'-' * (width + 2)}|---|---|")
        for name, value, goal in rows:
            print(f"| {name.ljust(width)} | {value} | {goal} |")
        print()
        for label, items in (("aborted", t.aborted), ("not one record", t.not_one_record), ("tracebacks", t.tracebacks),
                             ("hangs", t.hangs), ("over RSS budget", over), ("tamper accepted", t.tamper_accepted),
                             ("tamper message", t.tamper_bad_message), ("messages", t.multi_line_errors)):
            for item in items[:10]:
                print(f"  {label}: {item}")
        by_kind: dict[str, float] = {}
        for mb, what in t.rss:
            kind = what.split()[0]
            by_kind[kind] = max(by_kind.get(kind, 0.0), mb)
        print("peak RSS by kind of run: " + ", ".join(f"{k} {v:.0f} MB" for k, v in sorted(by_kind.items())))
        print("section seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in t.seconds.items()))
        return {"rows": [{"measure": r[0], "value": r[1], "goal": r[2]} for r in rows], "seconds": t.seconds,
                "details": {"aborted": t.aborted, "not_one_record": t.not_one_record, "tracebacks": t.tracebacks, "hangs": t.hangs,
                            "over_rss": over, "tamper_accepted": t.tamper_accepted, "tamper_message": t.tamper_bad_message,
                            "messages": t.multi_line_errors, "peak_rss_mb": peak[0],
                            "rss_mb": sorted(((round(mb, 1), what) for mb, what in t.rss), reverse=True)[:40]}}


def make_small_bundle(source: Path, out: Path) -> Path:
    """A copy of ``source`` without the dense basis (7.5 MB instead of 31 for the fp32 one): the same refusal paths,
    four times cheaper to hash."""
    import hashlib as _hashlib

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(source, out)
    manifest_path = out / "manifest.json"
    data = json.loads(manifest_path.read_text())
    dense = data.get("morphable_model", {}).get("dense")
    if dense:
        data["morphable_model"]["dense"] = None
        data["files"].pop(dense, None)
        (out / dense).unlink(missing_ok=True)
    (out / "manifest.json.sig").unlink(missing_ok=True)
    raw = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
    manifest_path.write_bytes(raw)
    (out / "manifest.json.sha256").write_text(f"{_hashlib.sha256(raw).hexdigest()}  manifest.json\n")
    return out


def _handler_installed(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    m = re.search(r"^SigCgt:\s*([0-9a-f]+)", text, re.M)
    return bool(m and int(m.group(1), 16) & (1 << (signal.SIGTERM - 1)))


def _find_data_dir() -> Path:
    from tddfa_edge.datasets.locate import data_dir_candidates  # noqa: F401 - only for the default

    for c in data_dir_candidates():
        if (c / "videos" / "obama.mp4").is_file():
            return c
    raise SystemExit("data folder not found: give --data-dir")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tddfa_edge.benchmarks.fuzz_run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data-dir")
    parser.add_argument("--work", help="folder for the generated inputs and outputs (default: a new temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000, help="images per folder run")
    parser.add_argument("--single", type=int, default=200, help="images also run one by one")
    parser.add_argument("--videos", type=int, default=130)
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--signals", type=int, default=40)
    parser.add_argument("--stream-repeats", type=int, default=2)
    parser.add_argument("--tamper-full-below", type=int, default=16 * 1024,
                        help="files up to this size (the manifest, its digest and signature, the notice): every byte; larger "
                             "ones: one random byte per 4 KiB page (each try re-hashes the whole bundle)")
    parser.add_argument("--tamper-cli", type=int, default=4, help="changes per file also checked through tddfa-run")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--skip", default="", help="comma-separated sections to skip")
    parser.add_argument("--json", help="write the summary here")
    args = parser.parse_args(argv)
    fuzz = FuzzRun(args)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    fuzz.log(f"work folder {fuzz.work}; bundle {fuzz.bundle} (max_peak_rss_mb {fuzz.budget_mb:.0f})")
    fuzz.section("baseline", fuzz.baseline)
    for name in ("images", "videos", "kills", "signals", "streams", "tamper", "misuse"):
        if name not in skip:
            fuzz.section(name, getattr(fuzz, name))
    fuzz.pool.shutdown()
    report = fuzz.summary()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    rows = {r["measure"]: r["value"] for r in report["rows"]}
    bad = sum(int(rows[k]) for k in ("aborted runs", "inputs without exactly one record", "tracebacks", "hangs > 5 s",
                                     "runs over the RSS budget", "invalid lines after SIGKILL/signals", "bundle changes accepted"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
