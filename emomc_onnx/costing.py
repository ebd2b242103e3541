"""Model -> cost-model input: layers of a (float or QDQ) model with their weights and bits."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from emomc_onnx import io
from emomc_onnx.analysis import Layer, analyze
from emomc_onnx.passes.dequantize import const_weights, float_view, has_qdq

__all__ = ["cost_layers", "cost_model"]

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
    from emomc_onnx.cost import CostLayer

    quantized = has_qdq(proto)
    view = float_view(proto) if quantized else proto
    if layers is None:
        layers = analyze(io.load_proto(view, where=proto.graph.name or "<model>",
                                       input_shapes=input_shapes).model).layers
    if bits is None and quantized:
        from emomc_onnx.passes.qdq_bits import read_layer_bits

        bits = {k: (v.wbits, v.abits) for k, v in read_layer_bits(proto).items()}
    bits = bits or {}
    consts = const_weights(proto) if quantized else {}
    codes = {k: v.centred for k, v in consts.items()}
    qparams: dict[str, int] = {}
    if quantized:
        from emomc_onnx.passes.qdq_bits import read_qparam_elems

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


def cost_model(proto: onnx.ModelProto, profile, dataflow: str | None = None, coding: str | None = None,
               layers: list[Layer] | None = None, bits=None, input_shapes=None):
    """The cost model's report for a float or QDQ model."""
    from emomc_onnx.cost import model_cost

    return model_cost(cost_layers(proto, profile, layers, bits, input_shapes), profile, dataflow, coding)
