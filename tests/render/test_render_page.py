"""Tests of ecgdig.render.page: geometry, masks, labels, boxes and the reference record."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ecgdig.errors import ConfigError, RecordInputError
from ecgdig.layouts import available_layouts, load_layout
from ecgdig.leads import STANDARD_LEADS
from ecgdig.render import GRID_COLOURS, RenderSettings, page_geometry, render_page
from ecgdig.types import EcgRecord

FAST = RenderSettings(dpi=100)


def _lum(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _plotted_ranges(page, lead: str) -> list[tuple[int, int]]:
    """Sample ranges [i0, i1) where ``lead`` is plotted, from the page's boxes."""
    fs = page.reference.fs_hz
    out = []
    for box in page.lead_boxes:
        if box.lead == lead:
            out.append((int(np.ceil(box.t_start_s * fs - 1e-9)), int(np.ceil(box.t_end_s * fs - 1e-9))))
    return out


@pytest.mark.parametrize("dpi", [100, 150, 200, 254, 300])
def test_px_per_mm_is_dpi_over_25_4_and_letter_size(record, dpi):
    # Execute
    page = render_page(record, dataclasses.replace(FAST, dpi=dpi), rng=0)
    # Assert
    assert page.px_per_mm == dpi / 25.4
    assert page.truth["px_per_mm"] == dpi / 25.4
    assert page.image.shape == (round(215.9 * dpi / 25.4), round(279.4 * dpi / 25.4), 3)
    assert page.trace_mask.shape == page.lead_labels.shape == page.image.shape[:2]


def test_default_page_matches_ecg_image_kit_geometry():
    # ecg-image-kit at 200 dpi: 2200 x 1700 px, strip from 10 mm, rows at 2.5, 3.5, 4.5, 5.5 row heights.
    geom = page_geometry(RenderSettings(), load_layout("3x4+1"))
    ppm = 200 / 25.4
    row_height_px = 1700 / 6
    assert (geom.width_px, geom.height_px, geom.strip_duration_s) == (2200, 1700, 10.0)
    assert geom.row_x0 == pytest.approx(10 * ppm - 0.5)
    for r, row in enumerate(geom.rows):
        assert row.baseline_y == pytest.approx((2.5 + r) * row_height_px - 0.5)


def test_mask_lies_on_dark_trace_pixels(record):
    # Prepare: black trace on a red grid, no degradation.
    settings = dataclasses.replace(FAST, dpi=200, calibration_pulse=True, lead_separators=True)
    # Execute
    page = render_page(record, settings, rng=1)
    # Assert: every mask pixel is at least half covered by black ink, so it is dark.
    lum = _lum(page.image)
    assert page.trace_mask.sum() > 10_000
    assert lum[page.trace_mask].max() <= 128.0
    # ... and the label map is nonzero exactly on the mask.
    np.testing.assert_array_equal(page.lead_labels > 0, page.trace_mask)


def test_mask_covers_the_dark_pixels_inside_lead_boxes(record):
    # Prepare
    settings = dataclasses.replace(FAST, dpi=200, lead_names=False, header_text=False, footer_text=False)
    page = render_page(record, settings, rng=2)
    lum = _lum(page.image)
    grown = np.zeros_like(page.trace_mask)
    rr, cc = np.nonzero(page.trace_mask)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            grown[np.clip(rr + dr, 0, grown.shape[0] - 1), np.clip(cc + dc, 0, grown.shape[1] - 1)] = True
    # Assert: very dark pixels (trace cores) are all next to the mask.
    dark = lum < 60
    assert dark.sum() > 5_000
    assert np.all(grown[dark])


