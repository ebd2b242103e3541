"""Coded sizes of hand-made tensors under every scheme."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emomc_onnx.cost import coded_size_bits, estimate_size_bits
from emomc_onnx.cost.coding import SCHEMES, huffman_code_lengths, huffman_total_bits

# 20 weights, 5 nonzeros at positions 0, 3, 4, 15, 16 (gaps 0, 2, 0, 10, 0), 3 trailing zeros.
T = np.zeros(20, dtype=np.int8)
T[[0, 3, 4, 15, 16]] = [1, -2, 1, 3, 1]


def test_paper_schemes() -> None:
    assert coded_size_bits(T, 4, "normal") == 20 * 4
    # EMOMC's closed forms (the emomc profile sets paper_formulas)
    assert coded_size_bits(T, 4, "csr", paper_formulas=1) == 5 * (4 + 3)
    assert coded_size_bits(T, 4, "coo", paper_formulas=1) == math.ceil(5 * (4 + math.log2(20)))
    assert coded_size_bits(T, 4, "dense") == 80


def test_decodable_csr_and_coo() -> None:
    # CSR: 3-bit gaps (max 7): the gap of 10 needs 10 // 8 = 1 filler -> 6 entries of 4 + 3 bits
    assert coded_size_bits(T, 4, "csr") == 6 * (4 + 3)
    # COO: a decoder reads whole index bits: ceil(log2 20) = 5
    assert coded_size_bits(T, 4, "coo") == 5 * (4 + 5)
    # at 9% density CSR's fillers add ~89% entries (i.i.d. zeros: q^8 / (1 - q^8), q = 0.91)
    rng = np.random.default_rng(1)
    w = (rng.random(200_000) < 0.09) * rng.integers(1, 8, 200_000)
    nnz = np.count_nonzero(w)
    ratio = coded_size_bits(w, 4, "csr") / coded_size_bits(w, 4, "csr", paper_formulas=1)
    assert ratio == pytest.approx(1 + 0.91**8 / (1 - 0.91**8), rel=0.03)
    est = estimate_size_bits(w.size, 4, nnz / w.size, "csr")
    assert est == pytest.approx(coded_size_bits(w, 4, "csr"), rel=0.03)
    assert estimate_size_bits(w.size, 4, nnz / w.size, "coo") == coded_size_bits(w, 4, "coo")


def test_deep_compression_hand_computed() -> None:
    # k = 2 (max gap 3): entries 1, -2, 1, [filler, filler], 3, 1 (gap 10 -> 2 fillers, residue 2)
    # values: 1 x3, -2, 3, 0 x2 -> counts [3, 1, 1, 2]; gaps: 0, 2, 0, 3, 3, 2, 0 -> 0 x3, 2 x2, 3 x2
    v_bits = huffman_total_bits(np.array([3, 1, 1, 2]))
    d_bits = huffman_total_bits(np.array([3, 2, 2]))
    tables = 4 * (4 + 5) + 3 * (2 + 5)
    codebook = 3 * 32  # distinct nonzero values 1, -2, 3
    got = coded_size_bits(T, 4, "deep_compression", index_bits=2)
    assert got == v_bits + d_bits + tables + codebook
    # smaller than its relative index stream (7 entries x 6 bits) only once tensors are large
    rng = np.random.default_rng(0)
    w = (rng.random(100_000) < 0.1) * rng.choice([1, 1, 1, 2, -1, -1, 3], 100_000)
    assert coded_size_bits(w, 5, "deep_compression", index_bits=4) < coded_size_bits(
        w, 5, "relative_index", index_bits=4)


def test_bitmask() -> None:
    assert coded_size_bits(T, 4, "bitmask") == 20 + 5 * 4


def test_relative_index_fillers() -> None:
    # k = 2: max gap 3; the gap of 10 needs 10 // 4 = 2 fillers -> 7 entries of 4 + 2 bits.
    assert coded_size_bits(T, 4, "relative_index", index_bits=2) == 7 * 6
    # k = 4: max gap 15, no filler.
    assert coded_size_bits(T, 4, "relative_index", index_bits=4) == 5 * 8
    # a gap of exactly 2^k - 1 fits; 2^k needs one filler
    v = np.zeros(9, dtype=np.int8)
    v[[0, 4]] = 1  # gap 3
    assert coded_size_bits(v, 8, "relative_index", index_bits=2) == 2 * 10
    v = np.zeros(9, dtype=np.int8)
    v[[0, 5]] = 1  # gap 4
    assert coded_size_bits(v, 8, "relative_index", index_bits=2) == 3 * 10


def test_run_length() -> None:
    # r = 2: runs 0, 2, 0, 10 (2 extra pairs), 0; trailing 3 zeros -> ceil(3/4) = 1 pair.
    assert coded_size_bits(T, 4, "run_length", run_bits=2) == (5 + 2 + 1) * 6
    # r = 5: no extra pair, trailing run 1 pair
    assert coded_size_bits(T, 4, "run_length", run_bits=5) == (5 + 1) * 9
    # all zeros: only run pairs
    assert coded_size_bits(np.zeros(40, np.int8), 4, "run_length", run_bits=3) == 5 * 7


def test_huffman_exact() -> None:
    # histogram: 0 x15, 1 x3, -2 x1, 3 x1 -> lengths 1, 2, 3, 3
    lengths = huffman_code_lengths(np.array([15, 3, 1, 1]))
    assert sorted(lengths.tolist()) == [1, 2, 3, 3]
    data_bits = 15 * 1 + 3 * 2 + 1 * 3 + 1 * 3
    assert coded_size_bits(T, 4, "huffman", length_bits=5) == data_bits + 4 * (4 + 5)
    # single symbol: 1 bit each + one codebook entry
    assert coded_size_bits(np.zeros(10, np.int8), 4, "huffman") == 10 + (4 + 5)
    # float values that are dequantized codes hash the same way
    assert coded_size_bits(T.astype(np.float32) * 0.5, 4, "huffman") == data_bits + 4 * 9


def test_auto_is_minimum() -> None:
    sizes = {s: coded_size_bits(T, 4, s) for s in SCHEMES}
    assert coded_size_bits(T, 4, "auto") == min(sizes.values())


def test_unknown_scheme() -> None:
    with pytest.raises(ValueError, match="unknown coding"):
        coded_size_bits(T, 4, "zip")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from([0, 0, 0, 0, 0, 0, 1, -1, 2, -7, 7]), min_size=1, max_size=300),
    st.integers(1, 4),
)
def test_relative_index_and_huffman_match_reference(vals: list[int], k: int) -> None:
    """Against a straightforward Python encoder."""
    arr = np.array(vals, dtype=np.int8)
    entries, gap = 0, 0
    last = max((i for i, v in enumerate(vals) if v), default=-1)
    for v in vals[: last + 1]:  # trailing zeros are not stored
        if v == 0:
            gap += 1
            if gap == 1 << k:  # gap too long: a filler zero entry resets it
                entries += 1
                gap = 0
        else:
            entries += 1
            gap = 0
    assert coded_size_bits(arr, 4, "relative_index", index_bits=k) == entries * (4 + k)
    # Huffman is within [H, H+1) bits per symbol of the entropy (plus the codebook)
    _, counts = np.unique(arr, return_counts=True)
    p = counts / counts.sum()
    h = float(-(p * np.log2(p)).sum())
    data = coded_size_bits(arr, 4, "huffman") - counts.size * 9
    assert h * arr.size - 1e-9 <= data < (h + 1) * arr.size + 1e-9 or counts.size == 1


def test_estimates() -> None:
    n, b = 10_000, 4
    assert estimate_size_bits(n, b, 0.3, "csr", paper_formulas=1) == 3000 * 7
    assert estimate_size_bits(n, b, 0.3, "bitmask") == n + 3000 * 4
    assert estimate_size_bits(n, b, 1.0, "relative_index") == n * (b + 4)
    # sparser -> more fillers per nonzero, but fewer bits overall
    assert estimate_size_bits(n, b, 0.05, "relative_index") < estimate_size_bits(n, b, 0.3, "relative_index")
    # the random-placement filler estimate is close to a random tensor's exact count
    rng = np.random.default_rng(0)
    w = (rng.random(n) < 0.05) * rng.integers(1, 8, n)
    exact = coded_size_bits(w, b, "relative_index", index_bits=3)
    est = estimate_size_bits(n, b, np.count_nonzero(w) / n, "relative_index", index_bits=3)
    assert abs(est - exact) / exact < 0.05


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=200))
def test_huffman_total_bits_equals_code_lengths(counts) -> None:
    """The bulk-merging total equals sum(count * length) of the explicit Huffman code."""
    c = np.array(counts)
    expected = int(np.dot(c, huffman_code_lengths(c))) if len(c) > 1 else int(c.sum())
    assert huffman_total_bits(c) == expected
