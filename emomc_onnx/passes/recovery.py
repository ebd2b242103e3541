"""Training-free recovery after channel pruning: bias compensation and least squares.

Both use calibration activations of the *original* model:

- ``bias``: each removed input channel's expected contribution ``W[:, c] * E[x_c]`` is folded
  into the consumer's bias (Conv, Gemm; a bias is created if missing).
- ``lsq``: each consumer's remaining input weights (and bias) are re-fitted by ridge
  regression so that its output on calibration data matches the original layer's output
  (ThiNet / He et al. 2017 style), from at most ``max_rows`` sampled rows (pixels or tokens).

After fine-grained sparsity, ``refit_sparse`` re-fits each sparsified layer's surviving
weights (and bias) the same way, to the dense layer's output: a masked least-squares problem
per output row, solved for all rows at once by conjugate gradients on the layer's input Gram
matrix (the zero pattern is kept, so density is unchanged).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Mapping

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import numpy_helper

from emomc_onnx.analysis import Analysis, Layer
from emomc_onnx.analysis.ops import op_spec
from emomc_onnx.errors import DataError
from emomc_onnx.evaluate.session import run_feed
from emomc_onnx.io import to_proto
from emomc_onnx.passes.channel_pruning import (
    PruningPlan,
    apply_keep_mask,
    group_importance,
    select_channels,
)
from emomc_onnx.passes.ir_utils import ensure_bias as _ensure_bias
from emomc_onnx.passes.sparsity import SparsityPass

__all__ = [
    "RECOVERIES",
    "activation_means",
    "apply_recovery",
    "collect_tensors",
    "lsq_rows",
    "prune_with_recovery",
    "refit_on_pruned",
    "refit_sparse",
    "sparsify_with_refit",
]

logger = logging.getLogger(__name__)

RECOVERIES = ("none", "bias", "lsq")


def collect_tensors(
    proto: onnx.ModelProto,
    batches: Iterable[Mapping[str, np.ndarray]],
    tensors: list[str],
    reducer,
    only: bool = False,
) -> None:
    """Run ``proto`` on ``batches`` exposing ``tensors``; call ``reducer(name, array)`` per batch.

    Any batch size works, also for a model whose batch axis is static (fed in chunks). ``only``:
    the graph's own outputs are dropped, so ONNX Runtime runs just what ``tensors`` need."""
    if not tensors:
        return
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    if only:
        del m.graph.output[:]
    existing = {o.name for o in m.graph.output}
    for name in tensors:
        if name not in existing:
            m.graph.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3  # an unused initializer an exporter left is no news on every pass
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    for feed in batches:
        outs = run_feed(sess, dict(feed), tensors)
        for name, arr in zip(tensors, outs):
            reducer(name, arr)


def _feature_axis(layer: Layer, ndim: int) -> int:
    return op_spec(layer.op_type).feature_axis % ndim


