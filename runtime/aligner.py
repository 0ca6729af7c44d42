"""``FaceAligner``: BGR frame -> faces with box, score, 68 landmarks, head pose and optional dense mesh."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .backends import FORMAT_BACKENDS, LoadedModel, TensorSpec, backend_available, open_session
from .bundle import Bundle
from .crop import REGRESSOR_SIZE, crop_and_resize, crop_boxes_from_face_boxes, crop_boxes_from_landmarks
from .detector import DetectorConfig, postprocess_detections, prepare_detector_input
from .errors import BackendUnavailableError, BundleError
from .frames import as_bgr_uint8
from .head_pose import pose_from_params
from .morphable_model import MorphableModel

INTERPOLATIONS = {"linear": cv2.INTER_LINEAR, "linear_exact": cv2.INTER_LINEAR_EXACT}


@dataclass
class Face:
    box: np.ndarray  # (4,) x1, y1, x2, y2 in frame pixels (detector box, or the crop box when tracking)
    score: float  # detector score; tracked faces carry the score of their last detection
    crop_box: np.ndarray  # (4,) sx, sy, ex, ey of the regressor crop
    param_62: np.ndarray  # (62,) de-normalized 3DMM parameters
    landmarks_68: np.ndarray  # (68, 3) x, y, z in frame pixels
    pose_ypr: np.ndarray  # (3,) yaw, pitch, roll in degrees
    dense_vertices: np.ndarray | None = None  # (V, 3) when asked for
    track_id: int | None = None

    def to_dict(self, decimals: int = 3) -> dict:
        out = {
            "box": np.round(self.box, decimals).tolist(),
            "score": round(float(self.score), 5),
            "crop_box": np.round(self.crop_box, decimals).tolist(),
            "landmarks_68": np.round(self.landmarks_68, decimals).tolist(),
            "pose_ypr": np.round(self.pose_ypr, decimals).tolist(),
        }
        if self.track_id is not None:
            out["track_id"] = self.track_id
        if self.dense_vertices is not None:
            out["dense_vertices"] = np.round(self.dense_vertices, decimals).tolist()
        return out


@dataclass(frozen=True)
class PipelineConfig:
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    crop_interpolation: str = "linear"
    redetect_area: float = 2020.0  # a landmark crop smaller than this (px^2) means the track is lost
    detect_interval: int = 0  # 0: detect only when lost; N: also every N frames
    max_batch: int = 8

    @classmethod
    def from_manifest(cls, pipeline: dict) -> "PipelineConfig":
        det = dict(pipeline.get("detector", {}))
        if det.get("input_size") is not None:
            det["input_size"] = tuple(det["input_size"])
        det["interpolation"] = INTERPOLATIONS[det.pop("interpolation", "linear")]
        return cls(
            detector=DetectorConfig(**det),
            crop_interpolation=pipeline.get("crop_interpolation", "linear"),
            redetect_area=float(pipeline.get("redetect_area", 2020.0)),
            detect_interval=int(pipeline.get("detect_interval", 0)),
            max_batch=int(pipeline.get("max_batch", 8)),
        )


def _load_model(bundle: Bundle, role: str, variant: str | None, backends: tuple[str, ...], threads: int) -> LoadedModel:
    entry = bundle.model(role, variant, backends)
    usable = [b for b in backends if b in FORMAT_BACKENDS.get(entry.format, ())]
    usable += [b for b in FORMAT_BACKENDS.get(entry.format, ()) if b not in usable]
    chosen = next((b for b in usable if backend_available(b)), None)
    if chosen is None:
        extra = "tflite" if entry.format == "tflite" else "base"
        raise BackendUnavailableError(
            f"{role} variant {entry.variant} needs one of {', '.join(usable)}; install tddfa-edge[{extra}]"
            if extra != "base" else f"{role} variant {entry.variant} needs onnxruntime; pip install onnxruntime"
        )
    session = open_session(entry.path, chosen, threads)
    raw = entry.raw
    return LoadedModel(
        session=session,
        input_spec=TensorSpec.from_manifest(raw["inputs"][0]),
        output_specs=[TensorSpec.from_manifest(o) for o in raw["outputs"]],
        variant=entry.variant,
        extra=raw,
    )


class FaceAligner:
    """Detect faces, crop, regress 3DMM parameters, reconstruct landmarks, pose and (optionally) dense mesh.

    Build one with ``FaceAligner.from_bundle(path)``; call it on a BGR uint8 frame.
    """

    def __init__(
        self,
        regressor: LoadedModel,
        detector: LoadedModel | None,
        morphable_model: MorphableModel,
        param_mean: np.ndarray,
        param_std: np.ndarray,
        config: PipelineConfig = PipelineConfig(),
        bundle: Bundle | None = None,
    ) -> None:
        self.regressor = regressor
        self.detector = detector
        self.morphable_model = morphable_model
        self.param_mean = np.asarray(param_mean, dtype=np.float32)
        self.param_std = np.asarray(param_std, dtype=np.float32)
        self.config = config
        self.bundle = bundle
        self._interp = INTERPOLATIONS[config.crop_interpolation]
        self._param_normalized = bool(regressor.extra.get("param_normalized", True))

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
    ) -> "FaceAligner":
        bundle = Bundle.open(Path(path), verify=verify)
        target = bundle.target
        threads = int(threads or target.get("threads") or 1)
        order = tuple(backends or target.get("backends") or ("onnxruntime",))
        regressor = _load_model(bundle, "regressor", regressor_variant, order, threads)
        detector = _load_model(bundle, "detector", detector_variant, order, threads) if bundle.models("detector") else None
        mm = bundle.manifest["morphable_model"]
        dense_file = mm.get("dense") if dense else None
        model = MorphableModel.from_npz(bundle.file(mm["landmarks"]), bundle.file(dense_file) if dense_file else None)
        config = PipelineConfig.from_manifest(bundle.manifest.get("pipeline", {}))
        return cls(regressor, detector, model, mm["param_mean"], mm["param_std"], config, bundle)

    # --- stages -------------------------------------------------------------------------------------
    def detect(self, frame: np.ndarray) -> np.ndarray:
        """(N, 5) boxes ``x1, y1, x2, y2, score`` in frame pixels, best first."""
        if self.detector is None:
            raise BundleError("this bundle has no detector model")
        frame = as_bgr_uint8(frame)
        prepared = prepare_detector_input(frame, self.config.detector)
        loc, conf = self.detector(prepared.image[None])
        h, w = prepared.image.shape[:2]
        return postprocess_detections(loc[0], conf[0, :, 1], h, w, prepared.scale, self.config.detector)

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

    def regress_crops(self, crops_nhwc: np.ndarray) -> np.ndarray:
        """(N, 120, 120, 3) uint8 BGR crops -> (N, 62) de-normalized parameters."""
        step = max(1, self.config.max_batch)
        if len(crops_nhwc) <= step:
            params = self.regressor(crops_nhwc)[0].reshape(-1, 62)
        else:
            params = np.concatenate(
                [self.regressor(crops_nhwc[i : i + step])[0].reshape(-1, 62) for i in range(0, len(crops_nhwc), step)]
            )
        if self._param_normalized:
            params = params * self.param_std + self.param_mean
        return params.astype(np.float32, copy=False)

    def landmarks(self, params: np.ndarray, crop_boxes: np.ndarray) -> np.ndarray:
        """(N, 62), (N, 4) -> (N, 68, 3) landmarks in frame pixels."""
        return self.morphable_model.landmarks_in_frame(params, crop_boxes)

    def poses(self, params: np.ndarray) -> np.ndarray:
        """(N, 62) -> (N, 3) yaw, pitch, roll in degrees."""
        return pose_from_params(params)

    def dense(self, param: np.ndarray, crop_box: np.ndarray) -> np.ndarray:
        """(62,), (4,) -> (V, 3) dense vertices in frame pixels."""
        return self.morphable_model.dense_in_frame(np.asarray(param).reshape(1, 62), np.asarray(crop_box).reshape(1, 4))[0]

    def dense_batch(self, params: np.ndarray, crop_boxes: np.ndarray) -> list[np.ndarray]:
        """(N, 62), (N, 4) -> N arrays (V, 3); the 23 MB basis is read once for all faces."""
        return self.morphable_model.dense_in_frame(params, crop_boxes)

    @property
    def triangles(self) -> np.ndarray | None:
        """(T, 3) int32 vertex indices of the dense mesh, for rendering."""
        return self.morphable_model.triangles

    # --- whole pipeline -----------------------------------------------------------------------------
    def align(self, frame: np.ndarray, boxes, crop_policy: str = "box", dense: bool = False) -> list[Face]:
        """Align faces given detector boxes (``crop_policy='box'``, rows x1,y1,x2,y2[,score]) or previous
        landmarks (``crop_policy='landmark'``, each (68, 2|3) or (2|3, 68))."""
        frame = as_bgr_uint8(frame)
        if len(boxes) == 0:
            return []
        if crop_policy == "box":
            boxes = np.asarray(boxes, dtype=np.float64).reshape(len(boxes), -1)
            crop_boxes = crop_boxes_from_face_boxes(boxes)
            scores = boxes[:, 4].tolist() if boxes.shape[1] > 4 else [1.0] * len(boxes)
            face_boxes = boxes[:, :4].astype(np.float32)
        elif crop_policy == "landmark":
            points = [np.asarray(p) for p in boxes]
            points = np.stack([p.T if p.shape[0] in (2, 3) and p.shape[1] not in (2, 3) else p for p in points])
            crop_boxes = crop_boxes_from_landmarks(points)
            scores = [1.0] * len(boxes)
            face_boxes = crop_boxes.astype(np.float32)
        else:
            raise ValueError(f"unknown crop policy {crop_policy!r} (use 'box' or 'landmark')")
        params = self.regress(frame, crop_boxes)
        return self._faces(params, crop_boxes, face_boxes, scores, dense)

    def _faces(self, params, crop_boxes, face_boxes, scores, dense) -> list[Face]:
        landmarks = self.landmarks(params, crop_boxes)
        poses = self.poses(params)
        vertices = self.dense_batch(params, crop_boxes) if dense else [None] * len(params)
        return [
            Face(
                box=np.asarray(face_boxes[i], dtype=np.float32),
                score=float(scores[i]),
                crop_box=np.asarray(crop_boxes[i], dtype=np.float64),
                param_62=params[i],
                landmarks_68=landmarks[i],
                pose_ypr=poses[i],
                dense_vertices=vertices[i],
            )
            for i in range(len(params))
        ]

    def __call__(self, frame: np.ndarray, dense: bool = False) -> list[Face]:
        frame = as_bgr_uint8(frame)
        boxes = self.detect(frame)
        return self.align(frame, boxes, "box", dense)
