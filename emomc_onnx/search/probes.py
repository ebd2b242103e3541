"""The one-change plans: every gene of a search space moved alone, the rest of the model unchanged.

What the ``sensitivity`` command measures, and what the search probes to build its predictor's
prior (:mod:`emomc_onnx.search.predictor`): the same plans, so either reuses the other's
measurements from the result store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from emomc_onnx.search.space import CompressionPlan, SearchSpace
from emomc_onnx.units import round_keep

__all__ = ["DEFAULT_SETTINGS", "KINDS", "one_change_plans", "probe_settings"]

KINDS = ("wbits", "abits", "density", "keep")
DEFAULT_SETTINGS: dict[str, tuple[float, ...]] = {
    "wbits": (2, 3, 4, 6, 8),
    "abits": (4, 6, 8),
    "density": (0.2, 0.4, 0.6, 0.8),
    "keep": (0.25, 0.5, 0.75),
}


def one_change_plans(space: SearchSpace, settings: Mapping[str, Sequence[float]]) -> list[tuple[str, str, float, CompressionPlan]]:
    """``(target, kind, value, plan)`` of every one-change plan of ``settings`` (kind -> values):
    a layer's weight bits, activation bits or density, or a prunable group's keep ratio, the
    rest unchanged. The search measures the same plans (same keys) for its predictor."""
    out = []
    for lay in space.layers:
        for b in settings.get("wbits", ()):
            out.append((lay.name, "wbits", b, CompressionPlan(keep={}, density={}, wbits={lay.name: int(b)}, abits={})))
        for b in settings.get("abits", ()):
            out.append((lay.name, "abits", b, CompressionPlan(keep={}, density={}, wbits={}, abits={lay.name: int(b)})))
        for d in settings.get("density", ()):
            out.append((lay.name, "density", d, CompressionPlan(keep={}, density={lay.name: float(d)}, wbits={},
                                                                abits={})))
    for g in space.groups:
        if len(g.choices) < 2:
            continue
        for k in settings.get("keep", ()):
            kept = round_keep(g.channels, float(k), g.multiple)
            if kept < g.channels:
                out.append((f"group {g.id}", "keep", k, CompressionPlan(keep={g.id: kept}, density={}, wbits={},
                                                                        abits={})))
    return out


def probe_settings(space: SearchSpace) -> dict[str, tuple[float, ...]]:
    """The sensitivity command's default settings that are choices of ``space``: the search
    probes what ``sensitivity`` measures by default, so either reuses the other's results."""
    kinds = {kind for kind, _ in space.genes()}
    allowed = {"wbits": space.wbits, "abits": space.abits, "density": space.densities}
    return {kind: tuple(v for v in values if kind in kinds and (kind == "keep" or v in allowed[kind]))
            for kind, values in DEFAULT_SETTINGS.items()}
