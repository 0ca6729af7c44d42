"""The float detectors as their int8 converters start from: BatchNorm folded, (YuNet) channels equalized, and every
convolution's weights already on the int8 grid the backend will use (``weight_rounding``).

Both the onnxruntime QDQ converter and the LiteRT PT2E converter quantize weights per output channel with
``scale = max|w| / qmax``, from the weights they are given. Handing them weights that already lie on that grid (chosen
by GPTQ against the calibration inputs instead of round-to-nearest) gives both the same integers, and keeps every
float rewrite of the converters exact (the [W; -W] CReLU convolution, the avg-pool folded into a 3x3 convolution,
the column-grouped pixel convolution all keep the per-channel maximum).

YuNet also gets cross-layer equalization (Nagel et al., "Data-free quantization", 2019), driven by the calibration
activations: channel o of a producing convolution times g_o, the consuming convolution's input channel o divided by
g_o, so the float function is unchanged while small channels use more of the per-tensor activation grid:
- 1x1 conv -> depthwise conv (no activation between): free on both sides (per-channel weights), gains to equalize fully;
- depthwise conv -> ReLU [-> max pool] -> 1x1 conv: the 1x1 conv's weights pay, so the gain is sqrt of the range ratio;
- into the float prediction heads: free, full gains.
FaceBoxes is left as is: its channel ranges are already balanced (max/median ~2) and equalizing cost as much as it gave.
"""

from __future__ import annotations

import copy
import itertools

import numpy as np
import torch
from torch import nn

from .weight_rounding import InputMoments, round_conv

MAX_GAIN = 16.0
# Calibration frames used for the channel statistics and the layer input moments (every other one of ctx.detector_frames()).
STATISTICS_EVERY = 2


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                       conv.groups, bias=True)
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        folded.bias.copy_(bias)
    return folded


def fold_batchnorm(detector: nn.Module, family: str) -> nn.Module:
    """A copy of the detector with every BatchNorm folded into the convolution before it (BN becomes Identity)."""
    det = copy.deepcopy(detector).eval()
    with torch.no_grad():
        if family == "faceboxes":
            for module in det.modules():
                if hasattr(module, "conv") and isinstance(getattr(module, "bn", None), nn.BatchNorm2d):
                    module.conv = _fold(module.conv, module.bn)
                    module.bn = nn.Identity()
        else:
            stem = det.backbone.model0
            stem.conv1 = _fold(stem.conv1, stem.bn1)
            stem.bn1 = nn.Identity()
            for module in det.modules():
                if isinstance(getattr(module, "bn", None), nn.BatchNorm2d) and hasattr(module, "conv2"):
                    module.conv2 = _fold(module.conv2, module.bn)
                    module.bn = nn.Identity()
    return det


def _point_depth_units(yunet: nn.Module) -> list:
    from tddfa_edge.models.yunet import PointDepthConv

    return [m for m in yunet.modules() if isinstance(m, PointDepthConv)]


def _yunet_pairs(yunet: nn.Module) -> list[tuple[str, nn.Conv2d, list[nn.Conv2d], float]]:
    """(activation key, producer conv, consumer convs, exponent): the producer's output channels (after its ReLU, for
    the depthwise producers) feed only the listed convolutions."""
    pairs = []
    for unit in _point_depth_units(yunet):
        if unit.bn is not None:  # backbone / neck / shared head unit: 1x1 -> depthwise, no activation between
            pairs.append((f"pw:{id(unit)}", unit.conv1, [unit.conv2], 1.0))
    bb = yunet.backbone
    stages = [getattr(bb, f"model{i}") for i in range(bb.num_stages)]
    chain = [("stem", stages[0].conv1, stages[0].conv2.conv1)]
    units = [stages[0].conv2] + [u for s in stages[1:] for u in (s.conv1, s.conv2)]
    taps = {id(stages[i].conv2) for i in bb.out_stages}
    for a, b in itertools.pairwise(units):
        if id(a) not in taps:  # a tapped stage output also feeds the neck: two consumers, left alone
            chain.append((f"unit:{id(a)}", a.conv2, b.conv1))
    # The coarsest tap feeds only its lateral unit.
    last = stages[bb.out_stages[-1]].conv2
    chain.append((f"unit:{id(last)}", last.conv2, yunet.neck.lateral_convs[-1].conv1))
    for key, producer, consumer in chain:
        pairs.append((key, producer, [consumer], 0.5))
    # Into the float prediction heads: free.
    head = yunet.bbox_head
    sources = ([convs[-1] for convs in head.multi_level_share_convs] if head.multi_level_share_convs is not None
               else list(yunet.neck.lateral_convs))
    for level, src in enumerate(sources):
        if head.multi_level_share_convs is None and level > 0:
            continue  # the lateral output also goes up the pyramid (Add): left alone
        consumers = [getattr(head, f"multi_level_{k}")[level].conv1 for k in ("cls", "obj", "bbox", "kps")]
        pairs.append((f"unit:{id(src)}", src.conv2, consumers, 1.0))
    return pairs


