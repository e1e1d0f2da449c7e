from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ecgdig.errors import ConfigError, ModelFileError, UpdateRejectedError
from ecgdig.federated import coordinator
from ecgdig.federated.coordinator import (
    GLOBAL_FILE,
    LEDGER_FILE,
    REPORT_FILE,
    STATE_FILE,
    DpPlan,
    FederationPlan,
    ParticipationError,
    SamplingPlan,
    aggregate_round,
    init_federation,
    load_plan,
    load_round_info,
    make_update,
)
from ecgdig.federated.files import write_signed_tensors
from ecgdig.federated.keys import SiteKey, add_site, generate_site_key
from ecgdig.federated.privacy import PrivacyBudgetError, epsilon_after, make_rng, verify_ledger
from ecgdig.federated.strategies import (
    DeltaAccumulator,
    clipped_delta,
    init_optimizer_state,
    make_server_optimizer,
    server_step,
)
from ecgdig.federated.validate import validate_model

Federation = Any  # conftest.Federation (fixtures are not importable as a module)
Model = dict[str, np.ndarray]


def shifted(model: Model, amount: float) -> Model:
    return {name: (t.astype(np.float64) + amount).astype(np.float32) for name, t in model.items()}


def send(
    fed: Federation,
    site: str,
    local: Model,
    folder: Path,
    n: int,
    round_number: int = 0,
    round_dir: Path | None = None,
) -> Path:
    """A site's side of a round: make_update against the round's global model."""
    src = round_dir if round_dir is not None else fed.round_dir(round_number)
    return make_update(
        src / GLOBAL_FILE,
        local,
        folder / f"{site}-r{round_number}.safetensors",
        fed.sites[site],
        plan=fed.plan,
        num_examples=n,
    ).path


def read_global(fed: Federation, round_dir: Path) -> Model:
    return validate_model(
        round_dir / GLOBAL_FILE,
        federation_id="fed-test",
        coordinator_id="coordinator",
        coordinator_public_key=fed.coordinator.public_key,
    )[1]


def raw_update(
    fed: Federation, path: Path, site: str, tensors: Model, *, key: SiteKey | None = None, **overrides: Any
) -> Path:
    info = load_round_info(fed.round_dir(0))
    fields: dict[str, Any] = {
        "kind": "update",
        "federation_id": "fed-test",
        "round": 0,
        "site_id": site,
        "base_sha256": info.global_sha256,
        "num_examples": 10,
        "clip_norm": fed.plan.clip_norm,
        "private_key": (key or fed.sites[site]).private_key,
    }
    fields.update(overrides)
    write_signed_tensors(path, tensors, **fields)
    return path


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_init_writes_plan_and_round_zero(make_federation: Callable[..., Federation], model0: Model) -> None:
    # Execute
    fed = make_federation(n_sites=3, dp=DpPlan(noise_multiplier=1.5))

    # Assert
    plan = load_plan(fed.root / "plan.json")
    assert plan == fed.plan
    assert plan.population == 3 and plan.dp is not None and plan.dp.denominator == 3.0
    assert plan.coordinator_public_key == fed.coordinator.public_key_b64
    info = load_round_info(fed.round_dir(0))
    assert (
        info.round == 0 and info.selected_sites == ("site-a", "site-b", "site-c") and info.ledger_length == 0
    )
    header, tensors = validate_model(
        fed.round_dir(0) / GLOBAL_FILE,
        federation_id="fed-test",
        coordinator_id="coordinator",
        coordinator_public_key=fed.coordinator.public_key,
        expected_round=0,
    )
    assert header.payload_sha256 == info.global_sha256 and header.base_sha256 == "0" * 64
    for name in model0:
        np.testing.assert_array_equal(tensors[name], model0[name])
    with pytest.raises(ConfigError, match="already initialized"):
        init_federation(
            fed.root,
            model0,
            FederationPlan(federation_id="fed-test", clip_norm=1.0),
            coordinator_key=fed.coordinator,
        )


def test_plan_consistency_is_checked() -> None:
    with pytest.raises(ConfigError, match="FedProx needs proximal_mu"):
        FederationPlan(federation_id="f", clip_norm=1.0, strategy=make_server_optimizer("fedprox"))
    with pytest.raises(ConfigError, match="clip_norm"):
        FederationPlan(federation_id="f", clip_norm=-1.0)
    with pytest.raises(ConfigError, match="Poisson sampling needs 0 < q < 1"):
        FederationPlan(federation_id="f", clip_norm=1.0, sampling=SamplingPlan(mode="poisson", q=1.5))


