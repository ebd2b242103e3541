"""A QDQ front member taken apart for training, and put back together (torch-free).

:func:`read_member` turns a member file into its float architecture (the pruned, sparse
float graph the quantizer started from: ``float_view`` after dropping the low-bit Clips in
front of QuantizeLinear) plus the quantizers it holds: per layer the weight bits, axis and
scales; per quantized activation tensor its bits, scale, zero point, code range and the
(node, input) pairs that read the quantized copy. :func:`export_member` writes trained
weights back into that float graph by name and runs the tool's own ``quantize_model`` with
ranges that reproduce the learned activation scales exactly (scale = (hi - lo) / levels and
zero point = -lo / scale, the quantizer's own formula), and weights that already lie on their
learned grid with every channel's largest weight at the top code, so the quantizer's
clipping search (ratio 1: zero error) stores exactly the learned codes and scales.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from emomc_onnx.errors import UnsupportedOpError
from emomc_onnx.passes.dequantize import float_view
from emomc_onnx.passes.qdq_bits import read_layer_bits
from emomc_onnx.passes.quantize import QUANTIZABLE_OPS, LayerBits, QuantPlan, quantize_model

__all__ = ["ActQuant", "Member", "WeightQuant", "export_member", "read_member"]

logger = logging.getLogger(__name__)

_RANGE = {onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127),
          onnx.TensorProto.UINT16: (0, 65535), onnx.TensorProto.INT16: (-32768, 32767)}


@dataclasses.dataclass(frozen=True)
class WeightQuant:
    """A layer's quantized weight: initializer name (in the float graph), bits, axis, scales."""

    layer: str
    weight: str
    bits: int
    axis: int | None
    scale: np.ndarray


@dataclasses.dataclass(frozen=True)
class ActQuant:
    """An activation Q/DQ pair: tensor, bits, scale, zero point, code range, readers."""

    tensor: str
    bits: int
    scale: float
    zero_point: int
    qmin: int
    qmax: int
    readers: tuple[tuple[str, int], ...]


@dataclasses.dataclass(frozen=True)
class Member:
    """A front member ready to train: float graph, layer bits, quantizers."""

    float_proto: onnx.ModelProto
    bits: dict[str, LayerBits]
    weights: dict[str, WeightQuant]
    acts: dict[str, ActQuant]
    trainable: frozenset[str]  # compute layers' weights and biases (initializer names)
    masked: frozenset[str]  # compute layers' weights: their zeros stay zeros
    int32_bias: frozenset[str] = frozenset()  # layers whose bias is int32 at scale s_x * s_w


def _arr(inits: Mapping[str, onnx.TensorProto], name: str) -> np.ndarray:
    return np.asarray(numpy_helper.to_array(inits[name]))


