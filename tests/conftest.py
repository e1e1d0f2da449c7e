"""Shared fixtures: the real ECG data beside the repository (``../shared/data``) and synthetic records."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ecgdig.leads import STANDARD_LEADS
from ecgdig.types import EcgRecord

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real ECG data folder; tests needing it are skipped where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real ECG data not found at {SHARED_DATA}")
    return SHARED_DATA


def synthetic_ecg(
    name: str = "synth",
    fs_hz: float = 500.0,
    duration_s: float = 10.0,
    lead_names: tuple[str, ...] = STANDARD_LEADS,
    seed: int = 0,
) -> EcgRecord:
    """An ECG-like record: Gaussian P, QRS and T waves at 60-90 bpm, lead-specific amplitudes, mV."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(duration_s * fs_hz)) / fs_hz
    rr = 60.0 / rng.uniform(60, 90)
    beats = np.arange(0.3, duration_s, rr)
    signal = np.zeros((t.size, len(lead_names)))
    half = round(0.5 * fs_hz)
    for j in range(len(lead_names)):
        amp_p, amp_r, amp_s, amp_t = (
            rng.uniform(0.05, 0.2),
            rng.uniform(-1.5, 2.0),
            rng.uniform(-0.6, 0),
            rng.uniform(-0.3, 0.5),
        )
        for b in beats:
            i0, i1 = max(0, round(b * fs_hz) - half), min(t.size, round(b * fs_hz) + half)
            tb = t[i0:i1] - b
            signal[i0:i1, j] += (
                amp_p * np.exp(-(((tb + 0.16) / 0.025) ** 2))
                + amp_r * np.exp(-((tb / 0.012) ** 2))
                + amp_s * np.exp(-(((tb - 0.03) / 0.012) ** 2))
                + amp_t * np.exp(-(((tb - 0.3) / 0.05) ** 2))
            )
        signal[:, j] += 0.05 * np.sin(2 * np.pi * 0.3 * t + j)
    return EcgRecord(name=name, signal_mv=np.round(signal, 3), fs_hz=fs_hz, lead_names=tuple(lead_names))


@pytest.fixture
def make_record() -> Callable[..., EcgRecord]:
    """Factory for synthetic records (see :func:`synthetic_ecg`)."""
    return synthetic_ecg


@pytest.fixture
def record() -> EcgRecord:
    """A 10 s, 500 Hz synthetic 12-lead record."""
    return synthetic_ecg()
