"""Channel-dependency analysis (after Torch-Pruning's DepGraph), at channel granularity.

Every channel produced by a compute layer gets a global integer id. Ids flow through the
graph with the tensors that carry them: per-channel ops pass them on, Concat concatenates
them, Split/Slice cut them, Flatten/Reshape into a Gemm repeat each channel's id over its
block of features, Transpose/Squeeze move the axis. Ops that combine tensors elementwise
(residual Add, squeeze-excite Mul) tie the ids position by position. Connected ids form a
*component*: channels that must be removed together. Components touching the same set of
producers form a *group*, the unit the pruning plan and the search index.

Anything not understood (an unknown op, a reduction over channels, graph outputs, a graph
input joined to a layer's output) freezes the ids it touches, with a reason; a group with a
frozen id is unprunable. The same walk records every tensor that must be cut when channels
go (weights on the in/out axis, biases, per-channel parameters, Reshape/Slice/Split
constants, depthwise ``group`` attributes): the pruning pass replays those records.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

__all__ = [
    "ChannelGraph",
    "Group",
    "Member",
    "Record",
    "HANDLERS",
    "build_channel_graph",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TInfo:
    """The channel ids a tensor carries along one axis."""

    axis: int
    ids: np.ndarray


@dataclasses.dataclass(frozen=True)
class Record:
    """Something to cut when channels are removed.

    kind: "out" (a layer's weight along its output axis), "in" (a layer's weight along its
    input axis), "param" (a per-channel constant: bias, BN parameters, broadcast operand),
    "group" (a depthwise Conv's group attribute), "reshape" (a Reshape shape constant entry),
    "split" (a Split's sizes), "slice" (a Slice's start/end on the channel axis).
    """

    kind: str
    node: str
    value: str  # the tensor to cut (initializer name) or the node's constant input
    axis: int
    ids: np.ndarray
    extra: tuple = ()


@dataclasses.dataclass(frozen=True)
class Member:
    """One place a group's channels appear (for inspection)."""

    node: str
    op_type: str
    role: str  # "out", "in", "param", ...
    tensor: str
    channels: int


@dataclasses.dataclass
class Group:
    """Channels that must be pruned together.

    Attributes:
        id: index in ``ChannelGraph.groups``.
        components: component labels (one per prunable unit), in channel order of the
            first producer.
        sources: names of the layers whose output channels form the group.
        members: where the channels appear.
        prunable: False if any channel is frozen.
        reason: why not prunable.
    """

    id: int
    components: np.ndarray
    sources: tuple[str, ...]
    members: list[Member]
    prunable: bool
    reason: str | None

    @property
    def channels(self) -> int:
        """Number of prunable units (channels per producer)."""
        return int(len(self.components))


class ChannelGraph:
    """Channel ids, their coupling and the records that say what to cut."""

    def __init__(self, model: ir.Model) -> None:
        self.model = model
        self.n_ids = 0
        self.source_of: list[np.ndarray] = []  # per allocation: source index per id
        self.source_names: list[str] = []
        self._edges_a: list[np.ndarray] = []
        self._edges_b: list[np.ndarray] = []
        self._frozen: list[tuple[np.ndarray, str]] = []
        self.records: list[Record] = []
        self.info: dict[str, TInfo] = {}
        self.layer_nodes: list[ir.Node] = []
        self.unknown_ops: dict[str, str] = {}
        # results
        self.labels: np.ndarray = np.zeros(0, dtype=np.int64)
        self.frozen_reason: dict[int, str] = {}
        self.groups: list[Group] = []
        self.group_of_label: dict[int, int] = {}

    # ---- building blocks used by handlers ---------------------------------------------
    def new_ids(self, n: int, source: str, frozen: str | None = None) -> np.ndarray:
        ids = np.arange(self.n_ids, self.n_ids + n, dtype=np.int64)
        self.n_ids += n
        self.source_names.append(source)
        self.source_of.append(np.full(n, len(self.source_names) - 1, dtype=np.int64))
        if frozen:
            self.freeze(ids, frozen)
        return ids

    def freeze(self, ids: np.ndarray, reason: str) -> None:
        if len(ids):
            self._frozen.append((np.asarray(ids, dtype=np.int64), reason))

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        if len(a) != len(b):
            raise ValueError("union of different lengths")
        self._edges_a.append(np.asarray(a, dtype=np.int64))
        self._edges_b.append(np.asarray(b, dtype=np.int64))

    def get(self, value: ir.Value | None) -> TInfo | None:
        if value is None:
            return None
        return self.info.get(value.name)

    def set(self, value: ir.Value, info: TInfo | None) -> None:
        if info is not None and value is not None:
            self.info[value.name] = info

    def record(self, kind: str, node: ir.Node, value: str, axis: int, ids: np.ndarray,
               extra: tuple = ()) -> None:
        self.records.append(Record(kind, node.name, value, axis, np.asarray(ids), extra))

    # ---- solving -----------------------------------------------------------------------
    def solve(self) -> None:
        """Connected components of the id graph, frozen components, groups."""
        n = self.n_ids
        labels = np.arange(n, dtype=np.int64)
        if self._edges_a:
            a = np.concatenate(self._edges_a)
            b = np.concatenate(self._edges_b)
            while True:  # min-label propagation with pointer jumping
                m = np.minimum(labels[a], labels[b])
                new = labels.copy()
                np.minimum.at(new, a, m)
                np.minimum.at(new, b, m)
                new = new[new]
                while True:
                    nxt = new[new]
                    if np.array_equal(nxt, new):
                        break
                    new = nxt
                if np.array_equal(new, labels):
                    break
                labels = new
        self.labels = labels
        frozen: dict[int, str] = {}
        for ids, reason in self._frozen:
            for lab in np.unique(labels[ids]).tolist():
                frozen.setdefault(int(lab), reason)
        self.frozen_reason = frozen
        self._make_groups()

    def _make_groups(self) -> None:
        if self.n_ids == 0:
            return
        source = np.concatenate(self.source_of)
        labels = self.labels
        order = np.lexsort((source, labels))
        lab_sorted = labels[order]
        src_sorted = source[order]
        bounds = np.flatnonzero(np.diff(lab_sorted)) + 1
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [len(order)]])
        by_signature: dict[tuple[int, ...], list[int]] = {}
        for s, e in zip(starts.tolist(), ends.tolist()):
            sig = tuple(np.unique(src_sorted[s:e]).tolist())
            by_signature.setdefault(sig, []).append(int(lab_sorted[s]))
        layer_sources = {node.name for node in self.layer_nodes}
        groups: list[Group] = []
        for sig, labs in by_signature.items():
            names = tuple(self.source_names[i] for i in sig)
            if not any(nm in layer_sources for nm in names):
                continue  # only graph inputs / unknown-op outputs: nothing to prune
            labs_arr = np.array(sorted(labs), dtype=np.int64)
            reasons = [self.frozen_reason[lab] for lab in labs if lab in self.frozen_reason]
            gid = len(groups)
            groups.append(Group(gid, labs_arr, names, [], not reasons, reasons[0] if reasons else None))
            for lab in labs:
                self.group_of_label[lab] = gid
        self.groups = groups
        self._fill_members()

    def _fill_members(self) -> None:
        nodes = {n.name: n for n in self.model.graph}
        gid_of_label = np.full(self.n_ids, -1, dtype=np.int64)
        for lab, gid in self.group_of_label.items():
            gid_of_label[lab] = gid
        index: dict[tuple[int, str, str, str], int] = {}
        for rec in self.records:
            if rec.kind == "group" or not len(rec.ids):
                continue
            gids = gid_of_label[self.labels[rec.ids]]
            for gid, count in zip(*np.unique(gids[gids >= 0], return_counts=True)):
                group = self.groups[int(gid)]
                key = (int(gid), rec.node, rec.kind, rec.value)
                if key in index:
                    m = group.members[index[key]]
                    group.members[index[key]] = dataclasses.replace(m, channels=m.channels + int(count))
                    continue
                op = nodes[rec.node].op_type if rec.node in nodes else "?"
                index[key] = len(group.members)
                group.members.append(Member(rec.node, op, rec.kind, rec.value, int(count)))

    def keep_mask(self, keep_labels: np.ndarray) -> np.ndarray:
        """Boolean per id: True where the id's component is kept."""
        keep = np.zeros(self.n_ids, dtype=bool)
        lab_keep = np.zeros(self.n_ids, dtype=bool)
        lab_keep[keep_labels] = True
        keep[:] = lab_keep[self.labels]
        return keep


