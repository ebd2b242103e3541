"""Integer genome <-> :class:`CompressionPlan`.

Every gene is an index into its choice list, so pymoo's integer operators (SBX/PM with
rounding repair) work on ``[0, n_choices - 1]`` bounds. Layout (stage 2 = stage 1 + bits,
so a stage-1 genome extended with bit genes seeds stage 2):

* ``full``:  ``[keep per group | density per layer | wbits per layer | abits per layer]``
* ``emomc``: ``[one global density | wbits per layer]`` (no channel pruning, activations at
  the reference bits).

Stage 1 uses only the leading pruning genes and decodes bits as None (reference precision).
"""

from __future__ import annotations

import numpy as np

from emomc_onnx.errors import PlanError
from emomc_onnx.search.space import CompressionPlan, SearchSpace

__all__ = ["GenomeCodec"]


class GenomeCodec:
    """Encodes/decodes plans of one :class:`SearchSpace` for stage 1 or stage 2."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self._keep_choices = [g.choices for g in space.groups]
        self._dens = space.densities
        n_layers = len(space.layers)
        if space.kind == "full":
            self._n1 = len(space.groups) + n_layers
            self._n2 = self._n1 + 2 * n_layers
        else:
            self._n1 = 1
            self._n2 = 1 + n_layers

    def n_var(self, stage: int) -> int:
        """Number of genes in the given stage (1 or 2)."""
        self._check_stage(stage)
        return self._n1 if stage == 1 else self._n2

    def bounds(self, stage: int) -> tuple[np.ndarray, np.ndarray]:
        """Inclusive integer bounds ``(xl, xu)`` of the stage's genome."""
        self._check_stage(stage)
        sp = self.space
        n_l = len(sp.layers)
        if sp.kind == "full":
            xu = [len(c) - 1 for c in self._keep_choices] + [len(self._dens) - 1] * n_l
            if stage == 2:
                xu += [len(sp.wbits) - 1] * n_l + [len(sp.abits) - 1] * n_l
        else:
            xu = [len(self._dens) - 1]
            if stage == 2:
                xu += [len(sp.wbits) - 1] * n_l
        xu_a = np.asarray(xu, dtype=np.int64)
        return np.zeros_like(xu_a), xu_a

    def decode(self, x: np.ndarray, stage: int) -> CompressionPlan:
        """Genome -> plan; raises PlanError for a wrong length or out-of-range gene."""
        self._check_stage(stage)
        x = np.asarray(x)
        n = self.n_var(stage)
        if x.shape != (n,):
            raise PlanError(f"stage-{stage} genome must have {n} genes, got shape {x.shape}")
        xi = np.rint(x).astype(np.int64)
        xl, xu = self.bounds(stage)
        bad = np.flatnonzero((xi < xl) | (xi > xu))
        if bad.size:
            i = int(bad[0])
            raise PlanError(f"gene {i} = {xi[i]} outside [0, {xu[i]}]")
        sp = self.space
        names = [la.name for la in sp.layers]
        n_l = len(names)
        if sp.kind == "full":
            n_g = len(sp.groups)
            keep = {g.id: self._keep_choices[j][xi[j]] for j, g in enumerate(sp.groups)}
            density = {nm: self._dens[xi[n_g + i]] for i, nm in enumerate(names)}
            if stage == 1:
                w1, a1 = sp.reference_bits if sp.stage1_quantized else (None, None)
                wb = {nm: w1 for nm in names}
                ab = {nm: a1 for nm in names}
            else:
                o = n_g + n_l
                wb = {nm: sp.wbits[xi[o + i]] for i, nm in enumerate(names)}
                ab = {nm: sp.abits[xi[o + n_l + i]] for i, nm in enumerate(names)}
        else:
            keep = {g.id: g.channels for g in sp.groups}
            density = {nm: self._dens[xi[0]] for nm in names}
            if stage == 1:
                wb = {nm: None for nm in names}
                ab = {nm: None for nm in names}
            else:
                wb = {nm: sp.wbits[xi[1 + i]] for i, nm in enumerate(names)}
                ab = {nm: sp.reference_bits[1] for nm in names}
        return CompressionPlan(keep=keep, density=density, wbits=wb, abits=ab)

    def encode(self, plan: CompressionPlan, stage: int) -> np.ndarray:
        """Plan -> genome; raises PlanError if a value is not one of the space's choices.

        Missing entries take their "unchanged" value (keep-all, density 1.0). Stage 2 needs
        integer bits for every layer.
        """
        self._check_stage(stage)
        sp = self.space
        names = [la.name for la in sp.layers]
        genes: list[int] = []
        if sp.kind == "full":
            for j, g in enumerate(sp.groups):
                genes.append(_index(self._keep_choices[j], plan.keep.get(g.id, g.channels),
                                    f"keep[{g.id}]"))
            for nm in names:
                genes.append(_index(self._dens, plan.density.get(nm, 1.0), f"density[{nm!r}]"))
            if stage == 2:
                for nm in names:
                    genes.append(_index(sp.wbits, plan.wbits.get(nm), f"wbits[{nm!r}]"))
                for nm in names:
                    genes.append(_index(sp.abits, plan.abits.get(nm), f"abits[{nm!r}]"))
        else:
            for g in sp.groups:
                if plan.keep.get(g.id, g.channels) != g.channels:
                    raise PlanError(f"emomc space has no channel pruning: keep[{g.id}] "
                                    f"= {plan.keep[g.id]} != {g.channels}")
            dens = {plan.density.get(nm, 1.0) for nm in names}
            if len(dens) != 1:
                raise PlanError(f"emomc space needs one global density, got {sorted(dens)}")
            genes.append(_index(self._dens, dens.pop(), "density"))
            if stage == 2:
                for nm in names:
                    genes.append(_index(sp.wbits, plan.wbits.get(nm), f"wbits[{nm!r}]"))
                    if plan.abits.get(nm) != sp.reference_bits[1]:
                        raise PlanError(f"emomc space fixes abits[{nm!r}] at "
                                        f"{sp.reference_bits[1]}, got {plan.abits.get(nm)}")
        if stage == 1:
            ok = {(None, None)}
            if sp.stage1_quantized and sp.kind == "full":
                ok.add(tuple(sp.reference_bits))
            for nm in names:
                if (plan.wbits.get(nm), plan.abits.get(nm)) not in ok:
                    raise PlanError(f"stage-1 plans have no bit widths other than {sorted(ok, key=str)}, "
                                    f"layer {nm!r} has ({plan.wbits.get(nm)}, {plan.abits.get(nm)})")
        return np.asarray(genes, dtype=np.int64)

    def extend(self, x1: np.ndarray, wbits_idx: np.ndarray, abits_idx: np.ndarray | None
               ) -> np.ndarray:
        """Stage-1 genome + bit-gene indices -> stage-2 genome (abits ignored for emomc)."""
        parts = [np.asarray(x1, dtype=np.int64), np.asarray(wbits_idx, dtype=np.int64)]
        if self.space.kind == "full":
            parts.append(np.asarray(abits_idx, dtype=np.int64))
        return np.concatenate(parts)

    def dense(self, x1: np.ndarray) -> np.ndarray:
        """The stage-1 genome with the same channels and no fine-grained sparsity (density 1.0)."""
        x = np.array(x1, dtype=np.int64)
        n_g = len(self.space.groups) if self.space.kind == "full" else 0
        n_d = len(self.space.layers) if self.space.kind == "full" else 1
        x[n_g:n_g + n_d] = len(self._dens) - 1
        return x

    @staticmethod
    def _check_stage(stage: int) -> None:
        if stage not in (1, 2):
            raise PlanError(f"stage must be 1 or 2, got {stage}")


def _index(choices: tuple, value: object, what: str) -> int:
    if isinstance(value, float):
        for i, c in enumerate(choices):
            if abs(float(c) - value) <= 1e-6:
                return i
    else:
        for i, c in enumerate(choices):
            if c == value:
                return i
    raise PlanError(f"{what} = {value!r} is not one of the allowed values {tuple(choices)}")
