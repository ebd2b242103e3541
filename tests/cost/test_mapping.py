"""Loop-nest access counting: Timeloop's AlexNet CONV1 example and a brute-force oracle."""

from __future__ import annotations

import itertools
import math

import pytest

from emomc_onnx.cost import (
    CostLayer,
    DataflowInput,
    LayerDims,
    Loop,
    Mapping,
    MappingLevel,
    build_mapping,
    evaluate_mapping,
    layer_cost,
    load_profile,
    parse_profile,
)
from emomc_onnx.errors import PlanError
from tests.cost.shapes import alexnet_convs

TIMELOOP_HOLDS = {
    "dram": ("weights", "inputs", "outputs"),
    "global_buffer": ("inputs", "outputs"),
    "ifmap_spad": ("inputs",),
    "weights_spad": ("weights",),
    "psum_spad": ("outputs",),
}


def timeloop_conv1_mapping() -> Mapping:
    """DRAM [Q55 C3] -> buffer [P55, M12 spatial, S11 spatial] -> wspad [R11] -> pspad [M8]."""
    return Mapping(
        (
            MappingLevel("dram", (Loop("Q", 55), Loop("C", 3))),
            MappingLevel(
                "global_buffer",
                (Loop("P", 55), Loop("M", 12, True), Loop("S", 11, True)),
                frozenset({"inputs", "outputs"}),
            ),
            MappingLevel("ifmap_spad"),
            MappingLevel("weights_spad", (Loop("R", 11),)),
            MappingLevel("psum_spad", (Loop("M", 8),)),
        )
    )


def test_timeloop_alexnet_conv1_dram_counts() -> None:
    dims = LayerDims.from_layer(alexnet_convs()[0])
    assert dims.macs == 105_415_200
    c = evaluate_mapping(timeloop_conv1_mapping(), dims, TIMELOOP_HOLDS)
    assert c.reads["dram"]["weights"] == 1_916_640
    assert c.reads["dram"]["inputs"] == 412_005
    assert c.writes["dram"]["outputs"] == 290_400
    assert c.reads["dram"]["outputs"] == 0  # every output leaves DRAM's child complete
    # Every MAC reads one weight and one input from its scratchpad.
    assert c.reads["weights_spad"]["weights"] == dims.macs
    assert c.reads["ifmap_spad"]["inputs"] == dims.macs


def test_timeloop_alexnet_conv1_every_level() -> None:
    """Every level's counts of Timeloop's own mapping of AlexNet CONV1 (eyeriss_like).

    Figures: Accelergy-Project/timeloop-accelergy-exercises,
    baseline_designs/example_designs/eyeriss_like/example_AlexNet_layer1_outputs/
    timeloop-mapper.stats.txt (132 utilised PEs; per-instance figures x 132). Its mapper's
    loop nest is the one in ``timeloop_conv1_mapping`` (that file's MAPPING sections).
    """
    dims = LayerDims.from_layer(alexnet_convs()[0])
    c = evaluate_mapping(timeloop_conv1_mapping(), dims, TIMELOOP_HOLDS)
    pes = 132
    # psum_spad: reads 774400, updates 798600, fills 72600 per instance
    assert c.reads["psum_spad"]["outputs"] == 774_400 * pes
    assert c.updates["psum_spad"] == 798_600 * pes
    assert c.fills["psum_spad"]["outputs"] == 72_600 * pes
    # weights_spad: reads 798600, fills 14520; ifmap_spad: reads 798600, fills 37455
    assert c.reads["weights_spad"]["weights"] == 798_600 * pes
    assert c.fills["weights_spad"]["weights"] == 14_520 * pes
    assert c.reads["ifmap_spad"]["inputs"] == 798_600 * pes
    assert c.fills["ifmap_spad"]["inputs"] == 37_455 * pes
    # shared_glb: inputs reads 412005, fills 412005; outputs reads 580800, updates 871200,
    # fills 290400
    assert c.reads["global_buffer"]["inputs"] == 412_005
    assert c.fills["global_buffer"]["inputs"] == 412_005
    assert c.reads["global_buffer"]["outputs"] == 580_800
    assert c.updates["global_buffer"] == 871_200
    assert c.fills["global_buffer"]["outputs"] == 290_400
    # DRAM: weights 1916640, inputs 412005 reads; outputs 290400 updates
    assert c.updates["dram"] == 290_400
    # ISCA'16 charges: inner levels a read and a write per accumulation after the first
    assert c.writes["global_buffer"]["outputs"] == c.reads["global_buffer"]["outputs"]
    assert c.writes["psum_spad"]["outputs"] == c.reads["psum_spad"]["outputs"]
    assert c.writes["weights_spad"]["weights"] == c.writes["ifmap_spad"]["inputs"] == 0


def test_timeloop_mapping_through_layer_cost() -> None:
    """The same mapping given to the eyeriss profile as an explicit mapping."""
    prof = load_profile("eyeriss")
    lay = alexnet_convs()[0]
    rep = layer_cost(CostLayer.from_shape(lay, 16, 16), prof, "rs", "dense",
                     mapping=timeloop_conv1_mapping())
    assert rep.reads["dram"]["weights"] == 1_916_640
    assert rep.writes["dram"]["outputs"] == 290_400
    # DRAM energy: 200 per 16-bit access of weights + inputs + outputs.
    assert rep.energy_by_level["dram"] == pytest.approx(200 * (1_916_640 + 412_005 + 290_400))


def test_mapping_bounds_must_multiply_to_layer() -> None:
    dims = LayerDims.from_layer(alexnet_convs()[0])
    bad = Mapping((MappingLevel("dram", (Loop("Q", 55),)),))
    with pytest.raises(PlanError, match="multiply"):
        evaluate_mapping(bad, dims, TIMELOOP_HOLDS)