def _channel_absmax(model: nn.Module, wrapper: nn.Module, frames: np.ndarray, pairs) -> dict[str, torch.Tensor]:
    """Per-channel max |activation| of every pair's source on the frames (after the ReLU for depthwise producers)."""
    wanted: dict[int, tuple[str, bool]] = {}
    for key, producer, _, _ in pairs:
        wanted[id(producer)] = (key, not key.startswith("pw:"))
    peak: dict[str, torch.Tensor] = {}
    hooks = []
    for module in model.modules():
        if id(module) in wanted:
            key, relu = wanted[id(module)]

            def hook(mod, inputs, output, key=key, relu=relu):
                y = torch.relu(output) if relu else output.abs()
                m = y.amax(dim=(0, 2, 3)).double()
                peak[key] = m if key not in peak else torch.maximum(peak[key], m)

            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for frame in frames:
                wrapper(torch.from_numpy(np.ascontiguousarray(frame[None])))
    finally:
        for h in hooks:
            h.remove()
    return peak


def equalize_yunet(yunet: nn.Module, frames: np.ndarray) -> list[dict]:
    """Cross-layer equalization of a BN-folded YuNet on uint8 NHWC frames; returns one record per equalized pair."""
    from .graph_wrappers import DetectorFromPixels

    pairs = _yunet_pairs(yunet)
    peaks = _channel_absmax(yunet, DetectorFromPixels(yunet, "yunet").eval(), frames, pairs)
    log = []
    with torch.no_grad():
        for key, producer, consumers, alpha in pairs:
            peak = peaks[key]
            top = float(peak.max())
            live = peak > top * 1e-4
            gain = torch.ones_like(peak)
            gain[live] = torch.clamp((top / peak[live]) ** alpha, 1.0, MAX_GAIN)
            g = gain.float()
            producer.weight.mul_(g.view(-1, 1, 1, 1))
            producer.bias.mul_(g)
            for c in consumers:
                if c.groups > 1:  # depthwise: channel o's filter
                    c.weight.div_(g.view(-1, 1, 1, 1))
                else:
                    c.weight.div_(g.view(1, -1, 1, 1))
            log.append({"exponent": alpha, "median_gain": round(float(gain.median()), 3), "max_gain": round(float(gain.max()), 3)})
    return log


def quantized_convs(model: nn.Module, family: str) -> dict[str, nn.Conv2d]:
    """The convolutions the int8 converters quantize (YuNet's prediction heads stay float)."""
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    if family == "yunet":
        convs = {n: m for n, m in convs.items() if ".multi_level_" not in n or "multi_level_share_convs" in n}
    return convs


def pixel_conv_name(family: str) -> str:
    return "conv1.conv" if family == "faceboxes" else "backbone.model0.conv1"


def prepare_detector(detector: nn.Module, family: str, frames: np.ndarray, pixel_qmax: int, equalize: bool | None = None,
                     round_weights: bool = True) -> tuple[nn.Module, dict]:
    """BN-folded (and for YuNet equalized) copy of ``detector`` whose quantized convolutions' weights lie on their
    per-channel int8 grid, qmax 127 (``pixel_qmax`` for the convolution reading the pixels). ``frames``: uint8 NHWC
    calibration frames at the converter's input size. Returns (module, facts for the manifest)."""
    from .graph_wrappers import DetectorFromPixels

    model = fold_batchnorm(detector, family)
    frames = frames[::STATISTICS_EVERY]
    equalize = family == "yunet" if equalize is None else equalize
    facts: dict = {"batchnorm": "folded into the convolutions"}
    if equalize:
        log = equalize_yunet(model, frames)
        facts["equalization"] = {"pairs": len(log), "median_gain": round(float(np.median([r["median_gain"] for r in log])), 3),
                                 "largest_gain": max(r["max_gain"] for r in log)}
    if round_weights:
        convs = quantized_convs(model, family)
        wrapper = DetectorFromPixels(model, family).eval()
        with InputMoments(convs) as moments, torch.no_grad():
            for frame in frames:
                wrapper(torch.from_numpy(np.ascontiguousarray(frame[None])))
        changed = []
        pixel = pixel_conv_name(family)
        for name, conv in convs.items():
            qmax = pixel_qmax if name == pixel else 127
            changed.append(round_conv(conv, moments.moments[name], qmax)["changed_from_nearest"])
        facts["weight_rounding"] = {
            "method": "GPTQ against each layer's calibration inputs (per output channel, scale max|w|/qmax)",
            "layers": len(convs), "pixel_conv_qmax": pixel_qmax,
            "weights_not_nearest": round(float(np.mean(changed)), 4),
        }
    return model.eval(), facts
