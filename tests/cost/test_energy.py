"""Energy model: hand-computed layers, EMOMC formulas, AlexNet dataflow ranking."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emomc_onnx.cost import (
    CostLayer,
    LayerDims,
    Loop,
    Mapping,
    MappingLevel,
    OtherOp,
    baseline_cost,
    compare_dataflows,
    layer_cost,
    load_profile,
    model_cost,
    parse_profile,
    render,
    to_dict,
)
from emomc_onnx.errors import PlanError, ProfileError
from tests.cost.shapes import alexnet_convs, conv, linear
from tests.cost.test_mapping import SMALL_PROFILE

# --------------------------------------------------------------------------- hand-computed


def _small(**repl: str):
    text = SMALL_PROFILE.replace("scaling: product}", "scaling: product, accumulator_bits: 16}")
    text = text.replace("capacity_bytes: 400", "capacity_bytes: 100000")
    return parse_profile(text, "small.yaml")


def test_gemm_fixed_mapping_hand_computed() -> None:
    """Gemm 6 -> 4: dram[M2] -> buf[C3, M2 spatial] -> rf[C2]; every count by hand."""
    prof = _small()
    lay = linear("fc", 6, 4)
    mapping = Mapping((
        MappingLevel("dram", (Loop("M", 2),)),
        MappingLevel("buf", (Loop("C", 3), Loop("M", 2, True))),
        MappingLevel("rf", (Loop("C", 2),)),
    ))
    rep = layer_cost(CostLayer.from_shape(lay, 16, 16), prof, "ws", "dense", mapping=mapping)
    assert rep.macs == 24
    assert rep.reads["dram"] == {"weights": 24, "inputs": 6, "outputs": 0}
    assert rep.writes["dram"] == {"weights": 0, "inputs": 0, "outputs": 4}
    # ISCA'16 a-b-c-d accounting (was: fills and drains charged too, 4042): a level is
    # charged for what it serves its child, never for being filled; each output is
    # accumulated entirely in the RF (b = 1), so the buffer does no psum access (2a(b-1) = 0).
    assert rep.reads["buf"] == {"weights": 24, "inputs": 12, "outputs": 0}
    assert rep.writes["buf"] == {"weights": 0, "inputs": 0, "outputs": 0}
    # 2abc(d-1) at the RF: 4 outputs, d = 6 accumulations each -> 20 reads + 20 writes
    assert rep.reads["rf"] == {"weights": 24, "inputs": 24, "outputs": 20}
    assert rep.writes["rf"] == {"weights": 0, "inputs": 0, "outputs": 20}
    # ab(c-1) at the array: the two PEs (M2 spatial) hold different outputs, no reduction
    assert rep.network == {"weights": 24, "inputs": 24, "outputs": 0}
    assert rep.energy_by_level == pytest.approx(
        {"dram": 3400, "buf": 180, "rf": 88, "net": 96, "mac": 24}
    )
    assert rep.energy == pytest.approx(3788)


@pytest.mark.parametrize("dataflow", ["rs", "ws", "os", "nlr"])
@pytest.mark.parametrize("layer", [conv("c3", 4, 4, 3, 4), linear("fc", 8, 6)], ids=["conv3x3", "gemm"])
def test_every_dataflow_energy_is_counts_times_energies(dataflow: str, layer) -> None:
    """Energy = sum of accesses x per-access energy (bits-scaled) + MACs x MAC energy."""
    prof = _small()
    rep = layer_cost(CostLayer.from_shape(layer, 8, 16), prof, dataflow, "dense")
    assert rep.macs == layer.macs
    bits = {"weights": 8, "inputs": 16, "outputs": 16}
    e_per = {"dram": 100, "buf": 5, "rf": 1}
    for lvl, e in e_per.items():
        want = sum(
            (rep.reads[lvl][dt] + rep.writes[lvl][dt]) * e * bits[dt] / 16 for dt in bits
        )
        assert rep.energy_by_level[lvl] == pytest.approx(want)
    assert rep.energy_by_level["net"] == pytest.approx(
        sum(rep.network[dt] * 2 * bits[dt] / 16 for dt in bits)
    )
    assert rep.energy_by_level["mac"] == pytest.approx(layer.macs * 8 * 16 / 256)
    # every weight and input leaves DRAM at least once, every output arrives once
    assert rep.reads["dram"]["weights"] >= layer.params
    assert rep.writes["dram"]["outputs"] - rep.reads["dram"]["outputs"] == layer.out_channels * (
        layer.out_spatial[0] * layer.out_spatial[1]
    )


def test_pruned_and_lower_bit_layers_cost_less() -> None:
    prof = load_profile("eyeriss")
    lay = conv("c", 64, 64, 3, 14)
    rng = np.random.default_rng(0)
    w = rng.integers(-100, 100, size=(64, 64, 3, 3)).astype(np.int16)
    w[w == 0] = 1
    dense = layer_cost(CostLayer(lay, w, 16, 16), prof, "rs", "auto")
    pruned_w = w.copy()
    pruned_w[:, :, :, :2] = 0  # density 1/3
    pruned = layer_cost(CostLayer(lay, pruned_w, 16, 16), prof, "rs", "auto")
    assert pruned.density == pytest.approx(1 / 3)
    assert pruned.size_bits < dense.size_bits
    # Only DRAM weight traffic changes: it scales with the coded bits per weight.
    # Only DRAM weight traffic changes: 200 per 16 coded bits moved per weight read.
    b_dense = dense.weight_bits_by_coding[dense.coding] / w.size
    b_pruned = pruned.weight_bits_by_coding[pruned.coding] / w.size
    assert b_pruned < b_dense
    assert pruned.energy_by_level["dram"] < dense.energy_by_level["dram"]
    reads = dense.reads["dram"]["weights"]
    assert dense.energy - pruned.energy == pytest.approx(reads * 200 * (b_dense - b_pruned) / 16)
    # 8-bit weights: MAC energy halves (product law), weight spad energy halves.
    low = layer_cost(CostLayer.from_shape(lay, 8, 16), prof, "rs", "dense")
    full = layer_cost(CostLayer.from_shape(lay, 16, 16), prof, "rs", "dense")
    assert low.energy_by_level["mac"] == pytest.approx(full.energy_by_level["mac"] / 2)
    assert low.energy_by_level["weights_spad"] == pytest.approx(full.energy_by_level["weights_spad"] / 2)
    assert low.energy < full.energy
    assert low.size_bits == full.size_bits - lay.params * 8


# --------------------------------------------------------------------------- EMOMC formulas


def _paper_energy(df: str, lay, q: int, d: float) -> float:
    """COSTMODEL.md's per-layer formula, written out independently."""
    g = lay.groups
    k = lay.kernel[0]
    ho, wo = lay.out_spatial
    cin, cout = lay.in_channels, lay.out_channels
    if lay.op_type == "Gemm":
        mac = cin * cout
        ir, wr, ow, pr, fin, fout = mac, mac, cout, 0, d, 1
    else:
        mac = k * k * ho * wo * cin * cout / g
        if df == "xy":
            ir, wr, ow, pr, fin, fout = mac, mac / (ho * wo), mac / (k * k * cin / g), 0, d, 1
        elif df == "icoc":
            ow = mac / (cin / g)
            fin = 1 if cout / g > 24 else 1 - (1 - d) ** (cout / g)
            fout = 1 if cin / g > 24 else 1 - (1 - d) ** (cin / g)
            ir, wr, pr = mac / (cout / g), mac, ow
        elif df == "fxfy":
            ow = mac / (k * k)
            ir, wr, pr, fin, fout = mac, mac / (ho * wo), ow, d, 1 - (1 - d) ** (k * k)
        else:
            ow = mac / k
            f = 1 - (1 - d) ** k
            ir, wr, pr, fin, fout = mac / k, mac / math.sqrt(ho * wo), ow, f, f
    return (0.102 * mac * d * (q + 1) + 0.728 * wr * (q + 1) / 16 + 0.728 * ir * fin
            + 0.447 * ow * fout + 0.728 * pr * fout)