# --------------------------------------------------------------------------------------
# helpers on values
def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    try:
        return value.const_value.numpy()
    except (TypeError, ValueError, NotImplementedError):  # pragma: no cover - a dtype numpy lacks
        return None


def _dims(value: ir.Value | None) -> list[int | None] | None:
    if value is None or value.shape is None:
        return None
    return [d if isinstance(d, int) else None for d in value.shape]


def _rank(value: ir.Value | None) -> int | None:
    if value is None:
        return None
    if value.shape is not None:
        return len(value.shape)
    c = _const(value)
    return None if c is None else c.ndim


def _attr(node: ir.Node, name: str, default=None):
    attr = node.attributes.get(name)
    if attr is None:
        return default
    return attr.value


def _ints_input_or_attr(node: ir.Node, index: int, attr: str) -> list[int] | None | str:
    """Axes-like parameter from an input (newer opsets) or an attribute; 'dynamic' if unknown."""
    if len(node.inputs) > index and node.inputs[index] is not None:
        c = _const(node.inputs[index])
        if c is None:
            return "dynamic"
        return [int(x) for x in np.atleast_1d(c).tolist()]
    val = _attr(node, attr)
    return None if val is None else [int(x) for x in val]


def _is_activation(value: ir.Value | None) -> bool:
    return value is not None and value.const_value is None


