"""Training on a mix of sources: rendered records and folders of pages, at a chosen ratio."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ecgdig.cli import app
from ecgdig.errors import ConfigError
from ecgdig.io import write_image, write_record
from ecgdig.model.data import MixedPages, PageFolder, RenderedPages
from ecgdig.model.files import load_model
from ecgdig.model.run import open_training_data
from ecgdig.types import EcgRecord

PageFactory = Callable[..., tuple[np.ndarray, np.ndarray]]
runner = CliRunner()


def _page_folder(folder: Path, make_page: PageFactory, seeds: range) -> Path:
    """Synthetic pages (224 x 256 px at 8 px/mm) with masks and truth JSON, as ``ecgdig render`` lays out."""
    folder.mkdir(parents=True)
    for seed in seeds:
        image, mask = make_page(seed, rows=224, cols=256)
        write_image(folder / f"p{seed}.png", image)
        write_image(folder / f"p{seed}_mask.png", mask.astype(np.uint8) * 255)
        (folder / f"p{seed}.json").write_text(json.dumps({"px_per_mm": 8.0}))
    return folder


@pytest.fixture
def folders(tmp_path: Path, make_page: PageFactory) -> tuple[Path, Path]:
    return _page_folder(tmp_path / "a", make_page, range(3)), _page_folder(
        tmp_path / "b", make_page, range(10, 15)
    )


def _mix(folders: tuple[Path, Path], seed: int = 3, **kwargs: object) -> MixedPages:
    common: dict[str, object] = {"seed": 0, "crop_px": 64, "crops_per_page": 2, "flatten": False}
    sources = [PageFolder(f, **common) for f in folders]  # type: ignore[arg-type]
    settings = {**common, "seed": seed, "pages_per_epoch": 20, **kwargs}
    return MixedPages(sources, [1.0, 3.0], **settings)  # type: ignore[arg-type]


def _equal(a: list[tuple[torch.Tensor, torch.Tensor]], b: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x, y) and torch.equal(s, t) for (x, s), (y, t) in zip(a, b, strict=True)
    )


def test_mix_draws_each_source_at_its_weight_in_every_epoch(folders: tuple[Path, Path]) -> None:
    mix = _mix(folders)

    assert mix.weights == [0.25, 0.75] and mix.source_counts() == [5, 15]
    orders = [mix._order(epoch) for epoch in range(3)]
    for epoch, order in enumerate(orders):
        sources = mix.epoch_sources(epoch)
        assert np.bincount(sources).tolist() == [5, 15]
        # Each source steps through all its pages before showing one again.
        assert sorted(order[sources == 0][:3]) == [0, 1, 2]
        assert sorted(order[sources == 1][:5]) == [3, 4, 5, 6, 7]
    assert not np.array_equal(mix.epoch_sources(0), mix.epoch_sources(1))  # new positions each epoch
    summary = mix.summary()
    assert [(s["source"], s["folder"], s["pages"], s["weight"]) for s in summary["sources"]] == [
        ("PageFolder", "a", 3, 0.25),
        ("PageFolder", "b", 5, 0.75),
    ]
    assert "seed" not in summary["sources"][0] and summary["seed"] == 3  # the mix's own settings


def test_mix_is_deterministic_in_the_seed_and_starts_anywhere(folders: tuple[Path, Path]) -> None:
    first, again, other = _mix(folders), _mix(folders), _mix(folders, seed=4)

    epoch = list(first.iter_epoch(1))

    assert len(epoch) == first.epoch_size == 40
    assert _equal(epoch, list(again.iter_epoch(1)))
    assert _equal(epoch[7:], list(again.iter_epoch(1, start=7)))
    assert not _equal(epoch, list(other.iter_epoch(1)))
    assert not _equal(epoch, list(first.iter_epoch(2)))
    # Page j shows the source's own page (read by the source), cropped by the mix.
    j = 4
    source, index = int(first.epoch_sources(1)[j]), int(first._order(1)[j])
    image, _, _ = first.sources[source].load_page(index - [0, 3][source], np.random.default_rng(0))
    assert np.array_equal(first.load_page(index, np.random.default_rng(0))[0], image)


def test_mix_with_worker_processes_gives_the_serial_crops(folders: tuple[Path, Path]) -> None:
    serial = list(_mix(folders, pages_per_epoch=6).iter_epoch(2, start=3))
    with _mix(folders, pages_per_epoch=6, workers=2) as parallel:
        from_workers = list(parallel.iter_epoch(2, start=3))
    assert len(serial) == 2 * 6 - 3
    assert _equal(serial, from_workers)


def test_mix_refuses_bad_weights_and_sources(folders: tuple[Path, Path]) -> None:
    source = PageFolder(folders[0], seed=0)
    with pytest.raises(ConfigError, match="at least two sources"):
        MixedPages([source], [1.0], seed=0)
    with pytest.raises(ConfigError, match="1 weight"):
        MixedPages([source, source], [1.0], seed=0)
    with pytest.raises(ConfigError, match="weights must be positive"):
        MixedPages([source, source], [1.0, 0.0], seed=0)
    with pytest.raises(ConfigError, match="at 4 px/mm in a mix at 8"):
        MixedPages([source, PageFolder(folders[1], seed=0, px_per_mm=4.0)], [1.0, 1.0], seed=0)


@pytest.fixture
def records(tmp_path: Path, make_record: Callable[..., EcgRecord]) -> Path:
    folder = tmp_path / "records"
    for k in range(3):
        write_record(make_record(name=f"r{k}", duration_s=10.0, seed=k), folder)
    return folder


def test_records_and_page_folders_open_as_a_mix_at_the_fraction(
    records: Path, folders: tuple[Path, Path]
) -> None:
    data, validation, n_train, n_val = open_training_data(
        [records], pages=folders, pages_fraction=0.4, hold_out=False, profiles=("clean",)
    )

    assert isinstance(data, MixedPages) and validation is None
    assert (n_train, n_val) == (3 + 8, 0)
    assert data.pages_per_epoch == math.ceil(3 / 0.6) and data.source_counts() == [3, 1, 1]
    rendered, first, second = data.summary()["sources"]
    assert rendered["source"] == "RenderedPages" and rendered["profiles"] == ["clean"]
    assert rendered["weight"] == pytest.approx(0.6)
    # Every folder page is equally likely: the folders share the 0.4 by their page counts.
    assert (first["folder"], second["folder"]) == ("a", "b")
    assert first["weight"] == pytest.approx(0.4 * 3 / 8) and second["weight"] == pytest.approx(0.4 * 5 / 8)

    # A page folder among the inputs joins the mix at the default fraction.
    default, _, _, _ = open_training_data([records, folders[0]], hold_out=False)
    assert isinstance(default, MixedPages) and default.weights[1] == pytest.approx(0.25)
    assert isinstance(default.sources[0], RenderedPages)
    only_pages, _, n_pages, _ = open_training_data([], pages=folders, hold_out=False)
    assert isinstance(only_pages, MixedPages) and n_pages == 8 and only_pages.weights == [3 / 8, 5 / 8]


@pytest.mark.parametrize(
    ("inputs", "pages", "fraction", "message"),
    [
        ("records", "a", 1.0, "between 0 and 1"),
        ("records", "a", 0.0, "between 0 and 1"),
        ("records", None, 0.3, "needs both WFDB records and folders of pages"),
        (None, "a", 0.3, "needs both WFDB records and folders of pages"),
        ("records", "empty", None, "holds no page with a <name>_mask.png"),
    ],
)
def test_bad_mixes_are_refused(
    records: Path, folders: tuple[Path, Path], tmp_path: Path, inputs: str | None, pages: str | None,
    fraction: float | None, message: str,
) -> None:  # fmt: skip
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=message):
        open_training_data(
            [tmp_path / inputs] if inputs else [], pages=[tmp_path / pages] if pages else [],
            pages_fraction=fraction, hold_out=False,
        )  # fmt: skip


def test_train_command_on_records_and_pages_says_what_it_trained_on(
    records: Path, folders: tuple[Path, Path], tmp_path: Path
) -> None:
    model_path = tmp_path / "m.safetensors"
    args = ["train", str(records), "--pages", str(folders[0]), "--pages", str(folders[1]),
            "--pages-fraction", "0.5", "-o", str(model_path), "--steps", "1", "--batch-size", "2",
            "--profile", "clean", "--threads", "1", "--snr-records", "0"]  # fmt: skip

    result = runner.invoke(app, args)

    assert result.exit_code == 0, result.output
    assert "trained 1 steps on 10 records/pages (1 held out" in result.output
    training = load_model(model_path)[1].training
    assert training["page_folders"] == ["a", "b"] and training["pages_fraction"] == pytest.approx(0.5)
    assert training["profiles"] == ["clean"]
    sources = training["data"]["sources"]
    assert [s["source"] for s in sources] == ["RenderedPages", "PageFolder", "PageFolder"]
    assert sources[0]["records"] == 2 and sources[0]["weight"] == pytest.approx(0.5)
