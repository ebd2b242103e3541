"""Published figures the cost model is checked against (each cited), and their layer shapes.

* nn_dataflow's reproduction of Eyeriss ISCA'16 Fig. 10 (stanford-mast/nn_dataflow,
  nn_dataflow/tests/dataflow_test/test_nn_dataflow.py, ``test_eyeriss_isca16``): AlexNet as
  nn_dataflow/nns/alex_net.py defines it (CONV1 and CONV3 as two halves reading the whole
  input, CONV2/4/5 as the two groups), batch 16, 16 x 16 PEs, 128 kB buffer, 512 B RF,
  costs 200/6/2/1, MAC 1. ``major_cost_bkdn_ref``: ALU, DRAM and RF energy per layer in
  units of 1e9.
* Deep Compression (Han, Mao, Dally, ICLR 2016, arXiv:1510.00149v5, Table 4 "Compression
  statistics for AlexNet"): per layer, the weights kept after pruning, the bits per weight
  after quantization (conv 8, fc 5; 4-bit relative indices) and the compression rate
  (compressed / 32-bit dense) after pruning + quantization (P+Q) and after Huffman coding
  too (P+Q+H).
"""

from __future__ import annotations

from emomc_onnx.analysis.layers import Layer
from tests.cost.shapes import conv, linear

__all__ = ["DEEP_COMPRESSION_ALEXNET", "DEEP_COMPRESSION_INDEX_BITS", "NND_ALEXNET_REF", "deep_compression_layer", "nnd_alexnet"]

# layer: (ALU, DRAM, RF) energy / 1e9, nn_dataflow test_eyeriss_isca16 major_cost_bkdn_ref
NND_ALEXNET_REF: dict[str, tuple[float, float, float]] = {
    "conv1": (1.69, 2.46, 6.75),
    "conv2": (3.58, 2.27, 14.33),
    "conv3": (2.39, 2.02, 9.57),
    "conv4": (1.79, 1.57, 7.18),
    "conv5": (1.20, 1.05, 4.78),
    "fc1": (0.60, 7.78, 2.42),
    "fc2": (0.27, 3.39, 1.07),
    "fc3": (0.07, 0.84, 0.26),
}


def nnd_alexnet() -> dict[str, list[Layer]]:
    """AlexNet as nn_dataflow/nns/alex_net.py defines it: layer -> its parts."""
    return {
        "conv1": [conv(f"conv1_{x}", 3, 48, 11, 55, stride=4, hw_in=227) for x in "ab"],
        "conv2": [conv(f"conv2_{x}", 48, 128, 5, 27, hw_in=31) for x in "ab"],
        "conv3": [conv(f"conv3_{x}", 256, 192, 3, 13, hw_in=15) for x in "ab"],
        "conv4": [conv(f"conv4_{x}", 192, 192, 3, 13, hw_in=15) for x in "ab"],
        "conv5": [conv(f"conv5_{x}", 192, 128, 3, 13, hw_in=15) for x in "ab"],
        "fc1": [conv("fc1", 256, 4096, 6, 1, hw_in=6)],  # FCLayer(256, 4096, 6): 6x6 input
        "fc2": [linear("fc2", 4096, 4096)],
        "fc3": [linear("fc3", 4096, 1000)],
    }


# Deep Compression, Table 4 (AlexNet): layer -> (weights, kept fraction after pruning,
# quantized bits per weight, compression rate P+Q in %, compression rate P+Q+H in %).
# (Weights: AlexNet's exact counts; the table rounds them to 35K ... 38M.)
DEEP_COMPRESSION_ALEXNET: dict[str, tuple[int, float, int, float, float]] = {
    "conv1": (34_848, 0.84, 8, 32.6, 20.53),
    "conv2": (307_200, 0.38, 8, 14.5, 9.43),
    "conv3": (884_736, 0.35, 8, 13.1, 8.44),
    "conv4": (663_552, 0.37, 8, 14.1, 9.11),
    "conv5": (442_368, 0.37, 8, 14.2, 9.43),
    "fc6": (37_748_736, 0.09, 5, 3.0, 2.39),
    "fc7": (16_777_216, 0.09, 5, 3.0, 2.46),
    "fc8": (4_096_000, 0.25, 5, 7.3, 5.85),
}
DEEP_COMPRESSION_INDEX_BITS = 4


def deep_compression_layer(n: int, kept: float, bits: int, seed: int = 0):
    """A layer shaped as Deep Compression describes its pipeline (no trained AlexNet here).

    Gaussian weights, the smallest |w| pruned to the kept fraction, the survivors quantized
    to 2^bits shared values initialised linearly over their range (the paper's linear
    k-means initialisation); codes 1..2^bits, pruned weights 0.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    w = rng.standard_normal(n, dtype=np.float32)
    keep = np.abs(w) > np.quantile(np.abs(w), 1.0 - kept)
    lo, hi = w[keep].min(), w[keep].max()
    levels = (1 << bits) - 1
    codes = np.clip(np.rint((w - lo) / (hi - lo) * levels), 0, levels).astype(np.int32) + 1
    return np.where(keep, codes, 0)
