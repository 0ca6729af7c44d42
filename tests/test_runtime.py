"""Runtime pieces: bad input handling, bundles refusing tampering and schema errors, priors, tensor specs and crops."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings

import cv2
import numpy as np
import pytest

from tddfa_edge.runtime.aligner import FaceAligner
from tddfa_edge.contracts.errors import BackendUnavailableError, BundleError, InputImageError
from tddfa_edge.runtime.bundle import Bundle
from tddfa_edge.runtime.crop import crop_and_resize
from tddfa_edge.runtime.faceboxes_decoding import prior_boxes
from tddfa_edge.runtime.frames import as_bgr_uint8, read_image

from conftest import rewrite_manifest


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
    with pytest.raises(BundleError, match="manifest.json does not match manifest.json.sha256"):
        Bundle.open(copy)
    (copy / "manifest.json.sha256").unlink()
    with pytest.raises(BundleError, match="manifest.json.sha256 is missing"):
        Bundle.open(copy)
    with pytest.raises(BundleError, match="not a bundle"):
        Bundle.open(tmp_path)


def test_every_one_byte_change_of_the_manifest_is_refused(tmp_path, upstream_bundle):
    copy = tmp_path / "bundle"
    shutil.copytree(upstream_bundle, copy)
    raw = (copy / "manifest.json").read_bytes()
    rng = np.random.default_rng(0)
    for offset in rng.choice(len(raw), 40, replace=False):
        changed = bytearray(raw)
        changed[offset] = (changed[offset] + 1 + int(rng.integers(255))) % 256
        (copy / "manifest.json").write_bytes(bytes(changed))
        with pytest.raises(BundleError, match="manifest.json does not match"):
            Bundle.open(copy, verify=False)
    (copy / "manifest.json").write_bytes(raw)
    digest = (copy / "manifest.json.sha256").read_bytes()
    (copy / "manifest.json.sha256").write_bytes(digest[:5] + bytes([digest[5] ^ 1]) + digest[6:])
    with pytest.raises(BundleError, match="does not match"):
        Bundle.open(copy, verify=False)


def test_pinned_bundle_sha256(tmp_path, upstream_bundle):
    identity = Bundle.open(upstream_bundle).identity
    assert (upstream_bundle / "manifest.json.sha256").read_text().split()[0] == identity
    assert FaceAligner.from_bundle(upstream_bundle, bundle_sha256=identity.upper()).bundle.identity == identity
    with pytest.raises(BundleError, match=f"its manifest sha256 is {identity}, expected 0000"):
        FaceAligner.from_bundle(upstream_bundle, bundle_sha256="0" * 64)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["pipeline"]["detector"].update(architecture="retinaface"), r"pipeline\.detector\.architecture: must be one of 'faceboxes', 'yunet'"),
        (lambda m: m["pipeline"].update(crop_scale=1.5), r"pipeline: unknown field crop_scale"),
        (lambda m: m["morphable_model"].pop("param_std"), r"morphable_model\.param_std: missing"),
        (lambda m: m["models"]["regressor/onnx-fp32"]["inputs"][0].update(dtype="float64"), r"inputs\[0\]\.dtype: must be one of"),
        (lambda m: m["files"].pop("regressor.fp32.onnx"), r"regressor.fp32.onnx named by the manifest but not listed with a sha256"),
        (lambda m: m.update(schema_version=1), r"schema version 1, this runtime reads 2"),
        (lambda m: m["target"]["budgets"].update(max_bundle_mb="big"), r"target\.budgets\.max_bundle_mb: expected float"),
    ],
    ids=["unknown-detector", "unknown-field", "missing-field", "bad-dtype", "unlisted-model", "old-schema", "wrong-type"],
)
def test_manifest_schema_errors_name_the_field(tmp_path, upstream_bundle, change, message):
    copy = tmp_path / "bundle"
    shutil.copytree(upstream_bundle, copy)
    rewrite_manifest(copy, change)
    with pytest.raises(BundleError, match=message):
        Bundle.open(copy)


def test_bundle_for_another_machine_runs_quietly(tmp_path, upstream_bundle):
    copy = tmp_path / "bundle"
    shutil.copytree(upstream_bundle, copy)
    rewrite_manifest(copy, lambda m: m["target"].update(arch="aarch64"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        aligner = FaceAligner.from_bundle(copy)
    assert not aligner.bundle.built_for_this_machine
    assert aligner(np.full((64, 64, 3), 0, np.uint8)) == []


def test_missing_backend_of_the_default_is_an_error_unless_a_fallback_is_asked_for(tmp_path, upstream_bundle, monkeypatch):
    from tddfa_edge.runtime import backends

    copy = tmp_path / "bundle"
    shutil.copytree(upstream_bundle, copy)
    # A bundle whose default regressor is TFLite, in an install where LiteRT is "missing".
    tflite = copy / "regressor.fp32.tflite"
    tflite.write_bytes(b"TFL3 stand-in: never opened")

    def add_tflite(m):
        entry = json.loads(json.dumps(m["models"]["regressor/onnx-fp32"]))
        entry.update(variant="tflite-fp32", format="tflite", file=tflite.name)
        m["models"]["regressor/tflite-fp32"] = entry
        m["defaults"]["regressor"] = "tflite-fp32"
        m["files"][tflite.name] = {"sha256": hashlib.sha256(tflite.read_bytes()).hexdigest(), "size": tflite.stat().st_size,
                                   "install_only": False}

    rewrite_manifest(copy, add_tflite)
    real = backends.backend_available
    monkeypatch.setattr("tddfa_edge.runtime.bundle.backend_available", lambda name: name == "onnxruntime" and real(name))
    with pytest.raises(BackendUnavailableError, match=r"default regressor tflite-fp32 needs litert or tflite-runtime: pip install 'tddfa-edge\[tflite\]'.*--allow-fallback"):
        FaceAligner.from_bundle(copy)
    aligner = FaceAligner.from_bundle(copy, allow_fallback=True)
    assert aligner.regressor.variant == "onnx-fp32"


def test_tensor_specs_apply_integer_inputs_and_per_element_output_grids():
    from tddfa_edge.contracts.records import from_data
    from tddfa_edge.runtime.backends import build_input, read_output
    from tddfa_edge.runtime.manifest import Normalization, TensorSpec

    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    centred = build_input(pixels, TensorSpec("image", (1, 16, 16, 3), "int8", "NHWC", Normalization((128.0,), (1.0,))))
    assert centred.dtype == np.int8 and np.array_equal(centred.astype(int), pixels.astype(int) - 128)
    nchw = build_input(pixels, TensorSpec("image", (1, 3, 16, 16), "float32", "NCHW", Normalization((127.5,), (1 / 128,))))
    assert nchw.shape == (1, 3, 16, 16) and np.allclose(nchw[0, 0, 0, :2], [-127.5 / 128, -126.5 / 128])
    spec = from_data(TensorSpec, {"name": "param", "shape": [1, 3], "dtype": "uint8",
                                  "quantization": {"scale": [0.5, 1.0, 2.0], "zero_point": [0, 10, 128]}}, "spec")
    assert read_output(np.array([[2, 12, 130]], np.uint8), spec).tolist() == [[1.0, 2.0, 4.0]]


def _key_pair(folder):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private, public = folder / "key.pem", folder / "key.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def test_signed_bundles(tmp_path, upstream_bundle):
    from tddfa_edge.runtime.signing import sign

    copy = tmp_path / "bundle"
    shutil.copytree(upstream_bundle, copy)
    (tmp_path / "mine").mkdir()
    (tmp_path / "theirs").mkdir()
    private, public = _key_pair(tmp_path / "mine")
    _, other = _key_pair(tmp_path / "theirs")
    with pytest.raises(BundleError, match="it is not signed"):
        Bundle.open(copy, trusted_keys=[public])
    Bundle.open(copy)  # unsigned bundles still open when no key is asked for
    signature = sign((copy / "manifest.json").read_bytes(), private)
    assert signature == sign((copy / "manifest.json").read_bytes(), private), "Ed25519 is deterministic"
    (copy / "manifest.json.sig").write_bytes(signature)
    assert FaceAligner.from_bundle(copy, trusted_keys=(public,)).bundle.identity == Bundle.open(upstream_bundle).identity
    assert Bundle.open(copy, trusted_keys=[other, public])  # any of several trusted keys
    with pytest.raises(BundleError, match="does not verify with the trusted key"):
        Bundle.open(copy, trusted_keys=[other])
    for offset in (0, 10, len(signature) - 3):
        changed = bytearray(signature)
        changed[offset] = ord("A") if changed[offset] != ord("A") else ord("B")
        (copy / "manifest.json.sig").write_bytes(bytes(changed))
        with pytest.raises(BundleError, match="manifest.json.sig"):
            Bundle.open(copy, trusted_keys=[public])


@pytest.fixture(scope="module", params=["faceboxes", "yunet"])
def either_aligner(request, upstream_aligner, target_bundle):
    """FaceBoxes (dynamic input, the upstream-like bundle) and YuNet (letterboxed, the x86-1core bundle)."""
    if request.param == "faceboxes":
        return upstream_aligner
    aligner = FaceAligner.from_bundle(target_bundle("x86-1core"))
    assert aligner.settings.detector.architecture == "yunet"
    return aligner


@pytest.mark.parametrize("shape", [(1, 1), (1, 5000), (5000, 1), (7, 7), (31, 33), (2, 3000)])
def test_frames_smaller_than_the_detector_stride_give_no_face(either_aligner, shape):
    assert either_aligner(np.full(shape + (3,), 127, np.uint8)) == []
    assert len(either_aligner.detect(np.zeros(shape, np.uint8))) == 0


def test_a_crowd_is_bounded_by_max_faces(either_aligner, data_dir):
    """Hundreds of faces in one frame: at most ``max_faces`` come back, each aligned, in bounded time."""
    import time

    upstream_aligner = either_aligner

    face = cv2.imread(str(data_dir / "images" / "JianzhuGuo.jpg"))
    h, w = face.shape[:2]
    side = 96
    tile = cv2.resize(face[: min(h, w), : min(h, w)], (side, side), interpolation=cv2.INTER_AREA)
    crowd = np.tile(tile, (1080 // side, 1920 // side, 1))
    limit = upstream_aligner.settings.detector.max_faces
    detections = upstream_aligner.detect(crowd)
    if upstream_aligner.settings.detector.architecture == "faceboxes":  # reads the 1920x1080 frame at 1080x607
        assert len(detections) == limit, f"{len(detections)} boxes for {crowd.shape[0] // side * (crowd.shape[1] // side)} faces"
    else:  # YuNet at 448x256 sees these faces ~22 px wide: it finds some, never more than the limit
        assert 8 <= len(detections) <= limit, len(detections)
    start = time.perf_counter()
    faces = upstream_aligner(crowd)
    assert len(faces) == len(detections) and all(np.isfinite(f.landmarks_68).all() for f in faces)
    assert len(upstream_aligner(crowd, max_faces=5)) == 5
    assert time.perf_counter() - start < 60
