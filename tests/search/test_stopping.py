"""A stage's pymoo terminations: generations, evaluations, time, and which one stopped it."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.problem import Problem

from emomc_onnx.search.driver import SearchConfig, run_search
from emomc_onnx.search.stopping import exhausted, stage_termination, stop_reason
from emomc_onnx.search.store import ResultStore
from tests.search.toy import ToyEvaluatorFactory, toy_space


class _Sphere(Problem):
    def __init__(self) -> None:
        super().__init__(n_var=3, n_obj=2, xl=0.0, xu=1.0)

    def _evaluate(self, x, out, *args, **kwargs):
        out["F"] = np.column_stack([(x**2).sum(1), ((x - 1) ** 2).sum(1)])


def _drive(termination, delay_s: float = 0.0, evals_per_gen: int = 8) -> int:
    """ask/tell as the driver does (evaluations counted by hand); returns the generations told."""
    problem = _Sphere()
    alg = NSGA2(pop_size=8)
    alg.setup(problem, termination=termination, seed=1, verbose=False)
    told = 0
    while alg.has_next():
        pop = alg.ask()
        alg.evaluator.eval(problem, pop, count_evals=False)
        alg.evaluator.n_eval += evals_per_gen
        time.sleep(delay_s)
        alg.tell(infills=pop)
        told += 1
    return told


def test_generations_evaluations_and_time_each_stop_a_stage() -> None:
    t = stage_termination(4, None, None)
    assert _drive(t) == 4 and stop_reason(t) == "generations"
    t = stage_termination(100, 20, None)  # 8 per generation: 8, 16, 24 >= 20
    assert _drive(t) == 3 and stop_reason(t) == "max_evaluations"
    t = stage_termination(100, None, 0.25)
    assert 2 <= _drive(t, delay_s=0.1) <= 4 and stop_reason(t) == "time_budget"
    # reached together: generations first, then time, then evaluations (as the driver reports)
    t = stage_termination(3, 24, None)
    assert _drive(t) == 3 and stop_reason(t) == "generations"


def test_a_spent_budget_does_not_start_a_stage() -> None:
    assert exhausted(0, None) == "max_evaluations"
    assert exhausted(None, -0.5) == "time_budget"
    assert exhausted(5, 0.0) == "time_budget"
    assert exhausted(5, 1.0) is None and exhausted(None, None) is None


def test_the_driver_runs_exactly_the_generations_asked(tmp_path: Path) -> None:
    f = ToyEvaluatorFactory()
    cfg = SearchConfig(population=8, generations=3)
    with ResultStore.in_dir(tmp_path) as store:
        r = run_search(toy_space(f), f, cfg, store, seed=2)
    per_stage = {s: [h.generation for h in r.history if h.stage == s] for s in (1, 2)}
    assert per_stage == {1: [0, 1, 2], 2: [0, 1, 2]} and r.stop_reasons == {1: "generations", 2: "generations"}
    # a budget smaller than stage 1's first generation leaves stage 2 what remains, exactly
    small = dataclasses.replace(cfg, generations=50, max_evaluations=11)
    with ResultStore.in_dir(tmp_path / "b") as store:
        r = run_search(toy_space(f), f, small, store, seed=2)
    assert r.n_evaluations == 11 and sum(c.stage == 1 for c in r.candidates) == 5
