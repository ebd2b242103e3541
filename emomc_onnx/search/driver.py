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

Pieces: :mod:`~emomc_onnx.search.workers` (where candidates run), :mod:`~emomc_onnx.search.records`
(run cache, result store, judging, racing gate), :mod:`~emomc_onnx.search.seeding` (first
generations) and :mod:`~emomc_onnx.search.stopping` (pymoo terminations); this module holds the
settings, the stage loop (ask, evaluate, tell) and the final front.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Container, Sequence
from typing import Any

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.problems.static import StaticProblem

from emomc_onnx.errors import PlanError
from emomc_onnx.evaluate.stats import drop_gap
from emomc_onnx.search.evaluator import Evaluation, EvaluatorFactory
from emomc_onnx.search.genome import GenomeCodec
from emomc_onnx.search.hypervolume import hypervolume, non_dominated
from emomc_onnx.search.predictor import Predictor, Prior, kendall_tau
from emomc_onnx.search.probes import one_change_plans, probe_settings
from emomc_onnx.search.problem import OBJECTIVES, Objectives, make_problem
from emomc_onnx.search.records import Candidate, RaceGate, RunRecords
from emomc_onnx.search.screening import Screening, best_predicted
from emomc_onnx.search.seeding import initial_stage1, initial_stage2, milp_seeds, uniform_genomes
from emomc_onnx.search.space import CompressionPlan, SearchSpace
from emomc_onnx.search.steady import run_steady_stage
from emomc_onnx.search.stopping import exhausted, stage_termination, stop_reason
from emomc_onnx.search.store import HVRecord, ResultStore
from emomc_onnx.search.workers import UNEXPECTED, Workers

__all__ = [
    "Candidate",
    "FrontMember",
    "ProgressEvent",
    "RaceGate",
    "SearchConfig",
    "SearchResult",
    "run_search",
]

logger = logging.getLogger(__name__)

