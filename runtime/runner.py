"""``run(...)``: frames from a source -> faces -> JSON Lines records, annotated images/video and meshes.

The library function behind ``tddfa-run``. One record per frame, written and flushed as soon as the frame
is done, so a killed process loses nothing it finished:

    {"frame": 0, "timestamp": 0.0, "source": "obama.mp4", "width": 1280, "height": 720, "detected": true,
     "faces": [{"track_id": 0, "box": [x1, y1, x2, y2], "score": 0.99, "landmarks_68": [[x, y, z], ...],
                "pose_ypr": [yaw, pitch, roll], "dense_vertices": [[x, y, z], ...]  (with dense)}]}

A frame that cannot be used gets ``"error": "..."`` and no faces; the run goes on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

import cv2
import numpy as np

from .aligner import Face, FaceAligner
from .drawing import draw_faces
from .errors import BundleError, IncompleteRunError, OptionError, OutputError, TddfaEdgeError
from .mesh_io import vertex_colors, write_mesh
from .sources import IMAGE_SUFFIXES, Frame, FrameSource
from .tracking import Tracker

VIDEO_OUT_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}


@dataclass(frozen=True)
class RunOptions:
    track: bool | None = None  # None: track sequential sources (video, camera), not images
    detect_interval: int | None = None  # None: the bundle's pipeline value
    smoothing: bool | None = None  # None: the bundle's pipeline value
    max_faces: int | None = None
    dense: bool = False  # dense vertices in the records
    mesh_dir: Path | None = None
    mesh_format: str = "ply"
    draw: Path | None = None
    max_frames: int | None = None
    decimals: int = 2


@dataclass
class RunSummary:
    frames: int = 0  # frames handled (records written)
    failed: int = 0  # frames / files with an error
    faces: int = 0
    problems: list[str] = field(default_factory=list)  # stream-level problems (truncated video, camera stopped)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and not self.problems


def face_record(face: Face, decimals: int = 2, dense: bool = False) -> dict:
    rec = {
        "track_id": face.track_id,
        "box": np.round(face.box[:4].astype(np.float64), decimals).tolist(),
        "score": round(float(face.score), 4),
        "landmarks_68": np.round(face.landmarks_68.astype(np.float64), decimals).tolist(),
        "pose_ypr": np.round(np.asarray(face.pose_ypr, dtype=np.float64), 2).tolist(),
    }
    if dense and face.dense_vertices is not None:
        rec["dense_vertices"] = np.round(face.dense_vertices.astype(np.float64), decimals).tolist()
    return rec


class RecordWriter:
    """JSON Lines, one line per frame, flushed at once."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.count = 0

    def write(self, record: dict) -> None:
        self.stream.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.stream.flush()
        self.count += 1


