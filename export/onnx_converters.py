"""fp32 ONNX converters: the regressor and the detectors (FaceBoxes, YuNet-n/-s)."""

from __future__ import annotations

import shutil
from pathlib import Path

from .artifacts import ExportContext, ModelArtifact, check_file, register
from .model_io import detector_io, regressor_io, yunet_io


@register("regressor", "onnx", "fp32")
def regressor_onnx_fp32(ctx: ExportContext, role: str, folder: Path) -> ModelArtifact:
    name = "regressor.fp32.onnx"
    shutil.copyfile(ctx.fp32_onnx("regressor"), folder / name)
    check_file(folder / name)
    inputs, outputs = regressor_io()
    return ModelArtifact(name, role, "onnx", "fp32", inputs, outputs, param_normalized=True,
                         details={"opset": 17, "simplifier": "onnxslim"})


@register("faceboxes", "onnx", "fp32")
def detector_onnx_fp32(ctx: ExportContext, role: str, folder: Path) -> ModelArtifact:
    name = "detector.fp32.onnx"
    shutil.copyfile(ctx.fp32_onnx("detector"), folder / name)
    check_file(folder / name)
    inputs, outputs = detector_io(ctx.detector_input_size)
    return ModelArtifact(name, role, "onnx", "fp32", inputs, outputs, details={"opset": 17, "dynamic_shape": True})


@register("yunet", "onnx", "fp32")
def yunet_onnx_fp32(ctx: ExportContext, role: str, folder: Path) -> ModelArtifact:
    """YuNet on uint8 NHWC BGR pixels (no mean), dynamic H and W (multiples of 32), 12 outputs (1, cells, k)."""
    name = "detector.fp32.onnx"
    shutil.copyfile(ctx.fp32_onnx("detector"), folder / name)
    check_file(folder / name)
    inputs, outputs = yunet_io(ctx.detector_input_size)
    return ModelArtifact(name, role, "onnx", "fp32", inputs, outputs,
                         details={"opset": 17, "simplifier": "onnxslim", "dynamic_shape": True,
                                  "outputs": "cls/obj after the sigmoid, bbox/kps raw (runtime.yunet_decoding)"})
