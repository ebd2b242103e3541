"""Models shaped like other frameworks' exports: every command must work on them.

Each builder reproduces one trait seen in real exports (PaddleOCR, tf2onnx, old PyTorch
exporters): dimensions stored as -1 or 0, opset 11, Convs without a bias, a batch axis fixed
at 1, weights in Constant nodes, denormal weights. Every written model must pass the checker
and run in ONNX Runtime with the original's signature: another batch size and another width.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from emomc_onnx import api, io
from emomc_onnx.cli import main
from emomc_onnx.errors import ModelError

H, W = 8, 16  # the analysis shape; the models take any width
C = 32  # channels: two multiples of the eyeriss profile (16), so the search can prune


def _dims(spec):
    return [d if isinstance(d, str) else int(d) for d in spec]


def paddle_like(*, opset: int = 11, batch=-1, width=-1, bias: bool = False, constant_weight: bool = True,
                denormal: bool = False, seed: int = 0, computed_reshape: bool = False) -> onnx.ModelProto:
    """Conv(no bias) -> Relu -> Conv(no bias, weight in a Constant node) -> Relu -> GAP -> Flatten -> Gemm.

    ``batch``/``width``: the stored input dims (-1 and 0 as older exporters write "unknown")."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((C, 3, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((C, C, 3, 3)) * 0.1).astype(np.float32)
    if denormal:
        w2[3] = 1e-40  # a dead channel as exporters leave them
        w1[5, 0] = 1e-41
    fc = (rng.standard_normal((C, 10)) * 0.3).astype(np.float32)
    fcb = (rng.standard_normal(10) * 0.1).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(fc, "fc_w"),
             numpy_helper.from_array(fcb, "fc_b")]
    nodes = []
    conv1_in = ["x", "w1"]
    if bias:
        inits.append(numpy_helper.from_array(np.zeros(C, np.float32) + 0.05, "b1"))
        conv1_in.append("b1")
    if constant_weight:
        nodes.append(helper.make_node("Constant", [], ["w2"], value=numpy_helper.from_array(w2, "w2c")))
    else:
        inits.append(numpy_helper.from_array(w2, "w2"))
    nodes += [
        helper.make_node("Conv", conv1_in, ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
    ]
    if computed_reshape:  # Paddle's flatten: Reshape(g, Concat(Slice(Shape(g), 0, 1), [-1])) then MatMul + Add
        inits += [numpy_helper.from_array(np.array([v], np.int64), n) for n, v in
                  (("s0", 0), ("s1", 1), ("m1", -1))]
        nodes += [helper.make_node("Shape", ["g"], ["gs"]),
                  helper.make_node("Slice", ["gs", "s0", "s1"], ["gb"]),
                  helper.make_node("Concat", ["gb", "m1"], ["shp"], axis=0),
                  helper.make_node("Reshape", ["g", "shp"], ["f"]),
                  helper.make_node("MatMul", ["f", "fc_w"], ["mm"], name="fc"),
                  helper.make_node("Add", ["mm", "fc_b"], ["y"])]
    else:
        nodes += [helper.make_node("Flatten", ["g"], ["f"], axis=1),
                  helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, _dims([batch, 3, H, width]))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, _dims([batch, 10]))
    graph = helper.make_graph(nodes, "paddle_like", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="paddle2onnx")
    model.ir_version = 7 if opset < 15 else 8
    onnx.checker.check_model(model)
    return model


def _save(tmp_path, proto, name="m.onnx"):
    p = tmp_path / name
    onnx.save(proto, p)
    return p


def _data(tmp_path, n=48, width=W, seed=1, name="d.npz"):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, H, width)).astype(np.float32)
    p = tmp_path / name
    np.savez(p, x=x)
    return p, x


def _run(path_or_proto, x):
    src = path_or_proto.SerializeToString() if isinstance(path_or_proto, onnx.ModelProto) else str(path_or_proto)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _assert_keeps_signature(path, original: onnx.ModelProto):
    """Checker passes; inputs/outputs as the original's; runs with batch 3 and width 24."""
    model = onnx.load(path)
    onnx.checker.check_model(model)
    want = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in original.graph.input]
    got = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.input]
    assert [len(d) for d in got] == [len(d) for d in want]
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            assert isinstance(a, str) == (isinstance(b, str) or b in (-1, 0)), (got, want)
    x = np.random.default_rng(5).standard_normal((3, 3, H, 24)).astype(np.float32)
    assert _run(path, x).shape == (3, 10)


