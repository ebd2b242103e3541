"""The search on Dask workers (loopback only): same front as the local pool, worker deaths and
driver kills lose nothing finished."""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from emomc_onnx.search.backends import DaskBackend, parse_cluster
from emomc_onnx.search.driver import SearchConfig, SearchResult, run_search
from emomc_onnx.search.store import ResultStore
from tests.search.toy import ToyEvaluator, ToyEvaluatorFactory, toy_space

ROOT = Path(__file__).resolve().parents[2]
SMALL = SearchConfig(population=8, generations=3)


@dataclasses.dataclass(frozen=True)
class LoggingFactory:
    """Toy evaluators that append ``pid key subset`` to a file when an evaluation starts
    (so a test sees which candidates ran where, and which ran twice)."""

    log: str
    base: ToyEvaluatorFactory = dataclasses.field(default_factory=ToyEvaluatorFactory)
    tag: str = "-"  # which run (a killed driver's tasks may still run after its death)

    def __call__(self) -> ToyEvaluator:
        ev = self.base()
        orig = ev.evaluate
        log, tag = self.log, self.tag

        def logged(plan, subset="search", **kw):
            with open(log, "a") as f:
                f.write(f"{os.getpid()} {plan.key()} {subset} {tag}\n")
            return orig(plan, subset, **kw)

        ev.evaluate = logged  # type: ignore[method-assign]
        return ev


def _log(path: Path, tag: str | None = None) -> list[tuple[int, str, str]]:
    if not path.exists():
        return []
    rows = (line.split() for line in path.read_text().splitlines())
    return [(int(p), k, s) for p, k, s, t in rows if tag is None or t == tag]


def _run(tmp: Path, config: SearchConfig, factory, seed: int = 0, progress=None) -> SearchResult:
    base = getattr(factory, "base", factory)
    with ResultStore.in_dir(tmp) as store:
        return run_search(toy_space(base), factory, config, store, progress, seed=seed)


def _front(r: SearchResult) -> list[tuple[str, tuple[float, ...]]]:
    return [(m.key, m.objectives_test) for m in r.front]


def _rows(db: Path) -> dict[str, tuple]:
    con = sqlite3.connect(db)
    try:
        return {r[0]: r[1:] for r in con.execute(
            "SELECT plan_key, metric_search, energy, size_bits, created_at FROM candidates")}
    except sqlite3.OperationalError:  # the driver has not created its tables yet
        return {}
    finally:
        con.close()


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of 2 worker processes (behind nannies) whose workers import this checkout."""
    from distributed import Client, LocalCluster

    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", host="127.0.0.1") as lc, \
            Client(lc, set_as_default=False) as client:
        yield lc.scheduler_address, client


def test_parse_cluster() -> None:
    assert parse_cluster("local:3") == ("local", 3)
    assert parse_cluster("tcp://127.0.0.1:8786") == ("tcp://127.0.0.1:8786", None)
    for bad in ("local:0", "local:x", "127.0.0.1:8786", "tcp://"):
        with pytest.raises(Exception, match="--cluster"):
            parse_cluster(bad)


def test_cluster_same_front_as_local_evaluation(tmp_path: Path, cluster) -> None:
    address, _ = cluster
    log = tmp_path / "evals.log"
    factory = LoggingFactory(str(log))
    local = _run(tmp_path / "local", SMALL, factory, seed=4)
    n_local = len(_log(log))
    log.unlink()
    dask = _run(tmp_path / "dask", dataclasses.replace(SMALL, cluster=address), factory, seed=4)
    assert _front(dask) == _front(local) and _front(dask)
    assert [c.key for c in dask.candidates] == [c.key for c in local.candidates]
    ran = _log(log)
    assert len(ran) == n_local
    assert len({pid for pid, _, _ in ran} - {os.getpid()}) == 2  # both workers evaluated


@pytest.mark.slow
def test_local_cluster_same_front_as_local_pool(tmp_path: Path) -> None:
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])
    log = tmp_path / "evals.log"
    factory = LoggingFactory(str(log))
    pool = _run(tmp_path / "pool", dataclasses.replace(SMALL, workers=2), factory, seed=3)
    n_pool = len(_log(log))
    log.unlink()
    dask = _run(tmp_path / "dask", dataclasses.replace(SMALL, cluster="local:2"), factory, seed=3)
    assert _front(dask) == _front(pool) and _front(dask)
    assert [c.key for c in dask.candidates] == [c.key for c in pool.candidates]
    ran = _log(log)
    # every candidate but the two single-plan calls (baseline, one full) ran on the cluster's
    # two worker processes, once each
    assert len(ran) == n_pool
    assert len({pid for pid, _, _ in ran} - {os.getpid()}) == 2


def test_worker_killed_mid_run_loses_nothing(tmp_path: Path, cluster) -> None:
    address, client = cluster
    log = tmp_path / "evals.log"
    factory = LoggingFactory(str(log), ToyEvaluatorFactory(delay_s=0.15))
    config = dataclasses.replace(SMALL, cluster=address)
    db = tmp_path / "run" / "results.sqlite"
    killed: dict[str, object] = {}

    def killer() -> None:  # once a few candidates are stored, kill the worker busy with the next
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if db.exists() and len(_rows(db)) >= 4:
                pids = set(client.run(os.getpid).values())
                busy = [pid for pid, _, _ in _log(log) if pid in pids]
                if busy:
                    killed["rows"] = _rows(db)
                    killed["pid"] = busy[-1]
                    os.kill(busy[-1], signal.SIGKILL)
                    return
            time.sleep(0.02)

    t = threading.Thread(target=killer)
    t.start()
    result = _run(tmp_path / "run", config, factory, seed=1)
    t.join()
    assert "pid" in killed, "the worker was never killed"
    reference = _run(tmp_path / "ref", dataclasses.replace(SMALL, workers=1), ToyEvaluatorFactory(), seed=1)
    assert _front(result) == _front(reference)
    assert result.n_evaluations == reference.n_evaluations
    after = _rows(db)
    for key, row in killed["rows"].items():  # finished before the kill: kept, never re-written
        assert after[key] == row
    ran = _log(log)
    starts = [k for _, k, s in ran if s == "search"]
    # the killed worker's candidate started twice (there and again elsewhere)
    assert len(starts) > len(set(starts))
    assert killed["pid"] not in set(client.run(os.getpid).values())


_DRIVER = """
import sys
from emomc_onnx.search.driver import SearchConfig, run_search
from emomc_onnx.search.store import ResultStore
from tests.search.test_dask import LoggingFactory
from tests.search.toy import ToyEvaluatorFactory, toy_space

