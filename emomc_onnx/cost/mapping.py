"""Loop-nest mappings and their access counts (Timeloop-style analysis, ISCA'16 accounting).

A mapping assigns the eight loops of a convolution over a batch (N images, G groups, M
output channels per group, C input channels per group, P x Q output pixels, R x S kernel)
to the storage levels of a profile, outermost first; a loop is temporal or spatial (spread
over the level's children, i.e. the PE array). Counting rules, per data type and per pair
(parent, child) of adjacent levels that keep the type:

* the child's tile is the extent of every loop at the child and below; each child instance
  is filled with what its current tile lacks (network deliveries when there is a fan-out);
  the parent sends what the children as a whole lack: the union of their tiles now minus
  the union before (multicast counts once; data one PE held reaches its neighbour by
  forwarding inside the array, as Eyeriss's diagonal ifmap reuse does);
* the child keeps its tile across leading (innermost) temporal loops the type does not
  depend on (stationarity); after that every step changes the tile;
* input tiles of consecutive steps may overlap (sliding windows, halos, and the wrap of
  inner loops): only the difference is fetched, computed exactly per transition type;
* the MACs are a last pseudo-level: one operand read per MAC per type (no stationarity), and
  one partial-sum update per MAC.

Accesses follow the ISCA'16 analysis framework (Chen, Emer, Sze, "Eyeriss: a spatial
architecture...", Sec. V-A, the a-b-c-d accounting; ../shared/COSTMODEL.md). A value read
``a`` times from DRAM, each copy ``b`` times from the buffer, delivered ``c`` times across the
array and used ``d`` times from the register file costs a*E_dram + ab*E_buf + abc*E_array +
abcd*E_rf: each level is charged for what it *serves* to its child (``reads``), never for
being filled by its parent (``fills``, reported apart and not charged). Partial sums cost
(2a-1)*E_dram + 2a(b-1)*E_buf + ab(c-1)*E_array + 2abc(d-1)*E_rf: the outermost level is
written once per visit and read back for all but the first (``writes`` a, ``reads`` a-1);
an inner level does a read and a write per accumulation after the first (``reads`` =
``writes`` = read-backs), and a tile it drains to its parent is not a read of its own.

The AlexNet CONV1 example of Timeloop's Eyeriss-like design is reproduced exactly by
``tests/cost/test_mapping.py``; nn_dataflow's ISCA'16 AlexNet figures by
``tests/cost/test_fidelity.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping as MappingABC
from collections.abc import Sequence

from emomc_onnx.analysis.layers import Layer
from emomc_onnx.errors import PlanError

__all__ = [
    "DIMS",
    "RELEVANT",
    "Counts",
    "LayerDims",
    "Loop",
    "Mapping",
    "MappingLevel",
    "evaluate_mapping",
]

logger = logging.getLogger(__name__)

DIMS = ("N", "G", "M", "C", "P", "Q", "R", "S")
RELEVANT = {
    "weights": frozenset("GMCRS"),
    "inputs": frozenset("NGCPQRS"),
    "outputs": frozenset("NGMPQ"),
}


@dataclasses.dataclass(frozen=True)
class LayerDims:
    """Loop bounds of one layer (``N`` images per batch) plus the strides."""

    G: int
    M: int
    C: int
    P: int
    Q: int
    R: int
    S: int
    stride_h: int = 1
    stride_w: int = 1
    N: int = 1

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the layer over the batch."""
        return self.N * self.G * self.M * self.C * self.P * self.Q * self.R * self.S

    def bound(self, dim: str) -> int:
        """The loop bound of ``dim``."""
        return getattr(self, dim)

    @classmethod
    def from_layer(cls, layer: Layer, batch: int = 1) -> LayerDims:
        """Loop bounds of a Conv / ConvTranspose / Gemm / MatMul layer over ``batch`` images.

        ConvTranspose is costed as the equivalent direct convolution over the input pixels
        (same MAC count: every input pixel meets every kernel tap).
        """
        g = max(layer.groups, 1)
        n = max(int(batch), 1)
        if layer.op_type in ("Gemm", "MatMul"):
            rows = layer.out_spatial[0] * layer.out_spatial[1]
            return cls(1, layer.out_channels, layer.in_channels, rows, 1, 1, 1, N=n)
        kh, kw = layer.kernel
        if layer.op_type == "ConvTranspose":
            h, w = layer.in_spatial
            return cls(g, layer.out_channels // g, layer.in_channels // g, h, w, kh, kw, N=n)
        ho, wo = layer.out_spatial
        sh, sw = layer.stride
        return cls(g, layer.out_channels // g, layer.in_channels // g, ho, wo, kh, kw, sh, sw, n)


@dataclasses.dataclass(frozen=True)
class Loop:
    """One loop: dimension, bound, and whether it is spread over the children (spatial)."""

    dim: str
    bound: int
    spatial: bool = False


@dataclasses.dataclass(frozen=True)
class MappingLevel:
    """Loops (outermost first) at one storage level; ``keep`` overrides the profile's holds."""

    level: str
    loops: tuple[Loop, ...] = ()
    keep: frozenset[str] | None = None


@dataclasses.dataclass(frozen=True)
class Mapping:
    """A complete loop nest: one MappingLevel per storage level, outermost first."""

    levels: tuple[MappingLevel, ...]

    def describe(self) -> str:
        """Compact text form: ``dram[Q55 C3] -> glb[P55 M12s] -> ...``."""
        parts = []
        for lv in self.levels:
            loops = " ".join(f"{lp.dim}{lp.bound}{'s' if lp.spatial else ''}" for lp in lv.loops)
            parts.append(f"{lv.level}[{loops}]")
        return " -> ".join(parts)


@dataclasses.dataclass
class Counts:
    """Element accesses per level and data type (charged), network deliveries, tile sizes.

    ``fills`` are the elements each level receives from its parent (inputs and weights
    arriving, partial sums coming back down): not accesses in the ISCA'16 accounting.
    ``updates`` are the partial sums each level receives from its children (Timeloop's
    "scalar updates"); the charged ``writes`` keep all of them at the outermost level and the
    read-modify-writes (= read-backs) elsewhere.
    """

    reads: dict[str, dict[str, float]]
    writes: dict[str, dict[str, float]]
    network: dict[str, float]
    tiles: dict[str, dict[str, int]]
    fills: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    updates: dict[str, float] = dataclasses.field(default_factory=dict)


def _span(out: int, k: int, stride: int) -> int:
    if k <= stride:
        return out * k
    return (out - 1) * stride + k


def _size(dt: str, e: MappingABC[str, int], dims: LayerDims) -> int:
    if dt == "weights":
        return e["G"] * e["M"] * e["C"] * e["R"] * e["S"]
    if dt == "outputs":
        return e["N"] * e["G"] * e["M"] * e["P"] * e["Q"]
    return (
        e["N"]
        * e["G"]
        * e["C"]
        * _span(e["P"], e["R"], dims.stride_h)
        * _span(e["Q"], e["S"], dims.stride_w)
    )


def _axis_overlap(pe: int, re: int, stride: int, shift: int) -> int:
    """|A & (A + shift)| for the input index set A = {p*stride + r : p < pe, r < re}."""
    if shift == 0:
        return _span(pe, re, stride)
    if re >= stride or pe == 1:
        return max(0, _span(pe, re, stride) - abs(shift))
    a = {p * stride + r for p in range(pe) for r in range(re)}
    return len(a & {x + shift for x in a})


def _input_fetches(e: MappingABC[str, int], dims: LayerDims, walk: list[tuple[Loop, int]]) -> int:
    """Input elements fetched over the walk, fetching only what the previous tile lacks.

    ``walk`` lists (loop, step) innermost first, leading irrelevant loops removed; a step
    where loop j advances and the loops inside it wrap shifts the tile by +step_j along j's
    dim and by -(n_i - 1)*step_i along each inner loop's dim.
    """
    size = _size("inputs", e, dims)
    total = size
    after = math.prod(lp.bound for lp, _ in walk)
    for j, (lpj, stj) in enumerate(walk):
        after //= lpj.bound
        count = (lpj.bound - 1) * after
        if count == 0:
            continue
        shift = dict.fromkeys(DIMS, 0)
        shift[lpj.dim] += stj
        for lpi, sti in walk[:j]:
            shift[lpi.dim] -= (lpi.bound - 1) * sti
        if shift["N"] or shift["G"] or shift["C"]:
            overlap = 0
        else:
            oh = _axis_overlap(e["P"], e["R"], dims.stride_h, shift["P"] * dims.stride_h + shift["R"])
            ow = _axis_overlap(e["Q"], e["S"], dims.stride_w, shift["Q"] * dims.stride_w + shift["S"])
            overlap = e["N"] * e["G"] * e["C"] * oh * ow
        total += count * (size - overlap)
    return total


def evaluate_mapping(
    mapping: Mapping,
    dims: LayerDims,
    holds: MappingABC[str, Sequence[str]],
) -> Counts:
    """Access counts of ``mapping`` for a layer.

    Args:
        mapping: the loop nest (its levels name storage levels, outermost first).
        dims: the layer's loop bounds.
        holds: data types each storage level keeps (the profile's ``holds``), used where a
            MappingLevel has no ``keep`` override.

    Raises:
        PlanError: the loop bounds of a dimension do not multiply to the layer's bound.
    """
    prod = dict.fromkeys(DIMS, 1)
    for lv in mapping.levels:
        for lp in lv.loops:
            if lp.dim not in prod:
                raise PlanError(f"mapping level {lv.level}: unknown loop dimension {lp.dim!r}")
            prod[lp.dim] *= lp.bound
    for d in DIMS:
        if prod[d] != dims.bound(d):
            raise PlanError(
                f"mapping {mapping.describe()}: loops over {d} multiply to {prod[d]}, "
                f"layer has {dims.bound(d)}"
            )
    n = len(mapping.levels)
    # extents[i]: tile of level i (its loops and everything below); extents[n]: one MAC.
    extents = [dict.fromkeys(DIMS, 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        extents[i] = dict(extents[i + 1])
        for lp in mapping.levels[i].loops:
            extents[i][lp.dim] *= lp.bound
    flat = [lp for lv in mapping.levels for lp in lv.loops]
    steps = {}
    for k, lp in enumerate(flat):
        steps[id(lp), k] = math.prod(q.bound for q in flat[k + 1:] if q.dim == lp.dim)
    loop_pos = []
    k = 0
    for lv in mapping.levels:
        row = []
        for lp in lv.loops:
            row.append(steps[id(lp), k])
            k += 1
        loop_pos.append(row)
    keeps = [
        frozenset(lv.keep if lv.keep is not None else holds.get(lv.level, ())) for lv in mapping.levels
    ]
    names = [lv.level for lv in mapping.levels]
    reads = {nm: {dt: 0.0 for dt in RELEVANT} for nm in names}
    writes = {nm: {dt: 0.0 for dt in RELEVANT} for nm in names}
    fills = {nm: {dt: 0.0 for dt in RELEVANT} for nm in names}
    updates = dict.fromkeys(names, 0.0)
    network = {dt: 0.0 for dt in RELEVANT}
    tiles = {nm: {} for nm in names}
    macs = dims.macs

    for dt, rel in RELEVANT.items():
        chain = [i for i in range(n) if dt in keeps[i]]
        if not chain:
            raise PlanError(f"mapping {mapping.describe()}: no level keeps {dt}")
        for i in chain:
            tiles[names[i]][dt] = _size(dt, extents[i], dims)
        # Outermost level: data enters once per distinct element from outside the model.
        for p, c in zip(chain, [*chain[1:], n]):
            is_mac = c == n
            between = [lp for i in range(p, c) for lp in mapping.levels[i].loops]
            sp_between = [lp for lp in between if lp.spatial]
            above_sp = math.prod(
                lp.bound for i in range(p) for lp in mapping.levels[i].loops if lp.spatial
            )
            comb = dict(extents[c])
            for lp in sp_between:
                comb[lp.dim] *= lp.bound
            inst = math.prod(lp.bound for lp in sp_between)
            walk = [
                (lp, loop_pos[i][j])
                for i in range(c - 1, -1, -1)
                for j, lp in reversed(list(enumerate(mapping.levels[i].loops)))
                if not lp.spatial
            ]
            r = 1
            r_rel = 1
            first: Loop | None = None
            used: list[tuple[Loop, int]] = []
            for lp, st in walk:
                relevant = lp.dim in rel
                if first is None and not relevant and not is_mac:
                    continue  # stationarity: the child keeps its tile
                if first is None and relevant:
                    first = lp
                used.append((lp, st))
                r *= lp.bound
                if relevant:
                    r_rel *= lp.bound
            size_c = _size(dt, extents[c], dims)
            size_comb = _size(dt, comb, dims)
            if dt == "inputs" and not is_mac and used:
                parent_reads = _input_fetches(comb, dims, used) * above_sp
                child_fills = _input_fetches(extents[c], dims, used) * inst * above_sp
            else:
                parent_reads = size_comb * r * above_sp
                child_fills = size_c * inst * r * above_sp
            pname = names[p]
            if dt != "outputs":
                # a*b*c*d: the parent is charged for every element it serves (a at DRAM,
                # ab at the buffer, abcd = MACs at the register file); the child's fill is not
                # an access of its own (ISCA'16: RF fills are not counted).
                reads[pname][dt] += parent_reads
                if not is_mac:
                    fills[names[c]][dt] += child_fills
                if inst > 1:
                    network[dt] += child_fills  # abc: deliveries across the array
            else:
                upd = size_comb * r * above_sp
                back = size_comb * (r - r_rel) * above_sp
                reads[pname][dt] += back
                updates[pname] += upd
                if p == chain[0]:
                    writes[pname][dt] += upd  # (2a - 1) * E_dram: a writes, a - 1 read-backs
                else:
                    # 2a(b-1) * E_buf, 2abc(d-1) * E_rf: a read and a write per accumulation
                    # after the first; neither the first write nor the drain of a finished
                    # tile to the next level out is counted here.
                    writes[pname][dt] += back
                if not is_mac:
                    # every visit of a child tile is filled: the first with its initial value,
                    # the others with the partial sums read back (Timeloop's "fills")
                    fills[names[c]][dt] += size_c * inst * r * above_sp
                if inst > 1:
                    # ab(c-1) * E_array: of the partial sums the children hand up, all but
                    # the one the parent keeps per output move PE to PE (spatial reduction)
                    network[dt] += (size_c * inst - size_comb) * r * above_sp
            if is_mac:
                assert size_c == 1 and inst * r * above_sp == macs  # internal invariant
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s counts for %s done", dt, mapping.describe())
    return Counts(reads, writes, network, tiles, fills, updates)