def test_fedavg_round_equals_the_weighted_mean(
    make_federation: Callable[..., Federation], model0: Model, tmp_path: Path
) -> None:
    # Prepare: site-a moved every weight by +1 with 1 example, site-b by +3 with 3 examples.
    fed = make_federation(n_sites=3)
    updates = [
        send(fed, "site-a", shifted(model0, 1.0), tmp_path, n=1),
        send(fed, "site-b", shifted(model0, 3.0), tmp_path, n=3),
    ]

    # Execute
    report = aggregate_round(fed.round_dir(0), updates, coordinator_key=fed.coordinator)

    # Assert: mean delta (1*1 + 3*3) / 4 = 2.5.
    new = read_global(fed, fed.round_dir(1))
    for name in model0:
        np.testing.assert_allclose(new[name], model0[name] + 2.5, atol=1e-6)
    assert [(a.site_id, a.weight) for a in report.accepted] == [("site-a", 1.0), ("site-b", 3.0)]
    assert report.rejected == () and report.dp is None
    info = load_round_info(fed.round_dir(1))
    assert info.round == 1 and info.global_sha256 == report.global_sha256
    saved = json.loads((fed.round_dir(1) / REPORT_FILE).read_text())
    assert saved["round"] == 0 and saved["next_round"] == 1 and len(saved["accepted"]) == 2


def test_bad_files_are_skipped_with_reasons_and_valid_ones_aggregated(
    make_federation: Callable[..., Federation], model0: Model, tmp_path: Path
) -> None:
    # Prepare: two valid updates and one bad file of each kind, from distinct sites.
    fed = make_federation(n_sites=8)
    info = load_round_info(fed.round_dir(0))
    ok = {name: np.full(t.shape, 0.1, np.float32) for name, t in model0.items()}
    tampered = send(fed, "site-c", shifted(model0, 1.0), tmp_path, n=5)
    data = bytearray(tampered.read_bytes())
    data[-1] ^= 0x01
    tampered.write_bytes(bytes(data))
    bad = {
        "tampered": (tampered, "payload SHA-256 mismatch"),
        "nan": (
            raw_update(
                fed,
                tmp_path / "nan.safetensors",
                "site-d",
                {**ok, "conv.bias": np.array([np.nan, 0, 0], np.float32)},
            ),
            "NaN or Inf",
        ),
        "shape": (
            raw_update(
                fed, tmp_path / "shape.safetensors", "site-e", {**ok, "conv.bias": np.zeros(2, np.float32)}
            ),
            "shape (2,), expected (3,)",
        ),
        "norm": (
            raw_update(
                fed, tmp_path / "norm.safetensors", "site-f", {name: t * 100 for name, t in ok.items()}
            ),
            "exceeds the clip norm",
        ),
        "unsigned": (
            raw_update(fed, tmp_path / "unsigned.safetensors", "site-g", ok, key=None, private_key=None),
            "unsigned update",
        ),
        "replay": (
            raw_update(fed, tmp_path / "replay.safetensors", "site-h", ok, round=1),
            "expected round 0",
        ),
        "base": (
            raw_update(fed, tmp_path / "base.safetensors", "site-h", ok, base_sha256="ab" * 32),
            "base model",
        ),
        "unknown": (
            raw_update(fed, tmp_path / "unknown.safetensors", "site-x", ok, key=fed.outsider),
            "unknown site 'site-x'",
        ),
    }
    assert info.global_sha256 != "ab" * 32
    valid = [
        send(fed, "site-a", shifted(model0, 1.0), tmp_path, n=1),
        send(fed, "site-b", shifted(model0, 3.0), tmp_path, n=3),
    ]

    # Execute
    report = aggregate_round(
        fed.round_dir(0), [*valid, *(p for p, _ in bad.values())], coordinator_key=fed.coordinator
    )

    # Assert
    assert [a.site_id for a in report.accepted] == ["site-a", "site-b"]
    reasons = {r.file: r.reason for r in report.rejected}
    for path, expected in bad.values():
        assert expected in reasons[path.name], (path.name, reasons[path.name])
    new = read_global(fed, fed.round_dir(1))
    for name in model0:
        np.testing.assert_allclose(new[name], model0[name] + 2.5, atol=1e-6)


