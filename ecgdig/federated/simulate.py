"""Federated training simulated on one machine, through the real file protocol: ``fed-simulate``.

N sites are made non-IID by construction: each renders its own disjoint slice of WFDB records with
its own site profile (layout mix, grid style, scanner, noise; ``ecgdig/profiles/site-*.yaml``).
Every strategy then runs in its own federation folder with exactly the code a real federation
runs: :func:`~ecgdig.federated.keys.create_registry` and :func:`~ecgdig.federated.keys.add_site`,
:func:`~ecgdig.federated.coordinator.init_federation`, each site's
:func:`~ecgdig.federated.site.train_site_update` (signed, clipped update files) and the
coordinator's :func:`~ecgdig.federated.coordinator.aggregate_round` (validation, weighted mean,
central DP, server optimizer, signed next round folder). There is no simulation-only math.

The centralized baseline trains the same network with the same :func:`~ecgdig.model.train.train`
on the union of the sites' crops, for the same number of optimizer steps per round as all sites
together (``n_sites * local_steps``). Like a site, it starts each round with a fresh AdamW.

After every round the global model is scored by validation Dice on common held-out crops (records
no site holds, rendered with a mix of the site profiles); every ``snr_every`` rounds a few
held-out records are rendered with truth by every site profile, digitized with it and scored
(Challenge SNR), with the same :func:`ecgdig.model.run.validation_snr` that ``ecgdig train`` uses.

Pages are rendered once and their crops held in memory (:meth:`FixedCrops.from_stream`); each
round reshuffles them. Every run's folder keeps its finished rounds and metrics, so a killed
simulation restarted with the same arguments continues after the last finished round.

Output folder::

    out/
      simulation.json        settings and the record split (a restart must match it)
      runs/<run>/            one per strategy (and DP variant): federation/, keys/, updates/, snr/,
                             rounds.json (metrics so far)
      rounds.csv             strategy, dp, round, val_dice, snr_db, epsilon, seconds, ...
      convergence.png        validation Dice (and SNR) against round, DP dashed
      summary.md             the final table
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecgdig.errors import ConfigError
from ecgdig.federated.coordinator import (
    GLOBAL_FILE,
    PLAN_FILE,
    REGISTRY_FILE,
    DpPlan,
    FederationPlan,
    RoundReport,
    aggregate_round,
    init_federation,
    load_plan,
    round_dir_name,
)
from ecgdig.federated.files import read_file_info, read_tensors
from ecgdig.federated.keys import SiteKey, add_site, create_registry, generate_site_key, load_site_key
from ecgdig.federated.secagg import DropoutStage, default_threshold, run_secure_round
from ecgdig.federated.site import (
    MODEL_SPEC_FILE,
    build_global_network,
    read_model_spec,
    train_site_update,
    write_model_spec,
)
from ecgdig.federated.strategies import make_server_optimizer
from ecgdig.io.atomic import atomic_write_bytes, atomic_write_text
from ecgdig.model.data import FixedCrops, RenderedPages
from ecgdig.model.files import ModelHeader, load_model, model_tensors, save_model
from ecgdig.model.inference import torch_threads
from ecgdig.model.network import DEFAULT_ARCHITECTURE, TraceUnet, UnetArchitecture, build_network
from ecgdig.model.run import validation_snr
from ecgdig.model.train import evaluate_dice, train
from ecgdig.render import find_records

__all__ = [
    "CENTRALIZED",
    "SIMULATION_STRATEGIES",
    "SITE_PROFILES",
    "RoundRow",
    "RunSpec",
    "SimulationResult",
    "SimulationSettings",
    "aggregate_site_updates",
    "ordering_check",
    "simulate",
]

logger = logging.getLogger(__name__)

#: The shipped federated site profiles; site ``k`` renders with profile ``k mod 4``.
SITE_PROFILES: tuple[str, ...] = ("site-6x2-blue", "site-ge-orange", "site-grey-scanner", "site-phone-pink")
#: Name of the centralized baseline in ``strategies``.
CENTRALIZED = "centralized"
#: Strategies a simulation can compare.
SIMULATION_STRATEGIES: tuple[str, ...] = ("fedavg", "fedprox", "fedadam", "fedyogi", CENTRALIZED)

_SETTINGS_FILE = "simulation.json"
_SETTINGS_FORMAT = "ecgdig-simulation"
_ROWS_FILE = "rounds.json"
_CSV_FIELDS = (
    "strategy",
    "dp",
    "round",
    "val_dice",
    "snr_db",
    "epsilon",
    "seconds",
    "mean_update_norm",
    "clipped_sites",
)
# Seed-derivation tags: each use of randomness gets its own stream of the one user seed.
_TAG_SPLIT, _TAG_SITE, _TAG_VAL, _TAG_SHUFFLE, _TAG_NOISE, _TAG_SNR = range(1, 7)


def _derive_seed(*parts: int) -> int:
    """Return a non-negative 31-bit seed from integer parts (``SeedSequence`` mixing, no global state)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] >> 1)


