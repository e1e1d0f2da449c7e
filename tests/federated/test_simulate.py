"""fed-simulate on a tiny U-Net and synthetic records: real federation folders, signed files, outputs."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ecgdig.errors import ConfigError
from ecgdig.federated.coordinator import ParticipationError, aggregate_round, load_plan, round_dir_name
from ecgdig.federated.files import file_sha256, read_file_info, read_tensors
from ecgdig.federated.keys import load_registry, load_site_key
from ecgdig.federated.simulate import RoundRow, SimulationSettings, ordering_check, simulate
from ecgdig.federated.validate import validate_update
from ecgdig.io.records import write_record
from ecgdig.model.network import UnetArchitecture
from ecgdig.types import EcgRecord

TINY = UnetArchitecture(encoder_widths=(4, 8), decoder_channels=(8, 4), channels_per_group=4)


def _settings(**changes: object) -> SimulationSettings:
    fields: dict[str, object] = {
        "n_sites": 2,
        "rounds": 2,
        "strategies": ("fedavg", "centralized"),
        "dp_noise": None,
        "local_steps": 2,
        "batch_size": 4,
        "crop_px": 64,
        "pages_per_site": 1,
        "crops_per_page": 4,
        "val_records": 1,
        "val_crops_per_page": 4,
        "snr_records": 0,
        "architecture": TINY,
    }
    fields.update(changes)
    return SimulationSettings(**fields)  # type: ignore[arg-type]


@pytest.fixture
def records(tmp_path: Path, make_record: Callable[..., EcgRecord]) -> Path:
    """Three synthetic 12-lead records in a folder: 1 validation + 2 sites x 1 page."""
    folder = tmp_path / "records"
    for k in range(3):
        write_record(make_record(name=f"synth{k:02d}", seed=k), folder)
    return folder


def test_simulation_writes_csv_plot_summary_and_federation_folders(records: Path, tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "sim"
    settings = _settings(dp_noise=1.0)

    # Execute
    result = simulate([records], out, settings, threads=1)

    # Assert
    with open(result.csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["strategy"], r["dp"], r["round"]) for r in rows] == [
        (s, dp, str(n))
        for s, dp in (("fedavg", "no"), ("centralized", "no"), ("fedavg", "yes"))
        for n in range(3)
    ]
    assert all(0.0 <= float(r["val_dice"]) <= 1.0 for r in rows)
    assert all(r["snr_db"] == "" for r in rows)  # SNR off in this run
    assert [r["epsilon"] != "" for r in rows if r["dp"] == "yes"] == [False, True, True]
    assert float(rows[-1]["epsilon"]) > float(rows[-2]["epsilon"]) > 0
    assert result.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = result.summary_path.read_text()
    assert "| fedavg | no |" in summary and "| fedavg | z = 1 |" in summary
    for run in ("fedavg", "fedavg-dp"):
        federation = out / "runs" / run / "federation"
        assert (federation / round_dir_name(2) / "global.safetensors").is_file()
        assert not (federation / round_dir_name(3)).exists()
    assert (out / "runs" / "fedavg-dp" / "federation" / "ledger.jsonl").is_file()
    assert load_plan(out / "runs" / "fedavg-dp" / "federation" / "plan.json").dp is not None


def test_fedavg_global_is_the_weighted_mean_of_the_signed_update_files(records: Path, tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "sim"
    simulate([records], out, _settings(strategies=("fedavg",)), threads=1)
    federation = out / "runs" / "fedavg" / "federation"
    registry = load_registry(federation / "registry.json")
    previous = read_tensors(read_file_info(federation / round_dir_name(1) / "global.safetensors"))
    update_paths = sorted((out / "runs" / "fedavg" / "updates" / round_dir_name(1)).glob("*.safetensors"))

    # Execute: read the update files as the coordinator does
    updates = [
        validate_update(
            path,
            registry=registry,
            expected_round=1,
            expected_base_sha256=read_file_info(
                federation / round_dir_name(1) / "global.safetensors"
            ).header.payload_sha256,
            reference_shapes={k: v.shape for k, v in previous.items()},
            clip_norm=5.0,
        )
        for path in update_paths
    ]
    after = read_tensors(read_file_info(federation / round_dir_name(2) / "global.safetensors"))

    # Assert: one signed update per registered site, each verified with that site's key
    assert sorted(u.header.site_id for u in updates) == sorted(registry.sites) == ["site-a", "site-b"]
    weights = np.array([u.header.num_examples for u in updates], dtype=np.float64)
    for name, value in previous.items():
        expected = (
            value + sum(w * u.tensors[name] for w, u in zip(weights, updates, strict=True)) / weights.sum()
        )
        np.testing.assert_allclose(after[name], expected, rtol=0, atol=1e-6)
    # The coordinator's report names exactly these files, byte for byte.
    report = (federation / round_dir_name(2) / "report.json").read_text()
    for path in update_paths:
        assert file_sha256(path) in report
    # Replaying round 1's files against round 2 is refused like any stale update.
    coordinator = load_site_key(out / "runs" / "fedavg" / "keys" / "coordinator.key.pem", "coordinator")
    with pytest.raises(ParticipationError, match="stale or replayed"):
        aggregate_round(federation / round_dir_name(2), update_paths, coordinator_key=coordinator)


def test_rerun_resumes_and_repeats_nothing(records: Path, tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "sim"
    first = simulate([records], out, _settings(strategies=("fedavg",)), threads=1)
    round2 = out / "runs" / "fedavg" / "federation" / round_dir_name(2) / "global.safetensors"
    stamp = round2.stat().st_mtime_ns

    # Execute
    again = simulate([records], out, _settings(strategies=("fedavg",)), threads=1)

    # Assert
    assert again.rows == first.rows
    assert round2.stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="other settings"):
        simulate([records], out, _settings(strategies=("fedavg",), local_steps=3), threads=1)


def test_too_few_records_and_bad_settings_are_config_errors(records: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs 5 records"):
        simulate([records], tmp_path / "sim", _settings(pages_per_site=2), threads=1)
    with pytest.raises(ConfigError, match="unknown strategy"):
        _settings(strategies=("fedsgd",))
    with pytest.raises(ConfigError, match="multiple of 4"):
        _settings(crop_px=66)


def test_ordering_check_states_each_comparison() -> None:
    final = {
        s: RoundRow(s, False, 20, d)
        for s, d in (("fedavg", 0.80), ("fedprox", 0.79), ("fedadam", 0.85), ("centralized", 0.87))
    }
    lines = ordering_check(final)
    assert lines[0].endswith("did not hold")  # FedProx below FedAvg
    assert lines[1] == "FedAdam within 0.01 Dice of centralized (gap +0.0200): did not hold"


def test_cli_passes_the_options_to_simulate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Prepare: the expensive call is replaced; only the arguments it receives are checked
    import ecgdig.federated.simulate as simulate_module
    from ecgdig.cli import app

    seen: dict[str, object] = {}

    def fake(records, out_dir, settings, **kwargs):  # type: ignore[no-untyped-def]
        seen.update(records=records, out_dir=out_dir, settings=settings, threads=kwargs.get("threads"))
        row = RoundRow("fedavg", False, 3, 0.5)
        return simulate_module.SimulationResult(
            Path(out_dir), (row,), Path("r.csv"), Path("c.png"), Path("s.md"), 1.0
        )

    monkeypatch.setattr(simulate_module, "simulate", fake)

    # Execute
    result = CliRunner().invoke(
        app,
        ["fed-simulate", str(tmp_path), "-o", str(tmp_path / "o"), "--sites", "3", "--rounds", "3",
         "--strategy", "fedavg", "--strategy", "fedadam", "--dp-noise", "0", "--local-steps", "5",
         "--server-lr", "0.003", "--seed", "7", "--threads", "1", "--snr-every", "2"],
    )  # fmt: skip

    # Assert
    assert result.exit_code == 0, result.output
    settings = seen["settings"]
    assert isinstance(settings, SimulationSettings)
    assert (settings.n_sites, settings.rounds, settings.strategies) == (3, 3, ("fedavg", "fedadam"))
    assert (settings.dp_noise, settings.local_steps, settings.seed, settings.snr_every) == (None, 5, 7, 2)
    assert settings.adaptive_server_lr == 0.003
    assert seen["threads"] == 1
    assert "0.5000" in result.output


def test_cli_bad_strategy_is_a_usage_error(tmp_path: Path) -> None:
    from ecgdig.cli import app

    result = CliRunner().invoke(
        app, ["fed-simulate", str(tmp_path), "-o", str(tmp_path / "o"), "--strategy", "x"]
    )
    assert result.exit_code == 2


def test_secure_aggregation_round_equals_the_plain_mean_of_the_surviving_sites(
    records: Path, tmp_path: Path, make_record: Callable[..., EcgRecord]
) -> None:
    # Prepare: 4 sites (t = 3), one drops out before masking in round 0
    for k in range(3, 5):
        write_record(make_record(name=f"synth{k:02d}", seed=k), records)
    out = tmp_path / "sim"
    settings = _settings(n_sites=4, rounds=1, strategies=("fedavg",), secagg=True, dropouts=1)

    # Execute
    simulate([records], out, settings, threads=1)

    # Assert: the released model is the previous one plus the mean of the three masked updates
    run = out / "runs" / "fedavg"
    federation = run / "federation"
    before = read_tensors(read_file_info(federation / round_dir_name(0) / "global.safetensors"))
    after = read_tensors(read_file_info(federation / round_dir_name(1) / "global.safetensors"))
    report = json.loads((federation / round_dir_name(1) / "report.json").read_text())
    work = run / "secagg" / round_dir_name(0)
    masked = sorted(p.name.split(".")[0] for p in (work / "to-coordinator").glob("*.masked.safetensors"))
    assert len(masked) == 3 and "secure_aggregation" in report
    deltas = [
        read_tensors(read_file_info(run / "updates" / round_dir_name(0) / f"{s}.safetensors")) for s in masked
    ]
    for name, value in before.items():
        expected = value + sum(d[name] for d in deltas) / 3
        np.testing.assert_allclose(after[name], expected, rtol=0, atol=1e-4)


def test_dropouts_beyond_the_threshold_or_without_secagg_are_refused() -> None:
    with pytest.raises(ConfigError, match="at most 1"):
        _settings(n_sites=4, secagg=True, dropouts=2)
    with pytest.raises(ConfigError, match="need secure aggregation"):
        _settings(dropouts=1)
