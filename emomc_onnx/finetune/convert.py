"""ONNX -> PyTorch: a module that runs an ONNX graph with torch ops, one registry entry per op.

Why our own converter rather than onnx2torch: onnx2torch imports torchvision at import time
(its NMS and RoIAlign converters), and torchvision wheels pin their own torch build, so the
extra would pull a second torch; and training here needs every float initializer as a
parameter *under its ONNX name* (weights go back into the same graph by name for the QDQ
export) plus hooks at named node inputs (fake quantization), which a renaming converter
would make us map back. The graph is run node by node in topological order; an op without
an entry in :data:`CONVERTERS` is refused up front with the list of missing ops.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from emomc_onnx.errors import UnsupportedOpError

__all__ = ["CONVERTERS", "OnnxModule", "unsupported_ops"]

logger = logging.getLogger(__name__)

Op = Callable[..., object]  # (node attributes, *inputs) -> tensor or tuple of tensors
CONVERTERS: dict[str, Op] = {}


def _register(*names: str) -> Callable[[Op], Op]:
    def deco(fn: Op) -> Op:
        for name in names:
            if name in CONVERTERS:
                raise ValueError(f"op {name} registered twice")
            CONVERTERS[name] = fn
        return fn

    return deco


def _ints(t: torch.Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _sym_pads(pads: Sequence[int], n: int) -> tuple[list[int] | None, list[int]]:
    """(symmetric padding for the torch op or None, F.pad list for asymmetric pads)."""
    begin, end = list(pads[:n]), list(pads[n:])
    if begin == end:
        return begin, []
    flat: list[int] = []
    for b, e in zip(reversed(begin), reversed(end)):
        flat += [b, e]
    return None, flat


def _auto_pads(a: Mapping, x: torch.Tensor, kernel: Sequence[int], strides: Sequence[int],
               dilations: Sequence[int]) -> list[int]:
    n = len(kernel)
    mode = a.get("auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode in ("NOTSET", ""):
        return list(a.get("pads", [0] * 2 * n))
    if mode == "VALID":
        return [0] * 2 * n
    begin, end = [], []
    for i in range(n):
        size = x.shape[2 + i]
        out = -(-size // strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
        small, big = total // 2, total - total // 2
        begin.append(small if mode == "SAME_UPPER" else big)
        end.append(big if mode == "SAME_UPPER" else small)
    return begin + end


@_register("Conv")
def _conv(a, x, w, b=None):
    n = w.dim() - 2
    strides = a.get("strides", [1] * n)
    dil = a.get("dilations", [1] * n)
    pads = _auto_pads(a, x, w.shape[2:], strides, dil)
    sym, flat = _sym_pads(pads, n)
    if flat:
        x = F.pad(x, flat)
        sym = [0] * n
    fn = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    return fn(x, w, b, strides, sym, dil, a.get("group", 1))


@_register("ConvTranspose")
def _conv_t(a, x, w, b=None):
    n = w.dim() - 2
    if a.get("output_shape") or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise UnsupportedOpError("ConvTranspose with output_shape or auto_pad is not converted")
    pads = a.get("pads", [0] * 2 * n)
    if pads[:n] != pads[n:]:
        raise UnsupportedOpError("ConvTranspose with asymmetric pads is not converted")
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1]
    return fn(x, w, b, a.get("strides", [1] * n), pads[:n], a.get("output_padding", [0] * n),
              a.get("group", 1), a.get("dilations", [1] * n))


@_register("Gemm")
def _gemm(a, x, w, c=None):
    if a.get("transA", 0):
        x = x.t()
    if a.get("transB", 0):
        w = w.t()
    y = a.get("alpha", 1.0) * (x @ w)
    return y if c is None else y + a.get("beta", 1.0) * c


@_register("MatMul")
def _matmul(a, x, w):
    return torch.matmul(x, w)


def _pool_pads(a, x, n):
    k = a["kernel_shape"]
    strides = a.get("strides", [1] * n)
    pads = _auto_pads(a, x, k, strides, a.get("dilations", [1] * n))
    return k, strides, pads


@_register("MaxPool")
def _maxpool(a, x):
    n = x.dim() - 2
    k, strides, pads = _pool_pads(a, x, n)
    sym, flat = _sym_pads(pads, n)
    if flat or any(p * 2 > kk for p, kk in zip(sym or [], k)):
        x = F.pad(x, flat or [v for p in reversed(sym) for v in (p, p)], value=float("-inf"))
        sym = [0] * n
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[n - 1]
    return fn(x, k, strides, sym, a.get("dilations", [1] * n), bool(a.get("ceil_mode", 0)))


@_register("AveragePool")
def _avgpool(a, x):
    n = x.dim() - 2
    k, strides, pads = _pool_pads(a, x, n)
    sym, flat = _sym_pads(pads, n)
    include = bool(a.get("count_include_pad", 0))
    if flat:
        if not include:
            raise UnsupportedOpError("AveragePool with asymmetric pads excluding padding is not converted")
        x = F.pad(x, flat)
        sym = [0] * n
    fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
    return fn(x, k, strides, sym, bool(a.get("ceil_mode", 0)), include)


@_register("GlobalAveragePool")
def _gap(a, x):
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@_register("GlobalMaxPool")
def _gmp(a, x):
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


@_register("BatchNormalization")
def _bn(a, x, scale, bias, mean, var):
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, a.get("epsilon", 1e-5))


@_register("LayerNormalization")
def _ln(a, x, scale, bias=None):
    axis = a.get("axis", -1) % x.dim()
    return F.layer_norm(x, x.shape[axis:], scale, bias, a.get("epsilon", 1e-5))


_UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf,
    "Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log, "Abs": torch.abs, "Neg": torch.neg,
    "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil,
    "Identity": lambda x: x, "Softplus": F.softplus, "HardSwish": F.hardswish, "IsNaN": torch.isnan,
}
def _unary(f: Callable[[torch.Tensor], torch.Tensor]) -> Op:
    return lambda a, x: f(x)


def _binary(f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Op:
    return lambda a, x, y: f(x, y)


for _name, _fn in _UNARY.items():
    CONVERTERS[_name] = _unary(_fn)
_BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Pow": torch.pow,
    "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le, "GreaterOrEqual": torch.ge,
    "And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor,
}
for _name, _fn in _BINARY.items():
    CONVERTERS[_name] = _binary(_fn)


@_register("Div")
def _div(a, x, y):
    if not x.is_floating_point() and not y.is_floating_point():
        return torch.div(x, y, rounding_mode="trunc")
    return x / y


@_register("LeakyRelu")
def _leaky(a, x):
    return F.leaky_relu(x, a.get("alpha", 0.01))


@_register("Elu")
def _elu(a, x):
    return F.elu(x, a.get("alpha", 1.0))


@_register("HardSigmoid")
def _hsig(a, x):
    return torch.clamp(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0.0, 1.0)


@_register("Gelu")
def _gelu(a, x):
    approx = a.get("approximate", b"none")
    return F.gelu(x, approximate=approx.decode() if isinstance(approx, bytes) else approx)


@_register("Clip")
def _clip(a, x, lo=None, hi=None):
    lo = a.get("min") if lo is None else lo
    hi = a.get("max") if hi is None else hi
    if lo is not None:
        x = torch.maximum(x, torch.as_tensor(lo, dtype=x.dtype))
    if hi is not None:
        x = torch.minimum(x, torch.as_tensor(hi, dtype=x.dtype))
    return x


@_register("Softmax")
def _softmax(a, x):
    return F.softmax(x, a.get("axis", -1))


@_register("Flatten")
def _flatten(a, x):
    axis = a.get("axis", 1) % max(x.dim(), 1) if x.dim() else 0
    lead = int(np.prod(x.shape[:axis])) if axis else 1
    return x.reshape(lead, -1)


@_register("Reshape")
def _reshape(a, x, shape):
    dims = _ints(shape)
    if not a.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(tuple(dims))


@_register("Transpose")
def _transpose(a, x):
    return x.permute(a.get("perm", list(range(x.dim()))[::-1]))


@_register("Concat")
def _concat(a, *xs):
    return torch.cat(xs, a["axis"])


@_register("Split")
def _split(a, x, split=None):
    axis = a.get("axis", 0)
    sizes = _ints(split) or a.get("split")
    if sizes is None:
        n = a.get("num_outputs")
        if n is None:
            raise UnsupportedOpError("Split without sizes needs num_outputs")
        return torch.tensor_split(x, n, axis)
    return torch.split(x, sizes, axis)


@_register("Slice")
def _slice(a, x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) or list(range(len(starts)))
    steps = _ints(steps) or [1] * len(starts)
    idx = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st < 0:
            raise UnsupportedOpError("Slice with negative steps is not converted")
        n = x.shape[ax]
        s = max(0, min(n, s + n if s < 0 else s))
        e = max(0, min(n, e + n if e < 0 else e))
        idx[ax] = slice(s, e, st)
    return x[tuple(idx)]


@_register("Squeeze")
def _squeeze(a, x, axes=None):
    axes = _ints(axes) or a.get("axes")
    if axes is None:
        return x.squeeze()
    for ax in sorted((v % x.dim() for v in axes), reverse=True):
        x = x.squeeze(ax)
    return x


@_register("Unsqueeze")
def _unsqueeze(a, x, axes=None):
    axes = _ints(axes) or a.get("axes")
    out_dim = x.dim() + len(axes)
    for ax in sorted(v % out_dim for v in axes):
        x = x.unsqueeze(ax)
    return x


def _reduce(a, x, axes=None, _op="ReduceMean"):
    axes = _ints(axes) or a.get("axes") or list(range(x.dim()))
    keep = bool(a.get("keepdims", 1))
    if _op == "ReduceMax":
        return x.amax(dim=axes, keepdim=keep)
    return (x.sum if _op == "ReduceSum" else x.mean)(dim=axes, keepdim=keep)


@_register("Pad")
def _pad(a, x, pads=None, value=None, axes=None):
    if axes is not None:
        raise UnsupportedOpError("Pad with axes is not converted")
    pads = _ints(pads) or a.get("pads")
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    n = x.dim()
    flat: list[int] = []
    for i in reversed(range(n)):
        flat += [pads[i], pads[i + n]]
    if mode == "constant":
        return F.pad(x, flat, value=float(value) if value is not None and value.numel() else 0.0)
    return F.pad(x, flat, mode={"reflect": "reflect", "edge": "replicate"}[mode])


@_register("Cast")
def _cast(a, x):
    dtype = onnx.helper.tensor_dtype_to_np_dtype(a["to"])
    return x.to(torch.from_numpy(np.zeros(0, dtype)).dtype)


@_register("Shape")
def _shape(a, x):
    return torch.tensor(list(x.shape)[a.get("start", 0):a.get("end", None)], dtype=torch.int64)


@_register("Gather")
def _gather(a, x, idx):
    axis = a.get("axis", 0) % x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    return torch.index_select(x, axis, idx.reshape(-1)).reshape(
        (*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))


@_register("GatherElements")
def _gather_elements(a, x, idx):
    axis = a.get("axis", 0) % x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    return torch.gather(x, axis, idx.long())


@_register("GatherND")
def _gather_nd(a, x, idx):
    b = a.get("batch_dims", 0)
    idx = idx.long()
    k = idx.shape[-1]
    idx = torch.where(idx < 0, idx + torch.tensor(x.shape[b:b + k]), idx)
    lead = x.shape[:b]
    xs = x.reshape(-1, *x.shape[b:])  # batch dims flattened
    ids = idx.reshape(xs.shape[0], -1, k)  # per batch: the index tuples
    batch = torch.arange(xs.shape[0]).unsqueeze(1).expand(-1, ids.shape[1])
    picked = xs[(batch, *ids.unbind(-1))]  # [B, n, *rest]
    return picked.reshape(*lead, *idx.shape[b:-1], *x.shape[b + k:])


@_register("Dropout")
def _dropout(a, x, *_):
    return x


@_register("Resize")
def _resize(a, x, roi=None, scales=None, sizes=None):
    mode = a.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "nearest":
        raise UnsupportedOpError(f"Resize mode {mode} is not converted")
    if sizes is not None and sizes.numel():
        return F.interpolate(x, size=_ints(sizes)[2:], mode="nearest")
    return F.interpolate(x, scale_factor=[float(s) for s in scales.tolist()[2:]], mode="nearest")


def _reducer(name: str) -> Op:
    return lambda a, *xs: _reduce(a, *xs, _op=name)


for _op in ("ReduceMean", "ReduceSum", "ReduceMax"):
    CONVERTERS[_op] = _reducer(_op)
CONVERTERS["LogSoftmax"] = lambda a, x: F.log_softmax(x, a.get("axis", -1))


CONVERTERS["Max"] = lambda a, *xs: functools.reduce(torch.maximum, xs)
CONVERTERS["Min"] = lambda a, *xs: functools.reduce(torch.minimum, xs)


@_register("Where")
def _where(a, cond, x, y):
    return torch.where(cond.bool(), x, y)


@_register("Expand")
def _expand(a, x, shape):
    return torch.broadcast_to(x, torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape))))


@_register("Range")
def _range(a, start, limit, delta):
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


@_register("ConstantOfShape")
def _constant_of_shape(a, shape):
    value = a.get("value")
    arr = numpy_helper.to_array(value) if value is not None else np.zeros(1, np.float32)
    return torch.full(_ints(shape), arr.reshape(-1)[0].item(), dtype=torch.from_numpy(arr).dtype)


def _rnn_setup(a, op: str, x, seq_lens):
    """Checks shared by LSTM and GRU; (x as [seq, batch, in], directions, layout)."""
    for key, default in (("clip", None), ("input_forget", 0)):
        if a.get(key, default) != default:
            raise UnsupportedOpError(f"{op} with {key} is not converted")
    acts = [v.decode() if isinstance(v, bytes) else v for v in a.get("activations", [])]
    default = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}[op]
    if acts and acts != default * (len(acts) // len(default)):
        raise UnsupportedOpError(f"{op} with activations {acts} is not converted (only the defaults)")
    direction = a.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    layout = a.get("layout", 0)
    if layout:
        x = x.transpose(0, 1)
    if seq_lens is not None and seq_lens.numel() and bool((seq_lens != x.shape[0]).any()):
        raise UnsupportedOpError(f"{op} with sequence_lens shorter than the sequence is not converted")
    dirs = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]
    return x, dirs, layout


def _rnn_outputs(ys, hs, cs, layout):
    y = torch.stack(ys, 1)  # [seq, D, batch, H]
    h = torch.stack(hs, 0)  # [D, batch, H]
    c = torch.stack(cs, 0) if cs else None
    if layout:
        y = y.permute(2, 0, 1, 3)
        h = h.transpose(0, 1)
        c = c.transpose(0, 1) if c is not None else None
    return (y, h, c) if c is not None else (y, h)


@_register("LSTM")
def _lstm(a, x, w, r, b=None, seq_lens=None, h0=None, c0=None, p=None):
    """ONNX LSTM (gates i, o, f, c; optional peepholes), unrolled over the sequence."""
    x, dirs, layout = _rnn_setup(a, "LSTM", x, seq_lens)
    if layout:  # batch-first states too
        h0, c0 = (s.transpose(0, 1) if s is not None else None for s in (h0, c0))
    hidden = r.shape[-1]
    batch = x.shape[1]
    ys, hs, cs = [], [], []
    for d, rev in enumerate(dirs):
        bias = (b[d, :4 * hidden] + b[d, 4 * hidden:]) if b is not None else 0.0
        h = h0[d] if h0 is not None else x.new_zeros(batch, hidden)
        c = c0[d] if c0 is not None else x.new_zeros(batch, hidden)
        pi, po, pf = (p[d, :hidden], p[d, hidden:2 * hidden], p[d, 2 * hidden:]) if p is not None else (0.0,) * 3
        xw = torch.matmul(x, w[d].t()) + bias  # [seq, batch, 4H], all steps at once
        out = [None] * x.shape[0]
        steps = range(x.shape[0] - 1, -1, -1) if rev else range(x.shape[0])
        for t in steps:
            gi, go, gf, gc = (xw[t] + h @ r[d].t()).chunk(4, -1)
            i = torch.sigmoid(gi + pi * c)
            f = torch.sigmoid(gf + pf * c)
            c = f * c + i * torch.tanh(gc)
            o = torch.sigmoid(go + po * c)
            h = o * torch.tanh(c)
            out[t] = h
        ys.append(torch.stack(out, 0))
        hs.append(h)
        cs.append(c)
    return _rnn_outputs(ys, hs, cs, layout)


@_register("GRU")
def _gru(a, x, w, r, b=None, seq_lens=None, h0=None):
    """ONNX GRU (gates z, r, h; linear_before_reset either way), unrolled over the sequence."""
    x, dirs, layout = _rnn_setup(a, "GRU", x, seq_lens)
    if layout and h0 is not None:  # batch-first state too
        h0 = h0.transpose(0, 1)
    hidden = r.shape[-1]
    batch = x.shape[1]
    lbr = a.get("linear_before_reset", 0)
    ys, hs = [], []
    for d, rev in enumerate(dirs):
        wb = b[d, :3 * hidden] if b is not None else x.new_zeros(3 * hidden)
        rb = b[d, 3 * hidden:] if b is not None else x.new_zeros(3 * hidden)
        h = h0[d] if h0 is not None else x.new_zeros(batch, hidden)
        xw = torch.matmul(x, w[d].t()) + wb
        rz, rr, rh = r[d].split(hidden, 0)
        bz, br, bh = rb.split(hidden, 0)
        out = [None] * x.shape[0]
        steps = range(x.shape[0] - 1, -1, -1) if rev else range(x.shape[0])
        for t in steps:
            xz, xr, xh = xw[t].chunk(3, -1)
            z = torch.sigmoid(xz + h @ rz.t() + bz)
            rg = torch.sigmoid(xr + h @ rr.t() + br)
            hh = torch.tanh(xh + (rg * (h @ rh.t() + bh) if lbr else (rg * h) @ rh.t() + bh))
            h = (1 - z) * hh + z * h
            out[t] = h
        ys.append(torch.stack(out, 0))
        hs.append(h)
    return _rnn_outputs(ys, hs, [], layout)


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {at.name: onnx.helper.get_attribute_value(at) for at in node.attribute}


def unsupported_ops(proto: onnx.ModelProto) -> list[str]:
    """Op types of ``proto`` the converter has no entry for (sorted, each once)."""
    return sorted({n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                   for n in proto.graph.node
                   if n.op_type not in CONVERTERS or n.domain not in ("", "ai.onnx")})


Hook = Callable[[torch.Tensor], torch.Tensor]


class OnnxModule(nn.Module):
    """Runs a float ONNX graph with torch ops.

    Float initializers listed in ``trainable`` (all float initializers by default) become
    parameters, the rest buffers; :meth:`onnx_tensors` gives them back under their ONNX
    names. ``input_hooks[(node name, input index)]`` transforms what a node reads (the
    fine-tuner's fake quantizers), so the graph itself is never edited.
    """

    def __init__(self, proto: onnx.ModelProto, trainable: set[str] | None = None) -> None:
        super().__init__()
        missing = unsupported_ops(proto)
        if missing:
            raise UnsupportedOpError(f"the fine-tuner cannot convert these ops to PyTorch: "
                                     f"{', '.join(missing)}")
        g = proto.graph
        self.params = nn.ParameterDict()
        self._keys: dict[str, str] = {}  # ONNX name -> attribute key
        self._consts: dict[str, str] = {}
        for i, t in enumerate(g.initializer):
            arr = numpy_helper.to_array(t)
            tensor = torch.from_numpy(np.array(arr, copy=True))
            key = f"t{i}"
            if tensor.is_floating_point() and (trainable is None or t.name in trainable):
                self.params[key] = nn.Parameter(tensor)
                self._keys[t.name] = key
            else:
                self.register_buffer(key, tensor, persistent=False)
                self._consts[t.name] = key
        self.nodes: list[tuple[str, str, list[str], list[str], dict[str, object]]] = []
        for k, node in enumerate(g.node):
            a = _attrs(node)
            if node.op_type == "Constant":
                val = a.get("value")
                if val is None:
                    raise UnsupportedOpError(f"Constant {node.name!r} without a tensor value is not converted")
                key = f"c{k}"
                self.register_buffer(key, torch.from_numpy(np.array(numpy_helper.to_array(val), copy=True)),
                                     persistent=False)
                self._consts[node.output[0]] = key
                continue
            self.nodes.append((node.name, node.op_type, list(node.input), list(node.output), a))
        self.inputs = [v.name for v in g.input if v.name not in self._keys and v.name not in self._consts]
        self.outputs = [v.name for v in g.output]
        self.input_hooks: dict[tuple[str, int], Hook] = {}

    def onnx_tensors(self) -> dict[str, torch.Tensor]:
        """ONNX initializer name -> its current parameter."""
        return {name: self.params[key] for name, key in self._keys.items()}

    def forward(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        env: dict[str, torch.Tensor] = dict(zip(self.inputs, xs))
        for name, key in self._keys.items():
            env[name] = self.params[key]
        for name, key in self._consts.items():
            env[name] = getattr(self, key)
        hooks = self.input_hooks
        for name, op, ins, outs, a in self.nodes:
            args = []
            for i, t in enumerate(ins):
                v = env[t] if t else None
                hook = hooks.get((name, i))
                args.append(hook(v) if hook is not None and v is not None else v)
            while args and args[-1] is None:
                args.pop()
            res = CONVERTERS[op](a, *args)
            if isinstance(res, (tuple, list)):
                for o, r in zip(outs, res):
                    env[o] = r
            else:
                env[outs[0]] = res
        return [env[o] for o in self.outputs]
