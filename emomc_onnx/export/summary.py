"""Terminal summary of an exported front (rich table that fits the terminal).

Every figure is on the test split: the accuracy with its 95% interval, and the paired
difference to the original model on the same samples with its p-value. The search split's
figure (what the front was chosen on) is shown next to it. Below ~100 columns the table is
compact (factors instead of absolute energy and size); file names from 160 columns;
front.csv holds every column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from emomc_onnx.export.front import FrontEntry
from emomc_onnx.search.evaluator import Evaluation

__all__ = ["render_summary", "split_note", "summary_table"]

WIDE = 110  # columns from which absolute energy, size and MACs are shown
FILES = 160  # columns from which file names are shown


def _bits(d: dict[str, int | None]) -> str:
    vals = sorted({v for v in d.values() if v is not None})
    if not vals:
        return "f"
    return str(vals[0]) if len(vals) == 1 else f"{vals[0]}-{vals[-1]}"


def _pct(v: float | None, digits: int = 2) -> str:
    return "" if v is None else f"{100 * v:.{digits}f}"


def _times(v: float) -> str:
    """An improvement factor in at most 5 characters: 2 decimals below 10, 1 below 100, none above."""
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _ci(ci: Sequence[float] | None) -> str:
    return "" if not ci else f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}"


def _diff(e: FrontEntry) -> str:
    if e.diff is None:
        return ""
    return f"{100 * e.diff:+.2f}"


def _p(p: float | None) -> str:
    if p is None:
        return ""
    return "<.001" if p < 0.001 else f"{p:.3f}"[1:] if p < 1 else "1"


def _flags(e: FrontEntry) -> str:
    return ("!" if e.gap_flag else "") + ("x" if e.within_max_drop is False else "")


def summary_table(entries: Sequence[FrontEntry], baseline: Evaluation | None = None,
                  width: int = 80) -> Table:
    """The front as a rich table, one row per member (the original first if given).

    ``width`` picks the layout: compact below :data:`WIDE` columns, wide from there.
    """
    wide = width >= WIDE
    files = width >= FILES
    t = Table(title=f"Pareto front ({len(entries)} members), test split", box=box.SIMPLE_HEAD,
              pad_edge=False, padding=(0, 1))
    cols: list[tuple[str, str]] = [("#", "right"), ("test%", "right"), ("95% CI", "right"),
                                   ("diff", "right"), ("p", "right"), ("search", "right")]
    if wide:
        cols += [("energy", "right")]
    cols += [("E x", "right"), ("S x", "right")]
    if wide:
        cols += [("KiB", "right"), ("MMACs", "right")]
    cols += [("w/a", "center"), ("", "left")]
    if files:
        cols += [("file", "left")]
    for col, just in cols:
        t.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    if baseline is not None:
        st = (baseline.extra or {}).get("stats") or {}
        row = ["orig", _pct(baseline.metric), _ci(st.get("ci95")), "", "", ""]
        if wide:
            row += [f"{baseline.energy:.4g}"]
        row += ["1.00", "1.00"]
        if wide:
            row += [f"{baseline.size_bits / 8192:.1f}", f"{baseline.macs / 1e6:.2f}"]
        row += ["f/f", ""]
        if files:
            row += [""]
        t.add_row(*row, style="dim")
    for e in entries:
        row = [f"{e.rank}", _pct(e.accuracy), _ci(e.accuracy_ci95), _diff(e), _p(e.p_value),
               _pct(e.metric_search)]
        if wide:
            row += [f"{e.energy:.4g}"]
        row += [_times(e.energy_factor), _times(e.size_factor)]
        if wide:
            row += [f"{e.size_bits / 8192:.1f}", f"{e.macs / 1e6:.2f}"]
        row += [f"{_bits(e.wbits)}/{_bits(e.abits)}", _flags(e)]
        if files:
            row += [e.file.rsplit("/", 1)[-1]]
        t.add_row(*row, style="red" if e.within_max_drop is False else None)
    return t


def split_note(splits: Mapping[str, Any] | None, entries: Sequence[FrontEntry] = ()) -> list[str]:
    """Lines saying which samples each figure is on, and what the flags mean."""
    lines = []
    if splits:
        c, s, t = (splits.get(k, {}) for k in ("calib", "search", "test"))
        r = splits.get("race", {})
        lines.append(f"test% and its 95% CI: on {t.get('n', '?')} test samples the search never saw "
                     f"({t.get('source', '')}); diff: paired difference to the original on those samples, "
                     f"in points, p: its p-value (McNemar's exact test, or bootstrap); search: on the "
                     f"{s.get('n', '?')} search samples the front was chosen on (racing: the first "
                     f"{r.get('n', '?')}); calibration: {c.get('n', '?')} samples; all disjoint.")
    if any(e.gap_flag for e in entries):
        lines.append("!: test drop significantly larger than search drop (selection bias).")
    if any(e.within_max_drop is False for e in entries):
        lines.append("x: breaks --max-accuracy-drop on the test split; kept here, never offered by select.")
    lines.append("E x / S x: energy and coded size, times smaller than the original; every column in front.csv.")
    return lines


def render_summary(entries: Sequence[FrontEntry], console: Console,
                   baseline: Evaluation | None = None, splits: Mapping[str, Any] | None = None) -> None:
    """Print the summary table (fitted to the console width) and the note on the splits."""
    console.print(summary_table(entries, baseline, width=console.width))
    for line in split_note(splits, entries):
        console.print(line, highlight=False, soft_wrap=False)
