"""Command line: ``emomc-onnx inspect|prune|quantize|profile|compress|select|finetune``.

Thin: parse options, call :mod:`emomc_onnx.api`, print. User errors (EmomcError) print one
line ``error: ...`` and exit with code 2; never a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
from collections.abc import Callable

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from emomc_onnx.demo import demo_data_path, demo_model_path
from emomc_onnx.errors import DiskFullError, EmomcError
from emomc_onnx.paths import atomic_write_bytes, check_output_file
from emomc_onnx.progress import SearchProgress
from emomc_onnx.units import check_input_shape, parse_size_bits

# Each command imports the api and renderers it runs (ONNX, ONNX Runtime, pymoo, torch ...)
# where it runs, so `emomc-onnx --help` and a command's parse errors answer at once.

__all__ = ["main"]

console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 300)

RESUME_HINT = "run the same command again to resume (--resume is the default; nothing is re-evaluated)"


def _error(message: str, code: int = 2) -> None:
    """Print one ``error:`` line (newlines folded) and exit."""
    text = " ".join(str(message).split())
    err_console.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def _handle_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EmomcError as exc:
            detail = getattr(exc, "detail", "")
            if detail and _verbosity() > 0:  # -v: the user code's traceback
                err_console.print(detail.rstrip(), highlight=False, markup=False, soft_wrap=True)
            _error(str(exc))
        except KeyboardInterrupt:
            hint = ""
            if fn.__name__ == "compress":
                hint = f": candidates evaluated so far are in {kwargs.get('outdir')}/results.sqlite; {RESUME_HINT}"
            err_console.print(f"interrupted{hint}", highlight=False, soft_wrap=True, markup=False)
            sys.exit(130)

    return wrapper


def _verbosity() -> int:
    """How many -v the user gave (0 outside a click context)."""
    ctx = click.get_current_context(silent=True)
    return int((ctx.find_root().params.get("verbose") or 0) if ctx is not None else 0)


class _Group(click.Group):
    """A click group whose usage errors are one ``error:`` line (exit 2), like ours."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            err_console.print("interrupted", highlight=False)
            sys.exit(130)
        except click.UsageError as exc:
            ctx = exc.ctx
            where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _error(f"{exc.format_message()}{where}")
        except click.ClickException as exc:
            _error(exc.format_message())
        if isinstance(rv, int) and rv:
            sys.exit(rv)
        sys.exit(0)


class _Finite(click.ParamType):
    """A finite float (no nan, no inf), optionally bounded."""

    name = "number"

    def __init__(self, min: float | None = None, max: float | None = None, min_open: bool = False,
                 max_open: bool = False) -> None:
        self.min, self.max, self.min_open, self.max_open = min, max, min_open, max_open

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            v = value
        else:
            try:
                v = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        lo_bad = self.min is not None and (v <= self.min if self.min_open else v < self.min)
        hi_bad = self.max is not None and (v >= self.max if self.max_open else v > self.max)
        if lo_bad or hi_bad:
            lo = "" if self.min is None else f"{'>' if self.min_open else '>='} {self.min:g}"
            hi = "" if self.max is None else f"{'<' if self.max_open else '<='} {self.max:g}"
            self.fail(f"{value!r}: must be {' and '.join(x for x in (lo, hi) if x)}", param, ctx)
        return v


