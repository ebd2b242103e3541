"""The concrete ONNX evaluator: a compression plan -> a deployable model -> its objectives.

It joins three pieces behind the search's ``Evaluator`` protocol, so the search itself only
sees plans and objectives: the data and the original model's outputs on it
(:class:`~emomc_onnx.evaluate.reference.ReferenceData`), the candidate builder (prune,
recover, sparsify, quantize: :class:`~emomc_onnx.candidate.builder.CandidateBuilder`) and
the costing (:class:`~emomc_onnx.candidate.coster.CandidateCoster`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from emomc_onnx import io
from emomc_onnx.analysis import Analysis, analyze
from emomc_onnx.candidate.builder import CandidateBuilder
from emomc_onnx.candidate.coster import CandidateCoster, stored_params
from emomc_onnx.cost import load_profile
from emomc_onnx.evaluate.reference import ReferenceData
from emomc_onnx.evaluate.session import SessionCache
from emomc_onnx.search.evaluator import Evaluation
from emomc_onnx.search.space import DEFAULT_POLICY, CompressionPlan

__all__ = ["EvaluatorConfig", "OnnxEvaluator"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvaluatorConfig:
    """Everything a worker needs to rebuild the evaluator (picklable)."""

    model: str
    profile: str
    data: str | None = None
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    dataflow: str | None = None
    coding: str | None = None
    metric: str | None = None
    eval_samples: int | None = None  # search split; None: a third of the file (see evaluate.data)
    calib_samples: int | None = None  # None: 10% of the file
    test_samples: int | None = None  # None: what calibration and search leave
    test_data: str | None = None  # a separate test file
    calibration: str = "minmax"
    recovery: str = "lsq"
    sparse_refit: bool = True
    split_seed: int = 0  # fixes the data splits (and recovery's row sample); not the search seed
    threads: int = 1
    batch_size: int = 256

    def __call__(self) -> OnnxEvaluator:
        return OnnxEvaluator(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> EvaluatorConfig:
        """The config a front.json ``evaluator`` entry records (its other keys ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in record.items() if k in names}
        kw["input_shapes"] = tuple((k, tuple(v)) for k, v in kw.get("input_shapes", ()))
        return cls(**kw)


class OnnxEvaluator:
    """Builds and measures candidates for one model, data set and hardware profile.

    Attributes:
        data: the splits, the original's outputs on them and the metric.
        builder: plan -> model.
        coster: model -> energy and coded size under the profile.
    """

    def __init__(self, config: EvaluatorConfig) -> None:
        self.config = config
        shapes = dict(config.input_shapes) or None
        self.loaded = io.load_model(config.model, shapes)
        self.analysis: Analysis = analyze(self.loaded.model)
        self.original = self.loaded.proto()
        self.profile = load_profile(config.profile)
        self.data = ReferenceData(
            self.original, config.data, test_data=config.test_data, calib_samples=config.calib_samples,
            eval_samples=config.eval_samples, test_samples=config.test_samples, split_seed=config.split_seed,
            metric=config.metric, input_shapes=shapes, threads=config.threads, batch_size=config.batch_size)
        self.builder = CandidateBuilder(
            self.loaded, self.analysis, self.data.calib_batches, recovery=config.recovery,
            sparse_refit=config.sparse_refit, criterion=DEFAULT_POLICY.criterion, calibration=config.calibration,
            max_rows=1024, seed=config.split_seed)
        self.coster = CandidateCoster(self.analysis, self.profile, config.dataflow, config.coding, shapes)
        # what callers read most (the splits and the metric)
        self.splits, self.search, self.test = self.data.splits, self.data.search, self.data.test
        self.calib_batches, self.metric = self.data.calib_batches, self.data.metric
        self.sessions = SessionCache(threads=config.threads)
        self._baseline: Evaluation | None = None

    def fingerprint(self) -> str:
        """Model, profile, data and settings (not the thread count): the result-store key prefix."""
        cfg = dataclasses.asdict(self.config)
        cfg.pop("threads", None)
        blob = json.dumps([self.loaded.sha256, self.profile.sha256, self.data.data_hash, cfg], sort_keys=True,
                          default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def build(self, plan) -> onnx.ModelProto:
        """The deployable model for a plan (float if the plan has no bit widths)."""
        return self.builder.build(plan)

    def cost(self, proto: onnx.ModelProto, plan):
        """Energy and coded size of a plan's built model under the profile."""
        return self.coster.plan_cost(proto, plan, self.builder.keep_mask(plan))

    def evaluate(self, plan, subset: str = "search", gate=None) -> Evaluation:
        """Build a plan's model and measure it on ``subset`` ("search" or "test").

        With a ``gate`` (racing), the search split's first ``race_n`` samples are measured
        first; the rest only if ``gate(evaluation)`` is true (the candidate may be
        non-dominated), else the racing-subset figures come back with ``raced_out`` set.
        """
        t0 = time.perf_counter()
        proto = self.build(plan)
        return self._measure(proto, subset, lambda: self.cost(proto, plan), build_s=time.perf_counter() - t0,
                             gate=gate)

    def evaluate_model(self, proto: onnx.ModelProto, subset: str = "search") -> Evaluation:
        """Figures of a model built elsewhere (e.g. ONNX Runtime's quantize_static output) on
        the same data and metric; its cost comes from its own graph (bits read from its QDQ)."""
        return self._measure(proto, subset, lambda: self.coster.model_cost(proto))

    def _measure(self, proto: onnx.ModelProto, subset: str, cost, build_s: float = 0.0, gate=None) -> Evaluation:
        data = self.data
        ds = data.dataset(subset)
        t1 = time.perf_counter()
        sess = self.sessions.get(proto)
        t2 = time.perf_counter()
        raced_out = False
        mc = None
        if subset == "search" and gate is not None and data.race_n < len(ds):
            # racing: the cheap prefix first, the rest only if the candidate may be non-dominated
            outs = data.run(sess, ds.take(np.arange(data.race_n)))
            value, stats = data.figure(outs, subset, data.race_n)
            mc = cost()
            probe = Evaluation(metric=value, energy=float(mc.energy), size_bits=float(mc.size_bits), macs=0,
                               params=0, extra={"stats": stats, "error": data.metric.error(value)})
            raced_out = not gate(probe)
            if not raced_out:
                rest = data.run(sess, ds.take(np.arange(data.race_n, len(ds))))
                outs = [np.concatenate([a, b]) for a, b in zip(outs, rest)]
                value, stats = data.figure(outs, subset)
        else:
            outs = data.run(sess, ds)
            value, stats = data.figure(outs, subset)
        t3 = time.perf_counter()
        if mc is None:
            mc = cost()
        t4 = time.perf_counter()
        macs = int(sum(r.macs for r in mc.layers)) if hasattr(mc, "layers") else 0
        return Evaluation(
            metric=value, energy=float(mc.energy), size_bits=float(mc.size_bits), macs=macs,
            params=stored_params(proto),
            extra={"timing_s": {"build": build_s, "session": t2 - t1, "inference": t3 - t2,
                                "cost": t4 - t3},
                   "metric_name": data.metric.name, "error": data.metric.error(value),
                   "dataflow": getattr(mc, "dataflow", None),
                   "coding": getattr(mc, "coding", None), "stats": stats, "raced_out": raced_out},
        )

    def baseline(self) -> Evaluation:
        """The unmodified model, float, costed at the profile's baseline bits, on the test split."""
        if self._baseline is None:
            self._baseline = self.evaluate(CompressionPlan.empty(), "test")
        return self._baseline
