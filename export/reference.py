"""The PyTorch fp32 reference every artifact is verified against, behind the same interfaces the runtime uses.

``torch_regressor_outputs`` gives the normalized 62 parameters of uint8 crops. ``TorchDetector`` is a
``LoadedModel`` look-alike (``model(pixels) -> outputs`` in the declared order) so the reference detector runs
through the runtime's own ``FaceDetector``: same letterbox, decoding and NMS as every converted file.
"""

from __future__ import annotations

import numpy as np
import torch

from .graph_wrappers import DetectorFromPixels, RegressorFromPixels


def torch_regressor_outputs(regressor: torch.nn.Module, crops_nhwc: np.ndarray, batch: int = 64) -> np.ndarray:
    """fp32 PyTorch reference: (N, 120, 120, 3) uint8 -> (N, 62) normalized parameters."""
    wrapper = RegressorFromPixels(regressor).eval()
    outs = []
    with torch.no_grad():
        for start in range(0, len(crops_nhwc), batch):
            outs.append(wrapper(torch.from_numpy(np.ascontiguousarray(crops_nhwc[start : start + batch]))).numpy())
    return np.concatenate(outs)


class TorchDetector:
    """A detector module taking uint8 NHWC pixels, called like the runtime's ``LoadedModel``."""

    variant = "pytorch-fp32"

    def __init__(self, detector: torch.nn.Module, family: str) -> None:
        self.module = DetectorFromPixels(detector, family).eval()

    def __call__(self, pixels_nhwc: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            outputs = self.module(torch.from_numpy(np.ascontiguousarray(pixels_nhwc)))
        return [o.numpy() for o in outputs]
