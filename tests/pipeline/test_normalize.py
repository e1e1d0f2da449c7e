"""Tests for ecgdig.pipeline.normalize: grid period, angle, perspective, fallbacks.

Synthetic pages are drawn here with an exactly known grid (``grid_page``); real pages come from the
shared data folder beside the repository (skipped where it is absent).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.signal import find_peaks

from ecgdig.errors import ImageInputError
from ecgdig.pipeline import normalize as normalize_module
from ecgdig.pipeline.normalize import (
    ASSUMED_CONFIDENCE,
    _compose_displacements,
    estimate_grid_px_per_mm,
    flatten_illumination,
    measure_grid,
    normalize,
)

PX_PER_MM_200DPI = 200 / 25.4  # 7.874...
RecordProperty = Callable[[str, object], None]

GRID_COLOURS = {
    "red": (225, 40, 40),
    "pink": (245, 150, 175),
    "orange": (240, 140, 40),
    "green": (60, 170, 90),
    "blue": (70, 110, 220),
    "grey": (140, 140, 140),
    "black": (40, 40, 40),
}


def _lines(coord_mm: np.ndarray, period_mm: float, width_px: float, px_per_mm: float) -> np.ndarray:
    """Coverage (0..1) of lines every ``period_mm`` of ``width_px``, box-filtered per pixel."""
    dist_px = np.abs(coord_mm / period_mm - np.round(coord_mm / period_mm)) * period_mm * px_per_mm
    return np.clip(width_px / 2 + 0.5 - dist_px, 0.0, 1.0)


def grid_page(
    *,
    px_per_mm: float = PX_PER_MM_200DPI,
    size_mm: tuple[float, float] = (140.0, 190.0),
    angle_deg: float = 0.0,
    colour: tuple[int, int, int] = GRID_COLOURS["red"],
    style: str = "lines",
    traces: bool = True,
    text: bool = True,
    y_stretch: float = 1.0,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draw a page with a 1 mm / 5 mm grid at a known scale; return (RGB uint8, masks).

    ``style`` is ``"lines"`` (minor and major lines), ``"dots"`` (major lines, dots at the 1 mm
    crossings) or ``"none"``. ``angle_deg`` rotates the whole page counter-clockwise as displayed;
    ``y_stretch`` makes the pixels non-square (y scale = px_per_mm * y_stretch). The masks
    ``"grid"`` and ``"trace"`` (bool, unrotated pages only) mark pixels mostly covered by grid
    (and no trace or text) and by trace.
    """
    rng = np.random.default_rng(seed)
    ppy = px_per_mm * y_stretch
    rows, cols = round(size_mm[0] * ppy), round(size_mm[1] * px_per_mm)
    yy, xx = np.mgrid[0:rows, 0:cols]
    x_mm, y_mm = xx / px_per_mm, yy / ppy
    if style == "none":
        cover = np.zeros((rows, cols))
    else:
        major = np.maximum(_lines(x_mm, 5.0, 1.8, px_per_mm), _lines(y_mm, 5.0, 1.8 * y_stretch, px_per_mm))
        if style == "lines":
            minor = np.maximum(_lines(x_mm, 1.0, 1.0, px_per_mm), _lines(y_mm, 1.0, y_stretch, px_per_mm))
        else:
            minor = _lines(x_mm, 1.0, 2.0, px_per_mm) * _lines(y_mm, 1.0, 2.0 * y_stretch, px_per_mm)
        cover = np.maximum(0.9 * major, 0.45 * minor)
    image = 255.0 - cover[..., None] * (255.0 - np.array(colour, dtype=float))
    ink = np.zeros((rows, cols), np.uint8)
    if traces:
        for row in range(4):
            base_mm = 20.0 + 32.0 * row
            t = np.arange(0.0, size_mm[1] - 20.0, 0.1)  # mm along the strip
            beat = 20.0 + rng.uniform(0, 4)
            sig = 0.15 * np.sin(2 * np.pi * t / 37.0 + rng.uniform(0, 6))
            sig += 1.2 * np.exp(-0.5 * (((t % beat) - 10.0) / 0.35) ** 2)
            sig -= 0.3 * np.exp(-0.5 * (((t % beat) - 10.8) / 0.3) ** 2)
            sig += 0.25 * np.exp(-0.5 * (((t % beat) - 16.0) / 1.4) ** 2)
            pts = np.stack([(10.0 + t) * px_per_mm, (base_mm - 10.0 * sig) * ppy], axis=1)
            cv2.polylines(ink, [np.round(pts * 16).astype(np.int32)], False, 255, 2, cv2.LINE_AA, shift=4)
    trace_mask = ink >= 128
    if text:
        for row in range(4):
            org = (round(12 * px_per_mm), round((27.0 + 32.0 * row) * ppy))
            cv2.putText(ink, "aVR", org, cv2.FONT_HERSHEY_SIMPLEX, 0.45 * px_per_mm / 8, 255, 1, cv2.LINE_AA)
    alpha = ink.astype(float)[..., None] / 255.0
    image = image * (1 - alpha) + 25.0 * alpha
    page = np.clip(np.round(image), 0, 255).astype(np.uint8)
    masks = {"grid": (cover >= 0.4) & (ink == 0), "trace": trace_mask}
    if angle_deg:
        rot = cv2.getRotationMatrix2D((cols / 2, rows / 2), angle_deg, 1.0)
        rotated = cv2.warpAffine(page, rot, (cols, rows), flags=cv2.INTER_LINEAR, borderValue=(255, 255, 255))
        return np.asarray(rotated, dtype=np.uint8), masks
    return page, masks


