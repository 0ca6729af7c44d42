"""The size an encoded image declares, read from its header before anything is decoded.

A decode budget against decompression bombs: a 60 KB PNG can declare 30000 x 30000 pixels and make
``cv2.imdecode`` allocate gigabytes on a board with 1 GB of RAM. ``read_image_header`` reads the width,
height, channels and sample depth the decoder will allocate for, from the header alone, so the caller
can refuse the file first (``ImageHeader.decoded_bytes()`` against a budget).

Pure Python and the standard library. Every offset is bounds-checked, every loop advances by at least
one byte (boxes, chunks, segments and IFDs of length 0 are refused or end the walk), and text headers
are scanned with ``bytes.find`` and possessive regular expressions, which cannot backtrack.

``read_image_header`` returns None when it does not recognise the format (the decoder decides), an
``ImageHeader`` when it could read the size, and raises ``ImageHeaderError`` (a ``ValueError``) with a
one-line message when the format is recognised but the header is truncated or malformed, or declares a
width or height of 0. A header read from a cut-off file is still correct as far as it goes: a file cut
after its size fields gives the declared size (the decoder will then complain about the missing data).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

__all__ = ["ImageHeader", "ImageHeaderError", "read_image_header", "sniff_format"]


class ImageHeaderError(ValueError):
    """The format is recognised, but its header is truncated or malformed or declares an empty image."""


# Formats OpenCV decodes to 32-bit float whatever the file stores (RGBE, half floats).
_FLOAT_DECODED = frozenset({"HDR", "EXR", "PFM"})


@dataclass(frozen=True)
class ImageHeader:
    format: str  # "JPEG", "PNG", "WebP", "BMP", "TIFF", "GIF", "PNM", "PFM", "JPEG 2000", "AVIF", "HEIF", ...
    width: int
    height: int
    channels: int | None = None  # as declared (PNG colour type, JPEG components, ...); None when unknown
    bits_per_sample: int | None = None  # as declared (1 for bilevel, 16 for 16-bit PNG/TIFF/PGM, ...)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def decoded_bytes(self) -> int:
        """Worst-case size of the array OpenCV allocates for the decoded image.

        width * height * channels * bytes per sample, with 4 channels and 8 bits assumed where the header
        does not say, sub-byte samples counted as a byte (OpenCV unpacks them), anything above 8 bits as
        2 bytes, above 16 as 4, and 4 bytes for formats OpenCV decodes to float32 (HDR, EXR, PFM).
        Grey + alpha (2 channels) counts as 4: decoders expand it to BGRA.
        """
        channels = self.channels or 4
        if channels == 2:
            channels = 4
        bits = self.bits_per_sample or 8
        if self.format in _FLOAT_DECODED:
            sample = 4
        else:
            sample = 1 if bits <= 8 else 2 if bits <= 16 else 4 if bits <= 32 else 8
        return self.pixels * channels * sample


# ----------------------------------------------------------------------------------------------------------
# Bounds-checked field readers: they raise ImageHeaderError(f"{what} truncated") instead of reading past
# the end (Python slicing would silently return fewer bytes and a wrong number).


# At most this many segments / boxes / attributes / chunks are walked in one list: real headers have
# tens; a crafted file of millions of empty segments is refused instead of walked in Python.
_MAX_STEPS = 10_000


def _too_many(what: str) -> ImageHeaderError:
    return ImageHeaderError(f"{what} has more than {_MAX_STEPS} entries before its size (crafted or corrupt)")


def _need(data: bytes, end: int, what: str) -> None:
    if end > len(data):
        raise ImageHeaderError(f"{what} truncated")


def _uint(data: bytes, pos: int, size: int, big: bool, what: str) -> int:
    if pos < 0 or pos + size > len(data):
        raise ImageHeaderError(f"{what} truncated")
    return int.from_bytes(data[pos : pos + size], "big" if big else "little")


def _u16be(d, p, what):
    return _uint(d, p, 2, True, what)


def _u32be(d, p, what):
    return _uint(d, p, 4, True, what)


def _u16le(d, p, what):
    return _uint(d, p, 2, False, what)


def _u32le(d, p, what):
    return _uint(d, p, 4, False, what)


def _s32le(d, p, what):
    v = _uint(d, p, 4, False, what)
    return v - (1 << 32) if v & 0x80000000 else v


def _tag(raw: bytes) -> str:
    """A four-character code for a message: printable ASCII kept, every other byte as \\xNN (file content is
    never quoted raw)."""
    return "'" + "".join(chr(b) if 0x20 <= b < 0x7F and b not in (0x27, 0x5C) else f"\\x{b:02x}" for b in raw) + "'"


def _check_size(fmt: str, width: int, height: int, where: str = "") -> None:
    if width <= 0 or height <= 0:
        raise ImageHeaderError(f"{fmt}{' ' + where if where else ''} declares an empty image ({width} x {height})")


# ----------------------------------------------------------------------------------------------------------
# Magic bytes

_ISOBMFF_AVIF_BRANDS = frozenset({b"avif", b"avis", b"avio"})
_ISOBMFF_HEIF_BRANDS = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"mif2", b"msf1", b"heif"}
)
_JP2_MAGIC = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_JXL_CONTAINER_MAGIC = b"\x00\x00\x00\x0cJXL \r\n\x87\n"


def _isobmff_image_kind(data: bytes) -> str | None:
    """"AVIF" or "HEIF" when the file starts with an ISO BMFF 'ftyp' box naming an image brand."""
    if len(data) < 12 or data[4:8] != b"ftyp":
        return None
    size = int.from_bytes(data[:4], "big")
    end = min(len(data), size if 16 <= size <= 4096 else 4096)
    brands = {data[8:12]} | {data[p : p + 4] for p in range(16, end - 3, 4)}
    if brands & _ISOBMFF_AVIF_BRANDS:
        return "AVIF"
    if brands & _ISOBMFF_HEIF_BRANDS:
        return "HEIF"
    return None


def sniff_format(data: bytes) -> str | None:
    """The image format named by the magic bytes at the start of ``data`` (no parsing), or None.

    The names are those ``ImageHeader.format`` uses. Some formats OpenCV cannot decode in every build
    (GIF, HEIF, JPEG XL, OpenEXR) are named too, so callers can say what the file is.
    """
    head = bytes(data[:16])
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:1] == b"P" and len(head) >= 3 and head[2:3].isspace():
        if head[1:2] in b"1234567":
            return "PNM"
        if head[1:2] in (b"F", b"f"):
            return "PFM"
    if head.startswith((_JP2_MAGIC, b"\xff\x4f\xff\x51")):
        return "JPEG 2000"
    if head[4:8] == b"ftyp":
        return _isobmff_image_kind(bytes(data[:4096]))
    if head.startswith((b"#?RADIANCE", b"#?RGBE")):
        return "HDR"
    if head.startswith(b"\x76\x2f\x31\x01"):
        return "EXR"
    if head.startswith(b"\x59\xa6\x6a\x95"):
        return "Sun raster"
    if head.startswith((b"\xff\x0a", _JXL_CONTAINER_MAGIC)):
        return "JPEG XL"
    if head.startswith(b"qoif"):
        return "QOI"
    return None


def read_image_header(data: bytes) -> ImageHeader | None:
    """The declared size of the encoded image in ``data`` (the whole file), or None if the format is unknown.

    Raises ``ImageHeaderError`` when the format is recognised but the size cannot be read (truncated or
    malformed header) or is 0.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    fmt = sniff_format(data)
    if fmt is None:
        return None
    return _PARSERS[fmt](data)


