"""Activation ranges from calibration data, with ONNX Runtime's calibrators.

ORT's calibrators (``onnxruntime.quantization.calibrate``: MinMax, Percentile, Entropy) add
the asked-for tensors as extra model outputs (MinMax: their ReduceMin/ReduceMax only) and
collect them over the data. All tensors are collected in one pass over the data; the data is
fed ``batch_size`` samples per session run and ``collect_data`` is called once per chunk of a
few batches, so at most one chunk of intermediate tensors is held at a time (MinMax merges
ranges chunk by chunk, the histogram methods merge histograms). The search's evaluator keeps
the ranges per architecture, so the many bit-width plans tried on one architecture calibrate
once.

MinMax does not need ORT's calibrator machinery (a model file written and re-read, an
augmented graph, a session per call): the tensors become extra outputs of one session that
runs, as the calibrator's does, without graph optimisations, and their NaN-ignoring minima
and maxima are merged batch by batch: the same ranges, bit for bit, in a fraction of the time.

Percentile and entropy ranges are asymmetric (ORT's percentile default is symmetric, which
would waste half of the uint8 levels on non-negative activations): percentile 99.99, cut
half of the tail on each side.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import onnx

from emomc_onnx.analysis import ops as _ops
from emomc_onnx.errors import DataError
from emomc_onnx.evaluate.session import check_runtime_opset, make_session, pad_batch

__all__ = ["COMPUTE_OPS", "METHODS", "activation_tensors", "calibrate"]

logger = logging.getLogger(__name__)

METHODS = ("minmax", "percentile", "entropy")
COMPUTE_OPS = tuple(_ops.COMPUTE_OPS)
_CHUNK_BATCHES = 4  # session runs per collect_data call (bounds the histogram methods' memory)
_EXTRA = {
    "minmax": {"symmetric": False},
    "percentile": {"symmetric": False, "percentile": 99.99, "num_bins": 2048},
    "entropy": {"symmetric": False, "num_bins": 512, "num_quantized_bins": 128},
}


def activation_tensors(model: onnx.ModelProto, layer_names: Sequence[str]) -> list[str]:
    """Activation tensors the QDQ pass needs ranges for: input 0 and output 0 of each named layer.

    Initializers are skipped; graph inputs/outputs are included (the pass keeps the graph's
    boundary float but quantizes right after an input, and never a graph output, so an
    output's range is simply unused). Unknown names are ignored here (the pass reports them).
    """
    inits = {t.name for t in model.graph.initializer}
    names = set(layer_names)
    out: list[str] = []
    seen: set[str] = set()
    for node in model.graph.node:
        if node.name in names:
            for t in (node.input[0] if node.input else "", node.output[0] if node.output else ""):
                if t and t not in inits and t not in seen:
                    seen.add(t)
                    out.append(t)
    return out


def _fixed_batch(model: onnx.ModelProto) -> int | None:
    inits = {t.name for t in model.graph.initializer}
    sizes = set()
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            sizes.add(dims[0].dim_value)
    return sizes.pop() if len(sizes) == 1 else None


def _batches(data: Mapping[str, np.ndarray], batch_size: int, fixed: int | None) -> Iterator[dict[str, np.ndarray]]:
    n = len(next(iter(data.values())))
    bs = fixed or batch_size
    for i in range(0, n, bs):
        feed = {k: np.ascontiguousarray(v[i:i + bs]) for k, v in data.items()}
        # a static batch: pad with the last sample (ranges unchanged)
        yield pad_batch(feed, fixed) if fixed else feed


def _chunks(feeds: Iterator[dict[str, np.ndarray]]) -> Iterator[list[dict[str, np.ndarray]]]:
    """Up to _CHUNK_BATCHES consecutive feeds of one size (ORT's histogram collector stacks
    a chunk's batches, so a short last batch goes in a chunk of its own)."""
    chunk: list[dict[str, np.ndarray]] = []
    for feed in feeds:
        size = len(next(iter(feed.values())))
        if chunk and (len(chunk) == _CHUNK_BATCHES or size != len(next(iter(chunk[0].values())))):
            yield chunk
            chunk = []
        chunk.append(feed)
    if chunk:
        yield chunk


class _Chunk:
    """A CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - not used by the calibrators we call
        pass


def _check_data(model: onnx.ModelProto, data: Mapping[str, np.ndarray]) -> int:
    if not data:
        raise DataError("calibration data is empty: no input arrays")
    inits = {t.name for t in model.graph.initializer}
    needed = [i.name for i in model.graph.input if i.name not in inits]
    missing = [k for k in needed if k not in data]
    if missing:
        raise DataError(f"calibration data lacks model input {missing[0]!r} (has {', '.join(data)})")
    lengths = {k: len(v) for k, v in data.items()}
    if len(set(lengths.values())) != 1:
        raise DataError(f"calibration arrays differ in length: {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise DataError("calibration needs at least one sample")
    return n


def _op_types(model: onnx.ModelProto, tensors: Sequence[str]) -> list[str]:
    """Op types whose inputs/outputs cover the asked tensors (what ORT's calibrator selects by)."""
    wanted = set(tensors)
    types = {n.op_type for n in model.graph.node if wanted & (set(n.input) | set(n.output))}
    return sorted(types) or list(COMPUTE_OPS)


def calibrate(
    model: onnx.ModelProto,
    data: Mapping[str, np.ndarray],
    tensors: Sequence[str],
    method: str = "minmax",
    batch_size: int = 64,
) -> dict[str, tuple[float, float]]:
    """(min, max) of each tensor in ``tensors`` over the calibration ``data``.

    Args:
        model: the float model (the pruned one when calibrating a pruned architecture).
        data: model input name -> array with the samples along axis 0.
        tensors: names of the tensors to range (see ``activation_tensors``).
        method: ``minmax``, ``percentile`` (99.99) or ``entropy`` (KL), ORT's calibrators.
        batch_size: samples per session run (a static batch axis overrides it).

    Raises:
        DataError: unknown method, empty or mismatched data, or a tensor ORT did not observe.
    """
    check_runtime_opset(model)

    if method not in METHODS:
        raise DataError(f"calibration method {method!r}: expected one of {', '.join(METHODS)}")
    if batch_size < 1:
        raise DataError(f"calibration batch size must be >= 1, got {batch_size}")
    tensors = list(dict.fromkeys(tensors))
    if not tensors:
        return {}
    n = _check_data(model, data)
    if method == "minmax":
        ranges = _minmax(model, data, tensors, batch_size)
    else:
        ranges = _ort_ranges(model, data, tensors, method, batch_size)
    logger.info("calibrated %d tensors on %d samples (%s)", len(ranges), n, method)
    return ranges


def _ort_ranges(model: onnx.ModelProto, data: Mapping[str, np.ndarray], tensors: list[str], method: str,
                batch_size: int) -> dict[str, tuple[float, float]]:
    """Ranges from ORT's calibrator for ``method`` (see the module docstring)."""
    # ORT's quantization package loads only for the histogram methods MinMax does not need
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    cm = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
          "entropy": CalibrationMethod.Entropy}[method]
    feeds = _batches(data, batch_size, _fixed_batch(model))
    with tempfile.TemporaryDirectory(prefix="emomc-calib-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        onnx.save(model, path)
        # ORT's histogram collector prints progress; library code stays quiet
        with contextlib.redirect_stdout(io.StringIO()):
            calibrator = create_calibrator(path, _op_types(model, tensors), os.path.join(tmp, "augmented.onnx"),
                                           cm, extra_options=dict(_EXTRA[method]))
            calibrator.set_execution_providers(["CPUExecutionProvider"])
            for chunk in _chunks(feeds):
                calibrator.collect_data(_Chunk(chunk))
            result = calibrator.compute_data()
    ranges: dict[str, tuple[float, float]] = {}
    for t in tensors:
        if t not in result:
            raise DataError(f"calibration did not observe tensor {t!r} (not a float input/output of "
                            f"{', '.join(_op_types(model, [t]))} in the model)")
        lo, hi = (float(np.asarray(v).reshape(-1)[0]) for v in result[t].range_value)
        ranges[t] = (lo, hi)
    return ranges


def _minmax(model: onnx.ModelProto, data: Mapping[str, np.ndarray], tensors: list[str],
            batch_size: int) -> dict[str, tuple[float, float]]:
    """ORT's MinMax calibration (asymmetric, no moving average) with one plain session."""
    known = {i.name for i in model.graph.input} | {o for n in model.graph.node for o in n.output}
    for t in tensors:
        if t not in known:
            raise DataError(f"calibration did not observe tensor {t!r} (not a float input/output of "
                            f"{', '.join(_op_types(model, [t]))} in the model)")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    outputs = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors if t not in outputs)
    sess = make_session(m, optimize=False)  # as ORT's calibrator session
    lo: dict[str, list] = {t: [] for t in tensors}
    hi: dict[str, list] = {t: [] for t in tensors}
    for feed in _batches(data, batch_size, _fixed_batch(model)):
        for t, arr in zip(tensors, sess.run(tensors, feed)):
            if not np.issubdtype(arr.dtype, np.floating):
                raise DataError(f"calibration did not observe tensor {t!r} (not a float input/output of "
                                f"{', '.join(_op_types(model, [t]))} in the model)")
            if arr.size:
                lo[t].append(np.nanmin(arr))
                hi[t].append(np.nanmax(arr))
    return {t: (float(np.nanmin(lo[t])) if lo[t] else 0.0, float(np.nanmax(hi[t])) if hi[t] else 0.0)
            for t in tensors}
