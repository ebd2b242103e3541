"""Fine-grained magnitude sparsity: exact zero counts, largest kept, identity at density 1."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emomc_onnx.errors import PlanError
from emomc_onnx.passes.sparsity import SparsityPlan, sparsify_model, weight_density
from tests.models import build


def _layers(proto):
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    return {n.name: inits[n.input[1]] for n in proto.graph.node
            if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in inits}


def _proto(name="flatten_gemm"):
    from emomc_onnx import io

    return io.load_proto(build(name).proto).proto()


@settings(max_examples=15, deadline=None)
@given(st.lists(st.floats(0.05, 1.0), min_size=3, max_size=3))
def test_zero_count_equals_plan_and_largest_kept(densities) -> None:
    proto = _proto()
    before = _layers(proto)
    plan = SparsityPlan(density=dict(zip(before, densities)))
    after = _layers(sparsify_model(proto, plan))
    for (name, w), d in zip(before.items(), densities):
        kept = int(round(d * w.size))
        a = after[name]
        assert np.count_nonzero(a) == min(kept, np.count_nonzero(w))
        nz = a != 0
        if nz.any() and (~nz).any():
            assert np.abs(w[nz]).min() >= np.abs(w[~nz]).max()
        assert np.array_equal(a[nz], w[nz])


def test_density_one_is_bit_identical_and_runs() -> None:
    proto = _proto()
    same = sparsify_model(proto, SparsityPlan(density={k: 1.0 for k in _layers(proto)}))
    for k, v in _layers(proto).items():
        assert np.array_equal(_layers(same)[k], v)
    half = sparsify_model(proto, SparsityPlan(density={k: 0.5 for k in _layers(proto)}))
    onnx.checker.check_model(half, full_check=True)
    sess = ort.InferenceSession(half.SerializeToString())
    out = sess.run(None, build("flatten_gemm").inputs(2, 0))[0]
    assert out.shape == (2, 10)
    assert all(abs(d - 0.5) < 0.01 for d in weight_density(half).values())


def test_nm_pattern_keeps_n_of_every_m() -> None:
    proto = _proto()
    out = _layers(sparsify_model(proto, SparsityPlan(density={k: 0.5 for k in _layers(proto)}, pattern="nm")))
    conv = next(v for k, v in out.items() if v.ndim == 4 and v.shape[1] == 8)
    groups = (np.moveaxis(conv, 1, -1).reshape(-1, 2, 4) != 0).sum(-1)
    assert (groups <= 2).all() and (groups == 2).mean() > 0.99


def test_bad_plans_are_refused() -> None:
    proto = _proto()
    with pytest.raises(PlanError, match="not a compute layer"):
        sparsify_model(proto, SparsityPlan(density={"nope": 0.5}))
    name = next(iter(_layers(proto)))
    with pytest.raises(PlanError, match="density"):
        sparsify_model(proto, SparsityPlan(density={name: 0.0}))
    with pytest.raises(PlanError, match="pattern"):
        sparsify_model(proto, SparsityPlan(density={name: 0.5}, pattern="zigzag"))
