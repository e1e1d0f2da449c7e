"""Tests of what other generators and carts print: ecg-image-kit's layouts, lead orders, palettes,
pulses and separators, borders, frame and imgaug chain, rhythm strips of any lead, and the
``foreign`` training profile."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json

import cv2
import numpy as np
import pytest

from ecgdig.errors import ConfigError
from ecgdig.io import read_record
from ecgdig.layouts import load_layout
from ecgdig.leads import STANDARD_LEADS
from ecgdig.render import (
    GRID_PALETTES,
    Degradation,
    RenderSettings,
    available_profiles,
    load_profile,
    page_geometry,
    render_page,
    sample_settings,
)
from ecgdig.render.augment import camera_effects, plan_warp, transform_points
from ecgdig.render.settings import ECG_IMAGE_KIT_GRID_RGB, kelvin_rgb, random_grid_rgb
from ecgdig.render.text import header_items
from ecgdig.types import EcgRecord

FAST = RenderSettings(dpi=100, header_text=False, footer_text=False)
EIK = "pages/ecg_image_kit"


def _label(lead: str) -> int:
    return STANDARD_LEADS.index(lead) + 1


def _sine_record(fs: float = 500.0) -> EcgRecord:
    """Every lead a different slow sine, so a trace's height tells which time it shows."""
    t = np.arange(round(10 * fs)) / fs
    sig = np.stack([np.sin(2 * np.pi * (0.3 + 0.05 * j) * t) for j in range(12)], axis=1)
    return EcgRecord("sines", sig, fs, STANDARD_LEADS)


# --- restarting columns (ecg-image-kit's 6x2) ---------------------------------------------------


def test_restart_columns_show_the_first_seconds_in_both_columns(record):
    page = render_page(record, dataclasses.replace(FAST, layout="eik-6x2+1"), rng=0)
    ref, n_half = page.reference.signal_mv, 2500
    for j, lead in enumerate(STANDARD_LEADS):
        if lead == "II":  # also the rhythm strip: the whole window
            np.testing.assert_array_equal(ref[:, j], record.signal_mv[:, j])
            continue
        np.testing.assert_array_equal(ref[:n_half, j], record.signal_mv[:n_half, j], err_msg=lead)
        assert np.isnan(ref[n_half:, j]).all(), lead
    boxes = {b.lead: b for b in page.lead_boxes if b.row < 6}
    shift_px = 5.0 * 25.0 * page.px_per_mm
    for left, right in (("V1", "V4"), ("I", "aVR"), ("III", "aVF")):
        assert (boxes[right].t_start_s, boxes[right].t_end_s) == (0.0, 5.0)
        assert boxes[right].x0 == pytest.approx(boxes[left].x0 + shift_px)
    assert page.truth["column_times"] == "restart"


def test_restart_column_mask_sits_where_its_samples_are():
    # Second-column traces are the record from 0 s, drawn from the strip's middle on.
    rec = _sine_record()
    settings = dataclasses.replace(FAST, dpi=200, layout="eik-6x2+1", grid_colour="none", lead_names=False)
    page = render_page(rec, settings, rng=0)
    ppm = page.px_per_mm
    errors = []
    for box in page.lead_boxes:
        if box.column != 1:
            continue
        j = STANDARD_LEADS.index(box.lead)
        for x in range(int(box.x0) + 3, int(box.x1) - 3, 9):
            rows = int(box.y0) + np.flatnonzero(page.lead_labels[int(box.y0) : int(box.y1) + 1, x] == j + 1)
            if rows.size:
                t_record = (x - box.x0) / ppm / 25.0
                mv = (box.baseline_y - rows.mean()) / ppm / 10.0
                errors.append(mv - np.sin(2 * np.pi * (0.3 + 0.05 * j) * t_record))
    errors = np.abs(np.array(errors))
    assert errors.size > 300
    assert np.median(errors) < 0.01 and np.percentile(errors, 95) < 0.03


