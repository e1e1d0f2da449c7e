"""WFDB record reading and writing (the only module that touches ``wfdb.Record``).

Written records are format 16 at 1000 adu/mV with baseline 0 (1 µV resolution, PTB-XL's own
storage), units ``mV``, standard lead names, and NaN stored as -32768 as the WFDB spec and the
PhysioNet Challenge 2024 references do.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import wfdb

from ecgdig.errors import RecordInputError
from ecgdig.leads import canonical_lead_name
from ecgdig.types import EcgRecord

__all__ = ["ADC_GAIN_PER_MV", "read_record", "record_stem", "write_record"]

ADC_GAIN_PER_MV = 1000.0
_FMT16_NAN = -32768
_FMT16_MAX = 32767


def record_stem(path: str | Path) -> Path:
    """Return the WFDB record path without suffix (``x/y.hea`` and ``x/y`` both give ``x/y``)."""
    path = Path(path)
    return path.with_suffix("") if path.suffix in {".hea", ".dat"} else path


def read_record(path: str | Path) -> EcgRecord:
    """Read a WFDB record into an :class:`EcgRecord` in mV.

    Parameters
    ----------
    path : str or Path
        The record stem or its ``.hea`` file.

    Returns
    -------
    EcgRecord
        Physical signal in mV (µV units are converted), lead names in standard spelling, NaN where
        the file stores its NaN value.

    Raises
    ------
    RecordInputError
        If the header or signal file is missing or malformed, or a unit is not a voltage.
    """
    stem = record_stem(path)
    header = stem.with_suffix(".hea")
    if not header.is_file():
        raise RecordInputError("no WFDB header (.hea) found", header)
    try:
        rec = wfdb.rdrecord(str(stem))
    except Exception as exc:  # wfdb raises bare Exception, ValueError, OSError... for bad files
        raise RecordInputError(f"cannot read WFDB record: {str(exc).splitlines()[0]}", header) from None
    if rec.p_signal is None or rec.p_signal.ndim != 2:
        raise RecordInputError("record holds no signal", header)
    signal = np.asarray(rec.p_signal, dtype=np.float64).copy()
    units = rec.units or ["mV"] * signal.shape[1]
    for j, unit in enumerate(units):
        u = (unit or "mV").strip()
        if u.lower() in {"uv", "µv", "microvolt"}:
            signal[:, j] /= 1000.0
        elif u.lower() not in {"mv", "nu", ""}:
            raise RecordInputError(f"lead {rec.sig_name[j]} has unit {u!r}, expected mV", header)
    return EcgRecord(
        name=stem.name,
        signal_mv=signal,
        fs_hz=float(rec.fs),
        lead_names=tuple(canonical_lead_name(n) for n in rec.sig_name),
        comments=tuple(rec.comments or ()),
    )


def write_record(record: EcgRecord, out_dir: str | Path) -> Path:
    """Write ``record`` as ``out_dir/<name>.hea`` and ``.dat``, atomically.

    Parameters
    ----------
    record : EcgRecord
        Signal in mV; NaN samples are stored as the format-16 NaN value (-32768).
    out_dir : str or Path
        Folder to write into (created if missing).

    Returns
    -------
    Path
        The record stem ``out_dir/<name>``, as :func:`wfdb.rdrecord` takes it.

    Notes
    -----
    Both files are first written to a temporary folder beside the target; the ``.dat`` is moved into
    place before the ``.hea``, so a header on disk always has its complete signal file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    digital = np.round(record.signal_mv * ADC_GAIN_PER_MV)
    finite = np.isfinite(digital)
    # -32768 is reserved for NaN; clip real samples into the representable range.
    digital = np.where(finite, np.clip(digital, -_FMT16_MAX, _FMT16_MAX), _FMT16_NAN).astype(np.int64)
    n_leads = record.signal_mv.shape[1]
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{record.name}.", dir=out_dir))
    try:
        wfdb.wrsamp(
            record.name,
            fs=record.fs_hz,
            units=["mV"] * n_leads,
            sig_name=list(record.lead_names),
            d_signal=digital,
            fmt=["16"] * n_leads,
            adc_gain=[ADC_GAIN_PER_MV] * n_leads,
            baseline=[0] * n_leads,
            comments=list(record.comments) or None,
            write_dir=str(tmp_dir),
        )
        for suffix in (".dat", ".hea"):
            os.replace(tmp_dir / f"{record.name}{suffix}", out_dir / f"{record.name}{suffix}")
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir / record.name
