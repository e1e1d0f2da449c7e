"""What every command module shares: the typer app, the consoles and the one-line failure."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from ecgdig import __version__
from ecgdig.errors import EcgdigError

__all__ = ["app", "err", "fail", "out"]

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
