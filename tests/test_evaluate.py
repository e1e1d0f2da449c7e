"""Tests for ecgdig.evaluate: folder evaluation, the JSON report and the overlay plot."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ecgdig.errors import RecordInputError
from ecgdig.evaluate import evaluate_folders, plot_overlay
from ecgdig.io import read_record, write_record
from ecgdig.metrics import PERFECT_SNR_DB, resample_mv
from ecgdig.types import EcgRecord

PTBXL = "ptbxl_500hz"  # 18 PTB-XL records, 10 s at 500 Hz
MASKED = "paper2pulse_truth_500hz"  # Challenge-style truths: NaN where a lead is not plotted


@pytest.fixture
def records(shared_data: Path) -> Path:
    return shared_data / "records"


def copy_records(src: Path, names: list[str], dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        for suffix in (".hea", ".dat"):
            shutil.copy(src / f"{name}{suffix}", dst / f"{name}{suffix}")
    return dst


def test_truths_against_themselves_are_all_perfect(records: Path, tmp_path: Path) -> None:
    # Prepare
    truth = copy_records(records / PTBXL, ["00009_hr", "03122_hr"], tmp_path / "truth")

    # Execute
    report = evaluate_folders(truth, truth)

    # Assert
    assert (report.n_records, report.n_leads, report.n_perfect_leads) == (2, 24, 24)
    assert report.mean_snr_db == PERFECT_SNR_DB
    assert report.n_missing_records == 0
    assert all(r.perfect and r.snr_db == PERFECT_SNR_DB for r in report.rows)
    assert [r.record for r in report.records] == ["00009_hr", "03122_hr"]


@pytest.mark.slow
@pytest.mark.parametrize("folder", [PTBXL, MASKED])
def test_whole_shared_folders_against_themselves(records: Path, folder: str) -> None:
    report = evaluate_folders(records / folder, records / folder)
    assert report.n_perfect_leads == report.n_leads == 12 * report.n_records
    assert report.mean_snr_db == PERFECT_SNR_DB


def test_missing_and_unreadable_predictions(records: Path, tmp_path: Path) -> None:
    # Prepare: three truths; one prediction exact, one absent, one a header without its signal
    # file (what the Challenge's run_model leaves when a digitizer fails).
    truth = copy_records(records / PTBXL, ["00009_hr", "01617_hr", "01630_hr"], tmp_path / "truth")
    pred = copy_records(records / PTBXL, ["00009_hr"], tmp_path / "pred")
    shutil.copy(truth / "01630_hr.hea", pred / "01630_hr.hea")

    # Execute
    report = evaluate_folders(pred, truth)

    # Assert: missing leads are NaN and left out of the mean, as the scorer does, and counted.
    assert report.missing_records == ("01617_hr",)
    assert len(report.unreadable_records) == 1 and report.unreadable_records[0].startswith("01630_hr:")
    assert report.n_missing_records == 2
    assert (report.n_leads, report.n_leads_scored, report.n_perfect_leads) == (36, 12, 12)
    assert report.mean_snr_db == PERFECT_SNR_DB
    assert report.mean_snr_db_missing_as_zero == pytest.approx(PERFECT_SNR_DB / 3)
    missing_rows = [r for r in report.rows if r.record == "01617_hr"]
    assert all(r.missing and math.isnan(r.snr_db) for r in missing_rows)
    statuses = {r.record: r.prediction for r in report.records}
    assert statuses["00009_hr"] == "found" and statuses["01617_hr"] == "missing"
    assert statuses["01630_hr"].startswith("unreadable")


def test_lead_names_are_matched_case_insensitively(records: Path, tmp_path: Path) -> None:
    # Prepare: the prediction writes AVR/AVL/AVF (ecg-image-kit's spelling) in reverse column order.
    record = read_record(records / PTBXL / "00009_hr")
    upper = tuple(name.upper() if name.startswith("aV") else name for name in record.lead_names)
    pred = replace(record, signal_mv=record.signal_mv[:, ::-1].copy(), lead_names=upper[::-1])
    truth_dir = copy_records(records / PTBXL, ["00009_hr"], tmp_path / "truth")
    write_record(pred, tmp_path / "pred")
    assert "AVR" in (tmp_path / "pred" / "00009_hr.hea").read_text()

    # Execute
    report = evaluate_folders(tmp_path / "pred", truth_dir)

    # Assert
    assert report.n_perfect_leads == 12
    assert [r.lead for r in report.rows] == list(record.lead_names)


def test_nan_masked_truth_against_full_predictions(records: Path, tmp_path: Path) -> None:
    # Prepare: Challenge-style truths (each lead shown over 2.5 s) and full 10 s predictions.
    truth = copy_records(records / MASKED, ["02579_hr"], tmp_path / "truth")
    pred = copy_records(records / PTBXL, ["02579_hr"], tmp_path / "pred")

    # Execute
    report = evaluate_folders(pred, truth)

    # Assert: scored only where the truth is finite, where the two are identical.
    assert report.n_perfect_leads == 12
    assert all(r.coverage == 1.0 for r in report.rows)


def test_gain_error_and_partial_abstention(records: Path, tmp_path: Path) -> None:
    # Prepare: every lead 20 % too large and the first 2.5 s abstained (NaN).
    record = read_record(records / PTBXL / "00009_hr")
    signal = 1.2 * record.signal_mv
    signal[:1250] = np.nan
    truth = copy_records(records / PTBXL, ["00009_hr"], tmp_path / "truth")
    write_record(replace(record, signal_mv=signal), tmp_path / "pred")

    # Execute
    report = evaluate_folders(tmp_path / "pred", truth)

    # Assert: a gain error is never forgiven: at most 10 log10(25) = 13.98 dB, times 0.75 coverage.
    assert all(r.coverage == pytest.approx(0.75) for r in report.rows)
    assert all(7.5 < r.snr_db <= 0.75 * 10 * math.log10(25.0) + 0.4 for r in report.rows)
    assert report.n_perfect_leads == 0
    assert report.rows[0].pearson_r > 0.99


def test_prediction_at_another_sampling_rate(records: Path, tmp_path: Path) -> None:
    # Prepare: the prediction is written at 250 Hz.
    record = read_record(records / PTBXL / "00009_hr")
    half = np.stack([resample_mv(record.signal_mv[:, j], 500.0, 250.0) for j in range(12)], axis=1)
    write_record(replace(record, signal_mv=half, fs_hz=250.0), tmp_path / "pred")
    truth = copy_records(records / PTBXL, ["00009_hr"], tmp_path / "truth")

    # Execute
    report = evaluate_folders(tmp_path / "pred", truth)

    # Assert
    assert report.n_leads_scored == 12
    assert report.mean_snr_db > 15.0


def test_kaggle_metric(records: Path, tmp_path: Path) -> None:
    # Prepare
    truth = copy_records(records / MASKED, ["01885_hr", "02579_hr"], tmp_path / "truth")
    pred = copy_records(records / PTBXL, ["01885_hr"], tmp_path / "pred")

    # Execute
    report = evaluate_folders(pred, truth, metric="kaggle")

    # Assert: the perfect record reaches the 1e6 cap; the missing one is scored as zeros, whose
    # ratio sum(x^2) / sum((x - mean)^2) is barely above 1; the score averages linear ratios.
    perfect, missing = report.records
    assert perfect.snr_db == pytest.approx(60.0)
    assert missing.prediction == "missing" and 0.0 < missing.snr_db < 3.0
    ratio_missing = 10 ** (missing.snr_db / 10)
    assert report.mean_snr_db == pytest.approx(10 * math.log10((1e6 + ratio_missing) / 2))
    assert report.mean_snr_db_missing_as_zero == report.mean_snr_db


def test_report_json_is_strict_and_complete(records: Path, tmp_path: Path) -> None:
    # Prepare
    truth = copy_records(records / PTBXL, ["00009_hr", "01617_hr"], tmp_path / "truth")
    pred = copy_records(records / PTBXL, ["00009_hr"], tmp_path / "pred")
    report = evaluate_folders(pred, truth)

    # Execute
    data = json.loads(report.to_json())

    # Assert: NaN becomes null; every row and record is there.
    assert data["metric"] == "challenge"
    assert data["mean_snr_db"] == PERFECT_SNR_DB
    assert data["missing_records"] == ["01617_hr"]
    assert len(data["rows"]) == 24 and len(data["records"]) == 2
    assert data["rows"][12]["snr_db"] is None and data["rows"][12]["missing"] is True
    assert set(data["rows"][0]) >= {"record", "lead", "snr_db", "pearson_r", "rmse_mv", "perfect"}


def test_errors_are_one_line_and_typed(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordInputError, match="no such folder"):
        evaluate_folders(tmp_path, tmp_path / "nope")
    with pytest.raises(RecordInputError, match="no WFDB records"):
        evaluate_folders(tmp_path, tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_folders(tmp_path, tmp_path, metric="mse")  # type: ignore[arg-type]


def test_plot_overlay_writes_a_png_atomically(records: Path, tmp_path: Path) -> None:
    # Prepare: a prediction 0.1 s late with one lead missing.
    truth = read_record(records / MASKED / "01885_hr")
    full = read_record(records / PTBXL / "01885_hr")
    late = np.roll(full.signal_mv[:, :11], 50, axis=0)
    pred = replace(full, signal_mv=late, lead_names=full.lead_names[:11])
    target = tmp_path / "qc" / "01885_hr.png"

    # Execute
    out = plot_overlay(pred, truth, target)

    # Assert
    assert out == target
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in target.parent.iterdir()] == ["01885_hr.png"]


def test_predictions_inside_the_truth_folder_are_not_truths(tmp_path: Path) -> None:
    # Prepare: truth/rec and truth/pred/rec (the prediction written inside the truth folder).
    signal = np.tile(np.sin(np.linspace(0, 20, 1000))[:, None], (1, 2))
    record = EcgRecord("rec", signal, 100.0, ("I", "II"))
    write_record(record, tmp_path / "truth")
    write_record(record, tmp_path / "truth" / "pred")

    report = evaluate_folders(tmp_path / "truth" / "pred", tmp_path / "truth")

    assert report.n_records == 1 and report.n_missing_records == 0
