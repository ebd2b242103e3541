"""The search's view of a model: plans in, objectives out.

The concrete ONNX evaluator (passes + ONNX Runtime + cost model) lives outside the search;
the search only needs this protocol. Evaluators are created inside each worker process by
a picklable ``evaluator_factory()`` callable.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import onnx

    from emomc_onnx.search.space import CompressionPlan

__all__ = ["Evaluation", "Evaluator", "EvaluatorFactory", "to_jsonable"]


def to_jsonable(obj: Any) -> Any:
    """Recursively convert numpy scalars/arrays and tuples to plain JSON types."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy scalar or array
        return obj.tolist()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    return str(obj)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Figures of one evaluated model.

    Attributes:
        metric: quality, higher is better (e.g. top-1 accuracy in [0, 1]).
        energy: inference energy for one sample (profile units, e.g. pJ).
        size_bits: coded model size in bits.
        macs: multiply-accumulates for one sample.
        params: stored weight/bias elements.
        extra: free-form JSON-friendly details (cost breakdown, timings ...).
    """

    metric: float
    energy: float
    size_bits: float
    macs: int
    params: int
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def error(self) -> float:
        """The search's error objective: what the metric says its error is (``extra["error"]``,
        from ``Metric.error``: 1 - accuracy, a squashed noise ratio for SQNR ...), else 1 - metric."""
        err = self.extra.get("error") if isinstance(self.extra, Mapping) else None
        return float(err) if err is not None else 1.0 - float(self.metric)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {
            "metric": float(self.metric),
            "energy": float(self.energy),
            "size_bits": float(self.size_bits),
            "macs": int(self.macs),
            "params": int(self.params),
            "extra": to_jsonable(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evaluation:
        """Inverse of :meth:`to_dict`."""
        return cls(
            metric=float(data["metric"]),
            energy=float(data["energy"]),
            size_bits=float(data["size_bits"]),
            macs=int(data["macs"]),
            params=int(data["params"]),
            extra=dict(data.get("extra", {})),
        )

    def to_json(self) -> str:
        """Compact JSON text (floats round-trip exactly)."""
        return json.dumps(self.to_dict(), sort_keys=True)


@runtime_checkable
class Evaluator(Protocol):
    """What the search needs from a model; implemented by the ONNX evaluator and the toy."""

    def evaluate(self, plan: CompressionPlan, subset: str = "search", gate: Any = None) -> Evaluation:
        """Build the plan's model and measure it on ``subset`` ("search" or "test").

        ``gate`` (racing, search split only): measure the racing prefix first and the rest only
        if ``gate(prefix_evaluation)`` is true; otherwise return the prefix figures with
        ``extra["raced_out"] = True``. ``extra["stats"]`` holds the figure's statistics
        (:func:`emomc_onnx.evaluate.stats.describe`) when the evaluator has per-sample data.

        Raises any exception on failure; the search marks the candidate infeasible with the
        exception message as reason.
        """
        ...

    def build(self, plan: CompressionPlan) -> onnx.ModelProto:
        """The deployable model of a plan (used by export)."""
        ...

    def baseline(self) -> Evaluation:
        """Figures of the unmodified model on the test split."""
        ...

    def fingerprint(self) -> str:
        """Model hash + profile hash + data hash: the result-store key prefix."""
        ...


EvaluatorFactory = Callable[[], Evaluator]
