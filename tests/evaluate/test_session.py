"""ONNX Runtime sessions: options, sources, load errors, batched runs with fixed/dynamic batch."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import numpy_helper

from emomc_onnx.errors import DataError, ModelError
from emomc_onnx.evaluate.data import Dataset
from emomc_onnx.evaluate.session import SessionCache, make_session, run_batched


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
