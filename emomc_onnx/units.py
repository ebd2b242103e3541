"""Quantities: sizes with units (``200KiB``), bounded ``--input-shape`` specs, and channel counts
rounded to a hardware channel multiple (the one rule the pruning pass and the search space share)."""

from __future__ import annotations

import math
import re

__all__ = ["MAX_DIM", "MAX_ELEMENTS", "SIZE_UNITS", "check_input_shape", "parse_size_bits", "round_keep"]

MAX_DIM = 1 << 20
"""Largest accepted dimension of ``--input-shape`` (a million: beyond any real input)."""
MAX_ELEMENTS = 1 << 31
"""Largest accepted element count of one ``--input-shape`` (8 GiB of float32 per sample batch)."""

SIZE_UNITS: dict[str, float] = {
    "b": 1, "bit": 1, "bits": 1,
    "B": 8, "byte": 8, "bytes": 8,
    "kB": 8e3, "KB": 8e3, "MB": 8e6, "GB": 8e9,
    "KiB": 8 * 1024, "MiB": 8 * 1024**2, "GiB": 8 * 1024**3,
    "kb": 1e3, "Kb": 1e3, "Mb": 1e6, "Gb": 1e9,
    "Kib": 1024, "Mib": 1024**2, "Gib": 1024**3,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_size_bits(text: str) -> float:
    """A size in bits from ``"200KiB"``, ``"1.5MB"``, ``"4096B"`` or ``"81920"`` (bare = bits).

    Raises:
        ValueError: unknown unit, not a number, negative.
    """
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size (e.g. 200KiB, 1.5MB, 4096B, or bits as a bare number)")
    value, unit = float(m.group(1)), m.group(2)
    if unit and unit not in SIZE_UNITS:
        raise ValueError(f"{text!r}: unknown unit {unit!r} (use b, B, kB, KiB, MB, MiB, GB, GiB)")
    bits = value * SIZE_UNITS.get(unit, 1)
    if not math.isfinite(bits):
        raise ValueError(f"{text!r} is not a finite size")
    return bits


def check_input_shape(spec: str) -> None:
    """Refuse an ``--input-shape NAME:D0,D1,...`` whose sizes no machine could hold.

    Only the bounds are checked here (the syntax and the input name are checked on load).
    """
    _, sep, dims = spec.rpartition(":")
    if not sep:
        return
    try:
        shape = [int(d) for d in dims.split(",")]
    except ValueError:
        return
    big = [d for d in shape if d > MAX_DIM]
    if big:
        raise ValueError(f"{spec!r}: dimension {big[0]} is larger than {MAX_DIM}")
    if math.prod(shape) > MAX_ELEMENTS:
        raise ValueError(f"{spec!r}: {math.prod(shape)} elements, more than {MAX_ELEMENTS}")


def round_keep(channels: int, keep_fraction: float, multiple: int) -> int:
    """Channels kept for a fraction, rounded to the channel multiple, never below one multiple.

    Groups smaller than the multiple round to whole channels (at least 1).
    """
    want = channels * keep_fraction
    if channels <= multiple:
        return int(min(channels, max(1, round(want))))
    k = int(round(want / multiple)) * multiple
    return int(min(channels, max(multiple, k)))
