"""Where candidates are evaluated: a local process pool, or the workers of a Dask cluster.

Both backends take a batch of plans and stream ``(index, result)`` pairs back as candidates
finish, so the driver stores each result the moment it exists (``--resume`` loses nothing
finished). Each worker process builds its evaluator once from the picklable factory and
keeps it, with its caches, for every candidate it gets.

The evaluation function itself (``fn(evaluator, plan, subset, *args)``) is given by the
driver, so this module knows nothing of objectives or failures.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import pickle
import signal
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from emomc_onnx.errors import EmomcError, PlanError

__all__ = [
    "Backend",
    "ClusterError",
    "DaskBackend",
    "InlineStream",
    "ProcessPoolBackend",
    "Stream",
    "make_backend",
    "parse_cluster",
]

logger = logging.getLogger(__name__)

DASK_HINT = "pip install 'emomc-onnx[dask]'"
RETRIES = 3  # re-runs of a candidate whose worker died (Dask's allowed failures cover the rest)


class ClusterError(EmomcError):
    """The Dask cluster cannot be reached or went away (the store keeps what finished)."""


class Stream(Protocol):
    """Candidates submitted one at a time, results taken back as they finish (steady-state search)."""

    def submit(self, tag: Any, plan: Any, *args: Any) -> None:
        """Start ``fn(evaluator, plan, *args)``; its result comes back with ``tag``."""
        ...

    def next(self) -> tuple[Any, Any]:
        """``(tag, result)`` of the next candidate to finish (blocks; one must be in flight)."""
        ...

    def __len__(self) -> int:
        """Candidates in flight."""
        ...

    def close(self) -> None:
        """Cancel what is in flight."""
        ...


class Backend(Protocol):
    """Evaluates plans in other processes."""

    def map_unordered(self, fn: Callable, plans: Sequence[Any], *args: Any
                      ) -> Iterator[tuple[int, Any]]:
        """``(i, fn(evaluator, plans[i], *args))`` for every plan, in order of completion."""
        ...

    def stream(self, fn: Callable) -> Stream:
        """A :class:`Stream` evaluating ``fn(evaluator, plan, *args)`` per submitted plan."""
        ...

    def slots(self) -> int:
        """How many candidates keep every worker busy (worker threads now up, at least 1)."""
        ...

    def status(self) -> str | None:
        """A few words for the progress line (e.g. "2 workers up"), or None."""
        ...

    def close(self) -> None:
        """Cancel what is pending and release the workers."""
        ...


def _map_via_stream(stream: Stream, plans: Sequence[Any], args: tuple) -> Iterator[tuple[int, Any]]:
    """map_unordered on top of a stream: submit every plan, yield as they finish, cancel the rest."""
    try:
        for i, p in enumerate(plans):
            stream.submit(i, p, *args)
        while len(stream):
            yield stream.next()
    finally:
        stream.close()


class InlineStream:
    """A stream without workers: each candidate is evaluated here, in submission order, when its
    result is asked for (the search's own process; deterministic)."""

    def __init__(self, fn: Callable, evaluator: Any) -> None:
        self.fn, self.evaluator = fn, evaluator
        self.queue: list[tuple[Any, Any, tuple]] = []

    def submit(self, tag: Any, plan: Any, *args: Any) -> None:
        self.queue.append((tag, plan, args))

    def next(self) -> tuple[Any, Any]:
        tag, plan, args = self.queue.pop(0)
        return tag, self.fn(self.evaluator, plan, *args)

    def __len__(self) -> int:
        return len(self.queue)

    def close(self) -> None:
        self.queue.clear()


# ---- local process pool ---------------------------------------------------------------------
_PROCESS_EVALUATOR: Any = None

# Math libraries in a worker start one thread each: N workers with N-thread BLAS pools each
# oversubscribe the cores (measured on the demo: 2 workers were slower than 1). Set in the
# parent only while it spawns workers, since a library reads them when it loads.
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                "NUMEXPR_NUM_THREADS")


class _single_threaded_env:
    """Context manager: math-library thread variables default to 1 while it lasts."""

    def __enter__(self) -> None:
        self.saved = {k: os.environ.get(k) for k in _THREAD_VARS}
        for k in _THREAD_VARS:
            os.environ.setdefault(k, "1")

    def __exit__(self, *exc: object) -> None:
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _process_init(factory: Callable[[], Any]) -> None:
    """Build the evaluator once per worker; Ctrl-C is handled by the parent only."""
    global _PROCESS_EVALUATOR
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _PROCESS_EVALUATOR = factory()


