"""Per-candidate time split (build, session, inference, other evaluator work, bookkeeping)
and the speed-up of 2 workers over 1.

The split comes from the evaluator's ``Evaluation.extra["timing_s"]`` (keys ``build``,
``session``, ``inference`` and optionally ``cost``); bookkeeping is everything else the
run spent per candidate (pymoo, store writes, hypervolume, inter-process transfer).
Runs on the toy evaluator (with a simulated per-candidate delay) by default; call
``main(evaluator_factory, space, ...)`` with the real model's factory.

    python benchmarks/search_overhead.py --population 16 --generations 4 --delay 0.02
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emomc_onnx.search.driver import SearchConfig, SearchResult, run_search
from emomc_onnx.search.evaluator import EvaluatorFactory
from emomc_onnx.search.space import SearchSpace
from emomc_onnx.search.store import ResultStore


def _split(r: SearchResult) -> dict[str, float]:
    fresh = [c for c in r.candidates if c.search is not None and not c.cached]
    n = max(1, len(fresh))
    parts = {"build": 0.0, "session": 0.0, "inference": 0.0, "cost": 0.0}
    for c in fresh:
        t = dict(c.search.extra.get("timing_s", {}))
        for k in parts:
            parts[k] += float(t.get(k, 0.0))
    in_eval = sum(parts.values())
    per = {k: v / n for k, v in parts.items()}
    # evaluator time not broken down by the evaluator itself
    per["evaluator_other"] = max(0.0, sum(c.seconds for c in fresh) - in_eval) / n
    # wall time not spent inside evaluate() (all evaluations, incl. full-data ones, are
    # spread over the workers): pymoo, store, hypervolume, process start-up and transfer
    per["bookkeeping"] = max(0.0, r.elapsed_s - r.eval_seconds / r.config.workers) / n
    total = sum(per.values())
    per["total"] = total
    per["non_inference_share"] = (total - per["inference"]) / total if total else 0.0
    return per


def main(
    evaluator_factory: EvaluatorFactory,
    space: SearchSpace,
    *,
    population: int = 16,
    generations: int = 4,
    workers: Sequence[int] = (1, 2),
    seed: int = 0,
    out: str | None = None,
) -> dict[str, Any]:
    """Run the same search with each worker count (fresh stores); return the table."""
    rows: dict[str, Any] = {}
    fronts = {}
    for w in workers:
        cfg = SearchConfig(population=population, generations=generations, workers=w,
                           resume=False)
        with tempfile.TemporaryDirectory() as tmp, ResultStore.in_dir(tmp) as store:
            r = run_search(space, evaluator_factory, cfg, store, seed=seed)
        fronts[w] = [m.key for m in r.front]
        rows[str(w)] = {"elapsed_s": r.elapsed_s, "candidates": r.n_fresh,
                        "per_candidate_s": _split(r)}
    base = rows[str(workers[0])]["elapsed_s"]
    report = {
        "population": population, "generations": generations,
        "workers": rows,
        "speedup": {str(w): base / rows[str(w)]["elapsed_s"] for w in workers},
        "same_front": all(f == fronts[workers[0]] for f in fronts.values()),
    }
    keys = ["build", "session", "inference", "cost", "evaluator_other", "bookkeeping", "total"]
    print(f"{'workers':<8}{'elapsed':>9}" + "".join(f"{k[:10]:>12}" for k in keys)
          + f"{'non-inf %':>11}{'speedup':>9}")
    for w in workers:
        p = rows[str(w)]["per_candidate_s"]
        print(f"{w:<8}{rows[str(w)]['elapsed_s']:>9.2f}"
              + "".join(f"{1e3 * p[k]:>10.2f}ms" for k in keys)
              + f"{100 * p['non_inference_share']:>10.1f}%{report['speedup'][str(w)]:>9.2f}")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2))
    return report


def _cli() -> None:
    import _common

    from tests.search.toy import ToyEvaluatorFactory, toy_space

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--population", type=int, default=16)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--delay", type=float, default=0.02, help="toy seconds per candidate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--demo", action="store_true",
                    help="the real embedded demo model and data (eyeriss profile) instead of the toy")
    ap.add_argument("--profile", default="eyeriss")
    ap.add_argument("--eval-samples", type=int, default=1000,
                    help="demo: search-subset samples (compress's default; the demo data caps it at 750)")
    ap.add_argument("--calib-samples", type=int, default=256, help="demo: calibration samples (compress's default)")
    a = ap.parse_args()
    if a.demo:
        import _common

        f = _common.demo_evaluator_factory(a.profile, a.eval_samples, a.calib_samples)
        from emomc_onnx.search.space import make_space

        ev = f()
        main(f, make_space(ev.analysis, ev.profile), population=a.population, generations=a.generations, seed=a.seed,
             out=a.out or str(_common.RESULTS / f"search_overhead_demo_{a.profile}_e{a.eval_samples}.json"))
        return
    f = ToyEvaluatorFactory(delay_s=a.delay)
    main(f, toy_space(f), population=a.population, generations=a.generations, seed=a.seed,
         out=a.out)


if __name__ == "__main__":
    _cli()
