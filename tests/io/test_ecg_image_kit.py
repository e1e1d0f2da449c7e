"""ecg-image-kit pages: exact masks from plotted pixels, corrections, the training folder, import-eik."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ecgdig.cli import app
from ecgdig.errors import ConfigError, EcgdigError, ImageInputError
from ecgdig.io import write_image
from ecgdig.io.ecg_image_kit import (
    find_ecg_image_kit_pages,
    read_crop_fractions,
    read_ecg_image_kit_page,
    trace_ink_agreement,
    write_training_folder,
)
from ecgdig.model.data import PageFolder

runner = CliRunner()

#: A flat stretch at row 100.25 from column 60 to 200, a jump down to row 180.25 at column 200.4,
#: and back up: ``[row, col]`` as the generator writes them (pixel (i, j) covers [i, i+1) x [j, j+1)).
ROW = 100.25
FLAT = [[ROW, 60 + 0.4 * k] for k in range(351)]
JUMP = [[180.25, 200.4], [ROW, 200.8], [ROW, 240.0]]


def _eik_json(width: int = 400, height: int = 300, dpi: int = 200, inline: bool = True) -> dict[str, object]:
    leads: list[dict[str, object]] = [
        {"lead_name": "II", "start_sample": 0, "end_sample": 351},
        {"lead_name": "V1", "start_sample": 0, "end_sample": 3},
    ]
    if inline:
        leads[0]["plotted_pixels"], leads[1]["plotted_pixels"] = FLAT, JUMP
    return {
        "width": width,
        "height": height,
        "resolution": dpi,
        "leads": leads,
        "ecg_plot_color": [0.0, 0.0, 0.0],
        "grid_line_color_major": [255.0, 0.0, 0.0],
        "grid_line_color_minor": [253.98, 223.0, 218.99],
    }


def _write_page(folder: Path, name: str, *, border: int = 0, dpi: int = 200, inline: bool = True) -> Path:
    """A blank page of the JSON's size (plus a border) with the JSON beside it; returns the image."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = _eik_json(dpi=dpi, inline=inline)
    image = np.full((300 + 2 * border, 400 + 2 * border, 3), 255, np.uint8)
    write_image(folder / f"{name}.png", image)
    (folder / f"{name}.json").write_text(json.dumps(meta))
    return folder / f"{name}.png"


def _rows_at(mask: np.ndarray, col: int) -> list[int]:
    return [int(r) for r in np.flatnonzero(mask[:, col])]


def test_mask_lies_on_the_points_with_the_width_asked(tmp_path: Path) -> None:
    image_path = _write_page(tmp_path, "p")

    _, mask, px_per_mm = read_ecg_image_kit_page(image_path, tmp_path / "p.json")

    assert px_per_mm == pytest.approx(200 / 25.4)
    # 0.75 pt at 200 dpi is 2.08 px: the line spans rows 99.2-101.3, so rows 99 and 100 are more
    # than half covered and 101 is not.
    assert _rows_at(mask, 120) == [99, 100]
    # Consecutive points are joined: the jump at column 200 is an unbroken vertical run.
    assert set(range(100, 181)) <= set(_rows_at(mask, 200))
    # Nothing away from the points.
    assert not mask[:, :58].any() and not mask[:, 243:].any() and not mask[:97].any()
    assert not mask[104:178, 100:190].any()


def test_mask_width_follows_the_dpi(tmp_path: Path) -> None:
    image_path = _write_page(tmp_path, "p", dpi=100)
    _, mask, px_per_mm = read_ecg_image_kit_page(image_path, tmp_path / "p.json")
    assert px_per_mm == pytest.approx(100 / 25.4)
    assert _rows_at(mask, 120) == [100]  # 1.04 px: only the row the line runs through


