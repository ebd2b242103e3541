"""Command line: ``emomc-onnx inspect|prune|quantize|profile|compress|select``.

Thin: parse options, call :mod:`emomc_onnx.api`, print. User errors (EmomcError) print one
line ``error: ...`` and exit with code 2; never a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable

import click
from rich.console import Console

from emomc_onnx.errors import EmomcError

__all__ = ["main"]

console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 300)


def _handle_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EmomcError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(130)

    return wrapper


def _model_arg(model: str | None, demo: bool) -> str:
    if demo:
        from emomc_onnx.api import demo_paths

        return str(demo_paths()[0])
    if not model:
        raise EmomcError("give a MODEL path, or --demo for the embedded demo model")
    return model


def _data_arg(data: str | None, demo: bool) -> str | None:
    if data is None and demo:
        from emomc_onnx.api import demo_paths

        return str(demo_paths()[1])
    return data


input_shape_option = click.option(
    "--input-shape", "input_shapes", multiple=True, metavar="NAME:D0,D1,...",
    help="Fix a dynamic input shape for analysis and costing (repeatable).",
)


@click.group()
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="emomc-onnx")
def main(verbose: int) -> None:
    """Evolutionary multi-objective compression of ONNX models (EMOMC)."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("model", required=False)
@click.option("--demo", is_flag=True, help="Use the embedded demo model.")
@click.option("--json", "as_json", is_flag=True, help="Write JSON to stdout instead of tables.")
@input_shape_option
@_handle_errors
def inspect(model: str | None, demo: bool, as_json: bool, input_shapes: tuple[str, ...]) -> None:
    """Layers, MACs, parameters and channel-dependency groups of MODEL."""
    from emomc_onnx import api
    from emomc_onnx.report import render_analysis

    analysis = api.analyze(_model_arg(model, demo), input_shapes=input_shapes)
    if as_json:
        click.echo(json.dumps(analysis.to_dict(), indent=2))
    else:
        render_analysis(analysis, console)


@main.command()
@click.argument("model", required=False)
@click.option("--demo", is_flag=True, help="Use the embedded demo model and data.")
@click.option("--ratio", type=float, default=None, help="Fraction of channels removed from every prunable group.")
@click.option("--sparsity", type=float, default=None, help="Fraction of weights zeroed per layer (fine-grained).")
@click.option("--pattern", type=click.Choice(["unstructured", "nm", "block"]), default="unstructured",
              show_default=True, help="Fine-grained sparsity pattern.")
@click.option("--criterion", type=click.Choice(["l1", "l2", "activation"]), default="l1", show_default=True)
@click.option("--recovery", type=click.Choice(["none", "bias", "lsq"]), default="none", show_default=True,
              help="Training-free recovery (needs --data); lsq also re-fits the weights --sparsity leaves.")
@click.option("--multiple", type=int, default=8, show_default=True, help="Channel multiple kept per group.")
@click.option("--data", type=click.Path(), default=None, help=".npz with one array per model input (+ labels).")
@click.option("--calib-samples", type=int, default=256, show_default=True)
@click.option("-o", "--output", type=click.Path(), required=True, help="Output .onnx path.")
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
    from emomc_onnx.report import render_before_after

    render_before_after(summary, console)


@main.command()
@click.argument("model", required=False)
@click.option("--demo", is_flag=True, help="Use the embedded demo model and data.")
@click.option("--wbits", type=click.IntRange(2, 16), default=8, show_default=True)
@click.option("--abits", type=click.IntRange(4, 16), default=8, show_default=True)
@click.option("--data", type=click.Path(), default=None, help="Calibration .npz (one array per input).")
@click.option("--calibration", type=click.Choice(["minmax", "percentile", "entropy"]), default="minmax",
              show_default=True)
