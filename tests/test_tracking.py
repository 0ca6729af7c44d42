"""Tracker: agreement with per-frame detection, batching, several faces, detection interval, One Euro smoothing.

Jitter and lag are defined in ``tddfa_edge.benchmarks.stability`` (jitter: RMS second temporal difference
of the 68 landmarks in % of the face size; lag: least-squares delay in frames against a zero-lag fit of
the raw track). Run with ``-s`` to see the measured numbers.
"""

from __future__ import annotations


import cv2
import numpy as np
import pytest

from tddfa_edge.benchmarks.stability import face_size, jitter, lag_frames, stability_report
from tddfa_edge.runtime.smoothing import OneEuroFilter, SmoothingConfig
from tddfa_edge.runtime.tracking import Tracker

FPS = 25.0
STILL = slice(4, 35)  # obama.mp4: the head barely moves in these frames, then turns fast


@pytest.fixture(scope="module")
def obama_frames(data_dir):
    cap = cv2.VideoCapture(str(data_dir / "videos" / "obama.mp4"))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) == 55
    return frames


def _track(aligner, frames, **kwargs):
    tracker = Tracker(aligner, max_faces=1, fps=FPS, **kwargs)
    faces = [tracker(f, i / FPS) for i, f in enumerate(frames)]
    assert all(len(f) == 1 for f in faces)
    return np.stack([f[0].landmarks_68 for f in faces]).astype(np.float64), np.stack([f[0].pose_ypr for f in faces]), tracker


@pytest.fixture(scope="module")
def raw_and_smoothed(upstream_aligner, obama_frames):
    raw, raw_pose, _ = _track(upstream_aligner, obama_frames, smoothing=False)
    smooth, smooth_pose, _ = _track(upstream_aligner, obama_frames, smoothing=True)
    return raw, raw_pose, smooth, smooth_pose


def test_tracking_agrees_with_detection_every_frame(upstream_aligner, obama_frames, raw_and_smoothed):
    raw = raw_and_smoothed[0]
    detected = np.stack([upstream_aligner(f)[0].landmarks_68 for f in obama_frames])
    dist = np.linalg.norm(raw[:, :, :2] - detected[:, :, :2], axis=2)  # (55, 68) px
    size = face_size(raw)
    print(f"\ntracking vs detect-every-frame: mean {dist.mean():.2f} px, worst frame {dist.mean(1).max():.2f} px, face {size:.0f} px")
    # Box and landmark crops differ by design (upstream); the two must still describe the same face.
    assert dist.mean() < 0.025 * size
    assert dist.mean(axis=1).max() < 0.04 * size


def test_tracked_frames_use_one_batched_regressor_call(upstream_aligner, data_dir, monkeypatch):
    image = cv2.imread(str(data_dir / "reference" / "test_images" / "2.jpeg"))  # five faces
    calls = {"regressor": [], "detector": 0}
    regressor, detector = upstream_aligner.regressor, upstream_aligner.detector

    def count_regressor(pixels):
        calls["regressor"].append(len(pixels))
        return regressor(pixels)

    def count_detector(pixels):
        calls["detector"] += 1
        return detector(pixels)

    monkeypatch.setattr(upstream_aligner, "regressor", count_regressor)
    monkeypatch.setattr(upstream_aligner, "detector", count_detector)
    tracker = Tracker(upstream_aligner, smoothing=False)
    first = tracker(image)
    assert len(first) == 5 and tracker.last_detected
    ids = sorted(f.track_id for f in first)
    for _ in range(3):
        calls["regressor"].clear()
        faces = tracker(image)
        assert calls["regressor"] == [5], "all tracked faces must go through the regressor in one batch"
        assert not tracker.last_detected
        assert sorted(f.track_id for f in faces) == ids
    assert calls["detector"] == 1


