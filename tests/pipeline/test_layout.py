from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from synthetic import PX_PER_MM, draw_strips, ecg_like

from ecgdig.errors import DigitizationError
from ecgdig.leads import limb_lead_inconsistency
from ecgdig.metrics import score_record
from ecgdig.pipeline.digitize import DigitizeOptions, vectorize_probability
from ecgdig.pipeline.layout import (
    attach_lead_separators,
    find_lead_separators,
    find_rows,
    infer_layout,
    layouts_for_row_count,
    rescale_from_layout,
    template_for_row_count,
)
from ecgdig.pipeline.vectorize import follow_trace, strip_time_to_x, traces_to_record
from ecgdig.render import RenderSettings, render_page


@pytest.mark.parametrize("mm_per_mv", [5.0, 10.0, 20.0])
def test_calibration_pulse_gives_the_gain(mm_per_mv: float) -> None:
    # Prepare: pulses 1 mV tall at the given gain, before each of four strips.
    fs = 500.0
    strips = [ecg_like(fs, 10.0, seed=s, amplitude_mv=0.8) for s in range(4)]
    prob, _, x_start = draw_strips(strips, fs, mm_per_mv=mm_per_mv, pulse=True, row_spacing_mm=45.0)

    # Execute
    rows = find_rows(prob, PX_PER_MM)
    traces = [follow_trace(prob, r, PX_PER_MM) for r in rows]
    layout = infer_layout(rows, traces, PX_PER_MM)

    # Assert: gain read from the pulse; time zero where the pulse falls (within 1 mm = 0.04 s).
    assert layout.gain_source == "pulse"
    assert layout.mm_per_mv == mm_per_mv
    assert len(layout.pulses) >= 3
    assert all(abs(s - x_start) < PX_PER_MM for s in layout.row_x_start_px)


def test_no_pulse_defaults_to_10_mm_per_mv_with_a_warning() -> None:
    fs = 500.0
    prob, _, _ = draw_strips([ecg_like(fs, 10.0, seed=s) for s in range(4)], fs)
    rows = find_rows(prob, PX_PER_MM)
    layout = infer_layout(rows, [follow_trace(prob, r, PX_PER_MM) for r in rows], PX_PER_MM)
    assert layout.mm_per_mv == 10.0 and layout.gain_source == "default"
    assert any("no calibration pulse" in w for w in layout.warnings)


def test_row_count_selects_template() -> None:
    assert template_for_row_count(4).name == "3x4+1"
    assert template_for_row_count(12).name == "12x1"
    with pytest.raises(DigitizationError, match="8 strips"):
        template_for_row_count(8)
    # Six strips are ambiguous: the usual guess first, then what the limb leads may choose instead.
    assert layouts_for_row_count(6) == ("3x4+3", "6x2", "6x1")
    assert template_for_row_count(6).name == "3x4+3"
    # Seven and thirteen: a cart's order first, then ecg-image-kit's own.
    assert layouts_for_row_count(7) == ("6x2+1", "eik-6x2+1")
    assert layouts_for_row_count(13) == ("12x1+1", "eik-12x1+1")
    assert layouts_for_row_count(8) == ()


def test_blank_page_has_no_rows() -> None:
    with pytest.raises(DigitizationError, match="no trace ink"):
        find_rows(np.zeros((800, 1000), dtype=np.float32), PX_PER_MM)


def test_an_extra_text_strip_is_ignored_with_a_warning() -> None:
    # Prepare: a 3x4+1 page plus a weak fifth "strip" (a dashed line, like a line of text).
    fs = 500.0
    prob, _, _ = draw_strips([ecg_like(fs, 10.0, seed=s) for s in range(4)], fs)
    text_row = round(15 * PX_PER_MM)
    for start in range(120, 2100, 40):
        prob[text_row : text_row + 3, start : start + 30] = 1.0
    # The text line covers enough columns to count as a strip, and 5 strips would fit 3x4+2.
    rows = find_rows(prob, PX_PER_MM)
    assert len(rows) == 5

    # Execute
    layout = infer_layout(rows, [follow_trace(prob, r, PX_PER_MM) for r in rows], PX_PER_MM)

    # Assert
    assert layout.template_name == "3x4+1"
    assert rows[0] not in layout.rows
    assert any("look like text or noise" in w for w in layout.warnings)


