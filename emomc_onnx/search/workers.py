"""Where a run's candidates are evaluated: in this process, or on the run's backend.

:class:`Workers` holds the evaluator built in this process (fingerprint, baseline, single
plans) and, from the first batch of more than one plan, the backend that ``config`` asks for
(a local process pool or a Dask cluster, :func:`~emomc_onnx.search.backends.make_backend`).
:func:`safe_eval` is what runs for each candidate: a plan the model cannot take becomes a
failure reason, the user's broken metric stops the run, and any other exception (a bug) fails
the candidate with an ``unexpected`` reason and is logged with its traceback once.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import time
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

from emomc_onnx.errors import EmomcError, MetricError
from emomc_onnx.search.backends import Backend, InlineStream, Stream, make_backend
from emomc_onnx.search.evaluator import Evaluation, Evaluator, EvaluatorFactory
from emomc_onnx.search.space import CompressionPlan

__all__ = ["UNEXPECTED", "Workers", "safe_eval"]

logger = logging.getLogger(__name__)

UNEXPECTED = "unexpected "  # prefix of the reason of a candidate that failed with a bug, not a plan error
_MAX_REASON = 500
_WARNED: set[tuple[str, str, int]] = set()

Result = tuple[Evaluation | None, str | None, float]  # figures or None, failure reason, seconds


def safe_eval(evaluator: Evaluator, plan: CompressionPlan, subset: str, gate: Any = None) -> Result:
    """Evaluate, turning any exception but the user's metric error into a failure reason."""
    t0 = time.perf_counter()
    try:
        ev = (evaluator.evaluate(plan, subset) if gate is None
              else evaluator.evaluate(plan, subset, gate=gate))
        bad = [f for f in ("metric", "energy", "size_bits")
               if not math.isfinite(float(getattr(ev, f)))]
        if bad:
            raise ValueError(f"evaluator returned non-finite {', '.join(bad)}")
    except MetricError:  # the user's metric is broken: stop the run, do not blame the candidate
        raise
    except (EmomcError, MemoryError, FloatingPointError) as exc:  # a plan this model cannot take
        reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:_MAX_REASON]
        logger.debug("candidate %s failed: %s", plan.key(), reason)
        return None, reason, time.perf_counter() - t0
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        reason = (f"{UNEXPECTED}{type(exc).__name__}: {exc} (at {os.path.basename(where.filename)}:"
                  f"{where.lineno})").replace("\n", " ")[:_MAX_REASON]
        key = (type(exc).__name__, where.filename, where.lineno)
        if key not in _WARNED:  # once per bug and process, with its traceback; every one is counted
            _WARNED.add(key)
            logger.warning("candidate %s failed unexpectedly", plan.key(), exc_info=True)
        return None, reason, time.perf_counter() - t0
    return ev, None, time.perf_counter() - t0


class Workers:
    """This process's evaluator, and the backend started on the first batch that needs one.

    Attributes:
        evaluator: built here from ``factory`` (fingerprint, baseline, one-plan batches).
        can_race: the evaluator's ``evaluate`` takes a racing ``gate``.
        backend: None until a batch of several plans arrives (and after, without workers).
    """

    def __init__(self, factory: EvaluatorFactory, *, cluster: str | None, workers: int,
                 mp_context: str) -> None:
        self.factory = factory
        self.cluster, self.workers, self.mp_context = cluster, workers, mp_context
        self.evaluator = factory()
        params = inspect.signature(self.evaluator.evaluate).parameters
        self.can_race = "gate" in params or any(q.kind is q.VAR_KEYWORD for q in params.values())
        self.backend: Backend | None = None
        self._started = False

    def map(self, plans: Sequence[CompressionPlan], subset: str, gate: Any = None
            ) -> Iterator[tuple[int, Result]]:
        """``(index, result)`` of every plan, in order of completion (the backend's, or in order here)."""
        if len(plans) > 1 and not self._started:
            self.backend = make_backend(self.cluster, self.workers, self.factory, self.mp_context)
            self._started = True
        if self.backend is not None and len(plans) > 1:
            yield from self.backend.map_unordered(safe_eval, plans, subset, gate)
        else:
            for i, p in enumerate(plans):
                yield i, safe_eval(self.evaluator, p, subset, gate)

    def stream(self, fn: Any) -> tuple[Stream, int]:
        """A stream of single candidates through the backend (started now if it is not yet),
        and how many candidates in flight keep its workers busy (the steady-state search)."""
        if not self._started:
            self.backend = make_backend(self.cluster, self.workers, self.factory, self.mp_context)
            self._started = True
        if self.backend is None:
            return InlineStream(fn, self.evaluator), 1
        return self.backend.stream(fn), self.backend.slots()

    def slots(self) -> int:
        """Candidates in flight that keep the workers busy now (workers join and leave a cluster)."""
        return self.backend.slots() if self.backend is not None else 1

    def status(self) -> str | None:
        """The backend's few words for the progress line (e.g. "2 workers up"), or None."""
        return self.backend.status() if self.backend is not None else None

    def close(self) -> None:
        """Release the backend's workers (if any were started)."""
        if self.backend is not None:
            self.backend.close()
