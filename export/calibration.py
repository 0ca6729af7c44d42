"""Calibration and held-out crops from the AFLW calibration set (never from the AFLW2000-3D benchmark).

The 1000 crops in ``calibration/list.txt`` order are split deterministically: every fifth crop
(index % 5 == 4, 200 crops) is held out for drift checks, the other 800 calibrate.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from tddfa_edge.datasets.locate import resolve_data_file
from tddfa_edge.contracts.errors import DataFileError

HOLDOUT_EVERY = 5


def calibration_names(data_dir: str | os.PathLike | None = None) -> tuple[Path, list[str]]:
    try:
        list_path = resolve_data_file("calibration/list.txt", data_dir)
    except DataFileError as exc:
        raise DataFileError(f"{exc}; or calibrate on your own photos or video: --calibration DIR_OR_VIDEO") from None
    names = [line.strip() for line in list_path.read_text().splitlines() if line.strip()]
    if not names:
        raise DataFileError(f"{list_path} is empty")
    return list_path.parent / "images", names


def load_crops(folder: Path, names: list[str], size: int = 120) -> np.ndarray:
    """(N, size, size, 3) uint8 BGR crops, in the given order."""
    out = np.empty((len(names), size, size, 3), dtype=np.uint8)
    for i, name in enumerate(names):
        img = cv2.imread(str(folder / name), cv2.IMREAD_COLOR)
        if img is None:
            raise DataFileError(f"cannot read calibration image {folder / name}")
        if img.shape[:2] != (size, size):
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR_EXACT)
        out[i] = img
    return out


def calibration_crops(data_dir=None, limit: int | None = None) -> np.ndarray:
    folder, names = calibration_names(data_dir)
    chosen = [n for i, n in enumerate(names) if i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1]
    return load_crops(folder, chosen[:limit] if limit else chosen)


def holdout_crops(data_dir=None, limit: int | None = None) -> np.ndarray:
    folder, names = calibration_names(data_dir)
    chosen = [n for i, n in enumerate(names) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]
    return load_crops(folder, chosen[:limit] if limit else chosen)


def _mosaics(crops: np.ndarray, count: int, size: tuple[int, int], seed: int, min_side: int, max_fraction: float) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    width, height = size
    largest = max(min_side + 1, int(max_fraction * min(width, height)))
    frames = []
    for _ in range(count):
        background = crops[rng.integers(len(crops))]
        frame = cv2.GaussianBlur(cv2.resize(background, (width, height), interpolation=cv2.INTER_LINEAR_EXACT), (0, 0), 9)
        for _ in range(int(rng.integers(1, 5))):
            side = int(np.exp(rng.uniform(np.log(min_side), np.log(largest))))
            x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
            face = crops[rng.integers(len(crops))]
            frame[y : y + side, x : x + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_LINEAR_EXACT)
        frames.append(frame)
    return frames


# Face sides in the detector calibration mosaics: log-uniform from MIN_FACE px up to this fraction of the frame's
# short side. Faces as large as the frame matter: their activations are the largest, and ranges calibrated on
# 48-240 px faces clipped them (YuNet at 640x384: clipping alone moved boxes by up to 6% of their side).
MIN_FACE = 24
MAX_FACE_FRACTION = 0.95
DETECTOR_FRAMES = 48


def detector_calibration_frames(data_dir=None, count: int = DETECTOR_FRAMES, size: tuple[int, int] = (640, 360),
                                seed: int = 0) -> list[np.ndarray]:
    """Whole frames for detector calibration, built only from the calibration crops.

    Each frame is a blurred, enlarged crop as background with 1-4 crops pasted at sides log-uniform between
    ``MIN_FACE`` px and ``MAX_FACE_FRACTION`` of the frame's short side, so the detector sees faces of every size it
    detects on a textured background. Seeded, so the same frames every time.
    """
    return _mosaics(calibration_crops(data_dir), count, size, seed, MIN_FACE, MAX_FACE_FRACTION)


def detector_holdout_frames(data_dir=None, count: int = 24, size: tuple[int, int] = (640, 360), seed: int = 1) -> list[np.ndarray]:
    """The same kind of mosaics built from the held-out crops only (for checks that must not see calibration faces)."""
    return _mosaics(holdout_crops(data_dir), count, size, seed, MIN_FACE, MAX_FACE_FRACTION)
