"""Face detection: a frame in, boxes (and YuNet's five keypoints) in frame pixels out.

``FaceDetector`` is the one place a detector runs: the aligner, the tracker, the exporter's checks and the
benchmarks all call it. It prepares the input (letterbox to a fixed size, or fit a dynamic-shape model),
runs the network, decodes its architecture's output (``faceboxes_decoding`` / ``yunet_decoding``), maps the
boxes back to frame pixels and applies NMS there (3DDFA_V2's order, for parity).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np

from .backends import LoadedModel
from .boxes import nms
from .faceboxes_decoding import BGR_MEAN, decode_faceboxes
from .manifest import DetectorSettings
from .yunet_decoding import NUM_KEYPOINTS, STRIDES, decode_yunet

INTERPOLATIONS = {"linear": cv2.INTER_LINEAR, "linear_exact": cv2.INTER_LINEAR_EXACT}
# The network's own padding value: FaceBoxes subtracts its BGR mean (so the mean colour is "nothing"),
# YuNet takes raw pixels and was trained with zero padding (OpenCV's FaceDetectorYN pads with 0).
PAD_VALUE = {"faceboxes": tuple(int(v) for v in BGR_MEAN), "yunet": (0, 0, 0)}
# Dynamic-shape inputs are padded to a multiple of the coarsest stride (YuNet's heads need whole cells).
SIZE_MULTIPLE = {"faceboxes": 1, "yunet": 32}
MAX_CANDIDATES = 5000
# The detector's outputs in the order every converter declares them (``export.model_io``): FaceBoxes loc, conf;
# YuNet cls, obj, bbox, kps per stride.
YUNET_OUTPUTS = tuple(f"{kind}_{s}" for kind in ("cls", "obj", "bbox", "kps") for s in STRIDES)  # before NMS: bounds the NMS cost on pathological frames


@dataclass(frozen=True)
class DetectorInput:
    image: np.ndarray  # (H, W, 3) uint8 BGR at the network's input size
    scale: float  # network pixels per frame pixel


@dataclass(frozen=True)
class Detections:
    boxes: np.ndarray  # (N, 5) float32 x1, y1, x2, y2, score in frame pixels, best first
    keypoints: np.ndarray | None  # (N, 5, 2) float32 eyes, nose tip, mouth corners (YuNet), else None

    def __len__(self) -> int:
        return len(self.boxes)

    def take(self, index) -> "Detections":
        return Detections(self.boxes[index], None if self.keypoints is None else self.keypoints[index])


def prepare_detector_input(frame: np.ndarray, settings: DetectorSettings) -> DetectorInput:
    """Fixed ``input_size``: letterbox (resize to fit, pad right/bottom). Dynamic: downscale (never up) to fit
    ``max_size`` (3DDFA_V2's rule), then pad to the architecture's size multiple."""
    h, w = frame.shape[:2]
    interpolation = INTERPOLATIONS[settings.interpolation]
    pad = PAD_VALUE[settings.architecture]
    if settings.input_size is None:
        max_w, max_h = settings.max_size
        scale = 1.0
        if h > max_h:
            scale = max_h / h
        if w * scale > max_w:
            scale *= max_w / (w * scale)
        new_w, new_h = (w, h) if scale == 1.0 else (max(1, int(scale * w)), max(1, int(scale * h)))
        multiple = SIZE_MULTIPLE[settings.architecture]
        in_w, in_h = -(-new_w // multiple) * multiple, -(-new_h // multiple) * multiple
        if (in_w, in_h) == (w, h):
            return DetectorInput(frame, 1.0)
    else:
        in_w, in_h = settings.input_size
        scale = min(in_w / w, in_h / h)
        new_w, new_h = max(1, min(in_w, round(w * scale))), max(1, min(in_h, round(h * scale)))
    canvas = np.empty((in_h, in_w, 3), dtype=np.uint8)
    # Resize straight into the canvas and paint only the padding: filling the whole canvas first cost as much
    # as the resize itself.
    if (new_w, new_h) == (w, h):
        canvas[:h, :w] = frame
    else:
        view = canvas[:new_h, :new_w]
        resized = cv2.resize(frame, (new_w, new_h), dst=view, interpolation=interpolation)
        if not np.shares_memory(resized, canvas):  # OpenCV reallocates a dst it cannot use
            view[...] = resized
    if new_h < in_h:
        canvas[new_h:] = pad
    if new_w < in_w:
        canvas[:new_h, new_w:] = pad
    return DetectorInput(canvas, scale)


class FaceDetector:
    """A detector network plus its settings; ``detector(frame)`` returns ``Detections`` in frame pixels."""

    def __init__(self, model: LoadedModel, settings: DetectorSettings) -> None:
        self.model = model
        self.settings = settings

    @property
    def variant(self) -> str:
        return self.model.variant

    def with_settings(self, **changes) -> "FaceDetector":
        """The same network with other settings (e.g. another ``input_size`` for a dynamic-shape model)."""
        return FaceDetector(self.model, dataclasses.replace(self.settings, **changes))

    def __call__(self, frame: np.ndarray) -> Detections:
        s = self.settings
        prepared = prepare_detector_input(frame, s)
        h, w = prepared.image.shape[:2]
        outputs = self.model(prepared.image[None])
        keypoints = None
        if s.architecture == "faceboxes":
            loc, conf = outputs
            boxes = decode_faceboxes(loc[0], conf[0, :, 1], h, w, s.score_threshold)
        else:
            boxes, keypoints = decode_yunet(dict(zip(YUNET_OUTPUTS, outputs)), h, w, s.score_threshold)
        if len(boxes) > MAX_CANDIDATES:
            top = np.argsort(-boxes[:, 4], kind="stable")[:MAX_CANDIDATES]
            boxes = boxes[top]
            keypoints = None if keypoints is None else keypoints[top]
        scale = np.float32(prepared.scale)
        boxes[:, :4] /= scale
        if keypoints is not None:
            keypoints /= scale
        keep = nms(boxes, boxes[:, 4], s.nms_threshold, inclusive=s.architecture == "faceboxes", limit=s.max_faces)
        return Detections(boxes[keep], None if keypoints is None else keypoints[keep])


def empty_detections(with_keypoints: bool) -> Detections:
    return Detections(np.zeros((0, 5), np.float32), np.zeros((0, NUM_KEYPOINTS, 2), np.float32) if with_keypoints else None)


__all__ = ["FaceDetector", "Detections", "DetectorInput", "prepare_detector_input", "empty_detections", "INTERPOLATIONS"]