# ----------------------------------------------------------------------------------------------------------
# PNG: the IHDR chunk must come first (libpng refuses anything else, and a bad IHDR CRC).

_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


def _png(d: bytes) -> ImageHeader:
    _need(d, 16, "PNG signature/IHDR chunk")
    length, ctype = int.from_bytes(d[8:12], "big"), d[12:16]
    if ctype == b"CgBI":
        raise ImageHeaderError("PNG is an Apple 'CgBI' optimised PNG (not a standard PNG)")
    if ctype != b"IHDR":
        raise ImageHeaderError("PNG does not start with an IHDR chunk")
    if length != 13:
        raise ImageHeaderError(f"PNG IHDR chunk has length {length} (expected 13)")
    _need(d, 33, "PNG IHDR chunk")
    if zlib.crc32(d[12:29]) != int.from_bytes(d[29:33], "big"):
        raise ImageHeaderError("PNG IHDR chunk CRC mismatch (corrupt header)")
    width, height = int.from_bytes(d[16:20], "big"), int.from_bytes(d[20:24], "big")
    depth, colour, compression, filt, interlace = d[24], d[25], d[26], d[27], d[28]
    _check_size("PNG", width, height)
    if width > 0x7FFFFFFF or height > 0x7FFFFFFF:
        raise ImageHeaderError(f"PNG IHDR size {width} x {height} exceeds the PNG limit (2^31-1)")
    if colour not in _PNG_DEPTHS:
        raise ImageHeaderError(f"PNG IHDR has an invalid colour type {colour}")
    if depth not in _PNG_DEPTHS[colour]:
        raise ImageHeaderError(f"PNG IHDR has an invalid bit depth {depth} for colour type {colour}")
    if compression != 0 or filt != 0 or interlace > 1:
        raise ImageHeaderError("PNG IHDR has an unknown compression, filter or interlace method")
    channels = _PNG_CHANNELS[colour]
    if colour == 3 and _png_has_trns(d):
        channels = 4  # palette + tRNS: decoded with alpha
    return ImageHeader("PNG", width, height, channels, depth)


def _png_has_trns(d: bytes) -> bool:
    """Whether a tRNS chunk comes before the first IDAT (walks chunk headers only; each step >= 12 bytes)."""
    pos = 33
    for _ in range(_MAX_STEPS):
        if pos + 8 > len(d):
            break
        length, ctype = int.from_bytes(d[pos : pos + 4], "big"), d[pos + 4 : pos + 8]
        if ctype == b"tRNS":
            return True
        if ctype in (b"IDAT", b"IEND") or length > 0x7FFFFFFF:
            return False
        pos += 12 + length
    return False