def test_trace_centroids_encode_the_reference_signal():
    # Prepare: a slow sine (1 mV, 1 Hz) in every lead, no grid, so the mask centroid is the signal.
    fs = 500.0
    t = np.arange(5000) / fs
    sig = np.tile(np.sin(2 * np.pi * 1.0 * t)[:, None], (1, 12))
    rec = EcgRecord("sine", sig, fs, STANDARD_LEADS)
    settings = dataclasses.replace(RenderSettings(), grid_colour="none", lead_names=False)
    page = render_page(rec, settings, rng=0)
    ppm, row_x0 = page.px_per_mm, page.truth["row_x0_px"]
    errors = []
    for box in page.lead_boxes:
        label = STANDARD_LEADS.index(box.lead) + 1
        for x in range(int(box.x0) + 3, int(box.x1) - 3, 7):
            top, bottom = int(box.y0), int(box.y1) + 1  # lead II is on two rows
            rows = top + np.flatnonzero(page.lead_labels[top:bottom, x] == label)
            if rows.size == 0:
                continue
            mv = (box.baseline_y - rows.mean()) / ppm / settings.mm_per_mv
            t_s = (x - row_x0) / ppm / settings.mm_per_s
            errors.append(mv - np.sin(2 * np.pi * t_s))
    errors = np.abs(np.array(errors))
    # Assert: the plotted time of column x is (x - row_x0) / px_per_mm / mm_per_s.
    assert errors.size > 500
    assert np.median(errors) < 0.01
    assert np.percentile(errors, 95) < 0.03


def test_reference_is_nan_exactly_outside_each_plotted_window(record):
    # Execute
    page = render_page(record, FAST, rng=3)
    ref = page.reference
    # Assert
    assert ref.lead_names == STANDARD_LEADS
    assert ref.fs_hz == record.fs_hz and ref.n_samples == 5000
    for j, lead in enumerate(STANDARD_LEADS):
        expected = np.zeros(ref.n_samples, bool)
        for i0, i1 in _plotted_ranges(page, lead):
            expected[i0:i1] = True
        np.testing.assert_array_equal(np.isfinite(ref.signal_mv[:, j]), expected, err_msg=lead)
        np.testing.assert_array_equal(ref.signal_mv[expected, j], record.signal_mv[expected, j])
    # 3x4 + II rhythm: I, II, III over 0-2.5 s, aVR/aVL/aVF over 2.5-5 s; II everywhere.
    assert np.isfinite(ref.lead("I")[:1250]).all() and np.isnan(ref.lead("I")[1250:]).all()
    assert np.isnan(ref.lead("aVR")[:1250]).all() and np.isfinite(ref.lead("aVR")[1250:2500]).all()
    assert np.isfinite(ref.lead("II")).all()


def test_boxes_lie_inside_the_page_for_every_layout(record):
    for name in available_layouts():
        page = render_page(record, dataclasses.replace(FAST, layout=name), rng=4)
        rows, cols = page.image.shape[:2]
        layout = load_layout(name)
        assert len(page.lead_boxes) == len(layout.panels()), name
        for box in page.lead_boxes:
            assert -0.5 <= box.x0 < box.x1 <= cols - 0.5, (name, box)
            assert -0.5 <= box.y0 <= box.y1 <= rows - 0.5, (name, box)
            assert box.y0 <= box.baseline_y <= box.y1 or not (0 <= box.baseline_y < rows)


@pytest.mark.parametrize(
    ("layout", "colour"),
    [(name, GRID_COLOURS[i % len(GRID_COLOURS)]) for i, name in enumerate(available_layouts())]
    + [("3x4+1", colour) for colour in GRID_COLOURS],
)
def test_every_layout_and_grid_colour_renders(record, layout, colour):
    # Execute
    page = render_page(record, dataclasses.replace(FAST, layout=layout, grid_colour=colour), rng=5)
    # Assert: every lead the layout shows is drawn and labelled.
    shown = {STANDARD_LEADS[v - 1] for v in np.unique(page.lead_labels) if v}
    assert shown == set(load_layout(layout).leads)
    assert page.image.dtype == np.uint8


@pytest.mark.parametrize("style", ["lines", "dots", "dotted"])
@pytest.mark.parametrize("extent", ["page", "panel"])
def test_grid_styles_print_ink_where_expected(record, style, extent):
    settings = dataclasses.replace(FAST, dpi=200, grid_style=style, grid_extent=extent, grid_colour="green")
    page = render_page(record, settings, rng=6)
    rgb = page.image.astype(np.int16)
    green = (rgb[..., 1] > rgb[..., 0] + 20) & ~page.trace_mask
    assert green.mean() > 0.01
    if extent == "panel":
        assert not green[:5].any() and not green[:, -5:].any()  # no grid at the sheet's edges


