"""``tddfa-run``: faces of an image, a folder of images, a video file or a camera, as JSON Lines.

Exit codes: 0 every frame processed (with or without faces); 9 the run finished but some frames/files
failed or the stream ended early (the output holds everything else); 6 no input could be used (missing,
unsupported, corrupt, over the decode budget, camera cannot be opened); 4 bundle refused (sha256, pin,
signature, manifest); 5 backend missing; 2 usage; 1 output not writable (also: stdout closed, or its reader
went away) or an unexpected error; 130 interrupted (a camera or stream stopped with Ctrl-C or SIGTERM exits
0: that is how a live stream ends).

Every input gets exactly one record (one per frame for videos and cameras), an error record when it
cannot be used; a usage error, a refused bundle or a missing backend writes no record and leaves an
existing ``--out`` file untouched. Every message is one line on stderr, never a traceback (``--debug``
shows the traceback of an unexpected error). SIGINT and SIGTERM are taken over as soon as this module
starts: at any moment after that the run stops, keeps every record it wrote (whole lines) and prints one
line. Records, the reading rule for a file cut by ``kill -9`` and ``--resume``: see ``jsonl``.
"""

from __future__ import annotations

import os
import sys

from tddfa_edge.runtime import interrupts

# The tddfa-run process takes SIGINT/SIGTERM over before anything slow is imported (signals are only remembered
# until main() is running, then they stop the run in order). In-process callers get them around main() only.
_PROCESS = __name__ == "__main__" or os.path.basename(sys.argv[0] if sys.argv and sys.argv[0] else "").startswith("tddfa-run")
if _PROCESS:
    interrupts.install()

import io  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402

from tddfa_edge.contracts.errors import (  # noqa: E402
    IncompleteRunError, InputImageError, OutputError, TddfaEdgeError, UsageError,
)

from .command_line import OneLineUsage  # noqa: E402
from .text import clean_message, display_name, short_name  # noqa: E402

PROG = "tddfa-run"
MAX_ERROR_LINES = 20


class _Messages:
    bar: "_Bar | None" = None


def _say(message: str) -> None:
    """One line on stderr (never raises: a closed or broken stderr only loses the message)."""
    stream = sys.stderr
    if stream is None:
        return
    try:
        if _Messages.bar is not None:
            _Messages.bar.clear()
        stream.write(f"{PROG}: {clean_message(message, 4000)}\n")
        stream.flush()
    except (OSError, ValueError, AttributeError):
        pass


def _guard_standard_fds() -> set[int]:
    """Put /dev/null on fds 0-2 that are closed (``>&-``), so no file the run opens can become "stdout";
    returns the ones that were closed."""
    closed = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.add(fd)
    for fd in sorted(closed):
        try:
            new = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            if new != fd:
                os.dup2(new, fd)
                os.close(new)
        except OSError:
            pass
    return closed


def _hide_native_stderr() -> None:
    """Send fd 2 (where OpenCV, FFmpeg, libpng and onnxruntime print) to /dev/null; keep Python's stderr.

    Only when sys.stderr really is fd 2 (not under a test runner that captured it).
    """
    try:
        sys.stderr.flush()
        if sys.stderr.fileno() != 2:
            return
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return
    saved = os.dup(2)
    os.set_inheritable(saved, False)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = io.TextIOWrapper(io.FileIO(saved, "w"), encoding=sys.stderr.encoding or "utf-8", errors="backslashreplace",
                                  line_buffering=True)


def _one_line_warnings(message, category, filename, lineno, file=None, line=None) -> None:
    _say(f"warning: {message}")


EPILOG = ("Exit codes: 0 all frames processed; 9 some frames or files failed or a stream ended early (the output "
          "holds the rest); 6 no input usable; 4 bundle refused; 5 backend missing; 2 usage; 1 output not writable; "
          "130 interrupted (a camera or stream stopped by Ctrl-C or SIGTERM exits 0).")


class _Command(OneLineUsage):
    """tddfa-run's messages go through ``_say`` (it clears the progress bar first and never raises)."""

    def say(self, message: str) -> None:
        _say(message)

    def usage_text(self, exc: click.ClickException) -> str:
        return _click_message(exc)


def _click_message(exc: click.ClickException) -> str:
    text = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    return clean_message(text, 500)


