from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld, rdp

from ecgdig.errors import UpdateRejectedError
from ecgdig.federated.files import canonical_json
from ecgdig.federated.privacy import (
    LedgerEntry,
    PrivacyBudgetError,
    RoundPrivacy,
    add_gaussian_noise,
    append_ledger_entry,
    epsilon_after,
    make_rng,
    prepare_ledger_entry,
    select_sites,
    verify_ledger,
)

NR = dp_accounting.NeighboringRelation


def append(path: Path, round_number: int, privacy: RoundPrivacy, **kwargs: object) -> LedgerEntry:
    fields: dict[str, object] = {
        "federation_id": "fed",
        "round": round_number,
        "privacy": privacy,
        "clip_norm": 1.0,
        "denominator": 4.0,
        "n_sites": 4,
        "delta": 1e-5,
    }
    fields.update(kwargs)
    return append_ledger_entry(path, **fields)  # type: ignore[arg-type]


def test_design_figures_rdp() -> None:
    # The design document's figures (dp-accounting 0.6.0): 50 rounds, z = 1, delta = 1e-5.
    assert round(epsilon_after(50, 1.0, 1.0, 1e-5, with_pld=False).rdp, 1) == 57.3
    assert round(epsilon_after(50, 1.0, 0.5, 1e-5, "poisson", with_pld=False).rdp, 1) == 28.0


@pytest.mark.slow
def test_design_figures_pld() -> None:
    assert round(epsilon_after(50, 1.0, 1.0, 1e-5).pld or 0.0, 1) == 54.4
    assert round(epsilon_after(50, 1.0, 0.5, 1e-5, "poisson").pld or 0.0, 1) == 25.8


@pytest.mark.parametrize(
    ("privacy", "event"),
    [
        (RoundPrivacy(noise_multiplier=2.0, sampling="full"), dp_accounting.GaussianDpEvent(2.0)),
        pytest.param(
            RoundPrivacy(noise_multiplier=1.1, sampling="poisson", q=0.3, population=10),
            dp_accounting.PoissonSampledDpEvent(0.3, dp_accounting.GaussianDpEvent(1.1)),
            marks=pytest.mark.slow,
        ),
    ],
    ids=["full-z2", "poisson-z1.1-q0.3"],
)
def test_ledger_epsilon_matches_dp_accounting_directly(
    tmp_path: Path, privacy: RoundPrivacy, event: dp_accounting.DpEvent
) -> None:
    # Prepare: T = 2 rounds, delta = 1e-5.
    ledger = tmp_path / "ledger.jsonl"

    # Execute
    entries = [append(ledger, r, privacy) for r in range(2)]

    # Assert: each entry's epsilon equals dp-accounting's for the same number of rounds.
    for t, entry in enumerate(entries, start=1):
        composed = dp_accounting.SelfComposedDpEvent(event, t)
        direct_rdp = rdp.RdpAccountant().compose(composed).get_epsilon(1e-5)
        direct_pld = pld.PLDAccountant().compose(composed).get_epsilon(1e-5)
        assert entry.epsilon_rdp == pytest.approx(direct_rdp, rel=1e-12)
        assert entry.epsilon_pld == pytest.approx(direct_pld, rel=1e-12)
        assert entry.seq == t - 1
    assert verify_ledger(ledger, recompute=True).epsilon_rdp == entries[-1].epsilon_rdp


def test_full_and_fixed_size_accounting_match_dp_accounting() -> None:
    # Full participation: a Gaussian mechanism per round, add/remove one site.
    full = epsilon_after(2, 0.8, 1.0, 1e-6, with_pld=False)
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(0.8), 2)
    assert full.rdp == pytest.approx(rdp.RdpAccountant().compose(event).get_epsilon(1e-6), rel=1e-12)

    # Fixed size (3 of 12) without replacement: replace-one relation, sensitivity 2S, so z / 2.
    fixed = epsilon_after(4, 2.0, 0.25, 1e-5, "fixed", population=12)
    wor = dp_accounting.SampledWithoutReplacementDpEvent(12, 3, dp_accounting.GaussianDpEvent(1.0))
    direct = (
        rdp.RdpAccountant(neighboring_relation=NR.REPLACE_ONE)
        .compose(dp_accounting.SelfComposedDpEvent(wor, 4))
        .get_epsilon(1e-5)
    )
    assert fixed.rdp == pytest.approx(direct, rel=1e-12)
    assert fixed.pld is None


def test_max_epsilon_refuses_without_writing(tmp_path: Path) -> None:
    # Prepare
    ledger = tmp_path / "ledger.jsonl"
    privacy = RoundPrivacy(noise_multiplier=1.0, sampling="full")
    first = append(ledger, 0, privacy)
    before = ledger.read_bytes()

    # Execute / Assert: a second round would exceed a limit just above the first round's epsilon.
    with pytest.raises(PrivacyBudgetError, match="over the limit") as err:
        prepare_ledger_entry(
            ledger,
            federation_id="fed",
            round=1,
            privacy=privacy,
            clip_norm=1.0,
            denominator=4.0,
            n_sites=4,
            delta=1e-5,
            max_epsilon=first.epsilon_rdp + 0.01,
        )
    assert "\n" not in str(err.value)
    assert ledger.read_bytes() == before


