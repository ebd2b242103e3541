"""What we know about each compute op, in one place (after Torch-Pruning's per-op pruners).

A compute op is one whose constant weight the tool rewrites: per op type, the inputs that
hold the weight and the bias, where the output and input channels sit in the weight (from
the node's attributes), the activation's feature axis, and which transformations support
it. The analysis, channel pruning, sparsity, recovery, quantization and parameter counts
all read this registry; supporting another op is one :func:`register` call plus its tests
(and, for pruning, a channel handler in ``analysis.dependency``). Code that meets a node
with a constant weight but no entry reports the missing entry (``missing_entry``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

__all__ = ["ComputeOp", "COMPUTE_OPS", "TRANSFORMS", "register", "compute_op", "op_spec", "missing_entry",
           "ops_supporting", "out_in_matrix"]

TRANSFORMS = ("prune", "sparsify", "recover", "quantize")


def _int_attr(node, name: str, default: int = 0) -> int:
    """An integer attribute of an onnx_ir node or a NodeProto."""
    if isinstance(node, ir.Node):
        attr = node.attributes.get(name)
        return default if attr is None else int(attr.value)
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


@dataclasses.dataclass(frozen=True)
class ComputeOp:
    """One compute op type.

    Attributes:
        op_type: the ONNX op type (default domain).
        weight_input: input index of the weight.
        bias_input: input index of the bias, or None when a following Add carries it (MatMul).
        out_axis: (node, weight ndim) -> the weight axis of the output channels.
        in_axis: (node, weight ndim) -> the weight axis of the input channels.
        feature_axis: activation axis holding the features: 1 (NCHW) or -1 (last, MatMul).
        transforms: what the passes do to it (subset of ``TRANSFORMS``); ``not_supported``
            says why a transform is missing.
        int32_bias: the quantizer may store its bias as int32 (ORT's fused kernels take it).
        accepts: node -> None if the node is a layer of this op, else why not.
    """

    op_type: str
    weight_input: int
    bias_input: int | None
    out_axis: Callable[[object, int], int]
    in_axis: Callable[[object, int], int]
    feature_axis: int
    transforms: frozenset[str]
    not_supported: dict[str, str] = dataclasses.field(default_factory=dict)
    int32_bias: bool = False
    accepts: Callable[[ir.Node], str | None] = lambda node: None

    def supports(self, transform: str) -> bool:
        return transform in self.transforms


COMPUTE_OPS: dict[str, ComputeOp] = {}


def register(spec: ComputeOp) -> ComputeOp:
    """Add an op to the registry (a second entry for the same op type is refused)."""
    if spec.op_type in COMPUTE_OPS:
        raise ValueError(f"compute op {spec.op_type!r} is already registered")
    unknown = set(spec.transforms) - set(TRANSFORMS)
    if unknown:
        raise ValueError(f"compute op {spec.op_type!r}: unknown transforms {sorted(unknown)}")
    COMPUTE_OPS[spec.op_type] = spec
    return spec


def op_spec(op_type: str) -> ComputeOp | None:
    """The registry entry of an op type (None if it has none)."""
    return COMPUTE_OPS.get(op_type)


def _constant_weight(node: ir.Node, index: int) -> bool:
    return len(node.inputs) > index and node.inputs[index] is not None \
        and node.inputs[index].const_value is not None


def compute_op(node: ir.Node) -> ComputeOp | None:
    """The entry of a node that is a compute layer: registered op, constant weight, accepted."""
    if node.domain not in ("", "ai.onnx"):
        return None
    spec = COMPUTE_OPS.get(node.op_type)
    if spec is None or not _constant_weight(node, spec.weight_input) or spec.accepts(node) is not None:
        return None
    return spec


def ops_supporting(transform: str) -> tuple[str, ...]:
    """Op types whose entry supports ``transform``."""
    return tuple(op for op, spec in COMPUTE_OPS.items() if spec.supports(transform))


# Ops that carry weights but have no entry: their MACs and weights are not modelled. They are
# listed by the analysis (never silently free) with the entry that is missing.
_WEIGHTED_OPS = ("LSTM", "GRU", "RNN", "Einsum", "ConvInteger", "MatMulInteger", "QLinearConv",
                 "QLinearMatMul", "DeformConv", "Attention", "MultiHeadAttention")


def missing_entry(node: ir.Node) -> str | None:
    """Why a node that looks like a compute layer is not one (None if it is, or is not weighted)."""
    if node.op_type in COMPUTE_OPS and node.domain in ("", "ai.onnx"):
        spec = COMPUTE_OPS[node.op_type]
        if not _constant_weight(node, spec.weight_input):
            return None  # activation x activation: data movement, not a layer
        why = spec.accepts(node)
        return None if why is None else f"{node.op_type} {node.name}: {why}"
    if node.op_type in _WEIGHTED_OPS or node.domain not in ("", "ai.onnx") and any(
            v is not None and v.const_value is not None and v.const_value.size > 1 for v in node.inputs):
        return (f"{node.domain + '.' if node.domain else ''}{node.op_type} {node.name}: no compute-op entry "
                f"(emomc_onnx.analysis.ops.register); its weights are not pruned, quantized or costed")
    return None


def out_in_matrix(spec: ComputeOp, node, w: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """The weight as an [out, in * kernel] matrix and the inverse mapping back to w's layout."""
    if w.ndim < 2:  # a vector weight: one output
        return w.reshape(1, -1), lambda m: m.reshape(w.shape)
    axis = spec.out_axis(node, w.ndim)
    moved = np.moveaxis(w, axis, 0)
    return moved.reshape(moved.shape[0], -1), lambda m: np.moveaxis(m.reshape(moved.shape), 0, axis)


# ---- the entries -------------------------------------------------------------------------
def _gemm_accepts(node: ir.Node) -> str | None:
    return "transA=1 is not supported" if _int_attr(node, "transA") else None


def _matmul_accepts(node: ir.Node) -> str | None:
    w = node.inputs[1].const_value if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if w is not None and len(w.shape) != 2:
        return f"weight of rank {len(w.shape)} (only 2-D weights are layers)"
    return None


register(ComputeOp(
    "Conv", weight_input=1, bias_input=2,
    out_axis=lambda node, ndim: 0, in_axis=lambda node, ndim: 1,  # [O, I/g, k...]
    feature_axis=1, transforms=frozenset(TRANSFORMS), int32_bias=True,
))
register(ComputeOp(
    "ConvTranspose", weight_input=1, bias_input=2,
    out_axis=lambda node, ndim: 1, in_axis=lambda node, ndim: 0,  # [I, O/g, k...]
    feature_axis=1, transforms=frozenset({"prune", "sparsify", "quantize"}),
    not_supported={"recover": "least squares needs the transposed convolution's input rows (not implemented)"},
))
register(ComputeOp(
    "Gemm", weight_input=1, bias_input=2,
    out_axis=lambda node, ndim: 0 if _int_attr(node, "transB") else 1,  # [N, K] or [K, N]
    in_axis=lambda node, ndim: 1 if _int_attr(node, "transB") else 0,
    feature_axis=1, transforms=frozenset(TRANSFORMS), int32_bias=True, accepts=_gemm_accepts,
))
register(ComputeOp(
    "MatMul", weight_input=1, bias_input=None,
    out_axis=lambda node, ndim: ndim - 1, in_axis=lambda node, ndim: max(ndim - 2, 0),  # [..., K, N]
    feature_axis=-1, transforms=frozenset(TRANSFORMS), accepts=_matmul_accepts,
))
