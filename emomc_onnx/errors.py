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
