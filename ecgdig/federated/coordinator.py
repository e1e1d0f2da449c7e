"""File-level orchestration of a federation: the plan, round folders, site updates and aggregation.

No model code: everything works on ``dict[str, numpy.ndarray]`` of float32 tensors, so the same
functions serve the U-Net, a simulation and the tests. A federation lives in one folder::

    federation/
      plan.json            strategy, hyper-parameters, clip norm, DP settings, coordinator key
      registry.json        site id -> Ed25519 public key (ecgdig.federated.keys)
      ledger.jsonl         privacy ledger (only when DP is on)
      round-0000/
        global.safetensors the signed global model that opens round 0
        round.json         round number, model hash, sites asked to train, ledger position
      round-0001/
        global.safetensors
        round.json
        optimizer.safetensors  FedAdam / FedYogi moments m, v after the step (coordinator-private)
        report.json            how the round was made: accepted and rejected files (coordinator-private)

Sites receive ``plan.json`` and a round's ``global.safetensors`` (and are told whether they were
selected), run :func:`make_update` after local training, and send the update file back. The
coordinator runs :func:`aggregate_round`, which writes the next round folder atomically, or nothing.
With DP off, rerunning a round with the same inputs (and the same ``rng`` if sites are sampled)
gives byte-identical files. With DP on, each run draws fresh noise and is a new release: it is
recorded as a new ledger entry and spends budget again.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
from numpy.typing import NDArray
from safetensors import SafetensorError, safe_open

from ecgdig.errors import ConfigError, EcgdigError, ModelFileError, UpdateRejectedError
from ecgdig.federated.files import (
    MAX_FILE_BYTES,
    ZERO_SHA256,
    FileHeader,
    TensorFileInfo,
    canonical_json,
    file_sha256,
    is_valid_id,
    loads_strict,
    payload_sha256,
    read_json_file,
    signed_tensor_bytes,
    write_signed_tensors,
)
from ecgdig.federated.keys import Registry, SiteKey, load_registry
from ecgdig.federated.privacy import (
    DEFAULT_DELTA,
    SAMPLING_MODES,
    EpsilonReport,
    LedgerEntry,
    LedgerSummary,
    RoundPrivacy,
    SamplingMode,
    add_gaussian_noise,
    commit_ledger_entry,
    epsilon_after,
    make_rng,
    prepare_ledger_entry,
    select_sites,
    verify_ledger,
)
from ecgdig.federated.strategies import (
    STRATEGY_NAMES,
    DeltaAccumulator,
    OptimizerState,
    ServerOptimizer,
    Tensors,
    capped_weight,
    clipped_delta,
    fixed_denominator_mean,
    init_optimizer_state,
    make_server_optimizer,
    server_step,
)
from ecgdig.federated.validate import check_update_header, validate_model, validate_update
from ecgdig.io.atomic import atomic_write_text

__all__ = [
    "DEFAULT_COORDINATOR_ID",
    "DEFAULT_LOCAL_EPOCHS",
    "DEFAULT_MIN_SITES",
    "DEFAULT_PLANNED_ROUNDS",
    "GLOBAL_FILE",
    "LEDGER_FILE",
    "PLAN_FILE",
    "REGISTRY_FILE",
    "REPORT_FILE",
    "ROUND_FILE",
    "STATE_FILE",
    "AcceptedUpdate",
    "DpPlan",
    "FederationInit",
    "FederationPlan",
    "OpenRound",
    "ParticipationError",
    "RejectedUpdate",
    "RoundInfo",
    "RoundReport",
    "SamplingPlan",
    "SecureAggregationSummary",
    "UpdateInfo",
    "aggregate_round",
    "check_release_budget",
    "init_federation",
    "load_optimizer_state",
    "load_plan",
    "load_round_info",
    "make_update",
    "open_round",
    "release_round",
    "round_dir_name",
]

PLAN_FILE = "plan.json"
REGISTRY_FILE = "registry.json"
LEDGER_FILE = "ledger.jsonl"
GLOBAL_FILE = "global.safetensors"
ROUND_FILE = "round.json"
STATE_FILE = "optimizer.safetensors"
REPORT_FILE = "report.json"

PLAN_FORMAT = "ecgdig-plan"
ROUND_FORMAT = "ecgdig-round"
REPORT_FORMAT = "ecgdig-round-report"
STATE_FORMAT = "ecgdig-optimizer-state"
STATE_KEY = "ecgdig.state"
_VERSION = 1
_MAX_JSON_BYTES = 16 * 1024**2

DEFAULT_COORDINATOR_ID = "coordinator"
DEFAULT_MIN_SITES = 2
DEFAULT_LOCAL_EPOCHS = 1
DEFAULT_PLANNED_ROUNDS = 50


class ParticipationError(EcgdigError):
    """Fewer valid updates than the plan's participation threshold; the round was not aggregated."""

    def __init__(
        self, message: str, path: str | Path | None = None, rejected: Sequence[RejectedUpdate] = ()
    ) -> None:
        super().__init__(message, path)
        self.rejected = tuple(rejected)


def round_dir_name(round_number: int) -> str:
    """Return the folder name of a round, e.g. ``round-0003``.

    Examples
    --------
    >>> round_dir_name(3)
    'round-0003'
    """
    return f"round-{round_number:04d}"


def _pretty_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=True, allow_nan=False) + "\n"


def _read_json(path: Path, what: str) -> Any:
    return read_json_file(path, what, max_bytes=_MAX_JSON_BYTES)


# --------------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class SamplingPlan:
    """Which sites are asked to train each round.

    Parameters
    ----------
    mode : {"full", "poisson", "fixed"}, optional
        All sites (default), each site with probability ``q``, or ``sample_size`` sites uniformly
        without replacement.
    q : float, optional
        Poisson probability (``full``: 1; ``fixed``: set to ``sample_size / population`` at init).
    sample_size : int, optional
        ``m`` for ``fixed``.
    """

    mode: SamplingMode = "full"
    q: float = 1.0
    sample_size: int | None = None


@dataclass(frozen=True)
class DpPlan:
    """Central differential privacy settings (DP-FedAvg).

    Parameters
    ----------
    noise_multiplier : float
        ``z`` > 0; noise std on the weighted sum is ``z * S``.
    delta : float, optional
        Target delta (default 1e-5; keep it well below 1 / number of sites).
    n_cap : float, optional
        Sites with at least ``n_cap`` examples get weight 1, smaller sites ``n_k / n_cap``
        (default 1: every site weighs 1).
    denominator : float, optional
        The fixed denominator ``D`` of the mean; default ``q * population`` (the expected number of
        participating sites, exact when every site has at least ``n_cap`` examples).
    max_epsilon : float, optional
        Refuse any round that would bring the RDP epsilon above this.
    """

    noise_multiplier: float
    delta: float = DEFAULT_DELTA
    n_cap: float = 1.0
    denominator: float | None = None
    max_epsilon: float | None = None


