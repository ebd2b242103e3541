"""First generations of the two stages: uniform settings a user would try first, then random.

Stage 1 (pruning genes only) starts from no compression and a few uniform levels (every keep
and density gene at the same fraction of its range, and each of the two alone), topped up
with random genomes. Stage 2 starts from the stage-1 front's architectures at every uniform
(weight, activation) width, so the uniform-quantization points are in its first generation
and NSGA-II's crossover builds mixed precision from them; with a predictor, also the solutions
of integer programs that minimise a predicted cost under several predicted-error levels
(:func:`milp_seeds`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import lil_matrix

from emomc_onnx.search.genome import GenomeCodec
from emomc_onnx.search.hypervolume import non_dominated
from emomc_onnx.search.predictor import Predictor, to_model_scale
from emomc_onnx.search.records import Candidate

__all__ = ["STAGE2_SEED_POPULATIONS", "dedupe", "initial_stage1", "initial_stage2", "milp_seeds", "uniform_genomes"]

STAGE2_SEED_POPULATIONS = 3  # stage 2's first generation, in populations (search_quality.py)


def dedupe(rows: Sequence[np.ndarray], xu: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """The first ``n`` distinct rows, topped up with distinct random genomes in ``[0, xu]``."""
    seen: set[bytes] = set()
    out: list[np.ndarray] = []
    for r in rows:
        b = r.tobytes()
        if b not in seen:
            seen.add(b)
            out.append(r)
        if len(out) == n:
            break
    tries = 0
    while len(out) < n and tries < 50 * n:
        r = rng.integers(0, xu + 1).astype(np.int64)
        tries += 1
        if r.tobytes() not in seen:
            seen.add(r.tobytes())
            out.append(r)
    return np.stack(out)


def initial_stage1(codec: GenomeCodec, population: int, n_uniform: int, rng: np.random.Generator
                   ) -> np.ndarray:
    """No compression, ``n_uniform`` uniform levels (keep and density together and alone),
    then random genomes: one population."""
    space = codec.space
    _, xu = codec.bounds(1)
    n_g = len(space.groups) if space.kind == "full" else 0
    rows = [xu.copy()]  # no compression
    for lv in np.linspace(1.0, 0.0, n_uniform + 2)[1:-1]:
        u = np.rint(lv * xu).astype(np.int64)
        rows.append(u)
        if n_g:
            keep_only = xu.copy()
            keep_only[:n_g] = u[:n_g]
            dens_only = xu.copy()
            dens_only[n_g:] = u[n_g:]
            rows += [keep_only, dens_only]
    rows = rows[: max(1, population // 2)]
    rows += [rng.integers(0, xu + 1).astype(np.int64) for _ in range(population)]
    return dedupe(rows, xu, population, rng)


def stage1_front(codec: GenomeCodec, stage1: Sequence[Candidate]) -> list[np.ndarray]:
    """Stage-1 genomes of the non-dominated feasible stage-1 candidates, most accurate first
    (no compression when there are none)."""
    s1 = [c for c in stage1 if c.feasible and not c.raced_out]
    if not s1:
        return [codec.bounds(1)[1].copy()]
    F = np.array([c.objectives for c in s1])
    nd = sorted(non_dominated(F), key=lambda i: (tuple(F[i]), s1[i].key))
    return [codec.encode(s1[i].plan, 1) for i in nd]


def initial_stage2(codec: GenomeCodec, population: int, stage1: Sequence[Candidate],
                   rng: np.random.Generator, seeds: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Up to ``STAGE2_SEED_POPULATIONS`` populations: the stage-1 front at uniform bit widths,
    ``seeds`` (e.g. :func:`milp_seeds`) right after its most accurate architecture's."""
    space = codec.space
    _, xu2 = codec.bounds(2)
    n_l = len(space.layers)
    nw, na = len(space.wbits), len(space.abits)
    archs = stage1_front(codec, stage1)
    P = population
    if len(archs) > P:
        archs = [archs[int(i)] for i in np.rint(np.linspace(0, len(archs) - 1, P))]
    pairs = [(w, a) for w in reversed(range(nw)) for a in reversed(range(na))]
    rows: list[np.ndarray] = []
    # the most accurate stage-1 architecture at every uniform weight width (widest activations):
    # the uniform-quantization points a user would try first are always in the population
    for w_level in reversed(range(nw)):
        rows.append(codec.extend(archs[0], np.full(n_l, w_level), np.full(n_l, na - 1)))
    rows += [np.asarray(x, dtype=np.int64) for x in seeds]
    # then every front architecture at every uniform (weight, activation) width, in a random
    # order: small architectures at low widths are often the best trade-offs, and NSGA-II's
    # crossover of such parents makes the per-layer mixed precision from there
    # Each architecture also comes without its fine-grained sparsity: at low bit widths the
    # sparse index costs more than the zeros save, which stage 1 (float) cannot see.
    dense = [codec.dense(arch) for arch in archs]
    combos = [(arch, w, a) for arch in archs + dense for w, a in pairs]
    for i in rng.permutation(len(combos)):
        arch, w, a = combos[int(i)]
        rows.append(codec.extend(arch, np.full(n_l, w), np.full(n_l, a)))
    # a first generation of several populations' worth (NSGA-II keeps the best P of it)
    return dedupe(rows, xu2, STAGE2_SEED_POPULATIONS * P, rng)


