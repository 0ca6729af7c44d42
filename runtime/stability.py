"""How steady and how prompt a landmark track is: jitter and lag, normalized by face size.

Landmark tracks are arrays (T, K, 2+) of one face over T consecutive frames, in frame pixels.

- ``jitter``: RMS of the second temporal difference ``x[t+1] - 2 x[t] + x[t-1]`` over all points and
  frames, divided by the face size (sqrt of the landmark bounding-box area), in percent of the face
  size. Independent noise of std s per coordinate gives sqrt(12) s (two coordinates); smooth motion
  adds little at video rates.
- ``noise``: RMS distance to a centred (zero-lag) Savitzky-Golay fit of the raw track, in percent.
- ``lag_frames``: the delay d (in frames, least squares) that best explains ``smoothed ~= ref(t - d)``
  where ``ref`` is that centred fit of the raw track: 0 for no lag, 1 for a track one frame late.
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


__all__ = ["face_size", "jitter", "noise", "lag_frames", "centred_fit", "stability_report"]