def _rel_err(value: float, expected: float) -> float:
    return abs(value / expected - 1.0)


# --------------------------------------------------------------------------------------------------
# Synthetic grids: period within 0.2%, angle within 0.1 degree
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("colour", "angle_deg"),
    [
        ("red", 0.0),
        ("pink", 1.3),
        ("orange", -2.4),
        ("green", 4.0),
        ("blue", -0.7),
        ("grey", 2.2),
        ("black", -8.5),
    ],
)
def test_synthetic_grid_period_and_angle(colour: str, angle_deg: float) -> None:
    # Prepare
    page, _ = grid_page(angle_deg=angle_deg, colour=GRID_COLOURS[colour], seed=3)
    # Execute
    m = measure_grid(page)
    # Assert
    assert _rel_err(m.px_per_mm_x, PX_PER_MM_200DPI) < 0.002, m
    assert _rel_err(m.px_per_mm_y, PX_PER_MM_200DPI) < 0.002, m
    assert abs(m.rotation_deg - angle_deg) < 0.1, m
    assert m.method == "grid-1mm"
    assert m.confidence >= 0.8


def test_dotted_grid_is_read_as_one_millimetre_dots() -> None:
    page, _ = grid_page(style="dots", colour=GRID_COLOURS["grey"], angle_deg=0.6, px_per_mm=9.5)
    m = measure_grid(page)
    assert _rel_err(m.px_per_mm, 9.5) < 0.002, m
    assert abs(m.rotation_deg - 0.6) < 0.1


def test_non_square_pixels_are_measured_per_axis_and_resampled_square() -> None:
    # Prepare: y scale 2% larger than x, as from a scanner with unequal x/y resolution.
    page, _ = grid_page(y_stretch=1.02)
    # Execute
    m = measure_grid(page)
    out = normalize(page, target_px_per_mm=8.0)
    again = measure_grid(out.image)
    # Assert
    assert _rel_err(m.px_per_mm_x, PX_PER_MM_200DPI) < 0.002
    assert _rel_err(m.px_per_mm_y, PX_PER_MM_200DPI * 1.02) < 0.002
    assert _rel_err(again.px_per_mm_x, 8.0) < 0.002
    assert _rel_err(again.px_per_mm_y, 8.0) < 0.002


