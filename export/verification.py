"""Checking every converted artifact against the PyTorch fp32 reference before anything is written.

Regressors: the mean 68-landmark displacement (120x120 crop pixels) on the held-out calibration crops. Detectors:
the faces the reference finds on the check frames are found again (greedy one-to-one IoU >= 0.5) and every
matched box stays within the tolerance. Both run the artifact exactly as the runtime will (``LoadedModel``,
``FaceDetector``) and return a ``Verification`` for the manifest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tddfa_edge.contracts.errors import ExportError
from tddfa_edge.runtime.backends import LoadedModel, backend_available, backends_for
from tddfa_edge.runtime.boxes import match_boxes
from tddfa_edge.runtime.detector import FaceDetector
from tddfa_edge.runtime.manifest import DetectorSettings, Verification
from tddfa_edge.runtime.morphable_model import MorphableModel

from .artifacts import ExportContext, ModelArtifact

# Mean 68-landmark displacement allowed vs PyTorch fp32, in pixels of the 120x120 crop (float formats).
FLOAT_TOLERANCE_PX = {"fp32": 0.01, "fp16": 0.05}
# Detector boxes vs PyTorch fp32: float formats in frame pixels; quantized ones relative to the box side
# (frame pixels mean little when a 3913 px photo is read at 832 px).
DETECTOR_BOX_TOLERANCE_PX = {"fp32": 0.5, "fp16": 1.0}
DETECTOR_BOX_TOLERANCE_REL = 0.01
DETECTOR_MATCH_IOU = 0.5


def load_artifact(folder: Path, artifact: ModelArtifact, threads: int = 1) -> LoadedModel:
    """Open a freshly converted file with the first installed backend for its format."""
    backend = next((b for b in backends_for(artifact.format) if backend_available(b)), None)
    if backend is None:
        raise ExportError(f"cannot verify {artifact.format} artifacts: no backend installed for them ({', '.join(backends_for(artifact.format))})")
    placeholder = Verification("none", "", "", True, {})
    return LoadedModel.open(folder, artifact.record(placeholder), backend, threads)


def regressor_params(model: LoadedModel, crops: np.ndarray, mean: np.ndarray, std: np.ndarray, batch: int = 50) -> np.ndarray:
    """De-normalized (N, 62) parameters of a loaded regressor on uint8 crops."""
    params = np.concatenate([model(crops[i : i + batch])[0].reshape(-1, 62) for i in range(0, len(crops), batch)])
    return params * std + mean if model.record.param_normalized else params


def regressor_tolerance_px(precision: str, quantized_budget_px: float) -> float:
    """The export-time drift tolerance: fixed for float formats, the target's budget for int8 (twice it for full integer)."""
    if precision in FLOAT_TOLERANCE_PX:
        return FLOAT_TOLERANCE_PX[precision]
    return quantized_budget_px * (2.0 if precision == "int8-full" else 1.0)


def verify_regressor(ctx: ExportContext, folder: Path, artifact: ModelArtifact, mm: MorphableModel, reference_params: np.ndarray,
                     tolerance_px: float) -> Verification:
    model = load_artifact(folder, artifact)
    params = regressor_params(model, ctx.holdout_crops(), ctx.param_mean, ctx.param_std)
    drift = mm.landmark_drift_px(params, reference_params)
    norm_err = np.abs((params - reference_params) / ctx.param_std)
    return Verification(
        reference="PyTorch fp32, same crops",
        data=f"{len(params)} held-out calibration crops",
        tolerance=f"mean landmark drift <= {tolerance_px} px (120x120 crop)",
        passed=bool(drift.mean() <= tolerance_px),
        measures={
            "landmark_drift_px_mean": round(float(drift.mean()), 5),
            "landmark_drift_px_p95": round(float(np.percentile(drift, 95)), 5),
            "landmark_drift_px_max": round(float(drift.max()), 5),
            "param_norm_abs_err_mean": round(float(norm_err.mean()), 6),
            "param_norm_abs_err_max": round(float(norm_err.max()), 6),
        },
    )


def verify_detector(ctx: ExportContext, folder: Path, artifact: ModelArtifact, settings: DetectorSettings,
                    reference: FaceDetector) -> Verification:
    """``reference``: the PyTorch detector behind a ``FaceDetector`` with the same settings."""
    detector = FaceDetector(load_artifact(folder, artifact), settings)
    tolerance_px = DETECTOR_BOX_TOLERANCE_PX.get(artifact.precision)
    faces = matched = extra = 0
    errors, relative = [], []
    frames = ctx.detector_check_frames()
    for key, frame in frames:
        ref = ctx.cached(f"detector-reference:{key}:{settings}", lambda: reference(frame).boxes)
        got = detector(frame).boxes
        match = match_boxes(ref, got, DETECTOR_MATCH_IOU)
        faces += len(ref)
        matched += match.matched
        extra += len(match.extra)
        for i, j, _ in match.pairs:
            err = float(np.abs(got[j, :4] - ref[i, :4]).max())
            side = float(max(ref[i, 2] - ref[i, 0], ref[i, 3] - ref[i, 1]))
            errors.append(err)
            relative.append(err / max(side, 1e-6))
    recall = matched / faces if faces else 1.0
    if tolerance_px is not None:
        tolerance = f"recall 1.0 and every box corner within {tolerance_px} frame px"
        within = not errors or max(errors) <= tolerance_px
    else:
        tolerance = f"recall 1.0 and every box corner within {DETECTOR_BOX_TOLERANCE_REL:.0%} of the box side"
        within = not relative or max(relative) <= DETECTOR_BOX_TOLERANCE_REL
    return Verification(
        reference="PyTorch fp32, same input size and post-processing",
        data=f"{len(frames)} check frames, {faces} faces",
        tolerance=tolerance,
        passed=bool(recall >= 1.0 and within),
        measures={
            "faces_fp32": faces,
            "faces_matched": matched,
            "extra_boxes": extra,
            "recall_vs_fp32": round(recall, 4),
            "box_err_px_max": round(max(errors), 4) if errors else None,
            "box_err_px_mean": round(float(np.mean(errors)), 4) if errors else None,
            "box_err_rel_max": round(max(relative), 5) if relative else None,
        },
    )


def failure_summary(name: str, check: Verification) -> str:
    numbers = ", ".join(f"{k}={v}" for k, v in check.measures.items() if v is not None)
    return f"{name}: {numbers} (needs {check.tolerance})"
