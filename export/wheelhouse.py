"""A wheelhouse inside the bundle, so a firmware image builder can install the runtime offline.

    pip install --no-index --find-links BUNDLE/wheelhouse -r BUNDLE/requirements.txt

The runtime's dependencies are pinned to the versions that verified this bundle on the exporting
machine, downloaded as CPython 3.11 manylinux wheels for the target's architecture, next to this
toolkit's own wheel. ``requirements.txt`` carries ``--hash`` lines, and the manifest lists every wheel
with its sha256 like any other bundle file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tddfa_edge.contracts.errors import ExportError
from tddfa_edge.runtime.bundle import file_sha256, normalize_arch
from tddfa_edge.runtime.manifest import WheelhouseRecord

# Debian bookworm / Raspberry Pi OS 12 ship glibc 2.36; pip matches only the exact tags it is given.
_GLIBC_MINORS = range(17, 37)
PYTHON_VERSION = "3.11"
_BASE = ("numpy", "opencv-python-headless", "click")


def runtime_requirements(backends: tuple[str, ...]) -> list[str]:
    """Pinned requirement lines (``name==version``) for the runtime with the target's backends."""
    names = list(_BASE)
    names.append("onnxruntime")  # a base dependency of tddfa-edge, and the fallback backend
    if "litert" in backends:
        names.append("ai-edge-litert")
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            raise ExportError(f"--wheelhouse pins the versions installed here, but {name} is not installed") from None
    return pins


def platform_tags(arch: str) -> list[str]:
    arch = normalize_arch(arch)
    if arch not in ("aarch64", "x86_64"):
        raise ExportError(f"--wheelhouse supports aarch64 and x86_64 targets, not {arch}")
    return ["manylinux2014_" + arch] + [f"manylinux_2_{m}_{arch}" for m in _GLIBC_MINORS]


def source_tree() -> Path:
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise ExportError("--wheelhouse builds this toolkit's own wheel and needs its source tree (pyproject.toml not found)")
    return root


def _pip(args: list[str], what: str) -> None:
    env = dict(os.environ, SOURCE_DATE_EPOCH="315532800", PIP_DISABLE_PIP_VERSION_CHECK="1")
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        raise ExportError(f"{what} failed: {tail[-1] if tail else 'pip exited ' + str(proc.returncode)}")


def build_wheelhouse(folder: Path, arch: str, backends: tuple[str, ...]) -> WheelhouseRecord:
    """Fill ``folder/wheelhouse`` and write ``folder/requirements.txt``; returns the manifest's section."""
    wheels = folder / "wheelhouse"
    wheels.mkdir(parents=True, exist_ok=True)
    pins = runtime_requirements(backends)
    args = ["download", "--quiet", "--only-binary=:all:", "--no-deps", "--dest", str(wheels),
            "--python-version", PYTHON_VERSION, "--implementation", "cp", "--abi", "cp311"]
    for tag in platform_tags(arch):
        args += ["--platform", tag]
    _pip(args + pins, f"downloading {arch} wheels for {', '.join(pins)}")
    # Dependencies of the pinned packages (e.g. flatbuffers, protobuf for the backends), resolved for the target.
    resolve_args = [a for a in args if a != "--no-deps"]
    _pip(resolve_args + pins, f"resolving dependencies of {', '.join(pins)} for {arch}")
    _pip(["wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(wheels), str(source_tree())],
         "building the tddfa-edge wheel")
    lines = ["# Offline install: pip install --no-index --find-links wheelhouse -r requirements.txt"]
    for whl in sorted(wheels.glob("*.whl")):
        name = whl.name.split("-")[0].replace("_", "-").lower()
        lines.append(f"{name}=={whl.name.split('-')[1]} --hash=sha256:{file_sha256(whl)}")
    (folder / "requirements.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # The wheels and requirements.txt themselves are listed in the manifest's files table (install_only).
    return WheelhouseRecord(python=f"cp{PYTHON_VERSION.replace('.', '')}", arch=normalize_arch(arch), requirements="requirements.txt",
                            pins=tuple(pins), install="pip install --no-index --find-links wheelhouse -r requirements.txt")
