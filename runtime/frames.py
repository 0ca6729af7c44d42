"""Turning what users hand us (files, arrays of odd layouts and depths) into BGR uint8 frames."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .errors import InputImageError

# Keeps 16-bit depth and grey/colour as stored, drops alpha, and (unlike IMREAD_UNCHANGED) applies the
# EXIF orientation the way cv2.imread does, so phone photos are upright as in upstream 3DDFA_V2.
_DECODE_FLAGS = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH

_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"GIF8", "GIF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
)


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


def image_format(data: bytes) -> str | None:
    """The image format named by the file's first bytes, or None."""
    head = bytes(data[:16])
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if len(head) > 2 and head[:1] == b"P" and head[1:2] in b"123456" and head[2:3].isspace():
        return "PNM"
    return None


def jpeg_is_truncated(data: bytes) -> bool:
    """True when a JPEG stream has no end-of-image marker after its first scan (the file was cut short).

    Walks the marker segments up to the first start-of-scan (skipping EXIF thumbnails, which carry their
    own markers), then looks for FFD9; entropy-coded data never contains it (0xFF is byte-stuffed).
    """
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return False  # not a well-formed segment list: leave the verdict to the decoder
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xDA:
            return data.find(b"\xff\xd9", pos + 2 + length) < 0
        pos += 2 + length
    return True


def png_is_truncated(data: bytes) -> bool:
    return data.rfind(b"IEND") < 0


def decode_image(data: bytes | np.ndarray, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes into BGR uint8; ``InputImageError`` says why when that is impossible."""
    raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    if not raw:
        raise InputImageError(f"cannot decode {name}: empty file (0 bytes)")
    fmt = image_format(raw)
    if fmt == "JPEG" and jpeg_is_truncated(raw):
        raise InputImageError(f"cannot decode {name}: truncated JPEG (the file ends before its end-of-image marker)")
    if fmt == "PNG" and png_is_truncated(raw):
        raise InputImageError(f"cannot decode {name}: truncated PNG (no IEND chunk)")
    image = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), _DECODE_FLAGS)
    if image is None:
        if fmt is None:
            raise InputImageError(f"cannot decode {name}: not an image in a supported format (unrecognized content)")
        raise InputImageError(f"cannot decode {name}: corrupt {fmt} data or an unsupported {fmt} variant")
    try:
        return as_bgr_uint8(image)
    except InputImageError as exc:
        raise InputImageError(f"cannot use {name}: {exc}") from None


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as BGR uint8; ``InputImageError`` when missing, unreadable or not an image."""
    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"image not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputImageError(f"cannot read image {path}: {exc.strerror or exc}") from None
    return decode_image(data, f"image {path}")
