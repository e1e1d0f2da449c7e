"""Vectorize: follow each strip's trace in the probability map and convert it to millivolts.

Per strip, every page column is reduced to its vertical runs of trace pixels; a dynamic programme
(Viterbi over columns) picks one run per column so that the path stays vertically connected, which
keeps a tall QRS from a neighbouring strip, lead labels and stray marks out of the trace. At a peak
the run's outer end, pulled in by half a stroke, gives the apex, placed within its column where the
ink's centre is; on a steep flank the column's value is read along rows, where the stroke's
horizontal centre crosses the column's centre (sub-pixel in time, which a column cannot give).

Pixels become physical units with the page scale found from the grid:
``mV = (baseline_px - y_px) / px_per_mm / mm_per_mv`` and ``s = (x_px - x_start_px) / px_per_mm / mm_per_s``.

References
----------
.. [1] Reyna et al., "ECG-Image-Database / PhysioNet Challenge 2024: digitization and classification of
       ECG images", 2024 (time windows of a 3x4 page: column c shows 2.5c..2.5(c+1) s).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ecgdig.leads import STANDARD_LEADS
from ecgdig.pipeline.layout import DEFAULT_DURATION_S
from ecgdig.types import EcgRecord, PageLayout, RowBand, RowTrace

__all__ = [
    "DEFAULT_FS_HZ",
    "PanelSignal",
    "VectorizedLeads",
    "follow_trace",
    "panel_signals",
    "strip_time_to_x",
    "traces_to_record",
]

DEFAULT_FS_HZ = 500.0
#: Most runs considered in one column; more means text or noise, and the ones nearest the
#: baseline are kept.
_MAX_RUNS_PER_COLUMN = 8
#: Horizontal gap (mm) that still belongs to one trace segment.
_SEGMENT_GAP_MM = 1.5
#: Shortest trace segment (mm) kept when deciding where a strip starts and ends.
_MIN_SEGMENT_MM = 8.0
#: A piece of the path between gaps whose centre stays within this (mm) is a ruled line, not a
#: trace (phone page 21818: a panel's frame, read as a fifth strip, -4.3 -> 7.7 dB).
_RULED_MAX_SPREAD_MM = 0.25
#: Gaps in the followed trace up to this width (mm) are interpolated; wider ones become NaN.
_MAX_INTERPOLATED_GAP_MM = 4.0
#: Trace points this close (mm) to a lead-separator bar are the bar's ink and are bridged over.
_SEPARATOR_BRIDGE_MM = 0.5
#: A row of a steep stroke is read only where its horizontal run is at most this much (px) wider
#: than the stroke (measured: a slack of twice the width loses 1.4 dB on the clean pages).
_STEEP_ROW_SLACK_PX = 1.0
#: A tall run between flat columns at most this many stroke widths (+2 px) apart can be another
#: strip's stroke crossing ours; a longer tall stretch is our own QRS.
_CROSSING_MAX_COLUMNS_PER_WIDTH = 2.0
#: Bands shorter than this (mm; 0.75 of the strip spacing each way, so strips under about 17 mm
#: apart: twelve-row pages) belong to a crowded page, whose tall complexes are followed beyond the
#: band. Measured: ecg-image-kit's 12x1 page 5.9 -> 9.2 dB, a rendered scanner 12x1 page 14.6 ->
#: 12.8; at 40 mm a six-strip page 26 mm apart lost its V3 (14.5 -> 2.4 dB) to a crossing stroke.
_CROWDED_BAND_MM = 25.0
#: Farthest (px) a peak's apex is moved from its column's centre towards the ink's centre.
_APEX_SHIFT_LIMIT_PX = 0.45


@dataclass(frozen=True)
class VectorizedLeads:
    """The digitized signal with per-lead confidence.

    Attributes
    ----------
    record : EcgRecord
        Twelve standard leads in mV at the requested rate; NaN where a lead is not shown.
    confidence : dict of str to float
        For each lead shown, the fraction of its time window where trace ink was found (0..1).
    """

    record: EcgRecord
    confidence: dict[str, float]


def _column_runs(
    mask: np.ndarray, probability: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return runs of True pixels in every column: (column, top, bottom, centroid, mass)."""
    rows, cols = mask.shape
    padded = np.zeros((rows + 2, cols), dtype=np.int8)
    padded[1:-1] = mask
    change = np.diff(padded, axis=0)  # +1 where a run starts, -1 one past where it ends
    start_col, start_row = np.nonzero(change.T == 1)
    _, end_row = np.nonzero(change.T == -1)
    # Both lists are sorted by column then row, and runs alternate start/end, so they pair up.
    top = start_row
    bottom = end_row - 1
    weights = np.where(mask, probability, 0.0).astype(np.float64)
    cum_w = np.vstack([np.zeros((1, cols)), np.cumsum(weights, axis=0)])
    cum_wy = np.vstack(
        [np.zeros((1, cols)), np.cumsum(weights * np.arange(rows, dtype=np.float64)[:, None], axis=0)]
    )
    mass = cum_w[bottom + 1, start_col] - cum_w[top, start_col]
    moment = cum_wy[bottom + 1, start_col] - cum_wy[top, start_col]
    centroid = np.where(mass > 0, moment / np.maximum(mass, 1e-12), (top + bottom) / 2.0)
    return start_col, top, bottom, centroid, mass


