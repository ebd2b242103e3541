"""The two-stage search on the analytic toy evaluator."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from emomc_onnx.errors import PlanError
from emomc_onnx.search.driver import ProgressEvent, SearchConfig, SearchResult, run_search
from emomc_onnx.search.store import ResultStore
from tests.search.toy import ToyEvaluator, ToyEvaluatorFactory, toy_space

TOY = ToyEvaluatorFactory()
SMALL = SearchConfig(population=12, generations=5)

CALLS: list[tuple[str, str]] = []


@dataclasses.dataclass(frozen=True)
class CountingFactory:
    """Toy evaluators that record every evaluate() call (in-process runs only)."""

    base: ToyEvaluatorFactory = TOY

    def __call__(self) -> ToyEvaluator:
        ev = self.base()
        orig = ev.evaluate

        def counted(plan, subset="search", **kw):
            CALLS.append((plan.key(), subset))
            return orig(plan, subset, **kw)

        ev.evaluate = counted  # type: ignore[method-assign]
        return ev


def _run(tmp: Path, config: SearchConfig = SMALL, factory=TOY, seed: int = 0,
         progress=None, kind: str = "full") -> SearchResult:
    base = getattr(factory, "base", factory)
    with ResultStore.in_dir(tmp) as store:
        return run_search(toy_space(base, kind), factory, config, store, progress, seed=seed)


def _front(r: SearchResult) -> list[tuple[str, tuple[float, ...]]]:
    return [(m.key, m.objectives_search, m.objectives_test) for m in r.front]


def _dominates(a, b) -> bool:
    return bool(np.all(np.asarray(a) <= np.asarray(b)) and np.any(np.asarray(a) < np.asarray(b)))


def test_same_seed_same_front(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", seed=3)
    b = _run(tmp_path / "b", seed=3)
    c = _run(tmp_path / "c", seed=4)
    assert a.front and _front(a) == _front(b)
    assert [h.hv for h in a.history] == [h.hv for h in b.history]
    assert [x.key for x in a.candidates] != [x.key for x in c.candidates]


def test_front_is_non_dominated_on_search_and_reported_on_test(tmp_path: Path) -> None:
    r = _run(tmp_path)
    F = r.front_objectives()
    assert len(F) >= 3
    for i in range(len(F)):
        for j in range(len(F)):
            assert not _dominates(F[j], F[i]), (i, j)
    # chosen on the search split: no candidate measured on the whole search split dominates a member
    measured = [c for c in r.candidates if c.feasible and not c.raced_out]
    for c in measured:
        assert not any(_dominates(c.objectives, m) for m in F)
    # every member's reported figures are the test split's, not the search split's
    ev = ToyEvaluator(TOY)
    for m in r.front:
        test = ev.evaluate(m.plan, "test")
        assert m.test.metric == test.metric and m.test.extra["stats"]["split"] == "test"
        assert m.search.extra["stats"]["split"] == "search"
        assert m.objectives_test[0] == pytest.approx(1 - test.metric)
    assert any(m.search.metric != m.test.metric for m in r.front)
    assert r.baseline.extra["stats"]["split"] == "test"
    # the history is monotone (cumulative archive) and the final front has a real volume
    hv = [h.hv for h in r.history]
    assert hv == sorted(hv) and r.front_hv > 0


def test_stage2_improves_hypervolume(tmp_path: Path) -> None:
    r = _run(tmp_path)
    assert r.stop_reasons == {1: "generations", 2: "generations"}
    assert r.stage_hv[2] > r.stage_hv[1] > 0
    assert any(m.stage == 2 for m in r.front)
    assert {h.stage for h in r.history} == {1, 2}


def test_failures_are_infeasible_with_reason(tmp_path: Path) -> None:
    failing = ToyEvaluatorFactory(fail_keep_below=0.5)
    r = _run(tmp_path, factory=failing)
    failed = [c for c in r.candidates if c.search is None]
    assert failed, "the toy should have produced failing candidates"
    assert all(not c.feasible and "toy failure" in (c.reason or "") for c in failed)
    assert all(min(k / ch for k, ch in zip(m.plan.keep.values(), (16, 32, 16))) >= 0.5
               for m in r.front)
    with ResultStore.in_dir(tmp_path) as store:
        rows = {s.key: s for s in store.candidates(r.fingerprint)}
    for c in failed:
        assert rows[c.key].search is None and "toy failure" in rows[c.key].reason


@dataclasses.dataclass(frozen=True)
class BuggyFactory:
    """The toy, but plans that prune group 0 below half hit a programming error (a TypeError)."""

    base: ToyEvaluatorFactory = TOY

    def __call__(self):
        ev = self.base()
        orig = ev.evaluate

        def buggy(plan, subset="search", **kw):
            if plan.keep.get(0, 16) < 8:
                return len(None)  # a bug, not a plan the model cannot take
            return orig(plan, subset, **kw)

        ev.evaluate = buggy  # type: ignore[method-assign]
        return ev


def test_unexpected_errors_are_counted_and_logged(tmp_path: Path, caplog) -> None:
    """A bug in an evaluator is not silently an infeasible candidate: its reason says so, the result
    counts it and the log carries its traceback (once per bug)."""
    with caplog.at_level(logging.WARNING, logger="emomc_onnx.search.workers"):
        r = _run(tmp_path, factory=BuggyFactory())
    bugs = r.unexpected_failures()
    assert bugs and all(b.startswith("unexpected TypeError") and "test_driver.py:" in b for b in bugs)
    assert r.failures()["pruned"]["unexpected"] == len(bugs)
    logged = [rec for rec in caplog.records if "failed unexpectedly" in rec.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
    # the toy's own PlanError failures are expected: quiet and not counted as bugs
    quiet = _run(tmp_path / "q", factory=ToyEvaluatorFactory(fail_keep_below=0.5))
    assert quiet.failures()["pruned"]["failed"] > 0 and not quiet.unexpected_failures()


def test_resume_re_evaluates_nothing(tmp_path: Path) -> None:
    CALLS.clear()
    first = _run(tmp_path, factory=CountingFactory())
    n_first = len(CALLS)
    assert n_first == first.n_fresh > first.n_evaluations
    CALLS.clear()
    again = _run(tmp_path, factory=CountingFactory())
    assert CALLS == [] and again.n_fresh == 0
    assert _front(again) == _front(first)
    # more generations: only the new candidates are evaluated
    longer = dataclasses.replace(SMALL, generations=7)
    CALLS.clear()
    more = _run(tmp_path, longer, factory=CountingFactory())
    keys = {k for k, s in CALLS if s == "search"}
    old = {c.key for c in first.candidates}
    assert keys and not keys & old
    # without resume everything is evaluated again
    CALLS.clear()
    _run(tmp_path, dataclasses.replace(SMALL, resume=False), factory=CountingFactory())
    assert len(CALLS) == n_first
    assert more.n_evaluations > first.n_evaluations


class _Kill(Exception):
    pass


def test_store_survives_a_kill_and_resume_continues(tmp_path: Path) -> None:
    def killer(ev: ProgressEvent) -> None:
        if ev.stage == 2 and ev.generation == 1:
            raise _Kill()

    with pytest.raises(_Kill):
        _run(tmp_path / "run", progress=killer)
    db = tmp_path / "run" / "results.sqlite"
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    n_rows = con.execute("SELECT COUNT(*) FROM candidates").fetchone()[0]
    n_hv = con.execute("SELECT COUNT(*) FROM hypervolume").fetchone()[0]
    con.close()
    assert n_rows > 12 and n_hv == SMALL.generations + 2
    CALLS.clear()
    resumed = _run(tmp_path / "run", factory=CountingFactory())
    fresh_search = [k for k, s in CALLS if s == "search"]
    # +1: the baseline row; the sensitivity probes were all stored before the kill
    assert resumed.n_probes and len(fresh_search) == resumed.n_evaluations + resumed.n_probes + 1 - n_rows
    reference = _run(tmp_path / "ref")
    assert _front(resumed) == _front(reference)


def test_ctrl_c_returns_the_front_so_far(tmp_path: Path) -> None:
    def interrupt(ev: ProgressEvent) -> None:
        if ev.stage == 1 and ev.generation == 2:
            raise KeyboardInterrupt

    r = _run(tmp_path, progress=interrupt)
    assert r.interrupted and r.front and 2 not in r.stop_reasons
    assert all(m.stage == 1 for m in r.front)
    with ResultStore.in_dir(tmp_path) as store:
        assert store.count(r.fingerprint) == r.n_evaluations + r.n_probes + 1


def test_max_accuracy_drop_judged_on_search_with_margin_then_on_test(tmp_path: Path) -> None:
    free = _run(tmp_path / "free")
    drops = [100 * (free.baseline.metric - m.test.metric) for m in free.front]
    assert max(drops) > 2.0  # without the constraint the front goes further
    cfg = dataclasses.replace(SMALL, max_accuracy_drop=2.0)
    r = _run(tmp_path / "c", cfg)
    assert r.front
    for m in r.front:
        st = m.search.extra["stats"]
        # during the search: the search split's paired drop, within one standard error of the limit
        assert -100 * st["diff"] - 100 * cfg.drop_noise_z * st["se_diff"] <= 2.0
        # after: the test split's drop decides (kept, but marked)
        test_drop = -100 * m.test.extra["stats"]["diff"]
        assert (m.violation is None) == (test_drop <= 2.0), (m.violation, test_drop)
    assert any(not c.feasible and "accuracy drop" in (c.reason or "") for c in r.candidates)
    # without the margin the search is stricter: never more feasible candidates
    strict = _run(tmp_path / "s", dataclasses.replace(cfg, drop_noise_z=0.0))
    assert sum(c.feasible for c in strict.candidates) < sum(c.feasible for c in r.candidates)


def test_racing_skips_dominated_candidates_and_keeps_them_out_of_the_front(tmp_path: Path) -> None:
    CALLS.clear()
    raced = _run(tmp_path / "race", factory=CountingFactory())
    out = [c for c in raced.candidates if c.raced_out]
    assert out and raced.n_raced_out == len(out)
    assert all(c.search.extra["stats"]["split"] == "race" for c in out)
    front_keys = {m.key for m in raced.front}
    assert not front_keys & {c.key for c in out}
    # a raced-out candidate was dominated, with its optimism, by one measured on the whole split
    measured = np.array([c.objectives for c in raced.candidates if c.feasible and not c.raced_out])
    for c in out:
        assert any(_dominates(m, c.objectives) for m in measured)
    plain = _run(tmp_path / "plain", dataclasses.replace(SMALL, race=False))
    assert plain.n_raced_out == 0
    assert all(c.search.extra["stats"]["split"] == "search" for c in plain.candidates if c.search)


def test_max_evaluations_budget(tmp_path: Path) -> None:
    r = _run(tmp_path, SearchConfig(population=12, generations=50, max_evaluations=40))
    assert r.n_evaluations == 40
    assert r.stop_reasons == {1: "max_evaluations", 2: "max_evaluations"}
    assert sum(1 for c in r.candidates if c.stage == 1) == 20


def test_time_budget(tmp_path: Path) -> None:
    slow = ToyEvaluatorFactory(delay_s=0.01)
    r = _run(tmp_path, SearchConfig(population=8, generations=1000, time_budget_s=0.6),
             factory=slow)
    assert r.stop_reasons == {1: "time_budget", 2: "time_budget"} and r.front
    assert r.elapsed_s < 5


def test_emomc_space_runs(tmp_path: Path) -> None:
    r = _run(tmp_path, kind="emomc")
    assert r.front
    for m in r.front:
        assert len(set(m.plan.density.values())) == 1
        assert m.plan.keep == {0: 16, 1: 32, 2: 16}


def test_objective_subset(tmp_path: Path) -> None:
    r = _run(tmp_path, dataclasses.replace(SMALL, objectives=("error", "size")))
    assert r.front_objectives().shape[1] == 2
    with pytest.raises(PlanError, match="unknown"):
        _run(tmp_path / "x", dataclasses.replace(SMALL, objectives=("error", "latency")))


def test_config_validation() -> None:
    with pytest.raises(PlanError, match="population"):
        SearchConfig(population=1)
    with pytest.raises(PlanError, match="stage1_share"):
        SearchConfig(stage1_share=1.0)
    with pytest.raises(PlanError, match="workers"):
        SearchConfig(workers=0)


def test_two_workers_same_front(tmp_path: Path) -> None:
    one = _run(tmp_path / "one", seed=5)
    two = _run(tmp_path / "two", dataclasses.replace(SMALL, workers=2), seed=5)
    assert _front(one) == _front(two)
    assert [c.key for c in one.candidates] == [c.key for c in two.candidates]


def test_stage2_first_generation_seeds(tmp_path: Path) -> None:
    """Stage 2 starts from the stage-1 front at uniform bit widths: up to three populations
    of them, every one with one weight and one activation width, the most accurate
    architecture at every weight width, and architectures stripped of their sparsity."""
    cfg = SearchConfig(population=8, generations=1, predicted_seeds=False)  # (those: test_predictor.py)
    r = _run(tmp_path, cfg)
    s1 = [c for c in r.candidates if c.stage == 1 and c.feasible]
    s2 = [c for c in r.candidates if c.stage == 2]
    assert cfg.population < len(s2) <= 3 * cfg.population
    for c in s2:
        assert len(set(c.plan.wbits.values())) == 1 and len(set(c.plan.abits.values())) == 1
    arch = lambda p: (tuple(sorted(p.keep.items())), tuple(sorted(p.density.items())))  # noqa: E731
    best = min(s1, key=lambda c: (c.objectives, c.key))
    space = r.space
    for w in space.wbits:
        assert any(arch(c.plan) == arch(best.plan) and set(c.plan.wbits.values()) == {w} for c in s2), w
    s1_archs = {arch(c.plan) for c in s1}
    dense_new = [c for c in s2 if arch(c.plan) not in s1_archs and set(c.plan.density.values()) == {1.0}]
    assert dense_new, "no sparsity-free twin of a stage-1 architecture was seeded"
