"""The concrete ONNX evaluator: a compression plan -> a deployable model -> its objectives.

This joins the passes (channel pruning with bias compensation, fine-grained sparsity, QDQ
quantization), ONNX Runtime evaluation and the cost model behind the search's
``Evaluator`` protocol, so the search itself only sees plans and objectives.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pathlib
import time
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import onnx

from emomc_onnx import io
from emomc_onnx.analysis import Analysis, analyze
from emomc_onnx.analysis.ops import op_spec

__all__ = ["EvaluatorConfig", "OnnxEvaluator", "make_space"]

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


class OnnxEvaluator:
    """Builds and measures candidates for one model, data set and hardware profile."""

    def __init__(self, config: EvaluatorConfig) -> None:
        from emomc_onnx.cost import load_profile
        from emomc_onnx.evaluate.data import input_specs, load_data, make_splits, synthetic_data
        from emomc_onnx.evaluate.metrics import resolve_metric
        from emomc_onnx.evaluate.session import make_session, run_batched
        from emomc_onnx.passes.recovery import activation_means, lsq_rows

        self.config = config
        self.loaded = io.load_model(config.model, dict(config.input_shapes) or None)
        self.analysis: Analysis = analyze(self.loaded.model)
        self.original = self.loaded.proto()
        self.profile = load_profile(config.profile)
        specs = input_specs(self.original)
        test_ds = None
        if config.data:
            ds = load_data(config.data)
            ds.check(specs)
            data_hash = hashlib.sha256(open(config.data, "rb").read()).hexdigest()
            if config.test_data:
                test_ds = load_data(config.test_data)
                test_ds.check(specs)
                data_hash += hashlib.sha256(pathlib.Path(config.test_data).read_bytes()).hexdigest()
        else:
            n_syn = sum(v or d for v, d in ((config.calib_samples, 256), (config.eval_samples, 1000),
                                            (config.test_samples, 1000)))
            ds = synthetic_data(self.original, n_syn, config.split_seed, shapes=dict(config.input_shapes) or None)
            data_hash = f"synthetic-{config.split_seed}-{n_syn}"
        self.splits = make_splits(ds, config.calib_samples, config.eval_samples, config.test_samples,
                                  config.split_seed, test_ds=test_ds)
        self.calib_batches = list(self.splits.calib.batches(64))
        self.search, self.test = self.splits.search, self.splits.test
        self.race_n = self.splits.race
        self._data_hash = data_hash
        self._run = run_batched
        self._make_session = make_session
        ref_sess = make_session(self.original, threads=config.threads)
        self.reference = {
            "search": run_batched(ref_sess, self.search, config.batch_size),
            "test": run_batched(ref_sess, self.test, config.batch_size),
        }
        out0 = self.reference["test"][0]
        is_classifier = out0.ndim == 2 and out0.shape[1] > 1
        self.metric = resolve_metric(config.metric, has_labels=self.search.labels is not None,
                                     is_classifier=is_classifier)
        self.means = (activation_means(self.original, self.calib_batches, self.analysis.layers)
                      if config.recovery == "bias" else None)
        self.rows = (lsq_rows(self.loaded.model, self.analysis.layers, self.original, self.calib_batches,
                              max_rows=1024, seed=config.split_seed)
                     if config.recovery == "lsq" else None)
        self._ranges_cache: dict[str, dict] = {}
        self._arch_cache = _LRU(256 << 20)  # float models per architecture
        self._layer_cache = _LRU(256 << 20)  # rewritten (weight, bias) per layer configuration
        self._layer_ids = _layer_channel_ids(self.analysis)
        self._shared = _shared_weight_layers(self.loaded.model, self.analysis)
        self._imp = None  # channel importance of the original model (l1), computed once
        self._baseline = None

    # ---- identity --------------------------------------------------------------------
    def fingerprint(self) -> str:
        cfg = dataclasses.asdict(self.config)
        cfg.pop("threads", None)
        blob = json.dumps([self.loaded.sha256, self.profile.sha256, self._data_hash, cfg], sort_keys=True,
                          default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # ---- building --------------------------------------------------------------------
    @staticmethod
    def _arch_key(plan) -> str:
        return json.dumps([sorted(plan.keep.items()), sorted(plan.density.items())])

    def _keep_mask(self, plan) -> np.ndarray | None:
        """The channel keep mask of a plan (None if it prunes nothing)."""
        from emomc_onnx.passes.channel_pruning import PruningPlan, select_channels

        sizes = {g.id: g.channels for g in self.analysis.groups}
        keep_counts = {gid: k for gid, k in plan.keep.items() if k < sizes.get(gid, k + 1)}
        if not keep_counts:
            return None
        return select_channels(self.analysis, PruningPlan(keep=keep_counts), self._importance())

    def _layer_keys(self, keep: np.ndarray | None, dens: Mapping[str, float]) -> dict[str, tuple | None]:
        """Layers whose weights recovery or sparsity rewrites -> their cache key (None: not cacheable).

        A layer's rewritten weight and bias depend only on the channels it keeps (input and
        output) and its density: recovery and re-fit read the original model's rows."""
        out: dict[str, tuple | None] = {}
        for lay in self.analysis.layers:
            in_ids, out_ids = self._layer_ids[lay.name]
            in_mask = keep[in_ids] if keep is not None else None
            d = float(dens.get(lay.name, 1.0))
            if d >= 1.0 and (in_mask is None or in_mask.all()):
                continue
            if lay.name in self._shared:
                out[lay.name] = None
                continue
            out_mask = keep[out_ids] if keep is not None else None
            out[lay.name] = (lay.name, d, *(np.packbits(m).tobytes() if m is not None else b""
                                           for m in (in_mask, out_mask)))
        return out

    def _float_model(self, plan) -> tuple[onnx.ModelProto, str]:
        """The pruned (recovered) and sparsified (re-fitted) float model of a plan's architecture.

        Cached per architecture, and each rewritten layer's weight and bias per (layer, kept
        channels, density), so a new architecture only computes the layers it does not share
        with one built before."""
        from emomc_onnx.passes.channel_pruning import apply_keep_mask
        from emomc_onnx.passes.recovery import apply_recovery, sparsify_with_refit
        from emomc_onnx.passes.sparsity import SparsityPlan

        arch_key = self._arch_key(plan)
        proto = self._arch_cache.get(arch_key)
        if proto is not None:
            return proto, arch_key
        model = io.clone(self.loaded.model)
        keep = self._keep_mask(plan)
        dens = {k: float(v) for k, v in plan.density.items() if v < 1.0}
        keys = self._layer_keys(keep, dens)
        hits = {name: self._layer_cache.get(k) for name, k in keys.items() if k is not None}
        hits = {name: v for name, v in hits.items() if v is not None}
        todo = set(keys) - set(hits)
        if keep is not None:
            apply_recovery(model, self.analysis, keep, self.config.recovery, self.means, self.rows, names=todo)
            apply_keep_mask(model, self.analysis, keep)
        todo_dens = {k: v for k, v in dens.items() if k not in hits}
        if todo_dens:
            sparsify_with_refit(model, self.analysis, keep, self.rows if self.config.sparse_refit else None,
                                SparsityPlan(density=todo_dens))
        self._sync_layers(model, keys, hits)
        proto = self.loaded.restore_signature(io.to_proto(model))  # runs with the original's batch
        self._arch_cache.put(arch_key, proto, proto.ByteSize())
        return proto, arch_key

    def _sync_layers(self, model: io.ir.Model, keys: Mapping[str, tuple | None], hits: Mapping[str, tuple]) -> None:
        """Write cached layers' weights into ``model``; cache the layers computed in it."""
        from emomc_onnx.passes.ir_utils import ensure_bias

        nodes = {n.name: n for n in model.graph}
        for name, key in keys.items():
            node = nodes[name]
            if name in hits:
                w, b = hits[name]
                node.inputs[1].const_value = io.ir.Tensor(w, name=node.inputs[1].name)
                if b is not None:
                    bias = ensure_bias(model, node, len(b), b.dtype)
                    bias.const_value = io.ir.Tensor(b, name=bias.name)
            elif key is not None:
                w = node.inputs[1].const_value.numpy().copy()
                bias = node.inputs[2] if len(node.inputs) > 2 else None
                b = bias.const_value.numpy().copy() if bias is not None else None
                self._layer_cache.put(key, (w, b), w.nbytes + (b.nbytes if b is not None else 0))

    def _importance(self):
        from emomc_onnx.passes.channel_pruning import group_importance

        if self._imp is None:
            self._imp = group_importance(self.loaded.model, self.analysis, "l1")
        return self._imp

    def build(self, plan) -> onnx.ModelProto:
        """The deployable model for a plan (float if the plan has no bit widths)."""
        proto, arch_key = self._float_model(plan)
        bits = {k: (plan.wbits.get(k), plan.abits.get(k)) for k in set(plan.wbits) | set(plan.abits)}
        if any(w is not None or a is not None for w, a in bits.values()):
            proto = self._quantize(proto, arch_key, bits)
        return proto

    def _quantize(self, proto: onnx.ModelProto, arch_key: str, bits: Mapping[str, tuple]) -> onnx.ModelProto:
        from emomc_onnx.evaluate.calibration import activation_tensors, calibrate
        from emomc_onnx.passes.quantize import LayerBits, QuantPlan, quantize_model

        layers = {name: LayerBits(w, a) for name, (w, a) in bits.items() if w is not None or a is not None}
        ranges = self._ranges_cache.get(arch_key)
        if ranges is None:
            # every compute layer's tensors, so later plans on this architecture that
            # quantize other layers find their ranges in the cache
            tensors = activation_tensors(proto, [layer.name for layer in self.analysis.layers])
            feeds = {}
            for b in self.calib_batches:
                for k, v in b.items():
                    feeds.setdefault(k, []).append(v)
            data = {k: np.concatenate(v) for k, v in feeds.items()}
            ranges = calibrate(proto, data, tensors, method=self.config.calibration)
            if len(self._ranges_cache) > 64:
                self._ranges_cache.clear()
            self._ranges_cache[arch_key] = ranges
        return quantize_model(proto, QuantPlan(layers=layers), ranges)

    # ---- measuring -------------------------------------------------------------------
    def cost(self, proto: onnx.ModelProto, plan):
        """Energy and coded size of a built candidate under the profile.

        Layer shapes come from the analysis and the plan (no re-analysis of the built model);
        weights are read from the built model (integer codes behind DequantizeLinear).
        """
        from emomc_onnx.cost.from_onnx import cost_model
        from emomc_onnx.passes.channel_pruning import predict_layers

        keep = self._keep_mask(plan)
        layers = predict_layers(self.analysis, keep) if keep is not None else self.analysis.layers
        ref_w, ref_a = self.reference_bits()
        bits = {lay.name: (plan.wbits.get(lay.name) or ref_w, plan.abits.get(lay.name) or ref_a)
                for lay in layers}
        return cost_model(proto, self.profile, self.config.dataflow, self.config.coding, layers=layers,
                          bits=bits)

    def reference_bits(self) -> tuple[int, int]:
        """Bits at which float layers are costed (the profile's baseline word)."""
        b = int(self.profile.baseline_weight_bits)
        a = int(getattr(self.profile, "baseline_activation_bits", b) or b)
        return b, a

    def evaluate(self, plan, subset: str = "search", gate=None):
        """Build a plan's model and measure it on ``subset`` ("search" or "test").

        With a ``gate`` (racing), the search split's first ``race_n`` samples are measured
        first; the rest only if ``gate(evaluation)`` is true (the candidate may be
        non-dominated), else the racing-subset figures come back with ``raced_out`` set.
        """
        t0 = time.perf_counter()
        proto = self.build(plan)
        return self._measure(proto, subset, lambda: self.cost(proto, plan), build_s=time.perf_counter() - t0,
                             gate=gate)

    def evaluate_model(self, proto: onnx.ModelProto, subset: str = "search"):
        """Figures of a model built elsewhere (e.g. ONNX Runtime's quantize_static output) on
        the same data and metric; its cost comes from its own graph (bits read from its QDQ)."""
        from emomc_onnx.cost.from_onnx import cost_model

        return self._measure(proto, subset, lambda: cost_model(
            proto, self.profile, self.config.dataflow, self.config.coding,
            input_shapes=dict(self.config.input_shapes) or None))

    def _figure(self, outs: list[np.ndarray], subset: str, n: int | None = None) -> tuple[float, dict]:
        """The metric on ``subset`` (its first ``n`` samples) and its statistics vs the original."""
        from emomc_onnx.evaluate.stats import describe

        ds = self.search if subset == "search" else self.test
        ref = self.reference[subset]
        labels = ds.labels
        if n is not None and n < len(ds):
            ref = [r[:n] for r in ref]
            labels = None if labels is None else labels[:n]
        m = self.metric
        value = float(m(outs, ref, labels))
        ref_value = float(m(ref, ref, labels))
        per = ref_per = None
        if m.per_sample is not None:
            per, ref_per = m.per_sample(outs, ref, labels), m.per_sample(ref, ref, labels)

        def recompute(idx: np.ndarray) -> tuple[float, float]:
            r = [a[idx] for a in ref]
            lab = None if labels is None else labels[idx]
            return float(m([o[idx] for o in outs], r, lab)), float(m(r, r, lab))

        stats = describe(value, ref_value, per, ref_per, len(outs[0]), binary=m.binary, recompute=recompute,
                         intervals=subset == "test", seed=self.config.split_seed)
        stats["split"] = "race" if subset == "search" and n is not None and n < len(ds) else subset
        return value, stats

    def _measure(self, proto: onnx.ModelProto, subset: str, cost, build_s: float = 0.0, gate=None):
        from emomc_onnx.search.evaluator import Evaluation

        if subset not in ("search", "test"):
            raise ValueError(f"unknown subset {subset!r} (search or test)")
        t1 = time.perf_counter()
        sess = self._make_session(proto, threads=self.config.threads)
        t2 = time.perf_counter()
        raced_out = False
        mc = None
        if subset == "search" and gate is not None and self.race_n < len(self.search):
            # racing: the cheap prefix first, the rest only if the candidate may be non-dominated
            head = self.search.take(np.arange(self.race_n))
            outs = self._run(sess, head, self.config.batch_size)
            value, stats = self._figure(outs, subset, self.race_n)
            mc = cost()
            probe = Evaluation(metric=value, energy=float(mc.energy), size_bits=float(mc.size_bits), macs=0,
                               params=0, extra={"stats": stats, "error": self.metric.error(value)})
            raced_out = not gate(probe)
            if not raced_out:
                tail = self.search.take(np.arange(self.race_n, len(self.search)))
                rest = self._run(sess, tail, self.config.batch_size)
                outs = [np.concatenate([a, b]) for a, b in zip(outs, rest)]
                value, stats = self._figure(outs, subset)
        else:
            ds = self.search if subset == "search" else self.test
            outs = self._run(sess, ds, self.config.batch_size)
            value, stats = self._figure(outs, subset)
        t3 = time.perf_counter()
        if mc is None:
            mc = cost()
        t4 = time.perf_counter()
        macs = int(sum(r.macs for r in mc.layers)) if hasattr(mc, "layers") else 0
        params = _params(proto)
        return Evaluation(
            metric=value, energy=float(mc.energy), size_bits=float(mc.size_bits), macs=macs, params=params,
            extra={"timing_s": {"build": build_s, "session": t2 - t1, "inference": t3 - t2,
                                "cost": t4 - t3},
                   "metric_name": self.metric.name, "error": self.metric.error(value),
                   "dataflow": getattr(mc, "dataflow", None),
                   "coding": getattr(mc, "coding", None), "stats": stats, "raced_out": raced_out},
        )

    def baseline(self):
        """The unmodified model, float, costed at the profile's baseline bits, on the test split."""
        from emomc_onnx.search.space import CompressionPlan

        if self._baseline is None:
            self._baseline = self.evaluate(CompressionPlan(keep={}, density={}, wbits={}, abits={}), "test")
        return self._baseline


