"""Metrics (higher is better) and their mapping to the search's error objective in [0, 1].

Every metric is ``fn(outputs, reference, labels) -> float`` where ``outputs`` and ``reference``
are the candidate's and the original model's outputs (lists of arrays, axis 0 = samples) and
``labels`` is None or one integer class per sample. ``Metric.error(value)`` maps a value to
the error objective the search minimises:

* accuracy, agreement and user metrics (values in [0, 1]): ``1 - value``, clipped;
* cosine similarity ([-1, 1]): ``(1 - value) / 2``;
* SQNR (dB, unbounded): the noise-to-signal power ratio squashed into [0, 1),
  ``1 / (1 + 10 ** (dB / 10))`` (0 dB -> 0.5, 20 dB -> ~0.01, 40 dB -> ~1e-4); identical
  outputs give :data:`SQNR_CAP_DB`.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import os
import pathlib
import sys
import traceback
from collections.abc import Callable, Sequence

import numpy as np

from emomc_onnx.errors import DataError, MetricError

__all__ = [
    "BUILTIN",
    "SQNR_CAP_DB",
    "Metric",
    "cosine_similarity",
    "resolve_metric",
    "sqnr_db",
    "top1_accuracy",
    "top1_agreement",
]

logger = logging.getLogger(__name__)

SQNR_CAP_DB = 300.0
"""SQNR reported for identical outputs (float64 noise floor; keeps values finite for JSON)."""


def _rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.reshape(len(a), -1) if a.ndim else a.reshape(1, 1)


def _same_len(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if len(a) != len(b):
        raise DataError(f"metric: {what} has {len(b)} samples, the outputs have {len(a)}")


def top1_accuracy(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray] | None = None,
                  labels: np.ndarray | None = None) -> float:
    """Fraction of samples whose arg-max of the first output equals the label."""
    if labels is None:
        raise DataError("metric 'accuracy' needs 'labels' in the data file")
    scores = _rows(outputs[0])
    pred = scores.argmax(1)
    labels = np.asarray(labels).reshape(-1)
    _same_len(pred, labels, "'labels'")
    n_classes = scores.shape[1]
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        bad = labels.max() if labels.max() >= n_classes else labels.min()
        raise DataError(f"'labels' holds class {int(bad)}, outside the model's {n_classes} classes "
                        f"(0..{n_classes - 1} on its first output)")
    return float((pred == labels).mean()) if len(pred) else 0.0


def top1_hits(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray] | None = None,
              labels: np.ndarray | None = None) -> np.ndarray:
    """Per-sample hits of :func:`top1_accuracy` (its mean is the accuracy)."""
    if labels is None:
        raise DataError("metric 'accuracy' needs 'labels' in the data file")
    pred = _rows(outputs[0]).argmax(1)
    labels = np.asarray(labels).reshape(-1)
    _same_len(pred, labels, "'labels'")
    return pred == labels


def top1_agreement_hits(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray],
                        labels: np.ndarray | None = None) -> np.ndarray:
    """Per-sample hits of :func:`top1_agreement`."""
    a = _rows(outputs[0]).argmax(1)
    b = _rows(reference[0]).argmax(1)
    _same_len(a, b, "the reference")
    return a == b


def top1_agreement(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray],
                   labels: np.ndarray | None = None) -> float:
    """Fraction of samples whose arg-max of the first output equals the original model's."""
    a = _rows(outputs[0]).argmax(1)
    b = _rows(reference[0]).argmax(1)
    _same_len(a, b, "the reference")
    return float((a == b).mean()) if len(a) else 0.0


def sqnr_db(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray],
            labels: np.ndarray | None = None) -> float:
    """Signal-to-quantization-noise ratio of all outputs vs the original's, in dB.

    Identical outputs give :data:`SQNR_CAP_DB`; an all-zero reference with any noise gives
    ``-SQNR_CAP_DB``.
    """
    sig = noise = 0.0
    for o, r in zip(outputs, reference, strict=True):
        o64, r64 = np.asarray(o, np.float64), np.asarray(r, np.float64)
        sig += float((r64**2).sum())
        noise += float(((o64 - r64) ** 2).sum())
    if noise == 0.0:
        return SQNR_CAP_DB
    if sig == 0.0:
        return -SQNR_CAP_DB
    return float(np.clip(10 * np.log10(sig / noise), -SQNR_CAP_DB, SQNR_CAP_DB))


def cosine_similarity(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray],
                      labels: np.ndarray | None = None) -> float:
    """Mean per-sample cosine similarity of the first output with the original's.

    Two all-zero rows count as identical (1.0); one zero row against a nonzero one as 0.0.
    """
    cos = cosine_per_sample(outputs, reference, labels)
    return float(cos.mean()) if len(cos) else 0.0


def cosine_per_sample(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray],
                      labels: np.ndarray | None = None) -> np.ndarray:
    """Per-sample cosine similarities of :func:`cosine_similarity`."""
    a = _rows(np.asarray(outputs[0], np.float64))
    b = _rows(np.asarray(reference[0], np.float64))
    _same_len(a, b, "the reference")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    den = na * nb
    cos = np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1.0), np.where(na + nb > 0, 0.0, 1.0))
    return np.clip(cos, -1.0, 1.0)