Handler = Callable[[ChannelGraph, ir.Node], None]
HANDLERS: dict[str, Handler] = {}


def register(*op_types: str) -> Callable[[Handler], Handler]:
    """Register a propagation handler for ONNX op types (default domain)."""

    def deco(fn: Handler) -> Handler:
        for op in op_types:
            HANDLERS[op] = fn
        return fn

    return deco


def _unknown(g: ChannelGraph, node: ir.Node, reason: str | None = None) -> None:
    why = reason or f"unsupported op {node.domain + '.' if node.domain else ''}{node.op_type} ({node.name})"
    for v in node.inputs:
        info = g.get(v)
        if info is not None:
            g.freeze(info.ids, why)
    g.unknown_ops.setdefault(node.name, why)


# ---- compute layers --------------------------------------------------------------------
def _layer_in(g: ChannelGraph, node: ir.Node, x: ir.Value, expected_axis: int, w: str,
              w_axis: int) -> None:
    info = g.get(x)
    if info is None:
        return
    if info.axis != expected_axis:
        g.freeze(info.ids, f"channels on axis {info.axis} consumed by {node.op_type} {node.name}")
        return
    g.record("in", node, w, w_axis, info.ids)


def _bias_record(g: ChannelGraph, node: ir.Node, b: ir.Value | None, ids: np.ndarray) -> None:
    if b is not None and b.const_value is not None:
        g.record("param", node, b.name, b.const_value.numpy().ndim - 1, ids)


@register("Conv", "ConvTranspose")
def _conv(g: ChannelGraph, node: ir.Node) -> None:
    x, w = node.inputs[0], node.inputs[1]
    b = node.inputs[2] if len(node.inputs) > 2 else None
    wv = _const(w)
    if wv is None or (b is not None and b.const_value is None):
        _unknown(g, node, f"{node.op_type} {node.name} has a non-constant weight or bias")
        return
    group = int(_attr(node, "group", 1))
    transpose = node.op_type == "ConvTranspose"
    cin = wv.shape[0] if transpose else wv.shape[1] * group
    cout = wv.shape[1] * group if transpose else wv.shape[0]
    g.layer_nodes.append(node)
    info = g.get(x)
    if group == 1:
        _layer_in(g, node, x, 1, w.name, 0 if transpose else 1)
        ids = g.new_ids(cout, node.name)
        g.record("out", node, w.name, 1 if transpose else 0, ids)
        _bias_record(g, node, b, ids)
        g.set(node.outputs[0], TInfo(1, ids))
        return
    if not transpose and group == cin and cout == cin and info is not None and info.axis == 1:
        # depthwise: output channel c is computed from input channel c only
        g.record("out", node, w.name, 0, info.ids)
        _bias_record(g, node, b, info.ids)
        g.record("group", node, node.name, 0, info.ids)
        g.set(node.outputs[0], TInfo(1, info.ids))
        return
    reason = f"grouped {node.op_type} {node.name} (group={group}) is not pruned"
    if info is not None:
        g.freeze(info.ids, reason)
    g.set(node.outputs[0], TInfo(1, g.new_ids(cout, node.name, frozen=reason)))


@register("Gemm")
def _gemm(g: ChannelGraph, node: ir.Node) -> None:
    x, w = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 else None
    wv = _const(w)
    if wv is None or int(_attr(node, "transA", 0)) != 0 or (c is not None and c.const_value is None):
        _unknown(g, node, f"Gemm {node.name} with transA or non-constant weight/bias")
        return
    trans_b = int(_attr(node, "transB", 0))
    g.layer_nodes.append(node)
    n_out = wv.shape[0] if trans_b else wv.shape[1]
    _layer_in(g, node, x, 1, w.name, 1 if trans_b else 0)
    ids = g.new_ids(n_out, node.name)
    g.record("out", node, w.name, 0 if trans_b else 1, ids)
    if c is not None:
        cv = _const(c)
        if cv.ndim >= 1 and cv.shape[-1] == n_out and n_out > 1:
            g.record("param", node, c.name, cv.ndim - 1, ids)
        elif cv.size > 1 and not (cv.ndim >= 1 and cv.shape[-1] == 1):
            g.freeze(ids, f"Gemm {node.name} bias of shape {cv.shape} is not per-output")
    g.set(node.outputs[0], TInfo(1, ids))


