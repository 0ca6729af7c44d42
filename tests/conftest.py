"""Shared fixtures: the real data in ../shared/data (or $TDDFA_EDGE_DATA) and bundles exported once per session."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from tddfa_edge.runtime.data_files import data_dir_candidates

UPSTREAM_REF = "reference/upstream_mb05"


def _data_dir() -> Path:
    for c in data_dir_candidates():
        if (c / "weights" / "mb05_120x120.pth").is_file():
            return c
    raise RuntimeError("test data not found: set TDDFA_EDGE_DATA to the shared data folder")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _data_dir()


def upstream_target(name: str = "x86-1core"):
    """A target that runs exactly like upstream 3DDFA_V2: fp32 ONNX, dynamic detector, INTER_LINEAR crops."""
    from tddfa_edge.targets import ModelChoice, load_target

    t = load_target(name)
    return dataclasses.replace(
        t,
        regressor=ModelChoice("onnx-fp32", ("onnx-fp32",)),
        detector=ModelChoice("onnx-fp32", ("onnx-fp32",), None),
        pipeline=dataclasses.replace(t.pipeline, crop_interpolation="linear", dense=True),
    )


@pytest.fixture(scope="session")
def upstream_bundle(tmp_path_factory, data_dir) -> Path:
    from tddfa_edge.export.exporter import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("bundles") / "upstream-fp32"
    export_bundle(ExportOptions(target=upstream_target(), out=out, data_dir=str(data_dir), measure_latency=False), log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def upstream_aligner(upstream_bundle):
    from tddfa_edge.runtime.aligner import FaceAligner

    return FaceAligner.from_bundle(upstream_bundle)


@pytest.fixture(scope="session")
def target_bundle(tmp_path_factory, data_dir):
    """``target_bundle(name)`` exports the full bundle of a shipped target once per session."""
    from tddfa_edge.export.exporter import ExportOptions, export_bundle
    from tddfa_edge.targets import load_target

    root = tmp_path_factory.mktemp("target-bundles")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            out = root / name
            # The Pi 4 bundle is the firmware one: it carries the aarch64 wheelhouse (tests/test_aarch64.py installs it).
            export_bundle(ExportOptions(target=load_target(name), out=out, data_dir=str(data_dir), measure_latency=False,
                                        wheelhouse=name == "rpi4"), log=lambda m: None)
            built[name] = out
        return built[name]

    return get
