"""A Dask scheduler that goes away mid-run: ``compress`` stops with one ``error:`` line and exit
code 2 (no traceback), and the same command resumes from the store without re-evaluating
anything that finished (loopback only: a scheduler and a worker started as subprocesses)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from scaling import free_port, hand_cluster  # noqa: E402 - the benchmark's hand-started cluster

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
       "OMP_NUM_THREADS": "1"}


def _rows(db: Path) -> dict[str, tuple]:
    if not db.exists():
        return {}
    con = sqlite3.connect(db)
    try:
        return {r[0]: r[1:] for r in con.execute(
            "SELECT plan_key, metric_search, seconds_search, created_at FROM candidates WHERE stage > 0")}
    except sqlite3.OperationalError:  # the tables do not exist yet
        return {}
    finally:
        con.close()


@pytest.mark.slow
def test_scheduler_killed_mid_run_stops_cleanly_and_resumes(tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", "from emomc_onnx.cli import main; main()", "compress", "--demo", "-o", str(out),
           "--cluster", f"tcp://127.0.0.1:{port}", "--population", "4", "--generations", "4",
           "--eval-samples", "300", "--max-evaluations", "10", "--seed", "1"]
    db = out / "results.sqlite"
    with hand_cluster(1, port) as (_, procs):
        run = subprocess.Popen(cmd, env=ENV, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and run.poll() is None and len(_rows(db)) < 3:
            time.sleep(0.05)
        assert run.poll() is None, run.communicate()
        procs[0].send_signal(signal.SIGKILL)  # the scheduler goes away, without a goodbye
        stdout, stderr = run.communicate(timeout=180)
    assert run.returncode == 2, (stdout, stderr)
    assert "Traceback" not in stderr + stdout
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "lost the Dask scheduler" in errors[0], stderr
    before = _rows(db)
    assert len(before) >= 3

    with hand_cluster(1, port):  # the same command, once the cluster is back
        again = subprocess.run(cmd, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0, again.stderr
    after = _rows(db)
    assert all(after[k] == v for k, v in before.items())  # nothing finished was evaluated again
    assert len(after) > len(before)
    assert f"{len(before)} read from results.sqlite" in again.stdout.replace("\n", " "), again.stdout
