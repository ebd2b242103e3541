"""Activation ranges from calibration data, with ONNX Runtime's calibrators, cached per architecture.

ORT's calibrators (MinMax, Percentile, Entropy) augment the model with the inputs and outputs
of the compute ops as extra outputs and collect them batch by batch (so memory stays bounded
for MinMax; histogram methods keep histograms, not tensors). Ranges are cached by a key the
caller gives (model hash + pruning/sparsity plan), so many bit-width plans on one pruned
architecture calibrate once.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from emomc_onnx.errors import DataError

__all__ = ["calibrate", "activation_tensors", "RangeCache", "METHODS"]

logger = logging.getLogger(__name__)

METHODS = ("minmax", "percentile", "entropy")
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


class RangeCache:
    """Ranges by key, in memory and optionally as JSON files in a directory."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self._mem: dict[str, dict[str, tuple[float, float]]] = {}
        self._dir = pathlib.Path(directory) if directory else None

    def get(self, key: str) -> dict[str, tuple[float, float]] | None:
        if key in self._mem:
            return self._mem[key]
        if self._dir is not None and (self._dir / f"{key}.json").exists():
            data = json.loads((self._dir / f"{key}.json").read_text())
            self._mem[key] = {k: (float(a), float(b)) for k, (a, b) in data.items()}
            return self._mem[key]
        return None

    def put(self, key: str, ranges: Mapping[str, tuple[float, float]]) -> None:
        self._mem[key] = dict(ranges)
        if self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True)
            tmp = self._dir / f".{key}.json.tmp"
            tmp.write_text(json.dumps(self._mem[key]))
            os.replace(tmp, self._dir / f"{key}.json")


def activation_tensors(model: onnx.ModelProto, layer_names: Sequence[str]) -> list[str]:
    """Input activation and output tensors of the named compute layers (what QDQ needs)."""
    inits = {t.name for t in model.graph.initializer}
    names = set(layer_names)
    out: list[str] = []
    for node in model.graph.node:
        if node.name in names:
            for t in (node.input[0], node.output[0]):
                if t not in inits and t not in out:
                    out.append(t)
    return out


class _Reader:
    def __init__(self, data: Mapping[str, np.ndarray], batch_size: int) -> None:
        n = len(next(iter(data.values())))
        self._batches = iter([{k: v[i:i + batch_size] for k, v in data.items()} for i in range(0, n, batch_size)])

    def get_next(self):
        return next(self._batches, None)

    def rewind(self):  # pragma: no cover - ORT calls it only for some methods
        pass


def calibrate(
    model: onnx.ModelProto,
    data: Mapping[str, np.ndarray],
    tensors: Sequence[str],
    method: str = "minmax",
    batch_size: int = 64,
    cache: RangeCache | None = None,
    cache_key: str | None = None,
) -> dict[str, tuple[float, float]]:
    """(min, max) per tensor over the calibration data."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    if method not in METHODS:
        raise DataError(f"calibration method {method!r}: expected one of {', '.join(METHODS)}")
    if cache is not None and cache_key is not None:
        hit = cache.get(cache_key)
        if hit is not None and all(t in hit for t in tensors):
            return {t: hit[t] for t in tensors}
    if not data or len(next(iter(data.values()))) == 0:
        raise DataError("calibration needs at least one sample")
    cm = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
          "entropy": CalibrationMethod.Entropy}[method]
    extra = {"percentile": 99.99, "num_bins": 2048} if method != "minmax" else {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        onnx.save(model, path)
        calibrator = create_calibrator(path, list(COMPUTE_OPS), os.path.join(tmp, "aug.onnx"), cm,
                                       extra_options=extra)
        calibrator.execution_providers = ["CPUExecutionProvider"]
        calibrator.collect_data(_Reader(data, batch_size))
        result = calibrator.compute_data()
    ranges: dict[str, tuple[float, float]] = {}
    for t in tensors:
        if t not in result:
            raise DataError(f"calibration did not observe tensor {t!r}")
        td = result[t]
        lo, hi = (float(np.asarray(v).reshape(-1)[0]) for v in td.range_value)
        ranges[t] = (lo, hi)
    if cache is not None and cache_key is not None:
        cache.put(cache_key, ranges)
    return ranges
