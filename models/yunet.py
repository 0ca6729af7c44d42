"""YuNet face detector (Wu, Peng, Yu, 2023; libfacedetection.train, Apache-2.0) for ``yunet_n.pth`` / ``yunet_s.pth``.

Written from the structure of the training code: a plain stack of "point-then-depthwise" units (1x1 conv,
depthwise 3x3 conv, optional BN + ReLU), a top-down FPN over strides 8/16/32 and an anchor-free head with
one prior per cell (cls, obj, 4 box and 10 keypoint channels per level).

Input: (N, 3, H, W) float BGR pixels 0-255, no mean or scale; H and W multiples of 32.
Output: the 12 tensors of the upstream ONNX export ``yunet_n_dynamic.onnx``, in its order (``OUTPUT_NAMES``),
each (N, cells, k) with cells in row-major order of the level's grid; ``cls_*`` and ``obj_*`` have already
been through a sigmoid, ``bbox_*`` and ``kps_*`` are raw (``tddfa_edge.runtime.yunet_decoding`` decodes them).
Module and parameter names follow the mmdet checkpoint keys so its state dict loads as is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

STRIDES = (8, 16, 32)
OUTPUT_NAMES = tuple(f"{kind}_{s}" for kind in ("cls", "obj", "bbox", "kps") for s in STRIDES)

# From configs/yunet_n.py and configs/yunet_s.py: (in, mid, out) for the stem, (in, out) for the later stages.
YUNET_CONFIGS: dict[str, dict] = {
    "yunet_n": {
        "stage_channels": [[3, 16, 16], [16, 64], [64, 64], [64, 64], [64, 64], [64, 64]],
        "downsample_after": [0, 2, 3, 4],
        "out_stages": [3, 4, 5],
        "head_channels": 64,
        "head_shared_convs": 1,
        "num_classes": 1,
        "num_keypoints": 5,
    },
    "yunet_s": {
        "stage_channels": [[3, 16, 16], [16, 32], [32, 64], [64, 64], [64, 64], [64, 64]],
        "downsample_after": [0, 2, 3, 4],
        "out_stages": [3, 4, 5],
        "head_channels": 64,
        "head_shared_convs": 0,
        "num_classes": 1,
        "num_keypoints": 5,
    },
}


class PointDepthConv(nn.Module):
    """1x1 conv, depthwise 3x3 conv, then BN + ReLU unless it is a prediction layer."""

    def __init__(self, in_channels: int, out_channels: int, bn_relu: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1, bias=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, groups=out_channels, bias=True)
        # Prediction layers have no "bn" key in the checkpoint, so the attribute must not exist there.
        self.bn = nn.BatchNorm2d(out_channels) if bn_relu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(x))
        return F.relu(self.bn(x)) if self.bn is not None else x


class Stem(nn.Module):
    def __init__(self, in_channels: int, mid_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 3, stride=2, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.conv2 = PointDepthConv(mid_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.bn1(self.conv1(x))))


class Stage(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = PointDepthConv(in_channels, in_channels)
        self.conv2 = PointDepthConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class Backbone(nn.Module):
    def __init__(self, stage_channels: Sequence[Sequence[int]], downsample_after: Sequence[int], out_stages: Sequence[int]):
        super().__init__()
        self.downsample_after = frozenset(downsample_after)
        self.out_stages = tuple(out_stages)
        self.num_stages = len(stage_channels)
        self.model0 = Stem(*stage_channels[0])
        for i in range(1, self.num_stages):
            self.add_module(f"model{i}", Stage(*stage_channels[i]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i in range(self.num_stages):
            x = getattr(self, f"model{i}")(x)
            # The FPN taps a stage before its 2x2 max-pool, as the upstream graph does.
            if i in self.out_stages:
                feats.append(x)
            if i in self.downsample_after:
                x = F.max_pool2d(x, 2)
        return feats


class TopDownNeck(nn.Module):
    """Coarse to fine: refine a level, upsample it 2x (nearest) and add it to the next finer backbone map."""

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        self.lateral_convs = nn.ModuleList(PointDepthConv(c, c) for c in channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = [None] * len(feats)
        carried = feats[-1]
        for i in range(len(feats) - 1, -1, -1):
            outs[i] = self.lateral_convs[i](carried)
            if i > 0:
                carried = feats[i - 1] + F.interpolate(outs[i], scale_factor=2.0, mode="nearest")
        return outs


class Head(nn.Module):
    def __init__(self, levels: int, in_channels: int, shared_convs: int, num_classes: int, num_keypoints: int):
        super().__init__()
        if shared_convs > 0:
            self.multi_level_share_convs = nn.ModuleList(
                nn.Sequential(*(PointDepthConv(in_channels, in_channels) for _ in range(shared_convs)))
                for _ in range(levels)
            )
        else:
            self.multi_level_share_convs = None
        self.multi_level_cls = nn.ModuleList(PointDepthConv(in_channels, num_classes, False) for _ in range(levels))
        self.multi_level_bbox = nn.ModuleList(PointDepthConv(in_channels, 4, False) for _ in range(levels))
        self.multi_level_obj = nn.ModuleList(PointDepthConv(in_channels, 1, False) for _ in range(levels))
        self.multi_level_kps = nn.ModuleList(PointDepthConv(in_channels, 2 * num_keypoints, False) for _ in range(levels))

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if self.multi_level_share_convs is not None:
            feats = [convs(f) for convs, f in zip(self.multi_level_share_convs, feats)]
        groups = []
        for layers, activate in (
            (self.multi_level_cls, True),
            (self.multi_level_obj, True),
            (self.multi_level_bbox, False),
            (self.multi_level_kps, False),
        ):
            for layer, f in zip(layers, feats):
                # NCHW -> (N, cells, k), cells row-major as OpenCV indexes them; k as a Python int keeps it static in ONNX.
                y = layer(f).permute(0, 2, 3, 1).reshape(f.shape[0], -1, layer.conv2.out_channels)
                groups.append(torch.sigmoid(y) if activate else y)
        return tuple(groups)


class YuNet(nn.Module):
    """YuNet; build it with ``YuNet(**YUNET_CONFIGS["yunet_n"])``."""

    def __init__(
        self,
        stage_channels: Sequence[Sequence[int]],
        downsample_after: Sequence[int],
        out_stages: Sequence[int],
        head_channels: int,
        head_shared_convs: int,
        num_classes: int = 1,
        num_keypoints: int = 5,
    ):
        super().__init__()
        if len(out_stages) != len(STRIDES):
            raise ValueError(f"YuNet has {len(STRIDES)} output levels (strides {STRIDES}), got out_stages={out_stages}")
        neck_channels = [stage_channels[i][-1] for i in out_stages]
        if any(c != head_channels for c in neck_channels):
            raise ValueError(f"the head takes {head_channels} channels but the tapped stages give {neck_channels}")
        self.config = {
            "stage_channels": [list(c) for c in stage_channels],
            "downsample_after": list(downsample_after),
            "out_stages": list(out_stages),
            "head_channels": head_channels,
            "head_shared_convs": head_shared_convs,
            "num_classes": num_classes,
            "num_keypoints": num_keypoints,
        }
        self.backbone = Backbone(stage_channels, downsample_after, out_stages)
        self.neck = TopDownNeck(neck_channels)
        self.bbox_head = Head(len(STRIDES), head_channels, head_shared_convs, num_classes, num_keypoints)

    @classmethod
    def from_name(cls, name: str) -> "YuNet":
        if name not in YUNET_CONFIGS:
            raise ValueError(f"unknown YuNet variant {name!r}; known: {', '.join(YUNET_CONFIGS)}")
        return cls(**YUNET_CONFIGS[name])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # Python checks on traced shapes would freeze the export to one size, so only check in eager mode.
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] % 32 or x.shape[3] % 32:
                raise ValueError(f"YuNet takes (N, 3, H, W) with H and W multiples of 32, got {tuple(x.shape)}")
        return self.bbox_head(self.neck(self.backbone(x)))


def _shape_mismatches(model: nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[list, list, list]:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [(k, tuple(state[k].shape), tuple(expected[k].shape))
             for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    return missing, unexpected, wrong


def _variant_of(state: Mapping[str, torch.Tensor]) -> str | None:
    for name in YUNET_CONFIGS:
        if not any(_shape_mismatches(YuNet.from_name(name), state)):
            return name
    return None


def load_yunet_state(model: YuNet, state: Mapping[str, torch.Tensor]) -> YuNet:
    """Load a YuNet state dict (an mmdet checkpoint's ``state_dict``); ``ValueError`` when it does not fit.

    Every key of the upstream ``state_dict`` is used, ``bn.num_batches_tracked`` included (a BN buffer that
    inference ignores), so nothing is dropped. The checkpoint's other top-level entries, ``meta`` (training
    config and log) and ``optimizer`` (SGD momentum), are training-only: pass ``ckpt["state_dict"]``, or the
    whole checkpoint, whose ``state_dict`` is then taken. A DataParallel ``module.`` prefix is removed.
    """
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    cleaned = {k.removeprefix("module."): v for k, v in state.items()}
    not_tensors = [k for k, v in cleaned.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"checkpoint does not fit YuNet: {len(not_tensors)} entries are not tensors (e.g. {not_tensors[:2]})")
    missing, unexpected, wrong = _shape_mismatches(model, cleaned)
    if missing or unexpected or wrong:
        widths = "-".join(str(c[-1]) for c in model.config["stage_channels"])
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys (e.g. {missing[:2]})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:2]})")
        if wrong:
            k, got, want = wrong[0]
            problems.append(f"{len(wrong)} keys with a wrong shape (e.g. {k} has shape {got}, expected {want})")
        variant = _variant_of(cleaned)
        hint = f"; it is a {variant} checkpoint" if variant else ""
        raise ValueError(
            f"checkpoint does not fit YuNet (stage widths {widths}, shared head convs "
            f"{model.config['head_shared_convs']}): {', '.join(problems)}{hint}"
        )
    model.load_state_dict(cleaned)
    return model