# ----------------------------------------------------------------------------------------------------------
# JPEG: walk the marker segments to the first SOFn, the way libjpeg's read_markers does: garbage bytes
# before a marker and 0xFF fill bytes are skipped, standalone markers (TEM, RSTn) have no length, every
# other segment (APPn with EXIF thumbnails and their own SOI/SOF inside, COM, DQT, DHT, ...) is skipped
# by its length. SOF0-SOF15 except DHT (C4), JPG (C8) and DAC (CC) carry the frame size.

_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_FILL = re.compile(rb"\xff*+")


def _jpeg(d: bytes) -> ImageHeader:
    n, pos = len(d), 2
    for _ in range(_MAX_STEPS):
        if pos < n and d[pos] != 0xFF:  # extraneous bytes before a marker (libjpeg warns and skips them)
            pos = d.find(b"\xff", pos)
            if pos < 0:
                pos = n
        pos = _JPEG_FILL.match(d, pos).end()  # 0xFF fill bytes
        if pos >= n:
            raise ImageHeaderError("JPEG ends before its SOF (frame header) marker")
        marker = d[pos]
        pos += 1
        if marker == 0x00 or marker == 0x01 or 0xD0 <= marker <= 0xD7:
            continue  # stuffed zero (garbage), TEM, RSTn: no length
        if marker == 0xD8:
            raise ImageHeaderError("JPEG has a second SOI marker before its SOF marker")
        if marker == 0xD9:
            raise ImageHeaderError("JPEG ends (EOI marker) before its SOF marker")
        if marker == 0xDA:
            raise ImageHeaderError("JPEG has no SOF marker before the first scan")
        length = _u16be(d, pos, "JPEG marker segment")
        if marker in _JPEG_SOF:
            return _jpeg_sof(d, pos, length, marker)
        pos += max(length, 2)  # libjpeg's skip_variable tolerates lengths < 2 and moves on
    raise _too_many("JPEG marker segment list")


def _jpeg_sof(d: bytes, pos: int, length: int, marker: int) -> ImageHeader:
    what = f"JPEG SOF{marker - 0xC0} segment"
    precision = _uint(d, pos + 2, 1, True, what)
    height = _u16be(d, pos + 3, what)
    width = _u16be(d, pos + 5, what)
    components = _uint(d, pos + 7, 1, True, what)
    if height == 0:
        raise ImageHeaderError(f"JPEG {what[5:]} declares height 0 (DNL-defined height is not supported)")
    _check_size("JPEG", width, height, f"SOF{marker - 0xC0}")
    if components == 0:
        raise ImageHeaderError(f"{what} declares 0 components")
    if length != 8 + 3 * components:
        raise ImageHeaderError(f"{what} has length {length} for {components} components (expected {8 + 3 * components})")
    return ImageHeader("JPEG", width, height, components, precision)


# ----------------------------------------------------------------------------------------------------------
# WebP (RIFF): the first chunk is VP8 (lossy key frame header), VP8L (lossless, 14-bit fields) or VP8X
# (extended: 24-bit canvas size minus one; animation and alpha flags).


def _webp(d: bytes) -> ImageHeader:
    _need(d, 20, "WebP RIFF header")
    fourcc = d[12:16]
    if fourcc == b"VP8 ":
        _need(d, 30, "WebP VP8 frame header")
        tag = d[20]
        if tag & 1:
            raise ImageHeaderError("WebP VP8 data does not start with a key frame")
        if (tag >> 1) & 7 > 3 or not (tag >> 4) & 1:
            raise ImageHeaderError("WebP VP8 frame header has an unknown profile or an invisible frame")
        if d[23:26] != b"\x9d\x01\x2a":
            raise ImageHeaderError("WebP VP8 frame header has no start code")
        width = int.from_bytes(d[26:28], "little") & 0x3FFF
        height = int.from_bytes(d[28:30], "little") & 0x3FFF
        _check_size("WebP", width, height, "VP8 frame")
        return ImageHeader("WebP", width, height, 3, 8)
    if fourcc == b"VP8L":
        _need(d, 25, "WebP VP8L header")
        if d[20] != 0x2F:
            raise ImageHeaderError("WebP VP8L header has a bad signature byte")
        bits = int.from_bytes(d[21:25], "little")
        if bits >> 29:
            raise ImageHeaderError(f"WebP VP8L header has unknown version {bits >> 29}")
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        return ImageHeader("WebP", width, height, 4 if (bits >> 28) & 1 else 3, 8)
    if fourcc == b"VP8X":
        _need(d, 30, "WebP VP8X header")
        flags = d[20]
        width = int.from_bytes(d[24:27], "little") + 1
        height = int.from_bytes(d[27:30], "little") + 1
        return ImageHeader("WebP", width, height, 4 if flags & 0x10 else 3, 8)
    raise ImageHeaderError(f"WebP has an unknown first chunk {_tag(fourcc)}")


# ----------------------------------------------------------------------------------------------------------
# BMP: BITMAPCOREHEADER (12 bytes, unsigned 16-bit size) or BITMAPINFOHEADER and its successors (40, 52,
# 56, 108, 124 bytes, OS/2 2.x 64; OpenCV takes any size >= 36), signed 32-bit size, negative height =
# rows stored top-down. Palette images OpenCV decodes to one channel when every palette entry is grey.
# (OpenCV also decodes every BITMAPCOREHEADER file to one grey channel; the header says what is declared.)


