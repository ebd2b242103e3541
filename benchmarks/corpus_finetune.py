"""``emomc-onnx finetune`` end to end on the corpus models, after ``corpus.py`` compressed them.

For each model with a compress front in ``WORKDIR/MODEL/compress`` (a ``corpus.py --workdir``
run): training inputs built the same way as the corpus's but from another seed (the command
refuses any sample shared with the compress run's data, by hash: such samples, drawn again from
a finite pool, are dropped first), the CLI ``finetune OUTDIR --data train.npz --members R
--time-budget S --batch-size B`` on the front's least accurate
quantized member (search split), the test-split figure before and after (the command's own
``finetune.json``), and the fine-tuned file checked like every corpus output (onnx.checker,
ONNX Runtime with the original's signature and another batch size). A model whose member
holds an op the converter does not cover gets the command's one-line reason:

    python benchmarks/corpus_finetune.py --workdir /tmp/corpus --time-budget 120
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import corpus
from _common import write


def pick_member(front: dict) -> int | None:
    """The least accurate quantized member on the search split (the one with most to regain)."""
    quantized = [m for m in front["members"] if m.get("wbits")]
    pool = quantized or front["members"][1:]
    if not pool:
        return None
    return int(min(pool, key=lambda m: (m["metric_search"], -m["rank"]))["rank"])


def run_one(name: str, workdir: pathlib.Path, samples: int, time_budget: float, lr: float,
            batch_size: int) -> dict:
    import onnx

    entry = corpus.by_name(name)
    out = workdir / name / "compress"
    front_path = out / "front.json"
    row: dict = {"model": name, "exporter": entry.exporter}
    if not front_path.is_file():
        return {**row, "finetune": "no compress front (run corpus.py --workdir first)"}
    front = json.loads(front_path.read_text())
    rank = pick_member(front)
    if rank is None:
        return {**row, "finetune": "front has no member besides the float model"}
    import numpy as np

    from emomc_onnx.evaluate.data import Dataset
    from emomc_onnx.finetune.overlap import sample_hashes

    n = min(samples, entry.samples)
    t = time.perf_counter()
    train = entry.build(n, seed=1)
    # a model whose inputs come from a finite pool (the tokenised sentences) draws some of the
    # compress run's samples again: drop them (the command refuses any shared sample)
    with np.load(workdir / name / "all.npz") as z:
        used = set(sample_hashes(Dataset({k: z[k] for k in z.files})))
    keep = np.array([h not in used for h in sample_hashes(Dataset(train))])
    train = {k: v[keep] for k, v in train.items()}
    n = int(keep.sum())
    train_path = workdir / name / "finetune_train.npz"
    np.savez(train_path, **train)
    build_s = time.perf_counter() - t
    original = onnx.load(str(entry.path()), load_external_data=False)
    res = corpus.run_cli(["finetune", str(out), "--data", str(train_path), "--members", str(rank),
                          "--time-budget", str(time_budget), "--lr", str(lr), "--batch-size", str(batch_size)],
                         time_budget * 4 + 900)
    row.update({"rank": rank, "train samples": n, "build s": round(build_s, 1), "wall s": round(res["wall_s"], 1),
                "finetune": "ok" if res["ok"] else f"FAIL: {res['reason']}"})
    if not res["ok"]:
        return row
    summary = json.loads((out / "finetune.json").read_text())
    m = next(x for x in summary["members"] if x["rank"] == rank)
    path = out / m["file"]
    check = corpus.check_emitted(entry, path, entry.path(), entry.alt_geometry,
                                 entry.build(3, seed=2))
    row.update({
        "metric": m.get("metric_name"), "test n": m.get("eval_samples"),
        "before": round(m["before"]["metric"], 4), "after": round(m["after"]["metric"], 4),
        "energy x": round(m["energy_factor"]["after"], 2), "size x": round(m["size_factor"]["after"], 2),
        "epochs": m.get("epochs"), "device": m.get("device"),
        "checks": "ok" if check["ok"] else "; ".join(check["problems"])[:200],
        "opset": corpus._opset(original),
    })
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True, help="a corpus.py --workdir holding MODEL/compress fronts")
    ap.add_argument("--models", default=None, help="comma-separated corpus names (default: every front found)")
    ap.add_argument("--samples", type=int, default=96, help="training samples per model (fewer for large inputs)")
    ap.add_argument("--time-budget", type=float, default=120.0, help="fine-tuning seconds per model")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=16,
                    help="training batch (64 OOM-killed ppocr_rec's fine-tuning at 16 GB)")
    ap.add_argument("--output", default="corpus_finetune")
    args = ap.parse_args(argv)
    workdir = pathlib.Path(args.workdir)
    names = args.models.split(",") if args.models else [
        e.name for e in corpus.CORPUS if (workdir / e.name / "compress" / "front.json").is_file()]
    rows = []
    for name in names:
        print(f"[{name}] fine-tuning", flush=True)
        rows.append(run_one(name, workdir, args.samples, args.time_budget, args.lr, args.batch_size))
        print(f"[{name}] {rows[-1].get('finetune')} {rows[-1].get('before', '')} -> {rows[-1].get('after', '')}",
              flush=True)
    write(args.output, rows, "finetune on the corpus models (one member each, test split)",
          {"time_budget_s": args.time_budget, "lr": args.lr, "samples": args.samples, "batch_size": args.batch_size,
           "command": "python benchmarks/corpus_finetune.py " + " ".join(argv or sys.argv[1:])})
    return 0 if all(r.get("finetune") == "ok" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
