"""Fine-grained magnitude sparsity (EMOMC's own pruning): zeros written into dense weights.

Per compute layer a density (fraction of weights kept): the round(density * n) largest |w|
stay, the rest become exact zeros (ties broken by position, stable). Patterns: unstructured,
N:M along the input axis (keep the N largest of every M consecutive inputs), or blocks
ranked by L1. The model keeps its shape and runs in ORT unchanged; the cost model turns the
zeros into savings (coded size, zero-skipping dataflows).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np
import onnx
import onnx_ir as ir

from emomc_onnx.errors import PlanError

__all__ = ["SparsityPlan", "SparsityPass", "sparsify_model", "weight_density", "magnitude_mask"]

logger = logging.getLogger(__name__)

PATTERNS = ("unstructured", "nm", "block")
_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclasses.dataclass(frozen=True)
class SparsityPlan:
    """Density per compute node name (1.0 = untouched)."""

    density: Mapping[str, float]
    pattern: str = "unstructured"
    n: int = 2
    m: int = 4
    block: tuple[int, int] = (1, 4)


def _in_axis(op: str, node_attrs, ndim: int) -> int:
    if op == "Conv":
        return 1
    if op == "ConvTranspose":
        return 0
    if op == "Gemm":
        return 1 if node_attrs.get("transB", 0) else 0
    return 0  # MatMul [K, N]


def magnitude_mask(w: np.ndarray, density: float) -> np.ndarray:
    """Keep exactly round(density * n) largest-magnitude entries (stable: earlier index wins ties)."""
    n = w.size
    k = int(round(density * n))
    order = np.argsort(-np.abs(w).reshape(-1), kind="stable")
    mask = np.zeros(n, dtype=bool)
    mask[order[:k]] = True
    return mask.reshape(w.shape)


def _nm_mask(w: np.ndarray, axis: int, n: int, m: int) -> np.ndarray:
    moved = np.moveaxis(np.abs(w), axis, -1)
    length = moved.shape[-1]
    pad = (-length) % m
    padded = np.concatenate([moved, np.full((*moved.shape[:-1], pad), -1.0)], axis=-1) if pad else moved
    groups = padded.reshape(*padded.shape[:-1], -1, m)
    order = np.argsort(-groups, axis=-1, kind="stable")
    keep = np.zeros_like(groups, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    keep = keep.reshape(*padded.shape)[..., :length]
    return np.moveaxis(keep, -1, axis)


def _block_mask(w: np.ndarray, density: float, block: tuple[int, int]) -> np.ndarray:
    w2 = np.abs(w.reshape(w.shape[0], -1))
    bh, bw = block
    h, wd = w2.shape
    ph, pw = (-h) % bh, (-wd) % bw
    padded = np.pad(w2, ((0, ph), (0, pw)))
    blocks = padded.reshape(padded.shape[0] // bh, bh, padded.shape[1] // bw, bw).sum(axis=(1, 3))
    bmask = magnitude_mask(blocks, density)
    full = np.repeat(np.repeat(bmask, bh, axis=0), bw, axis=1)[:h, :wd]
    return full.reshape(w.shape)


class SparsityPass(ir.passes.InPlacePass):
    """Zero the smallest weights of each planned layer (in place: callers clone first)."""

    def __init__(self, plan: SparsityPlan) -> None:
        super().__init__()
        if plan.pattern not in PATTERNS:
            raise PlanError(f"sparsity pattern {plan.pattern!r}: expected one of {', '.join(PATTERNS)}")
        self.plan = plan

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        nodes = {n.name: n for n in model.graph}
        done: set[str] = set()
        modified = False
        for name, density in self.plan.density.items():
            node = nodes.get(name)
            if node is None or node.op_type not in _OPS or len(node.inputs) < 2 \
                    or node.inputs[1] is None or node.inputs[1].const_value is None:
                raise PlanError(f"sparsity plan names {name!r}, not a compute layer with a constant weight")
            if not 0.0 < float(density) <= 1.0:
                raise PlanError(f"layer {name}: density {density} must be in (0, 1]")
            if density >= 1.0 and self.plan.pattern != "nm":
                continue
            value = node.inputs[1]
            if value.name in done:
                raise PlanError(f"weight {value.name} is shared by several layers; sparsify it once")
            done.add(value.name)
            w = value.const_value.numpy()
            if self.plan.pattern == "unstructured":
                mask = magnitude_mask(w, float(density))
            elif self.plan.pattern == "nm":
                attrs = {k: a.value for k, a in node.attributes.items()}
                mask = _nm_mask(w, _in_axis(node.op_type, attrs, w.ndim), self.plan.n, self.plan.m)
            else:
                mask = _block_mask(w, float(density), self.plan.block)
            value.const_value = ir.tensor(np.where(mask, w, np.zeros_like(w)), name=value.name)
            modified = True
        return ir.passes.PassResult(model, modified=modified)


def sparsify_model(model: onnx.ModelProto | ir.Model, plan: SparsityPlan) -> onnx.ModelProto:
    """A sparsified copy (the input is not modified)."""
    proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
    irm = ir.from_proto(proto)
    SparsityPass(plan)(irm)
    return ir.to_proto(irm)


def weight_density(model: onnx.ModelProto) -> dict[str, float]:
    """Fraction of nonzero weights per compute node with an initializer weight."""
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type in _OPS and len(node.input) > 1 and node.input[1] in inits:
            w = onnx.numpy_helper.to_array(inits[node.input[1]])
            out[node.name] = float(np.count_nonzero(w)) / max(w.size, 1)
    return out
