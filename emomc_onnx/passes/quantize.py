"""QDQ mixed-precision quantization: each compute layer gets its own weight and activation bits.

Weights: symmetric, per output channel (or per tensor), the clipping ratio per channel chosen
to minimise the squared quantization error (a vectorised search over 16 candidate ratios in
[0.5, 1] x max|w|, not only max-abs). b-bit weights are integers in
[-(2^(b-1)-1), 2^(b-1)-1]: stored as int8 for b < 8 (and for b = 8 with
``weight8_unsigned=False``), as INT4 for b <= 4 where the opset allows it (21 and later),
and as int16 for 16 bits (``com.microsoft`` DequantizeLinear below opset 21, as ORT's own
quantizer does; standard ONNX from 21). The clip ratio is <= 1, so the
largest weight of every non-zero channel saturates at the b-bit limit: the stored codes span
exactly the b-bit range, which is what ``qdq_bits.read_layer_bits`` reads back.
8-bit weights are stored by default as uint8 around zero point 128 (the same symmetric codes):
ORT's x86 U8S8 kernels on CPUs without VNNI add pairs of u8*s8 products in int16 with
saturation, which cost 2.5 top-1 points (SQNR 30 -> 12 dB) on a small digits ResNet, for
ORT's quantize_static too; ORT's own advice is ``reduce_range`` (7-bit weights) or U8U8.
7-bit and narrower weights cannot saturate (2 * 255 * 63 < 2^15) and stay int8.

Activations: per tensor, asymmetric uint8 (or symmetric int8 with
``symmetric_activations``) from calibrated ranges; for a < 8 bits a Clip to the 2^a-level grid
precedes the QuantizeLinear, so the codes really take 2^a values (the reader derives the
bits from that clip range and the scale). A layer's activation bits are those of its input
tensor; a tensor read by several quantized layers gets one Q/DQ pair, at the widest bits
asked. A quantized layer's output, unless another quantized layer reads it directly, gets a
plain 8-bit Q/DQ pair (16-bit for 16-bit layers): ORT fuses DQ -> Conv/MatMul -> Q into
QLinearConv/QLinearMatMul only with it, and 8 bits never reduce the next layer's precision
below its own a <= 8 bits; when only ReLUs read that output, its levels cover [0, max] (the
ReLU folded in, as ORT's quantizer does: +5 dB output SQNR at W8A8 on the demo). Graph
outputs stay float; graph inputs stay float at the boundary
(the Q/DQ pair comes right after).

16-bit activations: by default (``activation16="float"``) they stay float, as the paper keeps
fp16 activations; the layer's ``emomc.abits`` metadata says 16 and the cost model counts 16
bits. With ``activation16="int16"`` they get a real 16-bit Q/DQ pair (uint16/int16,
``com.microsoft`` below opset 21), which runs unfused in ORT.

Bias: int32 with scale s_x * s_w when both the input and the weight are quantized (the form
ORT's fused kernels take; ORT's quantize_static does the same), float otherwise.

Every quantized layer also carries ``emomc.wbits``/``emomc.abits`` metadata for humans, and
each DequantizeLinear ``emomc.bits``; the reader uses the tensors, not these.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from emomc_onnx.analysis.ops import compute_op, op_spec, ops_supporting
from emomc_onnx.errors import PlanError, UnsupportedOpError
from emomc_onnx.passes.ir_utils import add_initializer

__all__ = [
    "LayerBits",
    "QuantPlan",
    "QuantizePass",
    "quantize_model",
    "quantize_weight",
    "WEIGHT_BITS",
    "ACTIVATION_BITS",
    "QUANTIZABLE_OPS",
]

logger = logging.getLogger(__name__)

WEIGHT_BITS = (2, 3, 4, 5, 6, 7, 8, 16)
ACTIVATION_BITS = (4, 5, 6, 7, 8, 16)
QUANTIZABLE_OPS = ops_supporting("quantize")  # from the op registry (analysis.ops)
WEIGHT_SCALES = ("mse", "maxabs")
_RATIOS = np.linspace(0.5, 1.0, 16)
_SAMPLE = 256  # weights per channel the clipping search looks at (strided sample)
_MS = "com.microsoft"


@dataclasses.dataclass(frozen=True)
class LayerBits:
    """Bit widths of one layer's weights and input activations; None keeps that side float."""

    wbits: int | None
    abits: int | None


