"""FaceBoxes post-processing in numpy: prior boxes, SSD box decoding, score filter and greedy NMS.

Reproduces the 3DDFA_V2 detector: priors of 32/64/128 px (densified 4x4 / 2x2 / 1x1) on the stride-32
map, 256 px on stride 64, 512 px on stride 128; variances (0.1, 0.2); NMS IoU 0.3 with the inclusive
(+1 px) area convention; a face is a box scoring above 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

STEPS = (32, 64, 128)
# (anchor size in px, densification per axis) per detection source, in the network's output order.
ANCHORS = (((32, 4), (64, 2), (128, 1)), ((256, 1),), ((512, 1),))
VARIANCES = (0.1, 0.2)
BGR_MEAN = (104.0, 117.0, 123.0)


@lru_cache(maxsize=16)
def prior_boxes(height: int, width: int) -> np.ndarray:
    """(P, 4) float32 priors ``cx, cy, w, h`` normalized to the image, in the network's output order.

    Order: source, then cell row, cell column, then anchor size, then the densified sub-grid (row-major).
    """
    per_source = []
    for step, anchors in zip(STEPS, ANCHORS):
        rows, cols = -(-height // step), -(-width // step)
        cell_anchors = []
        for size, dense in anchors:
            offsets = np.arange(dense, dtype=np.float64) / dense if dense > 1 else np.array([0.5])
            # Sub-grid centres inside each cell: rows then columns, cx varies fastest.
            oy, ox = np.meshgrid(offsets, offsets, indexing="ij")
            cy = (np.arange(rows)[:, None, None] + oy.reshape(1, 1, -1)) * step / height  # (rows,1,k)
            cx = (np.arange(cols)[None, :, None] + ox.reshape(1, 1, -1)) * step / width  # (1,cols,k)
            k = dense * dense
            block = np.empty((rows, cols, k, 4), dtype=np.float64)
            block[..., 0] = np.broadcast_to(cx, (rows, cols, k))
            block[..., 1] = np.broadcast_to(cy, (rows, cols, k))
            block[..., 2] = size / width
            block[..., 3] = size / height
            cell_anchors.append(block)
        per_source.append(np.concatenate(cell_anchors, axis=2).reshape(-1, 4))
    priors = np.concatenate(per_source, axis=0).astype(np.float32)
    priors.setflags(write=False)
    return priors


def decode_boxes(loc: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """SSD decoding of ``loc`` (P, 4) against ``priors`` (P, 4) into normalized ``x1, y1, x2, y2``."""
    centers = priors[:, :2] + loc[:, :2] * np.float32(VARIANCES[0]) * priors[:, 2:]
    sizes = priors[:, 2:] * np.exp(loc[:, 2:] * np.float32(VARIANCES[1]))
    top_left = centers - sizes / 2
    return np.concatenate([top_left, sizes + top_left], axis=1)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS, highest score first, inclusive-pixel areas; returns kept indices in score order."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou < iou_threshold]
    return np.asarray(keep, dtype=np.int64)


@dataclass(frozen=True)
class DetectorConfig:
    """How frames are fed to FaceBoxes.

    ``input_size`` None: the frame is downscaled (never upscaled) to fit ``max_height`` x ``max_width`` and run
    at that size (3DDFA_V2's rule, 720 x 1080), which needs a dynamic-shape model. ``input_size`` (w, h): the
    frame is letterboxed (resized to fit, padded right/bottom with the mean colour) to that fixed size.
    """

    score_threshold: float = 0.5
    nms_threshold: float = 0.3
    max_faces: int = 750
    max_height: int = 720
    max_width: int = 1080
    input_size: tuple[int, int] | None = None
    interpolation: int = cv2.INTER_LINEAR


@dataclass(frozen=True)
class DetectorInput:
    image: np.ndarray  # (H, W, 3) uint8 BGR at the network's input size
    scale: float  # network pixels per frame pixel


def prepare_detector_input(frame: np.ndarray, config: DetectorConfig) -> DetectorInput:
    h, w = frame.shape[:2]
    if config.input_size is None:
        scale = 1.0
        if h > config.max_height:
            scale = config.max_height / h
        if w * scale > config.max_width:
            scale *= config.max_width / (w * scale)
        if scale == 1.0:
            return DetectorInput(frame, 1.0)
        size = (int(scale * w), int(scale * h))
        return DetectorInput(cv2.resize(frame, size, interpolation=config.interpolation), scale)
    in_w, in_h = config.input_size
    scale = min(in_w / w, in_h / h)
    new_w, new_h = max(1, min(in_w, round(w * scale))), max(1, min(in_h, round(h * scale)))
    canvas = np.empty((in_h, in_w, 3), dtype=np.uint8)
    # Resize straight into the canvas and paint only the padding: filling the whole canvas with the mean
    # colour first cost as much as the resize itself.
    if (new_w, new_h) == (w, h):
        canvas[:h, :w] = frame
    else:
        view = canvas[:new_h, :new_w]
        resized = cv2.resize(frame, (new_w, new_h), dst=view, interpolation=config.interpolation)
        if not np.shares_memory(resized, canvas):  # OpenCV reallocates a dst it cannot use
            view[...] = resized
    mean = np.array(BGR_MEAN, dtype=np.uint8)
    if new_h < in_h:
        canvas[new_h:] = mean
    if new_w < in_w:
        canvas[:new_h, new_w:] = mean
    return DetectorInput(canvas, scale)


def postprocess_detections(
    loc: np.ndarray, scores: np.ndarray, net_height: int, net_width: int, scale: float, config: DetectorConfig
) -> np.ndarray:
    """Boxes ``(N, 5)`` float32 ``x1, y1, x2, y2, score`` in frame pixels, best first.

    Only boxes above the final score threshold enter NMS: in greedy NMS a lower-scoring box can only
    suppress boxes scoring even lower, so the kept set above the threshold is the same as NMS over all.
    """
    candidates = np.flatnonzero(scores > config.score_threshold)
    if candidates.size == 0:
        return np.zeros((0, 5), dtype=np.float32)
    priors = prior_boxes(net_height, net_width)
    boxes = decode_boxes(loc[candidates], priors[candidates])
    frame_scale = np.array([net_width, net_height, net_width, net_height], dtype=np.float32)
    boxes = boxes * frame_scale / np.float32(scale)
    cand_scores = scores[candidates].astype(np.float32)
    keep = nms(boxes, cand_scores, config.nms_threshold)[: config.max_faces]
    return np.concatenate([boxes[keep], cand_scores[keep, None]], axis=1).astype(np.float32)
