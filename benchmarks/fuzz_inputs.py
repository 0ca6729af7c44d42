"""Seeded generators of malformed image and video inputs, for the fuzz suite and the tests.

``malformed_images(seed, count, base_images)`` yields ``(file name, bytes, kind)`` and
``malformed_videos(seed, count, source_video, workdir)`` writes files and yields ``(file name, path, kind)``.
The same seed gives the same bytes: every random choice comes from ``numpy.random.default_rng(seed)``,
OpenCV's encoders and ``cv2.VideoWriter`` (MJPG .avi, mp4v .mp4) are deterministic, and the one writer
that is not (FFmpeg's Matroska muxer draws random UIDs and stamps the date) is normalised afterwards.

Kinds cycle in a seed-shuffled order, so any ``count`` of at least ``len(IMAGE_KINDS)`` covers them all.
Valid files are part of the mix so a fuzz run also has successes. The module also holds the small
hand-made encoders (GIF, HEIF/AVIF boxes, CMYK JPEG, EXIF APP1, OpenEXR header, JPEG XL size header,
QOI) and header patchers (PNG IHDR, JPEG SOF, BMP, TIFF, PNM, HDR, WebP VP8X) the tests reuse.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "IMAGE_KINDS",
    "VALID_IMAGE_KINDS",
    "VIDEO_KINDS",
    "cmyk_jpeg_bytes",
    "exr_header_bytes",
    "gif_bytes",
    "isobmff_image_bytes",
    "jpeg_sof_offset",
    "jpeg_with_exif",
    "jxl_codestream_header",
    "malformed_images",
    "malformed_videos",
    "normalize_matroska",
    "overcount",
    "patch_bmp_size",
    "patch_hdr_size",
    "patch_jpeg_sof",
    "patch_png_ihdr",
    "patch_pnm_size",
    "patch_tiff_size",
    "png_bytes",
    "png_chunk",
    "qoi_bytes",
    "webp_vp8x",
]

IMAGE_KINDS = (
    "valid",  # an ordinary image in one of the formats OpenCV writes here
    "valid-16bit",  # 16-bit PNG / TIFF / PGM / PPM
    "valid-rgba",  # PNG, WebP, TIFF, BMP with alpha
    "tiny",  # 1x1, 1xN and Nx1 images
    "progressive-jpeg",
    "cmyk-jpeg",  # 4-component baseline JPEG (with or without the Adobe APP14 marker)
    "exif-jpeg",  # EXIF orientation and/or an EXIF thumbnail with its own SOI/SOF
    "truncated",  # a valid file cut at a random offset
    "bit-flips",
    "inserted-bytes",
    "deleted-bytes",
    "bomb",  # a valid file whose header is patched to declare a huge size
    "zero-size",  # ... or a width/height of 0
    "huge-tiny-file",  # a tiny file built from scratch that declares a huge image
    "wrong-suffix",  # JPEG named .png, PNG named .jpg, text named .jpg, WebP named .bmp
    "random-bytes",  # noise with an image suffix
    "empty",  # 0 bytes
    "foreign-format",  # GIF, HEIF/AVIF boxes without image data, OpenEXR, JPEG XL, QOI
)
VALID_IMAGE_KINDS = frozenset({"valid", "valid-16bit", "valid-rgba", "tiny", "progressive-jpeg", "cmyk-jpeg", "exif-jpeg"})

VIDEO_KINDS = (
    "valid-avi",  # MJPG .avi written with cv2.VideoWriter
    "valid-mp4",  # mp4v .mp4 written with cv2.VideoWriter
    "zero-frames-avi",  # a VideoWriter opened and released without frames
    "zero-frames-mp4",
    "truncated-mp4",  # the source video or the mp4v clip cut at a random point
    "truncated-avi",
    "truncated-mkv",
    "corrupt-middle",  # random bytes written over a stretch in the middle
    "no-moov",  # MP4 with its moov box removed
    "image-as-mp4",  # a JPEG named .mp4
    "empty-mp4",  # 0 bytes
    "overcount-avi",  # an intact MJPG .avi whose headers announce 3x the frames it has
    "overcount-mkv",  # an intact MJPG .mkv whose duration announces 3x the frames it has
)

_U32_MAX = 0xFFFFFFFF


# ==========================================================================================================
# Hand-made encoders and header patchers


def png_chunk(ctype: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def png_bytes(width: int, height: int, bit_depth: int = 8, colour_type: int = 2, raw: bytes | None = None) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` (valid CRCs) around a tiny IDAT (``raw`` zlib-compressed)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = zlib.compress(raw if raw is not None else bytes(16))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def patch_png_ihdr(png: bytes, width: int, height: int) -> bytes:
    """The PNG with its IHDR size replaced and the IHDR CRC recomputed."""
    b = bytearray(png)
    b[16:24] = struct.pack(">II", width, height)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    return bytes(b)


def jpeg_sof_offset(jpeg: bytes) -> int:
    """Offset of the first SOFn marker (FF Cn) of a well-formed JPEG, walking segments from SOI."""
    pos = 2
    while pos + 4 <= len(jpeg):
        if jpeg[pos] != 0xFF:
            raise ValueError("not a well-formed JPEG segment list")
        marker = jpeg[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return pos
        if marker == 0xDA:
            break
        pos += 2 + int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
    raise ValueError("JPEG has no SOF marker")


def patch_jpeg_sof(jpeg: bytes, width: int, height: int) -> bytes:
    pos = jpeg_sof_offset(jpeg)
    b = bytearray(jpeg)
    b[pos + 5 : pos + 9] = struct.pack(">HH", height, width)
    return bytes(b)


def patch_bmp_size(bmp: bytes, width: int, height: int) -> bytes:
    b = bytearray(bmp)
    if int.from_bytes(b[14:18], "little") == 12:
        b[18:22] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
    else:
        b[18:26] = struct.pack("<ii", width, height)
    return bytes(b)


def patch_tiff_size(tiff: bytes, width: int, height: int) -> bytes:
    """Classic TIFF with its first IFD's ImageWidth/ImageLength rewritten as LONG values."""
    b = bytearray(tiff)
    endian = ">" if b[:2] == b"MM" else "<"
    (ifd,) = struct.unpack(endian + "I", b[4:8])
    (count,) = struct.unpack(endian + "H", b[ifd : ifd + 2])
    for i in range(count):
        p = ifd + 2 + 12 * i
        (tag,) = struct.unpack(endian + "H", b[p : p + 2])
        if tag in (256, 257):
            b[p + 2 : p + 12] = struct.pack(endian + "HII", 4, 1, width if tag == 256 else height)
    return bytes(b)


