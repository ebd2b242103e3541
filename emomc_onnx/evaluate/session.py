"""ONNX Runtime sessions with settings suited to many short evaluations in worker processes."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from emomc_onnx.errors import DataError, ModelError

__all__ = ["SessionCache", "batch_axis", "check_runtime_opset", "dynamic_batch_axis", "make_session", "pad_batch",
           "run_batched", "run_feed", "to_samples_first"]

logger = logging.getLogger(__name__)


def make_session(model: onnx.ModelProto | bytes | str | os.PathLike[str], threads: int = 1,
                 optimize: bool = True, name: str | None = None) -> ort.InferenceSession:
    """A CPU session for ``model`` (proto, serialized bytes or file path).

    ``threads`` intra-op threads, one inter-op thread, sequential execution and no spin-waiting
    (search workers share the cores); ``optimize`` enables all graph optimisations. A model
    ORT refuses raises ModelError naming it (or ``name``) with the first line of ORT's message.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.log_severity_level = 3
    if isinstance(model, onnx.ModelProto):
        src: bytes | str = model.SerializeToString()
        name = f"model {model.graph.name!r}" if model.graph.name else "model"
    elif isinstance(model, (bytes, bytearray)):
        src, name = bytes(model), name or "model bytes"
    else:
        src = os.fspath(model)
        name = src
    try:
        return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        why = _opset_text(str(exc))
        if why is not None:
            raise ModelError(f"{name}: {why}") from None
        raise ModelError(f"ONNX Runtime cannot load {name}: {_first_line(exc)}") from None


class SessionCache:
    """Sessions by the bytes of their model: a model equal to one run recently (the same plan
    on another split, plans that build the same graph) reuses its session.

    Args:
        threads: intra-op threads of each session (see ``make_session``).
        size: sessions kept (least recently used dropped first).
    """

    def __init__(self, threads: int = 1, size: int = 4) -> None:
        self.threads, self.size = threads, size
        self._sessions: dict[bytes, ort.InferenceSession] = {}
        self.hits = 0

    def get(self, proto: onnx.ModelProto) -> ort.InferenceSession:
        """A session for ``proto`` (cached, or made and cached)."""
        blob = proto.SerializeToString()
        key = hashlib.blake2b(blob, digest_size=16).digest()
        sess = self._sessions.pop(key, None)
        if sess is None:
            sess = make_session(blob, threads=self.threads,
                                name=f"model {proto.graph.name!r}" if proto.graph.name else "model")
            while len(self._sessions) >= self.size:
                self._sessions.pop(next(iter(self._sessions)))
        else:
            self.hits += 1
        self._sessions[key] = sess  # most recently used last
        return sess


def _opset_text(text: str) -> str | None:
    """'opset N is newer than ONNX Runtime supports (till opset M): re-export' from ORT's message."""
    dev = re.search(r"Opset (\d+) is under development", text)
    if dev is None:
        return None
    till = re.search(r"till opset (\d+)", text)
    limit = f" (it supports opset <= {till.group(1)}); re-export the model with opset {till.group(1)} or older" \
        if till else "; re-export the model with an older opset"
    return f"opset {dev.group(1)} is newer than ONNX Runtime {ort.__version__} supports{limit}"


def check_runtime_opset(model: onnx.ModelProto, where: str = "the model") -> None:
    """Refuse a model whose opsets this ONNX Runtime cannot load, before any work on it.

    Tries a one-node model with the same opset imports (cached), so the error names the
    opset instead of surfacing from deep inside calibration.
    """
    opsets = tuple(sorted((o.domain if o.domain != "ai.onnx" else "", o.version) for o in model.opset_import
                          if o.domain in ("", "ai.onnx")))
    why = _opset_refused(opsets, int(model.ir_version))
    if why is not None:
        raise ModelError(f"{where}: {_opset_text(why) or why}")


