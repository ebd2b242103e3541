"""Selection bias of the front: search-split figures vs test-split figures vs an untouched split.

For each model, ``compress`` runs with disjoint calibration, search and test splits of the
3,000 held-out digits; the samples left over (a fourth, untouched split) are never read by
``compress``. For every front member: its accuracy on the search split (what the front was
chosen on, and what the tool reported before the test split existed), on the test split
(what it reports now, with a 95% Wilson interval) and on the untouched split. The gaps:

* before: search accuracy - untouched accuracy (the winner's curse: positive on average);
* after: test accuracy - untouched accuracy (no selection on either: zero on average).

Coverage: the share of members whose test interval contains the untouched accuracy (the
issue's criterion; with an untouched split as large as the test split, even a perfect 95%
interval covers the other split's *estimate* only ~83-87% of the time, since that estimate
has its own noise), and the share whose paired-free two-sample difference is within its own
95% interval (|test - untouched| <= 1.96 * sqrt(se_test^2 + se_untouched^2), expected 95%).

    python benchmarks/train_demo.py --arch mlp          # a second model (seconds)
    python benchmarks/train_demo.py --arch resnet       # the ResNet-style reference (minutes)
    python benchmarks/selection_bias.py [--models demo,mlp,resnet] [--generations 4] [--population 12]

Writes benchmarks/results/selection_bias.json and prints a markdown table (README).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time

import _common
import numpy as np
import onnxruntime as ort

from emomc_onnx import api
from emomc_onnx.evaluate.data import load_data, make_splits
from emomc_onnx.evaluate.stats import Z95, wilson
from emomc_onnx.paths import atomic_write_bytes

ROOT = _common.ROOT
MODELS = {
    "demo": lambda: api.demo_paths(),
    "mlp": lambda: (ROOT / "benchmarks/models/mlp.onnx", ROOT / "benchmarks/models/mnist_heldout.npz"),
    "resnet": lambda: (ROOT / "benchmarks/models/resnet.onnx", ROOT / "benchmarks/models/mnist_heldout.npz"),
}
CALIB, SEARCH, TEST = 300, 1000, 700  # of 3,000: the remaining 1,000 are the untouched split


def _accuracy(path: pathlib.Path, x: np.ndarray, y: np.ndarray) -> float:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float((sess.run(None, {"input": x})[0].argmax(1) == y).mean())


def run_model(name: str, args) -> dict:
    model, data = MODELS[name]()
    outdir = ROOT / "benchmarks/results/reference_runs" / f"selection_bias_{name}"
    t0 = time.time()
    result, entries, _evaluator = api.compress(
        model, outdir, data=data, calib_samples=CALIB, eval_samples=SEARCH, test_samples=TEST,
        generations=args.generations, population=args.population, workers=args.workers, seed=0,
        resume=True)
    wall = time.time() - t0
    ds = load_data(data)
    sp = make_splits(ds, CALIB, SEARCH, TEST, seed=0)
    used = np.concatenate([sp.indices[k] for k in ("calib", "search", "test")])
    untouched = np.setdiff1d(np.arange(len(ds)), used)
    assert len(untouched) == len(ds) - CALIB - SEARCH - TEST
    xu, yu = ds.arrays["input"][untouched].astype(np.float32), ds.labels[untouched]
    n_u = len(untouched)
    members = []
    for e in entries:
        acc_u = _accuracy(e.path(outdir), xu, yu)
        lo, hi = e.accuracy_ci95
        se_t = math.sqrt(e.accuracy * (1 - e.accuracy) / e.n_test) if e.n_test else 0.0
        se_u = math.sqrt(acc_u * (1 - acc_u) / n_u)
        members.append({
            "rank": e.rank, "search": e.metric_search, "test": e.accuracy, "test_ci95": [lo, hi],
            "untouched": acc_u, "gap_before": e.metric_search - acc_u, "gap_after": e.accuracy - acc_u,
            "covered": lo <= acc_u <= hi,
            "difference_within_noise": abs(e.accuracy - acc_u) <= Z95 * math.sqrt(se_t**2 + se_u**2) + 1e-12,
            "gap_flag": e.gap_flag,
        })
    base_u = _accuracy(pathlib.Path(model), xu, yu)
    return {
        "model": name, "n": {"calib": CALIB, "search": SEARCH, "test": TEST, "untouched": n_u},
        "float": {"search": result.baseline_search.metric, "test": result.baseline.metric,
                  "test_ci95": list(wilson(round(result.baseline.metric * TEST), TEST)), "untouched": base_u},
        "members": members, "evaluations": result.n_evaluations, "raced_out": result.n_raced_out, "wall_s": wall,
        "mean_gap_before": float(np.mean([m["gap_before"] for m in members])),
        "mean_gap_after": float(np.mean([m["gap_after"] for m in members])),
        "coverage": float(np.mean([m["covered"] for m in members])),
        "within_noise": float(np.mean([m["difference_within_noise"] for m in members])),
        "command": f"python benchmarks/selection_bias.py --models {name} --generations {args.generations} "
                   f"--population {args.population}",
    }


def table(rows: list[dict], top: int | None = None) -> str:
    """Markdown: per model the members near float (all with ``top=None``), then the summary."""
    lines = ["| model | rank | search % | test % [95% CI] | untouched % | gap before | gap after | covered |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = r["float"]
        lines.append(f"| {r['model']} | float | {100 * f['search']:.2f} | {100 * f['test']:.2f} "
                     f"[{100 * f['test_ci95'][0]:.1f}-{100 * f['test_ci95'][1]:.1f}] | {100 * f['untouched']:.2f} "
                     f"| {100 * (f['search'] - f['untouched']):+.2f} | {100 * (f['test'] - f['untouched']):+.2f} | |")
        for m in r["members"][:top]:
            lo, hi = m["test_ci95"]
            lines.append(f"| {r['model']} | {m['rank']} | {100 * m['search']:.2f} | {100 * m['test']:.2f} "
                         f"[{100 * lo:.1f}-{100 * hi:.1f}] | {100 * m['untouched']:.2f} | "
                         f"{100 * m['gap_before']:+.2f} | {100 * m['gap_after']:+.2f} | "
                         f"{'yes' if m['covered'] else 'no'} |")
    lines += ["", ("| model | members | mean gap before (search reported) | mean gap after (test reported) "
                  "| test CI covers untouched | difference within noise | evaluations (raced out) | wall s |"),
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {len(r['members'])} | {100 * r['mean_gap_before']:+.2f} pt | "
                     f"{100 * r['mean_gap_after']:+.2f} pt | {100 * r['coverage']:.0f}% | "
                     f"{100 * r['within_noise']:.0f}% | {r['evaluations']} ({r['raced_out']}) | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="demo,mlp,resnet")
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--population", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--top", type=int, default=8, help="members per model in the printed table")
    args = ap.parse_args()
    out = _common.RESULTS / "selection_bias.json"
    old = json.loads(out.read_text())["rows"] if out.exists() else []
    rows = [r for r in old if r["model"] not in args.models.split(",")]
    for name in args.models.split(","):
        print(f"== {name}")
        rows.append(run_model(name, args))
        rows.sort(key=lambda r: list(MODELS).index(r["model"]))
        _common.RESULTS.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, (json.dumps({"rows": rows}, indent=2, default=str) + "\n").encode())
    print(table(rows, args.top))


if __name__ == "__main__":
    main()
