"""Search quality at equal evaluations: hypervolume of our two-stage search vs baselines.

Compared, each with the same number of distinct evaluated candidates (sensitivity probes
included where a method uses them):

* ``ours``: two-stage NSGA-II over the full genome with the predictor (sensitivity probes,
  screened offspring; in stage 2's first generation, integer-program seeds and the uniform
  settings the predictor ranks best), the default;
* ``previous``: the same driver without them (``--no-surrogate``: plain NSGA-II);
* ``emomc``: the previous driver on the paper's poorer space (one global density, one weight
  bit width per layer, activations at the reference bits, no channel pruning);
* ``random``: uniformly random full genomes;
* ``uniform``: uniform sweeps (same keep fraction / density / bits for all layers);
* ``milp``: the predictor's integer program alone: the probes, then rounds of the cheapest
  genomes (energy, size) under a grid of predicted-error levels, refitted after each round;
* ``ours-no-screen`` / ``ours-no-seeds`` (``--methods``): ours without one of its two parts.

Figures per method: hypervolume of every feasible candidate (search split, objectives
normalised by the unmodified model, reference 1.1) and of those within 1 and 2 points of its
error; how many evaluations it took to reach the uniform sweep's and the previous driver's
final hypervolume; the predictor's Kendall tau per generation (its median); wall time. Each
method's front (its non-dominated candidates on the search split) is then measured on the
test split, never seen by any method, and the same hypervolumes are given there. Labelled
extra points (ONNX Runtime ``quantize_static`` int8) are checked for domination by our front.
Runs on the toy evaluator by default; ``--demo`` runs the embedded demo model.

    python benchmarks/search_quality.py --evaluations 300 --out benchmarks/results/q.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import _common
import numpy as np

from emomc_onnx.search.driver import SearchConfig, run_search
from emomc_onnx.search.evaluator import Evaluation, EvaluatorFactory
from emomc_onnx.search.genome import GenomeCodec
from emomc_onnx.search.hypervolume import hypervolume, non_dominated
from emomc_onnx.search.predictor import Predictor, Prior
from emomc_onnx.search.probes import one_change_plans, probe_settings
from emomc_onnx.search.problem import Objectives
from emomc_onnx.search.seeding import milp_seeds, uniform_genomes
from emomc_onnx.search.space import CompressionPlan, SearchSpace
from emomc_onnx.search.store import ResultStore

METHODS = ("ours", "previous", "emomc", "random", "uniform", "milp")
ABLATIONS = ("ours-no-screen", "ours-no-seeds")
DRIVER = {"ours": {}, "previous": {"surrogate": False, "predicted_seeds": False},
          "emomc": {"surrogate": False, "predicted_seeds": False},
          "ours-no-screen": {"surrogate": False}, "ours-no-seeds": {"predicted_seeds": False}}
WITHIN = (1.0, 2.0)  # points of error above the unmodified model's


def _dominated_or_matched(p: np.ndarray, front: np.ndarray) -> bool:
    return bool(len(front)) and bool(np.any(np.all(front <= p + 1e-12, axis=1)))


def _uniform_genomes(codec: GenomeCodec, n: int) -> list[np.ndarray]:
    uniq = uniform_genomes(codec)
    if len(uniq) > n:
        uniq = [uniq[int(i)] for i in np.rint(np.linspace(0, len(uniq) - 1, n))]
    return uniq


@dataclasses.dataclass
class Trace:
    """One method's evaluated candidates in the order it evaluated them."""

    plans: list[CompressionPlan]
    rows: list[np.ndarray | None]  # objective row on the search split; None: failed or infeasible
    n_evaluations: int  # the budget it used (probes included)
    seconds: float
    taus: list[float] = dataclasses.field(default_factory=list)
    test_rows: np.ndarray | None = None  # its front on the test split
    extra: dict = dataclasses.field(default_factory=dict)

    def F(self) -> np.ndarray:
        rows = [r for r in self.rows if r is not None]
        return np.array(rows, dtype=float).reshape(len(rows), -1)

    def front(self) -> list[int]:
        """Indices (into plans) of its non-dominated feasible candidates."""
        idx = [i for i, r in enumerate(self.rows) if r is not None]
        F = np.array([self.rows[i] for i in idx])
        return [idx[int(j)] for j in non_dominated(F)] if idx else []


def _hv_within(F: np.ndarray, e0: float, points: float | None) -> float:
    F = np.asarray(F, dtype=float)
    if points is not None and len(F):
        F = F[F[:, 0] <= e0 + points / 100.0 + 1e-12]
    return hypervolume(F, F.shape[1] if F.ndim == 2 and F.shape[1] else None) if len(F) else 0.0


