"""Frozen data structures exchanged between pipeline stages.

Units are in the names: ``px_per_mm``, ``mm_per_s``, ``mm_per_mv``, ``fs_hz``, ``duration_s``.
Signals are in millivolts end to end. Images are ``(rows, cols[, 3])`` arrays; "x" is the column
(time) axis and "y" the row (voltage) axis only where the ECG meaning makes that clearer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "CalibrationPulse",
    "EcgRecord",
    "GridSuppression",
    "NormalizedPage",
    "PageLayout",
    "RowBand",
    "RowTrace",
    "TraceProbability",
]


@dataclass(frozen=True)
class EcgRecord:
    """A multi-lead ECG signal in millivolts.

    Attributes
    ----------
    name : str
        Record name (the WFDB file stem).
    signal_mv : (n_samples, n_leads) ndarray of float64
        Voltage in mV; NaN where a lead is not known (not plotted, or abstained).
    fs_hz : float
        Sampling frequency in Hz.
    lead_names : tuple of str
        One name per column of ``signal_mv``, standard spelling where standard.
    comments : tuple of str
        Free-text header comments (WFDB ``#`` lines), without the ``#``.
    """

    name: str
    signal_mv: np.ndarray
    fs_hz: float
    lead_names: tuple[str, ...]
    comments: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.signal_mv.ndim != 2:
            raise ValueError(f"signal_mv must be 2-D (n_samples, n_leads), got shape {self.signal_mv.shape}")
        if self.signal_mv.shape[1] != len(self.lead_names):
            raise ValueError(
                f"signal_mv has {self.signal_mv.shape[1]} columns but {len(self.lead_names)} lead names"
            )
        if not self.fs_hz > 0:
            raise ValueError(f"fs_hz must be positive, got {self.fs_hz}")

    @property
    def n_samples(self) -> int:
        """Number of samples per lead."""
        return int(self.signal_mv.shape[0])

    @property
    def duration_s(self) -> float:
        """Length of the record in seconds."""
        return self.n_samples / self.fs_hz

    def lead(self, name: str) -> np.ndarray:
        """Return one lead's samples in mV, looked up case-insensitively.

        Parameters
        ----------
        name : str
            Lead name, e.g. ``"aVR"`` or ``"AVR"``.

        Returns
        -------
        (n_samples,) ndarray
            A view of the lead's column.

        Raises
        ------
        KeyError
            If the record has no such lead.
        """
        lowered = [n.lower() for n in self.lead_names]
        try:
            return self.signal_mv[:, lowered.index(name.lower())]
        except ValueError:
            raise KeyError(f"record {self.name!r} has no lead {name!r}") from None


@dataclass(frozen=True)
class NormalizedPage:
    """A page resampled to a known, square pixel scale, deskewed and cropped.

    Attributes
    ----------
    image : (rows, cols, 3) ndarray of uint8
        RGB pixels at ``px_per_mm``.
    px_per_mm : float
        Pixels per millimetre of paper in ``image`` (same on both axes).
    px_per_mm_confidence : float
        0 to 1: how clearly the grid determined the scale (1 = sharp periodic grid).
    scale_method : str
        How the scale was found (``"grid"``, ``"grid+pulse"``, ``"assumed"``, ...).
    source_px_per_mm : float
        The scale measured in the input image, before resampling.
    rotation_deg : float
        Rotation removed from the input, in degrees (counter-clockwise positive).
    perspective_corrected : bool
        Whether a homography was applied.
    warnings : tuple of str
        Human-readable notes about doubtful steps.
    """

    image: np.ndarray
    px_per_mm: float
    px_per_mm_confidence: float
    scale_method: str
    source_px_per_mm: float
    rotation_deg: float = 0.0
    perspective_corrected: bool = False
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class GridSuppression:
    """The page with its grid removed.

    Attributes
    ----------
    ink : (rows, cols) ndarray of float32
        Darkness of non-grid ink in [0, 1] (1 = black trace or text, 0 = paper or grid).
    grid_colour : str
        Detected grid colour family (``"red"``, ``"green"``, ``"blue"``, ``"grey"``, ``"none"``, ...).
    leakage : float
        Fraction of grid-line pixels that still read as ink (0 = grid fully removed).
    """

    ink: np.ndarray
    grid_colour: str
    leakage: float


@dataclass(frozen=True)
class TraceProbability:
    """Per-pixel probability that a pixel belongs to an ECG trace.

    Attributes
    ----------
    probability : (rows, cols) ndarray of float32
        Values in [0, 1], on the grid of the :class:`NormalizedPage` it was computed from.
    segmenter : str
        ``"classical"`` or the model's name.
    extras : dict
        Optional named extra outputs of a learned segmenter (e.g. per-row label maps).
    """

    probability: np.ndarray
    segmenter: str
    extras: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class RowBand:
    """One printed strip of trace found on a page.

    Attributes
    ----------
    baseline_px : float
        Row coordinate of the strip's isoelectric line (most common trace height), in pixels.
    top_px, bottom_px : int
        Rows searched for this strip's trace (bands of neighbouring strips overlap, since tall
        QRS complexes cross into the next strip).
    coverage : float
        Fraction of page columns with ink near the baseline (a trace strip is close to 1, text is not).
    """

    baseline_px: float
    top_px: int
    bottom_px: int
    coverage: float


@dataclass(frozen=True)
class RowTrace:
    """The trace followed along one strip, as a polyline in page pixels.

    Attributes
    ----------
    x_px : (n,) ndarray of float64
        Column positions, increasing (several points may fall in one column to keep peaks).
    y_px : (n,) ndarray of float64
        Row position of the trace centre line at ``x_px``.
    found : (n_columns,) ndarray of bool
        For each page column from ``x_first`` to ``x_last`` inclusive, whether trace ink was found.
    x_first, x_last : int
        First and last page column of the followed trace.
    line_width_px : float
        Estimated stroke width of the trace.
    """

    x_px: np.ndarray
    y_px: np.ndarray
    found: np.ndarray
    x_first: int
    x_last: int
    line_width_px: float


@dataclass(frozen=True)
class CalibrationPulse:
    """A calibration pulse found at the start of a strip.

    Attributes
    ----------
    row : int
        Index of the strip.
    x_start_px, x_end_px : float
        Columns where the pulse rises and falls.
    height_px : float
        Height of the pulse plateau above the baseline, in pixels (1 mV by convention).
    """

    row: int
    x_start_px: float
    x_end_px: float
    height_px: float


@dataclass(frozen=True)
class PageLayout:
    """Where each lead is on a page and how to convert pixels to seconds and millivolts.

    Attributes
    ----------
    template_name : str
        Name of the layout template used (``"3x4+1"``...).
    rows : tuple of RowBand
        Strips, top to bottom; ``rows[i]`` is template row ``i``.
    row_x_start_px, row_x_end_px : tuple of float
        Column where each strip's signal begins (time 0 of the record) and ends.
    px_per_mm : float
        Page scale.
    mm_per_s : float
        Paper speed.
    mm_per_mv : float
        Voltage gain.
    duration_s : float
        Time span of a full strip.
    panels : tuple
        ``(lead, row, start_s, end_s, shift_s)`` for every printed lead panel: it sits on strip
        ``row`` from strip time ``start_s`` to ``end_s`` and shows record time strip time minus
        ``shift_s`` (0 unless the layout's columns restart at time zero).
    pulses : tuple of CalibrationPulse
        Calibration pulses found.
    gain_source : str
        ``"pulse"``, ``"user"`` or ``"default"``.
    speed_source : str
        Where the paper speed came from: ``"pulse"`` (the calibration pulse's width), ``"user"``
        or ``"default"``.
    row_time_knots : tuple of tuple of (float, float)
        Per strip, ``(x_px, t_s)`` points where a lead separator fixes the time axis (on a rhythm
        strip, the columns of the separators above it); between them time is linear in x, before
        the first from time zero (extrapolated from the first two knots, or the strip's start if
        there is one knot), beyond the last at the page's speed.
    duration_source : str
        ``"user"``, ``"default"`` (10 s) or ``"strips"`` (measured strip length at a speed other
        than 25 mm/s).
    warnings : tuple of str
        Doubtful decisions, for the sidecar.
    """

    template_name: str
    rows: tuple[RowBand, ...]
    row_x_start_px: tuple[float, ...]
    row_x_end_px: tuple[float, ...]
    px_per_mm: float
    mm_per_s: float
    mm_per_mv: float
    duration_s: float
    panels: tuple[tuple[str, int, float, float, float], ...]
    pulses: tuple[CalibrationPulse, ...] = ()
    gain_source: str = "default"
    speed_source: str = "default"
    duration_source: str = "default"
    row_time_knots: tuple[tuple[tuple[float, float], ...], ...] = ()
    warnings: tuple[str, ...] = ()

    def time_knots(self, row: int) -> tuple[tuple[float, float], ...]:
        """Return strip ``row``'s ``(x_px, t_s)`` time knots (empty if it has none)."""
        return self.row_time_knots[row] if row < len(self.row_time_knots) else ()

    def lead_changes(self, row: int) -> tuple[float, ...]:
        """Return the times (s) at which one lead hands over to the next on strip ``row``, sorted."""
        return tuple(sorted({start for _, r, start, _, _ in self.panels if r == row and start > 0}))
