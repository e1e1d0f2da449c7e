"""Tests for ecgdig.metrics: hand-computed vectors for the Challenge 2024 and Kaggle 2025 SNRs."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ecgdig.errors import RecordInputError
from ecgdig.io import read_record
from ecgdig.metrics import (
    KAGGLE_PERFECT_RATIO,
    PERFECT_SNR_DB,
    LeadScore,
    apply_alignment,
    challenge_alignment,
    challenge_mean_snr_db,
    challenge_snr_lead,
    dice,
    kaggle_mean_snr_db,
    kaggle_record_ratio,
    kaggle_snr_lead,
    pearson_r,
    resample_mv,
    rmse_mv,
    score_record,
)
from ecgdig.types import EcgRecord

FS_HZ = 500.0


#: R-peak times (s) of the synthetic trace: irregular, so no shift matches another beat exactly.
BEATS_S = (0.30, 0.95, 1.72, 2.41, 3.30, 4.00, 4.85, 5.50, 6.37, 7.10, 7.90, 8.75, 9.45)


def synthetic_ecg(n: int = 5000, fs_hz: float = FS_HZ) -> np.ndarray:
    """An ECG-like trace on a flat 0 mV baseline: R waves of 1.2 mV and T waves of 0.25 mV, ~80 bpm.

    With these shapes the scorer's alignment leaves gain errors in place, so SNRs are hand-computable
    (an added S wave makes it forgive a one-sample shift of a 20 % gain error, as it would).
    """
    t = np.arange(n) / fs_hz
    trace = np.zeros(n)
    for r in BEATS_S:
        trace += 1.2 * np.exp(-(((t - r) / 0.012) ** 2))
        trace += 0.25 * np.exp(-(((t - r - 0.25) / 0.040) ** 2))
    return trace


def white_noise(n: int, power_mv2: float, seed: int) -> np.ndarray:
    """Zero-mean noise whose sample power is exactly ``power_mv2``."""
    e = np.random.default_rng(seed).normal(size=n)
    e -= e.mean()
    return e * np.sqrt(power_mv2 / np.mean(e**2))


# --------------------------------------------------------------------------------------------------
# Challenge 2024


def test_zeros_score_0_db() -> None:
    # Prepare: a flat line at the reference's baseline, the "digitized nothing" output.
    truth = synthetic_ecg()

    # Execute
    score = challenge_snr_lead(truth, np.zeros_like(truth), FS_HZ)

    # Assert: noise = truth, so P_signal / P_noise = 1 on whatever overlap is scored.
    assert score.offset_mv == 0.0
    assert score.snr_db == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(("snr_db", "seed"), [(25.0, 0), (25.0, 1), (30.0, 0), (20.0, 1)])
def test_white_noise_of_known_power(snr_db: float, seed: int) -> None:
    # Prepare: noise power chosen so that 10 log10(P_signal / P_noise) = snr_db exactly.
    truth = synthetic_ecg()
    noise = white_noise(truth.size, np.mean(truth**2) / 10 ** (snr_db / 10), seed)

    # Execute
    score = challenge_snr_lead(truth, truth + noise, FS_HZ)

    # Assert
    assert (score.shift_samples, score.offset_mv) == (0, 0.0)
    assert score.snr_db == pytest.approx(snr_db, abs=0.1)
    assert score.coverage == 1.0


def test_white_noise_one_level_offset_is_scored_as_the_scorer_does() -> None:
    # Prepare: at 20 dB this noise draw moves the cross-correlation peak one amplitude level (of
    # 256), and the official scorer then subtracts that level step from the prediction.
    truth = synthetic_ecg()
    power = np.mean(truth**2) / 100.0
    noise = white_noise(truth.size, power, seed=0)

    # Execute
    score = challenge_snr_lead(truth, truth + noise, FS_HZ)

    # Assert: the error becomes noise - offset, of power P_noise + offset**2 (noise has zero mean).
    assert score.shift_applied and score.offset_mv != 0.0
    expected = 10 * np.log10(np.mean(truth**2) / (power + score.offset_mv**2))
    assert score.snr_db == pytest.approx(expected, abs=1e-9)


def test_time_shift_of_0_3_s_is_forgiven() -> None:
    # Prepare: the prediction is 0.3 s (150 samples) late; its first 150 samples wrapped around.
    truth = synthetic_ecg()
    late = np.roll(truth, 150)

    # Execute
    score = challenge_snr_lead(truth, late, FS_HZ)

    # Assert: moved back by 150 samples it matches exactly on 4850 of 5000 samples.
    assert (score.shift_samples, score.offset_mv, score.shift_applied) == (150, 0.0, True)
    assert score.perfect
    assert score.coverage == pytest.approx(4850 / 5000)
    assert score.snr_db == pytest.approx(PERFECT_SNR_DB * 4850 / 5000)


def test_backward_time_shift_is_forgiven() -> None:
    # Prepare: the prediction is 0.3 s early (the direction the 2025 revision mishandles).
    truth = synthetic_ecg()
    early = np.concatenate((truth[150:], np.full(150, np.nan)))

    # Execute
    score = challenge_snr_lead(truth, early, FS_HZ)

    # Assert: NaN is padded in front; the last 150 samples of the truth are uncovered.
    assert (score.shift_samples, score.shift_applied) == (-150, True)
    assert score.perfect
    assert score.snr_db == pytest.approx(PERFECT_SNR_DB * 4850 / 5000)


def test_time_shift_beyond_0_5_s_is_not_forgiven() -> None:
    # Prepare: 0.6 s late. The peak is found but lies outside the limit, so nothing is applied.
    truth = synthetic_ecg()
    late = np.roll(truth, 300)

    # Execute
    score = challenge_snr_lead(truth, late, FS_HZ)

    # Assert: scored unaligned, against the hand-computed error.
    assert score.shift_samples == 300 and not score.shift_applied
    expected = 10 * np.log10(np.mean(truth**2) / np.mean((truth - late) ** 2))
    assert score.snr_db == pytest.approx(expected, abs=1e-9)
    assert score.snr_db < 3.0


@pytest.mark.parametrize("offset_mv", [0.5, 0.43, -0.77])
def test_offset_within_1_mv_is_forgiven_up_to_one_level(offset_mv: float) -> None:
    # Prepare
    truth = synthetic_ecg()
    moved = truth + offset_mv

    # Execute
    score = challenge_snr_lead(truth, moved, FS_HZ)

    # Assert: the offset is found to the nearest of the 255 steps spanning the joint amplitude
    # range, and what is left of it is the only error (capped at the 60 dB ceiling).
    step = (max(truth.max(), moved.max()) - min(truth.min(), moved.min())) / 255
    assert score.shift_applied and score.shift_samples == 0
    assert score.offset_mv == pytest.approx(round(offset_mv / step) * step)
    residual = offset_mv - score.offset_mv
    if residual == 0:  # 0.5 mV is a whole number of steps here
        expected = PERFECT_SNR_DB
    else:
        expected = min(10 * np.log10(np.mean(truth**2) / residual**2), PERFECT_SNR_DB)
    assert score.snr_db == pytest.approx(expected, abs=1e-6)
    assert score.snr_db > 30.0


def test_offset_beyond_1_mv_is_not_forgiven() -> None:
    # Prepare
    truth = synthetic_ecg()

    # Execute
    score = challenge_snr_lead(truth, truth + 1.5, FS_HZ)

    # Assert: the error is the full 1.5 mV everywhere.
    assert not score.shift_applied and score.offset_mv > 1.0
    assert score.snr_db == pytest.approx(10 * np.log10(np.mean(truth**2) / 1.5**2), abs=1e-9)


def test_gain_error_is_not_forgiven() -> None:
    # Prepare: 20 % too much gain (e.g. a wrong mm/mV calibration).
    truth = synthetic_ecg()

    # Execute
    score = challenge_snr_lead(truth, 1.2 * truth, FS_HZ)

    # Assert: noise = 0.2 x truth, SNR = 10 log10(1 / 0.04) = 13.9794 dB.
    assert (score.shift_samples, score.offset_mv) == (0, 0.0)
    assert score.snr_db == pytest.approx(10 * math.log10(25.0), abs=1e-9)
    assert score.pearson_r == pytest.approx(1.0)
    assert score.rmse_mv == pytest.approx(0.2 * np.sqrt(np.mean(truth**2)))


def test_perfect_prediction_is_capped_and_flagged() -> None:
    # Prepare
    truth = synthetic_ecg()
    half = truth.copy()
    half[2500:] = np.nan

    # Execute
    full = challenge_snr_lead(truth, truth.copy(), FS_HZ)
    partial = challenge_snr_lead(truth, half, FS_HZ)

    # Assert: the official inf becomes the 60 dB ceiling, times the coverage.
    assert full.perfect and full.p_noise == 0.0
    assert full.snr_db == PERFECT_SNR_DB
    assert partial.perfect and partial.coverage == 0.5
    assert partial.snr_db == pytest.approx(PERFECT_SNR_DB / 2)


def test_snr_above_the_ceiling_is_capped() -> None:
    # Prepare: an error far below the 1 µV storage resolution.
    truth = synthetic_ecg()
    noise = white_noise(truth.size, np.mean(truth**2) / 1e8, seed=3)  # 80 dB

    # Execute
    score = challenge_snr_lead(truth, truth + noise, FS_HZ)

    # Assert
    assert not score.perfect
    assert score.snr_db == PERFECT_SNR_DB


def test_coverage_scales_the_snr() -> None:
    # Prepare: the digitizer abstains (NaN) on the first quarter of a prediction with a gain error.
    truth = synthetic_ecg()
    pred = 1.2 * truth
    pred[:1250] = np.nan

    # Execute
    score = challenge_snr_lead(truth, pred, FS_HZ)

    # Assert
    assert score.coverage == 0.75
    assert score.snr_db == pytest.approx(0.75 * 10 * math.log10(25.0), abs=1e-9)


def test_all_nan_prediction_is_nan_and_left_out_of_the_mean() -> None:
    # Prepare
    truth = synthetic_ecg()
    scored = challenge_snr_lead(truth, 1.2 * truth, FS_HZ)

    # Execute
    missing = challenge_snr_lead(truth, np.full_like(truth, np.nan), FS_HZ)

    # Assert: the scorer's mean of an empty slice, then numpy.nanmean skips it.
    assert missing.missing and math.isnan(missing.snr_db)
    assert missing.coverage == 0.0
    assert challenge_mean_snr_db([scored, missing]) == pytest.approx(scored.snr_db)
    assert math.isnan(challenge_mean_snr_db([missing]))


def test_nan_masked_truth_is_scored_only_where_finite() -> None:
    # Prepare: Challenge-style truth, shown only over 2.5 s (samples 1250-2499); the digitizer
    # returns the whole 10 s, 10 % too large inside that window and wildly wrong elsewhere.
    full = synthetic_ecg()
    truth = np.full_like(full, np.nan)
    truth[1250:2500] = full[1250:2500]
    pred = full + 0.3 * np.sin(np.arange(full.size))
    pred[1250:2500] = 1.1 * full[1250:2500]

    # Execute
    score = challenge_snr_lead(truth, pred, FS_HZ)

    # Assert: only the window counts: 10 log10(1 / 0.1**2) = 20 dB, full coverage.
    assert (score.shift_samples, score.offset_mv) == (0, 0.0)
    assert score.coverage == 1.0
    assert score.snr_db == pytest.approx(20.0, abs=1e-9)


def test_prediction_longer_or_shorter_than_truth() -> None:
    # Prepare
    truth = synthetic_ecg()

    # Execute
    longer = challenge_snr_lead(truth, np.concatenate((1.2 * truth, np.ones(700))), FS_HZ)
    shorter = challenge_snr_lead(truth, 1.2 * truth[:4000], FS_HZ)

    # Assert: extra samples are ignored; missing ones count as NaN (coverage 0.8).
    assert longer.snr_db == pytest.approx(10 * math.log10(25.0), abs=1e-9)
    assert shorter.coverage == 0.8
    assert shorter.snr_db == pytest.approx(0.8 * 10 * math.log10(25.0), abs=1e-9)


def test_alignment_and_apply_alignment_round_trip() -> None:
    # Prepare: 40 samples late and 0.3 mV high.
    truth = synthetic_ecg()
    pred = np.concatenate((np.full(40, np.nan), truth[:-40])) + 0.3

    # Execute
    shift, offset = challenge_alignment(truth, pred)
    aligned = apply_alignment(pred, shift, offset)

    # Assert
    assert shift == 40
    assert offset == pytest.approx(0.3, abs=(truth.max() + 0.3 - truth.min()) / 255 / 2)
    np.testing.assert_allclose(aligned[:-40], truth[:-40] + 0.3 - offset)
    assert np.isnan(aligned[-40:]).all()


def test_alignment_needs_finite_samples() -> None:
    with pytest.raises(ValueError, match="finite"):
        challenge_alignment([np.nan, np.nan], [1.0, 2.0])


# --------------------------------------------------------------------------------------------------
# Records


def _record(name: str, signal: np.ndarray, leads: tuple[str, ...], fs_hz: float = FS_HZ) -> EcgRecord:
    return EcgRecord(name=name, signal_mv=signal, fs_hz=fs_hz, lead_names=leads)


def test_score_record_matches_leads_case_insensitively_and_by_name() -> None:
    # Prepare: the prediction spells aVR/aVL/aVF in capitals and stores its columns in reverse.
    base = synthetic_ecg()
    signal = np.stack([base * (k + 1) / 6 for k in range(6)], axis=1)
    truth = _record("r", signal, ("I", "II", "III", "aVR", "aVL", "aVF"))
    pred = _record("r", signal[:, ::-1].copy(), ("AVF", "AVL", "AVR", "III", "II", "I"))

    # Execute
    scores = score_record(pred, truth)

    # Assert
    assert [s.lead for s in scores] == ["I", "II", "III", "aVR", "aVL", "aVF"]
    assert all(s.perfect for s in scores)


def test_score_record_missing_lead_and_missing_record() -> None:
    # Prepare
    base = synthetic_ecg()
    truth = _record("r", np.stack([base, 2 * base], axis=1), ("I", "V6"))
    pred = _record("r", base[:, None].copy(), ("i",))

    # Execute
    partial = score_record(pred, truth)
    absent = score_record(None, truth)

    # Assert: an absent lead or record is all-NaN, as the scorer represents a missing output.
    assert partial[0].perfect and not partial[0].missing
    assert partial[1].missing and math.isnan(partial[1].snr_db)
    assert all(s.missing and math.isnan(s.snr_db) for s in absent)


def test_score_record_refuses_duplicate_leads() -> None:
    base = synthetic_ecg()
    truth = _record("r", np.stack([base, base], axis=1), ("I", "II"))
    pred = _record("p", np.stack([base, base], axis=1), ("II", "ii"))
    with pytest.raises(RecordInputError, match="more than once"):
        score_record(pred, truth)


def test_score_record_resamples_a_prediction_at_another_rate() -> None:
    # Prepare: the prediction is the truth at 250 Hz.
    truth_signal = synthetic_ecg()
    truth = _record("r", truth_signal[:, None], ("II",))
    pred = _record("r", resample_mv(truth_signal, FS_HZ, 250.0)[:, None], ("II",), fs_hz=250.0)

    # Execute
    (score,) = score_record(pred, truth)

    # Assert: every other sample is exact, the rest linearly interpolated.
    assert score.coverage == pytest.approx(4999 / 5000)
    assert score.snr_db > 20.0


def test_score_record_rejects_an_unknown_metric() -> None:
    truth = _record("r", synthetic_ecg()[:, None], ("I",))
    with pytest.raises(ValueError, match="unknown metric"):
        score_record(truth, truth, "mse")  # type: ignore[arg-type]


def test_real_record_against_itself_is_perfect(shared_data: Path) -> None:
    # Prepare
    truth = read_record(shared_data / "records" / "ptbxl_500hz" / "00009_hr")

    # Execute
    scores = score_record(truth, truth)

    # Assert
    assert len(scores) == 12
    assert all(s.perfect and s.snr_db == PERFECT_SNR_DB for s in scores)


def test_real_masked_truth_against_the_full_record(shared_data: Path) -> None:
    # Prepare: Challenge-style truth (each lead shown over 2.5 s, II over 10 s) and the full
    # PTB-XL record it was cut from, standing in for a digitizer that outputs every lead in full.
    truth = read_record(shared_data / "records" / "paper2pulse_truth_500hz" / "01885_hr")
    full = read_record(shared_data / "records" / "ptbxl_500hz" / "01885_hr")

    # Execute
    scores = score_record(full, truth)

    # Assert: only the shown samples are compared, and they are identical.
    assert all(s.perfect and s.coverage == 1.0 for s in scores)


def test_real_gain_error(shared_data: Path) -> None:
    # Prepare
    truth = read_record(shared_data / "records" / "ptbxl_500hz" / "00009_hr")
    pred = replace(truth, signal_mv=1.2 * truth.signal_mv)

    # Execute
    scores = score_record(pred, truth)

    # Assert: where the alignment leaves the trace in place, 13.98 dB exactly; a one-level vertical
    # offset moves it by at most a few tenths of a dB (never up to a forgiven 20 dB or more).
    for s in scores:
        if s.offset_mv == 0.0 and s.shift_samples == 0:
            assert s.snr_db == pytest.approx(10 * math.log10(25.0), abs=1e-9)
        assert 10.0 < s.snr_db < 14.5


# --------------------------------------------------------------------------------------------------
# Kaggle 2025


def test_kaggle_perfect_and_offset_forgiven() -> None:
    # Prepare
    truth = synthetic_ecg(1250)

    # Execute
    exact = kaggle_snr_lead(truth, truth.copy(), FS_HZ)
    lifted = kaggle_snr_lead(truth, truth + 5.0, FS_HZ)  # Kaggle's offset is unlimited

    # Assert
    assert exact.perfect and exact.snr_db == pytest.approx(60.0)
    assert lifted.offset_mv == pytest.approx(5.0)
    assert lifted.snr_db == pytest.approx(60.0)  # float residue only, capped at 1e6


def test_kaggle_zeros_hand_computed() -> None:
    # Prepare: a zero prediction is lifted to the truth's mean by the offset fit.
    truth = synthetic_ecg(1250)

    # Execute
    score = kaggle_snr_lead(truth, np.zeros_like(truth), FS_HZ)

    # Assert
    assert score.shift_samples == 0
    assert score.p_signal == pytest.approx(np.sum(truth**2))
    assert score.p_noise == pytest.approx(np.sum((truth - truth.mean()) ** 2))


def test_kaggle_time_shift_window_is_0_2_s() -> None:
    # Prepare: the prediction is early by 3 samples at 10 Hz (window: int(0.2 * 10) = 2 samples).
    truth = np.array([0, 0, 0, 0, 1, 2, 1, 0, 0, 0.0])
    early = np.array([0, 1, 2, 1, 0, 0, 0, 0, 0, 0.0])
    slightly = np.array([0, 0, 1, 2, 1, 0, 0, 0, 0, 0.0])

    # Execute
    far = kaggle_snr_lead(truth, early, 10.0)
    near = kaggle_snr_lead(truth, slightly, 10.0)

    # Assert: 2 samples are recovered (moved later: shift -2), 3 are not.
    assert near.shift_samples == -2 and near.coverage == 0.8
    assert near.p_noise == pytest.approx(0.0, abs=1e-20)
    assert abs(far.shift_samples) <= 2 and far.p_noise > 1.0


def test_kaggle_scores_only_the_plotted_segment() -> None:
    # Prepare: Kaggle-style label (the 2.5 s segment) inside a NaN-masked 10 s truth.
    full = synthetic_ecg()
    truth = np.full_like(full, np.nan)
    truth[2500:3750] = full[2500:3750]
    pred = full * 1.2

    # Execute
    score = kaggle_snr_lead(truth, pred, FS_HZ)

    # Assert: ratio sum(x^2) / sum((0.2 x - mean)^2) over the segment, for the fitted offset.
    segment = full[2500:3750]
    error = 0.2 * segment - np.mean(0.2 * segment)
    assert score.shift_samples == 0
    assert score.p_signal == pytest.approx(np.sum(segment**2))
    assert score.p_noise == pytest.approx(np.sum(error**2))


def test_kaggle_rejects_nan_inside_the_label() -> None:
    truth = synthetic_ecg(100)
    truth[50] = np.nan
    with pytest.raises(ValueError, match="inside its finite span"):
        kaggle_snr_lead(truth, truth, FS_HZ)


def test_kaggle_pooling_and_mean_hand_computed() -> None:
    # Prepare: two leads pooled per record, then 10 log10 of the mean linear ratio over records.
    a = LeadScore("I", "kaggle", 0.0, 0, 0.0, True, 1.0, 4.0, 1.0, False, False, 1.0, 0.1)
    b = replace(a, lead="II", p_signal=6.0, p_noise=4.0)

    # Execute
    ratio = kaggle_record_ratio([a, b])
    score = kaggle_mean_snr_db([ratio, 1000.0])

    # Assert
    assert ratio == 2.0
    assert score == pytest.approx(10 * math.log10((2.0 + 1000.0) / 2))
    assert kaggle_record_ratio([replace(a, p_noise=0.0)]) == KAGGLE_PERFECT_RATIO
    assert kaggle_record_ratio([replace(a, p_noise=0.0)], perfect_ratio=384) == 384
    assert kaggle_mean_snr_db([0.0]) == -KAGGLE_PERFECT_RATIO
    assert kaggle_mean_snr_db([0.0], perfect_ratio=384) == -384


def test_kaggle_record_uses_the_standard_leads_only() -> None:
    # Prepare
    base = synthetic_ecg()
    truth = _record("r", np.stack([base, base], axis=1), ("II", "vx"))
    frank_only = _record("f", base[:, None], ("vx",))

    # Execute
    scores = score_record(truth, truth, "kaggle")
    none = score_record(truth, frank_only, "kaggle")

    # Assert: a record without a standard lead has no Kaggle ratio at all.
    assert [s.lead for s in scores] == ["II"]
    assert none == [] and math.isnan(kaggle_record_ratio(none))


# --------------------------------------------------------------------------------------------------
# r, RMSE, Dice, resampling


def test_pearson_and_rmse_use_common_finite_samples() -> None:
    truth = np.array([0.0, 1.0, 2.0, 3.0, np.nan])
    pred = np.array([1.0, 3.0, 5.0, np.nan, 100.0])
    assert pearson_r(truth, pred) == pytest.approx(1.0)
    assert rmse_mv(truth, pred) == pytest.approx(np.sqrt((1 + 4 + 9) / 3))
    assert math.isnan(pearson_r([1.0, 1.0], [2.0, 3.0]))
    assert math.isnan(rmse_mv([np.nan], [1.0]))


def test_dice() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True  # 8 pixels
    b[1:3] = True  # 8 pixels, 4 shared
    assert dice(a, b) == 0.5
    assert dice(a, a) == 1.0
    assert dice(np.zeros(3), np.zeros(3)) == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        dice(a, b[:2])


def test_resample_keeps_nan_gaps() -> None:
    x = np.array([0.0, 1.0, np.nan, 3.0, 4.0])
    up = resample_mv(x, 100.0, 200.0)
    np.testing.assert_array_equal(up[:3], [0.0, 0.5, 1.0])
    assert np.isnan(up[3:6]).all()  # both neighbours of the gap
    np.testing.assert_array_equal(up[6:9], [3.0, 3.5, 4.0])
    np.testing.assert_array_equal(resample_mv(np.arange(6.0), 200.0, 100.0), [0.0, 2.0, 4.0])
