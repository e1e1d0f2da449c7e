"""``ecgdig fed-simulate``: federated strategies side by side on simulated non-IID hospitals."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ecgdig.cli.common import app, err, fail, out
from ecgdig.errors import EcgdigError

if TYPE_CHECKING:
    from ecgdig.federated.simulate import RoundRow

#: The training records beside the repository, used when no records are given.
DEFAULT_RECORDS = Path("../shared/data/records/ptbxl_500hz_train")


class SimStrategy(StrEnum):
    """Strategies ``fed-simulate`` compares."""

    fedavg = "fedavg"
    fedprox = "fedprox"
    fedadam = "fedadam"
    fedyogi = "fedyogi"
    centralized = "centralized"


@app.command("fed-simulate")
def fed_simulate(
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Simulation folder; an existing one is resumed.")
    ],
    records: Annotated[
        list[Path] | None,
        typer.Argument(
            help="WFDB training records or folders of them (never the test records) "
            f"[default: {DEFAULT_RECORDS} when it exists]."
        ),
    ] = None,
    sites: Annotated[int | None, typer.Option("--sites", min=2, help="Simulated hospitals.")] = None,
    rounds: Annotated[
        int | None, typer.Option("--rounds", min=1, help="Federated rounds per strategy.")
    ] = None,
    strategy: Annotated[
        list[SimStrategy] | None, typer.Option("--strategy", help="Strategy to compare; repeat for several.")
    ] = None,
    dp_noise: Annotated[
        float | None,
        typer.Option("--dp-noise", min=0.0, help="Noise multiplier z of the DP variants; 0 runs none."),
    ] = None,
    server_lr: Annotated[
        float | None,
        typer.Option("--server-lr", min=0.0, help="FedAdam/FedYogi server learning rate [default: 1e-2]."),
    ] = None,
    local_steps: Annotated[
        int | None, typer.Option("--local-steps", min=1, help="AdamW steps per site and round.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", min=0, help="One seed: split, rendering, noise.")
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="Torch CPU threads [default: 2].")
    ] = None,
    snr_every: Annotated[
        int | None, typer.Option("--snr-every", min=1, help="Digitize the SNR pages every this many rounds.")
    ] = None,
    secagg: Annotated[
        bool,
        typer.Option("--secagg", help="Secure aggregation: the coordinator sees only the masked sum."),
    ] = False,
    dropouts: Annotated[
        int,
        typer.Option(
            "--dropouts", min=0, help="With --secagg: sites that drop out of every round (at most n - t)."
        ),
    ] = 0,
) -> None:
    """Simulate federated training on non-IID sites and compare strategies with centralized training.

    Every strategy runs through the real file protocol (signed updates, the coordinator's
    aggregation, the privacy ledger). Writes rounds.csv, convergence.png and summary.md into the
    output folder; a killed run restarted with the same arguments continues where it stopped.
    Options left out take the benchmark's settings (docs/benchmarks.md, "Federated training"):
    4 sites, 20 rounds, FedAvg, FedProx, FedAdam and centralized, DP variants at z = 1.
    """
    from ecgdig.federated.simulate import SimulationSettings, ordering_check, simulate

    if not records:
        if not DEFAULT_RECORDS.is_dir():
            raise typer.BadParameter(
                f"no records given and {DEFAULT_RECORDS} does not exist", param_hint="RECORDS"
            )
        records = [DEFAULT_RECORDS]
    given = {
        "n_sites": sites,
        "rounds": rounds,
        "strategies": tuple(s.value for s in strategy) if strategy else None,
        "local_steps": local_steps,
        "adaptive_server_lr": server_lr,
        "seed": seed,
        "snr_every": snr_every,
        "secagg": secagg or None,
        "dropouts": dropouts or None,
    }
    overrides: dict[str, object] = {k: v for k, v in given.items() if v is not None}
    if dp_noise is not None:
        overrides["dp_noise"] = dp_noise or None  # 0 turns the DP variants off
    try:
        settings = SimulationSettings(**overrides)  # type: ignore[arg-type]
    except EcgdigError as exc:
        raise typer.BadParameter(str(exc)) from None
    runs = settings.runs()
    progress = Progress(
        TextColumn("[bold]fed-simulate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.description}"), console=err, transient=True, disable=not err.is_terminal,
    )  # fmt: skip
    task = progress.add_task("rendering", total=len(runs) * (settings.rounds + 1))

    def on_round(row: RoundRow) -> None:
        snr = "" if row.snr_db is None else f", SNR {row.snr_db:.2f} dB"
        eps = "" if row.epsilon is None else f", epsilon {row.epsilon:.1f}"
        progress.console.print(
            f"{row.run} round {row.round}: Dice {row.val_dice:.4f}{snr}{eps}", highlight=False
        )
        progress.advance(task)

    def on_stage(text: str) -> None:
        progress.update(task, description=text)

    try:
        with progress:
            result = simulate(
                records, output, settings, on_round=on_round, on_stage=on_stage,
                **({} if threads is None else {"threads": threads}),
            )  # fmt: skip
    except EcgdigError as exc:
        raise fail(exc) from None

    final = result.final()
    table = Table(title=f"fed-simulate: {settings.n_sites} sites, {settings.rounds} rounds")
    for column in ("strategy", "DP", "val Dice", "SNR (dB)", "epsilon"):
        table.add_column(column, justify="left" if column in ("strategy", "DP") else "right")
    for row in final.values():
        snrs = [r.snr_db for r in result.rows if r.run == row.run and r.snr_db is not None]
        table.add_row(
            row.strategy,
            f"z = {settings.dp_noise:g}" if row.dp else "no",
            f"{row.val_dice:.4f}",
            f"{snrs[-1]:.2f}" if snrs else "",
            "" if row.epsilon is None else f"{row.epsilon:.1f}",
        )
    out.print(table)
    for line in ordering_check(final):
        out.print(line, highlight=False)
    out.print(f"wrote {result.csv_path}, {result.plot_path}, {result.summary_path}", highlight=False)
