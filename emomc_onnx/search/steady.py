"""Steady-state NSGA-II: tell each result as it arrives, ask for the next candidate, keep every
worker busy.

The generational driver waits at the end of every generation for its slowest candidate; with
many workers most of them idle there (``benchmarks/scaling.py``: more than 20% of worker time at
32 workers). Here a stage keeps ``backend.slots()`` candidates in flight; each finished one is
merged into the population with pymoo's RankAndCrowding survival (a (mu + 1) NSGA-II) and the
freed worker gets the next offspring of pymoo's mating (binary tournament on rank and crowding,
SBX and PM with rounding): the same algorithm object, operators and seed as the generational
stage. Results go into the same store as they finish, counted against the same budgets; one
generation is ``population`` candidates (the initial population counts as the first), so a
progress line and a hypervolume record come every ``population`` results. With one worker the
run is deterministic for a seed (one candidate in flight: ask, evaluate, tell).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from pymoo.core.population import Population

from emomc_onnx.search.workers import safe_eval

__all__ = ["SCHEDULES", "SteadyNSGA2", "run_steady_stage"]

logger = logging.getLogger(__name__)

SCHEDULES = ("generational", "steady")
MAX_MISSES = 200  # offspring in a row that are already known: the space is (nearly) exhausted


class SteadyNSGA2:
    """pymoo's NSGA-II (a set-up ``NSGA2`` object) one candidate at a time.

    ``initial()`` is the algorithm's first population (its sampling, duplicates removed);
    ``ask()`` one offspring of the evaluated population (None while fewer than two are evaluated
    or when mating finds no new genome); ``tell()`` merges one evaluated candidate and keeps the
    best ``pop_size`` by rank and crowding.
    """

    def __init__(self, algorithm: Any, problem: Any) -> None:
        self.alg, self.problem = algorithm, problem
        self.pop = Population.create()
        self._offspring: list[np.ndarray] = []

    def initial(self) -> list[np.ndarray]:
        pop = self.alg.ask()
        return [] if pop is None else list(np.rint(pop.get("X")).astype(np.int64))

    def ask(self) -> np.ndarray | None:
        if not self._offspring:
            if len(self.pop) < 2:
                return None
            off = self.alg.mating.do(self.problem, self.pop, self.alg.mating.crossover.n_offsprings,
                                     algorithm=self.alg, random_state=self.alg.random_state)
            self._offspring = list(np.rint(off.get("X")).astype(np.int64)) if len(off) else []
            if not self._offspring:
                return None
        return self._offspring.pop(0)

    def tell(self, x: np.ndarray, F: tuple[float, ...], G: tuple[float, ...]) -> None:
        # what pymoo's Evaluator sets (CV and feasibility follow from G), without its per-call cost
        ind = Population.new(X=np.asarray(x, dtype=float)[None, :], F=np.asarray([F], dtype=float),
                             G=np.asarray([G], dtype=float).reshape(1, -1))
        ind[0].evaluated.update(("F", "G"))
        merged = Population.merge(self.pop, ind)
        self.pop = self.alg.survival.do(self.problem, merged, n_survive=min(self.alg.pop_size, len(merged)),
                                        algorithm=self.alg, random_state=self.alg.random_state)


def run_steady_stage(run: Any, stage: int, algorithm: Any, problem: Any, eval_budget: int | None,
                     deadline: float | None) -> str:
    """One stage of the search, steady-state; returns why it stopped (as the generational stage).

    ``run`` is the driver's run (records, store, judge, racing gate, backend); ``algorithm`` the
    stage's set-up pymoo NSGA2 (its sampling is the stage's initial population).
    """
    cfg = run.config
    P = cfg.population
    engine = SteadyNSGA2(algorithm, problem)
    initial = engine.initial()
    if not initial:
        return "space_exhausted"
    # new candidates this stage may take: the generations' worth, and the evaluation budget
    cap, why_cap = len(initial) + (cfg.generations - 1) * P, "generations"
    if eval_budget is not None and eval_budget <= cap:
        cap, why_cap = eval_budget, "max_evaluations"
    stream, slots = run.workers.stream(safe_eval)
    inflight: set[str] = set()
    used = told = misses = 0
    stop: str | None = None
    t0 = time.perf_counter()
    try:
        while True:
            while stop is None and len(stream) < slots:
                if used >= cap:
                    stop = why_cap
                elif deadline is not None and time.monotonic() >= deadline:
                    stop = "time_budget"
                if stop is not None:
                    break
                x = initial.pop(0) if initial else engine.ask()
                if x is None:
                    if not len(stream) and len(engine.pop) >= 2:
                        stop = "space_exhausted"  # mating finds no new genome and nothing is running
                    break  # wait for a result (too few evaluated to mate yet)
                plan = run.codec.decode(x, stage)
                key = plan.key()
                if key in run.records.records or key in inflight:
                    misses += 1
                    if misses >= MAX_MISSES:
                        if not len(stream):
                            stop = "space_exhausted"
                        misses = 0
                        break  # wait for a result: the population changes
                    continue
                misses = 0
                used += 1
                stored = run.store.get(run.fp, key) if cfg.resume else None
                if stored is not None:  # a resumed run: read, not evaluated (counts like a fresh one)
                    cand = run.records.evaluate([plan], stage)[0]
                    engine.tell(x, cand.objectives, cand.constraints)
                    told += 1
                    if told % P == 0:
                        run.checkpoint(stage, told // P - 1)
                    continue
                stream.submit((x, plan), plan, "search", run.records.gate(stage))
                inflight.add(key)
            if not len(stream):
                break
            (x, plan), result = stream.next()
            inflight.discard(plan.key())
            cand = run.records.record(plan, stage, result)
            run.records.records[cand.key] = cand
            engine.tell(x, cand.objectives, cand.constraints)
            told += 1
            if told % P == 0:
                run.checkpoint(stage, told // P - 1)
                slots = run.workers.slots()  # workers that joined (or left) a cluster since
    finally:
        stream.close()
        run.records.eval_wall += time.perf_counter() - t0
    if told % P:
        run.checkpoint(stage, told // P)
    return stop or why_cap