def patch_pnm_size(pnm: bytes, width: int, height: int) -> bytes:
    """A P4/P5/P6 file (as OpenCV writes it: "P6\\nW H\\n255\\n") with a new size line, same pixel data."""
    lines = pnm.split(b"\n", 3 if pnm[:2] not in (b"P1", b"P4") else 2)
    lines[1] = b"%d %d" % (width, height)
    return b"\n".join(lines)


def patch_hdr_size(hdr: bytes, width: int, height: int) -> bytes:
    blank = hdr.index(b"\n\n") + 2
    eol = hdr.index(b"\n", blank)
    return hdr[:blank] + b"-Y %d +X %d" % (height, width) + hdr[eol:]


def webp_vp8x(webp: bytes, width: int, height: int, flags: int = 0) -> bytes:
    """A simple (VP8 / VP8L) WebP rewrapped in an extended VP8X container declaring a ``width`` x ``height`` canvas."""
    if webp[12:16] not in (b"VP8 ", b"VP8L"):
        raise ValueError("expected a simple-format WebP")
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([flags, 0, 0, 0]) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x + webp[12:]
    return b"RIFF" + struct.pack("<I", len(body)) + body


def gif_bytes(width: int, height: int, frame: tuple[int, int] | None = None, pattern: int = 0) -> bytes:
    """A valid two-colour GIF89a: logical screen ``width`` x ``height``, one frame of ``frame`` (w, h) at (0, 0).

    LZW with minimum code size 2, a clear code before every pixel (so codes stay 3 bits wide).
    """
    fw, fh = frame or (width, height)
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + bytes([0, 0, 0, 255, 255, 255]))
    out += b"\x2c" + struct.pack("<HHHHB", 0, 0, fw, fh, 0)
    acc = nbits = 0
    lzw = bytearray()
    for i in range(fw * fh + 1):
        for code in ((4, ((i * 7 + pattern) >> 2) & 1) if i < fw * fh else (5,)):
            acc |= code << nbits
            nbits += 3
            while nbits >= 8:
                lzw.append(acc & 0xFF)
                acc >>= 8
                nbits -= 8
    if nbits:
        lzw.append(acc & 0xFF)
    out.append(2)
    for i in range(0, len(lzw), 255):
        block = lzw[i : i + 255]
        out += bytes([len(block)]) + block
    out += b"\x00\x3b"
    return bytes(out)