class _Size(click.ParamType):
    """A size in bits: a bare number is bits; units b/bit, B, kB/KiB, MB/MiB, GB/GiB are accepted."""

    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        try:
            return parse_size_bits(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _input_shapes_cb(ctx, param, value: tuple[str, ...]) -> tuple[str, ...]:
    for spec in value:
        try:
            check_input_shape(spec)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None
    return value


def _model_arg(model: str | None, demo: bool) -> str:
    if demo:
        return str(demo_model_path())
    if not model:
        raise EmomcError("give a MODEL path, or --demo for the embedded demo model")
    return model


def _data_arg(data: str | None, demo: bool) -> str | None:
    if data is None and demo:
        return str(demo_data_path())
    return data


input_shape_option = click.option(
    "--input-shape", "input_shapes", multiple=True, metavar="NAME:D0,D1,...",
    callback=_input_shapes_cb,
    help="Fix a dynamic input shape for analysis and costing (repeatable; each dimension 1..2^20, "
         "at most 2^31 elements).",
)


@click.group(cls=_Group)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="emomc-onnx")
def main(verbose: int) -> None:
    """Evolutionary multi-objective compression of ONNX models (EMOMC)."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")


@main.command(short_help="Layers, MACs, params and channel groups of MODEL.")
@click.argument("model", required=False)
@click.option("--demo", is_flag=True, help="Use the embedded demo model.")
@click.option("--json", "as_json", is_flag=True, help="Write JSON to stdout instead of tables.")
@input_shape_option
@_handle_errors
def inspect(model: str | None, demo: bool, as_json: bool, input_shapes: tuple[str, ...]) -> None:
    """Layers, MACs, parameters and channel-dependency groups of MODEL."""
    from emomc_onnx import api
    from emomc_onnx.render import render_analysis

    analysis = api.analyze(_model_arg(model, demo), input_shapes=input_shapes)
    if as_json:
        click.echo(json.dumps(analysis.to_dict(), indent=2))
    else:
        render_analysis(analysis, console)


CALIB_HELP = "Calibration samples taken from --data (at least 1)."
DATA_HELP = ".npz with one array per model input, named as the input (+ optional 'labels')."


@main.command(short_help="Prune channels and/or zero weights with one uniform plan.")
@click.argument("model", required=False)
@click.option("--demo", is_flag=True, help="Use the embedded demo model and data.")
@click.option("--ratio", type=_Finite(0.0, 1.0, max_open=True), default=None,
              help="Fraction of channels removed from every prunable group, in [0, 1).")
@click.option("--sparsity", type=_Finite(0.0, 1.0, max_open=True), default=None,
              help="Fraction of weights zeroed per layer (fine-grained), in [0, 1).")
@click.option("--pattern", type=click.Choice(["unstructured", "nm", "block"]), default="unstructured",
              show_default=True, help="Fine-grained sparsity pattern.")
@click.option("--criterion", type=click.Choice(["l1", "l2", "activation"]), default="l1", show_default=True,
              help="Channel importance: weight L1/L2 norm, or mean |activation| on --data.")
@click.option("--recovery", type=click.Choice(["none", "bias", "lsq"]), default="none", show_default=True,
              help="Training-free recovery (needs --data); lsq also re-fits the weights --sparsity leaves.")
@click.option("--multiple", type=click.IntRange(min=1), default=8, show_default=True,
              help="Channels kept per group are a multiple of this (>= 1).")
@click.option("--data", type=click.Path(), default=None, help=DATA_HELP)
@click.option("--calib-samples", type=click.IntRange(min=1), default=256, show_default=True, help=CALIB_HELP)
@click.option("-o", "--output", type=click.Path(), required=True,
              help="Output .onnx path (its directory must exist).")
@input_shape_option
@_handle_errors
def prune(model, demo, ratio, sparsity, pattern, criterion, recovery, multiple, data, calib_samples,
          output, input_shapes) -> None:
    """Prune MODEL with one uniform plan and write the smaller model."""
    from emomc_onnx import api

    if ratio is None and sparsity is None:
        raise EmomcError("give --ratio (channels) and/or --sparsity (weights)")
    summary = api.prune(
        _model_arg(model, demo), output, ratio=ratio or 0.0, sparsity=sparsity, pattern=pattern,
        criterion=criterion, recovery=recovery, multiple=multiple, data=_data_arg(data, demo),
        calib_samples=calib_samples, input_shapes=input_shapes,
    )
    from emomc_onnx.render import render_before_after

    render_before_after(summary, console)


class _BitsChoice(click.Choice):
    """The bit widths the quantizer supports, read from it when first needed (keeps --help fast)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self.case_sensitive = True

    @property
    def choices(self):
        from emomc_onnx.passes import quantize

        return [str(v) for v in getattr(quantize, self._name)]


@main.command(short_help="Quantize to QDQ with one uniform bit width.")
@click.argument("model", required=False)
@click.option("--demo", is_flag=True, help="Use the embedded demo model and data.")
@click.option("--wbits", type=_BitsChoice("WEIGHT_BITS"), default="8", show_default=True,
              help="Weight bits (16 keeps 16-bit integer weights).")
