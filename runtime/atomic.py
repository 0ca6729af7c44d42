"""Files that appear whole or not at all: written to a temporary name in the same folder, then renamed.

A process killed mid-write leaves at most a ``.<name>.tmp-<pid>`` file (``--resume`` removes them), never a
truncated file under the final name. No fsync: the guarantee is against a killed process, not a power cut.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, BinaryIO

TMP_MARK = ".tmp-"


def temporary_name(path: Path) -> Path:
    name = path.name
    if len(os.fsencode(name)) > 200:  # keep the temporary name within NAME_MAX (255 bytes)
        name = hashlib.sha1(os.fsencode(name)).hexdigest()[:16]
    return path.with_name(f".{name}{TMP_MARK}{os.getpid()}")


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(binary file)`` on a temporary file beside ``path`` and rename it to ``path``."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    return write_atomic(path, lambda fh: fh.write(data))


def remove_leftovers(folder: str | os.PathLike) -> int:
    """Delete the temporary files a killed run left in ``folder``; returns how many."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if entry.name.startswith(".") and TMP_MARK in entry.name:
            try:
                if entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                pass
    return removed


__all__ = ["write_atomic", "write_bytes_atomic", "remove_leftovers", "temporary_name"]
