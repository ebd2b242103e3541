"""Dataflows: a registry of functions turning one layer into memory traffic.

Two families are shipped:

* Eyeriss-framework dataflows (``ws``, ``os``, ``rs``, ``nlr``) build a loop-nest
  :class:`Mapping` for the layer on the profile's hierarchy (capacity-aware tiling, the
  dataflow decides what is spread over the PE array and what stays in the register files)
  and count accesses with :func:`evaluate_mapping`;
* EMOMC's four dataflows (``xy``, ``icoc``, ``fxfy``, ``xfx``) apply the paper's closed-form
  read/write counts and zero factors (../shared/COSTMODEL.md) on the profile's outermost
  level.

A new accelerator is a YAML profile plus, at most, one ``@register_dataflow`` function.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable

import numpy as np

from emomc_onnx.cost.mapping import (
    RELEVANT,
    Counts,
    LayerDims,
    Loop,
    Mapping,
    MappingLevel,
    _size,
    evaluate_mapping,
)

__all__ = [
    "DataflowInput",
    "Traffic",
    "available_dataflows",
    "build_mapping",
    "get_dataflow",
    "paper_counts",
    "register_dataflow",
    "traffic_from_mapping",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DataflowInput:
    """What a dataflow needs to know about one layer."""

    dims: LayerDims
    op_type: str
    wbits: int
    abits: int
    density: float


@dataclasses.dataclass
class Traffic:
    """Accesses (element counts) per storage level and data type for one layer.

    ``bits`` overrides the bits per element of a data type (else wbits / abits / the
    accumulator width); ``compute_factor`` multiplies the MAC energy (zero skipping the
    dataflow models itself); ``mapping`` describes the loop nest used, if any.
    """

    reads: dict[str, dict[str, float]]
    writes: dict[str, dict[str, float]]
    network: dict[str, float]
    bits: dict[str, float] = dataclasses.field(default_factory=dict)
    compute_factor: float | None = None
    mapping: str | None = None
    notes: tuple[str, ...] = ()


DataflowFn = Callable[[DataflowInput, "Profile"], Traffic]  # noqa: F821
_REGISTRY: dict[str, DataflowFn] = {}


def register_dataflow(name: str) -> Callable[[DataflowFn], DataflowFn]:
    """Register ``fn(inp: DataflowInput, profile: Profile) -> Traffic`` under ``name``."""

    def deco(fn: DataflowFn) -> DataflowFn:
        if name in _REGISTRY:
            raise ValueError(f"dataflow {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def available_dataflows() -> list[str]:
    """Names of the registered dataflows."""
    return list(_REGISTRY)


def get_dataflow(name: str) -> DataflowFn:
    """The dataflow function registered as ``name`` (KeyError if none)."""
    return _REGISTRY[name]


# --------------------------------------------------------------------------- mappings


def _divisor_at_most(n: int, cap: float) -> int:
    """Largest divisor of ``n`` not above ``cap`` (at least 1)."""
    if cap >= n:
        return n
    best = 1
    for d in range(1, int(math.isqrt(n)) + 1):
        if n % d == 0:
            for f in (d, n // d):
                if best < f <= cap:
                    best = f
    return best


def _divisors_desc(n: int) -> list[int]:
    ds = set()
    for d in range(1, int(math.isqrt(n)) + 1):
        if n % d == 0:
            ds.update((d, n // d))
    return sorted(ds, reverse=True)


@dataclasses.dataclass(frozen=True)
class _Recipe:
    """How a dataflow maps a layer: what goes spatial, what stays in the PE, loop orders."""

    spatial: tuple[tuple[str, str], ...]  # (dim, "rows" | "cols"), in priority order
    pe: tuple[str, ...]  # PE-level loops, outermost first, each as large as the RFs allow
    buffer_order: tuple[str, ...]  # buffer-level temporal loops, outermost first
    use_rf: bool = True
    pe_fit: tuple[str, ...] = ()  # order the PE loops are grown in (default: ``pe``)
    rf_types: tuple[str, ...] = ("weights", "inputs", "outputs")  # what the RFs may keep
    spatial_alts: tuple[tuple[tuple[str, str], ...], ...] = ()  # other array fillings searched


_RECIPES = {
    # Weight stationary (NVDLA / TPU-like): C x M over the array, R x S weights in each PE
    # register file; images and output pixels stream innermost so weights never move.
    # As ISCA'16 defines it, the PE register file keeps only the weights: inputs stream
    # through and partial sums move through the array to the buffer.
    "ws": _Recipe((("C", "rows"), ("M", "cols")), ("R", "S"), ("M", "C", "R", "S", "N", "P", "Q"),
                  rf_types=("weights",)),
    # Output stationary (ShiDianNao-like): output pixels over the array, the partial sum
    # stays in the PE while C, R, S are accumulated.
    # The RF keeps only the partial sums (ISCA'16); operands come from the buffer.
    "os": _Recipe((("P", "rows"), ("Q", "cols"), ("M", "cols")), ("C", "R", "S"),
                  ("N", "M", "P", "Q", "R", "S", "C"), rf_types=("outputs",)),
    # Row stationary (Eyeriss): filter rows (R) down the array and output rows (P) across,
    # each PE convolves one filter row with one input row; M, C chunks in the RFs; the
    # filter rows stay in the PE while the images of the batch stream through.
    # The PE sets (R x P) are replicated over input channels by default, or over output
    # channels or images (nn_dataflow's replication choices).
    "rs": _Recipe((("R", "rows"), ("C", "rows"), ("P", "cols"), ("M", "cols")), ("M", "C", "S"),
                  ("M", "C", "R", "S", "N", "P", "Q"), pe_fit=("S", "C", "M"),
                  spatial_alts=((("R", "rows"), ("M", "rows"), ("P", "cols"), ("C", "cols")),
                                (("R", "rows"), ("N", "rows"), ("P", "cols"), ("M", "cols")))),
    # No local reuse (DianNao-like): no register files, every operand comes from the
    # global buffer over the network; C x M over the array.
    "nlr": _Recipe((("C", "rows"), ("M", "cols")), (), ("M", "C", "N", "P", "Q", "R", "S"),
                   use_rf=False),
}

#: Outer (off-chip level) loop orders searched, outermost first. Only which group of loops
#: is innermost changes the re-fetches: the batch and output rows (N, P: irrelevant to
#: weights), M (irrelevant to inputs) or C (irrelevant to outputs).
_OUTER_ORDERS = (("G", "M", "C", "N", "P", "Q"), ("G", "C", "N", "P", "Q", "M"),
                 ("G", "M", "N", "P", "Q", "C"))
_TOP_K = 1  # candidates of the vectorised estimate counted exactly, per PE tiling
_PE_CAPS = (1, 4, 16)  # PE-level channel factors tried: what fits, 1/4, 1/16 of it


def _type_bits(dt: str, inp: DataflowInput, profile: object) -> int:
    if dt == "weights":
        return inp.wbits
    if dt == "inputs":
        return inp.abits
    return profile.mac.accumulator_bits  # type: ignore[attr-defined]


def _fits(level, keep, ext, inp, profile) -> bool:
    if level.capacity_bytes is None:
        return True
    used = sum(_size(dt, ext, inp.dims) * _type_bits(dt, inp, profile) for dt in keep)
    return used <= level.capacity_bytes * 8


def _divisors(n: int) -> np.ndarray:
    return np.array(_divisors_desc(n)[::-1], dtype=np.int64)


def _split_candidates(rem: dict[str, int], base: dict[str, int], dims: LayerDims, inp: DataflowInput,
                      profile, buf, split: tuple[str, ...]) -> list[tuple[float, dict[str, int], int]]:
    """Vectorised estimate of every buffer/outer split of ``split`` dims and outer order.

    Returns (estimated off-chip energy, buffer factors, order index), cheapest first, of the
    splits whose buffer tile fits. The estimate re-fetches a tile once per trip of each
    outer loop the data type does not depend on that sits outside its innermost relevant
    loop (the same rule ``evaluate_mapping`` applies exactly, halos counted in full).
    """
    grids = np.meshgrid(*[_divisors(rem[d]) for d in split], indexing="ij")
    b = {d: g.ravel() for d, g in zip(split, grids)}
    one = np.ones_like(next(iter(b.values())))
    f = {d: b.get(d, one * rem[d]) for d in "NMCPQRS"}  # buffer-level factor
    e = {d: base[d] * f[d] for d in f}  # buffer tile extents (per group)
    t = {d: rem[d] // f[d] for d in f}  # outer trips
    hin = np.where(e["R"] <= dims.stride_h, e["P"] * e["R"], (e["P"] - 1) * dims.stride_h + e["R"])
    win = np.where(e["S"] <= dims.stride_w, e["Q"] * e["S"], (e["Q"] - 1) * dims.stride_w + e["S"])
    tw = e["M"] * e["C"] * e["R"] * e["S"]
    ti = e["N"] * e["C"] * hin * win
    to = e["N"] * e["M"] * e["P"] * e["Q"]
    acc = profile.mac.accumulator_bits
    if buf is not None and buf.capacity_bytes is not None:
        used = (tw * inp.wbits * ("weights" in buf.holds) + ti * inp.abits * ("inputs" in buf.holds)
                + to * acc * ("outputs" in buf.holds))
        ok = used <= buf.capacity_bytes * 8
    else:
        ok = np.ones_like(one, dtype=bool)
    if not ok.any():
        return []
    g = dims.G
    tx = t["N"] * t["P"] * t["Q"]
    n_w = g * tw * t["M"] * t["C"]  # one fetch of every weight tile
    n_i = g * ti * t["N"] * t["C"] * t["P"] * t["Q"]
    n_o = g * to * t["N"] * t["M"] * t["P"] * t["Q"]
    outer = profile.storage_levels[0]
    e_w = outer.energy_per_element(inp.wbits)
    e_a = outer.energy_per_element(inp.abits)
    est = []
    for k, order in enumerate(_OUTER_ORDERS):
        inner = order[-1]
        rw = 1 if inner in "NPQ" else tx
        ri = 1 if inner == "M" else t["M"]
        ro = 1 if inner == "C" else t["C"]
        est.append(n_w * rw * e_w + n_i * ri * e_a + n_o * (2 * ro - 1) * e_a)
    est_a = np.stack(est)  # (orders, candidates)
    est_a = np.where(ok[None, :], est_a, np.inf)
    flat = np.argsort(est_a, axis=None, kind="stable")[:_TOP_K]
    out = []
    for idx in flat:
        k, j = divmod(int(idx), est_a.shape[1])
        if not np.isfinite(est_a[k, j]):
            break
        out.append((float(est_a[k, j]), {d: int(b[d][j]) for d in split}, k))
    return out


def _energy(counts: Counts, inp: DataflowInput, profile) -> float:
    """Energy of a mapping's counts (bits per element as model.layer_cost charges them)."""
    total = 0.0
    for lv in profile.storage_levels:
        if lv.name not in counts.reads:
            continue
        for dt in RELEVANT:
            bits = _type_bits(dt, inp, profile) if not (dt == "outputs" and lv.kind == "offchip") \
                else inp.abits
            n = counts.reads[lv.name][dt] + counts.writes[lv.name][dt]
            total += n * lv.energy_per_element(bits)
    net = profile.network
    if net is not None:
        for dt, n in counts.network.items():
            total += n * net.energy_per_element(_type_bits(dt, inp, profile))
    return total


