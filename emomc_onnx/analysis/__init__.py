"""Model analysis: compute layers, MACs, parameters, channel-dependency groups."""

from __future__ import annotations

from emomc_onnx.analysis.dependency import HANDLERS, ChannelGraph, Group, Member
from emomc_onnx.analysis.layers import Layer
from emomc_onnx.analysis.model_analysis import COMPUTE_OPS, Analysis, analyze, find_layers

__all__ = [
    "Analysis",
    "COMPUTE_OPS",
    "ChannelGraph",
    "Group",
    "HANDLERS",
    "Layer",
    "Member",
    "analyze",
    "find_layers",
]
