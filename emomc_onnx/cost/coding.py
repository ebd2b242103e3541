"""Coded size of a weight tensor under each storage scheme (bits).

Exact schemes work on the stored values (integer codes or floats; zeros exactly 0), all in
numpy without Python loops over weights. ``estimate_size_bits`` gives the shape-only
(density-based) version used when no weight array is at hand.

Schemes (N weights, nnz nonzeros, b-bit values):
  normal: N*b (EMOMC "Normal").  dense: N*b.
  csr: each nonzero with a 3-bit relative index (EMOMC CSR), decodable: a gap beyond 7
    zeros inserts filler entries as relative_index does, (nnz + fillers)*(b+3). With the
    ``paper_formulas`` parameter (the emomc profile) the paper's closed form nnz*(b+3).
  coo: each nonzero with its absolute position, decodable: nnz*(b + ceil(log2 N)); with
    ``paper_formulas`` the paper's ceil(nnz*(b + log2 N)).
  relative_index: Deep Compression; each entry stores a b-bit value and a k-bit gap (zeros
    since the previous entry); a gap > 2^k - 1 inserts a filler zero entry, so a gap z costs
    z // 2^k fillers; trailing zeros are not stored. (nnz + fillers) * (b + k).
  bitmask: N + nnz*b.
  run_length: Eyeriss-style (run, value) pairs with r-bit runs over the whole tensor; a run
    longer than 2^r - 1 costs z // 2^r extra pairs and trailing zeros ceil(z / 2^r) pairs.
  huffman: exact Huffman code lengths from the value histogram, plus a canonical codebook
    of (b-bit symbol, L-bit code length) per distinct symbol (L = 5 by default). A single
    distinct symbol gets a 1-bit code.
  deep_compression: Han et al.'s pipeline (ICLR 2016): the relative-index stream (k-bit
    gaps with fillers) of b-bit codes into a shared codebook, both streams Huffman coded;
    stored: the two Huffman-coded streams, their code tables ((symbol bits + L) per
    distinct symbol) and the codebook of shared values (``codebook_bits``, 32, per distinct
    nonzero value).
  auto: the smallest of the other exact schemes (dense, relative_index, bitmask,
    run_length, huffman, deep_compression, and the paper's three).
"""

from __future__ import annotations

import heapq
import logging
import math

import numpy as np

__all__ = [
    "SCHEMES",
    "WeightScan",
    "coded_size_bits",
    "coded_sizes",
    "estimate_size_bits",
    "huffman_code_lengths",
    "huffman_total_bits",
]

logger = logging.getLogger(__name__)

SCHEMES = (
    "normal",
    "csr",
    "coo",
    "dense",
    "relative_index",
    "bitmask",
    "run_length",
    "huffman",
    "deep_compression",
)
_DEFAULTS = {"index_bits": 4, "run_bits": 5, "length_bits": 5, "codebook_bits": 32,
             "paper_formulas": 0}
_CSR_INDEX_BITS = 3  # EMOMC's CSR: 3 extra bits per nonzero


