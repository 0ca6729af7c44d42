"""Turning what users hand us (files, arrays of odd layouts and depths) into BGR uint8 frames."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .errors import InputImageError


def as_bgr_uint8(image) -> np.ndarray:
    """Accept (H,W), (H,W,1), (H,W,3) BGR or (H,W,4) BGRA in uint8 or uint16; return (H,W,3) uint8 BGR.

    16-bit images are reduced to their high byte; alpha is dropped (not composited). Anything else
    raises ``InputImageError`` with what was wrong.
    """
    if not isinstance(image, np.ndarray):
        raise InputImageError(f"expected an image array, got {type(image).__name__}")
    if image.size == 0 or image.ndim < 2 or min(image.shape[:2]) == 0:
        raise InputImageError(f"empty image (shape {image.shape})")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise InputImageError(f"unsupported image dtype {image.dtype} (expected uint8 or uint16 BGR)")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    if image.ndim != 3:
        raise InputImageError(f"unsupported image shape {image.shape}")
    if image.shape[2] == 3:
        return image if image.flags.c_contiguous else np.ascontiguousarray(image)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    raise InputImageError(f"unsupported number of channels: {image.shape[2]} (expected 1, 3 or 4)")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as BGR uint8; ``InputImageError`` when missing, unreadable or not an image."""
    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"image not found: {path}")
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise InputImageError(f"cannot decode image {path} (corrupt, truncated or unsupported format)")
    return as_bgr_uint8(image)
