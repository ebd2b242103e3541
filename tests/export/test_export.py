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
from emomc_onnx.export.summary import render_summary
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
                        abits={f"conv{i}": 8 for i in range(4)}), "test")
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
        assert ev.evaluate_file(path) == e.metric_test  # ORT run of the emitted file
        props = {p.key: p.value for p in model.metadata_props}
        plan = CompressionPlan.from_dict(json.loads(props["emomc.plan"]))
        assert plan.key() == e.key
        test = ev.evaluate(plan, "test")
        assert (test.metric, test.energy, test.size_bits) == (e.accuracy, e.energy,
                                                             e.size_bits)
        assert e.accuracy_ci95[0] < e.accuracy < e.accuracy_ci95[1] and e.n_test == test.extra["stats"]["n"]
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
    assert select(out, min_accuracy=100.0) is None  # a percentage: 100%
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


@pytest.mark.parametrize("width", [80, 120, 200])
def test_render_summary_fits_the_terminal_and_shows_test_figures(exported, width: int) -> None:
    out, r, entries = exported
    console = Console(record=True, width=width)
    splits = {"calib": {"n": 300}, "search": {"n": 1000}, "race": {"n": 250},
              "test": {"n": 1700, "source": "d.npz"}}
    render_summary(entries, console, baseline=r.baseline, splits=splits)
    text = console.export_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    assert "…" not in text
    assert "orig" in text and "1700 test samples" in text and "1000 search samples" in text
    for e in entries:  # every member's test figure, its interval and its search figure
        row = next(line for line in lines if line.split()[:1] == [str(e.rank)])
        assert f"{100 * e.accuracy:.2f}" in row and f"{100 * e.accuracy_ci95[0]:.1f}-" in row
        assert f"{100 * e.metric_search:.2f}" in row
    assert ("KiB" in text) == (width >= 110)
    assert (Path(entries[0].file).name in text) == (width >= 160)


def test_select_reads_percentages_and_skips_members_breaking_the_drop(exported, tmp_path) -> None:
    import shutil

    from emomc_onnx.export.select import min_accuracy_fraction

    out, _, entries = exported
    thr = sorted(e.accuracy for e in entries)[len(entries) // 2]
    assert select(out, min_accuracy=100 * thr, prefer="size") == select(out, min_accuracy=thr, prefer="size")
    assert min_accuracy_fraction(97, "accuracy") == (0.97, "--min-accuracy 97 read as 97% (0.97)")
    assert min_accuracy_fraction(25.0, "sqnr") == (25.0, None)  # dB, its own unit
    with pytest.raises(DataError, match="percentage"):
        min_accuracy_fraction(150, "accuracy")
    # members whose test drop breaks --max-accuracy-drop are never offered
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    meta = json.loads((copy / "front.json").read_text())
    best = max(meta["members"], key=lambda m: m["accuracy"])
    best["within_max_drop"] = False
    (copy / "front.json").write_text(json.dumps(meta))
    pick = select(copy, prefer="accuracy")
    assert pick is not None and pick.key != best["key"] and pick.accuracy <= best["accuracy"]