MILP_DROPS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # points of error above the original's (milp_seeds)


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
        surrogate: probe every gene alone (the sensitivity table's one-change plans, counted
            in ``max_evaluations``), predict each candidate's objectives from its genes
            (:mod:`~emomc_onnx.search.predictor`) and evaluate only the offspring that may be
            non-dominated (:mod:`~emomc_onnx.search.screening`).
        offspring_factor: with ``surrogate``, NSGA-II proposes this many offspring per
            candidate a generation evaluates (``population``).
        random_share: with ``surrogate``, the share of each generation's evaluations given to
            offspring drawn at random from the screened-out ones.
        predicted_seeds: stage 2's first generation also holds the cheapest genomes whose
            predicted error stays below several levels (integer programs on the predictor) and
            the uniform settings (same keep fraction, density and bits everywhere) the
            predictor ranks best.
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
    surrogate: bool = True
    offspring_factor: int = 4
    random_share: float = 0.25
    predicted_seeds: bool = True

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
        if self.offspring_factor < 1:
            raise PlanError(f"offspring_factor must be >= 1, got {self.offspring_factor}")
        if not 0.0 <= self.random_share <= 1.0:
            raise PlanError(f"random_share must be in [0, 1], got {self.random_share}")

    @property
    def probes(self) -> bool:
        """The run measures the sensitivity probes (the predictor needs them)."""
        return self.surrogate or self.predicted_seeds

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        d = dataclasses.asdict(self)
        d["objectives"] = list(self.objectives)
        return d


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
    tau: float | None = None  # the predictor's Kendall tau on the generation's new candidates


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
    n_probes: int = 0
    screens: tuple[dict[str, int], ...] = ()  # per screened generation: stage, generation, proposed,
    # promising (may be non-dominated), random (of the screened-out), evaluated (new candidates)

    def counts_line(self) -> str:
        """What was evaluated, in counts that add up (for the CLI's summary)."""
        n_full = self.n_full_fresh + self.n_full_cached
        search = (f"{self.n_evaluations} candidates searched ({self.n_search_fresh} evaluated now, "
                  f"{self.n_search_cached} read from results.sqlite) in {self.elapsed_s:.1f} s")
        raced = f"; {self.n_raced_out} searched candidates stopped after the racing samples" if self.n_raced_out else ""
        probes = f"; {self.n_probes} sensitivity probes before the search" if self.n_probes else ""
        front = (f"{n_full} front candidates measured on the test split ({self.n_full_fresh} now, "
                 f"{self.n_full_cached} read), {len(self.front)} kept{raced}{probes}; front hypervolume "
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


# ---- the run ------------------------------------------------------------------------------
class _Run:
    """One search run: the pieces (workers, records, seeds, stopping) and the stage loop."""

    def __init__(self, space: SearchSpace, factory: EvaluatorFactory, config: SearchConfig,
                 store: ResultStore, progress: Callable[[ProgressEvent], None] | None,
                 seed: int) -> None:
        self.space = space
        self.codec = GenomeCodec(space)
        self.config = config
        self.store = store
        self.progress = progress
        self.rng = np.random.default_rng(seed)  # the seeds' draws (pymoo gets its own seeds)
        self.history: list[HVRecord] = []
        self.workers = Workers(factory, cluster=config.cluster, workers=config.workers,
                               mp_context=config.mp_context)
        self.fp = str(self.workers.evaluator.fingerprint())
        self.records = RunRecords(store, self.fp, self.workers, resume=config.resume,
                                  race_z=config.race_z if config.race else None)
        cached = store.get_baseline(self.fp) if config.resume else None
        if cached is None:
            cached = self.workers.evaluator.baseline()
            store.put_baseline(self.fp, cached)
            self.records.n_fresh += 1
        self.baseline = cached
        self.predictor: Predictor | None = None
        self.screening: Screening | None = None
        self.n_probes = 0
        self.screens: list[dict[str, int]] = []
        self.rng_screen = np.random.default_rng(np.random.SeedSequence(seed).generate_state(3)[2])

    # -- the predictor --
    def probe(self, eval_budget: int | None, time_budget_s: float | None, base_s: float,
              generation_evals: int | None = None) -> None:
        """Measure every gene alone (the sensitivity table's one-change plans) and build the
        predictor on them; skipped when they would take more than a third of the evaluation
        budget, or (at ``base_s`` seconds each, the unmodified model's) of the time budget, or
        when they would outnumber ``generation_evals``, the evaluations the generations make
        (a model of many layers searched with a few generations: hundreds of probes before 16
        candidates)."""
        rows = one_change_plans(self.space, probe_settings(self.space))
        why = None
        if eval_budget is not None and 3 * len(rows) > eval_budget:
            why = f"more than a third of {eval_budget} evaluations"
        elif time_budget_s is not None and 3 * len(rows) * base_s / self.config.workers > time_budget_s:
            why = f"more than a third of the {time_budget_s:g} s budget"
        elif generation_evals is not None and len(rows) > generation_evals:
            why = f"more evaluations than the {generation_evals} the generations make"
        if why is not None:
            logger.warning("%d sensitivity probes would take %s: the search runs without its predictor",
                           len(rows), why)
            return
        cands = self.records.evaluate([p for *_, p in rows], 0)
        self.n_probes = len({c.key for c in cands})
        base = self.records.records[CompressionPlan.empty().key()]
        measured = [(t, k, v, None if c.search is None or c.raced_out else np.asarray(c.objectives))
                    for (t, k, v, _), c in zip(rows, cands)]
        prior = Prior.from_probes(self.space, self.records.objectives.names, np.asarray(base.objectives),
                                  measured)
        self.predictor = Predictor(prior)
        self.fit()
        if self.config.surrogate:
            obj = self.records.objectives
            max_error = None
            if obj.max_accuracy_drop is not None and "error" in obj.names:
                max_error = base.objectives[obj.names.index("error")] + obj.max_accuracy_drop / 100.0
            self.screening = Screening(self.predictor, self.config.random_share, max_error=max_error)
        logger.info("predictor: %d sensitivity probes over %d genes", self.n_probes, len(self.space.genes()))

    def fit(self) -> None:
        """Refit the predictor on every candidate measured so far (probes included)."""
        if self.predictor is None:
            return
        ran = [c for c in self.records.records.values() if c.search is not None]
        self.predictor.fit([c.plan for c in ran], np.array([c.objectives for c in ran], dtype=float))

    def predicted_seeds(self) -> list[np.ndarray]:
        """Stage-2 seeds from the predictor (none without ``predicted_seeds``): the integer
        programs' genomes (predicted error at most the original's plus each of ``MILP_DROPS``
        within ``max_accuracy_drop``), then the ``population`` uniform settings it ranks best."""
        if not self.config.predicted_seeds or self.predictor is None:
            return []
        obj = self.records.objectives
        seeds: list[np.ndarray] = []
        if "error" in obj.names:
            base = self.records.records[CompressionPlan.empty().key()].objectives[obj.names.index("error")]
            limit = obj.max_accuracy_drop
            levels = [base + d / 100.0 for d in MILP_DROPS if limit is None or d <= limit]
            seeds = milp_seeds(self.codec, self.predictor, levels)
        n_milp = len(seeds)
        uniform = uniform_genomes(self.codec)
        plans = [self.codec.decode(x, 2) for x in uniform]
        seeds += [uniform[i] for i in best_predicted(self.predictor, plans, self.config.population)]
        logger.info("stage 2: %d integer-program seeds, %d uniform settings of %d ranked best", n_milp,
                    len(seeds) - n_milp, len(uniform))
        return seeds

    def _tau(self, plans: Sequence[CompressionPlan], predicted: np.ndarray | None,
             known: set[str]) -> float | None:
        """Kendall's tau of predicted and measured error over the batch's new candidates."""
        names = self.records.objectives.names
        if predicted is None or "error" not in names:
            return None
        i = names.index("error")
        pred, measured = [], []
        for j, p in enumerate(plans):
            c = self.records.records[p.key()]
            if c.key not in known and c.search is not None and not c.raced_out:
                pred.append(predicted[j, i])
                measured.append(c.objectives[i])
        return kendall_tau(pred, measured)

    # -- one stage --
    def stage(self, stage: int, X0: np.ndarray, eval_budget: int | None,
              time_left_s: float | None, seed: int) -> str:
        """NSGA-II from ``X0`` until the stage's termination; returns why it stopped."""
        cfg = self.config
        why = exhausted(eval_budget, time_left_s)
        if why is not None:
            return why
        _, xu = self.codec.bounds(stage)
        problem = make_problem(len(xu), xu, self.records.objectives)
        screening = self.screening
        algorithm = NSGA2(
            pop_size=cfg.population,
            n_offsprings=cfg.population * (cfg.offspring_factor if screening is not None else 1),
            sampling=X0,
            crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
            mutation=PM(eta=20, vtype=float, repair=RoundingRepair()),
            eliminate_duplicates=True,
        )
        termination = stage_termination(cfg.generations, eval_budget, time_left_s)
        algorithm.setup(problem, termination=termination, seed=seed, verbose=False)
        if cfg.schedule == "steady":  # one candidate at a time, every worker kept busy
            deadline = None if time_left_s is None else time.monotonic() + time_left_s
            return run_steady_stage(self, stage, algorithm, problem, eval_budget, deadline)
        gen = 0
        while algorithm.has_next():
            offspring = algorithm.is_initialized  # False: this ask is the initial population
            pop = algorithm.ask()
            if pop is None or len(pop) == 0:
                return "space_exhausted"
            X = np.rint(pop.get("X")).astype(np.int64)
            plans = [self.codec.decode(x, stage) for x in X]
            known = set(self.records.records)
            screen = None
            if screening is not None and offspring:
                screen = screening.screen(plans, known, self.records.feasible_F(), cfg.population,
                                          self.rng_screen)
                idx = list(screen.keep)
                pop, plans = pop[idx], [plans[i] for i in idx]
            if eval_budget is not None:  # no more new candidates than the budget has left
                cut = _within(plans, known, eval_budget - algorithm.evaluator.n_eval)
                pop, plans = pop[:cut], plans[:cut]
            predicted = self.predictor.predict(plans) if self.predictor is not None and plans else None
            before = self.records.n_evals()
            cands = self.records.evaluate(plans, stage)
            F = np.array([c.objectives for c in cands], dtype=float).reshape(len(cands), -1)
            G = np.array([c.constraints for c in cands], dtype=float).reshape(len(cands), -1)
            algorithm.evaluator.eval(StaticProblem(problem, F=F, G=G), pop, count_evals=False)
            algorithm.evaluator.n_eval += self.records.n_evals() - before  # distinct new candidates
            if screen is not None:
                self.screens.append({"stage": stage, "generation": gen, "proposed": screen.proposed,
                                     "promising": screen.promising, "random": len(screen.random),
                                     "evaluated": self.records.n_evals() - before})
                logger.info("stage %d gen %d: %d new offspring, %d may be non-dominated, %d evaluated "
                            "(%d at random)", stage, gen, screen.proposed, screen.promising,
                            self.records.n_evals() - before, len(screen.random))
            algorithm.tell(infills=pop)
            tau = self._tau(plans, predicted, known)
            self.fit()
            self.checkpoint(stage, gen, tau)
            gen += 1
        return stop_reason(termination)

    def checkpoint(self, stage: int, gen: int, tau: float | None = None) -> None:
        """After a generation: its hypervolume record (history and store), log and progress."""
        F = self.records.feasible_F()
        n_obj = self.records.objectives.n_obj
        rec = HVRecord(stage, gen, self.records.n_evals(), hypervolume(F, n_obj),
                       hypervolume(self.records.feasible_F(stage), n_obj), tau)
        self.history.append(rec)
        self.store.put_hv(self.fp, rec)
        logger.info("stage %d gen %d: %d evaluations, hv %.4f%s", stage, gen, rec.n_evaluations, rec.hv,
                    "" if tau is None else f", predictor tau {tau:.3f}")
        if self.progress is not None:
            self.progress(ProgressEvent(stage, gen, self.config.generations, rec.n_evaluations,
                                        self.config.max_evaluations, self.records.best(), rec.hv,
                                        workers=self.workers.status(), tau=tau))

    def final_front(self) -> list[FrontMember]:
        """The non-dominated set on the search split, each member then measured on the test split."""
        feas = [c for c in self.records.searched() if c.feasible and not c.raced_out]
        if not feas:
            return []
        F = np.array([c.objectives for c in feas], dtype=float)
        front = sorted((feas[i] for i in non_dominated(F)), key=lambda c: (c.objectives, c.key))
        cands: list[Candidate] = []
        for c in front:  # identical figures: keep one (the smallest key)
            if not cands or cands[-1].objectives != c.objectives:
                cands.append(c)
        self.records.evaluate_test(cands)
        members: list[FrontMember] = []
        for c in cands:
            ev, reason = self.records.test[c.key]
            if ev is None or c.search is None:  # ran on the search split, failed on the test split
                logger.warning("front candidate %s failed on the test split: %s", c.key, reason)
                self.store.set_feasible(self.fp, c.key, False, f"test split: {reason}")
                continue
            why = self.obj_test.violation(ev, reason)
            gap = drop_gap((c.search.extra or {}).get("stats"), (ev.extra or {}).get("stats"))
            members.append(FrontMember(c.key, c.plan, c.stage, c.search, ev, c.objectives,
                                       tuple(float(v) for v in self.obj_test.f(ev)), why, gap))
        return members


def _within(plans: Sequence[CompressionPlan], seen: Container[str], remaining: int) -> int:
    """How many leading plans hold at most ``remaining`` plans not in ``seen`` (distinct)."""
    new: set[str] = set()
    for i, p in enumerate(plans):
        if p.key() not in seen:
            new.add(p.key())
            if len(new) > remaining:
                return i
    return len(plans)


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
    records = run.records
    stop: dict[int, str] = {}
    interrupted = False
    try:
        # Baseline on the search split: the reference for the accuracy-drop constraint
        # during the search (with a noise margin); the test split's judges the front.
        empty = CompressionPlan.empty()
        run.obj_test = records.objectives = Objectives(config.objectives, run.baseline,
                                                       config.max_accuracy_drop)
        base_s = records.evaluate([empty], 0)[0]
        if base_s.search is None:
            raise PlanError(f"the unmodified model fails to evaluate: {base_s.reason}")
        records.objectives = Objectives(
            config.objectives,
            dataclasses.replace(run.baseline, metric=base_s.search.metric),
            config.max_accuracy_drop, noise_z=config.drop_noise_z)
        seeds = np.random.SeedSequence(seed).generate_state(2)

        def time_left(share: float) -> float | None:
            if config.time_budget_s is None:
                return None
            return t_start + config.time_budget_s * share - time.monotonic()

        try:
            if config.probes:
                # the evaluations the generations make: two stages of the initial population and
                # `generations` offspring populations each
                run.probe(config.max_evaluations, config.time_budget_s, base_s.seconds,
                          2 * config.population * (config.generations + 1))
            budget1 = None
            if config.max_evaluations is not None:
                budget1 = max(1, int((config.max_evaluations - run.n_probes) * config.stage1_share))
            X1 = initial_stage1(run.codec, config.population, config.n_uniform, run.rng)
            stop[1] = run.stage(1, X1, budget1, time_left(config.stage1_share), int(seeds[0]))
            budget2 = None
            if config.max_evaluations is not None:
                budget2 = config.max_evaluations - run.n_probes - records.n_evals()
            stage1 = [c for c in records.searched() if c.stage == 1]
            X2 = initial_stage2(run.codec, config.population, stage1, run.rng, run.predicted_seeds())
            stop[2] = run.stage(2, X2, budget2, time_left(1.0), int(seeds[1]))
        except KeyboardInterrupt:
            interrupted = True
            logger.warning("search interrupted: computing the front of what was evaluated")

        def report(phase: str) -> None:
            if progress is not None:
                progress(ProgressEvent(0, 0, 0, records.n_evals(), config.max_evaluations, records.best(),
                                       run.history[-1].hv if run.history else 0.0, phase=phase,
                                       workers=run.workers.status() if phase == "front" else None))

        report("front")
        front = run.final_front()
        report("final")
    finally:
        run.workers.close()
    # hypervolume reached after each stage: stage 1's candidates, then stages 1 and 2 together
    n_obj = records.objectives.n_obj
    stage_hv = {1: hypervolume(records.feasible_F(1), n_obj), 2: hypervolume(records.feasible_F(), n_obj)}
    front_F = np.array([m.objectives_search for m in front], dtype=float).reshape(len(front), n_obj)
    searched = records.searched()
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
        front_hv=hypervolume(front_F, n_obj),
        candidates=tuple(searched),
        n_evaluations=len(searched),
        n_fresh=records.n_fresh,
        n_cached=records.n_cached,
        stop_reasons=stop,
        interrupted=interrupted,
        elapsed_s=time.monotonic() - t_start,
        eval_wall_s=records.eval_wall,
        eval_seconds=records.eval_seconds,
        n_search_fresh=sum(1 for c in searched if not c.cached),
        n_search_cached=sum(1 for c in searched if c.cached),
        n_full_fresh=records.n_full_fresh,
        n_full_cached=records.n_full_cached,
        n_raced_out=sum(1 for c in searched if c.raced_out),
        n_probes=run.n_probes,
        screens=tuple(run.screens),
    )