@pytest.mark.parametrize("dp", [None, DpPlan(noise_multiplier=1.0)], ids=["no-dp", "dp"])
def test_below_threshold_nothing_is_written(
    make_federation: Callable[..., Federation], model0: Model, tmp_path: Path, dp: DpPlan | None
) -> None:
    # Prepare: one valid update and one that will be rejected; the plan needs two.
    fed = make_federation(n_sites=3, clip_norm=10.0, dp=dp)
    good = send(fed, "site-a", shifted(model0, 0.1), tmp_path, n=10)
    stale = raw_update(
        fed,
        tmp_path / "stale.safetensors",
        "site-b",
        {name: np.zeros(t.shape, np.float32) for name, t in model0.items()},
        round=5,
    )
    before = tree(fed.root)

    # Execute
    with pytest.raises(ParticipationError) as err:
        aggregate_round(fed.round_dir(0), [good, stale], coordinator_key=fed.coordinator)

    # Assert
    assert "1 valid update(s), the plan needs 2" in str(err.value) and "stale.safetensors" in str(err.value)
    assert [r.file for r in err.value.rejected] == ["stale.safetensors"]
    assert tree(fed.root) == before
    assert sorted(p.name for p in fed.root.iterdir()) == ["plan.json", "registry.json", "round-0000"]


def test_rerun_is_byte_identical_and_fedadam_state_persists(
    make_federation: Callable[..., Federation], model0: Model, tmp_path: Path
) -> None:
    # Prepare
    opt = make_server_optimizer("fedadam", server_lr=0.05)
    fed = make_federation(n_sites=3, strategy=opt)
    locals_1 = {"site-a": (shifted(model0, 0.5), 2), "site-b": (shifted(model0, -0.25), 6)}
    updates = [send(fed, s, local, tmp_path, n) for s, (local, n) in locals_1.items()]

    # Execute: the same round twice, with the files listed in opposite orders.
    aggregate_round(fed.round_dir(0), updates, tmp_path / "run1", coordinator_key=fed.coordinator)
    aggregate_round(fed.round_dir(0), updates[::-1], tmp_path / "run2", coordinator_key=fed.coordinator)
    x1 = read_global(fed, tmp_path / "run1")
    locals_2 = {"site-a": (shifted(x1, 0.3), 2), "site-c": (shifted(x1, 0.1), 1)}
    updates_2 = [
        send(fed, s, local, tmp_path, n, round_number=1, round_dir=tmp_path / "run1")
        for s, (local, n) in locals_2.items()
    ]
    aggregate_round(
        tmp_path / "run1",
        updates_2,
        tmp_path / "run1-next",
        coordinator_key=fed.coordinator,
        federation_dir=fed.root,
    )

    # Assert: identical bytes; the on-disk two-round result equals the pure computation.
    assert tree(tmp_path / "run1") == tree(tmp_path / "run2")
    assert (tmp_path / "run1" / STATE_FILE).exists()
    x, state = model0, init_optimizer_state(opt, {n: t.shape for n, t in model0.items()})
    for base, local_models in ((model0, locals_1), (None, locals_2)):
        acc = DeltaAccumulator({n: t.shape for n, t in model0.items()})
        for local, n in dict(sorted(local_models.items())).values():
            acc.add(clipped_delta(local, x if base is None else base, fed.plan.clip_norm)[0], float(n))
        x, state = server_step(opt, x, acc.mean(), state)
    on_disk = read_global(fed, tmp_path / "run1-next")
    for name in model0:
        np.testing.assert_array_equal(on_disk[name], x[name])
    assert state.step == 2


