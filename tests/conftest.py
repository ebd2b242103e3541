"""Shared pytest fixtures for the fixture models of ``tests/models.py``."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest

from tests.models import CACHE_DIR, Fixture, build


@pytest.fixture(scope="session")
def fixture_cache_dir() -> pathlib.Path:
    """Folder holding the exported fixture files (shared by processes, keyed by models.py)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    return CACHE_DIR


@pytest.fixture(scope="session")
def fixture_model() -> Callable[..., Fixture]:
    """``build(name, **kw)``: the cached fixture-model builder."""
    return build
