"""Local processes vs Dask workers on this machine, measured; then 1-64 workers simulated.

Measured (interleaved repeats, a fresh store each run, min and median over the repeats):

* the demo search (embedded model and data, ``--evaluations`` candidates, ``--population``)
  in-process (1 worker), on a local pool of 2 processes, on a Dask LocalCluster of 1 and 2
  processes and on a hand-started ``dask scheduler`` with 2 ``dask worker`` processes,
  generational and steady-state (at 2 workers): wall time, search candidates per second, and the share of
  worker time idle during the search (from the store: each candidate's evaluation seconds and
  the time it was stored);
* the overhead of each backend per candidate: trivial tasks (``hasattr``) through the same
  backend, as worker-seconds per task (throughput with every worker busy) and as the round
  trip of one task in flight (what a steady-state search pays per result);
* the steady-state driver's own time per candidate (ask, racing gate, tell, store), at the
  simulated population: an in-process steady run of the toy evaluator, which takes no time.

Simulated: every stage's candidates drawn from the measured evaluation times (plus the measured
Dask overhead), list-scheduled on N workers, either as generations with a barrier at the end
of each (stage 2's first generation three populations) or steady-state (a worker gets the next
candidate as soon as the driver has told its result: the driver's time per candidate is paid
serially). Prints, per N, wall time, candidates per second and idle share of both.

    python benchmarks/scaling.py --repeats 3 --evaluations 16 --population 4
    python benchmarks/scaling.py --simulate-only   # the simulation from results/scaling.json
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import _common  # also puts the repository root on sys.path
import numpy as np

from emomc_onnx.paths import atomic_write_bytes

OUT = _common.RESULTS / "scaling.json"


# ---- a hand-started cluster (the README's commands) -----------------------------------------
def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def hand_cluster(workers: int, port: int | None = None) -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """``dask scheduler`` and ``workers`` x ``dask worker --nthreads 1`` as subprocesses on loopback
    (as the README starts them), on ``port`` or a free one; yields (address, [scheduler, workers...])
    and stops them all at the end (terminate, then kill what did not stop in 20 s)."""
    port = port or free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_common.ROOT), os.environ.get("PYTHONPATH", "")])}
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    procs = [subprocess.Popen([*dask, "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(workers):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1", "--no-dashboard"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout=60, set_as_default=False) as c:
            c.wait_for_workers(workers, timeout=120)
        yield address, procs
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@contextlib.contextmanager
def _where(kind: str, workers: int) -> Iterator[dict]:
    """SearchConfig fields of one measured setting (a hand cluster lives as long as the block)."""
    if kind == "local":
        yield {"workers": workers}
    elif kind == "dask-local":
        yield {"cluster": f"local:{workers}"}
    else:
        with hand_cluster(workers) as (address, _):
            yield {"cluster": address}


# ---- measurements ---------------------------------------------------------------------------
def _search_window(db: Path) -> dict[str, float]:
    """Evaluation seconds, the search window (first start to last stored result) and count."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT seconds_search, created_at FROM candidates WHERE stage > 0 "
                           "AND seconds_search > 0").fetchall()
    finally:
        con.close()
    secs = np.array([r[0] for r in rows])
    ends = np.array([r[1] for r in rows])
    return {"busy_s": float(secs.sum()), "window_s": float(ends.max() - (ends - secs).min()), "n": len(rows),
            "times": secs.tolist()}


def demo_run(kind: str, workers: int, schedule: str, args: argparse.Namespace) -> dict:
    from emomc_onnx.search.driver import SearchConfig, run_search
    from emomc_onnx.search.space import make_space
    from emomc_onnx.search.store import ResultStore

    factory = _common.demo_evaluator_factory(eval_samples=args.eval_samples)
    ev = factory()
    space = make_space(ev.analysis, ev.profile)
    with _where(kind, workers) as where, tempfile.TemporaryDirectory() as tmp:
        cfg = SearchConfig(population=args.population, generations=1000, max_evaluations=args.evaluations,
                           stage1_share=args.stage1_share, resume=False, schedule=schedule, **where)
        with ResultStore.in_dir(tmp) as store:
            r = run_search(space, factory, cfg, store, seed=args.seed)
        w = _search_window(Path(tmp) / "results.sqlite")
    return {"wall_s": r.elapsed_s, "cand_per_s": r.n_search_fresh / r.elapsed_s,
            "search_cand_per_s": w["n"] / w["window_s"],
            "idle_share": 1.0 - w["busy_s"] / (workers * w["window_s"]),
            "driver_s_per_cand": max(0.0, w["window_s"] - w["busy_s"]) / w["n"] if workers == 1 else None,
            "n": r.n_search_fresh, "times": w["times"]}


