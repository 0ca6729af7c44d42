"""Turning what users hand us (files, arrays of odd layouts and depths) into BGR uint8 frames, within a budget.

Files are decoded only after their header was read (``image_header``): a file whose format we recognise
but whose header is truncated or malformed never reaches OpenCV, nor does content no parser recognises,
and an image whose declared size is over the decode budget is refused before anything is allocated.

The budget is ``max_pixels`` (``tddfa-run --max-pixels``): an image may declare at most that many pixels,
and what decoding it allocates (the decoder's array, ``ImageHeader.decoded_bytes()``, plus the 3-byte BGR
frame) may be at most ``BYTES_PER_BUDGET_PIXEL`` bytes per budget pixel: an 8-bit image of ``max_pixels``
passes, 16-bit and floating-point images (HDR) count by their bytes. ``default_max_pixels`` derives the
default from a target's ``max_peak_rss_mb``: the decoded frame and its working copies (~6 bytes per pixel
measured: decoder output, BGR frame, detector input, annotation) may take a quarter of it.

Files are opened without following them into trouble: no blocking on FIFOs, nothing but regular files
read, and never more than the image can need (a file far larger than its declared image is refused
unread).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import cv2
import numpy as np

from tddfa_edge.contracts.errors import InputImageError

from .image_header import ImageHeader, ImageHeaderError, read_image_header, sniff_format
from .text import clean_message, short_name

# Keeps 16-bit depth and grey/colour as stored, drops alpha, and (unlike IMREAD_UNCHANGED) applies the
# EXIF orientation the way cv2.imread does, so phone photos are upright as in upstream 3DDFA_V2.
_DECODE_FLAGS = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH
# Formats OpenCV decodes to float32: let it convert to 8 bits itself (as cv2.imread does).
_FLOAT_FORMATS = frozenset({"HDR", "PFM", "EXR"})

IMAGE_SHARE_OF_BUDGET = 0.25  # share of the target's max_peak_rss_mb one decoded image may take
WORKING_BYTES_PER_PIXEL = 6  # measured: decoder output + BGR frame + working copies of an 8-bit image
BYTES_PER_BUDGET_PIXEL = 7  # decoder array + BGR frame allowed per --max-pixels pixel (8-bit RGBA passes)
FALLBACK_RSS_MB = 200.0  # for bundles whose target states no memory budget
HEAD_BYTES = 1 << 20  # read first; the header of every format we parse is within it (TIFF IFDs may not be)
METADATA_ALLOWANCE = 16 << 20  # bytes a file may carry beyond twice its raw pixel data (EXIF, ICC, XMP)


def default_max_pixels(max_peak_rss_mb: float | None) -> int:
    """The default ``--max-pixels`` for a target: a quarter of its peak-RSS budget at 6 bytes per pixel
    (200 MB: 8.7 MP, a 4K still fits; 120 MB: 5.2 MP; 100 MB: 4.4 MP)."""
    budget = float(max_peak_rss_mb or FALLBACK_RSS_MB) * (1 << 20)
    return max(1, int(budget * IMAGE_SHARE_OF_BUDGET / WORKING_BYTES_PER_PIXEL))


def max_file_bytes(max_pixels: int) -> int:
    """The largest file read at all: 16-bit RGBA of ``max_pixels``, uncompressed, plus metadata."""
    return 8 * int(max_pixels) + METADATA_ALLOWANCE


def _mp(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} MP" if pixels >= 50_000 else f"{pixels} pixels"


def check_budget(header: ImageHeader, name: str, max_pixels: int | None) -> None:
    """Refuse (``InputImageError``) an image whose declared size is over the decode budget."""
    if max_pixels is None:
        return
    if header.pixels > max_pixels:
        raise InputImageError(
            f"{name}: {header.format} declares {header.width} x {header.height} ({_mp(header.pixels)}), over the decode "
            f"limit of {_mp(max_pixels)} (--max-pixels {max_pixels}); not decoded")
    need = header.decoded_bytes() + 3 * header.pixels
    if need > BYTES_PER_BUDGET_PIXEL * max_pixels:
        depth = f"{header.bits_per_sample}-bit " if header.bits_per_sample else ""
        raise InputImageError(
            f"{name}: {header.format} {header.width} x {header.height} {depth}needs {need / 2**20:.0f} MB to decode, over the "
            f"limit of {BYTES_PER_BUDGET_PIXEL * max_pixels / 2**20:.0f} MB (--max-pixels {max_pixels} x {BYTES_PER_BUDGET_PIXEL} "
            "bytes); not decoded")


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
    """The image format named by the file's first bytes, or None (``image_header.sniff_format``)."""
    return sniff_format(bytes(data[:4096]))


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


