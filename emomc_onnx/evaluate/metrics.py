"""Metrics (higher is better) and their mapping to the search's error objective in [0, 1]."""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Callable, Sequence

import numpy as np

from emomc_onnx.errors import DataError

__all__ = ["Metric", "resolve_metric", "top1_accuracy", "top1_agreement", "sqnr_db", "cosine_similarity"]

logger = logging.getLogger(__name__)


def top1_accuracy(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray], labels) -> float:
    """Fraction of samples whose arg-max of the first output equals the label."""
    if labels is None:
        raise DataError("metric 'accuracy' needs 'labels' in the data file")
    return float((np.asarray(outputs[0]).reshape(len(labels), -1).argmax(1) == labels).mean())


def top1_agreement(outputs, reference, labels=None) -> float:
    """Fraction of samples whose arg-max equals the original model's."""
    a = np.asarray(outputs[0]).reshape(len(outputs[0]), -1).argmax(1)
    b = np.asarray(reference[0]).reshape(len(reference[0]), -1).argmax(1)
    return float((a == b).mean())


def sqnr_db(outputs, reference, labels=None) -> float:
    """Signal-to-quantization-noise ratio of all outputs vs the original, in dB."""
    sig = sum(float((np.asarray(r, np.float64) ** 2).sum()) for r in reference)
    noise = sum(float(((np.asarray(o, np.float64) - np.asarray(r, np.float64)) ** 2).sum())
                for o, r in zip(outputs, reference))
    return float(10 * np.log10(max(sig, 1e-30) / max(noise, 1e-30)))


def cosine_similarity(outputs, reference, labels=None) -> float:
    """Mean per-sample cosine similarity of the first output with the original's."""
    a = np.asarray(outputs[0], np.float64).reshape(len(outputs[0]), -1)
    b = np.asarray(reference[0], np.float64).reshape(len(reference[0]), -1)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)))


def _err_fraction(v: float) -> float:
    return float(min(1.0, max(0.0, 1.0 - v)))


def _err_cosine(v: float) -> float:
    return float(min(1.0, max(0.0, (1.0 - v) / 2.0)))


def _err_sqnr(v: float) -> float:
    # noise-to-signal power ratio, squashed into [0, 1): 0 dB -> 0.5, 40 dB -> 1e-4
    return float(1.0 / (1.0 + 10 ** (v / 10.0)))


@dataclasses.dataclass(frozen=True)
class Metric:
    """A named metric ``fn(outputs, reference, labels) -> float`` (higher is better)."""

    name: str
    fn: Callable
    to_error: Callable[[float], float] = _err_fraction
    higher_is_better: bool = True

    def __call__(self, outputs, reference, labels) -> float:
        return float(self.fn(outputs, reference, labels))

    def error(self, value: float) -> float:
        """The search's error objective for a metric value, in [0, 1]."""
        return self.to_error(value)


BUILTIN = {
    "accuracy": Metric("accuracy", top1_accuracy),
    "agreement": Metric("agreement", top1_agreement),
    "sqnr": Metric("sqnr", sqnr_db, _err_sqnr),
    "cosine": Metric("cosine", cosine_similarity, _err_cosine),
}


def resolve_metric(spec: str | None, has_labels: bool, is_classifier: bool) -> Metric:
    """The metric for a spec; default: accuracy with labels, else agreement (classifiers) or cosine.

    A user metric is ``module:function`` with signature
    ``fn(outputs: list[np.ndarray], reference: list[np.ndarray], labels: np.ndarray | None) -> float``,
    higher is better, values in [0, 1] (the error objective is ``1 - value``).
    """
    if spec is None:
        spec = "accuracy" if has_labels and is_classifier else ("agreement" if is_classifier else "cosine")
    if spec in BUILTIN:
        if spec == "accuracy" and not has_labels:
            raise DataError("--metric accuracy needs 'labels' in the data file")
        return BUILTIN[spec]
    if ":" not in spec:
        raise DataError(f"--metric {spec!r}: expected one of {', '.join(BUILTIN)} or module:function")
    mod_name, _, fn_name = spec.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except Exception as exc:
        raise DataError(f"--metric {spec!r}: cannot import module {mod_name!r} ({exc})") from None
    fn = getattr(module, fn_name, None)
    if fn is None or not callable(fn):
        raise DataError(f"--metric {spec!r}: {mod_name} has no callable {fn_name!r}")
    return Metric(spec, fn)
