"""Image mode of several bundles as ratios, measured interleaved in one process on the same 720p frames.

    python -m tddfa_edge.benchmarks.image_mode_ratio BUNDLE [BUNDLE ...] [--rounds 7] [--threads 1]

Image mode = detect every frame, then crop, regress, 68 points and pose of each face (``FaceAligner.__call__``
without the dense mesh), on the frames of ``videos/obama.mp4``. Each round times every bundle once over all frames,
in turn, so load from other processes lands on all of them alike; the median round is reported, with each
bundle's ratio to the first. On shared machines, compare the ratios, not the milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2

from tddfa_edge.datasets.locate import data_dir_candidates
from tddfa_edge.runtime.aligner import FaceAligner


def video_frames(data_dir: str | None, limit: int = 55) -> list:
    for base in data_dir_candidates(data_dir):
        path = base / "videos" / "obama.mp4"
        if path.is_file():
            cap = cv2.VideoCapture(str(path))
            frames = []
            while len(frames) < limit:
                ok, frame = cap.read()
                if not ok:
                    break
                frames.append(frame)
            return frames
    raise SystemExit("videos/obama.mp4 not found: pass --data-dir or set TDDFA_EDGE_DATA")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir")
    opts = parser.parse_args(argv)
    cv2.setNumThreads(opts.threads)
    frames = video_frames(opts.data_dir)
    aligners = [FaceAligner.from_bundle(b, threads=opts.threads, dense=False) for b in opts.bundles]
    for aligner in aligners:  # warm-up: first-run allocations and lazy initialisation
        for frame in frames[:5]:
            aligner(frame, dense=False)
    per_bundle: list[list[float]] = [[] for _ in aligners]
    faces = [0] * len(aligners)
    for _ in range(opts.rounds):
        for i, aligner in enumerate(aligners):
            t0 = time.perf_counter()
            found = sum(len(aligner(frame, dense=False)) for frame in frames)
            per_bundle[i].append((time.perf_counter() - t0) / len(frames) * 1000)
            faces[i] = found
    base = statistics.median(per_bundle[0])
    print(f"{len(frames)} frames of {frames[0].shape[1]}x{frames[0].shape[0]}, {opts.rounds} interleaved rounds, {opts.threads} thread(s)")
    for bundle, aligner, times, found in zip(opts.bundles, aligners, per_bundle, faces):
        median = statistics.median(times)
        print(f"{Path(bundle).name:24s} {aligner.settings.detector.architecture:9s} {aligner.regressor.variant:12s} "
              f"{median:7.2f} ms/frame (min {min(times):.2f})  {median / base:5.2f}x  faces {found}/{len(frames)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