def _pulsed_layout_at(assumed_px_per_mm: float):
    """A 4-strip page with pulses drawn at PX_PER_MM, laid out as if the grid said ``assumed``."""
    fs = 500.0
    strips = [ecg_like(fs, 10.0, seed=s, amplitude_mv=0.8) for s in range(4)]
    prob, _, _ = draw_strips(strips, fs, mm_per_mv=10.0, pulse=True, row_spacing_mm=45.0)
    rows = find_rows(prob, PX_PER_MM)
    traces = [follow_trace(prob, r, PX_PER_MM) for r in rows]
    return infer_layout(rows, traces, assumed_px_per_mm)


@pytest.mark.parametrize(
    ("grid_error", "strip_fraction", "cue", "tolerance"),
    [
        # The grid was read 20% too coarse; the 10 s strips still span 250 mm at the true scale.
        (1.2, 1.0, "strip length", 0.02),
        # Strips cut to a fifth of their length (a clipped photo) imply an absurd scale: the pulse.
        (1.05, 0.2, "calibration pulse", 0.05),
    ],
)
def test_doubtful_scale_is_rederived_from_strips_then_pulse(
    grid_error: float, strip_fraction: float, cue: str, tolerance: float
) -> None:
    layout = _pulsed_layout_at(PX_PER_MM * grid_error)
    ends = tuple(
        s + strip_fraction * (e - s) for s, e in zip(layout.row_x_start_px, layout.row_x_end_px, strict=True)
    )
    rescued = rescale_from_layout(replace(layout, row_x_end_px=ends))
    assert rescued is not None
    px_per_mm, how = rescued
    assert cue in how
    assert px_per_mm == pytest.approx(PX_PER_MM, rel=tolerance)


def test_a_pulse_within_its_own_precision_of_the_grid_leaves_the_grid_scale() -> None:
    # The grid read 1% coarse (doubtful) and the strips are clipped: the pulse is the only cue,
    # and a pulse height is not read to better than about 4%.
    layout = _pulsed_layout_at(PX_PER_MM * 1.01)
    clipped = tuple(
        s + 0.2 * (e - s) for s, e in zip(layout.row_x_start_px, layout.row_x_end_px, strict=True)
    )
    assert rescale_from_layout(replace(layout, row_x_end_px=clipped)) is None


def test_no_rescale_when_no_cue_is_plausible() -> None:
    layout = _pulsed_layout_at(PX_PER_MM)
    hopeless = replace(layout, row_x_end_px=tuple(s + 10.0 for s in layout.row_x_start_px), pulses=())
    assert rescale_from_layout(hopeless) is None


def _limb_consistent(record):
    """The synthetic record with limb leads derived from I and II, as real limb leads are."""
    sig = record.signal_mv.copy()
    i, ii = sig[:, 0], sig[:, 1]
    iii = ii - i
    sig[:, 2], sig[:, 3], sig[:, 4], sig[:, 5] = iii, -(i + ii) / 2, (i - iii) / 2, (ii + iii) / 2
    return replace(record, signal_mv=sig)


def test_a_6x2_page_whose_limb_leads_disagree_somewhat_is_still_read_as_6x2(record) -> None:
    # Prepare: limb leads that obey the identities only roughly (independent 0.25 mV wander on
    # each), as a blurred page digitizes them: the right reading's residual is then about 0.6 of
    # the wrong one's, where a blurred real-model page sat (0.55 against 0.86).
    consistent = _limb_consistent(record)
    rng = np.random.default_rng(0)
    t = np.arange(consistent.n_samples) / consistent.fs_hz
    signal = consistent.signal_mv.copy()
    for lead in range(6):
        signal[:, lead] += 0.25 * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * t + rng.uniform(0, 6))
    page = render_page(replace(consistent, signal_mv=signal), RenderSettings(dpi=200, layout="6x2"), rng=0)

    # Execute
    vectorized = vectorize_probability((page.trace_mask > 0).astype(np.float32), page.px_per_mm)

    # Assert
    assert vectorized.layout.template_name == "6x2"


def test_limb_lead_identities_hold_for_real_leads_and_not_for_shuffled_ones(record) -> None:
    consistent = _limb_consistent(record)
    assert limb_lead_inconsistency(consistent.signal_mv, consistent.lead_names) < 0.01
    shuffled = consistent.signal_mv[:, [6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5]]
    assert limb_lead_inconsistency(shuffled, consistent.lead_names) > 0.3
    assert limb_lead_inconsistency(consistent.signal_mv[:, 6:], consistent.lead_names[6:]) is None


