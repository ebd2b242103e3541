"""Tiny files for the bad-input corpus: a small CNN classifier, its data, and helpers to break them."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["tiny_model", "tiny_data", "N_CLASSES"]

N_CLASSES = 4


def tiny_model(path: pathlib.Path, opset: int = 17, seed: int = 0, dynamic: bool = False) -> pathlib.Path:
    """Conv(3->8, 3x3) + Relu + Conv(8->8) + Relu + GlobalAveragePool + Flatten + Gemm(8->4);
    input (N, 3, 6, 6), or (N, 3, H, W) with ``dynamic``."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.4
    b1 = rng.standard_normal(8).astype(np.float32) * 0.1
    w2 = rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2
    b2 = rng.standard_normal(8).astype(np.float32) * 0.1
    w3 = rng.standard_normal((N_CLASSES, 8)).astype(np.float32)
    b3 = np.zeros(N_CLASSES, np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=1),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (w3, "w3"), (b3, "b3"))]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"] if dynamic else ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", N_CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def tiny_data(path: pathlib.Path, n: int = 48, seed: int = 0, labels: bool | np.ndarray = True,
              **override: np.ndarray) -> pathlib.Path:
    """``n`` samples for :func:`tiny_model`: ``input`` (n, 3, 6, 6) float32 and ``labels``
    (random classes, or the array given)."""
    rng = np.random.default_rng(seed)
    arrays = {"input": rng.standard_normal((n, 3, 6, 6)).astype(np.float32)}
    if isinstance(labels, np.ndarray):
        arrays["labels"] = labels
    elif labels:
        arrays["labels"] = rng.integers(0, N_CLASSES, n)
    arrays.update(override)
    np.savez(path, **arrays)
    return path
