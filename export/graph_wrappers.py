"""Export-time wrappers that put the pixel preprocessing inside the graph.

Every exported network takes uint8 BGR pixels in NHWC, the layout frames arrive in, so the runtime does
no float work before inference: the graph casts, subtracts the mean, scales and transposes itself.
"""

from __future__ import annotations

import torch
from torch import nn

from tddfa_edge.runtime.detector import BGR_MEAN


class RegressorFromPixels(nn.Module):
    """(N, 120, 120, 3) uint8 BGR -> (N, 62) normalized parameters; normalization (x - 127.5) / 128."""

    def __init__(self, regressor: nn.Module) -> None:
        super().__init__()
        self.regressor = regressor

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float()
        return self.regressor((x - 127.5) * (1.0 / 128.0))


class DetectorFromPixels(nn.Module):
    """(1, H, W, 3) uint8 BGR -> FaceBoxes ``loc`` (1, P, 4) and ``conf`` (1, P, 2)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector
        self.register_buffer("mean", torch.tensor(BGR_MEAN, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = pixels.permute(0, 3, 1, 2).float()
        return self.detector(x - self.mean)
