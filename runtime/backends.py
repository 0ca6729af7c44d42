"""Inference backends, found by name and imported only when asked for.

``onnxruntime`` runs ``.onnx`` files; ``litert`` (ai-edge-litert) and ``tflite-runtime`` (legacy) run
``.tflite`` files. A ``Session`` takes and returns numpy arrays in the model's own dtypes and layout; a
``LoadedModel`` adds the manifest's tensor specs: how to build the input from uint8 BGR pixels and how to
turn the outputs back into floats.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tddfa_edge.contracts.errors import BackendUnavailableError, BundleError

from .manifest import ModelRecord, TensorSpec

# backend name -> (module to import, formats it runs, what to install)
BACKENDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "onnxruntime": ("onnxruntime", ("onnx",), "pip install tddfa-edge (the base install includes onnxruntime)"),
    "litert": ("ai_edge_litert.interpreter", ("tflite",), "pip install 'tddfa-edge[tflite]' (ai-edge-litert)"),
    "tflite-runtime": ("tflite_runtime.interpreter", ("tflite",), "pip install tflite-runtime (legacy, needs numpy<2)"),
}


def backends_for(fmt: str) -> tuple[str, ...]:
    return tuple(name for name, (_, formats, _) in BACKENDS.items() if fmt in formats)


def install_hint(fmt: str) -> str:
    """What to install to run ``fmt`` files (the preferred backend's hint)."""
    return BACKENDS[backends_for(fmt)[0]][2]


def import_backend(name: str) -> Any:
    if name not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    module, _, hint = BACKENDS[name]
    if module.startswith("ai_edge_litert") or module.startswith("tflite_runtime"):
        # LiteRT logs "Created TensorFlow Lite XNNPACK delegate" through TF's C++ logging unless told otherwise.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailableError(f"backend {name} is not installed ({exc.name} missing): {hint}") from None


def backend_available(name: str) -> bool:
    try:
        import_backend(name)
    except BackendUnavailableError:
        return False
    return True


def build_input(pixels_nhwc: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """uint8 BGR pixels (N, H, W, 3) -> the array the model takes."""
    norm, quant = spec.normalization, spec.quantization
    mean, scale = (norm.mean, norm.scale) if norm is not None else ((0.0,), (1.0,))
    if spec.dtype == "uint8" and mean == (0.0,) and scale == (1.0,) and quant is None:
        x = pixels_nhwc
    elif spec.dtype == "int8" and mean == (128.0,) and scale == (1.0,) and quant is None:
        x = (pixels_nhwc ^ np.uint8(0x80)).view(np.int8)  # pixel - 128 without a float round trip
    else:
        x = (pixels_nhwc.astype(np.float32) - np.asarray(mean, np.float32)) * np.asarray(scale, np.float32)
        if quant is not None:
            x = np.round(x / np.asarray(quant.scale, np.float32)) + np.asarray(quant.zero_point, np.float32)
        if spec.dtype != "float32":
            info = np.iinfo(spec.dtype)
            x = np.clip(np.round(x), info.min, info.max)
        x = x.astype(spec.dtype)
    if spec.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x)


def read_output(raw: np.ndarray, spec: TensorSpec) -> np.ndarray:
    quant = spec.quantization
    if quant is not None:
        return (raw.astype(np.float32) - np.asarray(quant.zero_point, np.float32)) * np.asarray(quant.scale, np.float32)
    return raw.astype(np.float32, copy=False)


class Session:
    """A loaded model file: ``run(array) -> list of arrays`` in the model's own dtypes."""

    backend: str
    input_name: str
    output_names: list[str]

    def run(self, x: np.ndarray) -> list[np.ndarray]:  # pragma: no cover - interface
        raise NotImplementedError


class OnnxSession(Session):
    backend = "onnxruntime"

    def __init__(self, path: Path, threads: int) -> None:
        ort = import_backend("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: onnxruntime's warnings are not the user's business
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


@contextlib.contextmanager
def _native_stderr_muted():
    """Send file descriptor 2 to /dev/null for the duration.

    LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." from C++ when it builds the delegate,
    ignoring TF_CPP_MIN_LOG_LEVEL; an API user's stderr should not carry it. Load failures still surface as
    Python exceptions with their message.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class TfliteSession(Session):
    def __init__(self, path: Path, threads: int, backend: str) -> None:
        self.backend = backend
        module = import_backend(backend)
        try:
            with _native_stderr_muted():
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
            with _native_stderr_muted():
                self._interpreter.allocate_tensors()
            self._batch = x.shape[0]
        self._interpreter.set_tensor(self._input["index"], x)
        self._interpreter.invoke()
        return [self._interpreter.get_tensor(o["index"]) for o in self._outputs]


def open_session(path: str | Path, backend: str, threads: int = 1) -> Session:
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"model file missing: {path}")
    if backend == "onnxruntime":
        return OnnxSession(path, threads)
    if backend in ("litert", "tflite-runtime"):
        return TfliteSession(path, threads, backend)
    raise BackendUnavailableError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")


class LoadedModel:
    """A session plus the manifest record that says how to feed it and read it; ``model(pixels)`` -> float outputs."""

    def __init__(self, session: Session, record: ModelRecord) -> None:
        self.session = session
        self.record = record
        self.variant = record.variant
        self.input_spec = record.inputs[0]
        self.output_specs = record.outputs
        self.output_names = [spec.name for spec in record.outputs]
        missing = [name for name in self.output_names if name not in session.output_names]
        if missing:
            raise BundleError(f"{record.file} has no output {missing[0]!r} (it has {', '.join(session.output_names)})")
        self._order = [session.output_names.index(name) for name in self.output_names]

    @classmethod
    def open(cls, folder: Path, record: ModelRecord, backend: str, threads: int = 1) -> "LoadedModel":
        return cls(open_session(Path(folder) / record.file, backend, threads), record)

    def __call__(self, pixels_nhwc: np.ndarray) -> list[np.ndarray]:
        raw = self.session.run(build_input(pixels_nhwc, self.input_spec))
        return [read_output(raw[i], spec) for i, spec in zip(self._order, self.output_specs)]


__all__ = ["BACKENDS", "backends_for", "install_hint", "import_backend", "backend_available", "build_input", "read_output",
           "Session", "OnnxSession", "TfliteSession", "open_session", "LoadedModel"]