def _evals_to_reach(trace: Trace, target: float, offset: int) -> int | None:
    """Evaluations (counting ``offset`` before the first candidate) until the hypervolume of
    the trace's candidates reaches ``target``."""
    rows: list[np.ndarray] = []
    for k, r in enumerate(trace.rows):
        if r is None:
            continue
        rows.append(r)
        if hypervolume(np.array(rows)) >= target - 1e-12:
            return offset + k + 1
    return None


def _run_driver(name: str, factory: EvaluatorFactory, space: SearchSpace, cfg: SearchConfig, seed: int,
                tmp: str) -> tuple[Trace, Any]:
    t0 = time.perf_counter()
    with ResultStore.in_dir(Path(tmp) / name) as store:
        r = run_search(space, factory, dataclasses.replace(cfg, **DRIVER[name]), store, seed=seed)
    rows = [np.asarray(c.objectives) if c.feasible and not c.raced_out else None for c in r.candidates]
    front = np.array([m.objectives_test for m in r.front], dtype=float).reshape(len(r.front), -1)
    tr = Trace([c.plan for c in r.candidates], rows, r.n_evaluations + r.n_probes, time.perf_counter() - t0,
               [h.tau for h in r.history if h.tau is not None], front,
               {"n_probes": r.n_probes, "stage_hv": r.stage_hv, "screens": list(r.screens),
                "proposed": sum(s["proposed"] for s in r.screens),
                "screened_evaluated": sum(s["evaluated"] for s in r.screens)})
    return tr, r


def _measure(ev, plans: Sequence[CompressionPlan], obj: Objectives, subset: str = "search"
             ) -> list[np.ndarray | None]:
    rows: list[np.ndarray | None] = []
    for p in plans:
        try:
            e = ev.evaluate(p, subset)
        except Exception:  # noqa: BLE001 - a failing candidate is simply infeasible
            rows.append(None)
            continue
        rows.append(obj.f(e) if obj.violation(e) is None else None)
    return rows


def _milp_alone(ev, space: SearchSpace, obj: Objectives, budget: int) -> Trace:
    """The probes, then rounds of integer-program genomes on the refitted predictor."""

    t0 = time.perf_counter()
    probes = one_change_plans(space, probe_settings(space))
    empty = CompressionPlan.empty()
    base_row = obj.f(ev.evaluate(empty, "search"))
    measured = _measure(ev, [p for *_, p in probes], obj)
    pred = Predictor(Prior.from_probes(space, obj.names, base_row,
                                       [(t, k, v, r) for (t, k, v, _), r in zip(probes, measured)]))
    fit_plans = [empty] + [p for (*_, p), r in zip(probes, measured) if r is not None]
    fit_rows = [base_row] + [r for r in measured if r is not None]
    codec = GenomeCodec(space)
    plans: list[CompressionPlan] = []
    rows: list[np.ndarray | None] = []
    seen: set[str] = set()
    e0 = float(base_row[0])
    round_ = 0
    while len(probes) + len(plans) < budget and round_ < 50:
        pred.fit(fit_plans, np.array(fit_rows))
        # a geometric grid of drops (0.1 to 30 points), shifted every round so rounds differ
        drops = np.geomspace(0.1, 30.0, 16) * 1.07 ** round_
        new = [p for p in (codec.decode(x, 2) for x in milp_seeds(codec, pred, list(e0 + drops / 100.0)))
               if p.key() not in seen][: budget - len(probes) - len(plans)]
        round_ += 1
        if not new:
            continue
        for p, r in zip(new, _measure(ev, new, obj)):
            seen.add(p.key())
            plans.append(p)
            rows.append(r)
            if r is not None:
                fit_plans.append(p)
                fit_rows.append(r)
    return Trace(plans, rows, len(probes) + len(plans), time.perf_counter() - t0,
                 extra={"n_probes": len(probes), "rounds": round_})


