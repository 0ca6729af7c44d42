"""3DMM reconstruction of 3DDFA_V2: 62 parameters -> 68 landmarks or the dense 38,365-vertex mesh.

``param_62`` = 12 pose (a 3x4 scaled-rotation | translation matrix, row-major), 40 shape and 10 expression
coefficients. Vertices are computed in the 120x120 crop and mapped to the frame through the crop box:
x - 1, z - 1, y flipped (120 - y), scaled by the crop, z scaled by the mean scale and shifted so min z = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_SHAPE, N_EXPRESSION = 40, 10


def _basis_by_axis(u: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interleaved (x,y,z per vertex) rows -> mean (3, V) and basis (3, V, K), contiguous float32."""
    mean = np.ascontiguousarray(u.reshape(-1, 3).T, dtype=np.float32)
    basis = np.ascontiguousarray(w.reshape(-1, 3, w.shape[1]).transpose(1, 0, 2), dtype=np.float32)
    return mean, basis


@dataclass(frozen=True)
class MorphableModel:
    """Mean and shape+expression basis of the 68 landmarks and, optionally, of the dense mesh."""

    landmark_mean: np.ndarray  # (3, 68)
    landmark_basis: np.ndarray  # (3, 68, 50)
    dense_mean: np.ndarray | None = None  # (3, V)
    dense_basis: np.ndarray | None = None  # (3*V, 50), x rows then y rows then z rows
    triangles: np.ndarray | None = None  # (T, 3) int32 vertex indices

    @classmethod
    def from_arrays(cls, u_base, w_shp_base, w_exp_base, u=None, w_shp=None, w_exp=None, tri=None):
        w_base = np.concatenate([w_shp_base[:, :N_SHAPE], w_exp_base[:, :N_EXPRESSION]], axis=1)
        lm_mean, lm_basis = _basis_by_axis(np.asarray(u_base).reshape(-1), w_base)
        dense_mean = dense_basis = triangles = None
        if u is not None:
            w = np.concatenate([w_shp[:, :N_SHAPE], w_exp[:, :N_EXPRESSION]], axis=1)
            dense_mean, basis3 = _basis_by_axis(np.asarray(u).reshape(-1), w)
            dense_basis = np.ascontiguousarray(basis3.reshape(-1, basis3.shape[2]))
        if tri is not None:
            tri = np.asarray(tri)
            triangles = np.ascontiguousarray(tri.T if tri.shape[0] == 3 else tri, dtype=np.int32)
        return cls(lm_mean, lm_basis, dense_mean, dense_basis, triangles)

    @classmethod
    def from_npz(cls, landmark_path, dense_path=None) -> "MorphableModel":
        """Load our arrays (``allow_pickle=False``): the 68-point file and optionally the dense file."""
        with np.load(landmark_path, allow_pickle=False) as lm:
            arrays = {k: lm[k] for k in ("u_base", "w_shp_base", "w_exp_base")}
        if dense_path is not None:
            with np.load(dense_path, allow_pickle=False) as dense:
                arrays.update({k: dense[k] for k in ("u", "w_shp", "w_exp", "tri")})
        return cls.from_arrays(**arrays)

    @property
    def has_dense(self) -> bool:
        return self.dense_mean is not None

    def landmarks_in_crop(self, params: np.ndarray) -> np.ndarray:
        """(B, 62) -> (B, 3, 68) landmarks in 120x120 crop coordinates (before the frame mapping)."""
        params = np.asarray(params, dtype=np.float32).reshape(-1, 62)
        pose = params[:, :12].reshape(-1, 3, 4)
        alpha = params[:, 12:62]
        shape = self.landmark_mean[None] + np.einsum("cvk,bk->bcv", self.landmark_basis, alpha, optimize=False)
        return pose[:, :, :3] @ shape + pose[:, :, 3:]

    def dense_in_crop(self, param: np.ndarray) -> np.ndarray:
        """(62,) -> (3, V) dense vertices in crop coordinates."""
        if not self.has_dense:
            raise ValueError("this model has no dense basis (bundle exported without the dense mesh)")
        param = np.asarray(param, dtype=np.float32).reshape(62)
        pose = param[:12].reshape(3, 4)
        shape = (self.dense_basis @ param[12:62]).reshape(3, -1)
        shape += self.dense_mean
        return pose[:, :3] @ shape + pose[:, 3:]


def crop_to_frame(vertices: np.ndarray, crop_box, size: int = 120) -> np.ndarray:
    """Map (3, V) crop-space vertices into frame pixels through ``crop_box`` (returns a new float32 array)."""
    sx, sy, ex, ey = (float(v) for v in crop_box[:4])
    scale_x, scale_y = (ex - sx) / size, (ey - sy) / size
    out = np.empty(vertices.shape, dtype=np.float32)
    out[0] = (vertices[0] - 1) * scale_x + sx
    out[1] = (size - vertices[1]) * scale_y + sy
    z = (vertices[2] - 1) * ((scale_x + scale_y) / 2)
    out[2] = z - z.min()
    return out