@pytest.mark.parametrize("mm_per_mv", [5, 10, 20])
def test_flat_calibration_pulse_is_exactly_one_millivolt_tall(record, mm_per_mv):
    # Prepare: a flat record, pulse on, no grid, so ink darkness is the trace coverage.
    rec = EcgRecord("flat", np.zeros((5000, 12)), 500.0, STANDARD_LEADS)
    settings = RenderSettings(
        calibration_pulse=True, mm_per_mv=mm_per_mv, grid_colour="none", lead_names=False,
        header_text=False, footer_text=False,
    )  # fmt: skip
    page = render_page(rec, settings, rng=0)
    expected = mm_per_mv * page.px_per_mm
    pulse = page.truth["calibration_pulses"][0]
    x_mid = round((pulse["x0"] + pulse["x1"]) / 2)
    x_lead_in = round(pulse["x0"] + 1)
    # Execute: mask rows in a column on the plateau and in one on the baseline before the rise.
    r0, r1 = int(pulse["top_y"]) - 10, int(pulse["baseline_y"]) + 10  # this row's pulse only
    top_rows = r0 + np.flatnonzero(page.trace_mask[r0:r1, x_mid])
    base_rows = r0 + np.flatnonzero(page.trace_mask[r0:r1, x_lead_in])
    coverage = 1.0 - _lum(page.image) / 255.0

    def centroid(col: int, rows: np.ndarray) -> float:
        span = np.arange(rows.min() - 2, rows.max() + 3)
        return float((coverage[span, col] * span).sum() / coverage[span, col].sum())

    # Assert
    assert pulse["baseline_y"] - pulse["top_y"] == pytest.approx(expected, abs=1e-3)
    assert base_rows.mean() - top_rows.mean() == pytest.approx(expected, abs=1.0)
    # Ink centroids: exact up to the rasteriser's 1/4 px sub-pixel grid.
    assert centroid(x_lead_in, base_rows) - centroid(x_mid, top_rows) == pytest.approx(expected, abs=0.25)
    # The rising edge spans the pulse height plus one line width in the mask.
    edge = np.flatnonzero(page.trace_mask[r0:r1, round(pulse["x0"] + 0.04 * 25 * page.px_per_mm)])
    width = settings.trace_width_mm * page.px_per_mm
    assert edge.max() - edge.min() + 1 == pytest.approx(expected + width, abs=1.5)


def test_pulse_and_separators_do_not_move_the_time_axis(record):
    plain = render_page(record, FAST, rng=7)
    pulsed = render_page(
        record, dataclasses.replace(FAST, calibration_pulse=True, lead_separators=True), rng=7
    )
    shift = pulsed.truth["row_x0_px"] - plain.truth["row_x0_px"]
    assert shift == pytest.approx(0.24 * 25 * FAST.px_per_mm)
    for a, b in zip(plain.lead_boxes, pulsed.lead_boxes, strict=True):
        assert b.x0 - a.x0 == pytest.approx(shift)
    np.testing.assert_array_equal(plain.reference.signal_mv, pulsed.reference.signal_mv)


def test_connected_columns_switch_lead_at_the_boundary(record):
    page = render_page(record, dataclasses.replace(FAST, dpi=200, connect_columns=True), rng=8)
    box_avr = next(b for b in page.lead_boxes if b.lead == "aVR")
    column = page.lead_labels[:, round(box_avr.x0) + 2]
    assert (column == STANDARD_LEADS.index("aVR") + 1).any()
    assert not (column == STANDARD_LEADS.index("I") + 1).any()


