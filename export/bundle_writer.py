"""Writing a bundle atomically: stage everything in a sibling folder, then swap it into place.

After a failure nothing half-written is left at the destination: either the previous bundle is still
there untouched, or the new one is complete with its manifest.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path

from tddfa_edge.runtime.bundle import MANIFEST
from tddfa_edge.runtime.data_files import sha256_file
from tddfa_edge.runtime.errors import ExportError


@contextmanager
def staging_folder(destination: Path):
    """Yield an empty folder beside ``destination``; on success, atomically replace ``destination`` with it."""
    destination = Path(destination).absolute()
    parent = destination.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{destination.name}.staging-", dir=parent))
    except OSError as exc:
        raise ExportError(f"output folder {parent} is not writable: {exc.strerror or exc}") from None
    try:
        yield stage
        os.chmod(stage, 0o755)
        if destination.exists():
            if not (destination / MANIFEST).is_file() and any(destination.iterdir()):
                raise ExportError(f"{destination} exists and is not a bundle; refusing to replace it")
            old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-", dir=parent))
            os.replace(destination, old / "bundle")
            os.replace(stage, destination)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, destination)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


# Install-time files: pip checks them (--require-hashes) and the manifest's "wheelhouse" section lists
# them with sha256; the runtime does not need them, so an image may delete them after installing.
INSTALL_ONLY = ("wheelhouse/", "requirements.txt")


def file_table(folder: Path) -> dict[str, dict]:
    """sha256 and size of every runtime file in ``folder`` (recursively), except the manifest itself."""
    table = {}
    for path in sorted(folder.rglob("*")):
        rel_posix = path.relative_to(folder).as_posix()
        if rel_posix.startswith(INSTALL_ONLY[0]) or rel_posix == INSTALL_ONLY[1]:
            continue
        if path.is_file() and path.name != MANIFEST:
            rel = path.relative_to(folder).as_posix()
            table[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return table


def write_manifest(folder: Path, manifest: dict) -> Path:
    manifest = dict(manifest)
    manifest["files"] = file_table(folder)
    path = folder / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def write_archive(folder: Path, archive: Path) -> Path:
    """A reproducible .tar.gz of the bundle (sorted members, zeroed times and owners)."""
    import gzip

    archive = Path(archive)
    fd, tmp = tempfile.mkstemp(dir=archive.parent, prefix=f".{archive.name}.", suffix=".part")
    os.close(fd)
    try:
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for path in sorted(folder.rglob("*")):
                    info = tar.gettarinfo(str(path), arcname=f"{folder.name}/{path.relative_to(folder).as_posix()}")
                    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                    info.mode = 0o755 if path.is_dir() else 0o644
                    if path.is_file():
                        with open(path, "rb") as fh:
                            tar.addfile(info, fh)
                    else:
                        tar.addfile(info)
        os.replace(tmp, archive)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return archive
