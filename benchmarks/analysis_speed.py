"""Import + analysis time of a ResNet-50-size graph (target < 1 s), and 50% pruning (target < 1 s).

Baseline measured in the same run: onnx.load + onnx.checker + ONNX shape inference of the
same file (what any ONNX tool pays before doing anything).

    python benchmarks/analysis_speed.py
"""

from __future__ import annotations

import _common  # noqa: F401  (sets sys.path)
import onnx
from _common import timeit, write

from emomc_onnx import io
from emomc_onnx.analysis import analyze
from emomc_onnx.passes.channel_pruning import apply_keep_mask, group_importance, select_channels, uniform_plan
from tests.models import build


def main() -> None:
    rows = []
    for name in ("resnet18_like", "resnet50_like"):
        fx = build(name)
        loaded = io.load_model(fx.path)
        analysis = analyze(loaded.model)
        plan = uniform_plan(analysis, 0.5)

        def baseline():
            m = onnx.load(str(fx.path))
            onnx.checker.check_model(m)
            onnx.shape_inference.infer_shapes(m)

        def prune():
            model = io.clone(loaded.model)
            keep = select_channels(analysis, plan, group_importance(model, analysis))
            apply_keep_mask(model, analysis, keep)

        t_base = timeit(baseline, 3)["median_s"]
        t_load = timeit(lambda: io.load_model(fx.path), 3)["median_s"]
        t_an = timeit(lambda: analyze(loaded.model), 3)["median_s"]
        t_prune = timeit(prune, 3)["median_s"]
        rows.append({"model": name, "layers": len(analysis.layers), "groups": len(analysis.groups),
                     "MACs": analysis.macs, "params": analysis.params,
                     "onnx load+check+infer s (baseline)": t_base, "import s": t_load, "analysis s": t_an,
                     "import+analysis s": t_load + t_an, "prune 50% s": t_prune,
                     "target s": 1.0})
    write("analysis_speed", rows, "Import, analysis and pruning time")


if __name__ == "__main__":
    main()
