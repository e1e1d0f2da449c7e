"""Shared fixtures: paths to the real ECG data beside the repository (``../shared/data``)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real ECG data folder; tests needing it are skipped where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real ECG data not found at {SHARED_DATA}")
    return SHARED_DATA
