"""emomc-onnx: evolutionary multi-objective model compression for ONNX models."""

from __future__ import annotations

__version__ = "0.1.0"
