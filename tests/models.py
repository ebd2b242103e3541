"""Tiny fixture models for the analysis, pruning and quantization tests.

Two kinds:

* torch fixtures: small ``torch.nn.Module`` s exported with the legacy TorchScript exporter
  (``torch.onnx.export(..., dynamo=False)``, ~0.2 s each), opset 17 unless the name ends in
  ``_opset13``. Weights are random with a fixed seed; BatchNorm layers get random affine
  parameters and non-trivial running statistics (a few random batches in train mode before
  ``.eval()``), so BN folding at import is really exercised. Nodes keep the exporter's names.
* text fixtures: hand-written ONNX text (``onnx.parser``) for odd cases an exporter rarely
  produces on demand, plus bad files (not ONNX, truncated, missing external data).

``build(name, **kw)`` is cached per process (``functools.lru_cache``) and the exported files are
cached on disk in ``CACHE_DIR`` (keyed by a hash of this file and the torch/onnx versions, written
atomically so concurrent test runs can share it).

Independent counts on torch fixtures (``Fixture.torch_macs``, ``Fixture.torch_params``) come from
forward hooks on the torch module at batch 1, over ``nn.Conv2d`` and ``nn.Linear`` only:

* Conv2d MACs = kh * kw * (Cin / groups) * Cout * Ho * Wo;
* Linear MACs = in_features * out_features * rows, rows = product of the output's dimensions
  between batch and features (1 for a classifier head, the token count for a transformer);
* params = weight elements + one bias per output channel when the layer has a bias **or** a
  Conv2d's output feeds a BatchNorm2d (BN is folded into that conv at import, creating a
  bias). BatchNorm, LayerNorm and any other parameters are not counted.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import pathlib
import tempfile
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
from onnx.external_data_helper import convert_model_to_external_data

if TYPE_CHECKING:
    import torch

__all__ = ["BAD", "CACHE_DIR", "FIXTURES", "TEXT", "TORCH", "Fixture", "build", "torch_counts"]

logger = logging.getLogger(__name__)


def _cache_dir() -> pathlib.Path:
    """Disk cache shared by processes, invalidated when this file or the exporters change."""
    import importlib.metadata as md

    key = hashlib.sha256(pathlib.Path(__file__).read_bytes())
    for dist in ("torch", "onnx"):
        try:
            key.update(md.version(dist).encode())
        except md.PackageNotFoundError:
            pass
    root = os.environ.get("EMOMC_FIXTURE_CACHE") or tempfile.gettempdir()
    return pathlib.Path(root) / f"emomc-fixtures-{key.hexdigest()[:12]}"


CACHE_DIR = _cache_dir()


@dataclasses.dataclass(frozen=True)
class Fixture:
    """One fixture model.

    Attributes:
        name: fixture name (with its build keywords, e.g. ``resnet50_like_width0.5``).
        path: the ``.onnx`` file.
        proto: the loaded model, or None for the bad files that cannot be loaded.
        input_shapes: input name -> shape used by ``inputs`` (batch 1 where the batch is dynamic).
        module: the torch module in eval mode (None for text fixtures).
        opset: default-domain opset of the file (0 for the bad files).
        torch_macs: MACs counted on the torch module (see module docstring), else None.
        torch_params: parameters counted on the torch module, else None.
        fixed_shapes: shapes to pass to ``io.load_model(path, input_shapes=...)`` for models
            with dynamic spatial dimensions, else None.
        dynamic_batch: whether the first input dimension is symbolic.
    """

    name: str
    path: pathlib.Path
    proto: onnx.ModelProto | None
    input_shapes: dict[str, tuple[int, ...]]
    module: torch.nn.Module | None = None
    opset: int = 17
    torch_macs: int | None = None
    torch_params: int | None = None
    fixed_shapes: dict[str, tuple[int, ...]] | None = None
    dynamic_batch: bool = True

    def inputs(self, n: int, seed: int) -> dict[str, np.ndarray]:
        """Random standard-normal float32 inputs; ``n`` samples where the batch is dynamic.

        Fixed-batch models always get their declared shape (``n`` is ignored for them).
        """
        rng = np.random.default_rng(seed)
        feeds = {}
        for name, shape in self.input_shapes.items():
            shape = (n, *shape[1:]) if self.dynamic_batch else shape
            feeds[name] = rng.standard_normal(shape).astype(np.float32)
        return feeds

    def torch_outputs(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run the torch module on ``feeds`` (its single input) and return its output."""
        import torch

        if self.module is None:
            raise ValueError(f"fixture {self.name} has no torch module")
        (x,) = feeds.values()
        with torch.no_grad():
            return self.module(torch.from_numpy(x)).numpy()


