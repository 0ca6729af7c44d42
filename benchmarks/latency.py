"""Per-stage and end-to-end latency of a ``FaceAligner`` on decoded video frames, time-budgeted.

Two kinds of run per mode, both after a warm-up:
- end to end: the public API (``aligner(frame)`` or ``tracker(frame)``) timed per frame with
  ``time.perf_counter``; this is where p50 / p90 / fps come from.
- per stage: the same loop with a ``StageClock`` on the aligner (detection, crop + preprocess, regression,
  68-point reconstruction, pose, dense); "other" is the end-to-end time minus the stages (Python glue of the
  aligner / tracker). The clock costs ~1 us per stage, so stages come from their own run.

Video decode is excluded: frames are decoded before any timing.

Besides wall time, each frame's CPU time of the calling thread (``time.thread_time``) is recorded: with one
thread the networks, OpenCV and BLAS all run in it, so CPU time is the frame's cost without preemption. On a
shared machine wall p50 >> CPU p50 means other processes took the core (per-stage medians are affected less:
a preemption lands in one stage of a frame).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tddfa_edge.runtime.aligner import STAGES as ALIGNER_STAGES
from tddfa_edge.runtime.aligner import StageClock

STAGES = ALIGNER_STAGES + ("other",)


def load_video_frames(path: str | Path, limit: int | None = None) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    while limit is None or len(frames) < limit:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    if not frames:
        from tddfa_edge.contracts.errors import DataFileError

        raise DataFileError(f"cannot decode any frame of {path}")
    return frames


def summarize_ms(samples_s) -> dict:
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    if ms.size == 0:
        return {"p50_ms": None, "p90_ms": None, "mean_ms": None, "n": 0}
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p90_ms": round(float(np.percentile(ms, 90)), 4),
        "mean_ms": round(float(ms.mean()), 4),
        "n": int(ms.size),
    }


@contextmanager
def stage_clock(aligner):
    """Give ``aligner`` a ``StageClock`` for the duration of the block."""
    aligner.stage_clock = clock = StageClock()
    try:
        yield clock
    finally:
        aligner.stage_clock = None


def time_calls(fn, budget_s: float, warmup: int = 10, min_runs: int = 20) -> list[float]:
    """Seconds per call of ``fn()``, after ``warmup`` calls, for ``budget_s`` seconds and at least ``min_runs`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    perf = time.perf_counter
    start = perf()
    while perf() - start < budget_s or len(times) < min_runs:
        t0 = perf()
        fn()
        times.append(perf() - t0)
    return times


def _frame_loop(step, frames: list[np.ndarray], budget_s: float, warmup: int, min_frames: int, restart=None,
                clock=None):
    """Run ``step(frame)`` over the frames (cycled) for ``budget_s`` after ``warmup`` frames.

    ``restart`` is called whenever the frame list starts over (tracking resets there). Returns per-frame
    seconds, per-frame stage dicts (when a clock is given) and the step's per-frame flags.
    """
    for i in range(warmup):
        if i % len(frames) == 0 and restart:
            restart()
        step(frames[i % len(frames)])
    if clock:
        clock.take()
    times, cpu_times, stages, flags = [], [], [], []
    perf, cpu = time.perf_counter, time.thread_time
    start = perf()
    i = 0
    while perf() - start < budget_s or len(times) < min_frames:
        index = i % len(frames)
        if index == 0 and restart:
            restart()
        c0, t0 = cpu(), perf()
        flag = step(frames[index])
        times.append(perf() - t0)
        cpu_times.append(cpu() - c0)
        flags.append(flag)
        if clock:
            stages.append(clock.take())
        i += 1
    return _Loop(times, cpu_times, stages, flags)


@dataclass
class _Loop:
    times: list  # wall seconds per frame (time.perf_counter)
    cpu_times: list  # CPU seconds of this thread per frame (time.thread_time): the work without preemption
    stages: list
    flags: list


def _stage_summary(stages: list[dict], totals: list[float]) -> dict:
    out = {}
    for stage in STAGES[:-1]:
        values = [s.get(stage, 0.0) for s in stages]
        if any(values):
            out[stage] = summarize_ms(values)
    other = [t - sum(s.values()) for s, t in zip(stages, totals)]
    out["other"] = summarize_ms(np.maximum(other, 0.0))
    return out


def image_mode(aligner, frames: list[np.ndarray], budget_s: float, warmup: int = 10, min_frames: int = 20,
               stages: bool = True) -> dict:
    """Detect every frame, then align every face (68 points + pose, no dense)."""

    def step(frame):
        return len(aligner(frame))

    loop = _frame_loop(step, frames, budget_s, warmup, min_frames)
    total = summarize_ms(loop.times)
    out = {
        "total": total,
        "cpu": summarize_ms(loop.cpu_times),
        "fps": round(len(loop.times) / sum(loop.times), 1),
        "fps_p50": round(1000.0 / total["p50_ms"], 1),
        "faces_per_frame": round(float(np.mean(loop.flags)), 3),
    }
    if stages:
        with stage_clock(aligner) as clock:
            staged = _frame_loop(step, frames, budget_s / 2, min(warmup, 3), min_frames, clock=clock)
        out["stages"] = _stage_summary(staged.stages, staged.times)
    return out


def tracking_mode(aligner, frames: list[np.ndarray], budget_s: float, dense: bool = False, warmup: int = 10,
                  min_frames: int = 20, max_faces: int | None = 1, stages: bool = True) -> dict:
    """Detect on the first frame (and when the track is lost), then re-crop from the previous landmarks.

    p50 / p90 are over the frames that did not run the detector; ``fps`` is the plain throughput over all
    frames, detections included. Smoothing is off: it changes the reported landmarks only, not the cost here.
    """
    from tddfa_edge.runtime.tracking import Tracker

    tracker = Tracker(aligner, max_faces=max_faces, smoothing=False)

    def step(frame):
        tracker(frame, dense=dense)
        return bool(tracker.last_detected)

    loop = _frame_loop(step, frames, budget_s, warmup, min_frames, restart=tracker.reset)
    tracked = [not d for d in loop.flags]
    total = summarize_ms([t for t, k in zip(loop.times, tracked) if k])
    out = {
        "total": total,
        "cpu": summarize_ms([t for t, k in zip(loop.cpu_times, tracked) if k]),
        "fps": round(len(loop.times) / sum(loop.times), 1),
        "fps_p50": round(1000.0 / total["p50_ms"], 1) if total["p50_ms"] else None,
        "detector_frames": int(sum(loop.flags)),
        "frames": len(loop.times),
        "dense": dense,
    }
    if stages:
        with stage_clock(aligner) as clock:
            staged = _frame_loop(step, frames, budget_s / 2, min(warmup, 3), min_frames, restart=tracker.reset, clock=clock)
        keep = [not d for d in staged.flags]
        out["stages"] = _stage_summary([s for s, k in zip(staged.stages, keep) if k], [t for t, k in zip(staged.times, keep) if k])
    return out


def model_latency(model, example: np.ndarray, budget_s: float, warmup: int = 10, min_runs: int = 20) -> dict:
    """One network alone (``LoadedModel``), input already prepared; includes its input/output conversion."""
    return summarize_ms(time_calls(lambda: model(example), budget_s, warmup, min_runs))
