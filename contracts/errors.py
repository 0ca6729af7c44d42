"""Typed errors of the toolkit. Each maps to one exit code and prints as one line, never a traceback.

One table for every command (``tddfa-export``, ``tddfa-run``, ``tddfa-bench``) so an exit code means the
same thing everywhere:

    1 output not writable / unexpected    2 usage (unknown target, bad option)    3 data file missing or wrong
    4 bundle refused                      5 backend not installed                 6 no usable input
    7 export failed (nothing written)     8 budget not met                        9 some inputs failed
"""

from __future__ import annotations


class TddfaEdgeError(Exception):
    """Base class: a problem the user can fix, reported as one line without a traceback."""

    exit_code = 1


class OutputError(TddfaEdgeError):
    """An output (JSONL file, annotated image or video, mesh, bundle folder) cannot be written."""

    exit_code = 1


class UsageError(TddfaEdgeError):
    """Options that do not fit together or do not fit the input (e.g. ``--draw out.jpg`` for a video)."""

    exit_code = 2


class TargetError(UsageError):
    """An unknown target name or an invalid target file."""


class DataFileError(TddfaEdgeError):
    """A required data file (checkpoint, 3DMM basis, benchmark data) is missing, corrupt or not what was expected."""

    exit_code = 3


class BundleError(TddfaEdgeError):
    """A bundle is missing, incomplete, fails its sha256 or signature checks, or has a manifest this runtime cannot read."""

    exit_code = 4


class BackendUnavailableError(TddfaEdgeError):
    """The inference backend a model needs is not installed; the message names the extra to install."""

    exit_code = 5


class InputImageError(TddfaEdgeError):
    """An input image or frame cannot be used (unreadable, empty, too large, unsupported layout or dtype)."""

    exit_code = 6


class ExportError(TddfaEdgeError):
    """Conversion or verification of an artifact failed; the message carries the numbers. Nothing was written."""

    exit_code = 7


class BudgetError(TddfaEdgeError):
    """A benchmark did not meet a target's budgets."""

    exit_code = 8


class IncompleteRunError(TddfaEdgeError):
    """The run finished, but some frames or files failed or a stream ended early; the output holds the rest."""

    exit_code = 9


__all__ = [
    "TddfaEdgeError", "OutputError", "UsageError", "TargetError", "DataFileError", "BundleError", "BackendUnavailableError",
    "InputImageError", "ExportError", "BudgetError", "IncompleteRunError",
]
