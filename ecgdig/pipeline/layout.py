"""Layout: find the strips of trace on a page, the calibration pulse, and which lead is where.

Strips are found from the trace mask alone: a strip of trace covers nearly every column near its
baseline, whereas lines of text cover a fraction. The number of strips selects a layout template
(``ecgdig/layouts/*.yaml``) unless the user names one. The calibration pulse (a 1 mV rectangle at
the start of a strip) gives the voltage gain in mm/mV and cross-checks the grid scale.

References
----------
.. [1] AHA/ACCF/HRS recommendations for the standardization of the electrocardiogram, Part I, 2007
       (calibration pulse: 1 mV, standard gain 10 mm/mV, standard speed 25 mm/s).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from scipy.ndimage import binary_closing, maximum_filter1d, uniform_filter1d
from scipy.signal import find_peaks

from ecgdig.errors import DigitizationError
from ecgdig.layouts import LayoutTemplate, layouts_by_strip_count, load_layout
from ecgdig.types import CalibrationPulse, PageLayout, RowBand, RowTrace

__all__ = [
    "DEFAULT_DURATION_S",
    "DEFAULT_MM_PER_MV",
    "DEFAULT_MM_PER_S",
    "STANDARD_GAINS_MM_PER_MV",
    "attach_lead_separators",
    "find_calibration_pulse",
    "find_lead_separators",
    "find_rows",
    "infer_layout",
    "layouts_for_row_count",
    "rescale_from_layout",
    "template_for_row_count",
]

DEFAULT_MM_PER_S = 25.0
DEFAULT_MM_PER_MV = 10.0
DEFAULT_DURATION_S = 10.0
STANDARD_GAINS_MM_PER_MV = (5.0, 10.0, 20.0)
#: Relative precision of a scale read from the calibration pulse's height.
_PULSE_SCALE_PRECISION = 0.04
#: Paper speeds the calibration pulse can reveal (the default first).
STANDARD_SPEEDS_MM_PER_S = (25.0, 50.0)
#: The calibration pulse lasts 0.2 s (IEC 60601-2-25; ecg-image-kit and the vendors we have seen):
#: 5 mm wide at 25 mm/s, 10 mm at 50 mm/s.
CALIBRATION_PULSE_S = 0.2

#: Strips closer than this (mm) are one strip.
_MIN_ROW_SPACING_MM = 8.0
#: A trace has ink in at least this fraction of the columns it spans; text does not.
_MIN_TRACE_CONTINUITY = 0.8
#: A strip covers at least this fraction of the best strip's column coverage.
_MIN_RELATIVE_COVERAGE = 0.55


def find_rows(probability: np.ndarray, px_per_mm: float, *, threshold: float = 0.5) -> list[RowBand]:
    """Find the horizontal strips of ECG trace on a page.

    Parameters
    ----------
    probability : (rows, cols) ndarray of float
        Trace probability in [0, 1].
    px_per_mm : float
        Page scale.
    threshold : float, optional
        Probability above which a pixel is trace.

    Returns
    -------
    list of RowBand
        Strips from top to bottom, each with a search band reaching three quarters of the way to
        its neighbours (tall complexes cross into the next strip).

    Raises
    ------
    DigitizationError
        If no strip of trace is found.
    """
    mask = probability >= threshold
    n_rows = mask.shape[0]
    reach = max(1, round(1.5 * px_per_mm))
    active = np.nonzero(mask.any(axis=0))[0]
    if active.size == 0:
        raise DigitizationError("no trace ink found on the page")
    coverage = _row_coverage(mask, px_per_mm, _trace_span(mask))
    smooth = uniform_filter1d(coverage, size=max(3, round(px_per_mm)), mode="nearest")
    span = slice(active[0], active[-1] + 1)
    best = float(smooth.max())
    if best < 0.2:
        raise DigitizationError(f"no strip of ECG trace found (best row coverage {best:.0%})")
    peaks, _ = find_peaks(
        smooth,
        height=_MIN_RELATIVE_COVERAGE * best,
        distance=max(1, round(_MIN_ROW_SPACING_MM * px_per_mm)),
        prominence=0.1 * best,
    )
    if peaks.size == 0:
        peaks = np.array([int(np.argmax(smooth))])
    ink_per_row = mask[:, span].sum(axis=1).astype(np.float64)
    baselines = []
    for p in peaks:
        # The isoelectric line is where the trace spends most of its time: the densest row nearby.
        lo_p, hi_p = max(0, p - 2 * reach), min(n_rows, p + 2 * reach + 1)
        baselines.append(float(lo_p + np.argmax(ink_per_row[lo_p:hi_p])))
    baselines_arr = np.asarray(baselines)
    bands = []
    for i, (b, p) in enumerate(zip(baselines_arr, peaks, strict=True)):
        above = b - baselines_arr[i - 1] if i > 0 else None
        below = baselines_arr[i + 1] - b if i + 1 < baselines_arr.size else None
        spacing_up = above if above is not None else (below if below is not None else 40 * px_per_mm)
        spacing_down = below if below is not None else spacing_up
        top = max(0, int(b - 0.75 * spacing_up))
        bottom = min(n_rows - 1, int(b + 0.75 * spacing_down))
        bands.append(RowBand(baseline_px=b, top_px=top, bottom_px=bottom, coverage=float(smooth[p])))
    return bands


def _trace_span(mask: np.ndarray) -> slice:
    """Return the columns the strips span: where the middle 98 % of the ink's columns lie.

    A speck at the page's edge (a scanner border, a header letter) must not widen the span, or
    every strip's coverage falls with it.
    """
    ink_per_col = mask.sum(axis=0).astype(np.float64)
    cdf = np.cumsum(ink_per_col) / max(1.0, float(ink_per_col.sum()))
    first = int(np.searchsorted(cdf, 0.01))
    last = int(np.searchsorted(cdf, 0.99))
    return slice(first, max(first + 1, last + 1))


def _row_coverage(mask: np.ndarray, px_per_mm: float, span: slice) -> np.ndarray:
    """Return, per page row, the fraction of the span's columns with ink near that row.

    "Near" is within 1.5 mm, and the row may wander by up to another 2 mm from one 10 mm block
    of columns to the next: a strip whose baseline drifts (lead III on ecg-image-kit pages drifts
    by several mm over 2.5 s) still covers its row, where one fixed row would lose half of it.
    """
    n_rows = mask.shape[0]
    reach = max(1, round(1.5 * px_per_mm))
    block = max(1, round(10.0 * px_per_mm))
    sub = mask[:, span]
    cum = np.vstack([np.zeros((1, sub.shape[1]), dtype=np.int32), np.cumsum(sub, axis=0, dtype=np.int32)])
    lo = np.clip(np.arange(n_rows) - reach, 0, n_rows)
    hi = np.clip(np.arange(n_rows) + reach + 1, 0, n_rows)
    ink_cols = (cum[hi] - cum[lo]) > 0
    n_blocks = max(1, sub.shape[1] // block)
    per_block = np.stack([chunk.mean(axis=1) for chunk in np.array_split(ink_cols, n_blocks, axis=1)], axis=1)
    wander = 2 * max(1, round(2.0 * px_per_mm)) + 1
    return maximum_filter1d(per_block, size=wander, axis=0, mode="nearest").mean(axis=1)


def layouts_for_row_count(n_rows: int) -> tuple[str, ...]:
    """Return the names of the layouts printed with ``n_rows`` strips, the usual one first.

    Parameters
    ----------
    n_rows : int
        Number of strips found.

    Returns
    -------
    tuple of str
        Layout names; empty if no shipped layout has that many strips.
    """
    return layouts_by_strip_count().get(n_rows, ())


def template_for_row_count(n_rows: int) -> LayoutTemplate:
    """Return the layout template assumed for a page showing ``n_rows`` strips.

    Parameters
    ----------
    n_rows : int
        Number of strips found.

    Returns
    -------
    LayoutTemplate
        The usual print with that many strips (4: ``3x4+1``, 6: ``3x4+3``, 12: ``12x1``...).

    Raises
    ------
    DigitizationError
        If no shipped layout has that many strips.
    """
    names = layouts_for_row_count(n_rows)
    if not names:
        raise DigitizationError(
            f"found {n_rows} strips of trace, which matches no known layout; pass --layout"
        )
    return load_layout(names[0])


def _drop_weakest_rows(
    rows: list[RowBand], traces: list[RowTrace | None]
) -> tuple[list[RowBand], list[RowTrace | None], int]:
    """Ignore strips that are not traces (text lines, stains) when choosing the layout.

    A strip whose followed trace has ink in fewer than ``_MIN_TRACE_CONTINUITY`` of its columns is
    broken like text, not continuous like a trace, and is dropped. If the number left still matches
    no layout, the ``k`` strips with the highest coverage are kept, in page order, for the largest
    known strip count ``k`` not above it.
    """
    continuous = [
        i for i, t in enumerate(traces) if t is not None and float(np.mean(t.found)) >= _MIN_TRACE_CONTINUITY
    ]
    if len(continuous) < len(rows) and len(continuous) in layouts_by_strip_count():
        keep = continuous
    else:
        counts = sorted(c for c in layouts_by_strip_count() if c <= len(rows))
        if len(rows) in layouts_by_strip_count() or not counts:
            return rows, traces, 0
        strength = [
            band.coverage if trace is not None else -1.0 for band, trace in zip(rows, traces, strict=True)
        ]
        keep = sorted(np.argsort(strength)[::-1][: counts[-1]].tolist())
    return [rows[i] for i in keep], [traces[i] for i in keep], len(rows) - len(keep)


def find_calibration_pulse(
    trace: RowTrace, baseline_px: float, px_per_mm: float
) -> tuple[float, float, float] | None:
    """Find a rectangular calibration pulse at the start of a strip's trace.

    Parameters
    ----------
    trace : RowTrace
        The strip's followed trace.
    baseline_px : float
        The strip's baseline row.
    px_per_mm : float
        Page scale.

    Returns
    -------
    tuple of (x_start_px, x_end_px, height_px) or None
        Rising and falling columns and the plateau height above the baseline, or None if the strip
        does not start with a pulse.
    """
    # The pulse lasts 0.2 s: 5 mm at 25 mm/s, 10 mm at 50 mm/s, after up to 3 mm of baseline.
    window = trace.x_px <= trace.x_first + 16 * px_per_mm
    x = trace.x_px[window]
    elevation = baseline_px - trace.y_px[window]
    # The smallest standard pulse is 5 mm (1 mV at 5 mm/mV); anything lower is a P or T wave.
    raised = elevation > 3.5 * px_per_mm
    if not np.any(raised):
        return None
    # The longest stretch of raised points.
    idx = np.nonzero(raised)[0]
    breaks = np.nonzero(np.diff(idx) > 1)[0]
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [idx.size - 1]])
    lengths = x[idx[ends]] - x[idx[starts]]
    k = int(np.argmax(lengths))
    x0, x1 = x[idx[starts[k]]], x[idx[ends[k]]]
    width_mm = (x1 - x0) / px_per_mm
    if not 1.5 <= width_mm <= 13.0 or (x0 - trace.x_first) > 3.0 * px_per_mm:
        return None
    plateau = elevation[idx[starts[k]] : idx[ends[k]] + 1]
    inner = plateau[plateau.size // 5 : max(plateau.size // 5 + 1, plateau.size - plateau.size // 5)]
    height = float(np.median(inner))
    if np.std(inner) > 0.3 * px_per_mm:
        return None
    # A pulse has vertical edges: within 0.6 mm before the plateau the trace is back near the baseline.
    before = elevation[(x >= x0 - 0.6 * px_per_mm) & (x < x0)]
    after = elevation[(x > x1) & (x <= x1 + 0.6 * px_per_mm)]
    for edge in (before, after):
        if edge.size and float(np.min(edge)) > 0.35 * height:
            return None
    return float(x0), float(x1), height


def _snap_gain(mm_per_mv: float) -> float:
    nearest = min(STANDARD_GAINS_MM_PER_MV, key=lambda g: abs(g / mm_per_mv - 1))
    return nearest if abs(nearest / mm_per_mv - 1) < 0.12 else mm_per_mv


def infer_layout(
    rows: list[RowBand],
    traces: list[RowTrace | None],
    px_per_mm: float,
    *,
    template: LayoutTemplate | None = None,
    mm_per_s: float | None = None,
    mm_per_mv: float | None = None,
    duration_s: float | None = None,
) -> PageLayout:
    """Decide lead placement, time origin and gain from the strips and their traces.

    Parameters
    ----------
    rows : list of RowBand
        Strips from :func:`find_rows`.
    traces : list of RowTrace or None
        The followed trace of each strip.
    px_per_mm : float
        Page scale from the grid.
    template : LayoutTemplate, optional
        Layout to use; by default chosen from the number of strips.
    mm_per_s : float, optional
        Paper speed; default from the calibration pulse's width (0.2 s), else 25 mm/s.
    mm_per_mv : float, optional
        Gain; default from the calibration pulse, else 10 mm/mV.
    duration_s : float, optional
        Time shown by a full strip; default 10 s at 25 mm/s, and at other speeds the strips'
        length to the nearest 0.5 s (a 250 mm strip holds 5 s at 50 mm/s).

    Returns
    -------
    PageLayout
        Everything :func:`ecgdig.pipeline.vectorize.traces_to_record` needs.

    Raises
    ------
    DigitizationError
        If no strip has a trace.
    """
    warnings: list[str] = []
    usable = [i for i, t in enumerate(traces) if t is not None]
    if not usable:
        raise DigitizationError("no trace could be followed on any strip")
    if template is None:
        # Only when guessing the layout: a user-given layout says how many strips to expect.
        rows, traces, dropped = _drop_weakest_rows(rows, traces)
        if dropped:
            warnings.append(
                f"{len(rows) + dropped} strips found; {dropped} that look like text or noise (broken, or "
                "least covered) were ignored; pass --layout if this is wrong"
            )
        template = template_for_row_count(len(rows))
    elif template.n_rows != len(rows):
        warnings.append(
            f"layout {template.name} has {template.n_rows} strips but {len(rows)} were found; "
            "strips are matched from the top"
        )
    pulses: list[CalibrationPulse] = []
    x_start: list[float] = []
    x_end: list[float] = []
    for i, (band, trace) in enumerate(zip(rows, traces, strict=True)):
        if trace is None:
            x_start.append(np.nan)
            x_end.append(np.nan)
            continue
        start = float(trace.x_first)
        found = find_calibration_pulse(trace, band.baseline_px, px_per_mm)
        if found is not None:
            p0, p1, height = found
            pulses.append(CalibrationPulse(row=i, x_start_px=p0, x_end_px=p1, height_px=height))
            # Printers (and ecg-image-kit) start the signal where the pulse falls back.
            start = p1
        x_start.append(start)
        x_end.append(float(trace.x_last))
    starts = np.asarray(x_start)
    ends = np.asarray(x_end)
    # Strips of one page share their time origin; an outlier start means a faint or clipped start.
    median_start = float(np.nanmedian(starts))
    median_end = float(np.nanmedian(ends))
    tolerance = 3.0 * px_per_mm
    starts = np.where(np.isnan(starts) | (np.abs(starts - median_start) > tolerance), median_start, starts)
    ends = np.where(np.isnan(ends) | (np.abs(ends - median_end) > tolerance), median_end, ends)

    gain_source = "default"
    gain = DEFAULT_MM_PER_MV
    if mm_per_mv:
        gain, gain_source = float(mm_per_mv), "user"
    elif pulses:
        measured = float(np.median([p.height_px for p in pulses])) / px_per_mm
        gain = _snap_gain(measured)
        gain_source = "pulse"
        if abs(measured / gain - 1) > 0.03:
            warnings.append(
                f"calibration pulse is {measured:.2f} mm tall, {100 * (measured / gain - 1):+.1f}% off "
                f"{gain:g} mm/mV: check the scale"
            )
    else:
        warnings.append("no calibration pulse found; assuming 10 mm/mV")

    speed, speed_source = _paper_speed(pulses, px_per_mm, mm_per_s)
    if speed_source == "pulse" and speed != DEFAULT_MM_PER_S:
        warnings.append(
            f"calibration pulse is {CALIBRATION_PULSE_S * speed:g} mm wide: read at {speed:g} mm/s "
            "(pass --mm-per-s if wrong)"
        )
    span_s = float(np.median(ends - starts)) / px_per_mm / speed
    duration_source = "user" if duration_s else "default"
    if not duration_s:
        duration_s = DEFAULT_DURATION_S
        if speed != DEFAULT_MM_PER_S:
            # Printers fill the strip's width, so at another speed it holds another duration.
            duration_s = float(np.clip(round(2 * span_s) / 2, 0.5, DEFAULT_DURATION_S))
            duration_source = "strips"
    if abs(span_s / duration_s - 1) > 0.08:
        warnings.append(
            f"strips span {span_s:.2f} s at {speed:g} mm/s, not the {duration_s:g} s expected; "
            "check --mm-per-s and --layout"
        )

    panels = tuple(
        (p.lead, p.row, *p.time_window_s(duration_s), p.shift_fraction * duration_s)
        for p in template.panels()
        if p.row < len(rows)
    )
    return PageLayout(
        template_name=template.name,
        rows=tuple(rows),
        row_x_start_px=tuple(float(s) for s in starts),
        row_x_end_px=tuple(float(e) for e in ends),
        px_per_mm=px_per_mm,
        mm_per_s=speed,
        mm_per_mv=gain,
        duration_s=duration_s,
        panels=panels,
        pulses=tuple(pulses),
        gain_source=gain_source,
        speed_source=speed_source,
        duration_source=duration_source,
        warnings=tuple(warnings),
    )


def _paper_speed(
    pulses: list[CalibrationPulse], px_per_mm: float, mm_per_s: float | None
) -> tuple[float, str]:
    """Return the paper speed and its source: the user's, the calibration pulses' width, or 25 mm/s.

    Only a standard speed within 20% of the pulses' median width is believed; other widths (some
    printers draw narrower pulses) leave the default.
    """
    if mm_per_s:
        return float(mm_per_s), "user"
    if pulses:
        width_mm = float(np.median([p.x_end_px - p.x_start_px for p in pulses])) / px_per_mm
        measured = width_mm / CALIBRATION_PULSE_S
        nearest = min(STANDARD_SPEEDS_MM_PER_S, key=lambda speed: abs(speed / measured - 1))
        if abs(nearest / measured - 1) < 0.2:
            return nearest, "pulse"
    return DEFAULT_MM_PER_S, "default"


def rescale_from_layout(layout: PageLayout) -> tuple[float, str] | None:
    """Re-derive px/mm when the grid gave none: from the strip length, else the calibration pulse.

    Full strips show the template's duration at the layout's paper speed (ecg-image-kit and most
    printers fill the strip with exactly 10 s), so their length measures the time axis directly,
    which is the axis the score is most sensitive to. It is taken first: on the rendered phone
    pages whose grid was doubtful it scored 1.6 dB better than the pulse (which snaps to a gain
    and is a few pixels tall on a blurred photo). The calibration pulse (1 mV, printed 5, 10 or
    20 mm tall) is the fallback when the strips give no plausible length.

    Parameters
    ----------
    layout : PageLayout
        A layout inferred at a doubtful scale.

    Returns
    -------
    tuple of (px_per_mm, method) or None
        The new scale and a description, or None if neither cue is usable or the change would be
        implausibly large (more than 30%).
    """
    spans = np.asarray(layout.row_x_end_px) - np.asarray(layout.row_x_start_px)
    spans = spans[np.isfinite(spans) & (spans > 0)]
    # A duration measured from the strips at this scale cannot correct the scale.
    if spans.size and layout.duration_source != "strips":
        candidate = float(np.median(spans)) / (layout.duration_s * layout.mm_per_s)
        if _plausible_rescale(candidate, layout.px_per_mm):
            return candidate, f"the strip length ({layout.duration_s:g} s at {layout.mm_per_s:g} mm/s)"
    if layout.pulses:
        height_px = float(np.median([p.height_px for p in layout.pulses]))
        gain = _snap_gain(height_px / layout.px_per_mm)
        candidate = height_px / gain
        # A pulse is 40-160 px tall and its top and baseline are each read to a pixel or so: a
        # smaller disagreement with the (doubtful) grid is within its own error.
        disagrees = abs(candidate / layout.px_per_mm - 1) > _PULSE_SCALE_PRECISION
        if gain in STANDARD_GAINS_MM_PER_MV and disagrees and _plausible_rescale(candidate, layout.px_per_mm):
            return candidate, f"the calibration pulse ({gain:g} mm = 1 mV)"
    return None


def _plausible_rescale(candidate: float, current: float) -> bool:
    """Accept a re-derived scale within 30% of the grid's: further off, the cue itself is suspect."""
    return 0.7 < candidate / current < 1.3


