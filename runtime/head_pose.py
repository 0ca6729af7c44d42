"""Head pose (yaw, pitch, roll in degrees) from the 3x4 pose block of ``param_62``, 3DDFA_V2's convention.

The two first rows of the scaled rotation are normalized, the third is their cross product, and Euler
angles are read off as yaw = asin(R[2,0]), pitch = atan2(R[2,1], R[2,2]), roll = atan2(R[1,0], R[0,0])
(with the gimbal-lock branches of the original for |R[2,0]| > 0.998).
"""

from __future__ import annotations

import math

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


SCALAR_BATCH = 4  # up to this many faces, plain float math beats numpy's per-call overhead (~10x for one face)


def pose_from_params(params: np.ndarray) -> np.ndarray:
    """(B, 62) -> (B, 3) yaw, pitch, roll in degrees."""
    params = np.asarray(params).reshape(-1, 62)
    if len(params) <= SCALAR_BATCH:
        return np.array([_pose_of_one(p) for p in params[:, :12].astype(np.float64).tolist()], dtype=np.float64).reshape(-1, 3)
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


def _pose_of_one(p: list[float]) -> tuple[float, float, float]:
    """The same formula for one face, on Python floats (row-major 3x4 pose block)."""
    n1 = math.sqrt(p[0] * p[0] + p[1] * p[1] + p[2] * p[2])
    n2 = math.sqrt(p[4] * p[4] + p[5] * p[5] + p[6] * p[6])
    a0, a1, a2 = p[0] / n1, p[1] / n1, p[2] / n1
    b0, b1, b2 = p[4] / n2, p[5] / n2, p[6] / n2
    r20, r21, r22 = a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0
    if abs(r20) > 0.998:
        sign = 1.0 if r20 > 0 else -1.0
        return sign * 90.0, math.degrees(math.atan2(-sign * a1, -sign * a2)), 0.0
    return math.degrees(math.asin(r20)), math.degrees(math.atan2(r21, r22)), math.degrees(math.atan2(b0, a0))
