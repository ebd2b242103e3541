"""Model -> cost-model input: layers of a (float or QDQ) model with their weights and bits."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from emomc_onnx import io
from emomc_onnx.analysis import Layer, analyze
from emomc_onnx.cost.model import CostLayer, OtherOp, model_cost
from emomc_onnx.passes.dequantize import CONTAINERS, const_weights, float_view, has_qdq
from emomc_onnx.passes.qdq_bits import _act_q, read_layer_bits, read_qparam_elems

__all__ = ["cost_layers", "cost_model", "cost_other_ops"]

logger = logging.getLogger(__name__)


def cost_layers(
    proto: onnx.ModelProto,
    profile,
    layers: list[Layer] | None = None,
    bits: Mapping[str, tuple[int | None, int | None]] | None = None,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> list:
    """CostLayer per compute layer: weights as stored (integer codes for QDQ), bits read back.

    Float layers are costed at the profile's baseline bit widths; ``input_shapes`` fixes
    dynamic input dimensions when the layers are analysed here (``layers`` not given).
    Scales and zero points of a QDQ layer (its weight's DequantizeLinear and its input's
    QuantizeLinear) are charged as ``qparam_elems`` at the profile's ``qparam_bits``.
    """
    quantized = has_qdq(proto)
    view = float_view(proto) if quantized else proto
    if layers is None:
        layers = analyze(io.load_proto(view, where=proto.graph.name or "<model>",
                                       input_shapes=input_shapes).model).layers
    if bits is None and quantized:
        bits = {k: (v.wbits, v.abits) for k, v in read_layer_bits(proto).items()}
    bits = bits or {}
    consts = const_weights(proto) if quantized else {}
    codes = {k: v.centred for k, v in consts.items()}
    qparams: dict[str, int] = {}
    if quantized:
        qparams = read_qparam_elems(proto)
    inits = {t.name: t for t in proto.graph.initializer}
    weight_input = {n.name: n.input[1] for n in proto.graph.node if len(n.input) > 1}
    ref_w = int(profile.baseline_weight_bits)
    ref_a = int(getattr(profile, "baseline_activation_bits", ref_w) or ref_w)
    out = []
    for lay in layers:
        wb, ab = bits.get(lay.name, (None, None))
        name = weight_input.get(lay.name, lay.weight)
        if name in codes:
            w = codes[name]
        elif name in inits:
            w = numpy_helper.to_array(inits[name])
        else:
            w = None
        out.append(CostLayer(lay, None if w is None else np.asarray(w), int(wb or ref_w), int(ab or ref_a),
                             bias_elems=lay.out_channels if lay.bias else 0,
                             qparam_elems=qparams.get(lay.name, 0)))
    return out


_SKIP = frozenset({"QuantizeLinear", "DequantizeLinear", "Constant"})


def _fixed_shapes(proto: onnx.ModelProto, input_shapes) -> onnx.ModelProto:
    """A copy with shapes inferred (dynamic inputs fixed by ``input_shapes``, batch 1)."""
    p = onnx.ModelProto()
    p.CopyFrom(proto)
    shapes = dict(input_shapes or {})
    inits = {t.name for t in p.graph.initializer}
    for vi in p.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        want = shapes.get(vi.name)
        for i, d in enumerate(dims):
            if want is not None and i < len(want):
                d.ClearField("dim_param")
                d.dim_value = int(want[i])
            elif i == 0 and (not d.HasField("dim_value") or d.dim_value <= 0):
                d.ClearField("dim_param")  # a dynamic batch: one image
                d.dim_value = 1
    del p.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(p)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        logger.info("shape inference for the other ops failed: %s", exc)
        return p


def _elems(vi: onnx.ValueInfoProto) -> int | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    n = 1
    for d in t.shape.dim:
        if not d.HasField("dim_value") or d.dim_value <= 0:
            return None
        n *= d.dim_value
    return n


def cost_other_ops(proto: onnx.ModelProto, layers: list[Layer], input_shapes=None) -> list:
    """OtherOp per non-compute node of a float or QDQ model (everything but the layers and
    the Q/DQ / Constant nodes): activation elements in and out per image, their bits read
    from the QDQ graph (the QuantizeLinear behind a DequantizeLinear, through MaxPool,
    Reshape, ...; the Q after the op for its output), and the MACs of a MatMul of two
    activations (attention scores and context)."""
    inferred = _fixed_shapes(proto, input_shapes)
    g = inferred.graph
    inits = {t.name: t for t in g.initializer}
    infos = {vi.name: vi for vi in (*g.value_info, *g.input, *g.output)}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    layer_names = {lay.name for lay in layers}

    def q_bits(q: onnx.NodeProto | None) -> int | None:
        if q is None:
            return None
        if len(q.input) > 2 and q.input[2] in inits:
            return CONTAINERS.get(inits[q.input[2]].data_type, (8,))[0]
        return 8

    def n_elems(name: str) -> int | None:
        vi = infos.get(name)
        return _elems(vi) if vi is not None else None

    out = []
    for node in g.node:
        if node.op_type in _SKIP or node.name in layer_names:
            continue
        acts = [i for i in node.input if i and i not in inits]
        sizes = [n_elems(i) for i in acts]
        outs = [n_elems(o) for o in node.output if o]
        in_elems = None if any(x is None for x in sizes) else sum(sizes)
        out_elems = None if any(x is None for x in outs) else sum(outs)
        bits = max((b for b in (q_bits(_act_q(i, producer)) for i in acts) if b), default=None)
        after = [c for o in node.output for c in consumers.get(o, ()) if c.op_type == "QuantizeLinear"]
        out_bits = q_bits(after[0]) if after else bits
        macs = 0
        if node.op_type in ("MatMul", "Gemm") and len(acts) >= 2 and outs and outs[0] is not None:
            a = infos.get(acts[0])
            dims = a.type.tensor_type.shape.dim if a is not None else ()
            k = dims[-1].dim_value if len(dims) and dims[-1].HasField("dim_value") else 0
            if node.op_type == "Gemm" and any(x.name == "transA" and x.i for x in node.attribute):
                k = dims[-2].dim_value if len(dims) > 1 else 0
            macs = outs[0] * k
        out.append(OtherOp(node.name, node.op_type, in_elems, out_elems, bits, out_bits, macs))
    return out


def cost_model(proto: onnx.ModelProto, profile, dataflow: str | None = None, coding: str | None = None,
               layers: list[Layer] | None = None, bits=None, input_shapes=None, batch: int | None = None):
    """The cost model's report for a float or QDQ model (its non-compute ops included)."""
    cl = cost_layers(proto, profile, layers, bits, input_shapes)
    others = cost_other_ops(proto, [c.layer for c in cl], input_shapes)
    return model_cost(cl, profile, dataflow, coding, other_ops=others, batch=batch)
