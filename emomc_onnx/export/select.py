"""Pick the front member that fits a device budget, from an output directory's front.json."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from emomc_onnx.errors import DataError
from emomc_onnx.export.front import FRONT_JSON, FrontEntry

__all__ = ["load_front", "select"]

Prefer = Literal["energy", "size", "accuracy"]


def load_front(outdir: str | os.PathLike[str]) -> tuple[dict[str, Any], list[FrontEntry]]:
    """Read ``outdir/front.json``: (metadata without members, entries).

    Raises:
        DataError: the directory or front.json is missing or malformed.
    """
    path = Path(outdir) / FRONT_JSON
    if not Path(outdir).is_dir():
        raise DataError(f"{outdir}: no such output directory")
    if not path.is_file():
        raise DataError(f"{path}: missing (not an emomc-onnx compress output directory?)")
    try:
        data = json.loads(path.read_text())
        members = data.pop("members")
        entries = [FrontEntry.from_dict(m) for m in members]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"{path}: corrupt front file ({type(exc).__name__}: {exc})") from exc
    return data, entries


def select(
    outdir: str | os.PathLike[str],
    max_energy: float | None = None,
    max_size_bits: float | None = None,
    min_accuracy: float | None = None,
    prefer: Prefer = "energy",
) -> FrontEntry | None:
    """The best front member within the limits, or None when none fits.

    Args:
        outdir: output directory of a compress run.
        max_energy: energy limit (profile units, as in front.json).
        max_size_bits: coded-size limit in bits.
        min_accuracy: minimum full-data metric (same scale as front.json's ``accuracy``).
        prefer: "energy" (lowest energy), "size" (smallest) or "accuracy" (most accurate);
            ties are broken by the other figures.
    """
    if prefer not in ("energy", "size", "accuracy"):
        raise DataError(f"prefer must be energy, size or accuracy, got {prefer!r}")
    _, entries = load_front(outdir)
    fits = [e for e in entries
            if (max_energy is None or e.energy <= max_energy)
            and (max_size_bits is None or e.size_bits <= max_size_bits)
            and (min_accuracy is None or e.accuracy >= min_accuracy)]
    if not fits:
        return None
    keys = {
        "energy": lambda e: (e.energy, -e.accuracy, e.size_bits, e.rank),
        "size": lambda e: (e.size_bits, -e.accuracy, e.energy, e.rank),
        "accuracy": lambda e: (-e.accuracy, e.energy, e.size_bits, e.rank),
    }
    return min(fits, key=keys[prefer])
