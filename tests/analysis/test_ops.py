"""The op registry: one entry per compute op, read by the analysis and every pass."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from emomc_onnx import io
from emomc_onnx.analysis import HANDLERS, analyze
from emomc_onnx.analysis import ops
from emomc_onnx.passes.quantize import QUANTIZABLE_OPS
from emomc_onnx.passes.sparsity import SparsityPlan, SparsityPass


def test_every_prunable_op_has_a_channel_handler():
    for op, spec in ops.COMPUTE_OPS.items():
        if spec.supports("prune"):
            assert op in HANDLERS, f"{op} claims pruning but analysis.dependency has no handler"
        for t in ops.TRANSFORMS:
            assert spec.supports(t) or t in spec.not_supported or t == "recover" and spec.bias_input is None \
                or t in spec.transforms, f"{op}: {t} neither supported nor explained"


def test_registry_refuses_duplicates_and_unknown_transforms():
    conv = ops.COMPUTE_OPS["Conv"]
    with pytest.raises(ValueError, match="already registered"):
        ops.register(conv)
    with pytest.raises(ValueError, match="unknown transforms"):
        ops.register(ops.ComputeOp("Fancy", 1, None, lambda n, d: 0, lambda n, d: 1, 1,
                                   frozenset({"prune", "teleport"})))
    assert "Fancy" not in ops.COMPUTE_OPS


def test_quantizable_ops_come_from_the_registry():
    assert set(QUANTIZABLE_OPS) == {op for op, s in ops.COMPUTE_OPS.items() if s.supports("quantize")}


def _node(op, w, **attrs):
    graph = ir.Graph([], [], nodes=[], name="g")
    x = ir.Value(name="x")
    wv = ir.Value(name="w", const_value=ir.Tensor(w, name="w"))
    node = ir.node(op, [x, wv], attributes=attrs, name="n")
    graph.append(node)
    return node


@settings(max_examples=40, deadline=None)
@given(op=st.sampled_from(["Conv", "ConvTranspose", "GemmT", "Gemm", "MatMul"]),
       o=st.integers(1, 6), i=st.integers(1, 6), k=st.integers(1, 3))
def test_out_in_matrix_rows_are_output_channels(op, o, i, k):
    rng = np.random.default_rng(o * 100 + i * 10 + k)
    attrs = {}
    if op == "Conv":
        w = rng.standard_normal((o, i, k, k))
    elif op == "ConvTranspose":
        w = rng.standard_normal((i, o, k, k))
    elif op == "GemmT":
        op, w, attrs = "Gemm", rng.standard_normal((o, i)), {"transB": 1}
    else:
        w = rng.standard_normal((i, o))
    w = w.astype(np.float32)
    node = _node(op, w, **attrs)
    spec = ops.compute_op(node)
    m, back = ops.out_in_matrix(spec, node, w)
    assert m.shape == (o, i * (k * k if "Conv" in op else 1))
    np.testing.assert_array_equal(back(m), w)
    assert w.shape[spec.out_axis(node, w.ndim)] == o and w.shape[spec.in_axis(node, w.ndim)] == i


def test_gemm_with_transA_is_no_layer_and_says_why():
    node = _node("Gemm", np.ones((3, 4), np.float32), transA=1)
    assert ops.compute_op(node) is None
    assert "transA" in ops.missing_entry(node)


def _lstm_model() -> onnx.ModelProto:
    """Conv -> Squeeze -> LSTM (weights as initializers): a CRNN's shape."""
    rng = np.random.default_rng(0)
    hidden, feat = 4, 8
    inits = [numpy_helper.from_array(rng.standard_normal((feat, 1, 3, 3)).astype(np.float32), "cw"),
             numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, feat)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32), "R"),
             numpy_helper.from_array(np.array([2], np.int64), "ax")]
    nodes = [helper.make_node("Conv", ["x", "cw"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMean", ["c"], ["m"], axes=[2], keepdims=0),  # [N, feat, T]
             helper.make_node("Transpose", ["m"], ["t"], perm=[2, 0, 1]),  # [T, N, feat]
             helper.make_node("LSTM", ["t", "W", "R"], ["y"], name="lstm", hidden_size=hidden)]
    graph = helper.make_graph(nodes, "crnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 1, 1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_weighted_op_without_entry_is_listed_not_free():
    analysis = analyze(io.load_proto(_lstm_model()).model)
    assert [lay.name for lay in analysis.layers] == ["conv"]
    assert "lstm" in analysis.uncovered
    assert "no compute-op entry" in analysis.uncovered["lstm"]
    assert analysis.to_dict()["uncovered"] == analysis.uncovered


def test_sparsity_follows_the_registry_out_axis():
    """block sparsity tiles the [out, in] view: ConvTranspose's outputs are weight axis 1."""
    w = np.arange(1, 2 * 4 * 1 * 1 + 1, dtype=np.float32).reshape(2, 4, 1, 1)  # [I=2, O=4]
    graph = helper.make_graph(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="ct")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3, 3])],
        [numpy_helper.from_array(w, "w")])
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    SparsityPass(SparsityPlan({"ct": 0.5}, pattern="block", block=(1, 2)))(model)
    out = model.graph.initializers["w"].const_value.numpy()[:, :, 0, 0]
    # one output channel (a column here) per tile row, whole input rows kept or dropped together
    kept_outputs = (out != 0).all(axis=0)
    assert kept_outputs.sum() == 2 and ((out != 0).any(axis=0) == kept_outputs).all()
