"""`sensitivity`: one change at a time, measured with ORT and predicted by the proxy."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from emomc_onnx import api
from emomc_onnx.cli import main
from emomc_onnx.passes.qdq_bits import read_layer_bits
from emomc_onnx.sensitivity import SensitivityRow, _kendall
from tests.test_foreign_exports import C, H, W, paddle_like

SETTINGS = {"wbits": (2, 4, 8), "abits": (4, 8), "density": (0.3, 0.7), "keep": (0.5,)}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sens")
    model = tmp / "m.onnx"
    onnx.save(paddle_like(opset=13, width=W, constant_weight=False), model)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 3, H, W)).astype(np.float32)
    np.savez(tmp / "d.npz", x=x)
    report = api.sensitivity(model, tmp / "out", data=tmp / "d.npz", eval_samples=96, calib_samples=48,
                             settings=SETTINGS)
    return tmp, model, report


def test_every_single_change_is_measured(case):
    tmp, _, report = case
    layers = ["conv1", "conv2", "fc"]
    per_layer = len(SETTINGS["wbits"]) + len(SETTINGS["abits"]) + len(SETTINGS["density"])
    groups = {r.target for r in report.rows if r.kind == "keep"}
    assert len(groups) == 2  # conv1's and conv2's outputs (C channels each); fc's output is the graph's
    assert len(report.rows) == len(layers) * per_layer + len(groups)
    assert {r.target for r in report.rows if r.kind != "keep"} == set(layers)
    for r in report.rows:
        assert r.reason is None and r.drop == pytest.approx(report.baseline_metric - r.metric)
    written = json.loads((tmp / "out" / "sensitivity.json").read_text())
    assert len(written["rows"]) == len(report.rows) and written["metric"] == report.metric_name
    assert (tmp / "out" / "sensitivity.png").stat().st_size > 1000


def test_one_change_means_one_layer(case):
    """The plan behind a row quantizes exactly that layer (bits read back from the tensors)."""
    from emomc_onnx.candidate import EvaluatorConfig
    from emomc_onnx.search.space import CompressionPlan

    tmp, model, _ = case
    ev = EvaluatorConfig(model=str(model), profile="eyeriss", data=str(tmp / "d.npz"), eval_samples=96,
                         calib_samples=48)()
    from emomc_onnx.search.space import make_space
    from emomc_onnx.sensitivity import _plans

    plans = _plans(ev, make_space(ev.analysis, ev.profile), SETTINGS)
    for target, kind, value, plan in plans:
        changed = [*plan.keep, *plan.density, *plan.wbits, *plan.abits]
        assert len(changed) == 1 and (str(changed[0]) == target or f"group {changed[0]}" == target), plan
    wplan = next(p for t, k, v, p in plans if t == "conv2" and k == "wbits" and v == 4)
    assert {k: v.wbits for k, v in read_layer_bits(ev.build(wplan)).items()} == {"conv2": 4}
    assert ev.build(CompressionPlan.empty()).graph.node[0].op_type != "DequantizeLinear"


def test_proxy_orders_settings_within_a_layer(case):
    _, _, report = case
    for layer in ("conv1", "conv2", "fc"):
        w = {r.value: r.proxy for r in report.rows if r.target == layer and r.kind == "wbits"}
        assert w[2] > w[4] > w[8] > 0
        d = {r.value: r.proxy for r in report.rows if r.target == layer and r.kind == "density"}
        assert d[0.3] > d[0.7] > 0
        a = {r.value: r.proxy for r in report.rows if r.target == layer and r.kind == "abits"}
        assert a[4] > a[8] >= 0
    keep = [r for r in report.rows if r.kind == "keep"]
    assert all(0 < r.proxy < 1 for r in keep)


def test_rerun_reads_the_store(case, monkeypatch):
    tmp, model, report = case
    from emomc_onnx.candidate import OnnxEvaluator

    real = OnnxEvaluator.evaluate
    calls = []

    def counting(self, plan, subset="search"):
        calls.append(plan.key())
        return real(self, plan, subset)

    monkeypatch.setattr(OnnxEvaluator, "evaluate", counting)
    again = api.sensitivity(model, tmp / "out", data=tmp / "d.npz", eval_samples=96, calib_samples=48,
                            settings=SETTINGS)
    from emomc_onnx.search.space import CompressionPlan

    # only the unmodified model ran: every one-change plan came from results.sqlite
    assert calls and set(calls) == {CompressionPlan.empty().key()}
    assert [r.drop for r in again.rows] == [r.drop for r in report.rows]


def test_kendall_tau_of_proxy():
    rows = [SensitivityRow("l", "wbits", b, 0.9, drop, proxy, 1.0, 1.0)
            for b, drop, proxy in ((2, 0.3, 0.5), (3, 0.1, 0.2), (4, 0.05, 0.1), (8, 0.0, 0.01))]
    assert _kendall(rows)["wbits"] == pytest.approx(1.0)
    flipped = [SensitivityRow(r.target, r.kind, r.value, r.metric, r.drop, -r.proxy, 1.0, 1.0) for r in rows]
    assert _kendall(flipped)["wbits"] == pytest.approx(-1.0)
    assert _kendall(rows[:2])["wbits"] is None  # too few pairs to rank


def test_cli(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(paddle_like(opset=11, width=W), model)
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).standard_normal((120, 3, H, W)).astype(np.float32))
    result = CliRunner().invoke(main, ["sensitivity", str(model), "--data", str(tmp_path / "d.npz"), "-o",
                                       str(tmp_path / "o"), "--eval-samples", "64", "--calib-samples", "32",
                                       "--wbits", "4", "--abits", "", "--densities", "0.5", "--keep", "0.5",
                                       "--input-shape", f"x:1,3,{H},{W}"])
    assert result.exit_code == 0, result.output
    assert "keep at high precision" in result.output and "conv2" in result.output
    rows = json.loads((tmp_path / "o" / "sensitivity.json").read_text())["rows"]
    assert {r["kind"] for r in rows} == {"wbits", "density", "keep"}
    assert C == 32
