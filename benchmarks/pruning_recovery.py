"""How much accuracy training-free recovery gets back at 30% and 50% channel removal, and at
50% / 65% of weights zeroed by fine-grained magnitude sparsity (plain vs least-squares re-fit).

Models: the embedded demo CNN on its held-out MNIST digits (top-1 accuracy), and the
ResNet-style fixture (random weights: agreement of top-1 with the unpruned model and output
SQNR, on random inputs). Recovery: none, bias compensation, least squares. Also times the
recovery per calibration sample.

    python benchmarks/pruning_recovery.py [--calib 256]
"""

from __future__ import annotations

import argparse
import time

import _common  # noqa: F401
import numpy as np
import onnxruntime as ort
from _common import write

from emomc_onnx import io
from emomc_onnx.analysis import analyze
from emomc_onnx.passes.channel_pruning import uniform_plan
from emomc_onnx.passes.recovery import lsq_rows, prune_with_recovery, sparsify_with_refit
from emomc_onnx.passes.sparsity import SparsityPass, SparsityPlan
from tests.models import build


def _run(proto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 256]})[0] for i in range(0, len(x), 256)])


def _sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    return float(10 * np.log10((ref**2).sum() / max(((ref - out) ** 2).sum(), 1e-30)))


def cases():
    try:
        from emomc_onnx.demo import demo_data_path, demo_model_path

        data = np.load(demo_data_path())
        x = data["input"].astype(np.float32)
        yield "demo (MNIST)", str(demo_model_path()), x[:256], x[256:], data["labels"][256:], 8
    except Exception as exc:  # demo files not built yet
        print(f"demo model unavailable: {exc}")
    from _common import ROOT

    if (ROOT / "benchmarks/models/resnet.onnx").exists():
        data = np.load(ROOT / "benchmarks/models/mnist_heldout.npz")
        x = data["input"].astype(np.float32)
        yield ("resnet-style (MNIST)", str(ROOT / "benchmarks/models/resnet.onnx"), x[:256], x[256:],
               data["labels"][256:], 8)
    fx = build("resnet")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1256, 3, 16, 16)).astype(np.float32)
    yield "resnet fixture (random)", str(fx.path), x[:256], x[256:], None, 4


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib", type=int, default=256)
    args = ap.parse_args()
    rows = []
    for name, path, calib, evalx, labels, multiple in cases():
        calib = calib[: args.calib]
        loaded = io.load_model(path)
        analysis = analyze(loaded.model)
        original = loaded.proto()
        ref = _run(original, evalx)
        batches = [{"input": calib[i:i + 64]} for i in range(0, len(calib), 64)]
        base = {"model": name, "kind": "-", "removed": 0.0, "recovery": "-", "MACs": analysis.macs,
                "accuracy": float((ref.argmax(1) == labels).mean()) if labels is not None else None}
        base.update({"agreement": 1.0, "SQNR dB": float("inf"), "recovery s/sample": 0.0})
        rows.append(base)
        for ratio in (0.3, 0.5):
            plan = uniform_plan(analysis, ratio, multiple=multiple)
            for rec in ("none", "bias", "lsq"):
                model = io.clone(loaded.model)
                t = time.perf_counter()
                prune_with_recovery(model, analysis, plan, recovery=rec, original=original, batches=batches)
                dt = time.perf_counter() - t
                out = _run(io.to_proto(model), evalx)
                row = {"model": name, "kind": "channels", "removed": ratio, "recovery": rec, "MACs": analyze(model).macs,
                       "accuracy": float((out.argmax(1) == labels).mean()) if labels is not None else None}
                row.update({"agreement": float((out.argmax(1) == ref.argmax(1)).mean()),
                            "SQNR dB": _sqnr(ref, out),
                            "recovery s/sample": dt / len(calib) if rec != "none" else 0.0})
                rows.append(row)
        rows_x = lsq_rows(loaded.model, analysis.layers, original, batches)
        for zeroed in (0.5, 0.65):
            splan = SparsityPlan(density={lay.name: 1.0 - zeroed for lay in analysis.layers})
            for rec in ("none", "lsq"):
                model = io.clone(loaded.model)
                t = time.perf_counter()
                if rec == "lsq":
                    sparsify_with_refit(model, analysis, None, rows_x, splan)
                else:
                    SparsityPass(splan)(model)
                dt = time.perf_counter() - t
                out = _run(io.to_proto(model), evalx)
                row = {"model": name, "kind": "weights", "removed": zeroed, "recovery": rec,
                       "MACs": analysis.macs,
                       "accuracy": float((out.argmax(1) == labels).mean()) if labels is not None else None}
                row.update({"agreement": float((out.argmax(1) == ref.argmax(1)).mean()),
                            "SQNR dB": _sqnr(ref, out),
                            "recovery s/sample": dt / len(calib) if rec != "none" else 0.0})
                rows.append(row)
    write("pruning_recovery", rows, "Training-free recovery after uniform channel pruning",
          {"calibration_samples": args.calib})


if __name__ == "__main__":
    main()
