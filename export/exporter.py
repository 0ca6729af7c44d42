"""``export_bundle``: checkpoints -> converted, quantized, verified artifacts -> one bundle for one target."""

from __future__ import annotations

import dataclasses
import platform
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from tddfa_edge.runtime.backends import FORMAT_BACKENDS, LoadedModel, TensorSpec, backend_available, open_session
from tddfa_edge.runtime.bundle import SCHEMA_VERSION
from tddfa_edge.runtime.detector import DetectorConfig, postprocess_detections, prepare_detector_input
from tddfa_edge.runtime.errors import ExportError
from tddfa_edge.runtime.morphable_model import MorphableModel
from tddfa_edge.targets import Target

from .artifacts import ExportContext, ModelArtifact, converter_for
from .bundle_writer import staging_folder, write_archive, write_manifest

LICENCE_NOTICE = """3D Morphable Model notice
=========================
The 3DMM arrays in this bundle (bfm_*.npz) derive from the Basel Face Model 2009 (University of Basel)
as processed by 3DDFA / 3DDFA_V2. The Basel Face Model is licensed for non-commercial research use
only. Shipping this bundle in a commercial product requires your own licence for the BFM from the
University of Basel. The networks (3DDFA_V2 MobileNetV1 and FaceBoxes weights) are MIT licensed.
"""

# Mean 68-landmark displacement allowed at export time, in pixels of the 120x120 crop, vs PyTorch fp32.
FLOAT_TOLERANCE_PX = {"fp32": 0.01, "fp16": 0.05}
DETECTOR_BOX_TOLERANCE_PX = {"fp32": 0.5, "fp16": 1.0}
# Quantized detectors: box corners within this fraction of the box side (frame pixels mean little when a
# 3913 px photo is read at 832 px; the crop is 1.58x the box side, and tracking re-crops from landmarks).
DETECTOR_BOX_TOLERANCE_REL = 0.05


def toolkit_version() -> str:
    try:
        return version("tddfa-edge")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass
class ExportOptions:
    target: Target
    out: Path
    precision: str | None = None  # restrict both networks to this precision
    data_dir: str | None = None
    regressor_name: str = "mb05_120x120"
    regressor_path: str | None = None
    detector_path: str | None = None
    param_mean_std_path: str | None = None
    bfm_path: str | None = None
    tri_path: str | None = None
    download: bool = False
    dense: bool | None = None  # override the target's choice
    archive: bool = False
    wheelhouse: bool = False  # add aarch64/x86_64 runtime wheels + requirements.txt for offline installs
    measure_latency: bool = True
    calibration_size: int = 800
    progress: bool = True
    seed: int = 0


@dataclass
class ExportResult:
    bundle: Path
    manifest: dict
    archive: Path | None = None
    failures: list[str] = field(default_factory=list)


def _variants(choice, precision: str | None) -> tuple[list[str], str]:
    variants = list(choice.variants)
    default = choice.default
    if precision is not None:
        formats = []
        for v in variants:
            fmt = v.partition("-")[0]
            if fmt not in formats:
                formats.append(fmt)
        variants = [f"{fmt}-{precision}" for fmt in formats]
        default_fmt = default.partition("-")[0]
        default = f"{default_fmt}-{precision}"
    return variants, default


def _backend_for(fmt: str) -> str:
    for name in FORMAT_BACKENDS[fmt]:
        if backend_available(name):
            return name
    raise ExportError(f"cannot verify {fmt} artifacts: no backend installed for them ({', '.join(FORMAT_BACKENDS[fmt])})")


def load_artifact(folder: Path, artifact: ModelArtifact, threads: int = 1) -> LoadedModel:
    session = open_session(folder / artifact.file, _backend_for(artifact.format), threads)
    return LoadedModel(session, TensorSpec.from_manifest(artifact.inputs[0]), [TensorSpec.from_manifest(o) for o in artifact.outputs],
                       artifact.variant, {"param_normalized": artifact.param_normalized})


