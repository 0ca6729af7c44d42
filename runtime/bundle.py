"""Reading a bundle: ``manifest.json`` plus the files it lists, each checked against its sha256.

A bundle is what ``tddfa-export`` writes for one target. The runtime refuses a bundle whose files are
missing or fail their checksums, and warns once when the bundle was built for another machine type.
"""

from __future__ import annotations

import json
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path

from .data_files import sha256_file
from .errors import BundleError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
_warned_arch: set[str] = set()


class BundleMachineWarning(UserWarning):
    """The bundle was built for another machine type: it runs, but its speed budgets do not apply here."""


def normalize_arch(arch: str) -> str:
    arch = arch.lower()
    return {"arm64": "aarch64", "amd64": "x86_64", "x64": "x86_64", "armv8": "aarch64"}.get(arch, arch)


@dataclass(frozen=True)
class ModelEntry:
    key: str  # e.g. "regressor/onnx-int8"
    role: str  # "regressor" or "detector"
    variant: str  # e.g. "onnx-int8"
    format: str  # "onnx" or "tflite"
    precision: str
    path: Path
    raw: dict


class Bundle:
    def __init__(self, root: Path, manifest: dict) -> None:
        self.root = root
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> "Bundle":
        root = Path(path)
        manifest_path = root / MANIFEST
        if not root.is_dir():
            raise BundleError(f"bundle folder not found: {root}")
        if not manifest_path.is_file():
            raise BundleError(f"not a bundle: {manifest_path} is missing (create one with tddfa-export)")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"unreadable manifest {manifest_path}: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
            found = manifest.get("schema_version") if isinstance(manifest, dict) else None
            raise BundleError(f"{manifest_path}: schema version {found!r}, this runtime reads {SCHEMA_VERSION}")
        bundle = cls(root, manifest)
        if verify:
            bundle.verify()
        bundle.warn_if_other_machine()
        return bundle

    def verify(self) -> None:
        files = self.manifest.get("files")
        if not isinstance(files, dict) or not files:
            raise BundleError(f"{self.root / MANIFEST} lists no files")
        bad = []
        for name, meta in sorted(files.items()):
            path = self.root / name
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise BundleError(f"manifest names a file outside the bundle: {name}")
            if not path.is_file():
                bad.append(f"{name} missing")
            elif path.stat().st_size != meta.get("size"):
                bad.append(f"{name} has {path.stat().st_size} bytes, manifest says {meta.get('size')}")
            elif sha256_file(path) != meta.get("sha256"):
                bad.append(f"{name} fails its sha256")
        if bad:
            raise BundleError(f"bundle {self.root} refused: " + "; ".join(bad))

    @property
    def target(self) -> dict:
        return self.manifest.get("target", {})

    def warn_if_other_machine(self) -> None:
        built_for = normalize_arch(str(self.target.get("arch", "")))
        here = normalize_arch(platform.machine())
        key = f"{self.root}:{built_for}"
        if built_for and built_for != here and key not in _warned_arch:
            _warned_arch.add(key)
            warnings.warn(
                f"bundle {self.root.name} was built for {built_for} ({self.target.get('name', '?')}), "
                f"this machine is {here}: it runs, but its speed budgets do not hold here",
                BundleMachineWarning,
                stacklevel=3,
            )

    def file(self, name: str) -> Path:
        if name not in self.manifest.get("files", {}):
            raise BundleError(f"bundle {self.root} has no file {name!r}")
        return self.root / name

    def models(self, role: str | None = None) -> list[ModelEntry]:
        entries = []
        for key, raw in self.manifest.get("models", {}).items():
            if role is not None and raw.get("role") != role:
                continue
            entries.append(
                ModelEntry(
                    key=key,
                    role=raw["role"],
                    variant=raw["variant"],
                    format=raw["format"],
                    precision=raw["precision"],
                    path=self.root / raw["file"],
                    raw=raw,
                )
            )
        return entries

    def model(self, role: str, variant: str | None = None, backends: tuple[str, ...] | None = None) -> ModelEntry:
        """The named variant, else the default variant, else the first listed for an available backend."""
        from .backends import FORMAT_BACKENDS, backend_available

        entries = self.models(role)
        if not entries:
            raise BundleError(f"bundle {self.root} has no {role} model")
        by_variant = {e.variant: e for e in entries}
        if variant is not None:
            if variant not in by_variant:
                raise BundleError(f"bundle has no {role} variant {variant!r}; it has: {', '.join(sorted(by_variant))}")
            return by_variant[variant]
        order = list(backends or self.target.get("backends") or ("onnxruntime",))
        default = self.manifest.get("defaults", {}).get(role)
        candidates = ([by_variant[default]] if default in by_variant else []) + [e for e in entries if e.variant != default]
        for entry in candidates:
            usable = [b for b in order if b in FORMAT_BACKENDS.get(entry.format, ())]
            if any(backend_available(b) for b in usable):
                return entry
        raise BundleError(
            f"no installed backend can run any {role} model of this bundle (variants {', '.join(sorted(by_variant))}; "
            f"backends tried {', '.join(order)}): install tddfa-edge[tflite] or onnxruntime"
        )
