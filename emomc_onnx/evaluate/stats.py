"""Confidence intervals and paired comparisons for metrics measured on a finite sample.

A figure measured on n samples carries sampling noise: near 98% top-1 on 1,000 samples the
standard error is about 0.45 points. Every figure the tool reports therefore comes with:

* a 95% interval: Wilson's score interval for per-sample hit/miss metrics (accuracy,
  agreement), a percentile bootstrap for any other metric;
* the paired difference to the original model on the *same* samples, with its interval and
  a p-value: McNemar's exact test (a binomial test on the discordant samples) for hit/miss
  metrics, a paired bootstrap otherwise.

:func:`describe` computes all of this from a candidate's and the original's outputs;
:func:`drop_gap` tells whether a member's drop on the test split is significantly larger
than on the search split (the winner's curse of a front chosen on the search split).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["Z95", "describe", "drop_gap", "mcnemar_exact", "paired_se", "wilson"]

Z95 = 1.959963984540054  # two-sided 95% normal quantile
BOOTSTRAP = 1000  # resamples for per-sample means (cheap)
BOOTSTRAP_GENERIC = 200  # resamples for metrics recomputed from outputs (user metrics, SQNR)


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (exact bounds 0 and 1 are attainable)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    den = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b and c are the two kinds of discordant samples."""
    # scipy.stats (slow to import) loads only for test-split intervals, not for prune or quantize
    from scipy.stats import binomtest

    if b + c == 0:
        return 1.0
    return float(binomtest(int(b), int(b + c), 0.5).pvalue)


def paired_se(b: int, c: int, n: int) -> float:
    """Standard error of a paired difference of proportions (c - b) / n."""
    if n <= 0:
        return float("inf")
    d = (c - b) / n
    return math.sqrt(max((b + c) / n - d * d, 0.0) / n)


def _pct(vals: np.ndarray) -> list[float]:
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]


def describe(
    value: float,
    ref_value: float,
    per_sample: np.ndarray | None,
    ref_per_sample: np.ndarray | None,
    n: int,
    *,
    binary: bool,
    recompute: Callable[[np.ndarray], tuple[float, float]] | None = None,
    intervals: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Interval and paired difference of one figure against the original's on the same samples.

    Args:
        value: the candidate's metric on the samples.
        ref_value: the original model's metric on the same samples.
        per_sample: the candidate's per-sample values whose mean is ``value`` (hits for a
            binary metric), or None when the metric is not a mean.
        ref_per_sample: the original's per-sample values.
        n: number of samples.
        binary: per-sample values are hits/misses (Wilson and McNemar apply).
        recompute: for metrics that are not means, ``idx -> (value, ref_value)`` on the
            resampled indices (bootstrap).
        intervals: compute the intervals and p-value (False: only counts and the standard
            error of the difference, cheap enough for every search candidate).
        seed: bootstrap seed.

    Returns:
        ``n``, ``kind`` ("wilson" or "bootstrap"), ``diff`` (value - ref_value),
        ``se_diff`` (None if unknown), and with ``intervals``: ``ci95``, ``diff_ci95``,
        ``p_value``; binary metrics add ``k`` (hits), ``b`` (original right, candidate
        wrong) and ``c`` (the reverse).
    """
    out: dict[str, Any] = {"n": int(n), "kind": "wilson" if binary else "bootstrap",
                           "diff": float(value - ref_value), "se_diff": None}
    if binary and per_sample is not None and ref_per_sample is not None:
        hit = np.asarray(per_sample, bool)
        ref = np.asarray(ref_per_sample, bool)
        k = int(hit.sum())
        b = int((ref & ~hit).sum())
        c = int((~ref & hit).sum())
        out.update(k=k, b=b, c=c, se_diff=paired_se(b, c, n))
        if intervals:
            out["ci95"] = list(wilson(k, n))
            se = out["se_diff"]
            out["diff_ci95"] = [out["diff"] - Z95 * se, out["diff"] + Z95 * se]
            out["p_value"] = mcnemar_exact(b, c)
        return out
    if not intervals or n == 0:
        return out
    rng = np.random.default_rng(seed)
    if per_sample is not None and ref_per_sample is not None:
        vals = np.asarray(per_sample, float)
        refs = np.asarray(ref_per_sample, float)
        idx = rng.integers(0, n, size=(BOOTSTRAP, n))
        boot, boot_ref = vals[idx].mean(1), refs[idx].mean(1)
    elif recompute is not None:
        pairs = np.array([recompute(rng.integers(0, n, size=n)) for _ in range(BOOTSTRAP_GENERIC)])
        boot, boot_ref = pairs[:, 0], pairs[:, 1]
    else:
        return out
    diffs = boot - boot_ref
    out["ci95"] = _pct(boot)
    out["diff_ci95"] = _pct(diffs)
    out["se_diff"] = float(diffs.std(ddof=1))
    # two-sided bootstrap p-value of "no difference": twice the smaller tail share at zero
    tail = min(float((diffs <= 0).mean()), float((diffs >= 0).mean()))
    out["p_value"] = 1.0 if np.all(diffs == 0) else min(1.0, 2 * tail)
    return out


def drop_gap(search: dict[str, Any] | None, test: dict[str, Any] | None,
             z: float = Z95) -> dict[str, Any] | None:
    """Is the test drop significantly larger than the search drop?

    Drops are ``-diff`` (original minus candidate, on each split's own samples). The two
    splits are independent, so the gap's standard error combines both; a split whose
    standard error is unknown (bootstrap metrics on the search split) borrows the other's,
    scaled by the square root of the sample counts.

    Returns:
        ``gap`` (test drop - search drop, metric units), ``se``, ``z`` and ``flag``
        (gap > z * se), or None if either split has no figures.
    """
    if not search or not test:
        return None
    se_s, se_t = search.get("se_diff"), test.get("se_diff")
    n_s, n_t = search.get("n") or 0, test.get("n") or 0
    if se_s is None and se_t is not None and n_s:
        se_s = se_t * math.sqrt(n_t / n_s)
    if se_t is None and se_s is not None and n_t:
        se_t = se_s * math.sqrt(n_s / n_t)
    if se_s is None or se_t is None:
        return None
    gap = float(search["diff"] - test["diff"])
    se = math.sqrt(se_s**2 + se_t**2)
    score = gap / se if se > 0 else (math.inf if gap > 0 else 0.0)
    return {"gap": gap, "se": se, "z": score, "flag": bool(score > z)}