@functools.lru_cache(maxsize=16)
def _opset_refused(opsets: tuple[tuple[str, int], ...], ir_version: int) -> str | None:
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "opset_probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    probe.ir_version = ir_version
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    try:
        ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any refusal is the answer
        return str(exc)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _fixed_batch(session: ort.InferenceSession) -> int | None:
    """The static batch size shared by all inputs, or None when axis 0 is dynamic."""
    sizes = set()
    for inp in session.get_inputs():
        first = inp.shape[0] if inp.shape else None
        if isinstance(first, int) and first > 0:
            sizes.add(first)
    return sizes.pop() if len(sizes) == 1 else None


def pad_batch(feed: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """``feed`` grown to ``size`` samples by repeating its last one (for a static batch axis)."""
    count = len(next(iter(feed.values())))
    if count >= size:
        return feed
    return {k: np.concatenate([v, np.repeat(v[-1:], size - count, axis=0)]) for k, v in feed.items()}


def batch_axis(name: str, shape: tuple[int, ...], batch: int) -> int | None:
    """The axis of an output that holds the ``batch`` samples of a run fed exactly ``batch``.

    Axis 0 if its size is ``batch``, else the one axis of that size (a sequence-first output
    [T, B, C] has its batch on axis 1). With ``batch`` 1, None when no axis has size 1 (the
    exporter squeezed the batch away: the whole output is the one sample's) and the first of
    several size-1 axes (any of them gives the same values per sample, in the same order).

    Raises:
        ModelError: ``batch`` > 1 and no axis, or several axes besides 0, of that size.
    """
    if shape and shape[0] == batch:
        return 0
    axes = [i for i, size in enumerate(shape) if size == batch]
    if batch == 1:
        return axes[0] if axes else None
    if not axes:
        raise ModelError(f"output {name!r} of shape {list(shape)} has no axis of the model's fixed batch {batch}: "
                         f"cannot tell its samples apart")
    if len(axes) > 1:
        raise ModelError(f"output {name!r} of shape {list(shape)} has several axes of the model's fixed batch "
                         f"{batch} ({', '.join(map(str, axes))}): cannot tell which holds the samples")
    return axes[0]


def _join(name: str, chunks: list[np.ndarray], counts: list[int], batch: int, samples_first: bool) -> np.ndarray:
    """One output's chunks (runs fed ``batch`` samples, of which ``counts`` real) as one array.

    Each chunk's batch axis (``batch_axis``) is cut to its real samples and the chunks are
    joined along it; ``samples_first`` moves it to axis 0 (a batch-1 output without a batch
    axis gets a new axis 0), else the model's own layout is kept (such an output is joined
    along axis 0).
    """
    parts, axes = [], set()
    for arr, n in zip(chunks, counts):
        axis = batch_axis(name, arr.shape, batch)  # None: batch 1, squeezed away (the array is the sample's)
        if axis is not None and n < batch:
            arr = np.take(arr, np.arange(n), axis=axis)
        if samples_first:
            arr, axis = _to_front(arr, axis), 0
        elif axis is None:
            axis = 0
        parts.append(arr)
        axes.add(axis)
    if len(axes) > 1:
        raise ModelError(f"output {name!r}: its batch axis differs between runs ({', '.join(map(str, sorted(axes)))})")
    return np.concatenate(parts, axis=axes.pop())


def dynamic_batch_axis(shape: tuple[int, ...], batch: int, declared: Sequence | None = None) -> int:
    """The axis of an output that holds the samples of a run fed ``batch`` of them, the model's
    batch axis being dynamic.

    Among the axes of size ``batch`` not declared with a fixed size (``declared``: the output's
    declared dims, int, name or None each): axis 0 if it is one, else the only one (a
    sequence-first [T, N, C] output: axis 1, also for a last batch of 1 sample); else axis 0
    (no such axis, or several: the model's own layout, as before).
    """
    def free(i: int) -> bool:
        return declared is None or i >= len(declared) or not isinstance(declared[i], int) or declared[i] <= 0
    axes = [i for i, size in enumerate(shape) if size == batch and free(i)]
    if not axes or axes[0] == 0 or len(axes) > 1:
        return 0
    return axes[0]


def to_samples_first(outputs: list, batch: int, fixed: bool, declared: Sequence[Sequence | None] | None = None) -> list:
    """Outputs of one run fed ``batch`` samples (numpy arrays or torch tensors) with their
    samples on axis 0: a static batch axis found by ``batch_axis`` (a squeezed batch-1 output
    gets a new axis 0), a dynamic one by ``dynamic_batch_axis``."""
    res = []
    for i, out in enumerate(outputs):
        shape = tuple(int(d) for d in out.shape)
        if fixed:
            axis = batch_axis(f"#{i}", shape, batch)
        else:
            axis = dynamic_batch_axis(shape, batch, declared[i] if declared and i < len(declared) else None)
        res.append(_to_front(out, axis))
    return res


def _to_front(out, axis: int | None):
    """``out`` (numpy array or torch tensor) with ``axis`` moved to 0; None: a new axis 0."""
    if axis is None:
        return out[None]
    if axis == 0:
        return out
    return out.movedim(axis, 0) if hasattr(out, "movedim") else np.moveaxis(out, axis, 0)


def run_feed(session: ort.InferenceSession, feed: dict[str, np.ndarray],
             names: list[str] | None = None, samples_first: bool = False) -> list[np.ndarray]:
    """``session.run(names, feed)`` for any number of samples, whatever the model's batch axis.

    A static batch B (e.g. 1) is fed B samples at a time, the last chunk padded by repeating
    its final sample. Each output's batch axis is found from the run (see ``batch_axis``: a
    sequence-first [T, B, C] output has it on axis 1), the padding is cut from it and the
    chunks are joined along it: in the model's own layout (what per-op reducers such as
    recovery's read: [T, n, C]), or with ``samples_first`` moved to axis 0 ([n, T, C]: one row
    per sample, what the metrics and the reference outputs read). A dynamic batch axis takes
    the feed as it is; with ``samples_first`` each output's samples axis is found by
    ``dynamic_batch_axis`` and moved to axis 0.
    """
    fixed = _fixed_batch(session)
    if not fixed:
        res = session.run(names, feed)
        if not samples_first or not feed:
            return res
        meta = {o.name: o.shape for o in session.get_outputs()}
        out_names = list(names) if names is not None else list(meta)
        return to_samples_first(res, len(next(iter(feed.values()))), False, [meta.get(n) for n in out_names])
    count = len(next(iter(feed.values())))
    out_names = list(names) if names is not None else [o.name for o in session.get_outputs()]
    runs: list[list[np.ndarray]] = []
    counts: list[int] = []
    for i in range(0, count, fixed):
        chunk = {k: v[i:i + fixed] for k, v in feed.items()}
        counts.append(len(next(iter(chunk.values()))))
        runs.append(session.run(names, pad_batch(chunk, fixed)))
    if not runs:
        return []
    return [_join(name, list(chunks), counts, fixed, samples_first) for name, chunks in zip(out_names, zip(*runs))]


def run_batched(session: ort.InferenceSession, dataset, batch_size: int = 256) -> list[np.ndarray]:
    """All outputs over ``dataset`` (anything with ``batches(n)`` and ``len``), concatenated.

    A dynamic batch axis is fed ``batch_size`` samples at a time; a static batch B (e.g. 1)
    is fed exactly B, the last batch padded by repeating its final sample and the padding
    trimmed from the outputs; every output has its samples on axis 0 (see ``run_feed``).
    """
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}")
    outs: list[list[np.ndarray]] = [[] for _ in session.get_outputs()]
    for feed in dataset.batches(_fixed_batch(session) or batch_size):
        try:
            res = run_feed(session, feed, samples_first=True)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"ONNX Runtime failed to run the model: {_first_line(exc)}") from None
        for acc, r in zip(outs, res):
            acc.append(r)
    if not len(dataset):
        return [np.zeros((0,), np.float32) for _ in outs]
    return [np.concatenate(o) for o in outs]