@register("MatMul")
def _matmul(g: ChannelGraph, node: ir.Node) -> None:
    x, w = node.inputs[0], node.inputs[1]
    wv = _const(w)
    rank = _rank(x)
    if wv is None or wv.ndim != 2 or rank is None or rank < 2 or x.const_value is not None:
        _unknown(g, node, f"MatMul {node.name} between activations (or with a non-2-D weight)")
        info0 = g.get(node.inputs[1])
        if info0 is not None:
            g.freeze(info0.ids, f"MatMul {node.name} between activations")
        return
    g.layer_nodes.append(node)
    _layer_in(g, node, x, rank - 1, w.name, 0)
    ids = g.new_ids(wv.shape[1], node.name)
    g.record("out", node, w.name, 1, ids)
    g.set(node.outputs[0], TInfo(rank - 1, ids))


# ---- ops that pass channels on unchanged ------------------------------------------------
UNARY_OPS = (
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Erf", "Sqrt", "Exp", "Log", "Abs", "Neg", "Reciprocal", "Cast",
    "Dropout", "Identity", "Gelu", "Mish", "Floor", "Ceil", "Round", "Sign", "ThresholdedRelu",
    "Sin", "Cos", "Clip", "Not", "IsNaN", "IsInf", "Shrink", "CastLike",
)


@register(*UNARY_OPS)
def _unary(g: ChannelGraph, node: ir.Node) -> None:
    info = g.get(node.inputs[0])
    for out in node.outputs:
        g.set(out, info)


@register("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool",
          "GlobalLpPool")
def _pool(g: ChannelGraph, node: ir.Node) -> None:
    info = g.get(node.inputs[0])
    if info is not None and info.axis != 1:
        g.freeze(info.ids, f"{node.op_type} {node.name} pools over the channel axis")
        return
    g.set(node.outputs[0], info)


@register("BatchNormalization", "InstanceNormalization")
def _per_channel_norm(g: ChannelGraph, node: ir.Node) -> None:
    info = g.get(node.inputs[0])
    if info is None:
        return
    if info.axis != 1 or any(_const(v) is None for v in node.inputs[1:] if v is not None):
        g.freeze(info.ids, f"{node.op_type} {node.name} is not per-channel on axis 1")
        return
    for v in node.inputs[1:]:
        if v is not None:
            g.record("param", node, v.name, 0, info.ids)
    g.set(node.outputs[0], info)


@register("Pad")
def _pad(g: ChannelGraph, node: ir.Node) -> None:
    info = g.get(node.inputs[0])
    if info is None:
        return
    rank = _rank(node.inputs[0])
    pads = _ints_input_or_attr(node, 1, "pads")
    axes = _ints_input_or_attr(node, 3, "axes_unused")
    if pads == "dynamic" or axes == "dynamic" or rank is None:
        g.freeze(info.ids, f"Pad {node.name} with dynamic pads")
        return
    pads = pads or []
    axes_list = [a % rank for a in axes] if axes else list(range(rank))
    k = len(axes_list)
    if info.axis in axes_list:
        j = axes_list.index(info.axis)
        if len(pads) == 2 * k and (pads[j] != 0 or pads[j + k] != 0):
            g.freeze(info.ids, f"Pad {node.name} pads the channel axis")
            return
    g.set(node.outputs[0], info)


@register("Resize", "Upsample")
def _resize(g: ChannelGraph, node: ir.Node) -> None:
    info = g.get(node.inputs[0])
    if info is None:
        return
    sizes_idx = 3 if node.op_type == "Resize" else None
    if sizes_idx is not None and len(node.inputs) > sizes_idx and node.inputs[sizes_idx] is not None:
        g.freeze(info.ids, f"Resize {node.name} with explicit sizes")
        return
    g.set(node.outputs[0], info)


@register("Softmax", "LogSoftmax", "Hardmax", "LayerNormalization", "LRN",
          "MeanVarianceNormalization", "GroupNormalization")
def _normalising(g: ChannelGraph, node: ir.Node) -> None:
    info = g.get(node.inputs[0])
    if info is None:
        return
    rank = _rank(node.inputs[0]) or 0
    if node.op_type in ("LRN", "GroupNormalization", "MeanVarianceNormalization"):
        g.freeze(info.ids, f"{node.op_type} {node.name} mixes channels")
        return
    default = -1
    axis = int(_attr(node, "axis", default)) % max(rank, 1)
    covered = range(axis, rank) if node.op_type == "LayerNormalization" else [axis]
    if info.axis in covered:
        g.freeze(info.ids, f"{node.op_type} {node.name} normalises over the channel axis")
        return
    g.set(node.outputs[0], info)


# ---- elementwise, broadcasting ----------------------------------------------------------
@register("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Where", "Equal",
          "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "PRelu", "Mod",
          "BitShift")
