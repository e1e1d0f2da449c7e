"""Tests for ecgdig.pipeline.segment: the classical trace segmenter and the learned one's plumbing."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from test_normalize import GRID_COLOURS, grid_page

from ecgdig.errors import ConfigError, ModelFileError
from ecgdig.pipeline.grid import suppress_grid
from ecgdig.pipeline.segment import erase_ruled_lines, lighten_cool_grid, segment
from ecgdig.render import RenderSettings, render_page
from ecgdig.types import GridSuppression, NormalizedPage


def _page(image: np.ndarray, px_per_mm: float = 8.0) -> NormalizedPage:
    return NormalizedPage(
        image=image,
        px_per_mm=px_per_mm,
        px_per_mm_confidence=1.0,
        scale_method="grid",
        source_px_per_mm=px_per_mm,
    )


@pytest.mark.parametrize("colour", ["red", "grey", "blue"])
def test_traces_found_grid_not(colour: str) -> None:
    image, masks = grid_page(px_per_mm=8.0, colour=GRID_COLOURS[colour], seed=2)
    page = _page(image)
    prob = segment(page, grid=suppress_grid(page), segmenter="classical")
    p = prob.probability
    assert p.dtype == np.float32 and p.shape == image.shape[:2]
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    assert np.mean(p[masks["trace"]] >= 0.5) >= 0.95
    assert np.mean(p[masks["grid"]] >= 0.5) <= 0.01
    assert prob.segmenter == "classical"
    assert prob.extras["mask"].shape == image.shape[:2]


def test_grid_is_computed_when_not_given() -> None:
    image, masks = grid_page(px_per_mm=8.0, colour=GRID_COLOURS["pink"])
    p = segment(_page(image), segmenter="classical").probability
    assert np.mean(p[masks["trace"]] >= 0.5) >= 0.95


def test_rules_drop_lines_specks_and_blocks_but_keep_traces_and_text() -> None:
    # Prepare: white page with a wavy trace, text, a ruled line, specks and a solid block.
    image = np.full((800, 1600, 3), 255, np.uint8)
    x = np.arange(100, 1500)
    y = (400 + 30 * np.sin(x / 40.0)).astype(int)
    for dy in (-1, 0, 1):
        image[y + dy, x] = 20
    cv2.putText(image, "V5 25mm/s", (120, 600), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (20, 20, 20), 2, cv2.LINE_AA)
    image[700, 50:1550] = 20  # ruled line, 1500 px = 187 mm
    image[100:102, 300:302] = 20  # speck
    image[150, 800] = 20  # speck
    image[80:180, 1200:1400] = 0  # redaction block
    # Execute
    p = segment(_page(image), segmenter="classical").probability
    # Assert
    assert np.mean(p[y, x] >= 0.5) >= 0.98
    assert float(p[590:605, 120:300].max()) >= 0.9  # text kept
    assert float(p[700, 60:1540].max()) == 0.0
    assert float(p[95:105, 295:305].max()) == 0.0
    assert float(p[150, 800]) == 0.0
    assert float(p[80:180, 1200:1400].max()) == 0.0


def test_unknown_segmenter_and_missing_model_file_are_clear_errors(tmp_path) -> None:
    page = _page(np.full((100, 100, 3), 255, np.uint8))
    with pytest.raises(ConfigError, match="unknown segmenter"):
        segment(page, segmenter="magic")
    with pytest.raises(ModelFileError, match="no such model file"):
        segment(page, segmenter="unet", model_path=tmp_path / "absent.safetensors")


def test_grid_of_another_shape_raises() -> None:
    page = _page(np.full((100, 100, 3), 255, np.uint8))
    grid = GridSuppression(ink=np.zeros((50, 50), np.float32), grid_colour="none", leakage=0.0)
    with pytest.raises(ValueError, match="shape"):
        segment(page, grid=grid, segmenter="classical")


def test_blank_page_gives_zero_probability() -> None:
    p = segment(_page(np.full((300, 400, 3), 255, np.uint8)), segmenter="classical").probability
    assert float(p.max()) == 0.0


def test_unet_runs_at_the_model_scale_and_answers_on_the_page_grid(tmp_path) -> None:
    from ecgdig.model.files import ModelHeader, save_model
    from ecgdig.model.network import TraceUnet, UnetArchitecture

    architecture = UnetArchitecture(encoder_widths=(4, 8), decoder_channels=(8, 4), channels_per_group=4)
    path = save_model(
        tmp_path / "tiny.safetensors",
        TraceUnet(architecture),
        ModelHeader(architecture=architecture, px_per_mm=8.0, classes=("trace",)),
    )
    page = _page(np.full((90, 130, 3), 255, np.uint8), px_per_mm=4.0)

    result = segment(page, segmenter="unet", model_path=path, threads=1)

    assert result.probability.shape == (90, 130)
    assert result.probability.dtype == np.float32
    assert 0.0 <= result.probability.min() <= result.probability.max() <= 1.0
    assert result.segmenter == "unet:tiny.safetensors"


@pytest.mark.parametrize(
    ("grid_colour", "lightened"), [("dark-blue", True), ("dark-green", True), ("red", False)]
)
def test_a_cool_grid_is_lightened_for_the_unet_and_a_warm_one_is_not(
    record, grid_colour: str, lightened: bool
) -> None:
    # Prepare: ecg-image-kit's dark blue and green grids, which the shipped model reads badly.
    page = render_page(record, RenderSettings(dpi=100, layout="3x4+1", grid_colour=grid_colour), rng=0)
    grey = page.image.mean(axis=2)
    trace = page.trace_mask > 0
    grid = (grey < 200) & ~cv2.dilate(trace.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)

    # Execute
    out = lighten_cool_grid(page.image)

    # Assert: the grid turns pale and the trace stays dark, or the page is left as it was.
    assert (out is not page.image) == lightened
    if lightened:
        assert np.median(out[grid].mean(axis=1)) > 150 > np.median(grey[grid])
        assert np.median(out[trace].mean(axis=1)) < 80


def test_frame_lines_are_erased_and_steep_flanks_kept() -> None:
    probability = np.zeros((800, 1000), dtype=np.float32)
    probability[20, 10:990] = 1.0  # a frame line across the page
    probability[100:300, 500:503] = 1.0  # a 25 mm deep S wave's straight flank
    erased = erase_ruled_lines(probability, 8.0)
    assert not erased[20].any()
    assert erased[100:300, 500:503].all()
