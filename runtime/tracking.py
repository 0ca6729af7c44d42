"""Video tracking as 3DDFA_V2 does it, for several faces, plus optional One Euro smoothing.

Detect on the first frame (and when a track is lost, or every ``detect_interval`` frames), then re-crop
each face from its previous frame's 68 landmarks instead of running the detector. A track is lost when
its landmark crop shrinks under ``redetect_area`` px^2 or leaves the frame, or, at a periodic detection,
when the detector no longer finds a face there (between detections nothing checks that a face is still
present: upstream's behaviour, so ``detect_interval`` bounds how long a vanished face can linger). All tracked faces of a frame
go through the regressor in one batched call. Smoothing changes only the reported landmarks and pose;
the crops always follow the raw landmarks, so tracking itself is unchanged by it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .aligner import Face, FaceAligner
from .boxes import iou_matrix
from .crop import crop_area
from .frames import as_bgr_uint8
from .smoothing import OneEuroFilter, SmoothingConfig

MATCH_IOU = 0.3  # a detection continues a track (keeps its id) or is a duplicate of one above this overlap
DUPLICATE_IOU = 0.6  # two tracks that converged onto one face: the younger one is dropped


@dataclass
class _Track:
    track_id: int
    landmarks_raw: np.ndarray  # (68, 3) unsmoothed, drives the next crop; updated in place
    score: float
    landmark_filter: OneEuroFilter | None
    pose_filter: OneEuroFilter | None
    box_in_landmarks: np.ndarray | None = None  # (2, 2) last detector box relative to the landmarks' extent


class Tracker:
    """Stateful per-video face tracker on top of a ``FaceAligner``.

    ``tracker(frame, timestamp)`` returns the faces of that frame with stable ``track_id``s.
    ``last_detected`` tells whether the detector ran on the latest frame. ``smoothing``: None takes the
    bundle's default, True the tuned ``SmoothingConfig()``, False turns it off. ``refine_first``: align each
    new detection a second time from its own landmarks (3DDFA_V2 does on the first frame); detections after a
    lost track are refined only when the bundle asks for it (``pipeline.refine_detections``).
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
        cfg = aligner.settings
        self.detect_interval = cfg.detect_interval if detect_interval is None else max(0, int(detect_interval))
        self.redetect_area = cfg.redetect_area if redetect_area is None else float(redetect_area)
        self.max_faces = max_faces if max_faces and max_faces > 0 else None
        if smoothing is None:
            smoothing = cfg.smoothing
        if smoothing is True:
            smoothing = SmoothingConfig()
        self.smoothing: SmoothingConfig | None = smoothing or None
        self.refine_first = refine_first
        self.fps = fps if fps and fps > 0 else 30.0
        self.reset()

    def reset(self) -> None:
        self._tracks: list[_Track] = []
        self._next_id = 0
        self._frame_index = -1
        self._last_detection = -(10**9)
        self.last_detected = False

    # --------------------------------------------------------------------------------------------
    def _new_track(self, face: Face) -> _Track:
        make = (lambda: OneEuroFilter(self.smoothing, 1 / self.fps)) if self.smoothing else (lambda: None)
        track = _Track(self._next_id, face.landmarks_68.copy(), face.score, make(), make())
        self._next_id += 1
        return track

    def _detect(self, frame: np.ndarray, kept: list, refine: bool, verify: bool) -> tuple[list, list[Face]]:
        """Run the detector: drop tracks it no longer sees (``verify``), align the faces not tracked yet."""
        detections = self.aligner.detect(frame)
        boxes = detections.boxes
        if verify and kept:
            seen = iou_matrix([_box_of(f.landmarks_68) for _, f in kept], boxes).max(axis=1, initial=0.0) >= MATCH_IOU
            kept = [pair for pair, ok in zip(kept, seen) if ok]
        if kept and len(boxes):
            new = iou_matrix(boxes, [_box_of(f.landmarks_68) for _, f in kept]).max(axis=1) < MATCH_IOU
            detections = detections.take(new)
        if self.max_faces:
            detections = detections.take(slice(0, max(0, self.max_faces - len(kept))))
        if len(detections) == 0:
            return kept, []
        faces = self.aligner.align(frame, detections, "box")
        if refine:
            faces = self.aligner.refine(frame, faces)
        return kept, faces

    def _track_existing(self, frame: np.ndarray) -> list[tuple[_Track, Face]]:
        """Regress every live track from its previous landmarks in one batch; drop the lost ones."""
        h, w = frame.shape[:2]
        faces = self.aligner.align(frame, [tr.landmarks_raw for tr in self._tracks], "landmark")
        kept = []
        for track, face in zip(self._tracks, faces):
            face.score = track.score
            if crop_area(face.crop_box) >= self.redetect_area and _overlaps_frame(face.crop_box, w, h):
                kept.append((track, face))
        return _drop_duplicates(kept)

    def __call__(self, frame: np.ndarray, timestamp: float | None = None, dense: bool = False) -> list[Face]:
        frame = as_bgr_uint8(frame)
        self._frame_index += 1
        t = self._frame_index / self.fps if timestamp is None else float(timestamp)
        self.last_detected = False

        first = not self._tracks
        periodic = self.detect_interval > 0 and self._frame_index - self._last_detection >= self.detect_interval
        kept = self._track_existing(frame) if self._tracks else []
        lost = len(kept) < len(self._tracks)
        if first or lost or periodic:
            # Upstream refines only the first detection of a video; periodic detections add new faces the same way
            # and drop the tracks the detector no longer confirms.
            refine = (self.refine_first and (first or periodic)) or self.aligner.settings.refine_detections
            kept, detected = self._detect(frame, kept, refine, verify=periodic and not first)
            self._last_detection = self._frame_index
            self.last_detected = True
            taken = {id(tr) for tr, _ in kept}
            previous = [tr for tr in self._tracks if id(tr) not in taken]
            for face in detected:
                match = _match_previous(face, previous)
                if match is not None:
                    previous.remove(match)
                kept.append((match if match is not None else self._new_track(face), face))
            from_detector = {id(f) for f in detected}
        else:
            from_detector = set()
        self._tracks = [tr for tr, _ in kept]
        if dense and kept:
            self._add_dense([f for _, f in kept])
        out = []
        for track, face in kept:
            np.copyto(track.landmarks_raw, face.landmarks_68)
            track.score = face.score
            face.track_id = track.track_id
            if self.smoothing:
                lm = face.landmarks_68
                size = float(np.ptp(lm[:, 0]) + np.ptp(lm[:, 1])) / 2 or 1.0
                track.landmark_filter(lm, t, scale=size, out=lm)
                track.pose_filter(face.pose_ypr, t, scale=self.smoothing.pose_scale, out=face.pose_ypr)
            _carry_face_box(track, face, id(face) in from_detector)
            out.append(face)
        return out

    def _add_dense(self, faces: list[Face]) -> None:
        missing = [f for f in faces if f.dense_vertices is None]
        if missing:  # one pass over the dense basis for all faces
            vertices = self.aligner.dense(np.stack([f.param_62 for f in missing]), np.stack([f.crop_box for f in missing]))
            for face, v in zip(missing, vertices):
                face.dense_vertices = v


