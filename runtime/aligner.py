"""``FaceAligner``: BGR frame -> faces with box, score, 68 landmarks, head pose and optional dense mesh."""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tddfa_edge.contracts.errors import BundleError

from .backends import LoadedModel
from .bundle import Bundle
from .crop import REGRESSOR_SIZE, crop_and_resize, crop_boxes_from_face_boxes, crop_boxes_from_landmarks
from .detector import INTERPOLATIONS, Detections, FaceDetector
from .frames import as_bgr_uint8
from .head_pose import pose_from_params
from .manifest import PipelineSettings
from .morphable_model import MorphableModel


@dataclass
class Face:
    box: np.ndarray  # (4,) x1, y1, x2, y2 in frame pixels (detector box, carried along by the landmarks when tracking)
    score: float  # detector score; tracked faces carry the score of their last detection
    crop_box: np.ndarray  # (4,) sx, sy, ex, ey of the regressor crop
    param_62: np.ndarray  # (62,) de-normalized 3DMM parameters
    landmarks_68: np.ndarray  # (68, 3) x, y, z in frame pixels
    pose_ypr: np.ndarray  # (3,) yaw, pitch, roll in degrees
    keypoints_5: np.ndarray | None = None  # (5, 2) the detector's eyes, nose tip, mouth corners (YuNet), frame pixels
    dense_vertices: np.ndarray | None = None  # (V, 3) when asked for
    track_id: int | None = None


class StageClock:
    """Seconds spent per pipeline stage, summed until ``take()``; give one to ``FaceAligner.stage_clock``."""

    def __init__(self) -> None:
        self.current: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.current[stage] = self.current.get(stage, 0.0) + seconds

    def take(self) -> dict[str, float]:
        out, self.current = self.current, {}
        return out


STAGES = ("detection", "crop_preprocess", "regression", "landmarks_68", "pose", "dense")


def _stage(name: str):
    """Time the method into ``self.stage_clock`` when one is set (the cost is one attribute check otherwise)."""

    def wrap(method):
        @functools.wraps(method)
        def timed(self, *args, **kwargs):
            clock = self.stage_clock
            if clock is None:
                return method(self, *args, **kwargs)
            t0 = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                clock.add(name, time.perf_counter() - t0)

        return timed

    return wrap


