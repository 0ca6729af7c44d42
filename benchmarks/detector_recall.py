"""Detector recall at a given input size against the original 3DDFA_V2 pipeline.

Ground truth = the faces the original pipeline finds (FaceBoxes, frame downscaled to fit 1080x720, i.e.
1080x607 for 720p, INTER_LINEAR): the upstream reference boxes for the photos
(reference/upstream_mb05/*.npz), and, for the video frames, the same detector run with the original
configuration (our port reproduces the upstream boxes to < 0.5 px, tests/test_parity.py). A face counts as
found when a box overlaps it with IoU >= 0.5 (one-to-one, greedy by IoU). Boxes not matched to any face are
reported as ``extra``. Needs a dynamic-shape detector to try other sizes than the bundle's own.
"""

from __future__ import annotations

import time

import cv2
import numpy as np

from tddfa_edge.runtime.detector import DetectorConfig, postprocess_detections, prepare_detector_input

PHOTOS = (
    ("1", "reference/test_images/1.jpeg"), ("2", "reference/test_images/2.jpeg"), ("3", "reference/test_images/3.jpeg"),
    ("4", "reference/test_images/4.jpeg"), ("5", "reference/test_images/5.jpeg"), ("emma", "images/emma.jpg"),
    ("trump_hillary", "images/trump_hillary.jpg"), ("JianzhuGuo", "images/JianzhuGuo.jpg"),
)
ORIGINAL = DetectorConfig(input_size=None, max_width=1080, max_height=720, interpolation=cv2.INTER_LINEAR)
INTERPOLATIONS = {"linear": cv2.INTER_LINEAR, "linear_exact": cv2.INTER_LINEAR_EXACT}


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64)[:, None, :4], np.asarray(b, np.float64)[None, :, :4]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    union = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter
    return inter / np.maximum(union, 1e-9)


def match(truth: np.ndarray, found: np.ndarray, iou_min: float = 0.5) -> tuple[int, int, list[float], list[int]]:
    """(matched, extra, IoUs of the matches, indices of missed truth boxes)."""
    if len(truth) == 0 or len(found) == 0:
        return 0, len(found), [], list(range(len(truth)))
    iou = iou_matrix(truth, found)
    pairs = sorted(((iou[i, j], i, j) for i in range(len(truth)) for j in range(len(found)) if iou[i, j] >= iou_min), reverse=True)
    used_t, used_f, ious = set(), set(), []
    for value, i, j in pairs:
        if i not in used_t and j not in used_f:
            used_t.add(i)
            used_f.add(j)
            ious.append(float(value))
    missed = [i for i in range(len(truth)) if i not in used_t]
    return len(used_t), len(found) - len(used_f), ious, missed


def run_detector(detector, frame: np.ndarray, config: DetectorConfig) -> np.ndarray:
    prepared = prepare_detector_input(frame, config)
    loc, conf = detector(prepared.image[None])
    h, w = prepared.image.shape[:2]
    return postprocess_detections(loc[0], conf[0, :, 1], h, w, prepared.scale, config)


def ground_truth(detector, data_dir, video_frames: list[np.ndarray], dynamic: bool) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(source, name, frame, boxes of the original pipeline) for the photos and (when possible) the video frames."""
    from tddfa_edge.runtime.data_files import resolve_data_file

    sets = []
    for name, rel in PHOTOS:
        frame = cv2.imread(str(resolve_data_file(rel, data_dir)), cv2.IMREAD_COLOR)
        ref = np.load(resolve_data_file(f"reference/upstream_mb05/{name}.npz", data_dir), allow_pickle=False)
        sets.append(("photos", name, frame, ref["boxes"]))
    if dynamic:
        for i, frame in enumerate(video_frames):
            sets.append(("video", f"frame{i}", frame, run_detector(detector, frame, ORIGINAL)))
    return sets


def recall_at(detector, sets, config: DetectorConfig) -> dict:
    per_source: dict[str, dict] = {}
    ious, missed_faces = [], []
    for source, name, frame, truth in sets:
        found = run_detector(detector, frame, config)
        m, extra, match_ious, missed = match(truth, found)
        s = per_source.setdefault(source, {"faces": 0, "found": 0, "extra": 0})
        s["faces"] += len(truth)
        s["found"] += m
        s["extra"] += extra
        ious += match_ious
        for i in missed:
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


def detector_ms(detector, frame: np.ndarray, config: DetectorConfig, budget_s: float) -> float:
    for _ in range(3):
        run_detector(detector, frame, config)
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < budget_s or len(times) < 10:
        t0 = time.perf_counter()
        run_detector(detector, frame, config)
        times.append(time.perf_counter() - t0)
    return round(float(np.median(times)) * 1e3, 4)


def recall_study(aligner, data_dir, video_frames, sizes, budget_s: float = 0.5, interpolation: str | None = None) -> dict:
    """Recall of the bundle's detector at each input size (w, h) (None = the original dynamic rule)."""
    detector = aligner.detector
    dynamic = bool((detector.extra.get("details") or {}).get("dynamic_shape", False))
    sets = ground_truth(detector, data_dir, video_frames, dynamic)
    base = aligner.config.detector
    interp = INTERPOLATIONS[interpolation] if interpolation else base.interpolation
    rows = []
    own = tuple(base.input_size) if base.input_size else None
    candidates = [own]
    if dynamic:  # the original rule first, then the bundle's size, then the extra sizes asked for
        candidates = [None] + [own] + [tuple(s) for s in sizes]
        candidates = [c for i, c in enumerate(candidates) if c not in candidates[:i]]
    for size in candidates:
        if size is None:
            config = ORIGINAL
        else:
            config = DetectorConfig(score_threshold=base.score_threshold, nms_threshold=base.nms_threshold, max_faces=base.max_faces,
                                    input_size=tuple(size), interpolation=interp)
        row = recall_at(detector, sets, config)
        row["input_size"] = "original (fit 1080x720)" if size is None else f"{size[0]}x{size[1]}"
        row["detector_ms_720p"] = detector_ms(detector, video_frames[0], config, budget_s)
        row["bundle_default"] = (size == own)
        rows.append(row)
    return {
        "ground_truth": "original 3DDFA_V2 pipeline: upstream boxes for 8 photos (18 faces), our dynamic 1080x607 port for the video frames"
        if dynamic else "upstream boxes for 8 photos (fixed-shape detector: the video frames need a dynamic model)",
        "detector_variant": detector.variant,
        "interpolation": "linear" if interp == cv2.INTER_LINEAR else "linear_exact",
        "iou_min": 0.5,
        "sizes": rows,
    }
