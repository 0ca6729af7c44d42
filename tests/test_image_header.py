"""runtime/image_header.py: the declared size of every format, as OpenCV decodes it, before decoding.

Real files come from ``cv2.imencode`` (and ``cv2.imencodeanimation``) in every format this OpenCV build
writes; formats it cannot write are built by hand. Bombs must be refused from the header alone, and
truncated or mutated headers may only give None, a correct header or ``ImageHeaderError``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")  # before cv2 is imported (no effect if already imported)

import struct
import time
import zlib

import cv2
import numpy as np
import pytest

from tddfa_edge.benchmarks.fuzz_inputs import (
    cmyk_jpeg_bytes,
    exr_header_bytes,
    gif_bytes,
    isobmff_image_bytes,
    jpeg_sof_offset,
    jpeg_with_exif,
    jxl_codestream_header,
    patch_jpeg_sof,
    patch_png_ihdr,
    png_bytes,
    png_chunk,
    qoi_bytes,
    webp_vp8x,
)
from tddfa_edge.runtime.image_header import ImageHeader, ImageHeaderError, read_image_header, sniff_format

# What the runtime decodes with (runtime/frames.py): keeps depth and grey, applies the EXIF orientation.
PIPELINE_FLAGS = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH
SIZES = [(1, 1), (3, 7), (481, 640)]  # (height, width)
JP2_SIZES = [(32, 45), (481, 640)]  # OpenJPEG's encoder refuses images smaller than its 6 resolution levels


def _image(h: int, w: int, channels: int, depth: type = np.uint8, seed: int = 0) -> np.ndarray:
    """A smooth gradient with a little noise (fast to encode, not flat)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = (x * 200 // max(w - 1, 1) + y * 50 // max(h - 1, 1)).astype(np.int32)
    img = np.stack([(base + 70 * c) % 256 for c in range(channels)], axis=-1) + rng.integers(0, 6, (h, w, channels))
    img = np.clip(img, 0, 255).astype(np.uint8)
    if depth == np.uint16:
        img = img.astype(np.uint16) * 257
    elif depth == np.float32:
        img = img.astype(np.float32) / 255.0
    return img[:, :, 0] if channels == 1 else img


# id: (extension, channels, dtype, imencode params, check channel count, sizes)
VARIANTS = {
    "png-gray8": (".png", 1, np.uint8, [], True, SIZES),
    "png-bgr8": (".png", 3, np.uint8, [], True, SIZES),
    "png-bgra8": (".png", 4, np.uint8, [], True, SIZES),
    "png-gray16": (".png", 1, np.uint16, [], True, SIZES),
    "png-bgr16": (".png", 3, np.uint16, [], True, SIZES),
    "png-bgra16": (".png", 4, np.uint16, [], True, SIZES),
    "jpg-baseline": (".jpg", 3, np.uint8, [cv2.IMWRITE_JPEG_QUALITY, 90], True, SIZES),
    "jpg-gray": (".jpg", 1, np.uint8, [], True, SIZES),
    "jpg-progressive": (".jpg", 3, np.uint8, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], True, SIZES),
    "jpg-progressive-gray": (".jpg", 1, np.uint8, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], True, SIZES),
    "jpg-restart-optimized": (".jpg", 3, np.uint8, [cv2.IMWRITE_JPEG_RST_INTERVAL, 2, cv2.IMWRITE_JPEG_OPTIMIZE, 1], True, SIZES),
    "webp-lossy": (".webp", 3, np.uint8, [cv2.IMWRITE_WEBP_QUALITY, 80], True, SIZES),
    "webp-lossless": (".webp", 3, np.uint8, [cv2.IMWRITE_WEBP_QUALITY, 101], True, SIZES),
    "webp-lossy-alpha": (".webp", 4, np.uint8, [cv2.IMWRITE_WEBP_QUALITY, 80], True, SIZES),  # VP8X + ALPH
    "webp-lossless-alpha": (".webp", 4, np.uint8, [cv2.IMWRITE_WEBP_QUALITY, 101], True, SIZES),
    "bmp-bgr": (".bmp", 3, np.uint8, [], True, SIZES),
    "bmp-gray": (".bmp", 1, np.uint8, [], True, SIZES),  # 8-bit with a grey palette
    "bmp-bgra": (".bmp", 4, np.uint8, [], True, SIZES),
    "tiff-bgr8": (".tiff", 3, np.uint8, [], True, SIZES),
    "tiff-gray8": (".tiff", 1, np.uint8, [], True, SIZES),
    "tiff-bgra8": (".tiff", 4, np.uint8, [], True, SIZES),
    "tiff-bgr16": (".tiff", 3, np.uint16, [], True, SIZES),
    "tiff-gray16": (".tiff", 1, np.uint16, [], True, SIZES),
    "pbm": (".pbm", 1, np.uint8, [], True, SIZES),
    "pgm8": (".pgm", 1, np.uint8, [], True, SIZES),
    "pgm16": (".pgm", 1, np.uint16, [], True, SIZES),
    "ppm8": (".ppm", 3, np.uint8, [], True, SIZES),
    "ppm16": (".ppm", 3, np.uint16, [], True, SIZES),
    "pam-rgb": (".pam", 3, np.uint8, [cv2.IMWRITE_PAM_TUPLETYPE, cv2.IMWRITE_PAM_FORMAT_RGB], True, SIZES),
    "pam-gray": (".pam", 1, np.uint8, [cv2.IMWRITE_PAM_TUPLETYPE, cv2.IMWRITE_PAM_FORMAT_GRAYSCALE], True, SIZES),
    "pam-rgba": (".pam", 4, np.uint8, [cv2.IMWRITE_PAM_TUPLETYPE, cv2.IMWRITE_PAM_FORMAT_RGB_ALPHA], True, SIZES),
    "jp2-bgr": (".jp2", 3, np.uint8, [], True, JP2_SIZES),
    "jp2-gray": (".jp2", 1, np.uint8, [], True, JP2_SIZES),
    "jp2-bgr16": (".jp2", 3, np.uint16, [], True, JP2_SIZES),
    "hdr": (".hdr", 3, np.float32, [], True, SIZES),
    "ras-bgr": (".ras", 3, np.uint8, [], True, SIZES),
    "ras-gray": (".ras", 1, np.uint8, [], True, SIZES),
    "pfm-bgr": (".pfm", 3, np.float32, [], True, SIZES),
    "pfm-gray": (".pfm", 1, np.float32, [], True, SIZES),
    "gif": (".gif", 3, np.uint8, [], False, SIZES),  # palette: OpenCV decodes 3 or 4 (transparency) channels
    "avif-bgr": (".avif", 3, np.uint8, [], True, SIZES),
    "avif-bgra": (".avif", 4, np.uint8, [], True, SIZES),
    "avif-gray": (".avif", 1, np.uint8, [], True, SIZES),
    "avif-12bit": (".avif", 3, np.uint16, [cv2.IMWRITE_AVIF_DEPTH, 12], True, SIZES),
}
# OpenEXR is not among them: the opencv-python-headless wheels ship no EXR encoder; test_exr checks hand-made headers.
FORMAT_OF = {".png": "PNG", ".jpg": "JPEG", ".webp": "WebP", ".bmp": "BMP", ".tiff": "TIFF", ".pbm": "PNM", ".pgm": "PNM",
             ".ppm": "PNM", ".pam": "PNM", ".jp2": "JPEG 2000", ".hdr": "HDR", ".ras": "Sun raster", ".pfm": "PFM",
             ".gif": "GIF", ".avif": "AVIF", ".exr": "EXR"}

