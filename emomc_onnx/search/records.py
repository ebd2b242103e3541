"""The run's evaluated candidates: served from the run, then the result store, then evaluated.

:class:`RunRecords` is the one place a plan becomes a :class:`Candidate`: a plan already seen
in this run is not evaluated again, one stored by an earlier run with the same fingerprint is
read (``resume``), the rest go to the :class:`~emomc_onnx.search.workers.Workers` and each
result is written to the store the moment it exists, so a killed run loses nothing finished.
It also judges each result (objectives, constraints, feasibility) and builds the racing gate
from the candidates measured so far.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence

import numpy as np

from emomc_onnx.search.evaluator import Evaluation
from emomc_onnx.search.hypervolume import dominated_by, non_dominated
from emomc_onnx.search.problem import Objectives
from emomc_onnx.search.space import CompressionPlan
from emomc_onnx.search.store import ResultStore
from emomc_onnx.search.workers import Result, Workers

__all__ = ["Candidate", "RaceGate", "RunRecords"]


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One evaluated candidate of the run (search subset).

    Attributes:
        key: plan key.
        plan: the plan.
        stage: stage that proposed it first (0 = the unmodified model).
        search: evaluation on the search subset, None if it failed.
        reason: failure message, or constraint violation; None when feasible.
        objectives: normalised objective row (as given to NSGA-II).
        constraints: constraint row (``<= 0`` satisfied).
        feasible: ran and satisfies the constraints.
        seconds: evaluation wall time (0 for a stored result).
        cached: served from the result store.
        raced_out: measured on the racing prefix only (dominated there with margin).
    """

    key: str
    plan: CompressionPlan
    stage: int
    search: Evaluation | None
    reason: str | None
    objectives: tuple[float, ...]
    constraints: tuple[float, ...]
    feasible: bool
    seconds: float
    cached: bool
    raced_out: bool = False


@dataclasses.dataclass(frozen=True)
class RaceGate:
    """Decides after the racing prefix whether a candidate gets the rest of the search split.

    Picklable (it travels to the worker processes). A candidate continues unless a candidate
    already measured on the whole search split dominates its optimistic objectives: error
    lowered by ``z`` binomial standard errors of the prefix (energy and size are exact).
    """

    objectives: Objectives
    archive: tuple[tuple[float, ...], ...]
    z: float = 2.0

    def __call__(self, ev: Evaluation) -> bool:
        if not self.archive:
            return True
        F = self.objectives.f(ev)
        if "error" in self.objectives.names:
            i = self.objectives.names.index("error")
            stats = ev.extra.get("stats") or {}
            n = max(int(stats.get("n") or 1), 1)
            e = float(F[i])
            F[i] = e - self.z * math.sqrt(max(e * (1.0 - e), 1.0 / n) / n)
        return not bool(dominated_by(np.asarray(self.archive, dtype=float), F)[0])


def _floats(v: np.ndarray) -> tuple[float, ...]:
    return tuple(float(x) for x in v)


def _raced(ev: Evaluation | None) -> bool:
    return bool(ev is not None and ev.extra and ev.extra.get("raced_out"))


