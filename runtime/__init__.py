"""tddfa_edge.runtime: the slim on-device runtime (numpy, OpenCV, and one inference backend; never torch).

    from tddfa_edge.runtime import FaceAligner, Tracker
    aligner = FaceAligner.from_bundle("bundles/rpi4")
    faces = aligner(bgr_image)

The names below are imported on first use, so that ``tddfa-run`` can take SIGINT/SIGTERM over before numpy and
OpenCV load (``python -m tddfa_edge.runtime.cli`` imports this package first).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Face": ".aligner", "FaceAligner": ".aligner", "StageClock": ".aligner", "Bundle": ".bundle", "Manifest": ".manifest",
    "Detections": ".detector", "FaceDetector": ".detector", "Tracker": ".tracking", "SmoothingConfig": ".tracking",
    "as_bgr_uint8": ".frames", "read_image": ".frames",
    "TddfaEdgeError": "tddfa_edge.contracts.errors", "BundleError": "tddfa_edge.contracts.errors",
    "InputImageError": "tddfa_edge.contracts.errors", "BackendUnavailableError": "tddfa_edge.contracts.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
