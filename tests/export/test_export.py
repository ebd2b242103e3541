"""Front export (ONNX files, front.json/csv, plots), selection and the summary table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import onnx
import pytest
from rich.console import Console

from emomc_onnx.errors import DataError
from emomc_onnx.export.front import export_front
from emomc_onnx.export.report import render_summary
from emomc_onnx.export.select import load_front, select
from emomc_onnx.search.driver import SearchConfig, SearchResult, run_search
from emomc_onnx.search.space import CompressionPlan
from emomc_onnx.search.store import ResultStore
from tests.search.toy import ToyEvaluator, ToyEvaluatorFactory, toy_space

TOY = ToyEvaluatorFactory()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, SearchResult, list]:
    out = tmp_path_factory.mktemp("run")
    with ResultStore.in_dir(out) as store:
        r = run_search(toy_space(TOY), TOY, SearchConfig(population=12, generations=4), store,
                       seed=1)
    int8 = ToyEvaluator(TOY).evaluate(
        CompressionPlan(keep={}, density={}, wbits={f"conv{i}": 8 for i in range(4)},
                        abits={f"conv{i}": 8 for i in range(4)}), "full")
    entries = export_front(r, TOY(), out, extra_points={"uniform int8": int8})
    return out, r, entries


def test_export_writes_everything(exported) -> None:
    out, r, entries = exported
    assert len(entries) == len(r.front) > 0
    for name in ("front.json", "front.csv", "pareto.png", "convergence.png", "results.sqlite"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    files = sorted(p.name for p in (out / "front").iterdir())
    assert files == sorted(Path(e.file).name for e in entries)
    assert not [p for p in out.rglob("*.tmp")]
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    meta = json.loads((out / "front.json").read_text())
    assert meta["fingerprint"] == r.fingerprint
    assert len(meta["hypervolume"]["history"]) == len(r.history)
    assert "uniform int8" in meta["extra_points"]
    rows = list(csv.DictReader((out / "front.csv").open()))
    assert [row["file"] for row in rows] == [e.file for e in entries]
    assert "wbits[conv0]" in rows[0] and "keep[0]" in rows[0]


def test_emitted_files_reevaluate_to_recorded_figures(exported) -> None:
    out, r, entries = exported
    ev = ToyEvaluator(TOY)
    meta, loaded = load_front(out)
    assert [e.to_dict() for e in loaded] == [e.to_dict() for e in entries]
    accs = [e.accuracy for e in loaded]
    assert accs == sorted(accs, reverse=True) and [e.rank for e in loaded] == list(
        range(len(loaded)))
    for e in loaded:
        path = e.path(out)
        model = onnx.load(path)
        onnx.checker.check_model(model, full_check=True)
        assert ev.evaluate_file(path) == e.metric_full  # ORT run of the emitted file
        props = {p.key: p.value for p in model.metadata_props}
        plan = CompressionPlan.from_dict(json.loads(props["emomc.plan"]))
        assert plan.key() == e.key
        full = ev.evaluate(plan, "full")
        assert (full.metric, full.energy, full.size_bits) == (e.accuracy, e.energy,
                                                             e.size_bits)
        assert e.energy_factor == pytest.approx(r.baseline.energy / e.energy)
        assert f"acc{100 * e.accuracy:.2f}" in path.name


def test_reexport_removes_stale_members(exported, tmp_path: Path) -> None:
    out, r, entries = exported
    stale = out / "front" / "rank99_acc1.00_e1.00x_s1.00x.onnx"
    stale.write_bytes(b"x")
    export_front(r, TOY(), out, plots=False)
    assert not stale.exists()


def test_select(exported) -> None:
    out, _, entries = exported
    best_acc = select(out, prefer="accuracy")
    assert best_acc is not None and best_acc.accuracy == max(e.accuracy for e in entries)
    lo = select(out, prefer="energy")
    assert lo.energy == min(e.energy for e in entries)
    small = select(out, prefer="size")
    assert small.size_bits == min(e.size_bits for e in entries)
    # a limit that only some members meet
    mid = sorted(e.energy for e in entries)[len(entries) // 2]
    pick = select(out, max_energy=mid, prefer="accuracy")
    ok = [e for e in entries if e.energy <= mid]
    assert pick.accuracy == max(e.accuracy for e in ok) and pick.energy <= mid
    thr = sorted(e.accuracy for e in entries)[len(entries) // 2]
    pick = select(out, min_accuracy=thr, prefer="size")
    assert pick.accuracy >= thr
    assert pick.size_bits == min(e.size_bits for e in entries if e.accuracy >= thr)
    assert select(out, max_energy=min(e.energy for e in entries) * 0.5) is None
    assert select(out, min_accuracy=1.01) is None
    assert select(out, max_size_bits=0) is None


def test_select_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such output directory"):
        select(tmp_path / "missing")
    with pytest.raises(DataError, match="front.json: missing"):
        select(tmp_path)
    (tmp_path / "front.json").write_text("{not json")
    with pytest.raises(DataError, match="corrupt"):
        select(tmp_path)
    (tmp_path / "front.json").write_text(json.dumps({"members": [{"rank": 0}]}))
    with pytest.raises(DataError, match="corrupt"):
        select(tmp_path)


def test_render_summary(exported) -> None:
    out, r, entries = exported
    console = Console(record=True, width=250)
    render_summary(entries, console, baseline=r.baseline)
    text = console.export_text()
    assert "orig" in text and entries[0].file in text
    assert f"{100 * entries[-1].accuracy:.2f}" in text
