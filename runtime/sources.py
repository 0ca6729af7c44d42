"""Frame sources for ``tddfa-run``: one image, a folder of images, a video file or a camera / stream.

Each source yields ``Frame``s in order. A frame that cannot be used carries an ``error`` and no image, so
the caller writes its error record and goes on: every folder entry with an image suffix gets exactly one
frame, whatever it is (a directory named ``x.jpg``, a broken or looping symbolic link, a FIFO (never
opened blocking), a device, an image over the decode budget, a format this OpenCV build cannot decode).
A video that yields no frame yields one error frame. Problems that end a stream early after some frames
(a truncated video, a camera or stream that stops delivering) are collected in ``source.problems``.
Opening something unusable (missing path, unsupported format, a camera that cannot be opened) raises
``InputImageError`` with one clear line.

Video truncation is judged from the container's structure only (an MP4 box, the AVI RIFF chunk or the
Matroska segment running past the end of the file), never from the frame count a container announces:
edit lists, remuxes and estimated durations make those counts wrong for intact files (obama.mp4 announces
158 frames and plays 55). The count only sizes the progress bar.

Streams (``rtsp://``, ``http://`` ...) open and read with FFmpeg's timeouts (``timeout`` seconds, default
5): a server that accepts and never sends, or stalls mid-stream, ends the stream after ``timeout``.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from tddfa_edge.contracts.errors import InputImageError, UsageError

from .frames import as_bgr_uint8, file_kind, open_problem, open_regular_file, read_image_file
from .image_header import sniff_format
from .text import clean_message, display_name, short_name

IMAGE_SUFFIXES = frozenset(
    ".jpg .jpeg .jpe .jfif .png .bmp .dib .tif .tiff .webp .pbm .pgm .ppm .pnm .pam .pfm .jp2 .j2k .j2c .jpf .jpx "
    ".sr .ras .gif .avif .heic .heif .hdr .pic .exr .jxl .qoi".split()
)
VIDEO_SUFFIXES = frozenset(".mp4 .m4v .mov .avi .mkv .webm .mpg .mpeg .ts .mts .wmv .flv .3gp .ogv .mjpeg .h264".split())
_MP4_SUFFIXES = frozenset(".mp4 .m4v .mov .3gp".split())
_STILL_FORMATS = frozenset({"JPEG", "PNG", "WebP", "BMP", "TIFF", "GIF", "PNM", "PFM", "JPEG 2000", "HDR", "EXR",
                            "Sun raster", "JPEG XL", "QOI"})
DEFAULT_TIMEOUT = 5.0  # seconds: opening a stream, and the longest stall before a camera or stream counts as stopped
CAMERA_STALL_SECONDS: float | None = None  # None: the source's timeout (a seam for tests)
V4L_MAJOR = 81  # Linux video4linux character devices (/dev/video*)
_URL = re.compile(r"^(rtsp|rtsps|rtmp|rtmps|http|https|udp|tcp|srt|rtp)://", re.IGNORECASE)
DECODE_THREADS_ENV = "TDDFA_EDGE_DECODE_THREADS"


def decode_threads_from_env(environ=os.environ) -> int:
    """FFmpeg decoder threads for video files from $TDDFA_EDGE_DECODE_THREADS (default 1; 0: one per core).

    Each extra thread keeps its own reference frames: on obama.mp4 (720p) one thread peaks 9 MB lower than
    two, at the same speed here. A value that is not a whole number from 0 to 64 is a ``UsageError``."""
    text = environ.get(DECODE_THREADS_ENV, "")
    if not text.strip():
        return 1
    try:
        value = int(text.strip())
    except ValueError:
        value = -1
    if not 0 <= value <= 64:
        raise UsageError(f"${DECODE_THREADS_ENV} must be a whole number from 0 to 64, got {clean_message(repr(text), 60)}")
    return value


@dataclass
class Frame:
    """One input frame. Video and camera sources decode every frame into the same buffer: copy ``image``
    to keep it beyond the next frame."""

    index: int
    source: str  # the input's name for records and messages (escaped: printable, valid Unicode), or "camera:N"
    image: np.ndarray | None  # BGR uint8, None when unreadable
    timestamp: float | None  # seconds: video pts, wall time for cameras, file modification time for images
    error: str | None = None
    path: Path | None = None  # the file (images), for outputs named after it


class FrameSource:
    kind = "source"
    sequential = False  # consecutive frames of one scene: tracking is the default
    name = ""
    length: int | None = None  # frames expected (an estimate for videos), None when unknown
    fps: float | None = None

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.max_pixels: int | None = None

    def __iter__(self) -> Iterator[Frame]:  # pragma: no cover - interface
        raise NotImplementedError

    def resume(self, sources: set[str], last_frame: dict[str, int]) -> int:
        """Skip what an earlier run recorded (``--resume``); returns how many inputs / frames are skipped."""
        return 0

    def close(self) -> None:
        pass


def _oversize(width: int, height: int, max_pixels: int | None) -> bool:
    return max_pixels is not None and width * height > max_pixels


def _frame_limit_message(what: str, width: int, height: int, max_pixels: int) -> str:
    return (f"{what} {width} x {height} ({width * height / 1e6:.1f} MP) is over the decode limit of "
            f"{max_pixels / 1e6:.1f} MP (--max-pixels {max_pixels})")


def _read_image_frame(index: int, path: Path, name: str, max_pixels: int | None) -> Frame:
    """Never raises (except KeyboardInterrupt): any failure is the frame's error."""
    try:
        image, mtime = read_image_file(path, name, max_pixels)
    except InputImageError as exc:
        return Frame(index, name, None, _mtime(path), clean_message(exc), path)
    except MemoryError:
        return Frame(index, name, None, _mtime(path), f"cannot decode {short_name(name)}: out of memory", path)
    except Exception as exc:  # noqa: BLE001 - one bad file must not end the run
        return Frame(index, name, None, _mtime(path), f"cannot read {short_name(name)}: {type(exc).__name__}: {clean_message(exc, 300)}", path)
    return Frame(index, name, image, round(mtime, 6), None, path)