@pytest.mark.parametrize("printed", ["6x2", "3x4+3"])
def test_six_strip_pages_are_read_with_the_layout_their_limb_leads_obey(record, printed: str) -> None:
    # Prepare: a page printed with six strips; the digitizer is not told which layout.
    page = render_page(_limb_consistent(record), RenderSettings(dpi=200, layout=printed), rng=0)
    probability = (page.trace_mask > 0).astype(np.float32)

    # Execute
    vectorized = vectorize_probability(probability, page.px_per_mm)

    # Assert: the layout that was printed, said in a warning when it is not the usual guess.
    assert vectorized.layout.template_name == printed
    assert any("6x2" in w for w in vectorized.warnings) == (printed == "6x2")


@pytest.mark.parametrize(("mm_per_s", "pulse"), [(50, True), (25, True), (50, False)])
def test_paper_speed_is_read_from_the_calibration_pulse_width(record, mm_per_s: int, pulse: bool) -> None:
    # Prepare: a page printed at the given speed; at 50 mm/s its strips hold 5 s, not 10 s.
    settings = RenderSettings(dpi=200, layout="3x4+1", mm_per_s=mm_per_s, calibration_pulse=pulse)
    page = render_page(record, settings, rng=0)
    probability = (page.trace_mask > 0).astype(np.float32)

    # Execute
    vectorized = vectorize_probability(probability, page.px_per_mm)

    # Assert: a 10 mm pulse (0.2 s) means 50 mm/s and a strip of the printed length, and the
    # leads match the reference; without a pulse nothing tells the speed, and 25 mm/s is assumed.
    layout = vectorized.layout
    printed_s = page.truth["strip_duration_s"]
    if pulse:
        assert (layout.mm_per_s, layout.speed_source) == (mm_per_s, "pulse")
        assert layout.duration_s == printed_s
        assert layout.duration_source == ("default" if mm_per_s == 25 else "strips")
        assert any("50 mm/s" in w for w in layout.warnings) == (mm_per_s == 50)
        assert vectorized.record.n_samples == page.reference.n_samples
        assert np.mean([s.snr_db for s in score_record(vectorized.record, page.reference)]) > 10
    else:
        assert (layout.mm_per_s, layout.speed_source, layout.duration_s) == (25, "default", 10.0)


def test_user_speed_wins_and_sets_the_strip_duration(record) -> None:
    page = render_page(record, RenderSettings(dpi=200, layout="3x4+1", mm_per_s=50), rng=0)
    probability = (page.trace_mask > 0).astype(np.float32)
    layout = vectorize_probability(probability, page.px_per_mm, options=DigitizeOptions(mm_per_s=50)).layout
    assert (layout.mm_per_s, layout.speed_source) == (50, "user")
    assert layout.duration_s == page.truth["strip_duration_s"]


def _ink_page(record, **settings):
    """A rendered page and its ink (traces, pulses and lead separators) as a probability map."""
    page = render_page(
        record,
        RenderSettings(
            dpi=200, layout="3x4+1", grid_colour="none", header_text=False, footer_text=False,
            lead_names=False, **settings,
        ),
        rng=0,
    )  # fmt: skip
    return page, (page.image.mean(axis=2) < 128).astype(np.float32)


@pytest.mark.parametrize("separators", [True, False])
def test_lead_separators_are_found_where_printed_and_nowhere_else(record, separators: bool) -> None:
    # Prepare: a page with (or without) a bar at every lead change; QRS complexes lie near several.
    page, ink = _ink_page(record, lead_separators=separators)
    layout = vectorize_probability(ink, page.px_per_mm).layout

    # Execute
    found = [x for row in layout.row_time_knots[:3] for x, _ in row]

    # Assert: each printed bar within half a millimetre; no bar invented on a page without them.
    # The rhythm strip below, printed with no bars, keeps time by the bars' columns above it.
    printed = sorted(x for x, _ in page.truth["lead_separators"])
    if separators:
        assert len(found) == len(printed) == 9
        assert np.max(np.abs(np.sort(found) - printed)) < 0.5 * page.px_per_mm
        bars = [knot for row in layout.row_time_knots[:3] for knot in row]
        columns = [(float(np.median([x for x, u in bars if u == t])), t) for t in (2.5, 5.0, 7.5)]
        assert layout.row_time_knots[3] == tuple(columns)
    else:
        assert not any(layout.row_time_knots)