def _bmp(d: bytes) -> ImageHeader:
    hsize = _u32le(d, 14, "BMP header")
    if hsize == 12:
        width, height = _u16le(d, 18, "BMP core header"), _u16le(d, 20, "BMP core header")
        bpp = _u16le(d, 24, "BMP core header")
        colours_used, entry = 0, 3
    elif 36 <= hsize <= 0x7FFFFFFF:
        width, height = _s32le(d, 18, "BMP info header"), _s32le(d, 22, "BMP info header")
        bpp = _u16le(d, 28, "BMP info header")
        colours_used = int.from_bytes(d[46:50], "little") if len(d) >= 50 else 0
        entry = 4
    else:
        raise ImageHeaderError(f"BMP has an unknown DIB header size {hsize}")
    if height < 0:
        height = -height  # top-down rows
    _check_size("BMP", width, height)
    if bpp == 0 or bpp > 32:
        raise ImageHeaderError(f"BMP declares {bpp} bits per pixel")
    if bpp <= 8:
        count = min(colours_used or (1 << bpp), 1 << bpp)
        channels = _palette_channels(d, 14 + hsize, count, entry)
        return ImageHeader("BMP", width, height, channels, bpp)
    return ImageHeader("BMP", width, height, 4 if bpp == 32 else 3, 8)


def _palette_channels(d: bytes, start: int, count: int, entry: int) -> int:
    """1 when the (B, G, R[, 0]) palette entries are all grey (as OpenCV's IsColorPalette), else 3."""
    if start + count * entry > len(d):
        return 3  # palette cut short: assume colour (the worst case)
    for i in range(count):
        p = start + i * entry
        if not d[p] == d[p + 1] == d[p + 2]:
            return 3
    return 1


# ----------------------------------------------------------------------------------------------------------
# TIFF / BigTIFF: the first IFD's ImageWidth (256), ImageLength (257), BitsPerSample (258),
# PhotometricInterpretation (262) and SamplesPerPixel (277); SHORT, LONG or LONG8 values.

_TIFF_TYPE_SIZES = {1: 1, 3: 2, 4: 4, 6: 1, 8: 2, 9: 4, 16: 8, 17: 8, 18: 8}


def _tiff(d: bytes) -> ImageHeader:
    big_endian = d[:2] == b"MM"
    bigtiff = _uint(d, 2, 2, big_endian, "TIFF header") == 43
    if bigtiff:
        if _uint(d, 4, 2, big_endian, "BigTIFF header") != 8:
            raise ImageHeaderError("BigTIFF header has an offset size other than 8")
        ifd = _uint(d, 8, 8, big_endian, "BigTIFF header")
        count_size, entry_size, inline = 8, 20, 8
    else:
        ifd = _uint(d, 4, 4, big_endian, "TIFF header")
        count_size, entry_size, inline = 2, 12, 4
    if ifd < 8:
        raise ImageHeaderError(f"TIFF first IFD offset {ifd} points into the file header")
    if ifd + count_size > len(d):
        raise ImageHeaderError("TIFF first IFD lies past the end of the data (truncated)")
    count = _uint(d, ifd, count_size, big_endian, "TIFF IFD")
    if count == 0:
        raise ImageHeaderError("TIFF first IFD has no entries")
    if count > 0xFFFF:
        raise ImageHeaderError(f"BigTIFF first IFD declares {count} entries (implausible)")
    tags: dict[int, tuple[int, int, int]] = {}  # tag -> (type, count, position of the value or its offset)
    for i in range(count):
        p = ifd + count_size + i * entry_size
        if p + entry_size > len(d):
            raise ImageHeaderError("TIFF first IFD truncated")
        tag = _uint(d, p, 2, big_endian, "TIFF IFD entry")  # (tags should be sorted; libtiff reads them anyway)
        if tag in (256, 257, 258, 262, 277):
            typ = _uint(d, p + 2, 2, big_endian, "TIFF IFD entry")
            n = _uint(d, p + 4, 8 if bigtiff else 4, big_endian, "TIFF IFD entry")
            tags[tag] = (typ, n, p + 4 + (8 if bigtiff else 4))

    def value(tag: int, index: int = 0) -> int | None:
        if tag not in tags:
            return None
        typ, n, vpos = tags[tag]
        size = _TIFF_TYPE_SIZES.get(typ)
        if size is None or n == 0 or index >= n:
            raise ImageHeaderError(f"TIFF tag {tag} has an unusable type {typ} or count {n}")
        if size * n > inline:  # the values live elsewhere: vpos holds their offset
            vpos = _uint(d, vpos, inline, big_endian, f"TIFF tag {tag}")
        v = _uint(d, vpos + index * size, size, big_endian, f"TIFF tag {tag} value")
        if typ in (6, 8, 9, 17) and v >> (size * 8 - 1):
            v -= 1 << (size * 8)  # signed types
        return v

    width, height = value(256), value(257)
    if width is None or height is None:
        raise ImageHeaderError("TIFF first IFD has no ImageWidth/ImageLength")
    _check_size("TIFF", width, height)
    samples = value(277) or 1
    bits = value(258) if 258 in tags else 1
    photometric = value(262)
    channels = 3 if photometric == 3 else samples  # palette: decoded to colour
    return ImageHeader("TIFF", width, height, channels, bits)


