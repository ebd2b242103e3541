"""What cli.py and Python users call: analyze(), prune(), quantize(), profile(), compress(), select()."""

from __future__ import annotations

import logging
import math
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from emomc_onnx import io
from emomc_onnx.analysis import Analysis
from emomc_onnx.analysis import analyze as _analyze
from emomc_onnx.cost import load_profile, model_cost
from emomc_onnx.cost.from_onnx import cost_layers, cost_other_ops
from emomc_onnx.demo import demo_data_path, demo_model_path
from emomc_onnx.errors import DiskFullError, EmomcError
from emomc_onnx.evaluate.data import input_specs, load_data
from emomc_onnx.passes.channel_pruning import uniform_plan
from emomc_onnx.passes.quantize import LayerBits, QuantPlan, quantize_model
from emomc_onnx.passes.sparsity import weight_density
from emomc_onnx.paths import (
    check_output_dir,
    check_output_file,
    discard_new_outdir,
    locked,
    prepare_outdir,
)
from emomc_onnx.search.backends import parse_cluster
from emomc_onnx.search.space import CompressionPlan, make_space
from emomc_onnx.search.store import ResultStore

# Imported where used, so a command that does not need them starts without them: candidates
# and calibration (ONNX Runtime: not for analyze, profile, select), the search driver and the
# front's export and reader (pymoo, matplotlib), the sensitivity report (matplotlib, scipy)
# and fine-tuning (torch).

__all__ = [
    "analyze",
    "calibration_batches",
    "compress",
    "demo_paths",
    "finetune",
    "finetune_front_and_merge",
    "load",
    "profile",
    "prune",
    "quantize",
    "select",
    "sensitivity",
]

logger = logging.getLogger(__name__)


def demo_paths() -> tuple[pathlib.Path, pathlib.Path]:
    """The embedded demo model and its data (.npz)."""
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
    from emomc_onnx.candidate import CandidateBuilder

    check_output_file(output)
    if multiple < 1:
        raise EmomcError(f"--multiple {multiple}: must be >= 1")
    if calib_samples < 1:
        raise EmomcError(f"--calib-samples {calib_samples}: must be >= 1")
    if sparsity is not None and not 0.0 <= sparsity < 1.0:
        raise EmomcError(f"--sparsity {sparsity}: must be in [0, 1)")
    loaded = load(model, input_shapes)
    analysis = _analyze(loaded.model)
    batches = None
    if recovery != "none" or criterion == "activation":
        if data is None:
            raise EmomcError(f"--recovery {recovery} / --criterion {criterion} need --data FILE.npz")
        batches = calibration_batches(data, loaded.proto(), calib_samples)
    keep = uniform_plan(analysis, ratio, multiple=multiple, criterion=criterion).keep
    density = {lay.name: 1.0 - sparsity for lay in analysis.layers} if sparsity is not None else {}
    # one pass over the calibration data serves pruning and sparsity (lsq re-fits both)
    builder = CandidateBuilder(loaded, analysis, batches, recovery=recovery, criterion=criterion, pattern=pattern,
                               max_rows=4096, cache_bytes=0, refit_pruned=True)
    pruned = builder.float_ir(CompressionPlan(keep=keep, density=density, wbits={}, abits={}))
    io.refresh_shapes(pruned)  # shapes behind computed Reshapes too, for the analysis below
    after = _analyze(pruned)
    before_d = {"MACs": analysis.macs, "params": analysis.params}
    after_d = {"MACs": after.macs, "params": after.params}
    if sparsity is not None:
        dens = weight_density(pruned)
        total = sum(lay.params for lay in after.layers)
        before_d["density"] = 1.0
        after_d["density"] = sum(dens.get(lay.name, 1.0) * lay.params for lay in after.layers) / max(total, 1)
    proto = builder.finish(pruned)  # the original's inputs and outputs
    onnx.checker.check_model(proto)
    io.save_model(proto, output)
    before_d["file bytes"], after_d["file bytes"] = _file_bytes(model), _file_bytes(output)
    return {"title": f"prune {pathlib.Path(str(model)).name}", "before": before_d, "after": after_d,
            "output": str(output)}


def _file_bytes(path) -> int:
    """Bytes on disk of a model file (with its external data file, if any)."""
    p = pathlib.Path(str(path))
    data = p.with_name(p.name + ".data")
    return p.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def profile(
    model: str | os.PathLike[str],
    profile_name: str,
    *,
    dataflow: str | None = None,
    coding: str | None = None,
    compare: bool = False,
    input_shapes=None,
    batch: int | None = None,
):
    """Energy and coded size of a float or QDQ model (its non-compute ops listed and costed)
    over a batch (default: the profile's); every dataflow with ``compare``."""
    prof = load_profile(profile_name)
    loaded = load(model, input_shapes)  # the same import as every command (QDQ nodes kept)
    proto = io.to_proto(loaded.model)
    layers = cost_layers(proto, prof)
    others = cost_other_ops(proto, [c.layer for c in layers], _shapes(input_shapes))
    if compare:
        return {d: model_cost(layers, prof, d, coding, other_ops=others, batch=batch)
                for d in prof.dataflows}
    return model_cost(layers, prof, dataflow, coding, other_ops=others, batch=batch)


