"""Read each compute layer's weight and activation bit widths back from a QDQ model.

Weight bits come from the stored codes: symmetric b-bit codes reach +-(2^(b-1)-1) (the
clipping search saturates the largest weights), so b = log2(max|q| + 1) + 1. Activation bits
come from the number of levels the Q node can produce: 2^8 (or 2^16) for a plain Q, fewer when
a Clip limits the range before it: levels = (max - min) / scale + 1.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

from emomc_onnx.passes.quantize import LayerBits

__all__ = ["read_layer_bits"]

_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def read_layer_bits(model: onnx.ModelProto | ir.Model) -> dict[str, LayerBits]:
    """Layer name -> LayerBits read from the quantized tensors (None where float)."""
    proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
    inits = {t.name: t for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}

    def arr(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(inits[name]) if name in inits else None

    def weight_bits(name: str) -> int | None:
        dq = producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            return None
        q = np.asarray(arr(dq.input[0])).astype(np.int64)
        zp = np.asarray(arr(dq.input[2])).astype(np.int64) if len(dq.input) > 2 and dq.input[2] in inits else 0
        m = int(np.abs(q - (zp if np.ndim(zp) == 0 else 0)).max()) if q.size else 0
        return int(round(math.log2(m + 1))) + 1 if m > 0 else None

    def act_bits(name: str) -> int | None:
        dq = producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            return None
        zp = arr(q.input[2]) if len(q.input) > 2 else None
        container = 8 * (zp.dtype.itemsize if zp is not None else 1)
        clip = producer.get(q.input[0])
        if clip is not None and clip.op_type == "Clip" and len(clip.input) >= 3:
            lo, hi = float(arr(clip.input[1])), float(arr(clip.input[2]))
            scale = float(arr(q.input[1]))
            levels = int(round((hi - lo) / scale)) + 1
            return int(round(math.log2(levels)))
        return container

    out = {}
    for node in proto.graph.node:
        if node.op_type in _OPS and len(node.input) > 1:
            wb = weight_bits(node.input[1])
            ab = act_bits(node.input[0])
            if wb is not None or ab is not None:
                out[node.name] = LayerBits(wb, ab)
    return out
