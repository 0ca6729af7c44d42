"""Deployment targets as data: one TOML file per target in this folder, loaded into frozen dataclasses.

Unknown keys and unknown target names are errors that list what is valid; nothing is fuzzy-matched and
no setting the user asked for is changed silently.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from tddfa_edge.runtime.errors import TargetError

TARGET_DIR = Path(__file__).resolve().parent
PRECISIONS = ("fp32", "fp16", "int8", "int8-full")
FORMATS = ("onnx", "tflite")
BACKENDS = ("onnxruntime", "litert", "tflite-runtime")


@dataclass(frozen=True)
class ModelChoice:
    """Which variants of one network the bundle carries and which one the runtime uses by default."""

    default: str  # variant name "<format>-<precision>", e.g. "tflite-int8"
    variants: tuple[str, ...]
    input_size: tuple[int, int] | None = None  # detector only: fixed (width, height); None = dynamic

    def __post_init__(self):
        for v in self.variants:
            fmt, _, precision = v.partition("-")
            if fmt not in FORMATS or precision not in PRECISIONS:
                raise TargetError(f"invalid variant {v!r}: use <{'|'.join(FORMATS)}>-<{'|'.join(PRECISIONS)}>")
        if self.default not in self.variants:
            raise TargetError(f"default variant {self.default!r} is not among the variants {list(self.variants)}")


@dataclass(frozen=True)
class Pipeline:
    dense: bool = False  # ship the dense 3DMM basis (23 MB) in the bundle
    crop_interpolation: str = "linear_exact"
    detector_max_size: tuple[int, int] = (1080, 720)  # dynamic-shape detector: fit the frame inside (w, h)
    detect_interval: int = 0
    redetect_area: float = 2020.0
    smoothing: bool = True


@dataclass(frozen=True)
class Budgets:
    max_nme_drift: float  # headline AFLW2000-3D NME, quantized minus fp32
    max_nme_drift_full_integer: float
    max_landmark_drift_px: float  # mean 68-point displacement vs fp32 on the held-out calibration split (120 px crop)
    max_bundle_mb: float
    min_fps_image_mode: float | None = None  # on the board itself; None where not measured
    min_fps_tracking: float | None = None
    max_peak_rss_mb: float | None = None


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    arch: str
    cpu: str
    threads: int
    backends: tuple[str, ...]
    regressor: ModelChoice
    detector: ModelChoice
    pipeline: Pipeline
    budgets: Budgets
    notes: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise TargetError(f"{where}: expected a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise TargetError(f"{where}: unknown keys {unknown}; valid keys: {sorted(fields)}")
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in data]
    if missing:
        raise TargetError(f"{where}: missing keys {missing}")
    kwargs = {}
    for key, value in data.items():
        if isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def available_targets() -> list[str]:
    return sorted(p.stem for p in TARGET_DIR.glob("*.toml"))


def load_target(name_or_path: str) -> Target:
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        source = path
    else:
        source = TARGET_DIR / f"{name_or_path}.toml"
        if not source.is_file():
            raise TargetError(f"unknown target {name_or_path!r}; valid targets: {', '.join(available_targets())}")
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TargetError(f"cannot read target file {source}: {exc}") from None
    where = source.name
    sections = {"regressor": ModelChoice, "detector": ModelChoice, "pipeline": Pipeline, "budgets": Budgets}
    for key, cls in sections.items():
        if key in data:
            data[key] = _build(cls, data[key], f"{where} [{key}]")
    target = _build(Target, data, where)
    if target.name != source.stem and source.parent == TARGET_DIR:
        raise TargetError(f"{where}: name {target.name!r} does not match the file name")
    bad = [b for b in target.backends if b not in BACKENDS]
    if bad or not target.backends:
        raise TargetError(f"{where}: unknown backends {bad}; valid: {list(BACKENDS)}")
    if target.threads < 1:
        raise TargetError(f"{where}: threads must be >= 1")
    if target.pipeline.crop_interpolation not in ("linear", "linear_exact"):
        raise TargetError(f"{where}: crop_interpolation must be 'linear' or 'linear_exact'")
    return target