def overhead_run(kind: str, workers: int, n_tasks: int) -> dict:
    """Trivial tasks through a backend: worker-seconds per task, and one task's round trip."""
    from emomc_onnx.search.backends import make_backend
    from tests.search.toy import ToyEvaluatorFactory

    with _where(kind, workers) as where:
        t0 = time.perf_counter()
        backend = make_backend(where.get("cluster"), where.get("workers", 1), ToyEvaluatorFactory())
        startup = time.perf_counter() - t0
        try:
            list(backend.map_unordered(hasattr, ["x"] * (4 * workers)))  # warm
            t0 = time.perf_counter()
            n = sum(1 for _ in backend.map_unordered(hasattr, ["x"] * n_tasks))
            per_task = (time.perf_counter() - t0) * workers / n
            stream = backend.stream(hasattr)
            t0 = time.perf_counter()
            for i in range(n_tasks // 4):
                stream.submit(i, "x")
                stream.next()
            round_trip = (time.perf_counter() - t0) / (n_tasks // 4)
        finally:
            backend.close()
    return {"startup_s": startup, "worker_s_per_task": per_task, "round_trip_s": round_trip}


SETTINGS = [  # (kind, workers, schedule)
    ("local", 1, "generational"), ("local", 2, "generational"), ("local", 2, "steady"),
    ("dask-local", 1, "generational"), ("dask-local", 2, "generational"), ("dask-local", 2, "steady"),
    ("dask-tcp", 2, "generational"),
]
OVERHEAD = [("local", 2), ("dask-local", 2), ("dask-tcp", 2)]


def steady_driver_s(population: int, n: int = 150) -> float:
    """The steady-state driver's own time per candidate (ask, gate, tell with survival, store):
    an in-process steady run of the toy with no evaluation time, at the simulated population."""
    from emomc_onnx.search.driver import SearchConfig, run_search
    from emomc_onnx.search.store import ResultStore
    from tests.search.toy import ToyEvaluatorFactory, toy_space

    f = ToyEvaluatorFactory()
    cfg = SearchConfig(population=population, generations=1000, max_evaluations=n, schedule="steady", resume=False)
    with tempfile.TemporaryDirectory() as tmp, ResultStore.in_dir(tmp) as store:
        r = run_search(toy_space(f), f, cfg, store, seed=0)
    return (r.eval_wall_s - r.eval_seconds) / r.n_search_fresh


def _stats(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values)}


def measure(args: argparse.Namespace) -> dict:
    runs: dict[str, list[dict]] = {}
    over: dict[str, list[dict]] = {}
    driver: list[float] = []
    data: dict = {}
    for rep in range(args.repeats):  # interleaved: every setting once per repeat
        for kind, w, sched in SETTINGS:
            name = f"{kind} {w} {sched}"
            r = demo_run(kind, w, sched, args)
            runs.setdefault(name, []).append(r)
            print(f"[{rep}] {name}: {r['wall_s']:.1f} s, {r['cand_per_s']:.2f} cand/s, idle {r['idle_share']:.0%} "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
        for kind, w in OVERHEAD:
            name = f"{kind} {w}"
            o = overhead_run(kind, w, args.tasks)
            over.setdefault(name, []).append(o)
            print(f"[{rep}] overhead {name}: {1e3 * o['worker_s_per_task']:.2f} ms/task, round trip "
                  f"{1e3 * o['round_trip_s']:.2f} ms, start-up {o['startup_s']:.1f} s", flush=True)
        driver.append(steady_driver_s(args.sim_population))
        print(f"[{rep}] steady driver: {1e3 * driver[-1]:.2f} ms/candidate", flush=True)
        data = _summary(args, runs, over, driver, rep + 1)
        atomic_write_bytes(OUT, json.dumps(data, indent=2).encode())  # what is measured so far
    return data


def _summary(args: argparse.Namespace, runs: dict, over: dict, driver: list[float], repeats: int) -> dict:
    measured = []
    for name, rs in runs.items():
        kind, w, sched = name.split()
        measured.append({"backend": kind, "workers": int(w), "schedule": sched,
                         "wall_s": _stats([r["wall_s"] for r in rs]),
                         "cand_per_s": _stats([r["cand_per_s"] for r in rs]),
                         "search_cand_per_s": _stats([r["search_cand_per_s"] for r in rs]),
                         "idle_share": _stats([r["idle_share"] for r in rs]),
                         "driver_s_per_cand": (_stats([r["driver_s_per_cand"] for r in rs])
                                               if rs[0]["driver_s_per_cand"] is not None else None)})
    overhead = [{"backend": n.split()[0], "workers": int(n.split()[1]),
                 **{k: _stats([o[k] for o in os_]) for k in ("worker_s_per_task", "round_trip_s", "startup_s")}}
                for n, os_ in over.items()]
    times = [t for name, rs in runs.items() if name.startswith("local 1 ") for r in rs for t in r["times"]]
    return {"repeats": repeats, "evaluations": args.evaluations, "population": args.population,
            "stage1_share": args.stage1_share, "eval_samples": args.eval_samples, "tasks": args.tasks,
            "load_avg_end": os.getloadavg(), "measured": measured, "overhead": overhead, "times": times,
            "steady_driver_s_per_cand": statistics.median(driver), "steady_driver_population": args.sim_population}


# ---- simulation -----------------------------------------------------------------------------
def _stage_sizes(P: int, G: int) -> list[int]:
    return [P * G, 3 * P + P * (G - 1)]


def sim_generational(times: np.ndarray, workers: int, P: int, G: int, overhead_s: float, seed: int = 0) -> dict:
    """Generations with a barrier: each one list-scheduled (longest first), ends with its slowest."""
    rng = np.random.default_rng(seed)
    wall = busy = 0.0
    n = 0
    for size in [P] * G + [3 * P] + [P] * (G - 1):
        tasks = rng.choice(times, size=size, replace=True) + overhead_s
        free = [0.0] * workers
        for t in sorted(tasks, reverse=True):
            heapq.heappush(free, heapq.heappop(free) + float(t))
        wall += max(free)
        busy += float(tasks.sum())
        n += size
    return {"wall_s": wall, "cand_per_s": n / wall, "idle_share": 1.0 - busy / (workers * wall)}


def sim_steady(times: np.ndarray, workers: int, P: int, G: int, overhead_s: float, driver_s: float,
               seed: int = 0) -> dict:
    """Steady-state: a worker takes the next candidate once the driver told the last result
    (``driver_s`` each, one at a time); a barrier only between the two stages."""
    rng = np.random.default_rng(seed)
    wall = busy = 0.0
    n = 0
    for size in _stage_sizes(P, G):
        tasks = rng.choice(times, size=size, replace=True) + overhead_s
        free = [0.0] * workers
        driver = 0.0
        end = 0.0
        for t in tasks:
            start = max(heapq.heappop(free), driver) + driver_s
            driver = start
            heapq.heappush(free, start + float(t))
            end = max(end, start + float(t))
        wall += end
        busy += float(tasks.sum())
        n += size
    return {"wall_s": wall, "cand_per_s": n / wall, "idle_share": 1.0 - busy / (workers * wall)}


def simulate(data: dict, P: int, G: int, workers: list[int]) -> list[dict]:
    times = np.asarray(data["times"], dtype=float)
    dask = [o for o in data["overhead"] if o["backend"] == "dask-tcp" and o["workers"] == 2]
    overhead_s = dask[0]["worker_s_per_task"]["median"] if dask else 0.0
    driver_s = data["steady_driver_s_per_cand"]
    rows = []
    for w in workers:
        g = sim_generational(times, w, P, G, overhead_s)
        s = sim_steady(times, w, P, G, overhead_s, driver_s)
        rows.append({"workers": w, "gen_wall_s": g["wall_s"], "gen_cand_per_s": g["cand_per_s"],
                     "gen_idle": g["idle_share"], "steady_wall_s": s["wall_s"],
                     "steady_cand_per_s": s["cand_per_s"], "steady_idle": s["idle_share"]})
    return rows


def _print(data: dict) -> None:
    print(f"\nmeasured: demo, {data['evaluations']} candidates, population {data['population']}, "
          f"{data['eval_samples']} search samples, {data['repeats']} interleaved repeats (min / median)")
    print(f"{'backend':<11}{'workers':>8} {'schedule':<13}{'wall s':>14}{'cand/s (run)':>16}"
          f"{'cand/s (search)':>17}{'idle (search)':>16}")
    for m in data["measured"]:
        print(f"{m['backend']:<11}{m['workers']:>8} {m['schedule']:<13}"
              f"{m['wall_s']['min']:>6.1f} / {m['wall_s']['median']:<5.1f}"
              f"{m['cand_per_s']['median']:>10.2f} med{m['search_cand_per_s']['median']:>13.2f} med"
              f"{m['idle_share']['median']:>11.0%} med")
    print(f"\nbackend overhead per candidate (trivial tasks, {data['tasks']} per repeat; min / median)")
    print(f"{'backend':<11}{'workers':>8}{'worker ms/task':>18}{'round trip ms':>18}{'start-up s':>14}")
    for o in data["overhead"]:
        print(f"{o['backend']:<11}{o['workers']:>8}"
              f"{1e3 * o['worker_s_per_task']['min']:>9.2f} / {1e3 * o['worker_s_per_task']['median']:<6.2f}"
              f"{1e3 * o['round_trip_s']['min']:>9.2f} / {1e3 * o['round_trip_s']['median']:<6.2f}"
              f"{o['startup_s']['median']:>10.1f}")
    t = np.asarray(data["times"])
    sim = data["simulation"]
    print(f"\nsimulated: {len(t)} measured demo candidates (median {np.median(t):.3f} s, p90 "
          f"{np.quantile(t, 0.9):.3f} s), population {sim['population']}, {sim['generations']} generations per "
          f"stage, Dask overhead {1e3 * sim['overhead_s']:.2f} ms/candidate, steady driver "
          f"{1e3 * data['steady_driver_s_per_cand']:.1f} ms/candidate")
    print(f"{'workers':>8}{'gen wall s':>12}{'gen cand/s':>12}{'gen idle':>10}{'steady wall s':>15}"
          f"{'steady cand/s':>15}{'steady idle':>13}")
    for r in sim["rows"]:
        print(f"{r['workers']:>8}{r['gen_wall_s']:>12.1f}{r['gen_cand_per_s']:>12.2f}{r['gen_idle']:>10.0%}"
              f"{r['steady_wall_s']:>15.1f}{r['steady_cand_per_s']:>15.2f}{r['steady_idle']:>13.0%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--evaluations", type=int, default=16, help="demo: candidates per run (the budget)")
    ap.add_argument("--population", type=int, default=4, help="demo: population of the measured runs")
    ap.add_argument("--stage1-share", type=float, default=0.75,
                    help="demo: stage 1's share (stage 2 starts with 3 populations, all initial candidates)")
    ap.add_argument("--eval-samples", type=int, default=300, help="demo: search-split samples")
    ap.add_argument("--tasks", type=int, default=100, help="trivial tasks per overhead measurement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sim-population", type=int, default=24, help="simulation: population (compress's default)")
    ap.add_argument("--sim-generations", type=int, default=10, help="simulation: generations per stage")
    ap.add_argument("--sim-workers", default="1,2,8,16,32,64")
    ap.add_argument("--simulate-only", action="store_true", help="re-run the simulation on results/scaling.json")
    args = ap.parse_args()
    if args.simulate_only:
        data = json.loads(OUT.read_text())
    else:
        data = measure(args)
        atomic_write_bytes(OUT, json.dumps(data, indent=2).encode())  # the measurements, whatever follows
    workers = [int(w) for w in args.sim_workers.split(",")]
    dask = [o for o in data["overhead"] if o["backend"] == "dask-tcp" and o["workers"] == 2]
    data["simulation"] = {"population": args.sim_population, "generations": args.sim_generations,
                          "overhead_s": dask[0]["worker_s_per_task"]["median"] if dask else 0.0,
                          "rows": simulate(data, args.sim_population, args.sim_generations, workers)}
    _print(data)
    atomic_write_bytes(OUT, json.dumps(data, indent=2).encode())
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
