"""Page orientation: quarter turns and mirroring are found and undone; upright pages stay as they are."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
from synthetic import ecg_like

from ecgdig.io import read_image
from ecgdig.leads import STANDARD_LEADS
from ecgdig.pipeline.orient import Orientation, apply_orientation, detect_orientation
from ecgdig.render import RenderSettings, render_page
from ecgdig.types import EcgRecord

TURNS = [(False, 1), (False, 2), (False, 3)]
MIRRORS = [(True, 0), (True, 1), (True, 2), (True, 3)]
#: R-wave amplitudes (mV) with the usual signs: aVR, V1 and V2 point down.
R_MV = (1.0, 1.2, 0.4, -0.9, 0.4, 0.8, -0.7, -0.4, 0.6, 1.4, 1.3, 1.0)


def as_scanned(image: np.ndarray, mirrored: bool, turns: int) -> np.ndarray:
    """The page as a scanner might deliver it: mirrored, then turned counter-clockwise."""
    return apply_orientation(image, Orientation(quarter_turns=turns, mirrored=mirrored))


def restored(image: np.ndarray, mirrored: bool, turns: int) -> bool:
    """Whether detecting and applying the correction gives back exactly the upright page."""
    scanned = as_scanned(image, mirrored, turns)
    return np.array_equal(apply_orientation(scanned, detect_orientation(scanned)), image)


@cache
def rendered(layout: str, grid_colour: str = "red", pulse: bool = True) -> np.ndarray:
    """A page of a crude 12-lead ECG at 100 dpi (portrait for 6x1, as such pages are printed)."""
    signal = np.stack([ecg_like(500.0, 10.0, seed=0, amplitude_mv=a) for a in R_MV], axis=1)
    settings = RenderSettings(
        dpi=100,
        layout=layout,
        grid_colour=grid_colour,
        calibration_pulse=pulse,
        orientation="portrait" if layout == "6x1" else "landscape",
    )
    return render_page(EcgRecord("synth", signal, 500.0, STANDARD_LEADS), settings, rng=0).image


@cache
def _read(path: Path) -> np.ndarray:
    return read_image(path)


def real(shared_data: Path, name: str) -> np.ndarray:
    return _read(shared_data / "pages" / name)


# --------------------------------------------------------------------------------------------------
# The correction itself
# --------------------------------------------------------------------------------------------------


def test_quarter_turns_are_counter_clockwise_and_mirroring_comes_first() -> None:
    a = np.arange(6).reshape(2, 3)
    assert apply_orientation(a, Orientation(quarter_turns=1)).tolist() == [[2, 5], [1, 4], [0, 3]]
    mirrored_then_turned = apply_orientation(a, Orientation(mirrored=True, quarter_turns=1))
    assert mirrored_then_turned.tolist() == [[0, 3], [1, 4], [2, 5]]
    assert apply_orientation(a, Orientation()) is a


@pytest.mark.parametrize(("mirrored", "turns"), TURNS + MIRRORS)
def test_every_correction_has_an_inverse_among_corrections(mirrored: bool, turns: int) -> None:
    # A mirror then a turn undoes itself; a plain turn is undone by the opposite turn.
    a = np.arange(12).reshape(3, 4)
    inverse = Orientation(quarter_turns=turns if mirrored else -turns % 4, mirrored=mirrored)
    assert np.array_equal(apply_orientation(as_scanned(a, mirrored, turns), inverse), a)


def test_describe_says_what_was_done() -> None:
    assert Orientation(quarter_turns=2).describe() == "turned 180 degrees"
    assert Orientation(quarter_turns=3).describe() == "turned 90 degrees clockwise"
    assert Orientation(mirrored=True).describe() == "mirrored left-right"
    assert Orientation(quarter_turns=1, mirrored=True).describe() == (
        "mirrored left-right and turned 90 degrees counter-clockwise"
    )
    assert Orientation().is_identity and not Orientation(quarter_turns=2).is_identity


@pytest.mark.parametrize(
    "image",
    [
        np.full((850, 1100, 3), 255, np.uint8),
        np.zeros((850, 1100, 3), np.uint8),
        np.random.default_rng(0).integers(0, 256, (850, 1100, 3), dtype=np.uint8),
        np.random.default_rng(1).integers(0, 256, (850, 1100), dtype=np.uint8),
        np.random.default_rng(2).integers(0, 256, (850, 1100, 4), dtype=np.uint8),
        np.random.default_rng(3).integers(0, 256, (40, 3000, 3), dtype=np.uint8),
        np.zeros((10, 10, 3), np.uint8),
    ],
    ids=["white", "black", "noise", "grey-noise", "rgba-noise", "thin-strip", "tiny"],
)
def test_images_without_traces_are_left_alone_and_show_no_beats(image: np.ndarray) -> None:
    found = detect_orientation(image)
    assert found.is_identity and found.beats == 0 and found.confidence == 0.0
    assert found.evidence


# --------------------------------------------------------------------------------------------------
# Rendered pages (no shared data needed)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["3x4+1", "6x2", "12x1", "6x1"])
def test_rendered_page_is_restored_from_every_turn_and_mirror(layout: str) -> None:
    page = rendered(layout)
    failed = [(m, k) for m, k in TURNS + MIRRORS if not restored(page, m, k)]
    assert not failed


@pytest.mark.parametrize("grid_colour", ["red", "pink", "blue", "green", "grey", "none"])
@pytest.mark.parametrize("layout", ["3x4+1", "12x1", "6x1"])
def test_upright_rendered_pages_are_left_alone(layout: str, grid_colour: str) -> None:
    found = detect_orientation(rendered(layout, grid_colour, pulse=False))
    assert found.is_identity, found.evidence
    assert found.beats >= 20


def test_upside_down_page_without_pulses_is_still_turned_back() -> None:
    # No calibration pulse: the rhythm strip, the T waves and the lead labels decide.
    assert restored(rendered("3x4+1", pulse=False), False, 2)


# --------------------------------------------------------------------------------------------------
# Real pages (shared data)
# --------------------------------------------------------------------------------------------------

#: Pages of every kind: ecg-image-kit (red, blue, rotated and noisy, 12x1, 6x2, header), real scans
#: (GE-like, pulses on the right, a portrait 6x1 sheet) and phone photos of folded sheets.
REAL = [
    "ecg_image_kit/pages/eik001.png",
    "ecg_image_kit/pages/eik011.png",
    "ecg_image_kit/pages/eik029.png",
    "ecg_image_kit/pages/eik043.png",
    "ecg_image_kit/pages/eik045.png",
    "ecg_image_kit/pages/eik060.png",
    "real_no_truth/eik_ecg00001.png",
    "real_no_truth/eik_ecg00012.jpg",
    "real_no_truth/eik_ecg00005.jpg",
    "photos_with_truth/01442_hr-0.jpg",
    "photos_with_truth/02694_hr-0.jpg",
]


@pytest.mark.parametrize("name", REAL)
def test_real_page_turned_any_way_is_restored(shared_data: Path, name: str) -> None:
    page = real(shared_data, name)
    assert detect_orientation(page).is_identity
    failed = [(m, k) for m, k in TURNS if not restored(page, m, k)]
    assert not failed


#: Pages with calibration pulses and lead labels, which tell a mirror image from a turned page.
MIRRORED = [
    "ecg_image_kit/pages/eik001.png",
    "ecg_image_kit/pages/eik046.png",
    "real_no_truth/eik_ecg00001.png",
]


@pytest.mark.parametrize("name", MIRRORED)
def test_real_mirrored_page_is_restored(shared_data: Path, name: str) -> None:
    failed = [(m, k) for m, k in MIRRORS if not restored(real(shared_data, name), m, k)]
    assert not failed


def test_portrait_six_by_one_sheet_is_not_turned_sideways(shared_data: Path) -> None:
    # A portrait page is no evidence of a quarter turn: the strips run across it.
    found = detect_orientation(real(shared_data, "real_no_truth/eik_ecg00005.jpg"))
    assert found.is_identity, found.evidence
    assert "strips horizontal" in found.evidence


@pytest.mark.slow
def test_no_upright_page_is_turned_and_most_turned_pages_are_restored(shared_data: Path) -> None:
    kinds = ["ecg_image_kit/pages/*.png", "real_no_truth/*.[pj][np]g", "photos_with_truth/*.jpg"]
    pages = sorted(p for kind in kinds for p in (shared_data / "pages").glob(kind))
    assert len(pages) == 91
    false_turns, restored_count = [], {t: 0 for t in TURNS + MIRRORS}
    for path in pages:
        page = read_image(path)
        if not detect_orientation(page).is_identity:
            false_turns.append(path.name)
        for m, k in TURNS + MIRRORS:
            restored_count[(m, k)] += restored(page, m, k)
    assert not false_turns
    # Measured: 90 degrees 0.95, 180 degrees 0.93, 270 degrees 0.97, mirrored 0.70 to 0.88.
    for transform in TURNS:
        assert restored_count[transform] / len(pages) >= 0.9, (transform, restored_count)
    for transform in MIRRORS:
        assert restored_count[transform] / len(pages) >= 0.6, (transform, restored_count)
