"""Digitization, rendering, training and scoring commands."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ecgdig.cli.common import app, err, fail, out, training_progress
from ecgdig.errors import EcgdigError
from ecgdig.pipeline.segment import DEFAULT_SEGMENTER


class Segmenter(StrEnum):
    """Trace segmenters."""

    classical = "classical"
    unet = "unet"


DEFAULT_SEGMENTER_OPTION = Segmenter(DEFAULT_SEGMENTER)


def _options(
    layout: str | None,
    mm_per_s: float | None,
    mm_per_mv: float | None,
    fs_hz: float,
    segmenter: Segmenter,
    model: Path | None = None,
    threads: int | None = None,
    orient: bool = True,
) -> object:
    from ecgdig.pipeline.digitize import DigitizeOptions

    _check_model_option(segmenter, model)
    return DigitizeOptions(
        layout=layout,
        mm_per_s=mm_per_s,
        mm_per_mv=mm_per_mv,
        fs_hz=fs_hz,
        segmenter=segmenter.value,
        model_path=None if model is None else str(model),
        threads=threads,
        orient=orient,
    )


def _check_model_option(segmenter: Segmenter, model: Path | None) -> None:
    # A model given with the classical segmenter would be silently ignored: say so instead.
    if model is not None and segmenter is not Segmenter.unet:
        raise typer.BadParameter("a model file is only used with --segmenter unet", param_hint="--model")


LayoutOpt = Annotated[
    str | None,
    typer.Option("--layout", help="Layout template (3x4+1, 3x4+3, 3x4, 6x2, 12x1, 6x1) or YAML file."),
]
SpeedOpt = Annotated[
    float | None,
    typer.Option("--mm-per-s", help="Paper speed in mm/s \\[default: from the calibration pulse, else 25]."),
]
GainOpt = Annotated[
    float | None,
    typer.Option("--mm-per-mv", help="Gain in mm/mV \\[default: from the calibration pulse, else 10]."),
]
RateOpt = Annotated[float, typer.Option("--fs", help="Output sampling rate in Hz.")]
SegmenterOpt = Annotated[
    Segmenter,
    typer.Option(
        "--segmenter",
        help="unet: the shipped U-Net (or --model); classical: grid removal and ink thresholds.",
    ),
]
ModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--model",
        help="Model file for --segmenter unet (safetensors, docs/model.md) \\[default: the shipped model].",
    ),
]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads for U-Net inference.")]


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
    segmenter: SegmenterOpt = DEFAULT_SEGMENTER_OPTION,
    model: ModelOpt = None,
    threads: ThreadsOpt = None,
    overlay: Annotated[
        bool, typer.Option("--overlay", help="Also write <name>_overlay.png for quality control.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Redo pages whose outputs already exist.")] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Pages digitized in parallel.")] = 1,
    orient: Annotated[
        bool,
        typer.Option(
            "--orient/--no-orient",
            help="Turn pages scanned sideways, upside down or mirrored upright first, and refuse images "
            "without heartbeats; --no-orient reads every page as it is.",
        ),
    ] = True,
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
            options=_options(layout, mm_per_s, mm_per_mv, fs, segmenter, model, threads, orient),  # type: ignore[arg-type]
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
        raise fail(exc) from None
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
        raise fail(exc) from None
    out.print(f"{page}: {info['grid_colour']} grid, leakage {info['leakage']:.2%} -> {output}")


@app.command()
def segment(
    page: Annotated[Path, typer.Argument(help="Normalized page (or any page image).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Trace probability PNG (white = trace).")],
    segmenter: SegmenterOpt = DEFAULT_SEGMENTER_OPTION,
    model: ModelOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Segment the ECG traces of a page into a probability mask."""
    from ecgdig.pipeline.stage_files import segment_file

    _check_model_option(segmenter, model)
    try:
        info = segment_file(page, output, segmenter=segmenter.value, model_path=model, threads=threads)
    except EcgdigError as exc:
        raise fail(exc) from None
    out.print(f"{page}: {info['trace_fraction']:.2%} trace pixels ({info['segmenter']}) -> {output}")


