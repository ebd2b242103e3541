"""ONNX Runtime sessions: options, sources, load errors, batched runs with fixed/dynamic batch."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import numpy_helper

from emomc_onnx.errors import DataError, ModelError
from emomc_onnx.evaluate.data import Dataset
from emomc_onnx.evaluate.session import SessionCache, make_session, run_batched, run_feed


def make_model(batch: int | str = "N") -> onnx.ModelProto:
    """x [B, 6] -> (x @ w [B, 4], rowsum [B]); two outputs, per-sample independent."""
    b = batch if isinstance(batch, int) else "N"
    model = onnx.parser.parse_model(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    lin (float[{b}, 6] x) => (float[{b}, 4] y, float[{b}] s) {{
        y = MatMul (x, w)
        s = ReduceSum <keepdims = 0> (y, one)
    }}
    """)
    model.graph.name = "lin"
    w = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(w, "w"))
    model.graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "one"))
    onnx.checker.check_model(model, full_check=True)
    return model


def data(n: int) -> Dataset:
    x = np.random.default_rng(n).standard_normal((n, 6)).astype(np.float32)
    return Dataset({"x": x}, None, "mem")


def expected(n: int) -> list[np.ndarray]:
    x = data(n).arrays["x"]
    w = numpy_helper.to_array(make_model().graph.initializer[0])
    y = x @ w
    return [y, y.sum(1)]


def test_options_and_sources(tmp_path) -> None:
    model = make_model()
    sess = make_session(model, threads=2)
    opts = sess.get_session_options()
    assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert sess.get_providers() == ["CPUExecutionProvider"]
    path = tmp_path / "lin.onnx"
    onnx.save(model, path)
    feed = {"x": data(3).arrays["x"]}
    ref = sess.run(None, feed)
    for src in (model.SerializeToString(), path, str(path)):
        out = make_session(src, optimize=False).run(None, feed)
        assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(out, ref))
    assert make_session(model).get_session_options().intra_op_num_threads == 1


def test_load_errors_are_model_errors_naming_the_model(tmp_path) -> None:
    bad = make_model()
    bad.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(ModelError, match=r"^ONNX Runtime cannot load model 'lin': .*NoSuchOp") as info:
        make_session(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(ModelError, match="cannot load model bytes: "):
        make_session(b"garbage")
    missing = tmp_path / "missing.onnx"
    with pytest.raises(ModelError, match=f"cannot load {missing}: "):
        make_session(missing)


@pytest.mark.parametrize("n,batch_size", [(1, 256), (10, 3), (10, 10), (17, 4), (5, 1)])
def test_dynamic_batch(n, batch_size) -> None:
    out = run_batched(make_session(make_model()), data(n), batch_size)
    ref = expected(n)
    assert [o.shape for o in out] == [(n, 4), (n,)]
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(out, ref))


@pytest.mark.parametrize("fixed,n", [(1, 7), (4, 10), (4, 8), (4, 1)])
def test_fixed_batch_models_are_fed_their_batch(fixed, n) -> None:
    sess = make_session(make_model(batch=fixed))
    out = run_batched(sess, data(n), batch_size=256)  # 256 would be refused by a fixed-batch model
    ref = expected(n)
    assert [o.shape for o in out] == [(n, 4), (n,)]  # the padding of the last batch is trimmed
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(out, ref))


def test_run_errors() -> None:
    sess = make_session(make_model())
    with pytest.raises(DataError, match="batch size must be >= 1"):
        run_batched(sess, data(3), 0)
    wrong = Dataset({"x": np.zeros((3, 6), np.float64)}, None, "mem")
    with pytest.raises(ModelError, match=r"^ONNX Runtime failed to run the model: ") as info:
        run_batched(sess, wrong, 2)
    assert "\n" not in str(info.value)
    empty = run_batched(sess, Dataset({"x": np.zeros((0, 6), np.float32)}, None, "mem"), 4)
    assert len(empty) == 2 and all(len(e) == 0 for e in empty)


