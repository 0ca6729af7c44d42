"""3DMM reconstruction of 3DDFA_V2: 62 parameters -> 68 landmarks or the dense 38,365-vertex mesh.

``param_62`` = 12 pose (a 3x4 scaled-rotation | translation matrix, row-major), 40 shape and 10 expression
coefficients. Vertices are computed in the 120x120 crop and mapped to the frame through the crop box:
x - 1, z - 1, y flipped (120 - y), scaled by the crop, z scaled by the mean scale and shifted so min z = 0.

Layout for speed: each basis is stored transposed, (51, 3 * V) float32 with the mean as row 50, so one
``[alpha, 1] @ basis`` streams the basis once (for all faces of a frame at once) and yields the shape
axis-major (x row, y row, z row). The pose and the crop mapping are folded into one 3x3 matrix plus an
offset per face. The dense basis (23 MB) is stored in that layout in the bundle and memory-mapped from the
uncompressed npz member on first use.
"""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path

import cv2
import numpy as np

N_SHAPE, N_EXPRESSION = 40, 10
N_ALPHA = N_SHAPE + N_EXPRESSION


def _transposed_basis(u: np.ndarray, w_shp: np.ndarray, w_exp: np.ndarray) -> np.ndarray:
    """Interleaved rows (x,y,z per vertex) -> (51, 3, V) float32: shape rows, expression rows, mean row."""
    u = np.asarray(u, dtype=np.float32).reshape(-1)
    n_vertices = u.size // 3
    out = np.empty((N_ALPHA + 1, 3, n_vertices), dtype=np.float32)
    for rows, w, k in ((slice(0, N_SHAPE), w_shp, N_SHAPE), (slice(N_SHAPE, N_ALPHA), w_exp, N_EXPRESSION)):
        w = np.asarray(w, dtype=np.float32)
        for axis in range(3):
            # cv2.transpose is cache-blocked: ~7x faster than numpy's strided copy of the 23 MB basis.
            out[rows, axis] = cv2.transpose(w[axis::3, :k])
    out[N_ALPHA] = u.reshape(n_vertices, 3).T
    return out


def _alpha_with_one(params: np.ndarray) -> np.ndarray:
    """(B, 62) -> (B, 51): shape and expression coefficients followed by 1 for the mean row."""
    alpha = np.empty((params.shape[0], N_ALPHA + 1), dtype=np.float32)
    alpha[:, :N_ALPHA] = params[:, 12:62]
    alpha[:, N_ALPHA] = 1.0
    return alpha