def follow_trace(
    probability: np.ndarray, band: RowBand, px_per_mm: float, *, threshold: float = 0.5
) -> RowTrace | None:
    """Follow one strip's trace through a trace-probability map.

    Parameters
    ----------
    probability : (rows, cols) ndarray of float
        Trace probability of the whole page, in [0, 1].
    band : RowBand
        The strip to follow; only rows ``band.top_px..band.bottom_px`` are searched.
    px_per_mm : float
        Page scale, used to express gap and jump costs in millimetres.
    threshold : float, optional
        Probability above which a pixel counts as trace.

    Returns
    -------
    RowTrace or None
        The followed centre line in page coordinates, or None if the band holds no trace.
    """
    band_top = max(0, int(band.top_px))
    band_bottom = min(probability.shape[0] - 1, int(band.bottom_px))
    # On a crowded page (ecg-image-kit's 12x1: strips 14 mm apart) runs are read in a
    # window one band taller each way and kept if they reach into the band: a tall complex runs
    # on into the next strip, and cutting it at the band's edge clipped every QRS. Where strips
    # are far apart a run that long is another strip's stroke crossing ours (a clean 3x4 page's V2
    # followed V1's deep S wave up: 19.6 -> -2.3 dB).
    reach = band_bottom - band_top if band_bottom - band_top < _CROWDED_BAND_MM * px_per_mm else 0
    top_px = max(0, band_top - reach)
    bottom_px = min(probability.shape[0] - 1, band_bottom + reach)
    sub_prob = probability[top_px : bottom_px + 1]
    mask = sub_prob >= threshold
    col, top, bottom, centroid, mass = _column_runs(mask, sub_prob)
    in_band = (bottom >= band_top - top_px) & (top <= band_bottom - top_px)
    col, top, bottom, centroid, mass = (
        col[in_band],
        top[in_band],
        bottom[in_band],
        centroid[in_band],
        mass[in_band],
    )
    if col.size == 0:
        return None
    baseline = band.baseline_px - top_px
    line_width = _stroke_width(bottom - top + 1)

    # Group runs by column, keeping the ones nearest the baseline when a column is crowded.
    order = np.lexsort((np.abs(centroid - baseline), col))
    col, top, bottom, centroid, mass = col[order], top[order], bottom[order], centroid[order], mass[order]
    columns, first_index, counts = np.unique(col, return_index=True, return_counts=True)

    half_height = max(float(band.bottom_px - band.top_px) / 2.0, 1.0)
    path = _viterbi(columns, first_index, counts, top, bottom, centroid, baseline, half_height, px_per_mm)

    on_trace = path >= 0
    path = path[on_trace]
    chosen_cols = columns[on_trace]
    chosen_top = top[path].astype(np.float64)
    chosen_bottom = bottom[path].astype(np.float64)
    chosen_centroid = centroid[path]

    keep = _main_segments(chosen_cols, chosen_top, chosen_bottom, px_per_mm)
    if not np.any(keep):
        return None
    chosen_cols, chosen_top, chosen_bottom, chosen_centroid = (
        chosen_cols[keep],
        chosen_top[keep],
        chosen_bottom[keep],
        chosen_centroid[keep],
    )
    row_runs = _RowRuns(mask, sub_prob, line_width)
    x_pts, y_pts = _column_polyline(
        chosen_cols, chosen_top, chosen_bottom, chosen_centroid, line_width, sub_prob.shape[0], row_runs
    )
    x_first, x_last = int(chosen_cols[0]), int(chosen_cols[-1])
    found = np.zeros(x_last - x_first + 1, dtype=bool)
    found[chosen_cols - x_first] = True
    return RowTrace(
        x_px=x_pts,
        y_px=y_pts + top_px,
        found=found,
        x_first=x_first,
        x_last=x_last,
        line_width_px=line_width,
    )


