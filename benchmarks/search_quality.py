"""Search quality at equal evaluations: hypervolume of our two-stage search vs baselines.

Compared, each with the same number of distinct evaluated candidates:

* ``ours``: two-stage NSGA-II over the full genome;
* ``emomc``: the same driver on the paper's poorer space (one global density, one weight
  bit width per layer, activations at the reference bits, no channel pruning);
* ``random``: uniformly random full genomes;
* ``uniform``: uniform sweeps (same keep fraction / density / bits for all layers).

Hypervolumes use the search-subset objectives normalised by the unmodified model (reference
1.1 on every axis). Labelled extra points (e.g. ONNX Runtime ``quantize_static`` int8) are
checked for domination by our front. Runs on the toy evaluator by default; call
``main(evaluator_factory, space, ...)`` with the real model's factory.

    python benchmarks/search_quality.py --evaluations 300 --out benchmarks/results/q.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from emomc_onnx.search.driver import SearchConfig, run_search
from emomc_onnx.search.evaluator import Evaluation, EvaluatorFactory
from emomc_onnx.search.genome import GenomeCodec
from emomc_onnx.search.hypervolume import hypervolume, non_dominated
from emomc_onnx.search.problem import Objectives
from emomc_onnx.search.space import SearchSpace
from emomc_onnx.search.store import ResultStore


def _dominated_or_matched(p: np.ndarray, front: np.ndarray) -> bool:
    return bool(np.any(np.all(front <= p + 1e-12, axis=1)))


def _uniform_genomes(codec: GenomeCodec, n: int) -> list[np.ndarray]:
    sp = codec.space
    n_g, n_l = len(sp.groups), len(sp.layers)
    _, xu = codec.bounds(2)
    out = []
    levels = np.linspace(1.0, 0.0, 6)
    for kf in levels:
        for df in levels:
            for wi in range(len(sp.wbits)):
                for ai in range(len(sp.abits)):
                    x = np.empty_like(xu)
                    x[:n_g] = np.rint(kf * xu[:n_g])
                    x[n_g:n_g + n_l] = np.rint(df * xu[n_g:n_g + n_l])
                    x[n_g + n_l:n_g + 2 * n_l] = wi
                    x[n_g + 2 * n_l:] = ai
                    out.append(x)
    uniq = list({x.tobytes(): x for x in out}.values())
    if len(uniq) > n:
        uniq = [uniq[int(i)] for i in np.rint(np.linspace(0, len(uniq) - 1, n))]
    return uniq


def _eval_plans(factory: EvaluatorFactory, plans, obj: Objectives) -> np.ndarray:
    ev = factory()
    rows = []
    for p in plans:
        try:
            e = ev.evaluate(p, "search")
        except Exception:  # noqa: BLE001 - a failing candidate is simply infeasible
            continue
        if obj.violation(e) is None:
            rows.append(obj.f(e))
    return np.array(rows, dtype=float).reshape(len(rows), obj.n_obj)


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
    out: str | None = None,
) -> dict[str, Any]:
    """Run every method with ``evaluations`` candidates; return (and write) the table."""
    full_space = dataclasses.replace(space, kind="full")
    cfg = SearchConfig(objectives=objectives, population=population, generations=10**6,
                       max_evaluations=evaluations, max_accuracy_drop=max_accuracy_drop,
                       workers=workers, resume=False)
    res: dict[str, dict[str, Any]] = {}
    fronts: dict[str, np.ndarray] = {}
    obj = None
    with tempfile.TemporaryDirectory() as tmp:
        for name, sp in (("ours", full_space), ("emomc", dataclasses.replace(space,
                                                                             kind="emomc"))):
            t0 = time.perf_counter()
            with ResultStore.in_dir(Path(tmp) / name) as store:
                r = run_search(sp, evaluator_factory, cfg, store, seed=seed)
            F = np.array([c.objectives for c in r.candidates if c.feasible])
            fronts[name] = F[non_dominated(F)] if len(F) else F
            res[name] = {"evaluations": r.n_evaluations, "hv": hypervolume(F, len(objectives)),
                         "stage_hv": r.stage_hv, "seconds": time.perf_counter() - t0}
            if obj is None:
                obj = Objectives(objectives, dataclasses.replace(
                    r.baseline, metric=r.baseline_search.metric), max_accuracy_drop)
    codec = GenomeCodec(full_space)
    rng = np.random.default_rng(seed)
    _, xu = codec.bounds(2)
    seen: dict[bytes, np.ndarray] = {}
    while len(seen) < evaluations:
        x = rng.integers(0, xu + 1)
        seen.setdefault(x.tobytes(), x)
    for name, genomes in (("random", list(seen.values())),
                          ("uniform", _uniform_genomes(codec, evaluations))):
        t0 = time.perf_counter()
        F = _eval_plans(evaluator_factory, [codec.decode(x, 2) for x in genomes], obj)
        fronts[name] = F[non_dominated(F)] if len(F) else F
        res[name] = {"evaluations": len(genomes), "hv": hypervolume(F, len(objectives)),
                     "seconds": time.perf_counter() - t0}
    ours = fronts["ours"]
    checks = {
        "ours_vs_random": res["ours"]["hv"] / max(res["random"]["hv"], 1e-12),
        "ours_vs_emomc": res["ours"]["hv"] / max(res["emomc"]["hv"], 1e-12),
        "uniform_points_not_covered": int(sum(
            not _dominated_or_matched(p, ours) for p in fronts["uniform"])),
        "extra_points_not_covered": [k for k, e in (extra_points or {}).items()
                                     if not _dominated_or_matched(obj.f(e), ours)],
        "extra_points": {k: obj.f(e).tolist() for k, e in (extra_points or {}).items()},
        "stage2_hv_gain": res["ours"]["stage_hv"][2] / max(res["ours"]["stage_hv"][1], 1e-12),
    }
    report = {"evaluations": evaluations, "seed": seed, "objectives": list(objectives),
              "methods": res, "checks": checks}
    print(f"{'method':<10}{'evals':>8}{'hypervolume':>14}{'seconds':>10}")
    for k, v in res.items():
        print(f"{k:<10}{v['evaluations']:>8}{v['hv']:>14.4f}{v['seconds']:>10.2f}")
    print(json.dumps(checks))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2))
    return report


def _cli() -> None:
    import _common

    from tests.search.toy import ToyEvaluatorFactory, toy_space

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--evaluations", type=int, default=300)
    ap.add_argument("--population", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--demo", action="store_true",
                    help="the real embedded demo model and data (eyeriss profile) instead of the toy")
    ap.add_argument("--profile", default="eyeriss")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--stage1-quantized", action="store_true",
                    help="stage 1 compares architectures at the space's reference bits (W8A8)")
    ap.add_argument("--max-accuracy-drop", type=float, default=None,
                    help="points; every method's hypervolume then counts only models within it")
    a = ap.parse_args()
    if a.demo:
        import _common

        from emomc_onnx.api import demo_paths
        from emomc_onnx.search.space import make_space

        f = _common.demo_evaluator_factory(a.profile)
        ev = f()
        extra = {name: ev.evaluate_model(proto, "search")
                 for name, proto in _common.ort_points(demo_paths()[0], ev.calib_batches).items()}
        main(f, make_space(ev.analysis, ev.profile, stage1_quantized=a.stage1_quantized), evaluations=a.evaluations, population=a.population, seed=a.seed,
             extra_points=extra, workers=a.workers, max_accuracy_drop=a.max_accuracy_drop,
             out=a.out or str(_common.RESULTS / (f"search_quality_demo_{a.profile}"
                                                 + (f"_drop{a.max_accuracy_drop:g}" if a.max_accuracy_drop else "")
                                                 + ("_s1q" if a.stage1_quantized else "")
                                                 + ".json")))
        return
    f = ToyEvaluatorFactory()
    main(f, toy_space(f), evaluations=a.evaluations, population=a.population, seed=a.seed,
         out=a.out)


if __name__ == "__main__":
    _cli()