def _atomic_write(path: pathlib.Path, write: Callable[[pathlib.Path], None]) -> None:
    """Write a file through ``write(tmp)`` then rename it into place (safe across processes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        write(pathlib.Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---------------------------------------------------------------------------- torch modules
@functools.cache
def _torch_classes() -> dict[str, Callable[..., Any]]:
    """Module factories (torch is imported only when a torch fixture is built)."""
    import torch
    from torch import nn

    def cbr(cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU())

    def gap_flat(x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    class VGG(nn.Module):
        """conv-BN-ReLU x4 with two max-pools, Flatten, Linear-ReLU-Linear."""

        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(cbr(3, 16), cbr(16, 16), nn.MaxPool2d(2), cbr(16, 32),
                                          cbr(32, 32), nn.MaxPool2d(2))
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 24), nn.ReLU(),
                                      nn.Linear(24, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x))

    class Basic(nn.Module):
        """ResNet basic block; 1x1 projection shortcut when stride or width change."""

        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.c1 = cbr(cin, cout, 3, stride)
            self.c2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                    nn.BatchNorm2d(cout))
            self.short = None
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                           nn.BatchNorm2d(cout))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = x if self.short is None else self.short(x)
            return torch.relu(self.c2(self.c1(x)) + s)

    class ResNet(nn.Module):
        """Stem, identity block, stride-2 projection block, identity block, GAP, Linear."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = cbr(3, 16)
            self.b1 = Basic(16, 16, 1)
            self.b2 = Basic(16, 32, 2)
            self.b3 = Basic(32, 32, 1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(gap_flat(self.b3(self.b2(self.b1(self.stem(x))))))

    class SE(nn.Module):
        """Squeeze-excite: GAP -> 1x1 conv -> ReLU -> 1x1 conv -> HardSigmoid -> Mul."""

        def __init__(self, c: int, r: int = 4) -> None:
            super().__init__()
            self.fc1 = nn.Conv2d(c, c // r, 1)
            self.fc2 = nn.Conv2d(c // r, c, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            g = nn.functional.adaptive_avg_pool2d(x, 1)
            return x * nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(g))))

    class InvRes(nn.Module):
        """MobileNetV3 block: expand 1x1, depthwise 3x3, SE, hard-swish, project 1x1, residual."""

        def __init__(self, c: int, e: int) -> None:
            super().__init__()
            h = c * e
            self.expand = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h),
                                        nn.Hardswish())
            self.dw = nn.Sequential(nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False),
                                    nn.BatchNorm2d(h), nn.Hardswish())
            self.se = SE(h)
            self.project = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.project(self.se(self.dw(self.expand(x))))

    class MobileNet(nn.Module):
        """Stride-2 stem, two inverted residual blocks, 1x1 head with hard-swish, GAP, Linear."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = cbr(3, 16, 3, 2)
            self.b1 = InvRes(16, 2)
            self.b2 = InvRes(16, 3)
            self.head = nn.Conv2d(16, 32, 1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.head(self.b2(self.b1(self.stem(x))))
            return self.fc(gap_flat(nn.functional.hardswish(x)))

    class DenseNet(nn.Module):
        """Inception/DenseNet-style block: input and three branches concatenated, then a conv."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = cbr(3, 12)
            self.a = cbr(12, 8, 1)
            self.b = nn.Sequential(cbr(12, 6, 1), cbr(6, 10, 3))
            self.c = cbr(12, 4, 3)
            self.merge = cbr(12 + 8 + 10 + 4, 16, 1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = self.stem(x)
            c = nn.functional.max_pool2d(self.c(s), 3, 1, 1)
            x = torch.cat([s, self.a(s), self.b(s), c], 1)
            return self.fc(gap_flat(self.merge(x)))

    class Yolo(nn.Module):
        """CSP/C2f-style: conv, split on channels, one half through a bottleneck, concat, conv."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = cbr(3, 32)
            self.m = nn.Sequential(cbr(16, 16, 1), cbr(16, 16, 3))
            self.out = cbr(48, 24, 1)
            self.det = nn.Conv2d(24, 8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = torch.split(self.stem(x), 16, dim=1)
            return self.det(self.out(torch.cat([a, b, self.m(b)], 1)))

    class FFN(nn.Module):
        """Pre-norm FFN: LayerNorm -> Linear -> GELU -> Linear -> residual Add, then a head."""

        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(32)
            self.fc1 = nn.Linear(32, 64)
            self.fc2 = nn.Linear(64, 32)
            self.head = nn.Linear(32, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x + self.fc2(nn.functional.gelu(self.fc1(self.norm(x)))))

    class Bottleneck(nn.Module):
        """ResNet-50 bottleneck (1x1, 3x3 with stride, 1x1 x4), projection when shapes change."""

        def __init__(self, cin: int, mid: int, stride: int) -> None:
            super().__init__()
            cout = mid * 4
            self.body = nn.Sequential(cbr(cin, mid, 1), cbr(mid, mid, 3, stride),
                                      nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.short = None
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                           nn.BatchNorm2d(cout))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.body(x) + (x if self.short is None else self.short(x)))

    class ResNetBig(nn.Module):
        """ResNet-18/50 topology (torchvision sizes) with a 1000-way head."""

        def __init__(self, blocks: list[int], bottleneck: bool, width: float = 1.0) -> None:
            super().__init__()
            base = max(1, round(64 * width))
            self.stem = nn.Sequential(cbr(3, base, 7, 2), nn.MaxPool2d(3, 2, 1))
            layers, cin = [], base
            for i, n in enumerate(blocks):
                mid = base * 2**i
                for j in range(n):
                    stride = 2 if j == 0 and i > 0 else 1
                    block = Bottleneck(cin, mid, stride) if bottleneck else Basic(cin, mid, stride)
                    layers.append(block)
                    cin = mid * 4 if bottleneck else mid
            self.layers = nn.Sequential(*layers)
            self.fc = nn.Linear(cin, 1000)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(gap_flat(self.layers(self.stem(x))))

    return {
        "vgg": VGG, "resnet": ResNet, "mobilenet": MobileNet, "densenet": DenseNet, "yolo": Yolo,
        "transformer_ffn": FFN,
        "resnet18_like": lambda: ResNetBig([2, 2, 2, 2], False),
        "resnet50_like": lambda width=1.0: ResNetBig([3, 4, 6, 3], True, width),
    }


# name -> (input shape at batch 1, BN warm-up batch size)
_TORCH_SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "vgg": ((1, 3, 16, 16), 8),
    "resnet": ((1, 3, 16, 16), 8),
    "mobilenet": ((1, 3, 32, 32), 8),
    "densenet": ((1, 3, 12, 12), 8),
    "yolo": ((1, 3, 16, 16), 8),
    "transformer_ffn": ((1, 16, 32), 8),
    "resnet18_like": ((1, 3, 224, 224), 2),
    "resnet50_like": ((1, 3, 224, 224), 2),
}


def torch_counts(module: torch.nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    """MACs and params of the Conv2d/Linear layers of ``module`` at ``shape`` (see module doc)."""
    import torch
    from torch import nn

    macs = 0
    has_bias: dict[int, bool] = {}
    weights: dict[int, int] = {}
    outputs: dict[int, int] = {}  # id(output tensor) -> id(conv module)
    hooks = []

    def conv_hook(m: nn.Conv2d, inp: tuple, out: torch.Tensor) -> None:
        nonlocal macs
        kh, kw = m.kernel_size
        macs += kh * kw * (m.in_channels // m.groups) * m.out_channels * out.shape[2] * out.shape[3]
        outputs[id(out)] = id(m)

    def lin_hook(m: nn.Linear, inp: tuple, out: torch.Tensor) -> None:
        nonlocal macs
        rows = int(np.prod(out.shape[1:-1])) if out.dim() > 2 else 1
        macs += m.in_features * m.out_features * rows

    def bn_hook(m: nn.BatchNorm2d, inp: tuple) -> None:
        conv = outputs.get(id(inp[0]))
        if conv is not None:
            has_bias[conv] = True  # folded into the conv at import

    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            hook = conv_hook if isinstance(m, nn.Conv2d) else lin_hook
            hooks.append(m.register_forward_hook(hook))
            weights[id(m)] = m.weight.numel()
            has_bias[id(m)] = m.bias is not None
        elif isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_pre_hook(bn_hook))
    try:
        with torch.no_grad():
            module(torch.zeros(shape))
    finally:
        for h in hooks:
            h.remove()
    params = 0
    for m in module.modules():
        if id(m) in weights:
            bias = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            params += weights[id(m)] + (bias if has_bias[id(m)] else 0)
    return macs, params


def _make_module(name: str, **kw: Any) -> torch.nn.Module:
    """The seeded module in eval mode, with random BN affine params and warmed-up BN statistics."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    module = _torch_classes()[name](**kw)
    shape, batch = _TORCH_SHAPES[name]
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
        module.train()
        for _ in range(3):  # running stats = 0.271 * batch stats + the (0, 1) init: non-trivial
            module(torch.randn(batch, *shape[1:]) * 2 + 0.5)
    return module.eval()


def _suffix(kw: dict[str, Any]) -> str:
    return "".join(f"_{k}{v}" for k, v in sorted(kw.items()))


def _export_torch(name: str, opset: int = 17, **kw: Any) -> Fixture:
    """Export the torch fixture ``name`` (cached on disk) and count its MACs/params."""
    import torch

    module = _make_module(name, **kw)
    shape = _TORCH_SHAPES[name][0]
    full = name + ("_opset13" if opset == 13 else "") + _suffix(kw)
    path = CACHE_DIR / f"{full}.onnx"
    if not path.exists():
        def write(tmp: pathlib.Path) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # PRESERVE (module is in eval mode) skips the exporter's own Conv+BN fusion, so
                # the files hold real BatchNormalization nodes for the import to fold
                torch.onnx.export(module, (torch.randn(shape),), str(tmp), opset_version=opset,
                                  dynamo=False, training=torch.onnx.TrainingMode.PRESERVE,
                                  input_names=["input"], output_names=["output"],
                                  dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})

        _atomic_write(path, write)
        logger.debug("exported %s to %s", full, path)
    macs, params = torch_counts(module, shape)
    return Fixture(full, path, onnx.load(str(path)), {"input": shape}, module, opset, macs, params)