factory = LoggingFactory(sys.argv[2], ToyEvaluatorFactory(delay_s=float(sys.argv[4])), sys.argv[5])
with ResultStore.in_dir(sys.argv[1]) as store:
    r = run_search(toy_space(factory.base), factory, SearchConfig(population=8, generations=3,
                   cluster=sys.argv[3]), store, seed=2)
print("evaluations", r.n_evaluations, "fresh", r.n_search_fresh, "cached", r.n_search_cached)
"""


@pytest.mark.slow
def test_resume_after_driver_kill_re_evaluates_nothing_finished(tmp_path: Path, cluster) -> None:
    address, _ = cluster
    out, log = tmp_path / "run", tmp_path / "evals.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-c", _DRIVER, str(out), str(log), address]
    proc = subprocess.Popen([*cmd, "0.1", "killed"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    db = out / "results.sqlite"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists() and len(_rows(db)) >= 10:
            proc.kill()  # SIGKILL: no clean-up of any kind
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    before = _rows(db)
    done = subprocess.run([*cmd, "0.1", "resumed"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    again = {k for _, k, s in _log(log, "resumed") if s == "search"}
    assert not again & set(before), "a candidate finished before the kill was evaluated again"
    after = _rows(db)
    assert all(after[k] == v for k, v in before.items())
    words = done.stdout.split()
    fresh, cached = int(words[words.index("fresh") + 1]), int(words[words.index("cached") + 1])
    assert cached == len(before) - 1  # the baseline row is not a search candidate
    assert fresh == len(again)


def test_unreachable_scheduler_is_a_cluster_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Exception, match="cannot reach the Dask scheduler"):
        DaskBackend(f"tcp://127.0.0.1:{port}", ToyEvaluatorFactory(), connect_timeout_s=2)


def test_missing_distributed_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(Exception, match=r"emomc-onnx\[dask\]") as err:
        DaskBackend("tcp://127.0.0.1:1", ToyEvaluatorFactory())
    assert "\n" not in str(err.value)


def test_steady_schedule_on_the_cluster(tmp_path: Path, cluster) -> None:
    """Steady-state on two Dask workers: both evaluate, the budget is exact, every candidate is stored."""
    address, _ = cluster
    log = tmp_path / "evals.log"
    cfg = dataclasses.replace(SMALL, cluster=address, schedule="steady", generations=20, max_evaluations=30)
    r = _run(tmp_path / "run", cfg, LoggingFactory(str(log)), seed=2)
    assert r.n_evaluations == 30 and r.front
    assert len(_rows(tmp_path / "run" / "results.sqlite")) == 31  # and the baseline
    searched = [k for pid, k, s in _log(log) if s == "search" and pid != os.getpid()]
    assert sorted(searched) == sorted(c.key for c in r.candidates)  # each once, on the workers
    assert len({pid for pid, _, _ in _log(log)} - {os.getpid()}) == 2
