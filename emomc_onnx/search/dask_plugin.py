"""The worker side of the Dask backend: a plugin that builds and keeps the evaluators.

Imported only on a run with ``--cluster`` (and by the workers, through pickled references),
so the rest of the package does not need ``distributed``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import queue
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin, get_worker

__all__ = ["EvaluatorPlugin", "evaluate_on_worker", "file_fields", "worker_pid"]


def file_fields(factory: Any) -> dict[str, tuple[str, bytes]]:
    """Input files the factory reads (model, data, a profile YAML) -> (sha256, bytes).

    They travel to each worker once with the plugin, so workers on other machines need no
    shared file system; a worker that has the same file at the same path reads its own."""
    out: dict[str, tuple[str, bytes]] = {}
    if not dataclasses.is_dataclass(factory):
        return out
    for field in ("model", "data", "profile"):
        path = getattr(factory, field, None)
        if isinstance(path, str) and os.path.isfile(path):
            blob = Path(path).read_bytes()
            out[field] = (hashlib.sha256(blob).hexdigest(), blob)
    return out


class EvaluatorPlugin(WorkerPlugin):
    """A Dask worker plugin holding the evaluators of one run on each worker.

    Built on the worker when it joins (and again on a worker that replaces a dead one); one
    evaluator per worker thread that evaluates at the same time (evaluators are not
    thread-safe), each kept with its caches for every later candidate.
    """

    def __init__(self, factory: Callable[[], Any], files: dict[str, tuple[str, bytes]]) -> None:
        self.factory = factory
        self.files = files

    def setup(self, worker: Any) -> None:
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.factory = self._localise(self.factory)
        self._free.put(self.factory())

    def teardown(self, worker: Any) -> None:
        self._free = queue.SimpleQueue()
        if self._tmp is not None:
            self._tmp.cleanup()

    def _localise(self, factory: Any) -> Any:
        """The factory with input files this worker lacks written to a temporary folder."""
        changes = {}
        for field, (sha, blob) in self.files.items():
            path = getattr(factory, field)
            if os.path.isfile(path) and hashlib.sha256(Path(path).read_bytes()).hexdigest() == sha:
                continue
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="emomc-")
            local = Path(self._tmp.name) / field / Path(path).name
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(blob)
            changes[field] = str(local)
        self.files = {}  # the bytes are on disk now
        return dataclasses.replace(factory, **changes) if changes else factory

    def call(self, fn: Callable, plan: Any, *args: Any) -> Any:
        try:
            ev = self._free.get_nowait()
        except queue.Empty:  # another thread holds the first evaluator
            ev = self.factory()
        try:
            return fn(ev, plan, *args)
        finally:
            self._free.put(ev)


def evaluate_on_worker(name: str, fn: Callable, plan: Any, *args: Any) -> Any:
    """The task of one candidate: the run's plugin (``name``) on this worker evaluates it."""
    return get_worker().plugins[name].call(fn, plan, *args)


def worker_pid() -> int:
    return os.getpid()


