"""Read each compute layer's weight and activation bit widths back from a QDQ model.

Bits come from the quantized tensors themselves, not from node metadata, the way the
runtime executes the graph (ours or a peer's QDQ output):

* weights: the codes of the constant behind the layer's DequantizeLinear (stored integers,
  per tensor / per axis / blocked, or a float constant quantized by a QuantizeLinear in
  front, see ``dequantize.const_weights``). Two readings, the smaller wins, capped at the
  container width: symmetric codes reach +-(2^(b-1)-1) around the zero point (the clipping
  search never widens the range past max|w|), b = log2(max|q - zp| + 1) + 1; asymmetric
  codes (any zero point, per channel too) span b = ceil(log2(max q - min q + 1)) bits per
  channel. A uint8 tensor with zero point 0 using 0..255 is 8-bit, not 9. Only an
  all-zero weight carries no range; there the ``emomc.bits`` metadata is used, else the
  container width.
* activations: the number of levels the QuantizeLinear in front of the layer can produce:
  the full container (2^8, 2^16, 2^4) for a plain Q, fewer when a Clip bounds its input
  first: levels = (clip_max - clip_min) / scale + 1, b = log2(levels). Ops that move or
  select values without computing new ones (MaxPool, Relu, Reshape, Flatten, Transpose,
  ...) between the DequantizeLinear and the layer keep those bits: the runtime runs them
  on the quantized tensor, into the integer kernel it forms for a layer with quantized
  weights (our own QuantizePass puts the Q/DQ directly in front of the layer instead).
* a layer with a float input whose ``emomc.abits`` metadata says 16 reads as 16: the
  pass keeps 16-bit activations float by default (fp16 in the paper), so no tensor exists
  to read; any other float side reads as None.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

from emomc_onnx.passes.dequantize import CONTAINERS, ConstWeight, const_weights
from emomc_onnx.passes.quantize import QUANTIZABLE_OPS, LayerBits

__all__ = ["BIT_PRESERVING_OPS", "read_layer_bits", "read_qparam_elems"]

logger = logging.getLogger(__name__)

#: Ops the runtime executes on quantized values without producing new ones: a tensor keeps
#: its bits through them (ORT's QDQ propagation runs them on the integer tensor).
BIT_PRESERVING_OPS = frozenset({
    "MaxPool", "Relu", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity",
    "Slice", "Gather", "Split", "Pad", "Resize", "SpaceToDepth", "DepthToSpace", "Expand",
    "Tile", "GlobalMaxPool", "Clip",
})


def _weight_bits(cw: ConstWeight) -> int | None:
    c = cw.centred
    m = int(np.abs(c).max()) if c.size else 0
    if m == 0:
        return cw.declared_bits or cw.container
    sym = round(math.log2(m + 1)) + 1
    if sym <= cw.container:
        return sym
    # Not symmetric around the zero point (e.g. uint8 with zero point 0 using 0..255):
    # the codes of each group sharing a scale and zero point span the bits the runtime reads.
    q = cw.codes.astype(np.int64).ravel()
    keys = np.stack(np.broadcast_arrays(cw.scale, cw.zero_point, cw.codes)[:2]).reshape(2, -1)
    _, group = np.unique(keys, axis=1, return_inverse=True)
    group = group.ravel()
    n = int(group.max()) + 1
    hi = np.full(n, np.iinfo(np.int64).min)
    lo = np.full(n, np.iinfo(np.int64).max)
    np.maximum.at(hi, group, q)
    np.minimum.at(lo, group, q)
    span = int((hi - lo).max())
    return min(cw.container, max(1, math.ceil(math.log2(span + 1))))


def _act_q(name: str, producer: dict, walk: bool = True) -> onnx.NodeProto | None:
    """The QuantizeLinear feeding ``name`` through a DQ (and bit-preserving ops if ``walk``)."""
    seen = 0
    node = producer.get(name)
    while walk and node is not None and node.op_type in BIT_PRESERVING_OPS and seen < 64:
        node = producer.get(node.input[0]) if node.input else None
        seen += 1
    if node is None or node.op_type != "DequantizeLinear":
        return None
    q = producer.get(node.input[0])
    return q if q is not None and q.op_type == "QuantizeLinear" else None


def read_qparam_elems(proto: onnx.ModelProto) -> dict[str, int]:
    """Layer name -> quantization scales and zero points stored for it.

    Its weight's DequantizeLinear (one per tensor, per channel or per block) plus the scale
    and zero point of the QuantizeLinear in front of its input activation.
    """
    consts = const_weights(proto)
    inits = {t.name for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    out: dict[str, int] = {}
    for node in proto.graph.node:
        if node.op_type in QUANTIZABLE_OPS and len(node.input) > 1:
            n = 0
            cw = consts.get(node.input[1])
            if cw is not None:
                n += cw.qparam_elems
            walk = cw is not None and _metadata(node, "emomc.abits") is None
            q = _act_q(node.input[0], producer, walk=walk)
            if q is not None:
                n += sum(1 for i in q.input[1:3] if i in inits)
            if n:
                out[node.name] = n
    return out

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

    consts = const_weights(proto)

    def weight_bits(name: str) -> int | None:
        cw = consts.get(name)
        return None if cw is None else _weight_bits(cw)

    def act_bits(name: str, walk: bool) -> int | None:
        q = _act_q(name, producer, walk)
        if q is None:
            return None
        if len(q.input) > 2 and q.input[2] in inits:
            container = CONTAINERS.get(inits[q.input[2]].data_type, (8,))[0]
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
            # Through MaxPool / Reshape / ... only into a peer's layer with quantized weights
            # (ORT propagates the Q/DQ there to form its integer kernel). QuantizePass puts a
            # Q/DQ right in front of every layer whose activations it quantizes (and records
            # emomc.abits), so a layer of ours without one computes in float.
            walk = wb is not None and _metadata(node, "emomc.abits") is None
            ab = act_bits(node.input[0], walk=walk)
            if ab is None and _metadata(node, "emomc.abits") == "16":
                ab = 16  # 16-bit activations kept float by the pass
            if wb is not None or ab is not None:
                out[node.name] = LayerBits(wb, ab)
    return out
