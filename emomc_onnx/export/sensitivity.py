"""Sensitivity report: a terminal table, sensitivity.json and a heatmap (layers x settings)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import matplotlib
import numpy as np
from rich.console import Console
from rich.table import Table

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.colors import PowerNorm

from emomc_onnx.paths import atomic_write_bytes
from emomc_onnx.search.probes import KINDS
from emomc_onnx.sensitivity import SensitivityReport

__all__ = ["SENSITIVITY_JSON", "SENSITIVITY_PNG", "render_sensitivity", "write_sensitivity"]

logger = logging.getLogger(__name__)

SENSITIVITY_JSON = "sensitivity.json"
SENSITIVITY_PNG = "sensitivity.png"
_SHORT = {"wbits": "W", "abits": "A", "density": "d", "keep": "keep "}


def _columns(report: SensitivityReport) -> list[tuple[str, float]]:
    return [(kind, v) for kind in KINDS for v in sorted({r.value for r in report.rows if r.kind == kind})]


def _label(kind: str, value: float) -> str:
    return f"{_SHORT[kind]}{int(value) if float(value).is_integer() else f'{value:g}'}"


def _matrix(report: SensitivityReport) -> tuple[list[str], list[tuple[str, float]], np.ndarray]:
    targets = list(dict.fromkeys(r.target for r in report.rows))
    cols = _columns(report)
    m = np.full((len(targets), len(cols)), np.nan)
    ti = {t: i for i, t in enumerate(targets)}
    ci = {c: j for j, c in enumerate(cols)}
    for r in report.rows:
        if r.drop is not None:
            m[ti[r.target], ci[(r.kind, r.value)]] = r.drop * report.points
    return targets, cols, m


def render_sensitivity(report: SensitivityReport, console: Console, max_rows: int = 40) -> None:
    """The drop per target and setting (points for accuracy-like metrics), and the advice."""
    unit = "points" if report.points == 100.0 else report.metric_name
    targets, cols, m = _matrix(report)
    table = Table(title=f"Sensitivity: {report.metric_name} drop in {unit} with one change, the rest float "
                        f"({report.samples} search samples; baseline {report.baseline_metric * report.points:.2f})")
    table.add_column("layer / group", overflow="fold", max_width=36)
    for kind, v in cols:
        table.add_column(_label(kind, v), justify="right")
    for name, row in list(zip(targets, m))[:max_rows]:
        table.add_row(name, *("" if np.isnan(x) else f"{x:.1f}" for x in row))
    console.print(table)
    if len(targets) > max_rows:
        console.print(f"... {len(targets) - max_rows} more rows in {SENSITIVITY_JSON}")
    tau = ", ".join(f"{k} {'-' if v is None else f'{v:.2f}'}" for k, v in report.tau.items())
    console.print(f"proxy vs measured drop, Kendall tau: {tau}")
    adv = report.advice()
    console.print(f"keep at high precision: {', '.join(adv['keep_high_precision']) or '-'}")
    console.print(f"prune first: {', '.join(adv['prune_first']) or '-'}")


def write_sensitivity(report: SensitivityReport, outdir: str | Path) -> list[Path]:
    """Write sensitivity.json and the heatmap PNG into ``outdir`` (atomically)."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    jpath = out / SENSITIVITY_JSON
    atomic_write_bytes(jpath, json.dumps(report.to_dict(), indent=2, sort_keys=True).encode())
    targets, cols, m = _matrix(report)
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * len(cols), 1.2 + 0.28 * len(targets)))
    shown = np.clip(np.nan_to_num(m, nan=0.0), 0.0, None)  # a negative drop (noise) shows as none
    vmax = max(float(shown.max()), 1e-9)
    # a power scale: one layer that breaks (80 points) must not wash out the 0.5-point ones
    im = ax.imshow(shown, aspect="auto", cmap="magma_r", norm=PowerNorm(0.35, vmin=0.0, vmax=vmax))
    for i, j in zip(*np.where(shown >= 0.5)):
        ax.text(j, i, f"{shown[i, j]:.0f}" if shown[i, j] >= 9.5 else f"{shown[i, j]:.1f}", ha="center",
                va="center", fontsize=6, color="white" if shown[i, j] > 0.3 * vmax else "black")
    ax.set_xticks(range(len(cols)), [_label(k, v) for k, v in cols], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(targets)), [t if len(t) < 40 else "..." + t[-37:] for t in targets], fontsize=7)
    for i, j in zip(*np.where(np.isnan(m))):
        ax.text(j, i, "x", ha="center", va="center", fontsize=7, color="grey")
    unit = "points" if report.points == 100.0 else report.metric_name
    fig.colorbar(im, ax=ax, label=f"{report.metric_name} drop ({unit})")
    ax.set_title("one change at a time, the rest float", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    ppath = out / SENSITIVITY_PNG
    atomic_write_bytes(ppath, buf.getvalue())
    return [jpath, ppath]