@click.option("--abits", type=_BitsChoice("ACTIVATION_BITS"), default="8", show_default=True,
              help="Activation bits (16 keeps activations float).")
@click.option("--data", type=click.Path(), default=None, help="Calibration " + DATA_HELP)
@click.option("--calibration", type=click.Choice(["minmax", "percentile", "entropy"]), default="minmax",
              show_default=True, help="Activation range calibration method (ONNX Runtime's calibrators).")
@click.option("--per-tensor", is_flag=True, help="Per-tensor weight scales (default per output channel).")
@click.option("--calib-samples", type=click.IntRange(min=1), default=256, show_default=True, help=CALIB_HELP)
@click.option("-o", "--output", type=click.Path(), required=True,
              help="Output .onnx path (its directory must exist).")
@input_shape_option
@_handle_errors
def quantize(model, demo, wbits, abits, data, calibration, per_tensor, calib_samples, output,
             input_shapes) -> None:
    """Quantize MODEL to QDQ with one uniform bit width."""
    from emomc_onnx import api
    from emomc_onnx.render import render_before_after

    summary = api.quantize(_model_arg(model, demo), output, wbits=int(wbits), abits=int(abits),
                           data=_data_arg(data, demo), calibration=calibration, per_tensor=per_tensor,
                           calib_samples=calib_samples, input_shapes=input_shapes)
    render_before_after(summary, console)


@main.command(short_help="Energy and coded size of MODEL on a hardware profile.")
@click.argument("model", required=False)
@click.option("--demo", is_flag=True, help="Use the embedded demo model.")
@click.option("--profile", "profile_name", default="eyeriss", show_default=True,
              help="Hardware profile: a shipped name or a YAML path.")
@click.option("--dataflow", default=None, help="Dataflow (default: the profile's first).")
@click.option("--coding", default=None, help="Weight coding scheme (default: the profile's first; auto = best per layer).")
@click.option("--compare", is_flag=True, help="Every dataflow of the profile side by side.")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="Images per batch (default: the profile's batch); energies are per batch.")
@click.option("--json", "as_json", is_flag=True, help="JSON to stdout.")
@input_shape_option
@_handle_errors
def profile(model, demo, profile_name, dataflow, coding, compare, batch, as_json, input_shapes) -> None:
    """Energy (per layer, per memory level) and coded size of MODEL on a hardware profile."""
    from emomc_onnx import api
    from emomc_onnx.cost import render, render_comparison, to_dict

    result = api.profile(_model_arg(model, demo), profile_name, dataflow=dataflow, coding=coding,
                         compare=compare, input_shapes=input_shapes, batch=batch)
    if as_json:
        data = {k: to_dict(v) for k, v in result.items()} if compare else to_dict(result)
        click.echo(json.dumps(data, indent=2, default=str))
    elif compare:
        render_comparison(result, console)
    else:
        render(result, console)


@main.command(short_help="Search the accuracy/energy/size Pareto front; write it as ONNX.")
@click.argument("model", required=False)
@click.option("--demo", is_flag=True, help="Use the embedded demo model and data.")
@click.option("--profile", "profile_name", default="eyeriss", show_default=True,
              help="Hardware profile: a shipped name or a YAML path.")
@click.option("--data", type=click.Path(), default=None, help=DATA_HELP)
@click.option("-o", "--output", "outdir", type=click.Path(), default="emomc_out", show_default=True,
              help="Output directory (created with its parents if missing, with a .gitignore holding '*').")
@click.option("--overwrite", is_flag=True,
              help="Replace a front in OUTDIR that another model, profile or setting produced.")
@click.option("--space", type=click.Choice(["full", "emomc"]), default="full", show_default=True,
              help="Search space: ours, or the paper's (one global density, one bit width per layer).")
@click.option("--objectives", default="error,energy,size", show_default=True,
              help="Minimised objectives, comma-separated: two or three of error, energy, size.")
@click.option("--max-accuracy-drop", type=_Finite(0.0), default=None,
              help="Constraint: at most this many points below the original model's metric.")
@click.option("--generations", type=click.IntRange(min=1), default=6, show_default=True,
              help="Generations per stage.")
@click.option("--population", type=click.IntRange(min=2), default=16, show_default=True,
              help="NSGA-II population size.")
