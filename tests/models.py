"""Tiny fixture models, exported from PyTorch modules or written as ONNX text; cached per process.

Each torch fixture has random weights (fixed seed) and BatchNorm layers with non-trivial
running statistics, so BN folding at import is really exercised. ``Fixture.torch_macs`` and
``torch_params`` are counted independently on the torch module with forward hooks (Conv2d:
kh*kw*Cin/groups*Cout*Ho*Wo MACs; Linear: in*out*rows), params = weights + one bias per output
channel (a Conv followed by BN gets a bias when BN is folded into it).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import tempfile
from collections.abc import Callable

import numpy as np
import onnx
import onnx.parser

_CACHE = pathlib.Path(tempfile.mkdtemp(prefix="emomc-fixtures-"))


@dataclasses.dataclass(frozen=True)
class Fixture:
    name: str
    path: pathlib.Path
    proto: onnx.ModelProto | None
    input_shapes: dict[str, tuple[int, ...]]
    module: object | None = None
    opset: int = 17
    torch_macs: int | None = None
    torch_params: int | None = None
    fixed_shapes: dict[str, tuple[int, ...]] | None = None
    dynamic_batch: bool = True

    def inputs(self, n: int, seed: int) -> dict[str, np.ndarray]:
        """Random inputs; ``n`` samples where the batch is dynamic."""
        rng = np.random.default_rng(seed)
        feeds = {}
        for name, shape in self.input_shapes.items():
            shape = (n, *shape[1:]) if self.dynamic_batch else shape
            feeds[name] = rng.standard_normal(shape).astype(np.float32)
        return feeds


# ---------------------------------------------------------------- torch modules
def _torch_modules():
    import torch
    from torch import nn

    def cbr(cin, cout, k=3, s=1, groups=1):
        return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU())

    class VGG(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(cbr(3, 16), cbr(16, 16), nn.MaxPool2d(2), cbr(16, 32),
                                          cbr(32, 32), nn.MaxPool2d(2))
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 24), nn.ReLU(), nn.Linear(24, 10))

        def forward(self, x):
            return self.head(self.features(x))

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = cbr(cin, cout, 3, stride)
            self.c2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
            self.short = None
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            s = x if self.short is None else self.short(x)
            return torch.relu(self.c2(self.c1(x)) + s)

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = cbr(3, 16)
            self.b1 = Basic(16, 16, 1)
            self.b2 = Basic(16, 32, 2)
            self.b3 = Basic(32, 32, 1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = self.b3(self.b2(self.b1(self.stem(x))))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    class SE(nn.Module):
        def __init__(self, c, r=4):
            super().__init__()
            self.fc1 = nn.Conv2d(c, c // r, 1)
            self.fc2 = nn.Conv2d(c // r, c, 1)

        def forward(self, x):
            g = nn.functional.adaptive_avg_pool2d(x, 1)
            g = nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(g))))
            return x * g

    class InvRes(nn.Module):
        def __init__(self, c, e):
            super().__init__()
            self.expand = nn.Sequential(nn.Conv2d(c, c * e, 1, bias=False), nn.BatchNorm2d(c * e), nn.Hardswish())
            self.dw = nn.Sequential(nn.Conv2d(c * e, c * e, 3, 1, 1, groups=c * e, bias=False),
                                    nn.BatchNorm2d(c * e), nn.Hardswish())
            self.se = SE(c * e)
            self.project = nn.Sequential(nn.Conv2d(c * e, c, 1, bias=False), nn.BatchNorm2d(c))

        def forward(self, x):
            return x + self.project(self.se(self.dw(self.expand(x))))

    class MobileNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = cbr(3, 16, 3, 2)
            self.b1 = InvRes(16, 2)
            self.b2 = InvRes(16, 3)
            self.head = nn.Conv2d(16, 32, 1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = nn.functional.hardswish(self.head(self.b2(self.b1(self.stem(x)))))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    class DenseNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = cbr(3, 12)
            self.a = cbr(12, 8, 1)
            self.b = nn.Sequential(cbr(12, 6, 1), cbr(6, 10, 3))
            self.c = cbr(12, 4, 3)
            self.merge = cbr(12 + 8 + 10 + 4, 16, 1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            s = self.stem(x)
            x = torch.cat([s, self.a(s), self.b(s), nn.functional.max_pool2d(self.c(s), 3, 1, 1)], 1)
            x = self.merge(x)
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    class Yolo(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = cbr(3, 32)
            self.m = nn.Sequential(cbr(16, 16, 1), cbr(16, 16, 3))
            self.out = cbr(48, 24, 1)
            self.det = nn.Conv2d(24, 8, 1)

        def forward(self, x):
            x = self.stem(x)
            a, b = torch.split(x, 16, dim=1)
            y = self.m(b)
            return self.det(self.out(torch.cat([a, b, y], 1)))

    class FFN(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(32)
            self.fc1 = nn.Linear(32, 64)
            self.fc2 = nn.Linear(64, 32)
            self.head = nn.Linear(32, 8)

        def forward(self, x):
            h = x + self.fc2(nn.functional.gelu(self.fc1(self.norm(x))))
            return self.head(h)

    class Bottleneck(nn.Module):
        def __init__(self, cin, mid, stride):
            super().__init__()
            cout = mid * 4
            self.body = nn.Sequential(cbr(cin, mid, 1), cbr(mid, mid, 3, stride),
                                      nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.short = None
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            return torch.relu(self.body(x) + (x if self.short is None else self.short(x)))

    class ResNetBig(nn.Module):
        def __init__(self, blocks, bottleneck, width=64):
            super().__init__()
            self.stem = nn.Sequential(cbr(3, width, 7, 2), nn.MaxPool2d(3, 2, 1))
            layers, cin = [], width
            for i, n in enumerate(blocks):
                mid = width * 2**i
                for j in range(n):
                    stride = 2 if j == 0 and i > 0 else 1
                    if bottleneck:
                        layers.append(Bottleneck(cin, mid, stride))
                        cin = mid * 4
                    else:
                        layers.append(Basic(cin, mid, stride))
                        cin = mid
            self.layers = nn.Sequential(*layers)
            self.fc = nn.Linear(cin, 1000)

        def forward(self, x):
            x = self.layers(self.stem(x))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    return {
        "vgg": (VGG, (1, 3, 16, 16)),
        "resnet": (ResNet, (1, 3, 16, 16)),
        "mobilenet": (MobileNet, (1, 3, 32, 32)),
        "densenet": (DenseNet, (1, 3, 12, 12)),
        "yolo": (Yolo, (1, 3, 16, 16)),
        "transformer_ffn": (FFN, (1, 16, 32)),
        "resnet18_like": (lambda: ResNetBig([2, 2, 2, 2], False), (1, 3, 224, 224)),
        "resnet50_like": (lambda: ResNetBig([3, 4, 6, 3], True), (1, 3, 224, 224)),
    }


def _count(module, shape) -> tuple[int, int]:
    import torch
    from torch import nn

    macs = 0
    params = 0
    hooks = []

    def conv_hook(m, inp, out):
        nonlocal macs
        kh, kw = m.kernel_size
        macs += kh * kw * (m.in_channels // m.groups) * m.out_channels * out.shape[2] * out.shape[3]

    def lin_hook(m, inp, out):
        nonlocal macs
        rows = int(np.prod(out.shape[1:-1])) if out.dim() > 2 else 1
        macs += m.in_features * m.out_features * rows

    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
            params += m.weight.numel() + m.out_channels
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
            params += m.weight.numel() + (m.out_features if m.bias is not None else 0)
    with torch.no_grad():
        module(torch.zeros(shape))
    for h in hooks:
        h.remove()
    return macs, params


def _export_torch(name: str, opset: int) -> Fixture:
    import torch

    torch.manual_seed(0)
    cls, shape = _torch_modules()[name]
    module = cls()
    module.train()
    with torch.no_grad():  # non-trivial BN statistics
        for _ in range(3):
            module(torch.randn(4, *shape[1:]) * 2 + 0.5)
    module.eval()
    path = _CACHE / f"{name}_op{opset}.onnx"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(shape),), str(path), opset_version=opset, dynamo=False,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    macs, params = _count(module, shape)
    return Fixture(name, path, onnx.load(str(path)), {"input": shape}, module, opset, macs, params)


# ---------------------------------------------------------------- text models
def _text(name: str, text: str, weights: dict[str, tuple[int, ...]], shapes: dict[str, tuple[int, ...]],
          fixed: dict | None = None, consts: dict[str, np.ndarray] | None = None) -> Fixture:
    proto = onnx.parser.parse_model(text)
    for cname, value in (consts or {}).items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(value, cname))
    rng = np.random.default_rng(1)
    for wname, shape in weights.items():
        arr = rng.standard_normal(shape).astype(np.float32) * 0.5
        if wname.endswith("var"):
            arr = np.abs(arr) + 0.5
        proto.graph.initializer.append(onnx.numpy_helper.from_array(arr, wname))
    onnx.checker.check_model(proto)
    path = _CACHE / f"{name}.onnx"
    onnx.save(proto, str(path))
    opset = next(o.version for o in proto.opset_import if o.domain == "")
    first = proto.graph.input[0].type.tensor_type.shape.dim[0]
    return Fixture(name, path, proto, shapes, None, opset, fixed_shapes=fixed,
                   dynamic_batch=bool(first.dim_param))


def _h(opset: int = 17, extra: str = "") -> str:
    return f'<ir_version: 8, opset_import: ["" : {opset}{extra}]>\n'


TEXT: dict[str, Callable[[], Fixture]] = {
    "flatten_gemm": lambda: _text("flatten_gemm", _h() + """
        g (float[N,3,6,6] input) => (float[N,10] output) {
          a = Conv <pads=[1,1,1,1]> (input, w1, b1)
          r = Relu(a)
          c = Conv <pads=[1,1,1,1]> (r, w2)
          r2 = Relu(c)
          f = Flatten <axis=1> (r2)
          output = Gemm <transB=1> (f, wf, bf)
        }""", {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (6, 8, 3, 3), "wf": (10, 216), "bf": (10,)},
        {"input": (1, 3, 6, 6)}),
    "reshape_gemm": lambda: _text("reshape_gemm", _h() + """
        g (float[2,3,4,4] input) => (float[2,5] output) {
          a = Conv <pads=[1,1,1,1]> (input, w1)
          r = Relu(a)
          f = Reshape(r, shape)
          output = MatMul(f, wm)
        }""", {"w1": (8, 3, 3, 3), "wm": (128, 5)}, {"input": (2, 3, 4, 4)},
        consts={"shape": np.array([2, 128], np.int64)}),
    "unknown_op": lambda: _text("unknown_op", _h() + """
        g (float[1,3,8,8] input) => (float[1,4,8,8] output) {
          a = Conv (input, w1)
          u = LpNormalization <axis=1> (a)
          b = Conv (u, w2)
          r = Relu(b)
          output = Conv (r, w3)
        }""", {"w1": (8, 3, 1, 1), "w2": (8, 8, 1, 1), "w3": (4, 8, 1, 1)}, {"input": (1, 3, 8, 8)}),
    "constant_weights": lambda: _text("constant_weights", _h() + """
        g (float[1,3,8,8] input) => (float[1,4,8,8] output) {
          w1 = Constant <value = float[4,3,1,1] {0.1,0.2,0.3,-0.1,0.5,0.4,0.2,-0.3,0.6,0.7,-0.2,0.1}> ()
          a = Conv (input, w1)
          r = Relu(a)
          w2 = Constant <value = float[4,4,1,1] {1,0,0,0, 0,1,0,0, 0,0,1,0, 0.5,0.5,0.5,0.5}> ()
          output = Conv (r, w2)
        }""", {}, {"input": (1, 3, 8, 8)}),
    "unfolded_bn": lambda: _text("unfolded_bn", _h() + """
        g (float[N,3,8,8] input) => (float[N,4,8,8] output) {
          a = Conv <pads=[1,1,1,1]> (input, w1)
          i1 = Identity(a)
          i2 = Identity(i1)
          bn = BatchNormalization (i2, scale, bias, mean, var)
          r = Relu(bn)
          p = MaxPool <kernel_shape=[2,2], strides=[1,1], pads=[0,0,1,1]> (r)
          bn2 = BatchNormalization (p, scale2, bias2, mean2, var2)
          output = Conv (bn2, w2)
        }""", {"w1": (8, 3, 3, 3), "scale": (8,), "bias": (8,), "mean": (8,), "var": (8,),
               "scale2": (8,), "bias2": (8,), "mean2": (8,), "var2": (8,), "w2": (4, 8, 1, 1)},
        {"input": (1, 3, 8, 8)}),
    "erf_gelu": lambda: _text("erf_gelu", _h() + """
        g (float[N,16] input) => (float[N,8] output) {
          h = MatMul(input, w1)
          hb = Add(h, b1)
          s = Div(hb, sqrt2)
          e = Erf(s)
          e1 = Add(e, one)
          m = Mul(hb, e1)
          gl = Mul(m, half)
          output = MatMul(gl, w2)
        }""", {"w1": (16, 32), "b1": (32,), "w2": (32, 8)}, {"input": (1, 16)},
        consts={"sqrt2": np.array(np.sqrt(2.0), np.float32), "one": np.array(1.0, np.float32),
                "half": np.array(0.5, np.float32)}),
    "dynamic_spatial": lambda: _text("dynamic_spatial", _h() + """
        g (float[N,3,H,W] input) => (float[N,10] output) {
          a = Conv <pads=[1,1,1,1]> (input, w1)
          r = Relu(a)
          p = GlobalAveragePool(r)
          f = Flatten(p)
          output = Gemm <transB=1> (f, wf)
        }""", {"w1": (8, 3, 3, 3), "wf": (10, 8)}, {"input": (1, 3, 8, 8)},
        fixed={"input": (1, 3, 8, 8)}),
    "opset11": lambda: _text("opset11", _h(11) + """
        g (float[1,3,8,8] input) => (float[1,4,4,4] output) {
          a = Conv <pads=[1,1,1,1]> (input, w1)
          r = Relu(a)
          p = MaxPool <kernel_shape=[2,2], strides=[2,2]> (r)
          output = Conv (p, w2)
        }""", {"w1": (8, 3, 3, 3), "w2": (4, 8, 1, 1)}, {"input": (1, 3, 8, 8)}),
    "old_opset": lambda: _text("old_opset", _h(7) + """
        g (float[1,3,8,8] input) => (float[1,4,8,8] output) {
          output = Conv (input, w1)
        }""", {"w1": (4, 3, 1, 1)}, {"input": (1, 3, 8, 8)}),
}


def _bad(name: str) -> Fixture:
    path = _CACHE / f"{name}.onnx"
    if name == "not_onnx":
        path.write_bytes(np.random.default_rng(0).bytes(2000))
    elif name == "truncated":
        good = build("vgg")
        data = good.path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif name == "missing_external_data":
        good = build("vgg")
        d = _CACHE / "extdata"
        d.mkdir(exist_ok=True)
        path = d / "model.onnx"
        from onnx.external_data_helper import convert_model_to_external_data

        proto = onnx.ModelProto()
        proto.CopyFrom(good.proto)
        convert_model_to_external_data(proto, all_tensors_to_one_file=True, location="model.onnx.data",
                                       size_threshold=0)
        onnx.save(proto, str(path))
        os.remove(d / "model.onnx.data")
    return Fixture(name, path, None, {})


TORCH = ("vgg", "resnet", "mobilenet", "densenet", "yolo", "transformer_ffn", "resnet18_like", "resnet50_like")
BAD = ("not_onnx", "truncated", "missing_external_data")
FIXTURES = (*TORCH, "vgg_opset13", "transformer_ffn_opset13", *TEXT, *BAD)


@functools.lru_cache(maxsize=None)
def build(name: str) -> Fixture:
    """Build (once per process) the fixture called ``name``."""
    if name.endswith("_opset13"):
        return _export_torch(name[: -len("_opset13")], 13)
    if name in TORCH:
        return _export_torch(name, 17)
    if name in TEXT:
        return TEXT[name]()
    if name in BAD:
        return _bad(name)
    raise KeyError(name)
