"""Steady-state NSGA-II (``schedule="steady"``): busy workers, exact budgets, the store and resume
as in the generational mode, and one worker deterministic for a seed."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import pytest

from emomc_onnx.errors import PlanError
from emomc_onnx.search.driver import SearchConfig, SearchResult, run_search
from emomc_onnx.search.space import CompressionPlan
from emomc_onnx.search.store import ResultStore
from tests.search.toy import ToyEvaluator, ToyEvaluatorFactory, toy_space

STEADY = SearchConfig(population=8, generations=4, schedule="steady")
TOY = ToyEvaluatorFactory()


def _run(tmp: Path, config: SearchConfig = STEADY, factory=TOY, seed: int = 0) -> SearchResult:
    base = getattr(factory, "base", factory)
    with ResultStore.in_dir(tmp) as store:
        return run_search(toy_space(base), factory, config, store, seed=seed)


def _front(r: SearchResult) -> list[tuple[str, tuple[float, ...]]]:
    return [(m.key, m.objectives_search) for m in r.front]


def test_schedule_is_validated() -> None:
    with pytest.raises(PlanError, match="schedule"):
        SearchConfig(schedule="async")


def test_one_worker_same_seed_same_front(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", seed=7)
    b = _run(tmp_path / "b", seed=7)
    c = _run(tmp_path / "c", seed=8)
    assert _front(a) and _front(a) == _front(b)
    assert [k.key for k in a.candidates] == [k.key for k in b.candidates]
    assert [k.key for k in a.candidates] != [k.key for k in c.candidates]


@pytest.mark.parametrize("budget", [17, 40])
def test_evaluation_budget_exact(tmp_path: Path, budget: int) -> None:
    cfg = dataclasses.replace(STEADY, generations=50, max_evaluations=budget)
    r = _run(tmp_path, cfg)
    assert r.n_evaluations == budget
    assert r.stop_reasons == {1: "max_evaluations", 2: "max_evaluations"}
    assert sum(1 for c in r.candidates if c.stage == 1) == int(budget * cfg.stage1_share)


def test_generations_cap_new_candidates(tmp_path: Path) -> None:
    """Without a budget a stage takes its initial population plus (generations - 1) populations."""
    r = _run(tmp_path, STEADY)
    n1 = sum(1 for c in r.candidates if c.stage == 1)
    assert n1 == STEADY.population * STEADY.generations
    assert r.stop_reasons[1] == "generations"
    assert len([h for h in r.history if h.stage == 1]) == STEADY.generations


def test_resume_re_evaluates_nothing(tmp_path: Path) -> None:
    first = _run(tmp_path, seed=3)
    again = _run(tmp_path, seed=3)
    assert first.n_search_fresh > 0
    assert again.n_search_fresh == 0 and again.n_search_cached == first.n_search_fresh
    assert _front(again) == _front(first)


@dataclasses.dataclass(frozen=True)
class OneSlowFactory:
    """Toy evaluators logging ``start end key`` per search candidate; the first candidate of the run
    (whichever process takes it) takes ``slow_s``, the others ``fast_s``."""

    log: str
    slow_s: float = 2.0
    fast_s: float = 0.01
    base: ToyEvaluatorFactory = dataclasses.field(default_factory=ToyEvaluatorFactory)

    def __call__(self) -> ToyEvaluator:
        ev = self.base()
        orig = ev.evaluate
        flag = self.log + ".slow"
        empty = CompressionPlan.empty().key()
        orig(CompressionPlan.empty(), "search")  # warm (imports) before the clock matters

        def timed(plan, subset="search", **kw):
            t0 = time.time()
            if subset == "search" and plan.key() != empty:  # the baseline runs alone, in the driver
                try:
                    os.close(os.open(flag, os.O_CREAT | os.O_EXCL))
                    time.sleep(self.slow_s)
                except FileExistsError:
                    time.sleep(self.fast_s)
            out = orig(plan, subset, **kw)
            if subset == "search":
                with open(self.log, "a") as f:
                    f.write(f"{t0} {time.time()} {plan.key()}\n")
            return out

        ev.evaluate = timed  # type: ignore[method-assign]
        return ev


def _passed_during_slow(log: Path) -> int:
    rows = [line.split() for line in log.read_text().splitlines()]
    spans = [(float(a), float(b)) for a, b, _ in rows]
    slow = max(spans, key=lambda s: s[1] - s[0])
    return sum(1 for a, b in spans if a > slow[0] and b < slow[1])


@pytest.mark.parametrize("schedule,busy", [("steady", True), ("generational", False)])
def test_one_slow_candidate_does_not_stall_the_other_worker(tmp_path: Path, schedule: str, busy: bool) -> None:
    """Two workers, one candidate 2 s, the rest 10 ms: while the slow one runs, the steady search
    keeps the other worker on new offspring (many more than one population); the generational one
    runs out of work at the end of its generation (fewer than one population)."""
    log = tmp_path / "times.log"
    factory = OneSlowFactory(str(log))
    cfg = dataclasses.replace(STEADY, workers=2, generations=30, max_evaluations=120, schedule=schedule)
    r = _run(tmp_path / "run", cfg, factory)
    assert r.n_evaluations == 120
    passed = _passed_during_slow(log)
    if busy:
        assert passed > 2 * cfg.population, passed
    else:
        assert passed < cfg.population, passed


def test_steady_engine_keeps_the_best_population() -> None:
    """Told candidates are merged by rank and crowding: the population stays at ``pop_size`` and
    holds the non-dominated ones."""
    from pymoo.algorithms.moo.nsga2 import NSGA2

    from emomc_onnx.search.problem import make_problem
    from emomc_onnx.search.steady import SteadyNSGA2

    xu = np.array([5, 5, 5])
    problem = make_problem(3, xu, _Obj())
    X0 = np.array([[i, 5 - i, i % 3] for i in range(6)])
    alg = NSGA2(pop_size=4, sampling=X0, eliminate_duplicates=True)
    alg.setup(problem, termination=("n_gen", 10**9), seed=1, verbose=False)
    eng = SteadyNSGA2(alg, problem)
    init = eng.initial()
    assert len(init) == 6 and eng.ask() is None  # nothing evaluated: nothing to mate
    F = [(3.0, 3.0), (0.0, 3.0), (2.0, 2.0), (1.0, 2.0), (2.0, 1.0), (3.0, 0.0)]  # rows 0 and 2 dominated
    for x, f in zip(init, F):
        eng.tell(x, f, (-1.0,))
    assert len(eng.pop) == 4
    kept = {tuple(int(v) for v in x) for x in eng.pop.get("X")}
    assert kept == {tuple(int(v) for v in init[i]) for i in (1, 3, 4, 5)}
    eng.tell(np.array([0, 0, 0]), (5.0, 5.0), (-1.0,))  # dominated by all: not kept
    assert (0, 0, 0) not in {tuple(int(v) for v in x) for x in eng.pop.get("X")}
    child = eng.ask()
    assert child is not None and child.shape == (3,) and np.all((0 <= child) & (child <= xu))


@dataclasses.dataclass(frozen=True)
class _Obj:
    n_obj: int = 2
    n_constr: int = 1