# --------------------------------------------------------------------------- oracle


def _coords(dt: str, base: dict[str, int], ext: dict[str, int], dims: LayerDims) -> set:
    rng = {d: range(base[d], base[d] + ext[d]) for d in base}
    if dt == "weights":
        return set(itertools.product(rng["G"], rng["M"], rng["C"], rng["R"], rng["S"]))
    out = set()
    for n, g, c, p, q, r, s in itertools.product(
        rng["N"], rng["G"], rng["C"], rng["P"], rng["Q"], rng["R"], rng["S"]
    ):
        out.add((n, g, c, p * dims.stride_h + r, q * dims.stride_w + s))
    return out


def brute_force(mapping: Mapping, dims: LayerDims, holds: dict, dt: str) -> dict:
    """(parent reads, child fills) of ``dt`` per level pair by walking the loop nest.

    Each child instance keeps its current tile and is filled with what it lacks (fills);
    the parent sends what the array below it as a whole lacks: the union of the children's
    tiles now minus the union before (neighbour forwarding inside the array).
    """
    levels = mapping.levels
    n = len(levels)
    keeps = [lv.keep if lv.keep is not None else frozenset(holds[lv.level]) for lv in levels]
    chain = [i for i in range(n) if dt in keeps[i]]
    flat = [(i, lp) for i in range(n) for lp in levels[i].loops]
    strides = [
        math.prod(q.bound for _, q in flat[k + 1:] if q.dim == lp.dim) for k, (_, lp) in enumerate(flat)
    ]
    result = {}
    for p, c in zip(chain, chain[1:]):
        above = [k for k, (i, _) in enumerate(flat) if i < c]
        ext = {d: math.prod(lp.bound for i, lp in flat if i >= c and lp.dim == d) for d in "NGMCPQRS"}
        temporal = [k for k in above if not flat[k][1].spatial]
        spatial = [k for k in above if flat[k][1].spatial]
        parent_sp = [k for k in spatial if flat[k][0] < p]
        current: dict = {}
        union_prev: dict = {}
        reads = fills = 0
        for t_idx in itertools.product(*(range(flat[k][1].bound) for k in temporal)):
            union_now: dict = {}
            for s_idx in itertools.product(*(range(flat[k][1].bound) for k in spatial)):
                base = dict.fromkeys("NGMCPQRS", 0)
                for k, v in (*zip(temporal, t_idx), *zip(spatial, s_idx)):
                    base[flat[k][1].dim] += v * strides[k]
                tile = _coords(dt, base, ext, dims)
                fills += len(tile - current.get(s_idx, set()))
                current[s_idx] = tile
                pkey = tuple(v for k, v in zip(spatial, s_idx) if k in parent_sp)
                union_now.setdefault(pkey, set()).update(tile)
            for pkey, u in union_now.items():
                reads += len(u - union_prev.get(pkey, set()))
            union_prev = union_now
        result[(levels[p].level, levels[c].level)] = (reads, fills)
    return result


SMALL_PROFILE = """
name: small
energy_unit: pJ
pe_array: {rows: 2, cols: 3}
memory:
  dram: {kind: offchip, energy_pj: 100, word_bits: 16}
  buf: {kind: buffer, energy_pj: 5, word_bits: 16, capacity_bytes: 400}
  net: {kind: network, energy_pj: 2, word_bits: 16}
  rf: {kind: rf, energy_pj: 1, word_bits: 16, capacity_bytes: 24}
mac: {energy_pj: 1, scaling: product}
dataflows: [rs, ws, os, nlr]
channel_multiple: 2
weight_bits: [4, 8, 16]
activation_bits: [16]
baseline_weight_bits: 16
baseline_activation_bits: 16
codings: [dense]
"""


@pytest.mark.parametrize("dataflow", ["rs", "ws", "os", "nlr"])
@pytest.mark.parametrize(
    "dims",
    [LayerDims(1, 4, 4, 4, 4, 3, 3), LayerDims(1, 6, 8, 2, 1, 1, 1), LayerDims(1, 2, 2, 3, 3, 3, 3, 2, 2),
     LayerDims(1, 4, 4, 2, 2, 3, 3, N=4), LayerDims(1, 6, 8, 1, 1, 1, 1, N=6)],
    ids=["conv3x3", "gemm", "conv3x3s2", "conv3x3-batch4", "gemm-batch6"],
)
def test_generated_mappings_match_brute_force(dataflow: str, dims: LayerDims) -> None:
    prof = parse_profile(SMALL_PROFILE, "small.yaml")
    inp = DataflowInput(dims, "Conv", 16, 16, 1.0)
    mapping = build_mapping(dataflow, inp, prof)
    holds = {lv.name: lv.holds for lv in prof.storage_levels}
    counts = evaluate_mapping(mapping, dims, holds)
    for dt in ("weights", "inputs"):
        for (parent, child), (reads, fills) in brute_force(mapping, dims, holds, dt).items():
            info = (dataflow, mapping.describe(), dt, parent)
            assert counts.reads[parent][dt] == reads, info
            assert counts.fills[child][dt] == fills, info
            assert counts.writes[child][dt] == 0, info  # ISCA'16: fills are not accesses
    # Outputs: the off-chip level receives every output at least once.
    outs = dims.N * dims.G * dims.M * dims.P * dims.Q
    assert counts.writes["dram"]["outputs"] >= outs
    assert counts.writes["dram"]["outputs"] - counts.reads["dram"]["outputs"] == outs