def test_border_and_crop_move_the_mask(tmp_path: Path) -> None:
    image_path = _write_page(tmp_path, "b", border=20)
    _, mask, _ = read_ecg_image_kit_page(image_path, tmp_path / "b.json")
    assert mask.shape == (340, 440)
    assert _rows_at(mask, 140) == [119, 120]  # 20 px down and 20 px across
    assert not mask[:, :78].any()

    image_path = _write_page(tmp_path, "c")
    _, mask, px_per_mm = read_ecg_image_kit_page(image_path, tmp_path / "c.json", crop_fraction=0.05)
    # t = 15 rows and l = 20 columns cropped per side, then 270 x 360 resized back to 300 x 400.
    row = (ROW - 15) * 300 / 270
    col = round((120 - 20) * 400 / 360)
    assert np.mean(_rows_at(mask, col)) + 0.5 == pytest.approx(row, abs=0.5)
    assert not mask[:, : round((60 - 20) * 400 / 360) - 2].any()
    assert px_per_mm == pytest.approx(200 / 25.4 * np.sqrt(300 / 270 * 400 / 360))


def test_separate_pixel_files_give_the_inline_mask(tmp_path: Path) -> None:
    inline = _write_page(tmp_path / "a", "p")
    moved = _write_page(tmp_path / "b", "p", inline=False)
    with gzip.open(tmp_path / "b" / "p.pixels.json.gz", "wt") as handle:
        json.dump([FLAT, JUMP], handle)

    _, expected, _ = read_ecg_image_kit_page(inline, tmp_path / "a" / "p.json")
    _, mask, _ = read_ecg_image_kit_page(
        moved, tmp_path / "b" / "p.json", tmp_path / "b" / "p.pixels.json.gz"
    )

    assert np.array_equal(mask, expected)
    with pytest.raises(ConfigError, match="no 'plotted_pixels'"):
        read_ecg_image_kit_page(moved, tmp_path / "b" / "p.json")


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        ("{not json", ConfigError, "not a readable JSON file"),
        ('{"width": 400}', ConfigError, "no 'leads' list"),
        ("BAD_WIDTH", ConfigError, "'width' must be a positive whole number"),
        ("BAD_POINTS", ConfigError, "lead 1 are not a list of finite"),
        ("WRONG_SIZE", ImageInputError, "not this page's JSON"),
        ("OUTSIDE", ImageInputError, "fall outside the 400x300 image"),
    ],
)
def test_bad_json_is_a_one_line_error_naming_the_file(
    tmp_path: Path, content: str, error: type[EcgdigError], message: str
) -> None:
    image_path = _write_page(tmp_path, "p")
    meta = _eik_json()
    if content == "BAD_WIDTH":
        meta["width"] = -3
    elif content == "BAD_POINTS":
        meta["leads"][1]["plotted_pixels"] = [[1.0, float("nan")]]  # type: ignore[index]
    elif content == "WRONG_SIZE":
        meta["width"] = 380
    elif content == "OUTSIDE":
        meta["leads"][0]["plotted_pixels"] = [[r + 500, c] for r, c in FLAT]  # type: ignore[index]
    if content.isupper():
        content = json.dumps(meta)
    (tmp_path / "p.json").write_text(content)

    with pytest.raises(error, match=message) as caught:
        read_ecg_image_kit_page(image_path, tmp_path / "p.json")

    text = str(caught.value)
    assert "\n" not in text and text.startswith(str(tmp_path))


def test_pixel_list_that_does_not_match_the_leads_is_refused(tmp_path: Path) -> None:
    image_path = _write_page(tmp_path, "p", inline=False)
    with gzip.open(tmp_path / "p.pixels.json.gz", "wt") as handle:
        json.dump([FLAT], handle)
    with pytest.raises(ConfigError, match=r"holds 1 pixel lists but p\.json has 2 leads"):
        read_ecg_image_kit_page(image_path, tmp_path / "p.json", tmp_path / "p.pixels.json.gz")
    with pytest.raises(ConfigError, match=r"crop fraction must be in \[0, 0.5\)"):
        read_ecg_image_kit_page(image_path, tmp_path / "p.json", crop_fraction=0.5)