@click.command(PROG, cls=_Command, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@click.argument("input_spec", metavar="INPUT")
@click.option("--bundle", "bundle_dir", required=True, envvar="TDDFA_EDGE_BUNDLE", type=click.Path(path_type=Path),
              help="bundle folder written by tddfa-export (or $TDDFA_EDGE_BUNDLE)")
@click.option("--bundle-sha256", metavar="HEX", envvar="TDDFA_EDGE_BUNDLE_SHA256",
              help="refuse the bundle unless its manifest.json has this sha256 (tddfa-export prints it; or $TDDFA_EDGE_BUNDLE_SHA256)")
@click.option("--trust", "trusted_keys", metavar="PUBKEY", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Ed25519 public key (PEM); refuse bundles not signed by one of the keys given (repeatable)")
@click.option("--allow-fallback", is_flag=True,
              help="when the backend of the bundle's default variant is not installed, run another variant of the bundle")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), help="JSON Lines output file (default: stdout)")
@click.option("--resume", is_flag=True,
              help="with --out: keep its records, cut an unfinished last line, process only inputs/frames without a record")
@click.option("--draw", "draw_path", type=click.Path(path_type=Path),
              help="annotated output: an image path or folder for images, a .mp4/.avi path for video and cameras")
@click.option("--dense", is_flag=True, help="dense mesh vertices (38,365 x 3) of every face (see --dense-format)")
@click.option("--dense-format", type=click.Choice(["npy", "json"]), default="npy", show_default=True,
              help="npy: one float32 (faces, V, 3) file per frame in --dense-dir, named in each face's 'dense'; "
                   "json: the vertices in the record ('dense_vertices', slow)")
@click.option("--dense-dir", type=click.Path(file_okay=False, path_type=Path),
              help="folder of the --dense .npy files  [default: <--out without suffix>.dense]")
@click.option("--mesh-dir", type=click.Path(file_okay=False, path_type=Path), help="write one mesh per face into this folder")
@click.option("--mesh-format", type=click.Choice(["ply", "obj"]), default="ply", show_default=True)
@click.option("--max-pixels", type=click.IntRange(1), metavar="N",
              help="refuse images (and video frames) declaring more pixels, before decoding  "
                   "[default: from the bundle target's memory budget: a quarter of max_peak_rss_mb at 6 bytes/pixel]")
@click.option("--timeout", type=click.FloatRange(0.1, 86400.0), default=5.0, show_default=True, metavar="SECONDS",
              help="streams and cameras: give up opening, or end the stream, after this long without data")
@click.option("--threads", type=click.IntRange(1), help="inference threads (default: the bundle target's; at most the CPUs available)")
@click.option("--detect-interval", type=click.IntRange(0), help="tracking: also re-detect every N frames (0: only when a track is lost; default: the bundle's)")
@click.option("--track/--no-track", default=None, help="track faces across frames  [default: on for video and cameras]")
@click.option("--smoothing/--no-smoothing", default=None, help="One Euro smoothing of tracked landmarks and pose  [default: the bundle's]")
@click.option("--max-faces", type=click.IntRange(1), help="at most this many faces per frame (best detector scores)")
@click.option("--max-frames", type=click.IntRange(1), help="stop after this many frames")
@click.option("--regressor", "regressor_variant", metavar="VARIANT", help="regressor variant of the bundle (default: the bundle's)")
@click.option("--detector", "detector_variant", metavar="VARIANT", help="detector variant of the bundle (default: the bundle's)")
@click.option("--progress/--no-progress", default=None, help="progress bar on stderr  [default: when stderr is a terminal]")
@click.option("--verbose", is_flag=True, help="keep the native libraries' own messages (OpenCV, FFmpeg, libpng) on stderr")
@click.option("--debug", is_flag=True, hidden=True, help="show tracebacks of unexpected errors")
def main(**options):
    """Detect and align faces in INPUT: an image, a folder of images, a video file, a camera (0, 1, /dev/video0)
    or a stream URL (rtsp://...).

    Writes one JSON record per frame (frame, timestamp, source, width, height, detected, faces with box, score,
    landmarks_68, pose_ypr, track_id) to stdout or --out, one whole line per frame as soon as it is done.
    """
    return _main(Options(**options))


@dataclass
class Options:
    input_spec: str
    bundle_dir: Path
    bundle_sha256: str | None
    trusted_keys: tuple
    allow_fallback: bool
    out_path: Path | None
    resume: bool
    draw_path: Path | None
    dense: bool
    dense_format: str
    dense_dir: Path | None
    mesh_dir: Path | None
    mesh_format: str
    max_pixels: int | None
    timeout: float
    threads: int | None
    detect_interval: int | None
    track: bool | None
    smoothing: bool | None
    max_faces: int | None
    max_frames: int | None
    regressor_variant: str | None
    detector_variant: str | None
    progress: bool | None
    verbose: bool
    debug: bool


