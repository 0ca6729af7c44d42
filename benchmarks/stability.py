"""Landmark stability on the video: how much the raw (unsmoothed) 68 points move from frame to frame.

All figures are in percent of the face size (sqrt of the landmark bounding-box area, mean over the track):
- ``frame_to_frame_pct``: mean displacement of a landmark between consecutive frames (true motion included);
- ``jitter_pct``: RMS of the second temporal difference x[t+1] - 2 x[t] + x[t-1] (constant-velocity motion
  cancels, frame-to-frame noise stays; independent noise of std s per coordinate gives sqrt(12) s);
- ``vs_reference_pct``: mean distance to the fp32 track on the same frames (quantization's own effect).
Tracking follows 3DDFA_V2: detect on frame 0, re-crop from the previous landmarks, one face, no smoothing.
"""

from __future__ import annotations

import numpy as np

from tddfa_edge.runtime.stability import face_size, jitter


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
