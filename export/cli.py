"""``tddfa-export``: build a verified bundle for one target."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from tddfa_edge.runtime.errors import TddfaEdgeError
from tddfa_edge.targets import PRECISIONS, available_targets, load_target


def _fail(exc: TddfaEdgeError):
    click.echo(f"tddfa-export: error: {exc}", err=True)
    sys.exit(exc.exit_code)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--target", "target_name", metavar="NAME", help=f"target id ({', '.join(available_targets())}) or a .toml path")
@click.option("--list-targets", is_flag=True, help="list the targets and exit")
@click.option("--out", type=click.Path(path_type=Path), help="bundle folder (default: ./bundles/<target>)")
@click.option("--precision", type=click.Choice(PRECISIONS), help="export only this precision (default: the target's variants)")
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="TDDFA_EDGE_DATA", help="data folder (weights/, bfm/, calibration/ ...)")
@click.option("--checkpoint", "regressor_name", default="mb05_120x120", show_default=True, help="regressor checkpoint name (mb05_120x120, mb1_120x120)")
@click.option("--regressor-weights", type=click.Path(dir_okay=False), help="explicit regressor .pth path")
@click.option("--detector-weights", type=click.Path(dir_okay=False), help="explicit FaceBoxes .pth path")
@click.option("--bfm", "bfm_path", type=click.Path(dir_okay=False), help="3DMM file: our .npz or upstream bfm_noneck_v3.pkl")
@click.option("--tri", "tri_path", type=click.Path(dir_okay=False), help="upstream tri.pkl (with a .pkl --bfm)")
@click.option("--param-mean-std", type=click.Path(dir_okay=False), help="upstream param_mean_std_62d_120x120.pkl")
@click.option("--download/--no-download", default=False, show_default=True, help="fetch missing upstream weights (checksum-verified)")
@click.option("--dense/--no-dense", default=None, help="include the dense 3DMM basis (default: the target's choice)")
@click.option("--archive/--no-archive", default=False, show_default=True, help="also write <out>.tar.gz")
@click.option("--wheelhouse/--no-wheelhouse", default=False, show_default=True,
              help="add the runtime's wheels for the target (CPython 3.11) and a hashed requirements.txt for offline installs")
@click.option("--measure-latency/--no-measure-latency", default=True, show_default=True, help="time each artifact on this machine")
@click.option("--calibration-size", default=800, show_default=True, type=click.IntRange(16, 800), help="calibration crops for int8")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="write the manifest summary as JSON")
@click.option("-q", "--quiet", is_flag=True, help="no progress output")
def main(target_name, list_targets, out, precision, data_dir, regressor_name, regressor_weights, detector_weights, bfm_path,
         tri_path, param_mean_std, download, dense, archive, wheelhouse, measure_latency, calibration_size, json_path, quiet):
    """Convert the 3DDFA_V2 checkpoints (MobileNetV1 regressor, FaceBoxes detector) to ONNX / TFLite,
    quantize them, verify every artifact against PyTorch fp32 and write a bundle for one target."""
    try:
        if list_targets:
            for name in available_targets():
                t = load_target(name)
                click.echo(f"{name:12s} {t.arch:8s} {t.threads} thr  regressor {t.regressor.default:16s} "
                           f"detector {t.detector.default:12s} {t.description}")
            return
        if not target_name:
            raise click.UsageError(f"--target is required; valid targets: {', '.join(available_targets())}")
        target = load_target(target_name)
        from .exporter import ExportOptions, export_bundle  # torch and converters load only now

        opts = ExportOptions(
            target=target, out=out or Path("bundles") / target.name, precision=precision, data_dir=data_dir,
            regressor_name=regressor_name, regressor_path=regressor_weights, detector_path=detector_weights,
            param_mean_std_path=param_mean_std, bfm_path=bfm_path, tri_path=tri_path, download=download, dense=dense,
            archive=archive, wheelhouse=wheelhouse, measure_latency=measure_latency, calibration_size=calibration_size, progress=not quiet,
        )
        log = (lambda *a, **k: None) if quiet else (lambda msg: click.echo(msg, err=True))
        result = export_bundle(opts, log=log)
    except TddfaEdgeError as exc:
        _fail(exc)
    _print_summary(result)
    if json_path:
        json_path.write_text(json.dumps(result.manifest, indent=2, sort_keys=True) + "\n")


def _print_summary(result) -> None:
    m = result.manifest
    latency = (m.get("export_machine") or {}).get("latency", {})
    click.echo(f"bundle: {result.bundle}  (target {m['target']['name']}, {sum(f['size'] for f in _files(result)) / 1e6:.2f} MB)")
    click.echo(f"{'model':28s} {'size MB':>8s} {'drift px':>9s} {'recall':>7s} {'p50 ms':>8s}")
    for key, entry in m["models"].items():
        size = (result.bundle / entry["file"]).stat().st_size / 1e6
        v = entry["verification"]
        drift = v.get("landmark_drift_px_mean")
        recall = v.get("recall_vs_fp32")
        p50 = latency.get(key, {}).get("p50_ms")
        click.echo(f"{key:28s} {size:8.2f} {'' if drift is None else f'{drift:.4f}':>9s} "
                   f"{'' if recall is None else f'{recall:.3f}':>7s} {'' if p50 is None else f'{p50:.3f}':>8s}")
    if result.archive:
        click.echo(f"archive: {result.archive}")


def _files(result):
    import json as _json

    manifest = _json.loads((result.bundle / "manifest.json").read_text())
    return manifest["files"].values()


if __name__ == "__main__":
    main()
