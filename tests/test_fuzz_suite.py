"""The project's own fuzz tier (fast): over 1,000 seeded malformed images through folder runs, a sample of them and
every malformed-video kind through single-file runs, and one-byte changes of every file of a bundle.

Runs go through the real CLI in-process (click's CliRunner). The full sweep (10,000+ inputs in real processes,
100+ SIGKILL trials, stalled streams, every byte of the bundle's small files, CLI misuse) is
``python -m tddfa_edge.benchmarks.fuzz_run``; signal and SIGKILL trials in real processes are in
``test_hostile_input.py``.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import cv2
import pytest
from click.testing import CliRunner

from tddfa_edge.benchmarks.fuzz_inputs import IMAGE_KINDS, VALID_IMAGE_KINDS, VIDEO_KINDS, malformed_images, malformed_videos
from tddfa_edge.benchmarks.fuzz_run import make_small_bundle
from tddfa_edge.runtime.cli import main
from tddfa_edge.runtime.text import display_name

IMAGES, BATCH = 1000, 250
REFUSED_BY_BUDGET = {"bomb", "huge-tiny-file"}
PRINTABLE_LINE = re.compile(r"[\x20-\x7e\u00a0-\uffff]*")


def invoke(bundle, *args):
    result = CliRunner().invoke(main, ["--bundle", str(bundle), *map(str, args)], catch_exceptions=False)
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return result, records


def stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def fuzz_folders(tmp_path_factory, data_dir):
    bases = [cv2.imread(str(p)) for p in sorted((data_dir / "images").glob("*.jpg"))]
    root = tmp_path_factory.mktemp("fuzz-images")
    kinds: dict[str, str] = {}
    folders = []
    for i, (name, data, kind) in enumerate(malformed_images(11, IMAGES, bases)):
        folder = root / f"batch{i // BATCH}"
        if i % BATCH == 0:
            folder.mkdir()
            folders.append(folder)
        (folder / name).write_bytes(data)
        kinds[name] = kind
    return folders, kinds


@pytest.fixture
def cached_aligner(monkeypatch, upstream_aligner):
    """Single-file runs without reloading the bundle each time: ``from_bundle`` returns the session's aligner."""
    from tddfa_edge.runtime import aligner as aligner_module

    monkeypatch.setattr(aligner_module.FaceAligner, "from_bundle", classmethod(lambda cls, path, **kw: upstream_aligner))


def test_a_thousand_malformed_images_in_folder_runs(upstream_bundle, fuzz_folders):
    folders, kinds = fuzz_folders
    seen_kinds = set()
    for folder in folders:
        result, records = invoke(upstream_bundle, folder)
        assert result.exit_code in (6, 9), result.stderr[-500:]
        names = sorted(os.listdir(folder))
        assert sorted(r["source"] for r in records) == sorted(display_name(n) for n in names), "exactly one record per input"
        assert [r["frame"] for r in records] == list(range(len(names)))
        for record in records:
            kind = kinds[record["source"]]
            seen_kinds.add(kind)
            error = record.get("error")
            if kind in VALID_IMAGE_KINDS:
                assert error is None, (record["source"], error)
                assert record["detected"] is True and record["width"] > 0
            if kind in REFUSED_BY_BUDGET:
                assert error and re.search(r"over the decode limit|needs \d+ MB to decode|^cannot decode .*: (PNG|JPEG|WebP|BMP|TIFF|PNM|HDR|GIF|AVIF)",
                                           error), (record["source"], error)
            if kind == "empty":
                assert "empty file (0 bytes)" in error
            if error is not None:
                assert record["faces"] == [] and PRINTABLE_LINE.fullmatch(error), error
        lines = stderr_lines(result)
        assert all(line.startswith("tddfa-run: ") for line in lines)
        assert not any("unexpected" in line or "Traceback" in line for line in lines)
    assert seen_kinds == set(IMAGE_KINDS)


def test_malformed_images_one_by_one(upstream_bundle, fuzz_folders, cached_aligner):
    folders, kinds = fuzz_folders
    rng = random.Random(3)
    by_kind: dict[str, list[Path]] = {}
    for folder in folders:
        for path in folder.iterdir():
            by_kind.setdefault(kinds[path.name], []).append(path)
    sample = [p for kind in sorted(by_kind) for p in rng.sample(sorted(by_kind[kind]), 10)]
    for path in sample:
        result, records = invoke(upstream_bundle, path)
        assert result.exit_code in (0, 6), (path.name, result.stderr)
        assert len(records) == 1 and records[0]["source"] == display_name(path.name)
        lines = stderr_lines(result)
        assert len(lines) == (0 if result.exit_code == 0 else 1), lines
        assert not any("unexpected" in line for line in lines)


def test_every_malformed_video_kind_as_a_single_run(upstream_bundle, data_dir, tmp_path, cached_aligner):
    videos = list(malformed_videos(4, 2 * len(VIDEO_KINDS), data_dir / "videos" / "obama.mp4", tmp_path))
    for name, path, kind in videos:
        result, records = invoke(upstream_bundle, path, "--max-faces", "1")
        lines = stderr_lines(result)
        assert result.exit_code in (0, 6, 9), (name, result.stderr)
        assert records and [r["frame"] for r in records] == list(range(len(records))), name
        assert not any("unexpected" in line or "Traceback" in line for line in lines), lines
        assert all(PRINTABLE_LINE.fullmatch(line) for line in lines), lines
        if kind.startswith(("valid-", "overcount-")):
            assert result.exit_code == 0 and len(records) == 12 and lines == [], (name, lines)
        if kind == "image-as-mp4":
            assert lines == [f"tddfa-run: error: not a video: {path} holds a JPEG image"]
        if kind in ("zero-frames-avi", "zero-frames-mp4", "empty-mp4", "no-moov"):
            assert result.exit_code == 6 and len(records) == 1 and "error" in records[0], (name, lines)


def test_one_byte_changes_of_every_bundle_file_are_refused(upstream_bundle, data_dir, tmp_path):
    small = make_small_bundle(upstream_bundle, tmp_path / "small")
    image = data_dir / "images" / "JianzhuGuo.jpg"
    result, _ = invoke(small, image)
    assert result.exit_code == 0, result.stderr
    rng = random.Random(5)
    files = sorted(p for p in small.iterdir() if p.is_file())
    assert {p.name for p in files} >= {"manifest.json", "manifest.json.sha256", "regressor.fp32.onnx", "detector.fp32.onnx", "bfm_68.npz"}
    tried = 0
    for path in files:
        data = path.read_bytes()
        offsets = {0, len(data) - 1, *(rng.randrange(len(data)) for _ in range(3))}
        for offset in sorted(offsets):
            changed = bytearray(data)
            changed[offset] = (changed[offset] + rng.randrange(1, 256)) % 256
            path.write_bytes(bytes(changed))
            try:
                result, records = invoke(small, image)
            finally:
                path.write_bytes(data)
            tried += 1
            assert result.exit_code == 4 and records == [], (path.name, offset, result.stderr)
            (line,) = stderr_lines(result)
            assert line.startswith(f"tddfa-run: error: bundle {small} refused: ") and path.name in line, (path.name, offset, line)
    assert tried >= 5 * len(files) - 2
