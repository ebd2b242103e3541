"""Learned-step-size fake quantizers (LSQ, Esser et al. 2020) for weights and activations.

Forward: ``q = round(clamp(x / s + z, qmin, qmax)) - z) * s`` with a straight-through
round, so gradients reach both ``x`` and the step ``s``; the step's gradient is scaled by
``1 / sqrt(n * qmax)`` as LSQ does. Weights are symmetric per channel, and their step is
kept within [0.5, 1] x max|w| / qmax of the channel: the largest weight then always sits on
the top code, so the exported model stores the learned codes and steps exactly (the
quantizer's clipping search covers the same ratios) and the bits read back are the member's.
Activations keep the member's zero point and code range and learn the step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ActLSQ", "BiasQuant", "WeightLSQ", "round_ste"]


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round with an identity gradient (straight-through estimator)."""
    return (torch.round(x) - x).detach() + x


def _grad_scale(s: torch.Tensor, g: float) -> torch.Tensor:
    return (s - s * g).detach() + s * g


class WeightLSQ(nn.Module):
    """Symmetric per-channel (or per-tensor) b-bit weight quantizer with a learned step."""

    def __init__(self, scale, bits: int, axis: int | None, ndim: int) -> None:
        super().__init__()
        self.qmax = 2 ** (bits - 1) - 1
        self.axis = axis
        self.ndim = ndim
        self.step = nn.Parameter(torch.as_tensor(scale, dtype=torch.float32).reshape(-1).clone())

    def _shape(self, t: torch.Tensor) -> torch.Tensor:
        if self.axis is None:
            return t.reshape([1] * self.ndim)
        shape = [1] * self.ndim
        shape[self.axis % self.ndim] = -1
        return t.reshape(shape)

    def bounds(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel [0.5, 1] x max|w| / qmax (a floor keeps all-zero channels finite)."""
        dims = [d for d in range(w.dim()) if self.axis is None or d != self.axis % w.dim()]
        m = w.detach().abs().amax(dim=dims).reshape(-1)
        hi = torch.clamp(m / self.qmax, min=1e-12)
        return 0.5 * hi, hi

    def effective_step(self, w: torch.Tensor) -> torch.Tensor:
        lo, hi = self.bounds(w)
        return torch.clamp(self.step, lo, hi)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        g = 1.0 / math.sqrt(max(1, w.numel() // max(1, self.step.numel())) * self.qmax)
        s = self._shape(_grad_scale(self.effective_step(w), g))
        return round_ste(torch.clamp(w / s, -self.qmax, self.qmax)) * s

    @torch.no_grad()
    def project(self, w: torch.Tensor) -> None:
        """Keep the stored step inside its bounds (after an optimizer step)."""
        self.step.copy_(self.effective_step(w))


class ActLSQ(nn.Module):
    """Per-tensor activation quantizer: the member's zero point and code range, learned step."""

    def __init__(self, scale: float, zero_point: int, qmin: int, qmax: int) -> None:
        super().__init__()
        self.step = nn.Parameter(torch.tensor(float(scale)))
        self.zero_point = float(zero_point)
        self.qmin, self.qmax = float(qmin), float(qmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x[0].numel() if x.dim() > 1 else x.numel()
        g = 1.0 / math.sqrt(max(1, n) * max(1.0, self.qmax - self.zero_point))
        s = _grad_scale(self.step, g)
        v = torch.clamp(x / s + self.zero_point, self.qmin, self.qmax)
        return (round_ste(v) - self.zero_point) * s

    @torch.no_grad()
    def project(self) -> None:
        self.step.clamp_(min=1e-8)


class BiasQuant:
    """A bias rounded to int32 codes at scale s_x * s_w, as the exported model stores it.

    Not a module: it reads the step of the layer's input quantizer and its weight
    quantizer's effective step (for the current weight) at every call.
    """

    def __init__(self, act: ActLSQ, weight: WeightLSQ, get_weight) -> None:
        self.act, self.weight, self.get_weight = act, weight, get_weight

    def __call__(self, b: torch.Tensor) -> torch.Tensor:
        s = self.act.step.clamp(min=1e-8) * self.weight.effective_step(self.get_weight())
        if s.numel() not in (1, b.numel()):
            return b
        s = torch.maximum(s.reshape(-1), b.detach().abs().reshape(-1) / 2.0**30).reshape(b.shape)
        return round_ste(b / s) * s