def test_dp_round_adds_seeded_noise_to_the_capped_sum_and_records_the_ledger(
    make_federation: Callable[..., Federation], model0: Model, tmp_path: Path
) -> None:
    # Prepare: S = 1, z = 1, n_cap = 10 -> weights 0.5 (5 examples) and 1 (50 examples); D = 3 sites.
    fed = make_federation(n_sites=3, clip_norm=1.0, dp=DpPlan(noise_multiplier=1.0, n_cap=10.0))
    local_a, local_b = shifted(model0, 0.1), shifted(model0, -0.2)
    updates = [send(fed, "site-a", local_a, tmp_path, n=5), send(fed, "site-b", local_b, tmp_path, n=50)]

    # Execute
    report = aggregate_round(fed.round_dir(0), updates, coordinator_key=fed.coordinator, rng=123)

    # Assert: x1 = x0 + (0.5 d_a + 1 d_b + N(0, 1)) / 3, noise drawn in sorted tensor order.
    noise_rng = make_rng(123)
    new = read_global(fed, fed.round_dir(1))
    for name in sorted(model0):
        d_a = clipped_delta(local_a, model0, 1.0)[0][name].astype(np.float64)
        d_b = clipped_delta(local_b, model0, 1.0)[0][name].astype(np.float64)
        noise = noise_rng.normal(0.0, 1.0, size=model0[name].shape)
        np.testing.assert_allclose(new[name], model0[name] + (0.5 * d_a + d_b + noise) / 3.0, atol=1e-6)
    assert report.dp is not None and report.dp.denominator == 3.0 and report.dp.noise_std == 1.0
    ledger = verify_ledger(fed.root / LEDGER_FILE, recompute=True)
    expected = epsilon_after(1, 1.0, 1.0, 1e-5)
    assert len(ledger.entries) == 1 and ledger.entries[0].epsilon_rdp == pytest.approx(
        expected.rdp, rel=1e-12
    )
    assert report.dp.epsilon_rdp == ledger.epsilon_rdp and report.dp.epsilon_pld == ledger.epsilon_pld
    assert load_round_info(fed.round_dir(1)).ledger_head == ledger.head_hash
    header, _ = validate_model(
        fed.round_dir(1) / GLOBAL_FILE,
        federation_id="fed-test",
        coordinator_id="coordinator",
        coordinator_public_key=fed.coordinator.public_key,
    )
    assert header.num_examples == 0  # a count would leak participation under DP

    # Execute again: a DP rerun (same seed) gives the same model but is a second release.
    aggregate_round(fed.round_dir(0), updates, tmp_path / "rerun", coordinator_key=fed.coordinator, rng=123)
    assert (tmp_path / "rerun" / GLOBAL_FILE).read_bytes() == (fed.round_dir(1) / GLOBAL_FILE).read_bytes()
    assert len(verify_ledger(fed.root / LEDGER_FILE).entries) == 2


