"""Data files are checked against the model with one-line errors naming file and array."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import onnx.parser
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from emomc_onnx.errors import DataError
from emomc_onnx.evaluate.data import Dataset, InputSpec, input_specs, load_data, synthetic_data

# Two real inputs (float image, int64 ids with a symbolic middle dim) and an initializer that
# is also listed as a graph input (old exporters do this): it must not be asked for.
_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
two (float[N, 3, 4, 4] image, int64[N, T] ids, float[3] scale) => (float[N, 3] y, int64[N] s) {
    m = ReduceMean <axes = [2, 3], keepdims = 0> (image)
    y = Mul (m, scale)
    s = ReduceSum <keepdims = 0> (ids, one)
}
"""


def make_model() -> onnx.ModelProto:
    model = onnx.parser.parse_model(_TEXT)
    model.graph.initializer.append(numpy_helper.from_array(np.ones(3, np.float32), "scale"))
    model.graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "one"))
    onnx.checker.check_model(model, full_check=True)
    return model


SPECS = input_specs(make_model())


def npz(tmp_path: pathlib.Path, name: str = "d.npz", **arrays) -> pathlib.Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def good(n: int = 20) -> dict[str, np.ndarray]:
    image = np.arange(n * 48).reshape(n, 3, 4, 4).astype(np.uint8)
    ids = np.arange(n * 5, dtype=np.int32).reshape(n, 5)
    return {"image": image, "ids": ids, "labels": np.arange(n) % 3}


def test_input_specs_skip_initializers_and_keep_symbolic_dims() -> None:
    assert SPECS == [
        InputSpec("image", np.dtype(np.float32), ("N", 3, 4, 4)),
        InputSpec("ids", np.dtype(np.int64), ("N", "T")),
    ]


def test_good_file_is_cast_without_scaling(tmp_path) -> None:
    arrays = good()
    ds = load_data(npz(tmp_path, **arrays))
    ds.check(SPECS)
    assert len(ds) == 20
    assert ds.arrays["image"].dtype == np.float32 and ds.arrays["ids"].dtype == np.int64
    assert np.array_equal(ds.arrays["image"], arrays["image"].astype(np.float32))  # 0..255, no /255
    assert ds.arrays["image"].max() == 255.0
    assert ds.labels.dtype == np.int64 and np.array_equal(ds.labels, np.arange(20) % 3)


def test_labels_formats(tmp_path) -> None:
    col = load_data(npz(tmp_path, image=np.zeros((4, 3, 4, 4)), labels=np.arange(4).reshape(4, 1)))
    assert np.array_equal(col.labels, np.arange(4))
    flt = load_data(npz(tmp_path, image=np.zeros((4, 3, 4, 4)), labels=np.array([0.0, 1.0, 2.0, 1.0])))
    assert flt.labels.dtype == np.int64 and list(flt.labels) == [0, 1, 2, 1]
    assert load_data(npz(tmp_path, image=np.zeros((4, 3, 4, 4)))).labels is None


def _index_data(n: int) -> Dataset:
    """Sample i carries i in every array and label, so splits can be traced back."""
    image = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 3, 4, 4)).copy()
    ids = np.repeat(np.arange(n, dtype=np.int64)[:, None], 2, axis=1)
    return Dataset({"image": image, "ids": ids}, np.arange(n, dtype=np.int64), "mem.npz")


def _idx(ds: Dataset) -> np.ndarray:
    idx = ds.arrays["image"][:, 0, 0, 0].astype(np.int64)
    assert np.array_equal(idx, ds.arrays["ids"][:, 0]) and np.array_equal(idx, ds.labels)  # rows stay aligned
    return idx


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 60), calib=st.integers(0, 60), eval_=st.one_of(st.none(), st.integers(0, 60)),
       seed=st.integers(0, 2**31))
def test_split_is_disjoint_sized_and_deterministic(n, calib, eval_, seed) -> None:
    ds = _index_data(n)
    if calib > n:
        with pytest.raises(DataError, match=rf"mem.npz: {calib} calibration samples asked, the file has {n}"):
            ds.split(calib=calib, eval=eval_, seed=seed)
        return
    if eval_ is None and calib == n:  # "all the rest" for evaluation, and no rest: refused
        with pytest.raises(DataError, match=rf"mem.npz: {n} samples?; at least {calib + 1} needed"):
            ds.split(calib=calib, eval=eval_, seed=seed)
        return
    c, e = ds.split(calib=calib, eval=eval_, seed=seed)
    ci, ei = _idx(c), _idx(e)
    assert len(c) == calib
    assert len(e) == (n - calib if eval_ is None else min(eval_, n - calib))
    assert not set(ci) & set(ei)
    assert np.all(np.diff(ci) > 0) and np.all(np.diff(ei) > 0)  # file order kept
    c2, e2 = ds.split(calib=calib, eval=eval_, seed=seed)
    assert np.array_equal(_idx(c2), ci) and np.array_equal(_idx(e2), ei)


