"""Hand-built Layer objects for cost tests (no ONNX needed)."""

from __future__ import annotations

from emomc_onnx.analysis.layers import Layer

__all__ = ["alexnet_convs", "conv", "linear"]


def conv(
    name: str,
    cin: int,
    cout: int,
    k: int,
    hw_out: int,
    stride: int = 1,
    groups: int = 1,
    hw_in: int | None = None,
    bias: bool = False,
) -> Layer:
    """A square Conv layer."""
    hw_in = hw_in if hw_in is not None else hw_out * stride
    macs = k * k * hw_out * hw_out * cin * cout // groups
    params = k * k * cin * cout // groups + (cout if bias else 0)
    return Layer(name, "Conv", f"{name}.w", f"{name}.b" if bias else None, f"{name}.x",
                 f"{name}.y", cin, cout, groups, (k, k), (stride, stride), (hw_in, hw_in),
                 (hw_out, hw_out), macs, params)


def linear(name: str, fin: int, fout: int, rows: int = 1, bias: bool = False) -> Layer:
    """A Gemm layer applied to ``rows`` vectors."""
    return Layer(name, "Gemm", f"{name}.w", f"{name}.b" if bias else None, f"{name}.x",
                 f"{name}.y", fin, fout, 1, (1, 1), (1, 1), (1, 1), (rows, 1),
                 fin * fout * rows, fin * fout + (fout if bias else 0))


def alexnet_convs() -> list[Layer]:
    """AlexNet CONV1-5 (the Eyeriss paper's shapes, CONV1 stride 4 on 227x227)."""
    return [
        conv("conv1", 3, 96, 11, 55, stride=4, hw_in=227),
        conv("conv2", 48 * 2, 256, 5, 27, groups=2, hw_in=31),
        conv("conv3", 256, 384, 3, 13, hw_in=15),
        conv("conv4", 192 * 2, 384, 3, 13, groups=2, hw_in=15),
        conv("conv5", 192 * 2, 256, 3, 13, groups=2, hw_in=15),
    ]
