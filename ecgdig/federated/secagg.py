"""Secure aggregation over signed files, with dropout recovery (Bonawitz et al. 2017).

The coordinator learns the weighted sum of the clipped updates of the surviving sites, and only
once at least ``t`` sites survive; it never sees one site's update. Every step is a function that
reads and writes signed files (:mod:`ecgdig.federated.secagg_files`), so it runs from shell
pipelines and across air gaps:

==  ===========  ==========================  ====================================================
    who          function                    reads -> writes
==  ===========  ==========================  ====================================================
1   site         :func:`advertise_keys`      global model -> ``advertise`` (+ private state)
1'  coordinator  :func:`make_roster`         advertisements -> ``roster``
2   site         :func:`share_keys`          roster -> ``shares`` (Shamir shares, AES-GCM)
3   site         :func:`mask_update`         roster, shares, own update -> ``masked-input``
3'  coordinator  :func:`request_unmask`      shares, masked inputs -> ``unmask-request``
4   site         :func:`reveal_shares`       unmask request -> ``reveal``
4'  coordinator  :func:`aggregate_secure_round`  masked inputs, reveals -> next round folder
==  ===========  ==========================  ====================================================

Departures from the paper, all in the direction of fewer trust assumptions or simpler files:

- Round 0 of the paper (AdvertiseKeys) carries the example count ``n_k``, as plain update headers do,
  so the roster fixes every weight (at most 1: ``min(n_k / n_cap, 1)`` under DP, ``n_k / max n``
  otherwise) and the fixed-point range before anything is masked.
- The site keeps its own Shamir share; the coordinator relays whole ``shares`` files (each entry
  encrypted to its recipient) instead of per-recipient bundles.
- Each masked input carries a commitment to the self-mask seed, and the coordinator checks every
  rebuilt secret (seed against commitment, mask key against its advertised public key), so a wrong
  share is detected rather than silently corrupting the model.
- A site reveals shares at most once per run and refuses a second, different unmask request: with
  ``t > n / 2`` no coordinator can collect both the self-mask shares and the mask-key shares of one
  site from honest sites. The paper's consistency-check round (its malicious-security variant) is
  not implemented; see ``docs/threat-model.md``.

After unmasking, the sum goes through exactly the same release as plain aggregation
(:func:`ecgdig.federated.coordinator.release_round`): DP noise before the fixed denominator, the
server optimizer, the ledger entry and the next round folder. The privacy budget is checked before
any mask is removed; below the threshold the round aborts, writes nothing and spends nothing.

References
----------
.. [1] K. Bonawitz, V. Ivanov, B. Kreuter, A. Marcedone, H. B. McMahan, S. Patel, D. Ramage,
   A. Segal, K. Seth, "Practical secure aggregation for privacy-preserving machine learning",
   CCS 2017, Section 4 and Figure 4.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from numpy.typing import NDArray

from ecgdig.errors import ConfigError, UpdateRejectedError
from ecgdig.federated.coordinator import (
    GLOBAL_FILE,
    PLAN_FILE,
    AcceptedUpdate,
    FederationPlan,
    OpenRound,
    ParticipationError,
    RejectedUpdate,
    RoundReport,
    SecureAggregationSummary,
    check_release_budget,
    load_plan,
    make_update,
    open_round,
    release_round,
)
from ecgdig.federated.files import payload_sha256
from ecgdig.federated.keys import Registry, SiteKey
from ecgdig.federated.privacy import make_rng
from ecgdig.federated.secagg_files import (
    Advertisement,
    EncryptedShare,
    MaskedInput,
    MaskedInputHeader,
    Reveal,
    Roster,
    RosterEntry,
    SecAggDocument,
    SharesMessage,
    UnmaskRequest,
    document_sha256,
    masked_input_bytes,
    read_document,
    read_masked_input,
    sign_document,
    verify_document,
    write_document,
)
from ecgdig.federated.secagg_masking import (
    decode_fixed_point,
    derive_key,
    encode_fixed_point,
    flatten_tensors,
    fractional_bits,
    mask_stream,
    pairwise_mask_key,
    self_mask_key,
    unflatten_tensors,
)
from ecgdig.federated.secagg_shamir import PRIME, SHARE_BYTES, reconstruct_secret, split_secret
from ecgdig.federated.strategies import capped_weight
from ecgdig.federated.validate import check_update_header, validate_model, validate_update
from ecgdig.io.atomic import atomic_path, atomic_write_bytes
from ecgdig.io.strict_json import canonical_json, loads_strict

__all__ = [
    "DropoutStage",
    "RosterResult",
    "SecureRoundResult",
    "SiteTraffic",
    "UnmaskRequestResult",
    "advertise_keys",
    "aggregate_secure_round",
    "default_threshold",
    "make_roster",
    "mask_update",
    "request_unmask",
    "reveal_shares",
    "run_secure_round",
    "share_keys",
]

STATE_FORMAT = "ecgdig-secagg-site-state"
_STATE_VERSION = 1
_SHARE_KEY_INFO = b"ecgdig secagg v1 share encryption\x00"
_COMMITMENT_PREFIX = b"ecgdig secagg v1 self-mask commitment\x00"
DropoutStage: TypeAlias = Literal["advertise", "share", "mask", "unmask"]
"""The step a simulated site drops out before (it performs every earlier step)."""


def default_threshold(n_sites: int) -> int:
    """Return the default Shamir threshold ``t = floor(2n/3) + 1``, never below 2.

    Parameters
    ----------
    n_sites : int
        Sites in the roster.

    Returns
    -------
    int
        ``t``.

    Examples
    --------
    >>> [default_threshold(n) for n in (2, 3, 5, 16, 64)]
    [2, 3, 4, 11, 43]
    """
    return max(2, (2 * n_sites) // 3 + 1)


def _threshold_error(threshold: int, n_sites: int) -> str | None:
    # A majority threshold is what makes "reveal once" protective: two disjoint groups of honest
    # sites cannot both reach t, so no coordinator gets both secrets of one site from them.
    low = max(2, n_sites // 2 + 1)
    if not low <= threshold <= n_sites:
        return f"threshold {threshold} must be in [{low}, {n_sites}] for {n_sites} sites"
    return None


def _context(federation_id: str, round_number: int, base_sha256: str, roster_sha256: str) -> bytes:
    """Bytes naming one protocol run; every derived key and commitment includes them."""
    binding = {
        "base_sha256": base_sha256,
        "federation_id": federation_id,
        "round": round_number,
        "roster_sha256": roster_sha256,
    }
    return canonical_json(binding).encode("utf-8")


def _roster_context(roster: Roster, roster_sha256: str) -> bytes:
    return _context(roster.federation_id, roster.round, roster.base_sha256, roster_sha256)


def _commitment(seed: bytes, context: bytes) -> str:
    return hashlib.sha256(_COMMITMENT_PREFIX + context + seed).hexdigest()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _x25519_private(raw_b64: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(base64.b64decode(raw_b64))


def _x25519_public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _short(sha: str) -> str:
    return f"{sha[:12]}..."


def _required_survivors(roster: Roster, plan: FederationPlan) -> int:
    return max(roster.threshold, plan.min_sites)


def _roster_weight(num_examples: int, counts: Sequence[int], plan: FederationPlan) -> float:
    """Weight at most 1, so one site moves the sum by at most ``S`` and the encoding cannot overflow."""
    if plan.dp is not None:
        return capped_weight(num_examples, plan.dp.n_cap)
    return num_examples / max(counts)


def _check_binding(
    document: SecAggDocument,
    path: Path,
    *,
    federation_id: str,
    round_number: int,
    base_sha256: str,
    roster_sha256: str | None = None,
) -> None:
    kind = document.KIND
    if document.federation_id != federation_id:
        raise UpdateRejectedError(
            f"{kind} file belongs to federation {document.federation_id!r}, expected {federation_id!r}", path
        )
    if document.round != round_number:
        raise UpdateRejectedError(
            f"{kind} file is for round {document.round}, expected round {round_number} "
            "(stale or replayed file)",
            path,
        )
    if document.base_sha256 != base_sha256:
        raise UpdateRejectedError(
            f"{kind} file was made for base model {_short(document.base_sha256)}, expected the current "
            f"global model {_short(base_sha256)} (stale or replayed file)",
            path,
        )
    theirs = getattr(document, "roster_sha256", None)
    if roster_sha256 is not None and theirs != roster_sha256:
        raise UpdateRejectedError(
            f"{kind} file belongs to another secure-aggregation run (roster {_short(str(theirs))}, "
            f"expected {_short(roster_sha256)}): stale or replayed file",
            path,
        )


# --------------------------------------------------------------------------------------------------
# The site's private state (never leaves the site; mode 0600)


@dataclass(frozen=True)
class _SiteState:
    """What a site must remember between steps: its X25519 private keys, seed and received shares."""

    federation_id: str
    round: int
    base_sha256: str
    site_id: str
    num_examples: int
    cipher_private_key: str
    mask_private_key: str
    roster_sha256: str | None = None
    self_mask_seed: str | None = None
    received_shares: dict[str, list[str]] = field(default_factory=dict)
    peers: list[str] | None = None
    revealed_request_sha256: str | None = None

    def to_json(self) -> str:
        data = {"format": STATE_FORMAT, "version": _STATE_VERSION, **asdict(self)}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _write_state(path: Path, state: _SiteState) -> None:
    with atomic_path(path, mode=0o600) as tmp:
        tmp.write_text(state.to_json(), encoding="utf-8")


def _load_state(path: Path, site_key: SiteKey, plan: FederationPlan) -> _SiteState:
    if not path.is_file():
        raise ConfigError("secure-aggregation state not found (run secagg-advertise first)", path)
    if os.name == "posix" and path.stat().st_mode & 0o077:
        raise ConfigError("secure-aggregation state is readable by other users; run `chmod 600` on it", path)
    try:
        data = loads_strict(path.read_text(encoding="utf-8"))
        if data.pop("format") != STATE_FORMAT or data.pop("version") != _STATE_VERSION:
            raise ValueError(f"not an {STATE_FORMAT} version {_STATE_VERSION} file")
        state = _SiteState(**data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"invalid secure-aggregation state ({exc})", path) from None
    if state.site_id != site_key.site_id or state.federation_id != plan.federation_id:
        raise ConfigError(
            f"state belongs to site {state.site_id!r} of federation {state.federation_id!r}, not to "
            f"{site_key.site_id!r} of {plan.federation_id!r}",
            path,
        )
    return state


# --------------------------------------------------------------------------------------------------
# Step 1: advertise keys (site) and the roster (coordinator)


def advertise_keys(
    global_path: str | Path,
    state_path: str | Path,
    out_path: str | Path,
    site_key: SiteKey,
    *,
    plan: FederationPlan,
    num_examples: int,
) -> Advertisement:
    """Step 1 (site): create two X25519 key pairs and publish their public halves, signed.

    Parameters
    ----------
    global_path : str or Path
        The round's ``global.safetensors`` (verified against the plan's coordinator key); it fixes
        the round and base model the run is bound to.
    state_path : str or Path
        Private state file to create (mode 0600; refused if it exists: one state per run).
    out_path : str or Path
        The ``advertise`` file to send to the coordinator.
    site_key : SiteKey
        The site's Ed25519 signing key.
    plan : FederationPlan
        The federation's plan.
    num_examples : int
        ``n_k`` >= 1, local training examples (sets the weight, as in a plain update).

    Returns
    -------
    Advertisement
        The signed advertisement.

    Raises
    ------
    ConfigError
        ``num_examples`` < 1 or the state file exists.
    UpdateRejectedError
        The global model fails verification.
    """
    if not isinstance(num_examples, int) or isinstance(num_examples, bool) or num_examples < 1:
        raise ConfigError(f"num_examples must be an integer >= 1, got {num_examples!r}")
    state_file = Path(state_path)
    if state_file.exists():
        raise ConfigError("state file exists; each run needs a fresh one (refusing to overwrite)", state_file)
    header, _ = validate_model(
        global_path,
        federation_id=plan.federation_id,
        coordinator_id=plan.coordinator_id,
        coordinator_public_key=plan.coordinator_key_bytes,
    )
    cipher_key, mask_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    state = _SiteState(
        federation_id=plan.federation_id,
        round=header.round,
        base_sha256=header.payload_sha256,
        site_id=site_key.site_id,
        num_examples=num_examples,
        cipher_private_key=_b64(_private_bytes(cipher_key)),
        mask_private_key=_b64(_private_bytes(mask_key)),
    )
    advertisement = sign_document(
        Advertisement(
            federation_id=plan.federation_id,
            round=header.round,
            base_sha256=header.payload_sha256,
            site_id=site_key.site_id,
            signature=None,
            num_examples=num_examples,
            cipher_public_key=_b64(_x25519_public_bytes(cipher_key)),
            mask_public_key=_b64(_x25519_public_bytes(mask_key)),
        ),
        site_key.private_key,
    )
    _write_state(state_file, state)
    write_document(out_path, advertisement)
    return advertisement


@dataclass(frozen=True)
class RosterResult:
    """What :func:`make_roster` wrote.

    Parameters
    ----------
    roster : Roster
        The signed roster.
    path : Path
        Its file.
    rejected : tuple of RejectedUpdate
        Advertisements left out, with reasons.
    """

    roster: Roster
    path: Path
    rejected: tuple[RejectedUpdate, ...]


def _dedupe_by_signer(
    documents: Sequence[tuple[Path, SecAggDocument]], round_number: int
) -> tuple[dict[str, tuple[Path, Any]], list[RejectedUpdate]]:
    """Keep one file per signer; a site that sent two for the run has both refused."""
    by_site: dict[str, list[tuple[Path, SecAggDocument]]] = {}
    for path, document in documents:
        by_site.setdefault(document.site_id, []).append((path, document))
    kept: dict[str, tuple[Path, Any]] = {}
    rejected: list[RejectedUpdate] = []
    for site_id, items in sorted(by_site.items()):
        if len(items) > 1:
            kind = items[0][1].KIND
            rejected.extend(
                RejectedUpdate(p.name, f"site {site_id!r} sent {len(items)} {kind} files for round "
                f"{round_number}; all rejected")
                for p, _ in items
            )  # fmt: skip
        else:
            kept[site_id] = items[0]
    return kept, rejected


def _unique_paths(paths: Sequence[str | Path]) -> tuple[list[Path], list[RejectedUpdate]]:
    seen: set[Path] = set()
    unique: list[Path] = []
    rejected: list[RejectedUpdate] = []
    for raw in paths:
        path = Path(raw)
        if path.resolve() in seen:
            rejected.append(RejectedUpdate(path.name, "the same file was listed twice"))
            continue
        seen.add(path.resolve())
        unique.append(path)
    return unique, rejected


def make_roster(
    round_dir: str | Path,
    advertise_paths: Sequence[str | Path],
    out_path: str | Path,
    *,
    coordinator_key: SiteKey,
    federation_dir: str | Path | None = None,
    threshold: int | None = None,
) -> RosterResult:
    """Step 1' (coordinator): check the advertisements and publish the roster of the run.

    Parameters
    ----------
    round_dir : str or Path
        The round folder being aggregated.
    advertise_paths : sequence of str or Path
        The ``advertise`` files received.
    out_path : str or Path
        The ``roster`` file to send to every site in it.
    coordinator_key : SiteKey
        Signs the roster; must match the plan.
    federation_dir : str or Path, optional
        Folder of ``plan.json`` and ``registry.json``; default ``round_dir``'s parent.
    threshold : int, optional
        ``t``; default :func:`default_threshold` of the number of valid advertisements. Must be a
        majority and at least 2.

    Returns
    -------
    RosterResult
        The roster and the refused advertisements.

    Raises
    ------
    ParticipationError
        Fewer valid advertisements than the plan's ``min_sites`` or 2 (nothing written).
    ConfigError
        Inconsistent federation files or an invalid threshold.
    """
    opened = open_round(round_dir, coordinator_key=coordinator_key, federation_dir=federation_dir)
    plan, info = opened.plan, opened.info
    unique, rejected = _unique_paths(advertise_paths)
    valid: list[tuple[Path, SecAggDocument]] = []
    for path in unique:
        try:
            advertisement = read_document(path, Advertisement)
            public_key = opened.registry.sites.get(advertisement.site_id)
            if public_key is None:
                raise UpdateRejectedError(
                    f"unknown site {advertisement.site_id!r}: not in the federation's registry", path
                )
            verify_document(advertisement, public_key, path, f"site {advertisement.site_id!r}")
            _check_binding(
                advertisement,
                path,
                federation_id=plan.federation_id,
                round_number=info.round,
                base_sha256=info.global_sha256,
            )
            if advertisement.site_id not in info.selected_sites:
                raise UpdateRejectedError(
                    f"site {advertisement.site_id!r} was not selected for round {info.round}", path
                )
            keys = {advertisement.cipher_public_key, advertisement.mask_public_key}
            if len(keys) != 2:
                raise UpdateRejectedError("the two advertised X25519 keys must differ", path)
            valid.append((path, advertisement))
        except UpdateRejectedError as exc:
            rejected.append(RejectedUpdate(path.name, exc.reason))
    kept, duplicates = _dedupe_by_signer(valid, info.round)
    rejected.extend(duplicates)
    n_sites = len(kept)
    needed = max(2, plan.min_sites)
    if n_sites < needed:
        raise ParticipationError(
            f"secure aggregation aborted in round {info.round}: {n_sites} valid advertisement(s), at least "
            f"{needed} needed; nothing written",
            opened.round_path,
            rejected=rejected,
        )
    t = default_threshold(n_sites) if threshold is None else threshold
    problem = _threshold_error(t, n_sites)
    if problem:
        raise ConfigError(problem)
    counts = [kept[s][1].num_examples for s in sorted(kept)]
    entries = tuple(
        RosterEntry(
            site_id=site_id,
            share_x=position,
            signing_key=_b64(opened.registry.sites[site_id]),
            cipher_public_key=advertisement.cipher_public_key,
            mask_public_key=advertisement.mask_public_key,
            num_examples=advertisement.num_examples,
            weight=_roster_weight(advertisement.num_examples, counts, plan),
            advertise_sha256=document_sha256(advertisement),
        )
        for position, (site_id, (_, advertisement)) in enumerate(sorted(kept.items()), start=1)
    )
    roster = sign_document(
        Roster(
            federation_id=plan.federation_id,
            round=info.round,
            base_sha256=info.global_sha256,
            site_id=plan.coordinator_id,
            signature=None,
            threshold=t,
            clip_norm=float(plan.clip_norm),
            frac_bits=fractional_bits(n_sites, plan.clip_norm),
            session=secrets.token_hex(32),
            sites=entries,
        ),
        coordinator_key.private_key,
    )
    write_document(out_path, roster)
    rejected.sort(key=lambda r: (r.file, r.reason))
    return RosterResult(roster=roster, path=Path(out_path), rejected=tuple(rejected))


def _read_roster(path: str | Path, plan: FederationPlan) -> tuple[Roster, str]:
    """Read a roster and verify the coordinator's signature and its internal consistency."""
    path = Path(path)
    roster = read_document(path, Roster)
    if roster.site_id != plan.coordinator_id:
        raise UpdateRejectedError(f"roster is signed as {roster.site_id!r}, not by the coordinator", path)
    verify_document(roster, plan.coordinator_key_bytes, path, "the coordinator")
    if roster.federation_id != plan.federation_id:
        raise UpdateRejectedError(
            f"roster file belongs to federation {roster.federation_id!r}, expected {plan.federation_id!r}",
            path,
        )
    n_sites = len(roster.sites)
    problem = _threshold_error(roster.threshold, n_sites)
    if problem or roster.clip_norm != plan.clip_norm:
        raise UpdateRejectedError(
            problem or f"roster clip norm {roster.clip_norm} differs from the plan's", path
        )
    if roster.frac_bits != fractional_bits(n_sites, plan.clip_norm):
        raise UpdateRejectedError(
            f"roster uses {roster.frac_bits} fractional bits, {n_sites} sites need "
            f"{fractional_bits(n_sites, plan.clip_norm)} to rule out overflow",
            path,
        )
    counts = [e.num_examples for e in roster.sites]
    if any(e.weight != _roster_weight(e.num_examples, counts, plan) for e in roster.sites):
        raise UpdateRejectedError("roster weights do not follow the plan's weighting rule", path)
    return roster, document_sha256(roster)