def read_member(proto: onnx.ModelProto) -> Member:
    """Float architecture and quantizers of a QDQ member (a float model gives no quantizers)."""
    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, list[tuple[str, int]]] = {}
    for n in g.node:
        for i, t in enumerate(n.input):
            readers.setdefault(t, []).append((n.name, i))
    # activations: Q(x or Clip(x)) -> DQ; the Clip only narrows the codes to 2^bits levels
    acts: dict[str, ActQuant] = {}
    drop_clips: dict[str, str] = {}  # Clip output -> its input
    for dq in g.node:
        if dq.op_type != "DequantizeLinear" or dq.input[0] in inits:
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        scale = float(_arr(inits, q.input[1]).reshape(-1)[0])
        zp_t = inits[q.input[2]] if len(q.input) > 2 and q.input[2] in inits else None
        if zp_t is not None and zp_t.data_type not in (onnx.TensorProto.UINT8, onnx.TensorProto.UINT16):
            raise UnsupportedOpError(f"activation {q.input[0]!r}: fine-tuning exports asymmetric "
                                     f"(unsigned) activations only, the member has "
                                     f"{onnx.TensorProto.DataType.Name(zp_t.data_type)}")
        zp = int(_arr(inits, q.input[2]).reshape(-1)[0]) if zp_t is not None else 0
        qmin, qmax = _RANGE[zp_t.data_type if zp_t is not None else onnx.TensorProto.UINT8]
        src = q.input[0]
        clip = producer.get(src)
        if clip is not None and clip.op_type == "Clip" and len(clip.input) >= 3 \
                and clip.input[1] in inits and clip.input[2] in inits \
                and all(producer_name_is(g, r, "QuantizeLinear") for r, _ in readers.get(src, [])):
            qmin = int(round(float(_arr(inits, clip.input[1])) / scale)) + zp
            qmax = int(round(float(_arr(inits, clip.input[2])) / scale)) + zp
            drop_clips[src] = clip.input[0]
            src = clip.input[0]
        bits = int(round(np.log2(qmax - qmin + 1)))
        acts[src] = ActQuant(src, bits, scale, zp, qmin, qmax, tuple(readers.get(dq.output[0], [])))
    # drop those Clips so the float view is the quantizer's input graph
    stripped = onnx.ModelProto()
    stripped.CopyFrom(proto)
    keep = [n for n in stripped.graph.node if not (n.op_type == "Clip" and n.output[0] in drop_clips)]
    del stripped.graph.node[:]
    for n in keep:
        for i, t in enumerate(n.input):
            if t in drop_clips:
                n.input[i] = drop_clips[t]
        stripped.graph.node.append(n)
    fproto = _rename_dequantized(float_view(stripped))
    # weights: DQ(const) feeding input 1 of a quantizable layer
    bits = read_layer_bits(proto)
    weights: dict[str, WeightQuant] = {}
    int32_bias: set[str] = set()
    for n in g.node:
        if n.op_type not in QUANTIZABLE_OPS or len(n.input) < 2:
            continue
        dq = producer.get(n.input[1])
        lb = bits.get(n.name)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits \
                or lb is None or lb.wbits is None:
            continue
        scale = _arr(inits, dq.input[1]).astype(np.float32)
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) if scale.size > 1 else None
        weights[n.name] = WeightQuant(n.name, _strip(n.input[1]), lb.wbits, axis, scale.reshape(-1))
        bq = producer.get(n.input[2]) if len(n.input) > 2 else None
        if bq is not None and bq.op_type == "DequantizeLinear" and bq.input[0] in inits \
                and inits[bq.input[0]].data_type == onnx.TensorProto.INT32:
            int32_bias.add(n.name)
    trainable, masked = set(), set()
    finits = {t.name for t in fproto.graph.initializer}
    for n in fproto.graph.node:
        if n.op_type in QUANTIZABLE_OPS and len(n.input) > 1 and n.input[1] in finits:
            masked.add(n.input[1])
            trainable.add(n.input[1])
            if len(n.input) > 2 and n.input[2] in finits:
                trainable.add(n.input[2])
    return Member(fproto, bits, weights, acts, frozenset(trainable), frozenset(masked), frozenset(int32_bias))


def producer_name_is(graph: onnx.GraphProto, node_name: str, op_type: str) -> bool:
    """True if the node called ``node_name`` has type ``op_type``."""
    return any(n.name == node_name and n.op_type == op_type for n in graph.node)


def _strip(name: str) -> str:
    return name.removesuffix("_dequantized")


def _rename_dequantized(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``w_dequantized`` initializers (float_view's names) back to ``w``, the quantizer's input names."""
    g = proto.graph
    taken = {t.name for t in g.initializer} | {o for n in g.node for o in n.output} | {v.name for v in g.input}
    rename = {t.name: _strip(t.name) for t in g.initializer
              if t.name.endswith("_dequantized") and _strip(t.name) not in taken}
    for t in g.initializer:
        t.name = rename.get(t.name, t.name)
    for n in g.node:
        for i, t in enumerate(n.input):
            n.input[i] = rename.get(t, t)
    return proto


def export_member(member: Member, tensors: Mapping[str, np.ndarray],
                  act_scales: Mapping[str, float]) -> onnx.ModelProto:
    """The QDQ model of trained float tensors (ONNX names) and learned activation scales.

    Args:
        member: what :func:`read_member` returned.
        tensors: initializer name -> trained value (quantized weights already on their grid).
        act_scales: activation tensor -> learned scale (zero points and code ranges as read).
    """
    proto = onnx.ModelProto()
    proto.CopyFrom(member.float_proto)
    for t in proto.graph.initializer:
        if t.name in tensors:
            t.CopyFrom(numpy_helper.from_array(np.asarray(tensors[t.name], np.float32), t.name))
    ranges: dict[str, tuple[float, float]] = {}
    for name, a in member.acts.items():
        s = float(act_scales.get(name, a.scale))
        ranges[name] = ((a.qmin - a.zero_point) * s, (a.qmax - a.zero_point) * s)
    layers = {k: v for k, v in member.bits.items() if v.wbits is not None or v.abits is not None}
    return quantize_model(proto, QuantPlan(layers=layers), ranges)
