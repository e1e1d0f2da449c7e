"""Secure-aggregation commands: one command per protocol step, each reading and writing signed files.

A round under secure aggregation (``docs/formats.md`` section 9, ``docs/threat-model.md``)::

    site:        ecgdig fed-train ... -o update.safetensors      (kept at the site)
    site:        ecgdig secagg-advertise round-0003/global.safetensors --key K --examples N --state S -o A
    coordinator: ecgdig secagg-roster round-0003 inbox/*.advertise.json --coordinator-key C -o roster.json
    site:        ecgdig secagg-share roster.json --key K --state S -o shares.json
    site:        ecgdig secagg-mask roster.json all/*.shares.json --update update.safetensors ... -o M
    coordinator: ecgdig secagg-request round-0003 inbox/*.shares.json inbox/*.masked.safetensors ...
    site:        ecgdig secagg-unmask unmask-request.json --roster roster.json ... -o reveal.json
    coordinator: ecgdig secagg-aggregate round-0003 inbox/*.masked.safetensors inbox/*.reveal.json ...

The commands only parse arguments, call :mod:`ecgdig.federated.secagg` and print. Expected failures
print one line and exit 1 (an aborted round writes nothing); usage errors exit 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from ecgdig.cli.common import app, err, fail, out
from ecgdig.errors import EcgdigError

if TYPE_CHECKING:
    from ecgdig.federated.coordinator import FederationPlan, RejectedUpdate
    from ecgdig.federated.keys import SiteKey

KeyOpt = Annotated[
    Path, typer.Option("--key", help="The site's <site>.key.pem; every file is signed with it.")
]
StateOpt = Annotated[
    Path,
    typer.Option("--state", help="The site's private state of this run (mode 0600; keep it at the site)."),
]
PlanOpt = Annotated[Path, typer.Option("--plan", help="The federation's plan.json.")]
OutputOpt = Annotated[Path, typer.Option("-o", "--output", help="Protocol file to write; send it on.")]
CoordinatorKeyOpt = Annotated[
    Path, typer.Option("--coordinator-key", help="The coordinator's <id>.key.pem; signs its files.")
]
RosterOpt = Annotated[Path, typer.Option("--roster", help="The roster of this run (from secagg-roster).")]
MaxEpsilonOpt = Annotated[
    float | None,
    typer.Option("--max-epsilon", help="Refuse if epsilon after the round would exceed this (DP plans)."),
]


def _site_inputs(plan_path: Path, key_path: Path) -> tuple[FederationPlan, SiteKey]:
    from ecgdig.federated.coordinator import load_plan
    from ecgdig.federated.keys import load_site_key

    return load_plan(plan_path), load_site_key(key_path)


def _report_rejected(rejected: Sequence[RejectedUpdate]) -> None:
    for item in rejected:
        err.print(f"[yellow]rejected:[/yellow] {escape(item.file)}: {escape(item.reason)}", highlight=False)


def _split_by_suffix(paths: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """Split into masked inputs (``.safetensors``) and JSON protocol files (anything else)."""
    masked = [p for p in paths if p.suffix == ".safetensors"]
    return masked, [p for p in paths if p.suffix != ".safetensors"]


@app.command("secagg-advertise")
def secagg_advertise(
    global_model: Annotated[Path, typer.Argument(help="The round's global.safetensors.")],
    output: OutputOpt,
    key: KeyOpt,
    state: StateOpt,
    plan_path: PlanOpt,
    examples: Annotated[int, typer.Option("--examples", min=1, help="n_k, this site's training examples.")],
) -> None:
    """Step 1 (site): publish two X25519 public keys for this round, signed with the site key.

    Creates the private --state file (refused if it exists: one per run).
    """
    from ecgdig.federated.secagg import advertise_keys

    try:
        plan, site_key = _site_inputs(plan_path, key)
        advertisement = advertise_keys(
            global_model,
            state,
            output,
            site_key,
            plan=plan,
            num_examples=examples,
        )
    except EcgdigError as exc:
        raise fail(exc) from None
    out.print(f"{advertisement.site_id}: keys for round {advertisement.round} advertised -> {output}")


@app.command("secagg-roster")
def secagg_roster(
    round_dir: Annotated[Path, typer.Argument(help="The round being aggregated: <federation>/round-NNNN.")],
    advertisements: Annotated[list[Path], typer.Argument(help="The sites' advertise files.")],
    output: OutputOpt,
    coordinator_key: CoordinatorKeyOpt,
    threshold: Annotated[
        int | None,
        typer.Option("--threshold", min=2, help="t, a majority of the sites \\[default: floor(2n/3) + 1]."),
    ] = None,
) -> None:
    """Step 1' (coordinator): check the advertisements and write the roster every site receives."""
    from ecgdig.federated.keys import load_site_key
    from ecgdig.federated.secagg import make_roster

    try:
        result = make_roster(
            round_dir,
            advertisements,
            output,
            coordinator_key=load_site_key(coordinator_key),
            threshold=threshold,
        )
    except EcgdigError as exc:
        _report_rejected(getattr(exc, "rejected", ()))
        raise fail(exc) from None
    _report_rejected(result.rejected)
    roster = result.roster
    out.print(
        f"round {roster.round}: {len(roster.sites)} sites, threshold {roster.threshold}, "
        f"{roster.frac_bits} fractional bits -> {output}"
    )


