"""benchmarks/fuzz_inputs.py: seeded malformed images and videos, and what the runtime's header check and
OpenCV make of them."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tddfa_edge.benchmarks.fuzz_inputs import (
    IMAGE_KINDS,
    VALID_IMAGE_KINDS,
    VIDEO_KINDS,
    malformed_images,
    malformed_videos,
)
from tddfa_edge.runtime.image_header import ImageHeaderError, read_image_header

PIPELINE_FLAGS = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH  # as runtime/frames.py decodes
BUDGET = 64 << 20  # decoded bytes; every bomb declares far more
ALWAYS_REFUSED_BY_HEADER = {"bomb", "zero-size", "huge-tiny-file"}


@pytest.fixture(scope="module")
def base_images(data_dir) -> list[np.ndarray]:
    paths = sorted((Path(data_dir) / "images").glob("*.jpg"))
    assert paths, f"no images in {data_dir}/images"
    images = [cv2.imread(str(p)) for p in paths]
    assert all(img is not None for img in images)
    return images


@pytest.fixture(scope="module")
def video_path(data_dir) -> Path:
    path = Path(data_dir) / "videos" / "obama.mp4"
    assert path.is_file()
    return path


@pytest.fixture(scope="module")
def three_hundred(base_images):
    return list(malformed_images(0, 300, base_images))


def test_images_are_deterministic(base_images, three_hundred):
    again = list(malformed_images(0, 300, base_images))
    assert again == three_hundred
    other = list(malformed_images(1, 40, base_images))
    assert [d for _, d, _ in other] != [d for _, d, _ in three_hundred[:40]]


def test_image_counts_names_and_kinds(base_images, three_hundred):
    assert list(malformed_images(3, 0, base_images)) == []
    assert len(list(malformed_images(3, 5, base_images))) == 5
    assert len(three_hundred) == 300
    names = [name for name, _, _ in three_hundred]
    assert len(set(names)) == 300
    assert all(Path(name).suffix for name in names)
    kinds = [kind for _, _, kind in three_hundred]
    assert set(kinds) == set(IMAGE_KINDS)
    # kinds come in shuffled rounds: every kind appears in each block of len(IMAGE_KINDS) items
    assert set(kinds[: len(IMAGE_KINDS)]) == set(IMAGE_KINDS)
    assert all(len(data) == 0 for _, data, kind in three_hundred if kind == "empty")
    assert all(isinstance(data, bytes) for _, data, _ in three_hundred)


def test_every_image_is_refused_or_decodes_to_its_declared_size(three_hundred):
    """Header first (ImageHeaderError or over budget: refused without decoding), then OpenCV. Whatever OpenCV
    decodes had a header that declared exactly its pixel count (EXIF orientation may swap the sides)."""
    outcomes = {kind: set() for kind in IMAGE_KINDS}
    start = time.perf_counter()
    for name, data, kind in three_hundred:
        try:
            header = read_image_header(data)
        except ImageHeaderError:
            outcomes[kind].add("header-error")
            continue
        if header is not None and header.decoded_bytes() > BUDGET:
            outcomes[kind].add("over-budget")
            continue
        try:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), PIPELINE_FLAGS) if data else None
        except cv2.error:
            image = None
        if image is None:
            outcomes[kind].add("decode-failed")
            assert kind not in VALID_IMAGE_KINDS, name
            continue
        outcomes[kind].add("decoded")
        assert header is not None, f"{name}: OpenCV decoded what the header check did not recognise"
        assert header.pixels == image.shape[0] * image.shape[1], (name, header, image.shape)
        assert header.decoded_bytes() >= image.nbytes, (name, header, image.shape, image.dtype)
    assert time.perf_counter() - start < 10
    for kind in VALID_IMAGE_KINDS:
        assert outcomes[kind] == {"decoded"}, kind
    for kind in ALWAYS_REFUSED_BY_HEADER:
        assert outcomes[kind] <= {"header-error", "over-budget"}, kind
    assert outcomes["empty"] == {"decode-failed"}
    for kind in ("truncated", "bit-flips", "inserted-bytes", "deleted-bytes"):
        assert outcomes[kind] - {"decoded"}, f"{kind}: nothing was refused"


def test_videos(tmp_path, video_path):
    count = 2 * len(VIDEO_KINDS)
    start = time.perf_counter()
    first = list(malformed_videos(5, count, video_path, tmp_path / "a"))
    second = list(malformed_videos(5, count, video_path, tmp_path / "b"))
    assert len(first) == count
    assert [(n, k) for n, _, k in first] == [(n, k) for n, _, k in second]
    for (_, p1, _), (_, p2, _) in zip(first, second):
        assert p1.read_bytes() == p2.read_bytes(), p1.name  # VideoWriter output included (MKV normalised)
    assert {kind for _, _, kind in first} == set(VIDEO_KINDS)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(n for n, _, _ in first)  # no leftovers
    frames = {}
    for name, path, kind in first:
        cap = cv2.VideoCapture(str(path))
        n = 0
        while cap.isOpened() and n < 50:
            ok, _ = cap.read()
            if not ok:
                break
            n += 1
        cap.release()
        frames.setdefault(kind, set()).add(n)
    assert frames["valid-avi"] == {12} and frames["valid-mp4"] == {12}
    assert frames["zero-frames-avi"] == {0} and frames["zero-frames-mp4"] == {0}
    assert frames["empty-mp4"] == {0} and frames["no-moov"] == {0}
    assert all(path.stat().st_size == 0 for _, path, kind in first if kind == "empty-mp4")
    assert time.perf_counter() - start < 15
