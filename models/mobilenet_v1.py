"""MobileNetV1 regressor of 3DDFA_V2: a 120x120 BGR crop in, 62 normalized 3DMM parameters out.

Module and parameter names follow the released checkpoints (``conv1``, ``bn1``, ``dw2_1`` ... ``dw6``,
``fc``) so their state dicts load as they are. Widen factor 1.0 is ``mb1``, 0.5 is ``mb05``.
"""

from __future__ import annotations

import torch
from torch import nn

# (input channels, output channels, stride) of the 13 depthwise-separable blocks, at widen factor 1.0.
_BLOCKS = (
    ("dw2_1", 32, 64, 1),
    ("dw2_2", 64, 128, 2),
    ("dw3_1", 128, 128, 1),
    ("dw3_2", 128, 256, 2),
    ("dw4_1", 256, 256, 1),
    ("dw4_2", 256, 512, 2),
    ("dw5_1", 512, 512, 1),
    ("dw5_2", 512, 512, 1),
    ("dw5_3", 512, 512, 1),
    ("dw5_4", 512, 512, 1),
    ("dw5_5", 512, 512, 1),
    ("dw5_6", 512, 1024, 2),
    ("dw6", 1024, 1024, 1),
)


class DepthwiseSeparableBlock(nn.Module):
    """3x3 depthwise conv + BN + ReLU, then 1x1 pointwise conv + BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False)
        self.bn_dw = nn.BatchNorm2d(in_channels)
        self.conv_sep = nn.Conv2d(in_channels, out_channels, 1, 1, 0, bias=False)
        self.bn_sep = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn_dw(self.conv_dw(x)))
        return self.relu(self.bn_sep(self.conv_sep(x)))


class MobileNetV1Regressor(nn.Module):
    """MobileNetV1 backbone + global average pool + one linear layer to ``num_params`` outputs."""

    def __init__(self, widen_factor: float = 1.0, num_params: int = 62) -> None:
        super().__init__()
        self.widen_factor = widen_factor

        def width(channels: int) -> int:
            return int(channels * widen_factor)

        self.conv1 = nn.Conv2d(3, width(32), 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width(32))
        self.relu = nn.ReLU(inplace=True)
        for name, cin, cout, stride in _BLOCKS:
            self.add_module(name, DepthwiseSeparableBlock(width(cin), width(cout), stride))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width(1024), num_params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for name, *_ in _BLOCKS:
            x = getattr(self, name)(x)
        x = self.avgpool(x).flatten(1)
        return self.fc(x)


def load_regressor_state(model: MobileNetV1Regressor, state: dict) -> MobileNetV1Regressor:
    """Load a 3DDFA_V2 checkpoint state dict (``module.`` prefixes, ``fc_param`` head) into ``model``.

    The checkpoints also carry a 136-d ``fc_lm`` auxiliary head used only in training; it is dropped.
    Raises ``ValueError`` when keys or shapes do not fit, e.g. an mb1 file given for an mb05 model.
    """
    cleaned = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith("fc_lm."):
            continue
        if key.startswith("fc_param."):
            key = "fc." + key[len("fc_param."):]
        cleaned[key] = value
    expected = model.state_dict()
    missing = sorted(set(expected) - set(cleaned))
    unexpected = sorted(set(cleaned) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not fit MobileNetV1 x{model.widen_factor}: "
            f"{len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    for key, value in cleaned.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"checkpoint does not fit MobileNetV1 x{model.widen_factor}: {key} has shape "
                f"{tuple(value.shape)}, the model expects {tuple(expected[key].shape)}"
            )
    model.load_state_dict(cleaned)
    return model