def _elementwise(g: ChannelGraph, node: ir.Node) -> None:
    out = node.outputs[0]
    ranks = [_rank(v) for v in node.inputs if v is not None]
    r_out = _rank(out) or max((r for r in ranks if r is not None), default=0)
    tracked: list[tuple[int, TInfo]] = []
    for v in node.inputs:
        info = g.get(v)
        if info is not None:
            tracked.append((info.axis + r_out - (_rank(v) or r_out), info))
    if not tracked:
        return
    main_axis, main = tracked[0]
    for ax, info in tracked[1:]:
        if ax == main_axis and len(info.ids) == len(main.ids):
            g.union(main.ids, info.ids)
        else:
            reason = f"{node.op_type} {node.name} combines channels on different axes"
            g.freeze(info.ids, reason)
            g.freeze(main.ids, reason)
    n = len(main.ids)
    for v in node.inputs:
        if v is None or g.get(v) is not None:
            continue
        r = _rank(v)
        if r is None:
            g.freeze(main.ids, f"{node.op_type} {node.name}: operand {v.name} of unknown rank")
            continue
        ax = main_axis - (r_out - r)
        dims = _dims(v) or []
        dim = dims[ax] if 0 <= ax < len(dims) else 1
        if dim == 1:
            continue
        c = _const(v)
        if c is not None and dim == n:
            g.record("param", node, v.name, ax, main.ids)
        else:
            g.freeze(main.ids, f"{node.op_type} {node.name} joins the channels with "
                               f"{'constant' if c is not None else 'tensor'} {v.name} that is not pruned with them")
    g.set(out, TInfo(main_axis, main.ids))


# ---- structural -------------------------------------------------------------------------
@register("Concat")
def _concat(g: ChannelGraph, node: ir.Node) -> None:
    infos = [g.get(v) for v in node.inputs]
    if not any(infos):
        return  # no channels pass through (e.g. a shape computation)
    rank = _rank(node.outputs[0]) or _rank(node.inputs[0])
    if rank is None:
        _unknown(g, node, f"Concat {node.name} of unknown rank")
        return
    axis = int(_attr(node, "axis", 0)) % rank
    if all(i is None or i.axis == axis for i in infos):
        parts = []
        for v, info in zip(node.inputs, infos):
            if info is not None:
                parts.append(info.ids)
                continue
            dims = _dims(v)
            d = dims[axis] if dims and len(dims) > axis else None
            if d is None:
                _unknown(g, node, f"Concat {node.name}: input {v.name} has a dynamic size on the axis")
                return
            parts.append(g.new_ids(d, f"{node.name}:{v.name}", frozen=f"Concat {node.name} input {v.name} is not pruned"))
        g.set(node.outputs[0], TInfo(axis, np.concatenate(parts)))
        return
    # concatenation along another axis: the channel axes must line up like an Add
    tracked = [i for i in infos if i is not None]
    main = tracked[0]
    for info in tracked[1:]:
        if info.axis == main.axis and len(info.ids) == len(main.ids):
            g.union(main.ids, info.ids)
        else:
            g.freeze(info.ids, f"Concat {node.name} mixes channel axes")
            g.freeze(main.ids, f"Concat {node.name} mixes channel axes")
    if len(tracked) < len(infos):
        g.freeze(main.ids, f"Concat {node.name} joins channels with an untracked tensor")
    g.set(node.outputs[0], main)