@app.command()
def vectorize(
    mask: Annotated[Path, typer.Argument(help="Trace mask or probability PNG (white = trace).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder for the WFDB record.")],
    px_per_mm: Annotated[
        float | None,
        typer.Option("--px-per-mm", help="Mask scale \\[default: from the .json beside the mask]."),
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
            options=_options(layout, mm_per_s, mm_per_mv, fs, DEFAULT_SEGMENTER_OPTION),  # type: ignore[arg-type]
        )  # fmt: skip
    except EcgdigError as exc:
        raise fail(exc) from None
    out.print(f"{mask}: layout {info['layout']}, {info['mm_per_mv']:g} mm/mV -> {info['record']}")
    for warning in info["warnings"]:  # type: ignore[attr-defined]
        err.print(f"[yellow]warning:[/yellow] {warning}")


@app.command()
def render(
    records: Annotated[list[Path], typer.Argument(help="WFDB records (.hea or stem) or folders of them.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder for pages and their truth.")],
    profile: Annotated[
        str,
        typer.Option(
            "--profile", help="Site profile: clean, scanner, phone, ecg-image-kit, site-* or a YAML file."
        ),
    ] = "clean",
    seed: Annotated[int, typer.Option("--seed", help="Seed; the same seed gives byte-identical pages.")] = 0,
    pages_per_record: Annotated[
        int, typer.Option("--pages-per-record", min=1, help="Pages drawn per record.")
    ] = 1,
    layout: Annotated[str | None, typer.Option("--layout", help="Force a layout (3x4+1, 6x2, ...).")] = None,
    dpi: Annotated[int | None, typer.Option("--dpi", min=50, max=600, help="Force a resolution.")] = None,
) -> None:
    """Render synthetic ECG pages with exact truth (mask, lead labels, boxes, reference record)."""
    from ecgdig.render import find_records, render_to_files

    try:
        stems = find_records(records)
        pages = render_to_files(
            stems,
            output,
            profile=profile,
            seed=seed,
            pages_per_record=pages_per_record,
            layout=layout,
            dpi=dpi,
        )
    except EcgdigError as exc:
        raise fail(exc) from None
    out.print(f"rendered {len(pages)} pages from {len(stems)} records ({profile} profile) -> {output}")


@app.command()
def train(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="WFDB records or folders of them; a folder of pages with masks counts as --pages."
        ),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model file to write (.safetensors).")],
    profile: Annotated[
        list[str] | None,
        typer.Option("--profile", help="Site profile used to render records; repeat for a mix."),
    ] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Optimizer steps.")] = 1000,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="256 px crops per step.")] = 8,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Peak AdamW learning rate.")] = 2e-3,
    seed: Annotated[int, typer.Option("--seed", help="Seed; the same seed gives the same model.")] = 0,
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", help="Resumable checkpoint \\[default: <output>.ckpt.safetensors]."),
    ] = None,
    threads: ThreadsOpt = None,
    init: Annotated[
        Path | None,
        typer.Option("--init", help="Fine-tune this model file instead of starting from random weights."),
    ] = None,
    snr_records: Annotated[
        int,
        typer.Option(
            "--snr-records", min=0, help="Held-out records digitized after training for the validation SNR."
        ),
    ] = 4,
    device: Annotated[
        str, typer.Option("--device", help="Where the steps run: cpu, or a CUDA GPU (cuda, cuda:1).")
    ] = "cpu",
    workers: Annotated[
        int,
        typer.Option("--workers", min=0, help="Processes rendering pages at once (0, 1: none); same crops."),
    ] = 0,
    pages: Annotated[
        list[Path] | None,
        typer.Option(
            "--pages",
            help="Folder of pages with masks ('ecgdig render' or 'ecgdig import-eik' output) to train on "
            "too; repeat.",
        ),
    ] = None,
    pages_fraction: Annotated[
        float | None,
        typer.Option(
            "--pages-fraction",
            min=0.0,
            max=1.0,
            help="Share of training pages drawn from the page folders when records are given too "
            "\\[default: 0.25].",
        ),
    ] = None,
) -> None:
    """Train the U-Net trace segmenter on pages rendered on the fly, read from folders, or both.

    With records and page folders, --pages-fraction of the training pages come from the folders.
    A killed run restarted with the same arguments resumes from its checkpoint.
    """
    from ecgdig.model.run import train_to_file

    if checkpoint is None:
        checkpoint = output.with_name(output.name.removesuffix(".safetensors") + ".ckpt.safetensors")
    progress, report = training_progress("train")
    try:
        with progress:
            run = train_to_file(
                inputs, output, profiles=profile or ("scanner", "phone"), steps=steps,
                batch_size=batch_size, lr=lr, seed=seed, checkpoint=checkpoint, threads=threads,
                on_step=report, init_from=init, snr_records=snr_records, device=device, workers=workers,
                pages=pages or (), pages_fraction=pages_fraction,
            )  # fmt: skip
    except EcgdigError as exc:
        raise fail(exc) from None
    dice = run.result.final_val_dice
    snr = run.metrics.get("val_snr_db")
    out.print(
        f"trained {run.result.steps} steps on {run.n_train} records/pages ({run.n_val} held out"
        + ("" if dice is None else f", validation Dice {dice:.4f}")
        + ("" if snr is None else f", validation SNR {snr:.2f} dB")
        + f") -> {run.model_path}"
    )


