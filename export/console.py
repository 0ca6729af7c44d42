"""What ``tddfa-export`` shows and what it keeps: our lines on the terminal, everything else in a log file.

The converters' libraries print to the process's stdout and stderr themselves (litert-torch's progress, the ONNX
quantizer's "Collecting tensor data", absl and oneDNN lines, Python warnings), some from C++. ``ExportConsole``
points file descriptors 1 and 2 at a pipe for the duration of the export; a thread copies what arrives into the
log file (and to the terminal with ``verbose``). Our own messages and progress bars go to a duplicate of the
original stderr, so stdout stays free for the summary printed after the export.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import click

from tddfa_edge.contracts.errors import OutputError

from .exporter import Progress


class ExportConsole:
    def __init__(self, log_path: Path, verbose: bool = False, quiet: bool = False) -> None:
        self.log_path = Path(log_path)
        self.verbose, self.quiet = verbose, quiet

    def __enter__(self) -> "ExportConsole":
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab", buffering=0)
        except OSError as exc:
            raise OutputError(f"cannot write the export log {self.log_path}: {exc.strerror or exc}") from None
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        self._saved = (os.dup(1), os.dup(2))
        self.terminal = open(os.dup(self._saved[1]), "w", buffering=1, encoding="utf-8", errors="backslashreplace")
        self._tty = self.terminal.isatty()
        read_end, write_end = os.pipe()
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.close(write_end)
        self._reader = threading.Thread(target=self._copy, args=(read_end,), daemon=True)
        self._reader.start()
        return self

    def _copy(self, fd: int) -> None:
        with open(fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                self._log.write(chunk)
                if self.verbose:
                    os.write(self._saved[1], chunk)

    def __exit__(self, *exc_info) -> bool:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os.dup2(self._saved[0], 1)  # closes the pipe's last write ends: the copier reaches end of file
        os.dup2(self._saved[1], 2)
        self._reader.join(timeout=10)
        for fd in self._saved:
            os.close(fd)
        self.terminal.close()
        self._log.close()
        return False

    def say(self, message: str) -> None:
        """A line of ours: on the terminal (unless quiet) and in the log."""
        self._log.write((message + "\n").encode("utf-8", "backslashreplace"))
        if not self.quiet:
            click.echo(f"tddfa-export: {message}", file=self.terminal)

    def progress(self) -> Progress:
        return _BarProgress(self) if self._tty and not self.quiet else _LineProgress(self)


class _LineProgress(Progress):
    def __init__(self, console: ExportConsole) -> None:
        super().__init__(console.say)


class _BarProgress(Progress):
    """One bar per stage on the terminal."""

    def __init__(self, console: ExportConsole) -> None:
        super().__init__(console.say)
        self.console, self.bar = console, None

    def start(self, stage: str, total: int) -> None:
        self.end()
        self.stage = stage
        self.bar = click.progressbar(length=total, label=f"{stage:11s}", file=self.console.terminal, show_pos=True)
        self.bar.__enter__()

    def step(self, label: str) -> None:
        self.console._log.write(f"[{self.stage}] {label}\n".encode())
        if self.bar is not None:
            self.bar.label = f"{self.stage:11s} {label[:28]:28s}"
            self.bar.update(1)

    def end(self) -> None:
        if self.bar is not None:
            self.bar.finished = True
            self.bar.render_finish()
            self.bar = None
