"""Small onnx_ir helpers shared by the passes."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

__all__ = ["add_initializer"]


def add_initializer(model: ir.Model, name: str, arr: np.ndarray) -> ir.Value:
    """Register ``arr`` as a new initializer under a unique name derived from ``name``."""
    base, i = name, 0
    while name in model.graph.initializers:
        i += 1
        name = f"{base}_{i}"
    value = ir.Value(name=name, shape=ir.Shape(arr.shape),
                     type=ir.TensorType(ir.DataType.from_numpy(arr.dtype)), const_value=ir.tensor(arr, name=name))
    model.graph.register_initializer(value)
    return value
