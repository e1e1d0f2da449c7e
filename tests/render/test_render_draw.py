"""Tests of ecgdig.render.draw: stroke coverage, masks and grid profiles against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from ecgdig.render.draw import (
    Stroke,
    composite,
    grid_coverage,
    line_profile,
    rasterize_strokes,
    supersample_factor,
)


def test_horizontal_stroke_covers_its_width_and_masks_half_covered_pixels():
    # Prepare: a 2.25 px wide line (9 sub-pixels at 4x) centred on y = 10.5, from x = 5 to 60.
    stroke = Stroke(np.array([[5.0, 10.5], [60.0, 10.5]]), label=3)
    # Execute
    coverage, labels = rasterize_strokes([stroke], (30, 80), width_px=2.25, supersample=4)
    # Assert: rows 10 and 11 lie inside [9.375, 11.625]; one outer quarter row is inked (the
    # centre snaps to the 1/4 px grid), the rest is blank.
    column = coverage[:, 30].astype(float) / 255
    np.testing.assert_allclose(column[10:12], 1.0)
    assert column[8] == 0 and column[13] == 0
    assert column.sum() == pytest.approx(2.25, abs=0.01)
    assert np.flatnonzero(labels[:, 30]).tolist() == [10, 11]
    assert set(np.unique(labels)) == {0, 3}


@pytest.mark.parametrize("centre", [10.0, 10.3, 10.5, 10.8])
def test_stroke_centroid_is_the_line_position(centre):
    stroke = Stroke(np.array([[5.0, centre], [60.0, centre]]), label=1)
    coverage, _ = rasterize_strokes([stroke], (30, 80), width_px=2.5, supersample=4)
    column = coverage[:, 30].astype(float)
    # The centre snaps to the 1/4 px grid (<= 1/8 px); the pixel centroid adds up to 1/16 px.
    assert (column * np.arange(30)).sum() / column.sum() == pytest.approx(centre, abs=0.19)
    assert column.sum() / 255 == pytest.approx(2.5, abs=0.26)  # widths come in 1/2 px steps at 4x


def test_labels_are_exactly_the_mask_and_the_larger_label_wins():
    a = Stroke(np.array([[0.0, 5.0], [40.0, 5.0]]), label=2)
    b = Stroke(np.array([[20.0, 0.0], [20.0, 20.0]]), label=9)
    coverage, labels = rasterize_strokes([b, a], (20, 40), width_px=1.5, supersample=4)
    np.testing.assert_array_equal(labels > 0, coverage >= 128)
    assert labels[5, 20] == 9 and labels[5, 5] == 2 and labels[15, 20] == 9


def test_strokes_leaving_the_image_are_clipped():
    far = Stroke(np.array([[10.0, 10.0], [10.0, 1e9], [1e9, 1e9]]), label=1)
    coverage, labels = rasterize_strokes([far], (30, 30), width_px=2.0)
    assert labels[10:, 9:12].any() and coverage.shape == (30, 30)


def test_nan_and_empty_strokes_draw_nothing():
    coverage, labels = rasterize_strokes([Stroke(np.array([[np.nan, 1.0]]), 1)], (10, 10), 1.0)
    assert not coverage.any() and not labels.any()


def test_line_profile_is_exact_box_coverage():
    # Lines of width 1.5 at x = 2.25 + 10 k. By hand, the first spans [1.5, 3.0]: pixel 1 ([0.5, 1.5])
    # gets 0, pixel 2 ([1.5, 2.5]) gets 1, pixel 3 ([2.5, 3.5]) gets 0.5.
    prof = line_profile(25, 2.25, 10.0, 1.5, 0, 25)
    np.testing.assert_allclose(prof[:5], [0.0, 0.0, 1.0, 0.5, 0.0])
    np.testing.assert_allclose(prof[12:14], [1.0, 0.5])
    assert prof.sum() == pytest.approx(3 * 1.5)
    assert line_profile(25, 2.25, 10.0, 1.5, 5, 15)[:5].sum() == 0  # outside the drawn range


@pytest.mark.parametrize("style", ["lines", "dots", "dotted"])
def test_grid_has_major_lines_every_5_mm(style):
    minor, major = grid_coverage(
        (100, 100), (-0.5, -0.5, 99.5, 99.5), (0.0, 0.0), 4.0,
        style=style, minor=True, major_width_px=1.0, minor_width_px=1.0,
    )  # fmt: skip
    # Major lines at x, y = 0, 20, 40, ... px (5 mm at 4 px/mm); nothing at x = 10 between them.
    assert major[:, 20].max() == 1.0 and major[1:20, 10].max() == 0.0 and major[1:20, 30].max() == 0.0
    assert minor is not None and minor[:, 20].max() == 0.0  # no minor ink under a major line
    assert minor[:, 4].max() == 1.0 and minor[1:4, 2].max() == 0.0  # 1 mm = 4 px


def test_composite_multiplies_ink_on_paper():
    paper = (200, 100, 50)
    cov = np.zeros((4, 4), np.float32)
    cov[1, 1] = 1.0
    out = composite(paper, [(cov, (0, 0, 0)), (None, (9, 9, 9))])
    assert out[1, 1].tolist() == [0, 0, 0] and out[0, 0].tolist() == list(paper)
    page = composite(out, [(np.full((4, 4), 255, np.uint8), (255, 128, 0))])
    assert page[0, 0].tolist() == [200, 50, 0]


def test_supersample_factor_drops_with_dpi():
    assert [supersample_factor(d) for d in (100, 200, 250, 300)] == [4, 4, 3, 2]
