"""Before/after table (rich), plot (PNG) and progress bar of a fine-tuning run (torch-free)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

__all__ = ["FinetuneProgress", "before_after_table", "plot_before_after"]


def before_after_table(summary: Mapping[str, Any]) -> Table:
    """One row per fine-tuned member: metric, energy and size factors before and after."""
    t = Table(title=f"fine-tuned members ({summary['train_samples']} training samples)")
    for col in ("rank", "metric before", "metric after", "change (points)", "energy x", "size x",
                "epochs", "train s", "file"):
        t.add_column(col, justify="left" if col == "file" else "right")
    for m in summary["members"]:
        b, a = m["before"]["metric"], m["after"]["metric"]
        ef, sf = m["energy_factor"], m["size_factor"]
        t.add_row(str(m["rank"]), f"{100 * b:.2f}", f"{100 * a:.2f}", f"{100 * (a - b):+.2f}",
                  f"{ef['before']:.2f} -> {ef['after']:.2f}", f"{sf['before']:.2f} -> {sf['after']:.2f}",
                  str(m["epochs"]), f"{m['elapsed_s']:.0f}", m["file"])
    return t


def plot_before_after(summary: Mapping[str, Any], path: str | Path) -> None:
    """Metric against energy and size factor, each member's move drawn as an arrow."""
    # matplotlib loads only to draw: the CLI imports this module for its table
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from emomc_onnx.export.plots import save_png

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, label in ((axes[0], "energy_factor", "energy reduction (x)"),
                           (axes[1], "size_factor", "size reduction (x)")):
        ms = summary["members"]
        xb = [m[key]["before"] for m in ms]
        xa = [m[key]["after"] for m in ms]
        yb = [100 * m["before"]["metric"] for m in ms]
        ya = [100 * m["after"]["metric"] for m in ms]
        ax.scatter(xb, yb, c="tab:grey", s=24, label="front before")
        ax.scatter(xa, ya, c="tab:blue", s=24, label="after fine-tuning")
        for x0, y0, x1, y1 in zip(xb, yb, xa, ya):
            ax.annotate("", (x1, y1), (x0, y0), arrowprops={"arrowstyle": "->", "color": "tab:blue",
                                                            "lw": 0.8})
        ax.axhline(100 * summary["baseline"]["metric"], c="tab:red", lw=0.8, ls="--", label="original")
        ax.set_xlabel(label)
        ax.set_ylabel("metric (%), the run's evaluation samples")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("front before vs after fine-tuning")
    save_png(fig, Path(path))


class FinetuneProgress:
    """A bar per member: epoch, step, running loss and held-out figure."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("[bold]member {task.fields[rank]}[/] epoch {task.fields[epoch]}"),
            BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
            TextColumn("loss {task.fields[loss]}"), TextColumn("held-out {task.fields[heldout]}"),
            TimeElapsedColumn(), console=console, transient=False)
        self._tasks: dict[int, Any] = {}

    def __enter__(self) -> FinetuneProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def update(self, rank: int, event) -> None:
        if rank not in self._tasks:
            self._tasks[rank] = self._progress.add_task("member", total=None, rank=rank, epoch="-",
                                                        loss="-", heldout="-")
        if event is None:
            return
        fields = {"epoch": f"{event.epoch}/{event.epochs or '?'}", "loss": f"{event.loss:.4f}"}
        if event.heldout is not None:
            h = event.heldout
            fields["heldout"] = f"{100 * h:.2f}%" if 0.0 <= h <= 1.0 else f"{h:.4g}"  # sqnr: dB
        self._progress.update(self._tasks[rank], completed=event.step, total=event.steps, **fields)
