"""YuNet decoding (numpy): priors, the published decode rule, and agreement with OpenCV's FaceDetectorYN on real photos."""

from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from tddfa_edge.runtime.yunet_decoding import decode_yunet, yunet_priors

from conftest import YUNET_PHOTOS as PHOTOS, letterbox

SIZES = ((640, 384), (320, 192))  # (width, height), multiples of 32
SCORE_THRESHOLD = 0.5
NMS_IOU = 0.3


@pytest.fixture(scope="module")
def onnx_path(data_dir):
    return str(data_dir / "weights" / "yunet_n_dynamic.onnx")


@pytest.fixture(scope="module")
def session(onnx_path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])


def run_onnx(session, frame: np.ndarray) -> dict[str, np.ndarray]:
    x = frame.transpose(2, 0, 1)[None].astype(np.float32)
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": x})))


def opencv_style_nms(boxes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS as FaceDetectorYN runs it: on int-truncated (x, y, w, h) rects, suppress IoU > threshold."""
    x = boxes[:, 0].astype(np.int32)
    y = boxes[:, 1].astype(np.int32)
    w = (boxes[:, 2] - boxes[:, 0]).astype(np.int32)
    h = (boxes[:, 3] - boxes[:, 1]).astype(np.int32)
    order = np.argsort(-boxes[:, 4], kind="stable")
    keep: list[int] = []
    for i in order:
        ok = True
        for j in keep:
            iw = min(x[i] + w[i], x[j] + w[j]) - max(x[i], x[j])
            ih = min(y[i] + h[i], y[j] + h[j]) - max(y[i], y[j])
            inter = iw * ih if iw > 0 and ih > 0 else 0
            if inter and inter / (w[i] * h[i] + w[j] * h[j] - inter) > iou_threshold:
                ok = False
                break
        if ok:
            keep.append(int(i))
    return np.asarray(keep, dtype=np.int64)


def loop_decode(outputs: dict[str, np.ndarray], height: int, width: int, threshold: float):
    """Straightforward per-cell decode, written independently of the module under test."""
    boxes, kps = [], []
    for s in (8, 16, 32):
        cols = width // s
        for idx in range(outputs[f"cls_{s}"].shape[1]):
            r, c = divmod(idx, cols)
            cls = min(max(float(outputs[f"cls_{s}"][0, idx, 0]), 0.0), 1.0)
            obj = min(max(float(outputs[f"obj_{s}"][0, idx, 0]), 0.0), 1.0)
            score = (cls * obj) ** 0.5
            if score < threshold:
                continue
            b = outputs[f"bbox_{s}"][0, idx].astype(np.float64)
            cx, cy = (c + b[0]) * s, (r + b[1]) * s
            bw, bh = np.exp(b[2]) * s, np.exp(b[3]) * s
            boxes.append([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2, score])
            k = outputs[f"kps_{s}"][0, idx].astype(np.float64)
            kps.append([[(c + k[2 * n]) * s, (r + k[2 * n + 1]) * s] for n in range(5)])
    return np.asarray(boxes).reshape(-1, 5), np.asarray(kps).reshape(-1, 5, 2)


def test_priors_are_cached_read_only_cell_grids():
    grids = yunet_priors(384, 640)
    assert yunet_priors(384, 640) is grids
    assert [g.shape for g in grids] == [(48 * 80, 2), (24 * 40, 2), (12 * 20, 2)]
    assert all(g.dtype == np.float32 for g in grids)
    # Row-major cells, (col, row), no +0.5: cell 81 of stride 8 is column 1 of row 1.
    assert grids[0][0].tolist() == [0, 0] and grids[0][1].tolist() == [1, 0] and grids[0][81].tolist() == [1, 1]
    assert grids[2][-1].tolist() == [19, 11]
    with pytest.raises(ValueError):
        grids[0][0, 0] = 5
    with pytest.raises(ValueError, match="multiples of 32"):
        yunet_priors(380, 640)


@pytest.mark.parametrize("width,height", SIZES)
def test_decode_then_nms_matches_opencv_face_detector_yn(data_dir, session, onnx_path, width, height):
    detector = cv2.FaceDetectorYN.create(onnx_path, "", (width, height), SCORE_THRESHOLD, NMS_IOU, 5000)
    total = 0
    for rel in PHOTOS:
        frame = letterbox(cv2.imread(str(data_dir / rel)), width, height)
        boxes, kps = decode_yunet(run_onnx(session, frame), height, width, SCORE_THRESHOLD)
        keep = opencv_style_nms(boxes, NMS_IOU)
        boxes, kps = boxes[keep], kps[keep]

        _, faces = detector.detect(frame)
        faces = np.zeros((0, 15), np.float32) if faces is None else faces
        assert len(faces) == len(boxes), f"{rel} at {width}x{height}: OpenCV {len(faces)} faces, ours {len(boxes)}"
        cv_boxes = np.concatenate([faces[:, :2], faces[:, :2] + faces[:, 2:4], faces[:, 14:15]], axis=1)
        cv_kps = faces[:, 4:14].reshape(-1, 5, 2)
        for b, k in zip(boxes, kps):
            j = int(np.argmin(np.abs(cv_boxes[:, :4] - b[:4]).max(axis=1)))
            assert np.abs(cv_boxes[j, :4] - b[:4]).max() < 0.01, rel
            assert np.abs(cv_kps[j] - k).max() < 0.01, rel
            assert abs(cv_boxes[j, 4] - b[4]) < 1e-4, rel
        total += len(boxes)
    assert total >= 8  # every photo has a face; image 2 five, the collage three


def test_decode_matches_a_per_cell_loop_before_nms(data_dir, session):
    width, height = SIZES[0]
    frame = letterbox(cv2.imread(str(data_dir / "reference/test_images/2.jpeg")), width, height)
    outputs = run_onnx(session, frame)
    threshold = 0.05  # low, so that many candidates of every stride take part
    boxes, kps = decode_yunet(outputs, height, width, threshold)
    ref_boxes, ref_kps = loop_decode(outputs, height, width, threshold)
    assert boxes.dtype == kps.dtype == np.float32
    assert boxes.shape == ref_boxes.shape and len(boxes) > 20
    np.testing.assert_allclose(boxes, ref_boxes, rtol=0, atol=1e-3)
    np.testing.assert_allclose(kps, ref_kps, rtol=0, atol=1e-3)
    assert (boxes[:, 4] >= threshold).all()


def test_decode_edge_cases(data_dir, session):
    width, height = SIZES[1]
    outputs = run_onnx(session, np.zeros((height, width, 3), np.uint8))
    boxes, kps = decode_yunet(outputs, height, width, 1.01)  # nothing can pass
    assert boxes.shape == (0, 5) and kps.shape == (0, 5, 2) and boxes.dtype == np.float32
    with pytest.raises(ValueError, match="shape"):
        decode_yunet(outputs, height * 2, width, 0.5)  # outputs of another input size
    with pytest.raises(ValueError, match="missing"):
        decode_yunet({k: v for k, v in outputs.items() if k != "kps_16"}, height, width, 0.5)