def test_session_cache_reuses_equal_graphs_only() -> None:
    """An equal model (another proto object) gets the cached session; a model with other
    weights gets its own; the least recently used session goes first when full."""
    cache = SessionCache(size=2)
    a, a2 = make_model(), make_model()
    other = make_model()
    other.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((6, 4), np.float32), "w"))
    s = cache.get(a)
    assert cache.get(a2) is s and cache.hits == 1
    t = cache.get(other)
    assert t is not s
    np.testing.assert_allclose(run_batched(t, data(3))[0], data(3).arrays["x"] @ np.ones((6, 4), np.float32),
                               rtol=1e-5)
    cache.get(a)  # a is now the most recent: a third model drops `other`
    third = make_model(batch=2)
    cache.get(third)
    assert cache.get(a) is s and cache.hits == 3
    assert cache.get(other) is not t  # dropped, made again


def test_session_cache_names_the_model_in_load_errors() -> None:
    bad = make_model()
    bad.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(ModelError, match="model 'lin'"):
        SessionCache().get(bad)


def seq_first_model(batch: int | str, steps: int = 5, feat: int = 3, classes: int = 4, out: str = "seq") -> onnx.ModelProto:
    """x [batch, steps, feat] (fixed batch) -> y = (x @ w) as a sequence-first [steps, batch, classes]
    output, as an LSTM + CTC head exports it (ddddocr's recogniser: [T, 1, 8210]).

    ``out`` = "squeezed" (batch 1): the batch axis squeezed away, y [steps, classes];
    "summed": the batch summed away, y [steps, classes] (no sample axis at all);
    "square": y [steps, batch, batch] (classes == batch: two candidate axes). A string
    ``batch`` names a dynamic batch axis."""
    shapes = {"seq": f"[{steps}, {batch}, {classes}]", "squeezed": f"[{steps}, {classes}]",
              "summed": f"[{steps}, {classes}]", "square": f"[{steps}, {batch}, {classes}]"}
    tail = {"seq": "y = Identity (t)", "squeezed": "y = Squeeze (t, one)",
            "summed": "y = ReduceSum <keepdims = 0> (t, one)", "square": "y = Identity (t)"}[out]
    model = onnx.parser.parse_model(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    seqfirst (float[{batch}, {steps}, {feat}] x) => (float{shapes[out]} y, float[{batch}, {classes}] last) {{
        m = MatMul (x, w)
        t = Transpose <perm = [1, 0, 2]> (m)
        {tail}
        last = ReduceMax <keepdims = 0, axes = [1]> (m)
    }}
    """)
    w = np.random.default_rng(1).standard_normal((feat, classes)).astype(np.float32)
    model.graph.initializer.extend([numpy_helper.from_array(w, "w"),
                                    numpy_helper.from_array(np.array([1], np.int64), "one")])
    onnx.checker.check_model(model, full_check=True)
    return model


def seq_data(n: int, steps: int = 5, feat: int = 3) -> Dataset:
    x = np.random.default_rng(100 + n).standard_normal((n, steps, feat)).astype(np.float32)
    return Dataset({"x": x}, None, "mem")


@pytest.mark.parametrize("batch,n", [(1, 4), (1, 1), (2, 5), (2, 4)])
def test_sequence_first_outputs_of_fixed_batch_models_have_samples_on_axis0(batch, n) -> None:
    """A fixed-batch model with a [T, B, C] output gives [n, T, C], each row equal to the
    sample's own run (the batch axis found from the run, moved first, the padding trimmed)."""
    model = seq_first_model(batch)
    sess = make_session(model)
    ds = seq_data(n)
    out = run_batched(sess, ds, batch_size=256)
    assert [o.shape for o in out] == [(n, 5, 4), (n, 4)]
    x = ds.arrays["x"]
    for i in range(n):  # each sample alone, padded to the batch with copies of itself
        y, last = sess.run(None, {"x": np.repeat(x[i:i + 1], batch, axis=0)})
        np.testing.assert_allclose(out[0][i], y[:, 0], rtol=1e-6)
        np.testing.assert_allclose(out[1][i], last[0], rtol=1e-6)
    w = numpy_helper.to_array(model.graph.initializer[0])
    np.testing.assert_allclose(out[0], x @ w, rtol=1e-5, atol=1e-6)
    # run_feed on the whole feed: samples first, or the model's layout (recovery's reducers)
    for a, b in zip(run_feed(sess, dict(ds.arrays), samples_first=True), out):
        np.testing.assert_array_equal(a, b)
    y, last = run_feed(sess, dict(ds.arrays), ["y", "last"])
    assert y.shape == (5, n, 4) and last.shape == (n, 4)
    np.testing.assert_array_equal(np.moveaxis(y, 1, 0), out[0])
    np.testing.assert_array_equal(last, out[1])


@pytest.mark.parametrize("batch_size", [2, 5, 256])
def test_sequence_first_outputs_of_dynamic_batch_models_have_samples_on_axis0(batch_size) -> None:
    """A dynamic-batch model's [T, N, C] output, run in batches, gives [n, T, C] (it was joined
    along T: [T * batches, ...]); a batch as long as T (5) still finds N, as T is declared
    fixed; the model's own layout is kept without ``samples_first``."""
    model = seq_first_model("N")
    ds = seq_data(7)
    sess = make_session(model)
    out = run_batched(sess, ds, batch_size=batch_size)
    w = numpy_helper.to_array(model.graph.initializer[0])
    assert [o.shape for o in out] == [(7, 5, 4), (7, 4)]
    np.testing.assert_allclose(out[0], ds.arrays["x"] @ w, rtol=1e-5, atol=1e-6)
    y = run_feed(sess, dict(ds.arrays), ["y"])[0]
    assert y.shape == (5, 7, 4)


def test_squeezed_batch_of_batch1_model_becomes_a_sample_axis() -> None:
    model = seq_first_model(1, out="squeezed")
    ds = seq_data(3)
    out = run_batched(make_session(model), ds)
    w = numpy_helper.to_array(model.graph.initializer[0])
    assert out[0].shape == (3, 5, 4)
    np.testing.assert_allclose(out[0], ds.arrays["x"] @ w, rtol=1e-5, atol=1e-6)
    # the model's layout (a Gemm input [T, K] with the batch squeezed): runs joined on axis 0
    y = run_feed(make_session(model), dict(ds.arrays), ["y"])[0]
    assert y.shape == (15, 4)
    np.testing.assert_array_equal(y, out[0].reshape(15, 4))


NO_AXIS = r"output 'y' of shape \[5, 4\] has no axis of the model's fixed batch 2"
TWO_AXES = r"output 'y' of shape \[5, 2, 2\] has several axes of the model's fixed batch 2 \(1, 2\)"


@pytest.mark.parametrize("out,why", [("summed", NO_AXIS), ("square", TWO_AXES)])
def test_outputs_without_a_clear_batch_axis_are_refused_naming_the_output(out, why) -> None:
    model = seq_first_model(2, classes=2 if out == "square" else 4, out=out)
    with pytest.raises(ModelError, match=f"^{why}"):
        run_batched(make_session(model), seq_data(3))


def test_reference_and_candidate_agree_on_sequence_first_outputs(tmp_path) -> None:
    """The reference outputs and a candidate's racing prefix go through one path: the racing
    figure compares samples with samples (it compared 4 time steps with 96 rows)."""
    from emomc_onnx.evaluate.reference import ReferenceData

    model = seq_first_model(1)
    path = tmp_path / "d.npz"
    np.savez(path, x=seq_data(24).arrays["x"])
    data = ReferenceData(model, path, calib_samples=4, eval_samples=12, test_samples=8)
    assert data.outputs["search"][0].shape == (12, 5, 4) and data.outputs["test"][0].shape == (8, 5, 4)
    sess = make_session(model)
    n = data.race_n
    assert 0 < n < 12
    outs = data.run(sess, data.search.take(np.arange(n)))
    value, stats = data.figure(outs, "search", n)
    assert stats["split"] == "race"
    np.testing.assert_array_equal(outs[0], data.outputs["search"][0][:n])  # samples, not time steps
    assert data.metric.name == "cosine" and value == pytest.approx(1.0)
