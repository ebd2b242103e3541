"""Terminal rendering (rich) of analysis and before/after summaries; the CLI prints these."""

from __future__ import annotations

from collections.abc import Mapping

from rich.console import Console
from rich.table import Table

from emomc_onnx.analysis import Analysis

__all__ = ["render_analysis", "render_before_after", "human"]


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.4g}" if isinstance(n, float) else str(n)


def render_analysis(analysis: Analysis, console: Console) -> None:
    """Layers, groups and totals as tables."""
    gmap = analysis.group_of_layer()
    layers = Table(title="Compute layers", show_lines=False)
    for col in ("#", "layer", "op", "in", "out", "groups", "kernel", "stride", "out spatial", "MACs",
                "params", "group"):
        layers.add_column(col, justify="right" if col not in ("layer", "op") else "left")
    for i, lay in enumerate(analysis.layers):
        layers.add_row(
            str(i), lay.name, lay.op_type, str(lay.in_channels), str(lay.out_channels), str(lay.groups),
            "x".join(map(str, lay.kernel)), "x".join(map(str, lay.stride)),
            "x".join(map(str, lay.out_spatial)), human(lay.macs), human(lay.params),
            str(gmap.get(lay.name, "-")),
        )
    console.print(layers)
    groups = Table(title="Channel-dependency groups")
    for col in ("id", "channels", "prunable", "producers", "members", "why not"):
        groups.add_column(col)
    for g in analysis.groups:
        members = ", ".join(f"{m.node}:{m.role}" for m in g.members[:6])
        if len(g.members) > 6:
            members += f", +{len(g.members) - 6}"
        groups.add_row(str(g.id), str(g.channels), "yes" if g.prunable else "no",
                       ", ".join(g.sources[:4]) + (" ..." if len(g.sources) > 4 else ""),
                       members, g.reason or "")
    console.print(groups)
    t = analysis.to_dict()["totals"]
    console.print(
        f"[bold]Totals:[/] {t['layers']} layers, {human(t['macs'])} MACs, {human(t['params'])} params, "
        f"{t['groups']} groups ({t['prunable_groups']} prunable, {t['prunable_channels']} prunable channels)"
    )
    if analysis.unknown_ops:
        console.print("[yellow]Ops that block pruning:[/] " + "; ".join(
            f"{k}: {v}" for k, v in list(analysis.unknown_ops.items())[:10]))
    if analysis.uncovered:
        console.print("[yellow]Weighted ops that are not compute layers:[/] " + "; ".join(
            list(analysis.uncovered.values())[:10]))


def render_before_after(summary: Mapping, console: Console) -> None:
    """A before/after table from a dict with 'before', 'after' (metric -> value) and 'output'."""
    table = Table(title=f"{summary.get('title', 'Result')}")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("ratio", justify="right")
    for key, before in summary["before"].items():
        after = summary["after"].get(key)
        ratio = ""
        if isinstance(before, (int, float)) and isinstance(after, (int, float)) and after:
            ratio = f"{before / after:.2f}x" if key not in ("accuracy", "agreement") else f"{after - before:+.4f}"
        fmt = (lambda v: f"{v:.4f}") if key in ("accuracy", "agreement", "density") else human
        table.add_row(key, fmt(before) if before is not None else "-", fmt(after) if after is not None else "-", ratio)
    console.print(table)
    if summary.get("output"):
        console.print(f"wrote {summary['output']}")