def _mtime(path: Path) -> float | None:
    try:
        return round(os.stat(path).st_mtime, 6)
    except (OSError, ValueError):
        return None


class ImageSource(FrameSource):
    kind = "image"

    def __init__(self, path: Path, max_pixels: int | None = None) -> None:
        super().__init__()
        self.path, self.name, self.length, self.max_pixels = path, display_name(path.name), 1, max_pixels
        self._skip = False

    def resume(self, sources, last_frame) -> int:
        self._skip = self.name in sources
        return int(self._skip)

    def __iter__(self) -> Iterator[Frame]:
        if not self._skip:
            yield _read_image_frame(0, self.path, self.name, self.max_pixels)


class FolderSource(FrameSource):
    """The entries of a folder whose name has an image suffix (not recursive), in natural name order
    (frame2 before frame10). Entries that are not usable image files still get a frame, with an error."""

    kind = "folder"

    def __init__(self, path: Path, max_pixels: int | None = None) -> None:
        super().__init__()
        self.path, self.name, self.max_pixels = path, display_name(path.name or str(path)), max_pixels
        try:
            with os.scandir(path) as it:
                names = [e.name for e in it if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES]
        except OSError as exc:
            raise InputImageError(f"cannot list folder {short_name(path)}: {open_problem(path, exc)}") from None
        names.sort(key=_natural_key)
        self.entries = [(i, name, path / name) for i, name in enumerate(names)]
        if not self.entries:
            raise InputImageError(f"no images in folder {short_name(path)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        self.length = len(self.entries)

    @property
    def files(self) -> list[Path]:
        return [p for _, _, p in self.entries]

    def resume(self, sources, last_frame) -> int:
        before = len(self.entries)
        self.entries = [e for e in self.entries if display_name(e[1]) not in sources]
        self.length = len(self.entries)
        return before - len(self.entries)

    def __iter__(self) -> Iterator[Frame]:
        for index, name, path in self.entries:
            yield _read_image_frame(index, path, display_name(name), self.max_pixels)


class VideoSource(FrameSource):
    kind = "video"
    sequential = True

    def __init__(self, path: Path, decode_threads: int | None = None, max_pixels: int | None = None) -> None:
        super().__init__()
        self.path, self.name, self.max_pixels = path, display_name(path.name), max_pixels
        self._skip_through = -1
        shown = short_name(path)
        fd, st = open_regular_file(path, shown)
        try:
            head = os.pread(fd, 4096, 0)
            if not head:
                raise InputImageError(f"cannot open video {shown}: empty file (0 bytes)")
            still = sniff_format(head)
            if still in _STILL_FORMATS:
                raise InputImageError(f"not a video: {shown} holds a {still} image")
            truncated = container_truncation(fd, st.st_size, head)
            threads = decode_threads_from_env() if decode_threads is None else decode_threads
            params = [cv2.CAP_PROP_N_THREADS, threads] if threads else []
            try:
                self._cap = cv2.VideoCapture(_cv_path(path, fd), cv2.CAP_ANY, params)
                opened = self._cap.isOpened()
            except cv2.error:
                opened = False
                self._cap = None
        finally:
            os.close(fd)
        if not opened:
            self.close()
            why = truncated or "corrupt, truncated or not a video format this OpenCV build reads"
            raise InputImageError(f"cannot open video {shown}: {why}")
        self.truncated = truncated
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.length = count if count > 0 else None  # containers over-count (edit lists, estimates): the bar's guide only
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0 < fps < 1000 else None
        width, height = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        if _oversize(width, height, max_pixels):
            self.close()
            raise InputImageError(f"cannot decode video {shown}: " + _frame_limit_message("its frames are", width, height, max_pixels))

    def resume(self, sources, last_frame) -> int:
        self._skip_through = last_frame.get(self.name, -1)
        return self._skip_through + 1

    def __iter__(self) -> Iterator[Frame]:
        index, last_t, image = 0, -1.0, None
        step = 1.0 / (self.fps or 25.0)
        failure = None
        while True:
            try:
                ok, image = self._cap.read(image)  # decodes into the previous frame's buffer
            except cv2.error as exc:
                ok, failure = False, clean_message(getattr(exc, "err", "") or "decoder error", 200)
            if not ok:
                break
            t = self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if not np.isfinite(t) or t <= last_t:
                t = last_t + step if index else 0.0
            last_t = t
            if index > self._skip_through:
                yield _checked_frame(index, self.name, image, t, self.max_pixels)
            index += 1
        self.decoded = index
        if index == 0:
            why = self.truncated or (f"the decoder failed ({failure})" if failure else "no frame could be decoded (corrupt or empty video)")
            yield Frame(0, self.name, None, None, f"{short_name(self.name)}: {why}")
        elif self.truncated:
            self.problems.append(f"{short_name(self.name)}: {self.truncated}; ended after {index} frame(s)")
        elif failure:
            self.problems.append(f"{short_name(self.name)}: the decoder failed after {index} frame(s) ({failure})")

    def close(self) -> None:
        if getattr(self, "_cap", None) is not None:
            self._cap.release()


def _cv_path(path: Path, fd: int) -> str:
    """A file name OpenCV can take: the path itself, or (not valid UTF-8) the descriptor's /proc path."""
    text = str(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        proc = f"/proc/self/fd/{fd}"
        return proc if os.path.exists(proc) else text


def open_camera(device: int | str, timeout: float | None = None):
    """The capture object for a camera index, device path or stream URL (a seam for tests and other backends).

    Streams get FFmpeg's open and read timeouts, so a server that accepts and never sends cannot hang us."""
    if isinstance(device, str) and _URL.match(device):
        ms = int(1000 * (DEFAULT_TIMEOUT if timeout is None else timeout))
        return cv2.VideoCapture(device, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
    return cv2.VideoCapture(device)


def _masked(url: str) -> str:
    """A stream URL without its password (``rtsp://user:secret@host`` -> ``rtsp://user:***@host``)."""
    return re.sub(r"^([a-zA-Z][\w+.-]*://[^/@:]*):[^/@]*@", r"\1:***@", url)


class CameraSource(FrameSource):
    """A live source: ``cv2.VideoCapture(index | /dev/videoN | rtsp://...)``; wall-clock timestamps.

    A stream ends when FFmpeg gets nothing for ``timeout`` seconds; a local camera when no frame comes for
    ``stall_seconds`` (default: ``timeout``).
    """

    kind = "camera"
    sequential = True

    def __init__(self, device: int | str, stall_seconds: float | None = None, timeout: float | None = None,
                 max_pixels: int | None = None) -> None:
        super().__init__()
        self.timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
        self.stream = isinstance(device, str) and bool(_URL.match(device))
        self.device, self.name, self.max_pixels = device, f"camera:{display_name(_masked(str(device)))}", max_pixels
        if stall_seconds is None:
            stall_seconds = CAMERA_STALL_SECONDS if CAMERA_STALL_SECONDS is not None else self.timeout
        self.stall_seconds = stall_seconds
        self._first = 0
        try:
            self._cap = open_camera(device, self.timeout)
            opened = self._cap.isOpened()
        except cv2.error:
            self._cap, opened = None, False
        if not opened:
            self.close()
            what = "stream" if self.stream else "camera"
            why = (f"nothing usable within {self.timeout:g} s (unreachable, stalled, not a video stream, or wrong URL)" if self.stream
                   else "no such device, in use by another program, or no permission")
            raise InputImageError(f"cannot open {what} {short_name(_masked(str(device)))} ({why})")
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0 < fps < 1000 else None

    def resume(self, sources, last_frame) -> int:
        self._first = last_frame.get(self.name, -1) + 1  # live: append, numbering on
        return 0

    def __iter__(self) -> Iterator[Frame]:
        index, image = 0, None
        while True:
            try:
                ok, image = self._cap.read(image)
            except cv2.error:
                ok = False
            if not ok:
                ok, image = (False, None) if self.stream else self._retry()
                if not ok:
                    if index == 0:
                        yield Frame(self._first, self.name, None, time.time(),
                                    f"{short_name(self.name)} delivered no frame (nothing for {self.stall_seconds:g} s)")
                    else:
                        self.problems.append(f"{short_name(self.name)} stopped delivering frames after {index} frame(s)")
                    return
            yield _checked_frame(self._first + index, self.name, image, time.time(), self.max_pixels)
            index += 1

    def _retry(self):
        deadline = time.monotonic() + self.stall_seconds
        while time.monotonic() < deadline:
            time.sleep(0.05)
            try:
                ok, image = self._cap.read()
            except cv2.error:
                ok, image = False, None
            if ok:
                return ok, image
        return False, None

    def close(self) -> None:
        if getattr(self, "_cap", None) is not None:
            self._cap.release()


def _safe_stat(path: str, shown: str) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT and not os.path.islink(path):
            raise InputImageError(f"input not found: {shown}") from None
        raise InputImageError(f"cannot use input {shown}: {open_problem(path, exc)}") from None
    except ValueError:  # embedded NUL
        raise InputImageError(f"input not found: {shown} (the name holds a NUL byte)") from None


def classify(spec: str) -> str:
    """"camera", "stream", "folder", "image", "video", "missing" or "other": what ``open_source`` would open."""
    if _URL.match(spec):
        return "stream"
    try:
        st = os.stat(spec)
    except (OSError, ValueError):
        return "camera" if re.fullmatch(r"\d{1,3}", spec) else "missing"
    if stat.S_ISDIR(st.st_mode):
        return "folder"
    if stat.S_ISCHR(st.st_mode):
        return "camera" if _is_v4l(st) else "other"
    if not stat.S_ISREG(st.st_mode):
        return "other"
    suffix = os.path.splitext(spec)[1].lower()
    return "image" if suffix in IMAGE_SUFFIXES else "video"


def _is_v4l(st: os.stat_result) -> bool:
    return os.major(st.st_rdev) == V4L_MAJOR


def open_source(spec: str, max_pixels: int | None = None, timeout: float | None = None,
                decode_threads: int | None = None) -> FrameSource:
    """An image, a folder, a video file, a camera ("0", "/dev/video0") or a stream URL as a ``FrameSource``."""
    if _URL.match(spec):
        return CameraSource(spec, timeout=timeout, max_pixels=max_pixels)  # a network stream is live: wall-clock time
    shown = short_name(spec)
    if re.fullmatch(r"\d{1,3}", spec) and not os.path.lexists(spec):
        return CameraSource(int(spec), timeout=timeout, max_pixels=max_pixels)
    st = _safe_stat(spec, shown)
    path = Path(spec)
    if stat.S_ISDIR(st.st_mode):
        return FolderSource(path, max_pixels)
    if stat.S_ISCHR(st.st_mode):
        if _is_v4l(st):
            return CameraSource(spec, timeout=timeout, max_pixels=max_pixels)
        raise InputImageError(f"cannot use input {shown}: it is a character device that is not a camera (video4linux)")
    if not stat.S_ISREG(st.st_mode):
        raise InputImageError(f"cannot use input {shown}: it is {file_kind(st.st_mode)}, not an image, video or camera")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return ImageSource(path, max_pixels)
    if suffix in VIDEO_SUFFIXES:
        return VideoSource(path, decode_threads, max_pixels)
    fd, _ = open_regular_file(spec, shown)
    try:
        head = os.pread(fd, 4096, 0)
    finally:
        os.close(fd)
    if sniff_format(head) is not None:
        return ImageSource(path, max_pixels)
    try:
        return VideoSource(path, decode_threads, max_pixels)
    except InputImageError:
        raise InputImageError(f"unsupported input {shown}: neither an image nor a video this build can read") from None


# --- container structure: truncation verdicts ---------------------------------------------------------------------

_BOX_TYPE = re.compile(rb"[a-zA-Z0-9 \xa9_-]{4}")


def container_truncation(fd: int, size: int, head: bytes) -> str | None:
    """Why a video file is cut short, judged from its container structure, or None (intact or not judged)."""
    try:
        if head[:4] == b"RIFF":
            return _riff_truncation(fd, size)
        if head[:4] == b"\x1a\x45\xdf\xa3":
            return _matroska_truncation(fd, size)
        if len(head) >= 8 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot", b"uuid"):
            return _mp4_truncation(fd, size)
    except OSError:
        return None
    return None


def mp4_truncation(path: Path) -> str | None:
    """Why an MP4/MOV file is cut short (its last top-level box runs past the end), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        return _mp4_truncation(fd, os.fstat(fd).st_size)
    except OSError:
        return None
    finally:
        os.close(fd)


def _mp4_truncation(fd: int, size: int) -> str | None:
    pos, boxes = 0, []
    for _ in range(100_000):
        if pos + 8 > size:
            break
        header = os.pread(fd, 16, pos)
        box_size, kind = int.from_bytes(header[:4], "big"), header[4:8]
        if not _BOX_TYPE.fullmatch(kind):
            return None  # not an ISO media box: let the decoder decide (and never quote the bytes)
        if box_size == 1 and len(header) >= 16:
            box_size = int.from_bytes(header[8:16], "big")
        elif box_size == 0:
            box_size = size - pos
        if box_size < 8:
            return None  # not an ISO media file we understand: let the decoder decide
        boxes.append(kind)
        if pos + box_size > size:
            missing = "" if b"moov" in boxes else " and has no index (moov box)"
            return f"truncated file ({kind.decode('latin-1')} box ends past the end of the file{missing})"
        pos += box_size
    if boxes and b"moov" not in boxes:
        return "truncated or incomplete file (no moov box)"
    return None


def _riff_truncation(fd: int, size: int) -> str | None:
    """AVI: the RIFF chunk (and OpenDML's RIFF 'AVIX' extensions after it) must end within the file."""
    pos = 0
    while pos + 12 <= size:
        header = os.pread(fd, 12, pos)
        if header[:4] != b"RIFF":
            break  # trailing bytes after the last RIFF chunk: not ours to judge
        length = int.from_bytes(header[4:8], "little")
        form = header[8:12]
        end = pos + 8 + length
        if end > size:
            what = "AVI" if form in (b"AVI ", b"AVIX") else "RIFF"
            return f"truncated file (its {what} RIFF chunk ends {end - size} bytes past the end of the file)"
        pos = end + (length & 1)
        if length == 0:
            break
    return None


def _vint(data: bytes, pos: int) -> tuple[int, int] | None:
    """(value, length) of an EBML variable-size integer with its marker bit removed; value -1 for "unknown"."""
    if pos >= len(data):
        return None
    first = data[pos]
    length = 1
    while length <= 8 and not first & (0x80 >> (length - 1)):
        length += 1
    if length > 8 or pos + length > len(data):
        return None
    value = first & (0xFF >> length)
    for b in data[pos + 1 : pos + length]:
        value = (value << 8) | b
    return (-1 if value == (1 << (7 * length)) - 1 else value), length


def _matroska_truncation(fd: int, size: int) -> str | None:
    """Matroska/WebM: the Segment element after the EBML header must end within the file (unless its size is
    unknown, as in a live recording)."""
    data = os.pread(fd, 4096, 0)
    header = _vint(data, 4)
    if header is None or header[0] < 0:
        return "truncated file (Matroska header cut short)" if size < 64 else None
    pos = 4 + header[1] + header[0]
    if pos + 4 > size:
        return "truncated file (ends inside the Matroska header)"
    seg_head = os.pread(fd, 12, pos)
    if seg_head[:4] != b"\x18\x53\x80\x67":
        return None
    seg = _vint(seg_head, 4)
    if seg is None:
        return "truncated file (ends inside the Matroska segment header)"
    if seg[0] < 0:
        return None
    end = pos + 4 + seg[1] + seg[0]
    if end > size:
        return f"truncated file (its Matroska segment ends {end - size} bytes past the end of the file)"
    return None


def _natural_key(name: str):
    return [(1, int(part), "") if part.isdigit() else (0, 0, part.lower()) for part in re.split(r"(\d+)", name)]


def _checked_frame(index: int, name: str, image, timestamp: float, max_pixels: int | None = None) -> Frame:
    try:
        if image is not None and image.ndim >= 2 and _oversize(image.shape[1], image.shape[0], max_pixels):
            return Frame(index, name, None, timestamp, f"frame {index}: " + _frame_limit_message("frame", image.shape[1], image.shape[0], max_pixels))
        return Frame(index, name, as_bgr_uint8(image), timestamp)
    except InputImageError as exc:
        return Frame(index, name, None, timestamp, f"frame {index}: {clean_message(exc)}")


__all__ = ["Frame", "FrameSource", "ImageSource", "FolderSource", "VideoSource", "CameraSource", "open_source", "classify",
           "mp4_truncation", "container_truncation", "decode_threads_from_env", "IMAGE_SUFFIXES", "VIDEO_SUFFIXES",
           "DEFAULT_TIMEOUT"]
