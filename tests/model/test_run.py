"""``ecgdig train``: records in, a loadable model file out; a finished run re-run does no more work."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ecgdig.cli import app
from ecgdig.errors import ConfigError
from ecgdig.io.records import write_record
from ecgdig.model.files import ModelHeader, load_model, save_model
from ecgdig.model.network import UnetArchitecture, build_network
from ecgdig.model.run import average_models, train_to_file
from ecgdig.types import EcgRecord

runner = CliRunner()


@pytest.fixture
def records(tmp_path: Path, make_record: Callable[..., EcgRecord]) -> Path:
    folder = tmp_path / "records"
    for k in range(3):
        write_record(make_record(name=f"r{k}", duration_s=10.0, seed=k), folder)
    return folder


def test_train_command_writes_a_model_that_segments(records: Path, tmp_path: Path) -> None:
    model_path = tmp_path / "m.safetensors"
    args = ["train", str(records), "-o", str(model_path), "--steps", "2", "--batch-size", "2",
            "--profile", "clean", "--threads", "1", "--snr-records", "1"]  # fmt: skip

    result = runner.invoke(app, args)

    assert result.exit_code == 0, result.output
    assert "trained 2 steps on 2 records/pages (1 held out" in result.output
    model, header = load_model(model_path)
    assert header.training["held_out"] == 1 and header.training["profiles"] == ["clean"]
    assert 0.0 <= header.metrics["val_dice_crops"] <= 1.0
    # Two steps make no digitizer: the page may fail, which scores as missing (0 dB), never NaN.
    assert header.metrics["val_snr_db"] == header.metrics["val_snr_db_clean"] >= 0.0
    assert "validation SNR" in result.output
    checkpoint = tmp_path / "m.ckpt.safetensors"
    assert checkpoint.is_file()

    # The same command again resumes from the finished checkpoint: no step is repeated.
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert np.array_equal(
        load_model(model_path)[0].state_dict()["segmentation_head.0.weight"].numpy(),
        model.state_dict()["segmentation_head.0.weight"].numpy(),
    )


def test_train_refuses_a_single_record(tmp_path: Path, make_record: Callable[..., EcgRecord]) -> None:
    write_record(make_record(name="only"), tmp_path / "one")
    with pytest.raises(ConfigError, match="at least 2 records"):
        train_to_file([tmp_path / "one"], tmp_path / "m.safetensors", steps=1)


def test_train_on_nothing_is_one_line_and_exit_1(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["train", str(tmp_path / "empty"), "-o", str(tmp_path / "m.safetensors")])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "error:" in result.output


def test_fine_tuning_keeps_the_architecture_and_records_the_origin(records: Path, tmp_path: Path) -> None:
    from ecgdig.model.files import ModelHeader, save_model
    from ecgdig.model.network import TraceUnet, UnetArchitecture

    tiny = UnetArchitecture(encoder_widths=(4, 8), decoder_channels=(8, 4), channels_per_group=4)
    start = save_model(tmp_path / "start.safetensors", TraceUnet(tiny), ModelHeader(tiny, metrics={"d": 0.5}))

    run = train_to_file([records], tmp_path / "tuned.safetensors", profiles=("clean",), steps=1,
                        batch_size=2, init_from=start, threads=1)  # fmt: skip

    _, header = load_model(run.model_path)
    assert header.architecture == tiny
    assert header.training["fine_tuned_from"] == {"file": "start.safetensors", "metrics": {"d": 0.5}}


def test_averaging_models_writes_their_weighted_mean_and_names_the_parents(
    tmp_path: Path, tiny: UnetArchitecture
) -> None:
    first = save_model(tmp_path / "a.safetensors", build_network(tiny, seed=1), ModelHeader(tiny))
    second = save_model(
        tmp_path / "b.safetensors", build_network(tiny, seed=2), ModelHeader(tiny, training={"steps": 7})
    )

    result = runner.invoke(
        app,
        [
            "average",
            str(first),
            str(second),
            "-o",
            str(tmp_path / "m.safetensors"),
            "--weight",
            "1",
            "--weight",
            "3",
        ],
    )

    assert result.exit_code == 0, result.output
    mean, header = load_model(tmp_path / "m.safetensors")
    a, b = load_model(first)[0].state_dict(), load_model(second)[0].state_dict()
    for name, value in mean.state_dict().items():
        torch.testing.assert_close(value, 0.25 * a[name] + 0.75 * b[name])
    parents = header.training["weight_average"]
    assert [p["file"] for p in parents] == ["a.safetensors", "b.safetensors"]
    assert [p["weight"] for p in parents] == [0.25, 0.75] and parents[1]["training"] == {"steps": 7}
    assert header.metrics == {}  # nothing measured on the average unless asked


def test_an_average_can_be_scored_on_held_out_records(
    records: Path, tmp_path: Path, tiny: UnetArchitecture
) -> None:
    first = save_model(tmp_path / "a.safetensors", build_network(tiny, seed=1), ModelHeader(tiny))
    second = save_model(tmp_path / "b.safetensors", build_network(tiny, seed=2), ModelHeader(tiny))

    path = average_models(
        [first, second], tmp_path / "m.safetensors", validate_on=[records], profiles=["clean"], snr_records=1
    )

    metrics = load_model(path)[1].metrics
    assert 0.0 <= metrics["val_dice_crops"] <= 1.0
    assert metrics["val_snr_db"] == metrics["val_snr_db_clean"] >= 0.0


def test_averaging_refuses_other_shapes_and_bad_weights(tmp_path: Path, tiny: UnetArchitecture) -> None:
    first = save_model(tmp_path / "a.safetensors", build_network(tiny, seed=1), ModelHeader(tiny))
    wider = UnetArchitecture(encoder_widths=(8, 8), decoder_channels=(8, 4), channels_per_group=4)
    other = save_model(tmp_path / "w.safetensors", build_network(wider, seed=1), ModelHeader(wider))
    with pytest.raises(ConfigError, match="cannot be averaged"):
        average_models([first, other], tmp_path / "m.safetensors")
    with pytest.raises(ConfigError, match="1 weight"):
        average_models([first, first], tmp_path / "m.safetensors", weights=[1.0])
    with pytest.raises(ConfigError, match="not all zero"):
        average_models([first, first], tmp_path / "m.safetensors", weights=[0.0, 0.0])
    result = runner.invoke(app, ["average", str(first), "-o", str(tmp_path / "m.safetensors")])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "at least two" in result.output
    assert not (tmp_path / "m.safetensors").exists()
