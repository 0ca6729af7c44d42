"""Cold start (process start to first result) and peak RSS, each measured in a fresh Python process.

The child imports the runtime, opens the bundle (sha256 of every file included), runs the first frame and
reports ``time.monotonic()`` stamps (system-wide on Linux, so comparable with the parent's). The frame is
handed over as a raw ``.npy``; reading it is timed and taken out. After the first result the child runs the
whole video in tracking mode (dense when the bundle has the dense mesh) and in image mode, decoding frames
one at a time as a device would, and reports its peak RSS (``VmHWM``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_CHILD = r"""
import sys, time
t_child = time.monotonic()
import json
args = json.loads(sys.argv[1])
from tddfa_edge.runtime import FaceAligner
t_import = time.monotonic()
aligner = FaceAligner.from_bundle(args["bundle"], threads=args["threads"], regressor_variant=args["regressor"],
                                  detector_variant=args["detector"])
t_load = time.monotonic()
import numpy as np
f0 = time.monotonic()
frame = np.load(args["frame"])
frame_read = time.monotonic() - f0
faces = aligner(frame)
t_first = time.monotonic()
cpu_first = time.process_time()  # user + system CPU of this process since it started (incl. interpreter start)
out = {"t_child": t_child, "t_import": t_import, "t_load": t_load, "t_first": t_first, "frame_read": frame_read,
       "cpu_first": cpu_first, "faces": len(faces)}

def peak_rss_mb():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

out["rss_first_result_mb"] = peak_rss_mb()
if args.get("video"):
    import cv2
    from tddfa_edge.runtime.tracking import Tracker
    dense = bool(args["dense"]) and aligner.morphable_model.has_dense
    tracker = Tracker(aligner, max_faces=1, smoothing=False)
    cap = cv2.VideoCapture(args["video"])
    n = 0
    while True:
        ok, f = cap.read()
        if not ok:
            break
        tracker(f, dense=dense)
        aligner(f)
        n += 1
    out["video_frames"] = n
    out["video_dense"] = dense
    out["rss_video_mb"] = peak_rss_mb()
print("BENCH-CHILD " + json.dumps(out))
"""


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    for key in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(key, str(threads))
    return env


def _run_child(args: dict, threads: int, timeout: float = 300.0) -> dict:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], capture_output=True, text=True,
                          env=child_env(threads), timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH-CHILD ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"cold-start child failed (exit {proc.returncode}): {tail}")
    out = json.loads(lines[-1][len("BENCH-CHILD "):])
    out["t_parent"] = t0
    return out


def cold_start(bundle: Path, frame: np.ndarray, threads: int, repeats: int = 5, regressor: str | None = None,
               detector: str | None = None, video: str | None = None, dense: bool = True, warm_cache: bool = True) -> dict:
    """Median and min over ``repeats`` fresh processes (after one unmeasured run that warms the page cache)."""
    with tempfile.TemporaryDirectory(prefix="tddfa-bench-") as tmp:
        frame_path = Path(tmp) / "frame.npy"
        np.save(frame_path, frame)
        base = {"bundle": str(bundle), "threads": threads, "regressor": regressor, "detector": detector,
                "frame": str(frame_path), "video": None, "dense": dense}
        if warm_cache:
            _run_child(base, threads)
        runs = []
        for _ in range(max(1, repeats)):
            r = _run_child(base, threads)
            runs.append({
                "interpreter_s": r["t_child"] - r["t_parent"],
                "import_s": r["t_import"] - r["t_child"],
                "from_bundle_s": r["t_load"] - r["t_import"],
                "first_frame_s": r["t_first"] - r["t_load"] - r["frame_read"],
                "total_s": r["t_first"] - r["t_parent"] - r["frame_read"],
                "cpu_s": r["cpu_first"],
                "faces": r["faces"],
                "rss_first_result_mb": r["rss_first_result_mb"],
            })
        memory = None
        if video:
            m = _run_child({**base, "video": str(video)}, threads)
            memory = {"peak_rss_mb": round(m["rss_video_mb"], 1), "rss_at_first_result_mb": round(m["rss_first_result_mb"], 1),
                      "video_frames": m["video_frames"], "dense": m["video_dense"],
                      "workload": "one fresh process: tracking (dense if the bundle has it) + image mode on every video frame"}
    totals = [r["total_s"] for r in runs]
    median_run = sorted(runs, key=lambda r: r["total_s"])[len(runs) // 2]
    return {
        "total_s_median": round(float(np.median(totals)), 4),
        "total_s_min": round(float(np.min(totals)), 4),
        "cpu_s_median": round(float(np.median([r["cpu_s"] for r in runs])), 4),
        "runs": len(runs),
        "breakdown_median_run": {k: round(v, 4) for k, v in median_run.items() if k.endswith("_s") and k != "cpu_s"},
        "faces_first_frame": median_run["faces"],
        "memory": memory,
        "definition": "fresh `python -c`: interpreter start + import tddfa_edge.runtime + FaceAligner.from_bundle "
                      "(sha256 of every bundle file) + first frame (1280x720, detect + align), warm page cache; cpu_s = the child's "
                      "user + system CPU time up to its first result (the cost without preemption by other processes)",
    }


def bundle_size(bundle) -> dict:
    """Bytes of every runtime file of an open ``Bundle`` (install-only files, e.g. the wheelhouse, not counted)."""
    files = {name: f.size for name, f in sorted(bundle.manifest.files.items()) if not f.install_only}
    return {"total_mb": round(sum(files.values()) / 1e6, 3), "files": files}