_PNG_MAX_CHUNKS = 1_000_000  # libpng writes 8 KiB IDATs: a million chunks is an 8 GB image


def png_chunk_problem(data) -> str | None:
    """Why a PNG's chunk list cannot be right, or None: every chunk up to IEND must fit in the file.

    OpenCV's PNG reader allocates each chunk's declared length before reading it: one flipped bit in an
    IDAT length makes a 20 KB file allocate 1 GB. Walking the chunk headers (a few per 8 KiB) is cheap."""
    pos, n = 8, len(data)
    for _ in range(_PNG_MAX_CHUNKS):
        if pos + 8 > n:
            return "truncated PNG (no IEND chunk)"
        length = int.from_bytes(data[pos : pos + 4], "big")
        ctype = bytes(data[pos + 4 : pos + 8])
        if length > 0x7FFFFFFF:
            return "corrupt PNG (a chunk length over 2^31)"
        if pos + 12 + length > n:
            what = ctype.decode("ascii") if ctype.isalpha() else "a"
            return f"corrupt or truncated PNG ({what} chunk of {length} bytes runs past the end of the file)"
        if ctype == b"IEND":
            return None
        pos += 12 + length
    return f"corrupt PNG (more than {_PNG_MAX_CHUNKS} chunks)"


def read_header(data: bytes, name: str) -> ImageHeader:
    """The declared size of ``data``; ``InputImageError`` for unrecognised content or a bad header."""
    try:
        header = read_image_header(data if isinstance(data, bytes) else bytes(data))
    except ImageHeaderError as exc:
        raise InputImageError(f"cannot decode {name}: {clean_message(exc)}") from None
    if header is None:
        raise InputImageError(f"cannot decode {name}: not an image in a supported format (unrecognized content)")
    return header


def decode_image(data: bytes | bytearray | np.ndarray, name: str = "image", max_pixels: int | None = None,
                 header: ImageHeader | None = None) -> np.ndarray:
    """Decode encoded image bytes into BGR uint8; ``InputImageError`` says why when that is impossible.

    The header is read first: content no parser recognises, a malformed header, or (with ``max_pixels``)
    a declared size over the budget is refused without calling OpenCV.
    """
    raw = data.tobytes() if isinstance(data, np.ndarray) else data
    name = short_name(name)
    if not raw:
        raise InputImageError(f"cannot decode {name}: empty file (0 bytes)")
    if header is None:
        header = read_header(raw if isinstance(raw, bytes) else bytes(raw), name)
        check_budget(header, name, max_pixels)
    return _to_bgr(_imdecode(raw, header, name), name)


def _imdecode(raw, header: ImageHeader, name: str) -> np.ndarray:
    fmt = header.format
    if fmt == "JPEG" and jpeg_is_truncated(raw):
        raise InputImageError(f"cannot decode {name}: truncated JPEG (the file ends before its end-of-image marker)")
    if fmt == "PNG":
        problem = png_chunk_problem(raw)
        if problem is not None:
            raise InputImageError(f"cannot decode {name}: {problem}")
    flags = cv2.IMREAD_ANYCOLOR if fmt in _FLOAT_FORMATS else _DECODE_FLAGS
    try:
        image = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), flags)
    except cv2.error as exc:
        reason = clean_message(getattr(exc, "err", "") or "", 200)
        raise InputImageError(f"cannot decode {name}: OpenCV refused the {fmt} data ({reason or 'decoder error'})") from None
    except MemoryError:
        raise InputImageError(f"cannot decode {name}: out of memory for its {header.width} x {header.height} pixels") from None
    if image is None:
        raise InputImageError(f"cannot decode {name}: corrupt {fmt} data, or {fmt} images are not supported by this OpenCV build")
    return image


def _to_bgr(image: np.ndarray, name: str) -> np.ndarray:
    if image.dtype in (np.float32, np.float64):
        image = np.clip(image, 0, 255).astype(np.uint8)
    try:
        return as_bgr_uint8(image)
    except InputImageError as exc:
        raise InputImageError(f"cannot use {name}: {exc}") from None


# --- files --------------------------------------------------------------------------------------------------------

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str:
    for test, what in _KINDS:
        if test(mode):
            return what
    return "not a regular file"