def test_normalize_resamples_to_target_and_removes_rotation() -> None:
    page, _ = grid_page(angle_deg=-3.0, colour=GRID_COLOURS["orange"])
    out = normalize(page, target_px_per_mm=8.0)
    again = measure_grid(out.image)
    assert out.image.dtype == np.uint8 and out.image.ndim == 3
    assert out.px_per_mm == 8.0
    assert _rel_err(out.source_px_per_mm, PX_PER_MM_200DPI) < 0.002
    assert abs(out.rotation_deg + 3.0) < 0.1
    assert _rel_err(again.px_per_mm, 8.0) < 0.002
    assert abs(again.rotation_deg) < 0.1
    # The page keeps its size in millimetres (the rotated corners are kept, so a little larger).
    assert out.image.shape[1] == pytest.approx(190 * 8.0, rel=0.07)


def test_target_none_keeps_the_source_scale() -> None:
    page, _ = grid_page()
    out = normalize(page, target_px_per_mm=None)
    assert out.px_per_mm == pytest.approx(PX_PER_MM_200DPI, rel=0.002)
    assert out.image.shape[:2] == pytest.approx(page.shape[:2], abs=3)


def test_perspective_is_corrected_from_the_grid() -> None:
    # Prepare: a keystoned photo of the page on a dark table.
    page, _ = grid_page(px_per_mm=7.0, size_mm=(170.0, 230.0))
    rows, cols = page.shape[:2]
    src = np.array([[0, 0], [cols, 0], [cols, rows], [0, rows]], dtype=np.float32)
    dst = np.array(
        [[0.07 * cols, 0.04 * rows], [0.95 * cols, 0], [cols, rows], [0, 0.97 * rows]], dtype=np.float32
    )
    hom = cv2.getPerspectiveTransform(src, dst)
    photo = cv2.warpPerspective(page, hom, (cols, rows), borderValue=(70, 50, 40))
    # Execute
    out = normalize(photo, target_px_per_mm=8.0)
    again = measure_grid(out.image, correct_perspective=False)
    # Assert: the output grid is uniform and at the target scale.
    assert out.perspective_corrected
    assert again.local_spread < 0.005, again
    assert _rel_err(again.px_per_mm_x, 8.0) < 0.005, again
    assert _rel_err(again.px_per_mm_y, 8.0) < 0.005, again


def test_a_curled_photo_is_straightened_along_its_grid() -> None:
    # Prepare: a page on a dark table whose sheet curls: along x the left half is stretched and the
    # right half squeezed (lines up to 2 mm out of place), and the rows bow by up to 1.4 mm. No
    # homography can undo this.
    page, _ = grid_page(px_per_mm=7.0, size_mm=(150.0, 220.0))
    photo = np.full((page.shape[0] + 200, page.shape[1] + 200, 3), (60, 45, 35), np.uint8)
    photo[100:-100, 100:-100] = page
    rows, cols = photo.shape[:2]
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    bend = np.sin(np.pi * xx / cols)
    curled = cv2.remap(photo, xx - 14.0 * bend, yy - 10.0 * bend, cv2.INTER_LINEAR, borderValue=(60, 45, 35))
    before = measure_grid(curled)

    # Execute
    out = normalize(curled, target_px_per_mm=8.0)
    again = measure_grid(out.image, correct_perspective=False)

    # Assert: the homography left the period uneven; the local dewarp makes it uniform again.
    assert before.local_spread > 0.02, before
    assert again.local_spread < 0.005, again
    assert _rel_err(again.px_per_mm_x, 8.0) < 0.005, again
    assert any("straightened locally" in w for w in out.warnings)


