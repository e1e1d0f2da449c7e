"""The model shipped in the package: a valid file, and it digitizes a page end to end."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ecgdig.evaluate import evaluate_folders
from ecgdig.io.records import write_record
from ecgdig.model.files import SHIPPED_MODEL, default_model_path, load_model
from ecgdig.model.network import DEFAULT_ARCHITECTURE
from ecgdig.pipeline.digitize import DigitizeOptions, digitize_files
from ecgdig.render import render_to_files
from ecgdig.types import EcgRecord


def test_shipped_model_is_a_valid_small_file_with_its_metrics() -> None:
    path = default_model_path()
    model, header = load_model(path)

    assert path == SHIPPED_MODEL
    assert path.stat().st_size < 25 * 1024**2
    assert header.architecture == DEFAULT_ARCHITECTURE
    assert header.px_per_mm == 8.0
    assert {"val_dice_crops", "val_snr_db"} <= set(header.metrics)
    assert not model.training


def test_shipped_model_digitizes_a_rendered_page(
    tmp_path: Path, make_record: Callable[..., EcgRecord]
) -> None:
    write_record(make_record(name="synth", seed=3), tmp_path / "records")
    pages = render_to_files(
        [tmp_path / "records"], tmp_path / "pages", profile="clean", seed=1, layout="3x4+1"
    )

    outcomes = digitize_files(pages, tmp_path / "out", options=DigitizeOptions(segmenter="unet"))
    report = evaluate_folders(tmp_path / "out", tmp_path / "pages")

    assert [o.status for o in outcomes] == ["done"]
    assert report.n_leads_scored == 12
    assert report.mean_snr_db > 12.0, report.mean_snr_db