def test_separators_carry_the_time_axis_through_an_uneven_stretch(record) -> None:
    # Prepare: a page whose horizontal scale drifts from 5% short on the left to 5% long on the
    # right (a curled or tilted photo), with its ends in place.
    page, ink = _ink_page(record, lead_separators=True)

    # Execute
    read = vectorize_probability(_stretched_unevenly(ink), page.px_per_mm)
    plain = traces_to_record(read.traces, replace(read.layout, row_time_knots=()))

    # Assert: the separators give each lead its own scale; one page-wide scale cannot.
    def mean_snr(rec) -> float:
        return float(np.nanmean([s.snr_db for s in score_record(rec, page.reference)]))

    assert any(read.layout.row_time_knots)
    assert mean_snr(read.record) > mean_snr(plain.record) + 3


def test_a_bar_with_holes_is_still_a_bar(record) -> None:
    # Prepare: every bar gets one-pixel gaps 1 mm above and below the pen's level, as photos do
    # where the trace crosses a bar or the print is faint.
    page, ink = _ink_page(record, lead_separators=True)
    read = vectorize_probability(ink, page.px_per_mm)
    half_width = round(0.6 * page.px_per_mm)
    for x, y in page.truth["lead_separators"]:
        for dy in (-page.px_per_mm, page.px_per_mm):
            ink[round(y + dy), round(x) - half_width : round(x) + half_width + 1] = 0

    # Execute
    found = []
    panel_strips = zip(read.layout.rows[:3], read.traces[:3], strict=True)
    for row, (band, trace) in enumerate(panel_strips):
        expected = [x for x, _ in read.layout.row_time_knots[row]]
        found += find_lead_separators(ink, band, trace, expected, 4 * page.px_per_mm, page.px_per_mm)

    # Assert: all nine, each where it is printed.
    printed = sorted(x for x, _ in page.truth["lead_separators"])
    assert None not in found and len(found) == 9
    assert np.max(np.abs(np.sort(found) - printed)) < 0.5 * page.px_per_mm


def test_a_strip_missing_a_bar_takes_the_column_of_the_others(record) -> None:
    # Prepare: the 5 s bar of the middle strip is erased, and that strip's start (its pulse's end,
    # which photos scatter by a few pixels) is read 1.5 mm late.
    page, ink = _ink_page(record, lead_separators=True)
    read = vectorize_probability(ink, page.px_per_mm)
    layout, traces = read.layout, read.traces
    bar_x = dict((t, x) for x, t in layout.row_time_knots[1])[5.0]
    band = layout.rows[1]
    half_width = round(0.6 * page.px_per_mm)
    reach = round(7 * page.px_per_mm)
    rows = slice(round(band.baseline_px) - reach, round(band.baseline_px) + reach)
    ink[rows, round(bar_x) - half_width : round(bar_x) + half_width + 1] = 0
    starts = list(layout.row_x_start_px)
    starts[1] += 1.5 * page.px_per_mm
    late_start = replace(layout, row_x_start_px=tuple(starts), row_time_knots=())

    # Execute
    knots = attach_lead_separators(late_start, ink, traces).row_time_knots

    # Assert: the boundary sits where the other strips' bars are, not 1.5 mm late with the start.
    filled = dict((t, x) for x, t in knots[1])[5.0]
    others = [dict((t, x) for x, t in knots[row])[5.0] for row in (0, 2)]
    assert abs(filled - float(np.median(others))) < 0.25 * page.px_per_mm
    assert abs(filled - bar_x) < 0.5 * page.px_per_mm


