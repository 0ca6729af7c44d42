"""Peak memory and wall time of ``tddfa-export`` per target, as a user runs it (a fresh process per export).

    python -m tddfa_edge.benchmarks.export_memory [--target rpi4 ...] [--json out.json] [--limit-mb 2048]

Each export runs ``tddfa-export --target T --out <tmp> --no-measure-latency`` in its own process; the peak RSS is that
process's ``ru_maxrss`` (os.wait4), so it covers PyTorch, the converters and the calibration of every variant the
target lists. Exit code 1 when any export fails or goes over ``--limit-mb`` (the budget for an 8 GB build box or a Pi 5).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tddfa_edge.targets import available_targets

LIMIT_MB = 2048.0


def export_once(target: str, out_dir: Path, extra: list[str]) -> dict:
    out = out_dir / target
    args = [sys.executable, "-m", "tddfa_edge.export.cli", "--target", target, "--out", str(out), "--force", "--quiet",
            "--no-measure-latency", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    row = {"target": target, "exit_code": proc.returncode, "wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
           "cpu_s": round(usage.ru_utime + usage.ru_stime, 1)}
    if proc.returncode != 0:
        row["error"] = (stderr.strip().splitlines() or ["?"])[-1]
    else:
        row["identity"] = next((line.split()[-1] for line in stdout.splitlines() if "manifest sha256" in line), None)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", help="target name (repeatable; default: every shipped target)")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--limit-mb", type=float, default=LIMIT_MB)
    parser.add_argument("extra", nargs="*", help="more tddfa-export arguments (after --)")
    opts = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tddfa-export-memory-") as tmp:
        for target in opts.target or available_targets():
            row = export_once(target, Path(tmp), opts.extra)
            row["within_limit"] = row["exit_code"] == 0 and row["peak_rss_mb"] <= opts.limit_mb
            rows.append(row)
            print(f"{target:12s} exit {row['exit_code']}  peak RSS {row['peak_rss_mb']:7.1f} MB  wall {row['wall_s']:6.1f} s  "
                  f"cpu {row['cpu_s']:6.1f} s  {'ok' if row['within_limit'] else 'FAIL'}{'  ' + row['error'] if 'error' in row else ''}",
                  flush=True)
    if opts.json:
        Path(opts.json).write_text(json.dumps({"limit_mb": opts.limit_mb, "rows": rows}, indent=2) + "\n")
    return 0 if all(r["within_limit"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
