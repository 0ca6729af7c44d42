"""The reference photos of the data folder: the upstream 3DDFA_V2 examples and five Unsplash test photos.

``reference/upstream_mb05/<name>.npz`` holds the original pipeline's outputs for each of them (boxes,
params, roi boxes, sparse and dense vertices, pose), which the parity tests, the exporter's detector check
and the benchmark's recall study compare with.
"""

from __future__ import annotations

import os

import numpy as np

from tddfa_edge.contracts.errors import DataFileError

from .locate import resolve_data_file

# (name of the upstream reference file, photo path in the data folder)
REFERENCE_PHOTOS = (
    ("1", "reference/test_images/1.jpeg"), ("2", "reference/test_images/2.jpeg"), ("3", "reference/test_images/3.jpeg"),
    ("4", "reference/test_images/4.jpeg"), ("5", "reference/test_images/5.jpeg"), ("emma", "images/emma.jpg"),
    ("trump_hillary", "images/trump_hillary.jpg"), ("JianzhuGuo", "images/JianzhuGuo.jpg"),
)
UPSTREAM_OUTPUTS = "reference/upstream_mb05"


def reference_photos(data_dir: str | os.PathLike | None = None) -> list[tuple[str, np.ndarray]]:
    """(name, BGR uint8 image) of every reference photo, in ``REFERENCE_PHOTOS`` order."""
    import cv2

    photos = []
    for name, rel in REFERENCE_PHOTOS:
        path = resolve_data_file(rel, data_dir)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise DataFileError(f"cannot read reference photo {path}")
        photos.append((name, image))
    return photos


def upstream_outputs(name: str, data_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """The original pipeline's outputs for one reference photo (or ``obama_tracking``)."""
    with np.load(resolve_data_file(f"{UPSTREAM_OUTPUTS}/{name}.npz", data_dir), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
