"""What every command module shares: the typer app, the consoles and the one-line failure."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ecgdig import __version__
from ecgdig.errors import EcgdigError

if TYPE_CHECKING:
    from ecgdig.model.train import StepInfo

__all__ = ["app", "err", "fail", "out", "training_progress"]

app = typer.Typer(
    name="ecgdig",
    help="Digitize paper 12-lead ECG pages into calibrated WFDB records; train the trace segmenter "
    "across hospitals.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    # typer < 0.23 shows local variables in tracebacks, which can print keys and paths.
    pretty_exceptions_show_locals=False,
)
# soft_wrap: never break a line, so output stays greppable in shell pipelines.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        out.print(f"ecgdig {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Digitize paper ECGs; train the segmenter across hospitals."""


def fail(exc: EcgdigError) -> typer.Exit:
    """Print ``exc`` as one red line on stderr and return the exit-1 exception to raise."""
    err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


def training_progress(label: str) -> tuple[Progress, Callable[[StepInfo], None]]:
    """Return a progress bar on stderr and the ``on_step`` callback that drives it.

    Without a terminal (a log file, a batch job at a site) the bar is off and a plain line is
    logged every 5% of the steps instead; validation Dice is always printed when it is computed.
    Use the bar as a context manager around the training call.
    """
    progress = Progress(
        TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.description}"), console=err, transient=True, disable=not err.is_terminal,
    )  # fmt: skip
    task = progress.add_task("", total=None)

    def report(info: StepInfo) -> None:
        log_every = 0 if err.is_terminal else max(1, info.total_steps // 20)
        if info.val_dice is not None:
            progress.console.print(f"step {info.step}: validation Dice {info.val_dice:.4f}", highlight=False)
        elif log_every and info.step % log_every == 0:
            progress.console.print(
                f"step {info.step}/{info.total_steps}: loss {info.loss:.4f}, lr {info.lr:.2e}, "
                f"{info.elapsed_s:.0f} s",
                highlight=False,
            )
        progress.update(
            task, completed=info.step, total=info.total_steps, description=f"loss {info.loss:.4f}"
        )

    return progress, report
