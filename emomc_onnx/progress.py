"""A live progress bar for the search (rich): stage, generation, evaluations, best figures, HV."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["SearchProgress"]


class SearchProgress:
    """Context manager whose ``update`` is the search driver's progress callback."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.fields[what]}[/]"),
            BarColumn(),
            TextColumn("{task.fields[evals]}"),
            TextColumn("{task.fields[best]}"),
            TextColumn("HV {task.fields[hv]}"),
            TextColumn("{task.fields[tau]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._task = None

    def __enter__(self) -> SearchProgress:
        self._progress.__enter__()
        self._task = self._progress.add_task("search", total=None, what="starting", evals="", best="",
                                             hv="-", tau="")
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def update(self, event) -> None:
        best = ", ".join(f"{k} {v:.4g}" for k, v in (event.best or {}).items())
        if event.phase == "search":
            what = f"stage {event.stage} gen {event.generation + 1}/{event.generations}"
        elif event.phase == "front":
            what = "front: measuring on the test split"
        else:
            what = "done"
        total = event.max_evaluations
        evals = (f"{event.n_evaluations}/{total} candidates" if total is not None
                 else f"{event.n_evaluations} candidates")
        if getattr(event, "workers", None):
            evals += f", {event.workers}"
        self._progress.update(
            self._task, completed=event.n_evaluations, total=total, what=what, evals=evals,
            best=best, hv=f"{event.hv:.4f}",
            tau="" if getattr(event, "tau", None) is None else f"predictor tau {event.tau:.2f}",
        )
