"""``run_benchmark``: every measurement of ``tddfa-bench`` on one bundle, as one JSON-able dict, plus the gate.

Sections: machine, bundle, latency (image / tracking / tracking dense, per stage), cold_start (+ peak RSS),
accuracy (AFLW2000-3D per regressor variant, drift vs fp32, CED plot), stability (video jitter per variant),
detector_recall (vs the original pipeline on the reference photos and video), face_size (recall per face width
on multi-scale frames, false positives, detector ms, per detector variant and input size), end_to_end (NME on
whole photos through detector + crop + regressor, and its drift from the bundle's fp32 pipeline), run (tddfa-run
as a process on the video: decode, track, write), variants (the comparison table) and gate (the target's
budgets). Only runtime dependencies (+ matplotlib for the plot).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import platform
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from .sections import SECTIONS

# The instruction-set features that decide which int8/fp32 kernels the backends pick.
CPU_FEATURES = {"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "asimd", "asimddp", "i8mm", "sve"}
PACKAGES = ("tddfa-edge", "numpy", "opencv-python-headless", "onnxruntime", "ai-edge-litert", "tflite-runtime", "matplotlib")


@dataclass
class BenchOptions:
    bundle: Path
    threads: int | None = None
    quick: bool = False
    budget_s: float | None = None  # per latency measurement; default 3 s (quick: 0.3 s)
    data_dir: str | None = None
    video: str | None = None
    aflw_limit: int | None = None  # default all 2000 (quick: 200)
    sections: tuple[str, ...] = SECTIONS
    recall_sizes: tuple[tuple[int, int], ...] = ()
    budgets_from: str | None = None  # target name or TOML path whose budgets replace the bundle's
    ced_path: Path | None = None
    cold_repeats: int | None = None  # default 5 (quick: 1)
    repeat: int = 1  # latency measurements per mode; the one with the lowest p50 is reported
    log: object = field(default=lambda msg: None)

    @property
    def warmup(self) -> dict:
        """Warm-up frames and minimum timed frames per latency measurement."""
        return {"warmup": 3, "min_frames": 10} if self.quick else {"warmup": 10, "min_frames": 20}

    @property
    def budget(self) -> float:
        return self.budget_s if self.budget_s is not None else (0.3 if self.quick else 3.0)


def machine_info() -> dict:
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model") and cpu in (platform.processor(), platform.machine()):
                cpu = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    try:
        import os

        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        import os

        cores = os.cpu_count()
    return {
        "cpu": cpu,
        "cpu_features": sorted(flags & CPU_FEATURES),
        "arch": platform.machine(),
        "cores_usable": cores,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _error_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _budgets(opts: BenchOptions, bundle) -> tuple[dict, str]:
    if opts.budgets_from:
        from tddfa_edge.targets import load_target

        target = load_target(opts.budgets_from)
        return dataclasses.asdict(target.budgets), f"{opts.budgets_from}"
    return dataclasses.asdict(bundle.target.budgets), "bundle manifest (target at export)"


def run_benchmark(opts: BenchOptions) -> dict:
    """Run the sections asked for on ``opts.bundle``; returns the report dict (``report["gate"]`` holds the verdict)."""
    return _Run(opts).run()


class _Run:
    """One benchmark run: shared state (bundle, default aligner, decoded frames, AFLW data) and one method per section."""

    def __init__(self, opts: BenchOptions) -> None:
        import cv2

        from tddfa_edge.runtime.aligner import FaceAligner
        from tddfa_edge.runtime.bundle import Bundle
        from tddfa_edge.datasets.locate import resolve_data_file

        from .latency import load_video_frames

        self.opts = opts
        self.started = time.perf_counter()
        self.bundle = Bundle.open(opts.bundle, verify=True)
        self.target = self.bundle.target
        self.threads = int(opts.threads or self.target.threads)
        cv2.setNumThreads(self.threads)
        self.video_path = Path(opts.video) if opts.video else resolve_data_file("videos/obama.mp4", opts.data_dir)
        self.frames = load_video_frames(self.video_path)
        # quick: every 5th video frame in the detector recall sets
        self.recall_frames = self.frames[::5] if opts.quick else self.frames
        self.aligner = FaceAligner.from_bundle(self.bundle.root, threads=self.threads)
        self.default_reg = self.aligner.regressor.variant
        self.default_det = self.aligner.detector.variant if self.aligner.detector else None
        self.variants: dict[str, dict] = {}
        self.reports, self.params, self.tracks = {}, {}, {}
        self.reference: str | None = None

    def log(self, msg: str) -> None:
        self.opts.log(f"{time.perf_counter() - self.started:6.1f}s {msg}")

    def aligner_for(self, regressor: str | None = None, detector: str | None = None):
        from tddfa_edge.runtime.aligner import FaceAligner

        regressor, detector = regressor or self.default_reg, detector or self.default_det
        if (regressor, detector) == (self.default_reg, self.default_det):
            return self.aligner
        return FaceAligner.from_bundle(self.bundle.root, threads=self.threads, regressor_variant=regressor,
                                       detector_variant=detector, verify=False)

    def run(self) -> dict:
        opts, sections = self.opts, set(self.opts.sections)
        budgets, budgets_source = _budgets(opts, self.bundle)
        report = self.header(budgets_source)
        self.log(f"bundle {self.bundle.root} (target {self.target.name}), {self.threads} thread(s), {len(self.frames)} frames")
        if "latency" in sections:
            report["latency"] = self.latency()
        if "cold_start" in sections:
            report["cold_start"] = self.cold_start()
        if sections & {"accuracy", "stability", "variants"}:
            data = self.aflw() if "accuracy" in sections else None
            self.regressor_variants(data, timing="variants" in sections, track="stability" in sections)
            ran = {k.split("/", 1)[1] for k, row in self.variants.items() if row.get("status") == "ok"}
            fp32 = [v for v in ("onnx-fp32", "tflite-fp32") if v in ran]
            self.reference = fp32[0] if fp32 else None
            if data is not None:
                report["accuracy"] = self.accuracy(data)
            if self.tracks:
                report["stability"] = self.stability()
            if "variants" in sections:
                self.detector_variants()
                self.relative_latency()
                report["variants"] = self.variants
        if "recall" in sections:
            report["detector_recall"] = self.recall()
        if "face_size" in sections:
            report["face_size"] = self.face_size()
        if "end_to_end" in sections:
            report["end_to_end"] = self.end_to_end()
        if "run" in sections:
            report["run"] = self.run_cli()
        report["gate"] = evaluate_gate(report, budgets, budgets_source)
        return report

    # --- sections ------------------------------------------------------------------------------------
    def header(self, budgets_source: str) -> dict:
        from .coldstart import bundle_size

        manifest, frames = self.bundle.manifest, self.frames
        pipeline = manifest.pipeline
        return {
            "tool": "tddfa-bench",
            "machine": machine_info(),
            "config": {
                "bundle": str(Path(self.opts.bundle).resolve()), "threads": self.threads, "quick": self.opts.quick,
                "budget_s": self.opts.budget, "sections": list(self.opts.sections), "budgets_from": budgets_source,
                "video": f"{self.video_path.name} ({frames[0].shape[1]}x{frames[0].shape[0]}, {len(frames)} frames, decoded before timing)",
            },
            "bundle": {
                "target": self.target.name, "target_arch": self.target.arch, "description": self.target.description,
                "manifest_sha256": self.bundle.identity,
                "defaults": dataclasses.asdict(manifest.defaults), "defaults_used": {"regressor": self.default_reg, "detector": self.default_det},
                "size": bundle_size(self.bundle), "toolkit_version": manifest.toolkit_version,
                "detector": pipeline.detector.architecture,
                "detector_input_size": list(pipeline.detector.input_size) if pipeline.detector.input_size else None,
                "crop_interpolation": pipeline.crop_interpolation,
            },
        }

    def latency(self) -> dict:
        from .latency import image_mode, tracking_mode

        opts, al, frames = self.opts, self.aligner, self.frames
        if al.detector is None:
            return {"skipped": "the bundle has no detector: image and tracking mode need one"}
        modes = {"image_mode": lambda: image_mode(al, frames, opts.budget, **opts.warmup),
                 "tracking_sparse": lambda: tracking_mode(al, frames, opts.budget, **opts.warmup)}
        if al.morphable_model.has_dense:
            modes["tracking_dense"] = lambda: tracking_mode(al, frames, opts.budget, dense=True, **opts.warmup)
        out = {}
        for name, measure in modes.items():
            self.log(f"latency: {name}")
            # On a shared machine other processes only ever add time: keep the repeat with the lowest p50.
            runs = [measure() for _ in range(max(1, opts.repeat))]
            out[name] = min(runs, key=lambda r: r["total"]["p50_ms"] or float("inf"))
            out[name]["repeats"] = len(runs)
        return out

    def cold_start(self) -> dict:
        from .coldstart import cold_start

        self.log("cold start and peak RSS (fresh processes)")
        repeats = self.opts.cold_repeats if self.opts.cold_repeats is not None else (1 if self.opts.quick else 5)
        try:
            return cold_start(self.bundle.root, self.frames[0], self.threads, repeats=repeats, video=str(self.video_path),
                              dense=self.aligner.morphable_model.has_dense, warm_cache=not self.opts.quick)
        except Exception as exc:  # a child crash is a result to report, not a reason to lose the rest
            return {"error": _error_line(exc)}

    def aflw(self):
        from .nme import load_aflw2000

        limit = self.opts.aflw_limit if self.opts.aflw_limit is not None else (200 if self.opts.quick else None)
        self.log(f"AFLW2000-3D: loading {limit or 'all'} crops")
        return load_aflw2000(self.opts.data_dir, limit=limit)

    def example_crop(self) -> np.ndarray:
        from tddfa_edge.runtime.crop import crop_boxes_from_face_boxes

        if self.aligner.detector is not None:
            boxes = self.aligner.detect(self.frames[0]).boxes
            if len(boxes):
                return self.aligner.crops(self.frames[0], crop_boxes_from_face_boxes(boxes[:1]))
        return np.full((1, 120, 120, 3), 127, np.uint8)

    def regressor_variants(self, data, timing: bool, track: bool) -> None:
        from . import accuracy as acc
        from .latency import image_mode, model_latency, tracking_mode
        from .stability import landmark_track

        opts, frames = self.opts, self.frames
        crop = self.example_crop() if timing else None
        for entry in self.bundle.manifest.models_of("regressor"):
            key = f"regressor/{entry.variant}"
            row = self.variants[key] = _variant_row(self.bundle, entry, entry.variant == self.default_reg)
            try:
                al = self.aligner_for(regressor=entry.variant)
                row["backend"] = al.regressor.session.backend
                if timing:
                    self.log(f"{key}: latency")
                    row["model_latency"] = model_latency(al.regressor, crop, opts.budget / 2)
                    row["tracking_sparse"] = tracking_mode(al, frames, opts.budget / 2, stages=False, **opts.warmup)
                    if al.detector is not None:
                        row["image_mode"] = image_mode(al, frames, opts.budget / 2, stages=False, **opts.warmup)
                if data is not None:
                    self.log(f"{key}: AFLW2000-3D")
                    row["nme"], self.reports[entry.variant], self.params[entry.variant] = acc.variant_accuracy(al, data)
                if track and al.detector is not None:
                    self.tracks[entry.variant] = landmark_track(al, frames)
                row["status"] = "ok"
            except Exception as exc:  # a variant that cannot run gets a row saying why
                row["status"] = f"failed: {_error_line(exc)}"
                self.log(f"{key}: {row['status']}")

    def accuracy(self, data) -> dict:
        from . import accuracy as acc

        reference, precision = self.reference, {e.variant: e.precision for e in self.bundle.manifest.models_of("regressor")}
        out = {"reference": reference, "images": int(len(data.crops)), "variants": {}}
        checkpoint = self.bundle.manifest.sources["regressor"].name
        for variant, reports in self.reports.items():
            entry = {"nme": self.variants[f"regressor/{variant}"]["nme"], "precision": precision[variant]}
            if reference is not None:
                entry["drift"] = acc.drift(reports, self.params[variant], self.reports[reference], self.params[reference],
                                           self.aligner.morphable_model)
            elif len(data.crops) == 2000:
                entry["drift"] = acc.recorded_drift(reports, checkpoint)
            out["variants"][variant] = entry
            self.variants[f"regressor/{variant}"]["drift"] = ((entry.get("drift") or {}).get("original") or {}).get("headline")
        if self.opts.ced_path is not None and self.reports:
            curves = {v: (r["original"].per_image, r["original"].headline) for v, r in self.reports.items()}
            title = f"AFLW2000-3D CED ({len(data.crops)} images), {self.target.name}"
            out["ced_png"] = acc.plot_ced(curves, self.opts.ced_path, title) or \
                "not written: matplotlib is not installed (pip install 'tddfa-edge[bench]')"
        return out

    def stability(self) -> dict:
        from .stability import stability

        ref_track = self.tracks.get(self.reference) if self.reference else None
        return {"reference": self.reference,
                "variants": {v: stability(t, ref_track if v != self.reference else None) for v, t in self.tracks.items()}}

    def detector_variants(self) -> None:
        from tddfa_edge.runtime.detector import prepare_detector_input

        from .detector_recall import recall_at
        from .latency import image_mode, model_latency

        opts, sets = self.opts, None
        for entry in self.bundle.manifest.models_of("detector"):
            key = f"detector/{entry.variant}"
            row = self.variants[key] = _variant_row(self.bundle, entry, entry.variant == self.default_det)
            try:
                al = self.aligner_for(detector=entry.variant)
                row["backend"] = al.detector.model.session.backend
                self.log(f"{key}: latency and recall")
                prepared = prepare_detector_input(self.frames[0], al.detector.settings).image[None]
                row["model_latency"] = model_latency(al.detector.model, prepared, opts.budget / 2)
                row["image_mode"] = image_mode(al, self.frames, opts.budget / 2, stages=False, **opts.warmup)
                if sets is None:
                    sets = _default_detector_sets(self.aligner.detector, self.recall_frames, opts.data_dir)
                row["recall_vs_default"] = recall_at(al.detector, sets)["recall"]
                row["status"] = "ok"
            except Exception as exc:
                row["status"] = f"failed: {_error_line(exc)}"
                self.log(f"{key}: {row['status']}")

    def relative_latency(self) -> None:
        """Regressor latency as a ratio of the fp32 reference's, measured in the same run."""
        ref = (self.variants.get(f"regressor/{self.reference}") or {}).get("model_latency", {}).get("p50_ms") if self.reference else None
        for row in self.variants.values():
            p50 = (row.get("model_latency") or {}).get("p50_ms")
            if row["role"] == "regressor" and ref and p50:
                row["latency_vs_fp32"] = round(p50 / ref, 3)

    def recall(self) -> dict:
        from .detector_recall import recall_study

        self.log("detector recall vs the original pipeline")
        out = recall_study(self.aligner.detector, self.opts.data_dir, self.recall_frames, list(self.opts.recall_sizes),
                           budget_s=min(self.opts.budget, 1.0))
        out["video_frames"] = f"{len(self.recall_frames)} of {len(self.frames)}"
        return out


    def face_size(self) -> dict:
        from .face_size_recall import DEFAULT_FRAMES, build_multiscale_frames, recall_by_width
        from .detector_recall import dynamic_shape, original_pipeline

        count = 40 if self.opts.quick else DEFAULT_FRAMES
        self.log(f"face-size recall: building {count} multi-scale frames")
        frames = build_multiscale_frames(self.opts.data_dir, frames=count)
        rows = []
        for record in self.bundle.manifest.models_of("detector"):
            detector = self.aligner_for(detector=record.variant).detector
            sizes: list = [detector.settings.input_size]
            if dynamic_shape(detector):
                if detector.settings.architecture == "faceboxes":
                    sizes.insert(0, "original")
                sizes += [tuple(s) for s in self.opts.recall_sizes if tuple(s) != detector.settings.input_size]
            for size in sizes:
                candidate = original_pipeline(detector) if size == "original" else detector.with_settings(input_size=size)
                label = "original (fit 1080x720)" if size == "original" else ("dynamic" if size is None else f"{size[0]}x{size[1]}")
                self.log(f"face-size recall: {record.variant} at {label}")
                row = recall_by_width(lambda image: candidate(image).boxes, frames)
                row.update(variant=record.variant, input=label, default=record.variant == self.default_det and
                           size == self.aligner.detector.settings.input_size)
                rows.append(row)
        return {"frames": count, "architecture": self.bundle.manifest.pipeline.detector.architecture,
                "score_threshold": self.bundle.manifest.pipeline.detector.score_threshold, "rows": rows,
                "note": "quick run: 40 frames, about +-0.15 per bin" if self.opts.quick else "150 frames, about +-0.07 per bin"}

    def end_to_end(self) -> dict:
        from .end_to_end import evaluate, load_originals

        limit = 100 if self.opts.quick else None
        data = load_originals(self.opts.data_dir, limit)
        refine = self.bundle.manifest.pipeline.refine_detections
        self.log(f"end-to-end NME on {len(data.names)} photos (default pipeline)")
        out = {"photos": len(data.names), "refine_detections": refine,
               "default": {"regressor": self.default_reg, "detector": self.default_det, **evaluate(self.aligner, data)}}
        self.log("end-to-end NME with the refine pass switched the other way")
        out["refine_switched"] = {"refine_detections": not refine, **evaluate(self.aligner, data, refine=not refine)}
        fp32 = self.fp32_pair()
        if fp32 is not None and fp32 != (self.default_reg, self.default_det):
            self.log(f"end-to-end NME of the fp32 pipeline {fp32[0]} + {fp32[1]}")
            reference = evaluate(self.aligner_for(regressor=fp32[0], detector=fp32[1]), data)
            out["fp32"] = {"regressor": fp32[0], "detector": fp32[1], **reference}
            out["drift_vs_fp32"] = round(out["default"]["headline"] - reference["headline"], 4)
        return out

    def fp32_pair(self) -> tuple[str, str] | None:
        """The bundle's fp32 regressor and detector variants (same format as the defaults when there is a choice)."""
        manifest = self.bundle.manifest

        def pick(role, default):
            fp32 = [m.variant for m in manifest.models_of(role) if m.precision == "fp32"]
            same_format = [v for v in fp32 if v.split("-")[0] == default.split("-")[0]]
            return (same_format or fp32 or [None])[0]

        regressor, detector = pick("regressor", self.default_reg), pick("detector", self.default_det)
        return (regressor, detector) if regressor and detector else None

    def run_cli(self) -> dict:
        """``tddfa-run`` as a user runs it, on the video: decoding, tracking and writing records included."""
        import subprocess
        import sys
        import tempfile

        out = {}
        with tempfile.TemporaryDirectory(prefix="tddfa-bench-run-") as tmp:
            for dense in ((False, True) if self.aligner.morphable_model.has_dense else (False,)):
                timings = {}
                for frames in (1, None):
                    args = [sys.executable, "-m", "tddfa_edge.runtime.cli", "--bundle", str(self.bundle.root), str(self.video_path),
                            "--out", str(Path(tmp) / "records.jsonl"), "--threads", str(self.threads), "--no-progress"]
                    args += ["--dense"] if dense else []
                    args += ["--max-frames", "1"] if frames == 1 else []
                    self.log(f"tddfa-run on {self.video_path.name}{' --dense' if dense else ''}{' (first frame only)' if frames else ''}")
                    t0 = time.perf_counter()
                    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
                    timings[frames] = time.perf_counter() - t0
                    if proc.returncode != 0:
                        out["dense" if dense else "sparse"] = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
                        break
                else:
                    n = len(self.frames)
                    out["dense" if dense else "sparse"] = {
                        "frames": n, "process_s": round(timings[None], 3), "startup_and_first_frame_s": round(timings[1], 3),
                        "fps_after_first_frame": round((n - 1) / max(timings[None] - timings[1], 1e-9), 1),
                    }
        out["definition"] = ("`tddfa-run --bundle B video --out records.jsonl` in a fresh process; fps = (frames - 1) / "
                             "(whole run - a run stopped after the first frame): decode, track, write, without start-up")
        return out


