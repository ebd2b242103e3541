"""Non-compute ops: listed per op with their traffic at their precision and their MACs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from rich.console import Console

from emomc_onnx.cost import load_profile, render, to_dict
from emomc_onnx.cost.from_onnx import cost_model, cost_other_ops

RNG = np.random.default_rng(0)


def _transformer_block() -> onnx.ModelProto:
    """x[1,8,16] -> Q/DQ(uint8) -> LayerNorm -> MatMul(W) -> self-attention scores (x x^T),
    Softmax, context (p x), Add residual, Mul, Relu, MaxPool-free CNN tail via Reshape/Concat/
    Resize."""
    d, t = 16, 8
    w = nh.from_array(RNG.normal(0, 0.2, (d, d)).astype(np.float32), "w")
    g = nh.from_array(np.ones(d, np.float32), "gamma")
    b = nh.from_array(np.zeros(d, np.float32), "beta")
    s = nh.from_array(np.array(0.05, np.float32), "s")
    z = nh.from_array(np.array(128, np.uint8), "z")
    two = nh.from_array(np.array(2.0, np.float32), "two")
    shape = nh.from_array(np.array([1, 2, 8, 8], np.int64), "shape4")
    scales = nh.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [
        h.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="xq"),
        h.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="xd"),
        h.make_node("LayerNormalization", ["xd", "gamma", "beta"], ["ln"], name="ln", axis=-1),
        h.make_node("MatMul", ["ln", "w"], ["proj"], name="proj"),
        h.make_node("Transpose", ["proj"], ["projT"], name="tr", perm=[0, 2, 1]),
        h.make_node("MatMul", ["proj", "projT"], ["scores"], name="scores"),
        h.make_node("Softmax", ["scores"], ["probs"], name="softmax", axis=-1),
        h.make_node("MatMul", ["probs", "proj"], ["ctx"], name="context"),
        h.make_node("Add", ["ctx", "xd"], ["res"], name="residual"),
        h.make_node("Mul", ["res", "two"], ["scaled"], name="scale"),
        h.make_node("Relu", ["scaled"], ["act"], name="relu"),
        h.make_node("Reshape", ["act", "shape4"], ["img"], name="to_img"),
        h.make_node("Concat", ["img", "img"], ["cat"], name="concat", axis=1),
        h.make_node("Resize", ["cat", "", "scales"], ["y"], name="resize", mode="nearest"),
    ]
    graph = h.make_graph(nodes, "block", [h.make_tensor_value_info("x", T.FLOAT, [1, t, d])],
                         [h.make_tensor_value_info("y", T.FLOAT, [1, 4, 16, 16])],
                         [w, g, b, s, z, two, shape, scales])
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", 21)])
    m.ir_version = 10
    onnx.checker.check_model(m, full_check=True)
    return m


def test_other_ops_listed_with_traffic_bits_and_macs() -> None:
    m = _transformer_block()
    ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": RNG.normal(size=(1, 8, 16)).astype(np.float32)})
    prof = load_profile("eyeriss")
    cost = cost_model(m, prof)
    assert [r.name for r in cost.layers] == ["proj"]  # the only layer with a constant weight
    ops = {r.name: r for r in cost.other_ops}
    assert set(ops) == {"ln", "tr", "scores", "softmax", "context", "residual", "scale", "relu",
                        "concat", "resize"}
    assert {n for n, _, _ in cost.ignored} == {"to_img"}  # Reshape moves nothing
    # attention: scores = proj[8x16] x projT[16x8] -> 8*8*16 MACs; context = probs[8x8] x proj
    assert ops["scores"].macs == 8 * 8 * 16 and ops["context"].macs == 8 * 16 * 8
    assert ops["softmax"].macs == 0
    # LayerNorm reads the uint8 activations (the Q/DQ in front), the rest are 16-bit floats
    assert ops["ln"].bits == 8 and ops["softmax"].bits == 16
    assert (ops["ln"].in_elems, ops["ln"].out_elems) == (128, 128)
    assert (ops["concat"].in_elems, ops["concat"].out_elems) == (256, 256)
    assert (ops["resize"].in_elems, ops["resize"].out_elems) == (256, 1024)  # constants not traffic
    dram = prof.level("dram")
    e = 128 * dram.energy_per_element(8) + 128 * dram.energy_per_element(8, write=True)
    assert ops["ln"].energy == pytest.approx(e)
    mac = prof.mac.energy(16, 16)
    e_scores = (128 + 128) * dram.energy_per_element(16) + 64 * dram.energy_per_element(16, True)
    assert ops["scores"].energy == pytest.approx(e_scores + 1024 * mac)
    assert cost.other_energy == pytest.approx(sum(r.energy for r in cost.other_ops))
    assert cost.energy == pytest.approx(sum(r.energy for r in cost.layers) + cost.other_energy)
    assert cost.macs == cost.layers[0].macs + 2 * 1024
    # batch: traffic and MACs per image times the batch
    b4 = cost_model(m, prof, batch=4)
    assert b4.other_energy == pytest.approx(4 * cost.other_energy)
    assert sum(r.energy for r in b4.other_ops) == pytest.approx(b4.other_energy)
    # shown by profile's renderer and in the JSON
    console = Console(width=160, record=True)
    render(cost, console)
    text = console.export_text()
    assert "other ops" in text and "softmax" in text and "Softmax" in text
    assert to_dict(cost)["other_ops"][0]["name"] in ops


def test_emomc_profile_lists_but_does_not_cost_other_ops() -> None:
    m = _transformer_block()
    cost = cost_model(m, load_profile("emomc"), dataflow="xy")
    assert cost.other_energy == 0 and not cost.other_ops
    assert any("compute layers only" in r for _, _, r in cost.ignored)


def test_unknown_sizes_are_reported_not_zero() -> None:
    m = _transformer_block()
    m.graph.input[0].type.tensor_type.shape.dim[1].ClearField("dim_value")
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "T"
    ops = cost_other_ops(m, [])
    assert any(op.in_elems is None for op in ops)
    fixed = cost_other_ops(m, [], input_shapes={"x": (1, 8, 16)})
    assert all(op.in_elems is not None for op in fixed if op.op_type != "Reshape")