#: Lead-separator bars: extent above and below the baseline (mm), and the straightness tolerance.
_SEPARATOR_MIN_HALF_MM = 1.5
_SEPARATOR_MAX_HALF_MM = 6.0
_SEPARATOR_EDGE_TOLERANCE_MM = 0.25
#: Vertical closing of the ink mask before the bars' columns are read (gaps of up to 2 px bridged).
_BAR_GAP_CLOSING = np.ones((3, 1), dtype=bool)
#: A bar is looked for this fraction of the strip's length either side of its uniform-scale place
#: (the real photos are stretched up to 3-4% locally).
_SEPARATOR_SEARCH_FRACTION = 0.04
#: A rhythm strip starting within this of the panel strips' median start shares their columns.
_ALIGNED_START_TOLERANCE_MM = 2.0


def find_lead_separators(
    probability: np.ndarray,
    band: RowBand,
    trace: RowTrace,
    expected_x_px: Sequence[float],
    tolerance_px: float,
    px_per_mm: float,
    *,
    threshold: float = 0.5,
) -> list[float | None]:
    """Locate the short vertical bars some printers draw where one lead hands over to the next.

    A bar is a run of straight, full-height columns crossing the baseline: ink from at least
    1.5 mm above to 1.5 mm below it, ending within 6 mm on both sides, with the same top and
    bottom (to 0.25 mm) in each of its columns, and wider than the trace. QRS strokes near a
    boundary are slanted, thinner or reach further.

    Parameters
    ----------
    probability : (rows, cols) ndarray of float
        Trace probability of the page.
    band : RowBand
        The strip.
    trace : RowTrace
        Its followed trace (the bars are centred on the pen's level near them).
    expected_x_px : sequence of float
        Where each boundary would be at a uniform time scale.
    tolerance_px : float
        How far from the expected column a bar is looked for.
    px_per_mm : float
        Page scale.
    threshold : float, optional
        Probability counted as ink.

    Returns
    -------
    list of float or None
        Per expected boundary, the centre column of the bar nearest to it, or None.
    """
    height, width = probability.shape
    reach = round((_SEPARATOR_MAX_HALF_MM + 1) * px_per_mm)
    found: list[float | None] = []
    for expected in expected_x_px:
        # Bars sit on the pen's resting level there, which a bowed or tilted strip moves.
        near = np.abs(trace.x_px - expected) <= tolerance_px + 10 * px_per_mm
        level = float(np.median(trace.y_px[near])) if np.any(near) else band.baseline_px
        top = max(0, round(level) - reach)
        ink = probability[top : min(height, round(level) + reach + 1)] >= threshold
        # On photos the map has one-pixel holes in a bar where the trace crosses it or the print is
        # faint; closing them vertically keeps the bar's columns whole (photos 7.69 -> 7.72 dB).
        ink = binary_closing(ink, structure=_BAR_GAP_CLOSING)
        c0 = max(0, int(expected - tolerance_px))
        c1 = min(width, int(expected + tolerance_px) + 1)
        extents = [_run_through_baseline(ink[:, c], level - top, px_per_mm) for c in range(c0, c1)]
        bars = _straight_bars(extents, c0, px_per_mm, trace.line_width_px)
        found.append(min(bars, key=lambda x: abs(x - expected)) if bars else None)
    return found


