"""The federated command line: keygen, fed-init, fed-train, aggregate, privacy, fed-export from the shell."""

from __future__ import annotations

import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from ecgdig.cli import app
from ecgdig.cli.federated import Sampling, Strategy
from ecgdig.federated.coordinator import load_plan, make_update
from ecgdig.federated.files import read_file_info, read_tensors
from ecgdig.federated.keys import load_public_key, load_site_key, public_key_fingerprint
from ecgdig.federated.privacy import SAMPLING_MODES
from ecgdig.federated.site import read_model_spec, train_site_update, verify_site_update
from ecgdig.federated.strategies import STRATEGY_NAMES
from ecgdig.io.records import write_record
from ecgdig.model.files import ModelHeader, load_model, model_tensors, save_model
from ecgdig.model.network import UnetArchitecture, build_network
from ecgdig.model.run import open_training_data
from ecgdig.model.train import StepInfo
from ecgdig.render import render_to_files
from ecgdig.types import EcgRecord

runner = CliRunner()

TINY = UnetArchitecture(encoder_widths=(4, 8), decoder_channels=(8, 4), channels_per_group=4)
#: Two steps of two crops on the first page: enough to move the weights, fast on one thread.
TRAIN_ARGS = ("--batch-size", "2", "--epochs", "0.125", "--threads", "1")
SITES = ("site-a", "site-b", "site-c")


def invoke(*args: object) -> Result:
    return runner.invoke(app, [str(a) for a in args])


@dataclass
class Federation:
    root: Path
    keys: Path

    def round_dir(self, number: int) -> Path:
        return self.root / f"round-{number:04d}"

    def global_model(self, number: int) -> Path:
        return self.round_dir(number) / "global.safetensors"

    def key(self, site: str) -> Path:
        return self.keys / f"{site}.key.pem"

    def aggregate(self, number: int, updates: Sequence[Path], *extra: object) -> Result:
        return invoke(
            "aggregate",
            self.round_dir(number),
            *updates,
            "--coordinator-key",
            self.key("coordinator"),
            *extra,
        )

    def train(self, site: str, number: int, pages: Path, out: Path, *extra: object) -> Result:
        return invoke(
            "fed-train",
            self.global_model(number),
            pages,
            "-o",
            out,
            "--key",
            self.key(site),
            *TRAIN_ARGS,
            *extra,
        )

    def quick_update(self, site: str, number: int, out: Path, shift: float = 1e-3) -> Path:
        """A valid update without training: the global weights shifted by a constant."""
        global_path = self.global_model(number)
        local = {k: v + np.float32(shift) for k, v in read_tensors(read_file_info(global_path)).items()}
        plan = load_plan(self.root / "plan.json")
        make_update(global_path, local, out, load_site_key(self.key(site)), plan=plan, num_examples=3)
        return out


@pytest.fixture
def pages(tmp_path: Path, make_record: Callable[..., EcgRecord]) -> Path:
    """A folder of two pages rendered from synthetic records (what 'ecgdig render' writes)."""
    for k in range(2):
        write_record(make_record(name=f"r{k}", seed=k), tmp_path / "records")
    render_to_files([tmp_path / "records"], tmp_path / "pages", profile="clean", seed=0, dpi=100)
    return tmp_path / "pages"


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.safetensors"
    save_model(path, build_network(TINY, seed=0), ModelHeader(architecture=TINY, training={"private": 1}))
    return path


