"""Compute layers of a model: what the cost model, pruning and quantization work on."""

from __future__ import annotations

import dataclasses

__all__ = ["Layer"]


@dataclasses.dataclass(frozen=True)
class Layer:
    """One compute layer (Conv, ConvTranspose, Gemm, MatMul with a constant weight).

    Shapes are for one sample (batch 1). For Gemm/MatMul ``kernel`` and ``stride`` are
    ``(1, 1)``, ``in_spatial`` is ``(1, 1)`` and ``out_spatial`` is ``(rows, 1)`` where
    ``rows`` is the number of feature vectors the weight is applied to per sample (1 for a
    classifier head, the token count for a transformer MatMul).

    Attributes:
        name: the node's name (unique: import names unnamed nodes).
        op_type: "Conv", "ConvTranspose", "Gemm" or "MatMul".
        weight: name of the weight initializer.
        bias: name of the bias initializer, or None.
        input: name of the activation input tensor.
        output: name of the output tensor.
        in_channels: input channels (features) of the layer, all groups.
        out_channels: output channels (features).
        groups: Conv ``group`` attribute (1 for Gemm/MatMul).
        kernel: (kh, kw); 1-D convs use (k, 1).
        stride: (sh, sw).
        in_spatial: (H, W) of the input activation.
        out_spatial: (Ho, Wo) of the output activation.
        macs: multiply-accumulates for one sample.
        params: weight + bias element count.
    """

    name: str
    op_type: str
    weight: str
    bias: str | None
    input: str
    output: str
    in_channels: int
    out_channels: int
    groups: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    in_spatial: tuple[int, int]
    out_spatial: tuple[int, int]
    macs: int
    params: int

    @property
    def is_depthwise(self) -> bool:
        """True for a depthwise convolution (one input channel per group)."""
        return self.groups > 1 and self.groups == self.in_channels