def compress(
    model: str | os.PathLike[str],
    outdir: str | os.PathLike[str],
    *,
    profile_name: str = "eyeriss",
    data: str | os.PathLike[str] | None = None,
    space: str = "full",
    objectives: Sequence[str] = ("error", "energy", "size"),
    max_accuracy_drop: float | None = None,
    generations: int = 6,
    population: int = 16,
    max_evaluations: int | None = None,
    time_budget_s: float | None = None,
    eval_samples: int | None = None,
    calib_samples: int | None = None,
    test_samples: int | None = None,
    test_data: str | os.PathLike[str] | None = None,
    split_seed: int = 0,
    metric: str | None = None,
    dataflow: str | None = None,
    coding: str | None = None,
    workers: int | None = None,
    resume: bool = True,
    seed: int = 0,
    input_shapes=None,
    progress=None,
    extra_points: Mapping | None = None,
    cluster: str | None = None,
    ort_threads: int = 1,
    recovery: str = "lsq",
    overwrite: bool = False,
    schedule: str = "generational",
    surrogate: bool = True,
):
    """Run the two-stage search and export the front; returns (result, entries, evaluator).

    The data is split once (``split_seed``) into calibration, search and test samples; the
    front is chosen on the search split and every reported figure is on the test split.
    ``seed`` seeds the search only.
    OUTDIR is locked for the run; a front of another run (other fingerprint) in it is only
    replaced with ``overwrite``.
    """
    from emomc_onnx.candidate import EvaluatorConfig
    from emomc_onnx.export.front import check_front_owner, export_front
    from emomc_onnx.search.driver import SearchConfig, run_search

    check_output_dir(outdir)
    _check_run_args(seed=seed, eval_samples=eval_samples, calib_samples=calib_samples,
                    max_accuracy_drop=max_accuracy_drop)
    shapes = _shapes(input_shapes) or {}
    workers = workers or min(os.cpu_count() or 1, 2)
    config = EvaluatorConfig(
        model=str(pathlib.Path(str(model)).resolve()), profile=profile_name,
        data=str(pathlib.Path(str(data)).resolve()) if data else None,
        input_shapes=tuple((k, tuple(v)) for k, v in shapes.items()), dataflow=dataflow, coding=coding,
        metric=metric, eval_samples=eval_samples, calib_samples=calib_samples, test_samples=test_samples,
        test_data=str(pathlib.Path(str(test_data)).resolve()) if test_data else None, split_seed=split_seed,
        recovery=recovery, threads=ort_threads,
    )
    if cluster:
        parse_cluster(cluster)  # a malformed address fails before any work
    evaluator = config()
    evaluator.baseline()  # a broken metric or data fails here, before OUTDIR is touched
    search_space = make_space(evaluator.analysis, evaluator.profile, kind=space)
    out, created = prepare_outdir(outdir)
    sconfig = SearchConfig(objectives=tuple(objectives), population=population, generations=generations,
                           max_evaluations=max_evaluations, time_budget_s=time_budget_s,
                           max_accuracy_drop=max_accuracy_drop, workers=workers, resume=resume,
                           cluster=cluster or None, schedule=schedule, surrogate=surrogate,
                           predicted_seeds=surrogate)
    try:
        with locked(out):
            check_front_owner(out, evaluator, overwrite=overwrite)
            with ResultStore.in_dir(out, resume=resume) as store:
                result = run_search(search_space, config, sconfig, store, progress=progress, seed=seed)
            entries = export_front(result, evaluator, out, extra_points=extra_points,
                                   splits=evaluator.splits.summary())
    except EmomcError as exc:
        if created and not isinstance(exc, DiskFullError) and not (out / "front.json").exists():
            with ResultStore.in_dir(out) as store:
                empty = store.total() == 0
            if empty:
                discard_new_outdir(out)
        raise
    return result, entries, evaluator


def sensitivity(
    model: str | os.PathLike[str],
    outdir: str | os.PathLike[str],
    *,
    profile_name: str = "eyeriss",
    data: str | os.PathLike[str] | None = None,
    eval_samples: int = 500,
    calib_samples: int = 256,
    metric: str | None = None,
    settings: Mapping[str, Sequence[float]] | None = None,
    seed: int = 0,
    input_shapes=None,
    progress=None,
):
    """Per-layer and per-group sensitivity (see :mod:`emomc_onnx.sensitivity`); writes
    sensitivity.json and sensitivity.png into ``outdir`` and keeps every measurement in its
    result store. Returns the report."""
    from emomc_onnx.candidate import EvaluatorConfig
    from emomc_onnx.export.sensitivity import write_sensitivity
    from emomc_onnx.sensitivity import measure_sensitivity

    check_output_dir(outdir)
    shapes = _shapes(input_shapes) or {}
    config = EvaluatorConfig(
        model=str(pathlib.Path(str(model)).resolve()), profile=profile_name,
        data=str(pathlib.Path(str(data)).resolve()) if data else None,
        input_shapes=tuple((k, tuple(v)) for k, v in shapes.items()), metric=metric,
        eval_samples=eval_samples, calib_samples=calib_samples, split_seed=seed)
    evaluator = config()
    evaluator.baseline()  # a broken metric or data fails here, before OUTDIR is touched
    out, _ = prepare_outdir(outdir)
    with locked(out), ResultStore.in_dir(out) as store:
        report = measure_sensitivity(evaluator, make_space(evaluator.analysis, evaluator.profile), settings=settings, store=store,
                                     progress=progress)
        write_sensitivity(report, out)
    return report


