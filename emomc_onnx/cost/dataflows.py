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

from emomc_onnx.cost.mapping import (
    RELEVANT,
    Counts,
    LayerDims,
    Loop,
    Mapping,
    MappingLevel,
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
    spill: tuple[str, ...]  # dims shrunk (moved off-chip) first when the buffer overflows
    use_rf: bool = True
    pe_fit: tuple[str, ...] = ()  # order the PE loops are grown in (default: ``pe``)


_RECIPES = {
    # Weight stationary (NVDLA / TPU-like): C x M over the array, R x S weights in each PE
    # register file; output pixels stream innermost so weights never move.
    "ws": _Recipe((("C", "rows"), ("M", "cols")), ("R", "S"), ("M", "C", "R", "S", "P", "Q"),
                  ("M", "C", "P", "Q")),
    # Output stationary (ShiDianNao-like): output pixels over the array, the partial sum
    # stays in the PE while C, R, S are accumulated.
    "os": _Recipe((("P", "rows"), ("Q", "cols"), ("M", "cols")), ("C", "R", "S"),
                  ("M", "P", "Q", "R", "S", "C"), ("Q", "P", "M", "C")),
    # Row stationary (Eyeriss): filter rows (R) down the array and output rows (P) across,
    # each PE convolves one filter row with one input row; M, C chunks in the RFs.
    "rs": _Recipe((("R", "rows"), ("C", "rows"), ("P", "cols"), ("M", "cols")), ("M", "C", "S"),
                  ("M", "C", "R", "S", "P", "Q"), ("M", "C", "P", "Q"), pe_fit=("S", "C", "M")),
    # No local reuse (DianNao-like): no register files, every operand comes from the
    # global buffer over the network; C x M over the array.
    "nlr": _Recipe((("C", "rows"), ("M", "cols")), (), ("M", "C", "P", "Q", "R", "S"),
                   ("M", "C", "P", "Q"), use_rf=False),
}


def _type_bits(dt: str, inp: DataflowInput, profile: object) -> int:
    if dt == "weights":
        return inp.wbits
    if dt == "inputs":
        return inp.abits
    return profile.mac.accumulator_bits  # type: ignore[attr-defined]


def _fits(level, keep, ext, inp, profile) -> bool:
    from emomc_onnx.cost.mapping import _size

    if level.capacity_bytes is None:
        return True
    used = sum(_size(dt, ext, inp.dims) * _type_bits(dt, inp, profile) for dt in keep)
    return used <= level.capacity_bytes * 8


def build_mapping(name: str, inp: DataflowInput, profile) -> Mapping:
    """The loop nest dataflow ``name`` uses for a layer on ``profile``'s hierarchy.

    Tiling is greedy and exact (factors are divisors of the bounds): the spatial loops
    fill the PE array in the recipe's order, the PE-level loops grow while every register
    file still holds its tile, and the buffer keeps as much as its capacity allows (the
    recipe's ``spill`` order decides which loops move off-chip first).
    """
    rec = _RECIPES[name]
    dims = inp.dims
    storage = list(profile.storage_levels)
    outer = storage[0]
    buf = next((lv for lv in storage if lv.kind == "buffer"), None)
    rfs = [lv for lv in storage if lv.kind == "rf"]
    rem = {d: dims.bound(d) for d in "GMCPQRS"}

    spatial: list[Loop] = []
    left = {"rows": profile.pe_rows, "cols": profile.pe_cols}
    for dim, axis in rec.spatial:
        f = _divisor_at_most(rem[dim], left[axis])
        if f > 1:
            spatial.append(Loop(dim, f, True))
            rem[dim] //= f
            left[axis] //= f

    pe: list[Loop] = []
    if rec.use_rf and rfs:
        ext = dict.fromkeys("GMCPQRS", 1)
        grown: dict[str, int] = {}
        for dim in rec.pe_fit or rec.pe:
            for f in _divisors_desc(rem[dim]):
                trial = dict(ext)
                trial[dim] *= f
                if all(_fits(lv, lv.holds, trial, inp, profile) for lv in rfs):
                    break
            if f > 1:
                ext[dim] *= f
                grown[dim] = f
                rem[dim] //= f
        pe = [Loop(d, grown[d]) for d in rec.pe if d in grown]

    # Buffer level: everything left, shrunk in spill order until the tile fits.
    buf_f = {d: rem[d] for d in rec.buffer_order}
    if buf is not None:
        base = dict.fromkeys("GMCPQRS", 1)
        for lp in (*spatial, *pe):
            base[lp.dim] *= lp.bound

        def fits(bf: dict[str, int]) -> bool:
            e = {d: base[d] * bf.get(d, 1) for d in base}
            return _fits(buf, buf.holds, e, inp, profile)

        order = [*rec.spill, *[d for d in rec.buffer_order if d not in rec.spill]]
        for dim in order:
            if fits(buf_f):
                break
            for f in _divisors_desc(rem[dim]):
                buf_f[dim] = f
                if fits(buf_f):
                    break
    else:
        buf_f = dict.fromkeys(rec.buffer_order, 1)
    out_f = {d: rem[d] // buf_f.get(d, 1) for d in "GMCPQRS"}

    def loops(fs: dict[str, int], order: tuple[str, ...]) -> list[Loop]:
        return [Loop(d, fs[d]) for d in order if fs.get(d, 1) > 1]

    outer_loops = loops(out_f, ("G", *rec.buffer_order))
    buf_loops = loops(buf_f, rec.buffer_order) if buf is not None else []
    levels = []
    for lv in storage:
        lp: list[Loop] = []
        keep = None
        if lv is outer:
            lp += outer_loops
            if buf is None:
                lp += spatial
        if lv is buf:
            lp += buf_loops + spatial
        if lv.kind == "rf":
            if not rec.use_rf:
                keep = frozenset()
            elif lv is rfs[-1]:
                lp += pe
        levels.append(MappingLevel(lv.name, tuple(lp), keep))
    return Mapping(tuple(levels))


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
    ``psum_reads``, ``f_in`` and ``f_out``.
    """
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
