"""The predictor (sensitivity prior + online ridge), its integer-program seeds and the screening."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from emomc_onnx.search.driver import SearchConfig, run_search
from emomc_onnx.search.genome import GenomeCodec
from emomc_onnx.search.predictor import Predictor, Prior, kendall_tau, to_model_scale
from emomc_onnx.search.probes import one_change_plans, probe_settings
from emomc_onnx.search.screening import Screening
from emomc_onnx.search.seeding import milp_seeds
from emomc_onnx.search.space import CompressionPlan, GroupGene, LayerGene, SearchSpace
from emomc_onnx.search.store import ResultStore
from tests.search.toy import ToyEvaluator, ToyEvaluatorFactory, toy_space

TOY = ToyEvaluatorFactory(n_layers=5)
NAMES = ("error", "energy", "size")


@dataclasses.dataclass
class Synthetic:
    """Noise-free toy figures; ``boost`` scales every gene's effect on the error's log scale
    once more than one gene moves (what the probes, one gene at a time, cannot see)."""

    boost: float = 1.0

    def __post_init__(self) -> None:
        self.toy = ToyEvaluator(TOY)
        m0, e0, s0, *_ = self.toy._figures(CompressionPlan.empty())
        self.base = (m0, e0, s0)

    def row(self, plan: CompressionPlan, moved: int = 2) -> np.ndarray:
        m, e, s, *_ = self.toy._figures(plan)
        u0, u = -math.log(self.base[0]), -math.log(m)
        if moved > 1:
            u = u0 + self.boost * (u - u0)
        return np.array([1.0 - math.exp(-u), e / self.base[1], s / self.base[2]])


def _prior(space: SearchSpace, syn: Synthetic) -> Prior:
    probes = [(t, k, v, syn.row(p, moved=1)) for t, k, v, p in one_change_plans(space, probe_settings(space))]
    return Prior.from_probes(space, NAMES, syn.row(CompressionPlan.empty(), moved=1), probes)


def _random_plans(space: SearchSpace, n: int, seed: int) -> list[CompressionPlan]:
    codec = GenomeCodec(space)
    _, xu = codec.bounds(2)
    rng = np.random.default_rng(seed)
    return [codec.decode(rng.integers(0, xu + 1), 2) for _ in range(n)]


def test_tau_is_high_on_an_additive_problem_and_the_fit_learns_what_probes_miss() -> None:
    space = toy_space(TOY)
    syn = Synthetic(boost=1.4)
    pred = Predictor(_prior(space, syn))
    train, unseen = _random_plans(space, 80, seed=1), _random_plans(space, 200, seed=2)
    F = np.array([syn.row(p) for p in unseen])
    before = pred.predict(unseen)
    # error is additive on -log(1 - error): the prior alone ranks unseen candidates almost exactly
    assert kendall_tau(before[:, 0], F[:, 0]) > 0.9  # (between probed values: interpolated)
    pred.fit(train, np.array([syn.row(p) for p in train]))
    after = pred.predict(unseen)
    assert kendall_tau(after[:, 0], F[:, 0]) > 0.9
    # the probes cannot see the boost; the fitted coefficients do
    err_before = np.abs(before[:, 0] - F[:, 0]).mean()
    err_after = np.abs(after[:, 0] - F[:, 0]).mean()
    assert err_after < 0.2 * err_before
    # its leave-one-out spread (log scale) is well below the prior's error there
    u_true, u_prior = to_model_scale("error", F[:, 0]), to_model_scale("error", before[:, 0])
    assert pred.n_fit == 80 and pred.sigma[0] < 0.3 * np.sqrt(np.mean((u_true - u_prior) ** 2))
    # costs: probed one gene at a time, they rank unseen candidates well too
    assert kendall_tau(after[:, 1], F[:, 1]) > 0.7 and kendall_tau(after[:, 2], F[:, 2]) > 0.7


def _tiny_space() -> SearchSpace:
    return SearchSpace(groups=(GroupGene(0, 8, 4),),
                       layers=(LayerGene("a", "Conv", 100, 1000), LayerGene("b", "Conv", 300, 900)),
                       densities=(0.5, 1.0), wbits=(2, 4, 8), abits=(4, 8), reference_bits=(8, 8))


@dataclasses.dataclass
class _Tiny:
    """An additive model of a tiny space (error on its log scale, costs in logs)."""

    def row(self, plan: CompressionPlan) -> np.ndarray:
        u, le, ls = 0.01, 0.0, 0.0
        for i, name in enumerate(("a", "b")):
            w, a, d = plan.wbits.get(name) or 32, plan.abits.get(name) or 32, plan.density.get(name, 1.0)
            u += (1 + i) * (0.3 * 2.0 ** -w + 0.2 * 2.0 ** -a + 0.05 * (1 - d))
            le += (1 + 2 * i) * 0.02 * (math.log(w / 32) + math.log(a / 32)) + 0.01 * math.log(d)
            ls += (3 - i) * 0.03 * math.log(w / 32) + 0.02 * math.log(d)
        k = plan.keep.get(0, 8) / 8
        u += 0.04 * (1 - k)
        le += 0.1 * math.log(k)
        return np.array([1 - math.exp(-u), math.exp(le), math.exp(ls)])


def test_milp_seeds_respect_the_error_bound_and_minimise_cost_as_brute_force_does() -> None:
    space = _tiny_space()
    tiny = _Tiny()
    settings = {"wbits": (2, 4, 8), "abits": (4, 8), "density": (0.5,), "keep": (0.5,)}
    probes = [(t, k, v, tiny.row(p)) for t, k, v, p in one_change_plans(space, settings)]
    pred = Predictor(Prior.from_probes(space, NAMES, tiny.row(CompressionPlan.empty()), probes))
    codec = GenomeCodec(space)
    _, xu = codec.bounds(2)
    genomes = [np.array(x) for x in itertools.product(*(range(int(t) + 1) for t in xu))]
    Z = pred.predict_model([codec.decode(x, 2) for x in genomes])
    levels = [0.012, 0.02, 0.05, 0.3]
    seeds = milp_seeds(codec, pred, levels)
    assert seeds
    got = {x.tobytes(): z for x, z in zip(genomes, Z)}
    for k in (1, 2):  # energy, size: per level, the brute-force optimum's predicted cost
        for level in levels:
            ok = Z[:, 0] <= to_model_scale("error", level) + 1e-9
            if not ok.any():
                continue
            best = Z[ok, k].min()
            assert any(abs(got[x.tobytes()][k] - best) < 1e-9 and got[x.tobytes()][0] <= to_model_scale(
                "error", level) + 1e-9 for x in seeds), (k, level)
    # every seed is within the loosest level it was solved for
    assert all(got[x.tobytes()][0] <= to_model_scale("error", max(levels)) + 1e-9 for x in seeds)
    # an impossible level (below the unmodified model's error) gives no seed
    assert milp_seeds(codec, pred, [0.0]) == []


class _Fixed:
    """A stand-in predictor: fixed predicted rows per plan key."""

    def __init__(self, rows: dict[str, np.ndarray]) -> None:
        self.rows = rows
        self.prior = type("P", (), {"names": ("error", "energy")})()

    def predict(self, plans):
        return np.array([self.rows[p.key()] for p in plans])

    def optimistic(self, plans, z):
        return self.predict(plans)


def test_screening_evaluates_fewer_than_proposed_and_keeps_the_random_share() -> None:
    plans = [CompressionPlan(keep={}, density={"x": round(0.1 + 0.01 * i, 6)}, wbits={}, abits={})
             for i in range(40)]
    rng = np.random.default_rng(0)
    # half the offspring are predicted dominated by the archive point (0.1, 0.1)
    rows = {p.key(): np.array([0.05, 0.5]) if i % 2 else np.array([0.5, 0.5]) for i, p in enumerate(plans)}
    known = {plans[0].key(): None}
    archive = np.array([[0.1, 0.1]])
    s = Screening(_Fixed(rows), random_share=0.25).screen(plans, known, archive, n_eval=10, rng=rng)
    assert s.proposed == 39 and s.promising == 20  # plans 1, 3, ..., 39 may be non-dominated
    new_kept = [i for i in s.keep if i != 0]
    assert 0 in s.keep and len(new_kept) == 10  # the known one is free; 10 new evaluated of 39
    assert len(s.random) == round(0.25 * 10) and all(i % 2 == 0 for i in s.random)
    assert sum(1 for i in new_kept if i % 2) == 10 - len(s.random)
    # fewer promising than the batch: all of them and the random share, not more
    rows2 = {k: (np.array([0.05, 0.05]) if i < 3 else np.array([0.5, 0.5]))
             for i, k in enumerate(rows)}
    s2 = Screening(_Fixed(rows2), random_share=0.25).screen(plans, {}, archive, n_eval=10, rng=rng)
    assert s2.promising == 3 and len(s2.keep) == 3 + round(0.25 * 10)
    # a batch no larger than the evaluations is not screened
    s3 = Screening(_Fixed(rows), random_share=0.25).screen(plans[:8], {}, archive, n_eval=10, rng=rng)
    assert s3.keep == tuple(range(8))


def test_surrogate_search_screens_offspring_records_tau_and_repeats_for_a_seed(tmp_path: Path) -> None:
    cfg = SearchConfig(population=12, generations=6)

    def run(name: str, **kw):
        with ResultStore.in_dir(tmp_path / name) as store:
            return run_search(toy_space(TOY), TOY, dataclasses.replace(cfg, **kw), store, seed=3)

    r = run("a")
    assert r.n_probes == len(one_change_plans(r.space, probe_settings(r.space)))
    assert r.screens and all(s["evaluated"] <= cfg.population for s in r.screens)
    assert sum(s["proposed"] for s in r.screens) > 2 * sum(s["evaluated"] for s in r.screens)
    assert all(s["random"] == round(cfg.random_share * cfg.population) for s in r.screens
               if s["proposed"] - s["promising"] >= cfg.population)
    taus = [h.tau for h in r.history if h.tau is not None]
    assert len(taus) >= len(r.history) - 2 and np.median(taus) > 0.8
    with ResultStore.in_dir(tmp_path / "a") as store:
        assert [h.tau for h in store.hypervolume(r.fingerprint)] == [h.tau for h in r.history]
    # stage 2's first generation holds integer-program seeds (mixed precision) besides uniform ones
    s2 = [c for c in r.candidates if c.stage == 2][: 3 * cfg.population]
    assert any(len(set(c.plan.wbits.values())) > 1 for c in s2)
    again = run("b")
    assert [m.key for m in again.front] == [m.key for m in r.front]
    assert [h.tau for h in again.history] == [h.tau for h in r.history]
    off = run("c", surrogate=False, predicted_seeds=False)
    assert off.n_probes == 0 and not off.screens and all(h.tau is None for h in off.history)


@pytest.mark.parametrize("budget", [100, 150])
def test_probes_count_in_the_evaluation_budget(tmp_path: Path, budget: int) -> None:
    cfg = SearchConfig(population=12, generations=10**6, max_evaluations=budget)
    with ResultStore.in_dir(tmp_path) as store:
        r = run_search(toy_space(TOY), TOY, cfg, store, seed=1)
    n = len(one_change_plans(r.space, probe_settings(r.space)))
    if 3 * n > budget:  # too many probes for the budget: the search runs without the predictor
        assert r.n_probes == 0 and r.n_evaluations == budget
    else:
        assert r.n_probes == n and r.n_evaluations + r.n_probes == budget


@pytest.mark.parametrize("population,generations", [(4, 1), (12, 3)])
def test_probes_skipped_when_they_outnumber_what_the_generations_make(tmp_path: Path, population: int,
                                                                      generations: int, caplog) -> None:
    """Without --max-evaluations: a model of many genes searched with a few generations (the
    corpus's one-generation run of 4 on a 100-layer detector) ran hundreds of probes before
    its 16 candidates (it timed out); the probes now run only if the generations evaluate more."""
    cfg = SearchConfig(population=population, generations=generations)
    with ResultStore.in_dir(tmp_path) as store:
        r = run_search(toy_space(TOY), TOY, cfg, store, seed=1)
    n = len(one_change_plans(r.space, probe_settings(r.space)))
    made = 2 * population * (generations + 1)
    if n > made:
        assert r.n_probes == 0 and "the search runs without its predictor" in caplog.text
    else:
        assert r.n_probes == n
