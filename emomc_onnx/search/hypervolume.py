"""Hypervolume of normalised objective sets (pymoo's ``HV`` indicator).

Objectives are already normalised (error in [0, 1], energy and size as fractions of the
unmodified model), so one reference point serves every run: 1.1 on every axis, slightly
beyond the unmodified model so that it and points as costly as it still count. Points not
strictly better than the reference on every axis contribute nothing and are dropped.
"""

from __future__ import annotations

import numpy as np
from pymoo.indicators.hv import HV
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

__all__ = ["REFERENCE", "dominated_by", "hypervolume", "non_dominated"]

REFERENCE = 1.1


def non_dominated(F: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated rows of ``F`` (pymoo's fast non-dominated sorting)."""
    F = np.asarray(F, dtype=float)
    if F.size == 0:
        return np.zeros(0, dtype=np.int64)
    idx = NonDominatedSorting().do(F, only_non_dominated_front=True)
    return np.sort(np.asarray(idx, dtype=np.int64))


def dominated_by(archive: np.ndarray, F: np.ndarray) -> np.ndarray:
    """For each row of ``F``, whether some row of ``archive`` dominates it (all <=, one <)."""
    A = np.asarray(archive, dtype=float).reshape(len(archive), -1)
    F = np.atleast_2d(np.asarray(F, dtype=float))
    if len(A) == 0:
        return np.zeros(len(F), dtype=bool)
    le = np.all(A[None, :, :] <= F[:, None, :], axis=2)
    lt = np.any(A[None, :, :] < F[:, None, :], axis=2)
    return np.any(le & lt, axis=1)


def hypervolume(F: np.ndarray, n_obj: int | None = None, reference: float = REFERENCE) -> float:
    """Hypervolume of the points ``F`` (rows, minimised) w.r.t. ``(reference,)*n_obj``."""
    F = np.asarray(F, dtype=float)
    if F.size == 0:
        return 0.0
    F = F.reshape(len(F), -1)
    n_obj = n_obj or F.shape[1]
    ref = np.full(n_obj, reference, dtype=float)
    F = F[np.all(F < ref, axis=1)]
    if len(F) == 0:
        return 0.0
    F = F[non_dominated(F)]
    return float(HV(ref_point=ref)(F))