_ENCODED: dict[tuple[str, tuple[int, int]], bytes | None] = {}


def encoded(variant: str, size: tuple[int, int]) -> bytes | None:
    """The variant encoded at ``size`` by cv2.imencode, or None when this build cannot write it."""
    key = (variant, size)
    if key not in _ENCODED:
        ext, channels, depth, params, _, _ = VARIANTS[variant]
        img = _image(*size, channels, depth)
        if variant == "avif-12bit":
            img = img >> 4
        if variant == "pbm":
            img = np.where(img > 127, 255, 0).astype(np.uint8)
        try:
            ok, buf = cv2.imencode(ext, img, params)
        except cv2.error:
            ok = False
        _ENCODED[key] = buf.tobytes() if ok else None
    return _ENCODED[key]


def all_encoded() -> list[tuple[str, tuple[int, int], bytes]]:
    return [(v, s, data) for v, spec in VARIANTS.items() for s in spec[5] if (data := encoded(v, s)) is not None]


def _decode(data: bytes, flags: int = cv2.IMREAD_UNCHANGED):
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        return None


def _channels(img: np.ndarray) -> int:
    return 1 if img.ndim == 2 else img.shape[2]


def _check_matches_decoder(data: bytes, fmt: str | None = None, check_channels: bool = True) -> ImageHeader:
    header = read_image_header(data)
    decoded = _decode(data)
    assert decoded is not None, "OpenCV could not decode the reference file"
    assert header is not None
    assert (header.height, header.width) == decoded.shape[:2]
    if fmt:
        assert header.format == fmt
    assert sniff_format(data) == header.format
    if check_channels:
        assert header.channels == _channels(decoded)
    if decoded.dtype == np.uint16:
        assert header.bits_per_sample is not None and 8 < header.bits_per_sample <= 16
    assert header.decoded_bytes() >= decoded.nbytes  # a worst case, never an underestimate
    return header


