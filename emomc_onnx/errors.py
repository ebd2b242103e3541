"""Error types: every user-facing failure is an EmomcError with a one-line message.

The CLI catches EmomcError and prints ``error: <message>`` with exit code 2, never a
traceback. Messages name the file, field or tensor at fault.
"""

from __future__ import annotations

__all__ = [
    "EmomcError",
    "ModelError",
    "ProfileError",
    "DataError",
    "UnsupportedOpError",
    "PlanError",
    "OutputError",
    "StoreError",
    "MetricError",
    "DiskFullError",
]


class EmomcError(Exception):
    """Base class of all user-facing errors."""


class ModelError(EmomcError):
    """The ONNX model cannot be loaded, checked or analysed."""


class ProfileError(EmomcError):
    """A hardware profile is malformed (message names file and field path)."""


class DataError(EmomcError):
    """Evaluation/calibration data does not match the model."""


class UnsupportedOpError(EmomcError):
    """An operator the requested transformation cannot handle."""


class PlanError(EmomcError):
    """A pruning/quantization plan is invalid for this model."""


class OutputError(EmomcError):
    """An output path cannot be written (bad -o, a directory in use, disk full)."""


class StoreError(EmomcError):
    """The result store (results.sqlite) cannot be read or written."""


class MetricError(DataError):
    """A user metric function (--metric module:function) raised or exited.

    ``detail`` holds the user function's traceback (printed by the CLI with -v); both travel
    back from worker processes (pickled as the exception's args).
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message, detail)
        self.detail = detail

    def __str__(self) -> str:
        return str(self.args[0])


class DiskFullError(OutputError):
    """The disk refused a write (full, over a file-size limit, read-only); the run can resume."""
