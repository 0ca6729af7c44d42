"""Inference backends, found by name and imported only when asked for.

``onnxruntime`` runs ``.onnx`` files; ``litert`` (ai-edge-litert) and ``tflite-runtime`` (legacy) run
``.tflite`` files. Every session takes and returns numpy arrays in the model's own dtype and layout;
``ModelIO`` (from the bundle manifest) says how to build the input from uint8 BGR pixels and how to
turn the output back into floats.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BackendUnavailableError, BundleError

BACKENDS = ("onnxruntime", "litert", "tflite-runtime")
FORMAT_BACKENDS = {"onnx": ("onnxruntime",), "tflite": ("litert", "tflite-runtime")}
_INSTALL_HINT = {
    "onnxruntime": "pip install tddfa-edge (the base install includes onnxruntime)",
    "litert": "pip install 'tddfa-edge[tflite]' (ai-edge-litert)",
    "tflite-runtime": "pip install tflite-runtime (legacy, needs numpy<2)",
}


def backend_available(name: str) -> bool:
    module = {"onnxruntime": "onnxruntime", "litert": "ai_edge_litert.interpreter", "tflite-runtime": "tflite_runtime.interpreter"}[name]
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the manifest describes it.

    Input: ``model_input = cast((pixel - mean) * scale)`` then laid out as ``layout``; a quantized integer
    input additionally applies ``q = round(x / quant_scale) + quant_zero_point``. Output: dequantized with
    ``(q - zero_point) * scale`` when quantized, then ``* denorm_std + denorm_mean`` when given.
    """

    name: str
    shape: tuple
    dtype: str
    layout: str = "NHWC"
    mean: tuple = (0.0,)
    scale: tuple = (1.0,)
    # Per-tensor scalars, or per-element lists along the last axis (int8-full regressors quantize each of
    # the 62 parameters on its own grid).
    quant_scale: float | tuple | None = None
    quant_zero_point: int | tuple | None = None

    @classmethod
    def from_manifest(cls, entry: dict) -> "TensorSpec":
        quant = entry.get("quantization") or {}
        norm = entry.get("normalization") or {}
        return cls(
            name=entry["name"],
            shape=tuple(entry["shape"]),
            dtype=entry["dtype"],
            layout=entry.get("layout", "NHWC"),
            mean=tuple(norm.get("mean", (0.0,))),
            scale=tuple(norm.get("scale", (1.0,))),
            quant_scale=_scalar_or_tuple(quant.get("scale")),
            quant_zero_point=_scalar_or_tuple(quant.get("zero_point")),
        )


def _scalar_or_tuple(value):
    return tuple(value) if isinstance(value, list) else value


def build_input(pixels_nhwc: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """uint8 BGR pixels (N, H, W, 3) -> the array the model takes."""
    if spec.dtype == "uint8" and spec.mean == (0.0,) and spec.scale == (1.0,) and spec.quant_scale is None:
        x = pixels_nhwc
    elif spec.dtype == "int8" and spec.mean == (128.0,) and spec.scale == (1.0,) and spec.quant_scale is None:
        x = (pixels_nhwc ^ np.uint8(0x80)).view(np.int8)  # pixel - 128 without a float round trip
    else:
        x = (pixels_nhwc.astype(np.float32) - np.asarray(spec.mean, np.float32)) * np.asarray(spec.scale, np.float32)
        if spec.quant_scale is not None:
            x = np.round(x / np.asarray(spec.quant_scale, np.float32)) + np.asarray(spec.quant_zero_point, np.float32)
        if spec.dtype != "float32":
            info = np.iinfo(spec.dtype)
            x = np.clip(np.round(x), info.min, info.max)
        x = x.astype(spec.dtype)
    if spec.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x)


def read_output(raw: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.quant_scale is not None:
        return (raw.astype(np.float32) - np.asarray(spec.quant_zero_point, np.float32)) * np.asarray(spec.quant_scale, np.float32)
    return raw.astype(np.float32, copy=False)


class Session:
    """A loaded model: ``run(array) -> list of arrays`` in the model's own dtypes."""

    backend: str
    input_name: str
    output_names: list[str]

    def run(self, x: np.ndarray) -> list[np.ndarray]:  # pragma: no cover - interface
        raise NotImplementedError


class OnnxSession(Session):
    backend = "onnxruntime"

    def __init__(self, path: Path, threads: int) -> None:
        ort = _import_backend("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # ALL is needed to fuse QDQ pairs into integer kernels; below EXTENDED int8 runs ~5x slower.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads <= 1:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(f"onnxruntime cannot load {path.name}: {str(exc).splitlines()[0]}") from None
        self.input_name = self._session.get_inputs()[0].name
        self.output_names = [o.name for o in self._session.get_outputs()]

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return self._session.run(self.output_names, {self.input_name: x})


class TfliteSession(Session):
    def __init__(self, path: Path, threads: int, backend: str) -> None:
        self.backend = backend
        module = _import_backend(backend)
        try:
            self._interpreter = module.Interpreter(model_path=str(path), num_threads=max(1, int(threads)))
            self._interpreter.allocate_tensors()
        except Exception as exc:
            raise BundleError(f"{backend} cannot load {path.name}: {str(exc).splitlines()[0]}") from None
        self._input = self._interpreter.get_input_details()[0]
        self._outputs = sorted(self._interpreter.get_output_details(), key=lambda d: d["name"])
        self.input_name = self._input["name"]
        self.output_names = [o["name"] for o in self._outputs]
        self._batch = int(self._input["shape"][0])

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        if x.shape[0] != self._batch:
            self._interpreter.resize_tensor_input(self._input["index"], list(x.shape), strict=False)
            self._interpreter.allocate_tensors()
            self._batch = x.shape[0]
        self._interpreter.set_tensor(self._input["index"], x)
        self._interpreter.invoke()
        return [self._interpreter.get_tensor(o["index"]) for o in self._outputs]


def _import_backend(name: str) -> Any:
    module = {"onnxruntime": "onnxruntime", "litert": "ai_edge_litert.interpreter", "tflite-runtime": "tflite_runtime.interpreter"}.get(name)
    if module is None:
        raise BackendUnavailableError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailableError(f"backend {name} is not installed ({exc.name} missing): {_INSTALL_HINT[name]}") from None


def open_session(path: str | Path, backend: str, threads: int = 1) -> Session:
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"model file missing: {path}")
    if backend == "onnxruntime":
        return OnnxSession(path, threads)
    if backend in ("litert", "tflite-runtime"):
        return TfliteSession(path, threads, backend)
    raise BackendUnavailableError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")


@dataclass
class LoadedModel:
    """A session plus the specs that say how to feed it and read it."""

    session: Session
    input_spec: TensorSpec
    output_specs: list[TensorSpec]
    variant: str = ""
    extra: dict = field(default_factory=dict)

    def __call__(self, pixels_nhwc: np.ndarray) -> list[np.ndarray]:
        raw = self.session.run(build_input(pixels_nhwc, self.input_spec))
        by_name = dict(zip(self.session.output_names, raw))
        outputs = []
        for spec in self.output_specs:
            if spec.name not in by_name:
                raise BundleError(f"model has no output {spec.name!r} (has {sorted(by_name)})")
            outputs.append(read_output(by_name[spec.name], spec))
        return outputs
