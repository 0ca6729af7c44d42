"""The tensor specs a converter declares for each network: what the runtime feeds the model and reads back.

Format-neutral: every converter (ONNX, TFLite; fp32, fp16, int8) starts from these and states only what its
file does differently (an int8 input, a quantized output). The specs land in the manifest as
``runtime.manifest.TensorSpec`` records.
"""

from __future__ import annotations


def regressor_io(precision_dtype: str = "uint8", output_dtype: str = "float32", quant_out=None, out_name: str = "param_norm",
                 batch: str = "N") -> tuple[list[dict], list[dict]]:
    inputs = [{
        "name": "image", "shape": [batch, 120, 120, 3], "dtype": precision_dtype, "layout": "NHWC",
        "normalization": {"mean": [0.0], "scale": [1.0]}, "quantization": None,
        "description": "BGR crop; the graph itself applies (x - 127.5) / 128 unless normalization says otherwise",
    }]
    outputs = [{
        "name": out_name, "shape": [batch, 62], "dtype": output_dtype, "quantization": quant_out,
        "description": "62 3DMM parameters normalized by param_std/param_mean",
    }]
    return inputs, outputs


def detector_io(input_size, dtype: str = "uint8") -> tuple[list[dict], list[dict]]:
    """FaceBoxes: a letterboxed (or dynamic-size) BGR frame in; SSD offsets and softmax scores over the priors out."""
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


YUNET_STRIDES = (8, 16, 32)
YUNET_OUTPUT_CHANNELS = {"cls": 1, "obj": 1, "bbox": 4, "kps": 10}
_YUNET_DESCRIPTIONS = {
    "cls": "face probability (sigmoid) per cell",
    "obj": "objectness (sigmoid) per cell; score = sqrt(cls * obj)",
    "bbox": "box per cell in stride units: centre = (cell + d[0:2]) * s, size = exp(d[2:4]) * s",
    "kps": "5 keypoints per cell in stride units: (cell + d[2k:2k+2]) * s",
}


def yunet_io(input_size, dtype: str = "uint8") -> tuple[list[dict], list[dict]]:
    """YuNet: a letterboxed (or dynamic-size, multiples of 32) BGR frame in, raw 0-255 pixels (no mean);
    12 outputs in ``runtime.detector.YUNET_OUTPUTS`` order (cls, obj, bbox, kps per stride 8/16/32), each (1, cells, k)."""
    h, w = (input_size[1], input_size[0]) if input_size else ("H", "W")
    inputs = [{
        "name": "image", "shape": [1, h, w, 3], "dtype": dtype, "layout": "NHWC",
        "normalization": {"mean": [0.0], "scale": [1.0]}, "quantization": None,
        "description": "BGR frame, zero-padded to the input size (fixed) or to multiples of 32 (dynamic); raw pixels, no mean",
    }]
    outputs = []
    for kind, k in YUNET_OUTPUT_CHANNELS.items():
        for stride in YUNET_STRIDES:
            cells = (h // stride) * (w // stride) if input_size else f"H/{stride}*W/{stride}"
            outputs.append({"name": f"{kind}_{stride}", "shape": [1, cells, k], "dtype": "float32", "quantization": None,
                            "description": f"stride {stride}: {_YUNET_DESCRIPTIONS[kind]}"})
    return inputs, outputs