def regressor_params(model: LoadedModel, crops: np.ndarray, mean: np.ndarray, std: np.ndarray, normalized: bool, batch: int = 50) -> np.ndarray:
    outs = [model(crops[i : i + batch])[0].reshape(-1, 62) for i in range(0, len(crops), batch)]
    params = np.concatenate(outs)
    return params * std + mean if normalized else params


def landmark_drift_px(mm: MorphableModel, params: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-crop mean 2D displacement of the 68 landmarks (120x120 crop pixels)."""
    a = mm.landmarks_in_crop(params)[:, :2]
    b = mm.landmarks_in_crop(reference)[:, :2]
    return np.linalg.norm(a - b, axis=1).mean(axis=1)


def verify_regressor(ctx: ExportContext, folder: Path, artifact: ModelArtifact, mm: MorphableModel, reference_params: np.ndarray,
                     tolerance_px: float) -> dict:
    model = load_artifact(folder, artifact)
    crops = ctx.holdout_crops()
    params = regressor_params(model, crops, ctx.param_mean, ctx.param_std, artifact.param_normalized)
    drift = landmark_drift_px(mm, params, reference_params)
    norm_err = np.abs((params - reference_params) / ctx.param_std)
    result = {
        "reference": "PyTorch fp32, same crops",
        "crops": int(len(crops)),
        "split": "calibration set hold-out (index % 5 == 4)",
        "landmark_drift_px_mean": round(float(drift.mean()), 5),
        "landmark_drift_px_p95": round(float(np.percentile(drift, 95)), 5),
        "landmark_drift_px_max": round(float(drift.max()), 5),
        "param_norm_abs_err_max": round(float(norm_err.max()), 6),
        "param_norm_abs_err_mean": round(float(norm_err.mean()), 6),
        "tolerance_px": tolerance_px,
    }
    result["passed"] = bool(drift.mean() <= tolerance_px)
    return result


def _match_boxes(ref: np.ndarray, got: np.ndarray, iou_min: float = 0.5) -> tuple[int, list[float], list[float]]:
    """Matched count, per-match max corner error in frame px, and that error relative to the box side."""
    found, errors, relative = 0, [], []
    for r in ref:
        if len(got) == 0:
            continue
        x1 = np.maximum(r[0], got[:, 0]); y1 = np.maximum(r[1], got[:, 1])
        x2 = np.minimum(r[2], got[:, 2]); y2 = np.minimum(r[3], got[:, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        union = (r[2] - r[0]) * (r[3] - r[1]) + (got[:, 2] - got[:, 0]) * (got[:, 3] - got[:, 1]) - inter
        iou = inter / union
        best = int(np.argmax(iou))
        if iou[best] >= iou_min:
            found += 1
            err = float(np.abs(got[best, :4] - r[:4]).max())
            errors.append(err)
            relative.append(err / max(1e-6, float(max(r[2] - r[0], r[3] - r[1]))))
    return found, errors, relative


def detector_verification_frames(data_dir) -> list[tuple[str, np.ndarray]]:
    import cv2

    from tddfa_edge.runtime.data_files import resolve_data_file

    frames = []
    for rel in ("reference/test_images/1.jpeg", "reference/test_images/2.jpeg", "reference/test_images/3.jpeg",
                "reference/test_images/4.jpeg", "reference/test_images/5.jpeg", "images/emma.jpg",
                "images/trump_hillary.jpg", "images/JianzhuGuo.jpg"):
        img = cv2.imread(str(resolve_data_file(rel, data_dir)), cv2.IMREAD_COLOR)
        frames.append((rel, img))
    return frames


def verify_detector(ctx: ExportContext, folder: Path, artifact: ModelArtifact, tolerance_px: float) -> dict:
    from .onnx_export import torch_detector_outputs

    model = load_artifact(folder, artifact)
    config = DetectorConfig(input_size=ctx.detector_input_size)
    ref_faces = got_faces = 0
    errors: list[float] = []
    relative: list[float] = []
    net_errors: list[float] = []
    extra = 0
    for _, frame in ctx.cached("det_verify_frames", lambda: detector_verification_frames(ctx.data_dir)):
        prepared = prepare_detector_input(frame, config)
        h, w = prepared.image.shape[:2]
        key = f"det_ref::{id(frame)}::{ctx.detector_input_size}"
        ref = ctx.cached(key, lambda: postprocess_detections(*_split(torch_detector_outputs(ctx.detector, prepared.image)), h, w, prepared.scale, config))
        loc, conf = model(prepared.image[None])
        got = postprocess_detections(loc[0], conf[0, :, 1], h, w, prepared.scale, config)
        found, errs, rel = _match_boxes(ref, got)
        ref_faces += len(ref)
        got_faces += found
        extra += max(0, len(got) - found)
        errors += errs
        relative += rel
        net_errors += [e * prepared.scale for e in errs]
    recall = got_faces / ref_faces if ref_faces else 1.0
    result = {
        "reference": "PyTorch fp32 at the same input size",
        "frames": "reference/test_images/*.jpeg, images/*.jpg",
        "faces_fp32": ref_faces,
        "faces_matched": got_faces,
        "extra_boxes": extra,
        "recall_vs_fp32": round(recall, 4),
        "box_err_px_max": round(max(errors), 4) if errors else None,
        "box_err_px_mean": round(float(np.mean(errors)), 4) if errors else None,
        "box_err_input_px_max": round(max(net_errors), 4) if net_errors else None,
        "box_err_rel_max": round(max(relative), 5) if relative else None,
    }
    if tolerance_px is not None:
        result["tolerance_px"] = tolerance_px
        within = not errors or max(errors) <= tolerance_px
    else:
        result["tolerance_rel"] = DETECTOR_BOX_TOLERANCE_REL
        within = not relative or max(relative) <= DETECTOR_BOX_TOLERANCE_REL
    result["passed"] = bool(recall >= 1.0 and within)
    return result


def _split(outputs):
    loc, conf = outputs
    return loc, conf[:, 1]


def measure_latency_ms(model: LoadedModel, example: np.ndarray, budget_s: float = 0.4, warmup: int = 5) -> dict:
    for _ in range(warmup):
        model(example)
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < budget_s or len(times) < 10:
        t0 = time.perf_counter()
        model(example)
        times.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": round(float(np.median(times)), 4), "p90_ms": round(float(np.percentile(times, 90)), 4), "runs": len(times)}


def _resolve_sources(opts: ExportOptions) -> dict:
    from tddfa_edge.models.registry import lookup, resolve

    entry = lookup(opts.regressor_name)
    if entry.kind != "regressor":
        raise ExportError(f"{opts.regressor_name} is a {entry.kind}, not a regressor checkpoint")
    reg_path, reg_sha = resolve(opts.regressor_name, opts.regressor_path, opts.data_dir, opts.download)
    det_path, det_sha = resolve("faceboxes", opts.detector_path, opts.data_dir, opts.download)
    pms_path, pms_sha = resolve("param_mean_std_62d_120x120", opts.param_mean_std_path, opts.data_dir, opts.download)
    if opts.bfm_path and Path(opts.bfm_path).suffix == ".pkl":
        bfm_path, bfm_sha = resolve("bfm_noneck_v3_pkl", opts.bfm_path, opts.data_dir)
    else:
        bfm_path, bfm_sha = resolve("bfm_noneck_v3", opts.bfm_path, opts.data_dir)
    return {
        "regressor": {"name": opts.regressor_name, "file": reg_path.name, "sha256": reg_sha, "widen_factor": entry.widen_factor, "path": reg_path},
        "detector": {"name": "faceboxes", "file": det_path.name, "sha256": det_sha, "path": det_path},
        "param_mean_std": {"file": pms_path.name, "sha256": pms_sha, "path": pms_path},
        "morphable_model": {"file": bfm_path.name, "sha256": bfm_sha, "path": bfm_path},
    }


def export_bundle(opts: ExportOptions, log=print) -> ExportResult:
    """Convert, verify and write the bundle for ``opts.target`` at ``opts.out`` (atomically)."""
    import torch

    from tddfa_edge.models.checkpoints import build_detector, build_regressor

    from .morphable_files import landmark_arrays, load_dense_model, load_param_mean_std, save_npz
    from .onnx_export import torch_regressor_outputs

    torch.manual_seed(opts.seed)
    np.random.seed(opts.seed)
    target = opts.target
    sources = _resolve_sources(opts)
    regressor = build_regressor(sources["regressor"]["path"], sources["regressor"]["widen_factor"])
    detector = build_detector(sources["detector"]["path"])
    param_mean, param_std = load_param_mean_std(sources["param_mean_std"]["path"])
    dense_arrays = load_dense_model(sources["morphable_model"]["path"], opts.tri_path)
    lm_arrays = landmark_arrays(dense_arrays)
    mm = MorphableModel.from_arrays(**lm_arrays)
    dense = target.pipeline.dense if opts.dense is None else opts.dense

    reg_variants, reg_default = _variants(target.regressor, opts.precision)
    det_variants, det_default = _variants(target.detector, opts.precision)

    failures: list[str] = []
    models: dict[str, dict] = {}
    latency: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="tddfa-export-") as work, staging_folder(opts.out) as stage:
        ctx = ExportContext(
            regressor=regressor, detector=detector, param_mean=param_mean, param_std=param_std,
            detector_input_size=target.detector.input_size, data_dir=opts.data_dir, work_dir=Path(work),
            seed=opts.seed, calibration_size=opts.calibration_size, progress=opts.progress,
        )
        reference = None
        for role, variants in (("regressor", reg_variants), ("detector", det_variants)):
            for variant in variants:
                log(f"[{role}] {variant}: converting")
                artifact = converter_for(role, variant)(ctx, role, stage)
                if role == "regressor":
                    if reference is None:
                        ref_norm = torch_regressor_outputs(regressor, ctx.holdout_crops())
                        reference = ref_norm * param_std + param_mean
                    precision = artifact.precision
                    tol = FLOAT_TOLERANCE_PX.get(precision)
                    if tol is None:
                        tol = target.budgets.max_landmark_drift_px * (2.0 if precision == "int8-full" else 1.0)
                    check = verify_regressor(ctx, stage, artifact, mm, reference, tol)
                    log(f"[{role}] {variant}: drift {check['landmark_drift_px_mean']:.4f} px mean, "
                        f"{check['landmark_drift_px_max']:.4f} max (tolerance {tol} px)")
                else:
                    tol = DETECTOR_BOX_TOLERANCE_PX.get(artifact.precision)
                    check = verify_detector(ctx, stage, artifact, tol)
                    log(f"[{role}] {variant}: recall {check['recall_vs_fp32']:.3f} vs fp32, box error max "
                        f"{check['box_err_px_max']} px = {check['box_err_rel_max']} of the box side "
                        f"(tolerance {tol if tol is not None else DETECTOR_BOX_TOLERANCE_REL})")
                if not check["passed"]:
                    failures.append(f"{role} {variant}: {_summary(check)}")
                entry = {
                    "role": role, "variant": artifact.variant, "format": artifact.format, "precision": artifact.precision,
                    "file": artifact.file, "inputs": artifact.inputs, "outputs": artifact.outputs,
                    "param_normalized": artifact.param_normalized if role == "regressor" else None,
                    "details": artifact.details, "verification": check,
                }
                models[f"{role}/{artifact.variant}"] = entry
                if opts.measure_latency:
                    model = load_artifact(stage, artifact, threads=target.threads)
                    if role == "regressor":
                        example = ctx.holdout_crops()[:1]
                    else:
                        frame = detector_verification_frames(opts.data_dir)[0][1]
                        example = prepare_detector_input(frame, DetectorConfig(input_size=target.detector.input_size)).image[None]
                    latency[f"{role}/{artifact.variant}"] = measure_latency_ms(model, example)
        if failures:
            raise ExportError("verification failed, nothing written: " + " | ".join(failures))

        save_npz(stage / "bfm_68.npz", lm_arrays)
        if dense:
            save_npz(stage / "bfm_dense.npz", {k: dense_arrays[k] for k in ("u", "w_shp", "w_exp", "tri")})
        (stage / "NOTICE-3DMM.txt").write_text(LICENCE_NOTICE, encoding="utf-8")

        wheelhouse = None
        if opts.wheelhouse:
            from .wheelhouse import build_wheelhouse

            log(f"[wheelhouse] downloading {target.arch} wheels for the runtime")
            wheelhouse = build_wheelhouse(stage, target.arch, target.backends)

        target_dict = target.to_dict()
        target_dict["regressor"] = {**target_dict["regressor"], "variants": reg_variants, "default": reg_default}
        target_dict["detector"] = {**target_dict["detector"], "variants": det_variants, "default": det_default}
        pipeline = target.pipeline
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "toolkit_version": toolkit_version(),
            "target": target_dict,
            "precision_override": opts.precision,
            "sources": {k: {kk: vv for kk, vv in v.items() if kk != "path"} for k, v in sources.items()},
            "models": models,
            "defaults": {"regressor": reg_default, "detector": det_default},
            "morphable_model": {
                "landmarks": "bfm_68.npz",
                "dense": "bfm_dense.npz" if dense else None,
                "param_mean": [float(v) for v in param_mean],
                "param_std": [float(v) for v in param_std],
                "licence": "NOTICE-3DMM.txt",
                "vertices": int(dense_arrays["u"].shape[0] // 3),
            },
            "pipeline": {
                "detector": {
                    "score_threshold": 0.5, "nms_threshold": 0.3, "max_faces": 750,
                    "max_width": pipeline.detector_max_size[0], "max_height": pipeline.detector_max_size[1],
                    "input_size": list(target.detector.input_size) if target.detector.input_size else None,
                    "interpolation": pipeline.crop_interpolation,
                },
                "crop_interpolation": pipeline.crop_interpolation,
                "redetect_area": pipeline.redetect_area,
                "detect_interval": pipeline.detect_interval,
                "smoothing": pipeline.smoothing,
            },
            "wheelhouse": wheelhouse,
            "calibration": {
                "source": "calibration/ (AFLW crops disjoint from AFLW2000-3D)",
                "regressor_crops": int(min(opts.calibration_size, 800)),
                "holdout": "index % 5 == 4 (200 crops)",
                "seed": opts.seed,
            },
            # Machine-dependent numbers live here only, so everything else is reproducible byte for byte.
            "export_machine": {
                "arch": platform.machine(),
                "processor": _cpu_name(),
                "threads": target.threads,
                "latency": latency,
            } if opts.measure_latency else None,
        }
        write_manifest(stage, manifest)
        bundle_dir = opts.out
    archive = write_archive(Path(bundle_dir), Path(str(bundle_dir).rstrip("/") + ".tar.gz")) if opts.archive else None
    return ExportResult(Path(bundle_dir), manifest, archive)


def _summary(check: dict) -> str:
    keys = ("landmark_drift_px_mean", "landmark_drift_px_max", "recall_vs_fp32", "box_err_px_max", "box_err_rel_max",
            "tolerance_px", "tolerance_rel")
    return ", ".join(f"{k}={check[k]}" for k in keys if k in check)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
