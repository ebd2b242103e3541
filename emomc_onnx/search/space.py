"""The search space (genes) and the compression plan a genome decodes to.

The search knows genomes and objectives, not graph details: a :class:`SearchSpace` lists
prunable channel groups (:class:`GroupGene`) and compute layers (:class:`LayerGene`) with the
choices the hardware profile allows; a :class:`CompressionPlan` is what the passes take.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any, Literal

from emomc_onnx.errors import PlanError

__all__ = [
    "DEFAULT_POLICY",
    "FLOAT_BITS",
    "CompressionPlan",
    "GroupGene",
    "LayerGene",
    "SearchSpace",
    "SpaceKind",
    "SpacePolicy",
    "make_space",
]

SpaceKind = Literal["full", "emomc"]
FLOAT_BITS = 32  # the bits gene value of a float layer (SearchSpace.gene_values)


@dataclasses.dataclass(frozen=True)
class GroupGene:
    """A prunable channel-dependency group.

    Keep choices are the multiples of ``multiple`` from ``multiple`` up to ``channels``, plus
    ``channels`` itself when it is not a multiple. A group with ``channels <= multiple`` has
    the single choice keep-all (cutting below the hardware's channel multiple saves nothing
    on the PE array and only costs accuracy), so it contributes a constant gene.

    Attributes:
        id: group id (as given by the channel-dependency analysis).
        channels: channels in the group.
        multiple: channel step (the profile's ``channel_multiple``).
    """

    id: int
    channels: int
    multiple: int

    def __post_init__(self) -> None:
        if self.channels < 1:
            raise PlanError(f"group {self.id}: channels must be >= 1, got {self.channels}")
        if self.multiple < 1:
            raise PlanError(f"group {self.id}: multiple must be >= 1, got {self.multiple}")

    @property
    def choices(self) -> tuple[int, ...]:
        """Allowed kept-channel counts, ascending (the last one is keep-all)."""
        if self.channels <= self.multiple:
            return (self.channels,)
        out = list(range(self.multiple, self.channels + 1, self.multiple))
        if out[-1] != self.channels:
            out.append(self.channels)
        return tuple(out)


@dataclasses.dataclass(frozen=True)
class LayerGene:
    """A compute layer: weight-density, weight-bits and activation-bits genes.

    Attributes:
        name: node name (unique in the model).
        op_type: Conv, Gemm, MatMul, ...
        params: weight + bias elements of the unmodified layer.
        macs: multiply-accumulates of the unmodified layer for one sample.
    """

    name: str
    op_type: str
    params: int
    macs: int


def _round_density(d: float) -> float:
    return round(float(d), 6)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Genes and their allowed values.

    Attributes:
        groups: prunable channel groups.
        layers: compute layers.
        densities: allowed fine-grained weight densities in (0, 1].
        wbits: allowed weight bit widths.
        abits: allowed activation bit widths.
        reference_bits: (weight, activation) bits used for float layers; the ``emomc`` space
            fixes activations at ``reference_bits[1]``.
        stage1_quantized: stage-1 plans of the ``full`` space quantize every layer at
            ``reference_bits`` (architectures compared as they would deploy) instead of float.
        kind: ``"full"`` (keep per group, density/wbits/abits per layer) or ``"emomc"`` (the
            paper's space: one global density, one weight bit width per layer, activations
            at the reference bits, no channel pruning).
    """

    groups: tuple[GroupGene, ...]
    layers: tuple[LayerGene, ...]
    densities: tuple[float, ...]
    wbits: tuple[int, ...]
    abits: tuple[int, ...]
    reference_bits: tuple[int, int] = (16, 16)
    kind: SpaceKind = "full"
    stage1_quantized: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", tuple(self.groups))
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(
            self, "densities", tuple(sorted({_round_density(d) for d in self.densities}))
        )
        object.__setattr__(self, "wbits", tuple(sorted({int(b) for b in self.wbits})))
        object.__setattr__(self, "abits", tuple(sorted({int(b) for b in self.abits})))
        object.__setattr__(self, "reference_bits", tuple(int(b) for b in self.reference_bits))
        if self.kind not in ("full", "emomc"):
            raise PlanError(f"search space kind must be 'full' or 'emomc', got {self.kind!r}")
        if not self.layers:
            raise PlanError("search space has no compute layers")
        if len({g.id for g in self.groups}) != len(self.groups):
            raise PlanError("search space: duplicate group ids")
        if len({la.name for la in self.layers}) != len(self.layers):
            raise PlanError("search space: duplicate layer names")
        if not self.densities or any(not (0.0 < d <= 1.0) for d in self.densities):
            raise PlanError(f"search space densities must be in (0, 1], got {self.densities}")
        for field in ("wbits", "abits"):
            vals = getattr(self, field)
            if not vals or any(b < 1 for b in vals):
                raise PlanError(f"search space {field} must be positive integers, got {vals}")
        if len(self.reference_bits) != 2 or min(self.reference_bits) < 1:
            raise PlanError(f"search space reference_bits must be (w, a) >= 1, "
                            f"got {self.reference_bits}")

    def no_compression(self) -> CompressionPlan:
        """The plan that keeps everything at reference precision (bits None)."""
        return CompressionPlan(
            keep={g.id: g.channels for g in self.groups},
            density={la.name: 1.0 for la in self.layers},
            wbits={la.name: None for la in self.layers},
            abits={la.name: None for la in self.layers},
        )

    def genes(self) -> tuple[tuple[str, str], ...]:
        """``(kind, target)`` of every gene that can vary: a group's ``keep`` (target
        ``group N``) and, per layer, ``density`` (with a choice) then ``wbits`` and ``abits``
        (float in stage 1, a width in stage 2), target the layer name as in the sensitivity
        table, whatever the space's kind."""
        out = [("keep", f"group {g.id}") for g in self.groups if len(g.choices) > 1]
        for kind in ("density", "wbits", "abits"):
            if kind != "density" or len(self.densities) > 1:
                out += [(kind, la.name) for la in self.layers]
        return tuple(out)

    def gene_values(self, plan: CompressionPlan) -> list[float]:
        """The plan's value of each of :meth:`genes`: kept fraction of the group's channels,
        density, bits (``FLOAT_BITS`` for a float layer)."""
        channels = {f"group {g.id}": (g.id, g.channels) for g in self.groups}
        out: list[float] = []
        for kind, target in self.genes():
            if kind == "keep":
                gid, ch = channels[target]
                out.append(plan.keep.get(gid, ch) / ch)
            elif kind == "density":
                out.append(plan.density.get(target, 1.0))
            else:
                b = getattr(plan, kind).get(target)
                out.append(float(FLOAT_BITS if b is None else b))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description (for front.json)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class CompressionPlan:
    """What the passes apply to a model: one decoded genome.

    Missing entries mean "unchanged": a group not in ``keep`` keeps all channels, a layer
    not in ``density`` stays dense, a layer whose bits are missing or None stays float
    (costed at the reference precision).

    Attributes:
        keep: group id -> channels kept.
        density: layer name -> fraction of weights kept (fine-grained sparsity).
        wbits: layer name -> weight bits, None for float.
        abits: layer name -> activation bits, None for float.
    """

    keep: Mapping[int, int]
    density: Mapping[str, float]
    wbits: Mapping[str, int | None]
    abits: Mapping[str, int | None]

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", {int(k): int(v) for k, v in self.keep.items()})
        object.__setattr__(
            self, "density", {str(k): _round_density(v) for k, v in self.density.items()}
        )
        for field in ("wbits", "abits"):
            object.__setattr__(
                self,
                field,
                {str(k): (None if v is None else int(v)) for k, v in getattr(self, field).items()},
            )
        for k, v in self.keep.items():
            if v < 1:
                raise PlanError(f"plan keep[{k}] must be >= 1, got {v}")
        for k, d in self.density.items():
            if not (0.0 < d <= 1.0) or math.isnan(d):
                raise PlanError(f"plan density[{k!r}] must be in (0, 1], got {d}")

    @classmethod
    def empty(cls) -> CompressionPlan:
        """The plan that changes nothing (the unmodified model)."""
        return cls(keep={}, density={}, wbits={}, abits={})

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-friendly form (group ids as strings, sorted keys)."""
        return {
            "keep": {str(k): v for k, v in sorted(self.keep.items())},
            "density": dict(sorted(self.density.items())),
            "wbits": dict(sorted(self.wbits.items())),
            "abits": dict(sorted(self.abits.items())),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompressionPlan:
        """Inverse of :meth:`to_dict`; raises PlanError on a malformed dict."""
        try:
            return cls(
                keep={int(k): int(v) for k, v in dict(data.get("keep", {})).items()},
                density={str(k): float(v) for k, v in dict(data.get("density", {})).items()},
                wbits=dict(data.get("wbits", {})),
                abits=dict(data.get("abits", {})),
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise PlanError(f"malformed compression plan: {exc}") from exc

    def to_json(self) -> str:
        """Canonical JSON text (stable across runs and processes)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def key(self) -> str:
        """Stable identifier: SHA-256 (hex, 24 chars) of the canonical JSON."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:24]

    def __hash__(self) -> int:
        return hash(self.to_json())


@dataclasses.dataclass(frozen=True)
class SpacePolicy:
    """Which of a profile's choices the search offers, and how pruned channels are chosen.

    Attributes:
        wbits: (min, max) weight bit widths kept from the profile's (all of them if none fits).
        abits: (min, max) activation bit widths kept from the profile's (likewise).
        densities: (min, max, step) of the fine-grained weight densities.
        criterion: channel importance the builder ranks channels by ("l1", "l2").
    """

    wbits: tuple[int, int] = (2, 8)
    abits: tuple[int, int] = (4, 8)
    densities: tuple[float, float, float] = (0.1, 1.0, 0.05)
    criterion: str = "l1"

    def density_choices(self) -> tuple[float, ...]:
        lo, hi, step = self.densities
        n = math.floor((hi - lo) / step + 1e-9) + 1
        return tuple(round(lo + i * step, 2) for i in range(n))


DEFAULT_POLICY = SpacePolicy()


def make_space(analysis: Any, profile: Any, kind: SpaceKind = "full", multiple: int | None = None,
               stage1_quantized: bool = False, policy: SpacePolicy = DEFAULT_POLICY) -> SearchSpace:
    """The search space of an analysed model under a hardware profile.

    ``analysis`` gives ``prunable_groups`` (``id``, ``channels``) and ``layers`` (``name``,
    ``op_type``, ``params``, ``macs``); ``profile`` its ``channel_multiple``, ``weight_bits``
    and ``activation_bits``. ``stage1_quantized``: see :class:`SearchSpace`.
    """
    mult = int(multiple or profile.channel_multiple)
    groups = tuple(GroupGene(id=g.id, channels=g.channels, multiple=mult) for g in analysis.prunable_groups)
    layers = tuple(LayerGene(name=lay.name, op_type=lay.op_type, params=lay.params, macs=lay.macs)
                   for lay in analysis.layers)

    def within(bits, lo_hi) -> tuple[int, ...]:
        return tuple(b for b in bits if lo_hi[0] <= b <= lo_hi[1]) or tuple(bits)

    wbits, abits = within(profile.weight_bits, policy.wbits), within(profile.activation_bits, policy.abits)
    return SearchSpace(groups=groups, layers=layers, densities=policy.density_choices(), wbits=wbits, abits=abits,
                       reference_bits=(max(wbits), max(abits)), kind=kind, stage1_quantized=stage1_quantized)
