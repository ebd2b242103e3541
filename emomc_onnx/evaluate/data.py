"""Evaluation and calibration data: an .npz with one array per model input (+ optional labels).

Arrays are named as the model inputs, axis 0 indexes samples, and an optional ``labels``
array (one integer class per sample) enables top-1 accuracy. ``Dataset.check`` compares the
arrays with the model's inputs and raises one-line DataErrors naming the file and the array.
Integer arrays fed to float inputs are cast *without scaling*: the demo ships uint8 pixels
and its model divides by 255 in-graph, so scaling here would apply it twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pathlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import onnx

from emomc_onnx import io
from emomc_onnx.errors import DataError

__all__ = ["Dataset", "InputSpec", "Splits", "input_specs", "load_data", "make_splits", "split_sizes",
           "synthetic_data"]

CALIB_SHARE = 0.10
"""Default share of the file for calibration (300 of the demo's 3,000 held-out digits)."""
SEARCH_SHARE = 1 / 3
"""Default share of the file the search ranks candidates on (1,000 of the demo's 3,000)."""
RACE_SHARE = 0.25
"""Share of the search split every candidate is first measured on (racing)."""

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
        if not inp.type.HasField("tensor_type"):
            raise DataError(f"model input {inp.name!r} is not a tensor; only tensor inputs can be fed")
        tt = inp.type.tensor_type
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"model input {inp.name!r} has element type {tt.elem_type}, "
                            "which has no numpy equivalent") from None
        shape = io.declared_dims(tt)
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
            raise DataError(f"{self.source}: array 'labels' has {len(self.labels)} entries, inputs have {len(self)}")
        for spec in specs:
            arr = self.arrays[spec.name]
            if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
                raise DataError(f"{self.source}: array {spec.name!r} has non-numeric dtype {arr.dtype}")
            if np.iscomplexobj(arr) and not np.issubdtype(spec.dtype, np.complexfloating):
                raise DataError(f"{self.source}: array {spec.name!r} is complex ({arr.dtype}); model input "
                                f"needs {spec.dtype} (casting would drop the imaginary part)")
            if np.issubdtype(arr.dtype, np.inexact):
                bad = ~np.isfinite(arr)
                if bad.any():
                    first = int(np.argwhere(bad.reshape(len(arr), -1).any(axis=1))[0, 0])
                    raise DataError(f"{self.source}: array {spec.name!r} holds {int(bad.sum())} NaN/Inf "
                                    f"values (first in sample {first}); clean the data first")
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
        """Disjoint calibration and evaluation sets, deterministic for a seed.

        ``calib`` samples go to calibration; ``eval`` (all the rest if None, at most the rest
        otherwise) to evaluation. Both keep the file's sample order.
        """
        n = len(self)
        if calib < 0 or (eval is not None and eval < 0):
            raise DataError(f"{self.source}: sample counts must be >= 0 (calib={calib}, eval={eval})")
        if calib > n:
            raise DataError(f"{self.source}: {calib} calibration samples asked, the file has {n}")
        if eval is None and calib >= n:
            raise DataError(f"{self.source}: {n} sample{'s' if n != 1 else ''}; at least {calib + 1} needed "
                            f"({calib} for calibration, at least 1 for evaluation)")
        perm = np.random.default_rng(seed).permutation(n)
        rest = perm[calib:]
        if eval is not None:
            rest = rest[:eval]
        return self.take(np.sort(perm[:calib])), self.take(np.sort(rest))

    def subset(self, n: int, seed: int = 0) -> Dataset:
        """``n`` samples chosen with a seed, in file order (all if n >= len)."""
        if n < 0:
            raise DataError(f"{self.source}: cannot take {n} samples")
        if n >= len(self):
            return self
        return self.take(np.sort(np.random.default_rng(seed).permutation(len(self))[:n]))

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Feed dicts of at most ``batch_size`` samples (labels not included)."""
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        for i in range(0, len(self), batch_size):
            yield {k: v[i:i + batch_size] for k, v in self.arrays.items()}


def split_sizes(n: int, calib: int | None, search: int | None, test: int | None,
                separate_test: bool = False, source: str = "<data>") -> tuple[int, int, int]:
    """Calibration, search and test sample counts for a file of ``n`` samples.

    Defaults: 10% calibration, a third search, the rest test (the demo's 3,000: 300 / 1,000 /
    1,700). With a separate test file the test count is 0 here and the search split takes
    what calibration leaves. Raises DataError when the counts do not fit in the file.
    """
    for name, v in (("--calib-samples", calib), ("--eval-samples", search), ("--test-samples", test)):
        if v is not None and v < 1:
            raise DataError(f"{name} {v}: need at least 1 sample")
    least = 2 if separate_test else 3
    if n < least:
        raise DataError(f"{source}: {n} sample{'s' if n != 1 else ''}; at least {least} needed (1 calibration, "
                        f"1 search{'' if separate_test else ', 1 test'} sample; far more for figures that mean "
                        "something)")
    c = calib if calib is not None else max(1, round(CALIB_SHARE * n))
    if separate_test:
        s = search if search is not None else n - c
        t = 0
    else:
        s = search if search is not None else max(1, round(SEARCH_SHARE * n))
        t = test if test is not None else n - c - s
    need = c + s + t
    if need > n or s < 1 or (not separate_test and t < 1):
        raise DataError(f"{source}: {n} samples cannot hold {c} calibration + {s} search"
                        + ("" if separate_test else f" + {max(t, 0)} test")
                        + " samples (all three must be disjoint and non-empty; lower --calib-samples / "
                          "--eval-samples / --test-samples, or give --test-data FILE.npz)")
    return c, s, t


@dataclasses.dataclass
class Splits:
    """Three disjoint splits of the user's data (or a separate test file).

    Attributes:
        calib: calibration samples (activation ranges, least-squares recovery).
        search: samples the search ranks candidates on; its first ``race`` samples are the
            cheap subset every candidate is measured on first.
        race: size of that racing prefix of ``search``.
        test: samples never seen by the search or by the choice of the front; the figures
            the tool reports are on these.
        indices: split name -> sample indices in the data file (test: in its own file when
            separate).
        test_source: the file the test samples come from.
    """

    calib: Dataset
    search: Dataset
    race: int
    test: Dataset
    indices: dict[str, np.ndarray]
    test_source: str

    def summary(self) -> dict:
        """Sizes, sources and a hash of each split's indices (provenance for front.json)."""
        out = {}
        for name, idx in self.indices.items():
            out[name] = {"n": len(idx),
                         "indices_sha256": hashlib.sha256(np.asarray(idx, np.int64).tobytes()).hexdigest()[:16]}
        out["race"] = {"n": int(self.race), "of": "search"}
        out["test"]["source"] = self.test_source
        out["search"]["source"] = out["calib"]["source"] = self.search.source
        return out


