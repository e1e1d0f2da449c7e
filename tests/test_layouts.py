from __future__ import annotations

from pathlib import Path

import pytest

from ecgdig.errors import ConfigError
from ecgdig.layouts import available_layouts, load_layout


def test_3x4_plus_1_panels_follow_the_challenge_convention() -> None:
    layout = load_layout("3x4+1")
    panels = {(p.lead, p.row): p.time_window_s(10.0) for p in layout.panels()}
    assert panels[("I", 0)] == (0.0, 2.5)
    assert panels[("aVR", 0)] == (2.5, 5.0)
    assert panels[("V6", 2)] == (7.5, 10.0)
    assert panels[("II", 3)] == (0.0, 10.0)
    assert layout.n_rows == 4
    assert len(layout.leads) == 12


@pytest.mark.parametrize("name", ["3x4+1", "3x4+2", "3x4+3", "3x4", "6x2", "12x1", "6x1"])
def test_shipped_layouts_load(name: str) -> None:
    assert name in available_layouts()
    assert load_layout(name).name == name


def test_unknown_lead_in_yaml_names_file(tmp_path: Path) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text("name: odd\nrows:\n  - [I, V7]\nrhythm: []\n")
    with pytest.raises(ConfigError, match=r"odd\.yaml: unknown lead 'V7'"):
        load_layout(path)


def test_unknown_layout_name_lists_choices() -> None:
    with pytest.raises(ConfigError, match="choose one of"):
        load_layout("5x5")
