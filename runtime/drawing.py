"""Annotating frames for people: face box, 68 landmarks, head-pose axes, track id, optional dense mesh points."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .aligner import Face

BOX_COLOR = (0, 200, 0)
LANDMARK_COLOR = (0, 255, 255)
MESH_COLOR = (200, 200, 200)
AXIS_COLORS = ((0, 0, 255), (0, 255, 0), (255, 0, 0))  # x red, y green, z blue (BGR)
NOSE_TIP = 30


def rotation_from_ypr(pose_ypr) -> np.ndarray:
    """(3,) yaw, pitch, roll in degrees -> (3, 3) rotation, the inverse of ``head_pose.pose_from_params``."""
    yaw, pitch, roll = np.radians(np.asarray(pose_ypr, dtype=np.float64))
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    ry = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ ry @ rx


def draw_faces(image: np.ndarray, faces: Sequence[Face], copy: bool = True) -> np.ndarray:
    """Draw every face on a BGR uint8 image (a copy unless ``copy=False``) and return it."""
    canvas = image.copy() if copy else image
    h, w = canvas.shape[:2]
    thick = max(1, round(min(h, w) / 400))
    for face in faces:
        lm = face.landmarks_68
        if not (np.isfinite(lm[:, :2]).all() and np.isfinite(face.box[:4]).all() and np.isfinite(face.pose_ypr).all()):
            continue  # a degenerate face (NaN from a failed fit) is in the records, not drawn
        size = float(np.ptp(lm[:, 0]) + np.ptp(lm[:, 1])) / 2
        if face.dense_vertices is not None:
            _draw_points(canvas, face.dense_vertices, MESH_COLOR)
        x1, y1, x2, y2 = (int(round(v)) for v in face.box[:4])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), BOX_COLOR, thick, cv2.LINE_AA)
        label = f"{face.score:.2f}" if face.track_id is None else f"#{face.track_id} {face.score:.2f}"
        cv2.putText(canvas, label, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, BOX_COLOR, thick, cv2.LINE_AA)
        radius = max(1, round(size / 120))
        for x, y in np.round(lm[:, :2]).astype(np.int32):
            cv2.circle(canvas, (int(x), int(y)), radius, LANDMARK_COLOR, -1, cv2.LINE_AA)
        _draw_axes(canvas, face.pose_ypr, lm[NOSE_TIP, :2], 0.5 * size, thick)
    return canvas


def _draw_axes(canvas, pose_ypr, origin, length, thick) -> None:
    rot = rotation_from_ypr(pose_ypr)
    ox, oy = float(origin[0]), float(origin[1])
    # Model axes in image pixels: x right, y up (image rows grow downwards), z towards the camera.
    for k, color in enumerate(AXIS_COLORS):
        tip = (int(round(ox + length * rot[0, k])), int(round(oy - length * rot[1, k])))
        cv2.arrowedLine(canvas, (int(round(ox)), int(round(oy))), tip, color, thick + 1, cv2.LINE_AA, tipLength=0.15)


def _draw_points(canvas, vertices, color) -> None:
    h, w = canvas.shape[:2]
    v = vertices[:, :2]
    finite = np.isfinite(v).all(axis=1)
    xy = np.round(np.where(finite[:, None], v, -1)).astype(np.int32)
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
    canvas[xy[inside, 1], xy[inside, 0]] = color


__all__ = ["draw_faces", "rotation_from_ypr"]
