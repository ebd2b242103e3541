"""Faults during a run (issue 15): disk full, a damaged store, two runs at once, Ctrl-C.

Each test checks the message a user sees and that running the same command again then
completes, re-using what the interrupted run stored.
"""

from __future__ import annotations

import errno
import os
import pathlib
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.bad_inputs.harness import REPO, assert_clean_error, run_cli, run_subprocess, snapshot
from tests.bad_inputs.tiny import tiny_data, tiny_model

SMALL = ["--generations", "2", "--population", "6", "--eval-samples", "16", "--calib-samples", "8",
         "--workers", "1"]
LONGER = ["--generations", "6", "--population", "10", "--eval-samples", "32", "--calib-samples", "8",
          "--workers", "1", "--metric", "slowmetric.py:fn"]
SLOW_METRIC = ("import time\n\n"
               "def fn(outputs, reference, labels):  # top-1 accuracy, slowly: the run lasts long enough\n"
               "    time.sleep(0.03)\n"
               "    return float((outputs[0].argmax(1) == labels).mean())\n")


def _files(d: pathlib.Path) -> list[str]:
    tiny_model(d / "m.onnx")
    tiny_data(d / "d.npz")
    (d / "slowmetric.py").write_text(SLOW_METRIC)
    return ["compress", "m.onnx", "--data", "d.npz", "-o", "out"]


def _counts(stdout: str) -> tuple[int, int, int]:
    """(candidates, evaluated now, read from the store) from the summary line."""
    m = re.search(r"(\d+) candidates searched \((?:\d+ stopped after the racing samples; )?(\d+) evaluated now, "
                  r"(\d+) read from results.sqlite\)",
                  " ".join(stdout.split()))
    assert m, stdout[-600:]
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def _stored(db: pathlib.Path) -> int:
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM candidates WHERE stage > 0").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def _no_temp_files(root: pathlib.Path) -> None:
    stray = [p for p in root.rglob("*") if ".tmp" in p.name]
    assert not stray, stray


@pytest.mark.parametrize("limit", [20_000, pytest.param(60_000, marks=pytest.mark.slow)])
def test_disk_full_while_writing_the_store_then_resume(tmp_path: pathlib.Path, limit: int) -> None:
    args = _files(tmp_path) + SMALL

    def tiny_disk() -> None:  # writes past `limit` bytes fail with EFBIG instead of killing us
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    full = run_subprocess(args, tmp_path, preexec_fn=tiny_disk)
    line = assert_clean_error(full, contains="results.sqlite: cannot write")
    assert "the run is resumable" in line and "run the same command again" in line
    _no_temp_files(tmp_path)
    again = run_cli(args, tmp_path)
    assert again.code == 0, again.stderr + again.stdout[-500:]
    n, fresh, cached = _counts(again.stdout)
    assert n == fresh + cached and n > 0
    assert (tmp_path / "out" / "front.json").is_file()


def test_disk_full_while_exporting_then_resume(tmp_path: pathlib.Path, monkeypatch) -> None:
    args = _files(tmp_path) + SMALL
    import emomc_onnx.paths as paths

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(paths.os, "fsync", no_space)
    full = run_cli(args, tmp_path)
    monkeypatch.undo()
    line = assert_clean_error(full, contains="No space left on device")
    assert "the run is resumable" in line
    _no_temp_files(tmp_path)
    assert not (tmp_path / "out" / "front.json").exists()
    stored = _stored(tmp_path / "out" / "results.sqlite")
    assert stored > 0
    again = run_cli(args, tmp_path)
    assert again.code == 0, again.stderr
    n, fresh, cached = _counts(again.stdout)
    assert (fresh, cached) == (0, n) and n == stored  # the export only: nothing re-evaluated


def test_damaged_store_is_refused_then_no_resume_moves_it_aside(tmp_path: pathlib.Path) -> None:
    args = _files(tmp_path) + SMALL
    out = tmp_path / "out"
    out.mkdir()
    junk = b"SQLite format 3\x00" + b"\x07" * 9000  # a header, then garbage
    (out / "results.sqlite").write_bytes(junk)
    before = snapshot(tmp_path)
    refused = run_cli(args, tmp_path)
    line = assert_clean_error(refused, contains="is damaged")
    assert "--no-resume" in line and "new -o" in line
    assert snapshot(tmp_path) == before  # never overwritten, nothing added
    fresh = run_cli([*args, "--no-resume"], tmp_path)
    assert fresh.code == 0, fresh.stderr
    assert (out / "results.sqlite.damaged").read_bytes() == junk
    assert _stored(out / "results.sqlite") > 0


