"""Calibration and held-out crops from the AFLW calibration set (never from the AFLW2000-3D benchmark).

The 1000 crops in ``calibration/list.txt`` order are split deterministically: every fifth crop
(index % 5 == 4, 200 crops) is held out for drift checks, the other 800 calibrate.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from tddfa_edge.runtime.data_files import resolve_data_file
from tddfa_edge.runtime.errors import DataFileError

HOLDOUT_EVERY = 5


def calibration_names(data_dir: str | os.PathLike | None = None) -> tuple[Path, list[str]]:
    list_path = resolve_data_file("calibration/list.txt", data_dir)
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


def detector_calibration_frames(data_dir=None, count: int = 32, size: tuple[int, int] = (640, 360), seed: int = 0) -> list[np.ndarray]:
    """Whole frames for detector calibration, built only from the calibration crops.

    Each frame is a blurred, enlarged crop as background with 1-4 crops pasted at 48-240 px, so the
    detector sees faces of many sizes on a textured background. Seeded, so the same frames every time.
    """
    crops = calibration_crops(data_dir)
    rng = np.random.default_rng(seed)
    width, height = size
    frames = []
    for _ in range(count):
        background = crops[rng.integers(len(crops))]
        frame = cv2.GaussianBlur(cv2.resize(background, (width, height), interpolation=cv2.INTER_LINEAR_EXACT), (0, 0), 9)
        for _ in range(int(rng.integers(1, 5))):
            side = int(rng.integers(48, min(240, height)))
            x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
            face = crops[rng.integers(len(crops))]
            frame[y : y + side, x : x + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_LINEAR_EXACT)
        frames.append(frame)
    return frames