def test_max_epsilon_refuses_before_any_noise_is_drawn(
    make_federation: Callable[..., Federation], model0: Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: spies that fail the test if noise or randomness is requested.
    fed = make_federation(n_sites=3, clip_norm=1.0, dp=DpPlan(noise_multiplier=1.0))
    updates = [send(fed, s, shifted(model0, 0.1), tmp_path, n=10) for s in ("site-a", "site-b")]
    calls: list[str] = []

    def spy(name: str) -> Callable[..., Any]:
        def record(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"{name} called")

        return record

    monkeypatch.setattr(coordinator, "make_rng", spy("make_rng"))
    monkeypatch.setattr(coordinator, "add_gaussian_noise", spy("add_gaussian_noise"))
    before = tree(fed.root)

    # Execute: one round at z = 1 costs epsilon ~4.7 (RDP), over a limit of 1.
    with pytest.raises(PrivacyBudgetError, match="over the limit 1; refused before any noise was drawn"):
        aggregate_round(fed.round_dir(0), updates, coordinator_key=fed.coordinator, max_epsilon=1.0)

    # Assert
    assert calls == []
    assert tree(fed.root) == before and not (fed.root / LEDGER_FILE).exists()


def test_truncated_or_missing_ledger_is_detected(
    make_federation: Callable[..., Federation], model0: Model, tmp_path: Path
) -> None:
    # Prepare: one DP round done, so round 1 records one ledger entry.
    fed = make_federation(n_sites=3, clip_norm=1.0, dp=DpPlan(noise_multiplier=2.0))
    updates = [send(fed, s, shifted(model0, 0.1), tmp_path, n=10) for s in ("site-a", "site-b")]
    aggregate_round(fed.round_dir(0), updates, coordinator_key=fed.coordinator, rng=1)
    x1 = read_global(fed, fed.round_dir(1))
    updates_2 = [send(fed, s, shifted(x1, 0.1), tmp_path, n=10, round_number=1) for s in ("site-a", "site-b")]
    ledger = fed.root / LEDGER_FILE

    # Execute / Assert: emptying the ledger leaves a valid (empty) chain, but not the recorded one.
    ledger.write_text("")
    with pytest.raises(UpdateRejectedError, match="no longer holds the 1 entries"):
        aggregate_round(fed.round_dir(1), updates_2, coordinator_key=fed.coordinator, rng=1)
    ledger.unlink()
    with pytest.raises(UpdateRejectedError, match="ledger is missing"):
        aggregate_round(fed.round_dir(1), updates_2, coordinator_key=fed.coordinator, rng=1)
    assert not fed.round_dir(2).exists()


def test_duplicates_and_unselected_sites_are_rejected(
    make_federation: Callable[..., Federation], model0: Model, tmp_path: Path
) -> None:
    # Prepare: fixed-size sampling of 2 of 3 sites, threshold 1.
    fed = make_federation(n_sites=3, min_sites=1, sampling=SamplingPlan(mode="fixed", sample_size=2), rng=5)
    selected = load_round_info(fed.round_dir(0)).selected_sites
    (left_out,) = set(fed.sites) - set(selected)
    first, second = selected
    files = [
        send(fed, first, shifted(model0, 0.2), tmp_path, n=4),
        send(fed, second, shifted(model0, 0.1), tmp_path, n=4),
        make_update(
            fed.round_dir(0) / GLOBAL_FILE,
            shifted(model0, 0.3),
            tmp_path / "dup.safetensors",
            fed.sites[second],
            plan=fed.plan,
            num_examples=4,
        ).path,
        send(fed, left_out, shifted(model0, 0.1), tmp_path, n=4),
    ]

    # Execute
    report = aggregate_round(fed.round_dir(0), [*files, files[0]], coordinator_key=fed.coordinator, rng=5)

    # Assert
    assert [a.site_id for a in report.accepted] == [first]
    reasons = [r.reason for r in report.rejected]
    assert sum(f"site {second!r} sent 2 updates" in r for r in reasons) == 2
    assert f"site {left_out!r} was not selected for round 0" in reasons
    assert "the same file was listed twice" in reasons
    assert fed.plan.sampling.q == pytest.approx(2 / 3)
    assert len(load_round_info(fed.round_dir(1)).selected_sites) == 2


def test_make_update_refuses_bad_local_models(
    make_federation: Callable[..., Federation], model0: Model, tmp_path: Path
) -> None:
    fed = make_federation(n_sites=3)
    global_path = fed.round_dir(0) / GLOBAL_FILE
    site = fed.sites["site-a"]
    with pytest.raises(ModelFileError, match="shape"):
        make_update(
            global_path,
            {**model0, "conv.bias": np.zeros(4, np.float32)},
            tmp_path / "u.safetensors",
            site,
            plan=fed.plan,
            num_examples=1,
        )
    with pytest.raises(ModelFileError, match="NaN or Inf"):
        make_update(
            global_path,
            {**model0, "conv.bias": np.array([np.nan, 0, 0], np.float32)},
            tmp_path / "u.safetensors",
            site,
            plan=fed.plan,
            num_examples=1,
        )
    with pytest.raises(ConfigError, match="num_examples"):
        make_update(global_path, model0, tmp_path / "u.safetensors", site, plan=fed.plan, num_examples=0)
    assert not (tmp_path / "u.safetensors").exists()


def test_registry_change_and_existing_output_are_refused(
    make_federation: Callable[..., Federation], model0: Model, tmp_path: Path
) -> None:
    fed = make_federation(n_sites=3)
    updates = [send(fed, s, shifted(model0, 0.1), tmp_path, n=1) for s in ("site-a", "site-b")]
    (tmp_path / "exists").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        aggregate_round(fed.round_dir(0), updates, tmp_path / "exists", coordinator_key=fed.coordinator)
    with pytest.raises(ConfigError, match="does not match the plan"):
        aggregate_round(fed.round_dir(0), updates, coordinator_key=SiteKey.generate("coordinator"))
    add_site(fed.root / "registry.json", generate_site_key("site-new", tmp_path / "new").public_key)
    with pytest.raises(ConfigError, match="registry has 4 sites but the plan was made for 3"):
        aggregate_round(fed.round_dir(0), updates, coordinator_key=fed.coordinator)
