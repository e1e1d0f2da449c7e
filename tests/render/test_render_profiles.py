"""Tests of ecgdig.render.profiles: YAML schema, validation errors and sampling."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from ecgdig.errors import ConfigError
from ecgdig.render import RenderSettings, available_profiles, load_profile, sample_settings


def _write(tmp_path, text: str, name: str = "site.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_required_profiles_are_shipped():
    names = set(available_profiles())
    assert {"clean", "scanner", "phone"} <= names
    assert len([n for n in names if n.startswith("site-")]) >= 4


@pytest.mark.parametrize("name", available_profiles())
def test_every_shipped_profile_samples_valid_settings(name):
    profile = load_profile(name)
    rng = np.random.default_rng(0)
    drawn = [sample_settings(profile, rng) for _ in range(30)]
    assert all(isinstance(s, RenderSettings) for s in drawn)
    assert profile.name == name and profile.description


def test_clean_profile_is_the_ecg_image_kit_look():
    a = sample_settings(load_profile("clean"), rng=1)
    b = sample_settings(load_profile("clean"), rng=2)
    assert a == b  # nothing random
    assert (a.layout, a.dpi, a.paper, a.mm_per_s, a.mm_per_mv) == ("3x4+1", 200, "letter", 25, 10)
    assert a.grid_rgb == ((255, 0, 0), (254, 223, 219))
    assert a.degradation == type(a.degradation)()


def test_scanner_profile_spans_the_documented_ranges():
    profile = load_profile("scanner")
    rng = np.random.default_rng(5)
    drawn = [sample_settings(profile, rng) for _ in range(300)]
    assert {s.dpi for s in drawn} <= set(range(150, 301))
    assert max(abs(s.degradation.rotation_deg) for s in drawn) <= 3.0
    assert {s.grid_colour for s in drawn} >= {"red", "pink", "orange", "green", "blue", "grey"}
    assert any(s.degradation.bw_threshold is not None for s in drawn)
    assert any(s.degradation.jpeg_quality is not None for s in drawn)


def test_phone_profile_warps_and_lights():
    profile = load_profile("phone")
    drawn = [sample_settings(profile, rng=k) for k in range(40)]
    assert all(s.degradation.is_geometric for s in drawn)
    assert all(s.degradation.uneven_light > 0 and s.degradation.jpeg_quality for s in drawn)
    assert len({s.degradation.background for s in drawn}) >= 3


def test_sampling_is_deterministic_and_seed_dependent():
    profile = load_profile("scanner")
    assert sample_settings(profile, rng=11) == sample_settings(profile, rng=11)
    assert sample_settings(profile, rng=11) != sample_settings(profile, rng=12)


def test_yaml_order_does_not_change_the_draws(tmp_path):
    a = _write(
        tmp_path, "page:\n  dpi: {int: [100, 300]}\n  trace_width_mm: {uniform: [0.1, 0.5]}\n", "a.yaml"
    )
    b = _write(
        tmp_path, "page:\n  trace_width_mm: {uniform: [0.1, 0.5]}\n  dpi: {int: [100, 300]}\n", "b.yaml"
    )
    assert sample_settings(load_profile(a), rng=3) == sample_settings(load_profile(b), rng=3)


def test_spec_forms(tmp_path):
    path = _write(
        tmp_path,
        """
        name: forms
        colour_jitter: 0
        page:
          layout: {choice: {"6x2": 1, "3x4": 0}}
          mm_per_mv: {choice: [20]}
          paper_rgb: {choice: [[250, 240, 230]], weights: [1]}
          trace_rgb: [10, 20, 30]
          top_margin_mm: {prob: 0.0, then: 50.0, else: null}
          font_size_pt: {normal: [10, 100], min: 9, max: 9.5}
        degradation:
          jpeg_quality: {prob: 1.0, then: {int: [70, 70]}}
        """,
    )
    s = sample_settings(load_profile(path), rng=0)
    assert s.layout == "6x2" and s.mm_per_mv == 20
    assert s.paper_rgb == (250, 240, 230) and s.trace_rgb == (10, 20, 30)
    assert s.top_margin_mm is None
    assert 9 <= s.font_size_pt <= 9.5
    assert s.degradation.jpeg_quality == 70
    assert s.image_suffix == ".jpg"


def test_grid_colours_come_from_the_family_palette(tmp_path):
    path = _write(tmp_path, "page:\n  grid_colour: orange\n")
    from ecgdig.render import GRID_PALETTES

    seen = {sample_settings(load_profile(path), rng=k).grid_rgb for k in range(40)}
    assert seen <= set(GRID_PALETTES["orange"]) and len(seen) > 1


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("page: [1, 2\n", "invalid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
        ("pages: {}\n", "unknown profile keys"),
        ("page:\n  dpix: 200\n", "unknown page settings ['dpix']"),
        ("degradation:\n  blur: 1.0\n", "unknown degradation settings"),
        ("page:\n  dpi: 400\n", "page.dpi"),
        ("page:\n  dpi: {uniform: [150, 300]}\n", "page.dpi: dpi must be an integer"),
        ("page:\n  dpi: {int: [150]}\n", "page.dpi: 'int' needs [low, high]"),
        ("page:\n  layout: 7x7\n", "page.layout: unknown layout"),
        ("page:\n  grid_colour: {choice: [red, purple]}\n", "page.grid_colour"),
        ("page:\n  grid_colour: {choice: {red: -1}}\n", "weights"),
        ("page:\n  mm_per_s: {uniform: [25, 50], int: [1, 2]}\n", "exactly one of"),
        ("page:\n  trace_width_mm: {normal: [0.2, 0.1]}\n", "'min' and 'max'"),
        ("degradation:\n  rotation_deg: {normal: [0, 5], min: -30, max: 30}\n", "degradation.rotation_deg"),
        ("degradation:\n  jpeg_quality: {prob: 1.5, then: 80}\n", "'prob' must be a number in [0, 1]"),
        ("degradation:\n  jpeg_quality: {prob: 0.5}\n", "needs a 'then'"),
        ("degradation:\n  creases: 1.5\n", "degradation.creases"),
        ("page:\n  trace_rgb: [0, 0]\n", "RGB triple"),
        ("colour_jitter: 100\n", "colour_jitter"),
    ],
)
def test_profile_errors_name_the_file_and_the_field(tmp_path, text, needle):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    message = str(info.value)
    assert str(path) in message
    assert needle in message
    assert "\n" not in message


def test_unknown_profile_name_lists_the_choices():
    with pytest.raises(ConfigError, match=r"unknown profile 'nope'.*clean"):
        load_profile("nope")


def test_missing_profile_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read profile"):
        load_profile(tmp_path / "absent.yaml")


def test_settings_round_trip_through_json_dicts():
    s = sample_settings(load_profile("phone"), rng=4)
    assert RenderSettings.from_dict(s.to_dict()) == s
    with pytest.raises(ConfigError, match="unknown render settings"):
        RenderSettings.from_dict({**s.to_dict(), "colour": 1})
