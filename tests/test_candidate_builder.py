"""CandidateBuilder: the plan -> model pipeline that `prune` and the search share."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from emomc_onnx import io
from emomc_onnx.analysis import analyze
from emomc_onnx.candidate import CandidateBuilder
from emomc_onnx.cost import load_profile
from emomc_onnx.errors import DataError
from emomc_onnx.passes.quantize import LayerBits, QuantPlan, quantize_model
from emomc_onnx.search.space import DEFAULT_POLICY, CompressionPlan, SpacePolicy, make_space
from tests.models import build


@pytest.fixture(scope="module")
def resnet():
    fx = build("resnet")
    loaded = io.load_model(fx.path)
    analysis = analyze(loaded.model)
    x = fx.inputs(64, seed=1)["input"]
    return loaded, analysis, [{"input": x[i:i + 32]} for i in range(0, 64, 32)], fx.inputs(8, seed=2)


def _sha(proto: onnx.ModelProto) -> str:
    return hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()


def _plans(analysis):
    names = [lay.name for lay in analysis.layers]
    g = analysis.prunable_groups[0]
    keep = {g.id: max(1, g.channels // 2)}
    dens = {names[0]: 0.5, names[-1]: 0.3}
    bits = {n: 4 for n in names[:2]}
    return [
        CompressionPlan(keep=keep, density=dens, wbits={}, abits={}),
        CompressionPlan(keep=keep, density=dens, wbits=bits, abits={n: 8 for n in bits}),
        CompressionPlan(keep={}, density={}, wbits={names[-1]: 6}, abits={names[-1]: 8}),
    ]


def test_builds_never_change_the_imported_model_or_a_cached_float_model(resnet) -> None:
    """Candidates clone the imported IR (sharing its weight tensors) and quantize a clone of the
    cached float IR: after pruning, sparsity with re-fit and QDQ builds, the imported model and
    the float model of the quantized architecture are byte for byte what they were."""
    loaded, analysis, batches, _ = resnet
    b = CandidateBuilder(loaded, analysis, batches, recovery="lsq")
    before = _sha(loaded.proto())
    float_plan, q_plan, _ = _plans(analysis)
    float_before = _sha(b.build(float_plan))
    for plan in _plans(analysis):
        b.build(plan)
    assert _sha(loaded.proto()) == before
    assert _sha(b.build(float_plan)) == float_before
    assert not any(n.op_type == "DequantizeLinear" for n in b.build(float_plan).graph.node)
    assert any(n.op_type == "DequantizeLinear" for n in b.build(q_plan).graph.node)


def test_quantizing_the_ir_clone_equals_the_proto_round_trip(resnet) -> None:
    """QDQ insertion from the cached IR (no proto parsed) gives the model the proto path gave."""
    loaded, analysis, batches, feeds = resnet
    b = CandidateBuilder(loaded, analysis, batches, recovery="bias")
    for plan in _plans(analysis)[1:]:
        proto, key = b.float_model(plan)
        layers = {k: LayerBits(plan.wbits.get(k), plan.abits.get(k)) for k in sorted(plan.wbits)}
        via_proto = quantize_model(proto, QuantPlan(layers=layers), b.ranges(proto, key))
        built = b.build(plan)
        assert _sha(built) == _sha(via_proto)
        onnx.checker.check_model(built)
        out = ort.InferenceSession(built.SerializeToString()).run(None, feeds)[0]
        assert np.isfinite(out).all()


def test_recovery_without_data_is_refused(resnet) -> None:
    loaded, analysis, _, _ = resnet
    with pytest.raises(DataError, match="need calibration data"):
        CandidateBuilder(loaded, analysis, None, recovery="lsq")
    with pytest.raises(DataError, match="criterion 'activation'"):
        CandidateBuilder(loaded, analysis, [], recovery="none", criterion="activation")
    CandidateBuilder(loaded, analysis, None, recovery="none")  # l1 pruning needs no data


def test_space_policy_decides_the_choices(resnet) -> None:
    """The policy, not the evaluator, picks which of a profile's bit widths and densities the
    search offers; a policy whose range misses every width falls back to all of them."""
    _, analysis, _, _ = resnet
    prof = load_profile("eyeriss")
    space = make_space(analysis, prof)
    assert space.wbits == tuple(b for b in sorted(prof.weight_bits) if 2 <= b <= 8)
    assert space.abits == tuple(b for b in sorted(prof.activation_bits) if 4 <= b <= 8)
    assert space.densities[0] == 0.1 and space.densities[-1] == 1.0 and len(space.densities) == 19
    assert space.reference_bits == (max(space.wbits), max(space.abits))
    narrow = make_space(analysis, prof, policy=SpacePolicy(wbits=(4, 6), densities=(0.5, 1.0, 0.25)))
    assert narrow.wbits == tuple(b for b in sorted(prof.weight_bits) if 4 <= b <= 6)
    assert narrow.densities == (0.5, 0.75, 1.0)
    none_fit = make_space(analysis, prof, policy=SpacePolicy(wbits=(100, 200)))
    assert none_fit.wbits == tuple(sorted(prof.weight_bits))
    assert DEFAULT_POLICY.criterion == "l1"
