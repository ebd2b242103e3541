"""Fine-tuning on the demo: the front before and after, and what distillation and QAT each bring.

Runs ``compress --demo`` (small budget), then fine-tunes front members on the 2,000 MNIST
training samples of ``train_demo.load_mnist`` (the demo's data file holds the other 3,000,
so no training sample is one the search or its figures used; the tool checks this by
sample hash). Accuracy is measured on the compress run's test split, which training never
sees, with 95% Wilson intervals.
Ablation on the chosen member: distillation + QAT (learned steps), distillation with the
member's steps frozen, labels only with QAT.

    pip install '.[bench,finetune]'
    python benchmarks/finetune.py --epochs 2 --members 0,2,4
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import RESULTS, write


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion p observed on n samples."""
    if n == 0:
        return (0.0, 1.0)
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (c - h, c + h)


def _fmt(p: float, n: int) -> str:
    lo, hi = wilson(p, n)
    return f"{100 * p:.2f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(RESULTS / "finetune_run"))
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--population", type=int, default=12)
    ap.add_argument("--members", default=None, help="front ranks (default: all)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--ablation-member", type=int, default=None,
                    help="rank for the ablation (default: the least accurate fine-tuned member)")
    args = ap.parse_args()

    from train_demo import load_mnist

    from emomc_onnx import api

    out = pathlib.Path(args.out)
    t0 = time.perf_counter()
    if not (out / "front.json").exists():
        model, data = api.demo_paths()
        api.compress(model, out, data=data, generations=args.generations, population=args.population,
                     eval_samples=500, calib_samples=128, workers=1)
    t_compress = time.perf_counter() - t0
    xt, yt, _, _ = load_mnist()
    train = out / "mnist_train.npz"
    np.savez(train, input=xt, labels=yt)
    ranks = [int(r) for r in args.members.split(",")] if args.members else None
    t1 = time.perf_counter()
    summary = api.finetune(out, train, members=ranks, epochs=args.epochs)
    t_ft = time.perf_counter() - t1
    rows = []
    base = summary["baseline"]["metric"]
    for m in summary["members"]:
        n = m["eval_samples"]
        rows.append({"rank": m["rank"], "before": _fmt(m["before"]["metric"], n),
                     "after": _fmt(m["after"]["metric"], n),
                     "change (points)": round(100 * (m["after"]["metric"] - m["before"]["metric"]), 2),
                     "energy x": round(m["energy_factor"]["after"], 2), "size x": round(m["size_factor"]["after"], 2),
                     "epochs": m["epochs"], "train s": round(m["elapsed_s"], 1), "eval samples": n})
    # ablation: what each part brings, on one member
    ab_rank = args.ablation_member
    if ab_rank is None:
        ab_rank = min(summary["members"], key=lambda m: m["before"]["metric"])["rank"]
    ablation = []
    for label, kw in (("distillation + QAT", {}), ("distillation, member's steps frozen", {"qat": False}),
                      ("labels only + QAT", {"distill": False})):
        work = out.parent / f"{out.name}_ablation"
        if work.exists():
            shutil.rmtree(work)
        shutil.copytree(out, work, ignore=shutil.ignore_patterns("finetune*", "finetuned", "*.lock",
                                                                 ".emomc.lock"))
        s = api.finetune(work, train, members=[ab_rank], epochs=args.epochs, **kw)
        m = s["members"][0]
        n = m["eval_samples"]
        ablation.append({"setting": label, "rank": ab_rank, "before": _fmt(m["before"]["metric"], n),
                         "after": _fmt(m["after"]["metric"], n),
                         "change (points)": round(100 * (m["after"]["metric"] - m["before"]["metric"]), 2)})
        shutil.rmtree(work)
    write("finetune", rows, f"fine-tuning the demo front ({args.epochs} epochs, float {100 * base:.2f}%)",
          extra={"ablation": ablation, "compress_s": t_compress, "finetune_s": t_ft,
                 "train_samples": summary["train_samples"], "epochs": args.epochs,
                 "summary": json.loads(json.dumps(summary, default=float))})
    write("finetune_ablation", ablation, f"what each part brings (rank {ab_rank}, {args.epochs} epochs)")


if __name__ == "__main__":
    main()