def _process_ping(_: int) -> int:
    return os.getpid()


def _process_call(fn: Callable, plan: Any, *args: Any) -> Any:
    return fn(_PROCESS_EVALUATOR, plan, *args)


class ProcessPoolBackend:
    """Today's local pool: ``workers`` spawned processes, one evaluator each."""

    def __init__(self, workers: int, factory: Callable[[], Any], mp_context: str = "spawn") -> None:
        with _single_threaded_env():
            self.pool = cf.ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context(mp_context),
                initializer=_process_init, initargs=(factory,))
            # start every worker now, while the variables are set
            list(self.pool.map(_process_ping, range(workers * 2)))
        self.workers = workers

    def map_unordered(self, fn: Callable, plans: Sequence[Any], *args: Any
                      ) -> Iterator[tuple[int, Any]]:
        return _map_via_stream(self.stream(fn), plans, args)

    def stream(self, fn: Callable) -> _PoolStream:
        return _PoolStream(self.pool, fn)

    def slots(self) -> int:
        return self.workers

    def status(self) -> str | None:
        return None

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _PoolStream:
    def __init__(self, pool: cf.ProcessPoolExecutor, fn: Callable) -> None:
        self.pool, self.fn = pool, fn
        self.futures: dict[cf.Future, Any] = {}

    def submit(self, tag: Any, plan: Any, *args: Any) -> None:
        self.futures[self.pool.submit(_process_call, self.fn, plan, *args)] = tag

    def next(self) -> tuple[Any, Any]:
        done, _ = cf.wait(self.futures, return_when=cf.FIRST_COMPLETED)
        fut = next(iter(done))
        tag = self.futures.pop(fut)
        return tag, fut.result()

    def __len__(self) -> int:
        return len(self.futures)

    def close(self) -> None:
        for fut in self.futures:
            fut.cancel()
        self.futures.clear()


# ---- Dask ------------------------------------------------------------------------------------
def parse_cluster(spec: str) -> tuple[str, int | None]:
    """``local:N`` -> ("local", N); ``tcp://host:port`` (any Dask address) -> (address, None)."""
    spec = spec.strip()
    if spec.startswith("local:"):
        n = spec.split(":", 1)[1]
        if not n.isdigit() or int(n) < 1:
            raise PlanError(f"--cluster {spec!r}: expected local:N with N >= 1 worker processes")
        return "local", int(n)
    if "://" not in spec or spec.endswith("://"):
        raise PlanError(f"--cluster {spec!r}: expected a scheduler address (tcp://HOST:8786) or local:N")
    return spec, None


def _import_distributed():
    try:  # the optional [dask] extra
        import distributed
    except ImportError:
        raise EmomcError(f"--cluster needs Dask's distributed, which is not installed: {DASK_HINT}") from None
    return distributed


