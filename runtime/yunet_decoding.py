"""YuNet post-processing in numpy: per-stride prior grids and box / keypoint decoding (no NMS).

The rule is the one OpenCV's ``FaceDetectorYN`` applies to the upstream ONNX outputs (and libfacedetection.train's
``MlvlPointGenerator(offset=0)`` trains with): on the level of stride s, the cell in column c and row r has its
prior point at (c, r) * s, the cell's top-left corner, with no +0.5;

    score    = sqrt(clip(cls, 0, 1) * clip(obj, 0, 1))
    centre   = ((c, r) + bbox[0:2]) * s,  size = exp(bbox[2:4]) * s
    keypoint = ((c, r) + kps[2k:2k+2]) * s   for the 5 points (right eye, left eye, nose tip, right and left
                                              mouth corners, as OpenCV names them)

Coordinates are in pixels of the network input (the padded frame). Candidates come out in OpenCV's order
(stride 8, 16, 32; cells row-major), not sorted by score: NMS is the caller's.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import numpy as np

STRIDES = (8, 16, 32)
NUM_KEYPOINTS = 5


def _grid_shape(height: int, width: int) -> list[tuple[int, int, int]]:
    if height <= 0 or width <= 0 or height % STRIDES[-1] or width % STRIDES[-1]:
        raise ValueError(f"YuNet input size must be positive multiples of {STRIDES[-1]}, got {width}x{height}")
    return [(s, height // s, width // s) for s in STRIDES]


@lru_cache(maxsize=16)
def yunet_priors(height: int, width: int) -> tuple[np.ndarray, ...]:
    """Per stride (8, 16, 32): a read-only (rows * cols, 2) float32 array of cell indices ``(col, row)``.

    Row-major, the order of the network's cells; a prior's point in input pixels is ``grid * stride``.
    """
    grids = []
    for _, rows, cols in _grid_shape(int(height), int(width)):
        row, col = np.meshgrid(np.arange(rows, dtype=np.float32), np.arange(cols, dtype=np.float32), indexing="ij")
        grid = np.stack([col.ravel(), row.ravel()], axis=1)
        grid.setflags(write=False)
        grids.append(grid)
    return tuple(grids)


def _level_output(outputs: Mapping[str, np.ndarray], name: str, cells: int, k: int) -> np.ndarray:
    if name not in outputs:
        raise ValueError(f"YuNet output {name!r} is missing (got {sorted(outputs)})")
    a = np.asarray(outputs[name])
    if a.shape != (1, cells, k):
        raise ValueError(f"YuNet output {name} has shape {a.shape}, expected (1, {cells}, {k}) for this input size")
    return a[0].astype(np.float32, copy=False)


def decode_yunet(
    outputs: Mapping[str, np.ndarray], height: int, width: int, score_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 5) float32 ``x1, y1, x2, y2, score`` and keypoints (N, 5, 2) float32 ``x, y`` with score >= threshold.

    ``outputs``: the 12 network outputs of one image (batch 1) keyed ``cls_8`` ... ``kps_32``; ``height`` and
    ``width``: the network input size.
    """
    boxes, keypoints = [], []
    for (stride, rows, cols), grid in zip(_grid_shape(height, width), yunet_priors(height, width)):
        cells = rows * cols
        cls = _level_output(outputs, f"cls_{stride}", cells, 1)[:, 0]
        obj = _level_output(outputs, f"obj_{stride}", cells, 1)[:, 0]
        bbox = _level_output(outputs, f"bbox_{stride}", cells, 4)
        kps = _level_output(outputs, f"kps_{stride}", cells, 2 * NUM_KEYPOINTS)
        score = np.sqrt(np.clip(cls, 0.0, 1.0) * np.clip(obj, 0.0, 1.0))
        # Same comparison as OpenCV (it drops score < threshold), so a score equal to the threshold is kept.
        keep = np.flatnonzero(score >= np.float32(score_threshold))
        if keep.size == 0:
            continue
        cell = grid[keep]
        s = np.float32(stride)
        centre = (cell + bbox[keep, 0:2]) * s
        half = np.exp(bbox[keep, 2:4]) * s / np.float32(2)
        boxes.append(np.concatenate([centre - half, centre + half, score[keep, None]], axis=1))
        keypoints.append((cell[:, None, :] + kps[keep].reshape(-1, NUM_KEYPOINTS, 2)) * s)
    if not boxes:
        return np.zeros((0, 5), np.float32), np.zeros((0, NUM_KEYPOINTS, 2), np.float32)
    return (np.concatenate(boxes).astype(np.float32, copy=False),
            np.concatenate(keypoints).astype(np.float32, copy=False))
