"""Face boxes ``x1, y1, x2, y2`` in pixels: overlap, one-to-one matching and non-maximum suppression.

One definition for the whole toolkit: the tracker (does a detection continue a track?), the exporter (does
a converted detector find the faces PyTorch finds?) and the benchmarks (recall) all match boxes here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def iou_matrix(a, b) -> np.ndarray:
    """(len(a), len(b)) intersection over union of two box sets (continuous areas, no +1)."""
    a = np.asarray(a, np.float64).reshape(-1, np.shape(a)[-1] if np.ndim(a) > 1 else 4)[:, None, :4]
    b = np.asarray(b, np.float64).reshape(-1, np.shape(b)[-1] if np.ndim(b) > 1 else 4)[None, :, :4]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    union = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


@dataclass(frozen=True)
class BoxMatch:
    """Greedy one-to-one matching, highest IoU first."""

    pairs: list[tuple[int, int, float]]  # (index in truth, index in found, IoU)
    missed: list[int]  # truth boxes without a match
    extra: list[int]  # found boxes without a match

    @property
    def matched(self) -> int:
        return len(self.pairs)


def match_boxes(truth, found, iou_min: float) -> BoxMatch:
    truth = np.asarray(truth, np.float64).reshape(-1, np.shape(truth)[-1] if len(truth) else 4)
    found = np.asarray(found, np.float64).reshape(-1, np.shape(found)[-1] if len(found) else 4)
    if len(truth) == 0 or len(found) == 0:
        return BoxMatch([], list(range(len(truth))), list(range(len(found))))
    iou = iou_matrix(truth, found)
    ti, fi = np.nonzero(iou >= iou_min)
    order = np.lexsort((fi, ti, -iou[ti, fi]))  # highest IoU first; ties by index, so the result is deterministic
    used_t, used_f, pairs = set(), set(), []
    for k in order:
        i, j = int(ti[k]), int(fi[k])
        if i not in used_t and j not in used_f:
            used_t.add(i)
            used_f.add(j)
            pairs.append((i, j, float(iou[i, j])))
    return BoxMatch(pairs, [i for i in range(len(truth)) if i not in used_t], [j for j in range(len(found)) if j not in used_f])


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, inclusive: bool = False, limit: int | None = None) -> np.ndarray:
    """Greedy NMS, highest score first (ties: lower index first); returns kept indices in score order.

    ``inclusive``: areas count whole pixels (``x2 - x1 + 1``), the convention of the original FaceBoxes code
    (kept for parity with 3DDFA_V2's boxes). ``limit`` stops after that many boxes are kept.
    """
    order = np.argsort(-scores, kind="stable")
    one = 1.0 if inclusive else 0.0
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    keep = []
    while order.size and (limit is None or len(keep) < limit):
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        inter = w * h
        union = areas[i] + areas[rest] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 1.0)
        order = rest[iou < iou_threshold]
    return np.asarray(keep, dtype=np.int64)


__all__ = ["iou_matrix", "match_boxes", "BoxMatch", "nms"]