def frame_transforms(params: np.ndarray, crop_boxes, size: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """Per face, the 3x3 matrix and offset that take a 3DMM shape straight to frame pixels (before the z shift).

    frame = diag(sx, -sy, (sx + sy) / 2) @ (R @ shape + t - (1, size, 1)) + (box x, box y, 0), y negated.
    Returns ``(B, 3, 3)`` and ``(B, 3)`` float32. Few numpy calls on purpose: this runs on every tracked frame.
    """
    params = np.asarray(params, dtype=np.float32).reshape(-1, 62)
    boxes = np.asarray(crop_boxes, dtype=np.float64).reshape(-1, 4)
    extent = (boxes[:, 2:] - boxes[:, :2]) / size  # (B, 2): scale_x, scale_y
    diag = np.empty((len(boxes), 3), dtype=np.float32)
    diag[:, :2] = extent
    diag[:, 1] *= -1
    diag[:, 2] = (extent[:, 0] + extent[:, 1]) / 2
    pose = params[:, :12].reshape(-1, 3, 4)
    matrix = pose[:, :, :3] * diag[:, :, None]
    offset = (pose[:, :, 3] - _CROP_ORIGIN[size]) * diag
    offset[:, :2] += boxes[:, :2]
    return matrix, offset


class _CropOrigin(dict):
    """(1, size, 1) as float32, per crop size: x - 1, y flipped around size, z - 1 (3DDFA_V2's crop convention)."""

    def __missing__(self, size: int) -> np.ndarray:
        self[size] = value = np.array([1.0, size, 1.0], dtype=np.float32)
        return value


_CROP_ORIGIN = _CropOrigin()


def _read_npz_members(path, names) -> dict[str, np.ndarray]:
    """Arrays of an npz; stored (uncompressed) members are memory-mapped instead of read through zipfile."""
    out = {}
    path = Path(path)
    with zipfile.ZipFile(path) as zf, open(path, "rb") as fh:
        for name in names:
            info = zf.getinfo(f"{name}.npy")
            if info.compress_type != zipfile.ZIP_STORED:
                out[name] = np.load(zf.open(info), allow_pickle=False)
                continue
            fh.seek(info.header_offset)
            local = fh.read(30)
            start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
            fh.seek(start)
            major, _ = np.lib.format.read_magic(fh)
            reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(fh)
            if dtype.hasobject:
                raise ValueError(f"{path.name}:{name} holds Python objects; refusing to load it")
            out[name] = np.memmap(path, dtype=dtype, mode="r", offset=fh.tell(), shape=shape, order="F" if fortran else "C")
    return out


def dense_arrays_for_bundle(u, w_shp, w_exp, tri) -> dict[str, np.ndarray]:
    """What a bundle's ``bfm_dense.npz`` holds: the basis already in the runtime's (51, 3, V) layout (the runtime maps
    it from the file instead of building a second 23 MB copy) and the (T, 3) int32 triangles."""
    return {"basis": _transposed_basis(u, w_shp, w_exp), "tri": _triangles(tri)}


class MorphableModel:
    """Mean and shape+expression basis of the 68 landmarks and, optionally, of the dense mesh."""

    def __init__(self, landmark_basis: np.ndarray, dense_basis: np.ndarray | None = None,
                 triangles: np.ndarray | None = None, dense_path=None) -> None:
        self._landmark_basis = landmark_basis  # (51, 3, 68)
        self._landmark_flat = landmark_basis.reshape(N_ALPHA + 1, -1)
        self._dense_basis = dense_basis  # (51, 3, V) or None
        self._triangles = triangles
        self._dense_path = dense_path
        self._lock = threading.Lock()

    @classmethod
    def from_arrays(cls, u_base, w_shp_base, w_exp_base, u=None, w_shp=None, w_exp=None, tri=None) -> "MorphableModel":
        landmark_basis = _transposed_basis(u_base, w_shp_base, w_exp_base)
        dense_basis = _transposed_basis(u, w_shp, w_exp) if u is not None else None
        return cls(landmark_basis, dense_basis, _triangles(tri) if tri is not None else None)

    @classmethod
    def from_npz(cls, landmark_path, dense_path=None) -> "MorphableModel":
        """Load our arrays (no pickles): the 68-point file now; the dense file, when given, on first use."""
        with np.load(landmark_path, allow_pickle=False) as lm:
            landmark_basis = _transposed_basis(lm["u_base"], lm["w_shp_base"], lm["w_exp_base"])
        return cls(landmark_basis, dense_path=dense_path)

    def _load_dense(self) -> None:
        with self._lock:
            if self._dense_basis is not None or self._dense_path is None:
                return
            arrays = _read_npz_members(self._dense_path, ("basis", "tri"))
            basis = arrays["basis"]
            if basis.ndim != 3 or basis.shape[:2] != (N_ALPHA + 1, 3) or basis.dtype != np.float32:
                raise ValueError(f"{Path(self._dense_path).name}: basis has shape {basis.shape} {basis.dtype}, expected (51, 3, V) float32")
            self._triangles = _triangles(arrays["tri"])
            self._dense_basis = basis  # memory-mapped in the runtime's layout: no copy of the 23 MB

    @property
    def has_dense(self) -> bool:
        return self._dense_basis is not None or self._dense_path is not None

    @property
    def triangles(self) -> np.ndarray | None:
        """(T, 3) int32 vertex indices."""
        self._load_dense()
        return self._triangles

    # --- reconstruction -----------------------------------------------------------------------------
    def landmarks_in_crop(self, params: np.ndarray) -> np.ndarray:
        """(B, 62) -> (B, 3, 68) landmarks in 120x120 crop coordinates (before the frame mapping)."""
        params = np.asarray(params, dtype=np.float32).reshape(-1, 62)
        shape = (_alpha_with_one(params) @ self._landmark_flat).reshape(-1, 3, 68)
        pose = params[:, :12].reshape(-1, 3, 4)
        return pose[:, :, :3] @ shape + pose[:, :, 3:]

    def landmark_drift_px(self, params: np.ndarray, reference_params: np.ndarray) -> np.ndarray:
        """Per face, the mean 2D displacement of the 68 landmarks between two parameter sets, in pixels of the
        120x120 crop: how far a converted or quantized regressor moves the result (the unit of the drift budgets)."""
        a = self.landmarks_in_crop(params)[:, :2]
        b = self.landmarks_in_crop(reference_params)[:, :2]
        return np.linalg.norm(a - b, axis=1).mean(axis=1)

    def landmarks_in_frame(self, params: np.ndarray, crop_boxes) -> np.ndarray:
        """(B, 62), (B, 4) -> (B, 68, 3) float32 landmarks in frame pixels (z shifted so its minimum is 0)."""
        params = np.asarray(params, dtype=np.float32).reshape(-1, 62)
        if len(params) == 0:
            return np.zeros((0, 68, 3), dtype=np.float32)
        shape = (_alpha_with_one(params) @ self._landmark_flat).reshape(-1, 3, 68)
        matrix, offset = frame_transforms(params, crop_boxes)
        out = shape.transpose(0, 2, 1) @ matrix.transpose(0, 2, 1)  # (B, 68, 3), contiguous
        out += offset[:, None, :]
        out[:, :, 2] -= out[:, :, 2].min(axis=1, keepdims=True)
        return out

    def dense_in_frame(self, params: np.ndarray, crop_boxes) -> list[np.ndarray]:
        """(B, 62), (B, 4) -> B arrays (V, 3) float32 in frame pixels; the basis is read once for all faces."""
        basis = self._dense()
        params = np.asarray(params, dtype=np.float32).reshape(-1, 62)
        if len(params) == 0:
            return []
        shapes = (_alpha_with_one(params) @ basis.reshape(N_ALPHA + 1, -1)).reshape(len(params), 3, -1)
        matrix, offset = frame_transforms(params, crop_boxes)
        out = []
        for shape, m, o in zip(shapes, matrix, offset):
            v = m @ shape
            v += o[:, None]
            v[2] -= v[2].min()
            out.append(v.T)
        return out

    def _dense(self) -> np.ndarray:
        self._load_dense()
        if self._dense_basis is None:
            raise ValueError("this model has no dense basis (bundle exported without the dense mesh)")
        return self._dense_basis


def _triangles(tri) -> np.ndarray:
    tri = np.asarray(tri)
    return np.ascontiguousarray(tri.T if tri.shape[0] == 3 else tri, dtype=np.int32)