#: A written page whose mask lies less on trace ink than this gets a warning. Of the 64 shared
#: ecg-image-kit pages the worst (eik032: rotated, noisy, 150 dpi, blue grid) has 0.95; the same
#: pages without their crop or border correction have 0.01-0.64.
_EIK_MIN_MASK_ON_INK = 0.9


@app.command("import-eik")
def import_eik(
    pages_dir: Annotated[
        Path,
        typer.Argument(
            help="ecg-image-kit output: page images with their --store_config 2 JSON beside them, or "
            "pages/ and meta/ folders (and MANIFEST.csv with the crop fractions)."
        ),
    ],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Training folder to write (for 'ecgdig train --pages').")
    ],
    split: Annotated[
        Path | None,
        typer.Option("--split", help="CSV with page and part columns: import only the part=train pages."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Write pages whose files already exist again.")
    ] = False,
) -> None:
    """Make a training folder of ecg-image-kit pages, with exact trace masks from their plotted pixels.

    Pages already written are skipped. A page that fails is reported in one line and the others go
    on; the exit code is then 1.
    """
    from ecgdig.io.ecg_image_kit import (
        ImportOutcome,
        find_ecg_image_kit_pages,
        read_split,
        write_training_folder,
    )

    try:
        names = None if split is None else read_split(split, "train")
        pages = find_ecg_image_kit_pages(pages_dir, names=names)
    except EcgdigError as exc:
        raise fail(exc) from None
    counts = {"written": 0, "skipped": 0, "failed": 0}
    with Progress(
        TextColumn("[bold]import-eik"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.description}"), console=err, transient=not err.is_terminal,
    ) as progress:  # fmt: skip
        task = progress.add_task("", total=len(pages))

        def report(outcome: ImportOutcome) -> None:
            counts[outcome.status] += 1
            if outcome.status == "failed":
                progress.console.print(
                    f"[red]failed:[/red] {outcome.message}", highlight=False, soft_wrap=True
                )
            elif outcome.mask_on_ink is not None and outcome.mask_on_ink < _EIK_MIN_MASK_ON_INK:
                progress.console.print(
                    f"[yellow]warning:[/yellow] {outcome.name}: only {outcome.mask_on_ink:.0%} of the mask "
                    "lies on trace ink (a crop fraction missing from MANIFEST.csv?)",
                    highlight=False,
                    soft_wrap=True,
                )
            progress.update(task, advance=1, description=outcome.name)

        write_training_folder(pages, output, force=force, on_page=report)
    err.print(
        f"{counts['written']} written, {counts['skipped']} skipped (already done), {counts['failed']} failed "
        f"-> {output}"
    )
    if counts["failed"]:
        raise typer.Exit(code=1)


