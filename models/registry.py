"""Known checkpoints and data files: name, kind, sha256, upstream URL, and where they sit in a data folder or in a
3DDFA_V2 checkout.

Lookup order for every input: an explicit path; the 3DDFA_V2 checkout given with ``--upstream`` (its own layout:
``weights/``, ``FaceBoxes/weights/``, ``configs/``); the data folder (``tddfa_edge.datasets.locate``); the user
cache, where downloads go. Nothing is downloaded unless asked for (``tddfa-export --download``). A file whose
sha256 is recorded here is checked against it wherever it comes from; the few upstream files whose sha256 is not
known here (the 3DMM pickles, ``mb1_120x120.pth``) are accepted after a content check when they are loaded
(``export.morphable_files.check_morphable_model``; the regressor's strict architecture fit).
``$TDDFA_EDGE_MIRROR`` (a base URL) replaces ``https://github.com`` in every download, e.g. for an internal mirror.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tddfa_edge.contracts.errors import DataFileError
from tddfa_edge.datasets.locate import data_dir_candidates, user_cache_dir, verify_sha256

GITHUB = "https://github.com"
UPSTREAM = f"{GITHUB}/cleardusk/3DDFA_V2/raw/master"
YUNET_UPSTREAM = f"{GITHUB}/ShiqiYu/libfacedetection.train/raw/master"
MIRROR_ENV = "TDDFA_EDGE_MIRROR"
DOWNLOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    kind: str  # "regressor", "detector" (the name is its architecture), "param_mean_std", "bfm", "reference"
    relative_path: str  # inside the data folder (and the user cache)
    sha256: str | None  # None: not recorded; accepted after a content check when loaded
    url: str | None
    widen_factor: float | None = None
    description: str = ""
    upstream_path: str | None = None  # inside a 3DDFA_V2 checkout


@dataclass(frozen=True)
class ResolvedFile:
    name: str
    path: Path
    sha256: str
    origin: str  # "explicit", "upstream checkout", "data folder", "download"
    checked: bool  # its sha256 matched a recorded one


REGISTRY: dict[str, RegistryEntry] = {
    e.name: e
    for e in (
        RegistryEntry(
            "mb05_120x120", "regressor", "weights/mb05_120x120.pth",
            "f93ed7f1c4c0382b16d7c18480a5f67473c1917a47475a9823924f38aeb27280",
            f"{UPSTREAM}/weights/mb05_120x120.pth", 0.5, "MobileNetV1 x0.5, 120x120, 62 params (3DDFA_V2)",
            "weights/mb05_120x120.pth",
        ),
        RegistryEntry(
            "mb1_120x120", "regressor", "weights/mb1_120x120.pth", None,
            f"{UPSTREAM}/weights/mb1_120x120.pth", 1.0, "MobileNetV1 x1.0, 120x120, 62 params (3DDFA_V2 default)",
            "weights/mb1_120x120.pth",
        ),
        RegistryEntry(
            "yunet_n", "detector", "weights/yunet_n.pth",
            "9c7c9e14a4d60e57491d77e4d8b0d451bd834f300e05c0dea7fd1f6533817b06",
            f"{YUNET_UPSTREAM}/weights/yunet_n.pth", None, "YuNet-n face detector (libfacedetection.train, Apache-2.0)",
            "weights/yunet_n.pth",  # not part of 3DDFA_V2: a user may drop it beside the regressor weights
        ),
        RegistryEntry(
            "yunet_s", "detector", "weights/yunet_s.pth",
            "f2688fecd5aef7d204d04ca12ff377b724978abbe5955740bc67280d99ffe4d6",
            f"{YUNET_UPSTREAM}/weights/yunet_s.pth", None, "YuNet-s face detector (libfacedetection.train, Apache-2.0)",
            "weights/yunet_s.pth",  # not part of 3DDFA_V2: a user may drop it beside the regressor weights
        ),
        RegistryEntry(
            "yunet_n_dynamic_onnx", "reference", "weights/yunet_n_dynamic.onnx",
            "104ee26c71d5c270ce79a6b3dced91c91013260d29a6bf18f9296c5b8c4c2b12",
            f"{YUNET_UPSTREAM}/onnx/yunet_n_dynamic.onnx", None, "upstream ONNX export of yunet_n: a parity reference, not a bundle input",
        ),
        RegistryEntry(
            "faceboxes", "detector", "weights/FaceBoxesProd.pth",
            "c0cb2b1e40710c0aa5fc32a8759b1496a0fe0a126c907ca0ffe35b4bd0709d09",
            f"{UPSTREAM}/FaceBoxes/weights/FaceBoxesProd.pth", None, "FaceBoxes detector shipped with 3DDFA_V2",
            "FaceBoxes/weights/FaceBoxesProd.pth",
        ),
        RegistryEntry(
            "param_mean_std_62d_120x120", "param_mean_std", "weights/param_mean_std_62d_120x120.pkl",
            "090d7150f77cb66c29ddae21e4508fbde59123dcd1dea7facc24a7ed06d1c795",
            f"{UPSTREAM}/configs/param_mean_std_62d_120x120.pkl", None, "mean/std de-normalizing the 62 outputs",
            "configs/param_mean_std_62d_120x120.pkl",
        ),
        RegistryEntry(
            "bfm_noneck_v3", "bfm", "bfm/bfm_noneck_v3.npz",
            "e9f94f99cfa350f1b2c9ac30caf19f6c886f7dc4817ad933ef4c2d156f732dd8",
            None, None, "dense 3DMM (38,365 vertices) as plain arrays; upstream ships it as configs/bfm_noneck_v3.pkl",
        ),
        RegistryEntry(
            "bfm_noneck_v3_pkl", "bfm", "bfm/bfm_noneck_v3.pkl", None,
            f"{UPSTREAM}/configs/bfm_noneck_v3.pkl", None, "upstream pickle of the dense 3DMM (converted at export)",
            "configs/bfm_noneck_v3.pkl",
        ),
        RegistryEntry(
            "tri_pkl", "bfm", "bfm/tri.pkl", None, f"{UPSTREAM}/configs/tri.pkl", None,
            "upstream mesh triangles of bfm_noneck_v3", "configs/tri.pkl",
        ),
    )
}


def lookup(name: str) -> RegistryEntry:
    if name not in REGISTRY:
        raise DataFileError(f"unknown checkpoint {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def find(name: str, explicit_path: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
         download: bool = False, upstream_dir: str | os.PathLike | None = None) -> ResolvedFile:
    """The file of registry entry ``name``, checked against its recorded sha256 wherever it was found.

    ``DataFileError`` saying where to put it (or to pass ``--download``) when it is nowhere to be found.
    """
    entry = lookup(name)
    what = f"{entry.kind} {name}"
    if explicit_path is not None:
        return ResolvedFile(name, Path(explicit_path), verify_sha256(explicit_path, entry.sha256, what), "explicit", bool(entry.sha256))
    places: list[tuple[Path, str]] = []
    if upstream_dir is not None:
        if not Path(upstream_dir).is_dir():
            raise DataFileError(f"--upstream {upstream_dir} is not a folder (expected a 3DDFA_V2 checkout)")
        if entry.upstream_path:
            places.append((Path(upstream_dir) / entry.upstream_path, "upstream checkout"))
    places += [(base / entry.relative_path, "data folder") for base in data_dir_candidates(data_dir)]
    cached = user_cache_dir() / entry.relative_path
    if all(p != cached for p, _ in places):
        places.append((cached, "download"))
    for path, origin in places:
        if path.is_file():
            return ResolvedFile(name, path, verify_sha256(path, entry.sha256, what), origin, bool(entry.sha256))
    if download:
        path, sha = _download(entry)
        return ResolvedFile(name, path, sha, "download", bool(entry.sha256))
    where = " or ".join(str(p) for p, _ in places)
    how = f", or pass --download to fetch {entry.url}" if entry.url else ""
    if entry.kind == "detector" and name != "faceboxes":
        how += ", or export with --detector faceboxes (3DDFA_V2's own detector, in its checkout)"
    raise DataFileError(f"{what} not found: put it at {where}{how}")


def resolve(name: str, explicit_path: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
            download: bool = False, upstream_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """``(path, sha256)`` of ``find``."""
    found = find(name, explicit_path, data_dir, download, upstream_dir)
    return found.path, found.sha256


def download_url(url: str) -> str:
    mirror = os.environ.get(MIRROR_ENV)
    if mirror and url.startswith(GITHUB + "/"):
        return mirror.rstrip("/") + url[len(GITHUB):]
    return url


def _download(entry: RegistryEntry) -> tuple[Path, str]:
    """Fetch into the user cache: to a temporary file, checked, then renamed (a failed download leaves nothing)."""
    if not entry.url:
        raise DataFileError(f"{entry.name} has no download URL; place the file by hand")
    url = download_url(entry.url)
    target = user_cache_dir() / entry.relative_path
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    except OSError as exc:
        raise DataFileError(f"cannot write the download cache {target.parent}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            shutil.copyfileobj(resp, out)
        actual = verify_sha256(tmp, entry.sha256, f"download of {entry.name} from {url}")
        os.replace(tmp, target)
        return target, actual
    except (OSError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise DataFileError(f"download of {url} failed: {reason}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def forget_download(found: ResolvedFile) -> None:
    """Remove a downloaded file that failed its content check, so the cache never serves it again."""
    if found.origin == "download" and found.path.is_file():
        found.path.unlink()