# --------------------------------------------------------------------------------------------------
# Step 2: share keys (site)


def _share_cipher(
    own_cipher_key: X25519PrivateKey, peer_public_key: str, context: bytes, sender: str, recipient: str
) -> tuple[AESGCM, bytes]:
    """AES-GCM under HKDF(X25519) for one direction of one pair; the AAD names both ends."""
    shared = own_cipher_key.exchange(X25519PublicKey.from_public_bytes(base64.b64decode(peer_public_key)))
    label = f"{sender}\x00{recipient}".encode()
    key = derive_key(shared, _SHARE_KEY_INFO + context + b"\x00" + label)
    return AESGCM(key), context + b"\x00" + label


def share_keys(
    state_path: str | Path,
    roster_path: str | Path,
    out_path: str | Path,
    site_key: SiteKey,
    *,
    plan: FederationPlan,
) -> SharesMessage:
    """Step 2 (site): Shamir-share the self-mask seed and the mask private key, encrypted per recipient.

    Parameters
    ----------
    state_path : str or Path
        The site's private state from :func:`advertise_keys` (updated: seed and own share).
    roster_path : str or Path
        The coordinator's roster (verified: signature, this site's own keys and weight, threshold,
        fixed-point bits).
    out_path : str or Path
        The ``shares`` file to send to the coordinator, which forwards it to every roster site.
    site_key : SiteKey
        The site's signing key.
    plan : FederationPlan
        The federation's plan (coordinator key, clip norm, weighting).

    Returns
    -------
    SharesMessage
        The signed message.

    Raises
    ------
    UpdateRejectedError
        The roster fails verification or misstates this site's keys.
    ConfigError
        Missing state, or shares were already made in this run.
    """
    state_file = Path(state_path)
    state = _load_state(state_file, site_key, plan)
    roster, roster_sha = _read_roster(roster_path, plan)
    _check_binding(
        roster,
        Path(roster_path),
        federation_id=state.federation_id,
        round_number=state.round,
        base_sha256=state.base_sha256,
    )
    if state.roster_sha256 is not None:
        raise ConfigError("this site already made its shares for a run; start a new state", state_file)
    own = roster.entry(site_key.site_id)
    cipher_key = _x25519_private(state.cipher_private_key)
    mask_key = _x25519_private(state.mask_private_key)
    if (
        own is None
        or own.cipher_public_key != _b64(_x25519_public_bytes(cipher_key))
        or own.mask_public_key != _b64(_x25519_public_bytes(mask_key))
        or own.num_examples != state.num_examples
    ):
        raise UpdateRejectedError(
            f"roster does not list site {site_key.site_id!r} with the keys and example count it advertised",
            roster_path,
        )
    seed = secrets.token_bytes(32)
    xs = [entry.share_x for entry in roster.sites]
    seed_shares = split_secret(int.from_bytes(seed, "big"), xs, roster.threshold)
    key_shares = split_secret(int.from_bytes(_private_bytes(mask_key), "big"), xs, roster.threshold)
    context = _roster_context(roster, roster_sha)
    ciphertexts: dict[str, EncryptedShare] = {}
    for entry in roster.sites:
        if entry.site_id == site_key.site_id:
            continue
        plaintext = seed_shares[entry.share_x].to_bytes(SHARE_BYTES, "big") + key_shares[
            entry.share_x
        ].to_bytes(SHARE_BYTES, "big")
        cipher, aad = _share_cipher(
            cipher_key, entry.cipher_public_key, context, site_key.site_id, entry.site_id
        )
        nonce = os.urandom(12)
        ciphertexts[entry.site_id] = EncryptedShare(
            nonce=_b64(nonce), ciphertext=_b64(cipher.encrypt(nonce, plaintext, aad))
        )
    message = sign_document(
        SharesMessage(
            federation_id=roster.federation_id,
            round=roster.round,
            base_sha256=roster.base_sha256,
            site_id=site_key.site_id,
            signature=None,
            roster_sha256=roster_sha,
            shares=ciphertexts,
        ),
        site_key.private_key,
    )
    own_shares = [format(seed_shares[own.share_x], "x"), format(key_shares[own.share_x], "x")]
    _write_state(
        state_file,
        replace(
            state,
            roster_sha256=roster_sha,
            self_mask_seed=_b64(seed),
            received_shares={site_key.site_id: own_shares},
        ),
    )
    write_document(out_path, message)
    return message


