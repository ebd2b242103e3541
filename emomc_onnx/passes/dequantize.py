"""A float view of a QDQ model: constant weights dequantized, activation Q/DQ pairs bypassed.

The analysis and the cost model read layer shapes from this view; the bit widths and the
stored integer codes come from the QDQ model itself (see ``weight_codes`` and
``const_weights``). Any QDQ form ONNX Runtime executes is understood, ours or a peer's:

* DequantizeLinear of a constant integer tensor, per tensor, per axis (``axis``) or blocked
  (opset 21 ``block_size``: scales and zero points repeat ``block_size`` times along
  ``axis``);
* QuantizeLinear -> DequantizeLinear applied to a float constant (weights kept float in the
  file): the runtime quantizes the constant, so the codes are ``saturate(round(w / scale) +
  zp)`` in the Q's output type, read exactly as if they had been stored.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["ConstWeight", "const_weights", "float_view", "has_qdq", "weight_codes"]

logger = logging.getLogger(__name__)

_Q = ("QuantizeLinear",)
_DQ = ("DequantizeLinear",)

#: Integer container types of QDQ tensors: (bits, lowest code, highest code).
CONTAINERS = {
    onnx.TensorProto.INT8: (8, -128, 127),
    onnx.TensorProto.UINT8: (8, 0, 255),
    onnx.TensorProto.INT16: (16, -32768, 32767),
    onnx.TensorProto.UINT16: (16, 0, 65535),
    onnx.TensorProto.INT4: (4, -8, 7),
    onnx.TensorProto.UINT4: (4, 0, 15),
    onnx.TensorProto.INT32: (32, -(2**31), 2**31 - 1),
}


def has_qdq(proto: onnx.ModelProto) -> bool:
    """True if the model holds DequantizeLinear nodes."""
    return any(n.op_type in _DQ for n in proto.graph.node)


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return a.i
    return default


def _axis(node: onnx.NodeProto) -> int:
    return _attr(node, "axis", 1)


def _broadcast_qparam(p: np.ndarray, like: np.ndarray, node: onnx.NodeProto) -> np.ndarray:
    """A scale or zero point shaped to broadcast against ``like`` (per tensor, axis or block)."""
    if p.size == 1:
        return p.reshape(())
    axis = _axis(node) % like.ndim
    block = _attr(node, "block_size", 0)
    if block > 0 and p.ndim == like.ndim:
        # Blocked (opset 21): p has like's shape with ceil(n / block) along ``axis``.
        return np.repeat(p, block, axis=axis).take(range(like.shape[axis]), axis=axis)
    shape = [1] * like.ndim
    shape[axis] = p.size
    return p.reshape(shape)


@dataclasses.dataclass(frozen=True)
class ConstWeight:
    """A constant weight behind a DequantizeLinear, as the runtime sees it.

    Attributes:
        codes: the stored integer codes (container values).
        zero_point: zero point broadcast to ``codes`` (0 when absent).
        scale: scale broadcast to ``codes``.
        container: bits of the integer type holding the codes (int4 -> 4, uint8 -> 8, ...).
        qparam_elems: scale plus zero-point elements stored for this tensor.
        declared_bits: the ``emomc.bits`` metadata of the DequantizeLinear, if any.
    """

    codes: np.ndarray
    zero_point: np.ndarray
    scale: np.ndarray
    container: int
    qparam_elems: int
    declared_bits: int | None

    @property
    def centred(self) -> np.ndarray:
        """Codes minus zero point (zeros exactly 0): what a zero-skipping array sees."""
        return self.codes.astype(np.int64) - self.zero_point.astype(np.int64)

    def dequantized(self) -> np.ndarray:
        """The float weight the runtime computes."""
        return (self.centred * self.scale.astype(np.float64)).astype(np.float32)


def _metadata(node: onnx.NodeProto, key: str) -> str | None:
    for p in node.metadata_props:
        if p.key == key:
            return p.value
    return None


def const_weights(proto: onnx.ModelProto) -> dict[str, ConstWeight]:
    """DequantizeLinear output name -> ConstWeight, for every DQ of a constant (or of Q(const))."""
    inits = {t.name: t for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}

    def arr(name: str) -> np.ndarray | None:
        if name and name in inits:
            return np.asarray(numpy_helper.to_array(inits[name]))
        return None

    out: dict[str, ConstWeight] = {}
    for node in proto.graph.node:
        if node.op_type not in _DQ or len(node.input) < 2:
            continue
        scale = arr(node.input[1])
        if scale is None:
            continue
        zp_name = node.input[2] if len(node.input) > 2 else ""
        if node.input[0] in inits:
            codes = arr(node.input[0])
            ctype = inits[node.input[0]].data_type
        else:
            q = producer.get(node.input[0])
            if q is None or q.op_type not in _Q or q.input[0] not in inits:
                continue
            w = arr(q.input[0]).astype(np.float64)
            qs = arr(q.input[1])
            qzp_name = q.input[2] if len(q.input) > 2 else ""
            qzp = arr(qzp_name)
            if qs is None or (qzp_name and qzp is None):
                continue
            ctype = inits[qzp_name].data_type if qzp is not None else onnx.TensorProto.UINT8
            if qzp is None:
                qzp = np.zeros((), dtype=np.int64)
            _, lo, hi = CONTAINERS.get(ctype, (8, 0, 255))
            zq = _broadcast_qparam(qzp.astype(np.int64), w, q)
            sq = _broadcast_qparam(qs.astype(np.float64), w, q)
            codes = np.clip(np.rint(w / sq) + zq, lo, hi).astype(np.int64)
            if not zp_name:
                zp_name = qzp_name
        zp = arr(zp_name)
        if zp_name and zp is None:
            continue  # a non-constant zero point: not a constant weight
        bits = CONTAINERS.get(ctype, (8, 0, 0))[0]
        declared = _metadata(node, "emomc.bits")
        out[node.output[0]] = ConstWeight(
            codes=codes,
            zero_point=_broadcast_qparam(zp, codes, node) if zp is not None else np.zeros((), np.int64),
            scale=_broadcast_qparam(scale, codes, node),
            container=bits,
            qparam_elems=int(scale.size + (zp.size if zp is not None else 0)),
            declared_bits=int(declared) if declared is not None and declared.isdigit() else None,
        )
    return out


def weight_codes(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """DequantizeLinear output name -> stored integer codes minus zero point, for constant inputs."""
    return {k: v.centred for k, v in const_weights(proto).items()}


def float_view(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A float model with the same layers: DQ(const) -> float initializer, Q->DQ bypassed."""
    consts = const_weights(proto)
    rename: dict[str, str] = {}
    new_inits: list[onnx.TensorProto] = []
    keep_nodes: list[onnx.NodeProto] = []
    producers = {o: n for n in proto.graph.node for o in n.output}
    graph_outputs = {o.name for o in proto.graph.output}
    for node in proto.graph.node:
        if node.op_type in _DQ and node.output[0] in consts:
            new_inits.append(numpy_helper.from_array(consts[node.output[0]].dequantized(), node.output[0]))
            continue
        if node.op_type in _DQ:
            src = producers.get(node.input[0])
            if src is not None and src.op_type in _Q:
                if node.output[0] in graph_outputs:  # keep the output's name: Identity from the float
                    keep_nodes.append(onnx.helper.make_node("Identity", [src.input[0]], [node.output[0]],
                                                            name=f"{node.name}_float"))
                else:
                    rename[node.output[0]] = src.input[0]
                continue
        if node.op_type in _Q:
            continue
        keep_nodes.append(node)
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    del out.graph.node[:]
    for node in keep_nodes:
        n = onnx.NodeProto()
        n.CopyFrom(node)
        for i, name in enumerate(n.input):
            while name in rename:
                name = rename[name]
            n.input[i] = name
        out.graph.node.append(n)
    used = {i for n in out.graph.node for i in n.input}
    kept = [t for t in out.graph.initializer if t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept + [t for t in new_inits if t.name in used])
    del out.graph.value_info[:]
    return out