class _State:
    """What an interrupted or failed run needs to say how far it got."""

    def __init__(self) -> None:
        self.source = None
        self.writer = None
        self.record_file = None
        self.stdout_closed = False


def _main(opts: Options) -> int:
    installed_here = interrupts.install() if not interrupts._state.installed else False
    state = _State()
    closed = _guard_standard_fds()
    state.stdout_closed = 1 in closed or sys.stdout is None
    if not opts.verbose:
        _hide_native_stderr()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings
            try:
                interrupts.arm()
                return _run(opts, state)
            except KeyboardInterrupt:
                return _interrupted(state)
            finally:
                interrupts.disarm()
                if state.record_file is not None:
                    state.record_file.close()
    finally:
        _Messages.bar = None
        if installed_here:
            interrupts.restore()
        elif _PROCESS:
            # The run is over and its exit code stands. Python's finalization puts every signal with a Python
            # handler back to SIG_DFL, so a SIGINT in the last milliseconds of the process killed it (exit -2, once
            # in 40 fuzz trials); ignored signals are left as they are.
            interrupts.ignore_from_now_on()


def _interrupted(state: _State) -> int:
    if state.record_file is not None and state.writer is None:
        state.record_file.abandon()  # the run never started: leave --out as it was
    source = state.source
    done = state.writer.count if state.writer is not None else 0
    how = interrupts.signal_name(interrupts.received())
    if _Messages.bar is not None:
        _Messages.bar.finish(complete=False)
        _Messages.bar = None
    if source is not None and source.kind == "camera":
        _say(f"{short_name(source.name)} stopped by {how} after {done} frame(s)")
        return 0
    _say(f"interrupted by {how}: stopped after {done} frame(s)" + ("" if state.writer is not None else " (before the first record)"))
    return 130


def _available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _run(opts: Options, state: _State) -> int:
    """Everything ``main`` does after parsing; returns the exit code."""
    try:
        code = _run_checked(opts, state)
        if interrupts.stopping():
            raise KeyboardInterrupt
        return code
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        if interrupts.stopping():  # a library turned our KeyboardInterrupt into another error: it is still a stop
            raise KeyboardInterrupt from None
        if not isinstance(exc, Exception) or (opts.debug and not isinstance(exc, TddfaEdgeError)):
            raise
        return _failed(exc, state)


def _failed(exc: Exception, state: _State) -> int:
    """The exit code and one line for a run that failed with ``exc``."""
    if isinstance(exc, TddfaEdgeError):
        if state.record_file is not None and state.writer is None:
            state.record_file.abandon()
        _say(f"error: {exc}")
        return exc.exit_code
    if isinstance(exc, BrokenPipeError):
        # The reader of stdout went away (e.g. `| head -1`): stop quietly, nothing can receive records any more.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.close(devnull)
        except OSError:
            pass
        return OutputError.exit_code
    if isinstance(exc, MemoryError):
        _say("error: out of memory")
        return 1
    # The last guard: one line, never a traceback (unless --debug).
    text = str(exc).strip()
    _say(f"error: unexpected {type(exc).__name__}: {text.splitlines()[-1] if text else ''} (rerun with --debug for the traceback)")
    return 1


