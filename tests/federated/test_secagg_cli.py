"""The secure-aggregation commands, run as a shell pipeline would run them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from ecgdig.cli import app
from ecgdig.federated.coordinator import FederationPlan, init_federation, load_plan, make_update
from ecgdig.federated.keys import add_site, create_registry, generate_site_key, load_site_key

runner = CliRunner()
SITES = ("site-a", "site-b", "site-c", "site-d")


def _federation(tmp_path: Path) -> tuple[Path, Path]:
    """A 4-site federation on disk with each site's plain update already made; returns root, keys."""
    root, keys = tmp_path / "fed", tmp_path / "keys"
    create_registry(root / "registry.json", "fed-cli")
    for site in SITES:
        add_site(root / "registry.json", generate_site_key(site, keys).public_key)
    coordinator = load_site_key(generate_site_key("coordinator", keys).private_key)
    model = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}
    init_federation(
        root, model, FederationPlan(federation_id="fed-cli", clip_norm=1.0), coordinator_key=coordinator
    )
    plan = load_plan(root / "plan.json")
    for k, site in enumerate(SITES):
        local = {"w": np.full((3, 2), 0.1 * (k + 1), np.float32), "b": np.full(2, -0.05, np.float32)}
        make_update(root / "round-0000" / "global.safetensors", local, tmp_path / site / "update.safetensors",
                    load_site_key(keys / f"{site}.key.pem"), plan=plan, num_examples=100)  # fmt: skip
    return root, keys


