"""The bundle manifest: one versioned, typed schema that ``tddfa-export`` writes and the runtime reads.

``manifest.json`` is ``to_data(Manifest)`` as sorted, indented JSON. Reading it back goes through
``contracts.records.from_data``: an unknown, missing or mistyped field is refused with its name. The file's
own sha256 is the bundle's identity: it is written beside it as ``manifest.json.sha256`` (``sha256sum``
format), printed by the exporter, can be pinned by the user (``--bundle-sha256``) and signed
(``manifest.json.sig``). Every other file of the bundle is listed in ``files`` with its sha256, so every byte
that can change a result is covered by a hash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from tddfa_edge.contracts.errors import BundleError
from tddfa_edge.contracts.records import from_data, to_data
from tddfa_edge.targets import Target

SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.json.sha256"
MANIFEST_SIGNATURE = "manifest.json.sig"

Role = Literal["regressor", "detector"]
Format = Literal["onnx", "tflite"]
Precision = Literal["fp32", "fp16", "int8", "int8-full"]
DType = Literal["uint8", "int8", "float32"]
Interpolation = Literal["linear", "linear_exact"]


@dataclass(frozen=True)
class Normalization:
    """What the runtime applies to uint8 pixels before the model: ``(pixel - mean) * scale`` (per channel or one value)."""

    mean: tuple[float, ...] = (0.0,)
    scale: tuple[float, ...] = (1.0,)


@dataclass(frozen=True)
class Quantization:
    """``real = (q - zero_point) * scale``: one value, or one per element along ``axis`` (e.g. the 62 parameters)."""

    scale: float | tuple[float, ...]
    zero_point: int | tuple[int, ...]
    axis: int | None = None


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: how to build it from uint8 BGR pixels, or how to read it back as floats."""

    name: str
    shape: tuple[int | str, ...]
    dtype: DType
    layout: Literal["NHWC", "NCHW"] | None = None
    normalization: Normalization | None = None
    quantization: Quantization | None = None
    description: str = ""


@dataclass(frozen=True)
class Verification:
    """The export-time check of an artifact against the PyTorch fp32 reference (deterministic on one machine)."""

    reference: str
    data: str
    tolerance: str
    passed: bool
    measures: dict[str, float | int | None]


@dataclass(frozen=True)
class ModelRecord:
    role: Role
    variant: str  # "<format>-<precision>"
    format: Format
    precision: Precision
    architecture: str  # "mobilenet_v1_x0.5", "faceboxes", "yunet_n" ...
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    param_normalized: bool | None  # regressor: the output still needs * param_std + param_mean
    details: dict  # converter facts (quantization settings, op counts): informational, free-form
    verification: Verification


@dataclass(frozen=True)
class Defaults:
    regressor: str
    detector: str


@dataclass(frozen=True)
class MorphableModelRecord:
    landmarks: str  # npz with the 68-point rows of the basis
    dense: str | None  # npz with the dense basis and triangles, when the target ships it
    param_mean: tuple[float, ...]
    param_std: tuple[float, ...]
    licence: str  # the BFM notice file
    vertices: int

    def __post_init__(self):
        if len(self.param_mean) != 62 or len(self.param_std) != 62:
            raise ValueError("param_mean and param_std need 62 values")


@dataclass(frozen=True)
class DetectorSettings:
    """How frames are fed to the detector and how its output becomes boxes."""

    architecture: Literal["faceboxes", "yunet"]
    input_size: tuple[int, int] | None  # fixed (w, h): letterboxed into it; None: dynamic shape, fit into max_size
    max_size: tuple[int, int]  # (w, h) a dynamic-shape detector's input is fitted into (never upscaled)
    interpolation: Interpolation
    score_threshold: float
    nms_threshold: float
    max_faces: int  # per frame, after NMS: bounds time and output on crowded frames


@dataclass(frozen=True)
class PipelineSettings:
    detector: DetectorSettings
    crop_interpolation: Interpolation
    refine_detections: bool  # one more regression from the first landmarks on every detection (landmark crop)
    redetect_area: float  # a landmark crop smaller than this (px^2) means the track is lost
    detect_interval: int  # 0: detect only when lost; N: also every N frames
    smoothing: bool  # One Euro smoothing of tracked landmarks and pose by default
    max_batch: int  # crops per regressor call


@dataclass(frozen=True)
class SourceRecord:
    name: str
    file: str
    sha256: str


@dataclass(frozen=True)
class CalibrationRecord:
    source: str
    inputs_sha256: str  # digest of the calibration inputs in the order used
    regressor_crops: int
    holdout_crops: int
    detector_frames: int
    seed: int


@dataclass(frozen=True)
class WheelhouseRecord:
    python: str
    arch: str
    requirements: str
    pins: tuple[str, ...]
    install: str


@dataclass(frozen=True)
class FileRecord:
    sha256: str
    size: int
    install_only: bool  # wheelhouse and requirements.txt: checked when present, an image may delete them after installing


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    toolkit_version: str
    target: Target  # the target as exported (variants resolved)
    models: dict[str, ModelRecord]  # "<role>/<variant>"
    defaults: Defaults
    morphable_model: MorphableModelRecord
    pipeline: PipelineSettings
    sources: dict[str, SourceRecord]
    calibration: CalibrationRecord | None
    wheelhouse: WheelhouseRecord | None
    files: dict[str, FileRecord]

    def __post_init__(self):
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"schema version {self.schema_version}, this runtime reads {SCHEMA_VERSION}")
        for key, model in self.models.items():
            if key != f"{model.role}/{model.variant}" or model.variant != f"{model.format}-{model.precision}":
                raise ValueError(f"models.{key}: key, role, format and precision disagree")
        for role in ("regressor", "detector"):
            if f"{role}/{getattr(self.defaults, role)}" not in self.models:
                raise ValueError(f"defaults.{role}: {getattr(self.defaults, role)!r} is not among the models")
        # Every file the runtime reads must be covered by a hash: a model outside the table is never loaded.
        named = [m.file for m in self.models.values()] + [self.morphable_model.landmarks, self.morphable_model.licence]
        if self.morphable_model.dense:
            named.append(self.morphable_model.dense)
        unlisted = sorted({n for n in named if n not in self.files or self.files[n].install_only})
        if unlisted:
            raise ValueError(f"files: {', '.join(unlisted)} named by the manifest but not listed with a sha256")

    def models_of(self, role: str) -> list[ModelRecord]:
        return [m for m in self.models.values() if m.role == role]

    def to_json(self) -> bytes:
        return (json.dumps(to_data(self), indent=2, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes, where: str = MANIFEST) -> "Manifest":
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{where}: not valid JSON ({exc})") from None
        if isinstance(data, dict) and data.get("schema_version") != SCHEMA_VERSION:
            raise BundleError(f"{where}: schema version {data.get('schema_version')!r}, this runtime reads {SCHEMA_VERSION} "
                              "(re-export the bundle with this toolkit version)")
        return from_data(cls, data, where, BundleError)


def digest_line(sha256: str) -> bytes:
    """The content of ``manifest.json.sha256`` (``sha256sum -c`` reads it)."""
    return f"{sha256}  {MANIFEST}\n".encode("ascii")


__all__ = [
    "SCHEMA_VERSION", "MANIFEST", "MANIFEST_DIGEST", "MANIFEST_SIGNATURE", "Manifest", "ModelRecord", "TensorSpec",
    "Normalization", "Quantization", "Verification", "Defaults", "MorphableModelRecord", "DetectorSettings",
    "PipelineSettings", "SourceRecord", "CalibrationRecord", "WheelhouseRecord", "FileRecord", "digest_line",
]