# ---------------------------------------------------------------------------- text models
def _text(name: str, text: str, weights: dict[str, tuple[int, ...]],
          shapes: dict[str, tuple[int, ...]], fixed: dict[str, tuple[int, ...]] | None = None,
          consts: dict[str, np.ndarray] | None = None) -> Fixture:
    """Parse ``text``, add random initializers ``weights`` and exact ``consts``; save it."""
    proto = onnx.parser.parse_model(text)
    for cname, value in (consts or {}).items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(value, cname))
    rng = np.random.default_rng(1)
    for wname, shape in weights.items():
        arr = rng.standard_normal(shape).astype(np.float32) * 0.5
        if wname.startswith("var"):  # BN variances must be positive
            arr = np.abs(arr) + 0.5
        proto.graph.initializer.append(onnx.numpy_helper.from_array(arr, wname))
    onnx.checker.check_model(proto, full_check=True)
    path = CACHE_DIR / f"{name}.onnx"
    if not path.exists():
        _atomic_write(path, lambda tmp: onnx.save(proto, str(tmp)))
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    first = proto.graph.input[0].type.tensor_type.shape.dim[0]
    return Fixture(name, path, proto, shapes, None, opset, fixed_shapes=fixed,
                   dynamic_batch=bool(first.dim_param))


