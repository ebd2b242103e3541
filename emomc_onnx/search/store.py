"""SQLite result store: every evaluated candidate, so a killed run resumes cheaply.

One row per (fingerprint, plan key): the plan, the stage that first proposed it, the
evaluation on the search split and (for front members) on the test split (stored in the
``*_full`` columns, named before the test split existed), feasibility and
the reason when infeasible. A second table holds the hypervolume per generation. WAL mode
and one transaction per write keep the file consistent after a kill at any point.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from emomc_onnx.errors import DataError, DiskFullError, StoreError
from emomc_onnx.search.evaluator import Evaluation
from emomc_onnx.search.space import CompressionPlan

__all__ = ["STORE_NAME", "HVRecord", "ResultStore", "StoredCandidate"]

logger = logging.getLogger(__name__)

STORE_NAME = "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS candidates (
    fingerprint TEXT NOT NULL,
    plan_key TEXT NOT NULL,
    plan_json TEXT NOT NULL,
    stage INTEGER NOT NULL,
    metric_search REAL,
    metric_full REAL,
    energy REAL,
    size_bits REAL,
    macs INTEGER,
    params INTEGER,
    objectives_json TEXT,
    cost_json TEXT,
    eval_search_json TEXT,
    eval_full_json TEXT,
    feasible INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    reason_full TEXT,
    seconds_search REAL,
    seconds_full REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (fingerprint, plan_key)
);
CREATE TABLE IF NOT EXISTS hypervolume (
    fingerprint TEXT NOT NULL,
    stage INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    n_evaluations INTEGER NOT NULL,
    hv REAL NOT NULL,
    hv_stage REAL NOT NULL,
    created_at REAL NOT NULL,
    tau REAL,
    PRIMARY KEY (fingerprint, stage, generation)
);
CREATE TABLE IF NOT EXISTS baseline (
    fingerprint TEXT PRIMARY KEY,
    eval_json TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


@dataclasses.dataclass(frozen=True)
class StoredCandidate:
    """One row of the candidates table.

    Attributes:
        key: plan key.
        plan: the compression plan.
        stage: stage that first evaluated it (1 or 2).
        search: evaluation on the search subset, None if it failed.
        full: evaluation on the test split (front members), None if never run or failed.
        reason: failure message of the search evaluation (None if it ran); for a
            candidate that ran but broke a constraint, the violation.
        reason_full: failure message of the full evaluation.
        feasible: as judged by the run that last wrote the row.
        seconds_search: wall time of the search evaluation.
    """

    key: str
    plan: CompressionPlan
    stage: int
    search: Evaluation | None
    full: Evaluation | None
    reason: str | None
    reason_full: str | None
    feasible: bool
    seconds_search: float | None

    @property
    def failed(self) -> bool:
        """True when the search evaluation raised."""
        return self.search is None


@dataclasses.dataclass(frozen=True)
class HVRecord:
    """Hypervolume after one generation.

    Attributes:
        stage: 1 or 2.
        generation: 0-based generation within the stage.
        n_evaluations: distinct candidates evaluated in the run so far.
        hv: hypervolume of every feasible candidate of the run so far (both stages).
        hv_stage: hypervolume of the feasible candidates of this stage so far.
        tau: Kendall's tau between the predictor's error (fitted before the generation) and the
            measured error of the generation's new candidates; None without a predictor.
    """

    stage: int
    generation: int
    n_evaluations: int
    hv: float
    hv_stage: float
    tau: float | None = None


_F = TypeVar("_F", bound=Callable)

_DISK_FULL = ("database or disk is full", "disk i/o error", "attempt to write a readonly database")


def _store_error(path: Path, exc: sqlite3.Error) -> StoreError:
    """The one-line error for a failed database operation (DiskFullError when the disk is at fault)."""
    text = str(exc).strip() or type(exc).__name__
    low = text.lower()
    if any(s in low for s in _DISK_FULL):
        return DiskFullError(f"{path}: cannot write ({text}); the candidates evaluated so far are saved")
    if "malformed" in low or "not a database" in low or "corrupt" in low:
        return StoreError(_damaged(path, text))
    return StoreError(f"{path}: {text}")


def _damaged(path: Path, why: str) -> str:
    return (f"{path} is damaged ({why}) and was left as it is: run with --no-resume to start over "
            f"(the damaged file is kept as {path.name}{DAMAGED_SUFFIX}), or give a new -o")


def _guarded(fn: _F) -> _F:
    """Turn sqlite errors of a store method into one-line StoreErrors naming the file."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise _store_error(self.path, exc) from None

    return wrapper  # type: ignore[return-value]


DAMAGED_SUFFIX = ".damaged"


