"""PyTorch -> ONNX (fp32) for the regressor and the detector, simplified with onnxslim."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch

from tddfa_edge.runtime.errors import ExportError

from .graph_wrappers import DetectorFromPixels, RegressorFromPixels

OPSET = 17


def _export(module: torch.nn.Module, example: torch.Tensor, input_names, output_names, dynamic_axes) -> bytes:
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            (example,),
            buffer,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return buffer.getvalue()


def _simplify(model_bytes: bytes) -> bytes:
    import onnx
    import onnxslim

    model = onnx.load_from_string(model_bytes)
    try:
        model = onnxslim.slim(model)
    except Exception as exc:  # onnxslim failures keep the unsimplified graph rather than no graph
        raise ExportError(f"onnxslim failed: {exc}") from None
    onnx.checker.check_model(model)
    model.producer_name = "tddfa-edge"
    model.producer_version = ""
    return model.SerializeToString()


def export_regressor_onnx(regressor: torch.nn.Module, path: Path) -> Path:
    wrapper = RegressorFromPixels(regressor).eval()
    # A batch of 2 in the example keeps the batch axis symbolic through the legacy tracer.
    example = torch.zeros((2, 120, 120, 3), dtype=torch.uint8)
    raw = _export(wrapper, example, ["image"], ["param_norm"], {"image": {0: "batch"}, "param_norm": {0: "batch"}})
    path.write_bytes(_simplify(raw))
    return path


def export_detector_onnx(detector: torch.nn.Module, path: Path) -> Path:
    wrapper = DetectorFromPixels(detector).eval()
    example = torch.zeros((1, 256, 320, 3), dtype=torch.uint8)
    raw = _export(
        wrapper, example, ["image"], ["loc", "conf"],
        {"image": {1: "height", 2: "width"}, "loc": {1: "priors"}, "conf": {1: "priors"}},
    )
    path.write_bytes(_simplify(raw))
    return path


def torch_regressor_outputs(regressor: torch.nn.Module, crops_nhwc: np.ndarray, batch: int = 64) -> np.ndarray:
    """fp32 PyTorch reference: (N, 120, 120, 3) uint8 -> (N, 62) normalized parameters."""
    wrapper = RegressorFromPixels(regressor).eval()
    outs = []
    with torch.no_grad():
        for start in range(0, len(crops_nhwc), batch):
            outs.append(wrapper(torch.from_numpy(np.ascontiguousarray(crops_nhwc[start : start + batch]))).numpy())
    return np.concatenate(outs)


def torch_detector_outputs(detector: torch.nn.Module, image_hwc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    wrapper = DetectorFromPixels(detector).eval()
    with torch.no_grad():
        loc, conf = wrapper(torch.from_numpy(np.ascontiguousarray(image_hwc[None])))
    return loc.numpy()[0], conf.numpy()[0]
