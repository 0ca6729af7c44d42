"""Runtime pieces: slim imports, bad input handling, bundles refusing tampering, pose and crops."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest

from tddfa_edge.runtime.aligner import FaceAligner
from tddfa_edge.runtime.bundle import Bundle, BundleMachineWarning
from tddfa_edge.runtime.crop import crop_and_resize
from tddfa_edge.runtime.detector import prior_boxes
from tddfa_edge.runtime.errors import BundleError, InputImageError
from tddfa_edge.runtime.frames import as_bgr_uint8, read_image


def test_runtime_import_does_not_pull_torch():
    code = (
        "import sys, tddfa_edge.runtime, tddfa_edge.runtime.aligner, tddfa_edge.runtime.tracking, tddfa_edge.runtime.cli;"
        "heavy=[m for m in ('torch','tensorflow','onnx','litert_torch','matplotlib') if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prior_count_matches_network_output():
    # 720x1280: stride 32 -> 23x40 cells x 21 anchors, stride 64 -> 12x20, stride 128 -> 6x10.
    assert prior_boxes(720, 1280).shape == (23 * 40 * 21 + 12 * 20 + 6 * 10, 4)


def test_bad_inputs_give_clear_errors(tmp_path, upstream_aligner):
    with pytest.raises(InputImageError, match="empty image"):
        upstream_aligner(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(InputImageError, match="dtype"):
        upstream_aligner(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(InputImageError, match="channels"):
        as_bgr_uint8(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(InputImageError, match="not found"):
        read_image(tmp_path / "missing.jpg")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(InputImageError, match="cannot decode"):
        read_image(corrupt)
    with pytest.raises(InputImageError):
        upstream_aligner("not an array")


def test_odd_layouts_give_the_same_faces(data_dir, upstream_aligner):
    image = cv2.imread(str(data_dir / "images" / "JianzhuGuo.jpg"))
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    bgra = cv2.cvtColor(image, cv2.COLOR_BGR2BGRA)
    deep = image.astype(np.uint16) * 257
    base = upstream_aligner(image)
    assert len(base) == 1
    assert np.abs(upstream_aligner(bgra)[0].landmarks_68 - base[0].landmarks_68).max() < 1e-3
    assert np.abs(upstream_aligner(deep)[0].landmarks_68 - base[0].landmarks_68).max() < 1e-3
    faces_gray = upstream_aligner(gray)
    assert len(faces_gray) == 1 and np.abs(faces_gray[0].landmarks_68[:, :2] - base[0].landmarks_68[:, :2]).mean() < 3.0


def test_no_face_gives_empty_result(upstream_aligner):
    assert upstream_aligner(np.full((480, 640, 3), 127, np.uint8)) == []
    rng = np.random.default_rng(0)
    assert upstream_aligner(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)) == []
    assert upstream_aligner(np.zeros((1, 1, 3), np.uint8)) == []


def test_box_outside_image_is_cropped_with_padding(data_dir, upstream_aligner):
    image = cv2.imread(str(data_dir / "images" / "JianzhuGuo.jpg"))
    h, w = image.shape[:2]
    faces = upstream_aligner.align(image, np.array([[w - 50, h - 50, w + 150, h + 150, 0.9]], np.float32))
    assert len(faces) == 1 and np.isfinite(faces[0].landmarks_68).all()
    far = upstream_aligner.align(image, np.array([[-5000, -5000, -4800, -4800, 0.9]], np.float32))
    assert len(far) == 1 and np.isfinite(far[0].landmarks_68).all()
    assert crop_and_resize(image, np.array([10, 10, 10, 50])).shape == (120, 120, 3)


def test_bundle_refuses_tampered_files(tmp_path, upstream_bundle):
    copy = tmp_path / "bundle"
    shutil.copytree(upstream_bundle, copy)
    Bundle.open(copy)
    model = copy / "regressor.fp32.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="regressor.fp32.onnx fails its sha256"):
        FaceAligner.from_bundle(copy)
    (copy / "bfm_68.npz").unlink()
    with pytest.raises(BundleError, match="bfm_68.npz missing"):
        Bundle.open(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="unreadable manifest"):
        Bundle.open(copy)
    with pytest.raises(BundleError, match="not a bundle"):
        Bundle.open(tmp_path)


def test_bundle_for_another_machine_runs_with_one_warning(tmp_path, upstream_bundle):
    copy = tmp_path / "bundle"
    shutil.copytree(upstream_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["target"]["arch"] = "riscv64"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        aligner = FaceAligner.from_bundle(copy)
        FaceAligner.from_bundle(copy)
    assert len([w for w in caught if issubclass(w.category, BundleMachineWarning)]) == 1
    assert aligner(np.full((64, 64, 3), 0, np.uint8)) == []


def test_tensor_specs_apply_integer_inputs_and_per_element_output_grids():
    from tddfa_edge.runtime.backends import TensorSpec, build_input, read_output

    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    centred = build_input(pixels, TensorSpec("image", (1, 16, 16, 3), "int8", mean=(128.0,), scale=(1.0,)))
    assert centred.dtype == np.int8 and np.array_equal(centred.astype(int), pixels.astype(int) - 128)
    nchw = build_input(pixels, TensorSpec("image", (1, 3, 16, 16), "float32", layout="NCHW", mean=(127.5,), scale=(1 / 128,)))
    assert nchw.shape == (1, 3, 16, 16) and np.allclose(nchw[0, 0, 0, :2], [-127.5 / 128, -126.5 / 128])
    spec = TensorSpec.from_manifest({"name": "param", "shape": [1, 3], "dtype": "uint8",
                                     "quantization": {"scale": [0.5, 1.0, 2.0], "zero_point": [0, 10, 128]}})
    assert read_output(np.array([[2, 12, 130]], np.uint8), spec).tolist() == [[1.0, 2.0, 4.0]]
