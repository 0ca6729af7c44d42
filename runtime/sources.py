"""Frame sources for ``tddfa-run``: one image, a folder of images, a video file or a camera.

Each source yields ``Frame``s in order. A frame that cannot be read carries an ``error`` and no image,
so the caller can report it and go on; problems that end a stream early (a truncated video, a camera
that stops delivering) are collected in ``source.problems``. Opening something unusable (missing path,
unsupported format, a camera that cannot be opened) raises ``InputImageError`` with one clear line.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from .errors import InputImageError
from .frames import as_bgr_uint8, decode_image, image_format

IMAGE_SUFFIXES = frozenset(
    ".jpg .jpeg .jpe .png .bmp .dib .tif .tiff .webp .pbm .pgm .ppm .pnm .jp2 .sr .ras".split()
)
VIDEO_SUFFIXES = frozenset(".mp4 .m4v .mov .avi .mkv .webm .mpg .mpeg .ts .mts .wmv .flv .3gp .ogv .mjpeg .h264".split())
_MP4_SUFFIXES = frozenset(".mp4 .m4v .mov .3gp".split())
CAMERA_STALL_SECONDS = 2.0  # a camera that delivers nothing for this long has stopped
# FFmpeg decoder threads for video files (0: one per core). Each extra thread keeps its own reference frames:
# on obama.mp4 (720p) one thread peaks 9 MB lower than two, at the same speed here. $TDDFA_EDGE_DECODE_THREADS.
VIDEO_DECODE_THREADS = int(os.environ.get("TDDFA_EDGE_DECODE_THREADS", "1") or 0)


@dataclass
class Frame:
    """One input frame. Video and camera sources decode every frame into the same buffer: copy ``image``
    to keep it beyond the next frame."""

    index: int
    source: str  # file name, or "camera:N"
    image: np.ndarray | None  # BGR uint8, None when unreadable
    timestamp: float | None  # seconds: video pts, wall time for cameras, None for still images
    error: str | None = None


class FrameSource:
    kind = "source"
    sequential = False  # consecutive frames of one scene: tracking is the default
    name = ""
    length: int | None = None  # frames expected (an estimate for videos), None when unknown
    fps: float | None = None

    def __init__(self) -> None:
        self.problems: list[str] = []

    def __iter__(self) -> Iterator[Frame]:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


class ImageSource(FrameSource):
    kind = "image"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path, self.name, self.length = path, path.name, 1

    def __iter__(self) -> Iterator[Frame]:
        yield _read_image_frame(0, self.path)


class FolderSource(FrameSource):
    """The image files of a folder (by suffix, not recursive) in natural name order: frame2 before frame10."""

    kind = "folder"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path, self.name = path, path.name
        self.files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()), key=_natural_key)
        if not self.files:
            raise InputImageError(f"no images in folder {path} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        self.length = len(self.files)

    def __iter__(self) -> Iterator[Frame]:
        for i, path in enumerate(self.files):
            yield _read_image_frame(i, path)


class VideoSource(FrameSource):
    kind = "video"
    sequential = True

    def __init__(self, path: Path, decode_threads: int | None = None) -> None:
        super().__init__()
        self.path, self.name = path, path.name
        truncated = mp4_truncation(path) if path.suffix.lower() in _MP4_SUFFIXES else None
        threads = VIDEO_DECODE_THREADS if decode_threads is None else decode_threads
        params = [cv2.CAP_PROP_N_THREADS, threads] if threads else []
        self._cap = cv2.VideoCapture(str(path), cv2.CAP_ANY, params)
        if not self._cap.isOpened():
            self._cap.release()
            why = truncated or "corrupt, truncated or not a video format this OpenCV build reads"
            raise InputImageError(f"cannot open video {path}: {why}")
        # MP4/MOV frame counts ignore edit lists (obama.mp4 announces 158, plays 55): they are checked by box sizes instead.
        self._count_is_reliable = path.suffix.lower() not in _MP4_SUFFIXES
        if truncated:
            self.problems.append(f"{path.name}: {truncated}; frames after the cut are lost")
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.length = count if count > 0 else None  # containers with edit lists over-count; the bar is a guide
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0 < fps < 1000 else None

    def __iter__(self) -> Iterator[Frame]:
        index, last_t, image = 0, -1.0, None
        step = 1.0 / (self.fps or 25.0)
        while True:
            ok, image = self._cap.read(image)  # decodes into the previous frame's buffer
            if not ok:
                break
            t = self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if not np.isfinite(t) or t <= last_t:
                t = last_t + step if index else 0.0
            last_t = t
            yield _checked_frame(index, self.name, image, t)
            index += 1
        if index == 0:
            self.problems.append(f"{self.name}: no frame could be decoded")
        elif self._count_is_reliable and self.length and index < 0.98 * self.length - 1:
            self.problems.append(f"{self.name}: ended after {index} of {self.length} frames (truncated or corrupt file)")

    def close(self) -> None:
        self._cap.release()


def open_camera(device: int | str):
    """The capture object for a camera index, device path or stream URL (a seam for tests and other backends)."""
    return cv2.VideoCapture(device)


class CameraSource(FrameSource):
    """A live source: ``cv2.VideoCapture(index | /dev/videoN | rtsp://...)``; wall-clock timestamps.

    Gives up when no frame arrives for ``stall_seconds``.
    """

    kind = "camera"
    sequential = True

    def __init__(self, device: int | str, stall_seconds: float | None = None) -> None:
        super().__init__()
        self.device, self.name = device, f"camera:{device}"
        self.stall_seconds = CAMERA_STALL_SECONDS if stall_seconds is None else stall_seconds
        self._cap = open_camera(device)
        if not self._cap.isOpened():
            self._cap.release()
            raise InputImageError(f"cannot open camera {device} (no such device, in use by another program, or no permission)")
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0 < fps < 1000 else None

    def __iter__(self) -> Iterator[Frame]:
        index, image = 0, None
        while True:
            ok, image = self._cap.read(image)
            if not ok:
                ok, image = self._retry()
                if not ok:
                    self.problems.append(f"{self.name} stopped delivering frames after {index} frame(s)")
                    return
            yield _checked_frame(index, self.name, image, time.time())
            index += 1

    def _retry(self):
        deadline = time.monotonic() + self.stall_seconds
        while time.monotonic() < deadline:
            time.sleep(0.05)
            ok, image = self._cap.read()
            if ok:
                return ok, image
        return False, None

    def close(self) -> None:
        self._cap.release()


def open_source(spec: str) -> FrameSource:
    """An image, a folder, a video file, a camera ("0", "/dev/video0") or a stream URL as a ``FrameSource``."""
    path = Path(spec)
    if re.fullmatch(r"\d{1,3}", spec) and not path.exists():
        return CameraSource(int(spec))
    if re.match(r"^(rtsp|rtsps|rtmp|http|https|udp|tcp)://", spec):
        return CameraSource(spec)  # a network stream is live: wall-clock time, stall detection
    if path.is_char_device():
        return CameraSource(spec)
    if path.is_dir():
        return FolderSource(path)
    if not path.exists():
        raise InputImageError(f"input not found: {spec}")
    if not path.is_file():
        raise InputImageError(f"input is not a regular file: {spec}")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return ImageSource(path)
    if suffix in VIDEO_SUFFIXES:
        return VideoSource(path)
    with open(path, "rb") as fh:
        head = fh.read(16)
    if image_format(head) is not None:
        return ImageSource(path)
    try:
        return VideoSource(path)
    except InputImageError:
        raise InputImageError(f"unsupported input {spec}: neither an image nor a video this build can read") from None


def mp4_truncation(path: Path) -> str | None:
    """Why an MP4/MOV file is cut short (its last top-level box runs past the end), or None."""
    size = path.stat().st_size
    pos, boxes = 0, []
    try:
        with open(path, "rb") as fh:
            while pos + 8 <= size:
                fh.seek(pos)
                header = fh.read(16)
                box_size, kind = int.from_bytes(header[:4], "big"), header[4:8]
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
    except OSError:
        return None
    if boxes and b"moov" not in boxes:
        return "truncated or incomplete file (no moov box)"
    return None


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _read_image_frame(index: int, path: Path) -> Frame:
    try:
        image = decode_image(path.read_bytes(), path.name)
    except OSError as exc:
        return Frame(index, path.name, None, None, f"cannot read {path.name}: {exc.strerror or exc}")
    except InputImageError as exc:
        return Frame(index, path.name, None, None, str(exc))
    return Frame(index, path.name, image, None)


def _checked_frame(index: int, name: str, image, timestamp: float) -> Frame:
    try:
        return Frame(index, name, as_bgr_uint8(image), timestamp)
    except InputImageError as exc:
        return Frame(index, name, None, timestamp, f"frame {index}: {exc}")


__all__ = ["Frame", "FrameSource", "ImageSource", "FolderSource", "VideoSource", "CameraSource", "open_source", "mp4_truncation"]
