"""Calibration from the user's own photos or video (``tddfa-export --calibration DIR_OR_VIDEO``).

Int8 calibration needs what the networks will see on the device. From a folder of photos or a video this makes:

- regressor crops exactly as the runtime makes them: the PyTorch fp32 detector finds the faces (3DDFA_V2's
  input rule, whole frame fitted into 1280x720), each face is cropped by the box rule (detection frames) and,
  after one fp32 regression, by the landmark rule (tracking frames and the refine pass), resized with the
  target's crop interpolation;
- detector frames: the photos themselves, at the detector's input size, as the runtime letterboxes them.

Everything is deterministic: files in natural name order, a video's frames at a fixed stride, faces in detector
order, and a fixed subsample when there are more crops than needed. Every fifth crop (index % 5 == 4) is held
out for the export-time drift check, like the curated calibration set.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tddfa_edge.contracts.errors import DataFileError

HOLDOUT_EVERY = 5
MAX_IMAGES = 400  # photos or video frames read (a video is sampled at a fixed stride down to this)
MAX_CROPS = 1000  # 800 calibrate + 200 held out, as the curated set
MIN_CROPS = 20
DETECTOR_FRAMES = 32
IMAGE_SUFFIXES = frozenset(".jpg .jpeg .png .bmp .tif .tiff .webp .pgm .ppm .pnm .jp2".split())


@dataclass
class UserCalibration:
    """Crops and frames made from the user's photos or video (see the module docstring)."""

    source: Path
    images: int  # photos or frames read
    faces: int  # faces the detector found
    crops: np.ndarray  # (N, 120, 120, 3) uint8 BGR, box and landmark crops interleaved
    frames: list[np.ndarray] = field(repr=False)  # the photos / frames read (BGR uint8)

    def calibration_crops(self, limit: int | None = None) -> np.ndarray:
        chosen = self.crops[np.arange(len(self.crops)) % HOLDOUT_EVERY != HOLDOUT_EVERY - 1]
        return chosen[:limit] if limit else chosen

    def holdout_crops(self) -> np.ndarray:
        return self.crops[np.arange(len(self.crops)) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]

    def check_frames(self, count: int = 8) -> list[tuple[str, np.ndarray]]:
        """Frames the converted detectors are compared with PyTorch on: a fixed spread of the held-out frames."""
        held = [i for i in range(len(self.frames)) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1] or list(range(len(self.frames)))
        picks = sorted({held[int(k)] for k in np.linspace(0, len(held) - 1, min(count, len(held)))})
        return [(f"{self.source.name}#{i}", self.frames[i]) for i in picks]

    def detector_frames(self, size: tuple[int, int]) -> list[np.ndarray]:
        """Up to 32 of the photos letterboxed to the detector's input size (the calibration frames, not the held-out ones)."""
        from tddfa_edge.runtime.detector import prepare_detector_input
        from tddfa_edge.runtime.manifest import DetectorSettings

        settings = DetectorSettings("faceboxes", tuple(size), tuple(size), "linear_exact", 0.5, 0.3, 1)
        usable = [f for i, f in enumerate(self.frames) if i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1] or self.frames
        picks = np.linspace(0, len(usable) - 1, min(DETECTOR_FRAMES, len(usable))).round().astype(int)
        return [prepare_detector_input(usable[i], settings).image for i in sorted(set(picks.tolist()))]

    def digest(self) -> str:
        return hashlib.sha256(self.crops.tobytes()).hexdigest()

    def describe(self) -> str:
        return f"user calibration {self.source.name}: {self.images} images, {self.faces} faces, {len(self.crops)} crops"


def read_frames(source: Path, limit: int = MAX_IMAGES, progress=None) -> list[np.ndarray]:
    """The photos of a folder (natural name order, not recursive) or a video's frames at a fixed stride."""
    import cv2

    source = Path(source)
    if source.is_dir():
        files = sorted((p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()), key=_natural_key)
        if not files:
            raise DataFileError(f"calibration folder {source} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        picks = np.linspace(0, len(files) - 1, min(limit, len(files))).round().astype(int)
        frames = []
        for i in sorted(set(picks.tolist())):
            image = cv2.imread(str(files[i]), cv2.IMREAD_COLOR)
            if image is not None and min(image.shape[:2]) >= 16:
                frames.append(image)
            if progress:
                progress(1)
        return frames
    if not source.is_file():
        raise DataFileError(f"calibration source {source} not found (a folder of photos or a video file)")
    cap = cv2.VideoCapture(str(source))
    if not cap.isOpened():
        raise DataFileError(f"cannot read calibration video {source}")
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    stride = max(1, -(-total // limit)) if total > 0 else 1
    frames, index = [], 0
    while len(frames) < limit:
        ok, frame = cap.read()
        if not ok:
            break
        if index % stride == 0:
            frames.append(frame)
            if progress:
                progress(1)
        index += 1
    cap.release()
    return frames


def collect(source: Path, regressor, detector, detector_family: str, morphable_model, param_mean: np.ndarray,
            param_std: np.ndarray, crop_interpolation: str, progress=None) -> UserCalibration:
    """Detect, crop and subsample as described above; ``regressor`` and ``detector`` are the PyTorch fp32 networks,
    ``morphable_model`` the 68-point ``MorphableModel`` that turns their parameters into landmarks."""
    from tddfa_edge.runtime.crop import crop_and_resize, crop_boxes_from_face_boxes, crop_boxes_from_landmarks
    from tddfa_edge.runtime.detector import INTERPOLATIONS, FaceDetector
    from tddfa_edge.runtime.manifest import DetectorSettings

    from .reference import TorchDetector, torch_regressor_outputs

    frames = read_frames(Path(source), progress=progress)
    if not frames:
        raise DataFileError(f"no readable image in calibration source {source}")
    score = 0.5 if detector_family == "faceboxes" else 0.6
    finder = FaceDetector(TorchDetector(detector, detector_family),
                          DetectorSettings(detector_family, None, (1280, 720), "linear", score, 0.3, 16))
    interpolation = INTERPOLATIONS[crop_interpolation]
    crops, faces = [], 0
    for frame in frames:
        boxes = finder(frame).boxes
        if not len(boxes):
            continue
        faces += len(boxes)
        box_crops = np.stack([crop_and_resize(frame, b, 120, interpolation) for b in crop_boxes_from_face_boxes(boxes)])
        params = torch_regressor_outputs(regressor, box_crops) * param_std + param_mean
        landmark_boxes = crop_boxes_from_landmarks(morphable_model.landmarks_in_frame(params, crop_boxes_from_face_boxes(boxes)))
        for box_crop, landmark_box in zip(box_crops, landmark_boxes):
            crops += [box_crop, crop_and_resize(frame, landmark_box, 120, interpolation)]
    if len(crops) < MIN_CROPS:
        raise DataFileError(f"calibration source {source}: only {len(crops)} face crops in {len(frames)} images "
                            f"(at least {MIN_CROPS} needed; give more photos with faces)")
    crops = np.stack(crops)
    if len(crops) > MAX_CROPS:
        crops = crops[np.linspace(0, len(crops) - 1, MAX_CROPS).round().astype(int)]
    return UserCalibration(Path(source), len(frames), faces, crops, frames)


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


__all__ = ["UserCalibration", "collect", "read_frames", "HOLDOUT_EVERY"]