def _popen(args: list[str], cwd: pathlib.Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "emomc_onnx.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not cond():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout
        time.sleep(0.02)


def test_two_runs_into_one_outdir(tmp_path: pathlib.Path) -> None:
    args = _files(tmp_path) + LONGER
    lock = tmp_path / "out" / ".emomc.lock"
    first = _popen(args, tmp_path)
    try:
        _wait_for(lambda: lock.exists() and lock.read_text().strip() == str(first.pid), first)
        second = run_cli(args, tmp_path)
        assert first.poll() is None, "the first run ended before the second tried: test too fast"
    finally:
        out, err = first.communicate(timeout=240)
    assert_clean_error(second, contains=f"in use by another emomc-onnx run (pid {first.pid})")
    assert first.returncode == 0, err
    assert not lock.exists()
    again = run_cli(args, tmp_path)  # now free: the same run resumes, nothing re-evaluated
    assert again.code == 0, again.stderr
    n, fresh, cached = _counts(again.stdout)
    assert fresh == 0 and cached == n > 0


def test_ctrl_c_exits_130_and_says_how_to_resume(tmp_path: pathlib.Path) -> None:
    args = _files(tmp_path) + LONGER
    proc = _popen(args, tmp_path)
    try:
        _wait_for(lambda: _stored(tmp_path / "out" / "results.sqlite") >= 3, proc)
        proc.send_signal(signal.SIGINT)
    finally:
        out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, (out[-500:], err)
    assert "Traceback" not in err
    assert "interrupted" in err and "run the same command again to resume" in err
    stored = _stored(tmp_path / "out" / "results.sqlite")
    again = run_cli(args, tmp_path)
    assert again.code == 0, again.stderr
    n, fresh, cached = _counts(again.stdout)
    assert cached >= min(stored, 3) and n == fresh + cached


METRIC = ("import numpy as np\n\n"
          "def fn(outputs, reference, labels):\n"
          "    if not np.array_equal(outputs[0], reference[0]):\n"
          "        raise ZeroDivisionError('in a candidate')\n"
          "    return 1.0\n")
ONE_GEN = ["--generations", "1", "--population", "6", "--eval-samples", "16", "--calib-samples", "8"]


def test_metric_error_travels_back_from_a_worker_whole() -> None:
    """Workers send exceptions back pickled: the message and the traceback must survive, and
    a candidate evaluation must not turn the user's error into an infeasible candidate."""
    import pickle

    from emomc_onnx.errors import EmomcError, MetricError
    from emomc_onnx.search.workers import safe_eval as _safe_eval

    err = pickle.loads(pickle.dumps(MetricError("--metric m:f raised KeyError", "Traceback ...")))
    assert isinstance(err, EmomcError) and str(err) == "--metric m:f raised KeyError"
    assert err.detail == "Traceback ..."

    class Broken:
        def evaluate(self, plan, subset):
            raise MetricError("--metric m:f raised KeyError", "tb")

    class Plan:
        def key(self):
            return "k"

    with pytest.raises(MetricError):
        _safe_eval(Broken(), Plan(), "search")


@pytest.mark.slow
def test_user_metric_raising_in_workers_is_one_line(tmp_path: pathlib.Path) -> None:
    args = _files(tmp_path)
    (tmp_path / "mymetric.py").write_text(METRIC)
    res = run_subprocess([*args, "--metric", "mymetric.py:fn", "--workers", "2", *ONE_GEN], tmp_path)
    assert_clean_error(res, contains="raised ZeroDivisionError: in a candidate (run with -v for its traceback)")


def test_user_metric_traceback_with_v(tmp_path: pathlib.Path) -> None:
    args = _files(tmp_path)
    (tmp_path / "mymetric.py").write_text(METRIC)
    res = run_cli(["-v", *args, "--metric", "mymetric.py:fn", "--workers", "1", *ONE_GEN], tmp_path)
    assert res.code == 2 and res.exception is None
    assert "Traceback" in res.stderr and "mymetric.py" in res.stderr and "ZeroDivisionError" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: --metric mymetric.py:fn raised")


@pytest.mark.slow
def test_user_metric_traceback_with_v_from_a_worker(tmp_path: pathlib.Path) -> None:
    args = _files(tmp_path)
    (tmp_path / "mymetric.py").write_text(METRIC)
    res = run_subprocess(["-v", *args, "--metric", "mymetric.py:fn", "--workers", "2", *ONE_GEN], tmp_path)
    assert res.code == 2
    assert "Traceback" in res.stderr and "mymetric.py" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: --metric mymetric.py:fn raised")
