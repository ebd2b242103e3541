"""Fine-tuning a front: before and after, the re-chosen front, and what distillation and QAT bring.

Runs ``compress`` (small budget) on the demo or a reference model, then fine-tunes front
members on the 2,000 MNIST training digits of ``train_demo.load_mnist`` (regenerated here,
deterministically: the digits the model was trained on; the run's data file holds the other
3,000, so no training sample is one the search or its figures used, and the tool checks this
by sample hash), then re-chooses the front among the members and their fine-tuned versions
on the search split (``compress --finetune`` does the same). Every accuracy is on the
compress run's test split, which training never sees, with 95% Wilson intervals. Under the
``emomc`` profile the paper's seven columns (best member within 0.3 points of float on the
test split, per dataflow and per coding) are given for the search's front and the re-chosen
one. CPU share = this process's CPU seconds / wall seconds (the machine may be shared).
Ablation on one member: distillation + QAT, distillation with the member's steps frozen,
labels only with QAT.

    pip install '.[bench,finetune]'
    python benchmarks/finetune.py --epochs 2 --members 0,2,4                   # demo
    python benchmarks/finetune.py --model vgg16 --max-search-drop 3 --min-energy-x 10 --time-budget 1800
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import resource
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, write

MODELS = {"vgg16": ROOT / "benchmarks/models/vgg16.onnx", "resnet": ROOT / "benchmarks/models/resnet.onnx"}
HELDOUT = ROOT / "benchmarks/models/mnist_heldout.npz"
PAPER = {"energy": {"xy": 14.0, "icoc": 12.2, "fxfy": 10.4, "xfx": 8.9},
         "size": {"normal": 6.1, "csr": 7.4, "coo": 2.4}}


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


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def paper_columns(out: pathlib.Path, members: list[dict], base_acc: float, original, profile) -> dict | None:
    """The paper's columns: per dataflow / coding, the best member within 0.3 points of float (test)."""
    import onnx
    from reference import _factors

    ok = [m for m in members if m["accuracy"] >= base_acc - 0.003 and m.get("within_max_drop") is not False]
    if not ok:
        return None
    protos = [(m, onnx.load(str(out / m["file"]))) for m in ok]
    cols = {}
    for df in profile.dataflows:
        m, f = max(((m, _factors(p, original, profile, df, None)[0]) for m, p in protos), key=lambda t: t[1])
        cols[df] = {"x": f, "file": m["file"], "accuracy": m["accuracy"]}
    for cd in ("normal", "csr", "coo"):
        m, f = max(((m, _factors(p, original, profile, None, cd)[1]) for m, p in protos), key=lambda t: t[1])
        cols[cd] = {"x": f, "file": m["file"], "accuracy": m["accuracy"]}
    return cols