def _run_through_baseline(column: np.ndarray, baseline: float, px_per_mm: float) -> tuple[int, int] | None:
    """Top and bottom row of a column's ink run that spans a separator's height across the baseline."""
    lo = round(baseline - _SEPARATOR_MIN_HALF_MM * px_per_mm)
    hi = round(baseline + _SEPARATOR_MIN_HALF_MM * px_per_mm)
    if lo < 0 or hi >= column.size or not column[lo : hi + 1].all():
        return None
    top = lo
    while top > 0 and column[top - 1]:
        top -= 1
    bottom = hi
    while bottom < column.size - 1 and column[bottom + 1]:
        bottom += 1
    longest = _SEPARATOR_MAX_HALF_MM * px_per_mm
    if baseline - top > longest or bottom - baseline > longest:
        return None
    return top, bottom


def _straight_bars(
    extents: list[tuple[int, int] | None], first_column: int, px_per_mm: float, line_width_px: float
) -> list[float]:
    """Centres of runs of adjacent columns with one top and one bottom, wider than the trace."""
    bars: list[float] = []
    edge = _SEPARATOR_EDGE_TOLERANCE_MM * px_per_mm
    min_width = max(2, round(1.2 * line_width_px))
    k = 0
    while k < len(extents):
        if extents[k] is None:
            k += 1
            continue
        end = k
        while end + 1 < len(extents) and extents[end + 1] is not None:
            end += 1
        group = np.array(extents[k : end + 1], dtype=float)
        # Blur rounds a bar's outer columns: keep the longest stretch that shares the median ends.
        straight = np.all(np.abs(group - np.median(group, axis=0)) <= edge, axis=1)
        run_start, run_length = _longest_true_run(straight)
        if run_length >= min_width:
            bars.append(first_column + k + run_start + (run_length - 1) / 2)
        k = end + 1
    return bars


