"""Time model_cost on ResNet-50 layer shapes (25.5M weights) for every profile, today's code
against a baseline measured in the same run.

Shape-only costing is what the search does per candidate (target < 50 ms, memoised mappings:
"warm"); "cold" clears the mapping cache first (every layer mapped anew: the mapping search,
target well under a second per dataflow). Costing real weight arrays is timed per coding
(exact Huffman / run-length scan every weight). The baseline (default: 339d3de, main before
issue 14's batch / mapping search / other ops) is extracted with ``git archive`` and timed
in a subprocess on the same machine, before and after ours (the faster of the two kept).
Writes benchmarks/results/cost_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
BASELINE = "339d3de"  # main before issue 14's cost-model changes


def _conv(name: str, cin: int, cout: int, k: int, hw_in: int, stride: int = 1):
    from emomc_onnx.analysis.layers import Layer

    ho = (hw_in + 2 * (k // 2) - k) // stride + 1
    macs = k * k * ho * ho * cin * cout
    return Layer(name, "Conv", f"{name}.w", f"{name}.b", f"{name}.x", f"{name}.y", cin, cout, 1,
                 (k, k), (stride, stride), (hw_in, hw_in), (ho, ho), macs, k * k * cin * cout + cout)


def resnet50_layers() -> list:
    """The 53 convs + fc of torchvision's ResNet-50 (BN folded), at 224x224."""
    from emomc_onnx.analysis.layers import Layer

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


def _time(fn, repeat: int, before=None) -> float:
    ts = []
    for _ in range(repeat):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def measure(profiles: list[str]) -> list[dict]:
    """Timings of the code on sys.path (ours, or the baseline in a subprocess)."""
    import numpy as np

    from emomc_onnx.cost import CostLayer, load_profile, model_cost
    from emomc_onnx.cost import dataflows as D

    layers = resnet50_layers()
    runs = []
    for name in profiles:
        prof = load_profile(name)
        bits = 4 if 4 in prof.weight_bits else prof.weight_bits[0]
        abits = prof.activation_bits[0]
        for df in prof.dataflows:
            def cold() -> None:
                D._MAPPED_CACHE.clear()

            def run(prof=prof, df=df, bits=bits, abits=abits) -> None:
                cl = [CostLayer.from_shape(lay, bits, abits, 0.4) for lay in layers]
                model_cost(cl, prof, df, prof.codings[0])
            ms_cold = _time(run, 3, before=cold)
            ms_warm = _time(run, 7)
            runs.append({"profile": name, "dataflow": df, "input": "shape", "coding": prof.codings[0],
                         "ms_warm": ms_warm, "ms_cold": ms_cold})
    rng = np.random.default_rng(0)
    prof = load_profile("eyeriss")
    arrays = []
    for lay in layers:
        n = lay.params - lay.out_channels
        w = rng.integers(-7, 8, size=n).astype(np.int8)
        w[rng.random(n) < 0.6] = 0
        arrays.append(w)
    for coding in ("dense", "bitmask", "relative_index", "run_length", "huffman", "auto"):
        def run_real(coding=coding) -> None:
            cl = [CostLayer(lay, w, 4, 16, lay.out_channels) for lay, w in zip(layers, arrays)]
            model_cost(cl, prof, "rs", coding)
        ms = _time(run_real, 3)
        runs.append({"profile": "eyeriss", "dataflow": "rs", "input": "weights", "coding": coding,
                     "ms_warm": ms, "ms_cold": None})
    return runs


def _baseline(ref: str, profiles: list[str]) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        env = {**os.environ, "PYTHONPATH": tmp}
        res = subprocess.run([sys.executable, __file__, "--worker", ",".join(profiles)], env=env,
                             cwd=tmp, check=True, capture_output=True, text=True)
    return json.loads(res.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default=BASELINE, help=f"git ref timed alongside (default {BASELINE})")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        print(json.dumps(measure(args.worker.split(","))))
        return
    sys.path.insert(0, str(ROOT))
    from rich.console import Console
    from rich.table import Table

    from emomc_onnx.cost import list_profiles

    ref = args.baseline
    base_profiles = [p for p in list_profiles() if p != "eyeriss_isca16"]
    base = _baseline(ref, base_profiles)  # interleaved: baseline, ours, baseline again
    ours = measure(list_profiles())
    base2 = _baseline(ref, base_profiles)
    key = lambda r: (r["profile"], r["dataflow"], r["input"], r["coding"])
    bmap = {}
    for r in (*base, *base2):
        k = key(r)
        prev = bmap.get(k)
        bmap[k] = r if prev is None else {
            "ms_warm": min(prev["ms_warm"], r["ms_warm"]),
            "ms_cold": None if r.get("ms_cold") is None else min(prev["ms_cold"], r["ms_cold"])}
    n_weights = sum(lay.params - lay.out_channels for lay in resnet50_layers())
    table = Table(title=f"model_cost on ResNet-50 (54 layers, {n_weights / 1e6:.1f}M weights): ms, median; "
                        f"baseline {ref[:10]}")
    for col in ("profile", "dataflow", "input", "coding", "warm", "warm (base)", "cold", "cold (base)"):
        table.add_column(col, justify="left" if col in ("profile", "dataflow", "input", "coding") else "right")
    rows = []
    for r in ours:
        b = bmap.get(key(r), {})
        row = {**r, "base_ms_warm": b.get("ms_warm"), "base_ms_cold": b.get("ms_cold")}
        rows.append(row)
        fmt = lambda v: "-" if v is None else f"{v:.1f}"
        table.add_row(r["profile"], r["dataflow"], r["input"], r["coding"], fmt(r["ms_warm"]),
                      fmt(row["base_ms_warm"]), fmt(r["ms_cold"]), fmt(row["base_ms_cold"]))
    Console(width=160).print(table)
    out = ROOT / "benchmarks" / "results" / "cost_speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": "resnet50", "layers": 54, "weights": n_weights, "baseline": ref,
                               "runs": rows}, indent=2))
    Console().print(f"wrote {out}")


if __name__ == "__main__":
    main()
