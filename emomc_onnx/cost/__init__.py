"""Cost model: hardware profiles, energy per dataflow, coded size of the weights."""

from __future__ import annotations

from emomc_onnx.cost.coding import SCHEMES, coded_size_bits, estimate_size_bits
from emomc_onnx.cost.dataflows import (
    DataflowInput,
    Traffic,
    available_dataflows,
    build_mapping,
    get_dataflow,
    register_dataflow,
)
from emomc_onnx.cost.mapping import LayerDims, Loop, Mapping, MappingLevel, evaluate_mapping
from emomc_onnx.cost.model import (
    CostLayer,
    LayerCostReport,
    ModelCost,
    OtherOp,
    baseline_cost,
    compare_dataflows,
    layer_cost,
    model_cost,
    to_dict,
)
from emomc_onnx.cost.profile import Profile, list_profiles, load_profile, parse_profile
from emomc_onnx.cost.render import render, render_comparison

__all__ = [
    "SCHEMES",
    "CostLayer",
    "DataflowInput",
    "LayerCostReport",
    "LayerDims",
    "Loop",
    "Mapping",
    "MappingLevel",
    "ModelCost",
    "OtherOp",
    "Profile",
    "Traffic",
    "available_dataflows",
    "baseline_cost",
    "build_mapping",
    "coded_size_bits",
    "compare_dataflows",
    "estimate_size_bits",
    "evaluate_mapping",
    "get_dataflow",
    "layer_cost",
    "list_profiles",
    "load_profile",
    "model_cost",
    "parse_profile",
    "register_dataflow",
    "render",
    "render_comparison",
    "to_dict",
]