def _box(btype: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + btype + payload


def _fullbox(btype: bytes, payload: bytes, version: int = 0, flags: int = 0) -> bytes:
    return _box(btype, bytes([version]) + flags.to_bytes(3, "big") + payload)


def isobmff_image_bytes(
    width: int,
    height: int,
    major: bytes = b"heic",
    compatible: tuple[bytes, ...] = (b"mif1", b"heic"),
    tiles: tuple[tuple[int, int], ...] = (),
    depths: tuple[int, ...] = (8, 8, 8),
    alpha: bool = False,
    payload: bytes = bytes(32),
) -> bytes:
    """A HEIF/AVIF-like file: ftyp + meta(hdlr, iprp > ipco > ispe/pixi[/auxC]) + mdat, with no decodable image
    data. ``tiles`` adds smaller 'ispe' properties (grid tiles) after the canvas one."""
    ftyp = _box(b"ftyp", major + bytes(4) + b"".join(compatible))
    hdlr = _fullbox(b"hdlr", bytes(4) + b"pict" + bytes(12) + b"\0")
    props = [_fullbox(b"ispe", struct.pack(">II", w, h)) for w, h in ((width, height), *tiles)]
    props.append(_fullbox(b"pixi", bytes([len(depths), *depths])))
    if alpha:
        props.append(_fullbox(b"auxC", b"urn:mpeg:mpegB:cicp:systems:auxiliary:alpha\0"))
    meta = _fullbox(b"meta", hdlr + _box(b"iprp", _box(b"ipco", b"".join(props))))
    return ftyp + meta + _box(b"mdat", payload)


_DC_COUNTS = (0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0)  # the standard luminance DC table (K.3)


def _huffman_codes(counts: tuple[int, ...], symbols: list[int]) -> dict[int, tuple[int, int]]:
    """Canonical Huffman codes: symbol -> (code, length)."""
    codes, code, k = {}, 0, 0
    for length, n in enumerate(counts, start=1):
        for _ in range(n):
            codes[symbols[k]] = (code, length)
            code += 1
            k += 1
        code <<= 1
    return codes


def cmyk_jpeg_bytes(width: int, height: int, adobe: bool = True, levels: tuple[int, int, int, int] = (0, 0, 0, 0)) -> bytes:
    """A valid baseline 4-component (CMYK) JPEG of flat colour: every 8x8 block is DC-only.

    The DC table is the standard one, the AC table has the single symbol EOB (code "0"); the first MCU
    sets each component's DC to ``levels`` (-128..127, with a quantisation table of 1s), every later block
    is "DC difference 0, EOB". With ``adobe`` an APP14 "Adobe" marker (transform 0) says CMYK.
    """
    out = bytearray(b"\xff\xd8")
    if adobe:  # APP14 "Adobe", version 100, flags 0, 0, transform 0 (CMYK, no YCCK)
        payload = b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 0)
        out += b"\xff\xee" + struct.pack(">H", len(payload) + 2) + payload
    out += b"\xff\xdb" + struct.pack(">HB", 67, 0) + bytes([1] * 64)  # DQT 0: all ones
    out += b"\xff\xc0" + struct.pack(">HBHHB", 8 + 3 * 4, 8, height, width, 4)
    for cid in range(1, 5):
        out += bytes([cid, 0x11, 0])
    dc = bytes([0x00]) + bytes(_DC_COUNTS) + bytes(range(12))
    ac = bytes([0x10]) + bytes([1] + [0] * 15) + bytes([0])
    out += b"\xff\xc4" + struct.pack(">H", 2 + len(dc) + len(ac)) + dc + ac
    out += b"\xff\xda" + struct.pack(">HB", 6 + 2 * 4, 4) + b"".join(bytes([cid, 0x00]) for cid in range(1, 5)) + bytes([0, 63, 0])
    dc_codes = _huffman_codes(_DC_COUNTS, list(range(12)))
    acc, nbits, data = 0, 0, bytearray()

    def put(value: int, length: int) -> None:
        nonlocal acc, nbits
        acc = (acc << length) | (value & ((1 << length) - 1))
        nbits += length
        while nbits >= 8:
            byte = (acc >> (nbits - 8)) & 0xFF
            data.append(byte)
            if byte == 0xFF:
                data.append(0)  # byte stuffing
            nbits -= 8
        acc &= (1 << nbits) - 1

    for level in levels:  # first MCU: DC difference = level * 8 (the DC coefficient is 8x the mean level)
        v = int(level) * 8
        cat = abs(v).bit_length()
        put(*dc_codes[cat])
        if cat:
            put(v if v > 0 else v + (1 << cat) - 1, cat)
        put(0, 1)  # EOB
    mcus = ((width + 7) // 8) * ((height + 7) // 8)
    zero_block = (dc_codes[0][0] << 1, dc_codes[0][1] + 1)  # DC category 0, EOB
    for _ in range(4 * (mcus - 1)):
        put(*zero_block)
    if nbits:
        put((1 << (8 - nbits)) - 1, 8 - nbits)  # pad with 1 bits
    return bytes(out + data + b"\xff\xd9")


def jpeg_with_exif(jpeg: bytes, thumbnail: bytes | None = None, orientation: int | None = None) -> bytes:
    """The JPEG with an EXIF APP1 segment (little-endian TIFF) after SOI / APP0: IFD0 with the orientation,
    IFD1 pointing at ``thumbnail`` (a complete JPEG, with its own SOI and SOF, inside the APP1)."""
    entries0 = [(0x0112, 3, 1, orientation)] if orientation else []
    ifd0_size = 2 + 12 * len(entries0) + 4
    ifd1_off = 8 + ifd0_size if thumbnail else 0
    tiff = bytearray(b"II*\x00" + struct.pack("<I", 8))
    tiff += struct.pack("<H", len(entries0))
    for tag, typ, count, value in entries0:
        tiff += struct.pack("<HHIHH", tag, typ, count, value, 0)
    tiff += struct.pack("<I", ifd1_off)
    if thumbnail:
        thumb_off = ifd1_off + 2 + 12 * 2 + 4
        tiff += struct.pack("<H", 2)
        tiff += struct.pack("<HHII", 0x0201, 4, 1, thumb_off)
        tiff += struct.pack("<HHII", 0x0202, 4, 1, len(thumbnail))
        tiff += struct.pack("<I", 0)
        tiff += thumbnail
    payload = b"Exif\x00\x00" + bytes(tiff)
    if len(payload) + 2 > 0xFFFF:
        raise ValueError("EXIF segment too large (thumbnail must be < 64 KB)")
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    pos = 2
    if jpeg[2:4] == b"\xff\xe0":  # keep JFIF APP0 first
        pos = 4 + int.from_bytes(jpeg[4:6], "big")
    return jpeg[:pos] + app1 + jpeg[pos:]


def exr_header_bytes(width: int, height: int, channels: bytes = b"BGR", pixel_type: int = 1, x0: int = 0, y0: int = 0) -> bytes:
    """A scanline OpenEXR file header (no pixel data beyond a zeroed offset table): magic, version 2,
    channels, compression, dataWindow, displayWindow, lineOrder, pixelAspectRatio, screenWindow*."""

    def attr(name: bytes, atype: bytes, value: bytes) -> bytes:
        return name + b"\0" + atype + b"\0" + struct.pack("<I", len(value)) + value

    chlist = b"".join(c.encode() + b"\0" + struct.pack("<iB3xii", pixel_type, 0, 1, 1) for c in channels.decode()) + b"\0"
    window = struct.pack("<iiii", x0, y0, x0 + width - 1, y0 + height - 1)
    header = b"\x76\x2f\x31\x01" + struct.pack("<I", 2)
    header += attr(b"channels", b"chlist", chlist)
    header += attr(b"compression", b"compression", b"\0")
    header += attr(b"dataWindow", b"box2i", window)
    header += attr(b"displayWindow", b"box2i", window)
    header += attr(b"lineOrder", b"lineOrder", b"\0")
    header += attr(b"pixelAspectRatio", b"float", struct.pack("<f", 1.0))
    header += attr(b"screenWindowCenter", b"v2f", struct.pack("<ff", 0, 0))
    header += attr(b"screenWindowWidth", b"float", struct.pack("<f", 1.0))
    return header + b"\0" + bytes(8 * min(max(height, 0), 64))


def jxl_codestream_header(width: int, height: int) -> bytes:
    """A JPEG XL codestream signature and SizeHeader (not a decodable image): 30-bit U32 sizes, no ratio."""
    fields = [(0, 1), (3, 2), (height - 1, 30), (0, 3), (3, 2), (width - 1, 30)]
    value = nbits = 0
    for v, n in fields:
        value |= (v & ((1 << n) - 1)) << nbits
        nbits += n
    return b"\xff\x0a" + value.to_bytes((nbits + 7) // 8 + 4, "little")


def qoi_bytes(image: np.ndarray) -> bytes:
    """A valid QOI file (every pixel as QOI_OP_RGB) of a BGR uint8 image."""
    h, w = image.shape[:2]
    rgb = np.ascontiguousarray(image[:, :, ::-1]).reshape(-1, 3)
    body = np.concatenate([np.full((len(rgb), 1), 0xFE, np.uint8), rgb], axis=1).tobytes()
    return b"qoif" + struct.pack(">IIBB", w, h, 3, 0) + body + bytes(7) + b"\x01"


# ==========================================================================================================
# Images


def _resized(rng: np.random.Generator, base: np.ndarray, h: int, w: int) -> np.ndarray:
    bh, bw = base.shape[:2]
    ch = int(rng.integers(max(1, bh // 4), bh + 1))
    cw = int(rng.integers(max(1, bw // 4), bw + 1))
    y = int(rng.integers(0, bh - ch + 1))
    x = int(rng.integers(0, bw - cw + 1))
    crop = base[y : y + ch, x : x + cw]
    return cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA)


def _zero_sun_raster_padding(data: bytes) -> bytes:
    """OpenCV's Sun raster writer pads odd-length rows to 16 bits with an uninitialised byte (seen: the last
    byte of the file changes between identical calls); zero the pads so the same seed gives the same bytes."""
    width, height, depth = struct.unpack(">III", data[4:16])
    maplength = struct.unpack(">I", data[28:32])[0]
    row = (width * depth + 7) // 8
    if row % 2 == 0:
        return data
    b = bytearray(data)
    start = 32 + maplength
    for y in range(height):
        pad = start + y * (row + 1) + row
        if pad < len(b):
            b[pad] = 0
    return bytes(b)


def _shrunk(image: np.ndarray, max_side: int) -> np.ndarray:
    """The image scaled down (once, INTER_AREA) so its longer side is at most ``max_side``: crops and
    resizes of a 2 MP photo for every item would dominate the generator's time."""
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return image
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _as_bgr(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return image[:, :, :3]


class _ImageMaker:
    def __init__(self, rng: np.random.Generator, base_images: list[np.ndarray]) -> None:
        if not base_images:
            raise ValueError("malformed_images needs at least one base image")
        self.rng = rng
        self.bases = [_shrunk(_as_bgr(np.asarray(b, dtype=np.uint8)), 320) for b in base_images]

    # --- helpers ------------------------------------------------------------------------------------------
    def choice(self, options):
        return options[int(self.rng.integers(len(options)))]

    def image(self, min_side: int = 1, max_side: int = 160) -> np.ndarray:
        h = int(self.rng.integers(min_side, max_side + 1))
        w = int(self.rng.integers(min_side, max_side + 1))
        return _resized(self.rng, self.choice(self.bases), h, w)

    def encode(self, ext: str, image: np.ndarray, params: list[int] | None = None) -> bytes:
        ok, buf = cv2.imencode(ext, image, params or [])
        if not ok:
            raise RuntimeError(f"cv2.imencode({ext}) failed for {image.shape} {image.dtype}")
        data = buf.tobytes()
        return _zero_sun_raster_padding(data) if ext in (".ras", ".sr") else data

    def valid(self) -> tuple[str, bytes, str]:
        """A valid 8-bit file: (detail, bytes, suffix)."""
        fmt = self.choice(["jpg", "png", "webp-lossy", "webp-lossless", "bmp", "tiff", "ppm", "pgm", "pbm", "pam", "jp2", "ras"])
        img = self.image(32 if fmt == "jp2" else 1)
        gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        if fmt == "jpg":
            return "jpeg", self.encode(".jpg", img if self.rng.random() < 0.8 else gray, [cv2.IMWRITE_JPEG_QUALITY, int(self.rng.integers(30, 100))]), ".jpg"
        if fmt == "png":
            return "png", self.encode(".png", img if self.rng.random() < 0.8 else gray), ".png"
        if fmt == "webp-lossy":
            return fmt, self.encode(".webp", img, [cv2.IMWRITE_WEBP_QUALITY, int(self.rng.integers(10, 100))]), ".webp"
        if fmt == "webp-lossless":
            return fmt, self.encode(".webp", img, [cv2.IMWRITE_WEBP_QUALITY, 101]), ".webp"
        if fmt == "bmp":
            return "bmp", self.encode(".bmp", img if self.rng.random() < 0.7 else gray), self.choice([".bmp", ".dib"])
        if fmt == "tiff":
            return "tiff", self.encode(".tiff", img if self.rng.random() < 0.8 else gray), self.choice([".tif", ".tiff"])
        if fmt == "ppm":
            return "ppm", self.encode(".ppm", img), self.choice([".ppm", ".pnm"])
        if fmt == "pgm":
            return "pgm", self.encode(".pgm", gray), ".pgm"
        if fmt == "pbm":
            return "pbm", self.encode(".pbm", np.where(gray > 127, 255, 0).astype(np.uint8)), ".pbm"
        if fmt == "pam":
            return "pam", self.encode(".pam", img, [cv2.IMWRITE_PAM_TUPLETYPE, cv2.IMWRITE_PAM_FORMAT_RGB]), ".ppm"
        if fmt == "jp2":
            return "jp2", self.encode(".jp2", img, [cv2.IMWRITE_JPEG2000_COMPRESSION_X1000, int(self.rng.integers(50, 1000))]), ".jp2"
        return "ras", self.encode(".ras", img if self.rng.random() < 0.7 else gray), self.choice([".ras", ".sr"])

    def valid_16bit(self):
        img = self.image().astype(np.uint16) * 257
        img[..., 0] += self.rng.integers(0, 256, img.shape[:2], dtype=np.uint16) // 2  # use the low byte too
        fmt = self.choice(["png", "png-gray", "tiff", "pgm", "ppm"])
        gray = img[:, :, 1].copy()
        if fmt == "png":
            return fmt, self.encode(".png", img), ".png"
        if fmt == "png-gray":
            return fmt, self.encode(".png", gray), ".png"
        if fmt == "tiff":
            return fmt, self.encode(".tiff", img), ".tiff"
        if fmt == "pgm":
            return fmt, self.encode(".pgm", gray), ".pgm"
        return fmt, self.encode(".ppm", img), ".ppm"

    def valid_rgba(self):
        img = self.image()
        alpha = (np.arange(img.shape[0] * img.shape[1], dtype=np.uint32).reshape(img.shape[:2]) * 37 % 256).astype(np.uint8)
        rgba = np.dstack([img, alpha])
        fmt = self.choice(["png", "png16", "webp-lossy", "webp-lossless", "tiff", "bmp"])
        if fmt == "png":
            return fmt, self.encode(".png", rgba), ".png"
        if fmt == "png16":
            return fmt, self.encode(".png", rgba.astype(np.uint16) * 257), ".png"
        if fmt == "webp-lossy":
            return fmt, self.encode(".webp", rgba, [cv2.IMWRITE_WEBP_QUALITY, 80]), ".webp"
        if fmt == "webp-lossless":
            return fmt, self.encode(".webp", rgba, [cv2.IMWRITE_WEBP_QUALITY, 101]), ".webp"
        if fmt == "tiff":
            return fmt, self.encode(".tiff", rgba), ".tiff"
        return fmt, self.encode(".bmp", rgba), ".bmp"

    def tiny(self):
        h, w = self.choice([(1, 1), (1, 0), (0, 1), (2, 1), (1, 2)])
        n = int(self.rng.integers(2, 300))
        h, w = (h or n), (w or n)
        img = _resized(self.rng, self.choice(self.bases), h, w)
        ext = self.choice([".jpg", ".png", ".webp", ".bmp", ".ppm", ".tiff"])
        return f"{w}x{h}", self.encode(ext, img), ext

    def progressive_jpeg(self):
        img = self.image()
        if self.rng.random() < 0.3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        params = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_QUALITY, int(self.rng.integers(30, 100))]
        if self.rng.random() < 0.5:
            params += [cv2.IMWRITE_JPEG_RST_INTERVAL, int(self.rng.integers(1, 8))]
        if self.rng.random() < 0.5:
            params += [cv2.IMWRITE_JPEG_OPTIMIZE, 1]
        return "progressive", self.encode(".jpg", img, params), self.choice([".jpg", ".jpeg", ".jpe"])

    def cmyk_jpeg(self):
        w, h = int(self.rng.integers(1, 200)), int(self.rng.integers(1, 200))
        levels = tuple(int(v) for v in self.rng.integers(-100, 100, 4))
        adobe = bool(self.rng.random() < 0.7)
        return f"cmyk{'-adobe' if adobe else ''}", cmyk_jpeg_bytes(w, h, adobe, levels), ".jpg"

    def exif_jpeg(self):
        img = self.image(8)
        thumb = None
        if self.rng.random() < 0.7:
            thumb = self.encode(".jpg", cv2.resize(img, (max(1, img.shape[1] // 8), max(1, img.shape[0] // 8))), [cv2.IMWRITE_JPEG_QUALITY, 50])
        orientation = int(self.rng.integers(1, 9)) if self.rng.random() < 0.8 else None
        data = jpeg_with_exif(self.encode(".jpg", img), thumb, orientation)
        return f"exif-o{orientation or 0}{'-thumb' if thumb else ''}", data, ".jpg"

    def any_valid(self):
        r = self.rng.random()
        if r < 0.6:
            return self.valid()
        if r < 0.7:
            return self.valid_16bit()
        if r < 0.8:
            return self.valid_rgba()
        if r < 0.9:
            return self.progressive_jpeg()
        return self.exif_jpeg()

    # --- damage -------------------------------------------------------------------------------------------
    def offset(self, n: int) -> int:
        """A random offset in [0, n), half the time inside the first 256 bytes (where the headers are)."""
        if n <= 1:
            return 0
        limit = min(n, 256) if self.rng.random() < 0.5 else n
        return int(self.rng.integers(0, limit))

    def truncated(self):
        detail, data, ext = self.any_valid()
        cut = self.offset(len(data))
        return f"{detail}-cut{cut}", data[:cut], ext

    def bit_flips(self):
        detail, data, ext = self.any_valid()
        b = bytearray(data)
        flips = int(self.rng.integers(1, 9))
        for _ in range(flips):
            p = self.offset(len(b))
            b[p] ^= 1 << int(self.rng.integers(0, 8))
        return f"{detail}-flip{flips}", bytes(b), ext

    def inserted(self):
        detail, data, ext = self.any_valid()
        p, k = self.offset(len(data)), int(self.rng.integers(1, 17))
        return f"{detail}-ins{k}@{p}", data[:p] + self.rng.integers(0, 256, k, dtype=np.uint8).tobytes() + data[p:], ext

    def deleted(self):
        detail, data, ext = self.any_valid()
        p, k = self.offset(len(data)), int(self.rng.integers(1, 17))
        return f"{detail}-del{k}@{p}", data[:p] + data[p + k :], ext

    def size_patched(self, zero: bool):
        img = self.image(8, 96)
        fmt = self.choice(["png", "jpeg", "webp", "bmp", "tiff", "pnm", "hdr"])
        limits = {"png": 0x7FFFFFFF, "jpeg": 0xFFFF, "webp": 1 << 24, "bmp": 0x7FFFFFFF, "tiff": _U32_MAX, "pnm": 10**9, "hdr": 10**9}
        if zero:
            w, h = self.choice([(0, img.shape[0]), (img.shape[1], 0), (0, 0)])
        else:
            top = limits[fmt]
            w = int(self.rng.integers(20000, min(top, 200000) + 1)) if self.rng.random() < 0.7 else top
            h = int(self.rng.integers(20000, min(top, 200000) + 1)) if self.rng.random() < 0.7 else top
        if fmt == "png":
            data = patch_png_ihdr(self.encode(".png", img), w, h)
        elif fmt == "jpeg":
            data = patch_jpeg_sof(self.encode(".jpg", img), w, h)
        elif fmt == "webp" and zero:  # VP8X and VP8L store size - 1: zero the lossy VP8 frame's size fields
            b = bytearray(self.encode(".webp", img, [cv2.IMWRITE_WEBP_QUALITY, 80]))
            b[26:28] = struct.pack("<H", w)
            b[28:30] = struct.pack("<H", h)
            data = bytes(b)
        elif fmt == "webp":
            small = self.encode(".webp", img, [cv2.IMWRITE_WEBP_QUALITY, self.choice([80, 101])])
            data = webp_vp8x(small, w, h)
        elif fmt == "bmp":
            data = patch_bmp_size(self.encode(".bmp", img), w, h if self.rng.random() < 0.5 else -h)
        elif fmt == "tiff":
            data = patch_tiff_size(self.encode(".tiff", img), w, h)
        elif fmt == "pnm":
            data = patch_pnm_size(self.encode(".ppm", img), w, h)
        else:
            data = patch_hdr_size(self.encode(".hdr", img.astype(np.float32) / 255), w, h)
        ext = {"jpeg": ".jpg", "pnm": ".ppm"}.get(fmt, "." + fmt)
        return f"{fmt}-{w}x{h}", data, ext

    def huge_tiny(self):
        which = self.choice(["png", "png16-rgba", "gif", "webp", "heif", "pnm", "jpeg"])
        if which == "png":
            side = int(self.rng.integers(20000, 60001))
            return f"png-{side}", png_bytes(side, side), ".png"
        if which == "png16-rgba":
            return "png16-rgba-20000", png_bytes(20000, 20000, 16, 6), ".png"
        if which == "gif":
            return "gif-65535", gif_bytes(65535, 65535, frame=(1, 1)), ".gif"
        if which == "webp":
            small = self.encode(".webp", np.zeros((1, 1, 3), np.uint8), [cv2.IMWRITE_WEBP_QUALITY, 101])
            return "webp-vp8x-16384", webp_vp8x(small, 16384, 16384), ".webp"
        if which == "heif":
            return "avif-100000", isobmff_image_bytes(100000, 100000, b"avif", (b"mif1", b"avif")), ".avif"
        if which == "pnm":
            return "pgm-100000", b"P5\n100000 100000\n255\n" + bytes(64), ".pgm"
        return "jpeg-cmyk-65535", patch_jpeg_sof(cmyk_jpeg_bytes(16, 16), 65535, 65535), ".jpg"

    def wrong_suffix(self):
        which = self.choice(["jpeg-as-png", "png-as-jpg", "text-as-jpg", "webp-as-bmp"])
        img = self.image()
        if which == "jpeg-as-png":
            return which, self.encode(".jpg", img), ".png"
        if which == "png-as-jpg":
            return which, self.encode(".png", img), ".jpg"
        if which == "webp-as-bmp":
            return which, self.encode(".webp", img), ".bmp"
        text = b"This is not an image.\n" * int(self.rng.integers(1, 50))
        return which, text, ".jpg"

    def random_bytes(self):
        n = int(self.rng.integers(1, 4096))
        data = self.rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        return f"noise{n}", data, self.choice([".jpg", ".png", ".webp", ".bmp", ".tif", ".ppm", ".jp2"])

    def empty(self):
        return "empty", b"", self.choice([".jpg", ".png", ".webp", ".bmp", ".tif", ".pgm"])

    def foreign(self):
        which = self.choice(["gif", "gif-screen", "heif", "avif", "exr", "jxl", "qoi"])
        img = self.image(1, 64)
        if which == "gif":
            return which, gif_bytes(img.shape[1], img.shape[0], pattern=int(self.rng.integers(0, 4))), ".gif"
        if which == "gif-screen":  # a frame smaller than the logical screen
            return which, gif_bytes(img.shape[1] + 5, img.shape[0] + 3, frame=(img.shape[1], img.shape[0])), ".gif"
        if which == "heif":
            return which, isobmff_image_bytes(img.shape[1], img.shape[0]), ".heic"
        if which == "avif":
            return which, isobmff_image_bytes(img.shape[1], img.shape[0], b"avif", (b"mif1", b"avif"), alpha=bool(self.rng.random() < 0.5)), ".avif"
        if which == "exr":
            return which, exr_header_bytes(img.shape[1], img.shape[0]), ".exr"
        if which == "jxl":
            return which, jxl_codestream_header(img.shape[1], img.shape[0]), ".jxl"
        return which, qoi_bytes(img), ".qoi"


def malformed_images(seed: int, count: int, base_images: list[np.ndarray]) -> Iterator[tuple[str, bytes, str]]:
    """Yield ``count`` (file name with suffix, file bytes, kind) triples; kinds are ``IMAGE_KINDS``.

    ``base_images`` (BGR or grey uint8 arrays) are shrunk to 320 px once, then cropped and resized to at
    most 160 x 160 (300 x 2 for the thin ones) before encoding, so a few hundred items take a second or two to make and decode. The same seed (and base
    images) gives the same names and bytes.
    """
    rng = np.random.default_rng(seed)
    maker = _ImageMaker(rng, base_images)
    makers: dict[str, Callable[[], tuple[str, bytes, str]]] = {
        "valid": maker.valid,
        "valid-16bit": maker.valid_16bit,
        "valid-rgba": maker.valid_rgba,
        "tiny": maker.tiny,
        "progressive-jpeg": maker.progressive_jpeg,
        "cmyk-jpeg": maker.cmyk_jpeg,
        "exif-jpeg": maker.exif_jpeg,
        "truncated": maker.truncated,
        "bit-flips": maker.bit_flips,
        "inserted-bytes": maker.inserted,
        "deleted-bytes": maker.deleted,
        "bomb": lambda: maker.size_patched(zero=False),
        "zero-size": lambda: maker.size_patched(zero=True),
        "huge-tiny-file": maker.huge_tiny,
        "wrong-suffix": maker.wrong_suffix,
        "random-bytes": maker.random_bytes,
        "empty": maker.empty,
        "foreign-format": maker.foreign,
    }
    assert set(makers) == set(IMAGE_KINDS)
    order: list[str] = []
    for i in range(count):
        if not order:
            order = [IMAGE_KINDS[j] for j in rng.permutation(len(IMAGE_KINDS))]
        kind = order.pop()
        detail, data, ext = makers[kind]()
        yield f"{i:05d}_{kind}_{_safe(detail)}{ext}", data, kind


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in text)


# ==========================================================================================================
# Videos

_EBML_MASTERS = {
    0x18538067,  # Segment
    0x114D9B74,  # SeekHead
    0x4DBB,  # Seek
    0x1549A966,  # Info
    0x1654AE6B,  # Tracks
    0xAE,  # TrackEntry
    0xE0,  # Video
    0x1F43B675,  # Cluster
    0x1C53BB6B,  # Cues
    0xBB,  # CuePoint
    0xB7,  # CueTrackPositions
    0x1254C367,  # Tags
    0x7373,  # Tag
    0x63C0,  # Targets
    0x67C8,  # SimpleTag
    0x1043A770,  # Chapters
    0x1941A469,  # Attachments
}
_EBML_RANDOM = {0x73A4, 0x73C5, 0x4461, 0x63C5, 0x73C4, 0x6624}  # SegmentUID, TrackUID, DateUTC, TagTrackUID, ChapterUID, TrackTranslateEditionUID


def _vint(data: bytes, pos: int, keep_marker: bool) -> tuple[int, int]:
    first = data[pos]
    length = 1
    while length <= 8 and not first & (0x80 >> (length - 1)):
        length += 1
    if length > 8 or pos + length > len(data):
        raise ValueError("bad EBML variable-length integer")
    value = first if keep_marker else first & (0xFF >> length)
    for b in data[pos + 1 : pos + length]:
        value = (value << 8) | b
    unknown = not keep_marker and value == (1 << (7 * length)) - 1
    return (-1 if unknown else value), length


def normalize_matroska(data: bytes) -> bytes:
    """Matroska bytes with the random UIDs and the date FFmpeg writes replaced by fixed values and the
    CRC-32 elements recomputed, so that two writes of the same frames give identical files."""
    b = bytearray(data)

    def walk(start: int, end: int) -> None:
        pos, crc_at = start, None
        while pos < end:
            eid, n1 = _vint(b, pos, True)
            size, n2 = _vint(b, pos + n1, False)
            payload = pos + n1 + n2
            stop = end if size < 0 else min(payload + size, end)
            if eid == 0xBF and size == 4 and pos == start:
                crc_at = payload
            elif eid in _EBML_RANDOM:
                b[payload:stop] = bytes(range(1, stop - payload + 1)) if eid != 0x4461 else bytes(stop - payload)
            elif eid in _EBML_MASTERS:
                walk(payload, stop)
            pos = stop
        if crc_at is not None:
            b[crc_at : crc_at + 4] = struct.pack("<I", zlib.crc32(bytes(b[crc_at + 4 : end])))

    pos = 0
    while pos < len(b):
        eid, n1 = _vint(b, pos, True)
        size, n2 = _vint(b, pos + n1, False)
        payload = pos + n1 + n2
        stop = len(b) if size < 0 else min(payload + size, len(b))
        if eid == 0x18538067:
            walk(payload, stop)
        pos = stop
    return bytes(b)


def overcount(data: bytes, suffix: str, factor: int = 3) -> bytes:
    """An intact clip whose container announces ``factor`` times its frames: the AVI main and stream headers'
    frame counts (and OpenDML's), or the Matroska Info duration (OpenCV's count is duration x fps)."""
    b = bytearray(data)
    if suffix == ".avi":
        for tag, offset in ((b"avih", 16), (b"strh", 32), (b"dmlh", 0)):
            pos = b.find(tag)
            if pos >= 0:
                at = pos + 8 + offset
                struct.pack_into("<I", b, at, struct.unpack_from("<I", b, at)[0] * factor)
        return bytes(b)
    if suffix == ".mkv":
        pos = b.find(b"\x44\x89")  # Duration (float, in TimestampScale units)
        if pos < 0:
            raise ValueError("no Matroska Duration element")
        if b[pos + 2] == 0x88:
            struct.pack_into(">d", b, pos + 3, struct.unpack_from(">d", b, pos + 3)[0] * factor)
        elif b[pos + 2] == 0x84:
            struct.pack_into(">f", b, pos + 3, struct.unpack_from(">f", b, pos + 3)[0] * factor)
        else:
            raise ValueError("unexpected Matroska Duration size")
        return bytes(b)
    raise ValueError(f"overcount: unsupported suffix {suffix}")


def _mp4_without(data: bytes, drop: bytes) -> bytes:
    out, pos = bytearray(), 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        if size == 1:
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
        elif size == 0:
            size = len(data) - pos
        if size < 8:
            break
        if data[pos + 4 : pos + 8] != drop:
            out += data[pos : pos + size]
        pos += size
    return bytes(out)


class _Clips:
    """The clips derived from the source video, made once per generator and kept as bytes."""

    def __init__(self, source_video: Path, workdir: Path, frames: int = 12, width: int = 160) -> None:
        self.source, self.workdir, self.frames, self.width = source_video, workdir, frames, width
        self._cache: dict[str, bytes] = {}
        self._frames: list[np.ndarray] | None = None

    def frame_list(self) -> list[np.ndarray]:
        if self._frames is None:
            cap = cv2.VideoCapture(str(self.source))
            frames = []
            try:
                while len(frames) < self.frames:
                    ok, frame = cap.read()
                    if not ok:
                        break
                    h, w = frame.shape[:2]
                    height = max(2, round(h * self.width / w / 2) * 2)
                    frames.append(cv2.resize(frame, (self.width, height), interpolation=cv2.INTER_AREA))
            finally:
                cap.release()
            if not frames:
                raise RuntimeError(f"cannot read frames from {self.source}")
            self._frames = frames
        return self._frames

    def write(self, key: str, suffix: str, fourcc: str, n: int | None = None) -> bytes:
        if key not in self._cache:
            frames = self.frame_list()
            path = self.workdir / f".clip-{key}{suffix}"
            h, w = frames[0].shape[:2]
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, (w, h))
            try:
                if not writer.isOpened():
                    raise RuntimeError(f"cv2.VideoWriter cannot write {fourcc} {suffix} here")
                for frame in frames[: len(frames) if n is None else n]:
                    writer.write(frame)
            finally:
                writer.release()
            data = path.read_bytes() if path.exists() else b""
            path.unlink(missing_ok=True)
            self._cache[key] = normalize_matroska(data) if suffix == ".mkv" else data
        return self._cache[key]

    def avi(self) -> bytes:
        return self.write("mjpg-avi", ".avi", "MJPG")

    def mp4(self) -> bytes:
        return self.write("mp4v-mp4", ".mp4", "mp4v")

    def mkv(self) -> bytes:
        return self.write("mjpg-mkv", ".mkv", "MJPG")

    def source_bytes(self) -> bytes:
        if "source" not in self._cache:
            self._cache["source"] = Path(self.source).read_bytes()
        return self._cache["source"]


def malformed_videos(seed: int, count: int, source_video: Path, workdir: Path) -> Iterator[tuple[str, Path, str]]:
    """Write ``count`` damaged or edge-case video files into ``workdir``; yield (file name, path, kind).

    Kinds are ``VIDEO_KINDS``. Short clips (12 frames, 160 px wide) are made from the first frames of
    ``source_video`` with ``cv2.VideoWriter``; truncated MP4s come from both the source and the clip.
    The same seed (and source) gives the same bytes.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    clips = _Clips(Path(source_video), workdir)

    def cut(data: bytes) -> tuple[bytes, int]:
        if rng.random() < 0.3:
            point = int(rng.integers(0, min(len(data), 512)))
        else:
            point = int(rng.integers(1, len(data)))
        return data[:point], point

    order: list[str] = []
    for i in range(count):
        if not order:
            order = [VIDEO_KINDS[j] for j in rng.permutation(len(VIDEO_KINDS))]
        kind = order.pop()
        suffix, detail = ".mp4", ""
        if kind == "valid-avi":
            data, suffix = clips.avi(), ".avi"
        elif kind == "valid-mp4":
            data = clips.mp4()
        elif kind == "zero-frames-avi":
            data, suffix = clips.write("empty-avi", ".avi", "MJPG", 0), ".avi"
        elif kind == "zero-frames-mp4":
            data = clips.write("empty-mp4", ".mp4", "mp4v", 0)
        elif kind == "truncated-mp4":
            from_source = bool(rng.random() < 0.5)
            data, point = cut(clips.source_bytes() if from_source else clips.mp4())
            detail = f"{'source' if from_source else 'clip'}-cut{point}"
        elif kind == "truncated-avi":
            data, point = cut(clips.avi())
            suffix, detail = ".avi", f"cut{point}"
        elif kind == "truncated-mkv":
            data, point = cut(clips.mkv())
            suffix, detail = ".mkv", f"cut{point}"
        elif kind == "corrupt-middle":
            which = ["mp4", "avi", "mkv"][int(rng.integers(3))]
            src = {"mp4": clips.mp4, "avi": clips.avi, "mkv": clips.mkv}[which]()
            b = bytearray(src)
            n = int(rng.integers(16, max(17, min(4096, len(b) // 4))))
            start = int(rng.integers(len(b) // 4, max(len(b) // 4 + 1, 3 * len(b) // 4 - n)))
            b[start : start + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            data, suffix, detail = bytes(b), "." + which, f"{n}@{start}"
        elif kind == "no-moov":
            from_source = bool(rng.random() < 0.5)
            data = _mp4_without(clips.source_bytes() if from_source else clips.mp4(), b"moov")
            detail = "source" if from_source else "clip"
        elif kind in ("overcount-avi", "overcount-mkv"):
            suffix = "." + kind.split("-")[1]
            data = overcount(clips.avi() if suffix == ".avi" else clips.mkv(), suffix)
        elif kind == "image-as-mp4":
            frame = clips.frame_list()[int(rng.integers(len(clips.frame_list())))]
            data = cv2.imencode(".jpg", frame)[1].tobytes()
        else:  # empty-mp4
            data = b""
        name = f"{i:04d}_{kind}{'_' + detail if detail else ''}{suffix}"
        path = workdir / name
        path.write_bytes(data)
        yield name, path, kind


# ==========================================================================================================
# Folder hazards: what a camera folder, a NAS share or a careless script leaves next to the images

SPECIAL_ENTRY_KINDS = (
    "dir-named-jpg",  # a directory whose name has an image suffix
    "broken-symlink",
    "symlink-loop",  # a link to itself
    "symlink-loop-pair",  # a -> b -> a
    "fifo",  # a named pipe: opening it for reading would block forever
    "dev-zero",  # a link to /dev/zero: reading it never ends
    "dev-null",  # a link to /dev/null: a character device that reads as empty
    "dir-symlink",  # a link to a directory
    "socket",  # a Unix socket
    "sparse-huge",  # a 4 GiB sparse file that starts like a small JPEG
    "long-name",  # a 250-byte name
    "non-utf8-name",  # bytes that are not UTF-8
    "control-chars-name",  # newline, carriage return, ESC in the name
    "symlink-to-image",
    "hardlink",
    "gif",  # formats OpenCV decodes here (GIF, AVIF, HDR) or not (HEIF)
    "avif",
    "hdr",
    "heif",
)
SPECIAL_OK = frozenset({"long-name", "non-utf8-name", "control-chars-name", "symlink-to-image", "hardlink", "gif", "avif", "hdr"})


def special_entries(folder: Path, image: np.ndarray) -> list[tuple[str, str]]:
    """Create one entry of each ``SPECIAL_ENTRY_KINDS`` in ``folder`` (names with image suffixes) from a BGR
    ``image``; returns (entry name, kind). Kinds in ``SPECIAL_OK`` are usable images, the others are not.
    AVIF is skipped when this OpenCV build cannot write it. Needs a POSIX file system (FIFOs, sockets)."""
    import os
    import socket

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    made: list[tuple[str, str]] = []

    def add(name: str, kind: str) -> None:
        made.append((name, kind))

    (folder / "album.jpg").mkdir(exist_ok=True)
    add("album.jpg", "dir-named-jpg")
    os.symlink("does-not-exist.jpg", folder / "broken.png")
    add("broken.png", "broken-symlink")
    os.symlink("loop.jpg", folder / "loop.jpg")
    add("loop.jpg", "symlink-loop")
    os.symlink("loop_b.jpg", folder / "loop_a.jpg")
    os.symlink("loop_a.jpg", folder / "loop_b.jpg")
    add("loop_a.jpg", "symlink-loop-pair")
    add("loop_b.jpg", "symlink-loop-pair")
    os.mkfifo(folder / "pipe.jpg")
    add("pipe.jpg", "fifo")
    os.symlink("/dev/zero", folder / "zero.jpg")
    add("zero.jpg", "dev-zero")
    os.symlink("/dev/null", folder / "null.png")
    add("null.png", "dev-null")
    os.symlink(".", folder / "here.png")
    add("here.png", "dir-symlink")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(folder / "sock.jpg"))
        add("sock.jpg", "socket")
    except OSError:
        pass
    finally:
        sock.close()
    with open(folder / "huge.jpg", "wb") as fh:
        fh.write(jpeg)
        fh.truncate(4 << 30)
    add("huge.jpg", "sparse-huge")
    long_name = "l" * 246 + ".jpg"
    (folder / long_name).write_bytes(jpeg)
    add(long_name, "long-name")
    odd = os.fsdecode(b"caf\xe9-\xff\xfe.jpg")
    (folder / odd).write_bytes(jpeg)
    add(odd, "non-utf8-name")
    evil = "evil\n\x1b[31mred\r\u202e.jpg"
    (folder / evil).write_bytes(jpeg)
    add(evil, "control-chars-name")
    (folder / "target_image.bin").write_bytes(jpeg)  # not an image suffix: not an input itself
    os.symlink("target_image.bin", folder / "linked.jpg")
    add("linked.jpg", "symlink-to-image")
    os.link(folder / "target_image.bin", folder / "hard.jpg")
    add("hard.jpg", "hardlink")
    small = cv2.resize(image, (96, 96), interpolation=cv2.INTER_AREA)
    (folder / "anim.gif").write_bytes(gif_bytes(48, 32, pattern=1))
    add("anim.gif", "gif")
    ok, avif = cv2.imencode(".avif", small) if cv2.haveImageWriter("x.avif") else (False, None)
    if ok:
        (folder / "photo.avif").write_bytes(avif.tobytes())
        add("photo.avif", "avif")
    (folder / "light.hdr").write_bytes(cv2.imencode(".hdr", small.astype(np.float32) / 255)[1].tobytes())
    add("light.hdr", "hdr")
    (folder / "phone.heic").write_bytes(isobmff_image_bytes(96, 96))
    add("phone.heic", "heif")
    return made


# ==========================================================================================================
# Network streams that misbehave: a local TCP server per mode


class TcpServer:
    """A local TCP server for stream tests: ``with TcpServer("silent") as port: ...``.

    Modes: ``silent`` accepts and never sends; ``garbage`` sends random bytes forever; ``stall`` sends
    ``payload`` then keeps the connection open without sending; ``close`` sends ``payload`` and closes."""

    def __init__(self, mode: str, payload: bytes = b"", seed: int = 0) -> None:
        if mode not in ("silent", "garbage", "stall", "close"):
            raise ValueError(f"unknown mode {mode!r}")
        self.mode, self.payload, self.seed = mode, payload, seed
        self._connections: list = []

    def __enter__(self) -> int:
        import socket
        import threading

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        return self._sock.getsockname()[1]

    def _accept(self) -> None:
        import threading

        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn) -> None:
        rng = np.random.default_rng(self.seed)
        try:
            if self.mode == "garbage":
                while not self._stop.is_set():
                    conn.sendall(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
                    self._stop.wait(0.005)
            elif self.mode in ("stall", "close"):
                conn.sendall(self.payload)
                if self.mode == "close":
                    conn.close()
                    return
            self._stop.wait()
        except OSError:
            pass

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for conn in [self._sock, *self._connections]:
            try:
                conn.close()
            except OSError:
                pass
        self._thread.join(timeout=2)


__all__ += ["SPECIAL_ENTRY_KINDS", "SPECIAL_OK", "special_entries", "TcpServer"]