# ----------------------------------------------------------------------------------------------------------
# GIF: the logical screen size (the canvas every frame is drawn on).


def _gif(d: bytes) -> ImageHeader:
    width, height = _u16le(d, 6, "GIF logical screen descriptor"), _u16le(d, 8, "GIF logical screen descriptor")
    _check_size("GIF", width, height, "logical screen")
    return ImageHeader("GIF", width, height, None, 8)


# ----------------------------------------------------------------------------------------------------------
# PNM (P1-P6: whitespace/comment separated numbers; P7 PAM: WIDTH/HEIGHT/DEPTH/MAXVAL lines) and PFM.

_WS = b" \t\n\r\x0b\x0c"
_MAX_NUMBER_DIGITS = 10


# Whitespace and '#' comments (to the end of the line), possessive: no backtracking whatever the input.
_PNM_SKIP = re.compile(rb"(?:[ \t\n\r\x0b\x0c]++|#[^\r\n]*+)*+")
_PNM_NUMBER = re.compile(rb"[0-9]{1,%d}+" % (_MAX_NUMBER_DIGITS + 1))


def _pnm_numbers(d: bytes, pos: int, count: int, what: str) -> list[int]:
    """``count`` decimal numbers from ``pos``, skipping whitespace and '#' comments; each must be followed by
    whitespace (else the file may have been cut inside the number)."""
    out = []
    while len(out) < count:
        pos = _PNM_SKIP.match(d, pos).end()
        m = _PNM_NUMBER.match(d, pos)
        if m is None:
            raise ImageHeaderError(f"{what} truncated" if pos >= len(d) else f"{what} has a non-numeric field")
        if m.end() - pos > _MAX_NUMBER_DIGITS:
            raise ImageHeaderError(f"{what} has an absurdly long number")
        pos = m.end()
        if pos >= len(d):
            raise ImageHeaderError(f"{what} truncated")
        if d[pos] not in _WS and d[pos] != 0x23:
            raise ImageHeaderError(f"{what} has a malformed number")
        out.append(int(m.group()))
    return out


def _pnm(d: bytes) -> ImageHeader:
    kind = d[1] - 0x30
    if kind == 7:
        return _pam(d)
    what = f"PNM P{kind} header"
    if kind in (1, 4):
        width, height = _pnm_numbers(d, 2, 2, what)
        maxval = 1
    else:
        width, height, maxval = _pnm_numbers(d, 2, 3, what)
        if not 0 < maxval <= 65535:
            raise ImageHeaderError(f"{what} has maxval {maxval} (must be 1..65535)")
    _check_size("PNM", width, height)
    channels = 3 if kind in (3, 6) else 1
    return ImageHeader("PNM", width, height, channels, maxval.bit_length() if kind in (1, 4) else (8 if maxval < 256 else 16))


def _pam(d: bytes) -> ImageHeader:
    end = d.find(b"ENDHDR", 3)
    if end < 0:
        raise ImageHeaderError("PAM header truncated (no ENDHDR line)")
    fields: dict[bytes, int] = {}
    for line in d[3:end].splitlines():
        line = line.split(b"#", 1)[0].strip()
        if not line:
            continue
        key, _, rest = line.replace(b"\t", b" ").partition(b" ")
        key = key.upper()
        if key in (b"WIDTH", b"HEIGHT", b"DEPTH", b"MAXVAL"):
            rest = rest.strip()
            if not rest.isdigit() or len(rest) > _MAX_NUMBER_DIGITS:
                raise ImageHeaderError(f"PAM header has a malformed {key.decode()} line")
            fields[key] = int(rest)
    if b"WIDTH" not in fields or b"HEIGHT" not in fields:
        raise ImageHeaderError("PAM header has no WIDTH or HEIGHT line")
    width, height = fields[b"WIDTH"], fields[b"HEIGHT"]
    _check_size("PAM", width, height)
    depth, maxval = fields.get(b"DEPTH", 1), fields.get(b"MAXVAL", 255)
    if depth == 0:
        raise ImageHeaderError("PAM header declares DEPTH 0")
    if not 0 < maxval <= 65535:
        raise ImageHeaderError(f"PAM header has MAXVAL {maxval} (must be 1..65535)")
    return ImageHeader("PNM", width, height, depth, 8 if maxval < 256 else 16)


def _pfm(d: bytes) -> ImageHeader:
    width, height = _pnm_numbers(d, 2, 2, "PFM header")
    _check_size("PFM", width, height)
    return ImageHeader("PFM", width, height, 3 if d[1:2] == b"F" else 1, 32)


# ----------------------------------------------------------------------------------------------------------
# ISO BMFF boxes (JPEG 2000's JP2, AVIF/HEIF): size (32-bit, 1 = 64-bit size follows, 0 = to the end),
# type. A box whose size is below its own header is malformed; the walk stops at the end of the data.


