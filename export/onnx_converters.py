"""fp32 ONNX converters for both networks."""

from __future__ import annotations

import shutil
from pathlib import Path

from .artifacts import ExportContext, ModelArtifact, check_file, register, regressor_io


def detector_io(input_size, dtype: str = "uint8") -> tuple[list[dict], list[dict]]:
    h, w = (input_size[1], input_size[0]) if input_size else ("H", "W")
    inputs = [{
        "name": "image", "shape": [1, h, w, 3], "dtype": dtype, "layout": "NHWC",
        "normalization": {"mean": [0.0], "scale": [1.0]}, "quantization": None,
        "description": "BGR frame (letterboxed when the size is fixed); the graph subtracts the BGR mean 104,117,123",
    }]
    outputs = [
        {"name": "loc", "shape": [1, "P", 4], "dtype": "float32", "quantization": None,
         "description": "SSD offsets against the priors of this input size"},
        {"name": "conf", "shape": [1, "P", 2], "dtype": "float32", "quantization": None,
         "description": "softmax (background, face)"},
    ]
    return inputs, outputs


@register("regressor", "onnx", "fp32")
def regressor_onnx_fp32(ctx: ExportContext, role: str, folder: Path) -> ModelArtifact:
    name = "regressor.fp32.onnx"
    shutil.copyfile(ctx.fp32_onnx("regressor"), folder / name)
    check_file(folder / name)
    inputs, outputs = regressor_io()
    return ModelArtifact(name, role, "onnx", "fp32", inputs, outputs, param_normalized=True,
                         details={"opset": 17, "simplifier": "onnxslim"})


@register("detector", "onnx", "fp32")
def detector_onnx_fp32(ctx: ExportContext, role: str, folder: Path) -> ModelArtifact:
    name = "detector.fp32.onnx"
    shutil.copyfile(ctx.fp32_onnx("detector"), folder / name)
    check_file(folder / name)
    inputs, outputs = detector_io(ctx.detector_input_size)
    return ModelArtifact(name, role, "onnx", "fp32", inputs, outputs, details={"opset": 17, "dynamic_shape": True})