def _worst_line_offset_px(image: np.ndarray, *, across: str, period_px: float) -> float:
    """Largest distance (px) of a major grid line from an evenly spaced comb, over bands of the page.

    ``across="x"`` measures the vertical lines along horizontal bands, ``"y"`` the horizontal ones.
    """
    chroma = image.max(axis=2).astype(float) - image.min(axis=2)
    if across == "y":
        chroma = chroma.T
    worst = 0.0
    for top in range(100, chroma.shape[0] - 200, 150):
        profile = np.median(chroma[top : top + 120], axis=0)
        peaks, _ = find_peaks(profile, distance=0.75 * period_px, height=0.6 * profile.max())
        peaks = peaks[(peaks > 60) & (peaks < profile.size - 60)]
        centres = np.array([p + np.average(np.arange(-2, 3), weights=profile[p - 2 : p + 3]) for p in peaks])
        index = np.round((centres - centres[0]) / period_px)
        fit = np.polyval(np.polyfit(index, centres, 1), index)
        worst = max(worst, float(np.max(np.abs(centres - fit))))
    return worst


def test_a_folded_photo_is_straightened_line_by_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a sheet folded in three along x and in two along y, on a dark table. Either side of
    # a fold the scale changes abruptly; the cubic dewarp surface rounds the kinks off.
    page, _ = grid_page(px_per_mm=7.0, size_mm=(150.0, 220.0))
    photo = np.full((page.shape[0] + 200, page.shape[1] + 200, 3), (60, 45, 35), np.uint8)
    photo[100:-100, 100:-100] = page
    rows, cols = photo.shape[:2]
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    three_panels = np.abs((3.0 * xx / cols) % 2.0 - 1.0)
    two_panels = 2.0 * np.abs(yy / rows - 0.5)
    folded = cv2.remap(
        photo, xx - 8.0 * three_panels, yy - 14.0 * two_panels, cv2.INTER_LINEAR, borderValue=(60, 45, 35)
    )

    # Execute: with the fold pass, and without it.
    out = normalize(folded, target_px_per_mm=8.0).image
    monkeypatch.setattr(normalize_module, "_fine_line_offsets", lambda *args: None)
    smooth_only = normalize(folded, target_px_per_mm=8.0).image

    # Assert: the major lines are back on an even comb to within 0.8 px (1.6 and 2.5 px without).
    for across in ("x", "y"):
        assert _worst_line_offset_px(out, across=across, period_px=40.0) < 0.8
        assert _worst_line_offset_px(smooth_only, across=across, period_px=40.0) > 1.4


def test_the_fold_pass_reads_only_the_grid_hue() -> None:
    # Prepare: a red grid with black traces and a blue pen stroke; the same page with a grey grid.
    red, masks = grid_page(px_per_mm=8.0, size_mm=(120.0, 160.0))
    pen = np.zeros(red.shape[:2], np.uint8)
    cv2.line(pen, (100, 300), (1100, 330), 255, 3)
    red[pen > 0] = (40, 60, 200)
    grey, _ = grid_page(px_per_mm=8.0, size_mm=(120.0, 160.0), colour=GRID_COLOURS["grey"])

    # Execute
    hue = normalize_module._grid_hue_mask(red, None)

    # Assert: the grid's lines count, ink and pen do not; a grey grid is not read at all.
    assert hue is not None
    assert hue[masks["grid"]].mean() > 0.9
    assert hue[masks["trace"]].mean() < 0.05  # anti-aliased edges over grid lines keep some red
    assert not hue[pen > 0].any()
    assert normalize_module._grid_hue_mask(grey, None) is None