def activation_means(
    proto: onnx.ModelProto, batches: Iterable[Mapping[str, np.ndarray]], layers: list[Layer],
    absolute: bool = False,
) -> dict[str, np.ndarray]:
    """Mean (or mean |x|) per feature of each layer's input tensor over calibration data."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    axis_of = {layer.input: layer for layer in layers}

    def reduce(name: str, arr: np.ndarray) -> None:
        ax = _feature_axis(axis_of[name], arr.ndim)
        a = np.abs(arr) if absolute else arr
        moved = np.moveaxis(a, ax, -1).reshape(-1, a.shape[ax]).astype(np.float64)
        sums[name] = sums.get(name, 0) + moved.sum(axis=0)
        counts[name] = counts.get(name, 0) + moved.shape[0]

    collect_tensors(proto, batches, sorted(axis_of), reduce)
    return {k: sums[k] / max(counts[k], 1) for k in sums}


def _weight_as_out_in(node: ir.Node, w: np.ndarray) -> np.ndarray:
    """Weight as [out, in, k...] regardless of op conventions (the registry's output axis)."""
    return np.moveaxis(w, op_spec(node.op_type).out_axis(node, w.ndim), 0)


def _from_out_in(node: ir.Node, w_oi: np.ndarray) -> np.ndarray:
    return np.moveaxis(w_oi, 0, op_spec(node.op_type).out_axis(node, w_oi.ndim))


def _has_bias_input(layer: Layer) -> bool:
    """The op takes a bias input (a bias can be created; MatMul's would be a new Add)."""
    return op_spec(layer.op_type).bias_input is not None


def _consumer_masks(analysis: Analysis, keep: np.ndarray) -> dict[str, np.ndarray]:
    """Layer name -> input-feature keep mask, for layers that lose inputs."""
    out = {}
    names = {layer.name for layer in analysis.layers}
    for rec in analysis.graph.records:
        if rec.kind == "in" and rec.node in names:
            mask = keep[rec.ids]
            if not mask.all():
                out[rec.node] = mask
    return out


def _bias_compensation(model: ir.Model, analysis: Analysis, masks: dict[str, np.ndarray],
                       means: Mapping[str, np.ndarray]) -> None:
    nodes = {n.name: n for n in model.graph}
    for layer in analysis.layers:
        mask = masks.get(layer.name)
        if mask is None or not op_spec(layer.op_type).supports("recover") or not _has_bias_input(layer) \
                or layer.groups != 1:
            continue
        node = nodes[layer.name]
        w = node.inputs[1].const_value.numpy()
        w_oi = _weight_as_out_in(node, w).astype(np.float64)
        w_sum = w_oi.reshape(w_oi.shape[0], w_oi.shape[1], -1).sum(axis=2)
        mean = means[layer.input]
        delta = w_sum[:, ~mask] @ mean[~mask]
        bias = _ensure_bias(model, node, w_oi.shape[0], w.dtype)
        b = bias.const_value.numpy().astype(np.float64)
        bias.const_value = ir.Tensor((b + delta.reshape(b.shape)).astype(w.dtype), name=bias.name)


def _im2col_rows(x: np.ndarray, node: ir.Node, kernel: tuple[int, ...], rng: np.random.Generator,
                 n_rows: int) -> np.ndarray:
    """Sample ``n_rows`` receptive fields of a 2-D Conv input as rows [Cin*kh*kw]."""
    def attr(name, default):
        return list(node.attributes[name].value) if name in node.attributes else default

    kh, kw = kernel
    pads = attr("pads", [0, 0, 0, 0])
    strides = attr("strides", [1, 1])
    dil = attr("dilations", [1, 1])
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    eh, ew = (kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1
    win = np.lib.stride_tricks.sliding_window_view(xp, (eh, ew), axis=(2, 3))
    win = win[:, :, ::strides[0], ::strides[1], ::dil[0], ::dil[1]]  # N,C,Ho,Wo,kh,kw
    n, c, ho, wo = win.shape[:4]
    total = n * ho * wo
    pick = rng.choice(total, size=min(n_rows, total), replace=False)
    ni, rest = np.divmod(pick, ho * wo)
    hi, wi = np.divmod(rest, wo)
    return win[ni, :, hi, wi].reshape(len(pick), c * kh * kw)


def _lsq_targets(model: ir.Model, layers: list[Layer], names: set[str] | None) -> list[Layer]:
    nodes = {n.name: n for n in model.graph}
    return [layer for layer in layers
            if (names is None or layer.name in names) and layer.groups == 1
            and op_spec(layer.op_type).supports("recover")
            and (layer.op_type != "Conv" or "auto_pad" not in nodes[layer.name].attributes
                 or nodes[layer.name].attributes["auto_pad"].value == "NOTSET")]


def lsq_rows(model: ir.Model, layers: list[Layer], original: onnx.ModelProto,
             batches: list[Mapping[str, np.ndarray]], max_rows: int = 2048, seed: int = 0,
             names: set[str] | None = None, only: bool = False) -> dict[str, np.ndarray]:
    """Sampled input rows (receptive fields, or feature vectors) of each layer on calibration data.

    Computed once per model; the search reuses them for every candidate's least squares. Each
    layer's positions come from its own generator (``seed`` and the layer's name), so the same
    layer is sampled at the same positions whichever other layers are collected with it.
    """
    nodes = {n.name: n for n in model.graph}
    targets = _lsq_targets(model, layers, names)
    rngs = {layer.name: np.random.default_rng([seed, zlib.crc32(layer.name.encode())]) for layer in targets}
    rows: dict[str, list[np.ndarray]] = {layer.name: [] for layer in targets}
    by_input: dict[str, list[Layer]] = {}
    for layer in targets:
        by_input.setdefault(layer.input, []).append(layer)
    per_batch = max(1, max_rows // max(len(batches), 1))

    def reduce(name: str, arr: np.ndarray) -> None:
        for layer in by_input[name]:
            if layer.op_type == "Conv":
                rows[layer.name].append(_im2col_rows(arr.astype(np.float32), nodes[layer.name],
                                                     layer.kernel, rngs[layer.name], per_batch))
            else:
                flat = arr.reshape(-1, arr.shape[-1]).astype(np.float32)
                pick = rngs[layer.name].choice(len(flat), size=min(per_batch, len(flat)), replace=False)
                rows[layer.name].append(flat[pick])

    collect_tensors(original, batches, sorted(by_input), reduce, only=only)
    return {k: np.concatenate(v) for k, v in rows.items() if v}


def _lsq(model: ir.Model, analysis: Analysis, masks: dict[str, np.ndarray],
         original: onnx.ModelProto | None, batches: list[Mapping[str, np.ndarray]] | None, max_rows: int,
         ridge: float, seed: int, rows: Mapping[str, np.ndarray] | None = None) -> None:
    nodes = {n.name: n for n in model.graph}
    targets = _lsq_targets(model, analysis.layers, set(masks))
    if not targets:
        return
    if rows is None:
        rows = lsq_rows(model, analysis.layers, original, batches, max_rows, seed, set(masks))
    for layer in targets:
        if layer.name not in rows:
            continue
        node = nodes[layer.name]
        x = rows[layer.name].astype(np.float64)
        w = node.inputs[1].const_value.numpy()
        w_oi = _weight_as_out_in(node, w).astype(np.float64)
        cout = w_oi.shape[0]
        w2 = w_oi.reshape(cout, -1)
        k = int(np.prod(w_oi.shape[2:])) if w_oi.ndim > 2 else 1
        col_mask = np.repeat(masks[layer.name], k)
        y = x @ w2.T  # the original layer's pre-bias output
        xk = np.concatenate([x[:, col_mask], np.ones((len(x), 1))], axis=1)
        gram = xk.T @ xk
        lam = ridge * np.trace(gram) / gram.shape[0]
        reg = lam * np.eye(gram.shape[0])
        reg[-1, -1] = 0.0
        sol = np.linalg.solve(gram + reg, xk.T @ y)  # [kept+1, out]
        new_w2 = w2.copy()
        new_w2[:, col_mask] = sol[:-1].T
        new_w2[:, ~col_mask] = 0.0
        node.inputs[1].const_value = ir.Tensor(
            _from_out_in(node, new_w2.reshape(w_oi.shape)).astype(w.dtype), name=node.inputs[1].name)
        shift = sol[-1]
        if not _has_bias_input(layer):
            if np.abs(shift).max() > 0:
                logger.info("lsq: MatMul %s has no bias to take the intercept", layer.name)
            continue
        bias = _ensure_bias(model, node, cout, w.dtype)
        b = bias.const_value.numpy().astype(np.float64)
        bias.const_value = ir.Tensor((b + shift.reshape(b.shape)).astype(w.dtype), name=bias.name)


def refit_on_pruned(model: ir.Model, analysis: Analysis, keep: np.ndarray, original: onnx.ModelProto,
                    batches: list[Mapping[str, np.ndarray]], max_rows: int = 4096, ridge: float = 1e-3,
                    seed: int = 0, rows: Mapping[str, np.ndarray] | None = None) -> int:
    """Re-fit every dense layer of an already pruned ``model`` on its *own* inputs, in place.

    ``lsq`` fits each consumer to the original layer's output from the original model's inputs;
    once every group is pruned the pruned model's inputs differ from those (upstream pruning),
    and the per-layer errors add up through the depth (PaddleOCR's MobileNetV3 at 25%: 50%
    top-1 agreement). This pass runs the pruned model on the calibration data, samples each
    layer's input rows at the same positions as the original's (same seed), and solves
    ``min ||X_pruned W' + b' - (X_orig W + b)||`` per layer (He et al. 2017's reconstruction
    from the pruned network's input), all layers in one pass. ``rows``: the original's
    ``lsq_rows`` made with the same ``max_rows``, ``seed`` and batches (else collected here).
    Returns the number of layers re-fitted.
    """
    targets = _lsq_targets(model, analysis.layers, None)
    if not targets:
        return 0
    names = {layer.name for layer in targets}
    if rows is None:
        rows = lsq_rows(model, analysis.layers, original, batches, max_rows, seed, names)
    init = {t.name: t for t in original.graph.initializer}
    orig_nodes = {n.name: n for n in original.graph.node}
    nodes = {n.name: n for n in model.graph}
    out_mask: dict[str, np.ndarray] = {}
    for rec in analysis.graph.records:
        if rec.kind == "out" and rec.node in names:
            out_mask[rec.node] = keep[rec.ids]
    seen: set[str] = set()
    done = 0
    for layer in targets:
        node, onode = nodes[layer.name], orig_nodes.get(layer.name)
        if onode is None or layer.name not in rows or onode.input[1] not in init or onode.input[1] in seen:
            continue  # a weight shared by several layers is fitted for the first one only
        seen.add(onode.input[1])
        w0 = _weight_as_out_in(node, numpy_helper.to_array(init[onode.input[1]])).astype(np.float64)
        cout0 = w0.shape[0]
        b0 = (numpy_helper.to_array(init[onode.input[2]]).astype(np.float64).reshape(-1)
              if len(onode.input) > 2 and onode.input[2] in init else np.zeros(cout0))
        w = node.inputs[1].const_value.numpy()
        w_oi = _weight_as_out_in(node, w)
        # the pruned model as re-fitted so far (layers in graph order): each fit sees its inputs
        mine = lsq_rows(model, analysis.layers, to_proto(model), batches, max_rows, seed, {layer.name}, only=True)
        if layer.name not in mine:
            continue
        x = mine[layer.name].astype(np.float64)
        if x.shape[1] != int(np.prod(w_oi.shape[1:])) or len(x) != len(rows[layer.name]):
            logger.info("refit: %s rows do not match its weight, skipped", layer.name)
            continue
        om = out_mask.get(layer.name, np.ones(cout0, dtype=bool))
        y = rows[layer.name].astype(np.float64) @ w0.reshape(cout0, -1)[om].T + b0[om]
        intercept = _has_bias_input(layer)
        if intercept:
            x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
        else:
            y = y - b0[om]  # MatMul: the bias is a separate Add, which stays
        gram = x.T @ x
        d = gram.shape[0] - (1 if intercept else 0)
        reg = np.full(gram.shape[0], ridge * np.trace(gram[:d, :d]) / max(d, 1))
        if intercept:
            reg[-1] = 0.0
        sol = np.linalg.solve(gram + np.diag(reg), x.T @ y)
        node.inputs[1].const_value = ir.Tensor(
            _from_out_in(node, sol[:d].T.reshape(w_oi.shape)).astype(w.dtype), name=node.inputs[1].name)
        if intercept:
            bias = _ensure_bias(model, node, w_oi.shape[0], w.dtype)
            bias.const_value = ir.Tensor(sol[-1].reshape(bias.const_value.numpy().shape).astype(w.dtype),
                                         name=bias.name)
        done += 1
    return done


def apply_recovery(model: ir.Model, analysis: Analysis, keep: np.ndarray, recovery: str,
                   means: Mapping[str, np.ndarray] | None = None,
                   rows: Mapping[str, np.ndarray] | None = None, ridge: float = 1e-3,
                   names: set[str] | None = None) -> None:
    """Recover the consumers of removed channels from precomputed statistics (before cutting).

    ``names``: recover only these layers (the others keep their weights)."""
    masks = {k: v for k, v in _consumer_masks(analysis, keep).items() if names is None or k in names}
    if not masks or recovery == "none":
        return
    if recovery == "bias":
        _bias_compensation(model, analysis, masks, means)
    else:
        _lsq(model, analysis, masks, None, None, 0, ridge, 0, rows=rows)


def prune_with_recovery(
    model: ir.Model,
    analysis: Analysis,
    plan: PruningPlan,
    recovery: str = "none",
    original: onnx.ModelProto | None = None,
    batches: list[Mapping[str, np.ndarray]] | None = None,
    max_rows: int = 4096,
    ridge: float = 1e-3,
    seed: int = 0,
    rows: Mapping[str, np.ndarray] | None = None,
    refit_pruned: bool = False,
) -> np.ndarray:
    """Prune ``model`` in place (recovering as asked) and return the id keep mask.

    ``rows``: precomputed ``lsq_rows`` of the original model (else collected here), made with
    the same ``max_rows`` and ``seed``. ``refit_pruned`` (lsq only): then re-fit every layer on
    the pruned model's own inputs (``refit_on_pruned``; one more pass over the data)."""
    if recovery not in RECOVERIES:
        raise ValueError(recovery)
    importance = group_importance(model, analysis, plan.criterion, plan.activations)
    keep = select_channels(analysis, plan, importance)
    if keep.all():
        return keep
    masks = _consumer_masks(analysis, keep)
    if recovery != "none" and masks:
        if original is None or not batches:
            raise DataError(f"recovery {recovery!r} needs calibration data (--data)")
        if recovery == "bias":
            means = activation_means(original, batches, [lay for lay in analysis.layers if lay.name in masks])
            _bias_compensation(model, analysis, masks, means)
        else:
            _lsq(model, analysis, masks, original, batches, max_rows, ridge, seed, rows=rows)
    apply_keep_mask(model, analysis, keep)
    if refit_pruned and recovery == "lsq" and masks:
        refit_on_pruned(model, analysis, keep, original, batches, max_rows, ridge, seed, rows)
    return keep


def refit_sparse(model: ir.Model, analysis: Analysis, keep: np.ndarray | None,
                 rows: Mapping[str, np.ndarray], dense: Mapping[str, np.ndarray], ridge: float = 1e-3,
                 iters: int = 8, tol: float = 1e-10) -> None:
    """Re-fit the nonzero weights of sparsified layers to their dense outputs, in place.

    ``dense``: layer name -> the layer's weight before sparsity (same layout as now); the
    layer's current weight holds the zero pattern. ``rows``: the layer's sampled input rows on
    the original model (``lsq_rows``); ``keep``: the channel keep mask of the pruning already
    applied (None if none), which selects the row columns the pruned layer still reads.
    Each output row o solves ``min ||X w_o + c_o - X wd_o||^2 + lam ||w_o||^2`` over its
    nonzeros (c_o: bias shift, not for MatMul), i.e. the normal equations masked to its support.
    Conjugate gradients stop after ``iters`` steps or once every row's squared residual is below
    ``tol`` times its right-hand side's.
    """
    nodes = {n.name: n for n in model.graph}
    in_masks = _consumer_masks(analysis, keep) if keep is not None else {}
    done: set[int] = set()
    for layer in _lsq_targets(model, analysis.layers, set(dense)):
        node = nodes[layer.name]
        if layer.name not in rows or id(node.inputs[1]) in done:
            continue  # a weight shared by several layers is fitted for the first one only
        done.add(id(node.inputs[1]))
        w = node.inputs[1].const_value.numpy()
        w_oi = _weight_as_out_in(node, w)
        wd = _weight_as_out_in(node, np.asarray(dense[layer.name]))
        cout = w_oi.shape[0]
        k = int(np.prod(w_oi.shape[2:])) if w_oi.ndim > 2 else 1
        x = rows[layer.name]
        if layer.name in in_masks:
            x = x[:, np.repeat(in_masks[layer.name], k)]
        if x.shape[1] != w_oi.reshape(cout, -1).shape[1]:
            logger.info("refit: %s rows do not match its weight, skipped", layer.name)
            continue
        intercept = _has_bias_input(layer)
        x = x.astype(np.float64)
        if intercept:
            x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
        gram = x.T @ x
        d = w_oi.reshape(cout, -1).shape[1]
        lam = ridge * np.trace(gram[:d, :d]) / d
        reg = np.full(gram.shape[0], lam)
        if intercept:
            reg[-1] = 0.0
        mask = np.zeros((cout, gram.shape[0]), dtype=bool)
        mask[:, :d] = w_oi.reshape(cout, -1) != 0
        if intercept:
            mask[:, -1] = True
        target = np.zeros((cout, gram.shape[0]))
        target[:, :d] = wd.reshape(cout, -1)
        v = np.where(mask, target, 0.0)
        b = np.where(mask, target @ gram, 0.0)  # rows of X^T X wd (masked)

        def apply(m: np.ndarray) -> np.ndarray:
            return np.where(mask, m @ gram + reg * m, 0.0)

        r = b - apply(v)
        p = r.copy()
        rs = np.einsum("ij,ij->i", r, r)
        stop = tol * np.maximum(np.einsum("ij,ij->i", b, b), 1e-30)  # squared residual, relative
        for _ in range(iters):
            if np.all(rs <= stop):
                break
            ap = apply(p)
            denom = np.einsum("ij,ij->i", p, ap)
            alpha = np.divide(rs, denom, out=np.zeros_like(rs), where=denom > 0)
            v += alpha[:, None] * p
            r -= alpha[:, None] * ap
            rs_new = np.einsum("ij,ij->i", r, r)
            beta = np.divide(rs_new, rs, out=np.zeros_like(rs), where=rs > 0)
            p = r + beta[:, None] * p
            rs = rs_new
        new_w = v[:, :d].reshape(w_oi.shape)
        node.inputs[1].const_value = ir.Tensor(_from_out_in(node, new_w).astype(w.dtype),
                                               name=node.inputs[1].name)
        if intercept:
            bias = _ensure_bias(model, node, cout, w.dtype)
            bb = bias.const_value.numpy().astype(np.float64)
            bias.const_value = ir.Tensor((bb + v[:, -1].reshape(bb.shape)).astype(w.dtype), name=bias.name)


def sparsify_with_refit(model: ir.Model, analysis: Analysis, keep: np.ndarray | None,
                        rows: Mapping[str, np.ndarray] | None, plan) -> None:
    """Apply a :class:`~emomc_onnx.passes.sparsity.SparsityPlan` in place, then re-fit the
    surviving weights of every sparsified layer (``refit_sparse``); ``rows=None``: no re-fit."""
    if rows is None:
        SparsityPass(plan)(model)
        return
    todo = {name for name, d in plan.density.items() if d < 1.0}
    dense = {n.name: n.inputs[1].const_value.numpy().copy() for n in model.graph
             if n.name in todo and len(n.inputs) > 1 and n.inputs[1] is not None
             and n.inputs[1].const_value is not None}
    SparsityPass(plan)(model)
    refit_sparse(model, analysis, keep, rows, dense)