@dataclasses.dataclass(frozen=True)
class QuantPlan:
    """Bits per compute node name; layers not listed stay float.

    Attributes:
        layers: node name -> LayerBits (Conv, ConvTranspose, Gemm, MatMul with a constant weight).
        per_channel: one weight scale per output channel (else one per tensor).
        symmetric_activations: int8 symmetric activations instead of uint8 asymmetric.
        weight_scale: ``mse`` (clipping search) or ``maxabs``.
        activation16: 16-bit activations stay ``float`` or get an ``int16`` Q/DQ pair.
        weight8_unsigned: store 8-bit weights as uint8 around zero point 128 (ORT's U8U8
            kernels) rather than int8 (U8S8: faster, but ORT's AVX2 kernels saturate int16
            pair sums on CPUs without VNNI).
    """

    layers: Mapping[str, LayerBits]
    per_channel: bool = True
    symmetric_activations: bool = False
    weight_scale: str = "mse"
    activation16: str = "float"
    weight8_unsigned: bool = True

    def __post_init__(self) -> None:
        for name, lb in self.layers.items():
            if not isinstance(lb, LayerBits):
                raise PlanError(f"layer {name}: expected LayerBits, got {type(lb).__name__}")
            if lb.wbits is not None and lb.wbits not in WEIGHT_BITS:
                raise PlanError(f"layer {name}: weight bits {lb.wbits} not in {WEIGHT_BITS}")
            if lb.abits is not None and lb.abits not in ACTIVATION_BITS:
                raise PlanError(f"layer {name}: activation bits {lb.abits} not in {ACTIVATION_BITS}")
        if self.weight_scale not in WEIGHT_SCALES:
            raise PlanError(f"weight_scale {self.weight_scale!r}: expected one of {WEIGHT_SCALES}")
        if self.activation16 not in ("float", "int16"):
            raise PlanError(f"activation16 {self.activation16!r}: expected 'float' or 'int16'")


_FLOAT = LayerBits(None, None)


def _out_axis(node: ir.Node, ndim: int) -> int:
    """The weight axis holding the output channels."""
    return op_spec(node.op_type).out_axis(node, ndim)