def _verify_from_roster(document: SecAggDocument, path: Path, roster: Roster, roster_sha: str) -> RosterEntry:
    """Verify a site's file against the roster: a roster site, its signature, the run's binding."""
    entry = roster.entry(document.site_id)
    if entry is None:
        raise UpdateRejectedError(f"site {document.site_id!r} is not in the roster of this run", path)
    verify_document(document, base64.b64decode(entry.signing_key), path, f"site {document.site_id!r}")
    _check_binding(
        document,
        path,
        federation_id=roster.federation_id,
        round_number=roster.round,
        base_sha256=roster.base_sha256,
        roster_sha256=roster_sha,
    )
    return entry


def _check_shares_message(message: SharesMessage, path: Path, roster: Roster) -> None:
    expected = set(roster.site_ids) - {message.site_id}
    if set(message.shares or {}) != expected:
        raise UpdateRejectedError(
            "shares file does not hold exactly one share for every other site of the roster", path
        )


def _read_shares(
    share_paths: Sequence[str | Path], roster: Roster, roster_sha: str
) -> tuple[dict[str, tuple[Path, SharesMessage]], list[RejectedUpdate]]:
    unique, rejected = _unique_paths(share_paths)
    valid: list[tuple[Path, SecAggDocument]] = []
    for path in unique:
        try:
            message = read_document(path, SharesMessage)
            _verify_from_roster(message, path, roster, roster_sha)
            _check_shares_message(message, path, roster)
            valid.append((path, message))
        except UpdateRejectedError as exc:
            rejected.append(RejectedUpdate(path.name, exc.reason))
    kept, duplicates = _dedupe_by_signer(valid, roster.round)
    return kept, rejected + duplicates