EMOMC_LAYERS = {
    "conv64": conv("conv64", 64, 64, 3, 16),
    "depthwise": conv("dw", 64, 64, 3, 16, groups=64),
    "linear": linear("fc", 512, 10),
}


def _weights(lay, density: float) -> np.ndarray:
    n = lay.params
    w = np.arange(1, n + 1, dtype=np.int64) % 7 + 1
    w[: round(n * (1 - density))] = 0
    return w


@pytest.mark.parametrize("df", ["xy", "icoc", "fxfy", "xfx"])
@pytest.mark.parametrize("name", list(EMOMC_LAYERS))
@pytest.mark.parametrize(("q", "d"), [(2, 1.0), (4, 0.5), (8, 0.25), (12, 0.1)])
def test_emomc_profile_matches_paper(df: str, name: str, q: int, d: float) -> None:
    prof = load_profile("emomc")
    lay = EMOMC_LAYERS[name]
    w = _weights(lay, d)
    n = w.size
    nnz = int(np.count_nonzero(w))
    assert nnz == round(n * d)
    cost = model_cost([CostLayer(lay, w, q, 16)], prof, df, "normal")
    assert cost.energy == pytest.approx(_paper_energy(df, lay, q, nnz / n), rel=1e-12)
    assert cost.size_bits_by_coding["normal"] == n * q
    assert cost.size_bits_by_coding["csr"] == nnz * (q + 3)
    assert cost.size_bits_by_coding["coo"] == math.ceil(nnz * (q + math.log2(n)))
    assert cost.size_bits_by_coding["auto"] == min(n * q, nnz * (q + 3), math.ceil(nnz * (q + math.log2(n))))
    # shape-only costing gives the same energy
    shape = model_cost([CostLayer.from_shape(lay, q, 16, nnz / n)], prof, df, "csr")
    assert shape.energy == pytest.approx(cost.energy, rel=1e-12)
    assert shape.size_bits == nnz * (q + 3)