def test_lost_face_and_periodic_detection(upstream_aligner, data_dir):
    image = cv2.imread(str(data_dir / "images" / "trump_hillary.jpg"))  # two faces, left and right
    right_gone = image.copy()
    right_gone[:, image.shape[1] // 2 :] = 127
    tracker = Tracker(upstream_aligner, detect_interval=4, smoothing=False)
    sequence = [image] * 2 + [right_gone] * 4 + [image] * 5  # detections on frames 0, 4, 8
    seen = []
    for frame in sequence:
        faces = tracker(frame)
        seen.append({f.track_id: float(f.landmarks_68[:, 0].mean()) for f in faces})
    assert len(seen[0]) == 2
    left_id = min(seen[0], key=seen[0].get)
    assert all(left_id in s for s in seen), "the face that stays keeps its id"
    # The periodic detection on frame 4 no longer confirms the covered face: dropped until frame 8 finds it again.
    assert [len(s) for s in seen] == [2, 2, 2, 2, 1, 1, 1, 1, 2, 2, 2]
    assert max(seen[-1]) > max(seen[0]), "a face found again is a new track"


def test_detect_interval_keeps_the_track(upstream_aligner, obama_frames):
    tracker = Tracker(upstream_aligner, detect_interval=10, max_faces=1, smoothing=False)
    detected, ids = [], set()
    for frame in obama_frames:
        faces = tracker(frame)
        detected.append(tracker.last_detected)
        ids.update(f.track_id for f in faces)
        assert len(faces) == 1
    assert [i for i, d in enumerate(detected) if d] == [0, 10, 20, 30, 40, 50]
    assert ids == {0}


def test_smoothing_reduces_jitter_without_visible_lag(raw_and_smoothed):
    raw, raw_pose, smooth, smooth_pose = raw_and_smoothed
    size = face_size(raw)
    off, on = stability_report(raw, raw, FPS), stability_report(smooth, raw, FPS)
    still_off, still_on = jitter(raw[STILL], size), jitter(smooth[STILL], size)
    pose_off = np.sqrt((np.diff(raw_pose[STILL], 2, axis=0) ** 2).mean())
    pose_on = np.sqrt((np.diff(smooth_pose[STILL], 2, axis=0) ** 2).mean())
    print(f"\nobama.mp4 (face {size:.0f} px) smoothing off: {off}, still-segment jitter {still_off:.3f} %, pose {pose_off:.3f} deg"
          f"\n                         smoothing on:  {on}, still-segment jitter {still_on:.3f} %, pose {pose_on:.3f} deg")
    assert on["jitter_pct"] < 0.75 * off["jitter_pct"]
    assert still_on < 0.55 * still_off
    assert pose_on < 0.6 * pose_off
    assert abs(off["lag_frames"]) < 0.05
    assert on["lag_frames"] < 0.35, "smoothing must not delay the landmarks visibly (< 1/3 frame)"


def test_smoothing_changes_only_the_reported_landmarks(upstream_aligner, obama_frames):
    crops = []
    for smoothing in (False, True):
        tracker = Tracker(upstream_aligner, max_faces=1, smoothing=smoothing)
        crops.append(np.stack([tracker(f)[0].crop_box for f in obama_frames[:20]]))
    np.testing.assert_array_equal(crops[0], crops[1])


def test_smoothing_default_comes_from_the_bundle(upstream_aligner):
    assert upstream_aligner.bundle.manifest.pipeline.smoothing is True
    assert Tracker(upstream_aligner).smoothing == SmoothingConfig()
    assert Tracker(upstream_aligner, smoothing=False).smoothing is None


def test_one_euro_on_a_noisy_synthetic_trajectory():
    rng = np.random.default_rng(7)
    t = np.arange(250) / FPS
    # 68 points of a 200 px face: slow sway, a fast 1 s head turn, rest; plus 1.5 px noise per coordinate.
    base = rng.uniform(-100, 100, (68, 2))
    sway = 20 * np.sin(2 * np.pi * 0.3 * t)
    turn = 150 / (1 + np.exp(-(t - 5.0) * 8))
    truth = base[None] + np.stack([sway + turn, 0.5 * sway], axis=1)[:, None, :]
    noisy = truth + rng.normal(0, 1.5, truth.shape)
    filt = OneEuroFilter(SmoothingConfig(), 1 / FPS)
    smooth = np.stack([filt(x, ti, scale=200.0) for x, ti in zip(noisy, t)])
    err_raw = np.sqrt(((noisy - truth) ** 2).sum(-1).mean())
    err_smooth = np.sqrt(((smooth - truth)[5:] ** 2).sum(-1).mean())
    print(f"\nsynthetic: error vs truth {err_raw:.2f} px raw, {err_smooth:.2f} px smoothed; jitter {jitter(noisy, 200):.3f} -> "
          f"{jitter(smooth, 200):.3f} %; lag {lag_frames(smooth, truth):.3f} frames")
    assert err_smooth < 0.9 * err_raw
    assert jitter(smooth, 200) < 0.4 * jitter(noisy, 200)
    assert lag_frames(smooth, truth) < 0.6
    # The lag measure itself: a track one frame late reads as one frame of lag.
    assert lag_frames(truth[:-1], truth[1:]) == pytest.approx(1.0, abs=0.05)


def test_one_euro_survives_repeated_timestamps_and_writes_in_place():
    filt = OneEuroFilter(SmoothingConfig(), 1 / 30)
    out = np.zeros((68, 3), np.float32)
    x = np.ones((68, 3))
    filt(x, 0.0, out=out)
    filt(x + 1, 0.0, out=out)  # a repeated timestamp: assume the previous step, do not reset or divide by zero
    assert np.isfinite(out).all() and 1.0 < out[0, 0] < 2.0
