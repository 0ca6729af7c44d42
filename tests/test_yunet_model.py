"""YuNet in PyTorch: the real checkpoints load safely, and yunet_n reproduces the upstream ONNX export on real photos."""

from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from tddfa_edge.models.yunet import OUTPUT_NAMES, YUNET_CONFIGS, YuNet, load_yunet_state

from conftest import YUNET_PHOTOS as PHOTOS, letterbox

SIZES = ((640, 384), (320, 192))  # (width, height), multiples of 32


def load_checkpoint(data_dir, name: str) -> dict:
    return torch.load(str(data_dir / "weights" / f"{name}.pth"), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def yunet_n(data_dir) -> YuNet:
    return load_yunet_state(YuNet(**YUNET_CONFIGS["yunet_n"]), load_checkpoint(data_dir, "yunet_n")["state_dict"]).eval()


@pytest.mark.parametrize(
    "name,state_numel,trainable,tensors",
    # The data README's "parameters" are every element of the state dict: the trainable parameters plus the
    # BN running mean / var and the one-element num_batches_tracked counters.
    [("yunet_n", 77_890, 75_856, 208), ("yunet_s", 56_127, 54_608, 181)],
)
def test_checkpoints_load_with_weights_only(data_dir, name, state_numel, trainable, tensors):
    ckpt = load_checkpoint(data_dir, name)
    assert set(ckpt) == {"meta", "state_dict", "optimizer"}  # meta and optimizer are training-only
    state = ckpt["state_dict"]
    assert len(state) == tensors
    assert sum(v.numel() for v in state.values()) == state_numel
    model = load_yunet_state(YuNet.from_name(name), state).eval()
    assert sum(p.numel() for p in model.parameters()) == trainable
    assert sum(b.numel() for b in model.buffers()) == state_numel - trainable
    assert set(model.state_dict()) == set(state)  # nothing dropped, nothing left at its initial value
    with torch.no_grad():
        outs = model(torch.zeros(2, 3, 64, 96))
    assert len(outs) == len(OUTPUT_NAMES) == 12
    cells = [8 * 12, 4 * 6, 2 * 3]
    ks = [1] * 6 + [4] * 3 + [10] * 3
    assert [tuple(o.shape) for o in outs] == [(2, cells[i % 3], k) for i, k in enumerate(ks)]


def test_output_names_follow_the_upstream_onnx(data_dir):
    session = ort.InferenceSession(str(data_dir / "weights" / "yunet_n_dynamic.onnx"), providers=["CPUExecutionProvider"])
    assert tuple(o.name for o in session.get_outputs()) == OUTPUT_NAMES


@pytest.mark.parametrize("width,height", SIZES)
def test_yunet_n_matches_the_upstream_onnx_on_real_photos(data_dir, yunet_n, width, height):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(data_dir / "weights" / "yunet_n_dynamic.onnx"), opts,
                                   providers=["CPUExecutionProvider"])
    frames = [letterbox(cv2.imread(str(data_dir / rel)), width, height) for rel in PHOTOS]
    batch = np.stack(frames).transpose(0, 3, 1, 2).astype(np.float32)
    with torch.no_grad():
        ours = [t.numpy() for t in yunet_n(torch.from_numpy(batch))]
    for i in range(len(frames)):
        ref = session.run(None, {"input": batch[i : i + 1]})
        for name, a, b in zip(OUTPUT_NAMES, ours, ref):
            assert a[i : i + 1].shape == b.shape, name
            # Outputs stay within |x| < 10; measured max difference about 1e-5 (BN unfused here, folded in the ONNX).
            np.testing.assert_allclose(a[i : i + 1], b, rtol=1e-5, atol=1e-4, err_msg=f"{PHOTOS[i]} {name}")
    # The photos do have faces: some stride-8 or -16 cell scores high.
    assert max(float(np.sqrt(ours[k] * ours[k + 3]).max()) for k in range(3)) > 0.8


def test_wrong_checkpoints_fail_with_a_clear_value_error(data_dir):
    faceboxes = torch.load(str(data_dir / "weights" / "FaceBoxesProd.pth"), map_location="cpu", weights_only=True)
    with pytest.raises(ValueError, match="does not fit YuNet.*missing keys.*unexpected keys"):
        load_yunet_state(YuNet.from_name("yunet_n"), faceboxes)

    yunet_s = load_checkpoint(data_dir, "yunet_s")["state_dict"]
    with pytest.raises(ValueError, match=r"missing keys.*multi_level_share_convs.*wrong shape.*it is a yunet_s checkpoint"):
        load_yunet_state(YuNet.from_name("yunet_n"), yunet_s)
    yunet_n = load_checkpoint(data_dir, "yunet_n")["state_dict"]
    with pytest.raises(ValueError, match="unexpected keys.*it is a yunet_n checkpoint"):
        load_yunet_state(YuNet.from_name("yunet_s"), yunet_n)

    truncated = dict(yunet_n)
    truncated["bbox_head.multi_level_kps.2.conv1.weight"] = torch.zeros(8, 64, 1, 1)
    with pytest.raises(ValueError, match=r"multi_level_kps\.2\.conv1\.weight has shape \(8, 64, 1, 1\), expected \(10, 64, 1, 1\)"):
        load_yunet_state(YuNet.from_name("yunet_n"), truncated)


def test_input_size_must_be_a_multiple_of_32(yunet_n):
    with pytest.raises(ValueError, match="multiples of 32"):
        yunet_n(torch.zeros(1, 3, 100, 128))