def _boxes(d: bytes, start: int, end: int, what: str):
    """Yield (type, payload start, payload end) for the boxes in d[start:end]; payload end may lie past
    len(d) when the data is cut short. Each step advances at least 8 bytes."""
    pos = start
    for _ in range(_MAX_STEPS):
        if pos + 8 > end:
            return
        size = int.from_bytes(d[pos : pos + 4], "big")
        btype = d[pos + 4 : pos + 8]
        header = 8
        if size == 1:
            size = _uint(d, pos + 8, 8, True, f"{what} box header")
            header = 16
        elif size == 0:
            size = end - pos
        if size < header:
            raise ImageHeaderError(f"{what} box {_tag(btype)} has an impossible size {size}")
        yield btype, pos + header, pos + size
        pos += size
    if pos + 8 <= end:
        raise _too_many(f"{what} box list")


# JPEG 2000: JP2 boxes ('jp2h' > 'ihdr'; 'jp2c' holds the codestream) or a raw codestream whose SIZ
# marker segment gives the reference grid: width = Xsiz - XOsiz, height = Ysiz - YOsiz. OpenJPEG sizes
# the decoded image from SIZ, so SIZ wins over 'ihdr' when both are present.


def _j2k_siz(d: bytes, pos: int) -> ImageHeader:
    what = "JPEG 2000 SIZ marker segment"
    if d[pos : pos + 4] != b"\xff\x4f\xff\x51":
        _need(d, pos + 4, what)
        raise ImageHeaderError("JPEG 2000 codestream does not start with SOC and SIZ markers")
    xsiz, ysiz = _u32be(d, pos + 8, what), _u32be(d, pos + 12, what)
    xo, yo = _u32be(d, pos + 16, what), _u32be(d, pos + 20, what)
    components = _u16be(d, pos + 40, what)
    ssiz = _uint(d, pos + 42, 1, True, what)
    _check_size("JPEG 2000", xsiz - xo, ysiz - yo, "SIZ")
    if components == 0:
        raise ImageHeaderError("JPEG 2000 SIZ declares 0 components")
    return ImageHeader("JPEG 2000", xsiz - xo, ysiz - yo, components, (ssiz & 0x7F) + 1)


def _jpeg2000(d: bytes) -> ImageHeader:
    if d.startswith(b"\xff\x4f"):
        return _j2k_siz(d, 0)
    ihdr = None
    for btype, start, end in _boxes(d, 0, len(d), "JPEG 2000"):
        if btype == b"jp2h":
            for sub, s, e in _boxes(d, start, min(end, len(d)), "JPEG 2000 jp2h"):
                if sub == b"ihdr":
                    height, width = _u32be(d, s, "JPEG 2000 ihdr box"), _u32be(d, s + 4, "JPEG 2000 ihdr box")
                    nc = _u16be(d, s + 8, "JPEG 2000 ihdr box")
                    bpc = _uint(d, s + 10, 1, True, "JPEG 2000 ihdr box")
                    _check_size("JPEG 2000", width, height, "ihdr")
                    ihdr = ImageHeader("JPEG 2000", width, height, nc or None, None if bpc == 0xFF else (bpc & 0x7F) + 1)
                    break
        elif btype == b"jp2c":
            if start + 4 > len(d) and ihdr is not None:
                return ihdr  # cut inside the codestream's first bytes: 'ihdr' already told the size
            return _j2k_siz(d, start)
    if ihdr is not None:
        return ihdr
    raise ImageHeaderError("JPEG 2000 ends before its ihdr box / codestream SIZ marker")


# AVIF / HEIF: 'meta' > 'iprp' > 'ipco' holds the items' properties: 'ispe' (width, height), 'pixi'
# (channels, bits), 'auxC' (an alpha plane). The largest 'ispe' is the canvas (a grid's tiles are
# smaller; an alpha plane is the same size). A sequence without 'meta' falls back to 'moov' > 'trak' >
# 'tkhd' (16.16 fixed-point track size).


def _isobmff(d: bytes) -> ImageHeader:
    fmt = _isobmff_image_kind(d[:4096]) or "HEIF"
    best: tuple[int, int] | None = None
    channels, bits, alpha, track = 0, 0, False, None
    for btype, start, end in _boxes(d, 0, len(d), fmt):
        if btype == b"meta":
            if end > len(d):
                raise ImageHeaderError(f"{fmt} meta box truncated")
            for sub, s, e in _boxes(d, start + 4, min(end, len(d)), fmt + " meta"):  # FullBox: 4 bytes version/flags
                if sub != b"iprp":
                    continue
                for sub2, s2, e2 in _boxes(d, s, min(e, len(d)), fmt + " iprp"):
                    if sub2 != b"ipco":
                        continue
                    for prop, ps, pe in _boxes(d, s2, min(e2, len(d)), fmt + " ipco"):
                        if prop == b"ispe":
                            w, h = _u32be(d, ps + 4, fmt + " ispe box"), _u32be(d, ps + 8, fmt + " ispe box")
                            _check_size(fmt, w, h, "ispe")
                            if best is None or w * h > best[0] * best[1]:
                                best = (w, h)
                        elif prop == b"pixi" and ps + 5 <= len(d):
                            n = d[ps + 4]
                            depths = d[ps + 5 : min(ps + 5 + n, pe, len(d))]
                            channels = max(channels, n)
                            bits = max([bits, *depths])
                        elif prop == b"auxC" and b"auxiliary:alpha" in d[ps:min(pe, len(d))]:
                            alpha = True
        elif btype == b"moov" and best is None:
            track = _bmff_track_size(d, start, min(end, len(d)), fmt)
        if best is not None and end >= len(d):
            break
    if best is None and track is not None:
        best = track
    if best is None:
        raise ImageHeaderError(f"{fmt} has no ispe (image spatial extent) property in the data given")
    return ImageHeader(fmt, best[0], best[1], ((channels or 3) + (1 if alpha else 0)), bits or None)