def test_two_dewarp_rounds_compose_into_one_resampling() -> None:
    # Prepare: a smooth texture and two smooth displacement fields, as two dewarp rounds give.
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (200, 300)).astype(np.float32), (0, 0), 4.0)
    yy, xx = np.mgrid[0:200, 0:300].astype(np.float32)
    first = (6.0 * np.sin(xx / 40.0), 4.0 * np.cos(yy / 30.0))
    then = (3.0 * np.cos(yy / 25.0 + xx / 60.0), 2.0 * np.sin(xx / 35.0))

    def resample(image: np.ndarray, field: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        return cv2.remap(image, xx + field[0], yy + field[1], cv2.INTER_CUBIC)

    # Execute
    in_turn = resample(resample(texture, first), then)
    at_once = resample(texture, _compose_displacements(first, then))

    # Assert: one resampling through the composed field gives what the two rounds give in turn.
    inner = (slice(20, -20), slice(20, -20))
    assert np.max(np.abs(in_turn[inner] - at_once[inner])) < 0.02 * np.ptp(texture)


def test_a_gridless_photo_is_rectified_from_the_sheet_corners() -> None:
    # Prepare: a page without grid, turned 4 degrees counter-clockwise on a dark table.
    page, _ = grid_page(style="none")
    rows, cols = page.shape[:2]
    photo = np.full((rows + 400, cols + 400, 3), (60, 45, 35), np.uint8)
    photo[200:-200, 200:-200] = page
    turn = cv2.getRotationMatrix2D((photo.shape[1] / 2, photo.shape[0] / 2), 4.0, 1.0)
    photo = cv2.warpAffine(photo, turn, (photo.shape[1], photo.shape[0]), borderValue=(60, 45, 35))

    # Execute
    out = normalize(photo)

    # Assert: the turn is found and removed although no grid gave it; the scale is still assumed.
    assert out.scale_method == "assumed-page-width"
    assert out.rotation_deg == pytest.approx(4.0, abs=0.3)
    assert any("sheet's corners" in w for w in out.warnings)


def test_a_shadow_across_the_page_does_not_crop_it() -> None:
    # Prepare: a page on a dark table, its lower-left part in a shadow as dark as the table, so
    # the bright region is a triangle: light on part of the sheet, not the sheet.
    page, _ = grid_page(px_per_mm=7.0, size_mm=(170.0, 230.0))
    rows, cols = page.shape[:2]
    photo = np.full((rows + 200, cols + 200, 3), (70, 50, 40), np.uint8)
    photo[100:-100, 100:-100] = page
    y, x = np.mgrid[0 : photo.shape[0], 0 : photo.shape[1]]
    shadow = y > 100 + 0.6 * rows * (x - 100) / cols
    photo[shadow] = (photo[shadow] * 0.3).astype(np.uint8)

    # Execute
    out = normalize(photo, target_px_per_mm=8.0)

    # Assert: the whole sheet is kept (a crop to the lit triangle would keep 60% of its height).
    assert out.image.shape[0] >= 0.95 * 170.0 * 8.0


# --------------------------------------------------------------------------------------------------
# No grid: a clear fallback, never a crash
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["white", "noise", "traces-only"])
def test_pages_without_grid_fall_back_with_a_warning(kind: str) -> None:
    rng = np.random.default_rng(1)
    if kind == "white":
        image = np.full((850, 1100, 3), 255, np.uint8)
    elif kind == "noise":
        image = rng.integers(0, 256, (850, 1100, 3), dtype=np.uint8)
    else:
        image, _ = grid_page(style="none")
    page = normalize(image)
    assert page.px_per_mm_confidence == ASSUMED_CONFIDENCE < 0.3
    assert page.scale_method == "assumed-page-width"
    assert any("assumed from the page width" in w for w in page.warnings)
    # 279.4 mm (US letter) across the long side.
    assert page.source_px_per_mm == pytest.approx(max(image.shape[:2]) / 279.4, rel=1e-6)
    assert page.image.shape[1] == pytest.approx(279.4 * 8.0, rel=0.01)


def test_estimate_grid_px_per_mm_returns_value_and_confidence() -> None:
    page, _ = grid_page(angle_deg=1.0)
    value, confidence = estimate_grid_px_per_mm(page)
    assert _rel_err(value, PX_PER_MM_200DPI) < 0.002
    assert 0.8 <= confidence <= 1.0


