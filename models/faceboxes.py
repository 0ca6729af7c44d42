"""FaceBoxes face detector (Zhang et al., IJCB 2017) as shipped with 3DDFA_V2 (``FaceBoxesProd.pth``).

Input: a BGR float image minus the per-channel mean (104, 117, 123), NCHW, any size.
Outputs: ``loc`` (N, P, 4) SSD box offsets and ``conf`` (N, P, 2) softmax scores over the priors that
``tddfa_edge.runtime.detector`` generates for the same size. Parameter names follow the checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Anchors per feature-map cell of the three detection sources: 32 px x16 (densified 4x4), 64 px x4
# (2x2), 128 px x1 on the stride-32 map; 256 px and 512 px on the stride-64 and -128 maps.
ANCHORS_PER_CELL = (21, 1, 1)


class ConvBnRelu(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class ConvBnCRelu(nn.Module):
    """Concatenated ReLU: conv + BN, then ReLU of [x, -x] (doubles the channels at half the compute)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu(torch.cat([x, -x], 1))


class InceptionBlock(nn.Module):
    """Four 32-channel branches: 1x1; avgpool + 1x1; 1x1 + 3x3; 1x1 + 3x3 + 3x3."""

    def __init__(self) -> None:
        super().__init__()
        self.branch1x1 = ConvBnRelu(128, 32, 1)
        self.branch1x1_2 = ConvBnRelu(128, 32, 1)
        self.branch3x3_reduce = ConvBnRelu(128, 24, 1)
        self.branch3x3 = ConvBnRelu(24, 32, 3, padding=1)
        self.branch3x3_reduce_2 = ConvBnRelu(128, 24, 1)
        self.branch3x3_2 = ConvBnRelu(24, 32, 3, padding=1)
        self.branch3x3_3 = ConvBnRelu(32, 32, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch1x1_2(pooled),
                self.branch3x3(self.branch3x3_reduce(x)),
                self.branch3x3_3(self.branch3x3_2(self.branch3x3_reduce_2(x))),
            ],
            1,
        )


class FaceBoxesDetector(nn.Module):
    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = ConvBnCRelu(3, 24, 7, 4, 3)
        self.conv2 = ConvBnCRelu(48, 64, 5, 2, 2)
        self.inception1 = InceptionBlock()
        self.inception2 = InceptionBlock()
        self.inception3 = InceptionBlock()
        self.conv3_1 = ConvBnRelu(128, 128, 1)
        self.conv3_2 = ConvBnRelu(128, 256, 3, 2, 1)
        self.conv4_1 = ConvBnRelu(256, 128, 1)
        self.conv4_2 = ConvBnRelu(128, 256, 3, 2, 1)
        source_channels = (128, 256, 256)
        self.loc = nn.Sequential(
            *[nn.Conv2d(c, a * 4, 3, padding=1) for c, a in zip(source_channels, ANCHORS_PER_CELL)]
        )
        self.conf = nn.Sequential(
            *[nn.Conv2d(c, a * num_classes, 3, padding=1) for c, a in zip(source_channels, ANCHORS_PER_CELL)]
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        x = self.conv2(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        x = self.inception3(self.inception2(self.inception1(x)))
        sources = [x]
        x = self.conv3_2(self.conv3_1(x))
        sources.append(x)
        x = self.conv4_2(self.conv4_1(x))
        sources.append(x)

        batch = x.shape[0]
        loc = torch.cat([head(s).permute(0, 2, 3, 1).reshape(batch, -1) for s, head in zip(sources, self.loc)], 1)
        conf = torch.cat([head(s).permute(0, 2, 3, 1).reshape(batch, -1) for s, head in zip(sources, self.conf)], 1)
        return loc.reshape(batch, -1, 4), F.softmax(conf.reshape(batch, -1, self.num_classes), dim=-1)


def load_detector_state(model: FaceBoxesDetector, state: dict) -> FaceBoxesDetector:
    """Load a FaceBoxes state dict (optionally ``module.``-prefixed); ``ValueError`` when it does not fit."""
    cleaned = {k.removeprefix("module."): v for k, v in state.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(cleaned))
    unexpected = sorted(set(cleaned) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not fit FaceBoxes: {len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    for key, value in cleaned.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(f"checkpoint does not fit FaceBoxes: {key} has shape {tuple(value.shape)}")
    model.load_state_dict(cleaned)
    return model