def _bmff_track_size(d: bytes, start: int, end: int, fmt: str) -> tuple[int, int] | None:
    for btype, s, e in _boxes(d, start, end, fmt + " moov"):
        if btype != b"trak":
            continue
        for sub, s2, e2 in _boxes(d, s, min(e, len(d)), fmt + " trak"):
            if sub == b"tkhd":
                version = _uint(d, s2, 1, True, fmt + " tkhd box")
                off = s2 + (88 if version == 1 else 76)
                w, h = _u32be(d, off, fmt + " tkhd box") >> 16, _u32be(d, off + 4, fmt + " tkhd box") >> 16
                if w and h:
                    return w, h
    return None


# ----------------------------------------------------------------------------------------------------------
# Radiance HDR: "#?RADIANCE" / "#?RGBE", header lines, a blank line, then the resolution line, normally
# "-Y <rows> +X <columns>" (the only form OpenCV's reader accepts); the other seven orientations give the
# same picture size (X is the width, Y the height).


def _hdr(d: bytes) -> ImageHeader:
    blank = d.find(b"\n\n")
    if blank < 0:
        raise ImageHeaderError("Radiance HDR header truncated (no blank line before the resolution line)")
    eol = d.find(b"\n", blank + 2, blank + 2 + 128)
    if eol < 0:
        raise ImageHeaderError("Radiance HDR resolution line truncated")
    parts = d[blank + 2 : eol].split()
    ok = (
        len(parts) == 4
        and all(len(p) == 2 and p[:1] in (b"-", b"+") and p[1:] in (b"X", b"Y") for p in (parts[0], parts[2]))
        and parts[0][1:] != parts[2][1:]
        and all(p.isdigit() and len(p) <= _MAX_NUMBER_DIGITS for p in (parts[1], parts[3]))
    )
    if not ok:
        raise ImageHeaderError("Radiance HDR has a malformed resolution line")
    sizes = {parts[0][1:]: int(parts[1]), parts[2][1:]: int(parts[3])}
    width, height = sizes[b"X"], sizes[b"Y"]
    _check_size("HDR", width, height)
    return ImageHeader("HDR", width, height, 3, 32)


# ----------------------------------------------------------------------------------------------------------
# OpenEXR: magic, version/flags, then attributes (name\0 type\0 size value) up to an empty name.
# dataWindow (box2i: xMin, yMin, xMax, yMax, inclusive) is the stored pixel area; channels (chlist)
# gives the channel count and pixel types (0 UINT, 1 HALF, 2 FLOAT).


def _exr(d: bytes) -> ImageHeader:
    flags = _u32le(d, 4, "OpenEXR header")
    if flags & 0xFF != 2:
        raise ImageHeaderError(f"OpenEXR has unknown version {flags & 0xFF}")
    max_name = 256 if flags & 0x400 else 32
    pos, window, channels, bits = 8, None, None, None
    for _ in range(_MAX_STEPS):
        name_end = d.find(b"\0", pos, pos + max_name)
        if name_end < 0:
            _need(d, pos + max_name, "OpenEXR header")
            raise ImageHeaderError("OpenEXR attribute name too long")
        if name_end == pos:
            break  # end of the (first part's) header
        type_end = d.find(b"\0", name_end + 1, name_end + 1 + max_name)
        if type_end < 0:
            _need(d, name_end + 1 + max_name, "OpenEXR header")
            raise ImageHeaderError("OpenEXR attribute type name too long")
        name, atype = d[pos:name_end], d[name_end + 1 : type_end]
        size = _u32le(d, type_end + 1, "OpenEXR attribute")
        vstart = type_end + 5
        if name == b"dataWindow":
            if atype != b"box2i" or size != 16:
                raise ImageHeaderError("OpenEXR dataWindow is not a box2i")
            xmin, ymin = _s32le(d, vstart, "OpenEXR dataWindow"), _s32le(d, vstart + 4, "OpenEXR dataWindow")
            xmax, ymax = _s32le(d, vstart + 8, "OpenEXR dataWindow"), _s32le(d, vstart + 12, "OpenEXR dataWindow")
            window = (xmax - xmin + 1, ymax - ymin + 1)
        elif name == b"channels" and atype == b"chlist":
            channels, bits = _exr_channels(d, vstart, min(vstart + size, len(d)), max_name)
        pos = vstart + size
        if window is not None and channels is not None:
            break
        if pos >= len(d):
            break
    else:
        raise _too_many("OpenEXR header")
    if window is None:
        raise ImageHeaderError("OpenEXR header has no dataWindow attribute in the data given")
    _check_size("EXR", window[0], window[1], "dataWindow")
    return ImageHeader("EXR", window[0], window[1], channels, bits)