def test_flatten_illumination_whitens_uneven_paper() -> None:
    page, _ = grid_page(traces=False, text=False, style="none")
    shade = np.linspace(0.55, 1.0, page.shape[1])[None, :, None]
    dim = np.round(page * shade).astype(np.uint8)
    flat = flatten_illumination(dim)
    assert flat.dtype == np.float32 and flat.shape == dim.shape
    assert np.percentile(flat, 5) > 0.93


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((100, 100, 3), np.float32),
        np.zeros((100, 100, 4), np.uint8),
        np.zeros((40, 500, 3), np.uint8),
    ],
)
def test_bad_arrays_raise_image_input_error(bad: np.ndarray) -> None:
    with pytest.raises(ImageInputError):
        normalize(bad)


def test_bad_target_raises_value_error() -> None:
    with pytest.raises(ValueError, match="target_px_per_mm"):
        normalize(np.full((100, 100, 3), 255, np.uint8), target_px_per_mm=0.0)


def test_grey_images_are_accepted() -> None:
    page, _ = grid_page(colour=GRID_COLOURS["grey"])
    m = measure_grid(cv2.cvtColor(page, cv2.COLOR_RGB2GRAY))
    assert _rel_err(m.px_per_mm, PX_PER_MM_200DPI) < 0.002


# --------------------------------------------------------------------------------------------------
# Real pages (shared data)
# --------------------------------------------------------------------------------------------------


def _read(path: Path) -> np.ndarray:
    from ecgdig.io import read_image

    if not path.is_file():
        pytest.skip(f"{path} not found")
    return read_image(path)


def test_rendered_200dpi_page_scale_within_0_2_percent(
    shared_data: Path, record_property: RecordProperty
) -> None:
    image = _read(shared_data / "rendered_with_truth" / "00001_lr-0.png")
    m = measure_grid(image)
    record_property("px_per_mm", (m.px_per_mm_x, m.px_per_mm_y))
    assert _rel_err(m.px_per_mm_x, PX_PER_MM_200DPI) < 0.002, m
    assert _rel_err(m.px_per_mm_y, PX_PER_MM_200DPI) < 0.002, m
    assert abs(m.rotation_deg) < 0.1
    assert m.confidence >= 0.8


def test_real_200dpi_scan_scale(shared_data: Path, record_property: RecordProperty) -> None:
    # A real GE printout scanned at 200 dpi: printers and scanners may be off by a fraction of a
    # percent, so this asserts loosely (measured: 7.873 px/mm, -0.01%).
    image = _read(shared_data / "pages" / "real_no_truth" / "paperecg_fullScan.png")
    m = measure_grid(image)
    record_property("px_per_mm", (m.px_per_mm_x, m.px_per_mm_y))
    assert _rel_err(m.px_per_mm_x, PX_PER_MM_200DPI) < 0.01, m
    assert _rel_err(m.px_per_mm_y, PX_PER_MM_200DPI) < 0.01, m
    assert abs(m.px_per_mm_x / m.px_per_mm_y - 1.0) < 0.002
    assert m.confidence >= 0.8


@pytest.mark.slow
def test_every_shared_page_is_measured_without_error(shared_data: Path) -> None:
    from ecgdig.io import read_image

    paths = sorted(
        p
        for folder in ("pages/real_no_truth", "pages/photos_with_truth", "rendered_with_truth")
        for p in (shared_data / folder).glob("*")
        if p.suffix.lower() in {".png", ".jpg", ".jpeg"}
    )
    assert paths
    for path in paths:
        m = measure_grid(read_image(path))
        assert 1.5 < m.px_per_mm < 30.0, (path.name, m)
        assert 0.0 <= m.confidence <= 1.0
        assert math.isfinite(m.rotation_deg)
        # Every page in the shared set has a grid.
        assert m.method.startswith("grid"), (path.name, m)
