"""JSON Lines records that survive ``kill -9`` whole, and the rule for reading and resuming them.

Writing: every record is one line, encoded in full first and handed to the kernel with a single
``os.write`` on a file descriptor opened with ``O_APPEND`` (no userspace buffer: nothing sits in a 4 KB
block waiting for the next record). When the process dies the kernel keeps every line already written.
Files a record refers to (``--dense`` arrays, meshes) are complete, renamed into place, before the line
that names them is written.

Reading rule: a record file is a sequence of lines ending in ``\\n``. Only the line in flight when the
process was killed can be incomplete, so **text after the last newline is a fragment: ignore it**. Every
line that ends in ``\\n`` is a whole JSON object. ``tddfa-run ... --out FILE --resume`` applies the rule:
it cuts a trailing fragment off ``FILE``, keeps every whole line, and processes only what has no record yet
(folder images by ``source``, video frames after the last recorded one; a camera or stream appends, its
frame numbers continuing). Without ``--resume`` an existing ``FILE`` is emptied, but only once the bundle
is loaded: a usage error or a refused bundle leaves it untouched.

``--out`` may be ``-`` or absent (stdout), a regular file, a FIFO or a character device.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from tddfa_edge.contracts.errors import OutputError

from .interrupts import critical
from .text import clean_message, short_name


def encode_record(record: dict) -> bytes:
    """One JSON line (ASCII, with the newline). Non-finite floats become ``null`` (JSON has no NaN)."""
    try:
        text = json.dumps(record, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(record), separators=(",", ":"), allow_nan=False)
    return text.encode("ascii") + b"\n"


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (one call for a regular file; pipes may take several)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class RecordWriter:
    """JSON Lines, one ``os.write`` per record. Give it a file descriptor, or a text stream without one
    (a test harness's stdout): the line is then written and flushed in one call."""

    def __init__(self, target: int | TextIO, name: str = "stdout") -> None:
        self.fd = target if isinstance(target, int) else None
        self.stream = None if isinstance(target, int) else target
        self.name = name
        self.count = 0

    def write(self, record: dict) -> None:
        line = encode_record(record)
        with critical():
            try:
                if self.fd is not None:
                    write_all(self.fd, line)
                else:
                    self.stream.write(line.decode("ascii"))
                    self.stream.flush()
            except BrokenPipeError:
                raise
            except OSError as exc:
                raise OutputError(f"cannot write records to {self.name}: {exc.strerror or exc}") from None
        self.count += 1


@dataclass
class Resumed:
    """What an existing record file already holds (``--resume``)."""

    lines: int = 0
    fragment_bytes: int = 0  # cut off the end
    sources: set[str] = field(default_factory=set)
    last_frame: dict[str, int] = field(default_factory=dict)  # source -> highest frame index


class RecordFile:
    """``--out``: opened early without truncating (so its problems are found before the bundle loads), and
    emptied or repaired (``--resume``) by ``commit`` once the run can start."""

    def __init__(self, path: Path, resume: bool = False) -> None:
        self.path, self.resume = path, resume
        self.name = short_name(path)
        self.created = False
        self.fd: int | None = None
        self.regular = False
        try:
            before = os.stat(path)
        except FileNotFoundError:
            before = None
        except OSError as exc:
            raise OutputError(f"cannot write {self.name}: {exc.strerror or exc}") from None
        if before is not None and stat.S_ISDIR(before.st_mode):
            raise OutputError(f"cannot write {self.name}: it is a directory")
        if resume and before is not None and not stat.S_ISREG(before.st_mode):
            raise OutputError(f"--resume needs a regular file, {self.name} is not one")
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            self.fd = os.open(path, flags, 0o644)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                raise OutputError(f"cannot write {self.name}: it is a FIFO with no reader") from None
            raise OutputError(f"cannot write {self.name}: {exc.strerror or exc}") from None
        if hasattr(os, "set_blocking"):
            os.set_blocking(self.fd, True)
        st = os.fstat(self.fd)
        self.regular = stat.S_ISREG(st.st_mode)
        self.created = before is None
        self.identity = (st.st_dev, st.st_ino)

    def commit(self) -> Resumed:
        """Empty the file (or, with ``resume``, cut a trailing fragment and read what it holds)."""
        if not self.regular:
            return Resumed()
        try:
            if not self.resume:
                os.ftruncate(self.fd, 0)
                return Resumed()
            return self._repair()
        except OSError as exc:
            raise OutputError(f"cannot write {self.name}: {exc.strerror or exc}") from None

    def _repair(self) -> Resumed:
        done = Resumed()
        with open(self.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            end = 0  # offset after the last newline
            for number, line in enumerate(fh, 1):
                if not line.endswith(b"\n"):
                    break
                end += len(line)
                try:
                    record = json.loads(line)
                    source = record["source"]
                    frame = int(record.get("frame", 0))
                except (ValueError, KeyError, TypeError):
                    raise OutputError(f"cannot resume {self.name}: line {number} is not a tddfa-run record") from None
                done.lines += 1
                done.sources.add(source)
                if frame > done.last_frame.get(source, -1):
                    done.last_frame[source] = frame
        if end < size:
            os.ftruncate(self.fd, end)
            done.fragment_bytes = size - end
        return done

    def abandon(self) -> None:
        """The run could not start: close, and remove the file if this run created it and wrote nothing."""
        if self.fd is None:
            return
        try:
            if self.created and os.fstat(self.fd).st_size == 0:
                os.unlink(self.path)
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


def stdout_writer() -> RecordWriter:
    """Records on stdout: the real fd 1 when there is one (one ``os.write`` per line), else the stream."""
    stream = sys.stdout
    try:
        stream.flush()
        fd = stream.fileno()
        if fd == 1 and stream is sys.__stdout__:
            return RecordWriter(1, "stdout")
    except (AttributeError, OSError, ValueError):
        pass
    return RecordWriter(stream, "stdout")


def read_records(path: str | os.PathLike) -> list[dict]:
    """The whole records of a file, applying the reading rule (a trailing fragment is ignored)."""
    data = Path(path).read_bytes()
    end = data.rfind(b"\n") + 1
    return [json.loads(line) for line in data[:end].splitlines() if line.strip()]


__all__ = ["RecordWriter", "RecordFile", "Resumed", "encode_record", "read_records", "stdout_writer", "write_all", "clean_message"]