def test_long_1000hz_record_with_lower_case_names_gets_a_10s_window(make_record):
    # Prepare: PTB-DB style, 38.4 s at 1000 Hz, lower-case names.
    rec = make_record(
        "s0010_like", fs_hz=1000.0, duration_s=38.4, lead_names=tuple(n.lower() for n in STANDARD_LEADS)
    )
    # Execute
    page = render_page(rec, FAST, rng=11)
    # Assert
    start = page.truth["window_start_sample"]
    assert 0 <= start <= 38400 - 10000
    assert page.reference.n_samples == 10000 and page.reference.fs_hz == 1000.0
    ii = page.reference.lead("II")
    np.testing.assert_array_equal(ii, rec.lead("ii")[start : start + 10000])
    assert len({b.lead for b in page.lead_boxes}) == 12
    other = render_page(rec, FAST, rng=12)
    assert other.truth["window_start_sample"] != start


def test_100hz_record_renders(make_record):
    rec = make_record("lr", fs_hz=100.0)
    page = render_page(rec, FAST, rng=0)
    assert page.reference.n_samples == 1000
    assert (
        np.isfinite(page.reference.lead("V6")[750:]).all() and np.isnan(page.reference.lead("V6")[:750]).all()
    )
    assert page.trace_mask.any()


def test_50mm_per_s_plots_five_seconds_of_the_window(record):
    page = render_page(record, dataclasses.replace(FAST, mm_per_s=50), rng=0)
    assert page.truth["strip_duration_s"] == 5.0
    ii = page.reference.lead("II")
    assert np.isfinite(ii[:2500]).all() and np.isnan(ii[2500:]).all()


def test_signal_leaving_the_page_is_clipped_but_truth_is_not(make_record):
    rec = make_record("tall")
    big = EcgRecord("tall", rec.signal_mv * 15.0, rec.fs_hz, rec.lead_names)
    page = render_page(big, FAST, rng=0)
    i0, i1 = _plotted_ranges(page, "I")[0]
    np.testing.assert_array_equal(page.reference.lead("I")[i0:i1], big.lead("I")[i0:i1])
    assert page.trace_mask[0].any() or page.trace_mask[-1].any()  # the ink reaches the edges


def test_missing_leads_are_nan_and_unboxed(make_record):
    rec = make_record("two", lead_names=("I", "II"))
    page = render_page(rec, FAST, rng=0)
    assert {b.lead for b in page.lead_boxes} == {"I", "II"}
    assert np.isnan(page.reference.lead("V1")).all()
    assert set(np.unique(page.lead_labels)) == {0, 1, 2}


def test_record_without_layout_leads_is_refused():
    rec = EcgRecord("xyz", np.zeros((5000, 3)), 500.0, ("vx", "vy", "vz"))
    with pytest.raises(RecordInputError, match="none of the leads"):
        render_page(rec, FAST, rng=0)


def test_rows_that_do_not_fit_are_a_config_error(record):
    settings = dataclasses.replace(FAST, layout="12x1", top_margin_mm=120.0, bottom_margin_mm=40.0)
    with pytest.raises(ConfigError, match="do not fit"):
        render_page(record, settings, rng=0)


def test_portrait_page_shortens_the_strip(record):
    page = render_page(record, dataclasses.replace(FAST, orientation="portrait", layout="6x1"), rng=0)
    assert page.image.shape[0] > page.image.shape[1]
    assert page.truth["strip_duration_s"] == 8.0  # (215.9 - 10 - 5) mm / 25 mm/s, down to 0.5 s


def test_real_ptbdb_and_ptbxl_records_render(shared_data):
    from ecgdig.io import read_record

    for path in ("ptbdb_1000hz/s0010_re", "ptbxl_100hz/00001_lr"):
        rec = read_record(shared_data / "records" / path)
        page = render_page(rec, FAST, rng=0)
        assert page.reference.n_samples == round(10 * rec.fs_hz)
        assert {b.lead for b in page.lead_boxes} == set(STANDARD_LEADS)


def test_same_rng_same_page_different_rng_different_header(record):
    a = render_page(record, FAST, rng=21)
    b = render_page(record, FAST, rng=21)
    c = render_page(record, FAST, rng=22)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.truth == b.truth
    assert not np.array_equal(a.image, c.image)  # the made-up header differs


def test_synthetic_helper_is_deterministic(make_record):
    np.testing.assert_array_equal(make_record(seed=1).signal_mv, make_record(seed=1).signal_mv)