def test_the_signal_is_bridged_over_separator_bars(record) -> None:
    # Prepare: a page with bars, and its traces with the pen sent up a bar at every lead change
    # (where the trace follower takes the bar's ink for the signal).
    page, ink = _ink_page(record, lead_separators=True)
    read = vectorize_probability(ink, page.px_per_mm)
    climbed = []
    for row, trace in enumerate(read.traces[:3]):
        y = trace.y_px.copy()
        for x, _ in read.layout.row_time_knots[row]:
            y[np.abs(trace.x_px - x) <= 0.3 * page.px_per_mm] -= 4 * page.px_per_mm
        climbed.append(replace(trace, y_px=y))
    # The rhythm strip has no bars: at its knots (the columns of the bars above) a QRS may fall.
    rhythm = read.traces[3]
    assert rhythm is not None and read.layout.row_time_knots[3]
    y = rhythm.y_px.copy()
    for x, _ in read.layout.row_time_knots[3]:
        y[np.abs(rhythm.x_px - x) <= 0.3 * page.px_per_mm] -= 4 * page.px_per_mm
    climbed.append(replace(rhythm, y_px=y))

    # Execute
    bridged = traces_to_record(climbed, read.layout).record.signal_mv

    # Assert: the climb (0.4 mV) leaves no trace in the panel leads; the rhythm strip's is kept.
    untouched = read.record.signal_mv
    both = np.isfinite(bridged) & np.isfinite(untouched)
    panels = [i for i, lead in enumerate(read.record.lead_names) if lead != "II"]
    assert np.max(np.abs(bridged[:, panels][both[:, panels]] - untouched[:, panels][both[:, panels]])) < 0.05
    rhythm_lead = read.record.lead_names.index("II")
    assert np.max(bridged[:, rhythm_lead] - untouched[:, rhythm_lead]) > 0.3


def _stretched_unevenly(ink: np.ndarray, drift: float = 0.05) -> np.ndarray:
    """``ink`` with its horizontal scale drifting from ``drift`` short on the left to as long on the right."""
    width = ink.shape[1]
    columns = np.arange(width, dtype=float)
    drifted = columns + drift * columns * (columns - width) / width
    source_x = np.interp(columns, drifted, columns)
    warped = np.stack([np.interp(source_x, columns, row) for row in ink])
    return (warped > 0.5).astype(np.float32)


def test_the_rhythm_strip_keeps_time_by_the_bars_above_it(record) -> None:
    # Prepare: a page stretched 2% unevenly; its rhythm strip (lead II, 10 s) has no bars of its own.
    page, ink = _ink_page(record, lead_separators=True)
    read = vectorize_probability(_stretched_unevenly(ink, 0.02), page.px_per_mm)

    # Execute
    knots = read.layout.row_time_knots
    alone = traces_to_record(read.traces, replace(read.layout, row_time_knots=(*knots[:3], ()))).record

    # Assert: with the columns of the bars above, lead II follows the stretch; alone it cannot.
    def lead_ii_snr(rec) -> float:
        return next(s.snr_db for s in score_record(rec, page.reference) if s.lead == "II")

    assert [t for _, t in knots[3]] == [2.5, 5.0, 7.5]
    assert lead_ii_snr(read.record) > lead_ii_snr(alone) + 2  # 5.0 against 2.2 dB


def test_a_strip_starting_elsewhere_does_not_take_the_columns(record) -> None:
    # Prepare: the rhythm strip's start moved 3 mm right of the others' (a layout where it does not
    # run under the panels).
    page, ink = _ink_page(record, lead_separators=True)
    layout, traces = (read := vectorize_probability(ink, page.px_per_mm)).layout, read.traces
    starts = list(layout.row_x_start_px)
    starts[3] += 3 * page.px_per_mm
    moved = replace(layout, row_x_start_px=tuple(starts), row_time_knots=())

    # Execute
    knots = attach_lead_separators(moved, ink, traces).row_time_knots

    # Assert
    assert knots[3] == () and all(knots[:3])


def test_a_strip_with_bars_starts_where_they_say_not_at_its_pulse(record) -> None:
    # Prepare: the strips' starts (their pulses' ends) read 1 mm late, as photos scatter them.
    page, ink = _ink_page(record, lead_separators=True)
    layout = vectorize_probability(ink, page.px_per_mm).layout
    late = replace(layout, row_x_start_px=tuple(x + page.px_per_mm for x in layout.row_x_start_px))

    # Execute
    zero = [float(strip_time_to_x(late, row, np.array([0.0]))[0]) for row in range(4)]

    # Assert: time zero is extrapolated from the first two bars (their spacing is the local scale).
    for row, x0 in enumerate(zero):
        (x1, t1), (x2, t2) = late.row_time_knots[row][:2]
        assert x0 == pytest.approx(x1 - t1 * (x2 - x1) / (t2 - t1))
        assert abs(x0 - layout.row_x_start_px[row]) < 0.5 * page.px_per_mm
