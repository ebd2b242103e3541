"""Metrics: values on hand-made outputs, the error mapping, defaults and user metrics."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emomc_onnx.errors import DataError
from emomc_onnx.evaluate.metrics import (
    SQNR_CAP_DB,
    cosine_similarity,
    resolve_metric,
    sqnr_db,
    top1_accuracy,
    top1_agreement,
)

LOGITS = np.array([[0.1, 2.0, 0.3], [5.0, 1.0, 0.0], [0.0, 0.0, 9.0], [1.0, 3.0, 2.0]], np.float32)


def test_accuracy_and_agreement() -> None:
    assert top1_accuracy([LOGITS], None, np.array([1, 0, 2, 1])) == 1.0
    assert top1_accuracy([LOGITS], None, np.array([1, 1, 2, 0])) == 0.5
    assert top1_accuracy([LOGITS.reshape(4, 3, 1, 1)], None, np.array([1, 0, 0, 0])) == 0.5  # NCHW logits
    other = LOGITS.copy()
    other[0] = [9, 0, 0]
    assert top1_agreement([other], [LOGITS], None) == 0.75
    assert top1_agreement([LOGITS], [LOGITS], None) == 1.0
    with pytest.raises(DataError, match="needs 'labels'"):
        top1_accuracy([LOGITS], None, None)
    with pytest.raises(DataError, match="'labels' has 3 samples, the outputs have 4"):
        top1_accuracy([LOGITS], None, np.array([1, 0, 2]))
    with pytest.raises(DataError, match="the reference has 2 samples"):
        top1_agreement([LOGITS], [LOGITS[:2]], None)


def test_sqnr_in_db() -> None:
    ref = [np.random.default_rng(0).standard_normal((8, 5))]
    assert sqnr_db([ref[0] * 1.1], ref) == pytest.approx(20.0)
    assert sqnr_db([ref[0] * 1.01], ref) == pytest.approx(40.0)
    assert sqnr_db([np.zeros_like(ref[0])], ref) == pytest.approx(0.0)
    assert sqnr_db(ref, ref) == SQNR_CAP_DB
    assert sqnr_db([np.ones(3)], [np.zeros(3)]) == -SQNR_CAP_DB
    # all outputs count: noise in the second output lowers the figure
    two = [ref[0], ref[0][:, :2]]
    assert sqnr_db([two[0], two[1] * 1.1], two) > sqnr_db([two[0] * 1.1, two[1] * 1.1], two)
    with pytest.raises(ValueError):
        sqnr_db([ref[0]], [ref[0], ref[0]])


def test_cosine_similarity() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0], [1.0, 1.0]])
    assert cosine_similarity([a * 3], [a]) == pytest.approx(1.0)
    assert cosine_similarity([-a], [a]) == pytest.approx(-0.5)  # -1, -1, 1 (both zero: identical), -1
    b = np.array([[0.0, 1.0], [2.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    assert cosine_similarity([b], [a]) == pytest.approx(0.5)  # 0, 0, 1 (both zero), 1
    assert cosine_similarity([np.zeros((1, 2))], [np.ones((1, 2))]) == 0.0


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(["accuracy", "agreement", "cosine", "sqnr"]),
       a=st.floats(-400, 400), b=st.floats(-400, 400))
def test_error_is_in_unit_interval_and_decreasing(name, a, b) -> None:
    metric = resolve_metric(name, has_labels=True, is_classifier=True)
    lo, hi = min(a, b), max(a, b)
    assert 0.0 <= metric.error(hi) <= metric.error(lo) <= 1.0
    assert metric.higher_is_better


def test_error_mapping_values() -> None:
    acc = resolve_metric("accuracy", True, True)
    assert acc.error(0.9) == pytest.approx(0.1) and acc.error(1.0) == 0.0
    cos = resolve_metric("cosine", False, False)
    assert cos.error(1.0) == 0.0 and cos.error(-1.0) == 1.0 and cos.error(0.0) == 0.5
    sq = resolve_metric("sqnr", False, False)
    assert sq.error(0.0) == 0.5
    assert sq.error(20.0) == pytest.approx(1 / 101)
    assert sq.error(SQNR_CAP_DB) < 1e-29


@pytest.mark.parametrize("has_labels,is_classifier,name", [
    (True, True, "accuracy"), (False, True, "agreement"), (True, False, "cosine"), (False, False, "cosine"),
])
def test_default_metric(has_labels, is_classifier, name) -> None:
    metric = resolve_metric(None, has_labels=has_labels, is_classifier=is_classifier)
    assert metric.name == name
    labels = np.array([1, 0, 2, 1]) if has_labels else None
    assert metric([LOGITS], [LOGITS], labels) == pytest.approx(1.0)


def test_builtin_metrics_through_resolve() -> None:
    labels = np.array([1, 0, 0, 1])
    assert resolve_metric("accuracy", True, True)([LOGITS], [LOGITS], labels) == 0.75
    assert resolve_metric("sqnr", True, True)([LOGITS * 1.1], [LOGITS], labels) == pytest.approx(20.0, abs=1e-4)


def test_user_metric_from_module_and_file(tmp_path, monkeypatch) -> None:
    code = textwrap.dedent("""
        import numpy as np

        def mean_abs_diff(outputs, reference, labels):
            return 1.0 - float(np.abs(outputs[0] - reference[0]).mean())

        def bad(outputs, reference, labels):
            return "high"

        not_callable = 3
    """)
    (tmp_path / "my_metrics_mod.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    metric = resolve_metric("my_metrics_mod:mean_abs_diff", has_labels=False, is_classifier=False)
    assert metric.name == "my_metrics_mod:mean_abs_diff"
    assert metric([LOGITS + 0.25], [LOGITS], None) == pytest.approx(0.75)
    assert metric.error(0.75) == pytest.approx(0.25)
    from_file = resolve_metric(f"{tmp_path / 'my_metrics_mod.py'}:mean_abs_diff", False, False)
    assert from_file([LOGITS + 0.5], [LOGITS], None) == pytest.approx(0.5)
    with pytest.raises(DataError, match="did not return a number"):
        resolve_metric("my_metrics_mod:bad", False, False)([LOGITS], [LOGITS], None)
    with pytest.raises(DataError, match=r"my_metrics_mod.not_callable is not callable"):
        resolve_metric("my_metrics_mod:not_callable", False, False)
    with pytest.raises(DataError, match=r"has no attribute 'nothing'"):
        resolve_metric("my_metrics_mod:nothing", False, False)
    sys.modules.pop("my_metrics_mod", None)


@pytest.mark.parametrize("spec,match", [
    ("no_such_module_xyz:f", r"--metric 'no_such_module_xyz:f': cannot import module 'no_such_module_xyz'"),
    ("/nonexistent/m.py:f", r"cannot import module '/nonexistent/m.py'.*no such file"),
    ("numpy:no_such_fn", r"numpy has no attribute 'no_such_fn'"),
    ("top5", r"--metric 'top5': expected one of accuracy, agreement, sqnr, cosine or module:function"),
    (":f", r"expected module:function"),
    ("numpy:", r"expected module:function"),
])
def test_bad_specs(spec, match) -> None:
    with pytest.raises(DataError, match=match) as info:
        resolve_metric(spec, has_labels=True, is_classifier=True)
    assert "\n" not in str(info.value)


def test_accuracy_without_labels_is_refused() -> None:
    with pytest.raises(DataError, match="--metric accuracy needs 'labels'"):
        resolve_metric("accuracy", has_labels=False, is_classifier=True)


def test_user_metric_that_raises_inside_import(tmp_path, monkeypatch) -> None:
    (tmp_path / "broken_metric_mod.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(DataError, match=r"cannot import module 'broken_metric_mod' \(RuntimeError: boom"):
        resolve_metric("broken_metric_mod:f", False, False)