class RunRecords:
    """The candidates of one run, keyed by plan key, and the counts the summary reports.

    Attributes:
        objectives: judges search-split results (set by the driver once the baseline is known).
        records: plan key -> candidate, in the order the run first met them.
        test: plan key -> (test-split evaluation or None, failure reason).
    """

    def __init__(self, store: ResultStore, fingerprint: str, workers: Workers, *, resume: bool,
                 race_z: float | None) -> None:
        self.store, self.fp, self.workers = store, fingerprint, workers
        self.resume = resume
        self.race_z = race_z if workers.can_race else None
        self.objectives: Objectives
        self.records: dict[str, Candidate] = {}
        self.test: dict[str, tuple[Evaluation | None, str | None]] = {}
        self.eval_wall = 0.0
        self.eval_seconds = 0.0
        self.n_fresh = 0
        self.n_cached = 0
        self.n_full_fresh = 0
        self.n_full_cached = 0

    # -- judging --
    def judge(self, ev: Evaluation | None, reason: str | None
              ) -> tuple[np.ndarray, np.ndarray, bool, str | None]:
        """Objectives, constraints, feasibility and the reason it is infeasible (or None)."""
        F = self.objectives.f(ev)
        G = self.objectives.g(ev)
        why = self.objectives.violation(ev, reason)
        return F, G, why is None, why

    def gate(self, stage: int) -> RaceGate | None:
        """The racing gate for a batch: the archive as it stands before the batch (deterministic)."""
        if self.race_z is None or stage == 0:
            return None
        F = self.feasible_F()
        if len(F) == 0:
            return None
        archive = tuple(tuple(F[i]) for i in non_dominated(F))
        return RaceGate(self.objectives, archive, self.race_z)

    # -- search split --
    def record(self, plan: CompressionPlan, stage: int, result: Result) -> Candidate:
        """Judge a fresh result, write it to the store and return its candidate (not yet
        added to ``records``: :meth:`evaluate` adds a batch in plan order)."""
        ev, reason, secs = result
        F, G, ok, why = self.judge(ev, reason)
        self.store.put_search(self.fp, plan, stage, ev, feasible=ok, reason=why, objectives=list(F),
                              seconds=secs)
        self.n_fresh += 1
        self.eval_seconds += secs
        return Candidate(plan.key(), plan, stage, ev, why, _floats(F), _floats(G), ok, secs, False,
                         _raced(ev))

    def evaluate(self, plans: Sequence[CompressionPlan], stage: int) -> list[Candidate]:
        """Search-subset results of plans (run cache, then store, then evaluation)."""
        todo: list[CompressionPlan] = []
        for p in plans:
            k = p.key()
            if k in self.records or any(t.key() == k for t in todo):
                continue
            sc = self.store.get(self.fp, k) if self.resume else None
            if sc is not None:  # a row only exists once its search evaluation finished
                reason = None if sc.search is not None else sc.reason
                F, G, ok, why = self.judge(sc.search, reason)
                self.records[k] = Candidate(k, p, stage, sc.search, why, _floats(F),
                                            _floats(G), ok, 0.0, True, _raced(sc.search))
                self.n_cached += 1
                if sc.full is not None or sc.reason_full is not None:
                    self.test[k] = (sc.full, sc.reason_full)
            else:
                todo.append(p)
        t0 = time.perf_counter()
        done: dict[int, Candidate] = {}
        try:  # stored as each one finishes
            for i, result in self.workers.map(todo, "search", self.gate(stage)):
                done[i] = self.record(todo[i], stage, result)
        finally:
            for i in sorted(done):  # the run's records in plan order, whatever order they finished in
                self.records[done[i].key] = done[i]
            self.eval_wall += time.perf_counter() - t0
        return [self.records[p.key()] for p in plans]

    # -- test split --
    def evaluate_test(self, cands: Sequence[Candidate]) -> None:
        """Test-split results of front members (cached in the store's ``full`` columns)."""
        todo: list[CompressionPlan] = []
        for c in cands:
            if c.key in self.test:
                self.n_full_cached += 1
                continue
            sc = self.store.get(self.fp, c.key) if self.resume else None
            if sc is not None and (sc.full is not None or sc.reason_full is not None):
                self.test[c.key] = (sc.full, sc.reason_full)
                self.n_full_cached += 1
            else:
                todo.append(c.plan)
        t0 = time.perf_counter()
        for i, (ev, reason, secs) in self.workers.map(todo, "test"):
            p = todo[i]
            self.store.put_full(self.fp, p, ev, reason=reason, seconds=secs)
            self.test[p.key()] = (ev, reason)
            self.n_fresh += 1
            self.n_full_fresh += 1
            self.eval_seconds += secs
        self.eval_wall += time.perf_counter() - t0

    # -- views --
    def searched(self) -> list[Candidate]:
        """Candidates the search proposed (stage >= 1), in the order the run met them."""
        return [c for c in self.records.values() if c.stage > 0]

    def n_evals(self) -> int:
        """Distinct candidates the search proposed so far (served from the store or computed)."""
        return sum(1 for c in self.records.values() if c.stage > 0)

    def feasible_F(self, stage: int | None = None) -> np.ndarray:
        """Objective rows of the feasible candidates measured on the whole search split."""
        rows = [c.objectives for c in self.records.values()
                if c.feasible and c.stage > 0 and not c.raced_out and (stage is None or c.stage == stage)]
        return np.array(rows, dtype=float).reshape(len(rows), self.objectives.n_obj)

    def best(self) -> dict[str, float]:
        """The best value of each objective among them (empty before the first)."""
        F = self.feasible_F()
        if len(F) == 0:
            return {}
        return {n: float(F[:, i].min()) for i, n in enumerate(self.objectives.names)}
