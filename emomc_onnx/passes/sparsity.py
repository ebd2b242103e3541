"""Fine-grained magnitude sparsity (EMOMC's own pruning): zeros written into dense weights.

Per compute layer (Conv, ConvTranspose, Gemm, MatMul whose weight, input 1, is an
initializer) a density, the fraction of weights kept:

* ``unstructured``: exactly ``round(density * n)`` largest |w| stay, the rest become exact
  zeros; ties are broken by position (stable sort, the earlier flat index wins);
* ``nm``: N:M along the input-channel axis, in every group of M consecutive input weights
  the N largest stay (density is then N/M; a planned density < 1 only selects the layer;
  a trailing group shorter than M keeps at most N);
* ``block``: the weight seen as an [out, in * kh * kw] matrix is cut into ``block`` =
  (rows over outputs, cols over inputs) tiles, ranked by L1; ``round(density * tiles)``
  tiles stay (edge tiles are padded with zeros for ranking).

A density of 1.0 leaves the layer untouched (a plan of only 1.0 returns a bit-identical copy).
The model keeps its shape and runs in ORT unchanged; the cost model turns the zeros into
savings (coded size, zero-skipping dataflows).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np
import onnx
import onnx_ir as ir

from emomc_onnx.analysis.ops import compute_op, out_in_matrix
from emomc_onnx.errors import PlanError

__all__ = [
    "PATTERNS",
    "SparsityPass",
    "SparsityPlan",
    "magnitude_mask",
    "nm_mask",
    "block_mask",
    "sparsify_model",
    "weight_density",
]

logger = logging.getLogger(__name__)

PATTERNS = ("unstructured", "nm", "block")


@dataclasses.dataclass(frozen=True)
class SparsityPlan:
    """Density (fraction of weights kept, in (0, 1]) per compute node name, and the pattern."""

    density: Mapping[str, float]
    pattern: str = "unstructured"
    n: int = 2
    m: int = 4
    block: tuple[int, int] = (1, 4)

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise PlanError(f"sparsity pattern {self.pattern!r}: expected one of {', '.join(PATTERNS)}")
        if self.pattern == "nm" and not (isinstance(self.n, int) and isinstance(self.m, int)
                                         and 0 < self.n <= self.m):
            raise PlanError(f"sparsity pattern nm: need 0 < N <= M, got {self.n}:{self.m}")
        if self.pattern == "block" and (len(self.block) != 2 or any(int(b) < 1 for b in self.block)):
            raise PlanError(f"sparsity block shape {self.block}: need two positive sizes")
        for name, d in self.density.items():
            try:
                ok = 0.0 < float(d) <= 1.0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise PlanError(f"layer {name}: density {d!r} must be in (0, 1]")


def magnitude_mask(w: np.ndarray, density: float) -> np.ndarray:
    """Keep exactly round(density * n) largest-magnitude entries (stable: earlier index wins ties)."""
    mag = np.abs(w).reshape(-1)
    n = mag.size
    k = int(round(density * n))
    if k >= n:
        return np.ones(w.shape, dtype=bool)
    if k <= 0:
        return np.zeros(w.shape, dtype=bool)
    # O(n) selection instead of a full sort: the k-th largest magnitude is the threshold, all
    # above it stay, and the first (lowest-index) entries equal to it fill the remaining slots
    # -- the same set a stable descending argsort would keep.
    thr = np.partition(mag, n - k)[n - k]
    mask = mag > thr
    rest = k - int(mask.sum())
    mask[np.flatnonzero(mag == thr)[:rest]] = True
    return mask.reshape(w.shape)


def nm_mask(w: np.ndarray, axis: int, n: int, m: int) -> np.ndarray:
    """Keep the ``n`` largest |w| of every ``m`` consecutive entries along ``axis`` (stable ties)."""
    mag = np.abs(w).astype(np.result_type(w.dtype, np.float32), copy=False)  # exact for fp16/32/64
    moved = np.ascontiguousarray(np.moveaxis(mag, axis, -1))
    length = moved.shape[-1]
    pad = (-length) % m
    padded = np.concatenate([moved, np.full((*moved.shape[:-1], pad), -1, moved.dtype)], axis=-1) if pad else moved
    groups = padded.reshape(*padded.shape[:-1], -1, m)
    if m <= 16:
        # Rank inside each group by m pairwise comparisons (2x faster than argsort on millions
        # of tiny rows): an entry's rank counts the larger entries and the equal earlier ones.
        rank = np.zeros(groups.shape, dtype=np.int8)
        for j in range(m):
            gj = groups[..., j:j + 1]
            rank += gj > groups
            rank[..., j + 1:] += gj == groups[..., j + 1:]
        keep = rank < n
    else:
        order = np.argsort(-groups, axis=-1, kind="stable")
        keep = np.zeros(groups.shape, dtype=bool)
        np.put_along_axis(keep, order[..., :n], True, axis=-1)
    keep = keep.reshape(padded.shape)[..., :length]
    return np.moveaxis(keep, -1, axis)


def block_mask(w2: np.ndarray, density: float, block: tuple[int, int]) -> np.ndarray:
    """Keep the round(density * tiles) tiles of largest L1 of a 2-D matrix (stable ties)."""
    bh, bw = int(block[0]), int(block[1])
    h, wd = w2.shape
    padded = np.pad(np.abs(w2).astype(np.float64), ((0, (-h) % bh), (0, (-wd) % bw)))
    tiles = padded.reshape(padded.shape[0] // bh, bh, padded.shape[1] // bw, bw).sum(axis=(1, 3))
    tmask = magnitude_mask(tiles, density)
    return np.repeat(np.repeat(tmask, bh, axis=0), bw, axis=1)[:h, :wd]


def _weight(node: ir.Node) -> ir.Value | None:
    """The constant weight of a compute layer whose registry entry supports sparsity."""
    spec = compute_op(node)
    if spec is None or not spec.supports("sparsify"):
        return None
    return node.inputs[spec.weight_input]


class SparsityPass(ir.passes.InPlacePass):
    """Zero the smallest weights of each planned layer (in place: callers clone first)."""

    def __init__(self, plan: SparsityPlan) -> None:
        super().__init__()
        self.plan = plan

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        nodes = {n.name: n for n in model.graph}
        # Validate the whole plan before touching anything.
        todo: dict[str, tuple[ir.Value, ir.Node, float]] = {}
        owner: dict[str, str] = {}
        for name, density in self.plan.density.items():
            node = nodes.get(name)
            value = None if node is None else _weight(node)
            if value is None:
                what = "no such node" if node is None else f"{node.op_type} without an initializer weight"
                raise PlanError(f"sparsity plan names {name!r}: not a compute layer with a constant "
                                f"weight ({what})")
            density = float(density)
            if density >= 1.0:
                continue
            key = value.name or str(id(value))
            if key in todo:
                if todo[key][2] != density:
                    raise PlanError(f"weight {value.name} is shared by layers {owner[key]} and {name} with "
                                    f"different densities ({todo[key][2]} vs {density})")
                continue  # same weight, same density: sparsify once
            todo[key] = (value, node, density)
            owner[key] = name
        for key, (value, node, density) in todo.items():
            w = value.const_value.numpy()
            if self.plan.pattern == "unstructured":
                mask = magnitude_mask(w, density)
            elif self.plan.pattern == "nm":
                mask = nm_mask(w, compute_op(node).in_axis(node, w.ndim), self.plan.n, self.plan.m)
            else:
                w2, back = out_in_matrix(compute_op(node), node, w)
                mask = back(block_mask(w2, density, self.plan.block))
            value.const_value = ir.Tensor(np.where(mask, w, np.zeros_like(w)), name=value.name)
            logger.debug("sparsity: %s kept %d of %d weights", owner[key], int(mask.sum()), w.size)
        return ir.passes.PassResult(model, modified=bool(todo))


def sparsify_model(model: onnx.ModelProto | ir.Model, plan: SparsityPlan) -> onnx.ModelProto:
    """A sparsified copy as a ModelProto (the input is never modified).

    A plan whose densities are all 1.0 returns a bit-identical copy of the input proto.
    """
    proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
    irm = ir.from_proto(proto)
    result = SparsityPass(plan)(irm)  # validates the plan even when nothing changes
    if not result.modified:
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        return copy
    return ir.to_proto(result.model)


def weight_density(model: onnx.ModelProto | ir.Model) -> dict[str, float]:
    """Fraction of nonzero weights per compute node whose weight is an initializer."""
    irm = ir.from_proto(model) if isinstance(model, onnx.ModelProto) else model
    out = {}
    for node in irm.graph:
        value = _weight(node)
        if value is not None:
            w = value.const_value.numpy()
            out[node.name] = float(np.count_nonzero(w)) / max(w.size, 1)
    return out
