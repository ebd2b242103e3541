"""Structured channel pruning: removes whole channels from every member of a group.

The plan says, per channel-dependency group, how many channels to keep; importance
(L1/L2 of all members' weights, or mean |activation|) picks which. The pass replays the
analysis' cut records: producers' output channels, consumers' input channels (including
feature blocks after Flatten/Reshape), biases and per-channel parameters, depthwise
``group`` attributes, Reshape shape constants, Split sizes and Slice bounds; then shapes
are inferred again. The result is a smaller, valid model, not a mask.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from emomc_onnx.analysis import Analysis
from emomc_onnx.analysis.ops import op_spec
from emomc_onnx.errors import PlanError
from emomc_onnx.io import infer_shapes
from emomc_onnx.passes.ir_utils import add_initializer
from emomc_onnx.units import round_keep

__all__ = [
    "PruningPlan",
    "group_importance",
    "select_channels",
    "uniform_plan",
    "round_keep",
]

logger = logging.getLogger(__name__)

CRITERIA = ("l1", "l2", "activation")


@dataclasses.dataclass(frozen=True)
class PruningPlan:
    """How many channels each group keeps.

    Attributes:
        keep: group id -> channels kept (groups not listed keep all).
        criterion: "l1" (default), "l2" or "activation" (needs ``activations``).
        activations: for "activation": tensor name -> mean |activation| per channel.
    """

    keep: Mapping[int, int]
    criterion: str = "l1"
    activations: Mapping[str, np.ndarray] | None = dataclasses.field(default=None, compare=False)

    def key(self) -> str:
        return ",".join(f"{g}:{k}" for g, k in sorted(self.keep.items())) + f"|{self.criterion}"


def uniform_plan(analysis: Analysis, ratio: float, multiple: int = 8, criterion: str = "l1") -> PruningPlan:
    """Remove the fraction ``ratio`` of channels of every prunable group."""
    if not 0.0 <= ratio < 1.0:
        raise PlanError(f"--ratio {ratio}: must be in [0, 1)")
    keep = {g.id: round_keep(g.channels, 1.0 - ratio, multiple) for g in analysis.prunable_groups}
    return PruningPlan(keep=keep, criterion=criterion)


def _values_by_name(model: ir.Model) -> dict[str, ir.Value]:
    values: dict[str, ir.Value] = dict(model.graph.initializers)
    for node in model.graph:
        for v in node.inputs:
            if v is not None and v.name not in values:
                values[v.name] = v
        for v in node.outputs:
            values[v.name] = v
    return values


def group_importance(
    model: ir.Model,
    analysis: Analysis,
    criterion: str = "l1",
    activations: Mapping[str, np.ndarray] | None = None,
) -> dict[int, np.ndarray]:
    """Per group, an importance score per component (in ``group.components`` order).

    Every member contributes its per-channel magnitude normalised by the member's mean, so
    large layers do not drown small ones (Torch-Pruning's group-mean normalisation).
    """
    if criterion not in CRITERIA:
        raise PlanError(f"criterion {criterion!r}: expected one of {', '.join(CRITERIA)}")
    g = analysis.graph
    score = np.zeros(g.n_ids, dtype=np.float64)
    inits = model.graph.initializers
    if criterion == "activation":
        if not activations:
            raise PlanError("criterion 'activation' needs calibration data (--data)")
        for name, mean_abs in activations.items():
            info = g.info.get(name)
            if info is None or len(info.ids) != len(mean_abs):
                continue
            v = np.asarray(mean_abs, dtype=np.float64)
            np.add.at(score, g.labels[info.ids], v / (v.mean() + 1e-12))
    else:
        for rec in g.records:
            if rec.kind not in ("out", "in") or rec.value not in inits:
                continue
            w = inits[rec.value].const_value.numpy().astype(np.float64)
            w = np.moveaxis(w, rec.axis, 0).reshape(w.shape[rec.axis], -1)
            if len(rec.ids) != w.shape[0]:
                continue
            m = np.abs(w).sum(axis=1) if criterion == "l1" else np.sqrt((w**2).sum(axis=1))
            np.add.at(score, g.labels[rec.ids], m / (m.mean() + 1e-12))
    out = {}
    for grp in analysis.groups:
        out[grp.id] = score[grp.components]
    return out


def select_channels(
    analysis: Analysis, plan: PruningPlan, importance: Mapping[int, np.ndarray]
) -> np.ndarray:
    """Boolean keep mask over all channel ids for a plan (ties broken by channel order)."""
    g = analysis.graph
    keep_labels = [np.arange(g.n_ids, dtype=np.int64)]
    drop: list[np.ndarray] = []
    by_id = {grp.id: grp for grp in analysis.groups}
    for gid, k in plan.keep.items():
        if gid not in by_id:
            raise PlanError(f"pruning plan names group {gid}, which the model does not have")
        grp = by_id[gid]
        k = int(k)
        if k >= grp.channels:
            continue
        if not grp.prunable:
            raise PlanError(f"group {gid} is not prunable: {grp.reason}")
        if k < 1:
            raise PlanError(f"group {gid}: must keep at least 1 channel, plan keeps {k}")
        order = np.argsort(-importance[gid], kind="stable")
        drop.append(grp.components[order[k:]])
    lab_keep = np.ones(g.n_ids, dtype=bool)
    for d in drop:
        lab_keep[d] = False
    del keep_labels
    if drop:
        _keep_one_per_part(analysis, lab_keep, importance)
    return lab_keep[g.labels]


def _keep_one_per_part(analysis: Analysis, lab_keep: np.ndarray, importance: Mapping[int, np.ndarray]) -> None:
    """Every Split output and Slice range keeps at least its most important channel.

    A plan may otherwise empty one branch of a Split (YOLO/CSP blocks); such a plan keeps a
    channel more than asked rather than producing an invalid model.
    """
    g = analysis.graph
    score = np.zeros(g.n_ids)
    for grp in analysis.groups:
        if grp.id in importance:
            score[grp.components] = importance[grp.id]
    parts: list[np.ndarray] = []
    for rec in g.records:
        if rec.kind == "split":
            parts.extend(np.asarray(p, dtype=np.int64) for p in rec.extra if p)
        elif rec.kind == "slice":
            parts.append(rec.ids[rec.extra[2]:rec.extra[3]])
    for ids in parts:
        labels = g.labels[ids]
        if not lab_keep[labels].any():
            lab_keep[labels[np.argmax(score[labels])]] = True


def apply_keep_mask(model: ir.Model, analysis: Analysis, keep: np.ndarray) -> None:
    """Cut every recorded tensor to the kept channels and re-infer shapes."""
    g = analysis.graph
    values = _values_by_name(model)
    nodes = {n.name: n for n in model.graph}
    done: set[tuple[str, int]] = set()
    for rec in g.records:
        mask = keep[rec.ids] if len(rec.ids) else np.zeros(0, dtype=bool)
        if rec.kind in ("out", "in", "param"):
            if (rec.value, rec.axis) in done or mask.all():
                continue
            done.add((rec.value, rec.axis))
            value = values[rec.value]
            arr = value.const_value.numpy()
            if arr.shape[rec.axis] != len(mask):
                raise PlanError(f"tensor {rec.value}: axis {rec.axis} has {arr.shape[rec.axis]} "
                                f"entries, analysis expected {len(mask)}")
            if not mask.any():
                raise PlanError(f"tensor {rec.value} would lose all its channels")
            _set_const(value, np.compress(mask, arr, axis=rec.axis))
            if rec.kind == "out":
                _cut_added_bias(nodes[rec.node], mask, done)
        elif rec.kind == "group":
            nodes[rec.node].attributes["group"] = ir.AttrInt64("group", int(mask.sum()))
        elif rec.kind == "reshape":
            if mask.all():
                continue
            node = nodes[rec.node]
            count = int(mask.sum()) * int(rec.extra[0])
            if len(rec.extra) > 1:  # a computed shape: its Concat's constant piece
                concat, index, offset = nodes[rec.extra[1]], int(rec.extra[2]), int(rec.extra[3])
                if (concat.name, index) in done:
                    continue
                done.add((concat.name, index))
                piece = concat.inputs[index]
                arr = piece.const_value.numpy().copy()
                arr[offset] = count
                concat.replace_input_with(index, add_initializer(model, f"{piece.name}_{concat.name}_pruned", arr))
                continue
            shape_v = node.inputs[1]
            arr = shape_v.const_value.numpy().copy()
            arr[rec.axis] = count
            node.replace_input_with(1, add_initializer(model, f"{shape_v.name}_{node.name}_pruned", arr))
        elif rec.kind == "split":
            if mask.all():
                continue
            node = nodes[rec.node]
            sizes = []
            offset = 0
            for part in rec.extra:
                sizes.append(int(keep[np.asarray(part, dtype=np.int64)].sum()) if part else 0)
                offset += len(part)
            if any(s == 0 for s in sizes):
                raise PlanError(f"Split {rec.node} would produce an empty output")
            _set_split_sizes(model, node, sizes)
        elif rec.kind == "slice":
            if mask.all():
                continue
            node = nodes[rec.node]
            j, ends_name, s, e = rec.extra
            new_s = int(mask[:s].sum())
            new_e = int(mask[:e].sum())
            if new_e <= new_s:
                raise PlanError(f"Slice {rec.node} would produce an empty output")
            starts = node.inputs[1].const_value.numpy().copy()
            ends = node.inputs[2].const_value.numpy().copy()
            starts[j], ends[j] = new_s, new_e
            node.replace_input_with(1, add_initializer(model, f"{node.name}_starts_pruned", starts))
            node.replace_input_with(2, add_initializer(model, f"{node.name}_ends_pruned", ends))
    _reset_shapes(model)
    infer_shapes(model)


def _cut_added_bias(node: ir.Node, mask: np.ndarray, done: set[tuple[str, int]]) -> None:
    """Cut the bias of a layer whose output channels go, also one recovery added after the
    analysis (a Conv exported without a bias gets one from bias compensation or least squares,
    at the unpruned width; the analysis has no record of it)."""
    spec = op_spec(node.op_type)
    if spec is None or spec.bias_input is None or len(node.inputs) <= spec.bias_input:
        return
    bias = node.inputs[spec.bias_input]
    if bias is None or bias.const_value is None:
        return
    arr = bias.const_value.numpy()
    axis = arr.ndim - 1
    if arr.ndim == 0 or (bias.name, axis) in done or arr.shape[axis] != len(mask):
        return
    done.add((bias.name, axis))
    _set_const(bias, np.compress(mask, arr, axis=axis))


def _set_const(value: ir.Value, arr: np.ndarray) -> None:
    value.const_value = ir.Tensor(np.ascontiguousarray(arr), name=value.name)
    value.shape = ir.Shape(arr.shape)


def _set_split_sizes(model: ir.Model, node: ir.Node, sizes: list[int]) -> None:
    opset = model.opset_imports.get("", 13)
    arr = np.array(sizes, dtype=np.int64)
    if opset >= 13:
        if "num_outputs" in node.attributes:
            del node.attributes["num_outputs"]
        const = add_initializer(model, f"{node.name}_split_pruned", arr)
        if len(node.inputs) > 1:
            node.replace_input_with(1, const)
        else:
            node.resize_inputs(2)
            node.replace_input_with(1, const)
    else:
        node.attributes["split"] = ir.AttrInt64s("split", sizes)


def _reset_shapes(model: ir.Model) -> None:
    """Forget inferred shapes of intermediate values so inference recomputes them."""
    graph_io = {v.name for v in model.graph.inputs} | {v.name for v in model.graph.outputs}
    for node in model.graph:
        for v in node.outputs:
            if v.name not in graph_io:
                v.shape = None


def predict_layers(analysis: Analysis, keep: np.ndarray) -> list:
    """The layers a keep mask would leave, computed from the analysis without building.

    Returns new ``Layer`` objects with pruned channel counts, MACs and params; the pruning
    tests check these against the analysis of the really pruned model.
    """
    in_kept: dict[str, int] = {}
    out_kept: dict[str, int] = {}
    for rec in analysis.graph.records:
        if rec.kind == "in":
            in_kept[rec.node] = int(keep[rec.ids].sum())
        elif rec.kind == "out":
            out_kept[rec.node] = int(keep[rec.ids].sum())
    result = []
    for lay in analysis.layers:
        cin = in_kept.get(lay.name, lay.in_channels)
        cout = out_kept.get(lay.name, lay.out_channels)
        if lay.is_depthwise:
            cin = cout
            groups = cout
        else:
            groups = lay.groups
        macs = lay.macs * (cin / lay.in_channels) * (cout / lay.out_channels)
        if lay.is_depthwise:
            macs = lay.macs * cout / lay.out_channels
        w_params = (lay.params - (lay.out_channels if lay.bias else 0))
        w_new = w_params * (cin / lay.in_channels) * (cout / lay.out_channels)
        if lay.is_depthwise:
            w_new = w_params * cout / lay.out_channels
        params = int(round(w_new)) + (cout if lay.bias else 0)
        result.append(dataclasses.replace(lay, in_channels=cin, out_channels=cout, groups=groups,
                                          macs=int(round(macs)), params=params))
    return result
