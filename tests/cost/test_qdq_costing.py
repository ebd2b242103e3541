"""Costing any QDQ graph the way ONNX Runtime executes it (issue 11: a peer's QDQ output).

Each model is built to have one shape seen in peers' files: blocked DequantizeLinear
(opset 21 ``block_size``), asymmetric uint8 weights, QuantizeLinear -> DequantizeLinear on a
float constant, activations passing MaxPool / Reshape between their Q/DQ and the layer, and
ONNX Runtime's own ``quantize_static`` output. The float weights the cost model dequantizes
are checked against what ORT computes from the same DequantizeLinear.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from emomc_onnx.cost import load_profile
from emomc_onnx.cost.from_onnx import cost_layers, cost_model
from emomc_onnx.passes.dequantize import const_weights, float_view
from emomc_onnx.passes.qdq_bits import read_layer_bits, read_qparam_elems
from emomc_onnx.passes.quantize import LayerBits

RNG = np.random.default_rng(0)
W_SHAPE = (8, 4, 3, 3)


def _model(weight_nodes, weight_inits, act_path=("x_dq",), extra_nodes=(), opset=21):
    """x -> Q -> DQ -> [extra] -> Conv(weight 'w') -> y; the weight made by ``weight_nodes``."""
    x_s = nh.from_array(np.array(0.05, np.float32), "x_s")
    x_z = nh.from_array(np.array(128, np.uint8), "x_z")
    nodes = [
        h.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["x_q"], name="x_q"),
        h.make_node("DequantizeLinear", ["x_q", "x_s", "x_z"], ["x_dq"], name="x_dq"),
        *extra_nodes,
        *weight_nodes,
        h.make_node("Conv", [act_path[-1], "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    g = h.make_graph(nodes, "qdq", [h.make_tensor_value_info("x", T.FLOAT, [1, 4, 8, 8])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 8, 8, 8])], [x_s, x_z, *weight_inits])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 10
    onnx.checker.check_model(m)
    return m


def _ort_weight(model: onnx.ModelProto) -> np.ndarray:
    """The dequantized weight 'w' as ONNX Runtime computes it."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(h.make_tensor_value_info("w", T.FLOAT, list(W_SHAPE)))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x = RNG.normal(size=(1, 4, 8, 8)).astype(np.float32)
    return sess.run(["w"], {"x": x})[0]


def _dq(codes, scale, zp, **attrs):
    inits = [nh.from_array(codes, "w_q"), nh.from_array(scale, "w_s")]
    ins = ["w_q", "w_s"]
    if zp is not None:
        inits.append(nh.from_array(zp, "w_z"))
        ins.append("w_z")
    return [h.make_node("DequantizeLinear", ins, ["w"], name="w_dq", **attrs)], inits


