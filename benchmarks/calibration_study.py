"""Does calibrating on your own photos cost accuracy? AFLW2000-3D drift of int8 bundles calibrated three ways.

    python -m tddfa_edge.benchmarks.calibration_study --target x86-1core --out /tmp/calibration-study [--json F]

Exports the target's int8 variants (``tddfa-export --precision int8``, a fresh process each) calibrated on
(1) the curated calibration crops (the default), (2) the calibration set's images treated as whole photos
(``--calibration calibration/images``: the fp32 detector finds the faces, crops are made as the runtime makes
them), (3) a video (``--calibration videos/obama.mp4``: one person, 55 frames), then measures each bundle's
regressors on AFLW2000-3D (3DDFA protocol, ``nme.py``) and reports the headline NME and its difference from the
curated calibration. The goal: photos within 0.005 NME of the curated crops. Bundles are measured, not made,
here: the exporter runs as a command.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click


def export(target: str, out: Path, data_dir: str, calibration: str | None) -> float:
    args = [sys.executable, "-m", "tddfa_edge.export.cli", "--target", target, "--precision", "int8", "--out", str(out), "--force",
            "--data-dir", data_dir, "--no-measure-latency", "-q"]
    if calibration:
        args += ["--calibration", calibration]
    start = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise click.ClickException(f"export failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return time.monotonic() - start


def regressor_nme(bundle: Path, data) -> dict[str, float]:
    from tddfa_edge.runtime.aligner import FaceAligner
    from tddfa_edge.runtime.bundle import Bundle

    from .nme import evaluate_aligner

    out = {}
    for record in Bundle.open(bundle).manifest.models_of("regressor"):
        aligner = FaceAligner.from_bundle(bundle, regressor_variant=record.variant, dense=False)
        out[record.variant] = round(evaluate_aligner(aligner, data)[0]["original"].headline, 4)
    return out


@click.command()
@click.option("--target", default="x86-1core", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="scratch folder for the bundles")
@click.option("--data-dir", envvar="TDDFA_EDGE_DATA", required=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(target, out, data_dir, json_path):
    from .nme import load_aflw2000

    data = load_aflw2000(data_dir)
    sources = {"curated crops (default)": None, "calibration images as photos": str(Path(data_dir) / "calibration" / "images"),
               "video obama.mp4": str(Path(data_dir) / "videos" / "obama.mp4")}
    rows = {}
    for label, source in sources.items():
        bundle = out / label.split(" ")[0]
        seconds = export(target, bundle, data_dir, source)
        rows[label] = {"export_s": round(seconds, 1), "nme": regressor_nme(bundle, data)}
        click.echo(f"{label}: {rows[label]}", err=True)
    base = rows["curated crops (default)"]["nme"]
    for row in rows.values():
        row["vs_curated"] = {v: round(nme - base[v], 4) for v, nme in row["nme"].items()}
    click.echo(f"| calibration | {' | '.join(base)} |")
    click.echo("|---|" + "---|" * len(base))
    for label, row in rows.items():
        click.echo(f"| {label} | " + " | ".join(f"{row['nme'][v]:.4f} ({row['vs_curated'][v]:+.4f})" for v in base) + " |")
    if json_path:
        json_path.write_text(json.dumps({"target": target, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
