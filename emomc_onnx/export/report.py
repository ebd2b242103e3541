"""Terminal summary of an exported front (rich table)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from emomc_onnx.export.front import FrontEntry
from emomc_onnx.search.evaluator import Evaluation

__all__ = ["render_summary", "summary_table"]


def _bits(d: dict[str, int | None]) -> str:
    vals = sorted({v for v in d.values() if v is not None})
    if not vals:
        return "float"
    return str(vals[0]) if len(vals) == 1 else f"{vals[0]}-{vals[-1]}"


def summary_table(entries: Sequence[FrontEntry], baseline: Evaluation | None = None) -> Table:
    """The front as a rich table (one row per member, baseline first if given)."""
    t = Table(title=f"Pareto front ({len(entries)} members)")
    for col, just in (("rank", "right"), ("accuracy", "right"), ("search", "right"),
                      ("energy", "right"), ("energy x", "right"), ("size (KiB)", "right"),
                      ("size x", "right"), ("MMACs", "right"), ("params", "right"),
                      ("wbits", "center"), ("abits", "center"), ("file", "left")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    if baseline is not None:
        t.add_row("orig", f"{100 * baseline.metric:.2f}", "", f"{baseline.energy:.4g}", "1.00",
                  f"{baseline.size_bits / 8192:.1f}", "1.00", f"{baseline.macs / 1e6:.2f}",
                  f"{baseline.params}", "float", "float", "", style="dim")
    for e in entries:
        t.add_row(f"{e.rank}", f"{100 * e.accuracy:.2f}", f"{100 * e.metric_search:.2f}",
                  f"{e.energy:.4g}", f"{e.energy_factor:.2f}", f"{e.size_bits / 8192:.1f}",
                  f"{e.size_factor:.2f}", f"{e.macs / 1e6:.2f}", f"{e.params}",
                  _bits(e.wbits), _bits(e.abits), e.file)
    return t


def render_summary(entries: Sequence[FrontEntry], console: Console,
                   baseline: Evaluation | None = None) -> None:
    """Print the summary table to ``console``."""
    console.print(summary_table(entries, baseline))
