"""Writing a bundle atomically: stage everything in a sibling folder, then swap it into place.

After a failure nothing half-written is left at the destination: either the previous bundle is still
there untouched, or the new one is complete with its manifest.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path

from tddfa_edge.contracts.errors import OutputError, UsageError
from tddfa_edge.runtime.bundle import file_sha256
from tddfa_edge.runtime.manifest import MANIFEST, MANIFEST_DIGEST, MANIFEST_SIGNATURE, FileRecord, Manifest, digest_line


@contextmanager
def staging_folder(destination: Path):
    """Yield an empty folder beside ``destination``; on success, atomically replace ``destination`` with it."""
    destination = Path(destination).absolute()
    parent = destination.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{destination.name}.staging-", dir=parent))
    except OSError as exc:
        raise OutputError(f"output folder {parent} is not writable: {exc.strerror or exc}") from None
    try:
        yield stage
        os.chmod(stage, 0o755)
        if destination.exists():
            if not (destination / MANIFEST).is_file() and any(destination.iterdir()):
                raise UsageError(f"{destination} exists and is not a bundle; refusing to replace it")
            old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-", dir=parent))
            os.replace(destination, old / "bundle")
            os.replace(stage, destination)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, destination)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


# Install-time files: pip checks them (--require-hashes) and the runtime checks them when present; the runtime
# does not need them, so an image may delete them after installing.
INSTALL_ONLY = ("wheelhouse/", "requirements.txt")


def file_table(folder: Path) -> dict[str, FileRecord]:
    """sha256 and size of every file in ``folder`` (recursively), except the manifest and its digest."""
    table = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel not in (MANIFEST, MANIFEST_DIGEST, MANIFEST_SIGNATURE):
            install_only = rel.startswith(INSTALL_ONLY[0]) or rel == INSTALL_ONLY[1]
            table[rel] = FileRecord(file_sha256(path), path.stat().st_size, install_only)
    return table


def write_manifest(folder: Path, manifest: Manifest, signing_key: Path | None = None) -> str:
    """Write ``manifest.json``, ``manifest.json.sha256`` and, with a key, ``manifest.json.sig``; returns the manifest's
    sha256 (the bundle's identity)."""
    raw = manifest.to_json()
    (folder / MANIFEST).write_bytes(raw)
    identity = hashlib.sha256(raw).hexdigest()
    (folder / MANIFEST_DIGEST).write_bytes(digest_line(identity))
    if signing_key is not None:
        from tddfa_edge.runtime.signing import sign

        (folder / MANIFEST_SIGNATURE).write_bytes(sign(raw, signing_key))
    return identity


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