def test_training_folder_is_read_by_page_folder_and_done_pages_are_skipped(tmp_path: Path) -> None:
    source = tmp_path / "eik"
    for name in ("p1", "p2"):
        _write_page(source, name)
    (source / "p3.png").write_bytes((source / "p1.png").read_bytes())  # no JSON
    (source / "MANIFEST.csv").write_text("page,augmentations\np2,rotation +2 deg; crop 2.00% per side\n")
    pages = find_ecg_image_kit_pages(source)
    assert [(p.name, p.crop_fraction) for p in pages] == [("p1", 0.0), ("p2", 0.02), ("p3", 0.0)]

    outcomes = write_training_folder(pages, tmp_path / "train")

    assert [o.status for o in outcomes] == ["written", "written", "failed"]
    assert "p3.png: no JSON" in outcomes[2].message and "\n" not in outcomes[2].message
    truth = json.loads((tmp_path / "train" / "p2.json").read_text())
    assert truth["px_per_mm"] == pytest.approx(200 / 25.4 * np.sqrt(300 / 288 * 400 / 384))
    folder = PageFolder(tmp_path / "train", seed=0, crop_px=64, crops_per_page=1)
    assert folder.page_count() == 2
    image, mask, ppm = folder.load_page(0, np.random.default_rng(0))
    assert ppm == pytest.approx(200 / 25.4) and mask.shape == image.shape[:2] == (300, 400)
    assert np.array_equal(mask, read_ecg_image_kit_page(source / "p1.png", source / "p1.json")[1])

    again = write_training_folder(pages[:2], tmp_path / "train")
    assert [o.status for o in again] == ["skipped", "skipped"]


def test_import_eik_command_reports_each_failed_page_and_exits_1(tmp_path: Path) -> None:
    source = tmp_path / "eik"
    for name in ("p1", "p2", "p3"):
        _write_page(source, name)
    (source / "p2.json").write_text("{not json")
    split = tmp_path / "split.csv"
    split.write_text("page,part\np1,train\np2,train\np3,validation\n")

    result = runner.invoke(
        app, ["import-eik", str(source), "-o", str(tmp_path / "out"), "--split", str(split)]
    )

    assert result.exit_code == 1, result.output
    failed = [line for line in result.output.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and "p2.json: not a readable JSON file" in failed[0]
    assert "1 written, 0 skipped (already done), 1 failed" in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p1.json", "p1.png", "p1_mask.png"]

    (source / "p2.json").write_text(json.dumps(_eik_json()))
    again = runner.invoke(
        app, ["import-eik", str(source), "-o", str(tmp_path / "out"), "--split", str(split)]
    )
    assert again.exit_code == 0, again.output
    assert "1 written, 1 skipped (already done), 0 failed" in again.output
    assert not (tmp_path / "out" / "p3.png").exists()  # a validation page is never imported


def test_real_page_mask_lies_on_the_trace_ink(shared_data: Path) -> None:
    folder = shared_data / "pages" / "ecg_image_kit"
    # Training pages only: eik002 (clean, 200 dpi) and eik033 (rotated, noisy, cropped 1.10% a side).
    by_name = {p.name: p for p in find_ecg_image_kit_pages(folder, names={"eik002", "eik033"})}
    assert read_crop_fractions(folder / "MANIFEST.csv")["eik033"] == pytest.approx(0.011)
    for name, at_least in (("eik002", 0.95), ("eik033", 0.9)):
        page = by_name[name]
        assert page.json_path is not None
        image, mask, _ = read_ecg_image_kit_page(
            page.image_path, page.json_path, page.pixels_path, crop_fraction=page.crop_fraction
        )
        meta = json.loads(page.json_path.read_text())
        grids = [meta["grid_line_color_major"], meta["grid_line_color_minor"]]
        colours = {"trace_rgb": meta["ecg_plot_color"], "grid_rgbs": grids}

        on_ink, covered = trace_ink_agreement(image, mask, **colours)

        assert on_ink >= at_least and covered >= 0.85, (name, on_ink, covered)
        # The measure can fail: the mask 4 px off, or without the crop correction, misses the ink.
        assert trace_ink_agreement(image, np.roll(mask, 4, axis=0), **colours)[0] < 0.6
        if page.crop_fraction:
            _, uncropped, _ = read_ecg_image_kit_page(page.image_path, page.json_path, page.pixels_path)
            assert trace_ink_agreement(image, uncropped, **colours)[0] < 0.6