class DaskBackend:
    """Candidates as small tasks on a Dask cluster (an existing scheduler, or a LocalCluster)."""

    def __init__(self, spec: str, factory: Callable[[], Any], *, connect_timeout_s: float = 10.0) -> None:
        address, n_local = parse_cluster(spec)
        _import_distributed()
        # distributed is the optional [dask] extra (dask_plugin imports it): loaded for --cluster only
        from distributed import Client, LocalCluster

        from emomc_onnx.search.dask_plugin import EvaluatorPlugin, file_fields

        self.spec = spec
        self.cluster = None
        # INFO lines would break the progress bar; a lost scheduler is reported by us, in one line
        # (distributed's own logging config sets these levels when it loads, so set them after)
        logging.getLogger("distributed").setLevel(logging.WARNING)
        logging.getLogger("distributed.client").setLevel(logging.CRITICAL)
        try:
            if n_local is not None:
                with _single_threaded_env():
                    # silence_logs: the workers' own log lines (e.g. heartbeat tracebacks while the
                    # cluster shuts down) would land on the user's terminal; failures reach us as results
                    self.cluster = LocalCluster(n_workers=n_local, threads_per_worker=1, processes=True,
                                                dashboard_address=":0", host="127.0.0.1",
                                                silence_logs=logging.CRITICAL)
                self.client = Client(self.cluster, set_as_default=False)
            else:
                self.client = Client(address, timeout=connect_timeout_s, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            self._shutdown()
            raise ClusterError(f"cannot reach the Dask scheduler at {spec}: {exc}") from None
        self.name = f"emomc-{uuid.uuid4().hex[:12]}"
        plugin = EvaluatorPlugin(factory, file_fields(factory))
        pickle.dumps(plugin)  # a factory that cannot travel fails here, not on every worker
        try:
            self.client.register_plugin(plugin, name=self.name)
        except Exception as exc:  # noqa: BLE001 - whatever a worker raised while building
            self._shutdown()
            raise ClusterError(f"the Dask workers at {spec} cannot build the evaluator: "
                               f"{type(exc).__name__}: {exc}") from None
        self.status()

    def worker_pids(self) -> dict[str, int]:
        """Worker address -> process id (for tests that kill one)."""
        from emomc_onnx.search.dask_plugin import worker_pid  # [dask] extra, see __init__

        return self.client.run(worker_pid)

    def map_unordered(self, fn: Callable, plans: Sequence[Any], *args: Any
                      ) -> Iterator[tuple[int, Any]]:
        return _map_via_stream(self.stream(fn), plans, args)

    def stream(self, fn: Callable) -> _DaskStream:
        return _DaskStream(self, fn)

    def slots(self) -> int:
        try:
            return max(1, sum(self.client.nthreads().values()))
        except Exception:  # noqa: BLE001 - the scheduler may be gone; the stream's next() says so
            return 1

    def _lost(self) -> ClusterError:
        return ClusterError(f"lost the Dask scheduler at {self.spec}; every finished candidate is in "
                            "results.sqlite: start the cluster and run the same command again to resume")

    def status(self) -> str | None:
        try:
            n = len(self.client.nthreads())
        except Exception:  # noqa: BLE001 - the scheduler may be gone; as_completed says so
            return "scheduler unreachable"
        return f"{n} worker{'s' if n != 1 else ''} up"

    def close(self) -> None:
        if self.client.status == "running":
            try:
                self.client.unregister_worker_plugin(self.name)
            except Exception:
                logger.debug("could not unregister %s", self.name, exc_info=True)
        self._shutdown()

    def _shutdown(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            try:
                client.close(timeout=5)
            except Exception:
                logger.debug("client close failed", exc_info=True)
        if self.cluster is not None:
            try:
                self.cluster.close(timeout=10)
            except Exception:
                logger.debug("cluster close failed", exc_info=True)


class _DaskStream:
    """Candidates as tasks (retried on a lost worker), results through ``as_completed``."""

    def __init__(self, backend: DaskBackend, fn: Callable) -> None:
        from distributed import as_completed  # [dask] extra, see DaskBackend

        self.backend, self.fn = backend, fn
        self.futures: dict[Any, Any] = {}
        self.done = as_completed(loop=backend.client.loop)

    def submit(self, tag: Any, plan: Any, *args: Any) -> None:
        from emomc_onnx.search.dask_plugin import evaluate_on_worker  # [dask] extra

        b = self.backend
        fut = b.client.submit(evaluate_on_worker, b.name, self.fn, plan, *args, pure=False, retries=RETRIES,
                              key=f"emomc-eval-{uuid.uuid4().hex}")
        self.futures[fut] = tag
        self.done.add(fut)

    def next(self) -> tuple[Any, Any]:
        b = self.backend
        fut = next(self.done)
        tag = self.futures.pop(fut)
        try:
            return tag, fut.result()
        except EmomcError:
            raise
        except (cf.CancelledError, OSError) as exc:  # we cancel nothing while we wait
            logger.debug("candidate future ended: %r", exc)
            raise b._lost() from None
        except Exception as exc:  # noqa: BLE001 - Dask's own errors (KilledWorker ...)
            if b.client.status not in ("running", "connecting"):
                raise b._lost() from None
            raise ClusterError(f"a candidate failed on the Dask cluster at {b.spec}: "
                               f"{type(exc).__name__}: {exc}") from None

    def __len__(self) -> int:
        return len(self.futures)

    def close(self) -> None:
        futures, self.futures = list(self.futures), {}
        self.done.clear()
        if futures and self.backend.client.status == "running":
            try:
                self.backend.client.cancel(futures)
            except Exception:
                logger.debug("cancel failed", exc_info=True)


def make_backend(cluster: str | None, workers: int, factory: Callable[[], Any],
                 mp_context: str = "spawn") -> Backend | None:
    """The one place a run's backend is chosen: Dask with ``cluster``, else a local pool of
    ``workers`` processes, else None (the driver evaluates in its own process)."""
    if cluster:
        return DaskBackend(cluster, factory)
    if workers > 1:
        return ProcessPoolBackend(workers, factory, mp_context)
    return None
