"""QDQ quantization: close to float at 8 bits, on par with ORT's quantizer, real b-bit ranges."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from emomc_onnx import io
from emomc_onnx.api import demo_paths
from emomc_onnx.errors import PlanError, UnsupportedOpError
from emomc_onnx.evaluate.calibration import activation_tensors, calibrate
from emomc_onnx.passes.dequantize import weight_codes
from emomc_onnx.passes.qdq_bits import read_layer_bits
from emomc_onnx.passes.quantize import (
    ACTIVATION_BITS,
    QUANTIZABLE_OPS,
    WEIGHT_BITS,
    LayerBits,
    QuantizePass,
    QuantPlan,
    quantize_model,
    quantize_weight,
)
from tests.models import build

_FUSED = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "MatMulIntegerToFloat",
          "QLinearAdd", "DynamicQuantizeMatMul"}


class _Case:
    """A float model with calibration and evaluation data and its calibrated ranges."""

    def __init__(self, proto: onnx.ModelProto, x: np.ndarray, y: np.ndarray | None, n_calib: int = 200) -> None:
        self.proto = proto
        self.input = proto.graph.input[0].name
        self.calib, self.x, self.y = x[:n_calib], x[n_calib:], None if y is None else y[n_calib:]
        self.names = [n.name for n in proto.graph.node if n.op_type in QUANTIZABLE_OPS]
        self.ranges = calibrate(proto, {self.input: self.calib}, activation_tensors(proto, self.names))

    def run(self, proto: onnx.ModelProto, x: np.ndarray | None = None, optimize: bool = True) -> np.ndarray:
        opts = ort.SessionOptions()
        if not optimize:  # the QDQ semantics exactly, without ORT's fused integer kernels
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return sess.run(None, {self.input: self.x if x is None else x})[0]

    def uniform(self, wbits: int | None, abits: int | None, **kw) -> onnx.ModelProto:
        return quantize_model(self.proto, QuantPlan({n: LayerBits(wbits, abits) for n in self.names}, **kw),
                              self.ranges)


@pytest.fixture(scope="module")
def demo() -> _Case:
    proto = io.load_model(demo_paths()[0]).proto()
    d = np.load(demo_paths()[1])
    return _Case(proto, d["input"].astype(np.float32), d["labels"])


@pytest.fixture(scope="module")
def digits_resnet(tmp_path_factory) -> _Case:
    """A small ResNet-style CNN (projection shortcut, shared block inputs) trained on sklearn digits."""
    torch = pytest.importorskip("torch")
    from sklearn.datasets import load_digits
    from torch import nn

    digits = load_digits()
    x = (digits.images[:, None] / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm], y[perm]
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: threads only contend

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.c1 = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())
            self.c2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout))
            self.short = nn.Conv2d(cin, cout, 1, stride)

        def forward(self, t):
            return torch.relu(self.c2(self.c1(t)) + self.short(t))

    net = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1), nn.ReLU(), Block(16, 16, 1), Block(16, 32, 2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    train_x, train_y = torch.from_numpy(x[700:]), torch.from_numpy(y[700:])
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared: one core trains it in a few seconds
    try:
        net.train()
        for _ in range(8):
            for i in range(0, len(train_x), 64):
                opt.zero_grad()
                nn.functional.cross_entropy(net(train_x[i:i + 64]), train_y[i:i + 64]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    net.eval()
    torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("digits") / "resnet.onnx"
    torch.onnx.export(net, torch.from_numpy(x[:1]), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}}, opset_version=17, dynamo=False)
    return _Case(io.load_model(path).proto(), x[:700], y[:700])


def _sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    return float(10 * np.log10((ref**2).sum() / ((ref - out) ** 2).sum()))


def _ort_static(case: _Case) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{case.input: case.calib[i:i + 50]} for i in range(0, len(case.calib), 50)])

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "f.onnx"), os.path.join(tmp, "q.onnx")
        onnx.save(case.proto, src)
        quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return onnx.load(dst)


@pytest.mark.parametrize("which", ["demo", "digits_resnet"])
def test_8bit_close_to_float_and_on_par_with_ort(which, request) -> None:
    case: _Case = request.getfixturevalue(which)
    ref = case.run(case.proto)
    q = case.uniform(8, 8)
    onnx.checker.check_model(q, full_check=True)
    ort_q = _ort_static(case)
    acc = {}
    for optimize in (True, False):  # as ORT deploys it (fused kernels) and as the QDQ graph says
        ours, theirs = case.run(q, optimize=optimize), case.run(ort_q, optimize=optimize)
        acc_f, acc_o, acc_t = ((o.argmax(1) == case.y).mean() for o in (ref, ours, theirs))
        assert acc_f > 0.9  # the model is really trained: the accuracy comparison means something
        assert acc_o >= acc_f - 0.005, (optimize, acc_o, acc_f)
        assert acc_o >= acc_t - 0.003, (optimize, acc_o, acc_t)
        assert _sqnr(ref, ours) >= _sqnr(ref, theirs) - 1.0, (optimize, _sqnr(ref, ours), _sqnr(ref, theirs))
        acc[optimize] = acc_o
    # uint8 8-bit weights run on ORT's U8U8 kernels: fused and unfused execution agree
    assert abs(acc[True] - acc[False]) <= 0.003, acc
    # negative control: the float model is not what we ran (the QDQ model really differs)
    assert not np.array_equal(case.run(q, optimize=False), ref)


def test_lower_bits_degrade_and_ranges_are_real(demo, digits_resnet) -> None:
    """SQNR falls with the bits (8 > 6 > 4 > 2) on average over both models, and on each one;
    every model passes the checker and stores exactly the b-bit integer range."""
    sq = {b: [] for b in (8, 6, 4, 2)}
    for case in (demo, digits_resnet):
        ref = case.run(case.proto, optimize=False)
        for b in sq:
            q = case.uniform(b, max(b, 4))
            onnx.checker.check_model(q, full_check=True)
            sq[b].append(_sqnr(ref, case.run(q, optimize=False)))
            inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
            weights = [n.input[1] for n in q.graph.node if n.op_type in QUANTIZABLE_OPS]
            producers = {o: n for n in q.graph.node for o in n.output}
            codes_of = weight_codes(q)  # stored codes minus zero point
            for w in weights:
                codes = inits[producers[w].input[0]]
                assert codes.dtype == (np.uint8 if b == 8 else np.int8)  # 8 bits: U8U8 (zero point 128)
                assert np.abs(codes_of[w]).max() == 2 ** (b - 1) - 1  # exactly the b-bit range
        assert sq[8][-1] > sq[6][-1] > sq[4][-1] > sq[2][-1], sq
    mean = {b: np.mean(v) for b, v in sq.items()}
    assert mean[8] > mean[6] > mean[4] > mean[2]


def _expected_abits(proto: onnx.ModelProto, plan: dict[str, LayerBits]) -> dict[str, int | None]:
    """A layer's activation bits: the widest quantized bits among the plan's layers sharing its input."""
    node_in = {n.name: n.input[0] for n in proto.graph.node if n.name in plan}
    active = {k: lb.abits for k, lb in plan.items() if lb.abits is not None and lb.abits < 16}
    out = {}
    for name, lb in plan.items():
        if lb.abits is None or lb.abits == 16:
            out[name] = lb.abits
        else:
            out[name] = max(b for k, b in active.items() if node_in[k] == node_in[name])
    return out


_BITS = st.tuples(st.sampled_from((None, *WEIGHT_BITS)), st.sampled_from((None, *ACTIVATION_BITS)))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), per_channel=st.booleans(), symmetric=st.booleans())
def test_random_plans_are_valid_and_read_back(data, per_channel, symmetric) -> None:
    """Any plan (float sides, 2..16 bits, shared block inputs): checker, ORT, exact codes, read-back."""
    fx = build("resnet")
    proto = _resnet_proto()
    names = [n.name for n in proto.graph.node if n.op_type in QUANTIZABLE_OPS]
    plan = {n: LayerBits(*data.draw(_BITS)) for n in data.draw(st.lists(st.sampled_from(names), unique=True))}
    x = fx.inputs(16, 0)["input"]
    ranges = _resnet_ranges(proto, names)
    before = proto.SerializeToString()
    q = quantize_model(proto, QuantPlan(plan, per_channel=per_channel, symmetric_activations=symmetric), ranges)
    assert proto.SerializeToString() == before  # the input model is untouched
    onnx.checker.check_model(q, full_check=True)
    sess = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x})[0]
    assert out.shape == (16, 10) and np.isfinite(out).all()
    # the graph boundary stays float
    assert [i.type.tensor_type.elem_type for i in q.graph.input] == [onnx.TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in q.graph.output] == [onnx.TensorProto.FLOAT]
    # the stored codes span exactly the b-bit range
    inits = {t.name: t for t in q.graph.initializer}
    producers = {o: n for n in q.graph.node for o in n.output}
    nodes = {n.name: n for n in q.graph.node}
    for name, lb in plan.items():
        dq = producers.get(nodes[name].input[1])
        if lb.wbits is None:
            assert dq is None or dq.op_type != "DequantizeLinear"
            continue
        codes = weight_codes(q)[nodes[name].input[1]]
        assert np.abs(codes).max() == 2 ** (lb.wbits - 1) - 1
        want = {16: onnx.TensorProto.INT16, 8: onnx.TensorProto.UINT8}.get(lb.wbits, onnx.TensorProto.INT8)
        assert inits[dq.input[0]].data_type == want
        assert (dq.domain == "com.microsoft") == (lb.wbits == 16)  # opset 17: int16 via ORT's domain
        assert {p.key: p.value for p in nodes[name].metadata_props}["emomc.wbits"] == str(lb.wbits)
    got = read_layer_bits(q)
    expected_a = _expected_abits(proto, plan)
    for name, lb in plan.items():
        if lb.wbits is None and lb.abits is None:
            assert name not in got
            continue
        assert got[name] == LayerBits(lb.wbits, expected_a[name]), (name, lb)
    assert set(got) <= set(plan)  # layers outside the plan stay float


_RANGES: dict[str, dict] = {}


def _resnet_proto() -> onnx.ModelProto:
    """The ResNet fixture (random weights; projection and identity shortcuts) as imported."""
    if "proto" not in _RANGES:
        _RANGES["proto"] = io.load_model(build("resnet").path).proto()
    return _RANGES["proto"]


def _resnet_ranges(proto: onnx.ModelProto, names: list[str]) -> dict:
    if "resnet" not in _RANGES:
        x = build("resnet").inputs(64, 1)["input"]
        _RANGES["resnet"] = calibrate(proto, {"input": x}, activation_tensors(proto, names))
    return _RANGES["resnet"]


def test_shared_tensor_gets_one_qdq_pair_and_float_layers_read_float() -> None:
    proto = _resnet_proto()
    names = [n.name for n in proto.graph.node if n.op_type in QUANTIZABLE_OPS]
    ranges = _resnet_ranges(proto, names)
    readers: dict[str, list[str]] = {}
    for n in proto.graph.node:
        if n.name in names:
            readers.setdefault(n.input[0], []).append(n.name)
    tensor, (a, b, *_) = next((t, r) for t, r in readers.items() if len(r) >= 2)
    q = quantize_model(proto, QuantPlan({a: LayerBits(8, 6), b: LayerBits(4, 8)}), ranges)
    quants = [n for n in q.graph.node if n.op_type == "QuantizeLinear" and
              (n.input[0] == tensor or n.input[0] == f"{tensor}_clipped")]
    assert len(quants) == 1  # one pair for both readers, at the wider 8 bits
    assert read_layer_bits(q)[a].abits == read_layer_bits(q)[b].abits == 8
    # a float (None) or 16-bit-float reader keeps the float tensor while the other is quantized
    for float_side in (None, 16):
        q = quantize_model(proto, QuantPlan({a: LayerBits(8, 6), b: LayerBits(8, float_side)}), ranges)
        node_b = next(n for n in q.graph.node if n.name == b)
        assert node_b.input[0] == tensor
        got = read_layer_bits(q)
        assert got[a].abits == 6 and got[b].abits == float_side


def test_ort_fuses_8bit_qdq(demo) -> None:
    """ORT's CPU graph optimiser turns our 8-bit Conv/Gemm and MatMul QDQ groups into integer kernels."""
    ffn = io.load_model(build("transformer_ffn").path).proto()
    ffn_names = [n.name for n in ffn.graph.node if n.op_type in QUANTIZABLE_OPS]
    ffn_x = build("transformer_ffn").inputs(32, 0)
    ffn_q = quantize_model(ffn, QuantPlan({n: LayerBits(8, 8) for n in ffn_names}),
                           calibrate(ffn, ffn_x, activation_tensors(ffn, ffn_names)))
    for q, float_ops in ((demo.uniform(8, 8), {"Conv", "Gemm"}), (ffn_q, {"MatMul", "Gemm"})):
        with tempfile.TemporaryDirectory() as tmp:
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            opts.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
            ort.InferenceSession(q.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            ops = [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
        assert set(ops) & _FUSED, ops
        assert not set(ops) & float_ops, ops  # every quantized layer was fused
    # negative control: a float model is not fused into integer kernels
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
        ort.InferenceSession(demo.proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        assert not {n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node} & _FUSED


@settings(max_examples=40, deadline=None)
@example(bits=3, rows=2, cols=2, per_channel=False, seed=2949, method="mse")  # extremes were counted twice
@given(bits=st.sampled_from(WEIGHT_BITS), rows=st.integers(1, 6), cols=st.integers(1, 40),
       per_channel=st.booleans(), seed=st.integers(0, 2**16), method=st.sampled_from(["mse", "maxabs"]))
def test_quantize_weight_range_and_error(bits, rows, cols, per_channel, seed, method) -> None:
    rng = np.random.default_rng(seed)
    w = (rng.standard_t(3, size=(rows, cols)) * rng.uniform(1e-3, 10)).astype(np.float32)
    codes, scale = quantize_weight(w, bits, 0 if per_channel else None, method)
    qmax = 2 ** (bits - 1) - 1
    assert codes.shape == w.shape and codes.dtype == (np.int8 if bits <= 8 else np.int16)
    mags = np.abs(codes.astype(int)).max(axis=1) if per_channel else np.abs(codes.astype(int)).max()
    assert np.all(mags == qmax)  # the largest weight saturates: codes span exactly b bits
    deq = codes * (scale[:, None] if per_channel else scale)
    # never worse than plain max-abs scaling
    ref_codes, ref_scale = quantize_weight(w, bits, 0 if per_channel else None, "maxabs")
    ref = ref_codes * (ref_scale[:, None] if per_channel else ref_scale)
    assert ((deq - w) ** 2).sum() <= ((ref - w) ** 2).sum() * (1 + 1e-5) + 1e-12


def test_weight_scale_search_beats_maxabs() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_t(3, size=(16, 64)).astype(np.float32)  # heavy tails
    for b in (3, 4):
        qm, sm = quantize_weight(w, b, 0, "mse")
        qx, sx = quantize_weight(w, b, 0, "maxabs")
        err_m = ((qm * sm[:, None] - w) ** 2).sum()
        err_x = ((qx * sx[:, None] - w) ** 2).sum()
        assert err_m < 0.95 * err_x


def test_bias_is_int32_with_input_times_weight_scale(demo) -> None:
    q = demo.uniform(8, 8)
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    producers = {o: n for n in q.graph.node for o in n.output}
    convs = [n for n in q.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 2]
    assert convs
    for node in convs:
        bdq, wdq, xdq = (producers[node.input[i]] for i in (2, 1, 0))
        assert inits[bdq.input[0]].dtype == np.int32
        np.testing.assert_allclose(inits[bdq.input[1]], inits[xdq.input[1]] * inits[wdq.input[1]], rtol=1e-6)
    # float activations: no input scale, so the bias stays float
    qw = demo.uniform(8, None)
    assert not any(t.data_type == onnx.TensorProto.INT32 for t in qw.graph.initializer)


def test_sixteen_bits(demo) -> None:
    """16-bit weights: int16 via com.microsoft at opset 17, standard ONNX at opset 21; 16-bit
    activations stay float by default or get a real uint16 Q/DQ pair."""
    from onnx import version_converter

    ref = demo.run(demo.proto, demo.x[:64])
    q17 = demo.uniform(16, 16, activation16="int16")
    p21 = version_converter.convert_version(demo.proto, 21)
    q21 = quantize_model(p21, QuantPlan({n: LayerBits(16, 16) for n in demo.names}, activation16="int16"),
                         demo.ranges)
    for q, domain in ((q17, "com.microsoft"), (q21, "")):
        onnx.checker.check_model(q, full_check=True)
        inits = {t.name: t for t in q.graph.initializer}
        qdq = [n for n in q.graph.node if n.op_type.endswith("quantizeLinear")
               and not (n.input[0] in inits and inits[n.input[0]].data_type == onnx.TensorProto.INT32)]
        assert {n.domain for n in qdq} == {domain}  # (int32 biases use the standard op)
        assert {b for b in read_layer_bits(q).values()} == {LayerBits(16, 16)}
        zps = [t for t in q.graph.initializer if t.name.endswith("_zero_point") and t.dims == []]
        assert zps and all(t.data_type == onnx.TensorProto.UINT16 for t in zps)
        assert _sqnr(ref, demo.run(q, demo.x[:64])) > 60  # 16 bits: nearly float
    qf = demo.uniform(16, 16)  # default: 16-bit activations stay float
    assert not any(n.op_type == "QuantizeLinear" for n in qf.graph.node)
    assert {b for b in read_layer_bits(qf).values()} == {LayerBits(16, 16)}


def test_int4_storage_at_opset_21(demo) -> None:
    """At opset 21, 4-bit weights are stored as INT4 tensors and read back as 4 bits."""
    from onnx import version_converter

    p21 = version_converter.convert_version(demo.proto, 21)
    q = quantize_model(p21, QuantPlan({n: LayerBits(4, 8) for n in demo.names}), demo.ranges)
    onnx.checker.check_model(q, full_check=True)
    int4 = [t for t in q.graph.initializer if t.data_type == onnx.TensorProto.INT4]
    assert len(int4) >= len(demo.names)
    assert all(b.wbits == 4 for b in read_layer_bits(q).values())
    q17 = demo.uniform(4, 8)
    assert not any(t.data_type == onnx.TensorProto.INT4 for t in q17.graph.initializer)
    x = demo.x[:16]
    np.testing.assert_allclose(demo.run(q, x, False), demo.run(q17, x, False), rtol=1e-4, atol=1e-4)


def test_pass_on_ir_model_and_symmetric_activations(demo) -> None:
    model = ir.from_proto(demo.proto)
    before = ir.to_proto(model).SerializeToString()
    q = quantize_model(model, QuantPlan({n: LayerBits(8, 8) for n in demo.names}), demo.ranges)
    assert ir.to_proto(model).SerializeToString() == before  # quantize_model works on a copy
    result = QuantizePass(QuantPlan({demo.names[0]: LayerBits(6, 6)}, symmetric_activations=True,
                                    per_channel=False), demo.ranges)(model)
    assert result.modified and result.model is model  # in place
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    zps = {t.name: t for t in proto.graph.initializer if t.name.endswith("_zero_point")
           and t.data_type != onnx.TensorProto.INT32}  # (not the int32 bias)
    assert all(t.data_type == onnx.TensorProto.INT8 for t in zps.values())  # symmetric: int8, zero point 0
    assert read_layer_bits(proto) == {demo.names[0]: LayerBits(6, 6)}
    assert read_layer_bits(q) == {n: LayerBits(8, 8) for n in demo.names}
    assert demo.run(proto, demo.x[:4]).shape == (4, 10)


def test_bad_plans(demo) -> None:
    relu = next(n.name for n in demo.proto.graph.node if n.op_type == "Relu")
    with pytest.raises(PlanError, match="'nope', not a node"):
        quantize_model(demo.proto, QuantPlan({"nope": LayerBits(8, 8)}), demo.ranges)
    with pytest.raises(PlanError, match=f"{relu}.*not a compute layer"):
        quantize_model(demo.proto, QuantPlan({relu: LayerBits(8, 8)}), demo.ranges)
    for wb, ab, what in ((9, 8, "weight bits 9"), (1, 8, "weight bits 1"), (8, 3, "activation bits 3"),
                         (8, 32, "activation bits 32")):
        with pytest.raises(PlanError, match=f"{demo.names[0]}: {what}"):
            QuantPlan({demo.names[0]: LayerBits(wb, ab)})
    with pytest.raises(PlanError, match="LayerBits"):
        QuantPlan({demo.names[0]: (8, 8)})
    with pytest.raises(PlanError, match="weight_scale"):
        QuantPlan({}, weight_scale="percentile")
    with pytest.raises(PlanError, match="no calibrated range"):
        quantize_model(demo.proto, QuantPlan({demo.names[1]: LayerBits(8, 8)}), {})
    # weights-only needs no ranges
    assert read_layer_bits(quantize_model(demo.proto, QuantPlan({demo.names[1]: LayerBits(5, None)}), {})) == \
        {demo.names[1]: LayerBits(5, None)}
    old = onnx.ModelProto()
    old.CopyFrom(build("old_opset").proto)  # as written (opset 7); io.load_model would upgrade it
    old.graph.node[0].name = "conv0"
    with pytest.raises(UnsupportedOpError, match="opset >= 13"):
        quantize_model(old, QuantPlan({"conv0": LayerBits(8, None)}), {})


def test_8bit_weights_avoid_u8s8_saturation(digits_resnet) -> None:
    """ORT's x86 U8S8 kernels (no VNNI) saturate int16 pair sums; the default U8U8 storage does
    not, so the fused 8-bit model matches the exact QDQ semantics. The int8 option stays
    available and reads back as the same 8 bits."""
    case = digits_resnet
    ref = case.run(case.proto)
    u8 = case.uniform(8, 8)
    s8 = case.uniform(8, 8, weight8_unsigned=False)
    assert _sqnr(ref, case.run(u8)) > _sqnr(ref, case.run(u8, optimize=False)) - 1.0
    np.testing.assert_array_equal(case.run(u8, optimize=False), case.run(s8, optimize=False))  # same codes
    assert read_layer_bits(u8) == read_layer_bits(s8) == {n: LayerBits(8, 8) for n in case.names}
    s8_types = {t.data_type for t in s8.graph.initializer if t.name.endswith("_quantized")}
    assert onnx.TensorProto.INT8 in s8_types and onnx.TensorProto.UINT8 not in s8_types


def test_output_read_only_by_relu_uses_levels_on_positive_half(demo, digits_resnet) -> None:
    """A layer output read only by a ReLU is quantized on [0, max] (zero point 0), as ORT's
    quantizer does by folding the ReLU; an output read by an Add keeps its negative half."""
    checked = {"relu": 0, "other": 0}
    for case in (demo, digits_resnet):
        q = case.uniform(8, 8)
        consumers: dict[str, list[str]] = {}
        for n in case.proto.graph.node:
            for t in n.input:
                consumers.setdefault(t, []).append(n.op_type)
        inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
        for node in case.proto.graph.node:
            if node.name not in case.names or node.output[0] not in case.ranges:
                continue
            t = node.output[0]
            qnode = next((n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == t), None)
            if qnode is None or case.ranges[t][0] >= 0:
                continue
            zp = int(inits[qnode.input[2]])
            if consumers[t] == ["Relu"]:
                assert zp == 0, t
                checked["relu"] += 1
            else:
                assert zp > 0, (t, consumers[t])
                checked["other"] += 1
    assert checked["relu"] and checked["other"], checked
