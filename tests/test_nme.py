"""AFLW2000-3D accuracy of the fp32 pipeline with the 3DDFA protocol: reproduces the original code's figures."""

from __future__ import annotations

import pytest

from tddfa_edge.benchmarks.nme import evaluate_aligner, load_aflw2000


@pytest.fixture(scope="module")
def aflw(data_dir):
    return load_aflw2000(data_dir)


def test_fp32_nme_matches_original_code(upstream_aligner, aflw):
    reports, params = evaluate_aligner(upstream_aligner, aflw)
    original, reannotated = reports["original"], reports["reannotated"]
    assert original.bin_counts == (1312, 383, 305)
    assert original.headline == pytest.approx(3.798, abs=0.01)
    assert reannotated.headline == pytest.approx(3.028, abs=0.01)
    for got, want in zip(original.bins, (2.927, 3.674, 4.792)):
        assert got == pytest.approx(want, abs=0.01)
    for got, want in zip(reannotated.bins, (2.234, 2.741, 4.110)):
        assert got == pytest.approx(want, abs=0.01)
