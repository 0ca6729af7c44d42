"""``tddfa-bench``: how fast and how accurate a bundle is on this machine, with a gate on the target's budgets.

Exit codes: 0 all measured budgets met, 8 (``BudgetError``) a budget is not met, other ``TddfaEdgeError``
codes for unusable bundles / data. Runtime dependencies only (matplotlib optional, for the CED plot).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from tddfa_edge.runtime.command_line import OneLineUsage

from .sections import SECTIONS


def _sizes(ctx, param, value):
    sizes = []
    for item in value or ():
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                w, h = (int(v) for v in part.lower().split("x"))
            except ValueError:
                raise click.BadParameter(f"{part!r}: use WxH, e.g. 480x272") from None
            sizes.append((w, h))
    return tuple(sizes)


def _threads_from_manifest(bundle: Path) -> int | None:
    import json

    try:
        manifest = json.loads((Path(bundle) / "manifest.json").read_text(encoding="utf-8"))
        return int((manifest.get("target") or {}).get("threads") or 1)
    except (OSError, ValueError, TypeError):
        return None  # Bundle.open reports the real problem


@click.command("tddfa-bench", cls=OneLineUsage, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bundle", "bundle", required=True, type=click.Path(file_okay=False, path_type=Path), help="bundle folder (tddfa-export --out)")
@click.option("--threads", type=click.IntRange(1, 256), help="threads for the networks, OpenCV and BLAS (default: the target's)")
@click.option("--quick", is_flag=True, help="short run for CI/tests: 0.3 s per timing, 200 AFLW images, 1 cold start")
@click.option("--budget", "budget_s", type=click.FloatRange(0.05, 600), help="seconds per latency measurement (default 3, quick 0.3)")
@click.option("--aflw-limit", type=click.IntRange(1, 2000), help="first N AFLW2000-3D images (default all 2000; quick 200)")
@click.option("--only", "only", multiple=True, type=click.Choice(SECTIONS), help="run only these sections (repeatable)")
@click.option("--skip", "skip", multiple=True, type=click.Choice(SECTIONS), help="skip these sections (repeatable)")
@click.option("--recall-sizes", multiple=True, callback=_sizes, metavar="WxH[,WxH]",
              help="also measure detector recall at these letterbox input sizes (needs a dynamic-shape detector)")
@click.option("--target", "budgets_from", metavar="NAME|TOML", help="gate on this target's budgets instead of the bundle's")
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="TDDFA_EDGE_DATA", help="data folder (aflw2000-3d/, videos/ ...)")
@click.option("--video", type=click.Path(dir_okay=False, exists=True), help="video for latency/stability (default videos/obama.mp4)")
@click.option("--repeat", default=1, show_default=True, type=click.IntRange(1, 20),
              help="repeat each latency measurement and keep the lowest-p50 run (for shared, noisy machines)")
@click.option("--cold-repeats", type=click.IntRange(1, 50), help="fresh processes for the cold start (default 5, quick 1)")
@click.option("--ced", "ced_path", type=click.Path(dir_okay=False, path_type=Path), help="write the CED plot PNG here")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="write the full report as JSON")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False, path_type=Path), help="write the report as Markdown")
@click.option("--gate/--no-gate", default=True, show_default=True, help="exit 8 when a budget is not met")
@click.option("-q", "--quiet", is_flag=True, help="no progress on stderr")
def main(bundle, threads, quick, budget_s, aflw_limit, only, skip, recall_sizes, budgets_from, data_dir, video, repeat, cold_repeats,
         ced_path, json_path, markdown_path, gate, quiet):
    """Benchmark a bundle: per-stage latency (image and tracking mode), cold start, peak RSS, AFLW2000-3D NME and
    drift per precision, video jitter, detector recall, and every variant in one table."""
    # BLAS reads its thread count when numpy loads, so it is set before anything imports numpy.
    n_threads = threads or _threads_from_manifest(bundle) or 1
    for key in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(key, str(n_threads))

    from tddfa_edge.contracts.errors import BudgetError, TddfaEdgeError

    from .report import markdown_report, text_report, write_json
    from .runner import BenchOptions, run_benchmark

    sections = tuple(s for s in (only or SECTIONS) if s not in skip)
    log = (lambda msg: None) if quiet else (lambda msg: click.echo(f"[bench] {msg}", err=True))
    opts = BenchOptions(bundle=bundle, threads=threads, quick=quick, budget_s=budget_s, data_dir=data_dir, video=video,
                        aflw_limit=aflw_limit, sections=sections, recall_sizes=recall_sizes, budgets_from=budgets_from,
                        ced_path=ced_path,
                        cold_repeats=cold_repeats, repeat=repeat, log=log)
    try:
        report = run_benchmark(opts)
    except TddfaEdgeError as exc:
        click.echo(f"tddfa-bench: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    click.echo(text_report(report))
    if json_path:
        write_json(report, json_path)
    if markdown_path:
        Path(markdown_path).write_text(markdown_report(report) + "\n", encoding="utf-8")
    if gate and not report["gate"]["passed"]:
        click.echo(f"tddfa-bench: budgets not met: {', '.join(report['gate']['failed'])}", err=True)
        sys.exit(BudgetError.exit_code)


if __name__ == "__main__":
    main()
