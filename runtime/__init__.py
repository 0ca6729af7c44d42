"""tddfa_edge.runtime: the slim on-device runtime (numpy, OpenCV, and one inference backend; never torch).

    from tddfa_edge.runtime import FaceAligner, Tracker
    aligner = FaceAligner.from_bundle("bundles/rpi4")
    faces = aligner(bgr_image)
"""

from .aligner import Face, FaceAligner, PipelineConfig
from .bundle import Bundle, BundleMachineWarning
from .errors import BackendUnavailableError, BundleError, DataFileError, InputImageError, TddfaEdgeError
from .frames import as_bgr_uint8, read_image
from .tracking import SmoothingConfig, Tracker

__all__ = [
    "Face", "FaceAligner", "PipelineConfig", "Bundle", "BundleMachineWarning", "Tracker", "SmoothingConfig",
    "TddfaEdgeError", "BundleError", "DataFileError", "InputImageError", "BackendUnavailableError",
    "as_bgr_uint8", "read_image",
]
