"""Surrogate screening: which of NSGA-II's offspring are worth an ONNX Runtime evaluation.

NSGA-II proposes several times more offspring than a generation evaluates. Offspring the run
already measured cost nothing and are always kept. Of the new ones, those whose optimistic
prediction (every objective lowered by ``z`` leave-one-out errors of the predictor) is not
dominated by a candidate already measured, and does not break the accuracy-drop limit, may
be non-dominated; at most ``n_eval * (1 - random_share)`` of them are evaluated (chosen by
predicted rank and crowding, as NSGA-II's survival would), and ``random_share`` of the batch
goes to offspring drawn at random from the rest, so the predictor keeps seeing candidates it
would have screened out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
from pymoo.operators.survival.rank_and_crowding.metrics import calc_crowding_distance
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from emomc_onnx.search.hypervolume import dominated_by
from emomc_onnx.search.predictor import Predictor
from emomc_onnx.search.space import CompressionPlan

__all__ = ["Screen", "Screening", "best_predicted"]


@dataclasses.dataclass(frozen=True)
class Screen:
    """What the screening kept of one batch of offspring.

    Attributes:
        keep: indices into the batch, ascending (known ones, predicted promising, random).
        proposed: new (not yet measured) offspring in the batch.
        promising: new offspring that may be non-dominated.
        random: indices of ``keep`` drawn at random from the screened-out rest.
    """

    keep: tuple[int, ...]
    proposed: int
    promising: int
    random: tuple[int, ...]


@dataclasses.dataclass
class Screening:
    """Screens batches with a predictor against the archive of measured candidates.

    Attributes:
        predictor: predicted objectives of a plan.
        random_share: share of each batch's evaluations drawn at random from the rest.
        z: leave-one-out errors of optimism a prediction gets.
        max_error: the highest error that still satisfies the accuracy-drop limit (None: no limit).
    """

    predictor: Predictor
    random_share: float = 0.25
    z: float = 1.0
    max_error: float | None = None

    def screen(self, plans: Sequence[CompressionPlan], known: Mapping[str, object], archive: np.ndarray,
               n_eval: int, rng: np.random.Generator) -> Screen:
        """The batch's indices to evaluate: at most ``n_eval`` new plans (see the module)."""
        keys = [p.key() for p in plans]
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        old = [i for i, k in enumerate(keys) if k in known]
        new = [i for i, k in enumerate(keys) if k not in known and first[k] == i]
        if len(new) <= n_eval:
            return Screen(tuple(sorted(old + new)), len(new), len(new), ())
        Fo = self.predictor.optimistic([plans[i] for i in new], self.z)
        ok = ~dominated_by(archive, Fo)
        names = self.predictor.prior.names
        if self.max_error is not None and "error" in names:
            ok &= Fo[:, names.index("error")] <= self.max_error
        may = [new[j] for j in np.flatnonzero(ok)]
        n_rand = int(round(self.random_share * n_eval))
        picked = may
        if len(may) > n_eval - n_rand:
            picked = [may[j] for j in best_predicted(self.predictor, [plans[i] for i in may], n_eval - n_rand)]
        rest = sorted(set(new) - set(picked))
        rand = [rest[j] for j in rng.permutation(len(rest))[:n_rand]]
        return Screen(tuple(sorted(old + picked + rand)), len(new), len(may), tuple(sorted(rand)))


def best_predicted(predictor: Predictor, plans: Sequence[CompressionPlan], n: int) -> list[int]:
    """Indices of ``n`` plans by predicted non-dominated rank, the last front by crowding (as
    NSGA-II's survival ranks measured ones)."""
    if n <= 0 or not plans:
        return []
    F = predictor.predict(plans)
    chosen: list[int] = []
    for front in NonDominatedSorting().do(F, n_stop_if_ranked=n):
        front = np.asarray(front)
        if len(chosen) + len(front) <= n:
            chosen += [int(i) for i in front]
            continue
        cd = calc_crowding_distance(F[front])
        order = np.argsort(-cd, kind="stable")
        chosen += [int(front[i]) for i in order[: n - len(chosen)]]
        break
    return chosen
