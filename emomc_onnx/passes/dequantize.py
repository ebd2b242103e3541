"""A float view of a QDQ model: constant weights dequantized, activation Q/DQ pairs bypassed.

The analysis and the cost model read layer shapes from this view; the bit widths and the
stored integer codes come from the QDQ model itself (see ``weight_codes``).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["float_view", "weight_codes", "has_qdq"]

logger = logging.getLogger(__name__)

_Q = ("QuantizeLinear",)
_DQ = ("DequantizeLinear",)


def has_qdq(proto: onnx.ModelProto) -> bool:
    """True if the model holds DequantizeLinear nodes."""
    return any(n.op_type in _DQ for n in proto.graph.node)


def _axis(node: onnx.NodeProto) -> int:
    for a in node.attribute:
        if a.name == "axis":
            return a.i
    return 1


def _dequantize(q: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, axis: int) -> np.ndarray:
    q = q.astype(np.float64)
    if zp is not None:
        zp = zp.astype(np.float64)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * q.ndim
        shape[axis % q.ndim] = scale.size
        scale = scale.reshape(shape)
        zp = zp.reshape(shape) if zp is not None else None
    return ((q - (zp if zp is not None else 0.0)) * scale).astype(np.float32)


def weight_codes(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """DequantizeLinear output name -> stored integer codes minus zero point, for constant inputs."""
    inits = {t.name: t for t in proto.graph.initializer}
    out = {}
    for node in proto.graph.node:
        if node.op_type in _DQ and node.input[0] in inits:
            q = np.asarray(numpy_helper.to_array(inits[node.input[0]])).astype(np.int64)
            zp = None
            if len(node.input) > 2 and node.input[2] in inits:
                zp = np.asarray(numpy_helper.to_array(inits[node.input[2]])).astype(np.int64)
                if zp.ndim == 1 and zp.size > 1:
                    shape = [1] * q.ndim
                    shape[_axis(node) % q.ndim] = zp.size
                    zp = zp.reshape(shape)
            out[node.output[0]] = q - zp if zp is not None else q
    return out


def float_view(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A float model with the same layers: DQ(const) -> float initializer, Q->DQ bypassed."""
    inits = {t.name: t for t in proto.graph.initializer}
    rename: dict[str, str] = {}
    new_inits: list[onnx.TensorProto] = []
    keep_nodes: list[onnx.NodeProto] = []
    producers = {o: n for n in proto.graph.node for o in n.output}
    graph_outputs = {o.name for o in proto.graph.output}
    for node in proto.graph.node:
        if node.op_type in _DQ and node.input[0] in inits:
            q = numpy_helper.to_array(inits[node.input[0]])
            scale = numpy_helper.to_array(inits[node.input[1]])
            zp = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] in inits else None
            new_inits.append(numpy_helper.from_array(_dequantize(q, scale, zp, _axis(node)), node.output[0]))
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