# --------------------------------------------------------------------------------------------------
# Step 3: masked input (site)


def _pairwise_sign(own: str, peer: str) -> int:
    """+1 if ``own`` adds the pair's mask, -1 if it subtracts it (the smaller id adds)."""
    return 1 if own < peer else -1


def mask_update(
    state_path: str | Path,
    roster_path: str | Path,
    share_paths: Sequence[str | Path],
    update_path: str | Path,
    out_path: str | Path,
    site_key: SiteKey,
    *,
    plan: FederationPlan,
    rng: int | np.random.Generator | None = None,
) -> MaskedInputHeader:
    """Step 3 (site): encode the weighted, clipped update in fixed point and add all masks.

    ``y = encode(w_k delta_k) + PRG(b_k) + sum_{v in U2, v > k} PRG(s_kv) - sum_{v in U2, v < k} PRG(s_kv)
    (mod 2^32)``, where ``U2`` are the sites whose shares arrived (this site included).

    Parameters
    ----------
    state_path : str or Path
        The site's private state (after :func:`share_keys`; updated with the received shares).
    roster_path : str or Path
        The roster of the run.
    share_paths : sequence of str or Path
        The ``shares`` files the coordinator forwarded (this site's own file may be among them).
    update_path : str or Path
        The site's own signed update (:func:`ecgdig.federated.coordinator.make_update`); it never
        leaves the site.
    out_path : str or Path
        The ``masked-input`` file to send.
    site_key : SiteKey
        The site's signing key.
    plan : FederationPlan
        The federation's plan.
    rng : int, Generator or None, optional
        Source of the stochastic-rounding offsets (not of masks, which come from AES-CTR); None
        seeds from the OS.

    Returns
    -------
    MaskedInputHeader
        The signed header written.

    Raises
    ------
    UpdateRejectedError
        A forwarded shares file or the update fails verification, or a share cannot be decrypted.
    ParticipationError
        Fewer sites shared than the run needs (nothing written).
    ConfigError
        Missing state, shares not made yet, or a masked input was already sent in this run (masking a
        second update with the same masks would reveal the difference of the two).
    """
    state_file = Path(state_path)
    state = _load_state(state_file, site_key, plan)
    roster, roster_sha = _read_roster(roster_path, plan)
    if state.roster_sha256 != roster_sha or state.self_mask_seed is None:
        raise UpdateRejectedError(
            "this site made no shares for this roster (run secagg-share first)", roster_path
        )
    if state.peers is not None:
        raise ConfigError("this site already sent a masked input in this run", state_file)
    context = _roster_context(roster, roster_sha)
    messages, rejected = _read_shares(share_paths, roster, roster_sha)
    if rejected:
        raise UpdateRejectedError(rejected[0].reason, rejected[0].file)
    cipher_key = _x25519_private(state.cipher_private_key)
    received = dict(state.received_shares)
    for sender, (path, message) in sorted(messages.items()):
        if sender == site_key.site_id:
            continue
        entry = roster.entry(sender)
        item = (message.shares or {})[site_key.site_id]
        cipher, aad = _share_cipher(cipher_key, entry.cipher_public_key, context, sender, site_key.site_id)  # type: ignore[union-attr]
        try:
            plaintext = cipher.decrypt(base64.b64decode(item.nonce), base64.b64decode(item.ciphertext), aad)
        except InvalidTag:
            raise UpdateRejectedError(
                f"the share addressed to site {site_key.site_id!r} does not decrypt (AES-GCM tag mismatch)",
                path,
            ) from None
        if len(plaintext) != 2 * SHARE_BYTES:
            raise UpdateRejectedError("a decrypted share has the wrong length", path)
        received[sender] = [
            format(int.from_bytes(plaintext[:SHARE_BYTES], "big"), "x"),
            format(int.from_bytes(plaintext[SHARE_BYTES:], "big"), "x"),
        ]
    peers = sorted(set(messages) | {site_key.site_id})
    needed = _required_survivors(roster, plan)
    if len(peers) < needed:
        raise ParticipationError(
            f"secure aggregation aborted: shares from {len(peers)} site(s), at least {needed} needed; "
            "nothing written"
        )

    # The site's own update, checked as the coordinator would check a plain one.
    own_registry = Registry(federation_id=plan.federation_id, sites={site_key.site_id: site_key.public_key})
    info = check_update_header(
        update_path,
        registry=own_registry,
        expected_round=roster.round,
        expected_base_sha256=roster.base_sha256,
        clip_norm=plan.clip_norm,
    )
    shapes = {name: spec.shape for name, spec in info.tensors.items()}
    update = validate_update(
        update_path,
        registry=own_registry,
        expected_round=roster.round,
        expected_base_sha256=roster.base_sha256,
        reference_shapes=shapes,
        clip_norm=plan.clip_norm,
    )
    own = roster.entry(site_key.site_id)
    if own is None or update.header.num_examples != own.num_examples:
        raise UpdateRejectedError(
            f"update declares {update.header.num_examples} examples, "
            f"the site advertised {state.num_examples}",
            update_path,
        )
    flat = flatten_tensors(update.tensors, np.float64) * own.weight
    masked = encode_fixed_point(flat, roster.frac_bits, plan.clip_norm, make_rng(rng))
    count = masked.size
    seed = base64.b64decode(state.self_mask_seed)
    masked += mask_stream(self_mask_key(seed, context), count)
    mask_key = _x25519_private(state.mask_private_key)
    for peer in peers:
        if peer == site_key.site_id:
            continue
        peer_entry = roster.entry(peer)
        assert peer_entry is not None, f"peer {peer!r} is not on the roster it was drawn from"
        pair_mask = mask_stream(
            pairwise_mask_key(
                mask_key, base64.b64decode(peer_entry.mask_public_key), context, (site_key.site_id, peer)
            ),
            count,
        )
        if _pairwise_sign(site_key.site_id, peer) > 0:
            masked += pair_mask
        else:
            masked -= pair_mask
    tensors = unflatten_tensors(masked, shapes)
    header = sign_document(
        MaskedInputHeader(
            federation_id=roster.federation_id,
            round=roster.round,
            base_sha256=roster.base_sha256,
            site_id=site_key.site_id,
            signature=None,
            roster_sha256=roster_sha,
            peers=tuple(peers),
            self_mask_commitment=_commitment(seed, context),
            payload_sha256=payload_sha256(tensors),
        ),
        site_key.private_key,
    )
    # Remember first that this run's masks are spent, then send: never two inputs under one mask.
    _write_state(state_file, replace(state, received_shares=received, peers=peers))
    atomic_write_bytes(out_path, masked_input_bytes(tensors, header))  # type: ignore[arg-type]
    return header