def _check_run_args(*, seed: int, eval_samples: int | None, calib_samples: int | None, max_accuracy_drop) -> None:
    """Refuse compress settings no run can use (the CLI's option types check them too)."""
    if not 0 <= seed < 2**32:
        raise EmomcError(f"--seed {seed}: must be in 0..{2**32 - 1}")
    if eval_samples is not None and eval_samples < 1:
        raise EmomcError(f"--eval-samples {eval_samples}: must be >= 1")
    if calib_samples is not None and calib_samples < 1:
        raise EmomcError(f"--calib-samples {calib_samples}: must be >= 1 (calibration needs samples)")
    if max_accuracy_drop is not None and not (math.isfinite(max_accuracy_drop) and max_accuracy_drop >= 0):
        raise EmomcError(f"--max-accuracy-drop {max_accuracy_drop}: must be a finite number >= 0")


def select(outdir, *, max_energy=None, max_size_bits=None, min_accuracy=None, prefer="energy"):
    """The best front member of a compress run that fits the limits (or None)."""
    from emomc_onnx.export.select import select as _select

    return _select(outdir, max_energy=max_energy, max_size_bits=max_size_bits, min_accuracy=min_accuracy,
                   prefer=prefer)


def quantize(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    wbits: int = 8,
    abits: int = 8,
    data: str | os.PathLike[str] | None = None,
    calibration: str = "minmax",
    per_tensor: bool = False,
    calib_samples: int = 256,
    input_shapes=None,
) -> dict:
    """Quantize every compute layer to ``wbits``/``abits`` (QDQ); write it; return a summary."""
    from emomc_onnx.evaluate.calibration import activation_tensors, calibrate

    check_output_file(output)
    if data is None:
        raise EmomcError("quantize needs calibration data: --data FILE.npz")
    if calib_samples < 1:
        raise EmomcError(f"--calib-samples {calib_samples}: must be >= 1")
    loaded = load(model, input_shapes)
    analysis = _analyze(loaded.model)
    proto = loaded.proto()
    batches = calibration_batches(data, proto, calib_samples)
    feeds = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    names = [lay.name for lay in analysis.layers]
    ranges = calibrate(proto, feeds, activation_tensors(proto, names), method=calibration)
    plan = QuantPlan(layers={n: LayerBits(wbits, abits) for n in names}, per_channel=not per_tensor)
    qproto = quantize_model(proto, plan, ranges)
    io.save_model(qproto, output)
    size_before = sum(lay.params for lay in analysis.layers) * 32
    size_after = sum(lay.params for lay in analysis.layers) * wbits
    return {"title": f"quantize {pathlib.Path(str(model)).name} to W{wbits}A{abits}",
            "before": {"weight bits": size_before, "file bytes": _file_bytes(model)},
            "after": {"weight bits": size_after, "file bytes": _file_bytes(output)},
            "output": str(output)}


def finetune(
    outdir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    members: Sequence[int] | None = None,
    epochs: int | None = None,
    time_budget_s: float | None = None,
    progress=None,
    **settings,
) -> dict:
    """Fine-tune front members of a compress run (needs the [finetune] extra); see finetune.run."""
    from emomc_onnx.finetune import require_torch

    require_torch()
    from emomc_onnx.finetune.run import finetune_front
    from emomc_onnx.finetune.train import FinetuneConfig

    if epochs is not None and epochs < 1:
        raise EmomcError(f"--epochs {epochs}: must be >= 1")
    if time_budget_s is not None and time_budget_s <= 0:
        raise EmomcError(f"--time-budget {time_budget_s}: must be > 0")
    if epochs is None and time_budget_s is None:
        epochs = FinetuneConfig.epochs
    if settings.get("batch_size", 1) < 1:
        raise EmomcError(f"--batch-size {settings['batch_size']}: must be >= 1")
    config = FinetuneConfig(epochs=epochs, time_budget_s=time_budget_s, **settings)
    return finetune_front(outdir, data, members=members, config=config, progress=progress)


def finetune_front_and_merge(
    outdir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    epochs: int | None = None,
    time_budget_s: float | None = None,
    progress=None,
    merge_progress=None,
    **settings,
) -> tuple[dict, dict]:
    """``compress --finetune``: fine-tune every member of OUTDIR's front, then re-choose the front
    among the members and their fine-tuned versions on the search split (figures on the test
    split); returns (finetune summary, merge summary). Needs the [finetune] extra."""
    from emomc_onnx.finetune.refront import merge_front

    summary = finetune(outdir, data, epochs=epochs, time_budget_s=time_budget_s, progress=progress, **settings)
    return summary, merge_front(outdir, progress=merge_progress)
