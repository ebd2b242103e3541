"""Small onnx_ir helpers shared by the passes."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_ir as ir

__all__ = ["add_initializer", "ensure_bias"]


def add_initializer(model: ir.Model, name: str, arr: np.ndarray,
                    dtype: ir.DataType | None = None) -> ir.Value:
    """Register ``arr`` as a new initializer under a unique name derived from ``name``.

    ``dtype`` stores it in another ONNX type (e.g. INT4 for 4-bit codes at opset >= 21).
    """
    base, i = name, 0
    while name in model.graph.initializers:
        i += 1
        name = f"{base}_{i}"
    if dtype is ir.DataType.INT4:
        tensor = ir.tensor(arr.astype(ml_dtypes.int4), dtype=dtype, name=name)
    else:
        tensor = ir.Tensor(np.asarray(arr), name=name)  # ir.tensor checks protocols: slow per call
        dtype = ir.DataType.from_numpy(arr.dtype)
    value = ir.Value(name=name, shape=ir.Shape(arr.shape), type=ir.TensorType(dtype), const_value=tensor)
    model.graph.register_initializer(value)
    return value


def ensure_bias(model: ir.Model, node: ir.Node, n_out: int, dtype) -> ir.Value:
    """The bias input (input 2) of a Conv/Gemm ``node``; a zero one is created if missing."""
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        return node.inputs[2]
    bias = add_initializer(model, f"{node.name}_bias", np.zeros(n_out, dtype=dtype))
    node.resize_inputs(3)
    node.replace_input_with(2, bias)
    return bias
