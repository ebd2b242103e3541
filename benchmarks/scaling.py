"""Where the generational search stops scaling: measured per-candidate times replayed on 8-64 workers.

Reads the per-candidate evaluation times of a finished ``compress`` run (its results.sqlite),
then simulates each generation as a batch of ``--population`` candidates (stage 2's first
generation: three populations) list-scheduled onto N workers, each task paying
``--overhead-ms`` of scheduling overhead; a generation ends when its slowest candidate does
(the barrier). Prints, per N, the wall time, candidates per second and the share of worker
time spent idle at the barriers. Not measured here (not done yet): the 1 and 2 local vs 1 and 2
Dask worker runs the issue asks for; the overhead is a parameter.

    python benchmarks/scaling.py --store OUTDIR/results.sqlite --population 16 --generations 6
"""

from __future__ import annotations

import argparse
import heapq
import json
import sqlite3
from pathlib import Path

import numpy as np


def _times(store: Path) -> np.ndarray:
    con = sqlite3.connect(store)
    try:
        rows = con.execute("SELECT seconds_search FROM candidates WHERE stage > 0 AND seconds_search > 0")
        return np.array([r[0] for r in rows], dtype=float)
    finally:
        con.close()


def simulate(times: np.ndarray, workers: int, batches: list[int], overhead_s: float,
             seed: int = 0) -> dict[str, float]:
    """Wall time and idle share of generation batches (times drawn from the measured ones)."""
    rng = np.random.default_rng(seed)
    wall = busy = 0.0
    n = 0
    for size in batches:
        tasks = rng.choice(times, size=size, replace=True) + overhead_s
        free = [0.0] * workers
        for t in sorted(tasks, reverse=True):  # longest first onto the earliest free worker
            heapq.heappush(free, heapq.heappop(free) + float(t))
        wall += max(free)
        busy += float(tasks.sum())
        n += size
    return {"workers": workers, "wall_s": wall, "candidates_per_s": n / wall,
            "idle_share": 1.0 - busy / (workers * wall)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--population", type=int, default=16)
    ap.add_argument("--generations", type=int, default=6)
    ap.add_argument("--overhead-ms", type=float, default=5.0)
    ap.add_argument("--workers", default="1,2,8,16,32,64")
    args = ap.parse_args()
    times = _times(args.store)
    P, G = args.population, args.generations
    batches = [P] * G + [3 * P] + [P] * (G - 1)  # stage 1, then stage 2 (first generation: 3 populations)
    rows = [simulate(times, int(w), batches, args.overhead_ms / 1000) for w in args.workers.split(",")]
    print(f"{len(times)} measured candidates: median {np.median(times):.3f} s, p90 {np.quantile(times, 0.9):.3f} s;"
          f" population {P}, {G} generations per stage, overhead {args.overhead_ms} ms per candidate")
    print(f"{'workers':>8} {'wall s':>9} {'cand/s':>8} {'idle at barriers':>17}")
    for r in rows:
        print(f"{r['workers']:>8} {r['wall_s']:>9.1f} {r['candidates_per_s']:>8.2f} {r['idle_share']:>16.0%}")
    out = Path(__file__).parent / "results" / "scaling.json"
    out.write_text(json.dumps({"store": str(args.store), "n_times": len(times), "population": P,
                               "generations": G, "overhead_ms": args.overhead_ms, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
