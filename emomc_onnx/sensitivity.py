"""Per-layer sensitivity: what each compression step costs alone, measured and predicted.

For every compute layer, the metric drop when only that layer's weights are quantized to
each width (activations float), only its input activations are quantized, or only its
weights are sparsified to each density; for every prunable channel group, the drop when
only that group is pruned to each keep ratio. Every figure is an ONNX Runtime evaluation
of the one-change plan on the search subset, through the same evaluator the search uses
(so the result store caches them, and a rerun evaluates nothing twice).

Beside each measurement, a cheap proxy computed without running the model: the relative
output error energy of the rewritten layer on its calibration input rows,
``||X W'^T - X W^T||^2 / ||X W^T||^2`` (weights quantized or sparsified, or ``X``
quantized for activations), and for a group the share of its L1 importance that pruning
removes. Kendall's tau between proxy and measured drop, per kind, says how far the proxy
can stand in for measurements.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import kendalltau

from emomc_onnx.analysis.ops import compute_op, out_in_matrix
from emomc_onnx.passes.quantize import quantize_weight
from emomc_onnx.passes.recovery import lsq_rows
from emomc_onnx.passes.sparsity import magnitude_mask
from emomc_onnx.search.probes import DEFAULT_SETTINGS, KINDS, one_change_plans
from emomc_onnx.search.space import CompressionPlan

__all__ = ["SensitivityReport", "SensitivityRow", "measure_sensitivity"]

logger = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class SensitivityRow:
    """One measurement: ``target`` (a layer, or ``group N``) with one setting, the rest float."""

    target: str
    kind: str
    value: float
    metric: float | None
    drop: float | None  # baseline metric - metric (metric units); None if it failed
    proxy: float | None
    energy: float | None
    size_bits: float | None
    reason: str | None = None


@dataclasses.dataclass
class SensitivityReport:
    """Every measurement, the baseline, and how well the proxy ranks."""

    metric_name: str
    baseline_metric: float
    baseline_energy: float
    baseline_size_bits: float
    rows: list[SensitivityRow]
    tau: dict[str, float | None]
    samples: int
    elapsed_s: float

    @property
    def points(self) -> float:
        """Scale of a drop to print (x100: points for fraction metrics; dB stays dB)."""
        return 100.0 if self.metric_name in ("accuracy", "agreement", "cosine") else 1.0

    def table(self) -> dict[str, dict[str, float | None]]:
        """target -> "kind=value" -> drop."""
        out: dict[str, dict[str, float | None]] = {}
        for r in self.rows:
            out.setdefault(r.target, {})[f"{r.kind}={_fmt(r.value)}"] = r.drop
        return out

    def advice(self, n: int = 3) -> dict[str, list[str]]:
        """What users ask peers for: the layers to keep at high precision (largest drop at
        the narrowest measured weight width of 4 bits or more) and the groups that prune most
        cheaply (smallest drop at the keep ratio nearest one half)."""
        def pick(kind: str, value: float | None, most: bool) -> list[str]:
            rows = [r for r in self.rows if r.kind == kind and r.value == value and r.drop is not None]
            return [r.target for r in sorted(rows, key=lambda r: r.drop, reverse=most)[:n]]

        wb = self._values("wbits")
        keep = self._values("keep")
        w = min((b for b in wb if b >= 4), default=min(wb, default=None))
        k = min(keep, key=lambda v: abs(v - 0.5), default=None)
        return {"keep_high_precision": pick("wbits", w, True), "prune_first": pick("keep", k, False)}

    def _values(self, kind: str) -> list[float]:
        return sorted({r.value for r in self.rows if r.kind == kind})

    def to_dict(self) -> dict:
        return {
            "metric": self.metric_name,
            "baseline": {"metric": self.baseline_metric, "energy": self.baseline_energy,
                         "size_bits": self.baseline_size_bits},
            "samples": self.samples,
            "elapsed_s": self.elapsed_s,
            "kendall_tau_proxy_vs_measured": self.tau,
            "advice": self.advice(),
            "rows": [dataclasses.asdict(r) for r in self.rows],
        }


def _fmt(v: float) -> str:
    return f"{int(v)}" if float(v).is_integer() else f"{v:g}"


def _plans(evaluator, space, settings: dict[str, Sequence[float]]) -> list[tuple[str, str, float, CompressionPlan]]:
    return one_change_plans(space, settings)


def _rel_err(x: np.ndarray, w: np.ndarray, w2: np.ndarray | None = None, x2: np.ndarray | None = None) -> float:
    y = x @ w.T
    y2 = (x2 if x2 is not None else x) @ (w2 if w2 is not None else w).T
    den = float((y * y).sum())
    return float(((y2 - y) ** 2).sum() / den) if den > 0 else 0.0


def _proxies(evaluator, rows_of: dict, plans) -> list[float | None]:
    """The proxy of each plan (None where the layer has no calibration rows)."""
    nodes = {n.name: n for n in evaluator.loaded.model.graph}
    imp = evaluator.builder.importance()
    groups = {f"group {g.id}": g for g in evaluator.analysis.groups}
    out: list[float | None] = []
    for target, kind, value, plan in plans:
        if kind == "keep":
            score = np.sort(np.asarray(imp[groups[target].id], dtype=np.float64))
            kept = next(iter(plan.keep.values()))
            total = score.sum()
            out.append(float(score[: len(score) - kept].sum() / total) if total > 0 else 0.0)
            continue
        node = nodes.get(target)
        spec = compute_op(node) if node is not None else None
        x = rows_of.get(target)
        if spec is None or x is None:
            out.append(None)
            continue
        w = node.inputs[spec.weight_input].const_value.numpy().astype(np.float64)
        w2, _ = out_in_matrix(spec, node, w)
        x = np.asarray(x, dtype=np.float64)
        if x.shape[1] != w2.shape[1]:
            out.append(None)
            continue
        if kind == "wbits":
            codes, scale = quantize_weight(w2, int(value), 0)
            out.append(_rel_err(x, w2, w2=codes.astype(np.float64) * np.asarray(scale, np.float64)[:, None]))
        elif kind == "density":
            out.append(_rel_err(x, w2, w2=np.where(magnitude_mask(w2, float(value)), w2, 0.0)))
        else:  # abits: the input rows on a 2^a-level grid over their range
            lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
            levels = 2 ** int(value) - 1
            scale = (hi - lo) / levels or 1.0
            xq = np.clip(np.rint((x - lo) / scale), 0, levels) * scale + lo
            out.append(_rel_err(x, w2, x2=xq))
    return out


def _kendall(rows: list[SensitivityRow]) -> dict[str, float | None]:
    tau: dict[str, float | None] = {}
    for kind in KINDS:
        pairs = [(r.proxy, r.drop) for r in rows if r.kind == kind and r.proxy is not None and r.drop is not None]
        if len(pairs) < 3 or len({p for p, _ in pairs}) < 2 or len({d for _, d in pairs}) < 2:
            tau[kind] = None
            continue
        t = kendalltau([p for p, _ in pairs], [d for _, d in pairs]).statistic
        tau[kind] = None if t != t else float(t)
    return tau


def measure_sensitivity(
    evaluator,
    space,
    settings: dict[str, Sequence[float]] | None = None,
    store=None,
    progress: Callable[[int, int, str], None] | None = None,
) -> SensitivityReport:
    """Measure every one-change plan (see the module docstring) and its proxy.

    Args:
        evaluator: an ``OnnxEvaluator`` (its search subset and metric are used).
        space: the model's ``SearchSpace`` (layers, groups and their channel multiple).
        settings: kind -> values (``DEFAULT_SETTINGS`` for missing kinds; an empty tuple
            skips a kind).
        store: a ``ResultStore``: measurements already there are reused, new ones added.
        progress: called with (done, total, label) after each plan.
    """
    t0 = time.monotonic()
    settings = {k: tuple(v) for k, v in {**DEFAULT_SETTINGS, **(settings or {})}.items()}
    plans = _plans(evaluator, space, settings)
    base = evaluator.evaluate(CompressionPlan.empty(), "search")
    fp = evaluator.fingerprint()
    rows_of = evaluator.builder.rows if evaluator.builder.rows is not None else lsq_rows(
        evaluator.loaded.model, evaluator.analysis.layers, evaluator.original, evaluator.calib_batches,
        max_rows=1024)
    proxies = _proxies(evaluator, rows_of, plans)
    rows: list[SensitivityRow] = []
    for i, ((target, kind, value, plan), proxy) in enumerate(zip(plans, proxies)):
        stored = store.get(fp, plan.key()) if store is not None else None
        ev, reason = (stored.search, stored.reason) if stored is not None and (
            stored.search is not None or stored.reason) else (None, None)
        if ev is None and reason is None:
            t1 = time.perf_counter()
            try:
                ev = evaluator.evaluate(plan, "search")
            except Exception as exc:  # noqa: BLE001 - a failing plan is reported, the rest go on
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                logger.warning("sensitivity: %s %s=%s failed: %s", target, kind, value, reason)
            if store is not None:
                store.put_search(fp, plan, 0, ev, feasible=ev is not None, reason=reason, objectives=None,
                                 seconds=time.perf_counter() - t1)
        rows.append(SensitivityRow(
            target, kind, float(value), None if ev is None else float(ev.metric),
            None if ev is None else float(base.metric - ev.metric), proxy,
            None if ev is None else float(ev.energy), None if ev is None else float(ev.size_bits), reason))
        if progress is not None:
            progress(i + 1, len(plans), f"{target} {kind}={_fmt(value)}")
    return SensitivityReport(
        metric_name=str(base.extra.get("metric_name", "metric")), baseline_metric=float(base.metric),
        baseline_energy=float(base.energy), baseline_size_bits=float(base.size_bits), rows=rows,
        tau=_kendall(rows), samples=len(evaluator.search), elapsed_s=time.monotonic() - t0)
