"""Head pose (yaw, pitch, roll in degrees) from the 3x4 pose block of ``param_62``, 3DDFA_V2's convention.

The two first rows of the scaled rotation are normalized, the third is their cross product, and Euler
angles are read off as yaw = asin(R[2,0]), pitch = atan2(R[2,1], R[2,2]), roll = atan2(R[1,0], R[0,0])
(with the gimbal-lock branches of the original for |R[2,0]| > 0.998).
"""

from __future__ import annotations

import numpy as np


def rotation_from_params(params: np.ndarray) -> np.ndarray:
    """(B, 62) -> (B, 3, 3) orthonormal rotation, float64."""
    pose = np.asarray(params, dtype=np.float64).reshape(-1, 62)[:, :12].reshape(-1, 3, 4)
    rows = pose[:, :2, :3] / np.sqrt(np.einsum("bij,bij->bi", pose[:, :2, :3], pose[:, :2, :3]))[:, :, None]
    rot = np.empty((len(pose), 3, 3), dtype=np.float64)
    rot[:, :2] = rows
    r1, r2 = rows[:, 0], rows[:, 1]
    rot[:, 2, 0] = r1[:, 1] * r2[:, 2] - r1[:, 2] * r2[:, 1]
    rot[:, 2, 1] = r1[:, 2] * r2[:, 0] - r1[:, 0] * r2[:, 2]
    rot[:, 2, 2] = r1[:, 0] * r2[:, 1] - r1[:, 1] * r2[:, 0]
    return rot


def pose_from_params(params: np.ndarray) -> np.ndarray:
    """(B, 62) -> (B, 3) yaw, pitch, roll in degrees."""
    rot = rotation_from_params(params)
    r20 = rot[:, 2, 0]
    out = np.empty((len(rot), 3), dtype=np.float64)
    out[:, 0] = np.arcsin(np.clip(r20, -1.0, 1.0))
    # atan2(a / c, b / c) == atan2(a, b) for c = cos(yaw) > 0, which holds off the gimbal-lock branches.
    out[:, 1] = np.arctan2(rot[:, 2, 1], rot[:, 2, 2])
    out[:, 2] = np.arctan2(rot[:, 1, 0], rot[:, 0, 0])
    locked = np.abs(r20) > 0.998
    if locked.any():
        sign = np.sign(r20[locked])
        out[locked, 0] = sign * (np.pi / 2)
        out[locked, 1] = np.arctan2(-sign * rot[locked, 0, 1], -sign * rot[locked, 0, 2])
        out[locked, 2] = 0.0
    return np.degrees(out, out=out)
