"""What a converter produces, the context it works in, and the registry that maps variants to converters.

A converter is ``fn(ctx, role, folder) -> ModelArtifact``, registered for a (network, format, precision);
the network is ``"regressor"`` or the detector's architecture family (``"faceboxes"``, ``"yunet"``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from tddfa_edge.contracts.errors import ExportError
from tddfa_edge.contracts.records import from_data, to_data
from tddfa_edge.runtime.manifest import ModelRecord, Verification


@dataclass
class ModelArtifact:
    file: str  # name inside the bundle
    role: str
    format: str
    precision: str
    inputs: list[dict]  # tensor specs as plain data (see ``model_io``); typed by ``record``
    outputs: list[dict]
    param_normalized: bool = True  # regressor output still needs * std + mean
    details: dict = field(default_factory=dict)  # quantization settings, op counts ...
    architecture: str = ""  # filled in by the exporter from the network it converted

    @property
    def variant(self) -> str:
        return f"{self.format}-{self.precision}"

    def record(self, verification: Verification) -> ModelRecord:
        """The manifest record; a spec that does not fit the schema is the converter's bug, reported by field."""
        data = {
            "role": self.role, "variant": self.variant, "format": self.format, "precision": self.precision,
            "architecture": self.architecture, "file": self.file, "inputs": self.inputs, "outputs": self.outputs,
            "param_normalized": self.param_normalized if self.role == "regressor" else None,
            "details": self.details, "verification": to_data(verification),
        }
        return from_data(ModelRecord, json.loads(json.dumps(data)), f"{self.role}/{self.variant}", ExportError)


@dataclass
class ExportContext:
    """Everything converters share; heavy pieces (torch modules, calibration data) are built once."""

    regressor: object  # torch module (MobileNetV1Regressor), eval mode
    detector: object  # torch module (FaceBoxesDetector or YuNet), eval mode
    detector_architecture: str  # "faceboxes", "yunet_n", "yunet_s"
    param_mean: np.ndarray
    param_std: np.ndarray
    detector_input_size: tuple[int, int] | None  # fixed (w, h) or None for dynamic
    data_dir: str | os.PathLike | None
    work_dir: Path  # scratch space, not part of the bundle
    seed: int = 0
    calibration_size: int = 800
    user_calibration: object | None = None  # ``user_calibration.UserCalibration`` (--calibration), else the curated set
    _cache: dict = field(default_factory=dict)

    def cached(self, key: str, build: Callable[[], object]):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def calibration_crops(self) -> np.ndarray:
        from .calibration import calibration_crops

        if self.user_calibration is not None:
            return self.user_calibration.calibration_crops(self.calibration_size)
        return self.cached("calib", lambda: calibration_crops(self.data_dir, self.calibration_size))

    def holdout_crops(self) -> np.ndarray:
        from .calibration import holdout_crops

        if self.user_calibration is not None:
            return self.user_calibration.holdout_crops()
        return self.cached("holdout", lambda: holdout_crops(self.data_dir))

    def detector_frames(self) -> list[np.ndarray]:
        from .calibration import detector_calibration_frames

        # A dynamic-shape detector calibrates at a typical size; YuNet's sides must be multiples of 32.
        size = self.detector_input_size or ((640, 384) if self.detector_architecture.startswith("yunet") else (640, 360))
        if self.user_calibration is not None:
            return self.cached(f"detframes{size}", lambda: self.user_calibration.detector_frames(tuple(size)))
        return self.cached(f"detframes{size}", lambda: detector_calibration_frames(self.data_dir, size=tuple(size), seed=self.seed))

    @property
    def detector_family(self) -> str:
        return network_of("detector", self.detector_architecture)

    def prepared_detector(self, pixel_qmax: int = 127):
        """(module, facts): the detector as the int8 converters start from it: BN folded, YuNet equalized, every
        quantized convolution's weights on their int8 grid (``detector_prep``); ``pixel_qmax`` for the pixel conv."""
        from .detector_prep import prepare_detector

        return self.cached(f"prepared-detector{pixel_qmax}", lambda: prepare_detector(
            self.detector, self.detector_family, np.stack(self.detector_frames()), pixel_qmax))

    def prepared_onnx(self, pixel_qmax: int = 127) -> Path:
        """The fp32 ONNX of ``prepared_detector(pixel_qmax)`` in the scratch folder (the ONNX int8 converters start from it)."""
        from .onnx_export import export_detector_onnx

        path = self.work_dir / f"detector.prepared{pixel_qmax}.fp32.onnx"
        if not path.exists():
            export_detector_onnx(self.prepared_detector(pixel_qmax)[0], path, family=self.detector_family)
        return path

    def detector_check_frames(self) -> list[tuple[str, np.ndarray]]:
        """(key, frame) pairs the exporter checks converted detectors on: the reference photos of the data folder, or
        held-out photos of the user's calibration source."""
        from tddfa_edge.datasets.reference import reference_photos

        if self.user_calibration is not None:
            return self.user_calibration.check_frames()
        return self.cached("detector-check-frames", lambda: reference_photos(self.data_dir))

    def fp32_onnx(self, role: str) -> Path:
        """The fp32 ONNX of a network in the scratch folder (quantizers start from it)."""
        from .onnx_export import export_detector_onnx, export_regressor_onnx

        path = self.work_dir / f"{role}.fp32.onnx"
        if not path.exists():
            if role == "regressor":
                export_regressor_onnx(self.regressor, path)
            else:
                export_detector_onnx(self.detector, path, family=network_of("detector", self.detector_architecture))
        return path


Converter = Callable[[ExportContext, str, Path], ModelArtifact]
CONVERTERS: dict[tuple[str, str, str], Converter] = {}
NETWORKS = {"regressor": "regressor", "faceboxes": "detector", "yunet": "detector"}


def register(network: str, fmt: str, precision: str):
    """Register a converter for ``network`` ("regressor" or a detector family: "faceboxes", "yunet")."""
    def wrap(fn: Converter) -> Converter:
        CONVERTERS[(network, fmt, precision)] = fn
        return fn

    return wrap


def network_of(role: str, detector_architecture: str) -> str:
    """The converter family of a role: the regressor, or the detector's family (yunet_n and yunet_s are "yunet")."""
    return "regressor" if role == "regressor" else detector_architecture.split("_")[0]


def converter_for(network: str, variant: str) -> Converter:
    # Importing the converter modules fills the registry.
    from . import onnx_converters, onnx_quantize, tflite_converters  # noqa: F401

    fmt, _, precision = variant.partition("-")
    if (network, fmt, precision) not in CONVERTERS:
        known = sorted(f"{f}-{p}" for n, f, p in CONVERTERS if n == network)
        raise ExportError(f"no converter for {network} variant {variant!r}; available: {', '.join(known)}")
    return CONVERTERS[(network, fmt, precision)]


def check_file(path: Path) -> None:
    if not path.is_file() or path.stat().st_size == 0:
        raise ExportError(f"converter produced no file at {path}")
