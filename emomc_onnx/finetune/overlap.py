"""Refuse training samples that the compress run searched or tested on (torch-free).

Each sample is hashed over all its input arrays (sorted by name), cast to float64 first so a
uint8 and a float32 copy of the same pixels hash alike. The compress run's data file, as
front.json records it, is hashed whole: every sample it holds (calibration, search and any
test split alike) is off limits, so the check stays right however the run split its file.
"""

from __future__ import annotations

import hashlib
import logging
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from emomc_onnx.errors import DataError
from emomc_onnx.evaluate.data import Dataset, load_data

__all__ = ["check_no_overlap", "sample_hashes"]

logger = logging.getLogger(__name__)


def sample_hashes(ds: Dataset) -> list[bytes]:
    """One digest per sample, over every input array of that sample."""
    names = sorted(ds.arrays)
    out = []
    for i in range(len(ds)):
        h = hashlib.blake2b(digest_size=16)
        for name in names:
            h.update(name.encode())
            h.update(np.ascontiguousarray(ds.arrays[name][i], dtype=np.float64).tobytes())
        out.append(h.digest())
    return out


def check_no_overlap(train: Dataset, record: Mapping[str, Any]) -> int:
    """Raise DataError if a training sample is also in the compress run's data file.

    Args:
        train: the training samples.
        record: front.json's ``evaluator`` entry (``data`` and ``test_data`` paths, their
            ``*_sha256``).

    Returns:
        The number of samples of the run's data files checked (0 for synthetic data).
    """
    checked = 0
    for key in ("data", "test_data"):  # the run's file, and its separate test file if any
        path = record.get(key)
        if path:
            checked += _check_file(train, pathlib.Path(path), record.get(f"{key}_sha256"))
    return checked


def _check_file(train: Dataset, p: pathlib.Path, want: str | None) -> int:
    if not p.exists():
        raise DataError(f"the compress run's data file {p} (recorded in front.json) is not there: "
                        f"cannot check that the training data does not overlap it")
    if want and hashlib.sha256(p.read_bytes()).hexdigest() != want:
        raise DataError(f"the compress run's data file {p} changed since the run: cannot check "
                        f"that the training data does not overlap the samples it used")
    used = set(sample_hashes(load_data(p)))
    mine = sample_hashes(train)
    hits = sum(h in used for h in mine)
    if hits:
        raise DataError(f"{train.source}: {hits} of {len(mine)} training samples are also in the "
                        f"compress run's data {p} (same sample hash); fine-tuning must not train on "
                        f"the samples the search and test figures come from: remove them")
    return len(used)
