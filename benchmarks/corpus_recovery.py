"""Why 25% pruning + lsq kept so little of the corpus models' outputs, measured.

For each model: a uniform 25% prune (multiple 8, l1), then recovery ``none``; ``lsq`` (each
consumer re-fitted from the *original* model's inputs, what ``compress`` does per candidate);
``lsq+refit`` (then every layer re-fitted in graph order on the pruned model's own inputs, what
``prune --recovery lsq`` does), with 16 / 64 calibration samples; fidelity on held-out samples
(top-1 agreement for classifiers, output SQNR and cosine):

    python benchmarks/corpus_recovery.py --models ppocr_cls,ppocr_rec --calib 16,64
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import corpus

MODES = ("none", "lsq", "lsq+refit")


def study(name: str, calibs: list[int], held_n: int, modes: list[str]) -> list[dict]:
    import onnx
    import onnxruntime as ort

    from emomc_onnx import api, io
    from emomc_onnx.evaluate.metrics import cosine_similarity, sqnr_db, top1_agreement
    from emomc_onnx.passes.channel_pruning import uniform_plan
    from emomc_onnx.passes.recovery import lsq_rows, prune_with_recovery

    entry = corpus.by_name(name)
    data = entry.build(max(calibs) + held_n, seed=0)
    held = {k: v[max(calibs):] for k, v in data.items()}
    shapes = corpus.input_shape_args(onnx.load(str(entry.path()), load_external_data=False), data)[1::2]
    loaded = api.load(str(entry.path()), shapes or None)
    analysis = api.analyze(loaded)
    original = loaded.proto()

    def run(proto) -> list[np.ndarray]:
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        fixed = sess.get_inputs()[0].shape[0]
        b = fixed if isinstance(fixed, int) and fixed > 0 else 8
        outs = [sess.run(None, {k: held[k][i:i + b] for k in names}) for i in range(0, held_n, b)]
        return [np.concatenate([o[j] for o in outs]) for j in range(len(outs[0]))]

    ref = run(original)
    plan = uniform_plan(analysis, 0.25, multiple=8)
    rows = []
    for c in calibs:
        with tempfile.TemporaryDirectory() as tmp:
            f = pathlib.Path(tmp) / "calib.npz"
            np.savez(f, **{k: v[:c] for k, v in data.items()})
            batches = api.calibration_batches(f, original, c)
        for mode in modes:
            t = time.perf_counter()
            model = io.clone(loaded.model)
            rec = "none" if mode == "none" else "lsq"
            lrows = lsq_rows(loaded.model, analysis.layers, original, batches, max_rows=4096) if rec == "lsq" else None
            prune_with_recovery(model, analysis, plan, recovery=rec, original=original, batches=batches,
                                rows=lrows, refit_pruned=mode == "lsq+refit")
            out = run(loaded.restore_signature(io.to_proto(model)))
            row = {"model": name, "calib": c, "held_out": held_n, "recovery": mode,
                   "sqnr_db": round(sqnr_db(out[:1], ref[:1]), 2), "cosine": round(cosine_similarity(out[:1], ref[:1]), 4),
                   "seconds": round(time.perf_counter() - t, 1)}
            if entry.classifier:
                row["agreement"] = round(top1_agreement(out[:1], ref[:1]), 4)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="ppocr_cls,ppocr_rec")
    ap.add_argument("--calib", default="16,64")
    ap.add_argument("--held-out", type=int, default=32)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--output", default=str(corpus.RESULTS / "corpus_recovery.json"))
    args = ap.parse_args(argv)
    rows = []
    for name in args.models.split(","):
        rows += study(name, [int(x) for x in args.calib.split(",")], args.held_out, args.modes.split(","))
    out = pathlib.Path(args.output)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2))
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
