from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ecgdig.io import read_image
from ecgdig.pipeline.digitize import (
    DigitizeOptions,
    collect_inputs,
    digitize_file,
    digitize_files,
    digitize_image,
    output_paths,
    record_name_for,
    sidecar,
)
from ecgdig.pipeline.orient import Orientation, apply_orientation

SAMPLE = Path(__file__).resolve().parents[2] / "sample_pages" / "ge_marquette_scan.png"
#: The classical segmenter at half the usual scale: the same steps, in a fraction of the time.
QUICK = DigitizeOptions(segmenter="classical", target_px_per_mm=5.0)


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (300, 300), "white").save(path)
    return path


def test_folders_skip_truth_and_overlay_images_beside_their_page(tmp_path: Path) -> None:
    page = _png(tmp_path / "a" / "rec-0.png")
    _png(tmp_path / "a" / "rec-0_mask.png")
    _png(tmp_path / "a" / "rec-0_labels.png")
    _png(tmp_path / "a" / "rec-0_overlay.png")
    lone = _png(tmp_path / "a" / "sub" / "scan_mask.png")  # no page beside it: a page after all

    found = collect_inputs([str(tmp_path / "a")])

    assert found == [page, lone]


def test_stdin_list_and_duplicates(tmp_path: Path) -> None:
    a = _png(tmp_path / "a.png")
    found = collect_inputs([str(a), "-"], stdin_lines=[f"{a}\n", "\n", f"{tmp_path / 'b.png'}\n"])
    assert found == [a, tmp_path / "b.png"]


def test_record_names_are_wfdb_safe() -> None:
    assert record_name_for(Path("scan 01 (copy).jpeg")) == "scan_01_copy"
    assert output_paths(Path("x/p.q.png"), Path("o"))["hea"] == Path("o/p_q.hea")


def test_clashing_record_names_fail_instead_of_overwriting(tmp_path: Path) -> None:
    # Two inputs that map to the same record name: the second is refused, the first is processed.
    first = tmp_path / "one" / "page.png"
    second = tmp_path / "two" / "page.png"
    for path in (first, second):
        path.parent.mkdir()
        path.write_bytes(b"")  # empty: fails fast in read_image, which is all this test needs
    outcomes = digitize_files([first, second], tmp_path / "out")

    assert [o.status for o in outcomes] == ["failed", "failed"]
    assert "file is empty" in outcomes[0].message
    assert "already used by" in outcomes[1].message and str(first) in outcomes[1].message


def test_page_scanned_upside_down_is_digitized_as_if_upright() -> None:
    upright = read_image(SAMPLE)
    scanned = apply_orientation(upright, Orientation(quarter_turns=2))

    plain = digitize_image(upright, options=QUICK)
    turned = digitize_image(scanned, options=QUICK)

    # The correction is an exact pixel permutation, so everything after it is the same.
    assert np.array_equal(turned.record.signal_mv, plain.record.signal_mv, equal_nan=True)
    assert turned.orientation is not None and turned.orientation.quarter_turns == 2
    assert turned.warnings[0].startswith("page turned 180 degrees to make it upright")
    side = json.loads(json.dumps(sidecar(turned)))
    assert side["orientation"]["quarter_turns"] == 2 and side["orientation"]["mirrored"] is False
    assert "pulses" in side["orientation"]["evidence"] and 0 < side["orientation"]["confidence"] <= 1
    assert plain.orientation is not None and plain.orientation.is_identity
    assert not any("upright" in w for w in plain.warnings)
    assert "orient" in plain.timings_s


def test_orientation_check_can_be_switched_off() -> None:
    scanned = apply_orientation(read_image(SAMPLE), Orientation(quarter_turns=1))
    result = digitize_image(scanned, options=DigitizeOptions(segmenter="classical", orient=False))
    assert result.orientation is None and sidecar(result)["orientation"] is None


def _photo_of_anything(rng: np.random.Generator) -> np.ndarray:
    """Smooth shading, overlapping discs and sensor noise: a photo with no grid and no trace."""
    y, x = np.mgrid[0:900, 0:1200].astype(np.float32)
    img = np.stack([120 + 80 * np.sin(x / 150), 100 + 60 * np.cos(x / 90 + y / 300), 80 + 100 * y / 900], 2)
    for _ in range(30):
        cx, cy, r = rng.uniform(0, 1200), rng.uniform(0, 900), rng.uniform(20, 200)
        disc = (x - cx) ** 2 + (y - cy) ** 2 < r**2
        img[disc] = 0.5 * img[disc] + 0.5 * rng.uniform(0, 255, 3)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def _text_page(rng: np.random.Generator) -> np.ndarray:
    page = np.full((1700, 2200, 3), 245, np.uint8)
    for r in range(100, 1600, 40):
        for c in range(100, 2000, 60):
            if rng.random() < 0.8:
                page[r : r + 14, c : c + rng.integers(20, 55)] = 30
    return page


@pytest.mark.parametrize("segmenter", ["classical", "unet"])
@pytest.mark.parametrize("kind", ["noise", "photo", "text", "rgba-noise", "grey-noise"])
def test_an_image_that_is_no_ecg_fails_in_one_line(tmp_path: Path, kind: str, segmenter: str) -> None:
    rng = np.random.default_rng(0)
    image = {
        "noise": lambda: rng.integers(0, 256, (1700, 2200, 3), dtype=np.uint8),
        "photo": lambda: _photo_of_anything(rng),
        "text": lambda: _text_page(rng),
        "rgba-noise": lambda: rng.integers(0, 256, (850, 1100, 4), dtype=np.uint8),
        "grey-noise": lambda: rng.integers(0, 256, (850, 1100), dtype=np.uint8),
    }[kind]()
    path = tmp_path / f"{kind}.png"
    Image.fromarray(image).save(path)

    outcome = digitize_file(path, tmp_path / "out", options=DigitizeOptions(segmenter=segmenter))

    assert outcome.status == "failed"
    assert "does not look like an ECG page" in outcome.message and "\n" not in outcome.message
    assert not (tmp_path / "out" / f"{kind}.hea").exists()
