"""Upstream parity: our pipeline reproduces the original 3DDFA_V2 --onnx outputs on real photos and video."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tddfa_edge.datasets.reference import REFERENCE_PHOTOS, upstream_outputs
from tddfa_edge.runtime.tracking import Tracker


@pytest.fixture(scope="module", params=REFERENCE_PHOTOS, ids=[p[0] for p in REFERENCE_PHOTOS])
def photo(request, data_dir):
    name, rel = request.param
    return name, cv2.imread(str(data_dir / rel)), upstream_outputs(name, data_dir)


def test_detector_boxes_match_upstream(upstream_aligner, photo):
    name, image, ref = photo
    boxes = upstream_aligner.detect(image).boxes
    assert boxes.shape == ref["boxes"].shape, f"{name}: {len(boxes)} faces, upstream {len(ref['boxes'])}"
    assert np.abs(boxes[:, :4] - ref["boxes"][:, :4]).max() < 0.5
    assert np.abs(boxes[:, 4] - ref["boxes"][:, 4]).max() < 1e-3


def test_alignment_matches_upstream_given_same_boxes(upstream_aligner, photo):
    name, image, ref = photo
    faces = upstream_aligner.align(image, ref["boxes"], "box", dense=True)
    crop_boxes = np.stack([f.crop_box for f in faces])
    params = np.stack([f.param_62 for f in faces])
    sparse = np.stack([f.landmarks_68.T for f in faces])
    dense = np.stack([f.dense_vertices.T for f in faces])
    pose = np.stack([f.pose_ypr for f in faces])
    std = upstream_aligner.param_std
    assert np.abs(crop_boxes - ref["roi_boxes"]).max() < 1e-3
    assert (np.abs(params - ref["params"]) / std).max() < 1e-4, "params differ beyond float32 noise"
    assert np.abs(sparse - ref["sparse"]).max() < 0.01
    assert np.abs(dense - ref["dense"]).max() < 0.01
    assert np.abs(pose - ref["pose"]).max() < 0.01


def test_tracking_reproduces_upstream_video(upstream_aligner, data_dir):
    ref = upstream_outputs("obama_tracking", data_dir)
    tracker = Tracker(upstream_aligner, max_faces=1, smoothing=False)
    cap = cv2.VideoCapture(str(data_dir / "videos" / "obama.mp4"))
    errors, crop_errors, redetect = [], [], []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        faces = tracker(frame)
        assert len(faces) == 1
        i = len(errors)
        errors.append(np.abs(faces[0].landmarks_68.T - ref["sparse"][i]).max())
        crop_errors.append(np.abs(faces[0].crop_box - ref["roi_boxes"][i]).max())
        redetect.append(tracker.last_detected)
    assert len(errors) == len(ref["sparse"]) == 55
    assert max(errors) < 0.01, f"max landmark error {max(errors):.5f} px"
    assert max(crop_errors) < 0.01
    # Frame 0 is the initial detection; upstream flags only re-detections after a lost track.
    assert redetect[1:] == list(ref["redetect"][1:])
