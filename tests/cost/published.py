"""Published figures the cost model is checked against (each cited), and their layer shapes.

* nn_dataflow's reproduction of Eyeriss ISCA'16 Fig. 10 (stanford-mast/nn_dataflow,
  nn_dataflow/tests/dataflow_test/test_nn_dataflow.py, ``test_eyeriss_isca16``): AlexNet as
  nn_dataflow/nns/alex_net.py defines it (CONV1 and CONV3 as two halves reading the whole
  input, CONV2/4/5 as the two groups), batch 16, 16 x 16 PEs, 128 kB buffer, 512 B RF,
  costs 200/6/2/1, MAC 1. ``major_cost_bkdn_ref``: ALU, DRAM and RF energy per layer in
  units of 1e9.
* Deep Compression (Han, Mao, Dally, ICLR 2016, Table 4 "Compression statistics for
  AlexNet"): per layer, weights kept after pruning, bits per weight after quantization
  (conv 8, fc 5) and the compression rate of pruning + quantization + Huffman, with the
  relative-index sparse format (4-bit indices for fc... ) and codebooks counted.
"""

from __future__ import annotations

from emomc_onnx.analysis.layers import Layer
from tests.cost.shapes import conv, linear

__all__ = ["DEEP_COMPRESSION_ALEXNET", "NND_ALEXNET_REF", "nnd_alexnet"]

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
# quantized bits per weight, compression rate after pruning + quantization + Huffman).
DEEP_COMPRESSION_ALEXNET: dict[str, tuple[int, float, int, float]] = {
}
