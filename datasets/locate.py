"""Where the toolkit finds its data (checkpoints, 3DMM basis, benchmark sets) and how it checks them.

Lookup order for the data folder: an explicit path (CLI flag), the ``TDDFA_EDGE_DATA`` environment
variable, ``../shared/data`` beside the source checkout or the working directory, then the user cache
folder (``$XDG_CACHE_HOME/tddfa-edge`` or ``~/.cache/tddfa-edge``).
"""

from __future__ import annotations

import os
from pathlib import Path

from tddfa_edge.contracts.errors import DataFileError
from tddfa_edge.runtime.bundle import file_sha256

DATA_ENV = "TDDFA_EDGE_DATA"


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tddfa-edge"


def data_dir_candidates(explicit: str | os.PathLike | None = None) -> list[Path]:
    candidates: list[Path] = []
    if explicit:
        return [Path(explicit)]
    if os.environ.get(DATA_ENV):
        return [Path(os.environ[DATA_ENV])]
    checkout = Path(__file__).resolve().parents[1]
    candidates.append(checkout.parent / "shared" / "data")
    candidates.append(Path.cwd().parent / "shared" / "data")
    candidates.append(user_cache_dir())
    seen, unique = set(), []
    for c in candidates:
        if c not in seen:
            seen.add(c)
            unique.append(c)
    return unique


def resolve_data_file(relative: str, explicit_dir: str | os.PathLike | None = None) -> Path:
    """First existing ``<data dir>/<relative>``; ``DataFileError`` naming every place looked at otherwise."""
    candidates = data_dir_candidates(explicit_dir)
    for base in candidates:
        path = base / relative
        if path.is_file():
            return path
    places = ", ".join(str(c / relative) for c in candidates)
    hint = f" (set {DATA_ENV} or pass --data-dir)" if not explicit_dir else ""
    raise DataFileError(f"missing data file {relative}: looked in {places}{hint}")


def verify_sha256(path: str | os.PathLike, expected: str | None, what: str) -> str:
    """Return the file's sha256; ``DataFileError`` when ``expected`` is given and differs."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"missing {what}: {path}")
    actual = file_sha256(path)
    if expected and actual != expected:
        raise DataFileError(
            f"{what} {path} is corrupt or not the expected file: sha256 {actual[:16]}..., expected {expected[:16]}..."
        )
    return actual