def _h(opset: int = 17, extra: str = "") -> str:
    return f'<ir_version: 8, opset_import: ["" : {opset}{extra}]>\n'


_SCALARS = {"sqrt2": np.array(np.sqrt(2.0), np.float32), "one": np.array(1.0, np.float32),
            "half": np.array(0.5, np.float32)}

def _reshape_matmul(name: str, shape: list[int]) -> Fixture:
    """Conv -> Relu -> Reshape(shape) -> MatMul, batch fixed at 2."""
    return _text(name, _h() + """
        g (float[2,3,4,4] input) => (float[2,5] output) {
          a = Conv <pads=[1,1,1,1]> (input, w1)
          r = Relu(a)
          f = Reshape(r, shape)
          output = MatMul(f, wm)
        }""", {"w1": (8, 3, 3, 3), "wm": (128, 5)}, {"input": (2, 3, 4, 4)},
        consts={"shape": np.array(shape, np.int64)})


TEXT: dict[str, Callable[[], Fixture]] = {
    # each of the 6 channels of r2 owns a 6x6 block of the Gemm's 216 input features
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
    # shape constant [N, -1] (N = the fixed batch 2): pruning need not touch the constant
    "reshape_gemm": lambda: _reshape_matmul("reshape_gemm", [2, -1]),
    # shape constant [2, 128] spelled out: pruning must rewrite it
    "reshape_gemm_explicit": lambda: _reshape_matmul("reshape_gemm_explicit", [2, 128]),
    # custom.Mystery is a model-local function, so ONNX Runtime runs it while the analysis
    # sees an op from an unknown domain (it mixes channels: LpNormalization over axis 1)
    "unknown_op": lambda: _text("unknown_op", _h(extra=', "custom" : 1') + """
        g (float[1,3,8,8] input) => (float[1,4,8,8] output) {
          a = Conv (input, w1)
          u = custom.Mystery (a)
          b = Conv (u, w2)
          r = Relu(b)
          output = Conv (r, w3)
        }
        <domain: "custom", opset_import: ["" : 17]>
        Mystery (x) => (y) {
          y = LpNormalization <axis=1> (x)
        }""", {"w1": (8, 3, 1, 1), "w2": (8, 8, 1, 1), "w3": (4, 8, 1, 1)},
        {"input": (1, 3, 8, 8)}),
    "constant_weights": lambda: _text("constant_weights", _h() + """
        g (float[1,3,8,8] input) => (float[1,4,8,8] output) {
          w1 = Constant <value = float[4,3,1,1]
                         {0.1,0.2,0.3,-0.1,0.5,0.4,0.2,-0.3,0.6,0.7,-0.2,0.1}> ()
          b1 = Constant <value = float[4] {0.1,-0.2,0.3,0.05}> ()
          a = Conv (input, w1, b1)
          r = Relu(a)
          w2 = Constant <value = float[4,4,1,1] {1,0,0,0, 0,1,0,0, 0,0,1,0, 0.5,0.5,0.5,0.5}> ()
          output = Conv (r, w2)
        }""", {}, {"input": (1, 3, 8, 8)}),
    # Identity chain before a foldable BN; a second BN after MaxPool that cannot be folded
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
    # GELU(x) = 0.5 * x * (1 + erf(x / sqrt 2)) between two MatMuls
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
        }""", {"w1": (16, 32), "b1": (32,), "w2": (32, 8)}, {"input": (1, 16)}, consts=_SCALARS),
    "dynamic_spatial": lambda: _text("dynamic_spatial", _h() + """
        g (float[N,3,H,W] input) => (float[N,10] output) {
          a = Conv <pads=[1,1,1,1]> (input, w1)
          r = Relu(a)
          c = Conv <pads=[1,1,1,1], strides=[2,2]> (r, w2)
          r2 = Relu(c)
          p = GlobalAveragePool(r2)
          f = Flatten(p)
          output = Gemm <transB=1> (f, wf)
        }""", {"w1": (8, 3, 3, 3), "w2": (12, 8, 3, 3), "wf": (10, 12)}, {"input": (1, 3, 8, 8)},
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
          a = Conv (input, w1)
          r = Relu(a)
          output = Conv (r, w2)
        }""", {"w1": (8, 3, 1, 1), "w2": (4, 8, 1, 1)}, {"input": (1, 3, 8, 8)}),
}


