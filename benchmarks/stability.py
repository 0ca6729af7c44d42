"""Landmark stability on video: jitter and lag of landmark tracks, and the benchmark's per-variant report.

Landmark tracks are arrays (T, K, 2+) of one face over T consecutive frames, in frame pixels. All figures are
in percent of the face size (sqrt of the landmark bounding-box area, mean over the track; NaN frames skipped):

- ``jitter``: RMS of the second temporal difference ``x[t+1] - 2 x[t] + x[t-1]`` over all points and frames
  (constant-velocity motion cancels, frame-to-frame noise stays; independent noise of std s per coordinate
  gives sqrt(12) s);
- ``noise``: RMS distance to a centred (zero-lag) Savitzky-Golay fit of the raw track;
- ``lag_frames``: the delay d (frames, least squares) that best explains ``smoothed ~= ref(t - d)``, ``ref``
  being that centred fit of the raw track: 0 for no lag, 1 for a track one frame late;
- ``stability`` (the benchmark section): frame-to-frame motion, jitter and the distance to the fp32 track of
  raw (unsmoothed) landmarks. Tracking follows 3DDFA_V2: detect on frame 0, re-crop from the previous
  landmarks, one face, no smoothing.
"""

from __future__ import annotations

import numpy as np


def face_size(track: np.ndarray) -> float:
    """Mean sqrt(width x height) of the landmark bounding box over the track, in pixels (NaN frames skipped)."""
    xy = np.asarray(track, dtype=np.float64)[..., :2]
    extent = np.nanmax(xy, axis=1) - np.nanmin(xy, axis=1)
    return float(np.nanmean(np.sqrt(extent[:, 0] * extent[:, 1])))


def jitter(track: np.ndarray, size: float | None = None) -> float:
    xy = np.asarray(track, dtype=np.float64)[..., :2]
    second = xy[2:] - 2 * xy[1:-1] + xy[:-2]
    rms = np.sqrt(np.nanmean((second**2).sum(axis=-1)))
    return float(100 * rms / (size or face_size(track)))


def _savgol_weights(half_window: int, order: int) -> np.ndarray:
    k = np.arange(-half_window, half_window + 1, dtype=np.float64)
    design = np.vander(k, order + 1, increasing=True)
    return np.linalg.pinv(design)[0]  # value of the local polynomial at the centre


def centred_fit(track: np.ndarray, half_window: int = 4, order: int = 2) -> np.ndarray:
    """Zero-lag Savitzky-Golay fit along time; returns frames ``half_window .. T-half_window-1`` only."""
    x = np.asarray(track, dtype=np.float64)
    windows = np.lib.stride_tricks.sliding_window_view(x, 2 * half_window + 1, axis=0)
    return windows @ _savgol_weights(half_window, order)


def noise(track: np.ndarray, raw: np.ndarray, half_window: int = 4, size: float | None = None) -> float:
    ref = centred_fit(np.asarray(raw, dtype=np.float64)[..., :2], half_window)
    xy = np.asarray(track, dtype=np.float64)[half_window : len(track) - half_window, ..., :2]
    rms = np.sqrt(((xy - ref) ** 2).sum(axis=-1).mean())
    return float(100 * rms / (size or face_size(raw)))


def lag_frames(track: np.ndarray, raw: np.ndarray, half_window: int = 4) -> float:
    ref = centred_fit(np.asarray(raw, dtype=np.float64)[..., :2], half_window)
    velocity = np.gradient(ref, axis=0)
    xy = np.asarray(track, dtype=np.float64)[half_window : len(track) - half_window, ..., :2]
    # smoothed ~= ref - d * velocity  =>  d = <ref - smoothed, v> / <v, v>
    return float(((ref - xy) * velocity).sum() / max((velocity**2).sum(), 1e-12))


def stability_report(track: np.ndarray, raw: np.ndarray, fps: float = 25.0) -> dict:
    size = face_size(raw)
    lag = lag_frames(track, raw)
    return {
        "jitter_pct": round(jitter(track, size), 4),
        "noise_pct": round(noise(track, raw, size=size), 4),
        "lag_frames": round(lag, 3),
        "lag_ms": round(1000 * lag / fps, 1),
    }


def landmark_track(aligner, frames: list[np.ndarray]) -> np.ndarray:
    """(T, 68, 2) landmarks of the first tracked face; frames without a face repeat NaN."""
    from tddfa_edge.runtime.tracking import Tracker

    tracker = Tracker(aligner, max_faces=1, smoothing=False)
    track = np.full((len(frames), 68, 2), np.nan)
    for i, frame in enumerate(frames):
        faces = tracker(frame)
        if faces:
            track[i] = faces[0].landmarks_68[:, :2]
    return track


def stability(track: np.ndarray, reference: np.ndarray | None = None) -> dict:
    size = face_size(track)
    step = np.linalg.norm(np.diff(track, axis=0), axis=2)  # (T-1, 68)
    out = {
        "frames": int(len(track)),
        "frames_with_face": int(np.isfinite(track[:, 0, 0]).sum()),
        "face_size_px": round(size, 2),
        "frame_to_frame_pct": round(float(np.nanmean(step)) / size * 100, 4),
        "jitter_pct": round(jitter(track, size), 4),
    }
    if reference is not None:
        out["vs_reference_pct"] = round(float(np.nanmean(np.linalg.norm(track - reference, axis=2))) / size * 100, 4)
    return out