class FaceAligner:
    """Detect faces, crop, regress 3DMM parameters, reconstruct landmarks, pose and (optionally) dense mesh.

    Build one with ``FaceAligner.from_bundle(path)``; call it on a BGR uint8 frame.
    """

    def __init__(
        self,
        regressor: LoadedModel,
        detector: FaceDetector | None,
        morphable_model: MorphableModel,
        param_mean: np.ndarray,
        param_std: np.ndarray,
        settings: PipelineSettings,
        bundle: Bundle | None = None,
    ) -> None:
        self.regressor = regressor
        self.detector = detector
        self.morphable_model = morphable_model
        self.param_mean = np.asarray(param_mean, dtype=np.float32)
        self.param_std = np.asarray(param_std, dtype=np.float32)
        self.settings = settings
        self.bundle = bundle
        self.stage_clock: StageClock | None = None
        self._interp = INTERPOLATIONS[settings.crop_interpolation]
        self._param_normalized = bool(regressor.record.param_normalized)

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike,
        threads: int | None = None,
        regressor_variant: str | None = None,
        detector_variant: str | None = None,
        backends: tuple[str, ...] | None = None,
        dense: bool = True,
        verify: bool = True,
        bundle_sha256: str | None = None,
        trusted_keys: tuple[str | os.PathLike, ...] | None = None,
        allow_fallback: bool = False,
    ) -> "FaceAligner":
        """Open and check the bundle at ``path`` and load its models.

        ``bundle_sha256`` pins the bundle: it is refused unless its manifest has exactly this sha256.
        ``trusted_keys`` (Ed25519 public key files): it is refused unless signed by one of them. Without
        ``allow_fallback``, a missing backend for a default variant is an error naming what to install.
        """
        bundle = Bundle.open(Path(path), verify=verify, expected_sha256=bundle_sha256, trusted_keys=trusted_keys)
        manifest = bundle.manifest
        regressor = bundle.load("regressor", regressor_variant, backends, threads, allow_fallback)
        detector = FaceDetector(bundle.load("detector", detector_variant, backends, threads, allow_fallback),
                                manifest.pipeline.detector)
        mm = manifest.morphable_model
        dense_file = bundle.file(mm.dense) if dense and mm.dense else None
        model = MorphableModel.from_npz(bundle.file(mm.landmarks), dense_file)
        return cls(regressor, detector, model, np.array(mm.param_mean), np.array(mm.param_std), manifest.pipeline, bundle)

    # --- stages -------------------------------------------------------------------------------------
    @_stage("detection")
    def detect(self, frame: np.ndarray) -> Detections:
        """Boxes ``x1, y1, x2, y2, score`` (and keypoints) in frame pixels, best first."""
        if self.detector is None:
            raise BundleError("this aligner has no detector")
        return self.detector(as_bgr_uint8(frame))

    @_stage("crop_preprocess")
    def crops(self, frame: np.ndarray, crop_boxes: np.ndarray) -> np.ndarray:
        """(N, 4) crop boxes -> (N, 120, 120, 3) uint8 crops, resized straight into one batch array."""
        out = np.empty((len(crop_boxes), REGRESSOR_SIZE, REGRESSOR_SIZE, 3), dtype=np.uint8)
        for box, row in zip(crop_boxes, out):
            crop_and_resize(frame, box, REGRESSOR_SIZE, self._interp, out=row)
        return out

    def regress(self, frame: np.ndarray, crop_boxes: np.ndarray) -> np.ndarray:
        """(N, 4) crop boxes -> (N, 62) de-normalized parameters."""
        if len(crop_boxes) == 0:
            return np.zeros((0, 62), dtype=np.float32)
        return self.regress_crops(self.crops(frame, crop_boxes))

    @_stage("regression")
    def regress_crops(self, crops_nhwc: np.ndarray) -> np.ndarray:
        """(N, 120, 120, 3) uint8 BGR crops -> (N, 62) de-normalized parameters."""
        step = max(1, self.settings.max_batch)
        if len(crops_nhwc) <= step:
            params = self.regressor(crops_nhwc)[0].reshape(-1, 62)
        else:
            params = np.concatenate(
                [self.regressor(crops_nhwc[i : i + step])[0].reshape(-1, 62) for i in range(0, len(crops_nhwc), step)]
            )
        if self._param_normalized:
            params = params * self.param_std + self.param_mean
        return params.astype(np.float32, copy=False)

    @_stage("landmarks_68")
    def landmarks(self, params: np.ndarray, crop_boxes: np.ndarray) -> np.ndarray:
        """(N, 62), (N, 4) -> (N, 68, 3) landmarks in frame pixels."""
        return self.morphable_model.landmarks_in_frame(params, crop_boxes)

    @_stage("pose")
    def poses(self, params: np.ndarray) -> np.ndarray:
        """(N, 62) -> (N, 3) yaw, pitch, roll in degrees."""
        return pose_from_params(params)

    @_stage("dense")
    def dense(self, params: np.ndarray, crop_boxes: np.ndarray) -> list[np.ndarray]:
        """(N, 62), (N, 4) -> N arrays (V, 3) in frame pixels; the 23 MB basis is read once for all faces."""
        return self.morphable_model.dense_in_frame(params, crop_boxes)

    @property
    def triangles(self) -> np.ndarray | None:
        """(T, 3) int32 vertex indices of the dense mesh, for rendering."""
        return self.morphable_model.triangles

    # --- whole pipeline -----------------------------------------------------------------------------
    def align(self, frame: np.ndarray, boxes, crop_policy: str = "box", dense: bool = False,
              keypoints: np.ndarray | None = None) -> list[Face]:
        """Align faces given detector boxes (``crop_policy='box'``: rows x1,y1,x2,y2[,score], or ``Detections``)
        or previous landmarks (``crop_policy='landmark'``: each (68, 2|3))."""
        frame = as_bgr_uint8(frame)
        if isinstance(boxes, Detections):
            boxes, keypoints = boxes.boxes, boxes.keypoints
        if len(boxes) == 0:
            return []
        if crop_policy == "box":
            boxes = np.asarray(boxes, dtype=np.float64).reshape(len(boxes), -1)
            crop_boxes = crop_boxes_from_face_boxes(boxes)
            scores = boxes[:, 4] if boxes.shape[1] > 4 else np.ones(len(boxes))
            face_boxes = boxes[:, :4].astype(np.float32)
        elif crop_policy == "landmark":
            crop_boxes = crop_boxes_from_landmarks(np.stack([np.asarray(p)[:, :2] for p in boxes]))
            scores = np.ones(len(boxes))
            face_boxes = crop_boxes.astype(np.float32)
        else:
            raise ValueError(f"unknown crop policy {crop_policy!r} (use 'box' or 'landmark')")
        params = self.regress(frame, crop_boxes)
        return self.faces_from_params(params, crop_boxes, face_boxes, scores, dense, keypoints)

    def faces_from_params(self, params: np.ndarray, crop_boxes: np.ndarray, face_boxes: np.ndarray, scores,
                          dense: bool = False, keypoints: np.ndarray | None = None) -> list[Face]:
        """Faces from regressed parameters: landmarks, pose and (``dense``) the mesh, all faces at once."""
        landmarks = self.landmarks(params, crop_boxes)
        poses = self.poses(params)
        vertices = self.dense(params, crop_boxes) if dense else [None] * len(params)
        return [
            Face(
                box=np.asarray(face_boxes[i], dtype=np.float32),
                score=float(scores[i]),
                crop_box=np.asarray(crop_boxes[i], dtype=np.float64),
                param_62=params[i],
                landmarks_68=landmarks[i],
                pose_ypr=poses[i],
                keypoints_5=None if keypoints is None else np.asarray(keypoints[i], dtype=np.float32),
                dense_vertices=vertices[i],
            )
            for i in range(len(params))
        ]

    def refine(self, frame: np.ndarray, faces: list[Face]) -> list[Face]:
        """One more regression per face from its own landmarks (the landmark crop policy); box, score and
        keypoints stay the detector's. 3DDFA_V2 does this on the first frame of a video."""
        if not faces:
            return faces
        refined = self.align(frame, [f.landmarks_68 for f in faces], "landmark")
        for old, new in zip(faces, refined):
            new.box, new.score, new.keypoints_5 = old.box, old.score, old.keypoints_5
        return refined

    def __call__(self, frame: np.ndarray, dense: bool = False, max_faces: int | None = None) -> list[Face]:
        """Image mode: detect, keep the ``max_faces`` best, align them in one batch."""
        frame = as_bgr_uint8(frame)
        detections = self.detect(frame)
        if max_faces:
            detections = detections.take(slice(0, max_faces))
        if not self.settings.refine_detections:
            return self.align(frame, detections, "box", dense)
        faces = self.align(frame, detections, "box")
        refined = self.refine(frame, faces)
        if dense and refined:
            vertices = self.dense(np.stack([f.param_62 for f in refined]), np.stack([f.crop_box for f in refined]))
            for face, v in zip(refined, vertices):
                face.dense_vertices = v
        return refined


__all__ = ["Face", "FaceAligner", "StageClock", "STAGES"]
