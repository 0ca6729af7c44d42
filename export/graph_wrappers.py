"""Export-time wrappers that put the pixel preprocessing inside the graph.

Every exported network takes uint8 BGR pixels in NHWC, the layout frames arrive in, so the runtime does
no float work before inference: the graph casts, subtracts the mean, scales and transposes itself.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from tddfa_edge.runtime.faceboxes_decoding import BGR_MEAN


class RegressorFromPixels(nn.Module):
    """(N, 120, 120, 3) uint8 BGR -> (N, 62) normalized parameters; normalization (x - 127.5) / 128."""

    def __init__(self, regressor: nn.Module) -> None:
        super().__init__()
        self.regressor = regressor

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float()
        return self.regressor((x - 127.5) * (1.0 / 128.0))


class DetectorFromPixels(nn.Module):
    """(1, H, W, 3) uint8 BGR -> the detector's outputs: FaceBoxes ``loc``, ``conf`` (its BGR mean subtracted in the
    graph), or YuNet's 12 per-stride tensors (it takes raw 0-255 pixels)."""

    def __init__(self, detector: nn.Module, family: str = "faceboxes") -> None:
        super().__init__()
        self.detector = detector
        self.subtract_mean = family == "faceboxes"
        self.register_buffer("mean", torch.tensor(BGR_MEAN, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = pixels.permute(0, 3, 1, 2).float()
        return self.detector(x - self.mean if self.subtract_mean else x)


class NamedOutputs(nn.Module):
    """Returns a dict so the flatbuffer's output tensors carry meaningful names."""

    def __init__(self, module: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.module = module
        self.names = tuple(names)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.module(x)
        out = out if isinstance(out, (tuple, list)) else (out,)
        return dict(zip(self.names, out))


class CenteredPixelRegressor(nn.Module):
    """(N, 120, 120, 3) float ``(pixel - 128) / 128`` -> ``param_norm`` (N, 62) of the (optionally re-scaled) FC.

    The network wants ``(pixel - 127.5) / 128``: the missing ``0.5 / 128`` enters the first convolution as
    a constant per channel, folded into ``bn1.running_mean`` (exact except on taps over the zero padding).
    ``out_center``/``out_half_range`` re-express each FC output as ``(y - center) / half_range`` so one
    per-tensor int8 grid serves all 62 parameters; the runtime undoes it with per-element scales.
    """

    def __init__(self, regressor: nn.Module, out_center: np.ndarray | None = None, out_half_range: np.ndarray | None = None,
                 fc_weight: np.ndarray | None = None, fc_bias: np.ndarray | None = None) -> None:
        super().__init__()
        net = copy.deepcopy(regressor).eval()
        with torch.no_grad():
            net.bn1.running_mean -= (0.5 / 128.0) * net.conv1.weight.sum(dim=(1, 2, 3))
            if fc_weight is not None:
                net.fc.weight.copy_(torch.as_tensor(fc_weight, dtype=torch.float32))
                net.fc.bias.copy_(torch.as_tensor(fc_bias, dtype=torch.float32))
            if out_center is not None:
                center = torch.as_tensor(out_center, dtype=torch.float32)
                half = torch.as_tensor(out_half_range, dtype=torch.float32)
                net.fc.weight.div_(half[:, None])
                net.fc.bias.sub_(center).div_(half)
        self.regressor = net

    def forward(self, centered: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"param_norm": self.regressor(centered.permute(0, 3, 1, 2))}
