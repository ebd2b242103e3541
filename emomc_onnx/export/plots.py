"""Pareto-front and convergence plots (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from emomc_onnx.paths import atomic_write_bytes
from emomc_onnx.search.evaluator import Evaluation
from emomc_onnx.search.store import HVRecord

if TYPE_CHECKING:
    from emomc_onnx.export.front import FrontEntry

__all__ = ["plot_convergence", "plot_pareto", "save_png"]

logger = logging.getLogger(__name__)


def save_png(fig: plt.Figure, path: Path) -> None:
    """Write ``fig`` as a PNG atomically and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def plot_pareto(
    entries: Sequence[FrontEntry],
    baseline: Evaluation,
    path: str | Path,
    *,
    extra_points: Mapping[str, Evaluation] | None = None,
    window_points: float | None = None,
) -> None:
    """Three 2-D projections of the front, and a zoom on the region near the original's accuracy.

    Energy and size are relative to the unmodified model (marked with a star); extra labelled
    points (peers, e.g. ONNX Runtime int8) are drawn as crosses. Every accuracy is on the test
    split. The zoom (bottom) shows test accuracy with its 95% interval against energy for the
    members within a few points of the original, each labelled with its rank, the accuracy
    window (``window_points`` below the original, 0.5 if not given) shaded, and the peers.
    """
    err = [e.error for e in entries]
    en = [e.energy / baseline.energy for e in entries]
    sz = [e.size_bits / baseline.size_bits for e in entries]
    pts = {"error": err, "energy": en, "size": sz}
    axes_def = [("energy", "error"), ("size", "error"), ("energy", "size")]
    labels = {"error": "error (test split)", "energy": "energy / original",
              "size": "coded size / original"}

    def coords(ev: Evaluation) -> dict[str, float]:
        return {"error": ev.error, "energy": ev.energy / baseline.energy,
                "size": ev.size_bits / baseline.size_bits}

    fig = plt.figure(figsize=(15, 9.5))
    grid = fig.add_gridspec(2, 3, height_ratios=(1, 1.15))
    axes = [fig.add_subplot(grid[0, i]) for i in range(3)]
    for ax, (x, y) in zip(axes, axes_def):
        ax.scatter(pts[x], pts[y], c="tab:blue", s=22, label="front")
        b = coords(baseline)
        ax.scatter([b[x]], [b[y]], marker="*", s=160, c="tab:red", label="original")
        for name, ev in (extra_points or {}).items():
            c = coords(ev)
            ax.scatter([c[x]], [c[y]], marker="x", s=60, c="k")
            ax.annotate(name, (c[x], c[y]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
        ax.set_xlabel(labels[x])
        ax.set_ylabel(labels[y])
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    _zoom(fig.add_subplot(grid[1, :]), entries, baseline, extra_points or {},
          0.5 if window_points is None else float(window_points))
    fig.suptitle(f"Pareto front ({len(entries)} members), test-split figures")
    save_png(fig, Path(path))


def _zoom(ax, entries, baseline: Evaluation, extra_points: Mapping[str, Evaluation], window: float) -> None:
    """Test accuracy (points, 95% interval) vs energy near the original's accuracy, ranks labelled."""
    top = 100 * baseline.metric
    span = max(3 * window, 2.0)
    near = [e for e in entries if 100 * e.accuracy >= top - span]
    ax.axhspan(top - window, top, color="tab:green", alpha=0.12,
               label=f"window: original - {window:g} points")
    ax.axhline(top, c="tab:red", lw=0.8)
    ax.scatter([1.0], [top], marker="*", s=160, c="tab:red", label="original", zorder=3)
    for e in near:
        x = e.energy / baseline.energy
        y = 100 * e.accuracy
        ci = e.accuracy_ci95
        yerr = [[y - 100 * ci[0]], [100 * ci[1] - y]] if ci else None
        color = "tab:gray" if e.within_max_drop is False else ("tab:orange" if e.gap_flag else "tab:blue")
        ax.errorbar([x], [y], yerr=yerr, fmt="o", ms=4, c=color, elinewidth=0.8, capsize=2)
        ax.annotate(str(e.rank), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=8)
    for name, ev in extra_points.items():
        x, y = ev.energy / baseline.energy, 100 * ev.metric
        ax.scatter([x], [y], marker="x", s=60, c="k", zorder=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_ylim(top - span, top + max(0.5, window))
    ax.set_xlabel("energy / original")
    ax.set_ylabel("test accuracy (%), 95% interval")
    hidden = len(entries) - len(near)
    ax.set_title(f"near the original: {len(near)} members labelled by rank"
                 + (f" ({hidden} below {top - span:.1f}% not shown)" if hidden else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)


def plot_convergence(history: Sequence[HVRecord], path: str | Path) -> None:
    """Hypervolume per generation for both stages (run-cumulative and per stage)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = list(range(len(history)))
    ax.plot(x, [h.hv for h in history], "-o", ms=3, label="run (both stages)")
    for stage, color in ((1, "tab:orange"), (2, "tab:green")):
        idx = [i for i, h in enumerate(history) if h.stage == stage]
        if idx:
            ax.plot(idx, [history[i].hv_stage for i in idx], "--", c=color,
                    label=f"stage {stage} alone")
    s2 = [i for i, h in enumerate(history) if h.stage == 2]
    if s2:
        ax.axvline(s2[0] - 0.5, c="grey", lw=0.8)
    ax.set_xlabel("generation (stage 1, then stage 2)")
    ax.set_ylabel("hypervolume (normalised objectives, ref 1.1)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_png(fig, Path(path))
