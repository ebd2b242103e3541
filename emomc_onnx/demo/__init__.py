"""The embedded demo: a VGG-style CNN trained on real MNIST digits, and its held-out data."""

from __future__ import annotations

import importlib.resources
import pathlib

from emomc_onnx.errors import EmomcError

__all__ = ["demo_model_path", "demo_data_path"]


def _file(name: str) -> pathlib.Path:
    path = pathlib.Path(str(importlib.resources.files(__name__) / name))
    if not path.exists():
        raise EmomcError(f"the demo file {name} is missing from the installed package ({path}); "
                         "reinstall emomc-onnx or run benchmarks/train_demo.py")
    return path


def demo_model_path() -> pathlib.Path:
    """The demo model (ONNX, opset 17; input float32 pixels 0..255, N x 1 x 28 x 28)."""
    return _file("demo.onnx")


def demo_data_path() -> pathlib.Path:
    """3,000 held-out MNIST digits: ``input`` uint8 (3000, 1, 28, 28), ``labels`` int64."""
    return _file("data.npz")
