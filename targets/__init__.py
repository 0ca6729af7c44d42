"""Deployment targets as data: one TOML file per target in this folder, loaded into frozen dataclasses.

Unknown keys, missing keys, wrong types and unknown target names are errors that say what is valid;
nothing is fuzzy-matched and no setting the user asked for is changed silently.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tddfa_edge.contracts.errors import TargetError
from tddfa_edge.contracts.records import from_data

TARGET_DIR = Path(__file__).resolve().parent
PRECISIONS = ("fp32", "fp16", "int8", "int8-full")
FORMATS = ("onnx", "tflite")
BACKENDS = ("onnxruntime", "litert", "tflite-runtime")
DETECTORS = ("faceboxes", "yunet_n", "yunet_s")


def variant_parts(variant: str) -> tuple[str, str]:
    """``"tflite-int8-full"`` -> ``("tflite", "int8-full")``."""
    fmt, _, precision = variant.partition("-")
    return fmt, precision


@dataclass(frozen=True)
class ModelChoice:
    """Which variants of one network the bundle carries and which one the runtime uses by default."""

    default: str  # variant name "<format>-<precision>", e.g. "tflite-int8"
    variants: tuple[str, ...]
    architecture: str | None = None  # detector: "faceboxes", "yunet_n" or "yunet_s"
    input_size: tuple[int, int] | None = None  # detector only: fixed (width, height); None = dynamic

    def __post_init__(self):
        for v in self.variants:
            fmt, precision = variant_parts(v)
            if fmt not in FORMATS or precision not in PRECISIONS:
                raise ValueError(f"invalid variant {v!r}: use <{'|'.join(FORMATS)}>-<{'|'.join(PRECISIONS)}>")
        if self.default not in self.variants:
            raise ValueError(f"default variant {self.default!r} is not among the variants {list(self.variants)}")
        if self.architecture is not None and self.architecture not in DETECTORS:
            raise ValueError(f"unknown detector architecture {self.architecture!r}; valid: {', '.join(DETECTORS)}")
        if self.input_size is not None and min(self.input_size) < 32:
            raise ValueError(f"input_size {list(self.input_size)} is too small (at least 32 x 32)")
        if self.architecture and self.architecture.startswith("yunet") and self.input_size and any(v % 32 for v in self.input_size):
            raise ValueError(f"input_size {list(self.input_size)}: YuNet needs multiples of 32 (its coarsest stride)")

    def precisions(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(variant_parts(v)[1] for v in self.variants))


@dataclass(frozen=True)
class Pipeline:
    dense: bool = False  # ship the dense 3DMM basis (23 MB) in the bundle
    crop_interpolation: Literal["linear", "linear_exact"] = "linear_exact"
    detector_max_size: tuple[int, int] = (1080, 720)  # dynamic-shape detector: fit the frame inside (w, h)
    refine_detections: bool = False  # one more regression from the landmarks of every detection (landmark crop)
    max_faces: int = 64  # per frame: bounds time and output on crowded frames
    detect_interval: int = 0
    redetect_area: float = 2020.0
    smoothing: bool = True

    def __post_init__(self):
        if self.max_faces < 1 or self.detect_interval < 0:
            raise ValueError("max_faces must be >= 1 and detect_interval >= 0")


@dataclass(frozen=True)
class Budgets:
    max_nme_drift: float  # headline AFLW2000-3D NME, quantized minus fp32
    max_nme_drift_full_integer: float
    max_landmark_drift_px: float  # mean 68-point displacement vs fp32 on the held-out calibration split (120 px crop)
    max_bundle_mb: float
    min_fps_image_mode: float | None = None  # on the board itself; None where not measured
    min_fps_tracking: float | None = None
    max_peak_rss_mb: float | None = None
    # Face-size recall of the default detector per face-width bin from 24 px (24-32, 32-48, 48-64, 64-96, 96-160,
    # 160-320): the original pipeline's (FaceBoxes fp32 at 1080x607) on the same frames, measured by tddfa-bench.
    min_face_recall: tuple[float, ...] | None = None
    max_end_to_end_drift: float | None = None  # end-to-end NME on the photos, default pipeline minus the fp32 one


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    arch: Literal["x86_64", "aarch64"]
    cpu: str
    threads: int
    backends: tuple[Literal["onnxruntime", "litert", "tflite-runtime"], ...]
    regressor: ModelChoice
    detector: ModelChoice
    pipeline: Pipeline
    budgets: Budgets
    notes: str = ""

    def __post_init__(self):
        if not self.backends:
            raise ValueError("backends: at least one")
        if self.threads < 1:
            raise ValueError("threads must be >= 1")
        if self.detector.architecture is None:
            raise ValueError("[detector] architecture is required (faceboxes, yunet_n or yunet_s)")

    def precisions(self) -> tuple[str, ...]:
        """Every precision some variant of this target has, in the order the files list them."""
        return tuple(dict.fromkeys(self.regressor.precisions() + self.detector.precisions()))


def available_targets() -> list[str]:
    return sorted(p.stem for p in TARGET_DIR.glob("*.toml"))


def load_target(name_or_path: str) -> Target:
    """A shipped target by name, or a TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        source = path
    else:
        source = TARGET_DIR / f"{name_or_path}.toml"
        if not source.is_file() or path.suffix == ".toml":
            raise TargetError(f"unknown target {name_or_path!r}; valid targets: {', '.join(available_targets())} or a .toml path")
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TargetError(f"cannot read target file {source}: {exc}") from None
    target = from_data(Target, data, source.name, TargetError)
    if target.name != source.stem and source.parent == TARGET_DIR:
        raise TargetError(f"{source.name}: name {target.name!r} does not match the file name")
    return target


__all__ = ["Target", "ModelChoice", "Pipeline", "Budgets", "load_target", "available_targets", "variant_parts",
           "PRECISIONS", "FORMATS", "BACKENDS", "DETECTORS", "TARGET_DIR"]