@click.option("--max-evaluations", type=click.IntRange(min=2), default=None,
              help="Total candidates for the run (default: no limit but the generations).")
@click.option("--time-budget", type=_Finite(0.0, min_open=True), default=None,
              help="Seconds for the whole search.")
@click.option("--calib-samples", type=click.IntRange(min=1), default=None,
              help="Calibration samples (default: 10% of --data).")
@click.option("--eval-samples", type=click.IntRange(min=1), default=None,
              help="Search samples: candidates are ranked and the front chosen on these (default: a third "
                   "of --data).")
@click.option("--test-samples", type=click.IntRange(min=1), default=None,
              help="Test samples: every reported figure is on these, never seen by the search (default: the "
                   "rest of --data, or all of --test-data).")
@click.option("--test-data", type=click.Path(), default=None,
              help="A separate .npz for the test split (then --data holds calibration + search samples).")
@click.option("--split-seed", type=click.IntRange(min=0, max=2**32 - 1), default=0, show_default=True,
              help="Fixes the calibration/search/test split (--seed changes the search, not the data).")
@click.option("--metric", default=None,
              help="accuracy | agreement | sqnr | cosine | module:function (default: accuracy with "
                   "labels, else agreement).")
@click.option("--dataflow", default=None, help="Dataflow of the profile (default: its first).")
@click.option("--coding", default=None, help="Weight coding scheme (default: the profile's first; auto = best per layer).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Evaluation processes (default: 2, or 1 on a single-core machine).")
@click.option("--cluster", default=None, metavar="tcp://HOST:8786|local:N",
              help="Evaluate candidates on a Dask cluster: a running scheduler's address, or local:N for a "
                   "local cluster of N processes (needs the [dask] extra). Without it, --workers.")
@click.option("--schedule", type=click.Choice(["generational", "steady"]), default="generational",
              show_default=True,
              help="generational: a batch of candidates per generation; steady: steady-state NSGA-II, "
                   "each result used as it arrives so no worker waits for a generation's slowest candidate.")
