"""What cli.py and Python users call: analyze(), prune(), quantize(), profile(), compress(), select()."""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from emomc_onnx import io
from emomc_onnx.analysis import Analysis, analyze as _analyze
from emomc_onnx.errors import EmomcError

__all__ = ["analyze", "prune", "demo_paths", "load", "calibration_batches"]

logger = logging.getLogger(__name__)


def demo_paths() -> tuple[pathlib.Path, pathlib.Path]:
    """The embedded demo model and its data (.npz)."""
    from emomc_onnx.demo import demo_data_path, demo_model_path

    return demo_model_path(), demo_data_path()


def _shapes(input_shapes: Sequence[str] | Mapping[str, Sequence[int]] | None) -> dict | None:
    if not input_shapes:
        return None
    if isinstance(input_shapes, Mapping):
        return {k: tuple(v) for k, v in input_shapes.items()}
    return io.parse_input_shapes(list(input_shapes))


def load(model: str | os.PathLike[str], input_shapes=None) -> io.LoadedModel:
    """Load and normalise a model file."""
    return io.load_model(model, _shapes(input_shapes))


def analyze(model: str | os.PathLike[str] | io.LoadedModel, input_shapes=None) -> Analysis:
    """Layers, MACs, params and channel-dependency groups of a model file."""
    loaded = model if isinstance(model, io.LoadedModel) else load(model, input_shapes)
    return _analyze(loaded.model)


def calibration_batches(
    data: str | os.PathLike[str], proto: onnx.ModelProto, samples: int, seed: int = 0,
    batch_size: int = 64,
) -> list[dict[str, np.ndarray]]:
    """Feed dicts of ``samples`` calibration samples from an .npz, checked against the model."""
    from emomc_onnx.evaluate.data import input_specs, load_data

    ds = load_data(data)
    ds.check(input_specs(proto))
    calib, _ = ds.split(calib=min(samples, len(ds)), eval=0, seed=seed)
    return list(calib.batches(batch_size))


def prune(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    ratio: float = 0.0,
    sparsity: float | None = None,
    pattern: str = "unstructured",
    criterion: str = "l1",
    recovery: str = "none",
    multiple: int = 8,
    data: str | os.PathLike[str] | None = None,
    calib_samples: int = 256,
    input_shapes=None,
) -> dict:
    """Prune a model with one uniform plan; write it; return a before/after summary."""
    from emomc_onnx.passes.channel_pruning import uniform_plan
    from emomc_onnx.passes.recovery import activation_means, prune_with_recovery

    loaded = load(model, input_shapes)
    analysis = _analyze(loaded.model)
    original = loaded.proto()
    batches = None
    if recovery != "none" or criterion == "activation":
        if data is None:
            raise EmomcError(f"--recovery {recovery} / --criterion {criterion} need --data FILE.npz")
        batches = calibration_batches(data, original, calib_samples)
    plan = uniform_plan(analysis, ratio, multiple=multiple, criterion=criterion)
    if criterion == "activation":
        acts = activation_means(original, batches, analysis.layers, absolute=True)
        plan = type(plan)(keep=plan.keep, criterion=criterion, activations=acts)
    pruned = io.clone(loaded.model)
    prune_with_recovery(pruned, analysis, plan, recovery=recovery, original=original, batches=batches)
    after = _analyze(pruned)
    before_d = {"MACs": analysis.macs, "params": analysis.params}
    after_d = {"MACs": after.macs, "params": after.params}
    proto = io.to_proto(pruned)
    if sparsity is not None:
        from emomc_onnx.passes.sparsity import SparsityPlan, sparsify_model, weight_density

        if not 0.0 <= sparsity < 1.0:
            raise EmomcError(f"--sparsity {sparsity}: must be in [0, 1)")
        splan = SparsityPlan(density={lay.name: 1.0 - sparsity for lay in after.layers}, pattern=pattern)
        proto = sparsify_model(proto, splan)
        dens = weight_density(proto)
        total = sum(lay.params for lay in after.layers)
        before_d["density"] = 1.0
        after_d["density"] = sum(dens.get(lay.name, 1.0) * lay.params for lay in after.layers) / max(total, 1)
    onnx.checker.check_model(proto)
    io.save_model(proto, output)
    return {"title": f"prune {pathlib.Path(str(model)).name}", "before": before_d, "after": after_d,
            "output": str(output)}


def profile(
    model: str | os.PathLike[str],
    profile_name: str,
    *,
    dataflow: str | None = None,
    coding: str | None = None,
    compare: bool = False,
    input_shapes=None,
):
    """Energy and coded size of a float or QDQ model; every dataflow with ``compare``."""
    from emomc_onnx.cost import load_profile
    from emomc_onnx.costing import cost_layers
    from emomc_onnx.cost import compare_dataflows, model_cost

    prof = load_profile(profile_name)
    raw = io._read_proto(pathlib.Path(model))
    shapes = _shapes(input_shapes)
    if shapes:
        io._fix_input_shapes(raw, shapes, str(model))
    layers = cost_layers(raw, prof)
    if compare:
        return compare_dataflows(layers, prof, coding=coding)
    return model_cost(layers, prof, dataflow, coding)
