"""The benchmark report as text (stdout) and Markdown; the JSON is the runner's dict as is.

Both renderings come from the same list of blocks: a line of prose, or a table (header + rows).
"""

from __future__ import annotations

import json
from pathlib import Path

from .latency import STAGES

MODES = (("image_mode", "image mode (detect every frame)"), ("tracking_sparse", "tracking, 68 points"),
         ("tracking_dense", "tracking, dense mesh"))
STAGE_SHORT = {"detection": "det", "crop_preprocess": "crop", "regression": "reg", "landmarks_68": "lm68", "pose": "pose",
               "dense": "dense", "other": "other"}
VARIANT_HEADER = ["variant (* default)", "format", "precision", "size MB", "NME %", "drift", "p50 ms", "fps image",
                  "fps track", "notes"]


def _f(value, fmt="{:.3f}", none="-"):
    return none if value is None else fmt.format(value)


def _stage_text(stages: dict) -> str:
    return " / ".join(f"{STAGE_SHORT[s]} {stages[s]['p50_ms']:.3f}" for s in STAGES if s in stages and stages[s]["p50_ms"] is not None)


def variant_rows(report: dict) -> list[list[str]]:
    rows = []
    for key, row in (report.get("variants") or {}).items():
        status = row.get("status", "")
        notes = status
        if status == "ok":
            notes = ""
            if row.get("latency_vs_fp32") is not None:
                notes = f"regressor {row['latency_vs_fp32']:.2f}x fp32"
            if row.get("recall_vs_default") is not None:
                notes = f"recall {row['recall_vs_default']:.3f} vs default detector"
            notes = f"{row.get('backend', '')}; {notes}".strip("; ")
        rows.append([
            key + (" *" if row.get("default") else ""), row["format"], row["precision"], _f(row.get("size_mb"), "{:.2f}"),
            _f(((row.get("nme") or {}).get("original") or {}).get("headline"), "{:.4f}"), _f(row.get("drift"), "{:+.4f}"),
            _f((row.get("model_latency") or {}).get("p50_ms")), _f((row.get("image_mode") or {}).get("fps"), "{:.1f}"),
            _f((row.get("tracking_sparse") or {}).get("fps"), "{:.1f}"), notes,
        ])
    return rows


