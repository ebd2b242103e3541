"""Predicted objectives of a candidate from its genes: the sensitivity table's sum, corrected online.

Prior: for every gene (:meth:`SearchSpace.genes`: a group's keep, a layer's density, weight
and activation bits) the change of each objective when only that gene moves, the rest of the
model unchanged. These are the one-change plans of :mod:`emomc_onnx.search.probes` (what :mod:`emomc_onnx.sensitivity` measures), measured with
the search's own evaluator and store (a ``sensitivity`` run's measurements are reused, and the
search's are kept), and interpolated linearly between the probed values; the unchanged value
(keep or density 1, the reference bits) changes nothing. The prior prediction of a candidate is
the unmodified model's figure plus the sum of its genes' changes.

Online: after every generation a ridge regression is refitted on every candidate measured so
far: per objective, an intercept and one coefficient per gene on that gene's prior change
(coefficient 1 is the prior, and the penalty pulls toward it), so a gene whose effect is larger
or smaller among the other changes than alone is learned, and the prior's offset with it. The
penalty is chosen by leave-one-out error, which also gives each objective's residual spread
(``sigma``). Error is modelled as ``-log(1 - error)`` (accuracy multiplies across layers, so
the layers' drops add there), energy and size as logs of their normalised values: the model
stays additive over genes, which is what an integer program over one choice per gene needs
(:func:`~emomc_onnx.search.seeding.milp_seeds`). Products of genes (e.g. a layer's bits and
density) were tried on the demo and the toy and did not rank better on later candidates.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence

import numpy as np
from scipy.stats import kendalltau

from emomc_onnx.search.space import FLOAT_BITS, CompressionPlan, SearchSpace
from emomc_onnx.units import round_keep

__all__ = ["Predictor", "Prior", "from_model_scale", "kendall_tau", "to_model_scale"]

logger = logging.getLogger(__name__)

_MAX_ERROR = 0.999  # error is clipped below 1 before the log transform
_ALPHAS = np.logspace(-3, 3, 13)
_MIN_FIT = 8  # measured candidates before the ridge correction is used (the prior alone before)


def to_model_scale(name: str, values: np.ndarray | float) -> np.ndarray:
    """An objective's values on the scale it is modelled on: ``-log(1 - error)`` (accuracy
    multiplies across layers, so their drops add there), the log of a normalised cost."""
    v = np.asarray(values, dtype=float)
    if name == "error":
        return -np.log1p(-np.clip(v, 0.0, _MAX_ERROR))
    return np.log(np.maximum(v, 1e-12))


def from_model_scale(name: str, values: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_model_scale`."""
    v = np.asarray(values, dtype=float)
    return -np.expm1(-np.maximum(v, 0.0)) if name == "error" else np.exp(v)


def _to_model(names: Sequence[str], F: np.ndarray) -> np.ndarray:
    F = np.asarray(F, dtype=float)
    return np.stack([to_model_scale(n, F[..., i]) for i, n in enumerate(names)], axis=-1)


def _from_model(names: Sequence[str], Z: np.ndarray) -> np.ndarray:
    Z = np.asarray(Z, dtype=float)
    return np.stack([from_model_scale(n, Z[..., i]) for i, n in enumerate(names)], axis=-1)


@dataclasses.dataclass(frozen=True)
class Prior:
    """Per gene of the space, probed values and the change of each objective there.

    Attributes:
        space: the genes.
        names: objectives, in the order of the rows.
        base: the unmodified model's objective row (modelled scale).
        points: per gene, ``(values ascending, changes (n_values x n_obj))`` on the modelled
            scale, the unchanged value included (change 0).
    """

    space: SearchSpace
    names: tuple[str, ...]
    base: np.ndarray
    points: tuple[tuple[np.ndarray, np.ndarray], ...]

    @classmethod
    def from_probes(cls, space: SearchSpace, names: Sequence[str], base: np.ndarray,
                    probes: Iterable[tuple[str, str, float, np.ndarray | None]]) -> Prior:
        """From ``(target, kind, value, objective row or None if it failed)`` measurements.

        ``value`` is the setting as the sensitivity table gives it: a keep *ratio* is turned
        into the fraction of channels the plan keeps (the choice the group rounds it to)."""
        names = tuple(names)
        base_z = _to_model(names, np.asarray(base, dtype=float))
        groups = {f"group {g.id}": g for g in space.groups}
        genes = space.genes()
        index = {g: i for i, g in enumerate(genes)}
        measured: list[dict[float, np.ndarray]] = [{} for _ in genes]
        for target, kind, value, row in probes:
            i = index.get((kind, target))
            if i is None or row is None:
                continue
            if kind == "keep":
                g = groups[target]
                value = round_keep(g.channels, float(value), g.multiple) / g.channels
            measured[i][float(value)] = _to_model(names, np.asarray(row, dtype=float)) - base_z
        points = []
        for (kind, _), m in zip(genes, measured):
            m.setdefault(float(FLOAT_BITS) if kind in ("wbits", "abits") else 1.0, np.zeros(len(names)))
            xs = np.array(sorted(m))
            points.append((xs, np.stack([m[x] for x in xs])))
        return cls(space, names, base_z, tuple(points))

    def changes(self, values: np.ndarray) -> np.ndarray:
        """Per candidate (rows of gene values) and gene, the change of each objective
        (n x n_genes x n_obj), interpolated between the probed values."""
        V = np.asarray(values, dtype=float).reshape(-1, len(self.points))
        out = np.zeros((len(V), len(self.points), len(self.names)))
        for j, (xs, ys) in enumerate(self.points):
            for k in range(len(self.names)):
                out[:, j, k] = np.interp(V[:, j], xs, ys[:, k])
        return out


