"""QDQ mixed-precision quantization: each compute layer gets its own weight and activation bits.

Weights: symmetric, per output channel (or per tensor), the clipping ratio per channel chosen
to minimise the squared quantization error (a vectorised search over candidate ratios, not
only max-abs). b-bit weights are integers in [-(2^(b-1)-1), 2^(b-1)-1], stored as int8 for
b <= 8 and int16 for 16 bits (``com.microsoft`` DequantizeLinear below opset 21, as ORT's own
quantizer does). Weights of 4 bits or fewer are stored as INT4 where the opset allows (21 and
later); older opsets keep them in int8 containers, where the values carry the bit width.

Activations: per tensor, asymmetric uint8 (or symmetric int8) from calibrated ranges; for
a < 8 bits the tensor is clipped to the calibrated range first so the codes really span
2^a levels. A tensor read by several quantized layers gets one Q/DQ pair (at the widest bits
asked). 16-bit activations stay float (the paper keeps fp16 activations; the cost model
counts them at 16 bits). Layer outputs are quantized too (what ORT's fusion into
QLinearConv/QLinearMatMul needs), except graph outputs, which stay float; graph inputs stay
float at the model boundary.

Bias: int32 with scale s_x * s_w when both sides are quantized (ORT's fused kernels take
that form), float otherwise.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from emomc_onnx.errors import PlanError
from emomc_onnx.passes.ir_utils import add_initializer

__all__ = ["LayerBits", "QuantPlan", "QuantizePass", "quantize_model", "quantize_weight",
           "WEIGHT_BITS", "ACTIVATION_BITS"]

logger = logging.getLogger(__name__)

WEIGHT_BITS = (2, 3, 4, 5, 6, 7, 8, 16)
ACTIVATION_BITS = (4, 5, 6, 7, 8, 16)
_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_RATIOS = np.linspace(0.5, 1.0, 16)
_SAMPLE = 1024


@dataclasses.dataclass(frozen=True)
class LayerBits:
    """Bit widths of one layer; None keeps that side float."""

    wbits: int | None
    abits: int | None


@dataclasses.dataclass(frozen=True)
class QuantPlan:
    """Bits per compute node name; layers not listed stay float."""

    layers: Mapping[str, LayerBits]
    per_channel: bool = True
    symmetric_activations: bool = False
    weight_scale: str = "mse"


def _out_axis(node: ir.Node, ndim: int) -> int:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = node.attributes["transB"].value if "transB" in node.attributes else 0
        return 0 if trans_b else 1
    return ndim - 1  # MatMul [K, N]


def quantize_weight(w: np.ndarray, bits: int, axis: int | None, method: str = "mse"
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric codes and scales; ``axis`` None = per tensor. Returns (codes int64, scale)."""
    qmax = 2 ** (bits - 1) - 1
    w32 = w.astype(np.float32)
    rows = w32.reshape(1, -1) if axis is None else np.moveaxis(w32, axis, 0).reshape(w.shape[axis], -1)
    maxabs = np.abs(rows).max(axis=1).astype(np.float64)
    maxabs = np.where(maxabs > 0, maxabs, 1.0)
    ratios = _RATIOS if method == "mse" else np.array([1.0])
    if bits >= 16:
        ratios = np.array([1.0])
    # the clipping ratio is chosen on at most _SAMPLE evenly strided weights per channel (plus
    # each channel's largest one, which sets the range), then all weights are quantized once
    step = max(1, rows.shape[1] // _SAMPLE)
    sample = rows[:, ::step]
    sample = np.concatenate([sample, rows[np.arange(len(rows)), np.abs(rows).argmax(axis=1)][:, None]], axis=1)
    best_err = np.full(len(rows), np.inf)
    best_scale = maxabs / qmax
    for r in ratios:  # a handful of ratios; vectorised over channels and weights
        scale = (r * maxabs / qmax).astype(np.float32)
        q = np.clip(np.rint(sample / scale[:, None]), -qmax, qmax)
        err = ((q * scale[:, None] - sample) ** 2).sum(axis=1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
    best_scale = best_scale.astype(np.float32)
    q = np.clip(np.rint(rows / best_scale[:, None]), -qmax, qmax)
    if axis is None:
        return q.reshape(w.shape).astype(np.int64), best_scale.astype(np.float32)[0]
    codes = np.moveaxis(q.reshape(np.moveaxis(w32, axis, 0).shape), 0, axis)
    return codes.astype(np.int64), best_scale.astype(np.float32)


def _act_qparams(lo: float, hi: float, bits: int, symmetric: bool) -> tuple[float, int, np.dtype, float, float]:
    """Scale, zero point, storage dtype, and the representable [min, max]."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = max(abs(lo), abs(hi)) / qmax or 1e-8
        return scale, 0, np.dtype(np.int8), -qmax * scale, qmax * scale
    levels = 2**bits - 1
    scale = (hi - lo) / levels or 1e-8
    zp = int(np.clip(np.rint(-lo / scale), 0, levels))
    return scale, zp, np.dtype(np.uint8), (0 - zp) * scale, (levels - zp) * scale


class QuantizePass(ir.passes.InPlacePass):
    """Insert QuantizeLinear/DequantizeLinear as a plan says (in place: callers clone first)."""

    def __init__(self, plan: QuantPlan, ranges: Mapping[str, tuple[float, float]]) -> None:
        super().__init__()
        self.plan = plan
        self.ranges = ranges

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        nodes = {n.name: n for n in graph}
        opset = model.opset_imports.get("", 13)
        for name, lb in self.plan.layers.items():
            node = nodes.get(name)
            if node is None or node.op_type not in _OPS or len(node.inputs) < 2 \
                    or node.inputs[1] is None or node.inputs[1].const_value is None:
                raise PlanError(f"quantization plan names {name!r}, not a compute layer with a constant weight")
            if lb.wbits is not None and lb.wbits not in WEIGHT_BITS:
                raise PlanError(f"layer {name}: weight bits {lb.wbits} not in {WEIGHT_BITS}")
            if lb.abits is not None and lb.abits not in ACTIVATION_BITS:
                raise PlanError(f"layer {name}: activation bits {lb.abits} not in {ACTIVATION_BITS}")
        outputs = {v.name for v in graph.outputs}
        # activations: one QDQ per tensor at the widest bits asked
        act_bits: dict[str, int] = {}
        for name, lb in self.plan.layers.items():
            if lb.abits is None or lb.abits >= 16:
                continue
            node = nodes[name]
            for v in (node.inputs[0], node.outputs[0]):
                if v.name in outputs or v.const_value is not None:
                    continue
                act_bits[v.name] = max(act_bits.get(v.name, 0), lb.abits)
        act_scale: dict[str, float] = {}
        values = {v.name: v for n in graph for v in (*n.inputs, *n.outputs) if v is not None}
        values.update({v.name: v for v in graph.inputs})
        for tname, bits in act_bits.items():
            if tname not in self.ranges:
                raise PlanError(f"no calibrated range for tensor {tname!r}")
            act_scale[tname] = self._quantize_activation(model, values[tname], bits)
        for name, lb in self.plan.layers.items():
            node = nodes[name]
            if lb.wbits is not None:
                self._quantize_weights(model, node, lb, act_scale.get(node.inputs[0].name), opset)
            for key, val in (("emomc.wbits", lb.wbits), ("emomc.abits", lb.abits)):
                node.metadata_props[key] = str(val)
        common_passes.TopologicalSortPass()(model)
        return ir.passes.PassResult(model, modified=bool(self.plan.layers))

    def _quantize_activation(self, model: ir.Model, value: ir.Value, bits: int) -> float:
        lo, hi = self.ranges[value.name]
        scale, zp, dtype, qmin, qmax = _act_qparams(lo, hi, bits, self.plan.symmetric_activations)
        uses = [(n, i) for n, i in value.uses()]
        src = value
        new_nodes = []
        if bits < 8:
            lo_v = add_initializer(model, f"{value.name}_clip_min", np.array(qmin, np.float32))
            hi_v = add_initializer(model, f"{value.name}_clip_max", np.array(qmax, np.float32))
            clip = ir.node("Clip", [value, lo_v, hi_v], name=f"{value.name}_Clip")
            clip.outputs[0].name = f"{value.name}_clipped"
            new_nodes.append(clip)
            src = clip.outputs[0]
        s = add_initializer(model, f"{value.name}_scale", np.array(scale, np.float32))
        z = add_initializer(model, f"{value.name}_zero_point", np.array(zp, dtype))
        q = ir.node("QuantizeLinear", [src, s, z], name=f"{value.name}_QuantizeLinear")
        q.outputs[0].name = f"{value.name}_quantized"
        q.metadata_props["emomc.bits"] = str(bits)
        dq = ir.node("DequantizeLinear", [q.outputs[0], s, z], name=f"{value.name}_DequantizeLinear")
        dq.outputs[0].name = f"{value.name}_dequantized"
        dq.metadata_props["emomc.bits"] = str(bits)
        new_nodes += [q, dq]
        model.graph.extend(new_nodes)
        for n, i in uses:
            n.replace_input_with(i, dq.outputs[0])
        return scale

    def _quantize_weights(self, model: ir.Model, node: ir.Node, lb: LayerBits, s_x: float | None,
                          opset: int) -> None:
        w_val = node.inputs[1]
        w = w_val.const_value.numpy()
        axis = _out_axis(node, w.ndim) if self.plan.per_channel else None
        codes, scale = quantize_weight(w, lb.wbits, axis, self.plan.weight_scale)
        store = np.int16 if lb.wbits > 8 else np.int8
        domain = "com.microsoft" if store == np.int16 and opset < 21 else ""
        packed = ir.DataType.INT4 if lb.wbits <= 4 and opset >= 21 else None  # real 4-bit storage
        q_v = add_initializer(model, f"{w_val.name}_quantized", codes.astype(store), packed)
        s_v = add_initializer(model, f"{w_val.name}_scale", np.asarray(scale, np.float32))
        z_v = add_initializer(model, f"{w_val.name}_zero_point", np.zeros(np.shape(scale), store), packed)
        attrs = {"axis": axis} if axis is not None else {}
        dq = ir.node("DequantizeLinear", [q_v, s_v, z_v], attributes=attrs, domain=domain,
                     name=f"{node.name}_weight_DequantizeLinear")
        dq.outputs[0].name = f"{w_val.name}_dequantized"
        dq.metadata_props["emomc.bits"] = str(lb.wbits)
        model.graph.append(dq)
        node.replace_input_with(1, dq.outputs[0])
        if domain and domain not in model.opset_imports:
            model.opset_imports[domain] = 1
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if bias is not None and bias.const_value is not None and s_x is not None and axis is not None \
                and node.op_type in ("Conv", "Gemm"):
            b = bias.const_value.numpy().astype(np.float64)
            bscale = (s_x * np.asarray(scale, np.float64)).reshape(-1)
            if b.size == bscale.size:
                qb = np.clip(np.rint(b.reshape(-1) / bscale), -(2**31) + 1, 2**31 - 1).astype(np.int32)
                qb_v = add_initializer(model, f"{bias.name}_quantized", qb.reshape(b.shape))
                sb_v = add_initializer(model, f"{bias.name}_scale", bscale.astype(np.float32))
                zb_v = add_initializer(model, f"{bias.name}_zero_point", np.zeros(bscale.shape, np.int32))
                dqb = ir.node("DequantizeLinear", [qb_v, sb_v, zb_v], attributes={"axis": 0},
                              name=f"{node.name}_bias_DequantizeLinear")
                dqb.outputs[0].name = f"{bias.name}_dequantized"
                model.graph.append(dqb)
                node.replace_input_with(2, dqb.outputs[0])


def quantize_model(model: onnx.ModelProto | ir.Model, plan: QuantPlan,
                   ranges: Mapping[str, tuple[float, float]]) -> onnx.ModelProto:
    """A quantized copy of ``model`` (never mutates the input)."""
    proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
    irm = ir.from_proto(proto)
    QuantizePass(plan, ranges)(irm)
    common_passes.RemoveUnusedNodesPass()(irm)
    return ir.to_proto(irm)