@click.option("--per-tensor", is_flag=True, help="Per-tensor weight scales (default per output channel).")
@click.option("--calib-samples", type=int, default=256, show_default=True)
@click.option("-o", "--output", type=click.Path(), required=True)
@input_shape_option
@_handle_errors
def quantize(model, demo, wbits, abits, data, calibration, per_tensor, calib_samples, output,
             input_shapes) -> None:
    """Quantize MODEL to QDQ with one uniform bit width."""
    from emomc_onnx import api
    from emomc_onnx.report import render_before_after

    summary = api.quantize(_model_arg(model, demo), output, wbits=wbits, abits=abits,
                           data=_data_arg(data, demo), calibration=calibration, per_tensor=per_tensor,
                           calib_samples=calib_samples, input_shapes=input_shapes)
    render_before_after(summary, console)


@main.command()
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


@main.command()
@click.argument("model", required=False)
@click.option("--demo", is_flag=True, help="Use the embedded demo model and data.")
@click.option("--profile", "profile_name", default="eyeriss", show_default=True,
              help="Hardware profile: a shipped name or a YAML path.")
@click.option("--data", type=click.Path(), default=None, help=".npz with one array per model input (+ labels).")
@click.option("-o", "--output", "outdir", type=click.Path(), default="emomc_out", show_default=True,
              help="Output directory.")
@click.option("--space", type=click.Choice(["full", "emomc"]), default="full", show_default=True,
              help="Search space: ours, or the paper's (one global density, one bit width per layer).")
@click.option("--objectives", default="error,energy,size", show_default=True)
@click.option("--max-accuracy-drop", type=float, default=None, help="Constraint, in points.")
@click.option("--generations", type=int, default=6, show_default=True, help="Generations per stage.")
@click.option("--population", type=int, default=16, show_default=True)
@click.option("--max-evaluations", type=int, default=None)
@click.option("--time-budget", type=float, default=None, help="Seconds for the whole search.")
@click.option("--eval-samples", type=int, default=1000, show_default=True)
@click.option("--calib-samples", type=int, default=256, show_default=True)
@click.option("--metric", default=None, help="accuracy | agreement | sqnr | cosine | module:function")
@click.option("--dataflow", default=None)
@click.option("--coding", default=None)
@click.option("--workers", type=int, default=None, help="Evaluation processes (default: all cores).")
@click.option("--recovery", type=click.Choice(["none", "bias", "lsq"]), default="lsq", show_default=True,
              help="Training-free recovery of pruned candidates.")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Reuse candidates already evaluated in OUTDIR/results.sqlite.")
@click.option("--seed", type=int, default=0, show_default=True)
@input_shape_option
@_handle_errors
def compress(model, demo, profile_name, data, outdir, space, objectives, max_accuracy_drop, generations,
             population, max_evaluations, time_budget, eval_samples, calib_samples, metric, dataflow,
             coding, workers, recovery, resume, seed, input_shapes) -> None:
    """Search the Pareto front of accuracy vs energy vs size and write it as ONNX files."""
    from emomc_onnx import api
    from emomc_onnx.export.report import render_summary
    from emomc_onnx.progress import SearchProgress

    objs = tuple(o.strip() for o in objectives.split(",") if o.strip())
    with SearchProgress(console) as bar:
        result, entries, _ = api.compress(
            _model_arg(model, demo), outdir, profile_name=profile_name, data=_data_arg(data, demo),
            space=space, objectives=objs, max_accuracy_drop=max_accuracy_drop, generations=generations,
            population=population, max_evaluations=max_evaluations, time_budget_s=time_budget,
            eval_samples=eval_samples, calib_samples=calib_samples, metric=metric, dataflow=dataflow,
            coding=coding, workers=workers, resume=resume, seed=seed, input_shapes=input_shapes,
            progress=bar.update, recovery=recovery,
        )
    render_summary(entries, console, baseline=result.baseline)
    for kind, f in result.failures().items():
        if f["candidates"] and f["failed"] == f["candidates"]:
            err_console.print(f"[bold yellow]warning:[/] every {kind} candidate failed ({f['failed']} of "
                              f"{f['candidates']}), so the front has none; most common reason: {f['reason']}",
                              highlight=False, soft_wrap=True)
        elif f["failed"]:
            logging.getLogger("emomc_onnx").warning("%d of %d %s candidates failed; most common reason: %s",
                                                    f["failed"], f["candidates"], kind, f["reason"])
    console.print(
        f"{result.n_evaluations} candidates ({result.n_fresh} evaluated, {result.n_cached} from the store) "
        f"in {result.elapsed_s:.1f} s; front hypervolume {result.front_hv:.4f}"
        + (" [yellow](interrupted: partial front)[/]" if result.interrupted else ""))
    console.print(f"wrote {outdir}/front/ ({len(entries)} models), front.json, front.csv, pareto.png, "
                  f"convergence.png, results.sqlite")


