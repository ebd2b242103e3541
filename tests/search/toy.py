"""An analytic toy evaluator with known trade-offs, for tests and benchmark dry runs.

A chain of ``n_layers`` convolution-like layers: every layer but the last has a prunable
output-channel group. Quality falls smoothly as channels, density and bit widths fall
(each layer with its own sensitivity); energy and coded size are computed analytically
from the kept MACs/weights and the bit widths (None = the reference bits, no quality loss).
Splits are notional sample counts: the test-split metric is the analytic figure rounded to
whole samples of ``N_TEST``; the search-split metric adds a small deterministic perturbation
(a hash of the plan), and the racing prefix a larger one, so choosing on the search split and
reporting the test split differ as they do on real data. Statistics (intervals, paired
difference to the original) come from hit vectors with those counts.

``build`` returns a tiny valid ONNX model ``y = x + figure`` (double) whose constant is the
plan's test-split metric, so running an emitted file through ONNX Runtime with ``x = 0``
(:meth:`ToyEvaluator.evaluate_file`) reproduces the figure recorded for it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from emomc_onnx.errors import PlanError
from emomc_onnx.search.evaluator import Evaluation
from emomc_onnx.search.space import CompressionPlan, GroupGene, LayerGene, SearchSpace

__all__ = ["ToyEvaluatorFactory", "ToyEvaluator", "toy_space", "N_RACE", "N_SEARCH", "N_TEST"]

N_SEARCH = 1000
N_RACE = 250
N_TEST = 2000


@dataclasses.dataclass(frozen=True)
class ToyEvaluatorFactory:
    """Picklable factory of :class:`ToyEvaluator` (one per worker process).

    Attributes:
        n_layers: layers in the chain (>= 2).
        width: base channel count (layer i has ``width * (1 + i % 2)`` output channels).
        multiple: channel multiple of the groups.
        seed: draws the per-layer sensitivities.
        fail_keep_below: if set, plans keeping less than this fraction of any group raise
            (to exercise failure handling).
        delay_s: simulated evaluation time (split build/session/inference 20/10/70 %).
    """

    n_layers: int = 4
    width: int = 16
    multiple: int = 4
    seed: int = 0
    fail_keep_below: float | None = None
    delay_s: float = 0.0

    def __call__(self) -> ToyEvaluator:
        return ToyEvaluator(self)


def _channels(cfg: ToyEvaluatorFactory) -> list[int]:
    return [cfg.width * (1 + i % 2) for i in range(cfg.n_layers)]


def toy_space(cfg: ToyEvaluatorFactory, kind: str = "full") -> SearchSpace:
    """The search space of the toy chain."""
    ch = _channels(cfg)
    groups = tuple(GroupGene(id=i, channels=ch[i], multiple=cfg.multiple)
                   for i in range(cfg.n_layers - 1))
    layers = []
    cin = 3
    for i in range(cfg.n_layers):
        params = cin * ch[i] * 9
        layers.append(LayerGene(name=f"conv{i}", op_type="Conv", params=params,
                                macs=params * 64))
        cin = ch[i]
    return SearchSpace(groups=groups, layers=tuple(layers),
                       densities=tuple(round(d, 2) for d in np.arange(0.2, 1.0001, 0.1)),
                       wbits=(2, 3, 4, 6, 8), abits=(4, 6, 8), reference_bits=(16, 16),
                       kind=kind)  # type: ignore[arg-type]


class ToyEvaluator:
    """Analytic :class:`~emomc_onnx.search.evaluator.Evaluator`."""

    def __init__(self, cfg: ToyEvaluatorFactory) -> None:
        self.cfg = cfg
        self.space = toy_space(cfg)
        rng = np.random.default_rng(cfg.seed)
        n = cfg.n_layers
        self.sens = rng.uniform(0.5, 1.5, size=(n, 4))
        self.calls = 0
        self.pid = os.getpid()

    def fingerprint(self) -> str:
        """Hash of the toy's settings."""
        return "toy-" + hashlib.sha256(repr(self.cfg).encode()).hexdigest()[:16]

    def _figures(self, plan: CompressionPlan) -> tuple[float, float, float, int, int, dict]:
        cfg = self.cfg
        ch = _channels(cfg)
        ref_w, ref_a = self.space.reference_bits
        penalty = 0.0
        energy = 0.0
        size = 0.0
        macs_t = 0
        params_t = 0
        r_in = 1.0
        per_layer = {}
        for i, la in enumerate(self.space.layers):
            keep = plan.keep.get(i, ch[i]) if i < cfg.n_layers - 1 else ch[i]
            if cfg.fail_keep_below is not None and keep / ch[i] < cfg.fail_keep_below:
                raise PlanError(f"toy failure: group {i} keeps {keep}/{ch[i]} channels")
            r_out = keep / ch[i]
            d = plan.density.get(la.name, 1.0)
            w = plan.wbits.get(la.name)
            a = plan.abits.get(la.name)
            s = self.sens[i]
            penalty += s[0] * 0.8 * (1.0 - r_out) ** 2 + s[1] * 0.5 * (1.0 - d) ** 2
            if w is not None:
                penalty += s[2] * 0.6 * 2.0 ** (-(w - 1))
            if a is not None:
                penalty += s[3] * 0.6 * 2.0 ** (-(a - 2))
            wb = ref_w if w is None else w
            ab = ref_a if a is None else a
            dense = la.params * r_in * r_out
            nnz = dense * d
            macs = la.macs * r_in * r_out * d
            e = macs * (0.1 + wb * ab / 256.0) + nnz * wb * 0.5 + dense * 64 * r_out * ab / 16
            sz = nnz * wb + (dense if d < 1.0 else 0.0)
            energy += e
            size += sz
            macs_t += int(round(macs))
            params_t += int(round(nnz))
            per_layer[la.name] = {"energy": e, "size_bits": sz}
            r_in = r_out
        metric = 0.9 * math.exp(-penalty)
        return metric, energy, size, macs_t, params_t, per_layer

    def _split_figure(self, plan: CompressionPlan, metric: float, split: str) -> tuple[float, dict]:
        """The metric on a notional split of whole samples, and its statistics vs the original."""
        from emomc_onnx.evaluate.stats import describe

        n = {"race": N_RACE, "search": N_SEARCH, "test": N_TEST}[split]
        wobble = {"race": 0.03, "search": 0.01, "test": 0.0}[split]
        m0 = self._figures(CompressionPlan.empty())[0]
        if wobble:
            h = hashlib.sha256((plan.key() + "/" + split).encode()).digest()
            metric = metric + wobble * (h[0] / 255.0 - 0.5)
            m0 = m0 + wobble * (hashlib.sha256(("/" + split).encode()).digest()[0] / 255.0 - 0.5)
        k = int(round(min(1.0, max(0.0, metric)) * n))
        k0 = int(round(min(1.0, max(0.0, m0)) * n))
        hits, ref = np.arange(n) < k, np.arange(n) < k0
        stats = describe(k / n, k0 / n, hits, ref, n, binary=True, intervals=split == "test")
        stats["split"] = split
        return k / n, stats

    def evaluate(self, plan: CompressionPlan, subset: str = "search", gate=None) -> Evaluation:
        """Analytic figures of a plan on a notional split (racing prefix first with a gate)."""
        if subset not in ("search", "test"):
            raise ValueError(f"unknown subset {subset!r}")
        self.calls += 1
        if self.cfg.delay_s:
            time.sleep(self.cfg.delay_s)
        metric, energy, size, macs, params, per_layer = self._figures(plan)
        d = self.cfg.delay_s
        extra = {"layers": per_layer, "timing_s": {"build": 0.2 * d, "session": 0.1 * d, "inference": 0.7 * d},
                 "raced_out": False}
        if subset == "search" and gate is not None:
            value, stats = self._split_figure(plan, metric, "race")
            probe = Evaluation(metric=value, energy=energy, size_bits=size, macs=macs, params=params,
                               extra={**extra, "stats": stats, "raced_out": True})
            if not gate(probe):
                return probe
        value, stats = self._split_figure(plan, metric, subset)
        return Evaluation(metric=value, energy=energy, size_bits=size, macs=macs, params=params,
                          extra={**extra, "stats": stats})

    def baseline(self) -> Evaluation:
        """The unmodified model on the test split."""
        return self.evaluate(CompressionPlan.empty(), "test")

    def build(self, plan: CompressionPlan) -> onnx.ModelProto:
        """A tiny valid model ``y = x + test-split metric`` (double)."""
        metric = self._split_figure(plan, self._figures(plan)[0], "test")[0]
        graph = helper.make_graph(
            [helper.make_node("Add", ["x", "figure"], ["y"], name="add")],
            "toy",
            [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1])],
            [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1])],
            [numpy_helper.from_array(np.array([metric], dtype=np.float64), "figure")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                  producer_name="emomc-onnx-toy")
        model.ir_version = 9
        return model

    @staticmethod
    def evaluate_file(path: str | os.PathLike[str]) -> float:
        """Run an emitted toy model in ONNX Runtime: its test-split metric."""
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, {"x": np.zeros(1, dtype=np.float64)})
        return float(y[0])
