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
    r1 = pose[:, 0, :3] / np.linalg.norm(pose[:, 0, :3], axis=1, keepdims=True)
    r2 = pose[:, 1, :3] / np.linalg.norm(pose[:, 1, :3], axis=1, keepdims=True)
    return np.stack([r1, r2, np.cross(r1, r2)], axis=1)


def pose_from_params(params: np.ndarray) -> np.ndarray:
    """(B, 62) -> (B, 3) yaw, pitch, roll in degrees."""
    rot = rotation_from_params(params)
    r20 = rot[:, 2, 0]
    yaw = np.arcsin(np.clip(r20, -1.0, 1.0))
    cos_yaw = np.cos(yaw)
    with np.errstate(divide="ignore", invalid="ignore"):
        pitch = np.arctan2(rot[:, 2, 1] / cos_yaw, rot[:, 2, 2] / cos_yaw)
        roll = np.arctan2(rot[:, 1, 0] / cos_yaw, rot[:, 0, 0] / cos_yaw)
    upper, lower = r20 > 0.998, r20 < -0.998
    yaw = np.where(upper, np.pi / 2, np.where(lower, -np.pi / 2, yaw))
    pitch = np.where(upper, np.arctan2(-rot[:, 0, 1], -rot[:, 0, 2]), pitch)
    pitch = np.where(lower, np.arctan2(rot[:, 0, 1], rot[:, 0, 2]), pitch)
    roll = np.where(upper | lower, 0.0, roll)
    return np.degrees(np.stack([yaw, pitch, roll], axis=1))