def _run_checked(opts: Options, state: _State) -> int:
    from .sources import classify, decode_threads_from_env

    # --- usage, before anything is opened or loaded -----------------------------------------------------------
    decode_threads = decode_threads_from_env()
    threads = opts.threads
    cpus = _available_cpus()
    if threads is not None and threads > cpus:
        _say(f"note: --threads {threads} is more than the {cpus} CPU(s) this process may use; using {cpus}")
        threads = cpus
    if opts.resume and opts.out_path is None:
        raise UsageError("--resume needs --out FILE (the records to resume)")
    if opts.bundle_sha256 is not None and not re.fullmatch(r"\s*[0-9a-fA-F]{64}\s*", opts.bundle_sha256):
        raise UsageError(f"--bundle-sha256 must be 64 hexadecimal digits, got {clean_message(repr(opts.bundle_sha256), 80)}")
    dense_dir, dense_base = opts.dense_dir, None
    if opts.dense and opts.dense_format == "npy":
        if opts.out_path is not None:
            dense_base = opts.out_path.parent
            if dense_dir is None:
                dense_dir = opts.out_path.with_name(opts.out_path.stem + ".dense")
        elif dense_dir is None:
            raise UsageError("--dense writes one .npy file per frame: give --out FILE (files go beside it) or --dense-dir DIR, "
                             "or use --dense-format json")
    spec = opts.input_spec
    kind = classify(spec)
    _check_outputs(spec, kind, opts.out_path, opts.draw_path)
    if opts.out_path is None and state.stdout_closed:
        raise OutputError("stdout is closed: nothing can receive the records (give --out FILE)")

    # --- the records output: opened now, emptied only once the bundle is loaded --------------------------------
    from .jsonl import RecordFile, RecordWriter, Resumed, stdout_writer

    if opts.out_path is not None:
        state.record_file = RecordFile(opts.out_path, opts.resume)

    # --- bundle ---------------------------------------------------------------------------------------------------
    from .aligner import FaceAligner
    from .frames import default_max_pixels

    need_dense = opts.dense or opts.mesh_dir is not None
    aligner = FaceAligner.from_bundle(
        opts.bundle_dir, threads=threads, regressor_variant=opts.regressor_variant, detector_variant=opts.detector_variant,
        dense=need_dense, bundle_sha256=opts.bundle_sha256.strip() if opts.bundle_sha256 else None,
        trusted_keys=tuple(opts.trusted_keys) or None, allow_fallback=opts.allow_fallback)
    budget = getattr(getattr(aligner.bundle, "target", None), "budgets", None) if aligner.bundle is not None else None
    max_pixels = opts.max_pixels or default_max_pixels(getattr(budget, "max_peak_rss_mb", None))

    # --- the run starts: commit the output ---------------------------------------------------------------------
    resumed = state.record_file.commit() if state.record_file is not None else Resumed()
    state.writer = RecordWriter(state.record_file.fd, short_name(opts.out_path)) if state.record_file is not None else stdout_writer()
    if opts.resume and resumed.fragment_bytes:
        _say(f"note: cut an unfinished last line ({resumed.fragment_bytes} bytes) off {short_name(opts.out_path)}")

    from .runner import RunOptions, run
    from .sources import open_source

    try:
        source = open_source(spec, max_pixels=max_pixels, timeout=opts.timeout, decode_threads=decode_threads)
    except InputImageError as exc:
        name = _input_name(spec, kind)
        if not (opts.resume and name in resumed.sources):
            state.writer.write({"frame": 0, "timestamp": None, "source": name, "detected": False, "faces": [], "error": clean_message(exc)})
        raise
    state.source = source
    skipped = 0
    if opts.resume:
        from .atomic import remove_leftovers

        skipped = source.resume(resumed.sources, resumed.last_frame)
        for folder in (dense_dir, opts.mesh_dir, opts.draw_path):
            if folder is not None and folder.is_dir():
                remove_leftovers(folder)

    options = RunOptions(track=opts.track, detect_interval=opts.detect_interval, smoothing=opts.smoothing, max_faces=opts.max_faces,
                         dense=opts.dense, dense_format=opts.dense_format, dense_dir=dense_dir, dense_relative_to=dense_base,
                         mesh_dir=opts.mesh_dir, mesh_format=opts.mesh_format, draw=opts.draw_path, max_frames=opts.max_frames)
    show_bar = (source.length is not None and source.length > 1
                and (opts.progress if opts.progress is not None else _is_tty(sys.stderr)))
    errors_shown = [0]

    def on_error(message: str) -> None:
        errors_shown[0] += 1
        if errors_shown[0] <= MAX_ERROR_LINES:
            _say(message)
        elif errors_shown[0] == MAX_ERROR_LINES + 1:
            _say("further frame errors are reported in the records only")

    bar = _Bar(sys.stderr, source.name, source.length) if show_bar else None
    _Messages.bar = bar

    def on_frame(frame) -> None:
        if bar is not None:
            bar.update(1)
        if interrupts.stopping():  # the KeyboardInterrupt was swallowed somewhere: stop now
            raise KeyboardInterrupt

    try:
        summary = run(aligner, source, state.writer, options, on_frame=on_frame, on_error=on_error)
    finally:
        source.close()
    if bar is not None:
        bar.finish(complete=True)
        _Messages.bar = None

    for problem in summary.problems:
        _say(problem)
    usable = summary.frames - summary.failed
    if summary.frames == 0 and opts.resume and skipped and not summary.problems:
        _say(f"nothing left to do: every input of {short_name(spec)} already has a record in {short_name(opts.out_path)}")
        return 0
    if usable == 0:
        if summary.frames > 1 or summary.problems:
            _say(f"error: no frame of {short_name(spec)} could be processed")
        return InputImageError.exit_code
    if not summary.ok:
        if summary.failed:
            _say(f"{summary.failed} of {summary.frames} frames failed; the others are in the output")
        return IncompleteRunError.exit_code
    return 0


