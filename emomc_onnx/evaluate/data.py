"""Evaluation and calibration data: an .npz with one array per model input (+ optional labels)."""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import onnx

from emomc_onnx.errors import DataError

__all__ = ["Dataset", "InputSpec", "input_specs", "load_data", "synthetic_data"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """A model input: name, numpy dtype, shape (int, symbolic name, or None)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The real inputs of a model (initializers listed as inputs are skipped)."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        specs.append(InputSpec(inp.name, dtype, shape))
    return specs


@dataclasses.dataclass
class Dataset:
    """Arrays named as the model inputs, the same number of samples each, optional labels."""

    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    source: str = "<data>"

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 0

    def check(self, specs: Sequence[InputSpec]) -> None:
        """Raise DataError (naming the file and array) unless the data fits the model inputs."""
        names = {s.name for s in specs}
        for spec in specs:
            if spec.name not in self.arrays:
                raise DataError(f"{self.source}: no array named {spec.name!r} for model input "
                                f"{spec.name!r} (arrays: {', '.join(sorted(self.arrays)) or 'none'})")
        for name in self.arrays:
            if name not in names:
                raise DataError(f"{self.source}: array {name!r} is not a model input "
                                f"(inputs: {', '.join(sorted(names))}; labels go in 'labels')")
        counts = {name: len(a) for name, a in self.arrays.items()}
        if len(set(counts.values())) > 1:
            raise DataError(f"{self.source}: arrays have different sample counts {counts}")
        if self.labels is not None and len(self.labels) != len(self):
            raise DataError(f"{self.source}: 'labels' has {len(self.labels)} entries, inputs have {len(self)}")
        for spec in specs:
            arr = self.arrays[spec.name]
            if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
                raise DataError(f"{self.source}: array {spec.name!r} has non-numeric dtype {arr.dtype}")
            if arr.ndim != len(spec.shape):
                raise DataError(f"{self.source}: array {spec.name!r} has rank {arr.ndim} "
                                f"{tuple(arr.shape)}, model input needs rank {len(spec.shape)} {spec.shape}")
            for axis, (got, want) in enumerate(zip(arr.shape, spec.shape)):
                if axis > 0 and isinstance(want, int) and want > 0 and got != want:
                    raise DataError(f"{self.source}: array {spec.name!r} has shape {tuple(arr.shape)}, "
                                    f"model input needs {spec.shape} (axis {axis})")
            if arr.dtype != spec.dtype:
                if np.issubdtype(spec.dtype, np.floating) or (
                        np.issubdtype(arr.dtype, np.integer) and np.issubdtype(spec.dtype, np.integer)):
                    self.arrays[spec.name] = arr.astype(spec.dtype)  # cast without scaling
                else:
                    raise DataError(f"{self.source}: array {spec.name!r} is {arr.dtype}, model input "
                                    f"needs {spec.dtype}")

    def take(self, index: np.ndarray) -> Dataset:
        """The samples at ``index``."""
        return Dataset({k: v[index] for k, v in self.arrays.items()},
                       None if self.labels is None else self.labels[index], self.source)

    def split(self, calib: int, eval: int | None = None, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Disjoint calibration and evaluation sets (deterministic for a seed)."""
        n = len(self)
        if calib > n:
            raise DataError(f"{self.source}: {calib} calibration samples asked, the file has {n}")
        perm = np.random.default_rng(seed).permutation(n)
        rest = perm[calib:]
        if eval is not None:
            rest = rest[:eval]
        return self.take(np.sort(perm[:calib])), self.take(np.sort(rest))

    def subset(self, n: int, seed: int = 0) -> Dataset:
        """``n`` samples chosen with a seed (all if n >= len)."""
        if n >= len(self):
            return self
        return self.take(np.sort(np.random.default_rng(seed).permutation(len(self))[:n]))

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Feed dicts of at most ``batch_size`` samples."""
        for i in range(0, len(self), batch_size):
            yield {k: v[i:i + batch_size] for k, v in self.arrays.items()}


def load_data(path: str | os.PathLike[str]) -> Dataset:
    """Read an .npz: one array per model input, optional ``labels``."""
    p = pathlib.Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such data file")
    try:
        with np.load(p, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise DataError(f"{p}: not a readable .npz file ({str(exc).splitlines()[0][:200]})") from None
    labels = arrays.pop("labels", None)
    if not arrays:
        raise DataError(f"{p}: holds no input arrays")
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
    return Dataset(arrays, labels, str(p))


def synthetic_data(model: onnx.ModelProto, n: int, seed: int = 0,
                   shapes: Mapping[str, Sequence[int]] | None = None) -> Dataset:
    """Random standard-normal inputs (fidelity mode without data); dynamic dims need ``shapes``."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in input_specs(model):
        if shapes and spec.name in shapes:
            dims = list(shapes[spec.name])
        else:
            dims = list(spec.shape)
        dims[0] = n
        if any(not isinstance(d, int) or d <= 0 for d in dims[1:]):
            raise DataError(f"input {spec.name!r} has dynamic dims {spec.shape}: give --input-shape or --data")
        arrays[spec.name] = rng.standard_normal(dims).astype(spec.dtype)
    return Dataset(arrays, None, "<synthetic>")
