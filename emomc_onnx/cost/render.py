"""Rich rendering of a ModelCost: per-layer table, totals, per-level breakdown."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.table import Table

from emomc_onnx.cost.model import ModelCost

__all__ = ["render", "render_comparison"]

logger = logging.getLogger(__name__)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def render(cost: ModelCost, console: Console) -> None:
    """Print the per-layer table, the totals and the energy by memory level."""
    t = Table(title=f"{cost.profile} · dataflow {cost.dataflow} · coding {cost.coding} "
                    f"· energy in {cost.energy_unit}")
    for col in ("layer", "op", "MACs", "w/a bits", "density", "energy", "energy/MAC",
                "size (kbit)", "coding"):
        t.add_column(col, justify="left" if col in ("layer", "op", "coding") else "right")
    for r in cost.layers:
        t.add_row(r.name, r.op_type, f"{r.macs:,}", f"{r.wbits}/{r.abits}", f"{r.density:.3f}",
                  _fmt(r.energy), _fmt(r.energy / r.macs if r.macs else 0.0),
                  f"{r.size_bits / 1e3:,.1f}", r.coding)
    console.print(t)
    console.print(
        f"total: {cost.macs:,} MACs, energy {_fmt(cost.energy)} {cost.energy_unit} "
        f"({_fmt(cost.energy_per_mac)} per MAC), size {cost.size_bits / 8e3:,.1f} kB "
        f"({cost.coding})"
    )
    lv = Table(title="energy by memory level and data type")
    lv.add_column("level")
    lv.add_column("energy", justify="right")
    lv.add_column("share", justify="right")
    for k, v in cost.energy_by_level.items():
        lv.add_row(k, _fmt(v), f"{100 * v / cost.energy:.1f}%" if cost.energy else "-")
    for k, v in cost.energy_by_type.items():
        lv.add_row(f"[dim]{k}[/dim]", _fmt(v), f"{100 * v / cost.energy:.1f}%" if cost.energy else "-")
    console.print(lv)
    sizes = ", ".join(f"{k} {v / 8e3:,.1f} kB" for k, v in cost.size_bits_by_coding.items())
    console.print(f"size by coding: {sizes}")
    if cost.other_ops:
        ot = Table(title="other ops (activation traffic at their precision, batch included)")
        for col in ("op", "type", "bits in/out", "elems in/out", "MACs", "energy"):
            ot.add_column(col, justify="left" if col in ("op", "type") else "right")
        for r in cost.other_ops:
            ot.add_row(r.name, r.op_type, f"{r.bits}/{r.out_bits}", f"{r.in_elems:,}/{r.out_elems:,}",
                       f"{r.macs:,}", _fmt(r.energy))
        console.print(ot)
    for name, op, reason in cost.ignored:
        console.print(f"[yellow]ignored[/yellow] {name} ({op}): {reason}")
    for r in cost.layers:
        for note in r.notes:
            console.print(f"[yellow]note[/yellow] {r.name}: {note}")


def render_comparison(costs: dict[str, ModelCost], console: Console) -> None:
    """Every dataflow side by side: energy, energy per MAC, ratio to the best."""
    best = min(c.energy for c in costs.values()) if costs else 0.0
    t = Table(title="dataflow comparison")
    for col in ("dataflow", "energy", "energy/MAC", "x best"):
        t.add_column(col, justify="left" if col == "dataflow" else "right")
    for name, c in costs.items():
        t.add_row(name, _fmt(c.energy), _fmt(c.energy_per_mac),
                  f"{c.energy / best:.2f}" if best else "-")
    console.print(t)
