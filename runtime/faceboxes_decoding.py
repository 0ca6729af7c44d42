"""FaceBoxes post-processing in numpy: prior boxes and SSD box decoding of the candidates above a score.

Reproduces the 3DDFA_V2 detector: priors of 32/64/128 px (densified 4x4 / 2x2 / 1x1) on the stride-32
map, 256 px on stride 64, 512 px on stride 128; variances (0.1, 0.2); a face is a box scoring above 0.5.
NMS (IoU 0.3, inclusive +1 px areas as upstream) is the caller's, in frame pixels (``runtime.boxes.nms``).
"""

from __future__ import annotations

from functools import lru_cache

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




def decode_faceboxes(loc: np.ndarray, scores: np.ndarray, height: int, width: int, score_threshold: float) -> np.ndarray:
    """(N, 5) float32 ``x1, y1, x2, y2, score`` in network-input pixels for the priors scoring above the threshold.

    Only candidates are decoded: in greedy NMS a lower-scoring box can only suppress boxes scoring even lower,
    so filtering first keeps the same result as NMS over all priors.
    """
    candidates = np.flatnonzero(scores > score_threshold)
    if candidates.size == 0:
        return np.zeros((0, 5), dtype=np.float32)
    boxes = decode_boxes(loc[candidates], prior_boxes(height, width)[candidates])
    boxes *= np.array([width, height, width, height], dtype=np.float32)
    return np.concatenate([boxes, scores[candidates, None].astype(np.float32)], axis=1)