def huffman_code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code length of each symbol from its count (counts > 0).

    The heap runs over distinct symbols (at most 2^b), never over weights.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = counts.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n == 1:
        return np.ones(1, dtype=np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    # Each heap node: (weight, tiebreak, list of leaf indices).
    heap = [(int(c), i, [i]) for i, c in enumerate(counts)]
    heapq.heapify(heap)
    tie = n
    while len(heap) > 1:
        w1, _, l1 = heapq.heappop(heap)
        w2, _, l2 = heapq.heappop(heap)
        merged = l1 + l2
        lengths[merged] += 1
        heapq.heappush(heap, (w1 + w2, tie, merged))
        tie += 1
    return lengths


def huffman_total_bits(counts: np.ndarray) -> int:
    """Total Huffman-coded length sum(count * code length), without building the codes.

    The total equals the sum of the weights of all merges. Equal weights are merged in bulk
    (m nodes of weight w become m // 2 nodes of weight 2w), so the heap holds (weight,
    multiplicity) pairs: fast even for float weights, where nearly every value is distinct.
    """
    counts = np.asarray(counts, dtype=np.int64)
    counts = counts[counts > 0]
    if counts.size <= 1:
        return int(counts.sum())  # one symbol: one bit each
    w, m = np.unique(counts, return_counts=True)
    heap = list(zip(w.tolist(), m.tolist()))
    heapq.heapify(heap)
    nodes = int(counts.size)
    total = 0
    while nodes > 1:
        w1, m1 = heapq.heappop(heap)
        if m1 >= 2:
            pairs = m1 // 2
            total += 2 * w1 * pairs
            nodes -= pairs
            if m1 % 2:
                heapq.heappush(heap, (w1, 1))
            heapq.heappush(heap, (2 * w1, pairs))
        else:
            w2, m2 = heapq.heappop(heap)
            total += w1 + w2
            nodes -= 1
            if m2 > 1:
                heapq.heappush(heap, (w2, m2 - 1))
            heapq.heappush(heap, (w1 + w2, 1))
    return total


def _histogram(flat: np.ndarray) -> np.ndarray:
    """Counts of the distinct values (bincount for small integer ranges, else unique)."""
    if flat.size == 0:
        return np.zeros(0, dtype=np.int64)
    if np.issubdtype(flat.dtype, np.integer):
        lo, hi = int(flat.min()), int(flat.max())
        if hi - lo < 1 << 20:
            c = np.bincount((flat.astype(np.int64) - lo))
            return c[c > 0]
    _, c = np.unique(flat, return_counts=True)
    return c


def _gap_fillers(flat_nonzero_pos: np.ndarray, k: int) -> int:
    gaps = np.diff(flat_nonzero_pos, prepend=-1) - 1
    return int(np.sum(gaps >> k))


class WeightScan:
    """One tensor's nonzero scan (mask, positions, histogram), shared by every scheme."""

    def __init__(self, values: np.ndarray) -> None:
        self.flat = np.ravel(values)
        self.n = int(self.flat.size)
        self._nzmask: np.ndarray | None = None
        self._pos: np.ndarray | None = None
        self._hist: np.ndarray | None = None
        self._nz_hist: np.ndarray | None = None

    @property
    def nzmask(self) -> np.ndarray:
        if self._nzmask is None:
            self._nzmask = self.flat != 0
        return self._nzmask

    @property
    def pos(self) -> np.ndarray:
        if self._pos is None:
            self._pos = np.flatnonzero(self.nzmask)
        return self._pos

    @property
    def nnz(self) -> int:
        return int(self.pos.size)

    @property
    def hist(self) -> np.ndarray:
        if self._hist is None:
            self._hist = _histogram(self.flat)
        return self._hist

    @property
    def nz_hist(self) -> np.ndarray:
        if self._nz_hist is None:
            self._nz_hist = _histogram(self.flat[self.nzmask])
        return self._nz_hist


def _index_bits(n: int) -> int:
    """Bits of an absolute position among n (a decoder needs whole bits)."""
    return max(0, math.ceil(math.log2(n))) if n > 1 else 0


def _deep_compression_bits(scan: WeightScan, bits: int, p: dict) -> int:
    """Relative index + shared codebook + Huffman of the value and index streams."""
    k = p["index_bits"]
    mask = (1 << k) - 1
    gaps = np.diff(scan.pos, prepend=-1) - 1
    fillers = int(np.sum(gaps >> k))
    # value stream: the nonzero codes, plus one zero code per filler entry
    vals = scan.nz_hist
    v_counts = np.append(vals, fillers) if fillers else vals
    # index stream: the gap left after the fillers for each entry, 2^k - 1 for each filler
    d_counts = np.bincount(gaps & mask, minlength=mask + 1) if gaps.size else np.zeros(0, np.int64)
    if fillers:
        d_counts = d_counts.copy()
        d_counts[mask] += fillers
    d_counts = d_counts[d_counts > 0]
    tables = v_counts.size * (bits + p["length_bits"]) + d_counts.size * (k + p["length_bits"])
    codebook = vals.size * p["codebook_bits"]
    return huffman_total_bits(v_counts) + huffman_total_bits(d_counts) + tables + codebook


def coded_size_bits(values: np.ndarray | WeightScan, bits: int, scheme: str, **params: int) -> int:
    """Bits to store ``values`` (any shape; zeros exactly 0) as ``bits``-bit codes.

    Args:
        values: the stored tensor.
        bits: bits per stored value.
        scheme: one of SCHEMES or "auto".
        **params: ``index_bits`` (relative_index and deep_compression, default 4),
            ``run_bits`` (run_length, default 5), ``length_bits`` (Huffman code tables,
            default 5), ``codebook_bits`` (deep_compression's shared values, 32),
            ``paper_formulas`` (1: EMOMC's closed forms for csr and coo).

    Raises:
        ValueError: unknown scheme (a programming error: profiles are validated).
    """
    if scheme == "auto":
        return min(coded_sizes(values, bits, SCHEMES, **params).values())
    scan = values if isinstance(values, WeightScan) else WeightScan(values)
    n = scan.n
    if scheme in ("normal", "dense"):
        return n * bits
    p = {**_DEFAULTS, **params}
    if scheme == "huffman":
        counts = scan.hist
        return huffman_total_bits(counts) + counts.size * (bits + p["length_bits"])
    nnz = scan.nnz
    if scheme == "csr":
        if p["paper_formulas"]:
            return nnz * (bits + 3)
        return (nnz + _gap_fillers(scan.pos, _CSR_INDEX_BITS)) * (bits + _CSR_INDEX_BITS)
    if scheme == "coo":
        if p["paper_formulas"]:
            return math.ceil(nnz * (bits + math.log2(n))) if n > 0 else 0
        return nnz * (bits + _index_bits(n))
    if scheme == "bitmask":
        return n + nnz * bits
    if scheme == "deep_compression":
        return _deep_compression_bits(scan, bits, p)
    if scheme == "relative_index":
        k = p["index_bits"]
        return (nnz + _gap_fillers(scan.pos, k)) * (bits + k)
    if scheme == "run_length":
        r = p["run_bits"]
        pos = scan.pos
        pairs = nnz + _gap_fillers(pos, r)
        trailing = n - 1 - int(pos[-1]) if nnz else n
        pairs += -(-trailing // (1 << r))
        return pairs * (r + bits)
    raise ValueError(f"unknown coding scheme {scheme!r}")


def coded_sizes(
    values: np.ndarray, bits: int, schemes: tuple[str, ...] = SCHEMES, **params: int
) -> dict[str, int]:
    """coded_size_bits for several schemes, sharing the nonzero scan."""
    scan = values if isinstance(values, WeightScan) else WeightScan(values)
    return {s: coded_size_bits(scan, bits, s, **params) for s in schemes if s != "auto"}


def _expected_fillers(nnz: float, density: float, k: int) -> float:
    """Expected z // 2^k summed over gaps, zeros i.i.d. with probability 1 - density."""
    if density >= 1.0 or nnz == 0:
        return 0.0
    qm = (1.0 - density) ** (1 << k)
    return nnz * qm / (1.0 - qm)


def _entropy(probs: np.ndarray) -> float:
    probs = probs[probs > 0]
    return float(-(probs * np.log2(probs)).sum())


def _deep_compression_estimate(n: int, nnz: int, d: float, bits: int, p: dict) -> int:
    """Shape-only deep_compression: zeros i.i.d., nonzeros uniform over 2^b - 1 codes."""
    if nnz == 0:
        return 0
    k = p["index_bits"]
    m = 1 << k
    fill = _expected_fillers(nnz, d, k)
    entries = nnz + fill
    q = 1.0 - d
    symbols = min((1 << bits) - 1, nnz)
    # value stream: nonzeros spread uniformly, fillers as the zero code
    pv = np.array([nnz / entries / symbols] * symbols + [fill / entries])
    # index stream: a gap is geometric (P(z) = d q^z); its residue mod 2^k, fillers at 2^k - 1
    z = np.arange(m, dtype=np.float64)
    pres = d * q**z / (1.0 - q**m) if q < 1.0 else np.eye(1, m).ravel()
    pd = pres * nnz / entries
    pd[m - 1] += fill / entries
    data = entries * (max(_entropy(pv), 1.0) + max(_entropy(pd), 1.0))
    tables = (symbols + (1 if fill else 0)) * (bits + p["length_bits"]) + m * (k + p["length_bits"])
    return math.ceil(data + tables + symbols * p["codebook_bits"])


def estimate_size_bits(n: int, bits: int, density: float, scheme: str, **params: int) -> int:
    """Shape-only coded size: N weights, ``density`` nonzero fraction, ``bits``-bit codes.

    The paper's schemes, dense and bitmask are exact given nnz = round(N*density).
    relative_index / run_length assume zeros placed independently at random (expected
    fillers nnz * q^M / (1 - q^M), q = 1 - density, M = 2^k). huffman uses the entropy of
    a histogram with the zero symbol at 1 - density and the nonzeros spread uniformly over
    the other 2^b - 1 codes (a real Huffman code is within 1 bit per symbol of it), plus
    the codebook.
    """
    if scheme == "auto":
        return min(estimate_size_bits(n, bits, density, s, **params) for s in SCHEMES)
    nnz = round(n * density)
    p = {**_DEFAULTS, **params}
    d = nnz / n if n else 0.0
    if scheme in ("normal", "dense"):
        return n * bits
    if scheme == "csr":
        if p["paper_formulas"]:
            return nnz * (bits + 3)
        k = _CSR_INDEX_BITS
        return math.ceil((nnz + _expected_fillers(nnz, d, k)) * (bits + k))
    if scheme == "coo":
        if p["paper_formulas"]:
            return math.ceil(nnz * (bits + math.log2(n))) if n > 0 else 0
        return nnz * (bits + _index_bits(n))
    if scheme == "bitmask":
        return n + nnz * bits
    if scheme == "deep_compression":
        return _deep_compression_estimate(n, nnz, d, bits, p)
    if scheme == "relative_index":
        k = p["index_bits"]
        return math.ceil((nnz + _expected_fillers(nnz, d, k)) * (bits + k))
    if scheme == "run_length":
        r = p["run_bits"]
        pairs = nnz + _expected_fillers(nnz, d, r) + (0.0 if nnz else math.ceil(n / (1 << r)))
        return math.ceil(pairs * (bits + r))
    if scheme == "huffman":
        symbols = min(1 << bits, n) if n else 0
        if n == 0:
            return 0
        h = 0.0
        z = 1.0 - d
        if z > 0:
            h -= z * math.log2(z)
        if d > 0:
            others = max(symbols - 1, 1)
            h -= d * math.log2(d / others)
        used = (1 if z > 0 else 0) + (min(symbols - 1, nnz) if d > 0 else 0)
        return math.ceil(n * max(h, 1.0 if used <= 1 else h)) + used * (bits + p["length_bits"])
    raise ValueError(f"unknown coding scheme {scheme!r}")