# ---------------------------------------------------------------------------- bad files
def _bad(name: str) -> Fixture:
    """Files that must not load: random bytes, a truncated model, missing external data."""
    path = CACHE_DIR / f"{name}.onnx"
    if name == "not_onnx":
        data = np.random.default_rng(0).bytes(2000)
        _atomic_write(path, lambda tmp: tmp.write_bytes(data))
    elif name == "truncated":
        data = build("vgg").path.read_bytes()
        _atomic_write(path, lambda tmp: tmp.write_bytes(data[: len(data) // 2]))
    elif name == "missing_external_data":
        folder = CACHE_DIR / "missing_external_data"
        path = folder / "model.onnx"
        if not path.exists():
            proto = onnx.ModelProto()
            proto.CopyFrom(build("vgg").proto)
            convert_model_to_external_data(proto, all_tensors_to_one_file=True,
                                           location="model.onnx.data", size_threshold=0)

            def write(tmp: pathlib.Path) -> None:
                onnx.save(proto, str(tmp))  # also writes folder/model.onnx.data
                os.remove(folder / "model.onnx.data")

            _atomic_write(path, write)
    else:
        raise KeyError(name)
    return Fixture(name, path, None, {}, opset=0, dynamic_batch=False)


TORCH: tuple[str, ...] = tuple(_TORCH_SHAPES)
BAD: tuple[str, ...] = ("not_onnx", "truncated", "missing_external_data")

FIXTURES: dict[str, Callable[..., Fixture]] = {
    **{name: functools.partial(_export_torch, name) for name in TORCH},
    "vgg_opset13": functools.partial(_export_torch, "vgg", 13),
    "transformer_ffn_opset13": functools.partial(_export_torch, "transformer_ffn", 13),
    **TEXT,
    **{name: functools.partial(_bad, name) for name in BAD},
}


# build options equal to these defaults are dropped, so they share the cached file
_DEFAULTS: dict[str, dict[str, Any]] = {"resnet50_like": {"width": 1.0}}


@functools.lru_cache(maxsize=None)
def _build(name: str, kw: tuple[tuple[str, Any], ...]) -> Fixture:
    return FIXTURES[name](**dict(kw))


def build(name: str, **kw: Any) -> Fixture:
    """Build (once per process, files cached on disk) the fixture called ``name``.

    Args:
        name: a key of ``FIXTURES``.
        **kw: build options; only ``resnet50_like`` takes one (``width``, default 1.0).

    Raises:
        KeyError: unknown fixture name.
        TypeError: an option the fixture does not take.
    """
    if name not in FIXTURES:
        raise KeyError(f"unknown fixture {name!r}; known: {', '.join(FIXTURES)}")
    defaults = _DEFAULTS.get(name, {})
    kw = {k: v for k, v in kw.items() if k not in defaults or v != defaults[k]}
    return _build(name, tuple(sorted(kw.items())))
