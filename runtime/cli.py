"""``tddfa-run``: faces of an image, a folder of images, a video file or a camera, as JSON Lines.

Exit codes: 0 every frame processed (with or without faces); 9 the run finished but some frames/files
failed or the stream ended early (the output holds everything else); 6 no input could be used (missing,
unsupported, corrupt, camera cannot be opened); 4 bundle refused (sha256, manifest); 5 backend missing;
2 usage; 1 output not writable or an unexpected error; 130 interrupted (a camera stopped with Ctrl-C or
SIGTERM exits 0: that is how a live stream ends).
"""

from __future__ import annotations

import io
import os
import signal
import sys
import warnings
from pathlib import Path

import click

from .errors import InputImageError, TddfaEdgeError

PROG = "tddfa-run"
MAX_ERROR_LINES = 20


def _say(message: str) -> None:
    click.echo(f"{PROG}: {message}", err=True)


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
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = io.TextIOWrapper(io.FileIO(saved, "w"), encoding=sys.stderr.encoding or "utf-8", errors="backslashreplace", line_buffering=True)


def _one_line_warnings(message, category, filename, lineno, file=None, line=None) -> None:
    _say(f"warning: {message}")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


EPILOG = ("Exit codes: 0 all frames processed; 9 some frames or files failed or a stream ended early (the output "
          "holds the rest); 6 no input usable; 4 bundle refused; 5 backend missing; 2 usage; 1 output not writable; "
          "130 interrupted (a camera stopped by Ctrl-C or SIGTERM exits 0).")


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@click.argument("input_spec", metavar="INPUT")
@click.option("--bundle", "bundle_dir", required=True, envvar="TDDFA_EDGE_BUNDLE", type=click.Path(path_type=Path),
              help="bundle folder written by tddfa-export (or $TDDFA_EDGE_BUNDLE)")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), help="JSON Lines output file (default: stdout)")
@click.option("--draw", "draw_path", type=click.Path(path_type=Path),
              help="annotated output: an image path or folder for images, a .mp4/.avi path for video and cameras")
@click.option("--dense", is_flag=True, help="add the dense mesh vertices (38,365 x 3) to every face record")
@click.option("--mesh-dir", type=click.Path(file_okay=False, path_type=Path), help="write one mesh per face into this folder")
@click.option("--mesh-format", type=click.Choice(["ply", "obj"]), default="ply", show_default=True)
@click.option("--threads", type=click.IntRange(1, 256), help="inference threads (default: the bundle target's)")
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
def main(input_spec, bundle_dir, out_path, draw_path, dense, mesh_dir, mesh_format, threads, detect_interval, track, smoothing,
         max_faces, max_frames, regressor_variant, detector_variant, progress, verbose, debug):
    """Detect and align faces in INPUT: an image, a folder of images, a video file, a camera (0, 1, /dev/video0)
    or a stream URL (rtsp://...).

    Writes one JSON record per frame (frame, timestamp, source, faces with box, score, landmarks_68,
    pose_ypr, track_id) to stdout or --out, flushed per frame.
    """
    if not verbose:
        _hide_native_stderr()
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings
            code = _run(input_spec, bundle_dir, out_path, regressor_variant, detector_variant, threads, progress, debug, dict(
                track=track, detect_interval=detect_interval, smoothing=smoothing, max_faces=max_faces, dense=dense,
                mesh_dir=mesh_dir, mesh_format=mesh_format, draw=draw_path, max_frames=max_frames))
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
    sys.exit(code)


def _run(input_spec, bundle_dir, out_path, regressor_variant, detector_variant, threads, progress, debug, run_options) -> int:
    """Everything ``main`` does after parsing; returns the exit code."""
    source = None
    writer = None
    try:
        from .aligner import FaceAligner
        from .runner import RecordWriter, RunOptions, run
        from .sources import open_source

        source = open_source(input_spec)
        need_dense = run_options["dense"] or run_options["mesh_dir"] is not None
        aligner = FaceAligner.from_bundle(bundle_dir, threads=threads, regressor_variant=regressor_variant,
                                          detector_variant=detector_variant, dense=need_dense)
        options = RunOptions(**run_options)
        show_bar = source.length is not None and source.length > 1 and (progress if progress is not None else _is_tty(sys.stderr))
        errors_shown = [0]

        def on_error(message: str) -> None:
            errors_shown[0] += 1
            if errors_shown[0] <= MAX_ERROR_LINES:
                _say(message)
            elif errors_shown[0] == MAX_ERROR_LINES + 1:
                _say("further frame errors are reported in the records only")

        with _open_records(out_path) as stream, _progress(show_bar, source) as bar:
            writer = RecordWriter(stream)
            summary = run(aligner, source, writer, options, on_frame=(lambda frame: bar.update(1)) if bar is not None else None,
                          on_error=on_error)
    except TddfaEdgeError as exc:
        _say(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        live = source is not None and source.kind == "camera"
        _say(f"stopped after {writer.count if writer else 0} frame(s)")
        return 0 if live else 130
    except BrokenPipeError:
        # The reader of stdout went away (e.g. `| head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:  # the last guard: one line, never a traceback (unless --debug)
        if debug:
            raise
        text = str(exc).strip()
        _say(f"error: unexpected {type(exc).__name__}: {text.splitlines()[-1] if text else ''} (rerun with --debug for the traceback)")
        return 1

    for problem in summary.problems:
        _say(problem)
    usable = summary.frames - summary.failed
    if usable == 0:
        if summary.frames > 1 or summary.problems:
            _say(f"error: no frame of {input_spec} could be processed")
        return InputImageError.exit_code
    if not summary.ok:
        from .errors import IncompleteRunError

        if summary.failed:
            _say(f"{summary.failed} of {summary.frames} frames failed; the others are in the output")
        return IncompleteRunError.exit_code
    return 0


def _is_tty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _open_records:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.stream = None

    def __enter__(self):
        if self.path is None:
            return sys.stdout
        from .errors import OutputError

        try:
            self.stream = open(self.path, "w", encoding="utf-8", newline="\n")
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        return self.stream

    def __exit__(self, *exc_info):
        if self.stream is not None:
            self.stream.close()
        return False


class _progress:
    def __init__(self, show: bool, source) -> None:
        self.bar = click.progressbar(length=source.length, label=source.name, file=sys.stderr) if show else None

    def __enter__(self):
        return self.bar.__enter__() if self.bar is not None else None

    def __exit__(self, *exc_info):
        if self.bar is not None:
            self.bar.finished = True  # video lengths are estimates: do not leave the bar half-drawn
            self.bar.render_finish()
        return False


if __name__ == "__main__":
    main()