@pytest.fixture
def make_federation(tmp_path: Path, tiny_model: Path) -> Callable[..., Federation]:
    """``make_federation(*fed_init_options, sites=SITES)``: keys from keygen, then fed-init."""

    def factory(*options: object, sites: Sequence[str] = SITES) -> Federation:
        keys = tmp_path / "keys"
        for site in (*sites, "coordinator"):
            if not (keys / f"{site}.key.pem").exists():
                assert invoke("keygen", site, "-o", keys).exit_code == 0
        site_args = [a for s in sites for a in ("--site", keys / f"{s}.pub.json")]
        result = invoke(
            "fed-init", tmp_path / "fed", "--federation-id", "fed-cli", *site_args,
            "--coordinator-key", keys / "coordinator.key.pem", "--clip-norm", "1.0",
            "--model", tiny_model, *options,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        return Federation(root=tmp_path / "fed", keys=keys)

    return factory


def test_a_full_round_from_the_shell(make_federation, pages: Path, tmp_path: Path) -> None:
    # Prepare: keys and a federation of two sites.
    keygen = invoke("keygen", "site-a", "-o", tmp_path / "keys")
    fed = make_federation("--min-sites", "2", sites=("site-a", "site-b"))

    # Execute: each site trains; the coordinator aggregates and exports.
    updates = []
    for k, site in enumerate(("site-a", "site-b")):
        update = tmp_path / "outbox" / f"{site}.safetensors"
        result = fed.train(site, 0, pages, update, "--seed", k)
        assert result.exit_code == 0, result.output
        assert f"site {site}: round 0 update from 2 pages/records, 2 steps" in result.stdout
        updates.append(update)
    aggregated = fed.aggregate(0, updates, "-o", fed.round_dir(1))
    exported = invoke("fed-export", fed.round_dir(1), "-o", tmp_path / "federated.safetensors")

    # Assert
    assert keygen.exit_code == 0, keygen.output
    private = tmp_path / "keys" / "site-a.key.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    _, raw = load_public_key(tmp_path / "keys" / "site-a.pub.json")
    assert f"fingerprint: {public_key_fingerprint(raw)}" in keygen.stdout
    assert read_model_spec(fed.root / "model.json").architecture == TINY
    assert read_model_spec(fed.root / "model.json").training == {}  # the start model's notes stay home

    assert aggregated.exit_code == 0, aggregated.output
    assert "round 0 aggregated (fedavg): 2 accepted, 0 rejected" in aggregated.stdout
    assert {p.name for p in fed.round_dir(1).iterdir()} == {"global.safetensors", "round.json", "report.json"}

    assert exported.exit_code == 0, exported.output
    model, header = load_model(tmp_path / "federated.safetensors")
    assert header.architecture == TINY
    assert header.training["federated"]["federation_id"] == "fed-cli"
    assert header.training["federated"]["round"] == 1
    global_1 = read_tensors(read_file_info(fed.global_model(1)))
    exported_tensors = model_tensors(model)
    assert all(np.array_equal(exported_tensors[k], global_1[k]) for k in global_1)
    assert not np.array_equal(
        global_1["segmentation_head.0.bias"],
        model_tensors(load_model(fed.root.parent / "tiny.safetensors")[0])["segmentation_head.0.bias"],
    )


def test_bad_updates_are_rejected_with_a_reason_and_the_round_still_aggregates(
    make_federation, tmp_path: Path
) -> None:
    fed = make_federation("--min-sites", "2")
    good = [fed.quick_update(site, 0, tmp_path / f"{site}.safetensors") for site in ("site-a", "site-b")]
    tampered = fed.quick_update("site-c", 0, tmp_path / "site-c.safetensors")
    data = bytearray(tampered.read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor value
    tampered.write_bytes(bytes(data))
    outsider = tmp_path / "not-an-update.safetensors"
    outsider.write_bytes(b"\x80\x04 a pickle, say")

    result = fed.aggregate(0, [*good, tampered, outsider])

    assert result.exit_code == 0, result.output
    assert "rejected: site-c.safetensors: payload SHA-256 mismatch" in result.stderr
    assert "rejected: not-an-update.safetensors: not a safetensors file" in result.stderr
    assert result.stderr.count("rejected:") == 2
    assert "2 accepted, 2 rejected" in result.stdout
    assert fed.global_model(1).is_file()


def test_below_the_threshold_exits_1_and_writes_no_round(make_federation, tmp_path: Path) -> None:
    fed = make_federation("--min-sites", "2")
    round_0 = [
        fed.quick_update(site, 0, tmp_path / f"{site}-r0.safetensors") for site in ("site-a", "site-b")
    ]
    assert fed.aggregate(0, round_0).exit_code == 0
    fresh = fed.quick_update("site-a", 1, tmp_path / "site-a-r1.safetensors")

    # Round 1 receives one current update and a replayed round-0 file.
    result = fed.aggregate(1, [fresh, round_0[1]])

    assert result.exit_code == 1
    assert "rejected: site-b-r0.safetensors: update is for round 0, expected round 1" in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "1 valid update(s), the plan needs 2; nothing written" in error_lines[0]
    assert not fed.round_dir(2).exists()
    assert not list(fed.root.glob(".round-*"))  # no temporary folder left behind


def test_output_folder_must_be_the_next_round_of_the_federation(make_federation, tmp_path: Path) -> None:
    fed = make_federation()
    updates = [fed.quick_update(site, 0, tmp_path / f"{site}.safetensors") for site in SITES]

    result = fed.aggregate(0, updates, "-o", tmp_path / "elsewhere")

    assert result.exit_code == 2
    assert "round-0001" in result.output
    assert not (tmp_path / "elsewhere").exists() and not fed.round_dir(1).exists()


def test_max_epsilon_refusal_leaves_the_ledger_untouched(make_federation, tmp_path: Path) -> None:
    fed = make_federation("--dp-noise", "1.0", "--min-sites", "2", "--rounds", "3")
    ledger = fed.root / "ledger.jsonl"
    round_0 = [fed.quick_update(site, 0, tmp_path / f"{site}-0.safetensors") for site in SITES]
    assert fed.aggregate(0, round_0).exit_code == 0
    before = ledger.read_bytes()
    round_1 = [fed.quick_update(site, 1, tmp_path / f"{site}-1.safetensors") for site in SITES]

    # One full-participation round at z = 1 spends RDP epsilon ~4.7; two would exceed 6.
    refused = fed.aggregate(1, round_1, "--max-epsilon", "6")
    seeded = fed.aggregate(1, round_1, "--seed", "1")

    assert refused.exit_code == 1
    assert refused.stderr.count("\n") == 1 and "epsilon" in refused.stderr
    assert ledger.read_bytes() == before
    assert not fed.round_dir(2).exists()
    assert seeded.exit_code == 2  # a seed would make the DP noise predictable
    assert ledger.read_bytes() == before


def test_privacy_prints_the_ledger_and_refuses_a_tampered_one(make_federation, tmp_path: Path) -> None:
    fed = make_federation("--dp-noise", "2.0", "--min-sites", "2")
    updates = [fed.quick_update(site, 0, tmp_path / f"{site}.safetensors") for site in SITES]
    aggregated = fed.aggregate(0, updates)
    ledger = fed.root / "ledger.jsonl"

    good = invoke("privacy", ledger)
    ledger.write_text(ledger.read_text().replace('"n_sites":3', '"n_sites":2'))
    tampered = invoke("privacy", ledger)

    assert aggregated.exit_code == 0, aggregated.output
    assert "epsilon spent" in aggregated.stdout
    assert good.exit_code == 0, good.output
    assert "verified, 1 release of federation fed-cli" in good.stdout
    assert tampered.exit_code == 1
    assert tampered.output.count("\n") == 1 and "hash mismatch" in tampered.output


def test_fed_train_rerun_on_a_valid_update_does_no_work(make_federation, pages: Path, tmp_path: Path) -> None:
    fed = make_federation(sites=("site-a", "site-b"))
    update = tmp_path / "site-a.safetensors"
    first = fed.train("site-a", 0, pages, update)
    written = update.read_bytes()
    update.touch()
    mtime = update.stat().st_mtime_ns

    again = fed.train("site-a", 0, pages, update)
    as_other_site = fed.train("site-b", 0, pages, update)

    assert first.exit_code == 0, first.output
    assert again.exit_code == 0, again.output
    assert "already a valid round-0 update of site site-a" in again.stdout and "nothing to do" in again.stdout
    assert update.read_bytes() == written and update.stat().st_mtime_ns == mtime
    # A file that is not this site's update is never overwritten silently.
    assert as_other_site.exit_code == 1
    assert "not a valid update of site 'site-b'" in as_other_site.stderr and "--force" in as_other_site.stderr


def test_a_killed_fed_train_resumes_from_its_checkpoint(make_federation, pages: Path, tmp_path: Path) -> None:
    fed = make_federation(sites=("site-a", "site-b"))
    update = tmp_path / "site-a.safetensors"
    plan = load_plan(fed.root / "plan.json")
    spec = read_model_spec(fed.root / "model.json")
    site_key = load_site_key(fed.key("site-a"))
    data = open_training_data([pages], hold_out=False)[0]

    class Killed(Exception):
        pass

    def kill_after_first_step(info: StepInfo) -> None:
        if info.step == 1:
            raise Killed

    # The same settings as TRAIN_ARGS, killed after step 1 with a checkpoint written every step.
    with pytest.raises(Killed):
        train_site_update(
            fed.global_model(0), data, update, site_key, plan=plan, spec=spec, num_examples=2, epochs=0.125,
            batch_size=2, threads=1, checkpoint_every=1, on_step=kill_after_first_step,
        )  # fmt: skip
    assert not update.exists() and len(list(tmp_path.glob("site-a.safetensors.*.ckpt.safetensors"))) == 1

    resumed = fed.train("site-a", 0, pages, update)

    assert resumed.exit_code == 0, resumed.output
    assert "2 steps, resumed from step 1" in resumed.stdout
    assert verify_site_update(update, fed.global_model(0), site_key, plan=plan).site_id == "site-a"
    assert not list(tmp_path.glob("*.ckpt.safetensors"))


def test_fed_init_checks_everything_before_writing(make_federation, tmp_path: Path) -> None:
    fed = make_federation(sites=("site-a", "site-b"))
    bad_key = tmp_path / "bad.pub.json"
    bad_key.write_text('{"format": "ecgdig-public-key"}')
    common = ("--federation-id", "f2", "--coordinator-key", fed.key("coordinator"), "--clip-norm", "1.0")

    unreadable = invoke("fed-init", tmp_path / "f2", *common, "--site", fed.keys / "site-a.pub.json",
                        "--site", bad_key)  # fmt: skip
    exists = invoke("fed-init", fed.root, *common, "--site", fed.keys / "site-a.pub.json")
    adaptive_only = invoke("fed-init", tmp_path / "f3", *common, "--site", fed.keys / "site-a.pub.json",
                           "--beta1", "0.5")  # fmt: skip
    dp_only = invoke("fed-init", tmp_path / "f4", *common, "--site", fed.keys / "site-a.pub.json",
                     "--max-epsilon", "3")  # fmt: skip
    fedprox_without_mu = invoke("fed-init", tmp_path / "f5", *common, "--site", fed.keys / "site-a.pub.json",
                                "--strategy", "fedprox")  # fmt: skip

    assert unreadable.exit_code == 1 and "bad.pub.json" in unreadable.stderr
    assert not (tmp_path / "f2").exists() and not list(tmp_path.glob(".f2.*"))
    assert exists.exit_code == 1 and "not an empty folder" in exists.stderr
    assert adaptive_only.exit_code == 2 and dp_only.exit_code == 2 and fedprox_without_mu.exit_code == 2
    assert not any((tmp_path / name).exists() for name in ("f3", "f4", "f5"))


def test_fed_train_refuses_a_global_model_of_another_coordinator(
    make_federation, pages: Path, tmp_path: Path
) -> None:
    fed = make_federation(sites=("site-a", "site-b"))
    # Someone else sets up a federation of the same id and slips its global model to site-a.
    assert invoke("keygen", "coordinator", "-o", tmp_path / "impostor").exit_code == 0
    impostor = invoke(
        "fed-init", tmp_path / "impostor-fed", "--federation-id", "fed-cli",
        "--site", fed.keys / "site-a.pub.json", "--min-sites", "1", "--clip-norm", "1.0",
        "--coordinator-key", tmp_path / "impostor" / "coordinator.key.pem",
        "--model", tmp_path / "tiny.safetensors",
    )  # fmt: skip
    assert impostor.exit_code == 0, impostor.output
    forged = tmp_path / "forged.safetensors"
    forged.write_bytes((tmp_path / "impostor-fed" / "round-0000" / "global.safetensors").read_bytes())
    update = tmp_path / "u.safetensors"

    result = invoke(
        "fed-train", forged, pages, "-o", update, "--key", fed.key("site-a"),
        "--plan", fed.root / "plan.json", "--model-spec", fed.root / "model.json", *TRAIN_ARGS,
    )  # fmt: skip

    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "forged.safetensors: bad signature" in result.output
    assert not update.exists()


def test_command_choices_match_the_library() -> None:
    assert tuple(Strategy) == STRATEGY_NAMES
    assert tuple(Sampling) == SAMPLING_MODES
