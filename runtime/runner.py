"""``run(...)``: frames from a source -> faces -> JSON Lines records, annotated images/video, meshes, dense arrays.

The library function behind ``tddfa-run``. One record per frame (per image for folders), written with one
``os.write`` as soon as the frame is done (``jsonl``), so a killed process loses nothing it finished:

    {"frame": 0, "timestamp": 0.0, "source": "obama.mp4", "width": 1280, "height": 720, "detected": true,
     "faces": [{"track_id": 0, "box": [x1, y1, x2, y2], "score": 0.99, "landmarks_68": [[x, y, z], ...],
                "pose_ypr": [yaw, pitch, roll], "keypoints_5": [[x, y], ...]  (YuNet bundles),
                "dense": {"file": "faces.dense/000000.npy", "index": 0}  (--dense)}]}

Every input is isolated: whatever goes wrong with one frame or file (it cannot be read or decoded, the
pipeline fails on it, one of its outputs cannot be written) becomes that record's ``"error"`` and the run
goes on. Only a failure of the records output itself ends the run.

Dense meshes (``--dense``): by default one ``.npy`` file per frame with faces, float32 ``(faces, V, 3)``
in frame pixels, written whole (temporary file + rename) before the record naming it; each face's
``dense`` gives the file (relative to the records file's folder) and its row. ``dense_format="json"``
writes the vertices into the record instead (``dense_vertices``; ~120 ms of JSON per face).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from tddfa_edge.contracts.errors import BundleError, IncompleteRunError, OutputError, TddfaEdgeError, UsageError

from .aligner import Face, FaceAligner
from .atomic import write_atomic
from .drawing import draw_faces
from .interrupts import critical
from .jsonl import RecordWriter
from .mesh_io import vertex_colors, write_mesh
from .sources import IMAGE_SUFFIXES, Frame, FrameSource
from .text import clean_message, short_name
from .tracking import Tracker

VIDEO_OUT_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}
# Suffixes OpenCV writes as 8-bit images here; annotated copies of anything else are written as PNG.
_DRAW_SUFFIXES = frozenset(".jpg .jpeg .jpe .png .bmp .dib .tif .tiff .webp .ppm .pgm .pbm .pnm .jp2 .sr .ras".split())
DENSE_FORMATS = ("npy", "json")


@dataclass(frozen=True)
class RunOptions:
    track: bool | None = None  # None: track sequential sources (video, camera), not images
    detect_interval: int | None = None  # None: the bundle's pipeline value
    smoothing: bool | None = None  # None: the bundle's pipeline value
    max_faces: int | None = None
    dense: bool = False  # dense vertices for every face
    dense_format: str = "npy"  # "npy": one array file per frame, referenced from the record; "json": in the record
    dense_dir: Path | None = None  # where the .npy files go (needed for "npy")
    dense_relative_to: Path | None = None  # the folder record paths are relative to (None: dense_dir as given)
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
    if face.keypoints_5 is not None:
        rec["keypoints_5"] = np.round(face.keypoints_5.astype(np.float64), decimals).tolist()
    if dense and face.dense_vertices is not None:
        rec["dense_vertices"] = np.round(face.dense_vertices.astype(np.float64), decimals).tolist()
    return rec


class AnnotationSink:
    """``--draw``: one annotated image per input image, or one annotated video for a video/camera."""

    def __init__(self, target: Path, source: FrameSource) -> None:
        self.target, self.source = target, source
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        suffix = target.suffix.lower()
        if source.sequential:
            if suffix not in VIDEO_OUT_FOURCC:
                raise UsageError(f"--draw for a {source.kind} needs a video path ({', '.join(sorted(VIDEO_OUT_FOURCC))}), got {short_name(target)}")
            self.mode = "video"
        elif source.kind == "image" and suffix in IMAGE_SUFFIXES:
            self.mode = "file"
        else:
            if suffix in IMAGE_SUFFIXES:
                raise UsageError(f"--draw for a folder needs a folder, got the image path {short_name(target)}")
            self.mode = "folder"
        _mkdir(target if self.mode == "folder" else target.parent)

    def write(self, frame: Frame, annotated: np.ndarray) -> None:
        if self.mode == "video":
            self._write_video(annotated)
            return
        if self.mode == "file":
            path = self.target
        else:
            name = frame.path.name if frame.path is not None else frame.source
            path = self.target / name
        if path.suffix.lower() not in _DRAW_SUFFIXES:
            path = path.with_name(path.name + ".png")
        try:
            ok, encoded = cv2.imencode(path.suffix, annotated)
        except cv2.error:
            ok = False
        if not ok:
            raise OutputError(f"cannot encode annotated image {short_name(path)}")
        try:
            write_atomic(path, lambda fh: fh.write(encoded.data))
        except OSError as exc:
            raise OutputError(f"cannot write {short_name(path)}: {exc.strerror or exc}") from None

    def _write_video(self, annotated: np.ndarray) -> None:
        h, w = annotated.shape[:2]
        if self._writer is None:
            fourcc = cv2.VideoWriter_fourcc(*VIDEO_OUT_FOURCC[self.target.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self.target), fourcc, float(self.source.fps or 25.0), (w, h))
            if not self._writer.isOpened():
                raise OutputError(f"cannot write video {short_name(self.target)} (no encoder for {self.target.suffix} or no permission)")
            self._size = (w, h)
        if (w, h) != self._size:
            annotated = cv2.resize(annotated, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(annotated)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


def _stem(frame: Frame) -> str:
    """A file-name stem for outputs named after the input, at most 100 bytes (names may be 255 bytes)."""
    raw = frame.path.name if frame.path is not None else frame.source
    stem = os.path.splitext(raw)[0] if frame.path is not None else raw
    stem = "".join(c if c not in "/\\:" else "_" for c in stem)
    data = os.fsencode(stem)
    return os.fsdecode(data[:100]) if len(data) > 100 else stem


class MeshSink:
    """``--mesh-dir``: one mesh file per face, ``<source stem>_<frame>_<face>.<ply|obj>``, each written whole."""

    def __init__(self, folder: Path, fmt: str, triangles: np.ndarray | None) -> None:
        if triangles is None:
            raise BundleError("this bundle's dense 3DMM has no triangles: cannot write meshes")
        self.folder, self.fmt, self.triangles = folder, fmt, triangles
        _mkdir(folder)

    def write(self, frame: Frame, faces: list[Face]) -> None:
        stem = _stem(frame)
        for k, face in enumerate(faces):
            if face.dense_vertices is None:
                continue
            face_id = face.track_id if face.track_id is not None else k
            path = self.folder / f"{stem}_{frame.index:06d}_{face_id}.{self.fmt}"
            try:
                write_mesh(path, face.dense_vertices, self.triangles, frame.image.shape[0], vertex_colors(frame.image, face.dense_vertices))
            except OSError as exc:
                raise OutputError(f"cannot write {short_name(path)}: {exc.strerror or exc}") from None


class DenseSink:
    """``--dense`` (npy): one float32 ``(faces, V, 3)`` ``.npy`` per frame with faces, renamed into place whole."""

    def __init__(self, folder: Path, relative_to: Path | None, sequential: bool) -> None:
        self.folder, self.sequential = folder, sequential
        _mkdir(folder)
        if relative_to is not None:
            try:
                prefix = os.path.relpath(os.path.abspath(folder), os.path.abspath(relative_to))
            except ValueError:
                prefix = os.path.abspath(folder)
        else:
            prefix = os.fspath(folder)
        self.prefix = prefix.replace(os.sep, "/")

    def file_name(self, frame: Frame) -> str:
        if self.sequential:
            return f"{frame.index:06d}.npy"
        # Folder runs: the frame number alone could name another image's file after --resume on a changed folder.
        tag = hashlib.blake2b(os.fsencode(frame.path.name if frame.path is not None else frame.source), digest_size=4).hexdigest()
        return f"{frame.index:06d}-{tag}.npy"

    def write(self, frame: Frame, faces: list[Face]) -> list[dict | None]:
        have = [f for f in faces if f.dense_vertices is not None]
        if not have:
            return [None] * len(faces)
        count = len(have[0].dense_vertices)
        array = np.empty((len(have), count, 3), dtype=np.float32)
        for row, face in zip(array, have):
            row[...] = face.dense_vertices
        name = self.file_name(frame)
        try:
            write_atomic(self.folder / name, lambda fh: np.lib.format.write_array(fh, array, allow_pickle=False))
        except OSError as exc:
            raise OutputError(f"cannot write {short_name(self.folder / name)}: {exc.strerror or exc}") from None
        ref = f"{self.prefix}/{name}" if self.prefix not in ("", ".") else name
        refs, k = [], 0
        for face in faces:
            if face.dense_vertices is None:
                refs.append(None)
            else:
                refs.append({"file": ref, "index": k})
                k += 1
        return refs


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create folder {short_name(folder)}: {exc.strerror or exc}") from None


def run(
    aligner: FaceAligner,
    source: FrameSource,
    records: RecordWriter,
    options: RunOptions = RunOptions(),
    on_frame: Callable[[Frame], None] | None = None,
    on_error: Callable[[str], None] | None = None,
) -> RunSummary:
    """Process every frame of ``source``; returns what happened. Typed errors escape only for setup problems
    (outputs that cannot be created, a bundle without the dense mesh) and for the records output itself;
    everything that goes wrong with one frame or file becomes its error record."""
    need_dense = options.dense or options.mesh_dir is not None
    if need_dense and not aligner.morphable_model.has_dense:
        raise BundleError("this bundle has no dense 3DMM basis (its target sets dense = false); "
                          "re-export with tddfa-export --dense, or drop --dense/--mesh-dir")
    if options.dense and options.dense_format not in DENSE_FORMATS:
        raise UsageError(f"unknown dense format {options.dense_format!r} (use one of {', '.join(DENSE_FORMATS)})")
    dense_npy = options.dense and options.dense_format == "npy"
    if dense_npy and options.dense_dir is None:
        raise UsageError("dense npy output needs a folder (dense_dir)")
    track = source.sequential if options.track is None else options.track
    tracker = (
        Tracker(aligner, options.detect_interval, max_faces=options.max_faces, smoothing=options.smoothing, fps=source.fps or 30.0)
        if track else None
    )
    summary = RunSummary()
    draw = None
    try:
        draw = AnnotationSink(options.draw, source) if options.draw else None
        meshes = MeshSink(options.mesh_dir, options.mesh_format, aligner.triangles) if options.mesh_dir else None
        dense_sink = DenseSink(options.dense_dir, options.dense_relative_to, source.sequential) if dense_npy else None
        report = on_error or (lambda message: None)
        frames = iter(source)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001 - the source broke: keep what we have
                problem = f"{short_name(source.name)}: reading stopped: {_short(exc)}"
                if summary.frames == 0:  # the input still gets its record
                    records.write({"frame": 0, "timestamp": None, "source": source.name, "detected": False, "faces": [],
                                   "error": problem})
                    summary.frames, summary.failed = 1, 1
                    report(problem)
                else:
                    summary.problems.append(problem)
                break
            record, faces, error = _process(frame, aligner, tracker, need_dense, options)
            with critical():  # the files a record names, then the record: no signal between them
                if error is None:
                    try:
                        refs = dense_sink.write(frame, faces) if dense_sink is not None else None
                        if meshes is not None:
                            meshes.write(frame, faces)
                        if draw is not None:  # last: it draws into the frame's own buffer
                            draw.write(frame, draw_faces(frame.image, faces, copy=False))
                    except Exception as exc:  # noqa: BLE001 - an output of one frame failed: its record says so
                        error, refs = _output_problem(frame, exc), None
                    if refs is not None:
                        for face_rec, ref in zip(record["faces"], refs):
                            if ref is not None:
                                face_rec["dense"] = ref
                if error is not None:
                    record["error"] = error
                    summary.failed += 1
                records.write(record)
            if error is not None:
                report(error)
            summary.frames += 1
            summary.faces += len(faces)
            if on_frame is not None:
                on_frame(frame)
            if options.max_frames is not None and summary.frames >= options.max_frames:
                break
    finally:
        source.close()
        if draw is not None:
            try:
                draw.close()
            except Exception:  # noqa: BLE001
                pass
        summary.problems.extend(source.problems)
    return summary


def _process(frame: Frame, aligner: FaceAligner, tracker: Tracker | None, need_dense: bool, options: RunOptions):
    """The record of one frame (without outputs), its faces and its error; never raises ``Exception``."""
    timestamp = None if frame.timestamp is None else round(float(frame.timestamp), 6)
    record = {"frame": frame.index, "timestamp": timestamp, "source": frame.source}
    faces: list[Face] = []
    error = frame.error
    detected = False
    if error is None:
        try:
            record["width"], record["height"] = int(frame.image.shape[1]), int(frame.image.shape[0])
            if tracker is not None:
                faces = tracker(frame.image, frame.timestamp, dense=need_dense)
                detected = bool(tracker.last_detected)
            else:
                faces = aligner(frame.image, dense=need_dense, max_faces=options.max_faces)
                detected = True
        except TddfaEdgeError as exc:
            error, faces = clean_message(exc), []
        except Exception as exc:  # noqa: BLE001 - a frame the pipeline cannot digest must not end the run
            shape = getattr(frame.image, "shape", (0, 0))
            error = (f"frame {frame.index} of {short_name(frame.source)} ({shape[1]}x{shape[0]}) could not be processed: "
                     f"{_short(exc)}")
            faces = []
        if error is not None and tracker is not None:
            tracker.reset()
    record["detected"] = detected
    try:
        record["faces"] = [face_record(f, options.decimals, options.dense and options.dense_format == "json") for f in faces]
    except Exception as exc:  # noqa: BLE001
        error, faces = f"frame {frame.index} of {short_name(frame.source)}: cannot format its faces: {_short(exc)}", []
        record["faces"] = []
    return record, faces, error


def _output_problem(frame: Frame, exc: Exception) -> str:
    if isinstance(exc, TddfaEdgeError):
        return clean_message(exc)
    return f"cannot write the outputs of {short_name(frame.source)}: {_short(exc)}"


def _short(exc: BaseException) -> str:
    if isinstance(exc, cv2.error) and getattr(exc, "err", None):
        return clean_message(f"OpenCV {exc.func or 'call'} failed ({exc.err})", 300)
    text = str(exc).strip()
    return clean_message(f"{type(exc).__name__}: {text.splitlines()[-1] if text else ''}", 300)


def _annotate(image: np.ndarray, faces: list[Face]) -> np.ndarray:
    return draw_faces(image, faces, copy=False)


__all__ = ["run", "RunOptions", "RunSummary", "RecordWriter", "AnnotationSink", "MeshSink", "DenseSink", "face_record",
           "IncompleteRunError", "OutputError", "UsageError", "DENSE_FORMATS"]
