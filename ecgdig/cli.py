"""The ``ecgdig`` command line: parses arguments, calls library functions, prints with rich.

Exit codes: 0 success, 1 some inputs failed (each reported in one line), 2 usage error.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ecgdig import __version__
from ecgdig.errors import EcgdigError

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
out = Console()
err = Console(stderr=True)


class Segmenter(StrEnum):
    """Trace segmenters."""

    classical = "classical"
    unet = "unet"


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


def _fail(exc: EcgdigError) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


def _options(
    layout: str | None, mm_per_s: float | None, mm_per_mv: float | None, fs_hz: float, segmenter: Segmenter
) -> object:
    from ecgdig.pipeline.digitize import DigitizeOptions

    return DigitizeOptions(
        layout=layout, mm_per_s=mm_per_s, mm_per_mv=mm_per_mv, fs_hz=fs_hz, segmenter=segmenter.value
    )


LayoutOpt = Annotated[
    str | None,
    typer.Option("--layout", help="Layout template (3x4+1, 3x4+3, 3x4, 6x2, 12x1, 6x1) or YAML file."),
]
SpeedOpt = Annotated[float | None, typer.Option("--mm-per-s", help="Paper speed in mm/s [default: 25].")]
GainOpt = Annotated[
    float | None,
    typer.Option("--mm-per-mv", help="Gain in mm/mV [default: from the calibration pulse, else 10]."),
]
RateOpt = Annotated[float, typer.Option("--fs", help="Output sampling rate in Hz.")]
SegmenterOpt = Annotated[Segmenter, typer.Option("--segmenter", help="Trace segmenter.")]


@app.command()
def digitize(
    inputs: Annotated[
        list[str], typer.Argument(help="Image files, folders, or - to read a list of paths from stdin.")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")],
    layout: LayoutOpt = None,
    mm_per_s: SpeedOpt = None,
    mm_per_mv: GainOpt = None,
    fs: RateOpt = 500.0,
    segmenter: SegmenterOpt = Segmenter.classical,
    overlay: Annotated[
        bool, typer.Option("--overlay", help="Also write <name>_overlay.png for quality control.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Redo pages whose outputs already exist.")] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Pages digitized in parallel.")] = 1,
) -> None:
    """Digitize ECG pages into WFDB records (.hea/.dat) with JSON sidecars.

    Pages whose outputs exist are skipped, so an interrupted batch resumes where it stopped.
    A page that fails is reported in one line and the batch goes on; the exit code is then 1.
    """
    from ecgdig.pipeline.digitize import PageOutcome, collect_inputs, digitize_files

    stdin_lines = sys.stdin.read().splitlines() if "-" in inputs else []
    sources = collect_inputs(inputs, stdin_lines)
    if not sources:
        err.print("[red]error:[/red] no input images found")
        raise typer.Exit(code=2)
    counts = {"done": 0, "skipped": 0, "failed": 0}
    with Progress(
        TextColumn("[bold]digitize"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.description}"), console=err, transient=not err.is_terminal,
    ) as progress:  # fmt: skip
        task = progress.add_task("", total=len(sources))

        def report(outcome: PageOutcome) -> None:
            counts[outcome.status] += 1
            if outcome.status == "failed":
                progress.console.print(
                    f"[red]failed:[/red] {outcome.message}", highlight=False, soft_wrap=True
                )
            progress.update(task, advance=1, description=outcome.source.name)

        digitize_files(
            sources,
            output,
            options=_options(layout, mm_per_s, mm_per_mv, fs, segmenter),  # type: ignore[arg-type]
            overlay=overlay,
            force=force,
            workers=workers,
            on_page=report,
        )
    err.print(
        f"{counts['done']} digitized, {counts['skipped']} skipped (already done), {counts['failed']} failed "
        f"-> {output}"
    )
    if counts["failed"]:
        raise typer.Exit(code=1)


@app.command()
def normalize(
    image: Annotated[Path, typer.Argument(help="Page image.")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Normalized page PNG (a .json goes beside it).")
    ],
    px_per_mm: Annotated[float, typer.Option("--px-per-mm", help="Output scale in px/mm.")] = 8.0,
) -> None:
    """Deskew, crop and rescale a page; measure its px/mm from the grid."""
    from ecgdig.pipeline.stage_files import normalize_file

    try:
        info = normalize_file(image, output, target_px_per_mm=px_per_mm)
    except EcgdigError as exc:
        raise _fail(exc) from None
    out.print(
        f"{image}: {info['source_px_per_mm']:.4f} px/mm in the source "
        f"(confidence {info['px_per_mm_confidence']:.2f}, {info['scale_method']}), "
        f"rotation {info['rotation_deg']:.2f} deg -> {output}"
    )


@app.command()
def grid(
    page: Annotated[Path, typer.Argument(help="Normalized page (or any page image).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Ink image PNG (black = non-grid ink).")],
) -> None:
    """Remove the grid, whatever its colour; report leakage."""
    from ecgdig.pipeline.stage_files import grid_file

    try:
        info = grid_file(page, output)
    except EcgdigError as exc:
        raise _fail(exc) from None
    out.print(f"{page}: {info['grid_colour']} grid, leakage {info['leakage']:.2%} -> {output}")


@app.command()
def segment(
    page: Annotated[Path, typer.Argument(help="Normalized page (or any page image).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Trace probability PNG (white = trace).")],
    segmenter: SegmenterOpt = Segmenter.classical,
) -> None:
    """Segment the ECG traces of a page into a probability mask."""
    from ecgdig.pipeline.stage_files import segment_file

    try:
        info = segment_file(page, output, segmenter=segmenter.value)
    except EcgdigError as exc:
        raise _fail(exc) from None
    out.print(f"{page}: {info['trace_fraction']:.2%} trace pixels ({info['segmenter']}) -> {output}")


@app.command()
def vectorize(
    mask: Annotated[Path, typer.Argument(help="Trace mask or probability PNG (white = trace).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder for the WFDB record.")],
    px_per_mm: Annotated[
        float | None,
        typer.Option("--px-per-mm", help="Mask scale [default: from the .json beside the mask]."),
    ] = None,
    layout: LayoutOpt = None,
    mm_per_s: SpeedOpt = None,
    mm_per_mv: GainOpt = None,
    fs: RateOpt = 500.0,
) -> None:
    """Turn a trace mask into twelve leads in mV (layout and calibration pulse detected)."""
    from ecgdig.pipeline.stage_files import vectorize_file

    try:
        info = vectorize_file(
            mask, output, px_per_mm=px_per_mm,
            options=_options(layout, mm_per_s, mm_per_mv, fs, Segmenter.classical),  # type: ignore[arg-type]
        )  # fmt: skip
    except EcgdigError as exc:
        raise _fail(exc) from None
    out.print(f"{mask}: layout {info['layout']}, {info['mm_per_mv']:g} mm/mV -> {info['record']}")
    for warning in info["warnings"]:  # type: ignore[attr-defined]
        err.print(f"[yellow]warning:[/yellow] {warning}")


def main() -> None:
    """Entry point of the ``ecgdig`` console script."""
    app()


if __name__ == "__main__":
    main()
