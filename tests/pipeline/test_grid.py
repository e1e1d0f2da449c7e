"""Tests for ecgdig.pipeline.grid: grid removal for every colour family, traces kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_normalize import GRID_COLOURS, grid_page

from ecgdig.errors import ImageInputError
from ecgdig.pipeline.grid import INK_THRESHOLD, suppress_grid
from ecgdig.types import NormalizedPage


def _page(image: np.ndarray, px_per_mm: float = 8.0) -> NormalizedPage:
    return NormalizedPage(
        image=image,
        px_per_mm=px_per_mm,
        px_per_mm_confidence=1.0,
        scale_method="grid",
        source_px_per_mm=px_per_mm,
    )


@pytest.mark.parametrize("colour", list(GRID_COLOURS))
def test_grid_removed_and_traces_kept(colour: str) -> None:
    # Prepare: a page already at 8 px/mm with a known grid, four traces and text.
    image, masks = grid_page(px_per_mm=8.0, colour=GRID_COLOURS[colour], seed=5)
    # Execute
    out = suppress_grid(_page(image))
    # Assert
    removed = np.mean(out.ink[masks["grid"]] < INK_THRESHOLD)
    kept = np.mean(out.ink[masks["trace"]] >= 0.5)
    assert removed >= 0.95, removed
    assert kept >= (0.95 if colour != "black" else 0.9), kept
    assert out.grid_colour == colour
    assert out.leakage < 0.05
    assert out.ink.dtype == np.float32 and out.ink.shape == image.shape[:2]
    assert float(out.ink.min()) >= 0.0 and float(out.ink.max()) <= 1.0


def test_dotted_grid_lines_removed() -> None:
    image, masks = grid_page(px_per_mm=8.0, colour=GRID_COLOURS["grey"], style="dots")
    out = suppress_grid(_page(image))
    # Major lines go; the 1 mm dots are left to the segmenter's small-blob rule.
    assert np.mean(out.ink[masks["trace"]] >= 0.5) >= 0.95
    assert out.grid_colour in {"grey", "black"}


def test_page_without_grid_reports_none() -> None:
    image, masks = grid_page(px_per_mm=8.0, style="none")
    out = suppress_grid(_page(image))
    assert out.grid_colour == "none"
    assert out.leakage == 0.0
    assert np.mean(out.ink[masks["trace"]] >= 0.5) >= 0.95


def test_trace_lying_on_a_grid_line_keeps_its_excess_darkness() -> None:
    # A flat trace exactly on a major grid line of a grey grid must not be divided away.
    image, _ = grid_page(px_per_mm=8.0, colour=GRID_COLOURS["grey"], traces=False, text=False)
    row = 40 * 8  # 40 mm: a major line
    image[row - 1 : row + 2, 100:1400] = 20
    out = suppress_grid(_page(image))
    assert float(np.median(out.ink[row, 100:1400])) >= 0.5


def test_tinted_grid_whose_heaviest_lines_are_neutral_is_named_without_a_hue() -> None:
    # Most marked lines pink, the heaviest pure grey: the colour is chromatic, its heavy lines have
    # no hue at all (this divided by zero on a photo that was no ECG).
    image = np.full((400, 600, 3), 255, np.uint8)
    image[::8, :] = image[:, ::8] = (240, 120, 150)
    image[::40, :] = image[:, ::40] = (100, 100, 100)
    out = suppress_grid(_page(image))
    assert out.grid_colour in ("grey", "black")
    assert np.isfinite(out.ink).all()


def test_bad_page_image_raises() -> None:
    with pytest.raises(ImageInputError):
        suppress_grid(_page(np.zeros((50, 60), np.uint8)))


def test_real_orange_grid_scan(shared_data: Path) -> None:
    from ecgdig.io import read_image
    from ecgdig.pipeline.normalize import normalize

    path = shared_data / "pages" / "real_no_truth" / "paperecg_fullScan.png"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    out = suppress_grid(normalize(read_image(path)))
    assert out.grid_colour == "orange"
    assert out.leakage < 0.05