class ResultStore:
    """The SQLite database of a run (``results.sqlite`` in the output directory).

    A file that is not a healthy database is never written to: opening it raises a
    StoreError (``--no-resume`` moves it aside to ``results.sqlite.damaged`` instead).
    """

    def __init__(self, path: str | os.PathLike[str], *, move_damaged: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        why = _damage(self.path) if self.path.exists() else None
        if why is not None:
            if not move_damaged:
                raise StoreError(_damaged(self.path, why))
            aside = _free_name(self.path.with_name(self.path.name + DAMAGED_SUFFIX))
            os.replace(self.path, aside)
            for side in ("-wal", "-shm"):
                extra = self.path.with_name(self.path.name + side)
                if extra.exists():
                    os.replace(extra, aside.with_name(aside.name + side))
            logger.warning("%s was damaged (%s): moved to %s, starting a new store", self.path, why,
                           aside.name)
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=30.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            with self._conn:
                self._conn.executescript(_SCHEMA)
                cols = {r[1] for r in self._conn.execute("PRAGMA table_info(hypervolume)")}
                if "tau" not in cols:  # a store written before the predictor existed
                    self._conn.execute("ALTER TABLE hypervolume ADD COLUMN tau REAL")
        except sqlite3.Error as exc:
            raise _store_error(self.path, exc) from None

    @classmethod
    def in_dir(cls, outdir: str | os.PathLike[str], *, resume: bool = True) -> ResultStore:
        """Open (creating) ``outdir/results.sqlite``; with ``resume=False`` a damaged one is moved aside."""
        return cls(Path(outdir) / STORE_NAME, move_damaged=not resume)

    def close(self) -> None:
        """Close the connection (the file stays consistent either way)."""
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- candidates -------------------------------------------------------------------
    @_guarded
    def get(self, fingerprint: str, key: str) -> StoredCandidate | None:
        """The stored candidate, or None."""
        row = self._conn.execute(
            "SELECT plan_key, plan_json, stage, eval_search_json, eval_full_json, reason, "
            "reason_full, feasible, seconds_search FROM candidates "
            "WHERE fingerprint=? AND plan_key=?",
            (fingerprint, key),
        ).fetchone()
        return None if row is None else _row(row)

    @_guarded
    def candidates(self, fingerprint: str) -> list[StoredCandidate]:
        """All candidates of a fingerprint, in insertion order."""
        rows = self._conn.execute(
            "SELECT plan_key, plan_json, stage, eval_search_json, eval_full_json, reason, "
            "reason_full, feasible, seconds_search FROM candidates WHERE fingerprint=? "
            "ORDER BY rowid",
            (fingerprint,),
        ).fetchall()
        return [_row(r) for r in rows]

    @_guarded
    def total(self) -> int:
        """Number of searched candidates stored (stage >= 1; the unmodified model not counted), all
        fingerprints."""
        return int(self._conn.execute("SELECT COUNT(*) FROM candidates WHERE stage > 0").fetchone()[0])

    @_guarded
    def count(self, fingerprint: str) -> int:
        """Number of candidates stored for a fingerprint."""
        return int(self._conn.execute(
            "SELECT COUNT(*) FROM candidates WHERE fingerprint=?", (fingerprint,)
        ).fetchone()[0])

    @_guarded
    def put_search(
        self,
        fingerprint: str,
        plan: CompressionPlan,
        stage: int,
        evaluation: Evaluation | None,
        *,
        feasible: bool,
        reason: str | None,
        objectives: list[float] | None,
        seconds: float | None,
    ) -> None:
        """Insert/replace the search-subset result of a candidate (keeps a full result)."""
        now = time.time()
        ev = evaluation
        cost = None if ev is None else json.dumps(ev.to_dict()["extra"], sort_keys=True)
        with self._conn:
            self._conn.execute(
                "INSERT INTO candidates (fingerprint, plan_key, plan_json, stage, metric_search,"
                " energy, size_bits, macs, params, objectives_json, cost_json, eval_search_json,"
                " feasible, reason, seconds_search, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(fingerprint, plan_key) DO UPDATE SET"
                " metric_search=excluded.metric_search, energy=excluded.energy,"
                " size_bits=excluded.size_bits, macs=excluded.macs, params=excluded.params,"
                " objectives_json=excluded.objectives_json, cost_json=excluded.cost_json,"
                " eval_search_json=excluded.eval_search_json, feasible=excluded.feasible,"
                " reason=excluded.reason, seconds_search=excluded.seconds_search,"
                " updated_at=excluded.updated_at",
                (
                    fingerprint, plan.key(), plan.to_json(), int(stage),
                    None if ev is None else float(ev.metric),
                    None if ev is None else float(ev.energy),
                    None if ev is None else float(ev.size_bits),
                    None if ev is None else int(ev.macs),
                    None if ev is None else int(ev.params),
                    None if objectives is None else json.dumps([float(v) for v in objectives]),
                    cost, None if ev is None else ev.to_json(),
                    int(bool(feasible)), reason, seconds, now, now,
                ),
            )

    @_guarded
    def put_full(
        self,
        fingerprint: str,
        plan: CompressionPlan,
        evaluation: Evaluation | None,
        *,
        reason: str | None,
        seconds: float | None,
    ) -> None:
        """Record the full-data result of a stored candidate."""
        with self._conn:
            cur = self._conn.execute(
                "UPDATE candidates SET metric_full=?, eval_full_json=?, reason_full=?,"
                " seconds_full=?, updated_at=? WHERE fingerprint=? AND plan_key=?",
                (
                    None if evaluation is None else float(evaluation.metric),
                    None if evaluation is None else evaluation.to_json(),
                    reason, seconds, time.time(), fingerprint, plan.key(),
                ),
            )
            if cur.rowcount == 0:
                raise DataError(f"{self.path}: no stored candidate {plan.key()} to add a "
                                "full-data result to")

    @_guarded
    def set_feasible(self, fingerprint: str, key: str, feasible: bool,
                     reason: str | None) -> None:
        """Update feasibility after a re-judgement (e.g. on the test split)."""
        with self._conn:
            self._conn.execute(
                "UPDATE candidates SET feasible=?, reason=COALESCE(?, reason), updated_at=?"
                " WHERE fingerprint=? AND plan_key=?",
                (int(bool(feasible)), reason, time.time(), fingerprint, key),
            )

    # ---- baseline ---------------------------------------------------------------------
    @_guarded
    def get_baseline(self, fingerprint: str) -> Evaluation | None:
        """The stored figures of the unmodified model, or None."""
        row = self._conn.execute("SELECT eval_json FROM baseline WHERE fingerprint=?",
                                 (fingerprint,)).fetchone()
        return None if row is None else Evaluation.from_dict(json.loads(row[0]))

    @_guarded
    def put_baseline(self, fingerprint: str, evaluation: Evaluation) -> None:
        """Record the figures of the unmodified model."""
        with self._conn:
            self._conn.execute("INSERT OR REPLACE INTO baseline VALUES (?,?,?)",
                               (fingerprint, evaluation.to_json(), time.time()))

    # ---- hypervolume ------------------------------------------------------------------
    @_guarded
    def put_hv(self, fingerprint: str, record: HVRecord) -> None:
        """Insert/replace the hypervolume of one generation."""
        with self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO hypervolume (fingerprint, stage, generation, n_evaluations, hv,"
                " hv_stage, created_at, tau) VALUES (?,?,?,?,?,?,?,?)",
                (fingerprint, record.stage, record.generation, record.n_evaluations,
                 float(record.hv), float(record.hv_stage), time.time(), record.tau),
            )

    @_guarded
    def hypervolume(self, fingerprint: str) -> list[HVRecord]:
        """Hypervolume history of a fingerprint, by stage and generation."""
        rows = self._conn.execute(
            "SELECT stage, generation, n_evaluations, hv, hv_stage, tau FROM hypervolume"
            " WHERE fingerprint=? ORDER BY stage, generation",
            (fingerprint,),
        ).fetchall()
        return [HVRecord(int(s), int(g), int(n), float(h), float(hs), None if t is None else float(t))
                for s, g, n, h, hs, t in rows]


def _row(r: tuple) -> StoredCandidate:
    key, plan_json, stage, es, ef, reason, reason_full, feasible, secs = r
    return StoredCandidate(
        key=key,
        plan=CompressionPlan.from_dict(json.loads(plan_json)),
        stage=int(stage),
        search=None if es is None else Evaluation.from_dict(json.loads(es)),
        full=None if ef is None else Evaluation.from_dict(json.loads(ef)),
        reason=reason,
        reason_full=reason_full,
        feasible=bool(feasible),
        seconds_search=secs,
    )


def _damage(path: Path) -> str | None:
    """Why an existing store file is unusable (None when healthy); never writes to it."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
        if rows != [("ok",)]:
            return "; ".join(str(r[0]) for r in rows[:2])
        return None
    except sqlite3.Error as exc:
        return str(exc)
    finally:
        conn.close()


def _free_name(path: Path) -> Path:
    """``path`` or, if taken, ``path.1``, ``path.2``, ..."""
    if not path.exists():
        return path
    i = 1
    while path.with_name(f"{path.name}.{i}").exists():
        i += 1
    return path.with_name(f"{path.name}.{i}")