def _rewrite(path: Path, entries: list[dict[str, Any]]) -> None:
    path.write_text("".join(canonical_json(e) + "\n" for e in entries))


def _rehash(entry: dict[str, Any]) -> dict[str, Any]:
    """Recompute an edited entry's own hash, as a forger would."""
    fields = {k: v for k, v in entry.items() if k not in ("format", "version", "hash")}
    rebuilt = LedgerEntry(**fields)
    rebuilt = dataclasses.replace(rebuilt, hash=rebuilt.compute_hash())
    return dict(json.loads(rebuilt.to_line()))


@pytest.fixture
def three_entry_ledger(tmp_path: Path) -> Path:
    ledger = tmp_path / "ledger.jsonl"
    privacy = RoundPrivacy(noise_multiplier=2.0, sampling="full")
    for r in range(3):
        append(ledger, r, privacy)
    return ledger


def test_ledger_detects_an_edited_entry(three_entry_ledger: Path) -> None:
    entries = [json.loads(line) for line in three_entry_ledger.read_text().splitlines()]
    entries[1]["epsilon_rdp"] = 0.5
    _rewrite(three_entry_ledger, entries)
    with pytest.raises(UpdateRejectedError, match="ledger entry 1: hash mismatch"):
        verify_ledger(three_entry_ledger)


def test_ledger_detects_an_edited_and_rehashed_entry(three_entry_ledger: Path) -> None:
    entries = [json.loads(line) for line in three_entry_ledger.read_text().splitlines()]
    entries[1]["noise_multiplier"] = 20.0
    entries[1] = _rehash(entries[1])
    _rewrite(three_entry_ledger, entries)
    with pytest.raises(UpdateRejectedError, match="ledger entry 2: prev_hash does not match"):
        verify_ledger(three_entry_ledger)


def test_ledger_detects_deletion_and_reordering(three_entry_ledger: Path) -> None:
    lines = three_entry_ledger.read_text().splitlines(keepends=True)
    three_entry_ledger.write_text(lines[0] + lines[2])
    with pytest.raises(UpdateRejectedError, match="ledger entry 1: seq is 2"):
        verify_ledger(three_entry_ledger)
    three_entry_ledger.write_text(lines[1] + lines[0] + lines[2])
    with pytest.raises(UpdateRejectedError, match="ledger entry 0: seq is 1"):
        verify_ledger(three_entry_ledger)


def test_ledger_recompute_detects_a_forged_epsilon_with_a_valid_chain(three_entry_ledger: Path) -> None:
    # Prepare: lower the final epsilon and re-chain the entry consistently.
    entries = [json.loads(line) for line in three_entry_ledger.read_text().splitlines()]
    entries[2]["epsilon_rdp"] = entries[1]["epsilon_rdp"]
    entries[2] = _rehash(entries[2])
    _rewrite(three_entry_ledger, entries)

    # Execute / Assert: the chain verifies, the recomputation does not.
    verify_ledger(three_entry_ledger)
    with pytest.raises(UpdateRejectedError, match="does not match the recomputed"):
        verify_ledger(three_entry_ledger, recompute=True)


def test_gaussian_noise_is_reproducible_with_an_rng_and_has_the_right_scale() -> None:
    # Prepare
    total = {"a": np.zeros(200_000), "b": np.ones((2, 2))}

    # Execute
    noised = add_gaussian_noise(total, 0.5, make_rng(7))
    again = add_gaussian_noise(total, 0.5, make_rng(7))
    fresh_1 = add_gaussian_noise(total, 0.5, make_rng())
    fresh_2 = add_gaussian_noise(total, 0.5, make_rng())

    # Assert: sorted-name draw order ('a' then 'b'); std within 1 %; unseeded streams differ.
    reference = make_rng(7)
    np.testing.assert_array_equal(noised["a"], reference.normal(0.0, 0.5, size=200_000))
    np.testing.assert_array_equal(noised["b"], 1.0 + reference.normal(0.0, 0.5, size=(2, 2)))
    np.testing.assert_array_equal(noised["a"], again["a"])
    assert float(np.std(noised["a"])) == pytest.approx(0.5, rel=0.01)
    assert not np.array_equal(fresh_1["a"], fresh_2["a"])
    np.testing.assert_array_equal(total["a"], 0.0)


def test_site_selection_follows_the_sampling_mode() -> None:
    sites = [f"s{i:02d}" for i in range(40)]
    assert select_sites(sites, sampling="full") == sorted(sites)
    fixed = select_sites(sites, sampling="fixed", sample_size=7, rng=make_rng(1))
    assert len(fixed) == 7 and len(set(fixed)) == 7 and set(fixed) <= set(sites)
    counts = [len(select_sites(sites, sampling="poisson", q=0.25, rng=make_rng(seed))) for seed in range(200)]
    assert np.mean(counts) == pytest.approx(10.0, rel=0.05)
    with pytest.raises(ValueError, match="needs an rng"):
        select_sites(sites, sampling="poisson", q=0.5)