def _ridge(X: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Ridge with a free intercept, the penalty chosen by leave-one-out error on a grid.

    Returns (weights, intercept, leave-one-out RMSE)."""
    n = len(t)
    mu, tm = X.mean(axis=0), t.mean()
    Xc, tc = X - mu, t - tm
    scale = np.sqrt((Xc**2).mean(axis=0))
    keep = scale > 1e-12
    Xs = Xc[:, keep] / scale[keep]
    U, s, Vt = np.linalg.svd(Xs, full_matrices=False)
    Ut = U.T @ tc
    best = (np.inf, 0.0)
    for a in _ALPHAS * max(n, 1):
        d = s / (s**2 + a)
        fit = U @ (s * d * Ut)
        h = (U**2 * (s * d)).sum(axis=1) + 1.0 / n  # hat diagonal (intercept included)
        loo = (tc - fit) / np.maximum(1.0 - h, 1e-6)
        err = float(np.mean(loo**2))
        if err < best[0]:
            best = (err, a)
    a = best[1]
    w = np.zeros(X.shape[1])
    w[keep] = (Vt.T @ (s / (s**2 + a) * Ut)) / scale[keep]
    return w, float(tm - mu @ w), float(np.sqrt(best[0]))


class Predictor:
    """The prior's sum, then the ridge correction learned from measured candidates.

    Attributes:
        prior: the per-gene changes.
        n_fit: candidates the current correction was fitted on (0: the prior alone).
        sigma: per objective, the leave-one-out RMSE of the fit (modelled scale; None before).
    """

    def __init__(self, prior: Prior) -> None:
        self.prior = prior
        self._coef: list[tuple[np.ndarray, float]] | None = None
        self.n_fit = 0
        self.sigma: np.ndarray | None = None

    def _changes(self, plans: Sequence[CompressionPlan]) -> np.ndarray:
        sp = self.prior.space
        V = np.array([sp.gene_values(p) for p in plans], dtype=float).reshape(len(plans), -1)
        return self.prior.changes(V)

    def fit(self, plans: Sequence[CompressionPlan], F: np.ndarray) -> None:
        """Refit the correction on measured candidates (objective rows ``F``, normalised)."""
        if len(plans) < _MIN_FIT:
            return
        C = self._changes(plans)
        Z = _to_model(self.prior.names, np.asarray(F, dtype=float))
        coef, sig = [], []
        for k in range(len(self.prior.names)):
            t = Z[:, k] - self.prior.base[k] - C[:, :, k].sum(axis=1)
            w, b, rmse = _ridge(C[:, :, k], t)
            coef.append((w, b))
            sig.append(rmse)
        self._coef, self.sigma, self.n_fit = coef, np.array(sig), len(plans)

    def predict_model(self, plans: Sequence[CompressionPlan]) -> np.ndarray:
        """Predicted objective rows on the modelled scale (n x n_obj)."""
        C = self._changes(plans)
        Z = self.prior.base[None, :] + C.sum(axis=1)
        if self._coef is not None:
            for k, (w, b) in enumerate(self._coef):
                Z[:, k] += C[:, :, k] @ w + b
        return Z

    def predict(self, plans: Sequence[CompressionPlan]) -> np.ndarray:
        """Predicted normalised objective rows (n x n_obj)."""
        return _from_model(self.prior.names, self.predict_model(plans))

    def optimistic(self, plans: Sequence[CompressionPlan], z: float) -> np.ndarray:
        """Predicted rows lowered by ``z`` leave-one-out RMSEs (the prior alone: unchanged)."""
        Z = self.predict_model(plans)
        if self.sigma is not None:
            Z = Z - z * self.sigma[None, :]
        return _from_model(self.prior.names, Z)


def kendall_tau(predicted: Sequence[float], measured: Sequence[float]) -> float | None:
    """Kendall's tau-b of two rankings (None with fewer than 3 pairs or no variation)."""
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    if len(p) < 3 or np.ptp(p) == 0 or np.ptp(m) == 0:
        return None
    t = kendalltau(p, m).statistic
    return None if not np.isfinite(t) else float(t)