# ----------------------------------------------------------------------------------------------------------
# Real files from cv2.imencode


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_declared_size_matches_what_opencv_decodes(variant):
    ext, _, _, _, check_channels, sizes = VARIANTS[variant]
    made = [(size, encoded(variant, size)) for size in sizes]
    made = [(size, data) for size, data in made if data is not None]
    if not made:
        pytest.skip(f"this OpenCV build cannot write {variant} ({ext})")
    for size, data in made:
        header = _check_matches_decoder(data, FORMAT_OF[ext], check_channels)
        assert (header.height, header.width) == size
        if variant.endswith("16"):
            assert header.bits_per_sample == 16


def test_animations_report_the_canvas_size():
    """APNG, animated WebP (VP8X + ANIM), GIF and AVIF sequences ('avis'): the size of the first frame's canvas."""
    anim = cv2.Animation()
    anim.frames = [_image(21, 34, 3, seed=i) for i in range(3)]
    anim.durations = [100, 100, 100]
    for ext, fmt in ((".png", "PNG"), (".webp", "WebP"), (".gif", "GIF"), (".avif", "AVIF")):
        ok, buf = cv2.imencodeanimation(ext, anim)
        assert ok, ext
        header = _check_matches_decoder(buf.tobytes(), fmt, check_channels=fmt != "GIF")
        assert (header.width, header.height) == (34, 21)


def test_exr():
    """OpenEXR from hand-made headers (dataWindow box2i): the OpenCV wheels cannot write EXR."""
    header = read_image_header(exr_header_bytes(640, 481, b"BGR", pixel_type=1, x0=-5, y0=10))
    assert header == ImageHeader("EXR", 640, 481, 3, 16)
    assert header.decoded_bytes() == 640 * 481 * 3 * 4  # OpenCV decodes EXR to float32
    assert read_image_header(exr_header_bytes(7, 3, b"ABGR", pixel_type=2)) == ImageHeader("EXR", 7, 3, 4, 32)
    with pytest.raises(ImageHeaderError):
        read_image_header(exr_header_bytes(0, 3))


# ----------------------------------------------------------------------------------------------------------
# Hand-made files for what OpenCV cannot write (or not that way)


