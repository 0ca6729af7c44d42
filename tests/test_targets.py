"""Targets are data: every file loads, unknown keys and names fail with the valid choices."""

from __future__ import annotations

import pytest

from tddfa_edge.contracts.errors import TargetError
from tddfa_edge.targets import available_targets, load_target


def test_required_targets_exist_and_load():
    names = available_targets()
    for required in ("x86-1core", "rpi4", "rpi5", "rpi3", "rpi-zero2w"):
        assert required in names
    for name in names:
        t = load_target(name)
        assert t.name == name and t.threads >= 1 and t.backends
        assert t.budgets.max_nme_drift <= 0.01 and t.budgets.max_nme_drift_full_integer <= 0.05


def test_unknown_target_lists_valid_ones():
    with pytest.raises(TargetError, match="valid targets: .*rpi4"):
        load_target("rpi44")


def test_unknown_keys_are_rejected(tmp_path):
    text = (load_target.__globals__["TARGET_DIR"] / "rpi4.toml").read_text()
    bad = tmp_path / "rpi4.toml"
    bad.write_text(text.replace("[budgets]", "[budgets]\nmax_nme_drfit = 0.2"))
    with pytest.raises(TargetError, match=r"rpi4.toml.budgets: unknown field max_nme_drfit \(valid: max_nme_drift,"):
        load_target(str(bad))
    bad.write_text(text.replace('default = "tflite-int8"', 'default = "tflite-int4"'))
    with pytest.raises(TargetError, match="default variant 'tflite-int4' is not among the variants"):
        load_target(str(bad))
    bad.write_text(text.replace("threads = 4", 'threads = "four"'))
    with pytest.raises(TargetError, match="rpi4.toml.threads: expected int, got 'four'"):
        load_target(str(bad))
    bad.write_text(text.replace('architecture = "yunet_n"', 'architecture = "retinaface"'))
    with pytest.raises(TargetError, match="unknown detector architecture 'retinaface'"):
        load_target(str(bad))
    bad.write_text(text.replace("[pipeline]\n", "[pipeline]\nmax_faces = 0\n"))
    with pytest.raises(TargetError, match="max_faces must be >= 1"):
        load_target(str(bad))
