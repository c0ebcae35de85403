"""Shared fixtures: the real-data folder beside the checkout, temporary AOI files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """../shared beside the checkout, or $RSGEE_SHARED."""
    return Path(os.environ.get("RSGEE_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """../shared/data/real (small real rasters); tests using it skip where it is absent."""
    path = shared_dir() / "data" / "real"
    if not path.is_dir():
        pytest.skip(f"real test data not found at {path}")
    return path