def test_sequential_6x2_still_shows_consecutive_halves(record):
    page = render_page(record, dataclasses.replace(FAST, layout="6x2+1"), rng=0)
    v1 = page.reference.lead("V1")
    assert np.isfinite(v1[2500:]).all() and np.isnan(v1[:2500]).all()
    assert page.truth["column_times"] == "sequential"


# --- rhythm strips of any lead ------------------------------------------------------------------


def test_rhythm_lead_setting_puts_v1_on_the_rhythm_row(record):
    page = render_page(record, dataclasses.replace(FAST, rhythm_leads=("V1",)), rng=1)
    rows = page.truth["rows"]
    assert len(rows) == 4 and rows[-1]["leads"] == ["V1"] and page.truth["rhythm_leads"] == ["V1"]
    assert page.truth["layout"] == "3x4+1"
    np.testing.assert_array_equal(page.reference.lead("V1"), record.signal_mv[:, STANDARD_LEADS.index("V1")])
    assert np.isnan(page.reference.lead("II")[1250:]).all()  # II only in its 2.5 s panel now
    strip = next(b for b in page.lead_boxes if b.row == 3)
    assert strip.lead == "V1" and (strip.t_start_s, strip.t_end_s) == (0.0, 10.0)
    band = page.lead_labels[int(strip.baseline_y) - 3 : int(strip.baseline_y) + 4, int(strip.x1) - 40]
    assert (band == _label("V1")).any() and not (band == _label("II")).any()


def test_rhythm_leads_can_add_rows_or_remove_the_strip(record):
    three = render_page(record, dataclasses.replace(FAST, rhythm_leads=("V1", "II", "V5")), rng=2)
    assert [r["leads"] for r in three.truth["rows"][3:]] == [["V1"], ["II"], ["V5"]]
    none = render_page(record, dataclasses.replace(FAST, rhythm_leads=()), rng=2)
    assert len(none.truth["rows"]) == 3 and np.isnan(none.reference.lead("II")[1250:]).all()


@pytest.mark.parametrize("bad", [("X",), ("V1", "II", "V5", "I"), ["V1"], "V1"])
def test_rhythm_leads_are_validated(bad):
    with pytest.raises(ConfigError, match="rhythm_leads"):
        RenderSettings(rhythm_leads=bad)