@app.command("secagg-share")
def secagg_share(
    roster: Annotated[Path, typer.Argument(help="The roster of this run.")],
    output: OutputOpt,
    key: KeyOpt,
    state: StateOpt,
    plan_path: PlanOpt,
) -> None:
    """Step 2 (site): Shamir-share the self-mask seed and mask key, each share encrypted to its recipient."""
    from ecgdig.federated.secagg import share_keys

    try:
        plan, site_key = _site_inputs(plan_path, key)
        message = share_keys(state, roster, output, site_key, plan=plan)  # type: ignore[arg-type]
    except EcgdigError as exc:
        raise fail(exc) from None
    out.print(f"{message.site_id}: shares for {len(message.shares or {})} sites -> {output}")


@app.command("secagg-mask")
def secagg_mask(
    roster: Annotated[Path, typer.Argument(help="The roster of this run.")],
    shares: Annotated[list[Path], typer.Argument(help="Every shares file the coordinator forwarded.")],
    update: Annotated[Path, typer.Option("--update", help="This site's own update (from fed-train).")],
    output: OutputOpt,
    key: KeyOpt,
    state: StateOpt,
    plan_path: PlanOpt,
) -> None:
    """Step 3 (site): encode the weighted update in fixed point and add the self and pairwise masks.

    The update file never leaves the site; only the masked input is sent.
    """
    from ecgdig.federated.secagg import mask_update

    try:
        plan, site_key = _site_inputs(plan_path, key)
        header = mask_update(state, roster, shares, update, output, site_key, plan=plan)  # type: ignore[arg-type]
    except EcgdigError as exc:
        raise fail(exc) from None
    out.print(f"{header.site_id}: masked input with {len(header.peers)} peers -> {output}")


@app.command("secagg-request")
def secagg_request(
    round_dir: Annotated[Path, typer.Argument(help="The round being aggregated: <federation>/round-NNNN.")],
    files: Annotated[
        list[Path],
        typer.Argument(help="The forwarded shares files (.json) and the masked inputs (.safetensors)."),
    ],
    roster: RosterOpt,
    output: OutputOpt,
    coordinator_key: CoordinatorKeyOpt,
    max_epsilon: MaxEpsilonOpt = None,
) -> None:
    """Step 3' (coordinator): name the sites that shared and the survivors; ask them to unmask.

    Fewer valid masked inputs than the threshold, or a DP round over budget, exits 1: nothing is
    written and nobody is asked to reveal anything.
    """
    from ecgdig.federated.keys import load_site_key
    from ecgdig.federated.secagg import request_unmask

    masked, shares = _split_by_suffix(files)
    try:
        result = request_unmask(
            round_dir,
            roster,
            shares,
            masked,
            output,
            coordinator_key=load_site_key(coordinator_key),
            max_epsilon=max_epsilon,
        )
    except EcgdigError as exc:
        _report_rejected(getattr(exc, "rejected", ()))
        raise fail(exc) from None
    _report_rejected(result.rejected)
    request = result.request
    out.print(
        f"round {request.round}: {len(request.survivors)} survivors of {len(request.shared)} sharing sites "
        f"-> {output}"
    )


@app.command("secagg-unmask")
def secagg_unmask(
    request: Annotated[Path, typer.Argument(help="The coordinator's unmask-request file.")],
    roster: RosterOpt,
    output: OutputOpt,
    key: KeyOpt,
    state: StateOpt,
    plan_path: PlanOpt,
) -> None:
    """Step 4 (site): reveal self-mask shares of survivors and mask-key shares of dropped sites.

    Answers one request per run: a second, different request is refused.
    """
    from ecgdig.federated.secagg import reveal_shares

    try:
        plan, site_key = _site_inputs(plan_path, key)
        reveal = reveal_shares(state, roster, request, output, site_key, plan=plan)  # type: ignore[arg-type]
    except EcgdigError as exc:
        raise fail(exc) from None
    out.print(
        f"{reveal.site_id}: {len(reveal.self_mask_shares or {})} self-mask and "
        f"{len(reveal.mask_key_shares or {})} mask-key shares revealed -> {output}"
    )


@app.command("secagg-aggregate")
def secagg_aggregate(
    round_dir: Annotated[Path, typer.Argument(help="The round being aggregated: <federation>/round-NNNN.")],
    files: Annotated[
        list[Path], typer.Argument(help="The masked inputs (.safetensors) and the reveals (.json).")
    ],
    roster: RosterOpt,
    request: Annotated[Path, typer.Option("--request", help="The unmask request the sites answered.")],
    coordinator_key: CoordinatorKeyOpt,
    max_epsilon: MaxEpsilonOpt = None,
) -> None:
    """Step 4' (coordinator): unmask the sum, then noise, server step and the next round folder.

    Fewer valid reveals than the threshold, or a DP round over budget (checked before any mask is
    removed), exits 1: nothing is written and no privacy budget is spent.
    """
    from ecgdig.federated.keys import load_site_key
    from ecgdig.federated.secagg import aggregate_secure_round

    masked, reveals = _split_by_suffix(files)
    try:
        report = aggregate_secure_round(
            round_dir,
            roster,
            request,
            masked,
            reveals,
            coordinator_key=load_site_key(coordinator_key),
            max_epsilon=max_epsilon,
        )
    except EcgdigError as exc:
        _report_rejected(getattr(exc, "rejected", ()))
        raise fail(exc) from None
    _report_rejected(report.rejected)
    dp = "" if report.dp is None else f", epsilon {report.dp.epsilon_rdp:.4g}"
    out.print(f"round {report.round}: {len(report.accepted)} masked inputs summed{dp} -> {report.out_dir}")
