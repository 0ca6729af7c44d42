"""AFLW2000-3D accuracy per regressor variant and its drift from the fp32 reference (3DDFA protocol, nme.py).

Drift = variant minus fp32: the headline and the three yaw bins, original and re-annotated landmarks, a
per-image paired comparison, and the mean 68-landmark displacement in 120x120 crop pixels (the unit the
exporter's ``max_landmark_drift_px`` budget uses).
"""

from __future__ import annotations

import numpy as np

from .nme import BIN_NAMES, Aflw2000, NmeReport, evaluate_aligner, paired_comparison

# Headline NME of the mb05 checkpoint in fp32 with the original code (../shared/data/README.md); used as
# the reference only when a bundle carries no fp32 regressor (e.g. int8-only targets).
RECORDED_FP32 = {"mb05_120x120": {"original": 3.7978, "reannotated": 3.0281}}


def variant_accuracy(aligner, data: Aflw2000) -> tuple[dict, dict[str, NmeReport], np.ndarray]:
    reports, params = evaluate_aligner(aligner, data)
    return {name: r.to_dict() for name, r in reports.items()}, reports, params


def drift(reports: dict[str, NmeReport], params: np.ndarray, ref_reports: dict[str, NmeReport], ref_params: np.ndarray,
          morphable_model) -> dict:
    out = {}
    for name in ("original", "reannotated"):
        got, ref = reports[name], ref_reports[name]
        out[name] = {
            "headline": round(got.headline - ref.headline, 4),
            "bins": {b: round(g - r, 4) for b, g, r in zip(BIN_NAMES, got.bins, ref.bins)},
            "paired": paired_comparison(ref, got),
        }
    per_image = morphable_model.landmark_drift_px(params, ref_params)
    out["landmark_drift_px_120"] = {"mean": round(float(per_image.mean()), 5), "p95": round(float(np.percentile(per_image, 95)), 5),
                                    "max": round(float(per_image.max()), 5)}
    return out


def recorded_drift(reports: dict[str, NmeReport], checkpoint: str) -> dict | None:
    """Drift against the recorded fp32 figures when the bundle has no fp32 regressor (no paired comparison)."""
    recorded = RECORDED_FP32.get(checkpoint)
    if recorded is None:
        return None
    return {name: {"headline": round(reports[name].headline - recorded[name], 4), "reference": f"recorded fp32 {recorded[name]}"}
            for name in ("original", "reannotated")}


def ced_curve(per_image_nme: np.ndarray, max_nme: float = 10.0, points: int = 201) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative error distribution: fraction of images with NME <= x, x in [0, max_nme] %."""
    x = np.linspace(0.0, max_nme, points)
    values = np.sort(np.asarray(per_image_nme))
    return x, np.searchsorted(values, x, side="right") / max(1, len(values))


def plot_ced(curves: dict[str, tuple[np.ndarray, float]], path, title: str) -> str | None:
    """Write the CED PNG (curves: name -> (per-image NME, headline NME)); returns None (and the caller says so) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=110)
    for name, (per_image, headline) in curves.items():
        x, y = ced_curve(per_image)
        ax.plot(x, y * 100, label=f"{name} (NME {headline:.3f}, mean of yaw bins)", linewidth=1.6)
    ax.set_xlabel("NME (%), 68 points, normalized by sqrt(bbox area)")
    ax.set_ylabel("images (%)")
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)
