"""``tddfa-export``: build a verified bundle for one target.

stdout carries only the summary (or the report with ``--json -``); our progress goes to stderr (bars on a
terminal); everything the converters and their libraries print (litert-torch, onnxruntime's quantizer, absl,
warnings) goes to a log file beside the bundle (``<out>.export.log``), and to the terminal too with ``-v``.
Errors are one line with an exit code (see ``tddfa_edge.contracts.errors``).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import click

from tddfa_edge.contracts.errors import BackendUnavailableError, OutputError, TddfaEdgeError, UsageError
from tddfa_edge.runtime.command_line import OneLineUsage
from tddfa_edge.targets import DETECTORS, PRECISIONS, available_targets, load_target

PROG = "tddfa-export"
# What converting needs beyond the runtime: the [export] extra.
EXPORT_MODULES = {"torch": "torch==2.13.0", "onnx": "onnx", "onnxslim": "onnxslim", "onnxruntime": "onnxruntime"}
TFLITE_MODULES = {"litert_torch": "litert-torch", "torchao": "torchao", "ai_edge_quantizer": "ai-edge-quantizer",
                  "ai_edge_litert": "ai-edge-litert"}


def _fail(exc: TddfaEdgeError):
    click.echo(f"{PROG}: error: {exc}", err=True)
    sys.exit(exc.exit_code)


def check_export_dependencies(target) -> None:
    """One line naming the extra to install when a converter's library is missing (a base install has none)."""
    needed = dict(EXPORT_MODULES)
    if any(v.startswith("tflite") for v in target.regressor.variants + target.detector.variants):
        needed.update(TFLITE_MODULES)
    missing = [package for module, package in needed.items() if not _importable(module)]
    if missing:
        raise BackendUnavailableError(
            f"exporting needs {', '.join(missing)}: pip install torch==2.13.0 && pip install 'tddfa-edge[export]' "
            "(the runtime alone does not convert models)")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@click.command(PROG, cls=OneLineUsage, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--target", "target_name", metavar="NAME", help=f"target id ({', '.join(available_targets())}) or a .toml path")
@click.option("--list-targets", is_flag=True, help="list the targets and exit")
@click.option("--out", type=click.Path(path_type=Path), help="bundle folder (default: ./bundles/<target>)")
@click.option("--force", is_flag=True, help="replace an existing bundle at --out")
@click.option("--precision", type=click.Choice(PRECISIONS), help="export only this precision (the target must offer it)")
@click.option("--detector", type=click.Choice(DETECTORS), help="use this detector instead of the target's (faceboxes: 3DDFA_V2's own)")
@click.option("--upstream", "upstream_dir", type=click.Path(file_okay=False, path_type=Path),
              help="a 3DDFA_V2 checkout: weights/, FaceBoxes/weights/ and configs/ are read from it")
@click.option("--calibration", "calibration_source", type=click.Path(path_type=Path),
              help="calibrate and check on your own photos (a folder) or video instead of the data folder's crops")
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="TDDFA_EDGE_DATA", help="data folder (weights/, bfm/, calibration/ ...)")
@click.option("--checkpoint", "regressor_name", default="mb05_120x120", show_default=True, help="regressor checkpoint name (mb05_120x120, mb1_120x120)")
@click.option("--regressor-weights", type=click.Path(dir_okay=False), help="explicit regressor .pth path")
@click.option("--detector-weights", type=click.Path(dir_okay=False), help="explicit detector .pth path (FaceBoxesProd.pth, yunet_n.pth ...)")
@click.option("--bfm", "bfm_path", type=click.Path(dir_okay=False), help="3DMM file: our .npz or upstream bfm_noneck_v3.pkl")
@click.option("--tri", "tri_path", type=click.Path(dir_okay=False), help="upstream tri.pkl (with a .pkl --bfm)")
@click.option("--param-mean-std", type=click.Path(dir_okay=False), help="upstream param_mean_std_62d_120x120.pkl")
@click.option("--download/--no-download", default=False, show_default=True,
              help="fetch missing inputs from their upstream URLs (sha256- or content-checked); $TDDFA_EDGE_MIRROR replaces github.com")
@click.option("--dense/--no-dense", default=None, help="include the dense 3DMM basis (default: the target's choice)")
@click.option("--archive/--no-archive", default=False, show_default=True, help="also write <out>.tar.gz")
@click.option("--wheelhouse/--no-wheelhouse", default=False, show_default=True,
              help="add the runtime's wheels for the target (CPython 3.11) and a hashed requirements.txt for offline installs")
@click.option("--measure-latency/--no-measure-latency", default=True, show_default=True,
              help="time each artifact on this machine (export report only, never in the bundle)")