def quantize_weight(w: np.ndarray, bits: int, axis: int | None, method: str = "mse"
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric b-bit codes and scales of ``w``.

    Args:
        w: the float weight.
        bits: 2..16; codes lie in [-(2^(bits-1)-1), 2^(bits-1)-1].
        axis: the per-channel axis, None for one scale per tensor.
        method: ``mse`` picks, per channel, the clip ratio minimising the squared error;
            ``maxabs`` uses max|w|.

    Returns:
        (codes with w's shape: int8 for bits <= 8, else int16; scale: float32, one per
        channel, or a scalar for per-tensor).
    """
    qmax = 2 ** (bits - 1) - 1
    w32 = np.asarray(w, dtype=np.float32)
    moved = w32.reshape(1, -1) if axis is None else np.moveaxis(w32, axis, 0)
    rows = moved.reshape(moved.shape[0], -1)
    if rows.shape[1] == 0:
        codes = np.zeros(w32.shape, np.int8 if bits <= 8 else np.int16)
        return codes, (np.float32(1.0) if axis is None else np.ones(len(rows), np.float32))
    hi, lo = rows.max(axis=1), rows.min(axis=1)
    maxabs = np.maximum(hi, -lo).astype(np.float32)
    # a channel whose range has no normal float32 scale (all zero, or denormal weights such as
    # 1e-40 that exporters leave behind) quantizes to zero codes at scale 1: no overflow
    maxabs = np.where(maxabs >= np.finfo(np.float32).tiny * qmax * 4, maxabs, np.float32(1.0))
    best_scale = maxabs / np.float32(qmax)
    if method == "mse" and bits < 16:
        # the ratio is chosen on at most _SAMPLE evenly strided weights per channel plus its
        # extremes (which set the range), for all candidate ratios at once; every weight is
        # then quantized once with the chosen scale
        if rows.shape[1] <= _SAMPLE:  # every weight once: the chosen ratio is the exact optimum
            sample = rows
        else:
            step = rows.shape[1] // _SAMPLE
            sample = np.concatenate([rows[:, ::step], hi[:, None], lo[:, None]], axis=1)
        scales = (_RATIOS[:, None] * maxabs[None, :] / qmax).astype(np.float32)[:, :, None]  # R, C, 1
        q = np.rint(sample[None] / scales)
        np.clip(q, -qmax, qmax, out=q)
        q *= scales
        q -= sample[None]
        err = np.einsum("rcs,rcs->rc", q, q)
        best_scale = scales[err.argmin(axis=0), np.arange(len(rows)), 0]
    q = rows * (np.float32(1.0) / best_scale)[:, None]
    np.rint(q, out=q)
    np.clip(q, -qmax, qmax, out=q)
    codes = q.astype(np.int8 if bits <= 8 else np.int16)
    if axis is None:
        return codes.reshape(w32.shape), np.float32(best_scale[0])
    return np.moveaxis(codes.reshape(moved.shape), 0, axis), best_scale.astype(np.float32)


def _act_qparams(lo: float, hi: float, bits: int, symmetric: bool
                 ) -> tuple[float, int, np.dtype, float, float]:
    """Scale, zero point, storage dtype and the representable [min, max] of a b-bit activation."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)  # zero must be exact (padding, ReLU)
    wide = bits > 8
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = max(abs(lo), abs(hi)) / qmax or 1e-8
        return scale, 0, np.dtype(np.int16 if wide else np.int8), -qmax * scale, qmax * scale
    levels = 2**bits - 1
    scale = (hi - lo) / levels or 1e-8
    zp = int(np.clip(np.rint(-lo / scale), 0, levels))
    return scale, zp, np.dtype(np.uint16 if wide else np.uint8), -zp * scale, (levels - zp) * scale


class QuantizePass(ir.passes.InPlacePass):
    """Insert QuantizeLinear/DequantizeLinear as a plan says (in place: callers clone first).

    ``ranges`` maps activation tensor names to calibrated (min, max); see
    ``emomc_onnx.evaluate.calibration.activation_tensors`` for the tensors it needs.
    """

    def __init__(self, plan: QuantPlan, ranges: Mapping[str, tuple[float, float]]) -> None:
        super().__init__()
        self.plan = plan
        self.ranges = ranges

    def _act_bits(self, lb: LayerBits) -> int | None:
        if lb.abits is None or (lb.abits >= 16 and self.plan.activation16 == "float"):
            return None
        return lb.abits

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
        if self.plan.layers and opset < 13:
            raise UnsupportedOpError(f"QDQ quantization needs ONNX opset >= 13 (per-axis "
                                     f"DequantizeLinear), the model has opset {opset}")
        nodes = {n.name: n for n in graph}
        for name in self.plan.layers:
            node = nodes.get(name)
            if node is None:
                raise PlanError(f"quantization plan names {name!r}, not a node of the model")
            spec = compute_op(node)
            if spec is None or not spec.supports("quantize"):
                raise PlanError(f"quantization plan names {name!r} ({node.op_type}), not a compute "
                                f"layer ({'/'.join(QUANTIZABLE_OPS)}) with a constant weight")
        outputs = {v.name for v in graph.outputs}
        # activations: one Q/DQ per tensor. A layer's input gets its activation bits (the
        # widest asked when several quantized layers read it); a layer's output, unless another
        # quantized layer reads it, gets a plain Q/DQ at the container width (8, or 16 for
        # 16-bit layers) so ORT can fuse DQ -> op -> Q into its integer kernels
        in_bits: dict[str, int] = {}
        out_bits: dict[str, int] = {}
        values: dict[str, ir.Value] = {}
        for name, lb in self.plan.layers.items():
            bits = self._act_bits(lb)
            if bits is None:
                continue
            node = nodes[name]
            for v, want, full in ((node.inputs[0], in_bits, bits), (node.outputs[0], out_bits, 8 if bits <= 8 else 16)):
                if v is None or v.name in outputs or v.const_value is not None:
                    continue
                want[v.name] = max(want.get(v.name, 0), full)
                values[v.name] = v
        act_bits = {**out_bits, **in_bits}
        for tname in act_bits:
            if tname not in self.ranges:
                raise PlanError(f"no calibrated range for tensor {tname!r} (calibrate "
                                f"activation_tensors of the plan's layers)")
        act_scale: dict[ir.Value, float] = {}  # DequantizeLinear output -> its scale
        for tname, bits in act_bits.items():
            dq_out, scale = self._quantize_activation(model, values[tname], bits, opset)
            if dq_out is not None:
                act_scale[dq_out] = scale
        for name, lb in self.plan.layers.items():
            node = nodes[name]
            if lb.wbits is not None:
                # the layer now reads the DQ output; its scale is needed for an int32 bias
                self._quantize_weights(model, node, lb.wbits, act_scale.get(node.inputs[0]), opset)
            node.metadata_props["emomc.wbits"] = str(lb.wbits)
            node.metadata_props["emomc.abits"] = str(lb.abits)
        common_passes.TopologicalSortPass()(model)
        return ir.passes.PassResult(model, modified=bool(self.plan.layers))

    def _quantize_activation(self, model: ir.Model, value: ir.Value, bits: int, opset: int
                             ) -> tuple[ir.Value | None, float]:
        lo, hi = self.ranges[value.name]
        # float-side compute layers (not in the plan, or a float/16-bit input) keep reading
        # the float tensor; every other consumer reads the Q/DQ output
        uses = [(n, i) for n, i in value.uses() if not (i == 0 and n.op_type in QUANTIZABLE_OPS
                and self._act_bits(self.plan.layers.get(n.name, _FLOAT)) is None)]
        if not uses:
            return None, 0.0
        if all(n.op_type == "Relu" for n, _ in uses):
            # only ReLUs read it (a layer's output before its ReLU): negative values all map to
            # 0 anyway, so the levels go to [0, max] as ORT's quantizer does by folding the ReLU
            lo = max(float(lo), 0.0)
        scale, zp, dtype, qmin, qmax = _act_qparams(lo, hi, bits, self.plan.symmetric_activations)
        container = 8 * dtype.itemsize
        domain = _MS if container == 16 and opset < 21 else ""
        src = value
        new_nodes = []
        if bits < container:  # restrict the codes to 2^bits levels
            lo_v = add_initializer(model, f"{value.name}_clip_min", np.array(qmin, np.float32))
            hi_v = add_initializer(model, f"{value.name}_clip_max", np.array(qmax, np.float32))
            clip = ir.node("Clip", [value, lo_v, hi_v], name=f"{value.name}_Clip")
            clip.outputs[0].name = f"{value.name}_clipped"
            new_nodes.append(clip)
            src = clip.outputs[0]
        s = add_initializer(model, f"{value.name}_scale", np.array(scale, np.float32))
        z = add_initializer(model, f"{value.name}_zero_point", np.array(zp, dtype))
        q = ir.node("QuantizeLinear", [src, s, z], name=f"{value.name}_QuantizeLinear", domain=domain)
        q.outputs[0].name = f"{value.name}_quantized"
        dq = ir.node("DequantizeLinear", [q.outputs[0], s, z], name=f"{value.name}_DequantizeLinear",
                     domain=domain)
        dq.outputs[0].name = f"{value.name}_dequantized"
        for n in (q, dq):
            n.metadata_props["emomc.bits"] = str(bits)
        new_nodes += [q, dq]
        model.graph.extend(new_nodes)
        for n, i in uses:
            n.replace_input_with(i, dq.outputs[0])
        if domain and domain not in model.opset_imports:
            model.opset_imports[domain] = 1
        return dq.outputs[0], scale

    def _quantize_weights(self, model: ir.Model, node: ir.Node, wbits: int, s_x: float | None,
                          opset: int) -> None:
        w_val = node.inputs[1]
        w = w_val.const_value.numpy()
        axis = _out_axis(node, w.ndim) if self.plan.per_channel else None
        codes, scale = quantize_weight(w, wbits, axis, self.plan.weight_scale)
        store = np.int16 if wbits > 8 else np.int8
        zero = np.zeros(np.shape(scale), np.int64)
        if wbits == 8 and self.plan.weight8_unsigned:  # the same codes, shifted: U8U8 kernels
            store, codes, zero = np.uint8, codes.astype(np.int16) + 128, zero + 128
        domain = _MS if store == np.int16 and opset < 21 else ""
        packed = ir.DataType.INT4 if wbits <= 4 and opset >= 21 else None  # real 4-bit storage
        q_v = add_initializer(model, f"{w_val.name}_quantized", codes.astype(store, copy=False), packed)
        s_v = add_initializer(model, f"{w_val.name}_scale", np.asarray(scale, np.float32))
        z_v = add_initializer(model, f"{w_val.name}_zero_point", zero.astype(store), packed)
        attrs = {"axis": axis} if axis is not None else {}
        dq = ir.node("DequantizeLinear", [q_v, s_v, z_v], attributes=attrs, domain=domain,
                     name=f"{node.name}_weight_DequantizeLinear")
        dq.outputs[0].name = f"{w_val.name}_dequantized"
        dq.metadata_props["emomc.bits"] = str(wbits)
        model.graph.append(dq)
        node.replace_input_with(1, dq.outputs[0])
        if domain and domain not in model.opset_imports:
            model.opset_imports[domain] = 1
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if bias is not None and bias.const_value is not None and s_x is not None \
                and op_spec(node.op_type).int32_bias:
            self._quantize_bias(model, node, bias, s_x, scale)
        _drop_if_unused(model, w_val)

    @staticmethod
    def _quantize_bias(model: ir.Model, node: ir.Node, bias: ir.Value, s_x: float, w_scale) -> None:
        b = bias.const_value.numpy().astype(np.float64)
        w_scale = np.asarray(w_scale, np.float64)
        if b.ndim != 1 or (w_scale.ndim == 1 and w_scale.size != b.size):
            return  # a broadcast Gemm bias ([1, N], scalar): keep it float
        bscale = s_x * w_scale
        # s_x * s_w is what ORT's fused kernels need; at 16 bits it can be so small that the
        # bias overflows int32: there (no fused kernel exists anyway) the channel's scale grows
        bscale = np.maximum(bscale, np.abs(b) / 2.0**30)
        qb = np.clip(np.rint(b / bscale), -(2**31) + 1, 2**31 - 1).astype(np.int32)
        qb_v = add_initializer(model, f"{bias.name}_quantized", qb)
        sb_v = add_initializer(model, f"{bias.name}_scale", bscale.astype(np.float32))
        zb_v = add_initializer(model, f"{bias.name}_zero_point", np.zeros(bscale.shape, np.int32))
        attrs = {"axis": 0} if bscale.ndim == 1 else {}
        dqb = ir.node("DequantizeLinear", [qb_v, sb_v, zb_v], attributes=attrs,
                      name=f"{node.name}_bias_DequantizeLinear")
        dqb.outputs[0].name = f"{bias.name}_dequantized"
        dqb.metadata_props["emomc.bits"] = "32"
        model.graph.append(dqb)
        node.replace_input_with(2, dqb.outputs[0])
        _drop_if_unused(model, bias)


def _drop_if_unused(model: ir.Model, value: ir.Value) -> None:
    """Remove a float initializer the quantized copy replaced (unless still read elsewhere)."""
    graph = model.graph
    if value.name in graph.initializers and not value.uses() and value not in graph.outputs \
            and value not in graph.inputs:
        del graph.initializers[value.name]


def quantize_model(model: onnx.ModelProto | ir.Model, plan: QuantPlan,
                   ranges: Mapping[str, tuple[float, float]]) -> onnx.ModelProto:
    """A quantized copy of ``model`` as an ONNX proto (the input is never mutated).

    Raises:
        PlanError: the plan names a node that is not a quantizable layer, or a range is missing.
        UnsupportedOpError: the model's opset is below 13.
    """
    # a copy (an IR model's clone shares its weight tensors, which the pass only replaces):
    # the caller's model stays as it was
    irm = model.clone(deep_copy=True) if isinstance(model, ir.Model) else ir.from_proto(model)
    QuantizePass(plan, ranges)(irm)
    common_passes.RemoveUnusedNodesPass()(irm)
    logger.debug("quantized %d layers", len(plan.layers))
    return ir.to_proto(irm)