def _invoke(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (args[0], result.output)


def test_secure_round_through_the_commands_with_a_dropout(tmp_path: Path) -> None:
    # Prepare
    root, keys = _federation(tmp_path)
    round_dir, plan = root / "round-0000", root / "plan.json"
    box = tmp_path / "box"

    def site_opts(site: str) -> list[str]:
        return ["--key", str(keys / f"{site}.key.pem"), "--state", str(tmp_path / site / "state.json"),
                "--plan", str(plan)]  # fmt: skip

    # Execute: every step; site-d drops out after masking (t = 3 of 4)
    for site in SITES:
        _invoke(["secagg-advertise", str(round_dir / "global.safetensors"), "--examples", "100",
                 "-o", str(box / f"{site}.advertise.json"), *site_opts(site)])  # fmt: skip
    coordinator = ["--coordinator-key", str(keys / "coordinator.key.pem")]
    roster = box / "roster.json"
    _invoke(["secagg-roster", str(round_dir), *map(str, sorted(box.glob("*.advertise.json"))),
             "-o", str(roster), *coordinator])  # fmt: skip
    for site in SITES:
        _invoke(["secagg-share", str(roster), "-o", str(box / f"{site}.shares.json"), *site_opts(site)])
    shares = sorted(map(str, box.glob("*.shares.json")))
    for site in SITES:
        _invoke(["secagg-mask", str(roster), *shares, "--update", str(tmp_path / site / "update.safetensors"),
                 "-o", str(box / f"{site}.masked.safetensors"), *site_opts(site)])  # fmt: skip
    masked = sorted(map(str, box.glob("*.masked.safetensors")))
    request = box / "request.json"
    _invoke(["secagg-request", str(round_dir), *shares, *masked, "--roster", str(roster), "-o", str(request),
             *coordinator])  # fmt: skip
    for site in SITES[:3]:
        reveal = str(box / f"{site}.reveal.json")
        _invoke(["secagg-unmask", str(request), "--roster", str(roster), "-o", reveal, *site_opts(site)])
    reveals = sorted(map(str, box.glob("*.reveal.json")))
    args = ["secagg-aggregate", str(round_dir), *masked, *reveals, "--roster", str(roster)]
    result = runner.invoke(app, [*args, "--request", str(request), *coordinator])
    # Assert: the new round exists and its model moved by the mean update (all weights equal)
    assert result.exit_code == 0, result.output
    assert "4 masked inputs summed" in result.output
    from ecgdig.federated.files import read_file_info, read_tensors

    new = read_tensors(read_file_info(root / "round-0001" / "global.safetensors"))
    # deltas w: 0.1k for k = 1..4 (norm sqrt(6) * 0.1k, clipped to 1 for k >= 2); b: -0.05
    expected_w = []
    for k in range(1, 5):
        norm = float(np.sqrt(6 * (0.1 * k) ** 2 + 2 * 0.05**2))
        expected_w.append(0.1 * k * min(1.0, 1.0 / norm))
    assert np.allclose(new["w"], np.mean(expected_w), atol=1e-6)


def test_abort_below_threshold_exits_1_with_one_line(tmp_path: Path) -> None:
    # Prepare: only two of four sites advertise, then the roster has t = 2 ... and one never masks
    root, keys = _federation(tmp_path)
    round_dir, box = root / "round-0000", tmp_path / "box"
    opts = {s: ["--key", str(keys / f"{s}.key.pem"), "--state", str(tmp_path / s / "state.json"),
                "--plan", str(root / "plan.json")] for s in SITES[:2]}  # fmt: skip
    for site in SITES[:2]:
        _invoke(["secagg-advertise", str(round_dir / "global.safetensors"), "--examples", "100",
                 "-o", str(box / f"{site}.advertise.json"), *opts[site]])  # fmt: skip
    coordinator = ["--coordinator-key", str(keys / "coordinator.key.pem")]
    _invoke(["secagg-roster", str(round_dir), *map(str, sorted(box.glob("*.advertise.json"))),
             "-o", str(box / "roster.json"), *coordinator])  # fmt: skip
    for site in SITES[:2]:
        _invoke(
            ["secagg-share", str(box / "roster.json"), "-o", str(box / f"{site}.shares.json"), *opts[site]]
        )
    shares = sorted(map(str, box.glob("*.shares.json")))
    _invoke(["secagg-mask", str(box / "roster.json"), *shares, "--update",
             str(tmp_path / "site-a" / "update.safetensors"), "-o", str(box / "site-a.masked.safetensors"),
             *opts["site-a"]])  # fmt: skip
    # Execute
    args = ["secagg-request", str(round_dir), *shares, str(box / "site-a.masked.safetensors")]
    result = runner.invoke(app, [*args, "--roster", str(box / "roster.json"), "-o", str(box / "req.json"),
                                 *coordinator])  # fmt: skip
    # Assert
    assert result.exit_code == 1
    assert "secure aggregation aborted in round 0: 1 valid masked input(s), threshold 2" in result.output
    assert "Traceback" not in result.output
    assert not (box / "req.json").exists()


def test_tampered_advertisement_is_reported_and_usage_errors_exit_2(tmp_path: Path) -> None:
    # Prepare
    root, keys = _federation(tmp_path)
    round_dir, box = root / "round-0000", tmp_path / "box"
    for site in SITES:
        state = str(tmp_path / site / "state.json")
        _invoke(["secagg-advertise", str(round_dir / "global.safetensors"), "--examples", "10",
                 "-o", str(box / f"{site}.advertise.json"), "--key", str(keys / f"{site}.key.pem"),
                 "--state", state, "--plan", str(root / "plan.json")])  # fmt: skip
    path = box / "site-d.advertise.json"
    path.write_text(path.read_text().replace('"num_examples":10', '"num_examples":11'))
    # Execute
    advertisements = [str(p) for p in sorted(box.glob("*.advertise.json"))]
    coordinator = ["--coordinator-key", str(keys / "coordinator.key.pem")]
    roster = str(box / "roster.json")
    result = runner.invoke(
        app, ["secagg-roster", str(round_dir), *advertisements, "-o", roster, *coordinator]
    )
    usage = runner.invoke(app, ["secagg-share", str(box / "roster.json")])
    # Assert: the roster is made from the three good files; the bad one is named with its reason
    assert result.exit_code == 0, result.output
    assert "rejected: site-d.advertise.json: bad signature" in result.output
    assert "3 sites, threshold 3" in result.output
    assert usage.exit_code == 2
    for command in ("secagg-advertise", "secagg-roster", "secagg-share", "secagg-mask", "secagg-request",
                    "secagg-unmask", "secagg-aggregate"):  # fmt: skip
        assert runner.invoke(app, [command, "--help"]).exit_code == 0