def _stroke_width(run_lengths: np.ndarray) -> float:
    """Estimate the trace stroke width: the run length on flat stretches, which are most columns."""
    return float(np.percentile(run_lengths, 30)) if run_lengths.size else 1.0


def _viterbi(
    columns: np.ndarray,
    first_index: np.ndarray,
    counts: np.ndarray,
    top: np.ndarray,
    bottom: np.ndarray,
    centroid: np.ndarray,
    baseline: float,
    half_height: float,
    px_per_mm: float,
) -> np.ndarray:
    """Pick at most one run per column: a connected path, or "no trace here".

    Costs are in millimetres of pen travel: a jump over empty paper costs its height; every column
    spent off the trace costs ``off_trace_per_column``; entering the trace from nowhere costs the
    distance of the entry point from the baseline (traces start and resume near their baseline,
    whereas page borders and text sit away from it); a weak pull towards the baseline breaks ties
    between equally connected candidates.

    Returns
    -------
    (n_columns,) ndarray of int64
        Index into the run arrays of the chosen run per column, or -1 where the path is off trace.
    """
    n_cols = columns.size
    baseline_weight = 0.02
    off_trace_per_column = 0.1
    entry_weight = 0.5
    per_px = 1.0 / px_per_mm
    # Plain Python lists: columns hold one to a few runs, where numpy's per-call overhead dominates.
    node = (baseline_weight * ((centroid - baseline) / half_height) ** 2).tolist()
    entry = (entry_weight * np.abs(centroid - baseline) * per_px).tolist()
    tops, bottoms = top.tolist(), bottom.tolist()
    starts = first_index.tolist()
    ends = (first_index + np.minimum(counts, _MAX_RUNS_PER_COLUMN)).tolist()
    col_list = columns.tolist()

    prev_runs = range(starts[0], ends[0])
    prev_cost = [entry[r] + node[r] for r in prev_runs]
    prev_off = off_trace_per_column
    back: list[list[int]] = []  # per column: best previous run per current run (-1 = off trace)
    back_off: list[int] = []  # per column: best previous run for the off-trace state
    for j in range(1, n_cols):
        skipped = col_list[j] - col_list[j - 1] - 1
        skip_cost = off_trace_per_column * skipped
        runs = range(starts[j], ends[j])
        # Off trace now: from wherever was cheapest.
        best_prev, best_prev_cost = -1, prev_off
        for q, c in zip(prev_runs, prev_cost, strict=True):
            if c < best_prev_cost:
                best_prev, best_prev_cost = q, c
        new_off = best_prev_cost + off_trace_per_column * (skipped + 1)
        new_cost: list[float] = []
        new_back: list[int] = []
        for r in runs:
            t_r, b_r = tops[r], bottoms[r]
            best, arg = prev_off + entry[r] + skip_cost, -1
            for q, c in zip(prev_runs, prev_cost, strict=True):
                gap = max(0, t_r - bottoms[q] - 1, tops[q] - b_r - 1)
                total = c + gap * per_px + skip_cost
                if total < best:
                    best, arg = total, q
            new_cost.append(best + node[r])
            new_back.append(arg)
        back.append(new_back)
        back_off.append(best_prev)
        prev_runs, prev_cost, prev_off = runs, new_cost, new_off

    path = np.empty(n_cols, dtype=np.int64)
    state = -1
    best_final = prev_off
    for r, c in zip(prev_runs, prev_cost, strict=True):
        if c < best_final:
            state, best_final = r, c
    path[-1] = state
    for j in range(n_cols - 1, 0, -1):
        state = back_off[j - 1] if state < 0 else back[j - 1][state - starts[j]]
        path[j - 1] = state
    return path


