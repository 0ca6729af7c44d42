"""AFLW2000-3D normalized mean error, 3DDFA benchmark protocol.

Per image: mean 2D L2 error over the 68 landmarks divided by sqrt(w * h) of the ground-truth landmarks'
bounding box. Report the mean per |yaw| bin (<= 30, 30-60, > 60 degrees) and the mean of the three bin
means (the headline NME, in %). Predictions are made on the benchmark's own 120x120 crops and mapped to
the original image through each crop's roi box.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import cv2
import numpy as np

from tddfa_edge.datasets.locate import resolve_data_file
from tddfa_edge.contracts.errors import DataFileError
from tddfa_edge.runtime.morphable_model import MorphableModel

BIN_NAMES = ("0-30", "30-60", "60-90")


@dataclass(frozen=True)
class Aflw2000:
    crops: np.ndarray  # (2000, 120, 120, 3) uint8 BGR
    roi_boxes: np.ndarray  # (2000, 4)
    landmarks: np.ndarray  # (2000, 3, 68) original annotation
    landmarks_reannotated: np.ndarray  # (2000, 3, 68)
    yaw: np.ndarray  # (2000,) degrees
    names: tuple[str, ...] = field(default=())


def load_aflw2000(data_dir: str | os.PathLike | None = None, limit: int | None = None) -> Aflw2000:
    root = resolve_data_file("aflw2000-3d/list.txt", data_dir).parent
    names = [n.strip() for n in (root / "list.txt").read_text().splitlines() if n.strip()]
    if limit:
        names = names[:limit]
    crops = np.empty((len(names), 120, 120, 3), dtype=np.uint8)
    for i, name in enumerate(names):
        img = cv2.imread(str(root / "images" / name), cv2.IMREAD_COLOR)
        if img is None or img.shape[:2] != (120, 120):
            raise DataFileError(f"AFLW2000-3D crop {name} missing or not 120x120")
        crops[i] = img
    n = len(names)

    def arr(rel):
        return np.load(root / rel, allow_pickle=False)[:n]

    return Aflw2000(
        crops=crops,
        roi_boxes=arr("AFLW2000-3D_crop.roi_box.npy").astype(np.float64),
        landmarks=arr("AFLW2000-3D.pts68.npy").astype(np.float64),
        landmarks_reannotated=arr("AFLW2000-3D-Reannotated.pts68.npy").astype(np.float64),
        yaw=arr("AFLW2000-3D.pose.npy").astype(np.float64).reshape(-1),
        names=tuple(names),
    )


@dataclass(frozen=True)
class NmeReport:
    per_image: np.ndarray  # (N,) NME of each image, in %
    bins: tuple[float, float, float]  # mean NME per yaw bin, in %
    bin_counts: tuple[int, int, int]
    headline: float  # mean of the three bin means, in %

    def to_dict(self) -> dict:
        return {
            "headline": round(self.headline, 4),
            "bins": {name: round(v, 4) for name, v in zip(BIN_NAMES, self.bins)},
            "bin_counts": dict(zip(BIN_NAMES, self.bin_counts)),
            "mean_all": round(float(self.per_image.mean()), 4),
        }


def landmarks_in_image(mm: MorphableModel, params: np.ndarray, roi_boxes: np.ndarray) -> np.ndarray:
    """(N, 62) params of the benchmark crops -> (N, 3, 68) landmarks in original-image pixels, mapped through each
    crop's roi box exactly as the runtime maps a face's crop into its frame."""
    return mm.landmarks_in_frame(params, roi_boxes).transpose(0, 2, 1)


def yaw_bin_masks(yaw_deg: np.ndarray) -> list[np.ndarray]:
    """|yaw| <= 30, 30 < |yaw| <= 60, |yaw| > 60 degrees: the 3DDFA protocol's three bins."""
    abs_yaw = np.abs(np.asarray(yaw_deg, dtype=np.float64))
    return [abs_yaw <= 30, (abs_yaw > 30) & (abs_yaw <= 60), abs_yaw > 60]


def nme_report(pred: np.ndarray, gt: np.ndarray, yaw: np.ndarray) -> NmeReport:
    pred_xy, gt_xy = pred[:, :2].astype(np.float64), gt[:, :2]
    minimum, maximum = gt_xy.min(axis=2), gt_xy.max(axis=2)
    size = np.sqrt((maximum[:, 0] - minimum[:, 0]) * (maximum[:, 1] - minimum[:, 1]))
    per_image = np.linalg.norm(pred_xy - gt_xy, axis=1).mean(axis=1) / size * 100
    masks = yaw_bin_masks(yaw)
    bins = tuple(float(per_image[m].mean()) if m.any() else float("nan") for m in masks)
    return NmeReport(per_image, bins, tuple(int(m.sum()) for m in masks), float(np.nanmean(bins)))


def evaluate_params(mm: MorphableModel, params: np.ndarray, data: Aflw2000) -> dict[str, NmeReport]:
    pred = landmarks_in_image(mm, params, data.roi_boxes)
    return {
        "original": nme_report(pred, data.landmarks, data.yaw),
        "reannotated": nme_report(pred, data.landmarks_reannotated, data.yaw),
    }


def evaluate_aligner(aligner, data: Aflw2000, batch: int = 50) -> tuple[dict[str, NmeReport], np.ndarray]:
    """NME of a ``FaceAligner``'s regressor on the benchmark crops; also returns the (N, 62) params."""
    params = np.concatenate([aligner.regress_crops(data.crops[i : i + batch]) for i in range(0, len(data.crops), batch)])
    return evaluate_params(aligner.morphable_model, params, data), params


def paired_comparison(a: NmeReport, b: NmeReport) -> dict:
    """Per-image paired statistics of ``b`` minus ``a`` (e.g. quantized minus fp32)."""
    diff = b.per_image - a.per_image
    return {
        "mean_diff": round(float(diff.mean()), 5),
        "median_diff": round(float(np.median(diff)), 5),
        "worse_images": int((diff > 0).sum()),
        "better_images": int((diff < 0).sum()),
        "max_worse": round(float(diff.max()), 4),
        "std_diff": round(float(diff.std()), 5),
    }