def build_mapping(name: str, inp: DataflowInput, profile) -> Mapping:
    """The cheapest loop nest of dataflow ``name`` for a layer on ``profile``'s hierarchy.

    The dataflow fixes what is spread over the PE array (its spatial loops fill the array in
    the recipe's order, exact divisors of the bounds) and what stays in the register files
    (PE-level loops grown while every register file holds its tile). What is left is split
    between the buffer and the off-chip level: every split of the batch, output channels,
    input channels and output rows into divisors whose buffer tile fits (output columns too
    when nothing else fits), under each of the three outer loop orders that differ in
    re-fetches, is estimated at once (numpy); the few cheapest are counted exactly by
    ``evaluate_mapping`` and the lowest total energy wins, as Timeloop's mapper and the
    ISCA'16 framework pick the best mapping per layer.
    """
    rec = _RECIPES[name]
    dims = inp.dims
    storage = list(profile.storage_levels)
    outer = storage[0]
    buf = next((lv for lv in storage if lv.kind == "buffer"), None)
    rfs = [lv for lv in storage if lv.kind == "rf"]
    full = {d: dims.bound(d) for d in "NGMCPQRS"}

    def place(order: tuple[tuple[str, str], ...]) -> tuple[list[Loop], dict[str, int]]:
        """Spatial loops filling the array in ``order`` (exact divisors), and what is left."""
        rem = dict(full)
        spatial: list[Loop] = []
        left = {"rows": profile.pe_rows, "cols": profile.pe_cols}
        for dim, axis in order:
            f = _divisor_at_most(rem[dim], left[axis])
            if f > 1:
                spatial.append(Loop(dim, f, True))
                rem[dim] //= f
                left[axis] //= f
        return spatial, rem

    def rf_keep(lv) -> frozenset[str]:
        return frozenset(lv.holds) & frozenset(rec.rf_types) if rec.use_rf else frozenset()

    def grow_pe(rem: dict[str, int], cap_div: int) -> tuple[list[Loop], dict[str, int]]:
        """PE-level loops grown in the recipe's order while every RF holds its tile; a
        channel factor is capped at 1/cap_div of what would fit (smaller RF tiles leave
        more of the channels to the buffer, where they may save DRAM re-fetches)."""
        left_rem = dict(rem)
        if not (rec.use_rf and rfs):
            return [], left_rem
        ext = dict.fromkeys("NGMCPQRS", 1)
        grown: dict[str, int] = {}
        for dim in rec.pe_fit or rec.pe:
            f = 1
            for f in _divisors_desc(left_rem[dim]):
                trial = dict(ext)
                trial[dim] *= f
                if all(_fits(lv, rf_keep(lv), trial, inp, profile) for lv in rfs):
                    break
            if dim not in "RS" and cap_div > 1:
                f = _divisor_at_most(left_rem[dim], max(1, f // cap_div))
            if f > 1:
                ext[dim] *= f
                grown[dim] = f
                left_rem[dim] //= f
        return [Loop(d, grown[d]) for d in rec.pe if d in grown], left_rem

    def assemble(spatial: list[Loop], pe: list[Loop], rem: dict[str, int], buf_f: dict[str, int],
                 order: tuple[str, ...]) -> Mapping:
        out_f = {d: rem[d] // buf_f.get(d, 1) for d in "NGMCPQRS"}
        out_f["G"] = rem["G"]
        outer_loops = [Loop(d, out_f[d]) for d in order if out_f.get(d, 1) > 1]
        buf_loops = [Loop(d, buf_f[d]) for d in rec.buffer_order if buf_f.get(d, 1) > 1]
        levels = []
        for lv in storage:
            lp: list[Loop] = []
            keep = None
            if lv is outer:
                lp += outer_loops
                if buf is None:
                    lp += buf_loops + spatial
            if lv is buf:
                lp += buf_loops + spatial
            if lv.kind == "rf":
                if rf_keep(lv) != frozenset(lv.holds):
                    keep = rf_keep(lv)
                if rec.use_rf and lv is rfs[-1]:
                    lp += pe
            levels.append(MappingLevel(lv.name, tuple(lp), keep))
        return Mapping(tuple(levels))

    options: list[tuple[list[Loop], list[Loop], dict[str, int], dict[str, int], int]] = []
    seen: set = set()
    for order in (rec.spatial, *rec.spatial_alts):
        spatial, rem = place(order)
        for cap_div in _PE_CAPS:
            pe, left = grow_pe(rem, cap_div)
            key = tuple((lp.dim, lp.bound) for lp in (*spatial, *pe))
            if key in seen:
                continue
            seen.add(key)
            base = dict.fromkeys("NGMCPQRS", 1)
            for lp in (*spatial, *pe):
                base[lp.dim] *= lp.bound
            cands = _split_candidates(left, base, dims, inp, profile, buf, ("N", "M", "C", "P"))
            if not cands:
                cands = _split_candidates(left, base, dims, inp, profile, buf, ("N", "M", "C", "P", "Q"))
            options += [(spatial, pe, left, buf_f, k) for _, buf_f, k in cands[:_TOP_K]]
    if not options:  # nothing fits: the smallest tile (traffic_from_mapping notes the overflow)
        spatial, rem = place(rec.spatial)
        pe, left = grow_pe(rem, 1)
        return assemble(spatial, pe, left, {}, _OUTER_ORDERS[0])
    holds = {lv.name: lv.holds for lv in storage}
    best: tuple[float, Mapping] | None = None
    for spatial, pe, left, buf_f, k in options:
        bf = {d: buf_f.get(d, left[d]) for d in "NMCPQRS"}
        m = assemble(spatial, pe, left, bf, _OUTER_ORDERS[k])
        e = _energy(evaluate_mapping(m, dims, holds), inp, profile)
        if best is None or e < best[0]:
            best = (e, m)
    return best[1]


def traffic_from_mapping(mapping: Mapping, inp: DataflowInput, profile) -> Traffic:
    """Evaluate a mapping (generated or given explicitly) into Traffic."""
    holds = {lv.name: lv.holds for lv in profile.storage_levels}
    c: Counts = evaluate_mapping(mapping, inp.dims, holds)
    notes = []
    for ml in mapping.levels:
        lv = profile.level(ml.level)
        if lv.capacity_bytes is None:
            continue
        keep = ml.keep if ml.keep is not None else lv.holds
        bits = sum(c.tiles[ml.level].get(dt, 0) * _type_bits(dt, inp, profile) for dt in keep)
        if bits > lv.capacity_bytes * 8:
            notes.append(f"{ml.level}: tile needs {math.ceil(bits / 8)} B > {lv.capacity_bytes} B")
    return Traffic(c.reads, c.writes, c.network, mapping=mapping.describe(), notes=tuple(notes))


# Mapping a layer is a small search over loop tilings; a compression search costs the same
# layer shapes over and over, so results are memoised per (dataflow, layer input, profile).
# Callers treat a Traffic as read-only.
_MAPPED_CACHE: dict[tuple, Traffic] = {}
_MAPPED_CACHE_MAX = 4096


def _mapped(name: str) -> DataflowFn:
    def fn(inp: DataflowInput, profile) -> Traffic:
        key = (name, inp, getattr(profile, "sha256", None) or id(profile))
        hit = _MAPPED_CACHE.get(key)
        if hit is None:
            hit = traffic_from_mapping(build_mapping(name, inp, profile), inp, profile)
            if len(_MAPPED_CACHE) >= _MAPPED_CACHE_MAX:
                _MAPPED_CACHE.clear()
            _MAPPED_CACHE[key] = hit
        return hit

    fn.__name__ = f"dataflow_{name}"
    fn.__doc__ = f"Eyeriss-framework dataflow {name!r} (see _RECIPES)."
    return fn


for _name in _RECIPES:
    register_dataflow(_name)(_mapped(_name))


# --------------------------------------------------------------------------- EMOMC paper


def _zf(density: float, n: float) -> float:
    """EMOMC zero factor 1 - (1 - d)^n: chance a group of n weights has a nonzero."""
    return 1.0 - (1.0 - density) ** n


def paper_counts(name: str, inp: DataflowInput) -> dict[str, float]:
    """EMOMC's per-layer counts and zero factors (COSTMODEL.md table).

    Returns a dict with ``macs``, ``input_reads``, ``weight_reads``, ``output_writes``,
    ``psum_reads``, ``f_in`` and ``f_out`` (for a batch of N images: N times one image's,
    weight reads once).
    """
    n = inp.dims.N
    if n > 1:  # per image, then the batch: weights are read once per batch (reused by its images)
        one = paper_counts(name, dataclasses.replace(inp, dims=dataclasses.replace(inp.dims, N=1)))
        return {k: (v * n if k in ("macs", "input_reads", "output_writes", "psum_reads") else v)
                for k, v in one.items()}
    dm = inp.dims
    d = inp.density
    mac = float(dm.macs)
    if inp.op_type in ("Gemm", "MatMul"):
        rows = dm.P * dm.Q
        io = float(dm.M * dm.C * rows)
        return dict(macs=io, input_reads=io, weight_reads=io, output_writes=float(dm.M * rows),
                    psum_reads=0.0, f_in=d, f_out=1.0)
    k2 = dm.R * dm.S
    k = math.sqrt(k2)
    hw = dm.P * dm.Q
    cin_g, cout_g = dm.C, dm.M
    if name == "xy":
        return dict(macs=mac, input_reads=mac, weight_reads=mac / hw,
                    output_writes=mac / (k2 * cin_g), psum_reads=0.0, f_in=d, f_out=1.0)
    if name == "icoc":
        ow = mac / cin_g
        f_in = 1.0 if cout_g > 24 else _zf(d, cout_g)
        f_out = 1.0 if cin_g > 24 else _zf(d, cin_g)
        return dict(macs=mac, input_reads=mac / cout_g, weight_reads=mac, output_writes=ow,
                    psum_reads=ow, f_in=f_in, f_out=f_out)
    if name == "fxfy":
        ow = mac / k2
        return dict(macs=mac, input_reads=mac, weight_reads=mac / hw, output_writes=ow,
                    psum_reads=ow, f_in=d, f_out=_zf(d, k2))
    if name == "xfx":
        ow = mac / k
        f = _zf(d, k)
        return dict(macs=mac, input_reads=mac / k, weight_reads=mac / math.sqrt(hw),
                    output_writes=ow, psum_reads=ow, f_in=f, f_out=f)
    raise KeyError(name)


def _paper(name: str) -> DataflowFn:
    def fn(inp: DataflowInput, profile) -> Traffic:
        c = paper_counts(name, inp)
        lv = {dt: profile.chain(dt)[0].name for dt in RELEVANT}
        reads = {n: dict.fromkeys(RELEVANT, 0.0) for n in set(lv.values())}
        writes = {n: dict.fromkeys(RELEVANT, 0.0) for n in set(lv.values())}
        reads[lv["weights"]]["weights"] += c["weight_reads"]
        reads[lv["inputs"]]["inputs"] += c["input_reads"] * c["f_in"]
        writes[lv["outputs"]]["outputs"] += c["output_writes"] * c["f_out"]
        reads[lv["outputs"]]["outputs"] += c["psum_reads"] * c["f_out"]
        # The paper's weight reads cost (q + 1)/16 of a 16-bit read: sign + q bits.
        return Traffic(
            reads,
            writes,
            dict.fromkeys(RELEVANT, 0.0),
            bits={"weights": inp.wbits + 1, "inputs": inp.abits, "outputs": inp.abits},
            compute_factor=inp.density,
            mapping=f"EMOMC {name}",
        )

    fn.__name__ = f"dataflow_{name}"
    fn.__doc__ = f"EMOMC paper dataflow {name!r}: closed-form counts, paper zero factors."
    return fn


for _name in ("xy", "icoc", "fxfy", "xfx"):
    register_dataflow(_name)(_paper(_name))