@app.command()
def average(
    models: Annotated[list[Path], typer.Argument(help="Two or more model files of one architecture.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Averaged model file to write.")],
    weight: Annotated[
        list[float] | None,
        typer.Option("--weight", min=0.0, help="Weight of each model, in order (default: equal); repeat."),
    ] = None,
    records: Annotated[
        list[Path] | None,
        typer.Option("--records", help="Training records: score the average on their held-out part; repeat."),
    ] = None,
    profile: Annotated[
        list[str] | None,
        typer.Option("--profile", help="Profiles of that validation, as for 'train'; repeat."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of that validation, as for 'train'.")] = 0,
    snr_records: Annotated[
        int, typer.Option("--snr-records", min=0, help="Held-out records digitized for the validation SNR.")
    ] = 4,
    threads: ThreadsOpt = None,
) -> None:
    """Average the weights of model files (a model soup: a fine-tune with the model it started from)."""
    from ecgdig.model.files import read_model_header
    from ecgdig.model.run import average_models

    try:
        path = average_models(
            models, output, weights=weight, validate_on=records or (),
            profiles=profile or ("scanner", "phone"), seed=seed, snr_records=snr_records, threads=threads,
        )  # fmt: skip
        metrics = read_model_header(path).metrics
    except EcgdigError as exc:
        raise fail(exc) from None
    scores = ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))
    out.print(f"averaged {len(models)} models -> {path}" + (f" ({scores})" if scores else ""))


class MetricChoice(StrEnum):
    """Scoring metrics."""

    challenge = "challenge"
    kaggle = "kaggle"


@app.command()
def evaluate(
    pred_dir: Annotated[Path, typer.Argument(help="Folder of digitized WFDB records.")],
    truth_dir: Annotated[Path, typer.Argument(help="Folder of reference WFDB records (matched by name).")],
    metric: Annotated[
        MetricChoice, typer.Option("--metric", help="PhysioNet 2024 SNR or the 2025 Kaggle variant.")
    ] = (MetricChoice.challenge),
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the full report as JSON instead of tables.")
    ] = False,
    plots: Annotated[
        Path | None,
        typer.Option("--plots", help="Write one overlay PNG per record (digitized vs reference) here."),
    ] = None,
    per_lead: Annotated[
        bool, typer.Option("--per-lead", help="Also print the table of every (record, lead).")
    ] = False,
) -> None:
    """Score digitized records against references: SNR (dB), Pearson r and RMSE per lead and record."""
    from ecgdig.evaluate import evaluate_folders, plot_overlays

    try:
        report = evaluate_folders(pred_dir, truth_dir, metric=metric.value)
        if plots is not None:
            plot_overlays(report, pred_dir, truth_dir, plots)
    except EcgdigError as exc:
        raise fail(exc) from None
    if as_json:
        out.print_json(report.to_json())
        return
    if per_lead:
        leads = Table(title="Per lead", show_lines=False)
        for column in ("record", "lead", "SNR dB", "r", "RMSE mV", "shift s", "note"):
            leads.add_column(column, justify="left" if column in {"record", "lead", "note"} else "right")
        for row in report.rows:
            note = "perfect" if row.perfect else ("missing" if row.missing else "")
            leads.add_row(
                row.record, row.lead, f"{row.snr_db:.2f}", f"{row.pearson_r:.3f}", f"{row.rmse_mv:.3f}",
                f"{row.shift_samples}", note,
            )  # fmt: skip
        out.print(leads)
    records = Table(title=f"Per record ({report.metric} metric)")
    for column in ("record", "SNR dB", "leads", "perfect", "prediction"):
        records.add_column(column, justify="left" if column in {"record", "prediction"} else "right")
    for summary in report.records:
        records.add_row(
            summary.record,
            f"{summary.snr_db:.2f}",
            str(summary.n_leads),
            str(summary.n_perfect),
            summary.prediction,
        )
    out.print(records)
    out.print(
        f"mean SNR {report.mean_snr_db:.2f} dB over {report.n_leads_scored} of {report.n_leads} "
        "(record, lead) pairs; "
        f"{report.mean_snr_db_missing_as_zero:.2f} dB counting unscored leads as 0 dB; "
        f"{report.n_missing_records} missing records; {report.n_perfect_leads} perfect leads "
        f"(capped at {report.perfect_snr_db:g} dB)"
    )