def ablation(out: pathlib.Path, train: pathlib.Path, rank: int, args, name: str) -> list[dict]:
    """One member fine-tuned three ways (each on a copy of the run, same budget): what each part brings."""
    from emomc_onnx import api

    budget = args.ablation_time_budget or args.time_budget
    rows = []
    for label, kw in (("distillation + QAT", {}), ("distillation, member's steps frozen", {"qat": False}),
                      ("labels only + QAT", {"distill": False})):
        work = out.parent / f"{out.name}_ablation"
        if work.exists():
            shutil.rmtree(work)
        shutil.copytree(out, work, ignore=shutil.ignore_patterns("finetune*", "finetuned", "*.lock", ".emomc.lock"))
        meta = json.loads((work / "front.json").read_text())
        if "search_front" in meta:  # ranks of the search's front, as everywhere here
            (work / "front.json").write_text(json.dumps({**meta, "members": meta["search_front"]["members"]}))
        s = api.finetune(work, train, members=[rank], epochs=args.epochs, lr=args.lr,
                         time_budget_s=None if args.epochs else budget, **kw)
        m = s["members"][0]
        n = m["eval_samples"]
        rows.append({"setting": label, "rank": rank, "before": _fmt(m["before"]["metric"], n),
                     "after": _fmt(m["after"]["metric"], n),
                     "change (points)": round(100 * (m["after"]["metric"] - m["before"]["metric"]), 2),
                     "epochs": m["epochs"], "train s": round(m["elapsed_s"], 1)})
        shutil.rmtree(work)
    how = f"{args.epochs} epochs" if args.epochs else f"{budget:.0f} s"
    write(f"{name}_ablation", rows, f"what each part brings (rank {rank}, {how} each)",
          extra={"command": "python benchmarks/finetune.py " + " ".join(sys.argv[1:])})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["demo", *MODELS], default="demo")
    ap.add_argument("--profile", default=None, help="default: eyeriss for the demo, emomc for the references")
    ap.add_argument("--out", default=None, help="compress output dir (reused if it holds a front)")
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--population", type=int, default=12)
    ap.add_argument("--search-time-budget", type=float, default=None)
    ap.add_argument("--members", default=None, help="front ranks (default: all, or --max-search-drop)")
    ap.add_argument("--max-search-drop", type=float, default=None,
                    help="fine-tune the members at most this many points below float on the search split")
    ap.add_argument("--min-energy-x", type=float, default=None,
                    help="with --max-search-drop: only members at least this energy factor (a cost, not a split figure)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--time-budget", type=float, default=None, help="fine-tuning seconds, all members")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--ablation", action="store_true", help="also the ablation on one member")
    ap.add_argument("--ablation-member", type=int, default=None,
                    help="rank for the ablation (default: the least accurate fine-tuned member)")
    ap.add_argument("--ablation-only", action="store_true",
                    help="only the ablation, on an existing run (--out, --ablation-member)")
    ap.add_argument("--ablation-time-budget", type=float, default=None, help="seconds per setting")
    args = ap.parse_args()
    if args.ablation_only and args.ablation_member is None:
        ap.error("--ablation-only needs --ablation-member")
    if args.epochs is None and args.time_budget is None and not (args.ablation_only and args.ablation_time_budget):
        args.epochs = 2

    from train_demo import load_mnist

    from emomc_onnx import api
    from emomc_onnx.candidate import EvaluatorConfig
    from emomc_onnx.cost import load_profile
    from emomc_onnx.finetune.refront import merge_front

    profile_name = args.profile or ("eyeriss" if args.model == "demo" else "emomc")
    name = "finetune" if args.model == "demo" else f"finetune_{args.model}"
    out = pathlib.Path(args.out or RESULTS / "reference_runs" / f"{name}_{profile_name}")
    t0 = time.perf_counter()
    if not (out / "front.json").exists():
        if args.model == "demo":
            model, data = api.demo_paths()
            kw = {"eval_samples": 500, "calib_samples": 128, "workers": 1}
        else:
            model, data = MODELS[args.model], HELDOUT
            kw = {"eval_samples": 1000, "calib_samples": 200, "workers": 2}
        api.compress(model, out, profile_name=profile_name, data=data, generations=args.generations,
                     population=args.population, time_budget_s=args.search_time_budget, **kw)
    t_compress = time.perf_counter() - t0
    if args.ablation_only:
        xt, yt, _, _ = load_mnist()
        train = out / "mnist_train.npz"
        np.savez(train, input=xt, labels=yt)
        ablation(out, train, args.ablation_member, args, name)
        return
    meta = json.loads((out / "front.json").read_text())
    search_front = (meta.get("search_front") or {}).get("members") or meta["members"]
    xt, yt, _, _ = load_mnist()
    train = out / "mnist_train.npz"
    np.savez(train, input=xt, labels=yt)
    if args.members:
        ranks = [int(r) for r in args.members.split(",")]
    elif args.max_search_drop is not None:
        base_s = meta["baseline"]["search"]["metric"]
        ranks = [m["rank"] for m in search_front if m["metric_search"] >= base_s - args.max_search_drop / 100
                 and m["energy_factor"] >= (args.min_energy_x or 0)]
    else:
        ranks = None
    if "search_front" in meta:  # an earlier merge: fine-tune the search's members (by rank) again
        shutil.copy(out / "front.json", out / "front.merged.json")
        (out / "front.json").write_text(json.dumps({**meta, "members": search_front}))
    t1, c1 = time.perf_counter(), _cpu_s()
    summary = api.finetune(out, train, members=ranks, epochs=args.epochs, time_budget_s=args.time_budget,
                           lr=args.lr)
    t_ft, c_ft = time.perf_counter() - t1, _cpu_s() - c1
    t2 = time.perf_counter()
    (out / "front.json").write_text(json.dumps({**meta, "members": search_front,
                                                "search_front": {"members": search_front}}))
    merged = merge_front(out)
    t_merge = time.perf_counter() - t2
    base = summary["baseline"]["metric"]
    rows = []
    for m in summary["members"]:
        if ranks is not None and m["rank"] not in ranks:
            continue
        n = m["eval_samples"]
        rows.append({"rank": m["rank"], "before": _fmt(m["before"]["metric"], n),
                     "after": _fmt(m["after"]["metric"], n),
                     "change (points)": round(100 * (m["after"]["metric"] - m["before"]["metric"]), 2),
                     "energy x": round(m["energy_factor"]["after"], 2), "size x": round(m["size_factor"]["after"], 2),
                     "epochs": m["epochs"], "train s": round(m["elapsed_s"], 1), "eval samples": n})
    extra = {"model": args.model, "profile": profile_name, "compress_s": t_compress, "finetune_s": t_ft,
             "finetune_cpu_s": c_ft, "finetune_cpu_share": c_ft / t_ft if t_ft else None, "merge_s": t_merge,
             "train_samples": summary["train_samples"], "epochs": args.epochs, "time_budget_s": args.time_budget,
             "lr": args.lr, "ranks": ranks, "merge": {k: v for k, v in merged.items() if k != "members"},
             "front_after": merged["members"], "summary": json.loads(json.dumps(summary, default=float)),
             "command": "python benchmarks/finetune.py " + " ".join(sys.argv[1:])}
    if profile_name == "emomc":
        ev = EvaluatorConfig.from_record(meta["evaluator"])()
        prof = load_profile(profile_name)
        before = paper_columns(out, search_front, base, ev.original, prof)
        after = paper_columns(out, merged["members"], base, ev.original, prof)
        extra["paper_columns"] = {"before": before, "after": after, "paper": PAPER}
        cols = [*PAPER["energy"], *PAPER["size"]]
        prows = [{"front": "paper (VGG-16, CIFAR-10, 24 GPU-h)",
                  **{c: f"{(PAPER['energy'] | PAPER['size'])[c]:.1f}x" for c in cols}}]
        for label, pc in (("search front (no training)", before), ("re-chosen after fine-tuning", after)):
            prows.append({"front": label, **{c: (f"{pc[c]['x']:.1f}x" if pc else "-") for c in cols}})
        write(f"{name}_paper", prows, f"{args.model} / emomc: best member within 0.3 points of float "
              f"({100 * base:.2f}%) on the test split, per dataflow (energy x) and coding (size x)")
    if args.ablation:
        ab_rank = args.ablation_member
        if ab_rank is None:
            ab_rank = min((m for m in summary["members"] if ranks is None or m["rank"] in ranks),
                          key=lambda m: m["before"]["metric"])["rank"]
        extra["ablation"] = ablation(out, train, ab_rank, args, name)
    budget = f"{args.epochs} epochs" if args.epochs else f"{args.time_budget:.0f} s"
    write(name, rows, f"fine-tuning the {args.model} front ({budget}, float {100 * base:.2f}%, "
          f"{t_ft:.0f} s wall, CPU share {c_ft / max(t_ft, 1e-9):.2f} cores)", extra=extra)


if __name__ == "__main__":
    main()