def test_split_depends_on_seed_and_is_random() -> None:
    ds = _index_data(100)
    a, _ = ds.split(calib=10, eval=None, seed=0)
    b, _ = ds.split(calib=10, eval=None, seed=1)
    assert not np.array_equal(_idx(a), _idx(b))
    assert not np.array_equal(_idx(a), np.arange(10))  # not simply the first samples
    c, e = ds.split(calib=10, eval=0, seed=0)  # calibration only (what `prune` asks for)
    assert len(c) == 10 and len(e) == 0
    with pytest.raises(DataError, match=">= 0"):
        ds.split(calib=-1, eval=None, seed=0)


def test_subset_and_batches() -> None:
    ds = _index_data(50)
    sub = ds.subset(20, seed=3)
    idx = _idx(sub)
    assert len(sub) == 20 and len(set(idx)) == 20 and np.all(np.diff(idx) > 0)
    assert np.array_equal(_idx(ds.subset(20, seed=3)), idx)
    assert not np.array_equal(_idx(ds.subset(20, seed=4)), idx)
    assert ds.subset(50, seed=0) is ds and ds.subset(500, seed=0) is ds
    with pytest.raises(DataError, match="cannot take -1"):
        ds.subset(-1, seed=0)
    feeds = list(ds.batches(16))
    assert [len(f["image"]) for f in feeds] == [16, 16, 16, 2]
    assert all(set(f) == {"image", "ids"} for f in feeds)
    assert np.array_equal(np.concatenate([f["ids"] for f in feeds]), ds.arrays["ids"])
    with pytest.raises(DataError, match="batch size"):
        next(ds.batches(0))


BAD = [
    ({"img": np.zeros((4, 3, 4, 4)), "ids": np.zeros((4, 2), np.int64)}, "no array named 'image'"),
    ({**{k: v for k, v in good(4).items() if k != "ids"}}, "no array named 'ids'"),
    ({**good(4), "extra": np.zeros(4)}, "array 'extra' is not a model input"),
    ({**good(4), "ids": np.zeros((5, 2), np.int64)}, r"different sample counts \{'image': 4, 'ids': 5\}"),
    ({**good(4), "labels": np.zeros(3, np.int64)}, "array 'labels' has 3 entries, inputs have 4"),
    ({**good(4), "image": np.zeros((4, 3, 4), np.float32)}, r"array 'image' has rank 3"),
    ({**good(4), "image": np.zeros((4, 3, 8, 4), np.float32)}, r"array 'image' has shape \(4, 3, 8, 4\).*axis 2"),
    ({**good(4), "image": np.zeros((4, 1, 4, 4), np.float32)}, r"array 'image' .*axis 1"),
    ({**good(4), "image": np.array(["a"] * 192).reshape(4, 3, 4, 4)}, r"array 'image' has non-numeric dtype"),
    ({**good(4), "ids": np.zeros((4, 2), np.float32)}, r"array 'ids' is float32, model input needs int64"),
]


@pytest.mark.parametrize("arrays,pattern", BAD)
def test_bad_data_names_file_and_array(tmp_path, arrays, pattern) -> None:
    path = npz(tmp_path, "my data.npz", **arrays)
    with pytest.raises(DataError, match=pattern) as info:
        load_data(path).check(SPECS)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg


def test_bad_files(tmp_path) -> None:
    with pytest.raises(DataError, match=r"missing.npz: no such data file"):
        load_data(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"bad.npz: not a readable .npz file"):
        load_data(bad)
    npy = tmp_path / "one.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(DataError, match=r"one.npy: not an .npz archive"):
        load_data(npy)
    with pytest.raises(DataError, match=r"only.npz: holds no input arrays"):
        load_data(npz(tmp_path, "only.npz", labels=np.zeros(3)))
    with pytest.raises(DataError, match=r"obj.npz: array 'image' cannot be read"):
        np.savez(tmp_path / "obj.npz", image=np.array([{"a": 1}], dtype=object))
        load_data(tmp_path / "obj.npz")
    with pytest.raises(DataError, match=r"scalar.npz: array 'image' is a scalar"):
        load_data(npz(tmp_path, "scalar.npz", image=np.float32(1.0)))
    with pytest.raises(DataError, match=r"lab.npz: array 'labels' is float64; need integer"):
        load_data(npz(tmp_path, "lab.npz", image=np.zeros((2, 3, 4, 4)), labels=np.array([0.5, 1.0])))
    with pytest.raises(DataError, match=r"lab2.npz: array 'labels' has shape \(2, 3\)"):
        load_data(npz(tmp_path, "lab2.npz", image=np.zeros((2, 3, 4, 4)), labels=np.zeros((2, 3))))
    with pytest.raises(DataError, match=r"lab3.npz: array 'labels' is <U1"):
        load_data(npz(tmp_path, "lab3.npz", image=np.zeros((2, 3, 4, 4)), labels=np.array(["a", "b"])))


