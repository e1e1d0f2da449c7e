"""Digitization metrics: the PhysioNet Challenge 2024 SNR, the 2025 Kaggle SNR, Pearson r, RMSE, Dice.

The Challenge SNR re-implements, step for step, the scorer that ranked the George B. Moody PhysioNet
Challenge 2024 (``physionetchallenges/evaluation-2024``: ``evaluate_model.py`` with its ``--no_shift``
option and ``helper_code.py`` with ``align_signals``, credited to R. Sameni, Z. Koscova and M. Reyna,
July 2024). Per lead:

1. **Alignment.** Truth and prediction are each drawn as a binary image, 256 amplitude levels spanning
   the joint amplitude range by one column per sample, smoothed with a Gaussian (sigma 0.5 px). The
   peak of the 2-D cross-correlation, measured against the peak of the truth's auto-correlation,
   gives a time shift (samples) and a vertical offset (mV). They are applied only if the shift is at
   most ``round(0.5 * fs)`` samples *and* the offset at most 1 mV; otherwise the prediction is scored
   as it is. A gain or time-scale error is never forgiven.
2. **SNR.** Over the samples finite in both signals,
   ``SNR = 10 log10(mean(x_ref**2) / mean((x_ref - x_est)**2))`` dB.
3. **Coverage.** The SNR is multiplied by ``alpha`` = (samples finite in both) / (samples finite in the
   truth), so a prediction that abstains (NaN) on part of a lead keeps a proportional share.
4. **Mean.** The Challenge score is the mean over all (record, lead) pairs, ignoring NaN.

Departures from the official code, each deliberate and documented in ``docs/metrics.md``:

* A perfect lead (noise power exactly 0) gives ``inf`` there, and ``numpy.nanmean`` then makes the
  whole mean ``inf``. Here every lead's SNR is capped at :data:`PERFECT_SNR_DB` = 60 dB *before* the
  coverage factor; the lead is flagged ``perfect`` and counted. 60 dB is the Kaggle metric's own cap
  (a linear ratio of 1e6) and sits at the 1 µV storage resolution of format-16 records, so no real
  digitization is affected by it.
* A truth lead absent from the prediction makes the official ``reorder_signal`` drop a column (the
  next leads shift onto the wrong references, or an ``IndexError``). Here it is an all-NaN lead,
  scored exactly as a missing prediction is.
* The official scorer refuses a prediction whose sampling frequency differs (``assert``). Here it is
  resampled to the truth's frequency by linear interpolation (NaN where a neighbour is NaN).
* ``+inf``/``-inf`` samples in a prediction are treated as NaN (WFDB cannot store them anyway).

References
----------
.. [1] M. A. Reyna et al., "Digitization and Classification of ECG Images: The George B. Moody
   PhysioNet Challenge 2024", Computing in Cardiology 51 (2024).
   https://github.com/physionetchallenges/evaluation-2024
.. [2] Kaggle, "PhysioNet - Digitization of ECG Images" (2025), metric
   ``physionet-ecg-signal-extraction-metric``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.ndimage import gaussian_filter
from scipy.signal import correlate, correlation_lags, fftconvolve

from ecgdig.errors import RecordInputError
from ecgdig.leads import STANDARD_LEADS
from ecgdig.types import EcgRecord

__all__ = [
    "CHALLENGE_MAX_OFFSET_MV",
    "CHALLENGE_MAX_SHIFT_S",
    "CHALLENGE_QUANT_LEVELS",
    "KAGGLE_MAX_SHIFT_S",
    "KAGGLE_PERFECT_RATIO",
    "PERFECT_SNR_DB",
    "LeadScore",
    "Metric",
    "apply_alignment",
    "challenge_alignment",
    "challenge_mean_snr_db",
    "challenge_snr_lead",
    "dice",
    "kaggle_mean_snr_db",
    "kaggle_record_ratio",
    "kaggle_snr_lead",
    "pearson_r",
    "resample_mv",
    "rmse_mv",
    "score_record",
]

Metric = Literal["challenge", "kaggle"]
FloatArray = npt.NDArray[np.float64]

#: Largest time shift the Challenge forgives, in seconds (``round(0.5 * fs)`` samples).
CHALLENGE_MAX_SHIFT_S = 0.5
#: Largest vertical offset the Challenge forgives, in mV.
CHALLENGE_MAX_OFFSET_MV = 1.0
#: Amplitude levels of the binary images the Challenge correlates (``2**8``).
CHALLENGE_QUANT_LEVELS = 256
#: Gaussian smoothing of those images, in pixels.
CHALLENGE_SMOOTH_SIGMA_PX = 0.5
#: Largest time shift the Kaggle metric searches, in seconds.
KAGGLE_MAX_SHIFT_S = 0.2
#: The Kaggle metric's cap on a linear signal-to-noise ratio (its ``PERFECT_SCORE``).
KAGGLE_PERFECT_RATIO = 1e6
#: Ceiling on any reported SNR: ``10 log10(KAGGLE_PERFECT_RATIO)`` = 60 dB.
PERFECT_SNR_DB = 60.0


@dataclass(frozen=True)
class LeadScore:
    """The score of one lead of one record.

    Attributes
    ----------
    lead : str
        Lead name, spelled as in the truth record.
    metric : {"challenge", "kaggle"}
        Which metric produced this score.
    snr_db : float
        Challenge: the coverage-weighted SNR in dB, capped at :data:`PERFECT_SNR_DB` before the
        coverage factor; NaN where the official scorer gives NaN (no sample finite in both signals,
        or a zero truth with a non-zero error). Kaggle: ``10 log10`` of this lead's capped power
        ratio (for display; the Kaggle score pools powers per record), NaN for a zero truth.
    shift_samples : int
        Estimated delay of the prediction behind the truth, in samples (positive: the prediction
        was late and is moved earlier).
    offset_mv : float
        Estimated vertical offset of the prediction above the truth, in mV (subtracted when applied).
    shift_applied : bool
        Whether the shift and offset were applied. Challenge: only within 0.5 s and 1 mV. Kaggle:
        always (its search is limited to 0.2 s and its offset is unlimited).
    coverage : float
        Fraction of the truth's finite samples that are finite in the aligned prediction (the
        Challenge's ``alpha``); NaN when the truth has no finite sample.
    p_signal : float
        Challenge: mean truth power over the samples finite in both, mV². Kaggle: truth energy
        ``sum(x_ref**2)`` over the lead, mV².
    p_noise : float
        The matching error power (Challenge, mV²) or energy (Kaggle, mV²).
    perfect : bool
        The error was exactly zero on at least one sample and everywhere compared.
    missing : bool
        The prediction had no finite sample for this lead (absent record, absent lead, or all NaN).
    pearson_r : float
        Pearson correlation of the aligned prediction with the truth over samples finite in both.
    rmse_mv : float
        Root-mean-square error of the aligned prediction, mV, over samples finite in both.
    """

    lead: str
    metric: str
    snr_db: float
    shift_samples: int
    offset_mv: float
    shift_applied: bool
    coverage: float
    p_signal: float
    p_noise: float
    perfect: bool
    missing: bool
    pearson_r: float
    rmse_mv: float


# --------------------------------------------------------------------------------------------------
# Small pure helpers


def _as_signal(x: npt.ArrayLike, name: str) -> FloatArray:
    """Return ``x`` as a 1-D float64 copy with ±inf replaced by NaN."""
    arr = np.array(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    arr[np.isinf(arr)] = np.nan
    return arr


def _pad_nan(x: FloatArray, n: int) -> FloatArray:
    """Trim ``x`` to ``n`` samples or pad it with NaN up to ``n``."""
    if x.size >= n:
        return x[:n]
    return np.concatenate((x, np.full(n - x.size, np.nan)))


def pearson_r(truth_mv: npt.ArrayLike, pred_mv: npt.ArrayLike) -> float:
    """Pearson correlation over the samples finite in both signals.

    Parameters
    ----------
    truth_mv, pred_mv : (n,) array_like
        Signals in mV (the shorter is padded with NaN).

    Returns
    -------
    float
        r in [-1, 1]; NaN with fewer than 2 common samples or a constant signal.

    Examples
    --------
    >>> round(pearson_r([0.0, 1.0, 2.0, np.nan], [0.0, 2.0, 4.0, 9.0]), 6)
    1.0
    """
    a, b = _common(truth_mv, pred_mv)
    if a.size < 2:
        return float("nan")
    da, db = a - a.mean(), b - b.mean()
    denom = float(np.sqrt(np.sum(da * da) * np.sum(db * db)))
    return float(np.sum(da * db) / denom) if denom > 0 else float("nan")


def rmse_mv(truth_mv: npt.ArrayLike, pred_mv: npt.ArrayLike) -> float:
    """Root-mean-square error in mV over the samples finite in both signals.

    Parameters
    ----------
    truth_mv, pred_mv : (n,) array_like
        Signals in mV (the shorter is padded with NaN).

    Returns
    -------
    float
        RMSE in mV; NaN when no sample is finite in both.

    Examples
    --------
    >>> rmse_mv([0.0, 0.0, 1.0], [0.3, -0.3, np.nan])
    0.3
    """
    a, b = _common(truth_mv, pred_mv)
    if a.size == 0:
        return float("nan")
    return float(np.sqrt(np.mean((a - b) ** 2)))


def _common(truth_mv: npt.ArrayLike, pred_mv: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    a = _as_signal(truth_mv, "truth_mv")
    b = _as_signal(pred_mv, "pred_mv")
    n = max(a.size, b.size)
    a, b = _pad_nan(a, n), _pad_nan(b, n)
    both = np.isfinite(a) & np.isfinite(b)
    return a[both], b[both]


def dice(mask_a: npt.ArrayLike, mask_b: npt.ArrayLike) -> float:
    """Dice coefficient ``2 |A ∩ B| / (|A| + |B|)`` of two binary masks.

    Parameters
    ----------
    mask_a, mask_b : array_like of bool
        Masks of the same shape (non-zero counts as set).

    Returns
    -------
    float
        In [0, 1]; 1.0 when both masks are empty (they agree perfectly).

    Raises
    ------
    ValueError
        If the shapes differ.

    Examples
    --------
    >>> dice([[1, 1, 0, 0]], [[0, 1, 1, 0]])
    0.5
    """
    a = np.asarray(mask_a).astype(bool)
    b = np.asarray(mask_b).astype(bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} and {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def resample_mv(signal_mv: npt.ArrayLike, fs_from_hz: float, fs_to_hz: float) -> FloatArray:
    """Resample a signal by linear interpolation, keeping NaN gaps.

    Parameters
    ----------
    signal_mv : (n,) array_like
        Samples at ``fs_from_hz``; NaN where unknown.
    fs_from_hz, fs_to_hz : float
        Input and output sampling frequencies in Hz.

    Returns
    -------
    (round(n * fs_to_hz / fs_from_hz),) ndarray of float64
        Sample ``k`` is the signal at ``k / fs_to_hz`` seconds; NaN if either neighbouring input
        sample is NaN, or past the last input sample.

    Notes
    -----
    No anti-alias filter is applied when downsampling; traces digitized from paper carry little
    energy above 40 Hz. The Challenge scorer itself does not resample (it asserts equal rates).

    Examples
    --------
    >>> resample_mv([0.0, 1.0, 2.0], 100.0, 200.0)
    array([0. , 0.5, 1. , 1.5, 2. , nan])
    """
    x = _as_signal(signal_mv, "signal_mv")
    if not (fs_from_hz > 0 and fs_to_hz > 0):
        raise ValueError(f"sampling frequencies must be positive, got {fs_from_hz} and {fs_to_hz}")
    if fs_from_hz == fs_to_hz:
        return x.copy()
    n_out = round(x.size * fs_to_hz / fs_from_hz)
    pos = np.arange(n_out) * (fs_from_hz / fs_to_hz)
    i0 = np.floor(pos).astype(np.int64)
    frac = pos - i0
    out = np.full(n_out, np.nan)
    inside = i0 < x.size
    exact = inside & (frac == 0)
    out[exact] = x[i0[exact]]
    between = inside & (frac > 0) & (i0 + 1 < x.size)
    j = i0[between]
    w = frac[between]
    out[between] = x[j] * (1.0 - w) + x[j + 1] * w
    return out


# --------------------------------------------------------------------------------------------------
# PhysioNet Challenge 2024


def _binary_image(x: FloatArray, lo: float, hi: float, n_cols: int) -> FloatArray:
    """Draw ``x`` as a (levels, n_cols) binary image: one pixel per finite sample (``convert_signal``)."""
    levels = CHALLENGE_QUANT_LEVELS
    image = np.zeros((levels, n_cols))
    cols = np.flatnonzero(np.isfinite(x))
    if hi > lo:
        # Same arithmetic, in the same order, as the official code, so .5 ties round identically.
        rows = np.round((levels - 1) * (x[cols] - lo) / (hi - lo) + 1).astype(np.int64)
        rows = np.clip(rows, 1, levels)
    else:
        # Flat, equal signals: the official 0/0 casts to the lowest level on every platform we use.
        rows = np.ones(cols.size, dtype=np.int64)
    image[rows - 1, cols] = 1.0
    return image


def challenge_alignment(truth_mv: npt.ArrayLike, pred_mv: npt.ArrayLike) -> tuple[int, float]:
    """Estimate the time shift and vertical offset as the Challenge 2024 scorer does.

    Parameters
    ----------
    truth_mv : (n,) array_like
        Reference lead in mV, NaN where not known.
    pred_mv : (m,) array_like
        Digitized lead in mV, NaN where abstained; ``m`` may differ from ``n``.

    Returns
    -------
    shift_samples : int
        Delay of the prediction behind the truth (positive: prediction late).
    offset_mv : float
        Offset of the prediction above the truth, in mV, quantized to the image's level step.

    Raises
    ------
    ValueError
        If either signal has no finite sample (the official code then yields NaN offsets).

    Notes
    -----
    Both signals become binary images with :data:`CHALLENGE_QUANT_LEVELS` rows spanning their joint
    amplitude range, smoothed by a Gaussian of sigma 0.5 px (``scipy.ndimage.gaussian_filter``
    defaults), and cross-correlated with ``scipy.signal.fftconvolve``; the global peak, relative to
    the peak of the truth's auto-correlation, gives both offsets. The auto-correlation of a non-empty
    non-negative image peaks exactly at zero lag (Cauchy-Schwarz), so that peak is taken at the
    centre instead of being computed; the cross-correlation is computed exactly as the scorer does,
    so near-ties between lags resolve identically.

    Examples
    --------
    >>> t = np.arange(1000) / 500.0
    >>> truth = np.exp(-(((t % 0.8) - 0.4) / 0.02) ** 2)
    >>> late = np.concatenate((np.full(25, np.nan), truth[:-25])) + 0.3
    >>> shift, offset = challenge_alignment(truth, late)
    >>> shift, round(offset, 2)
    (25, 0.3)
    """
    ref = _as_signal(truth_mv, "truth_mv")
    est = _as_signal(pred_mv, "pred_mv")
    if not (np.isfinite(ref).any() and np.isfinite(est).any()):
        raise ValueError("both signals need at least one finite sample to be aligned")
    lo = float(min(np.nanmin(ref), np.nanmin(est)))
    hi = float(max(np.nanmax(ref), np.nanmax(est)))
    n_cols = max(ref.size, est.size)
    image_ref = gaussian_filter(_binary_image(ref, lo, hi, n_cols), CHALLENGE_SMOOTH_SIGMA_PX)
    image_est = gaussian_filter(_binary_image(est, lo, hi, n_cols), CHALLENGE_SMOOTH_SIGMA_PX)
    cross = fftconvolve(image_ref, image_est[::-1, ::-1], mode="full")
    peak_row, peak_col = np.unravel_index(int(np.argmax(cross)), cross.shape)
    shift = (n_cols - 1) - int(peak_col)
    offset_levels = (CHALLENGE_QUANT_LEVELS - 1) - int(peak_row)
    return shift, offset_levels / (CHALLENGE_QUANT_LEVELS - 1) * (hi - lo)


def apply_alignment(pred_mv: npt.ArrayLike, shift_samples: int, offset_mv: float) -> FloatArray:
    """Move a prediction earlier by ``shift_samples`` and down by ``offset_mv``.

    Parameters
    ----------
    pred_mv : (m,) array_like
        Digitized lead in mV.
    shift_samples : int
        Positive: drop that many leading samples and pad NaN at the end. Negative: pad that many
        NaN at the start (the signal grows by ``-shift_samples``; the scorer ignores samples past
        the truth's end).
    offset_mv : float
        Subtracted from every sample.

    Returns
    -------
    ndarray of float64
        The aligned prediction.

    Examples
    --------
    >>> apply_alignment([1.0, 2.0, 3.0], 1, 1.0)
    array([ 1.,  2., nan])
    >>> apply_alignment([1.0, 2.0, 3.0], -1, 0.0)
    array([nan,  1.,  2.,  3.])
    """
    est = _as_signal(pred_mv, "pred_mv")
    if shift_samples < 0:
        moved = np.concatenate((np.full(-shift_samples, np.nan), est))
    else:
        moved = np.concatenate((est[shift_samples:], np.full(shift_samples, np.nan)))
    return moved - offset_mv


def challenge_snr_lead(
    truth_mv: npt.ArrayLike, pred_mv: npt.ArrayLike, fs_hz: float, *, lead: str = ""
) -> LeadScore:
    """Score one lead with the PhysioNet Challenge 2024 SNR.

    Parameters
    ----------
    truth_mv : (n,) array_like
        Reference lead in mV; NaN where the lead is not known (e.g. not plotted on the page).
    pred_mv : (m,) array_like
        Digitized lead in mV at the same ``fs_hz``; NaN where the digitizer abstained. ``m`` may
        differ from ``n``: samples past the truth's end are ignored, missing ones count as NaN.
    fs_hz : float
        Sampling frequency in Hz (sets the 0.5 s shift limit).
    lead : str, optional
        Name stored in the result.

    Returns
    -------
    LeadScore
        ``snr_db`` = ``min(10 log10(P_signal / P_noise), PERFECT_SNR_DB) * coverage`` over the
        samples finite in both aligned signals; NaN when none is, as in the official scorer.

    See Also
    --------
    challenge_alignment : the shift and offset estimate.
    score_record : a whole record, leads matched by name.

    References
    ----------
    .. [1] physionetchallenges/evaluation-2024, ``helper_code.compute_snr`` and ``align_signals``.

    Examples
    --------
    >>> t = np.arange(5000) / 500.0
    >>> truth = np.exp(-(((t % 0.8) - 0.4) / 0.02) ** 2)
    >>> round(challenge_snr_lead(truth, 1.2 * truth, 500.0).snr_db, 3)  # 10 log10(1 / 0.2**2)
    13.979
    """
    ref = _as_signal(truth_mv, "truth_mv")
    est = _as_signal(pred_mv, "pred_mv")
    if not fs_hz > 0:
        raise ValueError(f"fs_hz must be positive, got {fs_hz}")
    missing = not np.isfinite(est).any()
    shift, offset, applied = 0, 0.0, False
    if np.isfinite(ref).any() and not missing:
        shift, offset = challenge_alignment(ref, est)
        # np.round, not round(): the scorer's half-to-even rule on 0.5 * fs.
        max_shift = float(np.round(CHALLENGE_MAX_SHIFT_S * fs_hz))
        applied = abs(shift) <= max_shift and abs(offset) <= CHALLENGE_MAX_OFFSET_MV
        if applied:
            est = apply_alignment(est, shift, offset)
    snr_db, p_signal, p_noise, coverage, perfect = _challenge_snr(ref, est)
    r, rmse = pearson_r(ref, est), rmse_mv(ref, est)
    return LeadScore(
        lead=lead,
        metric="challenge",
        snr_db=snr_db,
        shift_samples=shift,
        offset_mv=offset,
        shift_applied=applied,
        coverage=coverage,
        p_signal=p_signal,
        p_noise=p_noise,
        perfect=perfect,
        missing=missing,
        pearson_r=r,
        rmse_mv=rmse,
    )


def _challenge_snr(ref: FloatArray, est: FloatArray) -> tuple[float, float, float, float, bool]:
    """``compute_snr`` with ``keep_nans=True``: (snr_db, p_signal, p_noise, coverage, perfect)."""
    n = max(ref.size, est.size)
    ref, est = _pad_nan(ref, n), _pad_nan(est, n)
    in_ref = np.isfinite(ref)
    both = in_ref & np.isfinite(est)
    n_ref, n_both = int(in_ref.sum()), int(both.sum())
    coverage = n_both / n_ref if n_ref else float("nan")
    if n_both == 0:
        # The official mean of an empty slice: NaN, later ignored by nanmean.
        return float("nan"), float("nan"), float("nan"), coverage, False
    x_ref = ref[both]
    p_signal = float(np.mean(x_ref**2))
    p_noise = float(np.mean((x_ref - est[both]) ** 2))
    perfect = p_noise == 0.0
    if perfect:
        raw = PERFECT_SNR_DB  # official: inf
    elif p_signal > 0:
        raw = min(10.0 * float(np.log10(p_signal / p_noise)), PERFECT_SNR_DB)
    else:
        raw = float("nan")  # a zero truth with a non-zero error
    return raw * coverage, p_signal, p_noise, coverage, perfect


def challenge_mean_snr_db(scores: Iterable[LeadScore]) -> float:
    """Mean SNR over (record, lead) pairs as the Challenge computes it: NaN pairs are ignored.

    Parameters
    ----------
    scores : iterable of LeadScore
        Challenge lead scores, typically of every lead of every record.

    Returns
    -------
    float
        The mean of the finite ``snr_db`` values in dB; NaN if there is none.

    Examples
    --------
    >>> from dataclasses import replace
    >>> s = LeadScore("I", "challenge", 10.0, 0, 0.0, True, 1.0, 1.0, 0.1, False, False, 1.0, 0.1)
    >>> challenge_mean_snr_db([s, replace(s, snr_db=20.0), replace(s, snr_db=float("nan"))])
    15.0
    """
    values = np.array([s.snr_db for s in scores], dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


# --------------------------------------------------------------------------------------------------
# Kaggle 2025


def kaggle_snr_lead(
    truth_mv: npt.ArrayLike, pred_mv: npt.ArrayLike, fs_hz: float, *, lead: str = ""
) -> LeadScore:
    """Score one lead as the 2025 Kaggle "PhysioNet - Digitization of ECG Images" metric does.

    Parameters
    ----------
    truth_mv : (n,) array_like
        Reference lead in mV. Kaggle labels are the plotted segment only and must be finite; here
        the segment is the span from the first to the last finite sample.
    pred_mv : (m,) array_like
        Digitized lead at ``fs_hz``, on the same time axis as ``truth_mv``. The samples facing the
        label segment are used (missing ones count as 0). NaN counts as 0: Kaggle rejects NaN in a
        submission, and this is what its metric does with its own alignment padding.
    fs_hz : float
        Sampling frequency in Hz (sets the 0.2 s search window).
    lead : str, optional
        Name stored in the result.

    Returns
    -------
    LeadScore
        ``p_signal`` and ``p_noise`` are energies (sums of squares over the segment); the Kaggle
        record score pools them (see :func:`kaggle_record_ratio`).

    Raises
    ------
    ValueError
        If the truth has NaN inside its finite span (Kaggle labels have none).

    Notes
    -----
    Alignment: the lag maximising the cross-correlation of the mean-removed signals within
    ``int(0.2 * fs)`` samples (ties: the smallest absolute lag, then the earliest), then the
    vertical offset minimising the squared error over the overlap. Kaggle finds that offset with
    Brent's method; the closed form used here (the mean difference) is its exact minimiser.

    Examples
    --------
    >>> truth = np.sin(np.linspace(0, 20, 2500))
    >>> s = kaggle_snr_lead(truth, truth + 0.7, 500.0)
    >>> round(s.offset_mv, 6), s.snr_db  # the offset is removed; the ratio reaches the 1e6 cap
    (0.7, 60.0)
    """
    ref = _as_signal(truth_mv, "truth_mv")
    est = _as_signal(pred_mv, "pred_mv")
    if not fs_hz > 0:
        raise ValueError(f"fs_hz must be positive, got {fs_hz}")
    finite = np.flatnonzero(np.isfinite(ref))
    if finite.size == 0:
        nan = float("nan")
        return LeadScore(
            lead=lead,
            metric="kaggle",
            snr_db=nan,
            shift_samples=0,
            offset_mv=0.0,
            shift_applied=False,
            coverage=nan,
            p_signal=nan,
            p_noise=nan,
            perfect=False,
            missing=not np.isfinite(est).any(),
            pearson_r=nan,
            rmse_mv=nan,
        )
    start, stop = int(finite[0]), int(finite[-1]) + 1
    label = ref[start:stop]
    if not np.isfinite(label).all():
        raise ValueError(f"lead {lead!r}: truth has NaN inside its finite span (Kaggle labels are finite)")
    pred = _pad_nan(est[start:], label.size)
    known = np.isfinite(pred)
    missing = not known.any()
    pred = np.where(known, pred, 0.0)

    max_shift = int(fs_hz * KAGGLE_MAX_SHIFT_S)
    corr = correlate(label - label.mean(), pred - pred.mean(), mode="full")
    lags = correlation_lags(label.size, pred.size, mode="full")
    window = (lags >= -max_shift) & (lags <= max_shift)
    best = np.nanmax(corr[window])
    # As Kaggle: every index of the full array equal to the windowed maximum, smallest |lag| first.
    candidates = np.flatnonzero(corr == best)
    lag = int(lags[min(candidates, key=lambda i: abs(int(lags[i])))])
    n = label.size
    moved = np.concatenate(
        (np.full(max(lag, 0), np.nan), pred[max(-lag, 0) : min(n - lag, n)], np.full(max(-lag, 0), np.nan))
    )
    known_moved = np.concatenate(
        (np.zeros(max(lag, 0), bool), known[max(-lag, 0) : min(n - lag, n)], np.zeros(max(-lag, 0), bool))
    )
    overlap = np.isfinite(moved)
    offset = float(np.mean(moved[overlap] - label[overlap])) if overlap.any() else 0.0
    aligned = moved - offset
    scored = np.where(np.isfinite(aligned), aligned, 0.0)
    p_signal = float(np.sum(label**2))
    p_noise = float(np.sum((label - scored) ** 2))
    ratio = _kaggle_ratio(p_signal, p_noise)
    shown = np.where(known_moved, aligned, np.nan)
    return LeadScore(
        lead=lead,
        metric="kaggle",
        snr_db=10.0 * float(np.log10(ratio)) if ratio > 0 else float("nan"),
        shift_samples=-lag,
        offset_mv=offset,
        shift_applied=True,
        coverage=float(known_moved.mean()),
        p_signal=p_signal,
        p_noise=p_noise,
        perfect=p_noise == 0.0,
        missing=missing,
        pearson_r=pearson_r(label, shown),
        rmse_mv=rmse_mv(label, shown),
    )


def _kaggle_ratio(p_signal: float, p_noise: float, perfect_ratio: float = KAGGLE_PERFECT_RATIO) -> float:
    """Kaggle ``compute_snr``: the linear ratio, capped (the cap for zero noise, 0 for zero signal)."""
    if p_noise == 0:
        return perfect_ratio
    if p_signal == 0:
        return 0.0
    return min(p_signal / p_noise, perfect_ratio)


def kaggle_record_ratio(scores: Iterable[LeadScore], *, perfect_ratio: float = KAGGLE_PERFECT_RATIO) -> float:
    """Pool one record's Kaggle lead energies into its linear SNR ratio.

    Parameters
    ----------
    scores : iterable of LeadScore
        Kaggle scores of the record's leads (NaN energies, from all-NaN truth leads, are skipped).
    perfect_ratio : float, optional
        The cap. 1e6 in the published metric; an earlier version used 384 (25.84 dB).

    Returns
    -------
    float
        ``min(sum p_signal / sum p_noise, perfect_ratio)``; ``perfect_ratio`` for zero noise, 0 for
        zero signal, NaN when no lead has a finite truth sample.

    Examples
    --------
    >>> from dataclasses import replace
    >>> a = LeadScore("I", "kaggle", 0.0, 0, 0.0, True, 1.0, 4.0, 1.0, False, False, 1.0, 0.1)
    >>> kaggle_record_ratio([a, replace(a, p_signal=6.0, p_noise=0.0)])  # (4 + 6) / (1 + 0)
    10.0
    """
    kept = [s for s in scores if np.isfinite(s.p_signal)]
    if not kept:
        return float("nan")
    return _kaggle_ratio(sum(s.p_signal for s in kept), sum(s.p_noise for s in kept), perfect_ratio)


def kaggle_mean_snr_db(
    record_ratios: Sequence[float], *, perfect_ratio: float = KAGGLE_PERFECT_RATIO
) -> float:
    """Return the Kaggle score: ``10 log10`` of the mean linear ratio over records, floored.

    Parameters
    ----------
    record_ratios : sequence of float
        One :func:`kaggle_record_ratio` per record.
    perfect_ratio : float, optional
        The metric floors its dB score at ``-perfect_ratio`` (a unit slip in the original that is
        kept: -1e6 dB with the published cap, -384 dB with the earlier one).

    Returns
    -------
    float
        Score in dB; NaN for no record.

    Examples
    --------
    >>> round(kaggle_mean_snr_db([10.0, 1000.0]), 4)  # 10 log10(505)
    27.0329
    """
    if len(record_ratios) == 0:
        return float("nan")
    mean = float(np.mean(record_ratios))
    return max(10.0 * float(np.log10(mean)), -perfect_ratio) if mean > 0 else -perfect_ratio


# --------------------------------------------------------------------------------------------------
# Records


def score_record(pred: EcgRecord | None, truth: EcgRecord, metric: Metric = "challenge") -> list[LeadScore]:
    """Score every lead of ``truth`` against the prediction's lead of the same name.

    Parameters
    ----------
    pred : EcgRecord or None
        The digitized record; None when it is missing (every lead then counts as all-NaN, as the
        Challenge scorer represents a missing output; the Kaggle variant scores zeros instead).
    truth : EcgRecord
        The reference record.
    metric : {"challenge", "kaggle"}
        Which SNR to compute. The Kaggle metric scores only the 12 standard leads.

    Returns
    -------
    list of LeadScore
        One per truth lead, in the truth's order.

    Raises
    ------
    RecordInputError
        If either record names a lead twice (case-insensitively), as the scorer refuses.
    ValueError
        For an unknown ``metric``.

    Notes
    -----
    Leads are matched case-insensitively (``AVR`` is ``aVR``), as the scorer's ``reorder_signal``
    does; prediction leads the truth lacks are ignored. A prediction at another sampling frequency is
    resampled to the truth's (:func:`resample_mv`). Lengths need not match: samples past the truth's
    end are ignored and missing samples count as NaN.
    """
    if metric not in ("challenge", "kaggle"):
        raise ValueError(f"unknown metric {metric!r}; expected 'challenge' or 'kaggle'")
    _check_unique(truth)
    columns: dict[str, FloatArray] = {}
    if pred is not None:
        _check_unique(pred)
        for j, name in enumerate(pred.lead_names):
            columns[name.strip().casefold()] = resample_mv(pred.signal_mv[:, j], pred.fs_hz, truth.fs_hz)
    absent = np.full(truth.n_samples, np.nan)
    standard = {name.casefold() for name in STANDARD_LEADS}
    scores = []
    for j, name in enumerate(truth.lead_names):
        key = name.strip().casefold()
        est = columns.get(key, absent)
        if metric == "challenge":
            scores.append(challenge_snr_lead(truth.signal_mv[:, j], est, truth.fs_hz, lead=name))
        elif key in standard:
            scores.append(kaggle_snr_lead(truth.signal_mv[:, j], est, truth.fs_hz, lead=name))
    return scores


def _check_unique(record: EcgRecord) -> None:
    keys = [name.strip().casefold() for name in record.lead_names]
    duplicates = sorted({name for name in keys if keys.count(name) > 1})
    if duplicates:
        raise RecordInputError(f"record {record.name!r} names lead(s) {', '.join(duplicates)} more than once")
