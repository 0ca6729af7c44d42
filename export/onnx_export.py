"""PyTorch -> ONNX (fp32) for the regressor and the detector, simplified with onnxslim."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch

from tddfa_edge.contracts.errors import ExportError

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


def export_detector_onnx(detector: torch.nn.Module, path: Path, family: str = "faceboxes") -> Path:
    """The detector on uint8 NHWC BGR pixels, dynamic height and width. FaceBoxes: ``loc``, ``conf`` over the priors;
    YuNet: its 12 per-stride outputs (``runtime.detector.YUNET_OUTPUTS`` order), each (1, cells, k)."""
    wrapper = DetectorFromPixels(detector, family).eval()
    if family == "yunet":
        from tddfa_edge.runtime.detector import YUNET_OUTPUTS

        # 256 x 320 is a multiple of 32; the axes stay symbolic (H and W must be multiples of 32 at run time).
        example = torch.zeros((1, 256, 320, 3), dtype=torch.uint8)
        names = list(YUNET_OUTPUTS)
        dynamic = {"image": {1: "height", 2: "width"}}
        dynamic.update({name: {1: f"cells_{name.rsplit('_', 1)[1]}"} for name in names})
        raw = _export(wrapper, example, ["image"], names, dynamic)
    else:
        example = torch.zeros((1, 256, 320, 3), dtype=torch.uint8)
        raw = _export(
            wrapper, example, ["image"], ["loc", "conf"],
            {"image": {1: "height", 2: "width"}, "loc": {1: "priors"}, "conf": {1: "priors"}},
        )
    path.write_bytes(_simplify(raw))
    return path