def main(
    evaluator_factory: EvaluatorFactory,
    space: SearchSpace,
    *,
    evaluations: int = 300,
    population: int = 24,
    seed: int = 0,
    objectives: tuple[str, ...] = ("error", "energy", "size"),
    max_accuracy_drop: float | None = None,
    extra_points: Mapping[str, Evaluation] | None = None,
    workers: int = 1,
    methods: Sequence[str] = METHODS,
    out: str | None = None,
) -> dict[str, Any]:
    """Run every method with ``evaluations`` candidates; return (and write) the table."""
    full_space = dataclasses.replace(space, kind="full")
    cfg = SearchConfig(objectives=objectives, population=population, generations=10**6,
                       max_evaluations=evaluations, max_accuracy_drop=max_accuracy_drop,
                       workers=workers, resume=False)
    traces: dict[str, Trace] = {}
    obj = obj_test = base_search = None
    with tempfile.TemporaryDirectory() as tmp:
        for name in [m for m in methods if m in DRIVER]:
            sp = dataclasses.replace(space, kind="emomc") if name == "emomc" else full_space
            traces[name], r = _run_driver(name, evaluator_factory, sp, cfg, seed, tmp)
            base_test, base_search = r.baseline, r.baseline_search
    ev = evaluator_factory()
    if base_search is None:
        base_test, base_search = ev.baseline(), ev.evaluate(CompressionPlan.empty(), "search")
    # as the driver judges: costs normalised by the original, the drop against the search split's
    obj = Objectives(objectives, dataclasses.replace(base_test, metric=base_search.metric), max_accuracy_drop)
    obj_test = Objectives(objectives, base_test, max_accuracy_drop)
    codec = GenomeCodec(full_space)
    rng = np.random.default_rng(seed)
    _, xu = codec.bounds(2)
    seen: dict[bytes, np.ndarray] = {}
    while len(seen) < evaluations:
        x = rng.integers(0, xu + 1)
        seen.setdefault(x.tobytes(), x)
    for name, genomes in (("random", list(seen.values())), ("uniform", _uniform_genomes(codec, evaluations))):
        if name not in methods:
            continue
        t0 = time.perf_counter()
        plans = [codec.decode(x, 2) for x in genomes]
        traces[name] = Trace(plans, _measure(ev, plans, obj), len(plans), 0.0)
        traces[name].seconds = time.perf_counter() - t0
    if "milp" in methods:
        traces["milp"] = _milp_alone(ev, full_space, obj, evaluations)
    # every method's front on the test split (the drivers measured theirs already)
    for tr in traces.values():
        if tr.test_rows is None:
            rows = [r for r in _measure(ev, [tr.plans[i] for i in tr.front()], obj_test, "test") if r is not None]
            tr.test_rows = np.array(rows, dtype=float).reshape(len(rows), len(objectives))
    i_err = objectives.index("error") if "error" in objectives else None
    e0 = float(obj.f(base_search)[i_err]) if i_err is not None else 0.0
    e0_test = float(obj_test.f(base_test)[i_err]) if i_err is not None else 0.0
    res: dict[str, dict[str, Any]] = {}
    for name, tr in traces.items():
        F = tr.F()
        res[name] = {
            "evaluations": tr.n_evaluations,
            "hv": hypervolume(F, len(objectives)),
            **{f"hv_{p:g}pt": _hv_within(F, e0, p) for p in WITHIN},
            "test": {"front": len(tr.test_rows), "hv": _hv_within(tr.test_rows, e0_test, None),
                     **{f"hv_{p:g}pt": _hv_within(tr.test_rows, e0_test, p) for p in WITHIN}},
            "tau_median": float(np.median(tr.taus)) if tr.taus else None,
            "taus": tr.taus,
            "seconds": tr.seconds,
            **tr.extra,
        }
    for name, tr in traces.items():  # probes come first
        for ref in ("uniform", "previous"):
            if ref in res and ref != name:
                res[name][f"evals_to_{ref}_hv"] = _evals_to_reach(tr, res[ref]["hv"], tr.extra.get("n_probes", 0))
    checks = _checks(res, traces, e0, extra_points, obj)
    report = {"evaluations": evaluations, "seed": seed, "objectives": list(objectives),
              "population": population, "methods": res, "checks": checks}
    _print(res, checks)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2, default=float))
    return report