def _carry_face_box(track: _Track, face: Face, detected: bool) -> None:
    """Tracked faces report a box like the detector's: the last detector box, carried along by the landmarks
    (otherwise the box would jump between the detector box and the ~1.5x larger landmark crop)."""
    xy = face.landmarks_68[:, :2]
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    center, extent = (lo + hi) / 2, np.maximum(hi - lo, 1e-3)
    if detected:
        track.box_in_landmarks = (face.box[:4].reshape(2, 2) - center) / extent
    elif track.box_in_landmarks is not None:
        face.box = (center + track.box_in_landmarks * extent).reshape(4).astype(np.float32)


def _overlaps_frame(box: np.ndarray, w: int, h: int) -> bool:
    return box[2] > 0 and box[3] > 0 and box[0] < w and box[1] < h


def _box_of(landmarks: np.ndarray) -> np.ndarray:
    return np.concatenate([landmarks[:, :2].min(axis=0), landmarks[:, :2].max(axis=0)])


def _match_previous(face: Face, tracks) -> _Track | None:
    """The previous track whose last landmarks overlap this detection best (IoU >= MATCH_IOU), to keep its id."""
    if not tracks:
        return None
    iou = iou_matrix([_box_of(face.landmarks_68)], [_box_of(t.landmarks_raw) for t in tracks])[0]
    best = int(np.argmax(iou))
    return tracks[best] if iou[best] >= MATCH_IOU else None


def _drop_duplicates(kept: list[tuple[_Track, Face]]) -> list[tuple[_Track, Face]]:
    if len(kept) < 2:
        return kept
    iou = iou_matrix([_box_of(f.landmarks_68) for _, f in kept], [_box_of(f.landmarks_68) for _, f in kept])
    order = sorted(range(len(kept)), key=lambda i: kept[i][0].track_id)
    survivors: list[int] = []
    for i in order:
        if all(iou[i, j] < DUPLICATE_IOU for j in survivors):
            survivors.append(i)
    return [kept[i] for i in sorted(survivors)]


__all__ = ["Tracker", "SmoothingConfig", "OneEuroFilter"]
