"""Objectives and constraints: an :class:`Evaluation` -> pymoo ``F`` and ``G`` rows.

Objectives (all minimised) are normalised by the unmodified model so that they share a
scale: ``error`` as the metric defines it (``Evaluation.error``; 1 - accuracy), ``energy = energy / baseline.energy``,
``size = size_bits / baseline.size_bits``. Constraints (``G <= 0`` is satisfied):

* ``G[0]``: 0 for a candidate that built and ran, 1 for a failure (so failures are
  infeasible with a positive constraint violation and ranked behind every feasible one);
* ``G[1]`` (only with ``max_accuracy_drop``): ``drop_points - margin - max_accuracy_drop`` where
  ``drop_points`` is the metric drop versus the original model in points, paired on the same
  samples when the evaluation carries statistics (``extra["stats"]["diff"]``), else
  ``100 * (baseline.metric - metric)``; ``margin`` is ``noise_z`` standard errors of that
  drop (the search judges on a finite split: a candidate within noise of the limit stays
  feasible, and the test split judges it after the search with ``noise_z = 0``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from pymoo.core.problem import Problem

from emomc_onnx.errors import PlanError
from emomc_onnx.search.evaluator import Evaluation

__all__ = ["FAILED_COST", "OBJECTIVES", "Objectives", "make_problem"]

OBJECTIVES = ("error", "energy", "size")
FAILED_COST = 10.0  # normalised cost given to a failed candidate (any value >= 1 works)
_FAILED_DROP = 1e3


@dataclasses.dataclass(frozen=True)
class Objectives:
    """Maps evaluations to normalised objective and constraint vectors.

    Attributes:
        names: chosen objectives, a non-empty subset of ``OBJECTIVES`` in any order.
        baseline: the unmodified model's figures (normalisation and the accuracy drop).
        max_accuracy_drop: allowed metric drop in points (x100), or None.
        noise_z: standard errors of the measured drop granted as a margin (0: none).
    """

    names: tuple[str, ...]
    baseline: Evaluation
    max_accuracy_drop: float | None = None
    noise_z: float = 0.0

    def __post_init__(self) -> None:
        names = tuple(self.names)
        object.__setattr__(self, "names", names)
        if not names:
            raise PlanError("objectives: choose at least one of error, energy, size")
        unknown = [n for n in names if n not in OBJECTIVES]
        if unknown:
            raise PlanError(f"objectives: unknown {unknown}, choose from {list(OBJECTIVES)}")
        if len(set(names)) != len(names):
            raise PlanError(f"objectives: duplicates in {list(names)}")
        if self.baseline.energy <= 0 or self.baseline.size_bits <= 0:
            raise PlanError("baseline energy and size must be positive to normalise objectives")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise PlanError(f"max_accuracy_drop must be >= 0, got {self.max_accuracy_drop}")

    @property
    def n_obj(self) -> int:
        """Number of objectives."""
        return len(self.names)

    @property
    def n_constr(self) -> int:
        """Number of inequality constraints."""
        return 1 if self.max_accuracy_drop is None else 2

    def drop_points(self, ev: Evaluation) -> float:
        """Metric drop versus the original model, in points (paired on the same samples if known)."""
        stats = ev.extra.get("stats") if ev.extra else None
        if stats and stats.get("diff") is not None:
            return -100.0 * float(stats["diff"])
        return 100.0 * (self.baseline.metric - ev.metric)

    def margin_points(self, ev: Evaluation) -> float:
        """The noise margin of the drop, in points (``noise_z`` standard errors; 0 if unknown)."""
        stats = ev.extra.get("stats") if ev.extra else None
        se = stats.get("se_diff") if stats else None
        return 0.0 if not self.noise_z or se is None else 100.0 * self.noise_z * float(se)

    def f(self, ev: Evaluation | None) -> np.ndarray:
        """Normalised objective row (a failure gets error 1 and large costs)."""
        vals = {
            "error": 1.0 if ev is None else ev.error,
            "energy": FAILED_COST if ev is None else float(ev.energy) / self.baseline.energy,
            "size": FAILED_COST if ev is None else float(ev.size_bits) / self.baseline.size_bits,
        }
        return np.array([vals[n] for n in self.names], dtype=float)

    def g(self, ev: Evaluation | None) -> np.ndarray:
        """Constraint row, ``<= 0`` everywhere when satisfied."""
        row = [0.0 if ev is not None else 1.0]
        if self.max_accuracy_drop is not None:
            row.append(_FAILED_DROP if ev is None
                       else self.drop_points(ev) - self.margin_points(ev) - self.max_accuracy_drop)
        return np.array(row, dtype=float)

    def violation(self, ev: Evaluation | None, reason: str | None = None) -> str | None:
        """Why a candidate is infeasible, or None when it is feasible."""
        if ev is None:
            return reason or "evaluation failed"
        if self.max_accuracy_drop is not None:
            drop = self.drop_points(ev)
            margin = self.margin_points(ev)
            if drop - margin > self.max_accuracy_drop:
                extra = f" + noise margin {margin:.3f}" if margin else ""
                return (f"accuracy drop {drop:.3f} points > max_accuracy_drop "
                        f"{self.max_accuracy_drop:g}{extra}")
        return None


def make_problem(n_var: int, xu: np.ndarray, objectives: Objectives) -> Problem:
    """The pymoo problem of one stage (bounds and sizes only: we evaluate ourselves)."""
    return Problem(
        n_var=n_var,
        n_obj=objectives.n_obj,
        n_ieq_constr=objectives.n_constr,
        xl=np.zeros(n_var, dtype=np.int64),
        xu=np.asarray(xu, dtype=np.int64),
        vtype=int,
    )