def open_problem(path: str | os.PathLike, exc: OSError) -> str:
    """Why ``path`` cannot be opened, in words (broken and looping symbolic links named as such)."""
    code = exc.errno
    if code == errno.ENOENT:
        return "broken symbolic link (its target does not exist)" if os.path.islink(path) else "not found"
    if code == errno.ELOOP:
        return "symbolic link loop (too many levels of symbolic links)"
    if code == errno.ENAMETOOLONG:
        return "file name too long"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if code == errno.ENXIO:
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                return "it is a socket, not an image file"
        except (OSError, ValueError):
            pass
        return "a device with nothing behind it"
    if code == errno.ENOTDIR:
        return "a path component is not a directory"
    return clean_message(exc.strerror or exc, 200)


def open_regular_file(path: str | os.PathLike, name: str) -> tuple[int, os.stat_result]:
    """An O_RDONLY descriptor of a regular file (never blocking: FIFOs are refused after a non-blocking open)."""
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise InputImageError(f"cannot read {name}: {open_problem(path, exc)}") from None
    try:
        st = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise InputImageError(f"cannot read {name}: {clean_message(exc.strerror or exc, 200)}") from None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise InputImageError(f"cannot read {name}: it is {file_kind(st.st_mode)}, not an image file")
    return fd, st


def _pread_all(fd: int, size: int) -> bytes:
    """The first ``size`` bytes of the file as one bytes object (less when the file shrank meanwhile)."""
    data = os.pread(fd, size, 0)
    if len(data) < size:  # a short read (a huge request, or a file being written): read on
        parts, pos = [data], len(data)
        while pos < size:
            more = os.pread(fd, size - pos, pos)
            if not more:
                break
            parts.append(more)
            pos += len(more)
        data = b"".join(parts)
    return data


def _needs_more_data(exc: ImageHeaderError) -> bool:
    """Whether a header error only says the data given ended too soon (a TIFF IFD stored after the pixels)."""
    text = str(exc)
    return any(k in text for k in ("truncated", "past the end", "ends before", "in the data given"))


def read_image_file(path: str | os.PathLike, name: str | None = None, max_pixels: int | None = None) -> tuple[np.ndarray, float]:
    """Read and decode an image file within the budget: (BGR uint8 image, file modification time).

    The first MiB is read and its header checked before the rest; a file larger than its declared image can
    need (twice the raw pixels plus 16 MiB of metadata, and never more than ``max_file_bytes``) is refused
    unread."""
    name = short_name(name if name is not None else os.fspath(path))
    fd, st = open_regular_file(path, name)
    try:
        size = st.st_size
        if size == 0:
            raise InputImageError(f"cannot decode {name}: empty file (0 bytes)")
        cap = max_file_bytes(max_pixels) if max_pixels is not None else None
        data = _pread_all(fd, min(size, HEAD_BYTES))
        try:
            header = read_image_header(data)
        except ImageHeaderError as exc:
            if len(data) < size and _needs_more_data(exc) and (cap is None or size <= cap):
                data = _pread_all(fd, size)
                header = read_header(data, name)
            elif len(data) < size and _needs_more_data(exc):
                raise InputImageError(f"cannot decode {name}: {clean_message(exc)} in its first MiB; the file "
                                      f"({size / 2**20:.0f} MB) is larger than the decode limit allows reading") from None
            else:
                raise InputImageError(f"cannot decode {name}: {clean_message(exc)}") from None
        if header is None:
            raise InputImageError(f"cannot decode {name}: not an image in a supported format (unrecognized content)")
        check_budget(header, name, max_pixels)
        if len(data) < size:
            limit = 2 * header.decoded_bytes() + METADATA_ALLOWANCE
            if cap is not None:
                limit = min(limit, cap)
            if max_pixels is not None and size > limit:
                raise InputImageError(
                    f"cannot decode {name}: the file is {size / 2**20:.0f} MB, far more than its declared {header.width} x "
                    f"{header.height} {header.format} image can need; not read")
            data = _pread_all(fd, size)
    finally:
        os.close(fd)
    image = _imdecode(data, header, name)
    del data
    return _to_bgr(image, name), st.st_mtime


def read_image(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as BGR uint8; ``InputImageError`` when missing, unreadable or not an image."""
    path = Path(path)
    try:
        if not path.exists():
            raise InputImageError(f"image not found: {short_name(path)}")
    except OSError as exc:
        raise InputImageError(f"cannot read image {short_name(path)}: {open_problem(path, exc)}") from None
    return read_image_file(path, f"image {path}", max_pixels)[0]


__all__ = ["as_bgr_uint8", "decode_image", "read_image", "read_image_file", "image_format", "check_budget",
           "default_max_pixels", "max_file_bytes", "open_regular_file", "open_problem", "file_kind",
           "jpeg_is_truncated", "png_is_truncated", "png_chunk_problem", "read_header"]