class _LRU:
    """A least-recently-used map bounded by the bytes its values take."""

    def __init__(self, max_bytes: int) -> None:
        self._d: OrderedDict = OrderedDict()
        self._bytes = 0
        self.max_bytes = max_bytes
        self.hits = 0

    def get(self, key):
        hit = self._d.get(key)
        if hit is None:
            return None
        self.hits += 1
        self._d.move_to_end(key)
        return hit[0]

    def clear(self) -> None:
        self._d.clear()
        self._bytes = 0

    def put(self, key, value, nbytes: int) -> None:
        if key in self._d or nbytes > self.max_bytes:
            return
        self._d[key] = (value, nbytes)
        self._bytes += nbytes
        while self._bytes > self.max_bytes:
            _, (_, n) = self._d.popitem(last=False)
            self._bytes -= n

    def __len__(self) -> int:
        return len(self._d)


def _layer_channel_ids(analysis: Analysis) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Layer name -> (channel ids of its input, of its output) in the dependency analysis."""
    ids: dict[str, dict[str, list]] = {lay.name: {"in": [], "out": []} for lay in analysis.layers}
    for rec in analysis.graph.records:
        if rec.kind in ("in", "out") and rec.node in ids:
            ids[rec.node][rec.kind].append(np.asarray(rec.ids, dtype=np.int64))
    return {name: tuple(np.concatenate(v[k]) if v[k] else np.zeros(0, dtype=np.int64) for k in ("in", "out"))
            for name, v in ids.items()}


def _shared_weight_layers(model: io.ir.Model, analysis: Analysis) -> set[str]:
    """Layers whose weight or bias initializer another node also reads (not cached per layer)."""
    names = {lay.name for lay in analysis.layers}
    out = set()
    for node in model.graph:
        if node.name in names:
            for v in node.inputs[1:3]:
                if v is not None and len(v.uses()) > 1:
                    out.add(node.name)
    return out


def _params(proto: onnx.ModelProto) -> int:
    """Weights and biases of compute layers (stored elements, zeros included)."""
    inits = {t.name: t for t in proto.graph.initializer}
    dq = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    total = 0
    for node in proto.graph.node:
        spec = op_spec(node.op_type)
        if spec is not None:
            for name in [node.input[i] for i in (spec.weight_input, spec.bias_input)
                         if i is not None and i < len(node.input)]:
                src = dq.get(name, name)
                if src in inits:
                    total += int(np.prod(inits[src].dims))
    return total


def make_space(evaluator: OnnxEvaluator, kind: str = "full", multiple: int | None = None,
               stage1_quantized: bool = False):
    """The search space of a model under a profile (``stage1_quantized``: see SearchSpace)."""
    from emomc_onnx.search.space import GroupGene, LayerGene, SearchSpace

    prof = evaluator.profile
    mult = int(multiple or prof.channel_multiple)
    groups = tuple(GroupGene(id=g.id, channels=g.channels, multiple=mult)
                   for g in evaluator.analysis.prunable_groups)
    layers = tuple(LayerGene(name=lay.name, op_type=lay.op_type, params=lay.params, macs=lay.macs)
                   for lay in evaluator.analysis.layers)
    wbits = tuple(b for b in prof.weight_bits if 2 <= b <= 8) or tuple(prof.weight_bits)
    abits = tuple(b for b in prof.activation_bits if 4 <= b <= 8) or tuple(prof.activation_bits)
    densities = tuple(round(d, 2) for d in np.arange(0.1, 1.0001, 0.05))
    ref = (max(wbits), max(abits))
    return SearchSpace(groups=groups, layers=layers, densities=densities, wbits=wbits, abits=abits,
                       reference_bits=ref, kind=kind, stage1_quantized=stage1_quantized)