def _variant_row(bundle, entry, default: bool) -> dict:
    return {"role": entry.role, "variant": entry.variant, "format": entry.format, "precision": entry.precision,
            "size_mb": round(bundle.manifest.files[entry.file].size / 1e6, 3), "default": default}


def _default_detector_sets(detector, frames, data_dir):
    """Frames plus the default detector's boxes on them: what other detector variants are compared with."""
    from tddfa_edge.datasets.reference import reference_photos

    sets = [("photos", name, frame, detector(frame).boxes) for name, frame in reference_photos(data_dir)]
    return sets + [("video", f"frame{i}", frame, detector(frame).boxes) for i, frame in enumerate(frames)]


def evaluate_gate(report: dict, budgets: dict, source: str) -> dict:
    """Check every budget the run measured. Unmeasured budgets are listed as such, never as passed."""
    checks = []

    def check(name, value, limit, ok, note=""):
        checks.append({"budget": name, "value": value, "limit": limit,
                       "status": "not measured" if value is None else ("pass" if ok else "FAIL"), "note": note})

    accuracy = report.get("accuracy")
    reference = (accuracy or {}).get("reference")
    for variant, entry in ((accuracy or {}).get("variants") or {}).items():
        if variant == reference:
            continue
        key = "max_nme_drift_full_integer" if entry.get("precision") == "int8-full" else "max_nme_drift"
        limit = budgets.get(key)
        if limit is None:
            continue
        value = ((entry.get("drift") or {}).get("original") or {}).get("headline")
        note = f"{variant}, headline NME minus {reference or 'recorded fp32'}, {accuracy['images']} images"
        check(key, value, limit, value is not None and value <= limit, note)

    same_arch = _same_arch(report["bundle"].get("target_arch"), report["machine"]["arch"])
    lat = report.get("latency") or {}
    for key, mode in (("min_fps_image_mode", "image_mode"), ("min_fps_tracking", "tracking_sparse")):
        limit = budgets.get(key)
        if limit is None:
            continue
        value = (lat.get(mode) or {}).get("fps")
        if not same_arch:
            checks.append({"budget": key, "value": value, "limit": limit, "status": "skipped",
                           "note": f"target is {report['bundle'].get('target_arch')}, this machine {report['machine']['arch']}"})
            continue
        check(key, value, limit, value is not None and value >= limit, f"{mode} throughput, {report['config']['threads']} thread(s)")

    limit = budgets.get("max_bundle_mb")
    if limit is not None:
        value = report["bundle"]["size"]["total_mb"]
        check("max_bundle_mb", value, limit, value <= limit)
    limit = budgets.get("max_peak_rss_mb")
    if limit is not None:
        memory = (report.get("cold_start") or {}).get("memory") or {}
        value = memory.get("peak_rss_mb")
        check("max_peak_rss_mb", value, limit, value is not None and value <= limit, "fresh process, video in tracking + image mode")

    floors = budgets.get("min_face_recall")
    rows = [r for r in (report.get("face_size") or {}).get("rows", []) if r.get("default")]
    if floors is not None:
        if not rows:
            check("min_face_recall", None, list(floors), False)
        elif report["config"]["quick"]:
            checks.append({"budget": "min_face_recall", "value": None, "limit": list(floors), "status": "skipped",
                           "note": "quick run: 40 frames are too few for a per-bin floor"})
        else:
            gated = [b for b in rows[0]["bins"] if b["lo"] >= 24]
            value = [b["recall"] for b in gated]
            ok = len(value) == len(floors) and all(v is not None and v >= f for v, f in zip(value, floors))
            check("min_face_recall", value, list(floors), ok, f"default detector {rows[0]['variant']} at {rows[0]['input']}, "
                  f"bins {', '.join(b['range'] for b in gated)} px")
    limit = budgets.get("max_end_to_end_drift")
    e2e = report.get("end_to_end") or {}
    if limit is not None and "drift_vs_fp32" in e2e:
        check("max_end_to_end_drift", e2e["drift_vs_fp32"], limit, e2e["drift_vs_fp32"] <= limit,
              f"end-to-end NME, {e2e['photos']} photos, default pipeline minus {e2e['fp32']['regressor']} + {e2e['fp32']['detector']}")
    elif limit is not None and e2e:
        checks.append({"budget": "max_end_to_end_drift", "value": None, "limit": limit, "status": "skipped",
                       "note": "the bundle carries no fp32 variant to compare with (export one with --precision fp32)"})

    failed = [c for c in checks if c["status"] == "FAIL"]
    return {"passed": not failed, "budgets_from": source, "checks": checks, "failed": [c["budget"] for c in failed]}


def _same_arch(a: str | None, b: str) -> bool:
    from tddfa_edge.runtime.bundle import normalize_arch

    return bool(a) and normalize_arch(a) == normalize_arch(b)