# --------------------------------------------------------------------------------------------------
# Step 3': the unmask request (coordinator)


@dataclass(frozen=True)
class UnmaskRequestResult:
    """What :func:`request_unmask` wrote.

    Parameters
    ----------
    request : UnmaskRequest
        The signed request.
    path : Path
        Its file.
    rejected : tuple of RejectedUpdate
        Shares files and masked inputs left out, with reasons.
    """

    request: UnmaskRequest
    path: Path
    rejected: tuple[RejectedUpdate, ...]


def _read_own_document(path: str | Path, kind: type[Any], plan: FederationPlan) -> Any:
    """Read a file the coordinator signed itself (roster, request) and verify its signature."""
    path = Path(path)
    document = read_document(path, kind)
    if document.site_id != plan.coordinator_id:
        raise UpdateRejectedError(
            f"{kind.KIND} file is signed as {document.site_id!r}, not by the coordinator", path
        )
    verify_document(document, plan.coordinator_key_bytes, path, "the coordinator")
    return document


def _read_masked_inputs(
    masked_paths: Sequence[str | Path],
    *,
    opened: OpenRound,
    roster: Roster,
    roster_sha: str,
    shared: Sequence[str],
) -> tuple[dict[str, MaskedInput], list[RejectedUpdate]]:
    unique, rejected = _unique_paths(masked_paths)
    valid: list[tuple[Path, SecAggDocument]] = []
    loaded: dict[Path, MaskedInput] = {}
    for path in unique:
        try:
            masked = read_masked_input(path, opened.shapes)
            _verify_from_roster(masked.header, path, roster, roster_sha)
            if masked.header.site_id not in shared:
                raise UpdateRejectedError(f"site {masked.header.site_id!r} sent no shares in this run", path)
            if list(masked.header.peers) != list(shared):
                raise UpdateRejectedError(
                    "masked with another set of peers than the sites whose shares were forwarded", path
                )
            valid.append((path, masked.header))
            loaded[path] = masked
        except UpdateRejectedError as exc:
            rejected.append(RejectedUpdate(path.name, exc.reason))
    kept, duplicates = _dedupe_by_signer(valid, roster.round)
    return {site: loaded[path] for site, (path, _) in kept.items()}, rejected + duplicates


def _abort(message: str, opened: OpenRound, rejected: Sequence[RejectedUpdate]) -> ParticipationError:
    reasons = "; ".join(f"{r.file}: {r.reason}" for r in rejected[:3])
    return ParticipationError(
        f"secure aggregation aborted in round {opened.info.round}: {message}; nothing released, no "
        "privacy budget spent" + (f"; rejected: {reasons}" if reasons else ""),
        opened.round_path,
        rejected=rejected,
    )


