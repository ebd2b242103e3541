"""Candidates of a compression search: build a plan's model, measure it, cost it.

``builder`` (plan -> ONNX model; also what ``emomc-onnx prune`` runs), ``coster`` (model ->
energy and coded size) and ``evaluator`` (the search's ``Evaluator``: both, plus the data and
reference outputs of :mod:`emomc_onnx.evaluate.reference`).
"""

from __future__ import annotations

from emomc_onnx.candidate.builder import CandidateBuilder
from emomc_onnx.candidate.coster import CandidateCoster
from emomc_onnx.candidate.evaluator import EvaluatorConfig, OnnxEvaluator

__all__ = ["CandidateBuilder", "CandidateCoster", "EvaluatorConfig", "OnnxEvaluator"]