def uniform_genomes(codec: GenomeCodec, levels: int = 6) -> list[np.ndarray]:
    """Stage-2 genomes of the uniform sweep a user would try by hand: every keep gene and every
    density gene at one of ``levels`` fractions of its range (each its own fraction), every
    layer at one (weight, activation) width. Distinct genomes, in sweep order."""
    sp = codec.space
    _, xu = codec.bounds(2)
    n_l = len(sp.layers)
    n_g = len(sp.groups) if sp.kind == "full" else 0
    n_d = n_l if sp.kind == "full" else 1
    fractions = np.linspace(1.0, 0.0, levels)
    acts = range(len(sp.abits)) if sp.kind == "full" else [None]
    out: dict[bytes, np.ndarray] = {}
    for kf in fractions if n_g else [1.0]:
        for df in fractions:
            for wi in range(len(sp.wbits)):
                for ai in acts:
                    x = np.empty_like(xu)
                    x[:n_g] = np.rint(kf * xu[:n_g])
                    x[n_g:n_g + n_d] = np.rint(df * xu[n_g:n_g + n_d])
                    x[n_g + n_d:n_g + n_d + n_l] = wi
                    if ai is not None:
                        x[n_g + n_d + n_l:] = ai
                    out.setdefault(x.tobytes(), x)
    return list(out.values())


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """File descriptor 1 to /dev/null while the block runs (where it can be redirected)."""
    try:
        saved = os.dup(1)
    except OSError:
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stdout.flush()
        os.dup2(null, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def _choice_effects(codec: GenomeCodec, predictor: Predictor) -> tuple[list[np.ndarray], np.ndarray]:
    """Per stage-2 genome gene, the additive prediction's change (choices x objectives, modelled
    scale) when that gene alone takes each choice, from a reference genome; and the reference's
    prediction. Genome genes move disjoint sets of the space's genes, so the effects add."""
    _, xu = codec.bounds(2)
    ref = xu.copy()
    plans = [codec.decode(ref, 2)]
    for i, top in enumerate(xu):
        for c in range(int(top) + 1):
            x = ref.copy()
            x[i] = c
            plans.append(codec.decode(x, 2))
    Z = predictor.predict_model(plans)
    effects, o = [], 1
    for top in xu:
        effects.append(Z[o:o + int(top) + 1] - Z[0])
        o += int(top) + 1
    return effects, Z[0]


def milp_seeds(codec: GenomeCodec, predictor: Predictor, error_levels: Sequence[float]) -> list[np.ndarray]:
    """Stage-2 genomes that minimise each predicted cost objective subject to the predicted
    error staying at or below each level (HAWQ-V3's budgeted assignment): one integer program
    per (cost, level) over a one-hot choice per genome gene (the predictor is additive over genes),
    solved with scipy's ``milp``. Infeasible levels give nothing; duplicates are dropped."""
    names = list(predictor.prior.names)
    costs = [k for k, n in enumerate(names) if n != "error"]
    if "error" not in names or not costs:
        return []
    e = names.index("error")
    effects, ref = _choice_effects(codec, predictor)
    sizes = [len(t) for t in effects]
    n = sum(sizes)
    onehot = lil_matrix((len(sizes), n))
    o = 0
    for i, m in enumerate(sizes):
        onehot[i, o:o + m] = 1.0
        o += m
    err_row = np.concatenate([t[:, e] for t in effects])
    out: list[np.ndarray] = []
    seen: set[bytes] = set()
    for k in costs:
        c = np.concatenate([t[:, k] for t in effects])
        for level in error_levels:
            bound = float(to_model_scale("error", level)) - ref[e]
            with _quiet_stdout():  # HiGHS prints a debug line to the C stdout on some problems
                res = milp(c, integrality=np.ones(n), bounds=Bounds(0, 1),
                           constraints=[LinearConstraint(onehot.tocsr(), 1, 1),
                                        LinearConstraint(err_row[None, :], -np.inf, bound)])
            if res.x is None:
                continue
            z = np.rint(res.x)
            x = np.array([int(np.argmax(z[a:a + m])) for a, m in zip(np.cumsum([0, *sizes[:-1]]), sizes)],
                         dtype=np.int64)
            if x.tobytes() not in seen:
                seen.add(x.tobytes())
                out.append(x)
    return out