def test_synthetic_data() -> None:
    model = make_model()
    with pytest.raises(DataError, match=r"input 'ids' has dynamic dims \('N', 'T'\)"):
        synthetic_data(model, 5, seed=0)
    ds = synthetic_data(model, 5, seed=0, shapes={"ids": (1, 7)})
    ds.check(SPECS)
    assert ds.arrays["image"].shape == (5, 3, 4, 4) and ds.arrays["image"].dtype == np.float32
    assert ds.arrays["ids"].shape == (5, 7) and ds.arrays["ids"].dtype == np.int64
    assert 0 <= ds.arrays["ids"].min() and ds.arrays["ids"].max() < 8
    assert ds.labels is None and len(ds) == 5
    assert abs(float(ds.arrays["image"].std()) - 1.0) < 0.35  # standard normal, not constant
    same = synthetic_data(model, 5, seed=0, shapes={"ids": (1, 7)})
    other = synthetic_data(model, 5, seed=1, shapes={"ids": (1, 7)})
    assert np.array_equal(same.arrays["image"], ds.arrays["image"])
    assert not np.array_equal(other.arrays["image"], ds.arrays["image"])
    with pytest.raises(DataError, match="at least one sample"):
        synthetic_data(model, 0, seed=0, shapes={"ids": (1, 7)})


def _ds(n: int) -> Dataset:
    return Dataset({"x": np.arange(n, dtype=np.float32).reshape(n, 1)}, np.arange(n) % 10, "d.npz")


def test_three_splits_default_shares_disjoint_and_fixed_by_the_split_seed() -> None:
    from emomc_onnx.evaluate.data import make_splits

    sp = make_splits(_ds(3000), None, None, None, seed=0)
    assert (len(sp.calib), len(sp.search), len(sp.test)) == (300, 1000, 1700)
    ids = {k: set(sp.__dict__[k].arrays["x"][:, 0].astype(int).tolist()) for k in ("calib", "search", "test")}
    assert not (ids["calib"] & ids["search"] or ids["calib"] & ids["test"] or ids["search"] & ids["test"])
    assert len(ids["calib"] | ids["search"] | ids["test"]) == 3000
    for k in ("calib", "search", "test"):
        np.testing.assert_array_equal(sp.__dict__[k].arrays["x"][:, 0], sp.indices[k])
    # the racing prefix of the search split is a random quarter, then the rest
    assert sp.race == 250
    head = sp.indices["search"][:250]
    assert np.all(np.diff(head) > 0) and np.all(np.diff(sp.indices["search"][250:]) > 0)
    assert head.max() > 2000 and head.min() < 1000  # spread over the file, not its first samples
    same = make_splits(_ds(3000), None, None, None, seed=0)
    other = make_splits(_ds(3000), None, None, None, seed=1)
    for k in ("calib", "search", "test"):
        np.testing.assert_array_equal(same.indices[k], sp.indices[k])
        assert not np.array_equal(other.indices[k], sp.indices[k])
    assert same.summary() == sp.summary() and other.summary() != sp.summary()


def test_split_sizes_given_and_refused() -> None:
    from emomc_onnx.evaluate.data import make_splits

    sp = make_splits(_ds(1000), 64, 300, None, seed=0)
    assert (len(sp.calib), len(sp.search), len(sp.test)) == (64, 300, 636)
    sp = make_splits(_ds(1000), 64, 300, 100, seed=0)
    assert len(sp.test) == 100
    with pytest.raises(DataError, match="cannot hold 500 calibration \\+ 400 search \\+ 200 test"):
        make_splits(_ds(1000), 500, 400, 200, seed=0)
    with pytest.raises(DataError, match="--calib-samples 0: need at least 1"):
        make_splits(_ds(1000), 0, None, None, seed=0)
    with pytest.raises(DataError, match="--test-data"):
        make_splits(_ds(10), 5, 5, None, seed=0)  # nothing left for the test split


def test_separate_test_file() -> None:
    from emomc_onnx.evaluate.data import make_splits

    test = Dataset({"x": -np.arange(1, 501, dtype=np.float32).reshape(500, 1)}, np.zeros(500, int), "t.npz")
    sp = make_splits(_ds(1000), None, None, None, seed=0, test_ds=test)
    assert (len(sp.calib), len(sp.search), len(sp.test)) == (100, 900, 500)
    assert np.all(sp.test.arrays["x"] < 0) and sp.test_source == "t.npz"
    assert make_splits(_ds(1000), None, None, 200, seed=0, test_ds=test).test.arrays["x"].shape == (200, 1)
    with pytest.raises(DataError, match="t.npz: 600 test samples asked"):
        make_splits(_ds(1000), None, None, 600, seed=0, test_ds=test)
