"""Secure aggregation end to end: sums, dropouts, aborts, DP, tampered and replayed files."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ecgdig.errors import PrivacyBudgetError, UpdateRejectedError
from ecgdig.federated.coordinator import (
    DpPlan,
    FederationPlan,
    ParticipationError,
    init_federation,
    load_plan,
    round_dir_name,
)
from ecgdig.federated.keys import SiteKey, add_site, create_registry, generate_site_key, load_site_key
from ecgdig.federated.secagg import (
    aggregate_secure_round,
    default_threshold,
    run_secure_round,
)
from ecgdig.federated.secagg_files import Advertisement, read_document, sign_document, write_document
from ecgdig.federated.secagg_masking import fractional_bits
from ecgdig.federated.strategies import DeltaAccumulator, clipped_delta

CLIP = 1.0


def _model(seed: int, rows: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.normal(0, 0.1, (rows, 5)).astype(np.float32),
        "conv.bias": rng.normal(0, 0.1, (7,)).astype(np.float32),
    }


@dataclass
class SecFederation:
    root: Path
    plan: FederationPlan
    coordinator: SiteKey
    sites: dict[str, SiteKey]
    global0: dict[str, np.ndarray]
    rows: int = 4

    def round_dir(self, number: int = 0) -> Path:
        return self.root / round_dir_name(number)

    def local_models(self, seed: int = 1) -> dict[str, dict[str, np.ndarray]]:
        """Local models whose deltas have norms from 0.3 to 3 (some are clipped to S = 1)."""
        out = {}
        for k, site in enumerate(sorted(self.sites)):
            step = _model(seed * 100 + k, self.rows)
            scale = 0.3 + 2.7 * k / max(1, len(self.sites) - 1)
            norm = math.sqrt(sum(float(np.sum(t.astype(np.float64) ** 2)) for t in step.values()))
            out[site] = {name: self.global0[name] + step[name] * np.float32(scale / norm) for name in step}
        return out


def _make(tmp_path: Path, n_sites: int, rows: int = 4, **plan_fields: object) -> SecFederation:
    root, keys = tmp_path / "federation", tmp_path / "keys"
    create_registry(root / "registry.json", "fed-sec")
    sites = {}
    for k in range(n_sites):
        site_id = f"site-{k:02d}"
        paths = generate_site_key(site_id, keys)
        add_site(root / "registry.json", paths.public_key)
        sites[site_id] = load_site_key(paths.private_key)
    coordinator = load_site_key(generate_site_key("coordinator", keys).private_key)
    fields: dict[str, object] = {"federation_id": "fed-sec", "clip_norm": CLIP, "min_sites": 2}
    fields.update(plan_fields)
    result = init_federation(root, _model(0, rows), FederationPlan(**fields), coordinator_key=coordinator)
    return SecFederation(root, result.plan, coordinator, sites, _model(0, rows), rows)


def _num_examples(fed: SecFederation) -> dict[str, int]:
    return {site: 100 + 50 * k for k, site in enumerate(sorted(fed.sites))}


def _plain_weighted_sum(
    fed: SecFederation, models: dict[str, dict[str, np.ndarray]], weights: dict[str, float]
) -> dict[str, np.ndarray]:
    acc = DeltaAccumulator({n: t.shape for n, t in fed.global0.items()})
    for site, weight in sorted(weights.items()):
        delta, _ = clipped_delta(models[site], fed.global0, CLIP)
        acc.add(delta, weight)
    return acc.weighted_sum


def _stages(n: int, dropped: int, stage: str) -> dict[str, str]:
    return {f"site-{k:02d}": stage for k in range(n - dropped, n)}


@pytest.mark.parametrize(
    ("n", "dropout_case"),
    [(3, "none"), (3, "one"), (3, "n-t"), (5, "none"), (5, "one"), (5, "n-t"),
     (16, "none"), (16, "one"), (16, "n-t")],
)  # fmt: skip
def test_unmasked_sum_equals_plain_clipped_sum(tmp_path: Path, n: int, dropout_case: str) -> None:
    # Prepare: FedAvg, no DP; dropouts before masking (their pairwise masks must be recovered) and,
    # for n - t, the others after masking (their self masks must be rebuilt from shares).
    fed = _make(tmp_path, n)
    models, counts = fed.local_models(), _num_examples(fed)
    # With 3 sites the default t = 3 leaves no room for a dropout; t = 2 is the smallest majority.
    t = default_threshold(n) if dropout_case == "none" or n > 3 else 2
    dropped = {"none": 0, "one": 1, "n-t": n - t}[dropout_case]
    dropouts = _stages(n, dropped, "mask")
    if dropout_case == "n-t":  # about half of them drop later, after sending their masked input
        for site in sorted(dropouts)[: (dropped + 1) // 2]:
            dropouts[site] = "unmask"
    # Execute
    result = run_secure_round(
        fed.round_dir(0),
        models,
        tmp_path / "work",
        site_keys=fed.sites,
        coordinator_key=fed.coordinator,
        num_examples=counts,
        dropouts=dropouts,
        threshold=t,
        rng=7,
    )
    # Assert: the survivors are the sites whose masked input arrived, and the released model is the
    # plain weighted mean within the fixed-point bound.
    summary = result.report.secure_aggregation
    assert summary is not None and summary.threshold == t
    survivors = [s for s in sorted(fed.sites) if dropouts.get(s) != "mask"]
    assert list(summary.survivors) == survivors
    assert len(summary.revealed) == n - dropped
    max_n = max(counts.values())
    weights = {s: counts[s] / max_n for s in survivors}
    plain = _plain_weighted_sum(fed, models, weights)
    frac_bits = fractional_bits(n, CLIP)
    total_w = sum(weights.values())
    from ecgdig.federated.validate import validate_model

    _, new_global = validate_model(
        result.report.out_dir / "global.safetensors",
        federation_id="fed-sec",
        coordinator_id="coordinator",
        coordinator_public_key=fed.coordinator.public_key,
    )
    for name in plain:
        secure_mean = new_global[name].astype(np.float64) - fed.global0[name]
        plain_mean = plain[name] / total_w
        # quantization: below one unit 2^-f per input; float32 storage of the model adds ~1e-7
        bound = len(survivors) * 2.0**-frac_bits / total_w + 1e-6
        assert np.max(np.abs(secure_mean - plain_mean)) < bound
        assert np.max(np.abs(plain_mean)) > 1e-3  # the check is not vacuous


def test_decoded_sum_is_exact_within_quantization(tmp_path: Path) -> None:
    # Prepare: 5 sites, the n - t = 1 dropout after masking; compare the weighted sum itself
    fed = _make(tmp_path, 5)
    models, counts = fed.local_models(seed=3), _num_examples(fed)
    # Execute
    result = run_secure_round(
        fed.round_dir(0),
        models,
        tmp_path / "work",
        site_keys=fed.sites,
        coordinator_key=fed.coordinator,
        num_examples=counts,
        dropouts={"site-02": "unmask"},
        rng=1,
    )
    # Assert: report has no per-site norms and records every set of the run
    data = json.loads((result.report.out_dir / "report.json").read_text())
    assert all(a["l2_norm"] is None for a in data["accepted"])
    assert data["secure_aggregation"]["survivors"] == sorted(fed.sites)
    assert data["secure_aggregation"]["revealed"] == [s for s in sorted(fed.sites) if s != "site-02"]
    assert data["secure_aggregation"]["frac_bits"] == fractional_bits(5, CLIP) == 27


def test_below_threshold_aborts_and_writes_nothing(tmp_path: Path) -> None:
    # Prepare: 5 sites, t = 4; two drop after masking, so only 3 can reveal
    fed = _make(tmp_path, 5, dp=DpPlan(noise_multiplier=1.0, n_cap=100.0, max_epsilon=1000.0))
    dropouts = {"site-03": "unmask", "site-04": "unmask"}
    # Execute / Assert
    with pytest.raises(ParticipationError, match="3 valid reveal"):
        run_secure_round(
            fed.round_dir(0),
            fed.local_models(),
            tmp_path / "work",
            site_keys=fed.sites,
            coordinator_key=fed.coordinator,
            num_examples=_num_examples(fed),
            dropouts=dropouts,
        )
    assert not fed.round_dir(1).exists()
    assert not (fed.root / "ledger.jsonl").exists()  # no privacy budget spent


def test_below_threshold_before_masking_aborts_at_the_request(tmp_path: Path) -> None:
    # Prepare: 3 sites, t = 3; one drops before masking
    fed = _make(tmp_path, 3)
    # Execute / Assert: the coordinator never asks anyone to reveal
    with pytest.raises(ParticipationError, match="2 valid masked input"):
        run_secure_round(
            fed.round_dir(0),
            fed.local_models(),
            tmp_path / "work",
            site_keys=fed.sites,
            coordinator_key=fed.coordinator,
            num_examples=_num_examples(fed),
            dropouts={"site-02": "mask"},
        )
    assert not (tmp_path / "work" / "from-coordinator" / "unmask-request.json").exists()
    assert not fed.round_dir(1).exists()


def test_dp_round_spends_budget_once_and_budget_is_checked_before_unmasking(tmp_path: Path) -> None:
    # Prepare: DP with a limit that one round fits and a second does not
    from ecgdig.federated.privacy import epsilon_after

    one, two = (epsilon_after(r, 1.0, 1.0, 1e-5, "full", population=3, with_pld=False).rdp for r in (1, 2))
    fed = _make(tmp_path, 3, dp=DpPlan(noise_multiplier=1.0, n_cap=100.0, max_epsilon=(one + two) / 2))
    kwargs = {
        "site_keys": fed.sites,
        "coordinator_key": fed.coordinator,
        "num_examples": _num_examples(fed),
        "rng": 0,
    }
    # Execute: round 0 is released
    result = run_secure_round(fed.round_dir(0), fed.local_models(), tmp_path / "w0", **kwargs)  # type: ignore[arg-type]
    # Assert: one ledger entry; DP weights are capped at 1 (n_k >= n_cap)
    assert result.report.dp is not None and result.report.dp.ledger_seq == 0
    assert all(a.weight == 1.0 for a in result.report.accepted)
    assert len((fed.root / "ledger.jsonl").read_text().splitlines()) == 1
    # Execute: round 1 exceeds the budget
    with pytest.raises(PrivacyBudgetError):
        run_secure_round(fed.round_dir(1), fed.local_models(2), tmp_path / "w1", **kwargs)  # type: ignore[arg-type]
    # Assert: refused at the unmask request, before any site revealed a share
    assert not (tmp_path / "w1" / "from-coordinator" / "unmask-request.json").exists()
    assert not list((tmp_path / "w1" / "to-coordinator").glob("*.reveal.json"))
    assert len((fed.root / "ledger.jsonl").read_text().splitlines()) == 1
    assert not fed.round_dir(2).exists()


def test_aggregate_rejects_reveals_of_another_run(tmp_path: Path) -> None:
    # Prepare: run round 0 completely, then replay its reveals against a request of a new run
    fed = _make(tmp_path, 3)
    common = {
        "site_keys": fed.sites,
        "coordinator_key": fed.coordinator,
        "num_examples": _num_examples(fed),
    }
    first = run_secure_round(fed.round_dir(0), fed.local_models(), tmp_path / "a", **common)  # type: ignore[arg-type]
    shutil.rmtree(first.report.out_dir)
    second = tmp_path / "b"
    with pytest.raises(ParticipationError):  # stop the second run after its masks: nobody reveals
        run_secure_round(
            fed.round_dir(0),
            fed.local_models(),
            second,
            dropouts=dict.fromkeys(fed.sites, "unmask"),
            **common,  # type: ignore[arg-type]
        )
    # Execute
    with pytest.raises(ParticipationError) as info:
        aggregate_secure_round(
            fed.round_dir(0),
            second / "from-coordinator" / "roster.json",
            second / "from-coordinator" / "unmask-request.json",
            sorted((second / "to-coordinator").glob("*.masked.safetensors")),
            sorted((tmp_path / "a" / "to-coordinator").glob("*.reveal.json")),
            coordinator_key=fed.coordinator,
        )
    # Assert: each replayed reveal is refused with the reason
    reasons = {r.reason for r in info.value.rejected}
    assert any("another secure-aggregation run" in r for r in reasons), reasons
    assert not fed.round_dir(1).exists()


def test_advertisement_tampering_and_replay_are_rejected(tmp_path: Path) -> None:
    # Prepare: three sites advertise; then forge variants of site-00's advertisement
    from ecgdig.federated.secagg import advertise_keys, make_roster

    fed = _make(tmp_path, 3)
    plan = load_plan(fed.root / "plan.json")
    inbox = tmp_path / "inbox"
    for site, key in fed.sites.items():
        advertise_keys(
            fed.round_dir(0) / "global.safetensors",
            tmp_path / site / "state.json",
            inbox / f"{site}.advertise.json",
            key,
            plan=plan,
            num_examples=100,
        )
    original = read_document(inbox / "site-00.advertise.json", Advertisement)
    edited = inbox / "edited.json"
    text = (inbox / "site-00.advertise.json").read_text().replace('"num_examples":100', '"num_examples":999')
    edited.write_text(text)
    replayed = inbox / "replayed.json"
    old = original.__class__(**{**original.__dict__, "round": 5, "signature": None})
    write_document(replayed, sign_document(old, fed.sites["site-00"].private_key))
    other_fed = inbox / "other-federation.json"
    foreign = original.__class__(**{**original.__dict__, "federation_id": "fed-other", "signature": None})
    write_document(other_fed, sign_document(foreign, fed.sites["site-00"].private_key))
    unsigned = inbox / "unsigned.json"
    write_document(unsigned, original.__class__(**{**original.__dict__, "signature": None}))
    outsider = inbox / "outsider.json"
    stranger = SiteKey.generate("site-99")
    forged = original.__class__(**{**original.__dict__, "site_id": "site-99", "signature": None})
    write_document(outsider, sign_document(forged, stranger.private_key))
    # Execute
    result = make_roster(
        fed.round_dir(0),
        [inbox / f"{s}.advertise.json" for s in ("site-01", "site-02")]
        + [edited, replayed, other_fed, unsigned, outsider],
        tmp_path / "roster.json",
        coordinator_key=fed.coordinator,
    )
    # Assert: one clear reason per file; the forged site-00 files never enter the roster
    reasons = {r.file: r.reason for r in result.rejected}
    assert reasons["edited.json"].startswith("bad signature")
    assert (
        reasons["replayed.json"] == "advertise file is for round 5, expected round 0 (stale or replayed file)"
    )
    assert "belongs to federation 'fed-other'" in reasons["other-federation.json"]
    assert reasons["unsigned.json"].startswith("unsigned advertise file")
    assert reasons["outsider.json"] == "unknown site 'site-99': not in the federation's registry"
    assert result.roster.site_ids == ("site-01", "site-02")
    assert result.roster.threshold == 2


def _run_to_masked(fed: SecFederation, work: Path) -> tuple[Path, list[Path], list[Path]]:
    """Steps 1 to 3 for every site; returns the roster, shares and masked input paths."""
    from ecgdig.federated.coordinator import make_update
    from ecgdig.federated.secagg import advertise_keys, make_roster, mask_update, share_keys

    plan = load_plan(fed.root / "plan.json")
    models, counts = fed.local_models(), _num_examples(fed)
    global_path = fed.round_dir(0) / "global.safetensors"
    for site, key in fed.sites.items():
        make_update(global_path, models[site], work / site / "update.safetensors", key, plan=plan,
                    num_examples=counts[site])  # fmt: skip
        advertise_keys(global_path, work / site / "state.json", work / f"{site}.advertise.json", key,
                       plan=plan, num_examples=counts[site])  # fmt: skip
    roster = work / "roster.json"
    make_roster(
        fed.round_dir(0), sorted(work.glob("*.advertise.json")), roster, coordinator_key=fed.coordinator
    )
    for site, key in fed.sites.items():
        share_keys(work / site / "state.json", roster, work / f"{site}.shares.json", key, plan=plan)
    shares = sorted(work.glob("*.shares.json"))
    for site, key in fed.sites.items():
        mask_update(work / site / "state.json", roster, shares, work / site / "update.safetensors",
                    work / f"{site}.masked.safetensors", key, plan=plan, rng=0)  # fmt: skip
    return roster, shares, sorted(work.glob("*.masked.safetensors"))


def test_one_masked_input_is_indistinguishable_from_uniform_bytes(tmp_path: Path) -> None:
    # Prepare: 3 sites, a 10 000-parameter model: the update's encoding alone is far from uniform
    from scipy.stats import chisquare

    from ecgdig.federated.files import read_file_info, read_tensors
    from ecgdig.federated.secagg_files import read_masked_input
    from ecgdig.federated.secagg_masking import encode_fixed_point, flatten_tensors

    fed = _make(tmp_path, 3, rows=2000)
    _, _, masked_paths = _run_to_masked(fed, tmp_path / "work")
    shapes = {n: t.shape for n, t in fed.global0.items()}
    # Execute: byte histogram of one masked input as the coordinator receives it
    masked = read_masked_input(masked_paths[0], shapes)
    masked_bytes = np.frombuffer(flatten_tensors(masked.tensors, np.uint32).tobytes(), dtype=np.uint8)
    plain = read_tensors(read_file_info(tmp_path / "work" / "site-00" / "update.safetensors"))
    encoded = encode_fixed_point(flatten_tensors(plain, np.float64), 28, 1.0, np.random.default_rng(0))
    plain_bytes = np.frombuffer(encoded.tobytes(), dtype=np.uint8)
    # Assert: 40 028 bytes, 256 bins: uniform at the 1e-4 level for the masked input, while the same
    # test rejects the unmasked encoding outright (so it has the power to tell)
    assert masked_bytes.size == 4 * (2000 * 5 + 7)
    assert chisquare(np.bincount(masked_bytes, minlength=256)).pvalue > 1e-4
    assert chisquare(np.bincount(plain_bytes, minlength=256)).pvalue < 1e-12


def test_tampered_masked_input_is_rejected(tmp_path: Path) -> None:
    # Prepare: flip one byte of one masked input's tensor data
    from ecgdig.federated.secagg import request_unmask

    fed = _make(tmp_path, 3)
    roster, shares, masked = _run_to_masked(fed, tmp_path / "work")
    data = bytearray(masked[0].read_bytes())
    data[-1] ^= 0x01
    masked[0].write_bytes(bytes(data))
    # Execute / Assert: with one of three inputs refused, t = 3 is out of reach
    with pytest.raises(ParticipationError) as info:
        request_unmask(fed.round_dir(0), roster, shares, masked, tmp_path / "req.json",
                       coordinator_key=fed.coordinator)  # fmt: skip
    assert [r.reason for r in info.value.rejected] == [
        "payload SHA-256 mismatch: the tensors were altered after signing"
    ]
    assert "2 valid masked input(s), threshold 3" in str(info.value)


def test_site_answers_one_unmask_request_only(tmp_path: Path) -> None:
    # Prepare: a first request names every site a survivor; a second one (a curious coordinator)
    # would call site-02 dropped to get its mask key too
    from ecgdig.errors import ConfigError
    from ecgdig.federated.secagg import request_unmask, reveal_shares

    fed = _make(tmp_path, 5)
    work = tmp_path / "work"
    roster, shares, masked = _run_to_masked(fed, work)
    plan = load_plan(fed.root / "plan.json")
    request_unmask(
        fed.round_dir(0), roster, shares, masked, work / "req1.json", coordinator_key=fed.coordinator
    )
    request_unmask(fed.round_dir(0), roster, shares, [m for m in masked if "site-02" not in m.name],
                   work / "req2.json", coordinator_key=fed.coordinator)  # fmt: skip
    state, key = work / "site-00" / "state.json", fed.sites["site-00"]
    # Execute
    first = reveal_shares(state, roster, work / "req1.json", work / "r1.json", key, plan=plan)
    again = reveal_shares(state, roster, work / "req1.json", work / "r1b.json", key, plan=plan)
    # Assert: the same request may be answered again (same shares), another one never
    assert first == again
    assert set(first.self_mask_shares or {}) == set(fed.sites) and not first.mask_key_shares
    with pytest.raises(ConfigError, match="already answered another unmask request"):
        reveal_shares(state, roster, work / "req2.json", work / "r2.json", key, plan=plan)
    assert not (work / "r2.json").exists()


def test_site_refuses_a_roster_that_swaps_its_keys(tmp_path: Path) -> None:
    # Prepare: the coordinator lists site-00 with another mask key (a man-in-the-middle attempt)
    from dataclasses import replace as dc_replace

    from ecgdig.federated.secagg import advertise_keys, make_roster, share_keys
    from ecgdig.federated.secagg_files import Roster

    fed = _make(tmp_path, 3)
    plan = load_plan(fed.root / "plan.json")
    work = tmp_path / "work"
    for site, key in fed.sites.items():
        advertise_keys(fed.round_dir(0) / "global.safetensors", work / site / "state.json",
                       work / f"{site}.advertise.json", key, plan=plan, num_examples=10)  # fmt: skip
    make_roster(fed.round_dir(0), sorted(work.glob("*.advertise.json")), work / "roster.json",
                coordinator_key=fed.coordinator)  # fmt: skip
    roster = read_document(work / "roster.json", Roster)
    entries = list(roster.sites)
    entries[0] = dc_replace(entries[0], mask_public_key=entries[1].mask_public_key)
    swapped = sign_document(
        dc_replace(roster, sites=tuple(entries), signature=None), fed.coordinator.private_key
    )
    write_document(work / "swapped.json", swapped)
    key = fed.sites["site-00"]
    # Execute / Assert
    with pytest.raises(UpdateRejectedError, match="does not list site 'site-00' with the keys"):
        share_keys(work / "site-00" / "state.json", work / "swapped.json", work / "s.json", key, plan=plan)
    # ... and a roster edited after signing fails its signature
    text = (work / "roster.json").read_text().replace('"threshold":3', '"threshold":2')
    (work / "edited.json").write_text(text)
    with pytest.raises(UpdateRejectedError, match="bad signature: roster file altered"):
        share_keys(work / "site-00" / "state.json", work / "edited.json", work / "s.json", key, plan=plan)


def test_a_wrong_revealed_share_stops_the_round(tmp_path: Path) -> None:
    # Prepare: site-01 (malicious) signs a reveal with one self-mask share changed by 1
    from dataclasses import replace as dc_replace

    from ecgdig.federated.secagg import request_unmask, reveal_shares
    from ecgdig.federated.secagg_files import Reveal

    fed = _make(tmp_path, 3)
    work = tmp_path / "work"
    roster, shares, masked = _run_to_masked(fed, work)
    plan = load_plan(fed.root / "plan.json")
    request = work / "request.json"
    request_unmask(fed.round_dir(0), roster, shares, masked, request, coordinator_key=fed.coordinator)
    for site, key in fed.sites.items():
        reveal_shares(
            work / site / "state.json", roster, request, work / f"{site}.reveal.json", key, plan=plan
        )
    honest = read_document(work / "site-01.reveal.json", Reveal)
    shares_01 = dict(honest.self_mask_shares or {})
    shares_01["site-00"] = format(int(shares_01["site-00"], 16) + 1, "x")
    lie = dc_replace(honest, self_mask_shares=shares_01, signature=None)
    write_document(work / "site-01.reveal.json", sign_document(lie, fed.sites["site-01"].private_key))
    # Execute / Assert: detected through site-00's seed commitment; nothing is written
    with pytest.raises(
        UpdateRejectedError, match=r"self-mask seed of site 'site-00' .* does not match its commitment"
    ):
        aggregate_secure_round(fed.round_dir(0), roster, request, masked, sorted(work.glob("*.reveal.json")),
                               coordinator_key=fed.coordinator)  # fmt: skip
    assert not fed.round_dir(1).exists()
