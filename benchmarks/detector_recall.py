"""Detector recall at a given input size against the original 3DDFA_V2 pipeline.

Ground truth = the faces the original pipeline finds (FaceBoxes, frame downscaled to fit 1080x720, i.e.
1080x607 for 720p, INTER_LINEAR): the upstream reference boxes for the photos
(reference/upstream_mb05/*.npz), and, for the video frames, the same detector run with the original
configuration when the bundle's detector is a dynamic-shape FaceBoxes (our port reproduces the upstream boxes
to < 0.5 px, tests/test_parity.py). A face counts as found when a box overlaps it with IoU >= 0.5 (one-to-one,
greedy by IoU, ``runtime.boxes.match_boxes``). Boxes not matched to any face are reported as ``extra``.
"""

from __future__ import annotations

import numpy as np

from tddfa_edge.datasets.reference import reference_photos, upstream_outputs
from tddfa_edge.runtime.boxes import match_boxes
from tddfa_edge.runtime.detector import FaceDetector

from .latency import time_calls

RECALL_IOU = 0.5


def original_pipeline(detector: FaceDetector) -> FaceDetector:
    """The same FaceBoxes network with 3DDFA_V2's input rule: fit 1080x720, INTER_LINEAR."""
    return detector.with_settings(input_size=None, max_size=(1080, 720), interpolation="linear")


def dynamic_shape(detector: FaceDetector) -> bool:
    return any(isinstance(d, str) for d in detector.model.input_spec.shape[1:3])


def ground_truth(detector: FaceDetector, data_dir, video_frames: list[np.ndarray]) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(source, name, frame, boxes of the original pipeline) for the photos and (when possible) the video frames."""
    sets = [("photos", name, frame, upstream_outputs(name, data_dir)["boxes"]) for name, frame in reference_photos(data_dir)]
    if detector.settings.architecture == "faceboxes" and dynamic_shape(detector):
        original = original_pipeline(detector)
        sets += [("video", f"frame{i}", frame, original(frame).boxes) for i, frame in enumerate(video_frames)]
    return sets


def recall_at(detector: FaceDetector, sets) -> dict:
    per_source: dict[str, dict] = {}
    ious, missed_faces = [], []
    for source, name, frame, truth in sets:
        found = detector(frame).boxes
        match = match_boxes(truth, found, RECALL_IOU)
        s = per_source.setdefault(source, {"faces": 0, "found": 0, "extra": 0})
        s["faces"] += len(truth)
        s["found"] += match.matched
        s["extra"] += len(match.extra)
        ious += [iou for _, _, iou in match.pairs]
        for i in match.missed:
            side = float(np.sqrt((truth[i][2] - truth[i][0]) * (truth[i][3] - truth[i][1])))
            missed_faces.append({"image": name, "face_px": round(side, 1)})
    faces = sum(s["faces"] for s in per_source.values())
    found = sum(s["found"] for s in per_source.values())
    for s in per_source.values():
        s["recall"] = round(s["found"] / s["faces"], 4) if s["faces"] else None
    return {
        "recall": round(found / faces, 4) if faces else None,
        "faces": faces,
        "found": found,
        "extra": sum(s["extra"] for s in per_source.values()),
        "median_iou": round(float(np.median(ious)), 4) if ious else None,
        "per_source": per_source,
        "missed": missed_faces[:20],
    }


def detector_ms(detector: FaceDetector, frame: np.ndarray, budget_s: float) -> float:
    """Median ms of one whole detection (input preparation, network, decoding, NMS) on ``frame``."""
    return round(float(np.median(time_calls(lambda: detector(frame), budget_s, warmup=3, min_runs=10))) * 1e3, 4)


def recall_study(detector: FaceDetector, data_dir, video_frames, sizes, budget_s: float = 0.5, interpolation: str | None = None) -> dict:
    """Recall of the bundle's detector at its own input size and each (w, h) in ``sizes`` (a dynamic-shape model can
    run at any size; FaceBoxes also at the original rule)."""
    dynamic = dynamic_shape(detector)
    sets = ground_truth(detector, data_dir, video_frames)
    base = detector if interpolation is None else detector.with_settings(interpolation=interpolation)
    own = base.settings.input_size
    candidates: list = [own]
    if dynamic:
        candidates = ([None] if base.settings.architecture == "faceboxes" else []) + [own] + [tuple(s) for s in sizes]
        candidates = [c for i, c in enumerate(candidates) if c not in candidates[:i]]
    rows = []
    for size in candidates:
        if size is None and base.settings.architecture == "faceboxes":
            candidate = original_pipeline(base)
        else:
            candidate = base.with_settings(input_size=size)
        row = recall_at(candidate, sets)
        row["input_size"] = "original (fit 1080x720)" if size is None else f"{size[0]}x{size[1]}"
        row["detector_ms_720p"] = detector_ms(candidate, video_frames[0], budget_s)
        row["bundle_default"] = size == own
        rows.append(row)
    return {
        "ground_truth": "original 3DDFA_V2 pipeline: upstream boxes for 8 photos (18 faces)"
        + (", our dynamic 1080x607 FaceBoxes port for the video frames" if len(sets) > 8 else ""),
        "detector_variant": detector.variant,
        "interpolation": base.settings.interpolation,
        "iou_min": RECALL_IOU,
        "sizes": rows,
    }