class _RowRuns:
    """Horizontal runs of trace pixels through chosen points of a strip, to read steep strokes by row.

    A column samples a steep stroke badly: its run spans everything the pen drew during the column's
    time, so the run's centroid is the column-centre value only where the stroke is straight. A row
    crosses the stroke once, and the centre of that horizontal run is where the pen was when it
    passed the row's level, to a fraction of a pixel where the probability is graded. Near a peak
    both flanks share a row's run; the flank nearer the column is then one stroke in from the
    run's end (on the clean pages, reading those rows too took the exact masks from 17.4 to 18.2 dB).
    """

    def __init__(self, mask: np.ndarray, probability: np.ndarray, line_width: float) -> None:
        self._mask = mask
        self._probability = probability
        self._line_width = line_width
        #: Widest run (px) that is one stroke.
        self.max_width = line_width + _STEEP_ROW_SLACK_PX
        # Near a peak a row's run joins both flanks: up to two strokes and the gap between them.
        self._reach = int(np.ceil(2 * self.max_width + 1))

    def centres(self, rows: np.ndarray, cols: np.ndarray, *, flanks: bool) -> tuple[np.ndarray, np.ndarray]:
        """Return, per (row, column) on the trace, whether the row reads one stroke, and its centre.

        Parameters
        ----------
        rows, cols : ndarray of int
            Points on the trace, in band coordinates.
        flanks : bool
            Also read rows whose run joins two flanks of a peak (at most two strokes wide): their
            centre is then that of the flank nearer the column, one stroke in from the run's end.

        Returns
        -------
        usable : ndarray of bool
        centre : ndarray of float
            Probability-weighted centre of a one-stroke run, or the near flank's centre.
        """
        offsets = np.arange(-self._reach, self._reach + 1)
        win_cols = cols[:, None] + offsets
        inside = (win_cols >= 0) & (win_cols < self._mask.shape[1])
        win_cols = np.clip(win_cols, 0, self._mask.shape[1] - 1)
        ink = self._mask[rows[:, None], win_cols] & inside
        # The run through the centre: ink connected to it on each side.
        right = np.cumprod(ink[:, self._reach :], axis=1).astype(bool)
        left = np.cumprod(ink[:, self._reach :: -1], axis=1).astype(bool)[:, ::-1]
        in_run = np.hstack([left[:, :-1], right])
        width = in_run.sum(axis=1)
        closed = ~in_run[:, 0] & ~in_run[:, -1]
        one_stroke = closed & (width <= self.max_width)
        weight = np.where(in_run, self._probability[rows[:, None], win_cols], 0.0).astype(np.float64)
        mass = weight.sum(axis=1)
        centre = cols + (weight @ offsets.astype(np.float64)) / np.maximum(mass, 1e-12)
        usable = one_stroke & (mass > 0)
        if flanks:
            two_strokes = closed & ~one_stroke & (width <= 2 * self.max_width + 1)
            first = cols - self._reach + np.argmax(in_run, axis=1)
            inset = (self._line_width - 1) / 2.0
            left_flank, right_flank = first + inset, first + width - 1 - inset
            near = np.where(np.abs(left_flank - cols) <= np.abs(right_flank - cols), left_flank, right_flank)
            centre = np.where(two_strokes, near, centre)
            usable |= two_strokes
        return usable, centre

    def apex_x(self, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Return where each peak's apex lies within its column: the centre of the ink at its row.

        The apex of an R wave is rarely at a column's centre; placing the peak value there shifts it
        by up to half a column, a large error on the steep flanks around it.
        """
        usable, centre = self.centres(rows, cols, flanks=False)
        centre = np.where(usable, centre, cols)
        return np.clip(centre, cols - _APEX_SHIFT_LIMIT_PX, cols + _APEX_SHIFT_LIMIT_PX)

    def steep_crossings(
        self, cols: np.ndarray, top: np.ndarray, bottom: np.ndarray, fallback: np.ndarray
    ) -> np.ndarray:
        """Return, per steep column, the row at which the stroke's centre line crosses the column.

        Parameters
        ----------
        cols, top, bottom : ndarray of int
            Each steep column and the first and last row of its run.
        fallback : ndarray of float
            The current estimate (the run's centroid), kept where no clean crossing is seen.

        Returns
        -------
        ndarray of float
            Rows, in band coordinates.
        """
        out = fallback.astype(np.float64).copy()
        if cols.size == 0:
            return out
        heights = (bottom - top + 1).astype(np.int64)
        owner = np.repeat(np.arange(cols.size), heights)
        starts = np.cumsum(heights) - heights
        rows = (np.arange(owner.size) - starts[owner] + top[owner]).astype(np.int64)
        usable, centre = self.centres(rows, cols[owner].astype(np.int64), flanks=True)
        offset = centre - cols[owner]
        for k in range(cols.size):
            sl = slice(starts[k], starts[k] + heights[k])
            clean = usable[sl]
            if np.count_nonzero(clean) < 2:
                continue
            found = _zero_crossing(rows[sl][clean].astype(np.float64), offset[sl][clean], out[k])
            if found is not None:
                out[k] = found
        return out


def _zero_crossing(r: np.ndarray, d: np.ndarray, near: float) -> float | None:
    """Return the row where ``d`` (ordered by row) crosses zero nearest ``near``, or None.

    Zeros shared by several rows count once, at their mean row; a sign change counts only between
    adjacent rows, interpolated linearly.
    """
    candidates: list[float] = []
    zero = np.abs(d) < 1e-9
    if np.any(zero):
        candidates.append(float(np.mean(r[zero])))
    sign_change = np.nonzero((d[:-1] * d[1:] < 0) & (r[1:] - r[:-1] == 1))[0]
    for i in sign_change.tolist():
        candidates.append(r[i] + d[i] / (d[i] - d[i + 1]))
    if not candidates:
        return None
    return min(candidates, key=lambda y: abs(y - near))


def _main_segments(cols: np.ndarray, top: np.ndarray, bottom: np.ndarray, px_per_mm: float) -> np.ndarray:
    """Keep the stretches of the path that look like a trace: not short marks, not ruled pieces."""
    max_gap = max(2, round(_SEGMENT_GAP_MM * px_per_mm))
    breaks = np.nonzero(np.diff(cols) > max_gap)[0]
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks + 1, [cols.size]])
    keep = np.zeros(cols.size, dtype=bool)
    min_len = _MIN_SEGMENT_MM * px_per_mm
    for s, e in zip(starts, ends, strict=True):
        if cols[e - 1] - cols[s] + 1 >= min_len:
            keep[s:e] = True
    # A ruled line (a panel's frame, a grid line the segmenter marked) is dead straight; a trace
    # piece of 8 mm or more between gaps is not. The first and last pieces stay: they set where
    # the strip starts and ends, and a flat lead's only piece is its whole signal.
    kept = [(s, e) for s, e in zip(starts, ends, strict=True) if keep[s]]
    for s, e in kept[1:-1]:
        if np.ptp(top[s:e] + bottom[s:e]) / 2.0 <= _RULED_MAX_SPREAD_MM * px_per_mm:
            keep[s:e] = False
    return keep


def _column_polyline(
    cols: np.ndarray,
    top: np.ndarray,
    bottom: np.ndarray,
    centroid: np.ndarray,
    line_width: float,
    band_rows: int,
    row_runs: _RowRuns,
) -> tuple[np.ndarray, np.ndarray]:
    """Turn chosen runs into one point per column that keeps peaks.

    Along a steep stroke a column's run spans the height the stroke crosses in that column, and its
    centroid sits on the centre line. At a peak the run's outer end is the apex, so where a run's
    top (or bottom) is a local extreme among its neighbours and the run is taller than the stroke,
    that end, pulled in by half a stroke width, replaces the centroid, and ``row_runs`` places the
    apex within the column. On other tall runs (steep flanks) ``row_runs`` replaces the centroid by
    the row where the stroke's centre line crosses the column. Columns whose run is shared
    with another strip's stroke crossing ours (both ends far from the neighbours, for a few columns
    only) are dropped and left to interpolation.
    """
    half = line_width / 2.0
    y = centroid.astype(np.float64).copy()
    n = cols.size
    if n < 3:
        return cols.astype(np.float64), y
    tall = (bottom - top + 1) > line_width + 1
    prev_top, next_top = np.r_[top[0], top[:-1]], np.r_[top[1:], top[-1]]
    prev_bot, next_bot = np.r_[bottom[0], bottom[:-1]], np.r_[bottom[1:], bottom[-1]]
    up_peak = tall & (top < prev_top) & (top <= next_top)
    down_peak = tall & (bottom > prev_bot) & (bottom >= next_bot)
    # A column can hold both extremes (a spike narrower than a pixel column): keep the bigger excursion.
    up_gain = np.where(up_peak, centroid - (top + half), -np.inf)
    down_gain = np.where(down_peak, (bottom - half) - centroid, -np.inf)
    use_up = up_peak & (up_gain >= down_gain)
    use_down = down_peak & ~use_up
    y[use_up] = top[use_up] + half
    y[use_down] = bottom[use_down] - half
    x = cols.astype(np.float64)
    steep = np.nonzero(tall & ~use_up & ~use_down)[0]
    y[steep] = row_runs.steep_crossings(cols[steep], top[steep], bottom[steep], y[steep])
    peaks = np.nonzero(use_up | use_down)[0]
    x[peaks] = row_runs.apex_x(cols[peaks], np.round(y[peaks]).astype(np.int64))

    # A stroke of another strip crossing ours merges with our trace into one tall run. Our own
    # strokes start or end where our trace was; a crossing one passes through it, so the nearest
    # flat points on both sides lie well inside the run, and close by.
    index = np.arange(n)
    flat = ~tall
    left = np.maximum.accumulate(np.where(flat, index, -1))
    right = np.minimum.accumulate(np.where(flat, index, n)[::-1])[::-1]
    has_both = tall & (left >= 0) & (right < n)
    tol = 2.0 * line_width + 2.0
    y_left = np.where(has_both, centroid[np.clip(left, 0, n - 1)], np.nan)
    y_right = np.where(has_both, centroid[np.clip(right, 0, n - 1)], np.nan)
    with np.errstate(invalid="ignore"):
        inside_left = (y_left > top + tol) & (y_left < bottom - tol)
        inside_right = (y_right > top + tol) & (y_right < bottom - tol)
    # A tall run cut by the band edge comes from beyond the strip: a neighbour's stroke (our own
    # peaks stay inside the band, which reaches three quarters of the way to the next strip).
    touches_edge = (top <= 0) | (bottom >= band_rows - 1)
    # A foreign stroke crosses our trace within a few columns, between flat stretches; our own QRS
    # is tall for longer (its flanks, R and S), and its R-to-S flank passes the baseline too. Without
    # this bound the S waves of the clean pages were dropped (U-Net maps 16.6 -> 17.6 dB with it).
    brief = (
        cols[np.clip(right, 0, n - 1)] - cols[np.clip(left, 0, n - 1)]
        <= _CROSSING_MAX_COLUMNS_PER_WIDTH * line_width + 2
    )
    crossing = (has_both & brief & inside_left & inside_right) | (tall & touches_edge)
    keep = ~crossing
    return x[keep], y[keep]


def traces_to_record(
    traces: list[RowTrace | None],
    layout: PageLayout,
    *,
    fs_hz: float = DEFAULT_FS_HZ,
    name: str = "record",
) -> VectorizedLeads:
    """Convert followed strip traces into a 12-lead record in mV placed at true times.

    Parameters
    ----------
    traces : list of RowTrace or None
        One per strip of ``layout.rows`` (None where no trace was found).
    layout : PageLayout
        Lead placement, scale, speed and gain.
    fs_hz : float, optional
        Output sampling rate in Hz.
    name : str, optional
        Record name.

    Returns
    -------
    VectorizedLeads
        The record (12 standard leads, NaN where not shown) and each shown lead's confidence. It
        covers the 10 s an electrocardiograph acquires, or the strip's duration if longer: a
        50 mm/s print shows the first 5 s and the rest is NaN.

    Notes
    -----
    A lead printed twice (lead II in a 3x4 block and as the rhythm strip) is taken from its longest
    panel; the shorter panel only fills samples the longer one leaves empty.
    """
    n_samples = round(max(layout.duration_s, DEFAULT_DURATION_S) * fs_hz)
    signal = np.full((n_samples, len(STANDARD_LEADS)), np.nan)
    found_fraction: dict[str, float] = {}
    # Longest panels first, so that shorter duplicates only fill in.
    for panel in sorted(panel_signals(traces, layout, fs_hz=fs_hz), key=lambda p: p.start - p.stop):
        column = STANDARD_LEADS.index(panel.lead)
        target = signal[panel.start : panel.stop, column]
        empty = np.isnan(target)
        target[empty] = panel.mv[empty]
        found_fraction[panel.lead] = max(found_fraction.get(panel.lead, 0.0), panel.coverage)
    record = EcgRecord(name=name, signal_mv=signal, fs_hz=fs_hz, lead_names=STANDARD_LEADS)
    return VectorizedLeads(record=record, confidence=found_fraction)


@dataclass(frozen=True)
class PanelSignal:
    """One printed panel read off the page, in mV at record times.

    Attributes
    ----------
    lead : str
        The lead the layout says the panel shows.
    row : int
        Its strip.
    start, stop : int
        Record samples ``[start, stop)`` it covers at the output rate.
    mv : (stop - start,) ndarray of float
        The signal, NaN where no trace was found.
    coverage : float
        Fraction of the panel's columns with trace ink found.
    """

    lead: str
    row: int
    start: int
    stop: int
    mv: np.ndarray
    coverage: float


def panel_signals(
    traces: list[RowTrace | None], layout: PageLayout, *, fs_hz: float = DEFAULT_FS_HZ
) -> list[PanelSignal]:
    """Read every panel of ``layout`` off the followed strips, each at the record times it shows.

    Parameters
    ----------
    traces : list of RowTrace or None
        One per strip of ``layout.rows``.
    layout : PageLayout
        Lead placement, scale, speed and gain.
    fs_hz : float, optional
        Output sampling rate in Hz.

    Returns
    -------
    list of PanelSignal
        One per panel of a standard lead whose strip has a trace, in the layout's panel order.
    """
    n_samples = round(max(layout.duration_s, DEFAULT_DURATION_S) * fs_hz)
    t = np.arange(n_samples) / fs_hz
    px_per_mv = layout.px_per_mm * layout.mm_per_mv
    max_gap_px = _MAX_INTERPOLATED_GAP_MM * layout.px_per_mm
    out: list[PanelSignal] = []
    for lead, row, start_s, end_s, shift_s in layout.panels:
        trace = traces[row] if row < len(traces) else None
        if trace is None or lead not in STANDARD_LEADS:
            continue
        in_window = np.nonzero((t >= start_s - shift_s - 1e-9) & (t < end_s - shift_s - 1e-9))[0]
        if in_window.size == 0:
            continue
        x = strip_time_to_x(layout, row, t[in_window] + shift_s)
        y = _trace_height(trace, layout, row, x)
        col_index = np.round(x).astype(np.int64) - trace.x_first
        inside = (col_index >= 0) & (col_index < trace.found.size)
        near_ink = np.zeros(x.size, dtype=bool)
        if np.any(inside):
            near_ink[inside] = _within_gap(trace.found, max_gap_px)[col_index[inside]]
        mv = (layout.rows[row].baseline_px - y) / px_per_mv
        mv[~near_ink] = np.nan
        found_here = float(np.mean(trace.found[col_index[inside]])) if np.any(inside) else 0.0
        coverage = found_here * float(np.mean(inside))
        out.append(PanelSignal(lead, row, int(in_window[0]), int(in_window[-1]) + 1, mv, coverage))
    return out


def _within_gap(found: np.ndarray, max_gap_px: float) -> np.ndarray:
    """Mark columns that have ink or lie in a gap no wider than ``max_gap_px``."""
    ok = found.copy()
    idx = np.nonzero(found)[0]
    if idx.size < 2:
        return ok
    gaps = np.diff(idx)
    for start, width in zip(idx[:-1], gaps, strict=True):
        if 1 < width <= max_gap_px + 1:
            ok[start : start + width] = True
    return ok


def _trace_height(trace: RowTrace, layout: PageLayout, row: int, x: np.ndarray) -> np.ndarray:
    """Return the trace's row at columns ``x``, bridged over the strip's lead-separator bars.

    The followed trace climbs a bar where it crosses one; those points are the bar, not the
    signal (on the real photos bridging them scored +0.2 dB).
    """
    lead_changes = layout.lead_changes(row)
    keep = np.ones(trace.x_px.size, dtype=bool)
    for knot_x, knot_t in layout.time_knots(row):
        if knot_t in lead_changes:  # a rhythm strip's knots are columns, with no bar to bridge
            keep &= np.abs(trace.x_px - knot_x) > _SEPARATOR_BRIDGE_MM * layout.px_per_mm
    if np.count_nonzero(keep) < 2:
        keep[:] = True
    return np.interp(x, trace.x_px[keep], trace.y_px[keep])


def strip_time_to_x(layout: PageLayout, row: int, t_s: np.ndarray) -> np.ndarray:
    """Map times on a strip to page columns.

    Linear at the page's speed from the strip's start, or, where lead separators anchor the
    strip (``layout.row_time_knots``), piecewise linear through time zero and the separators and
    at the page's speed beyond the last one. Time zero is extrapolated from the first two knots
    when there are two or more (a calibration pulse's end, the strip's start, is read to a pixel
    or two: 1.6 px early on rendered scanner pages, which stretched the first lead of each strip).

    Parameters
    ----------
    layout : PageLayout
        The page layout.
    row : int
        Strip index.
    t_s : ndarray of float
        Times in seconds from the strip's start.

    Returns
    -------
    ndarray of float
        Page columns.
    """
    px_per_s = layout.px_per_mm * layout.mm_per_s
    x_start = layout.row_x_start_px[row]
    knots = layout.time_knots(row)
    if not knots:
        return x_start + t_s * px_per_s
    if len(knots) >= 2:
        (x1, t1), (x2, t2) = knots[0], knots[1]
        x_start = x1 - t1 * (x2 - x1) / (t2 - t1)
    knot_x = np.array([x_start, *(x for x, _ in knots)])
    knot_t = np.array([0.0, *(t for _, t in knots)])
    x = np.interp(t_s, knot_t, knot_x)
    beyond = t_s > knot_t[-1]
    x[beyond] = knot_x[-1] + (t_s[beyond] - knot_t[-1]) * px_per_s
    return x
