"""Genome <-> plan encoding and the search-space types."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emomc_onnx.errors import PlanError
from emomc_onnx.search.genome import GenomeCodec
from emomc_onnx.search.space import CompressionPlan, GroupGene, LayerGene, SearchSpace


@st.composite
def spaces(draw) -> SearchSpace:
    n_g = draw(st.integers(0, 4))
    n_l = draw(st.integers(1, 4))
    groups = tuple(GroupGene(id=i * 3 + 1, channels=draw(st.integers(1, 40)),
                             multiple=draw(st.integers(1, 9))) for i in range(n_g))
    layers = tuple(LayerGene(name=f"l{i}", op_type="Conv", params=10, macs=100)
                   for i in range(n_l))
    dens = draw(st.lists(st.sampled_from([0.1, 0.25, 0.3, 0.5, 0.75, 0.9, 1.0]), min_size=1,
                         unique=True))
    wbits = draw(st.lists(st.integers(2, 16), min_size=1, max_size=4, unique=True))
    abits = draw(st.lists(st.integers(2, 16), min_size=1, max_size=4, unique=True))
    kind = draw(st.sampled_from(["full", "emomc"]))
    return SearchSpace(groups=groups, layers=layers, densities=tuple(dens), wbits=tuple(wbits),
                       abits=tuple(abits), reference_bits=(16, 16), kind=kind)


@settings(max_examples=150, deadline=None)
@given(spaces(), st.integers(1, 2), st.data())
def test_decode_encode_round_trip(space: SearchSpace, stage: int, data) -> None:
    codec = GenomeCodec(space)
    xl, xu = codec.bounds(stage)
    assert len(xu) == codec.n_var(stage)
    x = np.array([data.draw(st.integers(int(lo), int(hi))) for lo, hi in zip(xl, xu)],
                 dtype=np.int64)
    plan = codec.decode(x, stage)
    np.testing.assert_array_equal(codec.encode(plan, stage), x)
    again = CompressionPlan.from_dict(plan.to_dict())
    assert again == plan and again.key() == plan.key()
    # every decoded value is one of the space's choices
    for g in space.groups:
        assert plan.keep[g.id] in g.choices
    for la in space.layers:
        assert plan.density[la.name] in space.densities
        if stage == 1:
            assert plan.wbits[la.name] is None and plan.abits[la.name] is None
        else:
            assert plan.wbits[la.name] in space.wbits
    if space.kind == "emomc":
        assert len(set(plan.density.values())) == 1
        assert all(plan.keep[g.id] == g.channels for g in space.groups)
        if stage == 2:
            assert set(plan.abits.values()) == {16}


@given(st.integers(1, 200), st.integers(1, 32))
def test_group_choices(channels: int, multiple: int) -> None:
    ch = GroupGene(id=0, channels=channels, multiple=multiple).choices
    assert ch[-1] == channels and list(ch) == sorted(set(ch))
    if channels <= multiple:
        assert ch == (channels,)
    else:
        assert all(c % multiple == 0 for c in ch[:-1]) and ch[0] == multiple


def _space(kind: str = "full") -> SearchSpace:
    return SearchSpace(groups=(GroupGene(0, 16, 4),),
                       layers=(LayerGene("a", "Conv", 1, 1), LayerGene("b", "Gemm", 1, 1)),
                       densities=(0.5, 1.0), wbits=(4, 8), abits=(8,), kind=kind)


def test_encode_rejects_values_outside_the_space() -> None:
    codec = GenomeCodec(_space())
    plan = CompressionPlan(keep={0: 6}, density={}, wbits={}, abits={})
    with pytest.raises(PlanError, match=r"keep\[0\] = 6"):
        codec.encode(plan, 1)
    with pytest.raises(PlanError, match="wbits"):
        codec.encode(CompressionPlan(keep={}, density={}, wbits={"a": 3}, abits={}), 2)
    with pytest.raises(PlanError, match="stage-1 plans have no bit widths"):
        codec.encode(CompressionPlan(keep={}, density={}, wbits={"a": 4}, abits={}), 1)
    emo = GenomeCodec(_space("emomc"))
    with pytest.raises(PlanError, match="one global density"):
        emo.encode(CompressionPlan(keep={}, density={"a": 0.5, "b": 1.0}, wbits={},
                                   abits={}), 1)
    with pytest.raises(PlanError, match="no channel pruning"):
        emo.encode(CompressionPlan(keep={0: 8}, density={}, wbits={}, abits={}), 1)


def test_decode_rejects_bad_genomes() -> None:
    codec = GenomeCodec(_space())
    with pytest.raises(PlanError, match="genes"):
        codec.decode(np.zeros(2), 1)
    with pytest.raises(PlanError, match="outside"):
        codec.decode(np.array([0, 0, 5]), 1)
    with pytest.raises(PlanError, match="stage"):
        codec.decode(np.zeros(3), 3)


def test_plan_and_space_validation() -> None:
    with pytest.raises(PlanError, match="density"):
        CompressionPlan(keep={}, density={"a": 0.0}, wbits={}, abits={})
    with pytest.raises(PlanError, match="keep"):
        CompressionPlan(keep={1: 0}, density={}, wbits={}, abits={})
    with pytest.raises(PlanError, match="kind"):
        SearchSpace(groups=(), layers=(LayerGene("a", "Conv", 1, 1),), densities=(1.0,),
                    wbits=(8,), abits=(8,), kind="other")  # type: ignore[arg-type]
    with pytest.raises(PlanError, match="densities"):
        SearchSpace(groups=(), layers=(LayerGene("a", "Conv", 1, 1),), densities=(1.5,),
                    wbits=(8,), abits=(8,))
    with pytest.raises(PlanError, match="malformed"):
        CompressionPlan.from_dict({"keep": {"x": 1}})


def test_plan_key_is_stable_and_discriminating() -> None:
    a = CompressionPlan(keep={2: 8, 1: 4}, density={"b": 0.5, "a": 1.0}, wbits={"a": 8},
                        abits={})
    b = CompressionPlan(keep={1: 4, 2: 8}, density={"a": 1.0, "b": 0.5}, wbits={"a": 8},
                        abits={})
    assert a.key() == b.key() and hash(a) == hash(b)
    c = CompressionPlan(keep={1: 4, 2: 8}, density={"a": 1.0, "b": 0.5}, wbits={"a": 4},
                        abits={})
    assert c.key() != a.key()


def test_stage1_quantized_decodes_reference_bits() -> None:
    """A stage-1 genome decodes to float layers by default and to the reference bits on every
    layer with stage1_quantized; encoding the plan back gives the same genome."""
    import dataclasses

    sp = _space()
    q = dataclasses.replace(sp, stage1_quantized=True)
    x = GenomeCodec(sp).bounds(1)[1]
    plain, quant = GenomeCodec(sp).decode(x, 1), GenomeCodec(q).decode(x, 1)
    assert set(plain.wbits.values()) == {None} and set(plain.abits.values()) == {None}
    assert set(quant.wbits.values()) == {q.reference_bits[0]}
    assert set(quant.abits.values()) == {q.reference_bits[1]}
    assert quant.keep == plain.keep and quant.density == plain.density
    assert np.array_equal(GenomeCodec(q).encode(quant, 1), x)


def test_uniform_genomes_are_the_hand_sweep() -> None:
    from emomc_onnx.search.seeding import uniform_genomes
    from tests.search.toy import ToyEvaluatorFactory, toy_space

    for kind in ("full", "emomc"):
        space = toy_space(ToyEvaluatorFactory(), kind)
        codec = GenomeCodec(space)
        genomes = uniform_genomes(codec, levels=3)
        plans = [codec.decode(x, 2) for x in genomes]
        assert len({p.key() for p in plans}) == len(plans)
        for p in plans:
            assert len(set(p.wbits.values())) == 1 and len(set(p.abits.values())) == 1
            assert len(set(p.density.values())) == 1
        assert {next(iter(p.wbits.values())) for p in plans} == set(space.wbits)
    full = toy_space(ToyEvaluatorFactory())
    # 3 keep x 3 density levels (distinct after rounding) x 5 weight x 3 activation widths
    assert len(uniform_genomes(GenomeCodec(full), levels=3)) == 3 * 3 * 5 * 3
