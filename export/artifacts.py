"""What a converter produces, the context it works in, and the registry that maps variants to converters.

A converter is ``fn(ctx, role, folder) -> ModelArtifact``, registered for a (role, format, precision).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from tddfa_edge.runtime.errors import ExportError


@dataclass
class ModelArtifact:
    file: str  # name inside the bundle
    role: str
    format: str
    precision: str
    inputs: list[dict]
    outputs: list[dict]
    param_normalized: bool = True  # regressor output still needs * std + mean
    details: dict = field(default_factory=dict)  # quantization settings, op counts ...

    @property
    def variant(self) -> str:
        return f"{self.format}-{self.precision}"


@dataclass
class ExportContext:
    """Everything converters share; heavy pieces (torch modules, calibration data) are built once."""

    regressor: object  # torch module (MobileNetV1Regressor), eval mode
    detector: object  # torch module (FaceBoxesDetector), eval mode
    param_mean: np.ndarray
    param_std: np.ndarray
    detector_input_size: tuple[int, int] | None  # fixed (w, h) or None for dynamic
    data_dir: str | os.PathLike | None
    work_dir: Path  # scratch space, not part of the bundle
    seed: int = 0
    calibration_size: int = 800
    progress: bool = True
    _cache: dict = field(default_factory=dict)

    def cached(self, key: str, build: Callable[[], object]):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def calibration_crops(self) -> np.ndarray:
        from .calibration import calibration_crops

        return self.cached("calib", lambda: calibration_crops(self.data_dir, self.calibration_size))

    def holdout_crops(self) -> np.ndarray:
        from .calibration import holdout_crops

        return self.cached("holdout", lambda: holdout_crops(self.data_dir))

    def detector_frames(self) -> list[np.ndarray]:
        from .calibration import detector_calibration_frames

        size = self.detector_input_size or (640, 360)
        return self.cached(f"detframes{size}", lambda: detector_calibration_frames(self.data_dir, size=tuple(size), seed=self.seed))

    def fp32_onnx(self, role: str) -> Path:
        """The fp32 ONNX of a network in the scratch folder (quantizers start from it)."""
        from .onnx_export import export_detector_onnx, export_regressor_onnx

        path = self.work_dir / f"{role}.fp32.onnx"
        if not path.exists():
            if role == "regressor":
                export_regressor_onnx(self.regressor, path)
            else:
                export_detector_onnx(self.detector, path)
        return path


Converter = Callable[[ExportContext, str, Path], ModelArtifact]
CONVERTERS: dict[tuple[str, str, str], Converter] = {}


def register(role: str, fmt: str, precision: str):
    def wrap(fn: Converter) -> Converter:
        CONVERTERS[(role, fmt, precision)] = fn
        return fn

    return wrap


def converter_for(role: str, variant: str) -> Converter:
    # Importing the converter modules fills the registry.
    from . import onnx_converters  # noqa: F401

    try:
        from . import onnx_quantize  # noqa: F401
    except ImportError:
        pass
    try:
        from . import tflite_converters  # noqa: F401
    except ImportError:
        pass
    fmt, _, precision = variant.partition("-")
    key = (role, fmt, precision)
    if key not in CONVERTERS:
        known = sorted(f"{f}-{p}" for r, f, p in CONVERTERS if r == role)
        raise ExportError(f"no converter for {role} variant {variant!r}; available: {', '.join(known)}")
    return CONVERTERS[key]


def regressor_io(precision_dtype: str = "uint8", output_dtype: str = "float32", layout: str = "NHWC", quant_in=None, quant_out=None, norm=None, in_name="image", out_name="param_norm", batch="N") -> tuple[list[dict], list[dict]]:
    inputs = [{
        "name": in_name, "shape": [batch, 120, 120, 3], "dtype": precision_dtype, "layout": layout,
        "normalization": norm or {"mean": [0.0], "scale": [1.0]}, "quantization": quant_in,
        "description": "BGR crop; the graph itself applies (x - 127.5) / 128 unless normalization says otherwise",
    }]
    outputs = [{
        "name": out_name, "shape": [batch, 62], "dtype": output_dtype, "quantization": quant_out,
        "description": "62 3DMM parameters normalized by param_std/param_mean",
    }]
    return inputs, outputs


def check_file(path: Path) -> None:
    if not path.is_file() or path.stat().st_size == 0:
        raise ExportError(f"converter produced no file at {path}")