def _checks(res: dict, traces: dict[str, Trace], e0: float, extra_points, obj: Objectives) -> dict[str, Any]:
    """The issue's targets, measured."""
    out: dict[str, Any] = {}
    if "ours" not in traces:
        return out
    ours_F = traces["ours"].F()
    ours = ours_F[non_dominated(ours_F)] if len(ours_F) else ours_F
    for other in ("uniform", "random", "previous", "emomc", "milp"):
        if other in res:
            for key in ("hv", *(f"hv_{p:g}pt" for p in WITHIN)):
                out[f"ours_vs_{other}_{key}"] = (res["ours"][key] / res[other][key] if res[other][key] > 0
                                                 else None)
    # what no method can beat: the hypervolume of the ideal point of every method's candidates
    allF = np.vstack([tr.F() for tr in traces.values() if len(tr.F())])
    for pts in (None, *WITHIN):
        near = allF if pts is None else allF[allF[:, 0] <= e0 + pts / 100.0 + 1e-12]
        key = "hv" if pts is None else f"hv_{pts:g}pt"
        out[f"{key}_bound"] = hypervolume(near.min(axis=0, keepdims=True)) if len(near) else 0.0
    if "uniform" in traces:
        U = traces["uniform"].F()
        U = U[non_dominated(U)] if len(U) else U
        out["uniform_points_not_covered"] = int(sum(not _dominated_or_matched(p, ours) for p in U))
        for pts in WITHIN:
            near = [p for p in U if p[0] <= e0 + pts / 100.0 + 1e-12]
            out[f"uniform_points_within_{pts:g}pt"] = len(near)
            out[f"uniform_points_within_{pts:g}pt_not_covered"] = int(sum(
                not _dominated_or_matched(p, ours) for p in near))
    if "previous" in res and res["ours"].get("evals_to_previous_hv") is not None:
        out["evals_to_previous_hv_share"] = res["ours"]["evals_to_previous_hv"] / res["previous"]["evaluations"]
    out["extra_points_not_covered"] = [k for k, e in (extra_points or {}).items()
                                       if not _dominated_or_matched(obj.f(e), ours)]
    out["extra_points"] = {k: obj.f(e).tolist() for k, e in (extra_points or {}).items()}
    return out


def _print(res: dict, checks: dict) -> None:
    cols = ("evals", "HV", "HV<=1pt", "HV<=2pt", "test HV", "test<=1pt", "test<=2pt", "to unif.", "to prev.",
            "tau", "seconds")
    print(f"{'method':<16}" + "".join(f"{c:>11}" for c in cols))
    for k, v in res.items():
        cells = [v["evaluations"], v["hv"], v["hv_1pt"], v["hv_2pt"], v["test"]["hv"], v["test"]["hv_1pt"],
                 v["test"]["hv_2pt"], v.get("evals_to_uniform_hv"), v.get("evals_to_previous_hv"),
                 v["tau_median"], v["seconds"]]
        print(f"{k:<16}" + "".join(f"{'-' if c is None else (f'{c:.4f}' if isinstance(c, float) else c):>11}"
                                   for c in cells))
    print(json.dumps({k: v for k, v in checks.items() if k != "extra_points"}, default=float))


def _cli() -> None:
    from tests.search.toy import ToyEvaluatorFactory, toy_space

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--evaluations", type=int, default=300)
    ap.add_argument("--population", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--methods", default=",".join(METHODS),
                    help=f"comma-separated, of {', '.join(METHODS + ABLATIONS)}")
    ap.add_argument("--demo", action="store_true",
                    help="the real embedded demo model and data (eyeriss profile) instead of the toy")
    ap.add_argument("--model", default=None, help="an ONNX model (with --data) instead of the demo")
    ap.add_argument("--data", default=None)
    ap.add_argument("--profile", default="eyeriss")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--stage1-quantized", action="store_true",
                    help="stage 1 compares architectures at the space's reference bits (W8A8)")
    ap.add_argument("--max-accuracy-drop", type=float, default=None,
                    help="points; every method's hypervolume then counts only models within it")
    a = ap.parse_args()
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    if a.demo or a.model:
        from emomc_onnx.api import demo_paths
        from emomc_onnx.candidate import EvaluatorConfig
        from emomc_onnx.search.space import make_space

        if a.model:
            f = EvaluatorConfig(model=str(Path(a.model).resolve()), profile=a.profile,
                                data=str(Path(a.data).resolve()), eval_samples=500, calib_samples=128)
            name = Path(a.model).stem
        else:
            f, name = _common.demo_evaluator_factory(a.profile), "demo"
        ev = f()
        model_path = a.model or demo_paths()[0]
        extra = {name_: ev.evaluate_model(proto, "search")
                 for name_, proto in _common.ort_points(model_path, ev.calib_batches).items()}
        main(f, make_space(ev.analysis, ev.profile, stage1_quantized=a.stage1_quantized), evaluations=a.evaluations,
             population=a.population, seed=a.seed, extra_points=extra, workers=a.workers,
             max_accuracy_drop=a.max_accuracy_drop, methods=methods,
             out=a.out or str(_common.RESULTS / (f"search_quality_{name}_{a.profile}"
                                                 + (f"_drop{a.max_accuracy_drop:g}" if a.max_accuracy_drop else "")
                                                 + ("_s1q" if a.stage1_quantized else "")
                                                 + ".json")))
        return
    f = ToyEvaluatorFactory()
    main(f, toy_space(f), evaluations=a.evaluations, population=a.population, seed=a.seed, methods=methods,
         out=a.out)


if __name__ == "__main__":
    _cli()
