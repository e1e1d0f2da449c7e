"""Federated training commands: keys, a federation folder, a site's round, aggregation, privacy, export.

The commands only parse arguments, call :mod:`ecgdig.federated` and print; the files they read and
write are specified in ``docs/formats.md`` and walked through in ``docs/usage.md`` ("Federated
training"). Library code is imported inside each command so that ``ecgdig --help`` stays fast.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from ecgdig.cli.common import app, err, fail, out, training_progress
from ecgdig.errors import ConfigError, EcgdigError, UpdateRejectedError

if TYPE_CHECKING:
    from ecgdig.federated.coordinator import FederationPlan, RejectedUpdate
    from ecgdig.model.files import ModelHeader

_T = TypeVar("_T")


class Strategy(StrEnum):
    """Server update rules (``ecgdig.federated.strategies.STRATEGY_NAMES``)."""

    fedavg = "fedavg"
    fedprox = "fedprox"
    fedadam = "fedadam"
    fedyogi = "fedyogi"


class Sampling(StrEnum):
    """Participation models (``ecgdig.federated.privacy.SAMPLING_MODES``)."""

    full = "full"
    poisson = "poisson"
    fixed = "fixed"


# --------------------------------------------------------------------------------------------------
# Helpers shared by the commands


def _given(**values: Any) -> dict[str, Any]:
    """Keep the options the user gave, so every default stays defined once, in the library."""
    return {name: value for name, value in values.items() if value is not None}


def _is_adaptive(strategy: Strategy) -> bool:
    """Whether ``strategy`` keeps server moments (and takes --beta1, --beta2, --tau)."""
    return strategy in (Strategy.fedadam, Strategy.fedyogi)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _table(
    title: str, columns: Sequence[str], rows: Iterable[Sequence[str]], *, text_columns: int = 1
) -> Table:
    """Build a rich table: the first ``text_columns`` columns left-aligned, the rest (numbers) right."""
    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i < text_columns else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _beside(folder: Path, given: Path | None, name: str, option: str) -> Path:
    """``given``, or ``folder/name`` when that exists; the error says which option to pass instead."""
    if given is not None:
        return given
    path = folder / name
    if not path.is_file():
        raise ConfigError(f"not found; pass {option} with the federation's {name}", path)
    return path


def _plan_and_spec(
    federation_dir: Path, plan_path: Path | None, spec_path: Path | None
) -> tuple[FederationPlan, ModelHeader]:
    """Read the plan and the network description, by default from the federation folder."""
    from ecgdig.federated.coordinator import PLAN_FILE, load_plan
    from ecgdig.federated.site import MODEL_SPEC_FILE, read_model_spec

    plan = load_plan(_beside(federation_dir, plan_path, PLAN_FILE, "--plan"))
    spec = read_model_spec(_beside(federation_dir, spec_path, MODEL_SPEC_FILE, "--model-spec"))
    return plan, spec


def _create_folder_atomically(target: Path, build: Callable[[Path], _T]) -> _T:
    """Run ``build`` on a temporary sibling folder, then rename it to ``target``.

    The folder therefore appears complete or not at all. ``target`` may exist only as an empty
    folder (rename replaces an empty directory on POSIX).
    """
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError("already exists and is not an empty folder; refusing to overwrite it", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        result = build(tmp)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _print_rejected(rejected: Iterable[RejectedUpdate]) -> None:
    for item in rejected:
        err.print(f"[yellow]rejected:[/yellow] {escape(item.file)}: {escape(item.reason)}", highlight=False)


def _print_selected(plan: FederationPlan, round_number: int, sites: Sequence[str]) -> None:
    """Name the sites a sampled round asks to train (with full participation it is every site)."""
    if plan.sampling.mode != "full":
        out.print(
            f"round {round_number} asks {', '.join(sites) or 'no site'}; tell each selected site only "
            "about itself (docs/privacy.md)",
            highlight=False,
        )


def _plan_rows(plan: FederationPlan) -> list[tuple[str, str]]:
    """Return the plan as (setting, value) rows, in the order a reader checks them."""
    from ecgdig.federated.keys import public_key_fingerprint

    strategy = plan.strategy
    rule = f"{strategy.name}, server lr {_num(strategy.server_lr)}"
    if strategy.adaptive:
        rule += f", beta1 {_num(strategy.beta1)}, beta2 {_num(strategy.beta2)}, tau {_num(strategy.tau)}"
    sampling = plan.sampling
    participation = {
        "full": "every site, every round",
        "poisson": f"Poisson, q = {_num(sampling.q)}",
        "fixed": f"{sampling.sample_size} of {plan.population} sites (q = {_num(sampling.q)})",
    }[sampling.mode]
    rows = [
        ("federation", plan.federation_id),
        ("coordinator", f"{plan.coordinator_id} (key {public_key_fingerprint(plan.coordinator_key_bytes)})"),
        ("registered sites", str(plan.population)),
        ("strategy", rule),
        ("FedProx mu", _num(plan.proximal_mu)),
        ("clip norm S", _num(plan.clip_norm)),
        ("local epochs E", str(plan.local_epochs)),
        ("planned rounds", str(plan.rounds)),
        ("min sites per round", str(plan.min_sites)),
        ("sampling", participation),
    ]
    if plan.dp is None:
        rows.append(("central DP", "off"))
    else:
        dp = plan.dp
        rows += [
            ("DP noise multiplier z", _num(dp.noise_multiplier)),
            ("DP delta", _num(dp.delta)),
            ("DP weight cap n_cap", _num(dp.n_cap)),
            ("DP denominator", _num(dp.denominator)),
            ("DP max epsilon", "none" if dp.max_epsilon is None else _num(dp.max_epsilon)),
        ]
    return rows


# --------------------------------------------------------------------------------------------------
# Commands


@app.command()
def keygen(
    site_id: Annotated[
        str, typer.Argument(help="The site's (or the coordinator's) id: 1-64 of A-Z a-z 0-9 . _ -")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the two key files.")],
    force: Annotated[bool, typer.Option("--force", help="Replace existing key files.")] = False,
) -> None:
    """Make an Ed25519 key pair: <id>.key.pem (private, mode 0600) and <id>.pub.json (public).

    The private key never leaves the site; the public key goes to the coordinator.
    Compare the printed fingerprint over another channel (the phone) before the key is registered.
    """
    from ecgdig.federated.keys import generate_site_key

    try:
        paths = generate_site_key(site_id, output, overwrite=force)
    except EcgdigError as exc:
        raise fail(exc) from None
    out.print(f"private key: {paths.private_key} (keep it here)", highlight=False)
    out.print(f"public key:  {paths.public_key} (a site sends it to the coordinator)", highlight=False)
    out.print(f"fingerprint: {paths.fingerprint}", highlight=False)


@app.command("fed-init")
def fed_init(
    federation_dir: Annotated[
        Path, typer.Argument(help="Federation folder to create (must not exist, or be empty).")
    ],
    federation_id: Annotated[
        str, typer.Option("--federation-id", help="The federation's id: 1-64 of A-Z a-z 0-9 . _ -")
    ],
    site: Annotated[
        list[Path], typer.Option("--site", help="A site's <id>.pub.json from keygen; repeat for every site.")
    ],
    coordinator_key: Annotated[
        Path,
        typer.Option("--coordinator-key", help="The coordinator's <id>.key.pem; signs every global model."),
    ],
    clip_norm: Annotated[
        float, typer.Option("--clip-norm", help="S: every site update is clipped to this global L2 norm.")
    ],
    strategy: Annotated[Strategy, typer.Option("--strategy", help="Server update rule.")] = Strategy.fedavg,
    mu: Annotated[
        float | None, typer.Option("--mu", help="FedProx mu > 0 (fedprox only): (mu/2)||w - w_global||^2.")
    ] = None,
    server_lr: Annotated[
        float | None,
        typer.Option("--server-lr", help="Server learning rate eta \\[default: 1; 1e-2 adaptive]."),
    ] = None,
    beta1: Annotated[
        float | None, typer.Option("--beta1", help="fedadam/fedyogi beta1 \\[default: 0.9].")
    ] = None,
    beta2: Annotated[
        float | None, typer.Option("--beta2", help="fedadam/fedyogi beta2 \\[default: 0.99].")
    ] = None,
    tau: Annotated[float | None, typer.Option("--tau", help="fedadam/fedyogi tau \\[default: 1e-3].")] = None,
    local_epochs: Annotated[
        int | None, typer.Option("--local-epochs", min=1, help="E, local epochs per round \\[default: 1].")
    ] = None,
    rounds: Annotated[
        int | None,
        typer.Option("--rounds", min=1, help="Planned rounds, for the projected epsilon \\[default: 50]."),
    ] = None,
    min_sites: Annotated[
        int | None,
        typer.Option("--min-sites", min=1, help="Refuse to aggregate fewer valid updates \\[default: 2]."),
    ] = None,
    sampling: Annotated[
        Sampling,
        typer.Option("--sampling", help="Sites asked each round: all, Poisson(q), or a fixed number."),
    ] = Sampling.full,
    q: Annotated[float | None, typer.Option("--q", help="Poisson sampling probability (0 < q < 1).")] = None,
    sample_size: Annotated[
        int | None, typer.Option("--sample-size", min=1, help="Sites drawn per round for --sampling fixed.")
    ] = None,
    dp_noise: Annotated[
        float | None,
        typer.Option("--dp-noise", help="Central DP noise multiplier z > 0 (turns site-level DP on)."),
    ] = None,
    dp_delta: Annotated[float | None, typer.Option("--dp-delta", help="DP delta \\[default: 1e-5].")] = None,
    dp_n_cap: Annotated[
        float | None,
        typer.Option("--dp-n-cap", help="DP weight cap: a site weighs min(n_k / n_cap, 1) \\[default: 1]."),
    ] = None,
    max_epsilon: Annotated[
        float | None,
        typer.Option("--max-epsilon", help="Refuse any round that would bring epsilon above this."),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option("--model", help="Start from this model file \\[default: a fresh default U-Net]."),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="Seed of the fresh U-Net's initial weights (not with --model)."),
    ] = None,
) -> None:
    """Create a federation folder: registry of site keys, plan.json, model.json and round-0000.

    Everything is checked first; the folder appears complete or not at all.
    Send plan.json, model.json and round-0000/global.safetensors to the sites; registry.json stays here.
    With DP on, the projected epsilon after the planned rounds is printed (see docs/privacy.md).
    """
    from ecgdig.federated.coordinator import DpPlan, FederationPlan, SamplingPlan, init_federation
    from ecgdig.federated.keys import (
        add_site,
        create_registry,
        load_public_key,
        load_site_key,
        public_key_fingerprint,
    )
    from ecgdig.federated.site import MODEL_SPEC_FILE, write_model_spec
    from ecgdig.federated.strategies import make_server_optimizer
    from ecgdig.model.files import ModelHeader, load_model, model_tensors
    from ecgdig.model.network import make_default_model

    if model is not None and seed is not None:
        raise typer.BadParameter("--seed initializes a fresh model; it cannot be used with --model")
    if not _is_adaptive(strategy) and _given(beta1=beta1, beta2=beta2, tau=tau):
        raise typer.BadParameter("--beta1, --beta2 and --tau apply to fedadam and fedyogi only")
    if q is not None and sampling is not Sampling.poisson:
        raise typer.BadParameter("--q applies to --sampling poisson only")
    if sample_size is not None and sampling is not Sampling.fixed:
        raise typer.BadParameter("--sample-size applies to --sampling fixed only")
    if dp_noise is None and _given(dp_delta=dp_delta, dp_n_cap=dp_n_cap, max_epsilon=max_epsilon):
        raise typer.BadParameter("--dp-delta, --dp-n-cap and --max-epsilon need --dp-noise")
    try:
        plan = FederationPlan(
            federation_id=federation_id,
            clip_norm=clip_norm,
            strategy=make_server_optimizer(
                strategy.value, **_given(server_lr=server_lr, beta1=beta1, beta2=beta2, tau=tau)
            ),
            sampling=SamplingPlan(mode=sampling.value, **_given(q=q, sample_size=sample_size)),
            dp=None
            if dp_noise is None
            else DpPlan(
                noise_multiplier=dp_noise, **_given(delta=dp_delta, n_cap=dp_n_cap, max_epsilon=max_epsilon)
            ),
            **_given(proximal_mu=mu, local_epochs=local_epochs, rounds=rounds, min_sites=min_sites),
        )
    except (ConfigError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None

    try:
        key = load_site_key(coordinator_key)
        sites = sorted({load_public_key(path) for path in site})
        if model is None:
            network = make_default_model(**_given(seed=seed))
            header = ModelHeader(architecture=network.architecture)
        else:
            network, header = load_model(model)

        def build(folder: Path) -> Any:
            registry = folder / "registry.json"
            create_registry(registry, federation_id)
            for path in site:
                add_site(registry, path)
            write_model_spec(folder / MODEL_SPEC_FILE, header)
            return init_federation(folder, model_tensors(network), plan, coordinator_key=key)

        init = _create_folder_atomically(federation_dir, build)
    except EcgdigError as exc:
        raise fail(exc) from None

    out.print(
        _table(
            "Registered sites",
            ("site", "key fingerprint"),
            ((s, public_key_fingerprint(k)) for s, k in sites),
        )
    )
    out.print(_table(f"Plan of {federation_id}", ("setting", "value"), _plan_rows(init.plan), text_columns=2))
    if init.projected_epsilon is not None:
        eps = init.projected_epsilon
        # dp-accounting models fixed-size sampling only as replace-one-site: say so, the figure differs.
        relation = ", replace-one-site" if init.plan.sampling.mode == "fixed" else ""
        out.print(
            f"projected epsilon after {init.plan.rounds} rounds: {eps.rdp:.4g} (RDP{relation}, delta "
            f"{eps.delta:g}); site-level DP, see docs/privacy.md",
            highlight=False,
        )
    _print_selected(init.plan, 0, init.selected_sites)
    out.print(
        f"federation {federation_id} initialized -> {federation_dir}; send plan.json, {MODEL_SPEC_FILE} and "
        "round-0000/global.safetensors to the sites, keep registry.json here",
        highlight=False,
    )


@app.command("fed-train")
def fed_train(
    global_model: Annotated[
        Path,
        typer.Argument(help="The round's signed global model: <federation>/round-NNNN/global.safetensors."),
    ],
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="The site's WFDB records or folders of them, or one folder of pages from 'ecgdig render'."
        ),
    ],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Update file to write; send it to the coordinator.")
    ],
    key: Annotated[
        Path, typer.Option("--key", help="The site's <site>.key.pem; the update is signed with it.")
    ],
    plan_path: Annotated[
        Path | None,
        typer.Option("--plan", help="The federation's plan.json \\[default: beside the round folder]."),
    ] = None,
    model_spec: Annotated[
        Path | None,
        typer.Option(
            "--model-spec", help="The federation's model.json \\[default: beside the round folder]."
        ),
    ] = None,
    mu: Annotated[
        float | None, typer.Option("--mu", min=0.0, help="FedProx mu \\[default: the plan's].")
    ] = None,
    epochs: Annotated[
        float | None,
        typer.Option("--epochs", min=0.0, help="Local epochs, may be fractional \\[default: the plan's]."),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="256 px crops per step \\[default: 8].")
    ] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", min=0.0, help="Local AdamW learning rate \\[default: 1e-3].")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed of the local crops and training \\[default: 0].")
    ] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads for training.")] = None,
    profile: Annotated[
        list[str] | None,
        typer.Option(
            "--profile",
            help="Site profile used to render records; repeat for a mix \\[default: scanner, phone].",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Train again even if the output is already a valid update.")
    ] = False,
) -> None:
    """Train the global model locally and write this site's clipped, signed update.

    The update is delta = w_local - w_global clipped to the plan's L2 norm S, written atomically.
    A killed run restarted with the same arguments resumes from its checkpoint.
    If the output is already a valid update of this site for this global model, nothing is done.
    """
    from ecgdig.federated.coordinator import load_round_info
    from ecgdig.federated.keys import load_site_key, public_key_fingerprint
    from ecgdig.federated.site import train_site_update, verify_site_update
    from ecgdig.model.run import open_training_data

    round_dir = global_model.parent
    try:
        plan, spec = _plan_and_spec(round_dir.parent, plan_path, model_spec)
        site_key = load_site_key(key)
        if (round_dir / "round.json").is_file():
            info = load_round_info(round_dir)
            if site_key.site_id not in info.selected_sites:
                raise ConfigError(
                    f"site {site_key.site_id!r} was not selected for round {info.round}; "
                    "the coordinator would reject its update",
                    round_dir / "round.json",
                )
        if output.exists() and not force:
            try:
                done = verify_site_update(output, global_model, site_key, plan=plan)
            except UpdateRejectedError as exc:
                if exc.path is not None and exc.path.resolve() != output.resolve():
                    raise  # the global model itself failed verification
                raise ConfigError(
                    f"exists but is not a valid update of site {site_key.site_id!r} for this global model "
                    f"({exc.reason}); pass --force to replace it",
                    output,
                ) from None
            out.print(
                f"{output}: already a valid round-{done.header.round} update of site {done.site_id} "
                f"({done.header.num_examples} examples, norm {done.l2_norm:.4g}); nothing to do",
                highlight=False,
            )
            return
        data, _, n_pages, _ = open_training_data(
            inputs, hold_out=False, **_given(profiles=profile or None, seed=seed)
        )
    except EcgdigError as exc:
        raise fail(exc) from None

    progress, report = training_progress("fed-train")
    try:
        with progress:
            result = train_site_update(
                global_model, data, output, site_key, plan=plan, spec=spec, num_examples=n_pages,
                on_step=report, **_given(epochs=epochs, proximal_mu=mu, batch_size=batch_size, lr=lr,
                                         seed=seed, threads=threads),
            )  # fmt: skip
    except EcgdigError as exc:
        raise fail(exc) from None
    training, update = result.training, result.update
    resumed = f", resumed from step {training.resumed_from}" if training.resumed_from else ""
    clipped = f", clipped to {_num(plan.clip_norm)}" if update.clipped else ""
    out.print(
        f"site {site_key.site_id}: round {result.round_number} update from {n_pages} pages/records, "
        f"{training.steps} steps{resumed}, norm {update.norm_before_clip:.4g}{clipped} -> {update.path}",
        highlight=False,
    )
    out.print(
        f"global model verified: signed by {plan.coordinator_id} "
        f"(key {public_key_fingerprint(plan.coordinator_key_bytes)}; compare it with the coordinator's)",
        highlight=False,
    )


@app.command()
def aggregate(
    round_dir: Annotated[
        Path, typer.Argument(help="The round whose updates are aggregated: <federation>/round-NNNN.")
    ],
    updates: Annotated[
        list[Path], typer.Argument(help="Update files received from the sites, in any order.")
    ],
    coordinator_key: Annotated[
        Path,
        typer.Option("--coordinator-key", help="The coordinator's <id>.key.pem; signs the new global model."),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="The next round folder; must be <federation>/round-(N+1) \\[default: that].",
        ),
    ] = None,
    max_epsilon: Annotated[
        float | None,
        typer.Option(
            "--max-epsilon", help="Refuse the round if epsilon after it would exceed this (DP plans)."
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            help="Seed of the next round's site sampling, for simulations; refused with DP, where it would "
            "also fix the noise \\[default: OS randomness].",
        ),
    ] = None,
) -> None:
    """Validate the updates, aggregate them with the plan's strategy and write the next round folder.

    Each bad update is reported as one 'rejected: FILE: REASON' line and left out.
    Fewer valid updates than the plan's min sites, or a DP round over the epsilon limit (checked
    before any noise is drawn), exits 1 and writes nothing.
    Send the new global.safetensors to the sites; keep round.json, report.json and the optimizer state.
    """
    from ecgdig.federated.coordinator import (
        PLAN_FILE,
        ParticipationError,
        aggregate_round,
        load_plan,
        load_round_info,
        round_dir_name,
    )
    from ecgdig.federated.keys import load_site_key

    federation_dir = round_dir.parent
    try:
        info = load_round_info(round_dir)
        plan = load_plan(federation_dir / PLAN_FILE)
        key = load_site_key(coordinator_key)
    except EcgdigError as exc:
        raise fail(exc) from None
    target = federation_dir / round_dir_name(info.round + 1)
    if output is not None and output.resolve() != target.resolve():
        # Sites and the next aggregate find plan.json and model.json beside the round folder.
        raise typer.BadParameter(
            f"must be {target.name} beside {round_dir.name}, that is {target}; got {output}",
            param_hint="'-o'",
        )
    if seed is not None and plan.dp is not None:
        raise typer.BadParameter(
            "with DP on, a fixed seed would make the noise predictable", param_hint="'--seed'"
        )
    try:
        report = aggregate_round(
            round_dir, updates, target, coordinator_key=key, max_epsilon=max_epsilon, rng=seed
        )
    except ParticipationError as exc:
        _print_rejected(exc.rejected)
        raise fail(exc) from None
    except EcgdigError as exc:
        raise fail(exc) from None

    _print_rejected(report.rejected)
    out.print(
        _table(
            f"Round {report.round}: accepted updates",
            ("site", "file", "examples", "weight", "L2 norm"),
            (
                (a.site_id, escape(a.file), str(a.num_examples), _num(a.weight), f"{a.l2_norm:.4g}")
                for a in report.accepted
            ),
            text_columns=2,
        )
    )
    if report.dp is not None:
        dp = report.dp
        out.print(
            f"DP: noise std {_num(dp.noise_std)} (z {_num(dp.noise_multiplier)} x S {_num(dp.clip_norm)}) "
            f"on the sum, denominator {_num(dp.denominator)}; epsilon spent {dp.epsilon_rdp:.4g} (RDP"
            + ("" if dp.epsilon_pld is None else f"; PLD {dp.epsilon_pld:.4g}")
            + f") at delta {dp.delta:g}, ledger entry {dp.ledger_seq}",
            highlight=False,
        )
    out.print(
        f"round {report.round} aggregated ({report.strategy.name}): {len(report.accepted)} accepted, "
        f"{len(report.rejected)} rejected -> {report.out_dir} (global {report.global_sha256[:12]})",
        highlight=False,
    )
    _print_selected(plan, report.round + 1, report.next_selected_sites)


@app.command()
def privacy(
    ledger: Annotated[Path, typer.Argument(help="The federation's ledger.jsonl.")],
    recompute: Annotated[
        bool,
        typer.Option("--recompute", help="Also recompute the final epsilon with dp-accounting (seconds)."),
    ] = False,
) -> None:
    """Verify the privacy ledger's hash chain and print every noised release and the epsilon spent.

    A broken chain or an edited, deleted or reordered entry exits 1 with one line;
    --recompute also catches a forged epsilon.
    """
    from ecgdig.federated.privacy import verify_ledger

    try:
        summary = verify_ledger(ledger, recompute=recompute)
    except EcgdigError as exc:
        raise fail(exc) from None
    rows = (
        (
            str(e.seq), str(e.round), _num(e.noise_multiplier), _num(e.clip_norm), str(e.n_sites),
            e.sampling if e.sampling == "full" else f"{e.sampling} {_num(e.q)}",
            _num(e.delta), f"{e.epsilon_rdp:.4g}", "-" if e.epsilon_pld is None else f"{e.epsilon_pld:.4g}",
        )
        for e in summary.entries
    )  # fmt: skip
    columns = ("entry", "round", "z", "S", "sites", "sampling", "delta", "epsilon RDP", "epsilon PLD")
    out.print(_table(f"Privacy ledger {ledger.name}", columns, rows, text_columns=0))
    if not summary.entries:
        out.print(f"{ledger}: verified, no noised release recorded", highlight=False)
        return
    last = summary.entries[-1]
    pld = "" if last.epsilon_pld is None else f", PLD {last.epsilon_pld:.4g}"
    checked = "verified and recomputed" if recompute else "verified"
    out.print(
        f"{ledger}: {checked}, {_count(len(summary.entries), 'release')} of "
        f"federation {last.federation_id}; epsilon spent {last.epsilon_rdp:.4g} (RDP{pld}) at delta "
        f"{last.delta:g} ({last.accountant})",
        highlight=False,
    )


@app.command("fed-export")
def fed_export(
    round_dir: Annotated[Path, typer.Argument(help="A round folder holding global.safetensors.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model file to write (.safetensors).")],
    plan_path: Annotated[
        Path | None,
        typer.Option("--plan", help="The federation's plan.json \\[default: beside the round folder]."),
    ] = None,
    model_spec: Annotated[
        Path | None,
        typer.Option(
            "--model-spec", help="The federation's model.json \\[default: beside the round folder]."
        ),
    ] = None,
) -> None:
    """Verify a round's signed global model and write it as an ordinary model file.

    The result works with 'ecgdig digitize --segmenter unet --model'.
    Its header's training note names the federation, the round and the global model's hash.
    """
    from ecgdig.federated.coordinator import GLOBAL_FILE
    from ecgdig.federated.site import build_global_network
    from ecgdig.model.files import ModelHeader, save_model

    try:
        plan, spec = _plan_and_spec(round_dir.parent, plan_path, model_spec)
        network, header = build_global_network(round_dir / GLOBAL_FILE, plan, spec)
        note = {
            "federated": {
                "federation_id": header.federation_id,
                "round": header.round,
                "global_sha256": header.payload_sha256,
                "strategy": plan.strategy.name,
            }
        }
        save_model(
            output,
            network,
            ModelHeader(
                architecture=spec.architecture, px_per_mm=spec.px_per_mm, classes=spec.classes, training=note
            ),
        )
    except EcgdigError as exc:
        raise fail(exc) from None
    out.print(
        f"global model of federation {header.federation_id}, round {header.round}, verified -> {output}",
        highlight=False,
    )
