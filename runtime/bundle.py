"""Reading a bundle: ``manifest.json``, its digest, and the files it lists, each checked against its sha256.

A bundle is what ``tddfa-export`` writes for one target. ``Bundle.open`` refuses it, with one line naming
the file, when the manifest does not match ``manifest.json.sha256`` or the sha256 the caller pinned, when the
manifest does not fit the schema, or when a listed file is missing or differs in one byte. The manifest's
sha256 is the bundle's identity (``bundle.identity``).
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path
from typing import Sequence

from tddfa_edge.contracts.errors import BackendUnavailableError, BundleError

from .backends import LoadedModel, backend_available, backends_for, install_hint
from .manifest import MANIFEST, MANIFEST_DIGEST, MANIFEST_SIGNATURE, Manifest, ModelRecord

_ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64", "x64": "x86_64", "armv8": "aarch64", "armv8l": "aarch64"}


def normalize_arch(arch: str) -> str:
    """``platform.machine()`` spellings -> the names targets use (``x86_64``, ``aarch64``)."""
    arch = arch.lower()
    return _ARCH_ALIASES.get(arch, arch)


def file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class Bundle:
    def __init__(self, root: Path, manifest: Manifest, identity: str) -> None:
        self.root = root
        self.manifest = manifest
        self.identity = identity  # sha256 of manifest.json

    @classmethod
    def open(cls, path: str | Path, verify: bool = True, expected_sha256: str | None = None,
             trusted_keys: Sequence[str | os.PathLike] | None = None) -> "Bundle":
        """Read and check a bundle. ``expected_sha256``: refuse it unless its manifest has exactly this sha256.
        ``trusted_keys``: Ed25519 public key files; refuse it unless ``manifest.json.sig`` verifies with one of them.

        ``verify=False`` skips only the files' sha256 (for a second view of a bundle already verified in this
        process); the manifest digest and schema are always checked.
        """
        root = Path(path)
        if not root.is_dir():
            raise BundleError(f"bundle folder not found: {root}")
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"not a bundle: {manifest_path} is missing (create one with tddfa-export)")
        try:
            raw = manifest_path.read_bytes()
            digest_text = (root / MANIFEST_DIGEST).read_bytes()
        except FileNotFoundError:
            raise BundleError(f"bundle {root} refused: {MANIFEST_DIGEST} is missing") from None
        except OSError as exc:
            raise BundleError(f"bundle {root} refused: cannot read its manifest: {exc.strerror or exc}") from None
        identity = hashlib.sha256(raw).hexdigest()
        if digest_text != f"{identity}  {MANIFEST}\n".encode():
            raise BundleError(f"bundle {root} refused: {MANIFEST} does not match {MANIFEST_DIGEST} (altered or incomplete)")
        if expected_sha256 is not None and identity != expected_sha256.strip().lower():
            raise BundleError(f"bundle {root} refused: its manifest sha256 is {identity}, expected {expected_sha256.strip().lower()}")
        if trusted_keys:
            from .signing import check_signature

            check_signature(root, raw, root / MANIFEST_SIGNATURE, trusted_keys)
        bundle = cls(root, Manifest.from_json(raw, f"{root.name}/{MANIFEST}"), identity)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        """Every listed file present (install-only ones may be absent) with its size and sha256."""
        bad = []
        for name, record in sorted(self.manifest.files.items()):
            rel = Path(name)
            if rel.is_absolute() or ".." in rel.parts or name in (MANIFEST, MANIFEST_DIGEST, MANIFEST_SIGNATURE):
                raise BundleError(f"bundle {self.root} refused: manifest lists an invalid file name {name!r}")
            path = self.root / rel
            if not path.is_file():
                if not record.install_only:
                    bad.append(f"{name} missing")
            elif path.stat().st_size != record.size:
                bad.append(f"{name} has {path.stat().st_size} bytes, manifest says {record.size}")
            elif file_sha256(path) != record.sha256:
                bad.append(f"{name} fails its sha256")
        if bad:
            raise BundleError(f"bundle {self.root} refused: " + "; ".join(bad))

    @property
    def target(self):
        return self.manifest.target

    @property
    def built_for_this_machine(self) -> bool:
        return normalize_arch(self.target.arch) == normalize_arch(platform.machine())

    def file(self, name: str) -> Path:
        record = self.manifest.files.get(name)
        if record is None or record.install_only:
            raise BundleError(f"bundle {self.root} has no file {name!r}")
        return self.root / name

    def select(self, role: str, variant: str | None = None, backends: tuple[str, ...] | None = None,
               fallback: bool = False) -> tuple[ModelRecord, str]:
        """The model to run for ``role`` and the backend to run it with.

        ``variant`` None means the bundle's default. When no installed backend can run the chosen variant this
        is a ``BackendUnavailableError`` naming what to install, unless ``fallback`` is asked for: then the first
        variant (in the bundle's order) that an installed backend can run is used instead.
        """
        records = self.manifest.models_of(role)
        by_variant = {m.variant: m for m in records}
        if not records:
            raise BundleError(f"bundle {self.root} has no {role} model")
        if variant is not None and variant not in by_variant:
            raise BundleError(f"bundle has no {role} variant {variant!r}; it has: {', '.join(by_variant)}")
        order = tuple(backends or self.target.backends)
        chosen = by_variant[variant or getattr(self.manifest.defaults, role)]
        candidates = [chosen] + ([m for m in records if m is not chosen] if fallback and variant is None else [])
        for record in candidates:
            usable = [b for b in order if b in backends_for(record.format)] or list(backends_for(record.format))
            for backend in usable:
                if backend_available(backend):
                    return record, backend
        what = "default " if variant is None else ""
        hint = "" if variant is not None or len(records) == 1 else " (or allow a fallback to another variant: --allow-fallback)"
        raise BackendUnavailableError(
            f"the bundle's {what}{role} {chosen.variant} needs {' or '.join(backends_for(chosen.format))}: {install_hint(chosen.format)}{hint}")

    def load(self, role: str, variant: str | None = None, backends: tuple[str, ...] | None = None, threads: int | None = None,
             fallback: bool = False) -> LoadedModel:
        record, backend = self.select(role, variant, backends, fallback)
        return LoadedModel.open(self.root, record, backend, threads or self.target.threads)


__all__ = ["Bundle", "normalize_arch", "file_sha256"]