@click.option("--ort-threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="ONNX Runtime threads per session (one session per worker thread).")
@click.option("--recovery", type=click.Choice(["none", "bias", "lsq"]), default="lsq", show_default=True,
              help="Training-free recovery of pruned candidates.")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Reuse candidates already evaluated in OUTDIR/results.sqlite.")
@click.option("--surrogate/--no-surrogate", default=True, show_default=True,
              help="Probe each layer and group alone first, predict candidates from that, evaluate only "
                   "offspring that may be non-dominated and seed stage 2 with integer programs on the "
                   "predictor (--no-surrogate: plain NSGA-II, no probes).")
@click.option("--seed", type=click.IntRange(min=0, max=2**32 - 1), default=0, show_default=True,
              help="Seed of the search (same seed, same front); not of the data split.")
@click.option("--finetune", "do_finetune", is_flag=True,
              help="After the search, fine-tune every front member (distillation + QAT, the [finetune] "
                   "extra) and re-choose the front among members and fine-tuned versions on the search split.")
@click.option("--finetune-data", type=click.Path(), default=None,
              help="Training .npz for --finetune (+ labels); must not share samples with --data/--test-data.")
@click.option("--finetune-epochs", type=click.IntRange(min=1), default=None,
              help="Epochs per member for --finetune (default 3 without --finetune-time-budget).")
@click.option("--finetune-time-budget", type=_Finite(0.0, min_open=True), default=None,
              help="Seconds of fine-tuning for all members together (--finetune).")
@input_shape_option
@_handle_errors
def compress(model, demo, profile_name, data, outdir, overwrite, space, objectives, max_accuracy_drop,
             generations, population, max_evaluations, time_budget, calib_samples, eval_samples, test_samples,
             test_data, split_seed, metric, dataflow, coding, workers, cluster, schedule, ort_threads, recovery, resume,
             surrogate, seed, do_finetune, finetune_data, finetune_epochs, finetune_time_budget, input_shapes) -> None:
    """Search the Pareto front of accuracy vs energy vs size and write it as ONNX files."""
    from emomc_onnx import api
    from emomc_onnx.export.summary import render_summary

    _check_finetune_options(do_finetune, finetune_data, finetune_epochs, finetune_time_budget)
    objs = tuple(o.strip() for o in objectives.split(",") if o.strip())
    existed = os.path.isdir(outdir) if outdir.strip() else True
    try:
        with SearchProgress(console) as bar:
            result, entries, evaluator = api.compress(
                _model_arg(model, demo), outdir, profile_name=profile_name, data=_data_arg(data, demo),
                space=space, objectives=objs, max_accuracy_drop=max_accuracy_drop, generations=generations,
                population=population, max_evaluations=max_evaluations, time_budget_s=time_budget,
                eval_samples=eval_samples, calib_samples=calib_samples, test_samples=test_samples,
                test_data=test_data, split_seed=split_seed, metric=metric, dataflow=dataflow,
                coding=coding, workers=workers, resume=resume, seed=seed, input_shapes=input_shapes,
                progress=bar.update, recovery=recovery, overwrite=overwrite, cluster=cluster,
                ort_threads=ort_threads, schedule=schedule, surrogate=surrogate,
            )
    except DiskFullError as exc:
        raise DiskFullError(f"{exc}; the run is resumable: free some space, then {RESUME_HINT}") from None
    if not existed:
        console.print(f"created {outdir}/ (with parent folders as needed, and a .gitignore holding '*')")
    render_summary(entries, console, baseline=result.baseline, splits=evaluator.splits.summary())
    for kind, f in result.failures().items():
        if f["candidates"] and f["failed"] == f["candidates"]:
            err_console.print(f"[bold yellow]warning:[/] every {kind} candidate failed ({f['failed']} of "
                              f"{f['candidates']}), so the front has none; most common reason: {f['reason']}",
                              highlight=False, soft_wrap=True)
        elif f["failed"]:
            logging.getLogger("emomc_onnx").warning("%d of %d %s candidates failed; most common reason: %s",
                                                    f["failed"], f["candidates"], kind, f["reason"])
    bugs = result.unexpected_failures()
    if bugs:
        err_console.print(f"[bold yellow]warning:[/] {len(bugs)} candidates failed with an unexpected error (a bug of "
                          f"emomc-onnx, not of your model; -v shows the tracebacks); first: {bugs[0]}",
                          highlight=False, soft_wrap=True)
    console.print(result.counts_line())
    console.print(f"wrote {outdir}/front/ ({len(entries)} models), front.json, front.csv, pareto.png, "
                  f"convergence.png, results.sqlite")
    if result.interrupted:
        err_console.print(f"interrupted: the front above is partial; {RESUME_HINT}", highlight=False,
                          soft_wrap=True)
        sys.exit(130)
    if do_finetune:
        _finetune_after_compress(outdir, finetune_data, finetune_epochs, finetune_time_budget, seed,
                                 result.baseline, evaluator.splits.summary())


def _check_finetune_options(do_finetune, data, epochs, time_budget) -> None:
    """compress's --finetune options, checked before the search (the extra and the file too)."""
    given = [n for n, v in (("--finetune-data", data), ("--finetune-epochs", epochs),
                            ("--finetune-time-budget", time_budget)) if v is not None]
    if not do_finetune:
        if given:
            raise EmomcError(f"{given[0]} needs --finetune")
        return
    if data is None:
        raise EmomcError("--finetune needs --finetune-data FILE.npz (training samples the run's data does not hold)")
    from emomc_onnx.finetune import require_torch

    require_torch()
    if not os.path.isfile(data):
        raise EmomcError(f"--finetune-data {data}: no such file")


def _finetune_after_compress(outdir, data, epochs, time_budget, seed, baseline, splits) -> None:
    from emomc_onnx import api
    from emomc_onnx.export.front import FrontEntry
    from emomc_onnx.export.summary import render_summary
    from emomc_onnx.finetune.report import FinetuneProgress, before_after_table

    console.print("fine-tuning the front members (--finetune)")
    with FinetuneProgress(console) as bar:
        summary, merged = api.finetune_front_and_merge(outdir, data, epochs=epochs, time_budget_s=time_budget,
                                                       progress=bar.update, seed=seed)
    console.print(before_after_table(summary))
    console.print(f"front re-chosen on the search split among {merged['candidates']} models "
                  f"({merged['tuned_candidates']} fine-tuned): {merged['front']} members, "
                  f"{merged['tuned_in_front']} fine-tuned")
    render_summary([FrontEntry.from_dict(m) for m in merged["members"]], console, baseline=baseline, splits=splits)
    console.print(f"wrote {outdir}/finetuned/, finetune.json, finetune.png; front.json, front.csv and pareto.png "
                  f"now hold the merged front (the search's own front: front.json's search_front)")


def _settings(spec: str | None, kind: str, cast):
    if spec is None:
        return None
    try:
        return tuple(cast(v) for v in spec.split(",") if v.strip())
    except ValueError:
        raise EmomcError(f"--{kind} {spec!r}: expected comma-separated numbers") from None


@main.command(short_help="Per-layer sensitivity: the drop of each single change.")
@click.argument("model", required=False)
@click.option("--demo", is_flag=True, help="Use the embedded demo model and data.")
@click.option("--profile", "profile_name", default="eyeriss", show_default=True,
              help="Hardware profile (sets the channel multiple and the costs recorded).")
@click.option("--data", type=click.Path(), default=None, help=".npz with one array per model input (+ labels).")
@click.option("-o", "--output", "outdir", type=click.Path(), default="emomc_out", show_default=True,
              help="Output directory (sensitivity.json, sensitivity.png, results.sqlite).")
@click.option("--eval-samples", type=click.IntRange(min=1), default=500, show_default=True,
              help="Search samples each change is measured on.")
@click.option("--calib-samples", type=click.IntRange(min=1), default=256, show_default=True, help=CALIB_HELP)
@click.option("--metric", default=None, help="accuracy | agreement | sqnr | cosine | module:function")
@click.option("--wbits", default=None, help="Weight widths to try, e.g. 2,3,4,6,8 (empty: skip).")
@click.option("--abits", default=None, help="Activation widths to try, e.g. 4,6,8 (empty: skip).")
@click.option("--densities", default=None, help="Weight densities to try, e.g. 0.2,0.4,0.6,0.8 (empty: skip).")
@click.option("--keep", default=None, help="Channel keep ratios per group, e.g. 0.25,0.5,0.75 (empty: skip).")
@click.option("--seed", type=click.IntRange(min=0, max=2**32 - 1), default=0, show_default=True,
              help="Seed of the data split.")
@input_shape_option
@_handle_errors
def sensitivity(model, demo, profile_name, data, outdir, eval_samples, calib_samples, metric, wbits, abits,
                densities, keep, seed, input_shapes) -> None:
    """Per-layer sensitivity: the metric drop of each single change (bits, density, pruning)."""
    from emomc_onnx import api
    from emomc_onnx.export.sensitivity import render_sensitivity

    settings = {k: v for k, v in {"wbits": _settings(wbits, "wbits", int), "abits": _settings(abits, "abits", int),
                                  "density": _settings(densities, "densities", float),
                                  "keep": _settings(keep, "keep", float)}.items() if v is not None}
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("sensitivity", total=None)
        report = api.sensitivity(
            _model_arg(model, demo), outdir, profile_name=profile_name, data=_data_arg(data, demo),
            eval_samples=eval_samples, calib_samples=calib_samples, metric=metric, settings=settings, seed=seed,
            input_shapes=input_shapes,
            progress=lambda done, total, label: bar.update(task, completed=done, total=total, description=label))
    render_sensitivity(report, console)
    console.print(f"{len(report.rows)} measurements in {report.elapsed_s:.1f} s; wrote {outdir}/sensitivity.json, "
                  f"{outdir}/sensitivity.png")


@main.command(short_help="Pick the front member of OUTDIR that fits a device.")
@click.argument("outdir", type=click.Path())
@click.option("--max-energy", type=_Finite(0.0), default=None,
              help="Energy limit per sample, in the unit front.json records (units.energy; the profile's).")
@click.option("--max-size", "max_size", type=_Size(), default=None,
              help="Coded size limit: 200KiB, 1.5MB, 4096B, ... (a bare number is bits).")
@click.option("--min-accuracy", type=float, default=None,
              help="Minimum test-split accuracy: a fraction (0.97) or a percentage (97).")
@click.option("--prefer", type=click.Choice(["energy", "size", "accuracy"]), default="energy", show_default=True,
              help="Among the members that fit: lowest energy, smallest, or most accurate.")
@click.option("-o", "--output", type=click.Path(), default=None,
              help="Copy the chosen model to this file (its directory must exist).")
@_handle_errors
def select(outdir, max_energy, max_size, min_accuracy, prefer, output) -> None:
    """Pick the best front member of OUTDIR that fits a device; exit code 1 if none fits."""
    from emomc_onnx import api
    from emomc_onnx.export.select import load_front, member_path, min_accuracy_fraction

    if output is not None:
        check_output_file(output)
    if min_accuracy is not None:
        meta, _ = load_front(outdir)
        min_accuracy, note = min_accuracy_fraction(min_accuracy, meta.get("metric"))
        if note:
            err_console.print(note, highlight=False)
    entry = api.select(outdir, max_energy=max_energy, max_size_bits=max_size, min_accuracy=min_accuracy,
                       prefer=prefer)
    if entry is None:
        err_console.print("no front member fits these limits (members breaking --max-accuracy-drop on "
                          "the test split are never offered)")
        sys.exit(1)
    src = member_path(outdir, entry)
    ci = entry.accuracy_ci95
    ci_txt = f" (95% CI {100 * ci[0]:.2f}-{100 * ci[1]:.2f})" if ci else ""
    console.print(f"selected {src.name}: test accuracy {100 * entry.accuracy:.2f}%{ci_txt} on "
                  f"{entry.n_test} test samples, energy {entry.energy:.4g}, "
                  f"size {entry.size_bits / 8 / 1024:.1f} KiB")
    if output:
        atomic_write_bytes(output, src.read_bytes())
        console.print(f"wrote {output}")


# ---- finetune (optional [finetune] extra) -------------------------------------------------
@main.command()
@click.argument("outdir", type=click.Path())
@click.option("--data", type=click.Path(), required=True,
              help="Training .npz (+ labels); must not share samples with the compress run's data.")
@click.option("--members", default=None, help="Front ranks, e.g. 0,3,5 (default: all).")
@click.option("--all", "all_members", is_flag=True, help="Every front member (the default).")
@click.option("--epochs", type=int, default=None, help="Epochs per member (default 3 without --time-budget).")
@click.option("--time-budget", type=float, default=None, help="Seconds for all members together.")
@click.option("--lr", type=float, default=1e-4, show_default=True, help="Adam learning rate.")
@click.option("--batch-size", type=int, default=64, show_default=True,
              help="Training samples per step; memory grows with it (lower it for large inputs).")
@click.option("--temperature", type=float, default=4.0, show_default=True, help="Distillation temperature.")
@click.option("--no-distill", is_flag=True, help="Labels only (no teacher).")
@click.option("--no-qat", is_flag=True, help="Keep the member's quantizer steps (do not learn them).")
@click.option("--seed", type=int, default=0, show_default=True, help="Held-out split, shuffling, torch.")
@_handle_errors
def finetune(outdir, data, members, all_members, epochs, time_budget, lr, batch_size, temperature, no_distill,
             no_qat, seed) -> None:
    """Fine-tune front members (distillation + QAT).

    Each member of OUTDIR's front learns from the original model (teacher outputs, labels
    when the data has them) with its zeros kept and its quantizer steps learned, and is
    written at the same bits to OUTDIR/finetuned/. Needs the [finetune] extra (torch).
    """
    from emomc_onnx import api
    from emomc_onnx.finetune.report import FinetuneProgress, before_after_table

    if members and all_members:
        raise EmomcError("give --members or --all, not both")
    try:
        ranks = [int(r) for r in members.split(",") if r.strip()] if members else None
    except ValueError:
        raise EmomcError(f"--members {members!r}: expected front ranks like 0,3,5") from None
    with FinetuneProgress(console) as bar:
        summary = api.finetune(outdir, data, members=ranks, epochs=epochs, time_budget_s=time_budget,
                               progress=bar.update, lr=lr, batch_size=batch_size, temperature=temperature,
                               distill=not no_distill, qat=not no_qat, seed=seed)
    console.print(before_after_table(summary))
    console.print(f"wrote {outdir}/finetuned/ ({len(summary['members'])} models), finetune.json, finetune.png")


if __name__ == "__main__":  # pragma: no cover
    main()
