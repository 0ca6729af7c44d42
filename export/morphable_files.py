"""Turning the 3DMM and parameter statistics into the plain arrays a bundle carries.

Upstream ships them as pickles (``bfm_noneck_v3.pkl``, ``tri.pkl``, ``param_mean_std_62d_120x120.pkl``).
They are read here, at export time only, through an unpickler that admits numpy arrays and nothing else;
the runtime only ever reads ``.npz`` files with ``allow_pickle=False``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from tddfa_edge.contracts.errors import DataFileError

# The globals a pickled dict of numpy arrays needs, and nothing that can run code.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("collections", "OrderedDict"),
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}: only numpy arrays are accepted")


def load_array_pickle(path: str | Path) -> dict[str, np.ndarray]:
    """Read a pickle holding a dict of numpy arrays (or one array) without executing anything else."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            obj = _ArraysOnlyUnpickler(fh).load()
    except FileNotFoundError:
        raise DataFileError(f"missing file {path}") from None
    except Exception as exc:
        raise DataFileError(f"cannot read {path} as a pickle of numpy arrays: {exc}") from None
    if isinstance(obj, np.ndarray):
        return {"array": obj}
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise DataFileError(f"{path} does not hold a dict of numpy arrays")
    return {str(k): v for k, v in obj.items()}


def load_param_mean_std(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std), each (62,) float32, from upstream's pickle or our npz."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    else:
        arrays = load_array_pickle(path)
    try:
        mean = np.asarray(arrays["mean"], dtype=np.float32).reshape(62)
        std = np.asarray(arrays["std"], dtype=np.float32).reshape(62)
    except (KeyError, ValueError) as exc:
        raise DataFileError(f"{path} is not a 62-d parameter mean/std file: {exc}") from None
    return mean, std


def load_dense_model(path: str | Path, tri_path: str | Path | None = None) -> dict[str, np.ndarray]:
    """u (3V,1), w_shp (3V,40), w_exp (3V,10), keypoints (204,), tri (3,T) from our npz or upstream's pickles."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    else:
        arrays = load_array_pickle(path)
        if tri_path is not None:
            arrays["tri"] = next(iter(load_array_pickle(tri_path).values()))
    needed = ("u", "w_shp", "w_exp", "keypoints", "tri")
    missing = [k for k in needed if k not in arrays]
    if missing:
        raise DataFileError(f"{path} lacks {missing} (expected a 3DDFA_V2 BFM file)")
    tri = np.asarray(arrays["tri"])
    if tri.shape[0] != 3:
        tri = tri.T
    return {
        "u": np.asarray(arrays["u"], dtype=np.float32).reshape(-1, 1),
        "w_shp": np.asarray(arrays["w_shp"], dtype=np.float32)[:, :40],
        "w_exp": np.asarray(arrays["w_exp"], dtype=np.float32)[:, :10],
        "keypoints": np.asarray(arrays["keypoints"], dtype=np.int64).reshape(-1),
        "tri": np.ascontiguousarray(tri, dtype=np.int32),
    }


# 3DMM files without a recorded sha256 (upstream's bfm_noneck_v3.pkl and tri.pkl) are accepted only when they
# reproduce these: 68 landmarks and 97 dense vertices (120x120 crop pixels) for three parameter vectors, computed
# from the data folder's checked bfm_noneck_v3.npz (which reproduces them to 5e-5 px); a different 3DMM moves them by pixels.
CONTENT_CHECK = Path(__file__).resolve().parent / "morphable_check.json"
CONTENT_TOLERANCE_PX = 0.01


def check_morphable_model(dense: dict[str, np.ndarray], where: str) -> float:
    """Refuse a 3DMM that does not reproduce the reference vectors; returns the largest difference in crop pixels."""
    import json

    ref = json.loads(CONTENT_CHECK.read_text())
    n_vertices = dense["u"].shape[0] // 3
    tri = dense["tri"]
    if n_vertices != ref["vertices"] or tri.shape != (3, ref["triangles"]):
        raise DataFileError(f"{where} is not 3DDFA_V2's 3DMM: {n_vertices} vertices and {tri.shape[1]} triangles, "
                            f"expected {ref['vertices']} and {ref['triangles']}")
    if tri.min() < 0 or tri.max() >= n_vertices or len(np.unique(tri)) != n_vertices:
        raise DataFileError(f"{where}: triangle indices do not cover the {n_vertices} vertices exactly")
    params = np.asarray(ref["params"], dtype=np.float64)
    u = dense["u"].reshape(-1).astype(np.float64)
    w_shp, w_exp = dense["w_shp"].astype(np.float64), dense["w_exp"].astype(np.float64)
    worst = 0.0
    for rows, key in ((dense["keypoints"], "landmarks_crop"), (_xyz_rows(ref["dense_vertex_indices"]), "dense_crop")):
        for p, want in zip(params, np.asarray(ref[key], dtype=np.float64)):
            shape = (u[rows] + w_shp[rows] @ p[12:52] + w_exp[rows] @ p[52:62]).reshape(-1, 3).T
            pose = p[:12].reshape(3, 4)
            worst = max(worst, float(np.abs(pose[:, :3] @ shape + pose[:, 3:] - want).max()))
    if worst > CONTENT_TOLERANCE_PX:
        raise DataFileError(f"{where} is not 3DDFA_V2's 3DMM: it moves the reference landmarks by {worst:.3f} px "
                            f"(accepted: {CONTENT_TOLERANCE_PX} px)")
    return worst


def _xyz_rows(vertex_indices) -> np.ndarray:
    idx = np.asarray(vertex_indices, dtype=np.int64)
    return np.stack([3 * idx, 3 * idx + 1, 3 * idx + 2], axis=1).reshape(-1)


def landmark_arrays(dense: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The 68-landmark rows (204 = 68 x xyz) of the dense model, as 3DDFA_V2 indexes them."""
    kp = dense["keypoints"]
    return {
        "u_base": dense["u"][kp].reshape(-1),
        "w_shp_base": dense["w_shp"][kp],
        "w_exp_base": dense["w_exp"][kp],
    }


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Deterministic npz (fixed member order and timestamps) so re-exports are byte-identical."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w") as member:
                np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)