def _input_name(spec: str, kind: str) -> str:
    """The ``source`` of the error record of an input that cannot be opened (as its frames would be named)."""
    if kind in ("camera", "stream"):
        from .sources import _masked

        return f"camera:{display_name(_masked(spec))}"
    base = os.path.basename(spec.rstrip("/")) or spec
    return display_name(base)


def _stat(path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except (OSError, ValueError):
        return None


def _check_outputs(spec: str, kind: str, out_path: Path | None, draw_path: Path | None) -> None:
    """Refuse, before anything is touched, outputs that would destroy or be read as an input."""
    from .sources import IMAGE_SUFFIXES

    inputs: dict[tuple[int, int], str] = {}
    folder = None
    st = _stat(spec)
    if st is not None and kind in ("image", "video", "other"):
        inputs[(st.st_dev, st.st_ino)] = spec
    elif st is not None and kind == "folder":
        folder = st
        if (out_path is not None and _stat(out_path) is not None) or (draw_path is not None and _stat(draw_path) is not None):
            try:
                with os.scandir(spec) as it:
                    for entry in it:
                        if os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                            est = _stat(entry.path)
                            if est is not None:
                                inputs[(est.st_dev, est.st_ino)] = entry.path
            except OSError:
                pass

    def input_at(path: Path) -> str | None:
        pst = _stat(path)
        return inputs.get((pst.st_dev, pst.st_ino)) if pst is not None else None

    def inside_folder(path: Path) -> bool:
        parent = _stat(path.parent if str(path.parent) else ".")
        return folder is not None and parent is not None and (parent.st_dev, parent.st_ino) == (folder.st_dev, folder.st_ino)

    if out_path is not None:
        hit = input_at(out_path)
        if hit is not None:
            raise UsageError(f"--out {short_name(out_path)} is the input {short_name(hit)}: refusing to overwrite an input")
        if inside_folder(out_path) and out_path.suffix.lower() in IMAGE_SUFFIXES:
            raise UsageError(f"--out {short_name(out_path)} is inside the input folder with an image suffix: it would be read as an input")
    if draw_path is not None:
        hit = input_at(draw_path)
        if hit is not None:
            raise UsageError(f"--draw {short_name(draw_path)} is the input {short_name(hit)}: refusing to overwrite an input")
        dst = _stat(draw_path)
        if folder is not None and dst is not None and (dst.st_dev, dst.st_ino) == (folder.st_dev, folder.st_ino):
            raise UsageError(f"--draw {short_name(draw_path)} is the input folder: the annotated images would replace the inputs")
        if folder is not None and inside_folder(draw_path) and draw_path.suffix.lower() in IMAGE_SUFFIXES:
            raise UsageError(f"--draw {short_name(draw_path)} is inside the input folder with an image suffix: it would be read as an input")
        if out_path is not None and os.path.abspath(draw_path) == os.path.abspath(out_path):
            raise UsageError("--draw and --out name the same file")


def _is_tty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


class _Bar:
    """A progress bar on stderr: ``label [#####-----]  42%  23/55``, redrawn at most 10 times a second.

    Video lengths are the container's estimate: when the source ends, the bar finishes at the real count."""

    WIDTH = 30

    def __init__(self, stream, label: str, length: int | None) -> None:
        self.stream, self.label, self.length = stream, short_name(label)[:40], length
        self.pos, self.drawn, self.last = 0, False, 0.0
        self.tty = _is_tty(stream)

    def update(self, n: int = 1) -> None:
        self.pos += n
        now = time.monotonic()
        if now - self.last >= 0.1:
            self.last = now
            self.render()

    def render(self) -> None:
        length = max(self.length or 0, self.pos)
        if length:
            filled = int(self.WIDTH * self.pos / length)
            line = f"{self.label}  [{'#' * filled}{'-' * (self.WIDTH - filled)}]  {int(100 * self.pos / length):3d}%  {self.pos}/{length}"
        else:
            line = f"{self.label}  {self.pos} frames"
        self._write("\r" + line + ("\x1b[K" if self.tty else ""))
        self.drawn = True

    def clear(self) -> None:
        if self.drawn:
            self._write("\r\x1b[K" if self.tty else "\n")
            self.drawn = False

    def finish(self, complete: bool) -> None:
        if complete:
            self.length = self.pos
        self.render()
        self._write("\n")
        self.drawn = False

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError, AttributeError):
            pass


if __name__ == "__main__":
    main()