@dataclass(frozen=True)
class SimulationSettings:
    """Everything that determines a simulation's result (stored in ``simulation.json``).

    Parameters
    ----------
    n_sites : int
        Number of simulated hospitals (>= 2).
    rounds : int
        Federated rounds per strategy.
    strategies : tuple of str
        Any of ``fedavg``, ``fedprox``, ``fedadam``, ``fedyogi`` and ``centralized``.
    dp_noise : float or None
        Noise multiplier ``z`` of the DP variants (every federated strategy runs once more with
        ``DpPlan(noise_multiplier=z)``); None runs no DP variant. The centralized baseline has none.
    local_steps : int
        AdamW steps each site takes per round (``batch_size`` crops each).
    batch_size : int
        Crops per step.
    lr : float
        Local (and centralized) AdamW learning rate, constant.
    proximal_mu : float
        FedProx's ``mu``.
    adaptive_server_lr : float or None
        Server learning rate ``eta`` of FedAdam and FedYogi; None takes the strategy's default
        (:data:`ecgdig.federated.strategies.DEFAULT_SERVER_LR`). FedAvg and FedProx keep ``eta = 1``.
    clip_norm : float
        ``S``: every update is clipped to this L2 norm, with and without DP.
    crop_px : int
        Training and validation crop side (a multiple of the network's input multiple).
    pages_per_site : int
        Records each site renders (one page each); also its aggregation weight ``n_k``.
    crops_per_page : int
        Crops cut from each site page.
    val_records : int
        Held-out records rendered (with every site profile in turn) for the validation crops.
    val_crops_per_page : int
        Crops per validation page.
    snr_records : int
        Held-out records for the SNR check, each rendered with every site profile in use,
        digitized with the global model and scored (:func:`ecgdig.model.run.validation_snr`);
        0: no SNR.
    snr_every : int
        Digitize every this many rounds (and after the last round).
    seed : int
        The one seed: record split, rendering, shuffling, initial model, DP noise.
    profiles : tuple of str
        Site profiles (names or YAML paths), assigned to sites in turn.
    architecture : UnetArchitecture
        The network (default: the shipped 0.8 M-parameter U-Net).
    secagg : bool
        Aggregate every federated round with secure aggregation
        (:func:`ecgdig.federated.secagg.run_secure_round`): the coordinator sees only the masked
        sum. The plan's participation threshold becomes the Shamir threshold ``t``.
    dropouts : int
        With ``secagg``, sites that vanish in every round (at most ``n_sites - t``): in even rounds
        before sending their masked input (their pairwise masks are recovered from the others'
        shares), in odd rounds after it (their self mask is recovered), so both recovery paths run.
    """

    n_sites: int = 4
    rounds: int = 20
    strategies: tuple[str, ...] = ("fedavg", "fedprox", "fedadam", CENTRALIZED)
    dp_noise: float | None = 1.0
    local_steps: int = 16
    batch_size: int = 8
    lr: float = 1e-3
    proximal_mu: float = 0.01
    adaptive_server_lr: float | None = None
    clip_norm: float = 5.0
    crop_px: int = 128
    pages_per_site: int = 24
    crops_per_page: int = 12
    val_records: int = 16
    val_crops_per_page: int = 8
    snr_records: int = 1
    snr_every: int = 10
    seed: int = 0
    profiles: tuple[str, ...] = SITE_PROFILES
    architecture: UnetArchitecture = field(default_factory=lambda: DEFAULT_ARCHITECTURE)
    secagg: bool = False
    dropouts: int = 0

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(f"invalid simulation settings: {problems[0]}")

    def problems(self) -> list[str]:
        """Return what is wrong with these settings (empty when they are valid)."""
        out: list[str] = []
        for name in (
            "n_sites", "rounds", "local_steps", "batch_size", "crop_px", "pages_per_site",
            "crops_per_page", "val_records", "val_crops_per_page", "snr_every",
        ):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                out.append(f"{name} must be a positive integer, got {value!r}")
        if self.n_sites < 2:
            out.append("a federation needs at least 2 sites")
        if (
            isinstance(self.snr_records, bool)
            or not isinstance(self.snr_records, int)
            or self.snr_records < 0
        ):
            out.append(f"snr_records must be a non-negative integer, got {self.snr_records!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            out.append(f"seed must be a non-negative integer, got {self.seed!r}")
        if not self.strategies:
            out.append("no strategy given")
        unknown = [s for s in self.strategies if s not in SIMULATION_STRATEGIES]
        if unknown:
            out.append(f"unknown strategy {unknown[0]!r}; choose from {', '.join(SIMULATION_STRATEGIES)}")
        if len(set(self.strategies)) != len(self.strategies):
            out.append("a strategy is listed twice")
        for name in ("lr", "clip_norm"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                out.append(f"{name} must be a finite positive number, got {value!r}")
        if not (math.isfinite(self.proximal_mu) and self.proximal_mu > 0) and "fedprox" in self.strategies:
            out.append("FedProx needs proximal_mu > 0")
        if self.adaptive_server_lr is not None and not (
            math.isfinite(self.adaptive_server_lr) and self.adaptive_server_lr > 0
        ):
            out.append(
                f"adaptive_server_lr must be a finite positive number, got {self.adaptive_server_lr!r}"
            )
        if self.dp_noise is not None and not (math.isfinite(self.dp_noise) and self.dp_noise > 0):
            out.append(f"dp_noise must be a finite positive number or None, got {self.dp_noise!r}")
        if isinstance(self.crop_px, int) and self.crop_px % self.architecture.input_multiple:
            out.append(
                f"crop_px must be a multiple of {self.architecture.input_multiple}, got {self.crop_px}"
            )
        if not self.profiles:
            out.append("no site profile given")
        if isinstance(self.dropouts, bool) or not isinstance(self.dropouts, int) or self.dropouts < 0:
            out.append(f"dropouts must be a non-negative integer, got {self.dropouts!r}")
        elif self.dropouts and not self.secagg:
            out.append("dropouts need secure aggregation (a plain round needs every site)")
        elif self.secagg and isinstance(self.n_sites, int) and self.n_sites >= 2:
            spare = self.n_sites - default_threshold(self.n_sites)
            if self.dropouts > spare:
                out.append(
                    f"{self.dropouts} dropouts leave fewer than t = {default_threshold(self.n_sites)} "
                    f"of {self.n_sites} sites (at most {spare})"
                )
        return out

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form stored in ``simulation.json``."""
        data = asdict(self)
        data["strategies"] = list(self.strategies)
        data["profiles"] = list(self.profiles)
        data["architecture"] = self.architecture.to_dict()
        return data

    def runs(self) -> list[RunSpec]:
        """Return the runs in order: every strategy, then the DP variant of every federated one."""
        plain = [RunSpec(s, False) for s in self.strategies]
        noised = [RunSpec(s, True) for s in self.strategies if s != CENTRALIZED and self.dp_noise is not None]
        return plain + noised


@dataclass(frozen=True)
class RunSpec:
    """One curve of the simulation: a strategy, with or without central DP.

    Parameters
    ----------
    strategy : str
        ``fedavg``, ``fedprox``, ``fedadam``, ``fedyogi`` or ``centralized``.
    dp : bool
        Whether the coordinator adds DP noise.
    """

    strategy: str
    dp: bool

    @property
    def name(self) -> str:
        """Folder and label of the run, e.g. ``fedadam-dp``."""
        return f"{self.strategy}-dp" if self.dp else self.strategy


@dataclass(frozen=True)
class RoundRow:
    """The global model after ``round`` rounds of one run (``round`` 0: the initial model).

    Attributes
    ----------
    strategy : str
        The run's strategy.
    dp : bool
        Whether central DP was on.
    round : int
        Aggregations done.
    val_dice : float
        Dice on the common validation crops.
    snr_db : float or None
        Challenge SNR (dB) of the digitized SNR pages, missing leads counted as 0 dB, mean over the
        site profiles; None when not computed this round.
    epsilon : float or None
        RDP epsilon spent so far (DP runs; from the privacy ledger).
    seconds : float
        Wall time of the round's local training and aggregation (evaluation excluded).
    mean_update_norm : float or None
        Mean L2 norm of the site updates before clipping (federated runs).
    clipped_sites : int or None
        Site updates that clipping scaled down.
    """

    strategy: str
    dp: bool
    round: int
    val_dice: float
    snr_db: float | None = None
    epsilon: float | None = None
    seconds: float = 0.0
    mean_update_norm: float | None = None
    clipped_sites: int | None = None

    @property
    def run(self) -> str:
        """The run's label."""
        return RunSpec(self.strategy, self.dp).name


@dataclass(frozen=True)
class SimulationResult:
    """What :func:`simulate` produced.

    Attributes
    ----------
    out_dir : Path
        The simulation folder.
    rows : tuple of RoundRow
        Every run's rounds, run by run.
    csv_path, plot_path, summary_path : Path
        ``rounds.csv``, ``convergence.png``, ``summary.md``.
    seconds : float
        Wall time of this call.
    """

    out_dir: Path
    rows: tuple[RoundRow, ...]
    csv_path: Path
    plot_path: Path
    summary_path: Path
    seconds: float

    def final(self) -> dict[str, RoundRow]:
        """Return the last row of every run, by run label."""
        last: dict[str, RoundRow] = {}
        for row in self.rows:
            last[row.run] = row
        return last


# --------------------------------------------------------------------------------------------------
# Data: disjoint record slices, rendered once


@dataclass(frozen=True)
class _Split:
    sites: tuple[tuple[Path, ...], ...]
    validation: tuple[Path, ...]
    snr: tuple[Path, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "sites": [[p.name for p in s] for s in self.sites],
            "validation": [p.name for p in self.validation],
            "snr": [p.name for p in self.snr],
        }


def _split_records(records: Sequence[Path], settings: SimulationSettings) -> _Split:
    """Shuffle the records with the seed and cut disjoint slices: validation, SNR, sites."""
    need = settings.val_records + settings.snr_records + settings.n_sites * settings.pages_per_site
    if len(records) < need:
        raise ConfigError(
            f"the simulation needs {need} records ({settings.val_records} validation, "
            f"{settings.snr_records} SNR, {settings.n_sites} sites x {settings.pages_per_site}); "
            f"found {len(records)}"
        )
    names = [p.name for p in records]
    if len(set(names)) != len(names):
        raise ConfigError("two records share a name; the split would be ambiguous")
    order = np.random.default_rng(_derive_seed(settings.seed, _TAG_SPLIT)).permutation(len(records))
    shuffled = [records[int(i)] for i in order]
    val = tuple(shuffled[: settings.val_records])
    snr = tuple(shuffled[settings.val_records : settings.val_records + settings.snr_records])
    start = settings.val_records + settings.snr_records
    per = settings.pages_per_site
    sites = tuple(tuple(shuffled[start + k * per : start + (k + 1) * per]) for k in range(settings.n_sites))
    return _Split(sites=sites, validation=val, snr=snr)


def _site_profile(settings: SimulationSettings, k: int) -> str:
    return settings.profiles[k % len(settings.profiles)]


def _site_id(k: int) -> str:
    return f"site-{chr(ord('a') + k)}" if k < 26 else f"site-{k:03d}"


Crops = list[tuple[torch.Tensor, torch.Tensor]]


def _render_site_crops(split: _Split, settings: SimulationSettings) -> list[Crops]:
    """Render each site's pages with its own profile, once; the crops stay in memory."""
    out = []
    for k, records in enumerate(split.sites):
        stream = RenderedPages(
            list(records),
            [_site_profile(settings, k)],
            seed=_derive_seed(settings.seed, _TAG_SITE, k),
            crop_px=settings.crop_px,
            crops_per_page=settings.crops_per_page,
        )
        out.append(FixedCrops.from_stream(stream).crops)
    return out


def _render_validation(split: _Split, settings: SimulationSettings) -> FixedCrops:
    """Render the validation crops: held-out records, each page with one site profile (a mix)."""
    crops: Crops = []
    used = sorted({_site_profile(settings, k) for k in range(settings.n_sites)})
    for j, profile in enumerate(used):
        records = list(split.validation[j :: len(used)])
        if not records:
            continue
        stream = RenderedPages(
            records,
            [profile],
            seed=_derive_seed(settings.seed, _TAG_VAL, j),
            crop_px=settings.crop_px,
            crops_per_page=settings.val_crops_per_page,
        )
        crops.extend(FixedCrops.from_stream(stream).crops)
    return FixedCrops(crops)


def _shuffled(crops: Crops, settings: SimulationSettings, who: int, round_number: int) -> FixedCrops:
    """Return the crops in a new order each round (``FixedCrops`` would repeat epoch 0's order)."""
    return FixedCrops(crops, seed=_derive_seed(settings.seed, _TAG_SHUFFLE, who, round_number))


# --------------------------------------------------------------------------------------------------
# One federated run


def aggregate_site_updates(
    round_dir: Path,
    update_paths: Sequence[Path],
    *,
    coordinator_key: SiteKey,
    rng: np.random.Generator,
) -> RoundReport:
    """Aggregate one round from the sites' update files: the coordinator's step of the simulation.

    This is the one place the simulated round meets the coordinator; another aggregation protocol
    (secure aggregation, say) plugs in here, fed with the same update files.

    Parameters
    ----------
    round_dir : Path
        The round folder (``round-NNNN``) whose global model the sites trained from.
    update_paths : sequence of Path
        The signed update files the sites wrote.
    coordinator_key : SiteKey
        The coordinator's signing key.
    rng : numpy.random.Generator
        Seeded DP noise: reproducible simulations only, never a real federation.

    Returns
    -------
    RoundReport
        What :func:`~ecgdig.federated.coordinator.aggregate_round` wrote.
    """
    return aggregate_round(round_dir, update_paths, coordinator_key=coordinator_key, rng=rng)


@dataclass
class _FederatedRun:
    """One strategy's federation on disk, and the keys of its coordinator and sites."""

    root: Path
    plan: FederationPlan
    spec: ModelHeader
    coordinator: SiteKey
    sites: dict[str, SiteKey]

    @property
    def federation(self) -> Path:
        return self.root / "federation"

    def round_dir(self, number: int) -> Path:
        return self.federation / round_dir_name(number)

    def last_round(self) -> int:
        done = [int(p.name[6:]) for p in self.federation.glob("round-[0-9][0-9][0-9][0-9]") if p.is_dir()]
        return max(done, default=0)


def _plan_for(run: RunSpec, settings: SimulationSettings) -> FederationPlan:
    # Sites and the centralized baseline step by local_steps, not epochs: epochs is set per call.
    return FederationPlan(
        federation_id=f"sim-{run.name}",
        clip_norm=float(settings.clip_norm),
        strategy=make_server_optimizer(
            run.strategy,  # type: ignore[arg-type]
            server_lr=settings.adaptive_server_lr if run.strategy in ("fedadam", "fedyogi") else None,
        ),
        proximal_mu=float(settings.proximal_mu) if run.strategy == "fedprox" else 0.0,
        rounds=settings.rounds,
        # Under secure aggregation the round must survive dropouts down to the Shamir threshold.
        min_sites=default_threshold(settings.n_sites) if settings.secagg else settings.n_sites,
        dp=DpPlan(noise_multiplier=float(settings.dp_noise)) if run.dp and settings.dp_noise else None,
    )


def _open_federation(
    run: RunSpec, root: Path, settings: SimulationSettings, initial: TraceUnet
) -> _FederatedRun:
    """Create the run's federation exactly as an operator would, or reopen it to resume."""
    fed = root / "federation"
    keys = root / "keys"
    site_ids = [_site_id(k) for k in range(settings.n_sites)]
    if (fed / PLAN_FILE).is_file():
        return _FederatedRun(
            root=root,
            plan=load_plan(fed / PLAN_FILE),
            spec=read_model_spec(fed / MODEL_SPEC_FILE),
            coordinator=load_site_key(keys / "coordinator.key.pem", "coordinator"),
            sites={s: load_site_key(keys / f"{s}.key.pem", s) for s in site_ids},
        )
    # A folder left by a run killed before plan.json was written holds nothing worth keeping.
    shutil.rmtree(root, ignore_errors=True)
    fed.mkdir(parents=True)
    create_registry(fed / REGISTRY_FILE, f"sim-{run.name}")
    sites = {}
    for site_id in site_ids:
        paths = generate_site_key(site_id, keys)
        add_site(fed / REGISTRY_FILE, paths.public_key)
        sites[site_id] = load_site_key(paths.private_key, site_id)
    coordinator = load_site_key(generate_site_key("coordinator", keys).private_key, "coordinator")
    spec = ModelHeader(architecture=settings.architecture)
    write_model_spec(fed / MODEL_SPEC_FILE, spec)
    init = init_federation(
        fed, model_tensors(initial), _plan_for(run, settings), coordinator_key=coordinator, rng=settings.seed
    )
    return _FederatedRun(root=root, plan=init.plan, spec=spec, coordinator=coordinator, sites=sites)


def _federated_round(
    fed: _FederatedRun, round_number: int, site_crops: Sequence[Crops], settings: SimulationSettings
) -> tuple[RoundReport, list[float]]:
    """Every site trains from the round's global model and writes its signed update; then aggregate.

    Returns the coordinator's report and each site's update norm before clipping.
    """
    global_path = fed.round_dir(round_number) / GLOBAL_FILE
    update_dir = fed.root / "updates" / round_dir_name(round_number)
    update_dir.mkdir(parents=True, exist_ok=True)
    updates: list[Path] = []
    norms: list[float] = []
    examples = settings.local_steps * settings.batch_size
    for k, (site_id, key) in enumerate(fed.sites.items()):
        crops = _shuffled(site_crops[k], settings, k, round_number)
        site = train_site_update(
            global_path,
            crops,
            update_dir / f"{site_id}.safetensors",
            key,
            plan=fed.plan,
            spec=fed.spec,
            num_examples=settings.pages_per_site,
            epochs=examples / crops.epoch_size,
            batch_size=settings.batch_size,
            lr=settings.lr,
            seed=settings.seed,
        )
        updates.append(site.update.path)
        norms.append(site.update.norm_before_clip)
    noise = np.random.default_rng(_derive_seed(settings.seed, _TAG_NOISE, round_number))
    if settings.secagg:
        report = _secure_round(fed, round_number, updates, settings, noise)
    else:
        report = aggregate_site_updates(
            fed.round_dir(round_number), updates, coordinator_key=fed.coordinator, rng=noise
        )
    return report, norms


def _secure_round(
    fed: _FederatedRun,
    round_number: int,
    update_paths: Sequence[Path],
    settings: SimulationSettings,
    rng: np.random.Generator,
) -> RoundReport:
    """Aggregate the sites' trained models with the whole secure aggregation protocol.

    Each site's model is ``w_global + update`` from its own signed, clipped update file, so the
    protocol re-derives exactly that update (clipping an already clipped delta changes nothing).
    """
    round_dir = fed.round_dir(round_number)
    base = read_tensors(read_file_info(round_dir / GLOBAL_FILE))
    local_models = {}
    for path in update_paths:
        info = read_file_info(path)
        delta = read_tensors(info)
        local_models[info.header.site_id] = {name: base[name] + delta[name] for name in base}
    sites = sorted(local_models)
    stage: DropoutStage = "mask" if round_number % 2 == 0 else "unmask"
    first = round_number * settings.dropouts
    dropped = {sites[(first + j) % len(sites)]: stage for j in range(settings.dropouts)}
    work = fed.root / "secagg" / round_dir_name(round_number)
    shutil.rmtree(work, ignore_errors=True)  # a run killed mid-protocol starts the round afresh
    result = run_secure_round(
        round_dir,
        local_models,
        work,
        site_keys=fed.sites,
        coordinator_key=fed.coordinator,
        num_examples=dict.fromkeys(sites, settings.pages_per_site),
        dropouts=dropped,
        rng=rng,
    )
    return result.report


# --------------------------------------------------------------------------------------------------
# Rows on disk


def _row_to_dict(row: RoundRow) -> dict[str, Any]:
    return asdict(row)


def _load_rows(path: Path) -> list[RoundRow]:
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [RoundRow(**item) for item in data["rows"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"unreadable simulation metrics ({exc}); delete the run folder to redo it", path
        ) from None


def _save_rows(path: Path, rows: Sequence[RoundRow]) -> None:
    text = json.dumps({"rows": [_row_to_dict(r) for r in rows]}, indent=1, allow_nan=False) + "\n"
    atomic_write_text(path, text)


def _check_settings_file(out: Path, settings: SimulationSettings, split: _Split) -> None:
    """Write ``simulation.json``, or refuse to resume a folder made with other settings."""
    data = {
        "format": _SETTINGS_FORMAT,
        "version": 1,
        "settings": settings.to_dict(),
        "split": split.to_dict(),
    }
    path = out / _SETTINGS_FILE
    if path.is_file():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            existing = None
        if existing != json.loads(json.dumps(data)):
            raise ConfigError(
                "this folder holds a simulation with other settings or records; use another output folder",
                path,
            )
        return
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------------
# The simulation


class _Evaluator:
    """Validation Dice every round; digitization SNR on the rounds that ask for it."""

    def __init__(
        self, val: FixedCrops, snr_records: Sequence[Path], settings: SimulationSettings, threads: int | None
    ) -> None:
        self.val = val
        self.snr_records = list(snr_records)
        self.settings = settings
        self.threads = threads
        self.profiles = sorted({_site_profile(settings, k) for k in range(settings.n_sites)})

    def wants_snr(self, round_number: int) -> bool:
        s = self.settings
        return (
            bool(self.snr_records)
            and round_number > 0
            and (round_number % s.snr_every == 0 or round_number == s.rounds)
        )

    def __call__(self, network: TraceUnet, run_root: Path, round_number: int) -> tuple[float, float | None]:
        dice = evaluate_dice(network, self.val, batch_size=self.settings.batch_size)
        snr = None
        if self.wants_snr(round_number):
            model_file = save_model(
                run_root / "snr" / f"{round_dir_name(round_number)}.safetensors",
                network,
                ModelHeader(architecture=self.settings.architecture),
            )
            scores = validation_snr(
                model_file,
                self.snr_records,
                profiles=self.profiles,
                seed=_derive_seed(self.settings.seed, _TAG_SNR),
                threads=self.threads,
            )
            snr = scores["val_snr_db"]
        return dice, snr


def _run_federated(
    run: RunSpec,
    root: Path,
    settings: SimulationSettings,
    initial: TraceUnet,
    site_crops: Sequence[Crops],
    evaluate: _Evaluator,
    on_round: Callable[[RoundRow], None] | None,
) -> list[RoundRow]:
    fed = _open_federation(run, root, settings, initial)
    rows_path = root / _ROWS_FILE
    last = fed.last_round()
    rows = [r for r in _load_rows(rows_path) if r.round <= last]
    for number in range(len(rows), last + 1):  # a round folder written just before a crash
        network, _ = build_global_network(fed.round_dir(number) / GLOBAL_FILE, fed.plan, fed.spec)
        dice, snr = evaluate(network, root, number)
        rows.append(RoundRow(run.strategy, run.dp, number, dice, snr, _ledger_epsilon(fed, number)))
        if on_round is not None:
            on_round(rows[-1])
    _save_rows(rows_path, rows)
    for number in range(last, settings.rounds):
        began = time.perf_counter()
        report, norms = _federated_round(fed, number, site_crops, settings)
        seconds = time.perf_counter() - began
        network, _ = build_global_network(fed.round_dir(number + 1) / GLOBAL_FILE, fed.plan, fed.spec)
        dice, snr = evaluate(network, root, number + 1)
        row = RoundRow(
            strategy=run.strategy,
            dp=run.dp,
            round=number + 1,
            val_dice=dice,
            snr_db=snr,
            epsilon=None if report.dp is None else report.dp.epsilon_rdp,
            seconds=seconds,
            mean_update_norm=float(np.mean(norms)) if norms else None,
            clipped_sites=sum(n > settings.clip_norm for n in norms),
        )
        rows.append(row)
        _save_rows(rows_path, rows)
        if on_round is not None:
            on_round(row)
    return rows


def _ledger_epsilon(fed: _FederatedRun, round_number: int) -> float | None:
    if fed.plan.dp is None or round_number == 0:
        return None
    report = json.loads((fed.round_dir(round_number) / "report.json").read_text(encoding="utf-8"))
    return float(report["dp"]["epsilon_rdp"])


def _centralized_models(root: Path) -> dict[int, Path]:
    return {int(p.name[6:10]): p for p in root.glob("round-[0-9][0-9][0-9][0-9].safetensors")}


def _run_centralized(
    root: Path,
    settings: SimulationSettings,
    initial: TraceUnet,
    site_crops: Sequence[Crops],
    evaluate: _Evaluator,
    on_round: Callable[[RoundRow], None] | None,
) -> list[RoundRow]:
    """Train with the same ``train`` on the union of the sites' crops, ``n_sites * local_steps`` a round.

    The model after round N is kept as ``round-NNNN.safetensors`` (the previous one is then
    removed), so a restart continues from the last finished round, as a federation folder does.
    """
    root.mkdir(parents=True, exist_ok=True)
    rows_path = root / _ROWS_FILE
    spec = ModelHeader(architecture=settings.architecture)
    models = _centralized_models(root)
    if models:
        last = max(models)
        network, _ = load_model(models[last])
    else:
        last = 0
        network = build_network(settings.architecture, seed=None)
        network.load_state_dict(initial.state_dict())
        save_model(root / "round-0000.safetensors", network, spec)
    rows = [r for r in _load_rows(rows_path) if r.round <= last]
    if len(rows) != last + 1:  # the model of a round finished just before a crash has no row yet
        rows = rows[:last]
        dice, snr = evaluate(network, root, last)
        rows.append(RoundRow(CENTRALIZED, False, last, dice, snr))
        if on_round is not None:
            on_round(rows[-1])
    _save_rows(rows_path, rows)
    union = [crop for crops in site_crops for crop in crops]
    for number in range(last, settings.rounds):
        began = time.perf_counter()
        train(
            network,
            _shuffled(union, settings, settings.n_sites, number),
            steps=settings.n_sites * settings.local_steps,
            batch_size=settings.batch_size,
            lr=settings.lr,
            seed=settings.seed,
        )
        seconds = time.perf_counter() - began
        save_model(root / f"{round_dir_name(number + 1)}.safetensors", network, spec)
        (root / f"{round_dir_name(number)}.safetensors").unlink(missing_ok=True)
        dice, snr = evaluate(network, root, number + 1)
        rows.append(RoundRow(CENTRALIZED, False, number + 1, dice, snr, seconds=seconds))
        _save_rows(rows_path, rows)
        if on_round is not None:
            on_round(rows[-1])
    return rows


def simulate(
    records: Sequence[str | Path],
    out_dir: str | Path,
    settings: SimulationSettings | None = None,
    *,
    threads: int | None = 2,
    on_round: Callable[[RoundRow], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> SimulationResult:
    """Simulate federated training of the trace segmenter and compare strategies side by side.

    Parameters
    ----------
    records : sequence of str or Path
        WFDB training records or folders of them (``records/ptbxl_500hz_train``); never the test
        records. They are shuffled with the seed and cut into disjoint slices: validation, SNR
        pages, then ``pages_per_site`` per site.
    out_dir : str or Path
        The simulation folder (created; an existing one with the same settings is resumed).
    settings : SimulationSettings, optional
        Sites, rounds, strategies, DP noise, local steps, crops, seed (defaults: the benchmark's
        4 sites, 20 rounds, FedAvg, FedProx, FedAdam, centralized, and DP variants at z = 1).
    threads : int or None, optional
        Torch CPU threads (default 2; None leaves torch's setting).
    on_round : callable, optional
        Called with every :class:`RoundRow` as it is finished.
    on_stage : callable, optional
        Called with a short description when a stage begins (rendering, each run).

    Returns
    -------
    SimulationResult
        Every row, and the CSV, plot and summary written (atomically).

    Raises
    ------
    ConfigError
        Too few records, invalid settings, or a folder holding a simulation with other settings.
    """
    settings = settings or SimulationSettings()
    began = time.perf_counter()
    out = Path(out_dir)
    stems = find_records(records)
    split = _split_records(stems, settings)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings_file(out, settings, split)

    def stage(text: str) -> None:
        logger.info(text)
        if on_stage is not None:
            on_stage(text)

    all_rows: list[RoundRow] = []
    with torch_threads(threads):
        stage(f"rendering {settings.n_sites} sites x {settings.pages_per_site} pages")
        site_crops = _render_site_crops(split, settings)
        stage(f"rendering {len(split.validation)} validation pages")
        val = _render_validation(split, settings)
        evaluator = _Evaluator(val, split.snr, settings, threads)
        initial = build_network(settings.architecture, seed=settings.seed)
        for run in settings.runs():
            stage(f"run {run.name}")
            root = out / "runs" / run.name
            if run.strategy == CENTRALIZED:
                rows = _run_centralized(root, settings, initial, site_crops, evaluator, on_round)
            else:
                rows = _run_federated(run, root, settings, initial, site_crops, evaluator, on_round)
            all_rows.extend(rows)
    rows_t = tuple(all_rows)
    csv_path = write_rounds_csv(out / "rounds.csv", rows_t)
    plot_path = write_convergence_plot(out / "convergence.png", rows_t)
    seconds = time.perf_counter() - began
    summary_path = out / "summary.md"
    atomic_write_text(summary_path, summary_markdown(rows_t, settings, seconds=seconds))
    return SimulationResult(out, rows_t, csv_path, plot_path, summary_path, seconds)


# --------------------------------------------------------------------------------------------------
# Outputs


def _fmt(value: float | None, digits: int) -> str:
    if value is None:
        return ""
    return "nan" if not math.isfinite(value) else f"{value:.{digits}f}"


def write_rounds_csv(path: str | Path, rows: Iterable[RoundRow]) -> Path:
    """Write ``rounds.csv`` atomically: one line per run and round, blank where not computed.

    Parameters
    ----------
    path : str or Path
        Target file.
    rows : iterable of RoundRow
        The rows, in the order to write them.

    Returns
    -------
    Path
        ``path``.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_CSV_FIELDS)
    for r in rows:
        writer.writerow(
            [
                r.strategy,
                "yes" if r.dp else "no",
                r.round,
                _fmt(r.val_dice, 4),
                _fmt(r.snr_db, 2),
                _fmt(r.epsilon, 2),
                _fmt(r.seconds, 1),
                _fmt(r.mean_update_norm, 3),
                "" if r.clipped_sites is None else r.clipped_sites,
            ]
        )
    atomic_write_text(path, buffer.getvalue())
    return Path(path)


def _by_run(rows: Iterable[RoundRow]) -> dict[str, list[RoundRow]]:
    runs: dict[str, list[RoundRow]] = {}
    for row in rows:
        runs.setdefault(row.run, []).append(row)
    return runs


_COLOURS = {"fedavg": "tab:blue", "fedprox": "tab:orange", "fedadam": "tab:green", "fedyogi": "tab:purple"}


def write_convergence_plot(path: str | Path, rows: Iterable[RoundRow]) -> Path:
    """Write ``convergence.png`` atomically: validation Dice (left) and SNR (right) against round.

    One colour per strategy; DP variants dashed. Drawn with matplotlib's Agg canvas directly, so no
    global backend is switched.

    Parameters
    ----------
    path : str or Path
        Target PNG.
    rows : iterable of RoundRow
        The rows of every run.

    Returns
    -------
    Path
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax_dice, ax_snr = fig.subplots(1, 2)
    for label, run_rows in _by_run(rows).items():
        first = run_rows[0]
        style = {
            "color": "black" if first.strategy == CENTRALIZED else _COLOURS.get(first.strategy, "tab:gray"),
            "linestyle": "--" if first.dp else "-",
            "label": label,
        }
        ax_dice.plot([r.round for r in run_rows], [r.val_dice for r in run_rows], marker=".", **style)
        snr = [(r.round, r.snr_db) for r in run_rows if r.snr_db is not None]
        if snr:
            ax_snr.plot([x for x, _ in snr], [y for _, y in snr], marker="o", **style)
    for ax in (ax_dice, ax_snr):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_dice.set_xlabel("round")
    ax_dice.set_ylabel("validation Dice (crops)")
    ax_dice.set_title("Segmentation: validation Dice")
    ax_dice.grid(alpha=0.3)
    ax_dice.legend(fontsize=8)
    ax_snr.set_xlabel("round")
    ax_snr.set_ylabel("SNR (dB), missing leads as 0")
    ax_snr.set_title("Digitization: Challenge SNR")
    ax_snr.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def ordering_check(final: Mapping[str, RoundRow], *, tolerance: float = 0.01) -> list[str]:
    """State whether the seed paper's ordering held for the runs without DP.

    The paper reports FedAdam >= FedProx >= FedAvg in final Dice and FedAdam within 0.01 of
    centralized training.

    Parameters
    ----------
    final : mapping of str to RoundRow
        The last row of each run, by run label (:meth:`SimulationResult.final`).
    tolerance : float, optional
        The allowed gap between FedAdam and centralized.

    Returns
    -------
    list of str
        One sentence per check whose runs are present.

    Examples
    --------
    >>> rows = {s: RoundRow(s, False, 20, d) for s, d in [("fedavg", 0.80), ("fedprox", 0.82),
    ...         ("fedadam", 0.85), ("centralized", 0.855)]}
    >>> ordering_check(rows)[0]
    'FedAdam >= FedProx >= FedAvg (final Dice 0.8500, 0.8200, 0.8000): held'
    """
    lines = []
    dice = {k: v.val_dice for k, v in final.items() if not v.dp}
    if all(k in dice for k in ("fedadam", "fedprox", "fedavg")):
        held = dice["fedadam"] >= dice["fedprox"] >= dice["fedavg"]
        lines.append(
            f"FedAdam >= FedProx >= FedAvg (final Dice {dice['fedadam']:.4f}, {dice['fedprox']:.4f}, "
            f"{dice['fedavg']:.4f}): {'held' if held else 'did not hold'}"
        )
    if "fedadam" in dice and CENTRALIZED in dice:
        gap = dice[CENTRALIZED] - dice["fedadam"]
        held = gap <= tolerance
        lines.append(
            f"FedAdam within {tolerance} Dice of centralized (gap {gap:+.4f}): "
            + ("held" if held else "did not hold")
        )
    return lines


def summary_markdown(rows: Sequence[RoundRow], settings: SimulationSettings, *, seconds: float) -> str:
    """Return ``summary.md``: the final table, the ordering checks and the settings.

    Parameters
    ----------
    rows : sequence of RoundRow
        Every run's rows.
    settings : SimulationSettings
        The simulation's settings.
    seconds : float
        Wall time of the call that wrote it (a resumed simulation counts only its own part).

    Returns
    -------
    str
        Markdown text.
    """
    runs = _by_run(rows)
    lines = [
        "| strategy | DP | final val Dice | best val Dice | final SNR (dB) | epsilon (RDP) "
        "| train+aggregate (s) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for run_rows in runs.values():
        last = run_rows[-1]
        snrs = [r.snr_db for r in run_rows if r.snr_db is not None]
        z = f"z = {settings.dp_noise:g}" if last.dp else "no"
        lines.append(
            f"| {last.strategy} | {z} | {last.val_dice:.4f} | {max(r.val_dice for r in run_rows):.4f} | "
            f"{_fmt(snrs[-1], 2) if snrs else ''} | {_fmt(last.epsilon, 1)} | "
            f"{sum(r.seconds for r in run_rows):.0f} |"
        )
    final = {label: run_rows[-1] for label, run_rows in runs.items()}
    lines.append("")
    lines.extend(f"- {line}" for line in ordering_check(final))
    s = settings
    lines += [
        "",
        f"{s.n_sites} sites x {s.pages_per_site} pages ({s.crops_per_page} crops of {s.crop_px} px each), "
        f"{s.rounds} rounds of {s.local_steps} local steps (batch {s.batch_size}, AdamW lr {s.lr:g}); "
        f"clip norm {s.clip_norm:g}, FedProx mu {s.proximal_mu:g}, FedAdam/FedYogi eta "
        f"{'default' if s.adaptive_server_lr is None else f'{s.adaptive_server_lr:g}'}; "
        f"validation: {s.val_records} held-out pages x {s.val_crops_per_page} crops; "
        f"SNR: {s.snr_records} record(s) x each site profile, every {s.snr_every} rounds; seed {s.seed}. "
        f"Wall time {seconds / 60:.1f} min.",
        "",
    ]
    return "\n".join(lines)
