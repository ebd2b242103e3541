"""Model -> facts: compute layers with MACs and parameters, and channel-dependency groups."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from emomc_onnx.analysis.dependency import ChannelGraph, Group, build_channel_graph
from emomc_onnx.analysis import ops
from emomc_onnx.analysis.layers import Layer
from emomc_onnx.errors import ModelError

__all__ = ["Analysis", "analyze", "find_layers", "layer_from_node", "COMPUTE_OPS"]

logger = logging.getLogger(__name__)

COMPUTE_OPS = tuple(ops.COMPUTE_OPS)  # the registry's op types (analysis.ops)


@dataclasses.dataclass
class Analysis:
    """What the analysis found.

    Attributes:
        layers: compute layers in graph order.
        groups: channel-dependency groups (prunable or not, with reasons).
        graph: the channel graph (ids and cut records) the pruning pass replays.
        unknown_ops: node name -> why it blocks pruning.
        uncovered: node name -> why a weighted node is not a compute layer (no registry
            entry, or an entry that refuses it): not pruned, quantized or costed.
    """

    layers: list[Layer]
    groups: list[Group]
    graph: ChannelGraph
    unknown_ops: dict[str, str]
    uncovered: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def group_of_layer(self) -> dict[str, int]:
        """Layer name -> id of the group formed by its output channels."""
        out: dict[str, int] = {}
        for g in self.groups:
            for m in g.members:
                if m.role == "out":
                    out.setdefault(m.node, g.id)
        return out

    def to_dict(self) -> dict:
        gmap = self.group_of_layer()
        return {
            "layers": [
                {**dataclasses.asdict(layer), "group": gmap.get(layer.name)} for layer in self.layers
            ],
            "groups": [
                {
                    "id": g.id,
                    "channels": g.channels,
                    "prunable": g.prunable,
                    "reason": g.reason,
                    "sources": list(g.sources),
                    "members": [dataclasses.asdict(m) for m in g.members],
                }
                for g in self.groups
            ],
            "unknown_ops": self.unknown_ops,
            "uncovered": self.uncovered,
            "totals": {
                "layers": len(self.layers),
                "macs": self.macs,
                "params": self.params,
                "groups": len(self.groups),
                "prunable_groups": len(self.prunable_groups),
                "prunable_channels": sum(g.channels for g in self.prunable_groups),
            },
        }


def _static(dims, what: str, node: ir.Node) -> tuple[int, ...]:
    if dims is None or any(not isinstance(d, int) for d in dims):
        raise ModelError(
            f"layer {node.name!r} ({node.op_type}): {what} shape {dims if dims is None else list(map(str, dims))} "
            "is dynamic; fix it with --input-shape NAME:D0,D1,..."
        )
    return tuple(int(d) for d in dims)


def layer_from_node(node: ir.Node) -> Layer:
    """Describe one compute node (its weight must be an initializer)."""
    x, w = node.inputs[0], node.inputs[1]
    b = node.inputs[2] if len(node.inputs) > 2 else None
    wv = w.const_value
    wshape = tuple(wv.shape)
    bias_elems = int(np.prod(b.const_value.shape)) if b is not None and b.const_value is not None else 0
    params = int(np.prod(wshape)) + bias_elems
    op = node.op_type
    if op in ("Conv", "ConvTranspose"):
        xs = _static(x.shape[1:] if x.shape is not None else None, "input", node)
        ys = _static(node.outputs[0].shape[1:] if node.outputs[0].shape is not None else None, "output", node)
        group = int(node.attributes["group"].value) if "group" in node.attributes else 1
        k = wshape[2:]
        if op == "Conv":
            cout, cin = wshape[0], wshape[1] * group
        else:
            cin, cout = wshape[0], wshape[1] * group
        spatial_in, spatial_out = xs[1:], ys[1:]
        strides = (
            tuple(node.attributes["strides"].value) if "strides" in node.attributes else (1,) * len(k)
        )

        def two(t):
            t = tuple(t)
            if len(t) == 0:
                return (1, 1)
            if len(t) == 1:
                return (int(t[0]), 1)
            return (int(np.prod(t[:-1])), int(t[-1]))

        kk = int(np.prod(k))
        if op == "Conv":
            macs = kk * (cin // group) * cout * int(np.prod(spatial_out))
        else:
            macs = kk * cin * (cout // group) * int(np.prod(spatial_in))
        return Layer(node.name, op, w.name, b.name if b is not None else None, x.name,
                     node.outputs[0].name, int(cin), int(cout), group, two(k), two(strides),
                     two(spatial_in), two(spatial_out), int(macs), params)
    if op == "Gemm":
        trans_b = int(node.attributes["transB"].value) if "transB" in node.attributes else 0
        n_out, n_in = (wshape[0], wshape[1]) if trans_b else (wshape[1], wshape[0])
        return Layer(node.name, op, w.name, b.name if b is not None else None, x.name,
                     node.outputs[0].name, int(n_in), int(n_out), 1, (1, 1), (1, 1), (1, 1),
                     (1, 1), int(n_in * n_out), params)
    # MatMul: rows = product of the non-batch leading dims
    dims = x.shape
    if dims is None:
        raise ModelError(f"layer {node.name!r} (MatMul): input shape unknown; fix it with --input-shape")
    lead = list(dims[1:-1]) if len(dims) >= 3 else []
    rows = 1
    for d in lead:
        if not isinstance(d, int):
            raise ModelError(
                f"layer {node.name!r} (MatMul): input dimension {d} is dynamic; fix it with --input-shape"
            )
        rows *= d
    n_in, n_out = wshape
    bias = _matmul_bias(node, n_out)
    if bias is not None:
        params += n_out
    return Layer(node.name, op, w.name, bias, x.name, node.outputs[0].name, int(n_in), int(n_out), 1,
                 (1, 1), (1, 1), (1, 1), (rows, 1), int(n_in * n_out * rows), params)


def _matmul_bias(node: ir.Node, n_out: int) -> str | None:
    """The constant of an Add that directly follows a MatMul and adds one value per output."""
    uses = list(node.outputs[0].uses())
    if len(uses) != 1 or uses[0][0].op_type != "Add":
        return None
    add = uses[0][0]
    for v in add.inputs:
        if v is not None and v is not node.outputs[0] and v.const_value is not None:
            if int(np.prod(v.const_value.shape)) == n_out and v.const_value.shape[-1] == n_out:
                return v.name
    return None


def find_layers(model: ir.Model) -> list[Layer]:
    """The compute layers (Conv, ConvTranspose, Gemm, MatMul with constant weights)."""
    return [layer_from_node(node) for node in model.graph if ops.compute_op(node) is not None]


def analyze(model: ir.Model) -> Analysis:
    """Layers and channel-dependency groups of a normalised model."""
    layers = find_layers(model)
    graph = build_channel_graph(model)
    uncovered = {n.name: why for n in model.graph if (why := ops.missing_entry(n)) is not None}
    return Analysis(layers=layers, groups=graph.groups, graph=graph, unknown_ops=graph.unknown_ops,
                    uncovered=uncovered)
