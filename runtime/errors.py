"""Typed errors of the toolkit. Each maps to one exit code and prints as one line (see ``exit_code``)."""

from __future__ import annotations


class TddfaEdgeError(Exception):
    """Base class: a problem the user can fix, reported as one line without a traceback."""

    exit_code = 1


class DataFileError(TddfaEdgeError):
    """A required data file (checkpoint, 3DMM basis, benchmark data) is missing, corrupt or not what was expected."""

    exit_code = 3


class BundleError(TddfaEdgeError):
    """A bundle is missing, incomplete, fails its sha256 checks or has a manifest this runtime cannot read."""

    exit_code = 4


class BackendUnavailableError(TddfaEdgeError):
    """The inference backend a model needs is not installed; the message names the extra to install."""

    exit_code = 5


class InputImageError(TddfaEdgeError):
    """An input image or frame cannot be used (unreadable, empty, unsupported layout or dtype)."""

    exit_code = 6


class TargetError(TddfaEdgeError):
    """An unknown target name or an invalid target file."""

    exit_code = 2


class ExportError(TddfaEdgeError):
    """Conversion or verification of an artifact failed; the message carries the numbers."""

    exit_code = 7


class BudgetError(TddfaEdgeError):
    """A benchmark did not meet a target's budgets."""

    exit_code = 8


class OutputError(TddfaEdgeError):
    """An output (JSONL file, annotated image or video, mesh) cannot be written."""

    exit_code = 1


class OptionError(TddfaEdgeError):
    """An option that does not fit the input (e.g. ``--draw out.jpg`` for a video)."""

    exit_code = 2


class IncompleteRunError(TddfaEdgeError):
    """The run finished, but some frames or files failed or a stream ended early; the output holds the rest."""

    exit_code = 9