def _err_fraction(v: float) -> float:
    return float(min(1.0, max(0.0, 1.0 - v)))


def _err_cosine(v: float) -> float:
    return float(min(1.0, max(0.0, (1.0 - v) / 2.0)))


def _err_sqnr(v: float) -> float:
    # noise-to-signal power ratio, squashed into [0, 1): 0 dB -> 0.5, 40 dB -> 1e-4
    return float(1.0 / (1.0 + 10 ** (v / 10.0)))


@dataclasses.dataclass(frozen=True)
class Metric:
    """A named metric ``fn(outputs, reference, labels) -> float`` (higher is better).

    ``per_sample`` (same signature, one value per sample, their mean is the metric) lets the
    statistics resample per-sample values; ``binary`` marks hit/miss metrics (Wilson
    intervals, McNemar's test). Without ``per_sample`` intervals come from recomputing the
    metric on bootstrap resamples.
    """

    name: str
    fn: Callable
    to_error: Callable[[float], float] = _err_fraction
    higher_is_better: bool = True
    per_sample: Callable | None = None
    binary: bool = False

    def __call__(self, outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray],
                 labels: np.ndarray | None) -> float:
        if self.name in BUILTIN:
            value = float(self.fn(outputs, reference, labels))
        else:  # the user's code: whatever it raises (or exits with) is one line, never our crash
            try:
                raw = self.fn(outputs, reference, labels)
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - reported, not hidden
                what = (f"called sys.exit({exc.code!r})" if isinstance(exc, SystemExit)
                        else f"raised {type(exc).__name__}: {_first_line(exc)}")
                raise MetricError(f"--metric {self.name} {what} (run with -v for its traceback)",
                                  traceback.format_exc()) from None
            try:
                value = float(raw)
            except (TypeError, ValueError) as exc:
                raise MetricError(f"--metric {self.name}: did not return a number ({exc})") from None
        if value != value:  # NaN
            raise MetricError(f"--metric {self.name}: returned NaN")
        return value

    def error(self, value: float) -> float:
        """The search's error objective for a metric value, in [0, 1]."""
        return self.to_error(value)


BUILTIN = {
    "accuracy": Metric("accuracy", top1_accuracy, per_sample=top1_hits, binary=True),
    "agreement": Metric("agreement", top1_agreement, per_sample=top1_agreement_hits, binary=True),
    "sqnr": Metric("sqnr", sqnr_db, _err_sqnr),
    "cosine": Metric("cosine", cosine_similarity, _err_cosine, per_sample=cosine_per_sample),
}


def resolve_metric(spec: str | None, has_labels: bool, is_classifier: bool) -> Metric:
    """The metric for a spec; default: accuracy with labels, else agreement (classifiers) or cosine.

    A user metric is ``module:function`` (or ``path/to/file.py:function``) with signature
    ``fn(outputs: list[np.ndarray], reference: list[np.ndarray], labels: np.ndarray | None) -> float``,
    higher is better, values in [0, 1] (the error objective is ``1 - value``, clipped).
    """
    if spec is None:
        spec = "accuracy" if has_labels and is_classifier else ("agreement" if is_classifier else "cosine")
    if spec in BUILTIN:
        if spec == "accuracy" and not has_labels:
            raise DataError("--metric accuracy needs 'labels' in the data file")
        return BUILTIN[spec]
    if ":" not in spec:
        raise DataError(f"--metric {spec!r}: expected one of {', '.join(BUILTIN)} or module:function")
    mod_name, _, fn_name = spec.rpartition(":")
    if not mod_name or not fn_name:
        raise DataError(f"--metric {spec!r}: expected module:function (or path/to/file.py:function)")
    module = _import(mod_name, spec)
    fn = getattr(module, fn_name, None)
    if fn is None:
        raise DataError(f"--metric {spec!r}: {mod_name} has no attribute {fn_name!r} (no callable)")
    if not callable(fn):
        raise DataError(f"--metric {spec!r}: {mod_name}.{fn_name} is not callable (no callable)")
    return Metric(spec, fn)


def _import(mod_name: str, spec: str):
    """Import a module by dotted name (the working directory is searched too) or from a .py file."""
    try:
        if mod_name.endswith(".py"):
            path = pathlib.Path(mod_name)
            if not path.is_file():
                raise FileNotFoundError(f"no such file {path}")
            key = f"emomc_user_metric_{abs(hash(str(path.resolve())))}"
            if key in sys.modules:
                return sys.modules[key]
            loader_spec = importlib.util.spec_from_file_location(key, path)
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
            sys.modules[key] = module
            return module
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.append(os.getcwd())  # console scripts do not search the working directory
        return importlib.import_module(mod_name)
    except Exception as exc:
        raise DataError(f"--metric {spec!r}: cannot import module {mod_name!r} "
                        f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
                        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else "")[:200]
