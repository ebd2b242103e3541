"""Two-stage NSGA-II search (pymoo ask-and-tell) with a result store and worker processes.

Stage 1 searches the pruning genes (keep per group + density per layer, or the emomc
space's global density) with bits at reference precision (None). Stage 2 searches the
whole genome: the bit genes *and* the pruning genes, so it can still fine-tune the
architecture around a bit assignment; its initial population combines the stage-1 front's
architectures with uniform and random bit assignments.

Honest figures: candidates are ranked on the evaluator's *search* split, and the final front
is the non-dominated set of those figures. Every member (and the original model) is then
measured once on the *test* split, which neither the search nor the choice of the front saw;
those are the figures reported, with 95% intervals and the paired difference to the original.
The front is not re-chosen on the test figures (that would bias them again).

Racing: from the second generation on, a candidate is first measured on the search split's
racing prefix; only if its optimistic figures (error lowered by ``race_z`` standard errors)
are not dominated by a candidate already measured on the whole search split does it get the
rest. Raced-out candidates inform NSGA-II but never enter the front.

Budgets: ``generations`` applies to each stage; ``max_evaluations`` and ``time_budget_s``
are totals for the run, stage 1 getting ``stage1_share`` of them and stage 2 the rest
(including whatever stage 1 left unused). Evaluations count distinct candidates of the run
(served from the store or computed), so a resumed run retraces the same path exactly; the
time budget is the only source of run-to-run variation.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.evaluator import Evaluator as PymooEvaluator
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.problems.static import StaticProblem

from emomc_onnx.errors import EmomcError, MetricError, PlanError
from emomc_onnx.search.backends import Backend, make_backend
from emomc_onnx.search.evaluator import Evaluation, Evaluator, EvaluatorFactory
from emomc_onnx.search.genome import GenomeCodec
from emomc_onnx.search.hypervolume import hypervolume, non_dominated
from emomc_onnx.search.problem import OBJECTIVES, Objectives, make_problem
from emomc_onnx.search.space import CompressionPlan, SearchSpace
from emomc_onnx.search.store import HVRecord, ResultStore

__all__ = [
    "RaceGate",
    "SearchConfig",
    "Candidate",
    "FrontMember",
    "ProgressEvent",
    "SearchResult",
    "run_search",
]

logger = logging.getLogger(__name__)

_MAX_REASON = 500


STAGE2_SEED_POPULATIONS = 3  # stage 2's first generation, in populations (search_quality.py)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Settings of one search run.

    Attributes:
        objectives: minimised objectives, a subset of ("error", "energy", "size").
        population: NSGA-II population size (both stages).
        generations: generations per stage (the initial population is generation 0).
        max_evaluations: total distinct candidates for the run, or None.
        time_budget_s: total wall-clock budget in seconds, or None.
        stage1_share: share of ``max_evaluations``/``time_budget_s`` given to stage 1.
        max_accuracy_drop: allowed metric drop versus the unmodified model, in points.
        workers: local evaluation processes; 1 evaluates in this process (without ``cluster``).
        cluster: a Dask scheduler address (``tcp://HOST:8786``) or ``local:N`` (a LocalCluster
            of N single-threaded processes): candidates are evaluated there instead.
        resume: reuse candidates already in the store (same fingerprint and plan key).
        mp_context: multiprocessing start method for workers ("spawn" or "forkserver").
        n_uniform: uniform levels used to seed stage 1 (keep/density at the same fraction).
        race: measure candidates on the racing prefix of the search split first.
        race_z: standard errors of optimism a raced candidate gets before it is dropped.
        drop_noise_z: standard errors of the search split's drop granted to
            ``max_accuracy_drop`` during the search (the test split judges with none).
        schedule: "generational" (a batch per generation) or "steady" (steady-state NSGA-II:
            each result told as it arrives, every worker kept busy; ``search/steady.py``).
    """

    objectives: tuple[str, ...] = OBJECTIVES
    population: int = 24
    generations: int = 10
    max_evaluations: int | None = None
    time_budget_s: float | None = None
    stage1_share: float = 0.5
    max_accuracy_drop: float | None = None
    workers: int = 1
    resume: bool = True
    mp_context: str = "spawn"
    n_uniform: int = 3
    race: bool = True
    race_z: float = 2.0
    drop_noise_z: float = 1.0
    cluster: str | None = None
    schedule: str = "generational"

    def __post_init__(self) -> None:
        object.__setattr__(self, "objectives", tuple(self.objectives))
        if self.population < 2:
            raise PlanError(f"population must be >= 2, got {self.population}")
        if self.generations < 1:
            raise PlanError(f"generations must be >= 1, got {self.generations}")
        if self.max_evaluations is not None and self.max_evaluations < 2:
            raise PlanError(f"max_evaluations must be >= 2, got {self.max_evaluations}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise PlanError(f"time_budget_s must be > 0, got {self.time_budget_s}")
        if not 0.0 < self.stage1_share < 1.0:
            raise PlanError(f"stage1_share must be in (0, 1), got {self.stage1_share}")
        if self.workers < 1:
            raise PlanError(f"workers must be >= 1, got {self.workers}")
        if self.mp_context not in ("spawn", "forkserver", "fork"):
            raise PlanError(f"mp_context must be spawn, forkserver or fork, "
                            f"got {self.mp_context!r}")
        if self.schedule not in ("generational", "steady"):
            raise PlanError(f"schedule must be generational or steady, got {self.schedule!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        d = dataclasses.asdict(self)
        d["objectives"] = list(self.objectives)
        return d


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
class FrontMember:
    """A member of the final front: chosen on the search split, reported on the test split.

    Attributes:
        search: figures on the search split (what the front was chosen on).
        test: figures on the test split (what is reported), with statistics in
            ``test.extra["stats"]``.
        objectives_search: normalised objectives on the search split.
        objectives_test: normalised objectives on the test split.
        violation: why the test figures break ``max_accuracy_drop`` (None: they do not).
        gap: :func:`~emomc_onnx.evaluate.stats.drop_gap` of the search and test drops
            (``flag``: the test drop is significantly larger), None without statistics.
    """

    key: str
    plan: CompressionPlan
    stage: int
    search: Evaluation
    test: Evaluation
    objectives_search: tuple[float, ...]
    objectives_test: tuple[float, ...]
    violation: str | None = None
    gap: dict | None = None


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
        A = np.asarray(self.archive, dtype=float)
        dominated = np.all(A <= F, axis=1) & np.any(A < F, axis=1)
        return not bool(dominated.any())


@dataclasses.dataclass(frozen=True)
class ProgressEvent:
    """Reported after every generation, when the front's full-data figures start (phase
    "front") and once the final front is ready (phase "final")."""

    stage: int
    generation: int
    generations: int
    n_evaluations: int
    max_evaluations: int | None
    best: dict[str, float]
    hv: float
    phase: str = "search"
    workers: str | None = None  # e.g. "2 workers up" on a Dask cluster


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """Everything a run produced (the export writes the front and the history)."""

    fingerprint: str
    space: SearchSpace
    config: SearchConfig
    seed: int
    baseline: Evaluation  # the original model on the test split
    baseline_search: Evaluation
    front: tuple[FrontMember, ...]
    history: tuple[HVRecord, ...]
    stage_hv: dict[int, float]  # search-subset hypervolume after stage 1, after stage 2
    front_hv: float
    candidates: tuple[Candidate, ...]
    n_evaluations: int
    n_fresh: int
    n_cached: int
    stop_reasons: dict[int, str]
    interrupted: bool
    elapsed_s: float
    eval_wall_s: float
    eval_seconds: float
    n_search_fresh: int = 0
    n_search_cached: int = 0
    n_full_fresh: int = 0
    n_full_cached: int = 0
    n_raced_out: int = 0

    def counts_line(self) -> str:
        """What was evaluated, in counts that add up (for the CLI's summary)."""
        n_full = self.n_full_fresh + self.n_full_cached
        search = (f"{self.n_evaluations} candidates searched ({self.n_search_fresh} evaluated now, "
                  f"{self.n_search_cached} read from results.sqlite) in {self.elapsed_s:.1f} s")
        raced = f"; {self.n_raced_out} searched candidates stopped after the racing samples" if self.n_raced_out else ""
        front = (f"{n_full} front candidates measured on the test split ({self.n_full_fresh} now, "
                 f"{self.n_full_cached} read), {len(self.front)} kept{raced}; front hypervolume "
                 f"{self.front_hv:.4f} (search split)")
        return f"{search}\n{front}" + (" (interrupted: partial front)" if self.interrupted else "")

    def failures(self) -> dict[str, dict[str, Any]]:
        """Per kind of candidate (pruned, sparse, quantized): how many the search tried, how
        many failed to build or evaluate, and the most common reason (None if none failed)."""
        channels = {g.id: g.channels for g in self.space.groups}
        kinds = {
            "pruned": lambda p: any(k < channels.get(g, k + 1) for g, k in p.keep.items()),
            "sparse": lambda p: any(d < 1.0 for d in p.density.values()),
            "quantized": lambda p: any(b is not None for b in (*p.wbits.values(), *p.abits.values())),
        }
        out: dict[str, dict[str, Any]] = {}
        for kind, has in kinds.items():
            tried = [c for c in self.candidates if has(c.plan)]
            failed = [c.reason or "unknown" for c in tried if c.search is None]
            common = max(set(failed), key=failed.count) if failed else None
            out[kind] = {"candidates": len(tried), "failed": len(failed), "reason": common,
                         "unexpected": sum(1 for r in failed if r.startswith(UNEXPECTED))}
        return out

    def unexpected_failures(self) -> list[str]:
        """Reasons of the candidates that failed with an error no evaluator should raise (bugs)."""
        return [c.reason for c in self.candidates if c.search is None and (c.reason or "").startswith(UNEXPECTED)]

    def front_objectives(self) -> np.ndarray:
        """Search-split normalised objectives of the front (rows): what it was chosen on."""
        return np.array([m.objectives_search for m in self.front], dtype=float).reshape(
            len(self.front), len(self.config.objectives))


UNEXPECTED = "unexpected "  # prefix of the reason of a candidate that failed with a bug, not a plan error
_WARNED: set[tuple[str, str, int]] = set()


# ---- evaluation (in this process or a backend's workers) ---------------------------------
def _safe_eval(evaluator: Evaluator, plan: CompressionPlan, subset: str, gate: RaceGate | None = None
               ) -> tuple[Evaluation | None, str | None, float]:
    """Evaluate, turning any exception into a failure reason."""
    t0 = time.perf_counter()
    try:
        ev = (evaluator.evaluate(plan, subset) if gate is None
              else evaluator.evaluate(plan, subset, gate=gate))
        bad = [f for f in ("metric", "energy", "size_bits")
               if not math.isfinite(float(getattr(ev, f)))]
        if bad:
            raise ValueError(f"evaluator returned non-finite {', '.join(bad)}")
    except MetricError:  # the user's metric is broken: stop the run, do not blame the candidate
        raise
    except (EmomcError, MemoryError, FloatingPointError) as exc:  # a plan this model cannot take
        reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:_MAX_REASON]
        logger.debug("candidate %s failed: %s", plan.key(), reason)
        return None, reason, time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - a bug: the candidate fails, and the run says so loudly
        where = traceback.extract_tb(exc.__traceback__)[-1]
        reason = (f"{UNEXPECTED}{type(exc).__name__}: {exc} (at {os.path.basename(where.filename)}:"
                  f"{where.lineno})").replace("\n", " ")[:_MAX_REASON]
        key = (type(exc).__name__, where.filename, where.lineno)
        if key not in _WARNED:  # once per bug and process, with its traceback; every one is counted
            _WARNED.add(key)
            logger.warning("candidate %s failed unexpectedly", plan.key(), exc_info=True)
        return None, reason, time.perf_counter() - t0
    return ev, None, time.perf_counter() - t0


def _floats(v: np.ndarray) -> tuple[float, ...]:
    return tuple(float(x) for x in v)


# ---- the run ------------------------------------------------------------------------------
class _Run:
    def __init__(self, space: SearchSpace, factory: EvaluatorFactory, config: SearchConfig,
                 store: ResultStore, progress: Callable[[ProgressEvent], None] | None,
                 seed: int) -> None:
        self.space = space
        self.codec = GenomeCodec(space)
        self.factory = factory
        self.config = config
        self.store = store
        self.progress = progress
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.records: dict[str, Candidate] = {}
        self.test: dict[str, tuple[Evaluation | None, str | None]] = {}
        self.history: list[HVRecord] = []
        self.eval_wall = 0.0
        self.eval_seconds = 0.0
        self.backend: Backend | None = None
        self._backend_ready = False
        self.n_fresh = 0
        self.n_cached = 0
        self.n_full_fresh = 0
        self.n_full_cached = 0
        self.evaluator = factory()
        # racing needs an evaluator that takes a gate (plain evaluators are measured whole)
        params = inspect.signature(self.evaluator.evaluate).parameters
        self.can_race = "gate" in params or any(q.kind is q.VAR_KEYWORD for q in params.values())
        self.fp = str(self.evaluator.fingerprint())
        cached = store.get_baseline(self.fp) if config.resume else None
        if cached is None:
            cached = self.evaluator.baseline()
            store.put_baseline(self.fp, cached)
            self.n_fresh += 1
        self.baseline = cached
        self.obj_search: Objectives
        self.obj_test: Objectives

    # -- evaluation plumbing --
    def _map(self, plans: Sequence[CompressionPlan], subset: str, gate: RaceGate | None = None
             ) -> Iterator[tuple[int, tuple[Evaluation | None, str | None, float]]]:
        """(index, result) of every plan, in order of completion (the backend's, or in order here)."""
        if len(plans) > 1 and not self._backend_ready:
            self.backend = make_backend(self.config.cluster, self.config.workers, self.factory,
                                        self.config.mp_context)
            self._backend_ready = True
        if self.backend is not None and len(plans) > 1:
            yield from self.backend.map_unordered(_safe_eval, plans, subset, gate)
        else:
            for i, p in enumerate(plans):
                yield i, _safe_eval(self.evaluator, p, subset, gate)

    def workers_status(self) -> str | None:
        return self.backend.status() if self.backend is not None else None

    def _gate(self, stage: int) -> RaceGate | None:
        """The racing gate for a batch: the archive as it stands before the batch (deterministic)."""
        if not self.config.race or not self.can_race or stage == 0:
            return None
        rows = [c.objectives for c in self.records.values() if c.feasible and c.stage > 0 and not c.raced_out]
        if not rows:
            return None
        F = np.array(rows, dtype=float)
        archive = tuple(tuple(F[i]) for i in non_dominated(F))
        return RaceGate(self.obj_search, archive, self.config.race_z)

    def _judge(self, ev: Evaluation | None, reason: str | None
               ) -> tuple[np.ndarray, np.ndarray, bool, str | None]:
        F = self.obj_search.f(ev)
        G = self.obj_search.g(ev)
        why = self.obj_search.violation(ev, reason)
        return F, G, why is None, why

    def evaluate(self, plans: Sequence[CompressionPlan], stage: int) -> list[Candidate]:
        """Search-subset results of plans (run cache, then store, then evaluation)."""
        todo: list[CompressionPlan] = []
        for p in plans:
            k = p.key()
            if k in self.records or any(t.key() == k for t in todo):
                continue
            sc = self.store.get(self.fp, k) if self.config.resume else None
            if sc is not None:  # a row only exists once its search evaluation finished
                reason = None if sc.search is not None else sc.reason
                F, G, ok, why = self._judge(sc.search, reason)
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
            for i, (ev, reason, secs) in self._map(todo, "search", self._gate(stage)):
                p = todo[i]
                F, G, ok, why = self._judge(ev, reason)
                self.store.put_search(self.fp, p, stage, ev, feasible=ok, reason=why,
                                      objectives=list(F), seconds=secs)
                done[i] = Candidate(p.key(), p, stage, ev, why, _floats(F), _floats(G), ok, secs, False,
                                    _raced(ev))
                self.n_fresh += 1
                self.eval_seconds += secs
        finally:
            for i in sorted(done):  # the run's records in plan order, whatever order they finished in
                self.records[done[i].key] = done[i]
            self.eval_wall += time.perf_counter() - t0
        return [self.records[p.key()] for p in plans]

    def evaluate_test(self, cands: Sequence[Candidate]) -> None:
        """Test-split results of front members (cached in the store's ``full`` columns)."""
        todo: list[CompressionPlan] = []
        for c in cands:
            if c.key in self.test:
                self.n_full_cached += 1
                continue
            sc = self.store.get(self.fp, c.key) if self.config.resume else None
            if sc is not None and (sc.full is not None or sc.reason_full is not None):
                self.test[c.key] = (sc.full, sc.reason_full)
                self.n_full_cached += 1
            else:
                todo.append(c.plan)
        t0 = time.perf_counter()
        for i, (ev, reason, secs) in self._map(todo, "test"):
            p = todo[i]
            self.store.put_full(self.fp, p, ev, reason=reason, seconds=secs)
            self.test[p.key()] = (ev, reason)
            self.n_fresh += 1
            self.n_full_fresh += 1
            self.eval_seconds += secs
        self.eval_wall += time.perf_counter() - t0

    # -- helpers --
    def _feasible_F(self, stage: int | None = None) -> np.ndarray:
        rows = [c.objectives for c in self.records.values()
                if c.feasible and c.stage > 0 and not c.raced_out and (stage is None or c.stage == stage)]
        return np.array(rows, dtype=float).reshape(len(rows), self.obj_search.n_obj)

    def _best(self) -> dict[str, float]:
        F = self._feasible_F()
        if len(F) == 0:
            return {}
        return {n: float(F[:, i].min()) for i, n in enumerate(self.obj_search.names)}

    def _n_evals(self) -> int:
        return sum(1 for c in self.records.values() if c.stage > 0)

    # -- initial populations --
    def _dedupe(self, rows: list[np.ndarray], xu: np.ndarray, n: int) -> np.ndarray:
        seen: set[bytes] = set()
        out: list[np.ndarray] = []
        for r in rows:
            b = r.tobytes()
            if b not in seen:
                seen.add(b)
                out.append(r)
            if len(out) == n:
                break
        tries = 0
        while len(out) < n and tries < 50 * n:
            r = self.rng.integers(0, xu + 1).astype(np.int64)
            tries += 1
            if r.tobytes() not in seen:
                seen.add(r.tobytes())
                out.append(r)
        return np.stack(out)

    def initial_stage1(self) -> np.ndarray:
        _, xu = self.codec.bounds(1)
        n_g = len(self.space.groups) if self.space.kind == "full" else 0
        rows = [xu.copy()]  # no compression
        for lv in np.linspace(1.0, 0.0, self.config.n_uniform + 2)[1:-1]:
            u = np.rint(lv * xu).astype(np.int64)
            rows.append(u)
            if n_g:
                keep_only = xu.copy()
                keep_only[:n_g] = u[:n_g]
                dens_only = xu.copy()
                dens_only[n_g:] = u[n_g:]
                rows += [keep_only, dens_only]
        rows = rows[: max(1, self.config.population // 2)]
        rows += [self.rng.integers(0, xu + 1).astype(np.int64)
                 for _ in range(self.config.population)]
        return self._dedupe(rows, xu, self.config.population)

    def initial_stage2(self) -> np.ndarray:
        _, xu2 = self.codec.bounds(2)
        n_l = len(self.space.layers)
        nw, na = len(self.space.wbits), len(self.space.abits)
        s1 = [c for c in self.records.values() if c.stage == 1 and c.feasible and not c.raced_out]
        if s1:
            F = np.array([c.objectives for c in s1])
            nd = sorted(non_dominated(F), key=lambda i: (tuple(F[i]), s1[i].key))
            archs = [self.codec.encode(s1[i].plan, 1) for i in nd]
        else:
            archs = [self.codec.bounds(1)[1].copy()]
        P = self.config.population
        if len(archs) > P:
            archs = [archs[int(i)] for i in np.rint(np.linspace(0, len(archs) - 1, P))]
        pairs = [(w, a) for w in reversed(range(nw)) for a in reversed(range(na))]
        rows: list[np.ndarray] = []
        # the most accurate stage-1 architecture at every uniform weight width (widest activations):
        # the uniform-quantization points a user would try first are always in the population
        for w_level in reversed(range(nw)):
            rows.append(self.codec.extend(archs[0], np.full(n_l, w_level), np.full(n_l, na - 1)))
        # then every front architecture at every uniform (weight, activation) width, in a random
        # order: small architectures at low widths are often the best trade-offs, and NSGA-II's
        # crossover of such parents makes the per-layer mixed precision from there
        # Each architecture also comes without its fine-grained sparsity: at low bit widths the
        # sparse index costs more than the zeros save, which stage 1 (float) cannot see.
        dense = [self.codec.dense(arch) for arch in archs]
        combos = [(arch, w, a) for arch in archs + dense for w, a in pairs]
        for i in self.rng.permutation(len(combos)):
            arch, w, a = combos[int(i)]
            rows.append(self.codec.extend(arch, np.full(n_l, w), np.full(n_l, a)))
        # a first generation of several populations' worth (NSGA-II keeps the best P of it)
        return self._dedupe(rows, xu2, STAGE2_SEED_POPULATIONS * P)

    # -- one stage --
    def stage(self, stage: int, X0: np.ndarray, eval_budget: int | None,
              deadline: float | None, seed: int) -> str:
        cfg = self.config
        _, xu = self.codec.bounds(stage)
        problem = make_problem(len(xu), xu, self.obj_search)
        algorithm = NSGA2(
            pop_size=cfg.population,
            sampling=X0,
            crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
            mutation=PM(eta=20, vtype=float, repair=RoundingRepair()),
            eliminate_duplicates=True,
        )
        algorithm.setup(problem, termination=("n_gen", 10**9), seed=seed, verbose=False)
        if cfg.schedule == "steady":
            from emomc_onnx.search.steady import run_steady_stage

            return run_steady_stage(self, stage, algorithm, problem, eval_budget, deadline)
        used = 0
        for gen in range(cfg.generations):
            if deadline is not None and time.monotonic() >= deadline:
                return "time_budget"
            remaining = None if eval_budget is None else eval_budget - used
            if remaining is not None and remaining <= 0:
                return "max_evaluations"
            pop = algorithm.ask()
            if pop is None or len(pop) == 0:
                return "space_exhausted"
            X = np.rint(pop.get("X")).astype(np.int64)
            plans = [self.codec.decode(x, stage) for x in X]
            if remaining is not None:
                new: set[str] = set()
                cut = len(plans)
                for i, p in enumerate(plans):
                    if p.key() not in self.records:
                        new.add(p.key())
                        if len(new) > remaining:
                            cut = i
                            break
                if cut < len(plans):
                    pop, plans = pop[:cut], plans[:cut]
            before = self._n_evals()
            cands = self.evaluate(plans, stage)
            used += self._n_evals() - before
            F = np.array([c.objectives for c in cands], dtype=float)
            G = np.array([c.constraints for c in cands], dtype=float)
            PymooEvaluator().eval(StaticProblem(problem, F=F, G=G), pop)
            algorithm.tell(infills=pop)
            rec = HVRecord(stage, gen, self._n_evals(),
                           hypervolume(self._feasible_F(), self.obj_search.n_obj),
                           hypervolume(self._feasible_F(stage), self.obj_search.n_obj))
            self.history.append(rec)
            self.store.put_hv(self.fp, rec)
            logger.info("stage %d gen %d: %d evaluations, hv %.4f", stage, gen,
                        rec.n_evaluations, rec.hv)
            if self.progress is not None:
                self.progress(ProgressEvent(stage, gen, cfg.generations, rec.n_evaluations,
                                            cfg.max_evaluations, self._best(), rec.hv,
                                            workers=self.workers_status()))
        return "generations"

    def final_front(self) -> list[FrontMember]:
        """The non-dominated set on the search split, each member then measured on the test split."""
        from emomc_onnx.evaluate.stats import drop_gap

        feas = [c for c in self.records.values() if c.feasible and c.stage > 0 and not c.raced_out]
        if not feas:
            return []
        F = np.array([c.objectives for c in feas], dtype=float)
        front = sorted((feas[i] for i in non_dominated(F)), key=lambda c: (c.objectives, c.key))
        cands: list[Candidate] = []
        for c in front:  # identical figures: keep one (the smallest key)
            if not cands or cands[-1].objectives != c.objectives:
                cands.append(c)
        self.evaluate_test(cands)
        members: list[FrontMember] = []
        for c in cands:
            ev, reason = self.test[c.key]
            if ev is None or c.search is None:  # ran on the search split, failed on the test split
                logger.warning("front candidate %s failed on the test split: %s", c.key, reason)
                self.store.set_feasible(self.fp, c.key, False, f"test split: {reason}")
                continue
            why = self.obj_test.violation(ev, reason)
            gap = drop_gap((c.search.extra or {}).get("stats"), (ev.extra or {}).get("stats"))
            members.append(FrontMember(c.key, c.plan, c.stage, c.search, ev, c.objectives,
                                       _floats(self.obj_test.f(ev)), why, gap))
        return members


def _raced(ev: Evaluation | None) -> bool:
    return bool(ev is not None and ev.extra and ev.extra.get("raced_out"))


def run_search(
    space: SearchSpace,
    evaluator_factory: EvaluatorFactory,
    config: SearchConfig,
    store: ResultStore,
    progress: Callable[[ProgressEvent], None] | None = None,
    seed: int = 0,
) -> SearchResult:
    """Run the two-stage search and return the front (chosen on search, measured on test) and history.

    Ctrl-C (KeyboardInterrupt) stops the search cleanly: everything evaluated is in the
    store and the front of what is there is still computed (``result.interrupted``).
    Other exceptions (e.g. from ``progress``) propagate; the store stays consistent.

    Args:
        space: the genes.
        evaluator_factory: picklable callable building an evaluator (once per process).
        config: budgets, objectives, constraint, workers.
        store: result store (usually ``ResultStore.in_dir(outdir)``).
        progress: called with a :class:`ProgressEvent` after every generation.
        seed: seeds our initial populations and pymoo (same seed -> same front).
    """
    t_start = time.monotonic()
    run = _Run(space, evaluator_factory, config, store, progress, seed)
    stop: dict[int, str] = {}
    interrupted = False
    try:
        # Baseline on the search split: the reference for the accuracy-drop constraint
        # during the search (with a noise margin); the test split's judges the front.
        empty = CompressionPlan.empty()
        run.obj_search = Objectives(config.objectives, run.baseline, config.max_accuracy_drop)
        run.obj_test = run.obj_search
        base_s = run.evaluate([empty], 0)[0]
        if base_s.search is None:
            raise PlanError(f"the unmodified model fails to evaluate: {base_s.reason}")
        run.obj_search = Objectives(
            config.objectives,
            dataclasses.replace(run.baseline, metric=base_s.search.metric),
            config.max_accuracy_drop, noise_z=config.drop_noise_z)
        seeds = np.random.SeedSequence(seed).generate_state(2)
        budget1 = budget2 = None
        if config.max_evaluations is not None:
            budget1 = max(1, int(config.max_evaluations * config.stage1_share))
        dl1 = dl2 = None
        if config.time_budget_s is not None:
            dl1 = t_start + config.time_budget_s * config.stage1_share
            dl2 = t_start + config.time_budget_s
        try:
            stop[1] = run.stage(1, run.initial_stage1(), budget1, dl1, int(seeds[0]))
            if config.max_evaluations is not None:
                budget2 = config.max_evaluations - run._n_evals()
            stop[2] = run.stage(2, run.initial_stage2(), budget2, dl2, int(seeds[1]))
        except KeyboardInterrupt:
            interrupted = True
            logger.warning("search interrupted: computing the front of what was evaluated")
        if progress is not None:
            progress(ProgressEvent(0, 0, 0, run._n_evals(), config.max_evaluations,
                                   run._best(), run.history[-1].hv if run.history else 0.0,
                                   phase="front", workers=run.workers_status()))
        front = run.final_front()
        if progress is not None:
            progress(ProgressEvent(0, 0, 0, run._n_evals(), config.max_evaluations,
                                   run._best(), run.history[-1].hv if run.history else 0.0,
                                   phase="final"))
    finally:
        if run.backend is not None:
            run.backend.close()
    # hypervolume reached after each stage: stage 1's candidates, then stages 1 and 2 together
    stage_hv = {1: hypervolume(run._feasible_F(1), run.obj_search.n_obj),
                2: hypervolume(run._feasible_F(), run.obj_search.n_obj)}
    front_F = np.array([m.objectives_search for m in front], dtype=float).reshape(
        len(front), run.obj_search.n_obj)
    return SearchResult(
        fingerprint=run.fp,
        space=space,
        config=config,
        seed=seed,
        baseline=run.baseline,
        baseline_search=base_s.search,
        front=tuple(front),
        history=tuple(run.history),
        stage_hv=stage_hv,
        front_hv=hypervolume(front_F, run.obj_search.n_obj),
        candidates=tuple(c for c in run.records.values() if c.stage > 0),
        n_evaluations=run._n_evals(),
        n_fresh=run.n_fresh,
        n_cached=run.n_cached,
        stop_reasons=stop,
        interrupted=interrupted,
        elapsed_s=time.monotonic() - t_start,
        eval_wall_s=run.eval_wall,
        eval_seconds=run.eval_seconds,
        n_search_fresh=sum(1 for c in run.records.values() if c.stage > 0 and not c.cached),
        n_search_cached=sum(1 for c in run.records.values() if c.stage > 0 and c.cached),
        n_full_fresh=run.n_full_fresh,
        n_full_cached=run.n_full_cached,
        n_raced_out=sum(1 for c in run.records.values() if c.raced_out),
    )
