"""Time model_cost on ResNet-50 layer shapes (25.5M weights) for every profile.

Shape-only costing is what the search does per candidate (target < 50 ms); costing real
weight arrays is timed per coding (exact Huffman / run-length scan every weight).
Writes benchmarks/results/cost_speed.json.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from emomc_onnx.analysis.layers import Layer
from emomc_onnx.cost import CostLayer, list_profiles, load_profile, model_cost


def _conv(name: str, cin: int, cout: int, k: int, hw_in: int, stride: int = 1) -> Layer:
    ho = (hw_in + 2 * (k // 2) - k) // stride + 1
    macs = k * k * ho * ho * cin * cout
    return Layer(name, "Conv", f"{name}.w", f"{name}.b", f"{name}.x", f"{name}.y", cin, cout, 1,
                 (k, k), (stride, stride), (hw_in, hw_in), (ho, ho), macs, k * k * cin * cout + cout)


def resnet50_layers() -> list[Layer]:
    """The 53 convs + fc of torchvision's ResNet-50 (BN folded), at 224x224."""
    layers = [_conv("conv1", 3, 64, 7, 224, 2)]
    cin, hw = 64, 56
    for stage, (width, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]):
        for b in range(blocks):
            s = stride if b == 0 else 1
            p = f"layer{stage + 1}.{b}"
            layers.append(_conv(f"{p}.conv1", cin, width, 1, hw))
            layers.append(_conv(f"{p}.conv2", width, width, 3, hw, s))
            hw_out = (hw - 1) // s + 1
            layers.append(_conv(f"{p}.conv3", width, width * 4, 1, hw_out))
            if b == 0:
                layers.append(_conv(f"{p}.downsample", cin, width * 4, 1, hw, s))
            cin, hw = width * 4, hw_out
    layers.append(Layer("fc", "Gemm", "fc.w", "fc.b", "pool", "logits", 2048, 1000, 1, (1, 1),
                        (1, 1), (1, 1), (1, 1), 2048 * 1000, 2048 * 1000 + 1000))
    return layers


def _time(fn, repeat: int) -> float:
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def main() -> None:
    layers = resnet50_layers()
    n_weights = sum(l.params - l.out_channels for l in layers)
    rng = np.random.default_rng(0)
    results: dict = {"model": "resnet50", "layers": len(layers), "weights": n_weights, "runs": []}
    table = Table(title=f"model_cost on ResNet-50 ({len(layers)} layers, {n_weights / 1e6:.1f}M weights)")
    for col in ("profile", "dataflow", "input", "coding", "ms (median)"):
        table.add_column(col, justify="right" if col.startswith("ms") else "left")

    for name in list_profiles():
        prof = load_profile(name)
        bits = 4 if 4 in prof.weight_bits else prof.weight_bits[0]
        abits = prof.activation_bits[0]
        for df in prof.dataflows:
            for coding in (prof.codings[0], "auto"):
                def run() -> None:
                    cl = [CostLayer.from_shape(l, bits, abits, 0.4) for l in layers]
                    model_cost(cl, prof, df, coding)
                ms = _time(run, 7)
                results["runs"].append(dict(profile=name, dataflow=df, input="shape", coding=coding, ms=ms))
                table.add_row(name, df, "shape", coding, f"{ms:.1f}")

    # Real weight arrays (4-bit codes, 60 % zeros), eyeriss rs, each coding.
    prof = load_profile("eyeriss")
    arrays = []
    for l in layers:
        n = l.params - l.out_channels
        w = rng.integers(-7, 8, size=n).astype(np.int8)
        w[rng.random(n) < 0.6] = 0
        arrays.append(w)
    for coding in ("dense", "bitmask", "relative_index", "run_length", "huffman", "auto"):
        def run_real() -> None:
            cl = [CostLayer(l, w, 4, 16, l.out_channels) for l, w in zip(layers, arrays)]
            model_cost(cl, prof, "rs", coding)
        ms = _time(run_real, 3)
        results["runs"].append(dict(profile="eyeriss", dataflow="rs", input="weights", coding=coding, ms=ms))
        table.add_row("eyeriss", "rs", "weights (int8 codes)", coding, f"{ms:.1f}")

    Console().print(table)
    out = pathlib.Path(__file__).parent / "results" / "cost_speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    Console().print(f"wrote {out}")


if __name__ == "__main__":
    main()
