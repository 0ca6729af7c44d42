"""Step 1 of an export: find and check every input file, then load the networks and arrays from them.

Each input comes from an explicit path, else a 3DDFA_V2 checkout (``--upstream``), else the data folder
(``tddfa_edge.datasets.locate``), else (only with ``--download``) its upstream URL; every file with a recorded
sha256 is checked against it (``tddfa_edge.models.registry``), the others by their content when loaded.
Checkpoints load with ``torch.load(weights_only=True)``; upstream pickles go through an unpickler that admits
numpy arrays only (``morphable_files``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tddfa_edge.contracts.errors import ExportError
from tddfa_edge.models.registry import ResolvedFile
from tddfa_edge.runtime.manifest import SourceRecord


@dataclass(frozen=True)
class ExportInputs:
    regressor: ResolvedFile
    widen_factor: float
    detector: ResolvedFile
    detector_architecture: str  # "faceboxes", "yunet_n", "yunet_s"
    param_mean_std: ResolvedFile
    morphable_model: ResolvedFile  # our .npz, or upstream's bfm_noneck_v3.pkl (+ ``tri``)
    tri: ResolvedFile | None

    def sources(self) -> dict[str, SourceRecord]:
        return {role: SourceRecord(f.name, f.path.name, f.sha256) for role, f in (
            ("regressor", self.regressor), ("detector", self.detector), ("param_mean_std", self.param_mean_std),
            ("morphable_model", self.morphable_model)) + ((("triangles", self.tri),) if self.tri else ())}


def resolve_inputs(regressor_name: str, detector_architecture: str, data_dir=None, download: bool = False,
                   regressor_path=None, detector_path=None, param_mean_std_path=None, bfm_path=None, tri_path=None,
                   upstream_dir=None) -> ExportInputs:
    """Find every input (explicit path > 3DDFA_V2 checkout > data folder > cache > download) and check its sha256."""
    from tddfa_edge.models.registry import find, lookup

    entry = lookup(regressor_name)
    if entry.kind != "regressor":
        raise ExportError(f"{regressor_name} is a {entry.kind}, not a regressor checkpoint")
    where = {"data_dir": data_dir, "download": download, "upstream_dir": upstream_dir}
    regressor = find(regressor_name, regressor_path, **where)
    detector = find(detector_architecture, detector_path, **where)
    param_mean_std = find("param_mean_std_62d_120x120", param_mean_std_path, **where)
    bfm, tri = _morphable_model(bfm_path, tri_path, where)
    return ExportInputs(regressor=regressor, widen_factor=float(entry.widen_factor), detector=detector,
                        detector_architecture=detector_architecture, param_mean_std=param_mean_std, morphable_model=bfm, tri=tri)


def _morphable_model(bfm_path, tri_path, where: dict):
    """Our npz, or upstream's pickles (an explicit .pkl, the checkout's configs/, or a download) with their tri.pkl."""
    from tddfa_edge.contracts.errors import DataFileError
    from tddfa_edge.models.registry import find

    if bfm_path is not None and Path(bfm_path).suffix != ".pkl":
        return find("bfm_noneck_v3", bfm_path, **where), None
    if bfm_path is None:
        upstream = where["upstream_dir"]
        in_checkout = upstream is not None and (Path(upstream) / "configs" / "bfm_noneck_v3.pkl").is_file()
        if not in_checkout:
            try:
                return find("bfm_noneck_v3", None, **{**where, "download": False}), None
            except DataFileError:
                if not where["download"]:
                    raise DataFileError("3DMM not found: put bfm/bfm_noneck_v3.npz in the data folder, pass --upstream DIR (a 3DDFA_V2 "
                                        "checkout has configs/bfm_noneck_v3.pkl and configs/tri.pkl), --bfm FILE, or --download "
                                        "to fetch the upstream pickles") from None
    return find("bfm_noneck_v3_pkl", bfm_path, **where), find("tri_pkl", tri_path, **where)


@dataclass
class LoadedInputs:
    regressor: object  # torch module, eval mode
    detector: object
    param_mean: np.ndarray
    param_std: np.ndarray
    dense_arrays: dict[str, np.ndarray]  # u, w_shp, w_exp, keypoints, tri
    landmark_arrays: dict[str, np.ndarray]  # u_base, w_shp_base, w_exp_base


def load_inputs(inputs: ExportInputs) -> LoadedInputs:
    from tddfa_edge.models.checkpoints import build_detector, build_regressor

    from tddfa_edge.contracts.errors import DataFileError
    from tddfa_edge.models.registry import forget_download

    from .morphable_files import check_morphable_model, landmark_arrays, load_dense_model, load_param_mean_std

    mean, std = load_param_mean_std(inputs.param_mean_std.path)
    dense = load_dense_model(inputs.morphable_model.path, inputs.tri.path if inputs.tri else None)
    try:  # the upstream pickles have no recorded sha256: they must reproduce the reference vectors
        check_morphable_model(dense, str(inputs.morphable_model.path))
    except DataFileError:
        for source in (inputs.morphable_model, inputs.tri):
            if source is not None:
                forget_download(source)
        raise
    return LoadedInputs(
        regressor=build_regressor(inputs.regressor.path, inputs.widen_factor),
        detector=build_detector(inputs.detector.path, inputs.detector_architecture),
        param_mean=mean, param_std=std, dense_arrays=dense, landmark_arrays=landmark_arrays(dense),
    )
