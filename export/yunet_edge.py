"""YuNet rewritten for litert-torch / XNNPACK: NHWC pixels in, the four prediction branches of each level merged, the
12 outputs named as the runtime reads them (``runtime.detector.YUNET_OUTPUTS``). Mathematically identical to
``models.yunet.YuNet`` on raw 0-255 pixels.

Each level's cls/obj/bbox/kps branches (a 1x1 conv and a depthwise 3x3 conv each, sharing their input) become one
1x1 conv (C -> 16) and one depthwise conv over the 16 channels, one NHWC reshape and a split: 2 convolutions instead
of 8, and one layout change instead of 4. The neck's nearest-neighbour 2x upsampling is written as concatenations
(``upsample2``) so XNNPACK takes the whole graph.
"""

from __future__ import annotations

import copy

import torch
from tddfa_edge.runtime.detector import YUNET_OUTPUTS
from torch import nn

HEAD_KINDS = ("cls", "obj", "bbox", "kps")  # the order of the merged channels
SIGMOID = {"cls", "obj"}


def upsample2(x: torch.Tensor) -> torch.Tensor:
    """2x nearest upsampling as NHWC concatenations and reshapes: one XNNPACK partition (RESIZE_NEAREST_NEIGHBOR, which
    F.interpolate becomes, stays outside XNNPACK); in int8 the concatenations are copies on the input's grid."""
    n, c, h, w = x.shape
    t = x.permute(0, 2, 3, 1)
    t = torch.cat([t, t], dim=3).reshape(n, h, 2 * w, c)
    t = torch.cat([t, t], dim=2).reshape(n, 2 * h, 2 * w, c)
    return t.permute(0, 3, 1, 2)


class MergedHead(nn.Module):
    """One level's four prediction branches as one 1x1 conv and one depthwise conv (channels cls, obj, bbox x4, kps x10)."""

    def __init__(self, branches: list) -> None:
        super().__init__()
        self.splits = [int(b.conv1.out_channels) for b in branches]
        channels = sum(self.splits)
        c_in = int(branches[0].conv1.in_channels)
        self.pw = nn.Conv2d(c_in, channels, 1, bias=True)
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=True)
        with torch.no_grad():
            self.pw.weight.copy_(torch.cat([b.conv1.weight for b in branches]))
            self.pw.bias.copy_(torch.cat([b.conv1.bias for b in branches]))
            self.dw.weight.copy_(torch.cat([b.conv2.weight for b in branches]))
            self.dw.bias.copy_(torch.cat([b.conv2.bias for b in branches]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        y = self.dw(self.pw(x)).permute(0, 2, 3, 1)
        y = y.reshape(1, -1, sum(self.splits))
        return list(torch.split(y, self.splits, dim=2))


class EdgeYuNet(nn.Module):
    """(1, H, W, 3) pixels -> dict of the 12 YuNet outputs, each (1, cells, k).

    ``int8_input=False``: uint8 pixels, cast in the graph. ``int8_input=True``: the input is the real value of an int8
    tensor quantized with scale 1 and zero point -128, i.e. the pixel itself (the runtime feeds ``pixel - 128``); the
    stem conv's zero padding is then real 0, exactly YuNet's.
    """

    def __init__(self, yunet: nn.Module, int8_input: bool) -> None:
        super().__init__()
        net = copy.deepcopy(yunet).eval()
        self.int8_input = int8_input
        self.backbone = net.backbone
        self.neck = net.neck
        head = net.bbox_head
        self.share = head.multi_level_share_convs
        levels = len(head.multi_level_cls)
        self.heads = nn.ModuleList(
            MergedHead([getattr(head, f"multi_level_{k}")[level] for k in HEAD_KINDS]) for level in range(levels))

    def _neck(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """``TopDownNeck`` with ``upsample2`` for its nearest-neighbour interpolation."""
        lateral = self.neck.lateral_convs
        outs: list = [None] * len(feats)
        carried = feats[-1]
        for i in range(len(feats) - 1, -1, -1):
            outs[i] = lateral[i](carried)
            if i > 0:
                carried = feats[i - 1] + upsample2(outs[i])
        return outs

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        x = pixels.permute(0, 3, 1, 2)
        x = x if self.int8_input else x.float()
        feats = self._neck(self.backbone(x))
        if self.share is not None:
            feats = [convs(f) for convs, f in zip(self.share, feats)]
        per_kind: dict[str, list[torch.Tensor]] = {k: [] for k in HEAD_KINDS}
        for head, f in zip(self.heads, feats):
            for kind, y in zip(HEAD_KINDS, head(f)):
                per_kind[kind].append(torch.sigmoid(y) if kind in SIGMOID else y)
        values = [t for kind in HEAD_KINDS for t in per_kind[kind]]
        return dict(zip(YUNET_OUTPUTS, values))
