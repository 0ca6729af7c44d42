"""FaceBoxes rewritten so every op runs inside LiteRT's XNNPACK delegate, mathematically identical to the original.

Rewrites: CReLU -> one conv with [W, -W]; max-pool padding -> zero PAD (exact after a ReLU); the inception
blocks' 3x3 average pool -> a depthwise conv with 1/9 weights (int8 AVERAGE_POOL_2D stays outside XNNPACK).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from tddfa_edge.runtime.faceboxes_decoding import BGR_MEAN

def _fold_bn(conv: nn.Conv2d, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(bn, nn.Identity):  # already folded (``detector_prep``)
        return conv.weight, conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv.weight * scale[:, None, None, None], bias


def _conv(weight: torch.Tensor, bias: torch.Tensor, stride, padding) -> nn.Conv2d:
    out_c, in_c, kh, kw = weight.shape
    conv = nn.Conv2d(in_c, out_c, (kh, kw), stride, padding, bias=True)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    return conv


class _ConvRelu(nn.Module):
    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


def crelu_as_conv(block, input_offset: torch.Tensor | None = None) -> _ConvRelu:
    """conv + BN + ReLU([x, -x]) == ReLU(conv with weights [W, -W], bias [b, -b]): one int8 conv, no negation or concat.

    ``input_offset`` (per input channel) is what the real input lacks, e.g. ``128 - mean`` when the graph reads
    ``pixel - 128`` but the network wants ``pixel - mean``; it enters the bias as ``W . offset``.
    """
    weight, bias = _fold_bn(block.conv, block.bn)
    if input_offset is not None:
        bias = bias + (weight * input_offset.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
    return _ConvRelu(_conv(torch.cat([weight, -weight]), torch.cat([bias, -bias]), block.conv.stride, block.conv.padding))


class _PaddedMaxPool(nn.Module):
    """3x3/2 max pool with PyTorch's padding 1, as a zero PAD (XNNPACK) + unpadded pool.

    Exact because the input is a ReLU output: a zero in the window never beats the real maximum, so it can
    stand in for the -inf padding that becomes a PADV2 op XNNPACK does not take.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Padded in NHWC: the converter then cancels the layout transposes around the int8 PAD.
        x = torch.nn.functional.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1)).permute(0, 3, 1, 2)
        return torch.nn.functional.max_pool2d(x, kernel_size=3, stride=2)


class _MeanPool3x3(nn.Module):
    """3x3/1 average pool (count_include_pad) as a depthwise conv with 1/9 weights: int8 AVERAGE_POOL_2D stays
    outside XNNPACK, an int8 depthwise conv does not."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0 / 9.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _Inception(nn.Module):
    def __init__(self, block, mean_pool: bool) -> None:
        super().__init__()
        self.block = block
        self.pool = _MeanPool3x3(128) if mean_pool else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        pooled = self.pool(x) if self.pool is not None else torch.nn.functional.avg_pool2d(x, 3, 1, 1)
        return torch.cat([b.branch1x1(x), b.branch1x1_2(pooled), b.branch3x3(b.branch3x3_reduce(x)),
                          b.branch3x3_3(b.branch3x3_2(b.branch3x3_reduce_2(x)))], 1)


class EdgeFaceBoxes(nn.Module):
    """FaceBoxes rewritten for XNNPACK, mathematically identical to ``FaceBoxesDetector`` (up to float rounding).

    Input NHWC: uint8 pixels (``int8_input=False``; the graph subtracts the BGR mean) or the real value
    ``pixel - 128`` of an int8 input tensor (``int8_input=True``; the mean offset is folded into conv1's bias,
    exact except on the taps over conv1's zero padding).
    Rewrites: CReLU -> one conv with [W, -W]; max-pool padding -> zero PAD; avg pool -> depthwise 1/9 conv.
    Outputs ``loc`` (1, P, 4) and ``conf`` (1, P, 2) softmax, as the ONNX detector.
    """

    def __init__(self, detector: nn.Module, int8_input: bool, crelu_conv: bool = True, mean_pool_conv: bool = True,
                 input_zero_pixel: float = 128.0) -> None:
        super().__init__()
        det = copy.deepcopy(detector).eval()
        self.int8_input = int8_input
        mean = torch.tensor(BGR_MEAN, dtype=torch.float32)
        offset = (input_zero_pixel - mean) if int8_input else None
        with torch.no_grad():
            if crelu_conv:
                self.conv1 = crelu_as_conv(det.conv1, offset)
                self.conv2 = crelu_as_conv(det.conv2)
            else:
                if offset is not None:
                    w = det.conv1.conv.weight
                    shift = (w * offset.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
                    if isinstance(det.conv1.bn, nn.Identity):
                        det.conv1.conv.bias += shift
                    else:
                        det.conv1.bn.running_mean -= shift
                self.conv1, self.conv2 = det.conv1, det.conv2
        self.register_buffer("mean", mean.view(1, 3, 1, 1))
        self.pool = _PaddedMaxPool()
        self.inceptions = nn.ModuleList([_Inception(b, mean_pool_conv) for b in (det.inception1, det.inception2, det.inception3)])
        self.det = det

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        x = pixels.permute(0, 3, 1, 2)
        x = x if self.int8_input else x.float() - self.mean
        x = self.pool(self.conv2(self.pool(self.conv1(x))))
        for block in self.inceptions:
            x = block(x)
        det = self.det
        sources = [x]
        x = det.conv3_2(det.conv3_1(x))
        sources.append(x)
        x = det.conv4_2(det.conv4_1(x))
        sources.append(x)
        loc = torch.cat([head(s).permute(0, 2, 3, 1).reshape(1, -1) for s, head in zip(sources, det.loc)], 1)
        conf = torch.cat([head(s).permute(0, 2, 3, 1).reshape(1, -1) for s, head in zip(sources, det.conf)], 1)
        return {"loc": loc.reshape(1, -1, 4), "conf": torch.softmax(conf.reshape(1, -1, 2), dim=-1)}
