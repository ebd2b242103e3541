"""When a stage stops: pymoo terminations for its generations, evaluations and time.

A stage runs until the first of ``generations`` generations, its share of the evaluation
budget (distinct new candidates, kept in the algorithm's ``evaluator.n_eval`` by the driver)
and its share of the time budget. A stage whose budget is already spent does not start.
"""

from __future__ import annotations

from pymoo.core.termination import Termination
from pymoo.termination.collection import TerminationCollection
from pymoo.termination.max_eval import MaximumFunctionCallTermination
from pymoo.termination.max_gen import MaximumGenerationTermination
from pymoo.termination.max_time import TimeBasedTermination

__all__ = ["STOP_REASONS", "exhausted", "stage_termination", "stop_reason"]

# what SearchResult.stop_reasons holds (space_exhausted: mating found no new genome)
STOP_REASONS = ("generations", "time_budget", "max_evaluations", "space_exhausted")


def exhausted(eval_budget: int | None, time_left_s: float | None) -> str | None:
    """Why a stage cannot start (its evaluation or time budget is spent), or None."""
    if time_left_s is not None and time_left_s <= 0:
        return "time_budget"
    if eval_budget is not None and eval_budget <= 0:
        return "max_evaluations"
    return None


def stage_termination(generations: int, eval_budget: int | None, time_left_s: float | None
                      ) -> TerminationCollection:
    """Stop at whichever comes first (budgets None are unlimited; both must be positive)."""
    terms: list[Termination] = [MaximumGenerationTermination(generations)]
    if time_left_s is not None:
        terms.append(TimeBasedTermination(float(time_left_s)))
    if eval_budget is not None:
        terms.append(MaximumFunctionCallTermination(eval_budget))
    return TerminationCollection(*terms)


_REASON = {MaximumGenerationTermination: "generations", TimeBasedTermination: "time_budget",
           MaximumFunctionCallTermination: "max_evaluations"}


def stop_reason(termination: TerminationCollection) -> str:
    """The first criterion met, in the order generations, time, evaluations."""
    for t in termination.terminations:
        if t.has_terminated():
            return _REASON[type(t)]
    return "space_exhausted" if termination.force_termination else "generations"
