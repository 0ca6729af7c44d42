"""Shared fixtures: the real data in ../shared/data (or $TDDFA_EDGE_DATA), bundles exported once per session, and the
PyTorch networks and reference outputs the converter tests share.

Every export of the suite goes through ``exported_bundle``/``target_bundle`` (one export per target per session);
tests that need the converted files read them from those bundles.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from tddfa_edge.datasets.locate import data_dir_candidates


def _data_dir() -> Path:
    for c in data_dir_candidates():
        if (c / "weights" / "mb05_120x120.pth").is_file():
            return c
    raise RuntimeError("test data not found: set TDDFA_EDGE_DATA to the shared data folder")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _data_dir()


def upstream_target(name: str = "x86-1core"):
    """A target that runs exactly like upstream 3DDFA_V2: fp32 ONNX, dynamic FaceBoxes, INTER_LINEAR crops."""
    from tddfa_edge.targets import ModelChoice, load_target

    t = load_target(name)
    return dataclasses.replace(
        t,
        regressor=ModelChoice("onnx-fp32", ("onnx-fp32",)),
        detector=ModelChoice("onnx-fp32", ("onnx-fp32",), "faceboxes", None),
        pipeline=dataclasses.replace(t.pipeline, crop_interpolation="linear", dense=True, refine_detections=False),
    )


def export_quietly(target, out: Path, data_dir: Path, **options):
    from tddfa_edge.export.exporter import ExportOptions, export_bundle

    return export_bundle(ExportOptions(target=target, out=out, data_dir=str(data_dir), **options), log=lambda m: None)


@pytest.fixture(scope="session")
def upstream_bundle(tmp_path_factory, data_dir) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "upstream-fp32"
    export_quietly(upstream_target(), out, data_dir)
    return out


@pytest.fixture(scope="session")
def upstream_aligner(upstream_bundle):
    from tddfa_edge.runtime.aligner import FaceAligner

    return FaceAligner.from_bundle(upstream_bundle)


@pytest.fixture(scope="session")
def target_bundle(tmp_path_factory, data_dir):
    """``target_bundle(name)`` exports the full bundle of a shipped target once per session. The targets share most
    conversions (the same regressor variants, detectors at the same input size): a session-wide artifact cache
    converts each only once. The byte-identity tests export without it."""
    from tddfa_edge.targets import load_target

    root = tmp_path_factory.mktemp("target-bundles")
    built: dict[str, Path] = {}
    shared: dict = {}

    def get(name: str) -> Path:
        if name not in built:
            out = root / name
            # The Pi 4 bundle is the firmware one: it carries the aarch64 wheelhouse (tests/test_aarch64.py installs it).
            export_quietly(load_target(name), out, data_dir, wheelhouse=name == "rpi4", artifact_cache=shared)
            built[name] = out
        return built[name]

    return get


def rewrite_manifest(bundle: Path, change) -> None:
    """Edit a bundle's manifest as plain data and re-write its digest, as someone re-packaging a bundle would:
    the result passes the digest check, so what is tested is the schema or the runtime's behaviour."""
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    raw = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
    path.write_bytes(raw)
    (bundle / "manifest.json.sha256").write_text(f"{hashlib.sha256(raw).hexdigest()}  manifest.json\n")


@pytest.fixture(scope="session")
def networks(data_dir):
    """The PyTorch networks and 3DMM arrays of the data folder, loaded once."""
    from tddfa_edge.export.inputs import load_inputs, resolve_inputs

    return load_inputs(resolve_inputs("mb05_120x120", "faceboxes", data_dir))


@pytest.fixture(scope="session")
def morphable(networks):
    from tddfa_edge.runtime.morphable_model import MorphableModel

    return MorphableModel.from_arrays(**networks.landmark_arrays)


@pytest.fixture(scope="session")
def export_context(tmp_path_factory, data_dir, networks):
    """``export_context(detector_input_size)``: a converter context per detector size, built once."""
    from tddfa_edge.export.artifacts import ExportContext

    made = {}

    def get(detector_input_size, detector=None, architecture="faceboxes"):
        key = (tuple(detector_input_size) if detector_input_size else None, architecture)
        if key not in made:
            made[key] = ExportContext(
                regressor=networks.regressor, detector=detector if detector is not None else networks.detector,
                detector_architecture=architecture, param_mean=networks.param_mean, param_std=networks.param_std,
                detector_input_size=key[0], data_dir=str(data_dir), work_dir=tmp_path_factory.mktemp("export-work"),
            )
        return made[key]

    return get


@pytest.fixture(scope="session")
def reference_params(export_context, networks):
    """De-normalized PyTorch fp32 parameters of the held-out calibration crops."""
    from tddfa_edge.export.reference import torch_regressor_outputs

    ctx = export_context(None)
    return torch_regressor_outputs(networks.regressor, ctx.holdout_crops()) * networks.param_std + networks.param_mean


# FaceBoxes' quantized forms are in no shipped target (they move boxes by more than the 1% of their side the exporter
# allows, or are not faster); their converters are tested on the size the x86 targets used for FaceBoxes.
FACEBOXES_TEST_SIZE = (832, 464)


@pytest.fixture(scope="session")
def faceboxes_converted(export_context, tmp_path_factory):
    """``faceboxes_converted(variant)`` -> (artifact, folder, verification against PyTorch fp32), converted once."""
    from tddfa_edge.export.artifacts import converter_for
    from tddfa_edge.export.exporter import DETECTOR_THRESHOLDS
    from tddfa_edge.export.reference import TorchDetector
    from tddfa_edge.export.verification import verify_detector
    from tddfa_edge.runtime.detector import FaceDetector
    from tddfa_edge.runtime.manifest import DetectorSettings

    ctx = export_context(FACEBOXES_TEST_SIZE)
    score, iou = DETECTOR_THRESHOLDS["faceboxes"]
    settings = DetectorSettings("faceboxes", FACEBOXES_TEST_SIZE, (1080, 720), "linear_exact", score, iou, 64)
    reference = FaceDetector(TorchDetector(ctx.detector, "faceboxes"), settings)
    made = {}

    def get(variant: str):
        if variant not in made:
            folder = tmp_path_factory.mktemp(f"faceboxes-{variant}")
            artifact = converter_for("faceboxes", variant)(ctx, "detector", folder)
            made[variant] = (artifact, folder, verify_detector(ctx, folder, artifact, settings, reference))
        return made[variant]

    get.settings = settings
    return get


# Photos with faces of many sizes for YuNet's parity checks (ours against its upstream ONNX and OpenCV's decoder).
YUNET_PHOTOS = ["reference/test_images/1.jpeg", "reference/test_images/2.jpeg", "reference/test_images/3.jpeg",
                "reference/test_images/4.jpeg", "reference/test_images/5.jpeg",
                "images/JianzhuGuo.jpg", "images/emma.jpg", "images/trump_hillary.jpg"]


def letterbox(image, width: int, height: int):
    """Resize to fit inside width x height, keep the aspect ratio, zero-pad right and bottom (upstream YuNet's rule)."""
    import cv2
    import numpy as np

    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    resized = cv2.resize(image, (min(width, round(w * scale)), min(height, round(h * scale))))
    out = np.zeros((height, width, 3), np.uint8)
    out[: resized.shape[0], : resized.shape[1]] = resized
    return out
