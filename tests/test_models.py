"""Network definitions and the checkpoint registry: real checkpoints load, wrong or corrupt ones fail clearly."""

from __future__ import annotations

import pickle

import pytest
import torch

from tddfa_edge.models.checkpoints import build_detector, build_regressor
from tddfa_edge.models.mobilenet_v1 import MobileNetV1Regressor, load_regressor_state
from tddfa_edge.models.registry import REGISTRY, resolve
from tddfa_edge.contracts.errors import DataFileError


def test_mb05_checkpoint_loads_and_regresses(data_dir):
    path, sha = resolve("mb05_120x120", data_dir=data_dir)
    assert sha == REGISTRY["mb05_120x120"].sha256
    model = build_regressor(path, 0.5)
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 120, 120))
    assert out.shape == (2, 62)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_mb1_architecture_loads_an_upstream_style_state_dict():
    torch.manual_seed(0)
    source = MobileNetV1Regressor(widen_factor=1.0)
    # Upstream checkpoints: DataParallel "module." prefixes, the head named fc_param, plus an unused fc_lm.
    state = {f"module.{k.replace('fc.', 'fc_param.')}": v for k, v in source.state_dict().items()}
    state["module.fc_lm.weight"] = torch.zeros(136, 1024)
    target = load_regressor_state(MobileNetV1Regressor(widen_factor=1.0), state)
    x = torch.randn(1, 3, 120, 120)
    with torch.no_grad():
        assert torch.equal(source.eval()(x), target.eval()(x))
    assert target.fc.in_features == 1024


def test_detector_checkpoint_loads(data_dir):
    path, _ = resolve("faceboxes", data_dir=data_dir)
    model = build_detector(path)
    with torch.no_grad():
        loc, conf = model(torch.zeros(1, 3, 256, 320))
    # 21 anchors per stride-32 cell (8x10), 1 per stride-64 (4x5) and stride-128 (2x3) cell.
    assert loc.shape == (1, 21 * 80 + 20 + 6, 4) and conf.shape[-1] == 2


def test_wrong_checkpoint_is_a_clear_error(data_dir):
    detector_path, _ = resolve("faceboxes", data_dir=data_dir)
    with pytest.raises(DataFileError, match="does not fit MobileNetV1"):
        build_regressor(detector_path, 0.5)
    mb05_path, _ = resolve("mb05_120x120", data_dir=data_dir)
    with pytest.raises(DataFileError, match="shape"):
        build_regressor(mb05_path, 1.0)  # an mb05 file offered as mb1


def test_corrupt_and_malicious_checkpoints_are_refused(tmp_path, data_dir):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((data_dir / "weights" / "mb05_120x120.pth").read_bytes()[:10000])
    with pytest.raises(DataFileError, match="cannot read"):
        build_regressor(truncated, 0.5)

    class Exploit:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as fh:
        pickle.dump({"state_dict": Exploit()}, fh)
    with pytest.raises(DataFileError):
        build_regressor(evil, 0.5)


def test_registry_checks_sha256_and_says_where_to_put_files(tmp_path, data_dir):
    bad = tmp_path / "weights" / "mb05_120x120.pth"
    bad.parent.mkdir()
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DataFileError, match="corrupt or not the expected file"):
        resolve("mb05_120x120", data_dir=tmp_path)
    with pytest.raises(DataFileError, match=r"put it at .*mb1_120x120.pth, or pass --download"):
        resolve("mb1_120x120", data_dir=tmp_path / "empty")
    with pytest.raises(DataFileError, match="unknown checkpoint"):
        resolve("mb2_120x120")
