"""ONNX Runtime sessions with settings suited to many short evaluations in worker processes."""

from __future__ import annotations

import logging
import os

import numpy as np
import onnx
import onnxruntime as ort

from emomc_onnx.errors import ModelError

__all__ = ["make_session", "run_batched"]

logger = logging.getLogger(__name__)


def make_session(model: onnx.ModelProto | bytes | str | os.PathLike[str], threads: int = 1,
                 optimize: bool = True) -> ort.InferenceSession:
    """A CPU session: ``threads`` intra-op threads, sequential, no spinning (workers share cores)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.log_severity_level = 3
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    if isinstance(src, os.PathLike):
        src = str(src)
    try:
        return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        name = model.graph.name if isinstance(model, onnx.ModelProto) else str(model)[:80]
        raise ModelError(f"ONNX Runtime cannot load {name}: {str(exc).strip().splitlines()[0][:300]}") from None


def run_batched(session: ort.InferenceSession, dataset, batch_size: int = 256) -> list[np.ndarray]:
    """All outputs over the dataset, concatenated; falls back to batch 1 for fixed-batch models."""
    first = session.get_inputs()[0].shape[0]
    bs = 1 if isinstance(first, int) and first == 1 else batch_size
    outs: list[list[np.ndarray]] = []
    for feed in dataset.batches(bs):
        res = session.run(None, feed)
        if not outs:
            outs = [[] for _ in res]
        for acc, r in zip(outs, res):
            acc.append(r)
    return [np.concatenate(o) for o in outs]
