"""Our QDQ quantizer vs ONNX Runtime's quantize_static; calibration and QDQ insertion time.

Demo CNN (MNIST held-out, top-1) and the trained ResNet-style CNN if present; both through
ORT with its default optimisations (what deploys) and with optimisations off (the QDQ
semantics). 8-bit weights are stored as uint8 around 128 by default (ORT's U8U8 kernels); the
int8 row shows ORT's U8S8 AVX2 saturation on CPUs without VNNI (ORT's quantize_static has it
too). QDQ insertion time on a ResNet-18-size model once calibrated (target < 0.3 s).

    python benchmarks/quantization.py
"""

from __future__ import annotations

import os
import tempfile
import time

import _common  # noqa: F401
import numpy as np
import onnx
import onnxruntime as ort
from _common import ROOT, write

from emomc_onnx import api, io
from emomc_onnx.evaluate.calibration import activation_tensors, calibrate
from emomc_onnx.passes.quantize import LayerBits, QuantPlan, quantize_model
from tests.models import build


def _out(proto, x, optimize=True):
    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 256]})[0] for i in range(0, len(x), 256)])


def _ort_static(proto, calib, wtype):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib[i:i + 64]} for i in range(0, len(calib), 64)])

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "f.onnx"), os.path.join(tmp, "q.onnx")
        onnx.save(proto, src)
        quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=getattr(QuantType, wtype))
        return onnx.load(dst)


def main() -> None:
    models = [("demo", *api.demo_paths())]
    if (ROOT / "benchmarks/models/resnet.onnx").exists():
        models.append(("resnet (MNIST)", ROOT / "benchmarks/models/resnet.onnx",
                       ROOT / "benchmarks/models/mnist_heldout.npz"))
    rows = []
    for name, mpath, dpath in models:
        proto = io.load_model(mpath).proto()
        d = np.load(dpath)
        x, y = d["input"].astype(np.float32), d["labels"]
        calib, x, y = x[:200], x[200:], y[200:]
        names = [n.name for n in proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
        t = time.perf_counter()
        ranges = calibrate(proto, {"input": calib}, activation_tensors(proto, names))
        t_cal = time.perf_counter() - t
        ref = _out(proto, x)
        sq = lambda o: float(10 * np.log10((ref**2).sum() / ((ref - o) ** 2).sum()))  # noqa: E731
        rows.append({"model": name, "method": "float", "bits": "32", "top1": float((ref.argmax(1) == y).mean()),
                     "SQNR dB (ORT opt)": float("inf"), "SQNR dB (QDQ exact)": float("inf"), "calib s": 0.0})
        for wtype, label in (("QInt8", "8/8"), ("QInt4", "4/8")):
            try:
                q = _ort_static(proto, calib, wtype)
                o = _out(q, x)
                rows.append({"model": name, "method": "ORT quantize_static", "bits": label,
                             "top1": float((o.argmax(1) == y).mean()), "SQNR dB (ORT opt)": sq(o),
                             "SQNR dB (QDQ exact)": sq(_out(q, x, False)), "calib s": float("nan")})
            except Exception as exc:
                print(f"ORT {label}: {exc}")
        for wb, ab, u8 in ((8, 8, True), (8, 8, False), (7, 8, True), (6, 8, True), (4, 8, True), (4, 4, True),
                           (2, 8, True)):
            q = quantize_model(proto, QuantPlan({n: LayerBits(wb, ab) for n in names}, weight8_unsigned=u8), ranges)
            o = _out(q, x)
            label = "emomc-onnx" if u8 or wb != 8 else "emomc-onnx (int8 weights, U8S8)"
            rows.append({"model": name, "method": label, "bits": f"{wb}/{ab}",
                         "top1": float((o.argmax(1) == y).mean()), "SQNR dB (ORT opt)": sq(o),
                         "SQNR dB (QDQ exact)": sq(_out(q, x, False)), "calib s": t_cal})
    # QDQ insertion time, ResNet-18 size, once calibrated
    fx = build("resnet18_like")
    proto = io.load_model(fx.path).proto()
    names = [n.name for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]
    tensors = activation_tensors(proto, names)
    x = np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32)
    t = time.perf_counter()
    ranges = calibrate(proto, {"input": x}, tensors, batch_size=4)
    t_cal = time.perf_counter() - t
    times = []
    for _ in range(3):
        t = time.perf_counter()
        quantize_model(proto, QuantPlan({n: LayerBits(8, 8) for n in names}), ranges)
        times.append(time.perf_counter() - t)
    write("quantization", rows, "Quantization: ours vs ORT quantize_static (top-1 on held-out MNIST)",
          {"resnet18_qdq_insertion_s_median": float(np.median(times)), "resnet18_calibration_s_8_samples": t_cal,
           "target_insertion_s": 0.3})
    print(f"ResNet-18-size QDQ insertion (calibrated): {np.median(times):.3f} s (target 0.3 s); "
          f"calibration on 8 samples {t_cal:.2f} s")


if __name__ == "__main__":
    main()
