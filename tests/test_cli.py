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
    commands = ["digitize", "normalize", "grid", "segment", "vectorize", "render", "evaluate", "train",
                "keygen", "fed-init", "fed-train", "aggregate", "privacy", "fed-export", "secagg-advertise",
                "secagg-roster", "secagg-share", "secagg-mask", "secagg-request", "secagg-unmask",
                "secagg-aggregate"]  # fmt: skip
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
    _png_claiming_size(folder / "bomb.png", 30000, 30000)
    return folder


def _png_claiming_size(path: Path, cols: int, rows: int) -> None:
    """A tiny PNG whose header claims a gigantic image (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", cols, rows, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_digitize_batch_reports_each_bad_page_and_finishes_the_good_one(batch: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"

    result = runner.invoke(app, ["digitize", str(batch), "-o", str(out), "--overlay"])

    assert result.exit_code == 1, result.output
    for bad in ["empty.png", "notimage.jpg", "truncated.png", "noise.png", "blank.png", "bomb.png"]:
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
        app,
        ["digitize", "-", "-o", str(tmp_path / "o")],
        input=f"{tmp_path / 'a.png'}\n{tmp_path / 'missing.png'}\n",
    )
    assert result.exit_code == 1
    assert "missing.png: no such file" in result.output
    assert (tmp_path / "o" / "a.hea").is_file()


def test_bad_option_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["digitize", str(SAMPLE), "-o", str(tmp_path), "--workers", "0"])
    assert result.exit_code == 2


def test_stages_chain_from_the_shell(tmp_path: Path) -> None:
    page, ink = tmp_path / "page.png", tmp_path / "ink.png"
    trace, out = tmp_path / "trace.png", tmp_path / "rec"

    steps = [
        ["normalize", str(SAMPLE), "-o", str(page)],
        ["grid", str(page), "-o", str(ink)],
        ["segment", str(page), "-o", str(trace)],
        ["vectorize", str(trace), "-o", str(out)],
    ]
    results = [runner.invoke(app, step) for step in steps]

    assert [r.exit_code for r in results] == [0, 0, 0, 0], [r.output for r in results]
    scale = json.loads(page.with_suffix(".json").read_text())["px_per_mm"]
    assert scale == 8.0
    assert "orange grid" in results[1].output
    record = wfdb.rdrecord(str(out / "trace"))
    assert record.n_sig == 12 and np.isfinite(record.p_signal).any(axis=0).all()


def test_stage_on_a_bad_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    result = runner.invoke(app, ["normalize", str(bad), "-o", str(tmp_path / "o.png")])
    assert result.exit_code == 1
    assert "bad.png: not an image file" in result.output
    assert "Traceback" not in result.output


def test_model_without_the_unet_segmenter_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "segment",
            str(SAMPLE),
            "-o",
            str(tmp_path / "t.png"),
            "--segmenter",
            "classical",
            "--model",
            "m.st",
        ],
    )
    assert result.exit_code == 2
    assert "--segmenter unet" in result.output


@pytest.mark.parametrize("segmenter", ["classical", "unet"])
def test_digitize_refuses_an_image_that_is_no_ecg_in_one_line(tmp_path: Path, segmenter: str) -> None:
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1700, 2200, 3), dtype=np.uint8)).save(noise)

    result = runner.invoke(app, ["digitize", str(noise), "-o", str(tmp_path / "o"), "--segmenter", segmenter])

    assert result.exit_code == 1
    failed = [line for line in result.output.splitlines() if "failed:" in line]
    assert len(failed) == 1 and "does not look like an ECG page" in failed[0], result.output
    assert "Traceback" not in result.output
    assert "--no-orient" in runner.invoke(app, ["digitize", "--help"]).output
