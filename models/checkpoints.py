"""Building the PyTorch networks from checkpoint files, safely (``torch.load(weights_only=True)``)."""

from __future__ import annotations

from pathlib import Path

import torch

from tddfa_edge.contracts.errors import DataFileError

from .faceboxes import FaceBoxesDetector, load_detector_state
from .mobilenet_v1 import MobileNetV1Regressor, load_regressor_state
from .yunet import YUNET_CONFIGS, YuNet, load_yunet_state


def _load_state(path: Path, what: str) -> dict:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, truncated file, pickle with disallowed globals ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataFileError(f"cannot read {what} checkpoint {path}: {first[:200]}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataFileError(f"{path} is not a {what} checkpoint (no state dict of tensors inside)")
    return obj


def build_regressor(path: str | Path, widen_factor: float) -> MobileNetV1Regressor:
    state = _load_state(Path(path), "regressor")
    model = MobileNetV1Regressor(widen_factor=widen_factor)
    try:
        load_regressor_state(model, state)
    except ValueError as exc:
        raise DataFileError(f"wrong checkpoint {path}: {exc}") from None
    return model.eval()


def build_detector(path: str | Path, architecture: str = "faceboxes") -> torch.nn.Module:
    """FaceBoxes (``FaceBoxesProd.pth``) or YuNet (``yunet_n.pth`` / ``yunet_s.pth``) from its checkpoint."""
    if architecture == "faceboxes":
        model, load = FaceBoxesDetector(), load_detector_state
    elif architecture in YUNET_CONFIGS:
        model, load = YuNet(**YUNET_CONFIGS[architecture]), load_yunet_state
    else:
        raise DataFileError(f"unknown detector {architecture!r}; known: faceboxes, {', '.join(YUNET_CONFIGS)}")
    state = _load_state(Path(path), f"{architecture} detector")
    try:
        load(model, state)
    except ValueError as exc:
        raise DataFileError(f"wrong checkpoint {path}: {exc}") from None
    return model.eval()
