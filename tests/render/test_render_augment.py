"""Tests of ecgdig.render.augment: degradations keep the truth aligned with the ink."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from ecgdig.leads import STANDARD_LEADS
from ecgdig.render import Degradation, RenderSettings, render_page
from ecgdig.render.augment import camera_effects, paper_effects, plan_warp, transform_points, warp_page

WARP = Degradation(rotation_deg=4.0, perspective=0.05, scale=0.8, background="wood", background_margin=0.1)


def _lum(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


@pytest.fixture
def flat_and_warped(record):
    flat_settings = RenderSettings(dpi=150, lead_names=False)
    flat = render_page(record, flat_settings, rng=3)
    warped = render_page(record, dataclasses.replace(flat_settings, degradation=WARP), rng=3)
    return flat, warped


def test_warped_mask_stays_on_the_ink(flat_and_warped):
    _, warped = flat_and_warped
    lum = _lum(warped.image)
    assert warped.trace_mask.sum() > 5000
    # Nearest-neighbour masks against a bilinear image: allow the odd edge pixel.
    assert np.mean(lum[warped.trace_mask] < 180) > 0.98
    np.testing.assert_array_equal(warped.lead_labels > 0, warped.trace_mask)


def test_truth_homography_maps_the_flat_page_onto_the_warped_one(flat_and_warped):
    flat, warped = flat_and_warped
    hom = np.array(warped.truth["homography"])
    rr, cc = np.nonzero(flat.trace_mask)
    pts = transform_points(hom, np.stack([cc, rr], axis=1).astype(float))
    x, y = np.round(pts[:, 0]).astype(int), np.round(pts[:, 1]).astype(int)
    inside = (x >= 0) & (y >= 0) & (x < warped.image.shape[1]) & (y < warped.image.shape[0])
    grown = warped.trace_mask.copy()
    grown[1:] |= warped.trace_mask[:-1]
    grown[:-1] |= warped.trace_mask[1:]
    grown[:, 1:] |= grown[:, :-1].copy()
    grown[:, :-1] |= grown[:, 1:].copy()
    assert inside.mean() > 0.99
    assert grown[y[inside], x[inside]].mean() > 0.97
    # Same window and reference: geometry never changes the truth signal.
    np.testing.assert_array_equal(flat.reference.signal_mv, warped.reference.signal_mv)
    assert warped.px_per_mm == flat.px_per_mm


def test_boxes_follow_the_warp(flat_and_warped):
    flat, warped = flat_and_warped
    hom = np.array(warped.truth["homography"])
    for fb, wb in zip(flat.lead_boxes, warped.lead_boxes, strict=True):
        corners = np.array([[fb.x0, fb.y0], [fb.x1, fb.y0], [fb.x1, fb.y1], [fb.x0, fb.y1]])
        np.testing.assert_allclose(np.array(wb.quad), transform_points(hom, corners), atol=1e-3)
        start, end = transform_points(hom, np.array([[fb.x0, fb.baseline_y], [fb.x1, fb.baseline_y]]))
        np.testing.assert_allclose(np.array(wb.baseline), [start, end], atol=1e-3)
        # Every labelled pixel of the lead inside its box's row lies within the box bounds.
        label = STANDARD_LEADS.index(wb.lead) + 1
        rows, cols = np.nonzero(warped.lead_labels == label)
        near = (cols >= wb.x0 - 2) & (cols <= wb.x1 + 2) & (rows >= wb.y0 - 30) & (rows <= wb.y1 + 30)
        assert np.all((rows[near] >= wb.y0 - 2) & (rows[near] <= wb.y1 + 2)), wb.lead


def test_no_geometry_means_identity_and_no_warp():
    assert plan_warp((100, 200), Degradation(), np.random.default_rng(0)) is None
    warp = plan_warp((100, 200), Degradation(scale=0.5), np.random.default_rng(0))
    assert warp is not None and warp.output_shape == (50, 100)
    np.testing.assert_allclose(
        transform_points(warp.homography, np.array([[-0.5, -0.5]])), [[-0.5, -0.5]], atol=1e-9
    )


def test_rotation_is_counter_clockwise_about_the_centre():
    warp = plan_warp((101, 201), Degradation(rotation_deg=10.0), np.random.default_rng(0))
    centre = np.array([[100.0, 50.0]])
    np.testing.assert_allclose(transform_points(warp.homography, centre), centre, atol=1e-6)
    # A point right of the centre moves up on screen (smaller row) when turned counter-clockwise.
    right = transform_points(warp.homography, np.array([[110.0, 50.0]]))[0]
    angle = np.deg2rad(10.0)
    np.testing.assert_allclose(right, [100.0 + 10 * np.cos(angle), 50.0 - 10 * np.sin(angle)], atol=1e-6)


def test_warp_page_fills_the_background_and_moves_the_masks():
    rng = np.random.default_rng(0)
    image = np.full((60, 80, 3), 255, np.uint8)
    mask = np.zeros((60, 80), bool)
    mask[30, 40] = True
    labels = mask.astype(np.uint8) * 7
    warp = plan_warp((60, 80), Degradation(background_margin=0.25, background="dark"), rng)
    out, out_mask, out_labels = warp_page(image, mask, labels, warp, "dark", rng)
    assert out.shape == (90, 120, 3)
    assert out[2, 2].max() < 100 and out[45, 60].min() == 255
    assert np.argwhere(out_mask).tolist() == [[45, 60]] and out_labels[45, 60] == 7


def test_camera_effects_jpeg_bytes_decode_to_the_returned_image():
    rng = np.random.default_rng(0)
    image = np.full((80, 120, 3), 230, np.uint8)
    image[40] = 0
    out, encoded = camera_effects(image, Degradation(jpeg_quality=70, noise_sigma=3.0), rng)
    assert encoded is not None
    decoded = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
    np.testing.assert_array_equal(decoded, out)


def test_black_and_white_threshold_gives_two_levels():
    image = np.linspace(0, 255, 256 * 3).astype(np.uint8).reshape(16, 16, 3)
    out, encoded = camera_effects(image, Degradation(bw_threshold=128), np.random.default_rng(0))
    assert encoded is None and set(np.unique(out)) <= {0, 255}


def test_gamma_darkens_mid_tones_and_keeps_the_ends():
    image = np.array([[[0, 0, 0], [128, 128, 128], [255, 255, 255]]], np.uint8)
    out, _ = camera_effects(image, Degradation(gamma=2.0), np.random.default_rng(0))
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, 2].tolist() == [255, 255, 255]
    assert out[0, 1, 0] == 64


def test_lighting_and_shadow_only_darken_and_stay_smooth():
    image = np.full((200, 300, 3), 240, np.uint8)
    out, _ = camera_effects(image, Degradation(uneven_light=0.4, shadow=0.5), np.random.default_rng(1))
    assert out.max() <= 240 and out.min() < 200
    assert np.abs(np.diff(out.astype(int), axis=1)).max() <= 12


@pytest.mark.parametrize("deg", [Degradation(creases=3), Degradation(wrinkles=1.0), Degradation(scribbles=4)])
def test_paper_effects_are_deterministic_and_keep_the_page(deg):
    image = np.full((170, 220, 3), 250, np.uint8)
    a = paper_effects(image, deg, np.random.default_rng(4), px_per_mm=4.0)
    b = paper_effects(image, deg, np.random.default_rng(4), px_per_mm=4.0)
    np.testing.assert_array_equal(a, b)
    assert a.shape == image.shape and a.dtype == np.uint8
    assert not np.array_equal(a, image)


def test_every_degradation_at_once_renders(record):
    deg = Degradation(
        creases=2, wrinkles=0.6, scribbles=2, rotation_deg=-7.0, perspective=0.08, scale=0.7,
        background="cloth", background_margin=0.2, uneven_light=0.3, shadow=0.4, blur_sigma_px=1.5,
        noise_sigma=6.0, gamma=1.2, sepia=0.5, jpeg_quality=60, trace_fade=0.5,
    )  # fmt: skip
    page = render_page(record, RenderSettings(dpi=120, degradation=deg), rng=0)
    assert page.encoded is not None and page.image.shape[:2] == page.trace_mask.shape
    assert page.trace_mask.any()
    rows, cols = page.image.shape[:2]
    for box in page.lead_boxes:
        assert -0.5 <= box.x0 <= box.x1 <= cols - 0.5 and -0.5 <= box.y0 <= box.y1 <= rows - 0.5


def test_faded_print_lightens_the_traces_unevenly_and_keeps_the_mask(record):
    settings = RenderSettings(dpi=150, lead_names=False)
    crisp = render_page(record, settings, rng=5)
    faded = render_page(record, dataclasses.replace(settings, degradation=Degradation(trace_fade=0.7)), rng=5)
    np.testing.assert_array_equal(crisp.trace_mask, faded.trace_mask)
    lum_crisp, lum_faded = _lum(crisp.image), _lum(faded.image)
    on_trace = crisp.trace_mask
    assert np.all(lum_faded[on_trace] >= lum_crisp[on_trace] - 1e-9)  # only lighter, never darker
    np.testing.assert_array_equal(
        lum_crisp[~on_trace & (lum_crisp > 250)], lum_faded[~on_trace & (lum_crisp > 250)]
    )
    # Uneven: in some stretches the trace keeps most of its ink, in others it loses much of it.
    rows, cols = np.nonzero(on_trace)
    bands = np.minimum(8 * cols // on_trace.shape[1], 7)
    kept = [
        (255 - lum_faded[rows[bands == b], cols[bands == b]]).mean()
        / (255 - lum_crisp[rows[bands == b], cols[bands == b]]).mean()
        for b in range(8)
        if np.any(bands == b)
    ]
    assert np.mean(kept) < 0.9 and max(kept) - min(kept) > 0.1
