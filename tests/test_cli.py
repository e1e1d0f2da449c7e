from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import wfdb
from PIL import Image
from typer.testing import CliRunner

from ecgdig.cli import app

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_pages" / "ge_marquette_scan.png"
runner = CliRunner()


def test_every_command_has_help() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    commands = ["digitize", "normalize", "grid", "segment", "vectorize"]
    for command in commands:
        sub = runner.invoke(app, [command, "--help"])
        assert sub.exit_code == 0, (command, sub.output)
        assert "Usage" in sub.output


@pytest.fixture()
def batch(tmp_path: Path) -> Path:
    """A folder with one good page and every kind of bad input."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(SAMPLE, folder / "good.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notimage.jpg").write_bytes(b"GIF89a? no, just text " * 20)
    data = SAMPLE.read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 4])
    noise = np.random.default_rng(0).integers(0, 256, size=(600, 800, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "noise.png")
    Image.new("RGB", (900, 700), "white").save(folder / "blank.png")
    return folder


def test_digitize_batch_reports_each_bad_page_and_finishes_the_good_one(batch: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"

    result = runner.invoke(app, ["digitize", str(batch), "-o", str(out), "--overlay"])

    assert result.exit_code == 1, result.output
    for bad in ["empty.png", "notimage.jpg", "truncated.png", "noise.png", "blank.png"]:
        lines = [line for line in result.output.splitlines() if bad in line and "failed" in line]
        assert len(lines) == 1, (bad, result.output)
    record = wfdb.rdrecord(str(out / "good"))
    assert record.sig_name[:3] == ["I", "II", "III"] and record.fs == 500
    assert record.units == ["mV"] * 12
    assert np.isfinite(record.p_signal).any(axis=0).sum() == 12
    side = json.loads((out / "good.json").read_text())
    assert side["layout"] == "3x4+2"
    assert 7.5 < side["source_px_per_mm"] < 8.2  # a 200 dpi scan: 7.87 px/mm
    assert (out / "good_overlay.png").is_file()
    assert not list(out.glob(".*")), "temporary files left behind"


def test_rerun_skips_done_pages_and_force_redoes_them(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(SAMPLE, folder / "page.png")
    out = tmp_path / "out"
    assert runner.invoke(app, ["digitize", str(folder), "-o", str(out)]).exit_code == 0
    stamp = (out / "page.json").stat().st_mtime_ns

    again = runner.invoke(app, ["digitize", str(folder), "-o", str(out)])
    forced = runner.invoke(app, ["digitize", str(folder), "-o", str(out), "--force"])

    assert again.exit_code == 0 and "1 skipped" in again.output
    assert forced.exit_code == 0 and "1 digitized" in forced.output
    assert (out / "page.json").stat().st_mtime_ns != stamp


def test_digitize_reads_a_list_from_stdin(tmp_path: Path) -> None:
    shutil.copy(SAMPLE, tmp_path / "a.png")
    result = runner.invoke(
        app, ["digitize", "-", "-o", str(tmp_path / "o")], input=f"{tmp_path / 'a.png'}\n{tmp_path / 'missing.png'}\n"
    )
    assert result.exit_code == 1
    assert "missing.png: no such file" in result.output
    assert (tmp_path / "o" / "a.hea").is_file()


def test_bad_option_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["digitize", str(SAMPLE), "-o", str(tmp_path), "--workers", "0"])
    assert result.exit_code == 2
