"""``export_bundle``: checkpoints -> converted, quantized, verified artifacts -> one bundle for one target.

An export runs as named steps, each its own function:

1. ``plan``          the target's variants (optionally one precision), refused before any work if not offered;
2. ``resolve_inputs``  find and check every input file (``inputs``), load networks and arrays;
3. ``convert``       every variant through its registered converter into a staging folder;
4. ``verify``        every artifact against PyTorch fp32, all failures collected before one ``ExportError``;
5. ``assemble``      3DMM arrays, licence notices, optional wheelhouse, the manifest and its digest;
6. ``archive``       optionally a reproducible ``.tar.gz``.

The staging folder replaces the destination only when every step succeeded. Export-time measurements of this
machine (latency) go to the export report, never into the bundle: the same inputs give the same bytes.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from tddfa_edge.contracts.errors import ExportError, TargetError
from tddfa_edge.runtime.detector import FaceDetector
from tddfa_edge.runtime.manifest import (
    SCHEMA_VERSION, CalibrationRecord, Defaults, DetectorSettings, Manifest, ModelRecord, MorphableModelRecord, PipelineSettings,
    Verification,
)
from tddfa_edge.runtime.morphable_model import MorphableModel, dense_arrays_for_bundle
from tddfa_edge.targets import ModelChoice, Target, variant_parts

from .artifacts import ExportContext, ModelArtifact, converter_for, network_of
from .bundle_writer import file_table, staging_folder, write_archive, write_manifest
from .inputs import ExportInputs, LoadedInputs, load_inputs, resolve_inputs
from .verification import failure_summary, load_artifact, regressor_tolerance_px, verify_detector, verify_regressor

LICENCE_NOTICE = """3D Morphable Model notice
=========================
The 3DMM arrays in this bundle (bfm_*.npz) derive from the Basel Face Model 2009 (University of Basel)
as processed by 3DDFA / 3DDFA_V2. The Basel Face Model is licensed for non-commercial research use
only. Shipping this bundle in a commercial product requires your own licence for the BFM from the
University of Basel. The 3DDFA_V2 MobileNetV1 and FaceBoxes weights are MIT licensed; the YuNet
weights (libfacedetection.train) are Apache-2.0 licensed, see LICENSE-yunet.txt when the bundle has them.
"""
# Apache-2.0 asks for a copy of the licence beside the work: bundles with a YuNet detector carry it.
YUNET_LICENCE = Path(__file__).resolve().parent / "licences" / "LICENSE-yunet.txt"
# Post-processing per detector family: FaceBoxes as 3DDFA_V2 runs it; YuNet as OpenCV's FaceDetectorYN.
DETECTOR_THRESHOLDS = {"faceboxes": (0.5, 0.3), "yunet": (0.6, 0.3)}  # (score, NMS IoU)
MAX_BATCH = 8


def toolkit_version() -> str:
    try:
        return version("tddfa-edge")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass
class ExportOptions:
    target: Target
    out: Path
    precision: str | None = None  # only this precision (the target must offer it)
    data_dir: str | None = None
    regressor_name: str = "mb05_120x120"
    regressor_path: str | None = None
    detector_path: str | None = None
    param_mean_std_path: str | None = None
    bfm_path: str | None = None
    tri_path: str | None = None
    download: bool = False
    upstream_dir: str | None = None  # a 3DDFA_V2 checkout (weights/, FaceBoxes/weights/, configs/)
    calibration_source: str | None = None  # the user's photos or video instead of the curated calibration crops
    detector: str | None = None  # override the target's detector architecture (e.g. "faceboxes" for parity)
    dense: bool | None = None  # override the target's choice
    archive: bool = False
    wheelhouse: bool = False  # add aarch64/x86_64 runtime wheels + requirements.txt for offline installs
    measure_latency: bool = False  # time each artifact here (export report only)
    # Converted files keyed by everything that decides their bytes, shared across exports in one process (the test
    # suite exports five targets that share most conversions); None: convert everything.
    artifact_cache: dict | None = None
    signing_key: Path | None = None  # Ed25519 private key (PEM): writes manifest.json.sig
    calibration_size: int = 800
    seed: int = 0


@dataclass
class ExportResult:
    bundle: Path
    manifest: Manifest
    identity: str  # sha256 of manifest.json
    archive: Path | None = None
    latency: dict[str, dict] = field(default_factory=dict)  # this machine, this run: report only

    def report(self) -> dict:
        """The export report: what was written (with its identity) and what was measured on this machine."""
        from tddfa_edge.contracts.records import to_data

        files = self.manifest.files
        return {
            "bundle": str(self.bundle), "manifest_sha256": self.identity, "archive": str(self.archive) if self.archive else None,
            "target": self.manifest.target.name,
            "size_bytes": sum(f.size for f in files.values() if not f.install_only),
            "models": {key: {"file": m.file, "size_bytes": files[m.file].size, "verification": to_data(m.verification),
                             "latency_ms": self.latency.get(key)} for key, m in self.manifest.models.items()},
            "defaults": to_data(self.manifest.defaults),
            "files": to_data(files),
        }


# --- step 1: plan -------------------------------------------------------------------------------------------
def plan(target: Target, precision: str | None) -> Target:
    """The target with only the variants to export. A precision the target does not offer is refused here,
    before any work; a role without that precision keeps its default variant."""
    if precision is None:
        return target
    offered = target.precisions()
    if precision not in offered:
        raise TargetError(f"target {target.name} offers {', '.join(offered)}; --precision {precision} is not among them")

    def narrow(choice: ModelChoice) -> ModelChoice:
        kept = tuple(v for v in choice.variants if variant_parts(v)[1] == precision)
        if not kept:
            return dataclasses.replace(choice, variants=(choice.default,))
        return dataclasses.replace(choice, variants=kept, default=choice.default if choice.default in kept else kept[0])

    return dataclasses.replace(target, regressor=narrow(target.regressor), detector=narrow(target.detector))


def pipeline_settings(target: Target, dense: bool) -> PipelineSettings:
    family = target.detector.architecture.split("_")[0]
    score, iou = DETECTOR_THRESHOLDS[family]
    p = target.pipeline
    detector = DetectorSettings(
        architecture=family, input_size=target.detector.input_size, max_size=p.detector_max_size,
        interpolation=p.crop_interpolation, score_threshold=score, nms_threshold=iou, max_faces=p.max_faces,
    )
    return PipelineSettings(detector=detector, crop_interpolation=p.crop_interpolation, refine_detections=p.refine_detections,
                            redetect_area=p.redetect_area, detect_interval=p.detect_interval, smoothing=p.smoothing, max_batch=MAX_BATCH)


# --- step 3: convert ----------------------------------------------------------------------------------------
def convert(ctx: ExportContext, target: Target, folder: Path, progress: Progress, cache: dict | None = None,
            inputs_key: tuple = ()) -> list[ModelArtifact]:
    artifacts = []
    work = [(role, variant) for role, choice in (("regressor", target.regressor), ("detector", target.detector)) for variant in choice.variants]
    converters = [converter_for(network_of(role, ctx.detector_architecture), variant) for role, variant in work]  # all known first
    progress.start("convert", len(work))
    for (role, variant), converter in zip(work, converters):
        progress.step(f"{role} {variant}")
        key = (role, ctx.detector_architecture if role == "detector" else "", variant,
               ctx.detector_input_size if role == "detector" else None) + inputs_key
        if cache is not None and key in cache:
            data, cached = cache[key]
            (folder / cached.file).write_bytes(data)
            artifacts.append(copy.deepcopy(cached))
            continue
        artifact = converter(ctx, role, folder)
        artifact.architecture = _architecture(role, ctx)
        if cache is not None:
            cache[key] = ((folder / artifact.file).read_bytes(), copy.deepcopy(artifact))
        artifacts.append(artifact)
    progress.end()
    return artifacts


def _architecture(role: str, ctx: ExportContext) -> str:
    if role == "detector":
        return ctx.detector_architecture
    return f"mobilenet_v1_x{ctx.regressor.widen_factor:g}"


# --- step 4: verify -----------------------------------------------------------------------------------------
def verify(ctx: ExportContext, artifacts: list[ModelArtifact], folder: Path, loaded: LoadedInputs, settings: DetectorSettings,
           target: Target, progress: Progress, log) -> dict[str, Verification]:
    from .reference import TorchDetector, torch_regressor_outputs

    mm = MorphableModel.from_arrays(**loaded.landmark_arrays)
    reference_params = None
    reference_detector = None
    checks, failures = {}, []
    progress.start("verify", len(artifacts))
    for artifact in artifacts:
        key = f"{artifact.role}/{artifact.variant}"
        progress.step(f"{artifact.role} {artifact.variant}")
        if artifact.role == "regressor":
            if reference_params is None:
                reference_params = torch_regressor_outputs(ctx.regressor, ctx.holdout_crops()) * ctx.param_std + ctx.param_mean
            tolerance = regressor_tolerance_px(artifact.precision, target.budgets.max_landmark_drift_px)
            check = verify_regressor(ctx, folder, artifact, mm, reference_params, tolerance)
            m = check.measures
            log(f"[regressor] {artifact.variant}: drift {m['landmark_drift_px_mean']:.4f} px mean, {m['landmark_drift_px_max']:.4f} max "
                f"(tolerance {tolerance} px)")
        else:
            if reference_detector is None:
                reference_detector = FaceDetector(TorchDetector(ctx.detector, settings.architecture), settings)
            check = verify_detector(ctx, folder, artifact, settings, reference_detector)
            m = check.measures
            log(f"[detector] {artifact.variant}: recall {m['recall_vs_fp32']:.3f} vs fp32, box error max {m['box_err_px_max']} px "
                f"= {m['box_err_rel_max']} of the box side")
        checks[key] = check
        if not check.passed:
            failures.append(failure_summary(f"{artifact.role} {artifact.variant}", check))
    progress.end()
    if failures:
        raise ExportError("verification failed, nothing written: " + " | ".join(failures))
    return checks


# --- step 5: assemble ---------------------------------------------------------------------------------------
def assemble(folder: Path, target: Target, inputs: ExportInputs, loaded: LoadedInputs, artifacts: list[ModelArtifact],
             checks: dict[str, Verification], settings: PipelineSettings, dense: bool, calibration: CalibrationRecord,
             wheelhouse: bool, log, signing_key: Path | None = None) -> tuple[Manifest, str]:
    from .morphable_files import save_npz

    save_npz(folder / "bfm_68.npz", loaded.landmark_arrays)
    if dense:
        dense_arrays = loaded.dense_arrays
        save_npz(folder / "bfm_dense.npz", dense_arrays_for_bundle(dense_arrays["u"], dense_arrays["w_shp"], dense_arrays["w_exp"],
                                                                   dense_arrays["tri"]))
    (folder / "NOTICE-3DMM.txt").write_text(LICENCE_NOTICE, encoding="utf-8")
    if inputs.detector_architecture.startswith("yunet"):
        (folder / "LICENSE-yunet.txt").write_bytes(YUNET_LICENCE.read_bytes())
    wheel_record = None
    if wheelhouse:
        from .wheelhouse import build_wheelhouse

        log(f"[wheelhouse] downloading {target.arch} wheels for the runtime")
        wheel_record = build_wheelhouse(folder, target.arch, target.backends)
    models: dict[str, ModelRecord] = {}
    for artifact in artifacts:
        key = f"{artifact.role}/{artifact.variant}"
        models[key] = artifact.record(checks[key])
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        toolkit_version=toolkit_version(),
        target=target,
        models=models,
        defaults=Defaults(regressor=target.regressor.default, detector=target.detector.default),
        morphable_model=MorphableModelRecord(
            landmarks="bfm_68.npz", dense="bfm_dense.npz" if dense else None,
            param_mean=tuple(float(v) for v in loaded.param_mean), param_std=tuple(float(v) for v in loaded.param_std),
            licence="NOTICE-3DMM.txt", vertices=int(loaded.dense_arrays["u"].shape[0] // 3),
        ),
        pipeline=settings,
        sources=inputs.sources(),
        calibration=calibration,
        wheelhouse=wheel_record,
        files=file_table(folder),
    )
    return manifest, write_manifest(folder, manifest, signing_key)


def calibration_record(ctx: ExportContext) -> CalibrationRecord:
    calib, holdout = ctx.calibration_crops(), ctx.holdout_crops()
    digest = hashlib.sha256(calib.tobytes() + holdout.tobytes()).hexdigest()
    source = ctx.user_calibration.describe() if ctx.user_calibration is not None else "calibration/ (AFLW crops disjoint from AFLW2000-3D)"
    return CalibrationRecord(source=source, inputs_sha256=digest,
                             regressor_crops=int(len(calib)), holdout_crops=int(len(holdout)),
                             detector_frames=len(ctx.detector_frames()), seed=ctx.seed)


# --- the whole export ---------------------------------------------------------------------------------------
class Progress:
    """What an export reports as it goes: stages with a known number of steps. The CLI draws bars; this prints lines."""

    def __init__(self, log=print) -> None:
        self.log = log

    def start(self, stage: str, total: int) -> None:
        self.stage = stage

    def step(self, label: str) -> None:
        self.log(f"[{self.stage}] {label}")

    def end(self) -> None:
        pass


def with_detector(target: Target, architecture: str) -> Target:
    """``target`` with another detector architecture (``tddfa-export --detector``).

    FaceBoxes is there for parity with 3DDFA_V2: fp32 only (its int8 forms move boxes by more than 1%), on the
    original rule (the frame fitted inside 1080x720) where every variant is ONNX, else at the fixed 1088x608 that
    rule gives for 720p frames. YuNet keeps the target's input size rounded up to its stride of 32.
    """
    choice = target.detector
    if architecture == "faceboxes":
        formats = tuple(dict.fromkeys(variant_parts(v)[0] for v in choice.variants))
        variants = tuple(f"{fmt}-fp32" for fmt in formats)
        default = f"{variant_parts(choice.default)[0]}-fp32"
        size = None if formats == ("onnx",) else (1088, 608)
        choice = dataclasses.replace(choice, architecture=architecture, variants=variants, default=default, input_size=size)
    else:
        size = choice.input_size and tuple(-(-v // 32) * 32 for v in choice.input_size)
        choice = dataclasses.replace(choice, architecture=architecture, input_size=size)
    return dataclasses.replace(target, detector=choice)


def export_bundle(opts: ExportOptions, log=print, progress: Progress | None = None) -> ExportResult:
    """Convert, verify and write the bundle for ``opts.target`` at ``opts.out`` (atomically)."""
    progress = progress or Progress(log)
    target = plan(opts.target, opts.precision)
    if opts.detector is not None and opts.detector != target.detector.architecture:
        target = with_detector(target, opts.detector)
    if opts.signing_key is not None:
        from tddfa_edge.runtime.signing import load_private_key

        load_private_key(opts.signing_key)  # a bad key is refused before any work
    inputs = resolve_inputs(opts.regressor_name, target.detector.architecture, opts.data_dir, opts.download, opts.regressor_path,
                            opts.detector_path, opts.param_mean_std_path, opts.bfm_path, opts.tri_path, opts.upstream_dir)
    import torch  # only once the plan and the inputs are known to be good

    torch.manual_seed(opts.seed)
    np.random.seed(opts.seed)
    loaded = load_inputs(inputs)
    user_calibration = None
    if opts.calibration_source is not None:
        from .user_calibration import MAX_IMAGES, collect

        progress.start("calibration", MAX_IMAGES)
        user_calibration = collect(Path(opts.calibration_source), loaded.regressor, loaded.detector,
                                   target.detector.architecture.split("_")[0], MorphableModel.from_arrays(**loaded.landmark_arrays),
                                   loaded.param_mean, loaded.param_std, target.pipeline.crop_interpolation,
                                   progress=lambda n: progress.step("reading"))
        progress.end()
        log(user_calibration.describe())
    dense = target.pipeline.dense if opts.dense is None else opts.dense
    target = dataclasses.replace(target, pipeline=dataclasses.replace(target.pipeline, dense=dense))
    settings = pipeline_settings(target, dense)
    latency: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="tddfa-export-") as work, staging_folder(opts.out) as stage:
        ctx = ExportContext(
            regressor=loaded.regressor, detector=loaded.detector, detector_architecture=inputs.detector_architecture,
            param_mean=loaded.param_mean, param_std=loaded.param_std, detector_input_size=target.detector.input_size,
            data_dir=opts.data_dir, work_dir=Path(work), seed=opts.seed, calibration_size=opts.calibration_size,
            user_calibration=user_calibration,
        )
        calibration_key = user_calibration.digest() if user_calibration is not None else f"curated:{opts.data_dir}"
        inputs_key = (inputs.regressor.sha256, inputs.detector.sha256, calibration_key, opts.seed, opts.calibration_size)
        artifacts = convert(ctx, target, stage, progress, opts.artifact_cache, inputs_key)
        checks = verify(ctx, artifacts, stage, loaded, settings.detector, target, progress, log)
        if opts.measure_latency:
            latency = measure_latency(ctx, artifacts, stage, settings.detector, target.threads)
        manifest, identity = assemble(stage, target, inputs, loaded, artifacts, checks, settings, dense, calibration_record(ctx),
                                      opts.wheelhouse, log, opts.signing_key)
    bundle = Path(opts.out)
    archive = write_archive(bundle, Path(str(bundle).rstrip("/") + ".tar.gz")) if opts.archive else None
    return ExportResult(bundle, manifest, identity, archive, latency)


def measure_latency(ctx: ExportContext, artifacts: list[ModelArtifact], folder: Path, settings: DetectorSettings, threads: int) -> dict:
    """p50 / p90 of each network alone on this machine (the export report's column; ``tddfa-bench`` measures properly)."""
    from tddfa_edge.benchmarks.latency import summarize_ms, time_calls
    from tddfa_edge.runtime.detector import prepare_detector_input

    frame = ctx.detector_check_frames()[0][1]
    out = {}
    for artifact in artifacts:
        model = load_artifact(folder, artifact, threads)
        if artifact.role == "regressor":
            example = ctx.holdout_crops()[:1]
        else:
            example = prepare_detector_input(frame, settings).image[None]
        out[f"{artifact.role}/{artifact.variant}"] = summarize_ms(time_calls(lambda: model(example), 0.4, warmup=5, min_runs=10))
    return out
