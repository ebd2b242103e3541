"""A compression plan -> its ONNX model: prune (with recovery), sparsify (with re-fit), quantize.

One pipeline for every caller: ``emomc-onnx prune`` builds one uniform plan with it, the
search builds each candidate with it. The recovery statistics (calibration rows, activation
means) are computed once per model; the search's repeated builds reuse float models per
architecture, rewritten layers per (layer, kept channels, density), and activation ranges per
architecture.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from emomc_onnx import io
from emomc_onnx.analysis import Analysis
from emomc_onnx.errors import DataError
from emomc_onnx.evaluate.calibration import activation_tensors, calibrate
from emomc_onnx.passes.channel_pruning import (
    PruningPlan,
    apply_keep_mask,
    group_importance,
    select_channels,
)
from emomc_onnx.passes.ir_utils import ensure_bias
from emomc_onnx.passes.quantize import LayerBits, QuantPlan, quantize_model
from emomc_onnx.passes.recovery import (
    RECOVERIES,
    activation_means,
    apply_recovery,
    lsq_rows,
    refit_on_pruned,
    sparsify_with_refit,
)
from emomc_onnx.passes.sparsity import SparsityPlan

__all__ = ["CandidateBuilder"]

logger = logging.getLogger(__name__)

CACHE_BYTES = 256 << 20  # per cache: float models per architecture, rewritten layers
RANGES_KEPT = 64  # architectures whose activation ranges are kept


class CandidateBuilder:
    """Builds the model of a plan (anything with ``keep``, ``density``, ``wbits``, ``abits``).

    Args:
        loaded: the imported model (never mutated: each build works on a clone).
        analysis: its analysis (layers, channel-dependency groups).
        calib_batches: calibration feeds (recovery statistics, activation ranges).
        recovery: "none", "bias" or "lsq" (the consumers of removed channels re-fitted).
        sparse_refit: re-fit the weights sparsity leaves (needs ``recovery="lsq"``'s rows).
        criterion: channel importance, "l1", "l2" or "activation" (mean |x| on the data).
        pattern: fine-grained sparsity pattern (see ``SparsityPlan``).
        calibration: activation calibration method (see ``calibrate``).
        max_rows, seed: least-squares rows sampled per layer, and their sampling seed.
        cache_bytes: bound of each cache (0: nothing cached, for a single build).
        refit_pruned: with ``lsq``, re-fit every layer of a pruned model on its own inputs
            (``refit_on_pruned``; layers then depend on each other, so nothing is cached).
    """

    def __init__(
        self,
        loaded: io.LoadedModel,
        analysis: Analysis,
        calib_batches: Sequence[Mapping[str, np.ndarray]] | None = None,
        *,
        recovery: str = "lsq",
        sparse_refit: bool = True,
        criterion: str = "l1",
        pattern: str = "unstructured",
        calibration: str = "minmax",
        max_rows: int = 1024,
        seed: int = 0,
        cache_bytes: int = CACHE_BYTES,
        refit_pruned: bool = False,
    ) -> None:
        if recovery not in RECOVERIES:
            raise ValueError(f"recovery {recovery!r}: expected one of {', '.join(RECOVERIES)}")
        self.loaded, self.analysis = loaded, analysis
        self.calib_batches = list(calib_batches or [])
        self.recovery, self.criterion, self.pattern, self.calibration = recovery, criterion, pattern, calibration
        self.original = loaded.proto()
        needs_data = recovery != "none" or criterion == "activation"
        if needs_data and not self.calib_batches:
            raise DataError(f"recovery {recovery!r} / criterion {criterion!r} need calibration data (--data)")
        self.means = (activation_means(self.original, self.calib_batches, analysis.layers)
                      if recovery == "bias" else None)
        self.rows = (lsq_rows(loaded.model, analysis.layers, self.original, self.calib_batches,
                              max_rows=max_rows, seed=seed)
                     if recovery == "lsq" else None)
        self._refit_rows = self.rows if sparse_refit else None
        # lsq: re-fit every layer on the pruned model's own inputs (one pass per layer over the
        # calibration data; `prune` does it, the search's per-layer cache cannot)
        self.refit_pruned = refit_pruned and recovery == "lsq"
        self.max_rows, self.seed = max_rows, seed
        self._activations = (activation_means(self.original, self.calib_batches, analysis.layers, absolute=True)
                             if criterion == "activation" else None)
        self._imp: dict[int, np.ndarray] | None = None
        self._ranges_cache: dict[str, dict] = {}
        cache_bytes = 0 if self.refit_pruned else cache_bytes
        self._arch_cache = _LRU(cache_bytes)  # float models per architecture
        self._layer_cache = _LRU(cache_bytes)  # rewritten (weight, bias) per layer configuration
        self._layer_ids = _layer_channel_ids(analysis)
        self._shared = _shared_weight_layers(loaded.model, analysis)

    # ---- pruning ---------------------------------------------------------------------
    def importance(self) -> dict[int, np.ndarray]:
        """Channel importance per group on the original model (computed once)."""
        if self._imp is None:
            self._imp = group_importance(self.loaded.model, self.analysis, self.criterion, self._activations)
        return self._imp

    def keep_mask(self, plan) -> np.ndarray | None:
        """The channel keep mask of a plan (None if it prunes nothing)."""
        sizes = {g.id: g.channels for g in self.analysis.groups}
        keep_counts = {gid: k for gid, k in plan.keep.items() if k < sizes.get(gid, k + 1)}
        if not keep_counts:
            return None
        return select_channels(self.analysis, PruningPlan(keep=keep_counts), self.importance())

    # ---- the float model -------------------------------------------------------------
    @staticmethod
    def arch_key(plan) -> str:
        """What the float model of a plan depends on: kept channels and densities."""
        return json.dumps([sorted(plan.keep.items()), sorted(plan.density.items())])

    def float_ir(self, plan) -> io.ir.Model:
        """A fresh pruned (recovered) and sparsified (re-fitted) copy of the model.

        Rewritten layers found in the per-layer cache are copied in, not computed again."""
        model = self.loaded.model.clone(deep_copy=True)  # shares the (never mutated) weight tensors
        keep = self.keep_mask(plan)
        dens = {k: float(v) for k, v in plan.density.items() if v < 1.0}
        keys = self._layer_keys(keep, dens)
        hits = {name: self._layer_cache.get(k) for name, k in keys.items() if k is not None}
        hits = {name: v for name, v in hits.items() if v is not None}
        todo = set(keys) - set(hits)
        if keep is not None:
            apply_recovery(model, self.analysis, keep, self.recovery, self.means, self.rows, names=todo)
            apply_keep_mask(model, self.analysis, keep)
            if self.refit_pruned:
                refit_on_pruned(model, self.analysis, keep, self.original, self.calib_batches,
                                max_rows=self.max_rows, seed=self.seed, rows=self.rows)
        todo_dens = {k: v for k, v in dens.items() if k not in hits}
        if todo_dens:
            sparsify_with_refit(model, self.analysis, keep, self._refit_rows,
                                SparsityPlan(density=todo_dens, pattern=self.pattern))
        self._sync_layers(model, keys, hits)
        return model

    def finish(self, model: io.ir.Model | onnx.ModelProto) -> onnx.ModelProto:
        """The proto of a built model, with the original's input and output signature."""
        return self.loaded.restore_signature(model if isinstance(model, onnx.ModelProto) else io.to_proto(model))

    def float_model(self, plan) -> tuple[onnx.ModelProto, str]:
        """The float model of a plan's architecture and its key (cached per architecture)."""
        proto, _, arch_key = self._float(plan)
        return proto, arch_key

    def _float(self, plan) -> tuple[onnx.ModelProto, io.ir.Model, str]:
        """The float model of a plan's architecture as a proto and as the IR model it was
        serialised from (quantization clones the IR: no proto is parsed again)."""
        arch_key = self.arch_key(plan)
        hit = self._arch_cache.get(arch_key)
        if hit is None:
            model = self.float_ir(plan)
            hit = (self.finish(model), model)  # the proto runs with the original's batch
            self._arch_cache.put(arch_key, hit, 2 * hit[0].ByteSize())
        return hit[0], hit[1], arch_key

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

    def _sync_layers(self, model: io.ir.Model, keys: Mapping[str, tuple | None], hits: Mapping[str, tuple]) -> None:
        """Write cached layers' weights into ``model``; cache the layers computed in it."""
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

    # ---- quantization ----------------------------------------------------------------
    def build(self, plan) -> onnx.ModelProto:
        """The deployable model for a plan (float if the plan has no bit widths)."""
        proto, model, arch_key = self._float(plan)
        bits = {k: (plan.wbits.get(k), plan.abits.get(k)) for k in sorted(set(plan.wbits) | set(plan.abits))}
        layers = {name: LayerBits(w, a) for name, (w, a) in bits.items() if w is not None or a is not None}
        if not layers:
            return proto
        return self.finish(quantize_model(model, QuantPlan(layers=layers), self.ranges(proto, arch_key)))

    def ranges(self, proto: onnx.ModelProto, arch_key: str) -> dict[str, tuple[float, float]]:
        """Activation ranges of every compute layer of an architecture (calibrated once)."""
        ranges = self._ranges_cache.get(arch_key)
        if ranges is None:
            # every compute layer's tensors, so later plans on this architecture that
            # quantize other layers find their ranges in the cache
            tensors = activation_tensors(proto, [layer.name for layer in self.analysis.layers])
            ranges = calibrate(proto, self._calib_feeds(), tensors, method=self.calibration)
            if len(self._ranges_cache) > RANGES_KEPT:
                self._ranges_cache.clear()
            self._ranges_cache[arch_key] = ranges
        return ranges

    def _calib_feeds(self) -> dict[str, np.ndarray]:
        feeds: dict[str, list[np.ndarray]] = {}
        for b in self.calib_batches:
            for k, v in b.items():
                feeds.setdefault(k, []).append(v)
        return {k: np.concatenate(v) for k, v in feeds.items()}


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