# ---- import -------------------------------------------------------------------------------
@pytest.mark.parametrize("unknown", [-1, 0])
def test_minus_one_and_zero_dims_read_as_dynamic(tmp_path, unknown):
    path = _save(tmp_path, paddle_like(batch=unknown, width=unknown))
    with pytest.raises(ModelError, match="--input-shape"):  # the width is dynamic: must be given
        api.analyze(path)
    analysis = api.analyze(path, input_shapes=[f"x:1,3,{H},{W}"])
    assert [lay.name for lay in analysis.layers] == ["conv1", "conv2", "fc"]
    assert analysis.layer("conv2").in_spatial == (H, W)
    # a fixed width but a -1 batch needs no --input-shape
    assert len(api.analyze(_save(tmp_path, paddle_like(batch=unknown, width=W), "b.onnx")).layers) == 3


def test_opset11_upgraded_with_equal_outputs(tmp_path):
    proto = paddle_like(opset=11, width=W)
    loaded = io.load_model(_save(tmp_path, proto))
    assert loaded.model.opset_imports[""] >= 13
    x = np.random.default_rng(0).standard_normal((2, 3, H, W)).astype(np.float32)
    np.testing.assert_allclose(_run(loaded.proto(), x), _run(proto, x), rtol=1e-5, atol=1e-5)


def test_opset_upgrade_that_changes_outputs_is_refused(tmp_path, monkeypatch):
    from onnx import version_converter

    real = version_converter.convert_version

    def broken(model, target):
        out = real(model, target)
        for t in out.graph.initializer:
            if t.name == "fc_b":
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + 1.0, "fc_b"))
        return out

    monkeypatch.setattr(version_converter, "convert_version", broken)
    with pytest.raises(ModelError, match="changed the model"):
        io.load_model(_save(tmp_path, paddle_like(opset=11, width=W)))


# ---- commands -----------------------------------------------------------------------------
def _cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


