"""Video tracking as 3DDFA_V2 does it, for several faces, plus optional One Euro smoothing.

Detect on the first frame (and when a track is lost, or every ``detect_interval`` frames), then re-crop
each face from its previous frame's 68 landmarks instead of running the detector. A track is lost when
its landmark crop shrinks under ``redetect_area`` px^2 or leaves the frame. All faces of a frame go
through the regressor in one batched call. Smoothing changes only the reported landmarks and pose;
the crops always follow the raw landmarks, so tracking itself is unchanged by it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .aligner import Face, FaceAligner
from .crop import crop_area, crop_box_from_face_box, crop_box_from_landmarks
from .frames import as_bgr_uint8


@dataclass(frozen=True)
class SmoothingConfig:
    """One Euro filter (Casiez et al., CHI 2012) on landmarks and pose.

    ``min_cutoff`` (Hz) sets smoothing at rest; ``beta`` raises the cutoff with speed (measured in face
    sizes per second for landmarks, degrees per second / 100 for pose) so fast motion does not lag.
    """

    min_cutoff: float = 1.5
    beta: float = 4.0
    d_cutoff: float = 1.0


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    tau = 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    def __init__(self, config: SmoothingConfig) -> None:
        self.config = config
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    def __call__(self, x: np.ndarray, t: float, scale: float = 1.0) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or self._t is None or t <= self._t:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), t
            return x
        dt = t - self._t
        dx = (x - self._x) / dt
        a_d = _alpha(self.config.d_cutoff, dt)
        self._dx = a_d * dx + (1 - a_d) * self._dx
        cutoff = self.config.min_cutoff + self.config.beta * np.abs(self._dx) / scale
        a = _alpha(cutoff, dt)
        self._x = a * x + (1 - a) * self._x
        self._t = t
        return self._x.copy()


@dataclass
class _Track:
    track_id: int
    landmarks_raw: np.ndarray  # (68, 3) unsmoothed, drives the next crop
    score: float
    landmark_filter: OneEuroFilter | None
    pose_filter: OneEuroFilter | None


class Tracker:
    """Stateful per-video face tracker on top of a ``FaceAligner``.

    ``tracker(frame)`` returns the faces of that frame with stable ``track_id``s. ``last_detected`` tells
    whether the detector ran on the latest frame.
    """

    def __init__(
        self,
        aligner: FaceAligner,
        detect_interval: int | None = None,
        redetect_area: float | None = None,
        max_faces: int | None = None,
        smoothing: SmoothingConfig | bool | None = None,
        refine_first: bool = True,
        fps: float = 30.0,
    ) -> None:
        self.aligner = aligner
        cfg = aligner.config
        self.detect_interval = cfg.detect_interval if detect_interval is None else int(detect_interval)
        self.redetect_area = cfg.redetect_area if redetect_area is None else float(redetect_area)
        self.max_faces = max_faces
        if smoothing is True or (smoothing is None and getattr(cfg, "smoothing", False)):
            smoothing = SmoothingConfig()
        self.smoothing: SmoothingConfig | None = smoothing or None
        self.refine_first = refine_first
        self.fps = fps
        self.reset()

    def reset(self) -> None:
        self._tracks: list[_Track] = []
        self._next_id = 0
        self._frame_index = -1
        self._last_detection = -(10**9)
        self.last_detected = False

    # --------------------------------------------------------------------------------------------
    def _new_track(self, face: Face) -> _Track:
        track = _Track(
            track_id=self._next_id,
            landmarks_raw=face.landmarks_68,
            score=face.score,
            landmark_filter=OneEuroFilter(self.smoothing) if self.smoothing else None,
            pose_filter=OneEuroFilter(self.smoothing) if self.smoothing else None,
        )
        self._next_id += 1
        return track

    def _detect(self, frame: np.ndarray, refine: bool, exclude: list[np.ndarray]) -> list[Face]:
        boxes = self.aligner.detect(frame)
        if exclude and len(boxes):
            boxes = np.array([b for b in boxes if max((_iou(b, e) for e in exclude), default=0.0) < 0.3], dtype=np.float32).reshape(-1, 5)
        limit = self.max_faces - len(exclude) if self.max_faces else None
        if limit is not None:
            boxes = boxes[: max(0, limit)]
        if len(boxes) == 0:
            return []
        faces = self.aligner.align(frame, boxes, "box")
        if refine:
            refined = self.aligner.align(frame, [f.landmarks_68 for f in faces], "landmark")
            for f, r in zip(faces, refined):
                r.box, r.score = f.box, f.score
            faces = refined
        return faces

    def __call__(self, frame: np.ndarray, timestamp: float | None = None, dense: bool = False) -> list[Face]:
        frame = as_bgr_uint8(frame)
        self._frame_index += 1
        t = self._frame_index / self.fps if timestamp is None else float(timestamp)
        h, w = frame.shape[:2]
        self.last_detected = False

        periodic = self.detect_interval > 0 and self._frame_index - self._last_detection >= self.detect_interval
        kept: list[tuple[_Track, Face]] = []
        if self._tracks and not periodic:
            crop_boxes = np.stack([crop_box_from_landmarks(tr.landmarks_raw) for tr in self._tracks])
            params = self.aligner.regress(frame, crop_boxes)
            faces = self.aligner._faces(params, crop_boxes, [b.astype(np.float32) for b in crop_boxes],
                                        [tr.score for tr in self._tracks], False)
            for track, face, box in zip(self._tracks, faces, crop_boxes):
                if crop_area(box) >= self.redetect_area and _overlaps_frame(box, w, h):
                    kept.append((track, face))
        lost = len(kept) < len(self._tracks) or not self._tracks or periodic
        if lost:
            first = not self._tracks
            if periodic and self._tracks:
                kept = []
            detected = self._detect(frame, refine=self.refine_first and first, exclude=[_box_of(f) for _, f in kept])
            self._last_detection = self._frame_index
            self.last_detected = True
            previous = {tr.track_id: tr for tr in self._tracks}
            for face in detected:
                match = _match_previous(face, previous.values())
                track = match if match is not None and all(match is not k for k, _ in kept) else self._new_track(face)
                kept.append((track, face))
        self._tracks = [tr for tr, _ in kept]
        out = []
        for track, face in kept:
            track.landmarks_raw = face.landmarks_68
            track.score = face.score
            face.track_id = track.track_id
            if dense:
                face.dense_vertices = self.aligner.dense(face.param_62, face.crop_box)
            if self.smoothing:
                size = float(np.ptp(face.landmarks_68[:, 0]) + np.ptp(face.landmarks_68[:, 1])) / 2 or 1.0
                face.landmarks_68 = track.landmark_filter(face.landmarks_68, t, scale=size).astype(np.float32)
                face.pose_ypr = track.pose_filter(face.pose_ypr, t, scale=100.0)
            out.append(face)
        return out


def _overlaps_frame(box: np.ndarray, w: int, h: int) -> bool:
    return box[2] > 0 and box[3] > 0 and box[0] < w and box[1] < h


def _box_of(face: Face) -> np.ndarray:
    lm = face.landmarks_68
    return np.array([lm[:, 0].min(), lm[:, 1].min(), lm[:, 0].max(), lm[:, 1].max()])


def _iou(a, b) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _match_previous(face: Face, tracks) -> _Track | None:
    """The previous track whose last landmarks overlap this detection best (IoU >= 0.3), to keep its id."""
    best, best_iou = None, 0.3
    box = _box_of(face)
    for track in tracks:
        lm = track.landmarks_raw
        iou = _iou(box, np.array([lm[:, 0].min(), lm[:, 1].min(), lm[:, 0].max(), lm[:, 1].max()]))
        if iou >= best_iou:
            best, best_iou = track, iou
    return best


__all__ = ["Tracker", "SmoothingConfig", "OneEuroFilter", "crop_box_from_face_box"]