class AnnotationSink:
    """``--draw``: one annotated image per input image, or one annotated video for a video/camera."""

    def __init__(self, target: Path, source: FrameSource) -> None:
        self.target, self.source = target, source
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        suffix = target.suffix.lower()
        if source.sequential:
            if suffix not in VIDEO_OUT_FOURCC:
                raise OptionError(f"--draw for a {source.kind} needs a video path ({', '.join(sorted(VIDEO_OUT_FOURCC))}), got {target}")
            self.mode = "video"
        elif source.kind == "image" and suffix in IMAGE_SUFFIXES:
            self.mode = "file"
        else:
            if suffix in IMAGE_SUFFIXES:
                raise OptionError(f"--draw for a folder needs a folder, got the image path {target}")
            self.mode = "folder"
        _mkdir(target if self.mode == "folder" else target.parent)

    def write(self, frame: Frame, annotated: np.ndarray) -> None:
        if self.mode == "video":
            self._write_video(annotated)
            return
        path = self.target if self.mode == "file" else self.target / frame.source
        if not cv2.haveImageWriter(str(path)):
            path = path.with_suffix(".png")
        ok, encoded = cv2.imencode(path.suffix, annotated)
        if not ok:
            raise OutputError(f"cannot encode annotated image {path}")
        try:
            path.write_bytes(encoded.tobytes())
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None

    def _write_video(self, annotated: np.ndarray) -> None:
        h, w = annotated.shape[:2]
        if self._writer is None:
            fourcc = cv2.VideoWriter_fourcc(*VIDEO_OUT_FOURCC[self.target.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self.target), fourcc, float(self.source.fps or 25.0), (w, h))
            if not self._writer.isOpened():
                raise OutputError(f"cannot write video {self.target} (no encoder for {self.target.suffix} or no permission)")
            self._size = (w, h)
        if (w, h) != self._size:
            annotated = cv2.resize(annotated, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(annotated)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


class MeshSink:
    """``--mesh-dir``: one mesh file per face, ``<source stem>_<frame>_<face>.<ply|obj>``."""

    def __init__(self, folder: Path, fmt: str, triangles: np.ndarray | None) -> None:
        if triangles is None:
            raise BundleError("this bundle's dense 3DMM has no triangles: cannot write meshes")
        self.folder, self.fmt, self.triangles = folder, fmt, triangles
        _mkdir(folder)

    def write(self, frame: Frame, faces: list[Face]) -> None:
        stem = Path(frame.source).stem
        for k, face in enumerate(faces):
            if face.dense_vertices is None:
                continue
            face_id = face.track_id if face.track_id is not None else k
            path = self.folder / f"{stem}_{frame.index:06d}_{face_id}.{self.fmt}"
            try:
                write_mesh(path, face.dense_vertices, self.triangles, frame.image.shape[0], vertex_colors(frame.image, face.dense_vertices))
            except OSError as exc:
                raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create folder {folder}: {exc.strerror or exc}") from None


def detect_and_align(aligner: FaceAligner, image: np.ndarray, max_faces: int | None, dense: bool) -> list[Face]:
    """Image mode: detect, keep the ``max_faces`` best, align them in one batch."""
    boxes = aligner.detect(image)
    if max_faces:
        boxes = boxes[:max_faces]
    return aligner.align(image, boxes, "box", dense=dense)


def run(
    aligner: FaceAligner,
    source: FrameSource,
    records: RecordWriter,
    options: RunOptions = RunOptions(),
    on_frame: Callable[[Frame], None] | None = None,
    on_error: Callable[[str], None] | None = None,
) -> RunSummary:
    """Process every frame of ``source``; returns what happened. Typed errors escape only for setup
    problems (outputs, a bundle without the dense mesh); per-frame problems become error records."""
    need_dense = options.dense or options.mesh_dir is not None
    if need_dense and not aligner.morphable_model.has_dense:
        raise BundleError("this bundle has no dense 3DMM basis (its target sets dense = false); "
                          "re-export with tddfa-export --dense, or drop --dense/--mesh-dir")
    track = source.sequential if options.track is None else options.track
    tracker = (
        Tracker(aligner, options.detect_interval, max_faces=options.max_faces, smoothing=options.smoothing, fps=source.fps or 30.0)
        if track else None
    )
    draw = AnnotationSink(options.draw, source) if options.draw else None
    meshes = MeshSink(options.mesh_dir, options.mesh_format, aligner.triangles) if options.mesh_dir else None
    summary = RunSummary()
    report = on_error or (lambda message: None)
    try:
        for frame in source:
            record = {"frame": frame.index, "timestamp": None if frame.timestamp is None else round(frame.timestamp, 4), "source": frame.source}
            faces: list[Face] = []
            error = frame.error
            if error is None:
                record["width"], record["height"] = int(frame.image.shape[1]), int(frame.image.shape[0])
                try:
                    if tracker is not None:
                        faces = tracker(frame.image, frame.timestamp, dense=need_dense)
                        record["detected"] = tracker.last_detected
                    else:
                        faces = detect_and_align(aligner, frame.image, options.max_faces, need_dense)
                except TddfaEdgeError as exc:
                    error = str(exc)
                except (cv2.error, ValueError, ArithmeticError, IndexError) as exc:
                    # A frame the pipeline cannot digest (e.g. a degenerate size) must not end the run.
                    error = f"frame {frame.index} of {frame.source} ({frame.image.shape[1]}x{frame.image.shape[0]}) could not be processed: {_short(exc)}"
                    if tracker is not None:
                        tracker.reset()
            if error is not None:
                record["error"] = error
                summary.failed += 1
                report(error)
            record["faces"] = [face_record(f, options.decimals, options.dense) for f in faces]
            records.write(record)
            summary.frames += 1
            summary.faces += len(faces)
            if error is None:
                if meshes is not None:
                    meshes.write(frame, faces)
                if draw is not None:  # last: it draws into the frame's own buffer
                    draw.write(frame, _annotate(frame.image, faces))
            if on_frame is not None:
                on_frame(frame)
            if options.max_frames is not None and summary.frames >= options.max_frames:
                break
    finally:
        source.close()
        if draw is not None:
            draw.close()
        summary.problems.extend(source.problems)
    return summary


def _short(exc: Exception) -> str:
    if isinstance(exc, cv2.error) and getattr(exc, "err", None):
        return f"OpenCV {exc.func or 'call'} failed ({exc.err})"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[-1] if text else ''}"


def _annotate(image: np.ndarray, faces: list[Face]) -> np.ndarray:
    return draw_faces(image, faces, copy=False)


__all__ = ["run", "RunOptions", "RunSummary", "RecordWriter", "AnnotationSink", "MeshSink", "face_record",
           "detect_and_align", "IncompleteRunError", "OutputError", "OptionError"]