def _longest_true_run(mask: np.ndarray) -> tuple[int, int]:
    """Start and length of the longest run of True in a boolean vector ((0, 0) if none)."""
    best = (0, 0)
    start = None
    for i, value in enumerate([*mask.tolist(), False]):
        if value and start is None:
            start = i
        elif not value and start is not None:
            if i - start > best[1]:
                best = (start, i - start)
            start = None
    return best


def attach_lead_separators(
    layout: PageLayout, probability: np.ndarray, traces: Sequence[RowTrace | None]
) -> PageLayout:
    """Anchor each strip's time axis at the lead separators printed on it.

    A photographed or curled page stretches time unevenly along a strip, which one scale per page
    cannot follow; where a printer drew a bar at each lead change (ecg-image-kit does, and many
    vendors), the bar's column is the exact time of the change. A boundary whose bar was not
    found on a strip takes the median column of the bars found at that boundary on the other
    strips: on a rectified page one boundary is one vertical line, while the strips' starts (the
    calibration pulses' ends) scatter by a few pixels, so an offset from the strip's own start
    carried that scatter into the time axis (real photos 7.19 -> 7.69 dB, with one strip enough
    to place a boundary). Rhythm strips have no boundaries and keep the page's scale.

    Parameters
    ----------
    layout : PageLayout
        The page's layout (strips, starts, panels).
    probability : (rows, cols) ndarray of float
        Trace probability of the page.
    traces : sequence of RowTrace or None
        The followed trace of each of ``layout.rows``.

    Returns
    -------
    PageLayout
        ``layout`` with ``row_time_knots`` set.
    """
    px_per_s = layout.px_per_mm * layout.mm_per_s
    found_per_row: list[dict[float, float]] = []
    columns_px: dict[float, list[float]] = {}
    boundaries_per_row = [list(layout.lead_changes(row)) for row in range(len(layout.rows))]
    strips = zip(layout.rows, traces, boundaries_per_row, strict=True)
    for row, (band, trace, boundaries) in enumerate(strips):
        x_start = layout.row_x_start_px[row]
        found: dict[float, float] = {}
        if trace is not None and boundaries:
            expected = [x_start + t * px_per_s for t in boundaries]
            tolerance = _SEPARATOR_SEARCH_FRACTION * layout.duration_s * px_per_s
            bars = find_lead_separators(probability, band, trace, expected, tolerance, layout.px_per_mm)
            found = {t: x for t, x in zip(boundaries, bars, strict=True) if x is not None}
            for t, x in found.items():
                columns_px.setdefault(t, []).append(x)
        found_per_row.append(found)
    boundary_columns = {t: float(np.median(xs)) for t, xs in columns_px.items()}
    separated_starts = [layout.row_x_start_px[r] for r, b in enumerate(boundaries_per_row) if b]
    knots: list[tuple[tuple[float, float], ...]] = []
    for row, (found, boundaries) in enumerate(zip(found_per_row, boundaries_per_row, strict=True)):
        if not boundaries and _shares_columns(layout.row_x_start_px[row], separated_starts, layout.px_per_mm):
            # A rhythm strip runs under the panels, simultaneous with them: the boundary columns
            # found above are its clock too (a curled sheet stretches it just as much).
            boundaries = sorted(boundary_columns)
        for t in set(boundaries) - found.keys():
            if t in boundary_columns:
                found[t] = boundary_columns[t]
        knots.append(tuple((x, t) for t, x in sorted(found.items())))
    return replace(layout, row_time_knots=tuple(knots))


def _shares_columns(x_start_px: float, other_starts_px: Sequence[float], px_per_mm: float) -> bool:
    """Whether a strip starting at ``x_start_px`` is aligned with the strips that start elsewhere."""
    if not other_starts_px:
        return False
    return abs(x_start_px - float(np.median(other_starts_px))) <= _ALIGNED_START_TOLERANCE_MM * px_per_mm