@click.option("--calibration-size", default=800, show_default=True, type=click.IntRange(16, 800), help="calibration crops for int8")
@click.option("--sign", "signing_key", type=click.Path(dir_okay=False, path_type=Path),
              help="Ed25519 private key (PEM): sign the manifest (manifest.json.sig); tddfa-run --trust checks it")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              help="write the export report as JSON (- for stdout instead of the summary)")
@click.option("--log", "log_path", type=click.Path(dir_okay=False, path_type=Path), help="converter log (default: <out>.export.log)")
@click.option("-v", "--verbose", is_flag=True, help="show the converters' own output on the terminal too")
@click.option("-q", "--quiet", is_flag=True, help="no progress output")
def main(target_name, list_targets, out, force, precision, detector, upstream_dir, calibration_source, data_dir, regressor_name,
         regressor_weights, detector_weights, bfm_path, tri_path, param_mean_std, download, dense, archive, wheelhouse,
         measure_latency, calibration_size, signing_key, json_path, log_path, verbose, quiet):
    """Convert the 3DDFA_V2 checkpoints (MobileNetV1 regressor; FaceBoxes or YuNet detector) to ONNX / TFLite,
    quantize them, verify every artifact against PyTorch fp32 and write a bundle for one target."""
    try:
        if list_targets:
            for name in available_targets():
                t = load_target(name)
                click.echo(f"{name:12s} {t.arch:8s} {t.threads} thr  regressor {t.regressor.default:16s} "
                           f"detector {t.detector.architecture} {t.detector.default:12s} {t.description}")
            return
        if not target_name:
            raise UsageError(f"--target is required; valid targets: {', '.join(available_targets())}")
        target = load_target(target_name)
        out = out or Path("bundles") / target.name
        occupied = any(out.iterdir()) if out.is_dir() else out.exists()
        if occupied and not force:
            raise UsageError(f"{out} exists: pass --force to replace it, or --out another folder")
        if calibration_source is not None and not calibration_source.exists():
            raise UsageError(f"--calibration {calibration_source}: no such folder or video")
        check_export_dependencies(target)
        from .exporter import ExportOptions, export_bundle, plan  # torch and the converters load only now

        plan(target, precision)  # refuses an unoffered precision before any work
        opts = ExportOptions(
            target=target, out=out, precision=precision, data_dir=data_dir, regressor_name=regressor_name,
            regressor_path=regressor_weights, detector_path=detector_weights, param_mean_std_path=param_mean_std, bfm_path=bfm_path,
            tri_path=tri_path, download=download, upstream_dir=str(upstream_dir) if upstream_dir else None,
            calibration_source=str(calibration_source) if calibration_source else None, detector=detector, dense=dense,
            archive=archive, wheelhouse=wheelhouse, measure_latency=measure_latency, calibration_size=calibration_size,
            signing_key=signing_key,
        )
        from .console import ExportConsole

        log_path = log_path or Path(str(out).rstrip("/") + ".export.log")
        with ExportConsole(log_path, verbose=verbose, quiet=quiet) as console:
            result = export_bundle(opts, log=console.say, progress=console.progress())
    except TddfaEdgeError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        click.echo(f"{PROG}: interrupted; nothing was written", err=True)
        sys.exit(130)
    if json_path is not None and str(json_path) == "-":
        click.echo(json.dumps(result.report(), indent=2, sort_keys=True))
        return
    _print_summary(result)
    if json_path:
        try:
            json_path.write_text(json.dumps(result.report(), indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            _fail(OutputError(f"cannot write {json_path}: {exc.strerror or exc}"))


def _print_summary(result) -> None:
    report = result.report()
    click.echo(f"bundle: {result.bundle}  (target {report['target']}, {report['size_bytes'] / 1e6:.2f} MB)")
    click.echo(f"manifest sha256: {result.identity}")
    click.echo(f"{'model':28s} {'size MB':>8s} {'drift px':>9s} {'recall':>7s} {'p50 ms':>8s}")
    for key, entry in report["models"].items():
        measures = entry["verification"]["measures"]
        drift = measures.get("landmark_drift_px_mean")
        recall = measures.get("recall_vs_fp32")
        p50 = (entry["latency_ms"] or {}).get("p50_ms")
        default = " *" if key.split("/", 1)[1] == report["defaults"][key.split("/", 1)[0]] else ""
        click.echo(f"{key + default:28s} {entry['size_bytes'] / 1e6:8.2f} {'' if drift is None else f'{drift:.4f}':>9s} "
                   f"{'' if recall is None else f'{recall:.3f}':>7s} {'' if p50 is None else f'{p50:.3f}':>8s}")
    if result.archive:
        click.echo(f"archive: {result.archive}")


if __name__ == "__main__":
    main()