def _tiff_bytes(width, height, spp=3, bits=8, big_endian=False, bigtiff=False, pixels: bytes | None = None) -> bytes:
    """An uncompressed one-strip TIFF or BigTIFF with ImageWidth LONG, ImageLength SHORT and BitsPerSample
    stored out of line when it does not fit the entry."""
    e = ">" if big_endian else "<"
    data = pixels if pixels is not None else bytes(range(256)) * (width * height * spp * bits // 8 // 256 + 1)
    data = data[: width * height * spp * bits // 8]
    entry, inline, count_fmt, off_fmt = (20, 8, "Q", "Q") if bigtiff else (12, 4, "H", "I")
    tags = [(256, 4, [width]), (257, 3, [height]), (258, 3, [bits] * spp), (259, 3, [1]), (262, 3, [2 if spp >= 3 else 1]),
            (273, 4, [0]), (277, 3, [spp]), (278, 4, [height]), (279, 4, [len(data)])]
    header = (b"MM" if big_endian else b"II") + (struct.pack(e + "HHHQ", 43, 8, 0, 16) if bigtiff else struct.pack(e + "HI", 42, 8))
    ifd_at = len(header)
    ifd_size = struct.calcsize(e + count_fmt) + entry * len(tags) + struct.calcsize(e + off_fmt)
    extra_at = ifd_at + ifd_size
    extra = b""
    values = []
    for tag, typ, vals in tags:
        raw = b"".join(struct.pack(e + ("H" if typ == 3 else "I"), v) for v in vals)
        if len(raw) > inline:
            values.append((tag, typ, len(vals), struct.pack(e + off_fmt, extra_at + len(extra))))
            extra += raw
        else:
            values.append((tag, typ, len(vals), raw.ljust(inline, b"\0")))
    strip_at = extra_at + len(extra)
    ifd = struct.pack(e + count_fmt, len(tags))
    for tag, typ, n, raw in values:
        if tag == 273:
            raw = struct.pack(e + "I", strip_at).ljust(inline, b"\0")
        ifd += struct.pack(e + "HH" + ("Q" if bigtiff else "I"), tag, typ, n) + raw
    ifd += struct.pack(e + off_fmt, 0)
    return header + ifd + extra + data


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("bigtiff", [False, True])
def test_tiff_by_hand(big_endian, bigtiff):
    data = _tiff_bytes(13, 5, spp=3, big_endian=big_endian, bigtiff=bigtiff)
    assert read_image_header(data) == ImageHeader("TIFF", 13, 5, 3, 8)
    decoded = _decode(data)
    if decoded is not None:  # libtiff reads both byte orders and BigTIFF
        assert decoded.shape == (5, 13, 3)
    assert read_image_header(_tiff_bytes(70000, 3, spp=1, bits=16, big_endian=big_endian, bigtiff=bigtiff, pixels=b"")) == ImageHeader(
        "TIFF", 70000, 3, 1, 16
    )


def test_bmp_core_header():
    """BITMAPCOREHEADER (OS/2 1.x): 12-byte DIB header, unsigned 16-bit width and height.

    OpenCV decodes every core-header BMP to one grey channel (its reader never marks them colour); the
    header reports the 3 channels the file declares, the worst case for the budget."""
    w, h = 5, 3
    row = bytes(range(w * 3)) + bytes(-w * 3 % 4)
    pixels = row * h
    header = b"BM" + struct.pack("<IHHI", 26 + len(pixels), 0, 0, 26) + struct.pack("<IHHHH", 12, w, h, 1, 24)
    data = header + pixels
    assert read_image_header(data) == ImageHeader("BMP", 5, 3, 3, 8)
    _check_matches_decoder(data, "BMP", check_channels=False)
    assert _decode(data).ndim == 2


def test_bmp_top_down_and_palette():
    data = bytearray(encoded("bmp-bgr", (3, 7)))
    data[22:26] = struct.pack("<i", -3)  # negative height: rows stored top-down
    assert read_image_header(bytes(data)) == ImageHeader("BMP", 7, 3, 3, 8)
    _check_matches_decoder(bytes(data), "BMP")
    gray = read_image_header(encoded("bmp-gray", (3, 7)))
    assert (gray.channels, gray.bits_per_sample) == (1, 8)
    colour = bytearray(encoded("bmp-gray", (3, 7)))
    colour[54 + 4 * 10] ^= 0x40  # one palette entry no longer grey: OpenCV decodes to BGR
    _check_matches_decoder(bytes(colour), "BMP")
    assert read_image_header(bytes(colour)).channels == 3


def test_webp_vp8x_canvas():
    for variant in ("webp-lossless", "webp-lossy"):
        simple = encoded(variant, (3, 7))
        extended = webp_vp8x(simple, 7, 3)
        header = _check_matches_decoder(extended, "WebP")
        assert (header.width, header.height, header.channels) == (7, 3, 3)
    assert read_image_header(webp_vp8x(simple, 1 << 24, 1 << 24)) == ImageHeader("WebP", 1 << 24, 1 << 24, 3, 8)
    assert read_image_header(webp_vp8x(simple, 16, 9, flags=0x10)).channels == 4  # alpha flag


def test_gif_logical_screen():
    """OpenCV's GIF decoder returns the logical screen, with a smaller first frame drawn into it."""
    data = gif_bytes(10, 8, frame=(4, 3))
    assert read_image_header(data) == ImageHeader("GIF", 10, 8, None, 8)
    decoded = _decode(data)
    if decoded is not None:  # GIF decoding is optional in OpenCV builds
        assert decoded.shape[:2] == (8, 10)
    assert read_image_header(gif_bytes(65535, 65535, frame=(1, 1))).pixels == 65535 * 65535
    with pytest.raises(ImageHeaderError, match="empty image"):
        read_image_header(gif_bytes(0, 8, frame=(0, 0)))


def test_heif_and_avif_boxes():
    heic = isobmff_image_bytes(4032, 3024, b"heic", (b"mif1", b"heic"), tiles=((512, 512),) * 3)
    assert sniff_format(heic) == "HEIF"
    assert read_image_header(heic) == ImageHeader("HEIF", 4032, 3024, 3, 8)
    # the largest 'ispe' wins wherever it is (a grid's tiles may come first)
    tiles_first = isobmff_image_bytes(512, 512, b"mif1", (b"mif1", b"heic"), tiles=((8000, 6000), (256, 256)))
    assert read_image_header(tiles_first) == ImageHeader("HEIF", 8000, 6000, 3, 8)
    avif = isobmff_image_bytes(33, 17, b"avif", (b"mif1", b"avif"), depths=(10, 10, 10), alpha=True)
    assert read_image_header(avif) == ImageHeader("AVIF", 33, 17, 4, 10)
    assert read_image_header(avif).decoded_bytes() == 33 * 17 * 4 * 2
    assert _decode(avif) is None  # boxes without image data: the decoder refuses, the header still tells
    with pytest.raises(ImageHeaderError, match="ispe"):
        read_image_header(isobmff_image_bytes(0, 17, b"avif", (b"avif",)))
    # an ISO BMFF video is not an image format this module claims
    assert read_image_header(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(64)) is None


def test_jpeg_exif_thumbnail_and_orientation():
    """The EXIF APP1 carries a thumbnail with its own SOI/SOF: the main SOF (after it) gives the size."""
    main = cv2.imencode(".jpg", _image(90, 120, 3))[1].tobytes()
    thumb = cv2.imencode(".jpg", _image(12, 16, 3))[1].tobytes()
    data = jpeg_with_exif(main, thumb, orientation=1)
    assert data.index(thumb) < jpeg_sof_offset(data)
    header = _check_matches_decoder(data, "JPEG")
    assert (header.width, header.height) == (120, 90)
    # orientation 6 (rotate 90): the pipeline's flags turn the image; the pixel count, which the budget
    # uses, stays the same.
    rotated = jpeg_with_exif(main, thumb, orientation=6)
    assert _decode(rotated).shape == (90, 120, 3)
    assert _decode(rotated, PIPELINE_FLAGS).shape == (120, 90, 3)
    assert read_image_header(rotated).pixels == 120 * 90


def test_jpeg_fill_bytes_garbage_and_cmyk():
    jpeg = encoded("jpg-baseline", (3, 7))
    sof = jpeg_sof_offset(jpeg)
    filled = jpeg[:sof] + b"\xff\xff\xff" + jpeg[sof:]  # fill bytes before the SOF marker
    assert read_image_header(filled) == read_image_header(jpeg)
    _check_matches_decoder(filled, "JPEG")
    garbage = jpeg[:20] + b"\x00\x12\x34" + jpeg[20:]  # extraneous bytes after APP0 (libjpeg warns, skips)
    _check_matches_decoder(garbage, "JPEG")
    cmyk = cmyk_jpeg_bytes(37, 21)
    assert read_image_header(cmyk) == ImageHeader("JPEG", 37, 21, 4, 8)
    assert _decode(cmyk).shape == (21, 37, 3)  # OpenCV converts CMYK to BGR
    for sof_marker in (0xC1, 0xC2, 0xC3, 0xC5, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
        b = bytearray(jpeg)
        b[sof + 1] = sof_marker
        assert read_image_header(bytes(b)).width == 7
    for not_sof in (0xC4, 0xC8, 0xCC):  # DHT, JPG, DAC: skipped, then the scan comes without a frame header
        b = bytearray(jpeg)
        b[sof + 1] = not_sof
        with pytest.raises(ImageHeaderError, match="no SOF marker before the first scan"):
            read_image_header(bytes(b))


def test_jpeg2000_codestream_and_boxes():
    jp2 = encoded("jp2-bgr", (32, 45))
    raw = jp2[jp2.index(b"jp2c") + 4 :]
    assert raw[:4] == b"\xff\x4f\xff\x51"
    header = _check_matches_decoder(raw, "JPEG 2000")
    assert (header.width, header.height, header.channels, header.bits_per_sample) == (45, 32, 3, 8)
    # XOsiz/YOsiz: the image is the reference grid minus the offsets
    siz = bytearray(raw)
    siz[8:24] = struct.pack(">IIII", 1045, 532, 1000, 500)
    assert read_image_header(bytes(siz)) == ImageHeader("JPEG 2000", 45, 32, 3, 8)
    # cut inside the codestream: the 'ihdr' box already gave the size
    cut = jp2[: jp2.index(b"jp2c") + 6]
    assert read_image_header(cut) == ImageHeader("JPEG 2000", 45, 32, 3, 8)


def test_text_headers():
    pixels = bytes(range(63))
    ppm = b"P6\n# made by hand\n7 # width\n# height next\n3\n255\n" + pixels
    assert read_image_header(ppm) == ImageHeader("PNM", 7, 3, 3, 8)
    _check_matches_decoder(ppm, "PNM")
    pam = b"P7\n# a comment\nWIDTH 7\nHEIGHT 3\nDEPTH 4\nMAXVAL 65535\nTUPLTYPE RGB_ALPHA\nENDHDR\n" + bytes(7 * 3 * 8)
    assert read_image_header(pam) == ImageHeader("PNM", 7, 3, 4, 16)
    assert read_image_header(b"P1\n3 2\n0 1 0\n1 0 1\n") == ImageHeader("PNM", 3, 2, 1, 1)
    hdr = encoded("hdr", (3, 7))
    turned = hdr.replace(b"-Y 3 +X 7", b"+X 7 -Y 3")  # column-major orientation: same picture size
    assert read_image_header(turned) == ImageHeader("HDR", 7, 3, 3, 32)
    assert read_image_header(b"#?RGBE\nFORMAT=32-bit_rle_rgbe\n\n-Y 480 +X 640\n") == ImageHeader("HDR", 640, 480, 3, 32)
    for cut in (b"P5\n640 48", b"P5\n640 480\n25", b"#?RADIANCE\n\n-Y 48"):  # cut inside a number
        with pytest.raises(ImageHeaderError, match="truncated"):
            read_image_header(cut)


def test_formats_beyond_opencv():
    assert read_image_header(jxl_codestream_header(4000, 3000)) == ImageHeader("JPEG XL", 4000, 3000, None, None)
    container = b"\x00\x00\x00\x0cJXL \r\n\x87\n" + b"\x00\x00\x00\x14ftypjxl \x00\x00\x00\x00jxl "
    body = jxl_codestream_header(123, 45)
    container += struct.pack(">I", 8 + len(body)) + b"jxlc" + body
    assert read_image_header(container) == ImageHeader("JPEG XL", 123, 45, None, None)
    # SizeHeader, LSB first: small=1, (height/8 - 1)=2, ratio=0, (width/8 - 1)=4 -> 40 x 24
    assert read_image_header(b"\xff\x0a" + (1 | 2 << 1 | 4 << 9).to_bytes(2, "little")) == ImageHeader("JPEG XL", 40, 24)
    # small=1, (height/8 - 1)=8, ratio=5 (16:9) -> 128 x 72
    assert read_image_header(b"\xff\x0a" + (1 | 8 << 1 | 5 << 6).to_bytes(2, "little")) == ImageHeader("JPEG XL", 128, 72)
    qoi = qoi_bytes(_image(3, 7, 3))
    assert read_image_header(qoi) == ImageHeader("QOI", 7, 3, 3, 8)
    decoded = _decode(qoi)
    if decoded is not None:
        assert decoded.shape[:2] == (3, 7)


def test_unknown_and_sniff():
    assert read_image_header(b"") is None
    assert read_image_header(b"hello, world") is None
    assert read_image_header(b"\x00\x01\x02\x03" * 10) is None
    assert sniff_format(gif_bytes(2, 2)) == "GIF"
    assert sniff_format(isobmff_image_bytes(2, 2, b"avif", (b"avif",))) == "AVIF"
    assert sniff_format(exr_header_bytes(2, 2)) == "EXR"
    assert sniff_format(b"\x59\xa6\x6a\x95") == "Sun raster"
    assert sniff_format(b"PF\n") == "PFM"
    assert sniff_format(b"text") is None


# ----------------------------------------------------------------------------------------------------------
# Bombs: the declared size, instantly, without decoding


def _timed(data: bytes) -> ImageHeader:
    start = time.perf_counter()
    header = read_image_header(data)
    assert time.perf_counter() - start < 0.05
    return header


def test_bombs_are_measured_without_decoding():
    png = png_bytes(30000, 30000, 8, 2)
    assert len(png) < 100
    header = _timed(png)
    assert (header.width, header.height, header.channels) == (30000, 30000, 3)
    assert header.decoded_bytes() == 30000 * 30000 * 3

    jpeg = patch_jpeg_sof(cv2.imencode(".jpg", _image(120, 120, 3))[1].tobytes(), 30000, 30000)
    assert _timed(jpeg) == ImageHeader("JPEG", 30000, 30000, 3, 8)

    rgba16 = png_bytes(20000, 20000, 16, 6)
    header = _timed(rgba16)
    assert (header.channels, header.bits_per_sample) == (4, 16)
    assert header.decoded_bytes() == 20000 * 20000 * 4 * 2  # 3.2 GB

    patched = patch_png_ihdr(encoded("png-bgra16", (3, 7)), 20000, 20000)
    assert _timed(patched) == ImageHeader("PNG", 20000, 20000, 4, 16)
    assert _timed(webp_vp8x(encoded("webp-lossless", (1, 1)), 16384, 16384)).pixels == 16384**2
    assert _timed(b"P5\n100000 100000\n255\n" + bytes(16)).pixels == 10**10
    assert _timed(isobmff_image_bytes(100000, 100000, b"avif", (b"avif",))).pixels == 10**10
    assert _timed(gif_bytes(65535, 65535, frame=(1, 1))).pixels == 65535**2


def test_zero_sizes_and_bad_headers_are_errors():
    with pytest.raises(ImageHeaderError, match="empty image"):
        read_image_header(png_bytes(0, 10))
    with pytest.raises(ImageHeaderError, match="height 0"):
        read_image_header(patch_jpeg_sof(encoded("jpg-baseline", (3, 7)), 7, 0))
    with pytest.raises(ImageHeaderError, match="empty image"):
        read_image_header(patch_jpeg_sof(encoded("jpg-baseline", (3, 7)), 0, 3))
    bad_crc = bytearray(encoded("png-bgr8", (3, 7)))
    bad_crc[20] ^= 1
    with pytest.raises(ImageHeaderError, match="CRC"):
        read_image_header(bytes(bad_crc))
    assert _decode(bytes(bad_crc)) is None  # libpng refuses a corrupt IHDR too
    with pytest.raises(ImageHeaderError, match="IHDR chunk truncated"):
        read_image_header(encoded("png-bgr8", (3, 7))[:30])
    not_ihdr = b"\x89PNG\r\n\x1a\n" + png_chunk(b"gAMA", b"\0\0\0\1")
    with pytest.raises(ImageHeaderError, match="IHDR"):
        read_image_header(not_ihdr)
    with pytest.raises(ImageHeaderError, match="invalid bit depth"):
        read_image_header(png_bytes(5, 5, bit_depth=3))
    with pytest.raises(ImageHeaderError, match="no SOF marker before the first scan"):
        read_image_header(b"\xff\xd8\xff\xda\x00\x08" + bytes(8))
    with pytest.raises(ImageHeaderError, match="ends before its SOF"):
        read_image_header(b"\xff\xd8\xff\xe1\xff\xf0Exif")  # cut inside an APP1 segment
    with pytest.raises(ImageHeaderError):
        read_image_header(b"BM" + bytes(12) + struct.pack("<I", 99) + bytes(40))  # unknown DIB header size


# ----------------------------------------------------------------------------------------------------------
# Truncated and mutated headers: None, a correct header or ImageHeaderError; never another exception


def _hand_made() -> list[bytes]:
    return [
        gif_bytes(10, 8, frame=(4, 3)),
        isobmff_image_bytes(4032, 3024, tiles=((512, 512),)),
        isobmff_image_bytes(33, 17, b"avif", (b"mif1", b"avif"), alpha=True),
        _tiff_bytes(13, 5, bigtiff=True),
        _tiff_bytes(13, 5, big_endian=True),
        exr_header_bytes(64, 48),
        jxl_codestream_header(640, 480),
        qoi_bytes(_image(3, 7, 3)),
        cmyk_jpeg_bytes(16, 16),
        jpeg_with_exif(encoded("jpg-baseline", (3, 7)), encoded("jpg-gray", (1, 1)), 6),
        webp_vp8x(encoded("webp-lossy", (3, 7)), 7, 3),
        b"P6\n# c\n7 3\n255\n" + bytes(63),
        b"P7\nWIDTH 7\nHEIGHT 3\nDEPTH 3\nMAXVAL 255\nENDHDR\n" + bytes(63),
    ]


def _outcome(data: bytes):
    """read_image_header's result, or the ImageHeaderError; any other exception fails the test."""
    try:
        return read_image_header(data)
    except ImageHeaderError as exc:
        assert str(exc) and "\n" not in str(exc)
        return exc


def test_truncation_at_every_offset_of_the_first_64_bytes():
    files = [data for _, _, data in all_encoded()] + _hand_made()
    start = time.perf_counter()
    for data in files:
        full = read_image_header(data)
        assert full is not None
        for cut in range(min(64, len(data))):
            result = _outcome(data[:cut])
            if isinstance(result, ImageHeader):
                assert (result.format, result.width, result.height) == (full.format, full.width, full.height), cut
    assert time.perf_counter() - start < 5


def _mutate(rng: np.random.Generator, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        region = min(len(b), 64 if rng.random() < 0.7 else 512)
        if region == 0:
            break
        p = int(rng.integers(0, region))
        op = int(rng.integers(0, 7))
        if op == 0:
            b[p] ^= 1 << int(rng.integers(0, 8))
        elif op == 1:
            b[p] = int(rng.integers(0, 256))
        elif op == 2:
            b[p : p + 4] = bytes([0, 0, 0, 0]) if rng.random() < 0.5 else b"\xff\xff\xff\xff"  # sizes, lengths
        elif op == 3:
            b[p:p] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
        elif op == 4:
            del b[p : p + int(rng.integers(1, 9))]
        elif op == 5:
            del b[p:]
        else:
            b[p : p + 2] = b"\x00\x01" if rng.random() < 0.5 else b"\x00\x00"  # tiny lengths / box sizes
    return bytes(b)


def test_seeded_mutations_only_give_the_three_outcomes():
    rng = np.random.default_rng(0)
    small = [data for _, size, data in all_encoded() if size != (481, 640)]
    bases = small + _hand_made()
    counts = {"none": 0, "header": 0, "error": 0}
    start = time.perf_counter()
    for _ in range(3000):
        data = _mutate(rng, bases[int(rng.integers(len(bases)))])
        result = _outcome(data)
        if result is None:
            counts["none"] += 1
        elif isinstance(result, ImageHeaderError):
            counts["error"] += 1
        else:
            assert isinstance(result, ImageHeader)
            assert result.width > 0 and result.height > 0 and result.pixels == result.width * result.height
            assert result.decoded_bytes() >= result.pixels
            counts["header"] += 1
    assert time.perf_counter() - start < 5
    assert min(counts.values()) > 100, counts


def test_crafted_inputs_do_not_loop_or_blow_up():
    crafted = [
        b"\xff\xd8" + b"\xff\xe0\x00\x00" * 50000,  # zero-length APP0 segments
        b"\xff\xd8" + b"\xff" * 200000,  # fill bytes only
        b"\xff\xd8\xff\x00" + b"\x00" * 200000,  # garbage, no marker
        b"\x00\x00\x00\x10ftypavif\x00\x00\x00\x00" + b"\x00\x00\x00\x08free" * 30000,
        b"\x00\x00\x00\x10ftypavif\x00\x00\x00\x00" + b"\x00\x00\x00\x01meta" + b"\x00" * 8,  # 64-bit size 0
        b"\x00\x00\x00\x10ftypavif\x00\x00\x00\x00" + b"\x00\x00\x00\x00meta",  # size 0: to the end
        b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00\x00\x00\x08jp2h" * 30000,
        b"II*\x00\x08\x00\x00\x00\xff\xff" + bytes(12 * 20000),  # 65535 IFD entries, data for 20000
        b"II+\x00\x08\x00\x00\x00" + struct.pack("<Q", 16) + b"\xff" * 8 + bytes(100),  # 2^64-1 BigTIFF entries
        b"P6\n" + b"#" * 200000 + b"\n7 3 255\n",
        b"P6\n" + b"# \n" * 60000 + b"7 3 255\n",
        b"P6\n" + b"9" * 100000 + b" 3 255\n",
        b"P7\n" + b"WIDTH 7\n" * 20000,
        b"#?RADIANCE\n" + b"X" * 200000,
        b"\x76\x2f\x31\x01\x02\x00\x00\x00" + b"a\0b\0\0\0\0\0" * 30000,
        b"RIFF\x00\x00\x00\x00WEBPVP8X",
    ]
    for data in crafted:
        start = time.perf_counter()
        _outcome(data)
        assert time.perf_counter() - start < 0.5, data[:16]


def test_accepts_bytes_like_inputs():
    data = encoded("png-bgr8", (3, 7))
    expected = read_image_header(data)
    assert read_image_header(bytearray(data)) == expected
    assert read_image_header(memoryview(data)) == expected
    assert read_image_header(np.frombuffer(data, np.uint8)) == expected
    assert read_image_header(zlib.compress(data)) is None