def _settings(spec: str | None, kind: str, cast):
    if spec is None:
        return None
    try:
        return tuple(cast(v) for v in spec.split(",") if v.strip())
    except ValueError:
        raise EmomcError(f"--{kind} {spec!r}: expected comma-separated numbers") from None


@main.command()
@click.argument("model", required=False)
@click.option("--demo", is_flag=True, help="Use the embedded demo model and data.")
@click.option("--profile", "profile_name", default="eyeriss", show_default=True,
              help="Hardware profile (sets the channel multiple and the costs recorded).")
@click.option("--data", type=click.Path(), default=None, help=".npz with one array per model input (+ labels).")
@click.option("-o", "--output", "outdir", type=click.Path(), default="emomc_out", show_default=True,
              help="Output directory (sensitivity.json, sensitivity.png, results.sqlite).")
@click.option("--eval-samples", type=int, default=500, show_default=True, help="Search samples each change is measured on.")
@click.option("--calib-samples", type=int, default=256, show_default=True, help="Calibration samples.")
@click.option("--metric", default=None, help="accuracy | agreement | sqnr | cosine | module:function")
@click.option("--wbits", default=None, help="Weight widths to try, e.g. 2,3,4,6,8 (empty: skip).")
@click.option("--abits", default=None, help="Activation widths to try, e.g. 4,6,8 (empty: skip).")
@click.option("--densities", default=None, help="Weight densities to try, e.g. 0.2,0.4,0.6,0.8 (empty: skip).")
@click.option("--keep", default=None, help="Channel keep ratios per group, e.g. 0.25,0.5,0.75 (empty: skip).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the data split.")
@input_shape_option
@_handle_errors
def sensitivity(model, demo, profile_name, data, outdir, eval_samples, calib_samples, metric, wbits, abits,
                densities, keep, seed, input_shapes) -> None:
    """Per-layer sensitivity: the metric drop of each single change (bits, density, pruning)."""
    from rich.progress import Progress

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


@main.command()
@click.argument("outdir", type=click.Path())
@click.option("--max-energy", type=float, default=None, help="In the profile's energy unit (see front.json).")
@click.option("--max-size", "max_size", type=float, default=None, help="Coded size limit in bits.")
@click.option("--min-accuracy", type=float, default=None, help="Minimum metric on the full data (0..1).")
@click.option("--prefer", type=click.Choice(["energy", "size", "accuracy"]), default="energy", show_default=True)
@click.option("-o", "--output", type=click.Path(), default=None, help="Copy the chosen model here.")
@_handle_errors
def select(outdir, max_energy, max_size, min_accuracy, prefer, output) -> None:
    """Pick the best front member of OUTDIR that fits a device; exit code 1 if none fits."""
    import shutil

    from emomc_onnx import api

    entry = api.select(outdir, max_energy=max_energy, max_size_bits=max_size, min_accuracy=min_accuracy,
                       prefer=prefer)
    if entry is None:
        err_console.print("no front member fits these limits")
        sys.exit(1)
    src = entry.path(outdir)
    console.print(f"selected {src.name}: accuracy {entry.accuracy:.4f}, energy {entry.energy:.4g}, "
                  f"size {entry.size_bits / 8 / 1024:.1f} KiB")
    if output:
        tmp = f"{output}.tmp"
        shutil.copyfile(src, tmp)
        import os

        os.replace(tmp, output)
        console.print(f"wrote {output}")


if __name__ == "__main__":  # pragma: no cover
    main()