@register("Split")
def _split(g: ChannelGraph, node: ir.Node) -> None:
    info = g.get(node.inputs[0])
    if info is None:
        return
    rank = _rank(node.inputs[0])
    axis = int(_attr(node, "axis", 0)) % (rank or 1)
    if axis != info.axis:
        for out in node.outputs:
            g.set(out, info)
        return
    sizes = _ints_input_or_attr(node, 1, "split")
    n = len(info.ids)
    k = len(node.outputs)
    if sizes == "dynamic":
        g.freeze(info.ids, f"Split {node.name} with dynamic sizes")
        return
    if not sizes:
        step = -(-n // k)
        sizes = [min(step, n - i * step) for i in range(k)]
    offsets = np.cumsum([0, *sizes])
    parts = [info.ids[offsets[i]:offsets[i + 1]] for i in range(k)]
    const_input = node.inputs[1].name if len(node.inputs) > 1 and node.inputs[1] is not None else ""
    g.record("split", node, const_input, axis, info.ids, tuple(tuple(p.tolist()) for p in parts))
    for out, p in zip(node.outputs, parts):
        g.set(out, TInfo(axis, p))


@register("Slice")
def _slice(g: ChannelGraph, node: ir.Node) -> None:
    info = g.get(node.inputs[0])
    if info is None:
        return
    rank = _rank(node.inputs[0]) or 1
    starts, ends = _const(node.inputs[1]), _const(node.inputs[2])
    axes = _const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
    steps = _const(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else None
    if starts is None or ends is None or (len(node.inputs) > 3 and node.inputs[3] is not None and axes is None):
        g.freeze(info.ids, f"Slice {node.name} with dynamic bounds")
        return
    axes_l = [int(a) % rank for a in (axes if axes is not None else range(len(starts)))]
    if info.axis not in axes_l:
        g.set(node.outputs[0], info)
        return
    j = axes_l.index(info.axis)
    step = int(steps[j]) if steps is not None else 1
    if step != 1:
        g.freeze(info.ids, f"Slice {node.name} with step {step} on the channel axis")
        return
    n = len(info.ids)
    s, e, _ = slice(int(starts[j]), int(ends[j])).indices(n)
    g.record("slice", node, node.inputs[1].name, info.axis, info.ids, (j, node.inputs[2].name, s, e))
    g.set(node.outputs[0], TInfo(info.axis, info.ids[s:e]))


def _prod(values: list[int | None]) -> int | None:
    p = 1
    for v in values:
        if v is None:
            return None
        p *= v
    return p


@register("Flatten")
def _flatten(g: ChannelGraph, node: ir.Node) -> None:
    info = g.get(node.inputs[0])
    if info is None:
        return
    dims = _dims(node.inputs[0])
    rank = len(dims) if dims is not None else None
    axis = int(_attr(node, "axis", 1)) % ((rank or 1) + 1)
    if dims is None or info.axis < axis:
        g.freeze(info.ids, f"Flatten {node.name} folds the channel axis into the batch")
        return
    inner = _prod(dims[info.axis + 1:])
    outer = _prod(dims[axis:info.axis])
    if inner is None or outer is None:
        g.freeze(info.ids, f"Flatten {node.name} of a tensor with dynamic dims")
        return
    g.set(node.outputs[0], TInfo(1, np.tile(np.repeat(info.ids, inner), outer)))


def _shape_entry_is_free(shape_value: ir.Value, position: int) -> bool:
    """True if entry ``position`` of a computed Reshape shape is a constant -1 or 0."""
    prod = shape_value.producer()
    if prod is None or prod.op_type != "Concat":
        return False
    offset = 0
    for v in prod.inputs:
        dims = _dims(v)
        length = dims[0] if dims and len(dims) == 1 else None
        if length is None:
            return False
        if offset <= position < offset + length:
            c = _const(v)
            return c is not None and int(np.atleast_1d(c)[position - offset]) in (-1,)
        offset += length
    return False


def _shape_entry_source(shape_value: ir.Value, position: int) -> tuple[str, int, int, int] | None:
    """Where entry ``position`` of a computed shape (a Concat of pieces, perhaps through a Cast,
    as tf2onnx and paddle2onnx write a dynamic batch) is a constant: (Concat node, its input
    index, offset in that input, value); None if it is not a constant there."""
    prod = shape_value.producer()
    while prod is not None and prod.op_type in ("Cast", "Identity"):
        prod = prod.inputs[0].producer() if prod.inputs[0] is not None else None
    if prod is None or prod.op_type != "Concat":
        return None
    offset = 0
    for i, v in enumerate(prod.inputs):
        length = _vec_len(v)
        if length is None:
            return None
        if offset <= position < offset + length:
            c = _const(v)
            if c is None:
                return None
            return prod.name, i, position - offset, int(np.atleast_1d(c)[position - offset])
        offset += length
    return None


def _vec_len(v: ir.Value | None, depth: int = 0) -> int | None:
    """Length of a 1-D shape-like tensor: its static shape, a constant's size, a Shape's rank, or
    a constant-bounds Slice / Cast of one (the dynamic batch piece of an exporter's shape)."""
    if v is None or depth > 4:
        return None
    dims = _dims(v)
    if dims and len(dims) == 1 and dims[0] is not None:
        return dims[0]
    c = _const(v)
    if c is not None:
        return int(np.atleast_1d(c).size)
    prod = v.producer()
    if prod is None:
        return None
    if prod.op_type in ("Cast", "Identity", "Neg", "Abs"):
        return _vec_len(prod.inputs[0], depth + 1)
    if prod.op_type == "Shape" and "start" not in prod.attributes and "end" not in prod.attributes:
        return _rank(prod.inputs[0])
    if prod.op_type == "Slice" and len(prod.inputs) >= 3:
        n = _vec_len(prod.inputs[0], depth + 1)
        starts, ends = _const(prod.inputs[1]), _const(prod.inputs[2])
        steps = _const(prod.inputs[4]) if len(prod.inputs) > 4 and prod.inputs[4] is not None else None
        if n is None or starts is None or ends is None or np.size(starts) != 1:
            return None
        step = int(np.atleast_1d(steps)[0]) if steps is not None else 1
        return len(range(n)[slice(int(np.atleast_1d(starts)[0]), int(np.atleast_1d(ends)[0]), step)])
    if prod.op_type == "Concat":
        parts = [_vec_len(x, depth + 1) for x in prod.inputs]
        return None if any(p is None for p in parts) else sum(parts)
    return None


def _record_shape_entry(g: ChannelGraph, node: ir.Node, shape_value: ir.Value, j: int, n_out: int,
                        info: TInfo, block: int, what: str) -> bool:
    """Record how a shape input's entry ``j`` (the channel count ``n_out``) follows the pruning:
    a constant shape is rewritten, a computed one through its Concat's constant piece; -1 / 0 /
    1 need nothing. False (and the channels frozen) if the entry cannot follow."""
    shape_const = _const(shape_value)
    if shape_const is not None:
        if int(shape_const[j]) not in (-1, 0, 1):
            g.record("reshape", node, shape_value.name, j, info.ids, (block,))
        return True
    src = _shape_entry_source(shape_value, j)
    if src is not None and src[3] in (-1, 0, 1):
        return True
    if src is not None and src[3] == n_out:
        g.record("reshape", node, shape_value.name, j, info.ids, (block, src[0], src[1], src[2]))
        return True
    g.freeze(info.ids, f"{what} {node.name} shape is computed and fixes the channel count")
    return False


@register("Reshape")
def _reshape(g: ChannelGraph, node: ir.Node) -> None:
    info = g.get(node.inputs[0])
    if info is None:
        return
    din, dout = _dims(node.inputs[0]), _dims(node.outputs[0])
    if din is None or dout is None:
        g.freeze(info.ids, f"Reshape {node.name} with unknown shapes")
        return
    a = info.axis
    n = len(info.ids)

    def prefix(d: list[int | None], k: int) -> tuple[int, int]:
        sym = sum(1 for x in d[:k] if x is None)
        return sym, int(np.prod([x for x in d[:k] if x is not None], dtype=np.int64))

    target = None
    for j in range(len(dout)):
        if prefix(dout, j) != prefix(din, a):
            continue
        if dout[j] is None:
            continue
        if dout[j] == n:
            target = (j, 1)
        else:
            inner = _prod(din[a + 1:])
            for k in range(a + 1, len(din) + 1):
                blk = _prod(din[a + 1:k])
                if blk is not None and dout[j] == n * blk:
                    target = (j, blk)
                    break
            del inner
        if target:
            break
    tile = 1
    if target is None and a >= 1 and a < len(dout):
        # positions merged into the channels, channel innermost (B, L*k, C) -> (B, L, k*C): a
        # byte/patch grouping as magika writes it; channel c appears at k*C offsets c + i*C
        j = a
        k = dout[j] // n if dout[j] is not None and dout[j] % n == 0 else None
        if (k and k > 1 and din[a - 1] is not None and dout[a - 1] is not None and din[a - 1] == dout[a - 1] * k
                and prefix(dout, a - 1) == prefix(din, a - 1) and _prod(dout[j + 1:]) == _prod(din[a + 1:])):
            target, tile = (j, 1), k
    if target is None:
        g.freeze(info.ids, _split_reason(node, din, dout, a, n, prefix))
        return
    j, block = target
    ids = np.tile(info.ids, tile) if tile > 1 else np.repeat(info.ids, block)
    if _const(node.inputs[1]) is None and _shape_entry_is_free(node.inputs[1], j):
        pass
    elif not _record_shape_entry(g, node, node.inputs[1], j, dout[j] or 0,
                                 TInfo(j, ids if tile > 1 else info.ids), block if tile == 1 else 1, "Reshape"):
        return
    g.set(node.outputs[0], TInfo(j, ids))


def _split_reason(node: ir.Node, din: list, dout: list, a: int, n: int, prefix) -> str:
    """Why a Reshape stops the channels: attention heads are named as such (Torch-Pruning
    prunes whole heads; here the channel ids follow one axis, so heads are not pruned)."""
    for j in range(len(dout) - 1):
        h, d = dout[j], dout[j + 1]
        if prefix(dout, j) == prefix(din, a) and h is not None and d is not None and h * d == n and h > 1:
            return (f"Reshape {node.name} splits the {n} channels into {h} heads of {d} (attention): "
                    "whole-head pruning is not supported, so the heads' projections keep all channels")
    return f"Reshape {node.name} splits or moves the channel axis"


@register("Transpose")
def _transpose(g: ChannelGraph, node: ir.Node) -> None:
    info = g.get(node.inputs[0])
    if info is None:
        return
    rank = _rank(node.inputs[0])
    perm = _attr(node, "perm")
    perm = list(perm) if perm is not None else list(reversed(range(rank or 0)))
    g.set(node.outputs[0], TInfo(perm.index(info.axis), info.ids))


@register("Squeeze", "Unsqueeze")
def _squeeze(g: ChannelGraph, node: ir.Node) -> None:
    info = g.get(node.inputs[0])
    if info is None:
        return
    axes = _ints_input_or_attr(node, 1, "axes")
    r_in = _rank(node.inputs[0])
    r_out = _rank(node.outputs[0])
    if axes == "dynamic" or r_in is None or r_out is None:
        g.freeze(info.ids, f"{node.op_type} {node.name} with dynamic axes")
        return
    if node.op_type == "Unsqueeze":
        axes_n = sorted(a % r_out for a in axes)
        kept = [i for i in range(r_out) if i not in axes_n]
        g.set(node.outputs[0], TInfo(kept[info.axis], info.ids))
        return
    dims = _dims(node.inputs[0]) or []
    axes_n = sorted(a % r_in for a in axes) if axes else [i for i, d in enumerate(dims) if d == 1]
    if info.axis in axes_n:
        g.freeze(info.ids, f"Squeeze {node.name} removes the channel axis")
        return
    g.set(node.outputs[0], TInfo(info.axis - sum(1 for a in axes_n if a < info.axis), info.ids))


@register("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
          "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin")
def _reduce(g: ChannelGraph, node: ir.Node) -> None:
    info = g.get(node.inputs[0])
    if info is None:
        return
    rank = _rank(node.inputs[0]) or 0
    keep = int(_attr(node, "keepdims", 1))
    if node.op_type in ("ArgMax", "ArgMin"):
        axes = [int(_attr(node, "axis", 0))]
    else:
        axes = _ints_input_or_attr(node, 1, "axes")
    if axes == "dynamic":
        g.freeze(info.ids, f"{node.op_type} {node.name} with dynamic axes")
        return
    if not axes:
        axes = [] if int(_attr(node, "noop_with_empty_axes", 0)) else list(range(rank))
    axes = [a % rank for a in axes]
    if info.axis in axes:
        why = ("its result depends on every channel" if node.op_type not in ("ReduceSum", "ReduceMean")
               else "a mean or variance over them (a LayerNorm written out op by op, as tf2onnx exports one) "
                    "changes when any is removed")
        g.freeze(info.ids, f"{node.op_type} {node.name} reduces over the channels: {why}")
        return
    shift = 0 if keep else sum(1 for a in axes if a < info.axis)
    g.set(node.outputs[0], TInfo(info.axis - shift, info.ids))


@register("Shape", "Size")
def _shape(g: ChannelGraph, node: ir.Node) -> None:
    """Shapes read at run time follow the pruned tensor: nothing to freeze."""


@register("Gather")
def _gather(g: ChannelGraph, node: ir.Node) -> None:
    info = g.get(node.inputs[0])
    if info is None:
        return
    rank = _rank(node.inputs[0]) or 1
    axis = int(_attr(node, "axis", 0)) % rank
    if axis == info.axis:
        g.freeze(info.ids, f"Gather {node.name} indexes the channel axis")
        return
    q = _rank(node.inputs[1]) or 0
    g.set(node.outputs[0], TInfo(info.axis + (q - 1 if axis < info.axis else 0), info.ids))


@register("Expand")
def _expand(g: ChannelGraph, node: ir.Node) -> None:
    info = g.get(node.inputs[0])
    if info is None:
        return
    dims = _dims(node.outputs[0])
    r_in = _rank(node.inputs[0]) or 0
    n_shape = _vec_len(node.inputs[1])
    r_out = len(dims) if dims is not None else (max(r_in, n_shape) if n_shape is not None and r_in else None)
    if r_out is None:
        g.freeze(info.ids, f"Expand {node.name} with unknown output shape")
        return
    j = info.axis + r_out - r_in
    out = TInfo(j, info.ids)
    pos = j - (r_out - n_shape) if n_shape is not None else None
    if pos is not None and pos >= 0 and not _record_shape_entry(g, node, node.inputs[1], pos, len(info.ids), out,
                                                                1, "Expand"):
        return
    g.set(node.outputs[0], out)


@register("Tile")
def _tile(g: ChannelGraph, node: ir.Node) -> None:
    info = g.get(node.inputs[0])
    if info is None:
        return
    reps = _const(node.inputs[1])
    if reps is None or int(reps[info.axis]) != 1:
        g.freeze(info.ids, f"Tile {node.name} repeats the channel axis")
        return
    g.set(node.outputs[0], info)


# --------------------------------------------------------------------------------------
def build_channel_graph(model: ir.Model) -> ChannelGraph:
    """Walk the graph once, propagating channel ids, then solve components and groups."""
    g = ChannelGraph(model)
    for node in model.graph:
        handler = HANDLERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if handler is None:
            _unknown(g, node)
            continue
        handler(g, node)
    for out in model.graph.outputs:
        info = g.get(out)
        if info is not None:
            g.freeze(info.ids, f"graph output {out.name}")
    g.solve()
    return g
