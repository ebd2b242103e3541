"""Data files are checked against the model with clear errors; metrics behave."""

from __future__ import annotations

import numpy as np
import pytest

from emomc_onnx.errors import DataError
from emomc_onnx.evaluate.data import input_specs, load_data
from emomc_onnx.evaluate.metrics import resolve_metric, sqnr_db
from emomc_onnx.evaluate.session import make_session, run_batched
from tests.models import build


def _npz(tmp_path, **arrays):
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)
    return p


def test_good_data_splits_disjoint_and_runs(tmp_path) -> None:
    fx = build("vgg")
    x = (np.random.default_rng(0).random((50, 3, 16, 16)) * 255).astype(np.uint8)
    ds = load_data(_npz(tmp_path, input=x, labels=np.arange(50) % 10))
    ds.check(input_specs(fx.proto))
    assert ds.arrays["input"].dtype == np.float32  # cast without scaling
    assert ds.arrays["input"].max() == x.max()
    calib, ev = ds.split(calib=10, eval=None, seed=1)
    assert len(calib) == 10 and len(ev) == 40
    both = np.concatenate([calib.arrays["input"], ev.arrays["input"]])
    assert len(np.unique(both.reshape(50, -1), axis=0)) == 50
    outs = run_batched(make_session(fx.proto), ev, batch_size=16)
    assert outs[0].shape == (40, 10)


@pytest.mark.parametrize("arrays,pattern", [
    ({"x": np.zeros((4, 3, 16, 16), np.float32)}, "no array named 'input'"),
    ({"input": np.zeros((4, 3, 16, 16), np.float32), "extra": np.zeros(4)}, "'extra' is not a model input"),
    ({"input": np.zeros((4, 3, 16), np.float32)}, "rank 3"),
    ({"input": np.zeros((4, 3, 8, 8), np.float32)}, "axis 2"),
    ({"input": np.zeros((4, 3, 16, 16), np.float32), "labels": np.zeros(3)}, "'labels' has 3"),
])
def test_bad_data_names_file_and_array(tmp_path, arrays, pattern) -> None:
    path = _npz(tmp_path, **arrays)
    with pytest.raises(DataError, match=pattern) as info:
        load_data(path).check(input_specs(build("vgg").proto))
    assert str(path) in str(info.value)


def test_unreadable_files(tmp_path) -> None:
    with pytest.raises(DataError, match="no such data file"):
        load_data(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable"):
        load_data(bad)


def test_metrics_and_errors() -> None:
    ref = [np.eye(4)]
    assert resolve_metric(None, has_labels=True, is_classifier=True).name == "accuracy"
    agree = resolve_metric(None, has_labels=False, is_classifier=True)
    assert agree(ref, ref, None) == 1.0 and agree.error(1.0) == 0.0
    assert agree([np.eye(4)[::-1]], ref, None) == 0.0
    assert sqnr_db([ref[0] * 1.1], ref) == pytest.approx(20.0, abs=1e-6)
    user = resolve_metric("numpy:mean", has_labels=False, is_classifier=False)
    assert user.name == "numpy:mean"
    with pytest.raises(DataError, match="cannot import"):
        resolve_metric("no_such_mod:f", False, False)
    with pytest.raises(DataError, match="no callable"):
        resolve_metric("numpy:no_such_fn", False, False)
    with pytest.raises(DataError, match="labels"):
        resolve_metric("accuracy", has_labels=False, is_classifier=True)
