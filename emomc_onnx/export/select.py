"""Pick the front member that fits a device budget, from an output directory's front.json.

Accuracy limits are judged on the test-split figure (samples the search never saw); members
whose test drop breaks ``--max-accuracy-drop`` are never offered.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Literal

from emomc_onnx.errors import DataError
from emomc_onnx.export.front import FRONT_DIR, FRONT_JSON, FrontEntry

__all__ = ["load_front", "member_path", "min_accuracy_fraction", "select"]

FRACTION_METRICS = ("accuracy", "agreement", "cosine")

Prefer = Literal["energy", "size", "accuracy"]


def load_front(outdir: str | os.PathLike[str]) -> tuple[dict[str, Any], list[FrontEntry]]:
    """Read ``outdir/front.json``: (metadata without members, entries).

    Raises:
        DataError: the directory or front.json is missing or malformed.
    """
    if not os.fspath(outdir).strip():
        raise DataError("OUTDIR '': give the output directory of a compress run")
    path = Path(outdir) / FRONT_JSON
    if not Path(outdir).is_dir():
        raise DataError(f"{outdir}: no such output directory")
    if not path.is_file():
        raise DataError(f"{path}: missing (not an emomc-onnx compress output directory?)")
    try:
        data = json.loads(path.read_text())
        members = data.pop("members")
        entries = [FrontEntry.from_dict(m) for m in members]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: corrupt front file ({type(exc).__name__}: {exc})") from None
    for i, e in enumerate(entries):
        _check_entry(e, i, path)
        member_path(outdir, e, check_exists=False)
    return data, entries


_NUMBERS = ("accuracy", "energy", "size_bits")


def _check_entry(e: FrontEntry, i: int, path: Path) -> None:
    """Refuse a member whose figures are not numbers (a hand-edited or damaged front.json)."""
    for name in _NUMBERS:
        v = getattr(e, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise DataError(f"{path}: member {i}: {name} is {type(v).__name__} {v!r}, need a finite number")
    if not isinstance(e.file, str) or not e.file:
        raise DataError(f"{path}: member {i}: file is {e.file!r}, need a path under {FRONT_DIR}/")


def member_path(outdir: str | os.PathLike[str], entry: FrontEntry, *, check_exists: bool = True) -> Path:
    """The member's ONNX file, which must resolve inside ``OUTDIR/front`` (no ``..``, no absolute
    path, no symlink out) and, with ``check_exists``, be a regular file.

    Raises:
        DataError: naming the member's file.
    """
    front = (Path(outdir) / FRONT_DIR).resolve()
    raw = Path(entry.file)
    p = (Path(outdir) / raw).resolve()
    if raw.is_absolute() or p.parent != front or p.suffix != ".onnx":
        raise DataError(f"{Path(outdir) / FRONT_JSON}: member rank {entry.rank} file {entry.file!r} is not "
                        f"an .onnx file in {Path(outdir) / FRONT_DIR}; refusing it")
    if check_exists:
        if not p.exists():
            raise DataError(f"{Path(outdir) / entry.file}: missing (front.json lists it as rank "
                            f"{entry.rank}); re-run compress into {outdir} to export the front again")
        if not p.is_file():
            raise DataError(f"{Path(outdir) / entry.file}: not a regular file (front.json lists it as "
                            f"rank {entry.rank})")
    return p


_KEYS = {
    "energy": lambda e: (e.energy, -e.accuracy, e.size_bits, e.rank),
    "size": lambda e: (e.size_bits, -e.accuracy, e.energy, e.rank),
    "accuracy": lambda e: (-e.accuracy, e.energy, e.size_bits, e.rank),
}


def min_accuracy_fraction(value: float, metric: str | None) -> tuple[float, str | None]:
    """``--min-accuracy`` on the metric's own scale: a percentage (97) is read as 0.97.

    Tables print accuracy in percent, front.json as a fraction; for metrics in [0, 1] a value
    in (1, 100] is taken as a percentage (and said so), a value outside [0, 100] refused.
    Returns (the limit, a note for the user or None).
    """
    if math.isnan(value):
        raise DataError("--min-accuracy nan: give a number")
    if metric is not None and metric not in FRACTION_METRICS and ":" not in metric:
        return value, None  # e.g. SQNR in dB: its own unit
    if 0.0 <= value <= 1.0:
        return value, None
    if 1.0 < value <= 100.0:
        return value / 100.0, f"--min-accuracy {value:g} read as {value:g}% ({value / 100:.4g})"
    raise DataError(f"--min-accuracy {value:g}: give a fraction in [0, 1] (0.97) or a percentage in "
                    f"[0, 100] (97)")


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
        min_accuracy: minimum test-split metric (front.json's ``accuracy``: a fraction; a
            percentage is accepted, see :func:`min_accuracy_fraction`).
        prefer: "energy" (lowest energy), "size" (smallest) or "accuracy" (most accurate);
            ties are broken by the other figures.
    """
    if prefer not in ("energy", "size", "accuracy"):
        raise DataError(f"prefer must be energy, size or accuracy, got {prefer!r}")
    meta, entries = load_front(outdir)
    if min_accuracy is not None:
        min_accuracy, _ = min_accuracy_fraction(min_accuracy, meta.get("metric"))
    fits = [e for e in entries
            if e.within_max_drop is not False
            and (max_energy is None or e.energy <= max_energy)
            and (max_size_bits is None or e.size_bits <= max_size_bits)
            and (min_accuracy is None or e.accuracy >= min_accuracy)]
    if not fits:
        return None
    # the chosen member must exist: never report a file that is not there
    best = min(fits, key=_KEYS[prefer])
    member_path(outdir, best)
    return best