@pytest.mark.parametrize("recovery", ["lsq", "bias"])
def test_prune_with_recovery_keeps_signature(tmp_path, recovery):
    proto = paddle_like(opset=11)
    src = _save(tmp_path, proto)
    data, x = _data(tmp_path)
    out = tmp_path / "p.onnx"
    _cli("prune", src, "--ratio", "0.5", "--recovery", recovery, "--data", data, "--input-shape",
         f"x:1,3,{H},{W}", "-o", out)
    _assert_keeps_signature(out, proto)
    pruned = onnx.load(out)
    w = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    conv2 = [n for n in pruned.graph.node if n.op_type == "Conv"][1]
    assert w[conv2.input[1]].shape[:2] == (C // 2, C // 2)
    # recovery gave conv2 (no bias in the file) a bias; it is cut with conv2's output channels
    assert len(conv2.input) == 3 and w[conv2.input[2]].shape == (C // 2,)


def test_prune_a_model_whose_reshape_is_computed(tmp_path):
    """The pruned model keeps computing its Reshape from Shape; the analysis after pruning still
    sees every shape (inferred on a folded copy with the --input-shape values)."""
    proto = paddle_like(opset=11, computed_reshape=True)
    src = _save(tmp_path, proto)
    data, x = _data(tmp_path)
    out = tmp_path / "p.onnx"
    result = _cli("prune", src, "--ratio", "0.5", "--recovery", "lsq", "--data", data, "--input-shape",
                  f"x:1,3,{H},{W}", "-o", out)
    assert "MACs" in result.output
    _assert_keeps_signature(out, proto)
    assert any(n.op_type == "Shape" for n in onnx.load(out).graph.node)  # still computed at run time


def test_recovery_on_a_model_with_batch_fixed_at_one(tmp_path):
    proto = paddle_like(opset=13, batch=1, width=W, constant_weight=False)
    src = _save(tmp_path, proto)
    data, x = _data(tmp_path, n=70)  # more than one 64-sample calibration batch
    out = tmp_path / "p.onnx"
    _cli("prune", src, "--ratio", "0.25", "--sparsity", "0.3", "--recovery", "lsq", "--data", data, "-o", out)
    y = _run(out, x[:1])
    assert y.shape == (1, 10) and np.isfinite(y).all()


@pytest.mark.parametrize("wbits", [8, 4])
def test_quantize_opset11_model(tmp_path, wbits):
    proto = paddle_like(opset=11)
    src = _save(tmp_path, proto)
    data, x = _data(tmp_path)
    out = tmp_path / "q.onnx"
    _cli("quantize", src, "--wbits", wbits, "--abits", 8, "--data", data, "--input-shape", f"x:1,3,{H},{W}",
         "-o", out)
    _assert_keeps_signature(out, proto)
    q = onnx.load(out)
    assert any(n.op_type == "DequantizeLinear" for n in q.graph.node)
    opset = next(o.version for o in q.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 13
    ref = _run(proto, x[:8])
    assert np.corrcoef(_run(out, x[:8]).ravel(), ref.ravel())[0, 1] > 0.9


def test_profile_reads_constant_node_weights(tmp_path):
    src = _save(tmp_path, paddle_like(opset=11, constant_weight=True))
    result = _cli("profile", src, "--json", "--input-shape", f"x:1,3,{H},{W}")
    layers = {lay["name"]: lay for lay in json.loads(result.output)["layers"]}
    assert set(layers) == {"conv1", "conv2", "fc"}
    assert layers["conv2"]["macs"] == C * C * 9 * H * W


def test_profile_of_a_qdq_model_keeps_its_bits(tmp_path):
    """Import must not fold a peer's DequantizeLinear of a constant weight into a float."""
    proto = paddle_like(opset=13, width=W, constant_weight=False)
    src = _save(tmp_path, proto)
    data, _ = _data(tmp_path)
    q = tmp_path / "q.onnx"
    _cli("quantize", src, "--wbits", 4, "--abits", 8, "--data", data, "-o", q)
    result = _cli("profile", q, "--json")
    bits = {lay["name"]: lay["wbits"] for lay in json.loads(result.output)["layers"]}
    assert bits == {"conv1": 4, "conv2": 4, "fc": 4}


def test_denormal_weights_quantize_without_warnings(tmp_path):
    proto = paddle_like(opset=13, width=W, constant_weight=False, denormal=True)
    src = _save(tmp_path, proto)
    data, x = _data(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for wbits in (8, 4, 2):
            api.quantize(src, tmp_path / f"q{wbits}.onnx", wbits=wbits, abits=8, data=data)
    assert np.isfinite(_run(tmp_path / "q2.onnx", x[:4])).all()


def test_compress_front_keeps_signature_and_has_pruned_and_quantized_members(tmp_path):
    proto = paddle_like(opset=11)
    src = _save(tmp_path, proto)
    data, _ = _data(tmp_path, n=160)
    out = tmp_path / "out"
    result, entries, _ = api.compress(src, out, data=data, generations=2, population=8, eval_samples=96,
                                      calib_samples=48, workers=1, input_shapes=[f"x:1,3,{H},{W}"])
    assert entries
    assert any(e.wbits for e in entries), "no quantized member"
    assert any(any(k < C for k in e.keep.values()) for e in entries if e.keep), "no pruned member"
    assert all(f["failed"] == 0 for f in result.failures().values()), result.failures()
    for e in entries:
        _assert_keeps_signature(out / e.file, proto)
    # every emitted file, costed from its own graph, gives the energy the search recorded (plan costing
    # left the elementwise ops of a model with symbolic dims uncosted: ppocr_cls 83 M recorded, 260 M in the file)
    from emomc_onnx.candidate import EvaluatorConfig

    ev = EvaluatorConfig.from_record(json.loads((out / "front.json").read_text())["evaluator"])()
    for e in entries:
        assert ev.coster.model_cost(onnx.load(str(out / e.file))).energy == pytest.approx(e.energy, rel=1e-9), e.file


def test_compress_warns_when_every_quantized_candidate_fails(tmp_path, monkeypatch):
    import emomc_onnx.passes.quantize as qmod

    def fail(*a, **k):
        raise qmod.UnsupportedOpError("simulated: no QDQ for this model")

    monkeypatch.setattr("emomc_onnx.candidate.builder.quantize_model", fail)  # where candidates quantize
    src = _save(tmp_path, paddle_like(opset=13, width=W, constant_weight=False))
    data, _ = _data(tmp_path, n=120)
    result = CliRunner().invoke(main, ["compress", str(src), "--data", str(data), "-o", str(tmp_path / "o"),
                                       "--generations", "1", "--population", "4", "--eval-samples", "64",
                                       "--calib-samples", "32", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "every quantized candidate failed" in result.output
    assert "simulated: no QDQ for this model" in result.output
    recorded = json.loads((tmp_path / "o" / "front.json").read_text())["failures"]["quantized"]
    assert recorded["candidates"] > 0 and recorded["failed"] == recorded["candidates"]


def test_attention_heads_frozen_with_a_precise_reason():
    """Q/K projections reshaped into heads: inspect names the heads instead of a generic reason."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), n) for n in ("wq", "wk")]
    inits.append(numpy_helper.from_array(np.array([1, 4, 2, 4], np.int64), "heads"))
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
             helper.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
             helper.make_node("Reshape", ["q", "heads"], ["qh"], name="q_heads"),
             helper.make_node("Reshape", ["k", "heads"], ["kh"], name="k_heads"),
             helper.make_node("Transpose", ["qh"], ["qt"], perm=[0, 2, 1, 3]),
             helper.make_node("Transpose", ["kh"], ["kt"], perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["qt", "kt"], ["s"], name="scores"),
             helper.make_node("Softmax", ["s"], ["y"], axis=-1)]
    graph = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], inits)
    analysis = api.analyze(io.load_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])))
    reasons = {g.sources[0]: g.reason for g in analysis.groups}
    assert "into 2 heads of 4 (attention)" in reasons["q_proj"]
    assert "into 2 heads of 4 (attention)" in reasons["k_proj"]


def test_sqnr_metric_gives_errors_in_range(tmp_path):
    """The metric says what its error is (issue 18): SQNR in dB is not '1 - metric' (-299 before)."""
    src = _save(tmp_path, paddle_like(opset=13, width=W, constant_weight=False))
    data, _ = _data(tmp_path, n=120)
    result, entries, _ = api.compress(src, tmp_path / "o", data=data, metric="sqnr", generations=1, population=4,
                                      eval_samples=64, calib_samples=32, workers=1)
    errors = [c.objectives[0] for c in result.candidates if c.search is not None]
    assert errors and all(0.0 <= e < 1.0 for e in errors), errors
    assert max(c.search.metric for c in result.candidates if c.search is not None) > 10.0  # dB, not a fraction
    assert 0.0 <= result.front_hv <= 1.1 ** 3
    assert all(0.0 <= e.error < 1.0 for e in entries)


def magika_like(seed: int = 0) -> onnx.ModelProto:
    """tf2onnx's magika: per-byte Dense (MatMul) -> Relu -> Reshape (B, L*4, F) -> (B, L, 4*F) with
    a computed shape (the batch read at run time, Concat, Cast) -> a LayerNorm written out over
    the positions (ReduceSum over axis 1, a computed Reshape + Expand back) -> Unsqueeze ->
    Transpose -> Conv over the positions -> GlobalMaxPool -> Squeeze -> MatMul."""
    rng = np.random.default_rng(seed)
    L, F, K, O = 6, 8, 16, 5  # positions after grouping, Dense features, Conv out, classes
    inits = [numpy_helper.from_array((rng.standard_normal((3, F)) * 0.5).astype(np.float32), "dense_w"),
             numpy_helper.from_array((rng.standard_normal((1, 1, F)) * 0.1).astype(np.float32), "dense_b"),
             numpy_helper.from_array((rng.standard_normal((K, 4 * F, 3, 1)) * 0.2).astype(np.float32), "conv_w"),
             numpy_helper.from_array((rng.standard_normal((K, O)) * 0.3).astype(np.float32), "fc_w"),
             numpy_helper.from_array((rng.standard_normal((1, L, 1)) * 0.1 + 1).astype(np.float32), "gamma"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"), numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([L], np.int64), "L"), numpy_helper.from_array(np.array([4 * F], np.int64), "C4"),
             numpy_helper.from_array(np.array([1], np.int64), "ax1"), numpy_helper.from_array(np.array([3], np.int64), "ax3"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "ax23"),
             numpy_helper.from_array(np.array(1.0 / L, np.float32), "inv_l")]
    nodes = [
        helper.make_node("MatMul", ["x", "dense_w"], ["d"], name="dense0"),
        helper.make_node("Add", ["d", "dense_b"], ["db"]),
        helper.make_node("Relu", ["db"], ["r"]),
        helper.make_node("Shape", ["x"], ["xs"]),
        helper.make_node("Cast", ["xs"], ["xs_f"], to=TensorProto.FLOAT),  # tf2onnx's int32 detour
        helper.make_node("Cast", ["xs_f"], ["xs_i"], to=TensorProto.INT64),
        helper.make_node("Slice", ["xs_i", "zero", "one", "zero"], ["batch"]),
        helper.make_node("Concat", ["batch", "L", "C4"], ["shape3"], axis=0),
        helper.make_node("Cast", ["shape3"], ["shape3c"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["r", "shape3c"], ["g"], name="group_bytes"),
        helper.make_node("ReduceSum", ["g", "ax1"], ["s"], keepdims=0),
        helper.make_node("Mul", ["s", "inv_l"], ["mean"]),
        helper.make_node("Concat", ["batch", "one", "C4"], ["shape_b"], axis=0),
        helper.make_node("Cast", ["shape_b"], ["shape_bc"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["mean", "shape_bc"], ["mean3"], name="mean_back"),
        helper.make_node("Expand", ["mean3", "shape_bc"], ["mean3e"], name="mean_expand"),
        helper.make_node("Sub", ["g", "mean3e"], ["centred"]),
        helper.make_node("Mul", ["centred", "gamma"], ["normed"]),
        helper.make_node("Unsqueeze", ["normed", "ax3"], ["u"]),
        helper.make_node("Transpose", ["u"], ["t"], perm=[0, 2, 1, 3]),
        helper.make_node("Conv", ["t", "conv_w"], ["c"], name="conv", kernel_shape=[3, 1]),
        helper.make_node("Relu", ["c"], ["cr"]),
        helper.make_node("GlobalMaxPool", ["cr"], ["p"]),
        helper.make_node("Squeeze", ["p", "ax23"], ["ps"]),
        helper.make_node("MatMul", ["ps", "fc_w"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(nodes, "magika_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4 * L, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", O])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tf2onnx")
    onnx.checker.check_model(model, full_check=True)
    return model


def test_channels_grouped_with_positions_by_a_computed_reshape_are_prunable():
    """magika (tf2onnx): the Dense features reach the Conv through a Reshape that merges 4 positions
    into the channels (channel innermost) with a shape computed at run time, and a LayerNorm over
    the positions. The group must be prunable, and pruning channels whose Conv columns are zero
    (recovery none) must leave the outputs unchanged at any batch size: that proves channel c
    sits at Conv inputs c, F+c, 2F+c, 3F+c."""
    from emomc_onnx.passes.channel_pruning import PruningPlan, apply_keep_mask, select_channels

    proto = magika_like()
    loaded = io.load_proto(proto, where="magika_like", input_shapes={"x": [1, 24, 3]})
    analysis = api.analyze(loaded)
    (grp,) = [g for g in analysis.groups if "dense0" in g.sources]
    assert grp.prunable, grp.reason
    assert grp.channels == 8
    drop = [1, 6]
    w = numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == "conv_w")).copy()
    for c in drop:
        w[:, [c, 8 + c, 16 + c, 24 + c]] = 0.0
    zeroed = onnx.ModelProto()
    zeroed.CopyFrom(proto)
    for i, t in enumerate(zeroed.graph.initializer):
        if t.name == "conv_w":
            zeroed.graph.initializer[i].CopyFrom(numpy_helper.from_array(w, "conv_w"))
    loaded = io.load_proto(zeroed, where="magika_like", input_shapes={"x": [1, 24, 3]})
    analysis = api.analyze(loaded)
    score = np.ones(grp.channels)
    score[drop] = 0.0
    keep = select_channels(analysis, PruningPlan(keep={grp.id: 6}), {grp.id: score})
    model = io.clone(loaded.model)
    apply_keep_mask(model, analysis, keep)
    pruned = loaded.restore_signature(io.to_proto(model))
    onnx.checker.check_model(pruned)
    x = np.random.default_rng(3).standard_normal((5, 24, 3)).astype(np.float32)
    want = _run(zeroed, x)
    got = _run(pruned, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    conv_w = next(t for t in pruned.graph.initializer if "conv_w" in t.name and len(t.dims) == 4)
    assert list(conv_w.dims)[1] == 24
