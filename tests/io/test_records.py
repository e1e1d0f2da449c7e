from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import wfdb

from ecgdig.errors import RecordInputError
from ecgdig.io import read_record, write_record
from ecgdig.leads import STANDARD_LEADS
from ecgdig.types import EcgRecord


def test_write_then_rdrecord_round_trips_nan_and_microvolts(tmp_path: Path) -> None:
    # Prepare: 1 µV resolution values and a NaN block (a lead not plotted).
    rng = np.random.default_rng(0)
    signal = np.round(rng.normal(0, 0.5, size=(500, 12)), 3)
    signal[100:200, 3] = np.nan
    record = EcgRecord("rt_1", signal, 500.0, STANDARD_LEADS)

    # Execute
    stem = write_record(record, tmp_path)
    back = wfdb.rdrecord(str(stem))

    # Assert: fmt 16, 1000 adu/mV, mV, standard names; values exact to 1 µV, NaN preserved.
    assert back.fmt == ["16"] * 12
    assert back.adc_gain == [1000.0] * 12
    assert back.units == ["mV"] * 12
    assert back.sig_name == list(STANDARD_LEADS)
    assert np.array_equal(np.isnan(back.p_signal), np.isnan(signal))
    finite = np.isfinite(signal)
    assert np.max(np.abs(back.p_signal[finite] - signal[finite])) < 0.5e-3 + 1e-12
    assert not list(tmp_path.glob(".*")), "temporary files left behind"


def test_read_record_normalises_lead_case(shared_data: Path) -> None:
    record = read_record(shared_data / "records" / "ptbxl_100hz" / "00001_lr")
    assert record.lead_names == STANDARD_LEADS
    assert record.fs_hz == 100.0
    assert record.signal_mv.shape == (1000, 12)


def test_read_record_missing_header_names_file(tmp_path: Path) -> None:
    with pytest.raises(RecordInputError, match=r"nothere\.hea"):
        read_record(tmp_path / "nothere")


def test_read_record_corrupt_header(tmp_path: Path) -> None:
    (tmp_path / "bad.hea").write_text("this is not a header\n")
    with pytest.raises(RecordInputError, match=r"bad\.hea: cannot read WFDB record"):
        read_record(tmp_path / "bad")


def test_outputs_get_ordinary_permissions_not_the_temp_files_0600(tmp_path: Path) -> None:
    import os
    import stat

    from ecgdig.io import atomic_write_text

    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