@dataclass(frozen=True)
class FederationPlan:
    """Everything the coordinator and the sites agree on before round 0 (``plan.json``).

    Parameters
    ----------
    federation_id : str
        The federation's id (1-64 characters from ``A-Z a-z 0-9 . _ -``).
    clip_norm : float
        ``S`` > 0: every update is clipped to this global L2 norm.
    strategy : ServerOptimizer, optional
        Server rule and hyper-parameters (default FedAvg, eta = 1).
    proximal_mu : float, optional
        FedProx's ``mu`` (> 0 for FedProx, 0 otherwise): sites add ``(mu/2) ||w - w_global||^2``.
    local_epochs : int, optional
        ``E``, local epochs per round (default 1).
    rounds : int, optional
        Planned number of rounds (for the projected epsilon; default 50).
    min_sites : int, optional
        Participation threshold: fewer valid updates and the round is refused (default 2).
    sampling : SamplingPlan, optional
        Participation model (default: every site every round).
    dp : DpPlan or None, optional
        Central DP; None for none.
    population : int or None, optional
        Number of registered sites; set by :func:`init_federation`.
    coordinator_id : str, optional
        Id the coordinator signs global models under (default ``"coordinator"``).
    coordinator_public_key : str or None, optional
        Base64 raw Ed25519 key of the coordinator; set by :func:`init_federation`.
    """

    federation_id: str
    clip_norm: float
    strategy: ServerOptimizer = field(default_factory=lambda: make_server_optimizer("fedavg"))
    proximal_mu: float = 0.0
    local_epochs: int = DEFAULT_LOCAL_EPOCHS
    rounds: int = DEFAULT_PLANNED_ROUNDS
    min_sites: int = DEFAULT_MIN_SITES
    sampling: SamplingPlan = field(default_factory=SamplingPlan)
    dp: DpPlan | None = None
    population: int | None = None
    coordinator_id: str = DEFAULT_COORDINATOR_ID
    coordinator_public_key: str | None = None

    def __post_init__(self) -> None:
        errors = _plan_errors(self)
        if errors:
            raise ConfigError(f"invalid federation plan: {errors[0]}")

    @property
    def coordinator_key_bytes(self) -> bytes:
        """The coordinator's raw public key (requires an initialized plan)."""
        if self.coordinator_public_key is None:
            raise ConfigError("the plan has no coordinator public key: run init_federation first")
        return base64.b64decode(self.coordinator_public_key, validate=True)

    def round_privacy(self) -> RoundPrivacy:
        """Return the accounting parameters of one noised round of this plan (DP plans only)."""
        if self.dp is None:
            raise ConfigError("the plan has no differential privacy settings")
        return RoundPrivacy(
            noise_multiplier=self.dp.noise_multiplier,
            sampling=self.sampling.mode,
            q=self.sampling.q,
            population=self.population,
            sample_size=self.sampling.sample_size,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the ``plan.json`` object."""
        return {
            "format": PLAN_FORMAT,
            "version": _VERSION,
            "federation_id": self.federation_id,
            "clip_norm": float(self.clip_norm),
            "strategy": asdict(self.strategy),
            "proximal_mu": float(self.proximal_mu),
            "local_epochs": self.local_epochs,
            "rounds": self.rounds,
            "min_sites": self.min_sites,
            "sampling": asdict(self.sampling),
            "dp": None if self.dp is None else asdict(self.dp),
            "population": self.population,
            "coordinator_id": self.coordinator_id,
            "coordinator_public_key": self.coordinator_public_key,
        }

    def to_json(self) -> str:
        """Return the ``plan.json`` text (sorted keys, indented)."""
        return _pretty_json(self.to_dict())


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _plan_errors(plan: FederationPlan) -> list[str]:
    errors: list[str] = []
    if not is_valid_id(plan.federation_id):
        errors.append(f"federation_id {plan.federation_id!r} must be 1-64 characters from A-Z a-z 0-9 . _ -")
    if not is_valid_id(plan.coordinator_id):
        errors.append(f"coordinator_id {plan.coordinator_id!r} is not a valid id")
    if not (_is_number(plan.clip_norm) and plan.clip_norm > 0):
        errors.append(f"clip_norm must be a finite positive number, got {plan.clip_norm!r}")
    if not (_is_number(plan.proximal_mu) and plan.proximal_mu >= 0):
        errors.append(f"proximal_mu must be >= 0, got {plan.proximal_mu!r}")
    if plan.strategy.name == "fedprox" and not plan.proximal_mu > 0:
        errors.append("FedProx needs proximal_mu > 0 (Li et al. try 0.001 to 1); with 0 it is FedAvg")
    if plan.strategy.name != "fedprox" and plan.proximal_mu != 0:
        errors.append(f"proximal_mu is only used by fedprox, not {plan.strategy.name}")
    for name in ("local_epochs", "rounds", "min_sites"):
        value = getattr(plan, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            errors.append(f"{name} must be an integer >= 1, got {value!r}")
    sampling = plan.sampling
    if sampling.mode not in SAMPLING_MODES:
        errors.append(f"sampling mode {sampling.mode!r} must be one of {', '.join(SAMPLING_MODES)}")
    elif sampling.mode == "full" and (sampling.q != 1.0 or sampling.sample_size is not None):
        errors.append("full participation takes no q or sample_size")
    elif sampling.mode == "poisson" and not (_is_number(sampling.q) and 0 < sampling.q < 1):
        errors.append(f"Poisson sampling needs 0 < q < 1, got {sampling.q!r}")
    elif sampling.mode == "fixed" and (not isinstance(sampling.sample_size, int) or sampling.sample_size < 1):
        errors.append(f"fixed-size sampling needs sample_size >= 1, got {sampling.sample_size!r}")
    if plan.population is not None:
        if not isinstance(plan.population, int) or plan.population < 1:
            errors.append(f"population must be an integer >= 1, got {plan.population!r}")
        elif sampling.mode == "fixed" and sampling.sample_size is not None:
            if sampling.sample_size > plan.population:
                errors.append(
                    f"sample_size {sampling.sample_size} exceeds the {plan.population} registered sites"
                )
            elif not math.isclose(sampling.q, sampling.sample_size / plan.population, rel_tol=1e-12):
                errors.append("fixed-size sampling: q must equal sample_size / population")
        asked = plan.population if sampling.mode != "fixed" else sampling.sample_size
        if sampling.mode != "poisson" and asked is not None and plan.min_sites > asked:
            errors.append(f"min_sites {plan.min_sites} exceeds the {asked} sites asked each round")
    if plan.dp is not None:
        dp = plan.dp
        if not (_is_number(dp.noise_multiplier) and dp.noise_multiplier > 0):
            errors.append(f"noise_multiplier must be > 0, got {dp.noise_multiplier!r}")
        if not (_is_number(dp.delta) and 0 < dp.delta < 1):
            errors.append(f"delta must be in (0, 1), got {dp.delta!r}")
        if not (_is_number(dp.n_cap) and dp.n_cap > 0):
            errors.append(f"n_cap must be > 0, got {dp.n_cap!r}")
        if dp.denominator is not None and not (_is_number(dp.denominator) and dp.denominator > 0):
            errors.append(f"denominator must be > 0, got {dp.denominator!r}")
        if dp.max_epsilon is not None and not (_is_number(dp.max_epsilon) and dp.max_epsilon > 0):
            errors.append(f"max_epsilon must be > 0, got {dp.max_epsilon!r}")
    if plan.coordinator_public_key is not None:
        try:
            ok = len(base64.b64decode(plan.coordinator_public_key, validate=True)) == 32
        except (binascii.Error, ValueError):
            ok = False
        if not ok:
            errors.append("coordinator_public_key must be base64 of 32 bytes")
    return errors


def _plan_from_dict(data: Any, path: Path) -> FederationPlan:
    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT or data.get("version") != _VERSION:
        raise ConfigError(f"not an {PLAN_FORMAT} version {_VERSION} file", path)
    expected = set(FederationPlan(federation_id="x", clip_norm=1.0).to_dict())
    if set(data) != expected:
        raise ConfigError(
            f"plan fields differ from the schema: {', '.join(sorted(set(data) ^ expected))}", path
        )
    try:
        strategy_data = dict(data["strategy"])
        if strategy_data.get("name") not in STRATEGY_NAMES:
            raise ConfigError(f"unknown strategy {strategy_data.get('name')!r}", path)
        plan = FederationPlan(
            federation_id=data["federation_id"],
            clip_norm=data["clip_norm"],
            strategy=ServerOptimizer(**strategy_data),
            proximal_mu=data["proximal_mu"],
            local_epochs=data["local_epochs"],
            rounds=data["rounds"],
            min_sites=data["min_sites"],
            sampling=SamplingPlan(**data["sampling"]),
            dp=None if data["dp"] is None else DpPlan(**data["dp"]),
            population=data["population"],
            coordinator_id=data["coordinator_id"],
            coordinator_public_key=data["coordinator_public_key"],
        )
    except ConfigError as exc:
        raise ConfigError(exc.reason, path) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid federation plan: {exc}", path) from None
    return plan


def load_plan(path: str | Path) -> FederationPlan:
    """Read and check a ``plan.json``.

    Parameters
    ----------
    path : str or Path
        The plan file.

    Returns
    -------
    FederationPlan
        The plan.

    Raises
    ------
    ConfigError
        Missing, not JSON, or a schema or consistency violation.
    """
    path = Path(path)
    return _plan_from_dict(_read_json(path, "federation plan"), path)


def _resolve_plan(plan: FederationPlan, registry: Registry, coordinator_key: SiteKey) -> FederationPlan:
    if plan.federation_id != registry.federation_id:
        raise ConfigError(
            f"plan is for federation {plan.federation_id!r} but the registry for {registry.federation_id!r}"
        )
    population = len(registry.sites)
    if population < 1:
        raise ConfigError("the registry has no sites: register site public keys first")
    if coordinator_key.site_id in registry.sites:
        raise ConfigError(f"the coordinator id {coordinator_key.site_id!r} is also a registered site id")
    sampling = plan.sampling
    if sampling.mode == "fixed" and sampling.sample_size is not None:
        sampling = replace(sampling, q=sampling.sample_size / population)
    dp = plan.dp
    if dp is not None and dp.denominator is None:
        dp = replace(dp, denominator=sampling.q * population)
    return replace(
        plan,
        population=population,
        sampling=sampling,
        dp=dp,
        coordinator_id=coordinator_key.site_id,
        coordinator_public_key=coordinator_key.public_key_b64,
    )


def _check_plan_against(
    plan: FederationPlan, registry: Registry, coordinator_key: SiteKey, path: Path
) -> None:
    if plan.federation_id != registry.federation_id:
        raise ConfigError(
            f"registry is for federation {registry.federation_id!r}, plan for {plan.federation_id!r}", path
        )
    if plan.population != len(registry.sites):
        raise ConfigError(
            f"the registry has {len(registry.sites)} sites but the plan was made for {plan.population}; "
            "the privacy accounting and denominator depend on it, so start a new federation",
            path,
        )
    if (
        coordinator_key.site_id != plan.coordinator_id
        or coordinator_key.public_key_b64 != plan.coordinator_public_key
    ):
        raise ConfigError("the coordinator key does not match the plan's coordinator public key", path)


# --------------------------------------------------------------------------------------------------
# Round folders


@dataclass(frozen=True)
class RoundInfo:
    """The public description of a round folder (``round.json``).

    Parameters
    ----------
    federation_id : str
        The federation.
    round : int
        The round this folder opens.
    global_sha256 : str
        ``payload_sha256`` of ``global.safetensors``: the base every update must name.
    selected_sites : tuple of str
        Sites asked to train this round; updates from others are rejected.
    ledger_length : int
        Number of privacy-ledger entries when this folder was written.
    ledger_head : str
        Hash of the last of them (64 zeros when none).
    """

    federation_id: str
    round: int
    global_sha256: str
    selected_sites: tuple[str, ...]
    ledger_length: int
    ledger_head: str

    def to_json(self) -> str:
        """Return the ``round.json`` text."""
        data = {"format": ROUND_FORMAT, "version": _VERSION, **asdict(self)}
        data["selected_sites"] = list(self.selected_sites)
        return _pretty_json(data)


def load_round_info(round_dir: str | Path) -> RoundInfo:
    """Read ``round.json`` from a round folder.

    Parameters
    ----------
    round_dir : str or Path
        The round folder.

    Returns
    -------
    RoundInfo
        Its contents.

    Raises
    ------
    ConfigError
        Missing or malformed.
    """
    path = Path(round_dir) / ROUND_FILE
    data = _read_json(path, "round description")
    fields = {"federation_id", "round", "global_sha256", "selected_sites", "ledger_length", "ledger_head"}
    if (
        not isinstance(data, dict)
        or data.get("format") != ROUND_FORMAT
        or data.get("version") != _VERSION
        or set(data) - {"format", "version"} != fields
    ):
        raise ConfigError(f"not an {ROUND_FORMAT} version {_VERSION} file", path)
    try:
        info = RoundInfo(
            federation_id=str(data["federation_id"]),
            round=int(data["round"]),
            global_sha256=str(data["global_sha256"]),
            selected_sites=tuple(str(s) for s in data["selected_sites"]),
            ledger_length=int(data["ledger_length"]),
            ledger_head=str(data["ledger_head"]),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"malformed round description ({exc})", path) from None
    if info.to_json() != path.read_text(encoding="utf-8"):
        raise ConfigError("round description is not in the form ecgdig writes (edited by hand?)", path)
    return info


def _optimizer_state_bytes(
    state: OptimizerState, *, federation_id: str, round_number: int, strategy: str
) -> tuple[bytes, str]:
    tensors: Tensors = {}
    for name in sorted(state.m):
        tensors[f"m/{name}"] = np.ascontiguousarray(state.m[name], dtype=np.float32)
        tensors[f"v/{name}"] = np.ascontiguousarray(state.v[name], dtype=np.float32)
    digest = payload_sha256(tensors)
    header = {
        "format": STATE_FORMAT,
        "version": _VERSION,
        "federation_id": federation_id,
        "round": round_number,
        "strategy": strategy,
        "step": state.step,
        "payload_sha256": digest,
    }
    return safetensors.numpy.save(tensors, metadata={STATE_KEY: canonical_json(header)}), digest


def load_optimizer_state(
    round_dir: str | Path,
    *,
    plan: FederationPlan,
    round_number: int,
    reference_shapes: Mapping[str, tuple[int, ...]],
) -> OptimizerState:
    """Return the server optimizer state persisted in a round folder.

    Parameters
    ----------
    round_dir : str or Path
        The round folder.
    plan : FederationPlan
        The plan (strategy and federation).
    round_number : int
        The folder's round.
    reference_shapes : mapping of str to tuple of int
        The model's tensor names and shapes.

    Returns
    -------
    OptimizerState
        The moments for FedAdam / FedYogi (initial ones in round 0); an empty state for FedAvg /
        FedProx.

    Raises
    ------
    ConfigError
        The state file is missing after round 0, or belongs to another federation, round or strategy,
        or does not match the model, or its payload hash does not match.
    """
    if not plan.strategy.adaptive:
        return OptimizerState(step=round_number)
    path = Path(round_dir) / STATE_FILE
    if not path.exists():
        if round_number == 0:
            return init_optimizer_state(plan.strategy, reference_shapes)
        raise ConfigError(f"optimizer state {STATE_FILE} is missing for round {round_number}", path)
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in sorted(handle.keys())}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"cannot read optimizer state ({exc})", path) from None
    try:
        header = loads_strict(metadata.get(STATE_KEY, ""))
    except ValueError:
        raise ConfigError("optimizer state has no valid header", path) from None
    expected = {
        "format": STATE_FORMAT,
        "version": _VERSION,
        "federation_id": plan.federation_id,
        "round": round_number,
        "strategy": plan.strategy.name,
    }
    if not isinstance(header, dict) or any(header.get(k) != v for k, v in expected.items()):
        raise ConfigError("optimizer state belongs to another federation, round or strategy", path)
    if header.get("payload_sha256") != payload_sha256(tensors):
        raise ConfigError("optimizer state payload SHA-256 mismatch (file altered)", path)
    m = {name[2:]: t for name, t in tensors.items() if name.startswith("m/")}
    v = {name[2:]: t for name, t in tensors.items() if name.startswith("v/")}
    shapes_ok = (
        len(m) + len(v) == len(tensors)
        and set(m) == set(reference_shapes) == set(v)
        and all(m[k].shape == tuple(reference_shapes[k]) == v[k].shape for k in m)
    )
    if not shapes_ok:
        raise ConfigError("optimizer state does not match the model's tensors", path)
    step = header.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ConfigError("optimizer state has an invalid step", path)
    return OptimizerState(step=step, m=m, v=v)


def _write_round_folder(out_dir: Path, files: Mapping[str, bytes | str]) -> None:
    """Write all files into a temporary sibling folder, then rename it to ``out_dir`` (atomic)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        for name, content in sorted(files.items()):
            data = content.encode("utf-8") if isinstance(content, str) else content
            with open(tmp / name, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _model_file_bytes(
    tensors: Tensors,
    *,
    plan: FederationPlan,
    round_number: int,
    base_sha256: str,
    num_examples: int,
    coordinator_key: SiteKey,
) -> tuple[bytes, FileHeader]:
    return signed_tensor_bytes(
        tensors,
        kind="model",
        federation_id=plan.federation_id,
        round=round_number,
        site_id=coordinator_key.site_id,
        base_sha256=base_sha256,
        num_examples=num_examples,
        clip_norm=plan.clip_norm,
        private_key=coordinator_key.private_key,
    )


# --------------------------------------------------------------------------------------------------
# init_federation


@dataclass(frozen=True)
class FederationInit:
    """What :func:`init_federation` wrote.

    Parameters
    ----------
    plan : FederationPlan
        The completed plan (coordinator key, population, denominator filled in).
    round_dir : Path
        ``round-0000``.
    global_sha256 : str
        Payload hash of the initial model.
    selected_sites : tuple of str
        Sites asked to train in round 0.
    projected_epsilon : EpsilonReport or None
        RDP epsilon after ``plan.rounds`` rounds if DP is on (PLD not computed: see
        :func:`ecgdig.federated.privacy.epsilon_after`).
    """

    plan: FederationPlan
    round_dir: Path
    global_sha256: str
    selected_sites: tuple[str, ...]
    projected_epsilon: EpsilonReport | None


def _check_model_tensors(tensors: Mapping[str, NDArray[Any]], what: str) -> Tensors:
    if not tensors:
        raise ModelFileError(f"{what} has no tensors")
    out: Tensors = {}
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        if not isinstance(name, str) or not name:
            raise ModelFileError(f"{what}: tensor names must be non-empty strings")
        if not np.issubdtype(array.dtype, np.floating):
            raise ModelFileError(f"{what}: tensor {name!r} is {array.dtype}, expected floating point")
        if not np.isfinite(array).all():
            raise ModelFileError(f"{what}: tensor {name!r} contains NaN or Inf")
        out[name] = np.ascontiguousarray(array, dtype=np.float32)
    return out


def init_federation(
    out_dir: str | Path,
    initial_tensors: Mapping[str, NDArray[Any]],
    plan: FederationPlan,
    *,
    coordinator_key: SiteKey,
    rng: int | np.random.Generator | None = None,
) -> FederationInit:
    """Start a federation: write ``plan.json`` and ``round-0000`` (signed global model, ``round.json``).

    Parameters
    ----------
    out_dir : str or Path
        The federation folder; it must already hold ``registry.json`` with every site's key
        (:func:`ecgdig.federated.keys.create_registry`, :func:`~ecgdig.federated.keys.add_site`).
    initial_tensors : mapping of str to ndarray
        The initial model (float, finite; stored as float32).
    plan : FederationPlan
        The plan; coordinator key, population, ``q`` for fixed sampling and the DP denominator are
        filled in here.
    coordinator_key : SiteKey
        The coordinator's signing key.
    rng : int, Generator or None, optional
        Source for sampling round 0's sites (only used with sampling; None: cryptographic).

    Returns
    -------
    FederationInit
        The completed plan and what was written.

    Raises
    ------
    ConfigError
        No registry, an inconsistent plan, or the federation already exists.
    ModelFileError
        The initial tensors are empty or not finite.
    """
    out = Path(out_dir)
    registry = load_registry(out / REGISTRY_FILE)
    full_plan = _resolve_plan(plan, registry, coordinator_key)
    for existing in (out / PLAN_FILE, out / round_dir_name(0)):
        if existing.exists():
            raise ConfigError("federation already initialized here; refusing to overwrite it", existing)
    tensors = _check_model_tensors(initial_tensors, "initial model")
    projected = None
    if full_plan.dp is not None:
        projected = epsilon_after(
            full_plan.rounds,
            full_plan.dp.noise_multiplier,
            full_plan.sampling.q,
            full_plan.dp.delta,
            full_plan.sampling.mode,
            population=full_plan.population,
            with_pld=False,  # RDP is the stated guarantee; the PLD for 50+ rounds takes seconds
        )
    generator = None if full_plan.sampling.mode == "full" else make_rng(rng)
    selected = tuple(
        select_sites(
            list(registry.sites),
            sampling=full_plan.sampling.mode,
            q=full_plan.sampling.q,
            sample_size=full_plan.sampling.sample_size,
            rng=generator,
        )
    )
    model_bytes, header = _model_file_bytes(
        tensors,
        plan=full_plan,
        round_number=0,
        base_sha256=ZERO_SHA256,
        num_examples=0,
        coordinator_key=coordinator_key,
    )
    info = RoundInfo(
        federation_id=full_plan.federation_id,
        round=0,
        global_sha256=header.payload_sha256,
        selected_sites=selected,
        ledger_length=0,
        ledger_head=ZERO_SHA256,
    )
    round_dir = out / round_dir_name(0)
    _write_round_folder(round_dir, {GLOBAL_FILE: model_bytes, ROUND_FILE: info.to_json()})
    atomic_write_text(out / PLAN_FILE, full_plan.to_json())
    return FederationInit(
        plan=full_plan,
        round_dir=round_dir,
        global_sha256=header.payload_sha256,
        selected_sites=selected,
        projected_epsilon=projected,
    )


# --------------------------------------------------------------------------------------------------
# make_update (site side)


@dataclass(frozen=True)
class UpdateInfo:
    """What :func:`make_update` wrote.

    Parameters
    ----------
    path : Path
        The update file.
    header : FileHeader
        Its signed header.
    norm_before_clip : float
        ``||w_local - w_global||_2`` before clipping.
    clipped : bool
        Whether clipping scaled the update down.
    """

    path: Path
    header: FileHeader
    norm_before_clip: float
    clipped: bool


def make_update(
    global_path: str | Path,
    local_tensors: Mapping[str, NDArray[Any]],
    out_path: str | Path,
    site_key: SiteKey,
    *,
    plan: FederationPlan,
    num_examples: int,
) -> UpdateInfo:
    """Write a site's signed update: ``clip(w_local - w_global, S)``.

    Parameters
    ----------
    global_path : str or Path
        The round's ``global.safetensors`` (verified against the coordinator key in ``plan``).
    local_tensors : mapping of str to ndarray
        The model after local training; same names and shapes as the global model.
    out_path : str or Path
        Where to write the update (atomically).
    site_key : SiteKey
        The site's signing key.
    plan : FederationPlan
        The federation's plan (coordinator key, clip norm).
    num_examples : int
        ``n_k`` >= 1, the number of local training examples (the aggregation weight, capped under DP).

    Returns
    -------
    UpdateInfo
        The file and its header.

    Raises
    ------
    UpdateRejectedError
        The global model fails verification or disagrees with the plan.
    ModelFileError
        The local model does not match the global model or holds NaN / Inf.
    ConfigError
        ``num_examples`` < 1.
    """
    if not isinstance(num_examples, int) or isinstance(num_examples, bool) or num_examples < 1:
        raise ConfigError(f"num_examples must be an integer >= 1, got {num_examples!r}")
    header, global_tensors = validate_model(
        global_path,
        federation_id=plan.federation_id,
        coordinator_id=plan.coordinator_id,
        coordinator_public_key=plan.coordinator_key_bytes,
    )
    if header.clip_norm != plan.clip_norm:
        raise UpdateRejectedError(
            f"global model declares clip norm {header.clip_norm!r}, the plan {plan.clip_norm!r}", global_path
        )
    local = _check_model_tensors(local_tensors, "local model")
    try:
        delta, norm = clipped_delta(local, global_tensors, header.clip_norm)
    except ValueError as exc:
        raise ModelFileError(f"local model does not match the global model: {exc}") from None
    written = write_signed_tensors(
        out_path,
        delta,
        kind="update",
        federation_id=header.federation_id,
        round=header.round,
        site_id=site_key.site_id,
        base_sha256=header.payload_sha256,
        num_examples=num_examples,
        clip_norm=header.clip_norm,
        private_key=site_key.private_key,
    )
    return UpdateInfo(
        path=Path(out_path), header=written, norm_before_clip=norm, clipped=norm > header.clip_norm
    )


# --------------------------------------------------------------------------------------------------
# aggregate_round (coordinator side)


@dataclass(frozen=True)
class AcceptedUpdate:
    """An update that entered the aggregate.

    Parameters
    ----------
    site_id : str
        The site.
    file : str
        The file's name (an update, or a masked input under secure aggregation).
    file_sha256 : str
        SHA-256 of the file's bytes.
    num_examples : int
        ``n_k`` the site declared.
    weight : float
        Its aggregation weight.
    l2_norm : float or None
        The update's L2 norm; None under secure aggregation, where the coordinator never sees it.
    """

    site_id: str
    file: str
    file_sha256: str
    num_examples: int
    weight: float
    l2_norm: float | None


@dataclass(frozen=True)
class RejectedUpdate:
    """An update left out, with the one-line reason."""

    file: str
    reason: str


@dataclass(frozen=True)
class DpRoundInfo:
    """The DP side of a round: noise, denominator and budget after it."""

    noise_multiplier: float
    clip_norm: float
    noise_std: float
    denominator: float
    delta: float
    epsilon_rdp: float
    epsilon_pld: float | None
    ledger_seq: int
    ledger_head: str


@dataclass(frozen=True)
class SecureAggregationSummary:
    """How a securely aggregated sum was obtained (the ``secure_aggregation`` part of a report).

    Parameters
    ----------
    threshold : int
        ``t``, the Shamir threshold and the fewest survivors a sum is released for.
    frac_bits : int
        Fractional bits of the fixed-point encoding mod 2^32.
    roster_sha256 : str
        SHA-256 of the roster file.
    request_sha256 : str
        SHA-256 of the unmask request.
    roster : tuple of str
        Sites that advertised keys (U1).
    shared : tuple of str
        Sites that sent shares (U2).
    survivors : tuple of str
        Sites whose masked input is in the sum (U3).
    revealed : tuple of str
        Sites that revealed shares (U4).
    """

    threshold: int
    frac_bits: int
    roster_sha256: str
    request_sha256: str
    roster: tuple[str, ...]
    shared: tuple[str, ...]
    survivors: tuple[str, ...]
    revealed: tuple[str, ...]


@dataclass(frozen=True)
class RoundReport:
    """What :func:`aggregate_round` did (also written as ``report.json``).

    Parameters
    ----------
    federation_id : str
        The federation.
    round : int
        The round aggregated.
    out_dir : Path
        The new round folder (round ``round + 1``).
    base_sha256 : str
        Payload hash of the global model the updates started from.
    global_sha256 : str
        Payload hash of the new global model.
    strategy : ServerOptimizer
        The server rule applied.
    accepted : tuple of AcceptedUpdate
        Aggregated updates, sorted by site.
    rejected : tuple of RejectedUpdate
        Updates left out with reasons, sorted by file.
    selected_sites : tuple of str
        Sites asked to train in this round.
    next_selected_sites : tuple of str
        Sites asked to train in the next round.
    optimizer_state_sha256 : str or None
        Payload hash of the persisted moments (adaptive strategies).
    dp : DpRoundInfo or None
        Noise and budget, when DP is on.
    secure_aggregation : SecureAggregationSummary or None, optional
        The protocol run, when the sum came from secure aggregation (``report.json`` then has a
        ``secure_aggregation`` key; plain rounds have none).
    """

    federation_id: str
    round: int
    out_dir: Path
    base_sha256: str
    global_sha256: str
    strategy: ServerOptimizer
    accepted: tuple[AcceptedUpdate, ...]
    rejected: tuple[RejectedUpdate, ...]
    selected_sites: tuple[str, ...]
    next_selected_sites: tuple[str, ...]
    optimizer_state_sha256: str | None
    dp: DpRoundInfo | None
    secure_aggregation: SecureAggregationSummary | None = None

    def to_json(self) -> str:
        """Return the ``report.json`` text (no timestamps or absolute paths, so reruns match)."""
        data = {
            "format": REPORT_FORMAT,
            "version": _VERSION,
            "federation_id": self.federation_id,
            "round": self.round,
            "next_round": self.round + 1,
            "base_sha256": self.base_sha256,
            "global_sha256": self.global_sha256,
            "strategy": asdict(self.strategy),
            "accepted": [asdict(a) for a in self.accepted],
            "rejected": [asdict(r) for r in self.rejected],
            "selected_sites": list(self.selected_sites),
            "next_selected_sites": list(self.next_selected_sites),
            "optimizer_state_sha256": self.optimizer_state_sha256,
            "dp": None if self.dp is None else asdict(self.dp),
        }
        if self.secure_aggregation is not None:
            data["secure_aggregation"] = asdict(self.secure_aggregation)
        return _pretty_json(data)


def _check_ledger_position(ledger_path: Path, info: RoundInfo, federation_id: str) -> LedgerSummary:
    """Verify the ledger and that it still holds every entry the round folder saw (no truncation)."""
    if not ledger_path.exists():
        if info.ledger_length:
            raise UpdateRejectedError(
                f"privacy ledger is missing but round {info.round} recorded {info.ledger_length} entries",
                ledger_path,
            )
        return LedgerSummary((), ZERO_SHA256)
    summary = verify_ledger(ledger_path, federation_id=federation_id)
    if len(summary.entries) < info.ledger_length or (
        info.ledger_length and summary.entries[info.ledger_length - 1].hash != info.ledger_head
    ):
        raise UpdateRejectedError(
            f"privacy ledger no longer holds the {info.ledger_length} entries round {info.round} recorded "
            "(truncated or replaced)",
            ledger_path,
        )
    return summary


def _collect_updates(
    update_paths: Sequence[str | Path],
    *,
    registry: Registry,
    plan: FederationPlan,
    info: RoundInfo,
    reference_shapes: Mapping[str, tuple[int, ...]],
    max_bytes: int,
) -> tuple[DeltaAccumulator, list[AcceptedUpdate], list[RejectedUpdate]]:
    rejected: list[RejectedUpdate] = []
    headers: dict[Path, TensorFileInfo] = {}
    seen: set[Path] = set()
    for raw in update_paths:
        path = Path(raw)
        key = path.resolve()
        if key in seen:
            rejected.append(RejectedUpdate(path.name, "the same file was listed twice"))
            continue
        seen.add(key)
        try:
            headers[path] = check_update_header(
                path,
                registry=registry,
                expected_round=info.round,
                expected_base_sha256=info.global_sha256,
                clip_norm=plan.clip_norm,
                max_bytes=max_bytes,
            )
        except UpdateRejectedError as exc:
            rejected.append(RejectedUpdate(path.name, exc.reason))
    by_site: dict[str, list[Path]] = {}
    for path, file_info in headers.items():
        by_site.setdefault(file_info.header.site_id, []).append(path)
    candidates: list[tuple[str, Path]] = []
    for site_id, paths in sorted(by_site.items()):
        if len(paths) > 1:
            for path in paths:
                rejected.append(
                    RejectedUpdate(
                        path.name,
                        f"site {site_id!r} sent {len(paths)} updates for round {info.round}; all rejected",
                    )
                )
        elif site_id not in info.selected_sites:
            rejected.append(
                RejectedUpdate(paths[0].name, f"site {site_id!r} was not selected for round {info.round}")
            )
        else:
            candidates.append((site_id, paths[0]))

    accumulator = DeltaAccumulator(reference_shapes)
    accepted: list[AcceptedUpdate] = []
    for site_id, path in candidates:  # sorted by site id: the summation order is fixed
        try:
            valid = validate_update(
                path,
                registry=registry,
                expected_round=info.round,
                expected_base_sha256=info.global_sha256,
                reference_shapes=reference_shapes,
                clip_norm=plan.clip_norm,
                max_bytes=max_bytes,
            )
            if valid.header != headers[path].header:
                raise UpdateRejectedError("file changed while it was being read", path)
        except UpdateRejectedError as exc:
            rejected.append(RejectedUpdate(path.name, exc.reason))
            continue
        n_k = valid.header.num_examples
        weight = float(n_k) if plan.dp is None else capped_weight(n_k, plan.dp.n_cap)
        accumulator.add(valid.tensors, weight)
        accepted.append(
            AcceptedUpdate(
                site_id=site_id,
                file=path.name,
                file_sha256=file_sha256(path),
                num_examples=n_k,
                weight=weight,
                l2_norm=valid.l2_norm,
            )
        )
        del valid
    rejected.sort(key=lambda r: (r.file, r.reason))
    return accumulator, accepted, rejected


@dataclass(frozen=True)
class OpenRound:
    """A round folder checked and loaded for aggregation (see :func:`open_round`).

    Parameters
    ----------
    plan : FederationPlan
        The federation's plan.
    registry : Registry
        Trusted site keys.
    info : RoundInfo
        The round being aggregated.
    round_path : Path
        Its folder.
    ledger_path : Path
        The privacy ledger (may not exist yet).
    model_header : FileHeader
        The verified header of the round's global model.
    global_tensors : dict of str to float32 ndarray
        The global model.
    state : OptimizerState
        The server optimizer state the step starts from.
    target : Path
        The next round folder, which does not exist yet.
    """

    plan: FederationPlan
    registry: Registry
    info: RoundInfo
    round_path: Path
    ledger_path: Path
    model_header: FileHeader
    global_tensors: Tensors
    state: OptimizerState
    target: Path

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The model's tensor names and shapes."""
        return {name: tuple(t.shape) for name, t in self.global_tensors.items()}


def open_round(
    round_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    coordinator_key: SiteKey,
    federation_dir: str | Path | None = None,
) -> OpenRound:
    """Load and verify everything an aggregation starts from, writing nothing.

    Checks the plan against the registry and the coordinator key, the round folder and its signed
    global model, that the next round folder does not exist yet, the optimizer state and (with DP)
    that the privacy ledger still holds every entry the round folder recorded.

    Parameters
    ----------
    round_dir : str or Path
        The folder of the round being aggregated (``round-NNNN``).
    out_dir : str or Path, optional
        The new round folder; default ``<federation>/round-(N+1)``. Must not exist.
    coordinator_key : SiteKey
        The coordinator's signing key; must match the plan.
    federation_dir : str or Path, optional
        Folder of ``plan.json``, ``registry.json`` and ``ledger.jsonl``; default ``round_dir``'s parent.

    Returns
    -------
    OpenRound
        The loaded round.

    Raises
    ------
    ConfigError
        Missing or inconsistent plan, registry, round folder or state; ``out_dir`` exists.
    UpdateRejectedError
        The global model or the privacy ledger fails verification.
    """
    round_path = Path(round_dir)
    fed = Path(federation_dir) if federation_dir is not None else round_path.parent
    plan = load_plan(fed / PLAN_FILE)
    registry = load_registry(fed / REGISTRY_FILE)
    _check_plan_against(plan, registry, coordinator_key, fed / PLAN_FILE)
    info = load_round_info(round_path)
    if info.federation_id != plan.federation_id:
        raise ConfigError(
            f"round folder belongs to federation {info.federation_id!r}", round_path / ROUND_FILE
        )
    header, global_tensors = validate_model(
        round_path / GLOBAL_FILE,
        federation_id=plan.federation_id,
        coordinator_id=plan.coordinator_id,
        coordinator_public_key=plan.coordinator_key_bytes,
        expected_round=info.round,
    )
    if header.payload_sha256 != info.global_sha256:
        raise ConfigError(
            "round.json names another global model than global.safetensors", round_path / ROUND_FILE
        )
    target = Path(out_dir) if out_dir is not None else fed / round_dir_name(info.round + 1)
    if target.exists():
        raise ConfigError("output round folder already exists; refusing to overwrite it", target)
    shapes = {name: tuple(t.shape) for name, t in global_tensors.items()}
    state = load_optimizer_state(round_path, plan=plan, round_number=info.round, reference_shapes=shapes)
    ledger_path = fed / LEDGER_FILE
    if plan.dp is not None:
        _check_ledger_position(ledger_path, info, plan.federation_id)
    return OpenRound(
        plan=plan,
        registry=registry,
        info=info,
        round_path=round_path,
        ledger_path=ledger_path,
        model_header=header,
        global_tensors=global_tensors,
        state=state,
        target=target,
    )


def check_release_budget(
    opened: OpenRound, n_sites: int, max_epsilon: float | None = None
) -> LedgerEntry | None:
    """Check the privacy budget of releasing this round and return its ledger entry, unwritten.

    Call it before any noise is drawn and, under secure aggregation, before any mask is removed:
    a refused round then releases nothing and spends nothing.

    Parameters
    ----------
    opened : OpenRound
        The round (:func:`open_round`).
    n_sites : int
        Number of updates in the sum.
    max_epsilon : float, optional
        Limit in addition to the plan's ``dp.max_epsilon`` (the smaller applies).

    Returns
    -------
    LedgerEntry or None
        The entry to commit with the release; None when DP is off.

    Raises
    ------
    ecgdig.errors.PrivacyBudgetError
        The release would push the RDP epsilon above the limit.
    """
    plan = opened.plan
    if plan.dp is None:
        return None
    limits = [x for x in (plan.dp.max_epsilon, max_epsilon) if x is not None]
    return prepare_ledger_entry(
        opened.ledger_path,
        federation_id=plan.federation_id,
        round=opened.info.round,
        privacy=plan.round_privacy(),
        clip_norm=plan.clip_norm,
        denominator=_denominator(plan),
        n_sites=n_sites,
        delta=plan.dp.delta,
        max_epsilon=min(limits) if limits else None,
    )


def release_round(
    opened: OpenRound,
    weighted_sum: Mapping[str, NDArray[np.floating]],
    *,
    total_weight: float,
    accepted: Sequence[AcceptedUpdate],
    rejected: Sequence[RejectedUpdate],
    ledger_entry: LedgerEntry | None,
    coordinator_key: SiteKey,
    rng: int | np.random.Generator | None = None,
    secure_aggregation: SecureAggregationSummary | None = None,
) -> RoundReport:
    """Turn a weighted sum of clipped updates into the next round folder.

    Everything after summation, shared by plain and secure aggregation: with DP, add
    ``N(0, (z S)^2)`` to the sum and divide by the fixed denominator, else divide by the total
    weight; apply the server optimizer; record the release in the ledger (before publishing); write
    the next round folder atomically (global model, ``round.json``, optimizer state, ``report.json``).

    Parameters
    ----------
    opened : OpenRound
        The round (:func:`open_round`).
    weighted_sum : mapping of str to ndarray
        ``sum_k w_k delta_k`` over the accepted updates, float64 preferred.
    total_weight : float
        ``sum_k w_k`` (the denominator of the mean when DP is off).
    accepted, rejected : sequence
        What entered the sum and what was left out, for the report.
    ledger_entry : LedgerEntry or None
        From :func:`check_release_budget` (required when DP is on).
    coordinator_key : SiteKey
        Signs the new global model.
    rng : int, Generator or None, optional
        Source of DP noise and site sampling; None seeds from the OS CSPRNG.
    secure_aggregation : SecureAggregationSummary or None, optional
        How the sum was obtained, when it came from secure aggregation (recorded in the report).

    Returns
    -------
    RoundReport
        The report, also written as ``report.json``.

    Raises
    ------
    ModelFileError
        The server step produced NaN or Inf (nothing written).
    ConfigError
        DP is on and no ledger entry was given.
    """
    plan, info, header = opened.plan, opened.info, opened.model_header
    generator: np.random.Generator | None = None
    dp_info: DpRoundInfo | None = None
    if plan.dp is not None:
        if ledger_entry is None:
            raise ConfigError("a DP release needs its ledger entry (check_release_budget) first")
        generator = make_rng(rng)
        noise_std = plan.dp.noise_multiplier * plan.clip_norm
        noised = add_gaussian_noise(weighted_sum, noise_std, generator)
        mean_delta = fixed_denominator_mean(noised, _denominator(plan))
        dp_info = DpRoundInfo(
            noise_multiplier=plan.dp.noise_multiplier,
            clip_norm=plan.clip_norm,
            noise_std=noise_std,
            denominator=_denominator(plan),
            delta=plan.dp.delta,
            epsilon_rdp=ledger_entry.epsilon_rdp,
            epsilon_pld=ledger_entry.epsilon_pld,
            ledger_seq=ledger_entry.seq,
            ledger_head=ledger_entry.hash,
        )
    else:
        if total_weight <= 0:
            raise ValueError("cannot take the mean: the total weight is zero")
        mean_delta = fixed_denominator_mean(weighted_sum, total_weight)

    new_global, new_state = server_step(plan.strategy, opened.global_tensors, mean_delta, opened.state)
    if not all(np.isfinite(t).all() for t in new_global.values()):
        raise ModelFileError(f"round {info.round}: the server step produced NaN or Inf; nothing written")
    if plan.sampling.mode != "full" and generator is None:
        generator = make_rng(rng)
    next_selected = tuple(
        select_sites(
            list(opened.registry.sites),
            sampling=plan.sampling.mode,
            q=plan.sampling.q,
            sample_size=plan.sampling.sample_size,
            rng=generator,
        )
    )
    # Under DP the released model carries no example count: it would reveal who took part.
    model_examples = 0 if plan.dp is not None else sum(a.num_examples for a in accepted)
    model_bytes, new_header = _model_file_bytes(
        new_global,
        plan=plan,
        round_number=info.round + 1,
        base_sha256=header.payload_sha256,
        num_examples=model_examples,
        coordinator_key=coordinator_key,
    )

    files: dict[str, bytes | str] = {GLOBAL_FILE: model_bytes}
    state_sha: str | None = None
    if plan.strategy.adaptive:
        files[STATE_FILE], state_sha = _optimizer_state_bytes(
            new_state,
            federation_id=plan.federation_id,
            round_number=info.round + 1,
            strategy=plan.strategy.name,
        )
    ledger_length, ledger_head = info.ledger_length, info.ledger_head
    if ledger_entry is not None:
        # Record the release before publishing it: a crash in between over-counts, never under-counts.
        summary = commit_ledger_entry(opened.ledger_path, ledger_entry)
        ledger_length, ledger_head = len(summary.entries), summary.head_hash
    report = RoundReport(
        federation_id=plan.federation_id,
        round=info.round,
        out_dir=opened.target,
        base_sha256=header.payload_sha256,
        global_sha256=new_header.payload_sha256,
        strategy=plan.strategy,
        accepted=tuple(accepted),
        rejected=tuple(rejected),
        selected_sites=info.selected_sites,
        next_selected_sites=next_selected,
        optimizer_state_sha256=state_sha,
        dp=dp_info,
        secure_aggregation=secure_aggregation,
    )
    next_info = RoundInfo(
        federation_id=plan.federation_id,
        round=info.round + 1,
        global_sha256=new_header.payload_sha256,
        selected_sites=next_selected,
        ledger_length=ledger_length,
        ledger_head=ledger_head,
    )
    files[ROUND_FILE] = next_info.to_json()
    files[REPORT_FILE] = report.to_json()
    _write_round_folder(opened.target, files)
    return report


def aggregate_round(
    round_dir: str | Path,
    update_paths: Sequence[str | Path],
    out_dir: str | Path | None = None,
    *,
    coordinator_key: SiteKey,
    federation_dir: str | Path | None = None,
    max_epsilon: float | None = None,
    rng: int | np.random.Generator | None = None,
    max_bytes: int = MAX_FILE_BYTES,
) -> RoundReport:
    """Aggregate one round's update files into the next round folder.

    Steps: load and verify the plan, registry, round folder, global model and optimizer state
    (:func:`open_round`); validate every update (reasons collected, bad ones skipped, duplicates and
    unselected sites refused); stream the valid ones into a weighted sum in site order; refuse below
    the plan's ``min_sites``; with DP, check the budget before any noise (:func:`check_release_budget`);
    then :func:`release_round`: noise and fixed denominator under DP, the server optimizer, the ledger
    entry, and the next round folder written atomically. On any refusal nothing is written and no
    noise is drawn.

    Parameters
    ----------
    round_dir : str or Path
        The folder of the round whose updates are aggregated (``round-NNNN``).
    update_paths : sequence of str or Path
        The update files received (any order; the result does not depend on it).
    out_dir : str or Path, optional
        The new round folder; default ``<federation>/round-(N+1)``. Must not exist.
    coordinator_key : SiteKey
        Signs the new global model; must match the plan.
    federation_dir : str or Path, optional
        Folder of ``plan.json``, ``registry.json`` and ``ledger.jsonl``; default ``round_dir``'s
        parent.
    max_epsilon : float, optional
        Refuse the round if the RDP epsilon after it would exceed this (in addition to the plan's
        ``dp.max_epsilon``; the smaller applies).
    rng : int, Generator or None, optional
        Source of DP noise and site sampling; None (production) seeds from the OS CSPRNG. A fixed
        seed makes DP noise predictable: only for tests and simulations.
    max_bytes : int, optional
        Size bound per update file.

    Returns
    -------
    RoundReport
        Accepted and rejected files, hashes, and the DP spend.

    Raises
    ------
    ParticipationError
        Fewer valid updates than ``min_sites`` (its ``rejected`` attribute lists the reasons).
    ecgdig.federated.privacy.PrivacyBudgetError
        The round would exceed the epsilon limit.
    ConfigError
        Missing or inconsistent plan, registry, round folder or state; ``out_dir`` exists.
    UpdateRejectedError
        The global model or the privacy ledger fails verification.
    """
    opened = open_round(round_dir, out_dir, coordinator_key=coordinator_key, federation_dir=federation_dir)
    plan, info = opened.plan, opened.info
    accumulator, accepted, rejected = _collect_updates(
        update_paths,
        registry=opened.registry,
        plan=plan,
        info=info,
        reference_shapes=opened.shapes,
        max_bytes=max_bytes,
    )
    if len(accepted) < plan.min_sites:
        reasons = "; ".join(f"{r.file}: {r.reason}" for r in rejected[:3])
        more = f" (and {len(rejected) - 3} more)" if len(rejected) > 3 else ""
        raise ParticipationError(
            f"round {info.round}: {len(accepted)} valid update(s), the plan needs {plan.min_sites}; "
            "nothing written" + (f"; rejected: {reasons}{more}" if rejected else ""),
            opened.round_path,
            rejected=rejected,
        )
    ledger_entry = check_release_budget(opened, len(accepted), max_epsilon)  # before any noise is drawn
    return release_round(
        opened,
        accumulator.weighted_sum,
        total_weight=accumulator.total_weight,
        accepted=accepted,
        rejected=rejected,
        ledger_entry=ledger_entry,
        coordinator_key=coordinator_key,
        rng=rng,
    )


def _denominator(plan: FederationPlan) -> float:
    if plan.dp is None or plan.dp.denominator is None:
        raise ConfigError("the plan has no DP denominator: run init_federation first")
    return float(plan.dp.denominator)
