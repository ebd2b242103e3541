"""Shared helpers for benchmark scripts: timing, a rich table, JSON output."""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def timeit(fn: Callable[[], object], repeat: int = 5) -> dict:
    """Median and min wall time of ``repeat`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeat": repeat}


def write(name: str, rows: list[dict], title: str, extra: dict | None = None) -> pathlib.Path:
    """Print rows as a table and write them (plus machine info) to results/NAME.json."""
    console = Console(width=160)
    table = Table(title=title)
    cols = list(rows[0]) if rows else []
    for c in cols:
        table.add_column(c)
    for r in rows:
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()])
    console.print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    data = {"rows": rows, "cpu_count": os.cpu_count(), **(extra or {})}
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, out)
    console.print(f"wrote {out}")
    return out


def demo_evaluator_factory(profile: str = "eyeriss", eval_samples: int = 500, calib_samples: int = 128):
    """The evaluator factory of the embedded demo (model + MNIST held-out data).

    The defaults are the benchmarks' lighter setting; ``compress --demo`` uses its default
    splits of the 3,000 demo samples: 300 calibration, 1,000 search, 1,700 test."""
    from emomc_onnx.api import demo_paths
    from emomc_onnx.candidate import EvaluatorConfig

    model, data = demo_paths()
    return EvaluatorConfig(model=str(model), profile=profile, data=str(data), eval_samples=eval_samples,
                           calib_samples=calib_samples)


def ort_points(model_path, calib_batches) -> dict:
    """ONNX Runtime's own ``quantize_static`` on the imported model: int8 weights and
    activations, and int4 weights (QDQ, per channel, MinMax, the given calibration batches).
    Returns name -> ModelProto; a variant ORT cannot produce is reported and left out."""
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from emomc_onnx import io

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(list(calib_batches))

        def get_next(self):
            return next(self.it, None)

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "f.onnx")
        onnx.save(io.load_model(model_path).proto(), src)
        for name, wt in (("ORT int8", QuantType.QInt8), ("ORT int4-weight", QuantType.QInt4)):
            dst = os.path.join(tmp, f"{name}.onnx")
            try:
                quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=wt)
                out[name] = onnx.load(dst)
            except Exception as exc:  # noqa: BLE001 - a variant this ORT cannot build is skipped
                print(f"{name}: {exc}")
    return out