def request_unmask(
    round_dir: str | Path,
    roster_path: str | Path,
    share_paths: Sequence[str | Path],
    masked_paths: Sequence[str | Path],
    out_path: str | Path,
    *,
    coordinator_key: SiteKey,
    federation_dir: str | Path | None = None,
    max_epsilon: float | None = None,
) -> UnmaskRequestResult:
    """Step 3' (coordinator): name the sites that shared and those whose masked input arrived.

    Parameters
    ----------
    round_dir : str or Path
        The round folder being aggregated.
    roster_path : str or Path
        The roster of the run.
    share_paths : sequence of str or Path
        The ``shares`` files that were forwarded to the sites (they define U2).
    masked_paths : sequence of str or Path
        The ``masked-input`` files received.
    out_path : str or Path
        The ``unmask-request`` file to send to the survivors.
    coordinator_key : SiteKey
        Signs the request.
    federation_dir : str or Path, optional
        Folder of the plan, registry and ledger; default ``round_dir``'s parent.
    max_epsilon : float, optional
        Refuse now, before asking anyone to reveal, if the release would exceed it (with the plan's).

    Returns
    -------
    UnmaskRequestResult
        The request and the refused files.

    Raises
    ------
    ParticipationError
        Fewer than ``t`` (or ``min_sites``) valid masked inputs: the run aborts, nothing written.
    ecgdig.errors.PrivacyBudgetError
        The release would exceed the privacy budget.
    UpdateRejectedError
        The roster fails verification.
    """
    opened = open_round(round_dir, coordinator_key=coordinator_key, federation_dir=federation_dir)
    roster = _read_own_document(roster_path, Roster, opened.plan)
    roster_sha = document_sha256(roster)
    _check_binding(
        roster,
        Path(roster_path),
        federation_id=opened.plan.federation_id,
        round_number=opened.info.round,
        base_sha256=opened.info.global_sha256,
    )
    messages, rejected = _read_shares(share_paths, roster, roster_sha)
    shared = sorted(messages)
    masked, masked_rejected = _read_masked_inputs(
        masked_paths, opened=opened, roster=roster, roster_sha=roster_sha, shared=shared
    )
    rejected += masked_rejected
    needed = _required_survivors(roster, opened.plan)
    if len(masked) < needed:
        raise _abort(f"{len(masked)} valid masked input(s), threshold {needed}", opened, rejected)
    check_release_budget(opened, len(masked), max_epsilon)  # refuse before anyone reveals a share
    request = sign_document(
        UnmaskRequest(
            federation_id=roster.federation_id,
            round=roster.round,
            base_sha256=roster.base_sha256,
            site_id=opened.plan.coordinator_id,
            signature=None,
            roster_sha256=roster_sha,
            shared=tuple(shared),
            survivors=tuple(sorted(masked)),
            masked_sha256={site: masked[site].file_sha256 for site in sorted(masked)},
        ),
        coordinator_key.private_key,
    )
    write_document(out_path, request)
    rejected.sort(key=lambda r: (r.file, r.reason))
    return UnmaskRequestResult(request=request, path=Path(out_path), rejected=tuple(rejected))


# --------------------------------------------------------------------------------------------------
# Step 4: reveal shares (site)


def reveal_shares(
    state_path: str | Path,
    roster_path: str | Path,
    request_path: str | Path,
    out_path: str | Path,
    site_key: SiteKey,
    *,
    plan: FederationPlan,
) -> Reveal:
    """Step 4 (site): reveal self-mask shares of survivors and mask-key shares of dropped sites.

    For each site of U2 the site reveals exactly one of its two shares: the self-mask seed share if
    the site is a survivor (its pairwise masks cancel in the sum), the mask private key share if it
    dropped (its self mask is not in the sum). It answers one unmask request per run only: a second,
    different request (say one that moves a survivor to the dropped list) is refused, so the
    coordinator can never gather both secrets of one site from honest sites.

    Parameters
    ----------
    state_path : str or Path
        The site's private state (after :func:`mask_update`; records the answer).
    roster_path : str or Path
        The roster of the run.
    request_path : str or Path
        The coordinator's ``unmask-request``.
    out_path : str or Path
        The ``reveal`` file to send.
    site_key : SiteKey
        The site's signing key.
    plan : FederationPlan
        The federation's plan.

    Returns
    -------
    Reveal
        The signed reveal.

    Raises
    ------
    UpdateRejectedError
        The request is not the coordinator's, belongs to another run, or is inconsistent (survivors
        not a subset of the sharing sites, another peer set than this site masked with, this site not
        a survivor, fewer survivors than the threshold).
    ConfigError
        No masked input was sent in this run, or another request was already answered.
    """
    state_file = Path(state_path)
    state = _load_state(state_file, site_key, plan)
    roster, roster_sha = _read_roster(roster_path, plan)
    request_file = Path(request_path)
    request = _read_own_document(request_file, UnmaskRequest, plan)
    _check_binding(
        request,
        request_file,
        federation_id=state.federation_id,
        round_number=state.round,
        base_sha256=state.base_sha256,
        roster_sha256=roster_sha,
    )
    if state.roster_sha256 != roster_sha or state.peers is None:
        raise ConfigError("this site sent no masked input in this run; it has nothing to reveal", state_file)
    request_sha = document_sha256(request)
    if state.revealed_request_sha256 not in (None, request_sha):
        raise ConfigError(
            "this site already answered another unmask request of this run; answering a second one could "
            "expose a site's update",
            request_file,
        )
    survivors, shared = set(request.survivors), set(request.shared)
    needed = _required_survivors(roster, plan)
    problem = None
    if list(request.shared) != list(state.peers):
        problem = "the request names other sharing sites than this site masked with"
    elif not survivors <= shared:
        problem = "the request names survivors that never shared"
    elif site_key.site_id not in survivors:
        problem = f"site {site_key.site_id!r} is not among the survivors"
    elif len(survivors) < needed:
        problem = f"{len(survivors)} survivor(s), below the threshold {needed}"
    if problem:
        raise UpdateRejectedError(f"refusing to reveal: {problem}", request_file)
    reveal = sign_document(
        Reveal(
            federation_id=roster.federation_id,
            round=roster.round,
            base_sha256=roster.base_sha256,
            site_id=site_key.site_id,
            signature=None,
            roster_sha256=roster_sha,
            request_sha256=request_sha,
            self_mask_shares={site: state.received_shares[site][0] for site in sorted(survivors)},
            mask_key_shares={site: state.received_shares[site][1] for site in sorted(shared - survivors)},
        ),
        site_key.private_key,
    )
    _write_state(state_file, replace(state, revealed_request_sha256=request_sha))
    write_document(out_path, reveal)
    return reveal


# --------------------------------------------------------------------------------------------------
# Step 4': unmask and release (coordinator)


def _rebuild(reveals: Mapping[str, Reveal], roster: Roster, site: str, field_name: str, path: Path) -> bytes:
    """Rebuild one 32-byte secret of ``site`` from the revealed shares (first ``t`` in x order)."""
    shares: dict[int, int] = {}
    for revealer, reveal in reveals.items():
        entry = roster.entry(revealer)
        if entry is not None:
            shares[entry.share_x] = int(getattr(reveal, field_name)[site], 16)
    secret = reconstruct_secret(shares, roster.threshold)
    if secret >= 1 << 256:
        raise UpdateRejectedError(
            f"a secret of site {site!r} rebuilt from the revealed shares is not 32 bytes: a share is wrong; "
            "nothing released",
            path,
        )
    return secret.to_bytes(32, "big")