def _exr_channels(d: bytes, pos: int, end: int, max_name: int) -> tuple[int | None, int | None]:
    count, bits = 0, 16
    while pos < end and count < _MAX_STEPS:
        name_end = d.find(b"\0", pos, min(end, pos + max_name))
        if name_end <= pos:
            break  # end of the list (or a malformed entry: stop counting)
        if name_end + 17 > end:
            break
        ptype = int.from_bytes(d[name_end + 1 : name_end + 5], "little")
        if ptype != 1:
            bits = 32
        count += 1
        pos = name_end + 17
    return (count or None), (bits if count else None)


# ----------------------------------------------------------------------------------------------------------
# Sun raster: eight big-endian 32-bit words: magic, width, height, depth, length, type, map type, map length.


def _sun_raster(d: bytes) -> ImageHeader:
    what = "Sun raster header"
    width, height, depth = _u32be(d, 4, what), _u32be(d, 8, what), _u32be(d, 12, what)
    maptype, maplength = _u32be(d, 24, what), _u32be(d, 28, what)
    _check_size("Sun raster", width, height)
    if depth not in (1, 8, 24, 32):
        raise ImageHeaderError(f"Sun raster declares depth {depth} (expected 1, 8, 24 or 32)")
    if depth > 8:
        return ImageHeader("Sun raster", width, height, 3, 8)
    channels = 1
    if maptype == 1 and maplength:  # RMT_EQUAL_RGB: all reds, then greens, then blues
        n = maplength // 3
        r, g, b = d[32 : 32 + n], d[32 + n : 32 + 2 * n], d[32 + 2 * n : 32 + 3 * n]
        channels = 1 if r == g == b else 3
    return ImageHeader("Sun raster", width, height, channels, depth)


# ----------------------------------------------------------------------------------------------------------
# JPEG XL: the codestream (FF 0A) starts with a bit-packed SizeHeader; in the container it is the payload
# of the 'jxlc' box or of the first 'jxlp' box (after its 4-byte index).

_JXL_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}


def _jxl(d: bytes) -> ImageHeader:
    if d.startswith(b"\xff\x0a"):
        return _jxl_codestream(d, 2)
    for btype, start, _end in _boxes(d, 0, len(d), "JPEG XL"):
        if btype == b"jxlc":
            return _jxl_codestream(d, start + 2) if d[start : start + 2] == b"\xff\x0a" else _jxl_bad()
        if btype == b"jxlp":
            return _jxl_codestream(d, start + 6) if d[start + 4 : start + 6] == b"\xff\x0a" else _jxl_bad()
    raise ImageHeaderError("JPEG XL ends before its codestream")


def _jxl_bad():
    raise ImageHeaderError("JPEG XL codestream does not start with FF 0A")


def _jxl_codestream(d: bytes, pos: int) -> ImageHeader:
    chunk = d[pos : pos + 16]
    value = int.from_bytes(chunk, "little")
    available = len(chunk) * 8
    state = {"bit": 0}

    def bits(n: int) -> int:
        if state["bit"] + n > available:
            raise ImageHeaderError("JPEG XL size header truncated")
        v = (value >> state["bit"]) & ((1 << n) - 1)
        state["bit"] += n
        return v

    def u32_size() -> int:
        return bits((9, 13, 18, 30)[bits(2)]) + 1

    small = bits(1)
    height = (bits(5) + 1) * 8 if small else u32_size()
    ratio = bits(3)
    if ratio == 0:
        width = (bits(5) + 1) * 8 if small else u32_size()
    else:
        num, den = _JXL_RATIOS[ratio]
        width = height * num // den
    _check_size("JPEG XL", width, height)
    return ImageHeader("JPEG XL", width, height, None, None)


# ----------------------------------------------------------------------------------------------------------
# QOI: "qoif", width, height (big-endian 32-bit), channels, colour space.


def _qoi(d: bytes) -> ImageHeader:
    width, height = _u32be(d, 4, "QOI header"), _u32be(d, 8, "QOI header")
    channels = _uint(d, 12, 1, True, "QOI header")
    _check_size("QOI", width, height)
    if channels not in (3, 4):
        raise ImageHeaderError(f"QOI header declares {channels} channels")
    return ImageHeader("QOI", width, height, channels, 8)


_PARSERS = {
    "PNG": _png,
    "JPEG": _jpeg,
    "WebP": _webp,
    "BMP": _bmp,
    "TIFF": _tiff,
    "GIF": _gif,
    "PNM": _pnm,
    "PFM": _pfm,
    "JPEG 2000": _jpeg2000,
    "AVIF": _isobmff,
    "HEIF": _isobmff,
    "HDR": _hdr,
    "EXR": _exr,
    "Sun raster": _sun_raster,
    "JPEG XL": _jxl,
    "QOI": _qoi,
}