def test_emomc_baseline_and_improvement() -> None:
    prof = load_profile("emomc")
    lays = list(EMOMC_LAYERS.values())
    base = baseline_cost(lays, prof, "xy", "normal")
    assert base.size_bits == sum(l.params * 32 for l in lays)
    comp = model_cost([CostLayer(l, _weights(l, 0.3), 4, 16) for l in lays], prof, "xy", "csr")
    assert base.energy / comp.energy > 3
    assert base.size_bits / comp.size_bits > 8


# --------------------------------------------------------------------------- AlexNet ranking


def test_alexnet_row_stationary_lowest_energy_per_mac() -> None:
    prof = load_profile("eyeriss")
    per_layer = {}
    for lay in alexnet_convs():
        res = compare_dataflows([CostLayer.from_shape(lay, 16, 16)], prof, "dense")
        per_layer[lay.name] = {d: c.energy_per_mac for d, c in res.items()}
        best = min(per_layer[lay.name], key=per_layer[lay.name].get)
        assert best == "rs", per_layer[lay.name]
    total = compare_dataflows([CostLayer.from_shape(l, 16, 16) for l in alexnet_convs()], prof, "dense")
    ratios = {d: c.energy / total["rs"].energy for d, c in total.items()}
    # ISCA 2016: row stationary 1.4-2.5x more efficient than the others on AlexNet CONV
    assert all(1.2 < r < 3.0 for d, r in ratios.items() if d != "rs"), ratios


# --------------------------------------------------------------------------- model level


def test_other_ops_counted_or_ignored(capsys) -> None:
    prof = load_profile("eyeriss")
    lay = conv("c", 8, 8, 3, 8)
    ops = [OtherOp("pool", "MaxPool", 512, 128), OtherOp("flat", "Flatten", 128, 128),
           OtherOp("odd", "Resize", None, 100)]
    cost = model_cost([CostLayer.from_shape(lay, 16, 16)], prof, other_ops=ops)
    assert cost.other_energy == pytest.approx(512 * 200 + 128 * 200)
    names = {n: r for n, _, r in cost.ignored}
    assert set(names) == {"flat", "odd"} and "unknown" in names["odd"]
    bare = model_cost([CostLayer.from_shape(lay, 16, 16)], prof)
    assert cost.energy == pytest.approx(bare.energy + cost.other_energy)
    d = to_dict(cost)
    assert d["ignored"][0]["reason"] and d["layers"][0]["energy"] == pytest.approx(bare.energy)
    import json

    json.dumps(d)
    from rich.console import Console

    console = Console(width=140, record=True)
    render(cost, console)
    text = console.export_text()
    assert "dram" in text and "ignored" in text and "c" in text


def test_unsupported_dataflow_and_bad_density() -> None:
    prof = load_profile("eyeriss")
    lay = conv("c", 8, 8, 3, 8)
    with pytest.raises(ProfileError, match="dataflow 'xy' not supported"):
        model_cost([CostLayer.from_shape(lay, 16, 16)], prof, "xy")
    with pytest.raises(PlanError, match="density"):
        CostLayer.from_shape(lay, 16, 16, density=1.5)


@pytest.mark.parametrize("name", ["eyeriss", "edge_npu", "mcu", "emomc"])
def test_every_profile_costs_every_dataflow(name: str) -> None:
    prof = load_profile(name)
    lays = [CostLayer.from_shape(conv("c", 32, 64, 3, 28, bias=True), 8, prof.activation_bits[0], 0.5),
            CostLayer.from_shape(conv("dw", 64, 64, 3, 28, groups=64), 8, prof.activation_bits[0]),
            CostLayer.from_shape(linear("fc", 256, 10, bias=True), 4, prof.activation_bits[0], 0.3)]
    for df, cost in compare_dataflows(lays, prof, "auto").items():
        assert cost.energy > 0 and cost.dataflow == df
        assert cost.size_bits == cost.size_bits_by_coding["auto"]
        assert all(r.energy > 0 for r in cost.layers)
        assert LayerDims.from_layer(lays[1].layer).macs == lays[1].layer.macs
