"""First generations of the two stages: uniform settings a user would try first, then random.

Stage 1 (pruning genes only) starts from no compression and a few uniform levels (every keep
and density gene at the same fraction of its range, and each of the two alone), topped up
with random genomes. Stage 2 starts from the stage-1 front's architectures at every uniform
(weight, activation) width, so the uniform-quantization points are in its first generation
and NSGA-II's crossover builds mixed precision from them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from emomc_onnx.search.genome import GenomeCodec
from emomc_onnx.search.hypervolume import non_dominated
from emomc_onnx.search.records import Candidate

__all__ = ["STAGE2_SEED_POPULATIONS", "dedupe", "initial_stage1", "initial_stage2"]

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
                   rng: np.random.Generator) -> np.ndarray:
    """Up to ``STAGE2_SEED_POPULATIONS`` populations: the stage-1 front at uniform bit widths."""
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