def make_splits(ds: Dataset, calib: int | None, search: int | None, test: int | None, seed: int,
                test_ds: Dataset | None = None, race_share: float = RACE_SHARE) -> Splits:
    """Disjoint calibration, search and test splits, fixed by ``seed`` (the split seed).

    One permutation of the file gives calibration, then search, then test; each keeps the
    file's order except the search split, whose racing prefix comes first. ``test_ds`` (a
    separate file) replaces the test split (``test`` samples of it, all by default).
    """
    c, s, t = split_sizes(len(ds), calib, search, test, separate_test=test_ds is not None, source=ds.source)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(ds))
    calib_idx = np.sort(perm[:c])
    search_idx = perm[c:c + s]
    r = min(s, max(1, round(race_share * s)))
    search_idx = np.concatenate([np.sort(search_idx[:r]), np.sort(search_idx[r:])])
    if test_ds is None:
        test_idx = np.sort(perm[c + s:c + s + t])
        test_set, source = ds.take(test_idx), ds.source
    else:
        n_t = len(test_ds) if test is None else test
        if n_t > len(test_ds):
            raise DataError(f"{test_ds.source}: {n_t} test samples asked, the file has {len(test_ds)}")
        test_idx = np.sort(rng.permutation(len(test_ds))[:n_t]) if n_t < len(test_ds) else np.arange(n_t)
        test_set, source = test_ds.take(test_idx), test_ds.source
    return Splits(calib=ds.take(calib_idx), search=ds.take(search_idx), race=r, test=test_set,
                  indices={"calib": calib_idx, "search": search_idx, "test": test_idx}, test_source=source)


def load_data(path: str | os.PathLike[str]) -> Dataset:
    """Read an .npz: one array per model input, optional ``labels``."""
    p = pathlib.Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such data file")
    try:
        npz = np.load(p, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{p}: not a readable .npz file ({_first_line(exc)})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{p}: not an .npz archive (save it with numpy.savez, one array per model input)")
    arrays = {}
    with npz:
        for key in npz.files:
            try:
                arrays[key] = npz[key]
            except Exception as exc:
                raise DataError(f"{p}: array {key!r} cannot be read ({_first_line(exc)})") from None
    labels = arrays.pop("labels", None)
    if not arrays:
        raise DataError(f"{p}: holds no input arrays")
    for key, arr in arrays.items():
        if arr.ndim == 0:
            raise DataError(f"{p}: array {key!r} is a scalar; axis 0 must index samples")
        if len(arr) == 0:
            raise DataError(f"{p}: array {key!r} holds 0 samples; at least 1 is needed (3 for compress: "
                            "1 calibration + 1 search + 1 test)")
    if labels is not None:
        labels = _labels(labels, p)
    return Dataset(arrays, labels, str(p))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _labels(labels: np.ndarray, path: pathlib.Path) -> np.ndarray:
    """Integer class labels, one per sample (a trailing axis of size 1 is accepted)."""
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{path}: array 'labels' has shape {labels.shape}; need one class index per sample")
    if np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_ or np.issubdtype(labels.dtype, np.floating) and np.all(np.isfinite(labels)) \
            and np.array_equal(labels, np.round(labels)):
        out = labels.astype(np.int64)
    else:
        raise DataError(f"{path}: array 'labels' is {labels.dtype}; need integer class indices")
    if len(out) and out.min() < 0:
        raise DataError(f"{path}: array 'labels' holds {int(out.min())} at sample "
                        f"{int(np.argmin(out))}; class indices start at 0")
    return out


def synthetic_data(model: onnx.ModelProto, n: int, seed: int = 0,
                   shapes: Mapping[str, Sequence[int]] | None = None) -> Dataset:
    """Random inputs of the model's shapes for fidelity mode without data (see
    :func:`emomc_onnx.io.random_inputs`): axis 0 becomes ``n``; other dynamic dims need
    ``shapes`` (name -> full shape)."""
    if n < 1:
        raise DataError(f"synthetic data needs at least one sample, got {n}")
    input_specs(model)  # every input a tensor with a numpy type, or a DataError naming it
    try:
        arrays = io.random_inputs(model, n, seed, shapes)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    return Dataset(arrays, None, "<synthetic>")