def _int4(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return h.make_tensor(name, T.INT4, arr.shape, arr.ravel().tolist())


def test_blocked_dequantize_linear_int4() -> None:
    codes = RNG.integers(-7, 8, size=W_SHAPE).astype(np.int8)
    codes[0, 0, 0, 0] = -7
    scale = RNG.uniform(0.01, 0.1, size=(8, 2, 3, 3)).astype(np.float32)  # blocks of 2 along C
    node = h.make_node("DequantizeLinear", ["w_q", "w_s"], ["w"], name="w_dq", axis=1, block_size=2)
    m = _model([node], [_int4("w_q", codes), nh.from_array(scale, "w_s")])
    cw = const_weights(m)["w"]
    np.testing.assert_allclose(cw.dequantized(), _ort_weight(m), rtol=1e-6)
    assert read_layer_bits(m)["conv"].wbits == 4
    assert read_qparam_elems(m)["conv"] == scale.size + 2  # + the input's scale and zero point
    prof = load_profile("eyeriss")
    (lay,) = cost_layers(m, prof)
    assert lay.wbits == 4 and lay.abits == 8 and lay.qparam_elems == scale.size + 2
    rep = cost_model(m, prof, coding="dense").layers[0]
    assert rep.size_bits == codes.size * 4 + (scale.size + 2) * prof.qparam_bits


@pytest.mark.parametrize("per_channel", [False, True])
def test_asymmetric_uint8_weights_read_as_8_bits(per_channel: bool) -> None:
    codes = RNG.integers(0, 256, size=W_SHAPE).astype(np.uint8)
    codes[:, 0, 0, 0] = 0
    codes[:, 0, 0, 1] = 255
    if per_channel:
        zp = RNG.integers(0, 60, size=8).astype(np.uint8)
        scale = RNG.uniform(0.01, 0.1, size=8).astype(np.float32)
        nodes, inits = _dq(codes, scale, zp, axis=0)
    else:
        nodes, inits = _dq(codes, np.array(0.02, np.float32), np.array(0, np.uint8))
    m = _model(nodes, inits)
    np.testing.assert_allclose(const_weights(m)["w"].dequantized(), _ort_weight(m), rtol=1e-6)
    assert read_layer_bits(m)["conv"].wbits == 8
    assert cost_layers(m, load_profile("eyeriss"))[0].wbits == 8


def test_symmetric_int8_at_fewer_bits_still_read_as_such() -> None:
    codes = RNG.integers(-15, 16, size=W_SHAPE).astype(np.int8)
    codes[0, 0, 0, 0] = 15
    nodes, inits = _dq(codes, np.array(0.02, np.float32), np.array(0, np.int8))
    assert read_layer_bits(_model(nodes, inits))["conv"].wbits == 5


@pytest.mark.parametrize(("qtype", "bits"), [(T.INT8, 8), (T.INT4, 4), (T.UINT8, 8)])
def test_quantize_dequantize_of_float_weight(qtype: int, bits: int) -> None:
    w = RNG.normal(0, 0.3, size=W_SHAPE).astype(np.float32)
    scale = np.float32(np.abs(w).max() / (2 ** (bits - 1) - 1))
    zp_val = 128 if qtype == T.UINT8 else 0
    zp = h.make_tensor("w_z", qtype, (), [zp_val])
    nodes = [h.make_node("QuantizeLinear", ["w_f", "w_s", "w_z"], ["w_qq"], name="w_q"),
             h.make_node("DequantizeLinear", ["w_qq", "w_s", "w_z"], ["w"], name="w_dq")]
    m = _model(nodes, [nh.from_array(w, "w_f"), nh.from_array(np.array(scale), "w_s"), zp])
    cw = const_weights(m)["w"]
    np.testing.assert_allclose(cw.dequantized(), _ort_weight(m), rtol=1e-6, atol=1e-7)
    assert cw.container == bits
    assert read_layer_bits(m)["conv"].wbits == bits
    (lay,) = cost_layers(m, load_profile("eyeriss"))
    assert lay.wbits == bits and lay.weight is not None
    assert np.issubdtype(lay.weight.dtype, np.integer)  # codes, not the float constant
    # the float view keeps the layer (its weight: the dequantized constant)
    view = float_view(m)
    assert [n.op_type for n in view.graph.node] == ["Conv"]


@pytest.mark.parametrize("between", [["MaxPool"], ["Relu", "MaxPool"], ["Reshape"]])
def test_activation_bits_through_bit_preserving_ops(between: list[str]) -> None:
    extra, inits, src = [], [], "x_dq"
    for i, op in enumerate(between):
        out = f"t{i}"
        if op == "MaxPool":
            extra.append(h.make_node("MaxPool", [src], [out], name=f"op{i}", kernel_shape=[1, 1]))
        elif op == "Reshape":
            inits.append(nh.from_array(np.array([1, 4, 8, 8], np.int64), "shape"))
            extra.append(h.make_node("Reshape", [src, "shape"], [out], name=f"op{i}"))
        else:
            extra.append(h.make_node(op, [src], [out], name=f"op{i}"))
        src = out
    codes = RNG.integers(-127, 128, size=W_SHAPE).astype(np.int8)
    nodes, winits = _dq(codes, np.array(0.02, np.float32), np.array(0, np.int8))
    m = _model(nodes, [*winits, *inits], act_path=(src,), extra_nodes=extra)
    assert read_layer_bits(m)["conv"] == LayerBits(8, 8)
    assert cost_layers(m, load_profile("eyeriss"))[0].abits == 8
    # Negative case: an op that computes new values (Sigmoid) ends the quantized path.
    extra2 = [*extra, h.make_node("Sigmoid", [src], ["sg"], name="sg")]
    m2 = _model(nodes, [*winits, *inits], act_path=("sg",), extra_nodes=extra2)
    assert read_layer_bits(m2)["conv"].abits is None
    assert cost_layers(m2, load_profile("eyeriss"))[0].abits == 16


# --------------------------------------------------------------------------- ORT's output


def _float_cnn() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    w1 = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 8).astype(np.float32)
    w2 = rng.normal(0, 0.3, (16, 8, 3, 3)).astype(np.float32)
    w3 = rng.normal(0, 0.3, (10, 16 * 4 * 4)).astype(np.float32)
    nodes = [h.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             h.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             h.make_node("MaxPool", ["r2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("Flatten", ["p2"], ["f"], name="flat"),
             h.make_node("Gemm", ["f", "w3"], ["y"], name="fc", transB=1)]
    g = h.make_graph(nodes, "cnn", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 16, 16])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 10])],
                     [nh.from_array(w1, "w1"), nh.from_array(b1, "b1"), nh.from_array(w2, "w2"),
                      nh.from_array(w3, "w3")])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 21)])
    m.ir_version = 10
    return m


@pytest.mark.parametrize(
    ("wtype", "per_channel", "wbits"),
    [("QUInt8", True, 8), ("QInt8", False, 8), ("QUInt8", False, 8), ("QInt8", True, 8), ("QInt4", True, 4)],
)
def test_ort_quantize_static_output_costs(tmp_path, wtype: str, per_channel: bool, wbits: int) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"x": np.random.default_rng(i).normal(size=(1, 3, 16, 16)).astype(np.float32)}
                            for i in range(4)])

        def get_next(self):
            return next(self.it, None)

    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(_float_cnn(), src)
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    weight_type=getattr(QuantType, wtype), activation_type=QuantType.QUInt8)
    q = onnx.load(dst)
    prof = load_profile("eyeriss")
    layers = cost_layers(q, prof)
    assert [c.layer.name for c in layers] == ["conv1", "conv2", "fc"]
    assert [(c.wbits, c.abits) for c in layers] == [(wbits, 8)] * 3
    # every weight scale (and zero point) plus the input's pair are charged
    per_w = [8, 16, 10] if per_channel else [1, 1, 1]
    assert [c.qparam_elems for c in layers] == [2 * n + 2 for n in per_w]
    cost = cost_model(q, prof, coding="dense")
    for c, r in zip(layers, cost.layers):
        assert r.overhead_bits == c.bias_elems * prof.bias_bits + c.qparam_elems * prof.qparam_bits
        assert r.weight_bits_by_coding["dense"] == c.n_weights * wbits
    # the dequantized weights are ORT's
    ref = {t.name: nh.to_array(t) for t in _float_cnn().graph.initializer}
    view = {t.name: nh.to_array(t) for t in float_view(q).graph.initializer}
    for name in ("w1", "w2", "w3"):
        dq = next(k for k in view if k.startswith(name))
        step = np.abs(ref[name]).max() / (2 ** (wbits - 1) - 1)
        assert np.abs(view[dq] - ref[name]).max() <= step
