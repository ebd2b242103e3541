"""Read each compute layer's weight and activation bit widths back from a QDQ model.

Bits come from the quantized tensors themselves, not from node metadata:

* weights: symmetric b-bit codes reach +-(2^(b-1)-1) (the clipping search never widens the
  range past max|w|, so every non-zero channel saturates), hence
  b = log2(max|q - zp| + 1) + 1, read from the DequantizeLinear's integer initializer
  (int8, INT4 or int16). Only an all-zero weight carries no range; there the
  DequantizeLinear's ``emomc.bits`` metadata is used, else the container width.
* activations: the number of levels the QuantizeLinear in front of the layer can produce:
  the full container (2^8, 2^16) for a plain Q, fewer when a Clip bounds its input first:
  levels = (clip_max - clip_min) / scale + 1, b = log2(levels).
* a layer with a float input whose ``emomc.abits`` metadata says 16 reads as 16: the
  pass keeps 16-bit activations float by default (fp16 in the paper), so no tensor exists
  to read; any other float side reads as None.

Works for models written by ``QuantizePass`` and for other QDQ models (e.g. ORT's
``quantize_static``) in the common Q -> DQ -> layer form.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

from emomc_onnx.passes.quantize import QUANTIZABLE_OPS, LayerBits

__all__ = ["read_layer_bits"]

logger = logging.getLogger(__name__)

_CONTAINER_BITS = {
    onnx.TensorProto.INT8: 8, onnx.TensorProto.UINT8: 8, onnx.TensorProto.INT16: 16,
    onnx.TensorProto.UINT16: 16, onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4,
    onnx.TensorProto.INT32: 32,
}


def _metadata(node: onnx.NodeProto, key: str) -> str | None:
    for p in node.metadata_props:
        if p.key == key:
            return p.value
    return None


def read_layer_bits(model: onnx.ModelProto | ir.Model) -> dict[str, LayerBits]:
    """Layer name -> LayerBits of every compute layer with a quantized side (None where float)."""
    proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
    inits = {t.name: t for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}

    def arr(name: str) -> np.ndarray | None:
        return np.asarray(numpy_helper.to_array(inits[name])) if name in inits else None

    def weight_bits(name: str) -> int | None:
        dq = producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            return None
        q = arr(dq.input[0]).astype(np.int64)
        zp = arr(dq.input[2]) if len(dq.input) > 2 and dq.input[2] in inits else None
        if zp is not None and zp.size > 1:  # per-axis zero points
            shape = [1] * q.ndim
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            shape[axis % q.ndim] = zp.size
            zp = zp.reshape(shape)
        m = int(np.abs(q - (zp.astype(np.int64) if zp is not None else 0)).max()) if q.size else 0
        if m > 0:
            return int(round(math.log2(m + 1))) + 1
        declared = _metadata(dq, "emomc.bits")
        if declared is not None and declared.isdigit():
            return int(declared)
        return _CONTAINER_BITS.get(inits[dq.input[0]].data_type)

    def act_bits(name: str) -> int | None:
        dq = producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            return None
        if len(q.input) > 2 and q.input[2] in inits:
            container = _CONTAINER_BITS.get(inits[q.input[2]].data_type, 8)
        else:
            container = 8  # no zero point: uint8
        clip = producer.get(q.input[0])
        if clip is not None and clip.op_type == "Clip" and len(clip.input) >= 3 \
                and clip.input[1] in inits and clip.input[2] in inits and q.input[1] in inits:
            lo, hi = float(arr(clip.input[1])), float(arr(clip.input[2]))
            scale = float(arr(q.input[1]).reshape(-1)[0])
            levels = int(round((hi - lo) / scale)) + 1
            return min(container, int(round(math.log2(max(levels, 2)))))
        return container

    out: dict[str, LayerBits] = {}
    for node in proto.graph.node:
        if node.op_type in QUANTIZABLE_OPS and len(node.input) > 1:
            wb = weight_bits(node.input[1])
            ab = act_bits(node.input[0])
            if ab is None and _metadata(node, "emomc.abits") == "16":
                ab = 16  # 16-bit activations kept float by the pass
            if wb is not None or ab is not None:
                out[node.name] = LayerBits(wb, ab)
    return out
