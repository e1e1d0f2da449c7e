"""Tests of ecgdig.render.files: what render_to_files writes, and that it is reproducible."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from PIL import Image

from ecgdig.errors import ConfigError, RecordInputError
from ecgdig.io import read_record, write_record
from ecgdig.leads import STANDARD_LEADS
from ecgdig.render import find_records, page_rng, render_to_files

SUFFIXES = (".json", "_mask.png", "_labels.png", ".hea", ".dat")


@pytest.fixture
def records_dir(tmp_path, make_record):
    folder = tmp_path / "records"
    write_record(make_record("rec_a", fs_hz=500.0), folder)
    lower = make_record(
        "rec_b", fs_hz=1000.0, duration_s=12.0, lead_names=tuple(n.lower() for n in STANDARD_LEADS)
    )
    write_record(lower, folder)
    return folder


@pytest.fixture
def small_profile(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(
        textwrap.dedent(
            """
            name: small
            page:
              dpi: 100
              layout: {choice: ["3x4+1", "6x2"]}
              grid_colour: {choice: [red, green, grey]}
              calibration_pulse: {choice: [true, false]}
            degradation:
              rotation_deg: {uniform: [-2, 2]}
              noise_sigma: 2.0
            """
        ),
        encoding="utf-8",
    )
    return path


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_render_to_files_writes_every_truth_file(tmp_path, records_dir, small_profile):
    # Execute
    images = render_to_files(
        [records_dir], tmp_path / "out", profile=small_profile, seed=1, pages_per_record=2
    )
    # Assert
    assert [p.name for p in images] == ["rec_a-0.png", "rec_a-1.png", "rec_b-0.png", "rec_b-1.png"]
    for image in images:
        stem = image.with_suffix("")
        for suffix in SUFFIXES:
            assert stem.parent.joinpath(stem.name + suffix).is_file(), (stem, suffix)
        truth = json.loads(stem.with_suffix(".json").read_text())
        pixels = np.asarray(Image.open(image))
        mask = np.asarray(Image.open(f"{stem}_mask.png"))
        labels = np.asarray(Image.open(f"{stem}_labels.png"))
        assert pixels.shape[:2] == mask.shape == labels.shape
        assert set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask > 0, labels > 0)
        assert truth["image"] == image.name and truth["seed"] == 1 and truth["profile"] == "small"
        assert truth["px_per_mm"] == 100 / 25.4
        assert len(truth["homography"]) == 3 and truth["lead_boxes"]
        assert truth["settings"]["dpi"] == 100
        # The reference record reads back with standard names, named like the page.
        ref = read_record(stem)
        assert ref.name == stem.name and ref.lead_names == STANDARD_LEADS
    # The rhythm strip (or every lead of 6x2) is finite in the reference.
    ref = read_record(images[0].with_suffix(""))
    source = read_record(records_dir / "rec_a")
    finite = np.isfinite(ref.signal_mv)
    np.testing.assert_allclose(ref.signal_mv[finite], source.signal_mv[finite], atol=5e-4)


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path, records_dir, small_profile):
    render_to_files([records_dir], tmp_path / "a", profile=small_profile, seed=5)
    render_to_files([records_dir], tmp_path / "b", profile=small_profile, seed=5)
    render_to_files([records_dir], tmp_path / "c", profile=small_profile, seed=6)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys()
    assert a["rec_a-0.png"] != c["rec_a-0.png"]


def test_a_page_does_not_depend_on_the_other_records(tmp_path, records_dir, small_profile):
    render_to_files([records_dir], tmp_path / "all", profile=small_profile, seed=9)
    render_to_files([records_dir / "rec_b.hea"], tmp_path / "one", profile=small_profile, seed=9)
    everything, alone = _files(tmp_path / "all"), _files(tmp_path / "one")
    assert all(everything[name] == data for name, data in alone.items())


def test_jpeg_profiles_write_jpg_files_that_decode_to_the_page(tmp_path, records_dir):
    path = tmp_path / "jpeg.yaml"
    path.write_text("page:\n  dpi: 100\ndegradation:\n  jpeg_quality: 80\n", encoding="utf-8")
    images = render_to_files([records_dir / "rec_a"], tmp_path / "out", profile=path, seed=0)
    assert images[0].suffix == ".jpg"
    with Image.open(images[0]) as im:
        assert im.format == "JPEG"


def test_rerendering_in_another_format_replaces_the_old_image(tmp_path, records_dir):
    jpeg = tmp_path / "jpeg.yaml"
    jpeg.write_text("page:\n  dpi: 100\ndegradation:\n  jpeg_quality: 80\n", encoding="utf-8")
    out = tmp_path / "out"
    render_to_files([records_dir / "rec_a"], out, profile=jpeg, seed=0)
    render_to_files([records_dir / "rec_a"], out, profile="clean", seed=0, dpi=100)
    assert (out / "rec_a-0.png").is_file() and not (out / "rec_a-0.jpg").exists()


def test_overrides_and_shipped_profiles(tmp_path, records_dir):
    images = render_to_files(
        [records_dir / "rec_a"], tmp_path / "out", profile="clean", seed=0, layout="6x2", dpi=120
    )
    truth = json.loads(images[0].with_suffix(".json").read_text())
    assert truth["settings"]["layout"] == "6x2" and truth["settings"]["dpi"] == 120
    assert truth["layout"] == "6x2"


def test_bad_arguments_fail_before_writing(tmp_path, records_dir, make_record):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="seed"):
        render_to_files([records_dir], out, profile="clean", seed=-1)
    with pytest.raises(ConfigError, match="pages_per_record"):
        render_to_files([records_dir], out, profile="clean", seed=0, pages_per_record=0)
    with pytest.raises(ConfigError, match="unknown profile"):
        render_to_files([records_dir], out, profile="nope", seed=0)
    with pytest.raises(RecordInputError, match="no WFDB header"):
        render_to_files([tmp_path / "missing"], out, profile="clean", seed=0)
    twin = tmp_path / "twin"
    write_record(make_record("rec_a"), twin)
    with pytest.raises(ConfigError, match="two records are named 'rec_a'"):
        render_to_files([records_dir, twin], out, profile="clean", seed=0)
    assert not out.exists()


def test_find_records_expands_folders_and_files(tmp_path, records_dir):
    stems = find_records([records_dir, records_dir / "rec_a.hea", records_dir / "rec_b.dat"])
    assert stems == [records_dir / "rec_a", records_dir / "rec_b"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordInputError, match="no WFDB record"):
        find_records([tmp_path / "empty"])


def test_page_rng_depends_on_seed_record_and_page():
    draws = {
        (s, n, k): int(page_rng(s, n, k).integers(1 << 62))
        for s in (0, 1)
        for n in ("a", "b")
        for k in (0, 1)
    }
    assert len(set(draws.values())) == len(draws)
    assert int(page_rng(1, "a", 0).integers(1 << 62)) == draws[(1, "a", 0)]


def test_unreadable_record_is_a_record_input_error(tmp_path):
    bad = tmp_path / "bad.hea"
    bad.write_text("this is not a header\n")
    with pytest.raises(RecordInputError):
        render_to_files([bad], tmp_path / "out", profile="clean", seed=0)
