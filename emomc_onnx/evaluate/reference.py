"""The data a candidate is measured on, and what the original model says on it.

:class:`ReferenceData` reads the user's data (or makes synthetic inputs), splits it once into
calibration, search and test samples, runs the original model on the search and test splits
and resolves the metric; :meth:`ReferenceData.figure` turns a candidate's outputs into its
metric and statistics against those reference outputs.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from emomc_onnx.evaluate.data import Dataset, input_specs, load_data, make_splits, synthetic_data
from emomc_onnx.evaluate.metrics import Metric, resolve_metric
from emomc_onnx.evaluate.session import make_session, run_batched
from emomc_onnx.evaluate.stats import describe

__all__ = ["SUBSETS", "ReferenceData"]

SUBSETS = ("search", "test")
CALIB_BATCH = 64  # samples per calibration batch (recovery statistics, activation ranges)


class ReferenceData:
    """Splits of the data, the original model's outputs on them, and the metric.

    Args:
        original: the normalised model as ORT runs it.
        data: an .npz path, or None for synthetic inputs of the model's shapes.
        test_data: a separate .npz for the test split.
        calib_samples, eval_samples, test_samples: split sizes (None: see ``evaluate.data``).
        split_seed: fixes the splits (not the search seed).
        metric: a metric spec (``resolve_metric``), None for the default.
        input_shapes: name -> shape for synthetic inputs with dynamic dimensions.
        threads, batch_size: ORT intra-op threads and samples per run.
    """

    def __init__(
        self,
        original: onnx.ModelProto,
        data: str | os.PathLike[str] | None = None,
        *,
        test_data: str | os.PathLike[str] | None = None,
        calib_samples: int | None = None,
        eval_samples: int | None = None,
        test_samples: int | None = None,
        split_seed: int = 0,
        metric: str | None = None,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
        threads: int = 1,
        batch_size: int = 256,
    ) -> None:
        self.threads, self.batch_size, self.seed = threads, batch_size, split_seed
        specs = input_specs(original)
        test_ds = None
        if data:
            ds = load_data(data)
            ds.check(specs)
            self.data_hash = hashlib.sha256(pathlib.Path(data).read_bytes()).hexdigest()
            if test_data:
                test_ds = load_data(test_data)
                test_ds.check(specs)
                self.data_hash += hashlib.sha256(pathlib.Path(test_data).read_bytes()).hexdigest()
        else:
            n_syn = sum(v or d for v, d in ((calib_samples, 256), (eval_samples, 1000), (test_samples, 1000)))
            ds = synthetic_data(original, n_syn, split_seed, shapes=input_shapes or None)
            self.data_hash = f"synthetic-{split_seed}-{n_syn}"
        self.splits = make_splits(ds, calib_samples, eval_samples, test_samples, split_seed, test_ds=test_ds)
        self.calib_batches = list(self.splits.calib.batches(CALIB_BATCH))
        self.search, self.test = self.splits.search, self.splits.test
        self.race_n = self.splits.race
        session = make_session(original, threads=threads)
        self.outputs = {"search": self.run(session, self.search), "test": self.run(session, self.test)}
        out0 = self.outputs["test"][0]
        self.metric: Metric = resolve_metric(metric, has_labels=self.search.labels is not None,
                                             is_classifier=out0.ndim == 2 and out0.shape[1] > 1)
        self._calib_feeds: dict[str, np.ndarray] | None = None

    def dataset(self, subset: str) -> Dataset:
        """The search or test split."""
        if subset not in SUBSETS:
            raise ValueError(f"unknown subset {subset!r} (search or test)")
        return self.search if subset == "search" else self.test

    def run(self, session, ds: Dataset) -> list[np.ndarray]:
        """A session's outputs on ``ds`` (batched as every candidate is)."""
        return run_batched(session, ds, self.batch_size)

    def calib_feeds(self) -> dict[str, np.ndarray]:
        """The calibration split as one feed per input (what activation calibration reads)."""
        if self._calib_feeds is None:
            feeds: dict[str, list[np.ndarray]] = {}
            for b in self.calib_batches:
                for k, v in b.items():
                    feeds.setdefault(k, []).append(v)
            self._calib_feeds = {k: np.concatenate(v) for k, v in feeds.items()}
        return self._calib_feeds

    def figure(self, outs: list[np.ndarray], subset: str, n: int | None = None) -> tuple[float, dict]:
        """The metric on ``subset`` (its first ``n`` samples) and its statistics vs the original."""
        ds = self.dataset(subset)
        ref = self.outputs[subset]
        labels = ds.labels
        if n is not None and n < len(ds):
            ref = [r[:n] for r in ref]
            labels = None if labels is None else labels[:n]
        m = self.metric
        value = float(m(outs, ref, labels))
        ref_value = float(m(ref, ref, labels))
        per = ref_per = None
        if m.per_sample is not None:
            per, ref_per = m.per_sample(outs, ref, labels), m.per_sample(ref, ref, labels)

        def recompute(idx: np.ndarray) -> tuple[float, float]:
            r = [a[idx] for a in ref]
            lab = None if labels is None else labels[idx]
            return float(m([o[idx] for o in outs], r, lab)), float(m(r, r, lab))

        stats = describe(value, ref_value, per, ref_per, len(outs[0]), binary=m.binary, recompute=recompute,
                         intervals=subset == "test", seed=self.seed)
        stats["split"] = "race" if subset == "search" and n is not None and n < len(ds) else subset
        return value, stats
