"""Energy, coded size and parameters of a built candidate under a hardware profile."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from emomc_onnx.analysis import Analysis
from emomc_onnx.analysis.ops import op_spec
from emomc_onnx.cost.from_onnx import cost_model
from emomc_onnx.passes.channel_pruning import predict_layers

__all__ = ["CandidateCoster", "stored_params"]


class CandidateCoster:
    """Costs models of one analysed model under one profile, dataflow and coding scheme."""

    def __init__(self, analysis: Analysis, profile, dataflow: str | None = None, coding: str | None = None,
                 input_shapes: Mapping[str, Sequence[int]] | None = None) -> None:
        self.analysis, self.profile, self.dataflow, self.coding = analysis, profile, dataflow, coding
        self.input_shapes = dict(input_shapes) if input_shapes else None

    def reference_bits(self) -> tuple[int, int]:
        """Bits at which float layers are costed (the profile's baseline word)."""
        b = int(self.profile.baseline_weight_bits)
        a = int(getattr(self.profile, "baseline_activation_bits", b) or b)
        return b, a

    def plan_cost(self, proto: onnx.ModelProto, plan, keep: np.ndarray | None):
        """Cost of a plan's built model (``keep``: its channel keep mask, None if unpruned).

        Layer shapes come from the analysis and the keep mask (no re-analysis of the built
        model); weights are read from the built model (integer codes behind DequantizeLinear).
        """
        layers = predict_layers(self.analysis, keep) if keep is not None else self.analysis.layers
        ref_w, ref_a = self.reference_bits()
        bits = {lay.name: (plan.wbits.get(lay.name) or ref_w, plan.abits.get(lay.name) or ref_a)
                for lay in layers}
        return cost_model(proto, self.profile, self.dataflow, self.coding, layers=layers, bits=bits,
                          input_shapes=self.input_shapes)

    def model_cost(self, proto: onnx.ModelProto):
        """Cost of a model built elsewhere, from its own graph (bits read from its QDQ)."""
        return cost_model(proto, self.profile, self.dataflow, self.coding, input_shapes=self.input_shapes)


def stored_params(proto: onnx.ModelProto) -> int:
    """Weights and biases of compute layers (stored elements, zeros included)."""
    inits = {t.name: t for t in proto.graph.initializer}
    dq = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    total = 0
    for node in proto.graph.node:
        spec = op_spec(node.op_type)
        if spec is not None:
            for name in [node.input[i] for i in (spec.weight_input, spec.bias_input)
                         if i is not None and i < len(node.input)]:
                src = dq.get(name, name)
                if src in inits:
                    total += int(np.prod(inits[src].dims))
    return total