def blocks(report: dict) -> list:
    """[str | (title, header, rows)] in reading order."""
    m, b, c = report["machine"], report["bundle"], report["config"]
    out: list = [
        f"bundle {c['bundle']}: target {b['target']} ({b['target_arch']}), {b['size']['total_mb']:.2f} MB, defaults "
        f"{b['defaults_used']['regressor']} + {b['defaults_used']['detector']}, detector input "
        f"{b['detector_input_size'] or 'dynamic (fit 1080x720)'}, crops {b['crop_interpolation']}",
        f"machine {m['cpu']} ({m['arch']}; {' '.join(m.get('cpu_features', [])) or 'no listed SIMD features'}; "
        f"{m['cores_usable']} usable cores), {c['threads']} thread(s), python {m['python']}, "
        f"{m['date_utc']}; {c['video']}",
    ]
    lat = report.get("latency")
    if lat and "skipped" in lat:
        out.append(f"latency: {lat['skipped']}")
    elif lat:
        rows = []
        for key, label in MODES:
            if key in lat:
                r = lat[key]
                rows.append([label, _f(r["total"]["p50_ms"]), _f(r["total"]["p90_ms"]), _f((r.get("cpu") or {}).get("p50_ms")),
                             _f(r["fps"], "{:.1f}"), _stage_text(r.get("stages", {}))])
        out.append(("Latency per frame (wall p50/p90 over the time budget; CPU = this thread's CPU time; fps = throughput)",
                    ["mode", "p50 ms", "p90 ms", "CPU p50 ms", "fps", "stages p50 ms"], rows))
    cold = report.get("cold_start")
    if cold:
        if "error" in cold:
            out.append(f"cold start: {cold['error']}")
        else:
            bd = cold["breakdown_median_run"]
            out.append(f"cold start {cold['total_s_median']:.3f} s (median of {cold['runs']}, min {cold['total_s_min']:.3f}; "
                       f"CPU {cold['cpu_s_median']:.3f} s): "
                       f"interpreter {bd['interpreter_s']:.3f} + import {bd['import_s']:.3f} + from_bundle {bd['from_bundle_s']:.3f} "
                       f"+ first frame {bd['first_frame_s']:.3f} s")
            mem = cold.get("memory")
            if mem:
                out.append(f"peak RSS {mem['peak_rss_mb']:.1f} MB ({mem['video_frames']} frames tracking{' + dense' if mem['dense'] else ''} "
                           f"+ image mode in a fresh process; {mem['rss_at_first_result_mb']:.1f} MB at first result)")
    acc = report.get("accuracy")
    if acc:
        rows = []
        for variant, e in acc["variants"].items():
            o, r = e["nme"]["original"], e["nme"]["reannotated"]
            d = e.get("drift") or {}
            paired = (d.get("original") or {}).get("paired") or {}
            rows.append([variant, " / ".join(f"{v:.3f}" for v in o["bins"].values()), f"{o['headline']:.4f}",
                         " / ".join(f"{v:.3f}" for v in r["bins"].values()), f"{r['headline']:.4f}",
                         _f((d.get("original") or {}).get("headline"), "{:+.4f}"), _f((d.get("reannotated") or {}).get("headline"), "{:+.4f}"),
                         (f"{paired['mean_diff']:+.5f} ({paired['worse_images']} worse / {paired['better_images']} better)" if paired else "-"),
                         _f((d.get("landmark_drift_px_120") or {}).get("mean"), "{:.4f}")])
        out.append((f"AFLW2000-3D NME % ({acc['images']} images; drift vs {acc['reference'] or 'recorded fp32'})",
                    ["variant", "yaw 0-30/30-60/60-90", "NME", "re-ann. bins", "NME re-ann.", "drift", "drift re-ann.",
                     "paired per-image", "lm drift px@120"], rows))
        if acc.get("ced_png"):
            out.append(f"CED plot: {acc['ced_png']}")
    stab = report.get("stability")
    if stab:
        rows = [[v, f"{s['jitter_pct']:.4f}", f"{s['frame_to_frame_pct']:.4f}", _f(s.get("vs_reference_pct"), "{:.4f}")]
                for v, s in stab["variants"].items()]
        out.append(("Stability on the video (raw landmarks, % of face size)",
                    ["variant", "jitter (2nd diff RMS)", "frame-to-frame", f"distance to {stab['reference'] or '-'}"], rows))
    rec = report.get("detector_recall")
    if rec:
        rows = [[r["input_size"] + (" *" if r.get("bundle_default") else ""), f"{r['recall']:.4f}", f"{r['found']}/{r['faces']}",
                 " ".join(f"{k} {v['found']}/{v['faces']}" for k, v in r["per_source"].items()), str(r["extra"]),
                 _f(r["median_iou"]), f"{r['detector_ms_720p']:.3f}"] for r in rec["sizes"]]
        out.append((f"Detector recall vs the original pipeline ({rec['detector_variant']}, {rec['interpolation']} resize, IoU >= 0.5)",
                    ["input size (* bundle)", "recall", "faces", "per source", "extra", "IoU p50", "detect ms @720p"], rows))
    fs = report.get("face_size")
    if fs:
        bins = [b["range"] for b in fs["rows"][0]["bins"]] if fs["rows"] else []
        rows = [[f"{r['variant']} @ {r['input']}" + (" *" if r.get("default") else "")]
                + [_f(b["recall"], "{:.2f}") for b in r["bins"]]
                + [_f(r["recall"], "{:.3f}"), _f(r["fp_per_frame"], "{:.2f}"), _f(r["detector_ms"], "{:.2f}")] for r in fs["rows"]]
        out.append((f"Recall by face width, {fs['frames']} multi-scale 1280x720 frames (IoU >= 0.3 with the 68-point box; "
                    f"score >= {fs['score_threshold']}; {fs['note']})",
                    ["detector @ input (* default)"] + [f"{b} px" for b in bins] + ["all", "FP/frame", "detect ms"], rows))
    e2e = report.get("end_to_end")
    if e2e:
        def e2e_row(label, r):
            return [label, " / ".join(_f(b["nme"], "{:.3f}") for b in r["bins"].values()), _f(r["headline"], "{:.4f}"),
                    " / ".join(str(b["misses"]) for b in r["bins"].values())]
        rows = [e2e_row(f"{e2e['default']['regressor']} + {e2e['default']['detector']} (refine {'on' if e2e['refine_detections'] else 'off'})",
                        e2e["default"]),
                e2e_row(f"same, refine {'on' if e2e['refine_switched']['refine_detections'] else 'off'}", e2e["refine_switched"])]
        if "fp32" in e2e:
            rows.append(e2e_row(f"{e2e['fp32']['regressor']} + {e2e['fp32']['detector']} (fp32)", e2e["fp32"]))
        title = f"End-to-end NME % on {e2e['photos']} AFLW2000-3D original photos (detector + crop + regressor)"
        if "drift_vs_fp32" in e2e:
            title += f"; default minus fp32: {e2e['drift_vs_fp32']:+.4f}"
        out.append((title, ["pipeline", "yaw 0-30/30-60/60-90", "NME", "misses per bin"], rows))
    run = report.get("run")
    if run:
        rows = [[mode, str(r.get("frames", "-")), _f(r.get("fps_after_first_frame"), "{:.1f}"), _f(r.get("process_s"), "{:.2f}"),
                 r.get("error", "")] for mode, r in run.items() if isinstance(r, dict)]
        out.append(("tddfa-run on the video as a process (" + run["definition"] + ")", ["mode", "frames", "fps", "process s", "error"], rows))
    if report.get("variants"):
        out.append(("Variants (p50 ms = the network alone; fps with the default counterpart)", VARIANT_HEADER, variant_rows(report)))
    gate = report["gate"]
    rows = [[chk["budget"], chk["status"], str(chk["value"]), str(chk["limit"]), chk["note"]] for chk in gate["checks"]]
    out.append((f"Gate (budgets from {gate['budgets_from']})", ["budget", "status", "value", "limit", "note"], rows))
    out.append(f"gate: {'PASS' if gate['passed'] else 'FAIL (' + ', '.join(gate['failed']) + ')'}")
    return out


def _aligned(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(cell)) for cell in col) for col in zip(header, *rows)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [fmt(header)] + [fmt(r) for r in rows]


def text_report(report: dict) -> str:
    lines = []
    for block in blocks(report):
        if isinstance(block, str):
            lines.append(block)
        else:
            title, header, rows = block
            lines += ["", title] + _aligned(header, rows)
    return "\n".join(lines)


def markdown_report(report: dict, title: str | None = None) -> str:
    md = [f"## {title or 'tddfa-bench: ' + str(report['bundle']['target'])}", ""]
    for block in blocks(report):
        if isinstance(block, str):
            md += [block, ""]
        else:
            name, header, rows = block
            md += [f"**{name}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            md += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
            md.append("")
    return "\n".join(md)


def write_json(report: dict, path: Path) -> None:
    Path(path).write_text(json.dumps(report, indent=2, default=_json_default) + "\n", encoding="utf-8")


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