def test_profiles_draw_rhythm_leads_from_lists(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("page:\n  rhythm_leads: {choice: [null, [V1], [V1, II]]}\n")
    drawn = {sample_settings(load_profile(path), rng=k).rhythm_leads for k in range(30)}
    assert drawn == {None, ("V1",), ("V1", "II")}
    path.write_text("page:\n  rhythm_leads: [V5]\n")
    assert sample_settings(load_profile(path), rng=0).rhythm_leads == ("V5",)
    path.write_text("page:\n  rhythm_leads: {choice: [[V9]]}\n")
    with pytest.raises(ConfigError, match=r"page\.rhythm_leads"):
        load_profile(path)


# --- 12x1 pages: crowded rows, ecg-image-kit's spacing -------------------------------------------


def test_eik_12x1_rows_are_spaced_as_ecg_image_kit_spaces_them():
    # ecg-image-kit: 13 rows 1/15 of the height apart from 2.5 row heights down; its strip 3 mm up
    # (eik043/eik044 at 200 dpi: text boxes 113-114 px apart, the strip's name 98 px below III's).
    settings = RenderSettings(layout="eik-12x1+1", rhythm_raise_mm=3.0, calibration_pulse=True)
    geom = page_geometry(settings, load_layout("eik-12x1+1"))
    pitch = 1700 / 15
    eik_order = ["V4", "V1", "aVR", "I", "V5", "V2", "aVL", "II", "V6", "V3", "aVF", "III"]
    assert [r.panels[0].lead for r in geom.rows] == [*eik_order, "II"]
    for r, row in enumerate(geom.rows[:12]):
        assert row.baseline_y == pytest.approx((2.5 + r) * pitch - 0.5)
    assert geom.rows[12].rhythm and not geom.rows[11].rhythm
    assert geom.rows[12].baseline_y == pytest.approx(14.5 * pitch - 0.5 - 3 * 200 / 25.4)


def test_tall_complexes_cross_into_the_next_row_with_their_own_label():
    # A 2.5 mV spike in V1 (row 6 of 12x1) rises past the midpoint to aVF's row above it.
    rec = _sine_record()
    sig = rec.signal_mv * 0.1
    sig[1000:1010, STANDARD_LEADS.index("V1")] = 2.5
    page = render_page(
        dataclasses.replace(rec, signal_mv=sig), dataclasses.replace(FAST, layout="12x1"), rng=0
    )
    rows = page.truth["rows"]
    mid = (rows[5]["baseline_y_px"] + rows[6]["baseline_y_px"]) / 2
    ys, _ = np.nonzero(page.lead_labels == _label("V1"))
    assert ys.min() < mid - 5
    np.testing.assert_array_equal(page.lead_labels > 0, page.trace_mask)


# --- ecg-image-kit's colours, markers and text ---------------------------------------------------


def test_eik_palettes_are_exactly_those_of_its_json_files(shared_data):
    folder = shared_data / EIK / "meta"
    if not folder.is_dir():
        pytest.skip("ecg-image-kit pages not present")
    fixed = set(ECG_IMAGE_KIT_GRID_RGB.values())
    seen_random = 0
    for path in sorted(folder.glob("eik*.json")):
        meta = json.loads(path.read_text())
        major, minor = (
            tuple(int(np.floor(v + 0.5)) for v in meta[k])
            for k in ("grid_line_color_major", "grid_line_color_minor")
        )
        if (major, minor) in fixed:
            continue
        # The random mode: major red <= 0.8, green and blue <= 0.5, minor = fresh draws + one offset <= 0.2.
        seen_random += 1
        offset = minor[0] - major[0]
        assert 0 <= offset <= 52 and major[0] <= 205 and max(major[1:]) <= 128
        assert all(offset - 1 <= c <= 128 + offset for c in minor[1:])
    assert seen_random == 4  # eik017, eik018, eik028, eik064
    assert GRID_PALETTES["brown"][0] == ECG_IMAGE_KIT_GRID_RGB["colour1"]
    assert GRID_PALETTES["dark-blue"][0] == ((0, 0, 102), (0, 0, 179))
    assert GRID_PALETTES["dark-green"][0] == ((0, 77, 0), (0, 204, 77))


@pytest.mark.parametrize("family", ["dark-blue", "brown", "dark-green"])
def test_eik_grid_lines_print_their_exact_colours(record, family):
    settings = dataclasses.replace(FAST, dpi=200, grid_colour=family)
    page = render_page(record, settings, rng=0)
    major, minor = settings.grid_rgb
    colours = {tuple(c) for c in np.unique(page.image[:60].reshape(-1, 3), axis=0)}
    assert major in colours and minor in colours


def test_random_grid_colours_follow_ecg_image_kit(tmp_path):
    rng = np.random.default_rng(0)
    draws = [random_grid_rgb(rng) for _ in range(500)]
    majors, minors = np.array([d[0] for d in draws]), np.array([d[1] for d in draws])
    offsets = minors[:, 0] - majors[:, 0]
    assert majors[:, 0].max() <= 204 and majors[:, 1:].max() <= 128 and majors[:, 0].max() > 180
    assert offsets.min() >= 0 and offsets.max() <= 51 and offsets.max() > 45
    path = tmp_path / "random.yaml"
    path.write_text("page:\n  grid_colour: random\n")
    seen = {sample_settings(load_profile(path), rng=k).grid_rgb for k in range(10)}
    assert len(seen) == 10


def test_eik_markers_are_ecg_image_kits_pulse_and_bars(record):
    cart = render_page(record, dataclasses.replace(FAST, dpi=200, calibration_pulse=True), rng=0)
    settings = dataclasses.replace(
        FAST, dpi=200, calibration_pulse=True, lead_separators=True, marker_style="eik"
    )
    eik = render_page(record, settings, rng=0)
    ppm = eik.px_per_mm
    # The signal starts 0.2 s after the margin (eik pages: 118 px at 200 dpi), not 0.24 s.
    assert eik.truth["row_x0_px"] == pytest.approx(cart.truth["row_x0_px"] - 0.04 * 25 * ppm)
    assert eik.truth["row_x0_px"] == pytest.approx(15 * ppm - 0.5)
    pulse = eik.truth["calibration_pulses"][0]
    top = round(pulse["top_y"])
    xs = np.flatnonzero(eik.trace_mask[top, : round(pulse["x1"])])
    assert xs.min() < round(pulse["x0"]) + 2  # rises at the margin
    # The pulse is 1.5 traces thick: its top edge is a 3 px band at 200 dpi (the trace 2 px).
    column = eik.trace_mask[top - 4 : top + 5, round((pulse["x0"] + pulse["x1"]) / 2)]
    assert column.sum() == 3
    x, y = eik.truth["lead_separators"][0]
    bar = eik.image[round(y), round(x) - 6 : round(x) + 7].min(axis=1) < 100
    assert 5 <= bar.sum() <= 7  # 3 trace widths (6.3 px)


def test_eik_2024_header_places_id_name_and_date(record):
    items = header_items("eik-2024", record, 279.4, np.random.default_rng(0))
    texts = {(round(i.x_mm, 2), round(i.y_mm, 1)): i.text for i in items}
    assert texts[(1.25, 5.9)] == f"ID: {record.name}"
    assert texts[(76.25, 5.9)].startswith("Name:") and texts[(151.25, 5.9)].startswith("Date:")
    assert texts[(1.25, 10.9)].startswith("Age:") and texts[(1.25, 15.9)].startswith("Sex:")


def test_label_offset_moves_the_lead_names(record):
    near = render_page(record, dataclasses.replace(FAST, label_offset_mm=3.0), rng=0)
    far = render_page(record, dataclasses.replace(FAST, label_offset_mm=12.0), rng=0)
    for a, b in zip(near.lead_boxes, far.lead_boxes, strict=True):
        assert b.label_box[3] - a.label_box[3] == pytest.approx(9.0 * FAST.px_per_mm, abs=1.0)


# --- page border and frame ----------------------------------------------------------------------


def test_border_adds_paper_margins_and_shifts_the_truth(record):
    plain = render_page(record, FAST, rng=4)
    bordered = render_page(record, dataclasses.replace(FAST, border_mm=25.4), rng=4)
    b = 100  # one inch at 100 dpi
    assert bordered.truth["border_px"] == b
    assert bordered.image.shape == (plain.image.shape[0] + 2 * b, plain.image.shape[1] + 2 * b, 3)
    np.testing.assert_array_equal(bordered.image[b:-b, b:-b], plain.image)
    np.testing.assert_array_equal(bordered.trace_mask[b:-b, b:-b], plain.trace_mask)
    np.testing.assert_array_equal(bordered.lead_labels[b:-b, b:-b], plain.lead_labels)
    margins = np.ones(bordered.trace_mask.shape, bool)
    margins[b:-b, b:-b] = False
    assert (bordered.image[margins] == 255).all() and not bordered.trace_mask[margins].any()
    for p, q in zip(plain.lead_boxes, bordered.lead_boxes, strict=True):
        assert (q.x0 - p.x0, q.y0 - p.y0, q.baseline_y - p.baseline_y) == pytest.approx((b, b, b))
        assert q.label_box[0] - p.label_box[0] == pytest.approx(b)
    hom = np.array(bordered.truth["homography"])
    assert transform_points(hom, np.array([[0.0, 0.0]])).tolist() == [[b, b]]
    np.testing.assert_array_equal(bordered.reference.signal_mv, plain.reference.signal_mv)
    assert bordered.truth["page_size_px"] == plain.truth["page_size_px"]


def test_border_is_rotated_with_the_page(record):
    deg = Degradation(rotation_deg=3.0, background="black")
    page = render_page(record, dataclasses.replace(FAST, border_mm=12.7, degradation=deg), rng=4)
    assert page.image.shape[:2] == (850 + 100, 1100 + 100)
    assert (page.image[0, 0] == 0).all()  # a corner outside the rotated sheet
    lum = page.image.astype(float).mean(axis=2)
    assert np.mean(lum[page.trace_mask] < 180) > 0.97


def test_page_frame_is_a_thin_black_line_outside_the_mask(record):
    plain = render_page(record, dataclasses.replace(FAST, dpi=200), rng=0)
    framed = render_page(record, dataclasses.replace(FAST, dpi=200, page_frame=True), rng=0)
    image = framed.image.astype(int)
    for edge in (image[0], image[-1], image[:, 0], image[:, -1]):
        assert (edge == 0).all()
    # 0.4 pt on the page is 1.1 px at 200 dpi: the second pixel is barely darkened, the third untouched.
    inner = np.s_[5:-5]
    ratio = image[inner, 1].sum() / plain.image[inner, 1].astype(int).sum()
    assert 0.8 < ratio < 0.95
    np.testing.assert_array_equal(framed.image[2:-2, 2:-2], plain.image[2:-2, 2:-2])
    np.testing.assert_array_equal(framed.trace_mask, plain.trace_mask)


# --- ecg-image-kit's imgaug chain ---------------------------------------------------------------


def test_colour_temperature_tints_white_paper_like_ecg_image_kit():
    white = np.full((4, 4, 3), 255, np.uint8)
    # Paper colours measured on eik030 (2803 K) and eik032 (19665 K), within 4 grey levels.
    for kelvin, measured in ((2803, (255, 172, 94)), (19665, (169, 197, 255))):
        out, _ = camera_effects(white, Degradation(colour_temperature_k=kelvin), np.random.default_rng(0))
        assert np.abs(out[0, 0].astype(int) - measured).max() <= 4
    assert [round(255 * g) for g in kelvin_rgb(6600)] == [255, 255, 255]


def test_crop_zooms_about_the_centre_and_keeps_the_size():
    warp = plan_warp((850, 1100), Degradation(crop=0.02), np.random.default_rng(0))
    assert warp is not None and warp.output_shape == (850, 1100)
    centre, corner = transform_points(warp.homography, np.array([[549.5, 424.5], [-0.5, -0.5]]))
    assert centre == pytest.approx([549.5, 424.5])
    assert corner == pytest.approx([-0.5 - 22 * 1100 / 1056, -0.5 - 17 * 850 / 816])


def test_eik_augmentation_keeps_the_mask_on_the_ink(record):
    deg = Degradation(
        rotation_deg=-4, background="black", noise_sigma=3.0, crop=0.01, colour_temperature_k=15000
    )
    page = render_page(record, dataclasses.replace(FAST, dpi=150, degradation=deg), rng=5)
    assert page.image.shape[:2] == (1275, 1650)
    assert page.image[0, 0].max() <= 12 and page.image[-1, -1].max() <= 12  # black corners, noisy
    lum = page.image.astype(float).mean(axis=2)
    assert np.mean(lum[page.trace_mask] < 150) > 0.97
    np.testing.assert_array_equal(page.lead_labels > 0, page.trace_mask)


# --- profiles -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", available_profiles())
def test_every_profile_renders(record, name):
    settings = sample_settings(load_profile(name), rng=0)
    page = render_page(record, dataclasses.replace(settings, dpi=100), rng=0)
    assert page.trace_mask.any()
    np.testing.assert_array_equal(page.lead_labels > 0, page.trace_mask)


def test_foreign_profile_covers_ecg_image_kit_pages():
    profile = load_profile("foreign")
    drawn = [sample_settings(profile, rng=k) for k in range(300)]
    layouts = {s.layout for s in drawn}
    assert {"eik-12x1+1", "eik-6x2+1", "12x1+1", "6x2+1"} <= layouts
    assert sum(s.layout == "3x4+1" for s in drawn) > 120  # most pages are still 3x4+1
    assert {("V1",), ("V5",), None} <= {s.rhythm_leads for s in drawn}
    assert {"brown", "dark-blue", "dark-green", "random", "grey", "red", "pink"} <= {
        s.grid_colour for s in drawn
    }
    assert any(s.border_mm == 25.4 for s in drawn) and any(not s.calibration_pulse for s in drawn)
    assert {s.dpi for s in drawn} >= {100, 150, 200, 300}
    degs = [s.degradation for s in drawn]
    assert any(d.colour_temperature_k and d.colour_temperature_k < 4000 for d in degs)
    assert any(d.colour_temperature_k and d.colour_temperature_k > 10000 for d in degs)
    assert any(d.crop > 0 for d in degs) and any(d.jpeg_quality for d in degs)
    assert {d.rotation_deg for d in degs if d.rotation_deg} <= set(range(-5, 6))


# Digests of 20 draws of each profile shipped before issue 16's new settings, over the settings
# that existed then: new settings must leave these profiles' pages as they were.
_OLD_PROFILE_DRAWS = {
    "clean": "315b3d29fcd41d6b",
    "ecg-image-kit": "a059031d73b62639",
    "phone": "b631d8b115340bc7",
    "phone-worn": "c304c7d65c1837f1",
    "scanner": "fa8f94c01da8dd85",
    "site-6x2-blue": "bc72cfba0cc7d44c",
    "site-ge-orange": "06f3d2d71da3449d",
    "site-grey-scanner": "c8a6bbc07707ff52",
    "site-phone-pink": "31981d6e5559823f",
}
_NEW_PAGE = {"marker_style", "rhythm_leads", "rhythm_raise_mm", "label_offset_mm", "page_frame", "border_mm"}
_NEW_DEGRADATION = {"crop", "colour_temperature_k"}


def _draws_digest(name: str) -> str:
    rng, profile = np.random.default_rng(0), load_profile(name)
    dicts = []
    for _ in range(20):
        d = sample_settings(profile, rng).to_dict()
        d = {k: v for k, v in d.items() if k not in _NEW_PAGE}
        d["degradation"] = {k: v for k, v in d["degradation"].items() if k not in _NEW_DEGRADATION}
        dicts.append(d)
    return hashlib.sha256(json.dumps(dicts, sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(_OLD_PROFILE_DRAWS))
def test_existing_profiles_draw_the_same_settings(name):
    assert _draws_digest(name) == _OLD_PROFILE_DRAWS[name]


@pytest.mark.parametrize(
    ("page_name", "record_name", "layout"),
    [("eik044", "01708_hr", "eik-12x1+1"), ("eik046", "01014_hr", "eik-6x2+1")],
)
def test_ecg_image_kit_training_pages_plot_where_our_mask_is(shared_data, page_name, record_name, layout):
    # Training pages of the split only (benchmarks/ecg_image_kit_split.csv).
    meta_path = shared_data / EIK / "meta" / f"{page_name}.json"
    record_path = shared_data / "records" / "ptbxl_500hz_train" / record_name
    if not meta_path.is_file() or not record_path.with_suffix(".hea").is_file():
        pytest.skip("ecg-image-kit pages not present")
    meta = json.loads(meta_path.read_text())
    with gzip.open(meta_path.with_name(f"{page_name}.pixels.json.gz"), "rt") as fh:
        pixels = json.load(fh)
    settings = RenderSettings(
        layout=layout,
        calibration_pulse=True,
        lead_separators=True,
        marker_style="eik",
        rhythm_raise_mm=3.0,
        header_text=False,
    )
    page = render_page(read_record(record_path), settings, rng=0)
    for entry, points in zip(meta["leads"], pixels, strict=True):
        lead = entry.get("lead_name") or meta["full_mode_lead"]
        rc = np.floor(np.array(points)).astype(int)  # [row, col], pixel (i, j) covers [i, i + 1)
        near = cv2.dilate((page.lead_labels == _label(lead)).view(np.uint8), np.ones((3, 3), np.uint8)) > 0
        assert near[rc[:, 0], rc[:, 1]].mean() > 0.95, lead
    # The reference is masked exactly as ecg-image-kit's own truth record.
    theirs = read_record(shared_data / EIK / "truth" / page_name).signal_mv
    np.testing.assert_array_equal(np.isnan(page.reference.signal_mv), np.isnan(theirs))
