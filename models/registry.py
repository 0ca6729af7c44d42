"""Known checkpoints and data files: name, architecture, sha256, upstream URL, place in the data folder.

Lookup order: an explicit path, then the data folder (see ``tddfa_edge.runtime.data_files``). Nothing
is downloaded unless ``download=True`` is passed (``tddfa-export --download``), and a download is always
checked against the recorded sha256 before it is used.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tddfa_edge.runtime.data_files import data_dir_candidates, user_cache_dir, verify_sha256
from tddfa_edge.runtime.errors import DataFileError

UPSTREAM = "https://github.com/cleardusk/3DDFA_V2/raw/master"


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    kind: str  # "regressor", "detector", "param_mean_std", "bfm"
    relative_path: str  # inside the data folder
    sha256: str | None  # None: not recorded; the user's file is accepted and its sha256 reported
    url: str | None
    widen_factor: float | None = None
    description: str = ""


REGISTRY: dict[str, RegistryEntry] = {
    e.name: e
    for e in (
        RegistryEntry(
            "mb05_120x120", "regressor", "weights/mb05_120x120.pth",
            "f93ed7f1c4c0382b16d7c18480a5f67473c1917a47475a9823924f38aeb27280",
            f"{UPSTREAM}/weights/mb05_120x120.pth", 0.5, "MobileNetV1 x0.5, 120x120, 62 params (3DDFA_V2)",
        ),
        RegistryEntry(
            "mb1_120x120", "regressor", "weights/mb1_120x120.pth", None,
            f"{UPSTREAM}/weights/mb1_120x120.pth", 1.0, "MobileNetV1 x1.0, 120x120, 62 params (3DDFA_V2 default)",
        ),
        RegistryEntry(
            "faceboxes", "detector", "weights/FaceBoxesProd.pth",
            "c0cb2b1e40710c0aa5fc32a8759b1496a0fe0a126c907ca0ffe35b4bd0709d09",
            f"{UPSTREAM}/FaceBoxes/weights/FaceBoxesProd.pth", None, "FaceBoxes detector shipped with 3DDFA_V2",
        ),
        RegistryEntry(
            "param_mean_std_62d_120x120", "param_mean_std", "weights/param_mean_std_62d_120x120.pkl",
            "090d7150f77cb66c29ddae21e4508fbde59123dcd1dea7facc24a7ed06d1c795",
            f"{UPSTREAM}/configs/param_mean_std_62d_120x120.pkl", None, "mean/std de-normalizing the 62 outputs",
        ),
        RegistryEntry(
            "bfm_noneck_v3", "bfm", "bfm/bfm_noneck_v3.npz",
            "e9f94f99cfa350f1b2c9ac30caf19f6c886f7dc4817ad933ef4c2d156f732dd8",
            None, None, "dense 3DMM (38,365 vertices) as plain arrays; upstream ships it as configs/bfm_noneck_v3.pkl",
        ),
        RegistryEntry(
            "bfm_noneck_v3_pkl", "bfm", "bfm/bfm_noneck_v3.pkl", None,
            f"{UPSTREAM}/configs/bfm_noneck_v3.pkl", None, "upstream pickle of the dense 3DMM (converted at export)",
        ),
        RegistryEntry(
            "tri_pkl", "bfm", "bfm/tri.pkl", None, f"{UPSTREAM}/configs/tri.pkl", None,
            "upstream mesh triangles rebuilt for bfm_noneck_v3",
        ),
    )
}


def lookup(name: str) -> RegistryEntry:
    if name not in REGISTRY:
        raise DataFileError(f"unknown checkpoint {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def resolve(
    name: str,
    explicit_path: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    expected_sha256: str | None = None,
) -> tuple[Path, str]:
    """Path and sha256 of a registry file; verifies the recorded (or given) sha256.

    ``DataFileError`` with where to put the file when it is nowhere to be found.
    """
    entry = lookup(name)
    expected = expected_sha256 or entry.sha256
    if explicit_path is not None:
        return Path(explicit_path), verify_sha256(explicit_path, expected, f"{entry.kind} {name}")
    candidates = data_dir_candidates(data_dir)
    for base in candidates:
        path = base / entry.relative_path
        if path.is_file():
            return path, verify_sha256(path, expected, f"{entry.kind} {name}")
    if download:
        return _download(entry, expected)
    where = " or ".join(str(c / entry.relative_path) for c in candidates)
    how = f" or pass --download to fetch {entry.url}" if entry.url else ""
    raise DataFileError(f"{entry.kind} {name} not found: put it at {where}{how}")


def _download(entry: RegistryEntry, expected: str | None) -> tuple[Path, str]:
    if not entry.url:
        raise DataFileError(f"{entry.name} has no download URL; place the file by hand")
    if not expected:
        raise DataFileError(
            f"{entry.name} has no recorded sha256, so it is not downloaded blindly: fetch {entry.url} yourself "
            f"and pass its path, or give --expected-sha256"
        )
    target = user_cache_dir() / entry.relative_path
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(entry.url, timeout=60) as resp:
            shutil.copyfileobj(resp, out)
        actual = verify_sha256(tmp, expected, f"download of {entry.name}")
        os.replace(tmp, target)
        return target, actual
    except OSError as exc:
        raise DataFileError(f"download of {entry.url} failed: {exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
