"""End-to-end accuracy on whole photos: detector + crop + regressor, as users run the pipeline.

Data: the 700 AFLW2000-3D original photos of ``aflw2000-3d-originals/`` (450x450, one annotated face each; other
faces may appear unannotated). Each photo goes through ``aligner(image)`` (image mode, the bundle's detector and
crop rule, the refine pass when the bundle asks for it). The annotated face is the returned face whose 68
landmarks' box overlaps the ground truth's 68-point box best (IoU >= 0.3); no such face is a miss.

NME follows the 3DDFA protocol (``nme.py``): mean 2D error over the 68 points divided by sqrt(w * h) of the ground
truth box, mean per |yaw| bin (<= 30, 30-60, > 60 degrees, yaw from the photos' ``Pose_Para``) and the mean of the
three bin means, in %. Misses are reported per bin and left out of the NME (a miss has no landmarks); compare
misses and NME together. The 120x120 AFLW2000-3D benchmark (``nme.py``) stays the headline regressor accuracy:
this one measures what the detector and the crop rule add to it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tddfa_edge.datasets.locate import resolve_data_file
from tddfa_edge.runtime.boxes import iou_matrix

from .nme import BIN_NAMES, yaw_bin_masks

ORIGINALS = "aflw2000-3d-originals"
MATCH_IOU = 0.3


@dataclass(frozen=True)
class Originals:
    names: tuple[str, ...]
    folder: Path
    landmarks: np.ndarray  # (N, 2, 68) x, y in image pixels
    yaw_deg: np.ndarray  # (N,)


def load_originals(data_dir: str | os.PathLike | None = None, limit: int | None = None) -> Originals:
    gt_path = resolve_data_file(f"{ORIGINALS}/gt.npz", data_dir)
    with np.load(gt_path, allow_pickle=False) as gt:
        names = tuple(str(n) for n in gt["names"])
        pts = gt["pts68"][:, :2].astype(np.float64)
        yaw = np.degrees(gt["pose_pyr_rad"][:, 1].astype(np.float64))
    n = len(names) if limit is None else min(limit, len(names))
    return Originals(names[:n], gt_path.parent / "images", pts[:n], yaw[:n])


def _box(points_2x68: np.ndarray) -> np.ndarray:
    return np.concatenate([points_2x68.min(axis=1), points_2x68.max(axis=1)])


def evaluate(aligner, data: Originals, refine: bool | None = None) -> dict:
    """End-to-end NME of ``aligner`` on the photos; ``refine`` overrides the bundle's refine pass (None: keep)."""
    import cv2

    if refine is not None and refine != aligner.settings.refine_detections:
        aligner = _with_refine(aligner, refine)
    per_image = np.full(len(data.names), np.nan)
    for i, name in enumerate(data.names):
        image = cv2.imread(str(data.folder / name), cv2.IMREAD_COLOR)
        faces = aligner(image)
        if not faces:
            continue
        truth = data.landmarks[i]
        boxes = np.stack([_box(f.landmarks_68[:, :2].T) for f in faces])
        iou = iou_matrix([_box(truth)], boxes)[0]
        best = int(np.argmax(iou))
        if iou[best] < MATCH_IOU:
            continue
        lo, hi = truth.min(axis=1), truth.max(axis=1)
        size = np.sqrt((hi[0] - lo[0]) * (hi[1] - lo[1]))
        per_image[i] = np.linalg.norm(faces[best].landmarks_68[:, :2].T - truth, axis=0).mean() / size * 100
    return summarize(per_image, data.yaw_deg)


def summarize(per_image: np.ndarray, yaw_deg: np.ndarray) -> dict:
    bins, rows = [], {}
    for name, mask in zip(BIN_NAMES, yaw_bin_masks(yaw_deg)):
        found = mask & np.isfinite(per_image)
        mean = float(per_image[found].mean()) if found.any() else float("nan")
        bins.append(mean)
        rows[name] = {"nme": round(mean, 4), "images": int(mask.sum()), "misses": int((mask & ~np.isfinite(per_image)).sum())}
    return {
        "headline": round(float(np.nanmean(bins)), 4),
        "bins": rows,
        "images": int(len(per_image)),
        "misses": int((~np.isfinite(per_image)).sum()),
        "mean_all_found": round(float(np.nanmean(per_image)), 4),
    }


def _with_refine(aligner, refine: bool):
    """A shallow copy of ``aligner`` whose pipeline settings say ``refine_detections=refine``."""
    import copy

    other = copy.copy(aligner)
    other.settings = dataclasses.replace(aligner.settings, refine_detections=refine)
    return other
