"""Optional fine-tuning of front members by distillation and quantization-aware training.

Needs the ``[finetune]`` extra (torch). Nothing here imports torch at module import time:
:func:`require_torch` raises a one-line :class:`~emomc_onnx.errors.EmomcError` naming the
extra when it is missing, so the core install stays torch-free.
"""

from __future__ import annotations

import importlib

from emomc_onnx.errors import EmomcError

__all__ = ["MISSING_EXTRA", "require_torch"]

MISSING_EXTRA = "fine-tuning needs the [finetune] extra: pip install 'emomc-onnx[finetune]'"


def require_torch():
    """The ``torch`` module, or an EmomcError saying which extra to install."""
    try:
        return importlib.import_module("torch")
    except ImportError:
        raise EmomcError(MISSING_EXTRA) from None
