"""Intervals and paired comparisons (evaluate/stats.py) against scipy and by simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from emomc_onnx.evaluate.stats import describe, drop_gap, mcnemar_exact, paired_se, wilson


@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (980, 1000), (1666, 1700), (3, 7)])
def test_wilson_matches_scipy(k: int, n: int) -> None:
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_wilson_covers_the_true_accuracy() -> None:
    """Near 98% on 1,000 samples the 95% interval covers the true rate in about 95% of draws."""
    rng = np.random.default_rng(0)
    k = rng.binomial(1000, 0.98, size=2000)
    cover = np.mean([lo <= 0.98 <= hi for lo, hi in (wilson(int(x), 1000) for x in k)])
    assert 0.93 <= cover <= 0.97


def test_mcnemar_exact_by_hand() -> None:
    assert mcnemar_exact(0, 6) == pytest.approx(2 * 0.5**6)  # all discordant samples one way
    assert mcnemar_exact(6, 0) == mcnemar_exact(0, 6)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 2**10)


def test_describe_binary_counts_the_discordant_samples() -> None:
    ref = np.array([1, 1, 1, 1, 0, 0, 1, 1, 1, 1], bool)
    hit = np.array([1, 0, 0, 1, 1, 0, 1, 1, 1, 1], bool)  # two lost, one gained
    st = describe(hit.mean(), ref.mean(), hit, ref, 10, binary=True)
    assert (st["k"], st["b"], st["c"]) == (7, 2, 1)
    assert st["diff"] == pytest.approx(-0.1)
    assert st["p_value"] == pytest.approx(1.0)  # 1 vs 2 discordant: no evidence
    assert st["ci95"] == pytest.approx(list(wilson(7, 10)))
    assert st["diff_ci95"][0] < -0.1 < st["diff_ci95"][1]
    assert st["se_diff"] == pytest.approx(paired_se(2, 1, 10))
    cheap = describe(hit.mean(), ref.mean(), hit, ref, 10, binary=True, intervals=False)
    assert "ci95" not in cheap and cheap["se_diff"] == st["se_diff"]


def test_bootstrap_interval_covers_the_mean() -> None:
    """Per-sample values (e.g. cosine): the percentile bootstrap covers the true mean ~95%."""
    rng = np.random.default_rng(1)
    hits = 0
    for rep in range(60):
        vals = rng.normal(0.9, 0.05, size=400)
        st = describe(vals.mean(), 1.0, vals, np.ones(400), 400, binary=False, seed=rep)
        hits += st["ci95"][0] <= 0.9 <= st["ci95"][1]
        assert st["diff"] == pytest.approx(vals.mean() - 1.0)
    assert hits >= 53  # >= 88% of 60


def test_bootstrap_recompute_for_metrics_that_are_not_means() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=300)

    def recompute(idx):
        return float(np.median(x[idx])), 0.0

    st = describe(float(np.median(x)), 0.0, None, None, 300, binary=False, recompute=recompute)
    assert st["ci95"][0] < np.median(x) < st["ci95"][1] and st["kind"] == "bootstrap"
    assert 0.0 <= st["p_value"] <= 1.0


def test_drop_gap_flags_a_test_drop_beyond_noise() -> None:
    search = {"diff": -0.002, "se_diff": 0.002, "n": 1000}
    same = {"diff": -0.003, "se_diff": 0.0015, "n": 1700}
    worse = {"diff": -0.02, "se_diff": 0.0035, "n": 1700}
    assert drop_gap(search, same)["flag"] is False
    g = drop_gap(search, worse)
    assert g["flag"] is True and g["gap"] == pytest.approx(0.018)
    # unknown search-side error: borrowed from the test side, scaled by the sample counts
    g2 = drop_gap({"diff": -0.002, "se_diff": None, "n": 1000}, worse)
    assert g2["se"] == pytest.approx(0.0035 * np.sqrt(1 + 1700 / 1000))
    assert drop_gap(None, worse) is None