def aggregate_secure_round(
    round_dir: str | Path,
    roster_path: str | Path,
    request_path: str | Path,
    masked_paths: Sequence[str | Path],
    reveal_paths: Sequence[str | Path],
    out_dir: str | Path | None = None,
    *,
    coordinator_key: SiteKey,
    federation_dir: str | Path | None = None,
    max_epsilon: float | None = None,
    rng: int | np.random.Generator | None = None,
) -> RoundReport:
    """Step 4' (coordinator): rebuild the secrets, remove the masks, decode the sum and release it.

    Order: verify roster, request, the survivors' masked inputs (the exact files the request named)
    and the reveals; abort below the threshold; check the privacy budget; only then rebuild each
    survivor's self-mask seed and each dropped site's mask key (each checked against its commitment
    or public key), subtract the masks, decode, and hand the weighted sum to
    :func:`ecgdig.federated.coordinator.release_round` (DP noise, server optimizer, ledger, next round
    folder), exactly as plain aggregation does.

    Parameters
    ----------
    round_dir : str or Path
        The round folder being aggregated.
    roster_path : str or Path
        The roster of the run.
    request_path : str or Path
        The unmask request the survivors answered.
    masked_paths : sequence of str or Path
        The masked input files (at least those the request names).
    reveal_paths : sequence of str or Path
        The ``reveal`` files received.
    out_dir : str or Path, optional
        The next round folder; default ``<federation>/round-(N+1)``.
    coordinator_key : SiteKey
        Signs the new global model.
    federation_dir : str or Path, optional
        Folder of the plan, registry and ledger; default ``round_dir``'s parent.
    max_epsilon : float, optional
        Privacy limit in addition to the plan's.
    rng : int, Generator or None, optional
        Source of DP noise and site sampling; None seeds from the OS.

    Returns
    -------
    RoundReport
        As for plain aggregation, with ``secure_aggregation`` set and no per-site norms.

    Raises
    ------
    ParticipationError
        Fewer than ``t`` (or ``min_sites``) valid reveals, or a named masked input missing: the round
        aborts, nothing is written and no budget is spent.
    ecgdig.errors.PrivacyBudgetError
        The release would exceed the privacy budget (checked before any unmasking).
    UpdateRejectedError
        Roster or request fail verification, or a rebuilt secret does not match its commitment.
    """
    opened = open_round(round_dir, out_dir, coordinator_key=coordinator_key, federation_dir=federation_dir)
    plan = opened.plan
    roster = _read_own_document(roster_path, Roster, plan)
    roster_sha = document_sha256(roster)
    request_file = Path(request_path)
    request = _read_own_document(request_file, UnmaskRequest, plan)
    for document, path in ((roster, Path(roster_path)), (request, request_file)):
        _check_binding(
            document,
            path,
            federation_id=plan.federation_id,
            round_number=opened.info.round,
            base_sha256=opened.info.global_sha256,
            roster_sha256=roster_sha if document is request else None,
        )
    request_sha = document_sha256(request)
    survivors, shared = list(request.survivors), list(request.shared)
    dropped = sorted(set(shared) - set(survivors))

    masked, rejected = _read_masked_inputs(
        masked_paths, opened=opened, roster=roster, roster_sha=roster_sha, shared=shared
    )
    named = request.masked_sha256 or {}
    missing = [s for s in survivors if s not in masked or masked[s].file_sha256 != named.get(s)]
    if missing:
        raise _abort(
            f"the masked input of {', '.join(map(repr, missing))} named in the request is missing",
            opened,
            rejected,
        )

    unique, reveal_rejected = _unique_paths(reveal_paths)
    rejected += reveal_rejected
    valid: list[tuple[Path, SecAggDocument]] = []
    for path in unique:
        try:
            reveal = read_document(path, Reveal)
            _verify_from_roster(reveal, path, roster, roster_sha)
            if reveal.request_sha256 != request_sha:
                raise UpdateRejectedError(
                    "reveal answers another unmask request (stale or replayed file)", path
                )
            if reveal.site_id not in survivors:
                raise UpdateRejectedError(f"site {reveal.site_id!r} is not a survivor of this run", path)
            if set(reveal.self_mask_shares or {}) != set(survivors) or set(
                reveal.mask_key_shares or {}
            ) != set(dropped):
                raise UpdateRejectedError(
                    "reveal must hold self-mask shares of exactly the survivors and mask-key shares of "
                    "exactly the dropped sites",
                    path,
                )
            values = [*(reveal.self_mask_shares or {}).values(), *(reveal.mask_key_shares or {}).values()]
            if any(int(value, 16) >= PRIME for value in values):
                raise UpdateRejectedError("reveal holds a share value outside the field GF(2^521 - 1)", path)
            valid.append((path, reveal))
        except UpdateRejectedError as exc:
            rejected.append(RejectedUpdate(path.name, exc.reason))
    kept, duplicates = _dedupe_by_signer(valid, roster.round)
    rejected += duplicates
    reveals: dict[str, Reveal] = {site: reveal for site, (_, reveal) in kept.items()}
    needed = _required_survivors(roster, plan)
    if len(reveals) < needed or len(survivors) < needed:
        raise _abort(f"{len(reveals)} valid reveal(s), threshold {needed}", opened, rejected)

    # The budget is checked before any mask is removed: a refused round has released nothing.
    ledger_entry = check_release_budget(opened, len(survivors), max_epsilon)

    context = _roster_context(roster, roster_sha)
    total = np.zeros(sum(int(np.prod(s)) for s in opened.shapes.values()), dtype=np.uint32)
    for site in survivors:
        total += flatten_tensors(masked[site].tensors, np.uint32)
    for site in survivors:
        seed = _rebuild(reveals, roster, site, "self_mask_shares", request_file)
        if _commitment(seed, context) != masked[site].header.self_mask_commitment:
            raise UpdateRejectedError(
                f"self-mask seed of site {site!r} rebuilt from the revealed shares does not match its "
                "commitment: a revealed share is wrong; nothing released",
                request_file,
            )
        total -= mask_stream(self_mask_key(seed, context), total.size)
    for site in dropped:
        raw = _rebuild(reveals, roster, site, "mask_key_shares", request_file)
        mask_key = X25519PrivateKey.from_private_bytes(raw)
        entry = roster.entry(site)
        if entry is None or _b64(_x25519_public_bytes(mask_key)) != entry.mask_public_key:
            raise UpdateRejectedError(
                f"mask key of dropped site {site!r} rebuilt from the revealed shares does not match its "
                "advertised public key: a revealed share is wrong; nothing released",
                request_file,
            )
        for survivor in survivors:
            peer = roster.entry(survivor)
            pair_mask = mask_stream(
                pairwise_mask_key(
                    mask_key, base64.b64decode(peer.mask_public_key), context, (site, survivor)
                ),  # type: ignore[union-attr]
                total.size,
            )
            # Undo what the survivor did with the mask it shared with the dropped site.
            if _pairwise_sign(survivor, site) > 0:
                total -= pair_mask
            else:
                total += pair_mask
    weighted_sum = unflatten_tensors(decode_fixed_point(total, roster.frac_bits), opened.shapes)
    entries = {e.site_id: e for e in roster.sites}
    accepted = [
        AcceptedUpdate(
            site_id=site,
            file=masked[site].path.name,
            file_sha256=masked[site].file_sha256,
            num_examples=entries[site].num_examples,
            weight=entries[site].weight,
            l2_norm=None,
        )
        for site in survivors
    ]
    summary = SecureAggregationSummary(
        threshold=roster.threshold,
        frac_bits=roster.frac_bits,
        roster_sha256=roster_sha,
        request_sha256=request_sha,
        roster=roster.site_ids,
        shared=tuple(shared),
        survivors=tuple(survivors),
        revealed=tuple(sorted(reveals)),
    )
    rejected.sort(key=lambda r: (r.file, r.reason))
    return release_round(
        opened,
        weighted_sum,  # type: ignore[arg-type]
        total_weight=sum(entries[s].weight for s in survivors),
        accepted=accepted,
        rejected=rejected,
        ledger_entry=ledger_entry,
        coordinator_key=coordinator_key,
        rng=rng,
        secure_aggregation=summary,
    )


# --------------------------------------------------------------------------------------------------
# All four steps in one process (simulation, tests, benchmarks)


@dataclass(frozen=True)
class SiteTraffic:
    """Bytes one site sent and received during a run (protocol files only).

    Parameters
    ----------
    site_id : str
        The site.
    sent_bytes : int
        Its advertisement, shares, masked input and reveal.
    received_bytes : int
        The roster, the forwarded shares files and the unmask request.
    """

    site_id: str
    sent_bytes: int
    received_bytes: int


@dataclass(frozen=True)
class SecureRoundResult:
    """What :func:`run_secure_round` did.

    Parameters
    ----------
    report : RoundReport
        The coordinator's report of the released round.
    work_dir : Path
        Where every protocol file was written.
    traffic : tuple of SiteTraffic
        Per site that advertised, bytes sent and received.
    """

    report: RoundReport
    work_dir: Path
    traffic: tuple[SiteTraffic, ...]


def run_secure_round(
    round_dir: str | Path,
    local_models: Mapping[str, Mapping[str, NDArray[Any]]],
    work_dir: str | Path,
    *,
    site_keys: Mapping[str, SiteKey],
    coordinator_key: SiteKey,
    num_examples: Mapping[str, int],
    dropouts: Mapping[str, DropoutStage] | None = None,
    threshold: int | None = None,
    out_dir: str | Path | None = None,
    federation_dir: str | Path | None = None,
    max_epsilon: float | None = None,
    rng: int | np.random.Generator | None = None,
) -> SecureRoundResult:
    """Run one securely aggregated round for in-process sites, writing every real protocol file.

    Each site makes its plain signed update with :func:`~ecgdig.federated.coordinator.make_update`
    (kept in its private folder), then the four steps run in order, the coordinator relaying files
    between them. ``dropouts`` makes chosen sites vanish before a step. Layout of ``work_dir``::

        sites/<site>/update.safetensors, state.json      private to each site
        to-coordinator/<site>.{advertise.json, shares.json, masked.safetensors, reveal.json}
        from-coordinator/roster.json, unmask-request.json

    Parameters
    ----------
    round_dir : str or Path
        The round folder (``round-NNNN`` with ``global.safetensors``) being aggregated.
    local_models : mapping of str to mapping of str to ndarray
        Site id -> its model after local training (same tensors as the global model).
    work_dir : str or Path
        Folder for the protocol files (created; should be empty).
    site_keys : mapping of str to SiteKey
        Signing key of every site in ``local_models``.
    coordinator_key : SiteKey
        The coordinator's key.
    num_examples : mapping of str to int
        Site id -> ``n_k``.
    dropouts : mapping of str to {"advertise", "share", "mask", "unmask"}, optional
        Site id -> the step it drops out before (``"advertise"``: never shows up; ``"unmask"``: its
        masked input is in the sum but it reveals nothing).
    threshold : int, optional
        ``t``; default :func:`default_threshold` of the roster size.
    out_dir : str or Path, optional
        The next round folder; default ``<federation>/round-(N+1)``.
    federation_dir : str or Path, optional
        Folder of ``plan.json``, ``registry.json`` and ``ledger.jsonl``; default ``round_dir``'s parent.
    max_epsilon : float, optional
        Privacy limit in addition to the plan's.
    rng : int, Generator or None, optional
        Source of stochastic rounding, DP noise and site sampling (never of masks or secrets, which
        always come from the OS); None seeds from the OS.

    Returns
    -------
    SecureRoundResult
        The coordinator's report, the work folder and per-site traffic.

    Raises
    ------
    ParticipationError
        Too few sites left at some step: the round aborts, nothing is released, no budget spent.
    ecgdig.errors.PrivacyBudgetError
        The release would exceed the privacy budget.
    ConfigError
        Keys or counts missing for a site, or an unknown dropout stage.
    """
    round_path = Path(round_dir)
    fed = Path(federation_dir) if federation_dir is not None else round_path.parent
    plan = load_plan(fed / PLAN_FILE)
    drops = dict(dropouts or {})
    stages = ("advertise", "share", "mask", "unmask")
    for site, stage in drops.items():
        if stage not in stages:
            raise ConfigError(f"dropout stage {stage!r} of site {site!r} must be one of {', '.join(stages)}")
    sites = sorted(local_models)
    for site in sites:
        if site not in site_keys or site not in num_examples:
            raise ConfigError(f"site {site!r} needs a signing key and an example count")
    generator = make_rng(rng)
    work = Path(work_dir)
    inbox, outbox = work / "to-coordinator", work / "from-coordinator"

    def active(stage: DropoutStage) -> list[str]:
        """Sites still present at ``stage``."""
        return [s for s in sites if s not in drops or stages.index(drops[s]) > stages.index(stage)]

    def private(site: str, name: str) -> Path:
        return work / "sites" / site / name

    for site in active("advertise"):
        make_update(
            round_path / GLOBAL_FILE,
            local_models[site],
            private(site, "update.safetensors"),
            site_keys[site],
            plan=plan,
            num_examples=num_examples[site],
        )
        advertise_keys(
            round_path / GLOBAL_FILE,
            private(site, "state.json"),
            inbox / f"{site}.advertise.json",
            site_keys[site],
            plan=plan,
            num_examples=num_examples[site],
        )
    roster_path = outbox / "roster.json"
    make_roster(
        round_path,
        [inbox / f"{s}.advertise.json" for s in active("advertise")],
        roster_path,
        coordinator_key=coordinator_key,
        federation_dir=fed,
        threshold=threshold,
    )
    for site in active("share"):
        share_keys(
            private(site, "state.json"),
            roster_path,
            inbox / f"{site}.shares.json",
            site_keys[site],
            plan=plan,
        )
    share_paths = [inbox / f"{s}.shares.json" for s in active("share")]
    for site in active("mask"):
        mask_update(
            private(site, "state.json"),
            roster_path,
            share_paths,
            private(site, "update.safetensors"),
            inbox / f"{site}.masked.safetensors",
            site_keys[site],
            plan=plan,
            rng=generator,
        )
    masked_paths = [inbox / f"{s}.masked.safetensors" for s in active("mask")]
    request_path = outbox / "unmask-request.json"
    request_unmask(
        round_path,
        roster_path,
        share_paths,
        masked_paths,
        request_path,
        coordinator_key=coordinator_key,
        federation_dir=fed,
        max_epsilon=max_epsilon,
    )
    for site in active("unmask"):
        reveal_shares(
            private(site, "state.json"),
            roster_path,
            request_path,
            inbox / f"{site}.reveal.json",
            site_keys[site],
            plan=plan,
        )
    report = aggregate_secure_round(
        round_path,
        roster_path,
        request_path,
        masked_paths,
        [inbox / f"{s}.reveal.json" for s in active("unmask")],
        out_dir,
        coordinator_key=coordinator_key,
        federation_dir=fed,
        max_epsilon=max_epsilon,
        rng=generator,
    )

    def size(path: Path) -> int:
        return path.stat().st_size if path.exists() else 0

    traffic = []
    for site in active("advertise"):
        sent = sum(
            size(inbox / f"{site}.{suffix}")
            for suffix in ("advertise.json", "shares.json", "masked.safetensors", "reveal.json")
        )
        received = size(roster_path)
        if site in active("mask"):
            received += sum(size(p) for p in share_paths)
        if site in active("unmask"):
            received += size(request_path)
        traffic.append(SiteTraffic(site_id=site, sent_bytes=sent, received_bytes=received))
    return SecureRoundResult(report=report, work_dir=work, traffic=tuple(traffic))
