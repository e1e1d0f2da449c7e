"""Digitize: the composed pipeline (normalize, grid, segment, layout, vectorize) and the batch driver.

:func:`digitize_image` runs the stages in order and returns every intermediate result, so quality
plots and the JSON sidecar need no recomputation. :func:`digitize_file` adds file handling: it skips
pages already done, writes the WFDB record, the sidecar and the overlay atomically (the sidecar last,
as the completion marker), and turns every expected failure into a one-line message.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from ecgdig import __version__
from ecgdig.errors import DigitizationError, EcgdigError
from ecgdig.io import atomic_write_text, read_image, write_image, write_record
from ecgdig.layouts import load_layout
from ecgdig.leads import STANDARD_LEADS
from ecgdig.pipeline.grid import suppress_grid
from ecgdig.pipeline.layout import (
    attach_lead_separators,
    find_rows,
    infer_layout,
    rescale_from_layout,
)
from ecgdig.pipeline.layout_choice import choose_layout
from ecgdig.pipeline.normalize import normalize
from ecgdig.pipeline.orient import MIN_BEATS, Orientation, apply_orientation, detect_orientation
from ecgdig.pipeline.segment import DEFAULT_SEGMENTER, erase_ruled_lines, segment
from ecgdig.pipeline.vectorize import (
    DEFAULT_FS_HZ,
    follow_trace,
    strip_time_to_x,
    traces_to_record,
)
from ecgdig.types import (
    EcgRecord,
    GridSuppression,
    NormalizedPage,
    PageLayout,
    RowBand,
    RowTrace,
    TraceProbability,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "DigitizationResult",
    "DigitizeOptions",
    "PageOutcome",
    "collect_inputs",
    "digitize_file",
    "digitize_files",
    "digitize_image",
    "draw_overlay",
    "output_paths",
    "sidecar",
    "vectorize_probability",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})
#: Files written beside a page by ``render`` (truth) or ``digitize --overlay``; folders skip them.
_DERIVED_SUFFIXES = ("_mask", "_labels", "_overlay")
logger = logging.getLogger(__name__)
_RECORD_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
#: Below this grid confidence the scale is re-derived from the strip length or calibration pulse.
_TRUSTED_SCALE_CONFIDENCE = 0.5


@dataclass(frozen=True)
class DigitizeOptions:
    """Settings of one digitization run.

    Attributes
    ----------
    layout : str or None
        Layout template name or YAML path; None detects it from the number of strips.
    mm_per_s : float or None
        Paper speed; None reads it from the calibration pulse's width (else 25 mm/s).
    mm_per_mv : float or None
        Gain; None reads it from the calibration pulse (else 10 mm/mV).
    fs_hz : float
        Output sampling rate.
    duration_s : float or None
        Time shown by a full strip; None: 10 s at 25 mm/s, the strips' length at other speeds.
    segmenter : str
        ``"classical"`` or ``"unet"``.
    model_path : str or None
        Model file for the ``"unet"`` segmenter.
    threads : int or None
        CPU threads for learned-segmenter inference.
    target_px_per_mm : float
        Scale the page is resampled to before segmentation.
    min_confidence : float
        Leads whose fraction of found trace is below this are written as NaN (abstain).
    orient : bool
        Turn pages scanned sideways, upside down or mirrored upright first, and refuse images in
        which no heartbeat is seen (see :mod:`ecgdig.pipeline.orient`); False reads the page as it is.
    """

    layout: str | None = None
    mm_per_s: float | None = None
    mm_per_mv: float | None = None
    fs_hz: float = DEFAULT_FS_HZ
    duration_s: float | None = None
    segmenter: str = DEFAULT_SEGMENTER
    model_path: str | None = None
    threads: int | None = None
    target_px_per_mm: float = 8.0
    min_confidence: float = 0.25
    orient: bool = True


@dataclass(frozen=True)
class DigitizationResult:
    """Everything the pipeline computed for one page.

    Attributes
    ----------
    record : EcgRecord
        Twelve leads in mV; NaN where not shown or abstained.
    confidence : dict of str to float
        Per-lead fraction of the time window where trace was found.
    page : NormalizedPage
        The normalized page.
    grid : GridSuppression or None
        The page without its grid (None for the learned segmenter, which does not need it).
    probability : TraceProbability
        Trace probability map.
    rows : list of RowBand
        Strips found.
    traces : list of RowTrace or None
        Followed trace per strip.
    layout : PageLayout
        Lead placement and calibration.
    timings_s : dict of str to float
        Seconds spent in each stage.
    warnings : list of str
        Doubtful steps, from every stage.
    orientation : Orientation or None
        The turn or mirror applied to the input before everything else (None when not checked).
    """

    record: EcgRecord
    confidence: dict[str, float]
    page: NormalizedPage
    grid: GridSuppression | None
    probability: TraceProbability
    rows: list[RowBand]
    traces: list[RowTrace | None]
    layout: PageLayout
    timings_s: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    orientation: Orientation | None = None


def digitize_image(
    image: np.ndarray, *, name: str = "record", options: DigitizeOptions | None = None
) -> DigitizationResult:
    """Digitize one ECG page image.

    Parameters
    ----------
    image : (rows, cols, 3) ndarray of uint8
        The page, RGB.
    name : str, optional
        Record name for the output.
    options : DigitizeOptions, optional
        Run settings; defaults detect layout and gain.

    Returns
    -------
    DigitizationResult
        The record and every intermediate result.

    Raises
    ------
    DigitizationError
        If the image does not look like an ECG page or no trace can be followed.
    """
    options = options or DigitizeOptions()
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round(now - clock, 4)
        clock = now

    orientation = detect_orientation(image) if options.orient else None
    turned: list[str] = []
    if orientation is not None and not orientation.is_identity:
        image = apply_orientation(image, orientation)
        turned = [
            f"page {orientation.describe()} to make it upright (confidence {orientation.confidence:.2f}; "
            "see the sidecar's orientation evidence); pass --no-orient if it already was"
        ]
    lap("orient")
    page = normalize(image, target_px_per_mm=options.target_px_per_mm)
    lap("normalize")
    if orientation is not None:
        _refuse_non_ecg(orientation, page)
    # The learned segmenter reads the page itself; only the classical one needs the grid removed.
    grid = suppress_grid(page) if options.segmenter == "classical" else None
    lap("grid")
    probability = segment(
        page, grid=grid, segmenter=options.segmenter, model_path=options.model_path, threads=options.threads
    )
    lap("segment")
    try:
        vectorized = vectorize_probability(
            probability.probability,
            page.px_per_mm,
            name=name,
            options=options,
            scale_confidence=page.px_per_mm_confidence,
        )
    except DigitizationError as exc:
        if page.px_per_mm_confidence < 0.3:
            raise DigitizationError(
                f"does not look like an ECG page: no grid found and {exc.reason}"
            ) from None
        raise
    lap("layout+vectorize")
    return DigitizationResult(
        record=vectorized.record,
        confidence=vectorized.confidence,
        page=page,
        grid=grid,
        probability=probability,
        rows=vectorized.rows,
        traces=vectorized.traces,
        layout=vectorized.layout,
        timings_s=timings,
        warnings=turned + list(page.warnings) + vectorized.warnings,
        orientation=orientation,
    )


def _refuse_non_ecg(orientation: Orientation, page: NormalizedPage) -> None:
    """Raise if neither a grid nor heartbeats were seen: noise, a photo of anything else, text.

    Every real page measured showed at least 2 QRS complexes in every orientation (a photo of two
    leads), and those with so few had a grid; an image with no complex at all is no ECG page.
    """
    no_grid = page.px_per_mm_confidence < 0.3
    if orientation.beats == 0 or (no_grid and orientation.beats < MIN_BEATS):
        found = "no grid and " if no_grid else ""
        raise DigitizationError(
            f"does not look like an ECG page: {found}no heartbeat (QRS complex) seen along any strip; "
            "pass --no-orient to digitize it anyway"
        )


@dataclass(frozen=True)
class VectorizedPage:
    """Result of :func:`vectorize_probability`: the record plus the geometry behind it."""

    record: EcgRecord
    confidence: dict[str, float]
    rows: list[RowBand]
    traces: list[RowTrace | None]
    layout: PageLayout
    warnings: list[str]


def vectorize_probability(
    probability: np.ndarray,
    px_per_mm: float,
    *,
    name: str = "record",
    options: DigitizeOptions | None = None,
    scale_confidence: float = 1.0,
) -> VectorizedPage:
    """Turn a trace-probability map of a normalized page into a 12-lead record.

    Parameters
    ----------
    probability : (rows, cols) ndarray of float
        Trace probability in [0, 1] (a binary mask works too).
    px_per_mm : float
        Scale of the map.
    name : str, optional
        Record name.
    options : DigitizeOptions, optional
        Layout, speed, gain, rate and abstention settings.
    scale_confidence : float, optional
        Confidence of ``px_per_mm`` (0..1). Below 0.5 the scale is re-derived from the strip
        length or the calibration pulse where possible (see
        :func:`ecgdig.pipeline.layout.rescale_from_layout`).

    Returns
    -------
    VectorizedPage
        The record (leads below ``options.min_confidence`` set to NaN), confidences, strips,
        traces, layout and warnings.

    Raises
    ------
    DigitizationError
        If no strip of trace is found.
    """
    options = options or DigitizeOptions()
    probability = erase_ruled_lines(probability, px_per_mm)
    rows = find_rows(probability, px_per_mm)
    traces = [follow_trace(probability, band, px_per_mm) for band in rows]
    template = load_layout(options.layout) if options.layout else None
    layout = infer_layout(
        rows,
        traces,
        px_per_mm,
        template=template,
        mm_per_s=options.mm_per_s,
        mm_per_mv=options.mm_per_mv,
        duration_s=options.duration_s,
    )
    if scale_confidence < _TRUSTED_SCALE_CONFIDENCE:
        rescued = rescale_from_layout(layout)
        if rescued is not None:
            px_per_mm, how = rescued
            layout = infer_layout(
                rows,
                traces,
                px_per_mm,
                template=template,
                mm_per_s=options.mm_per_s,
                mm_per_mv=options.mm_per_mv,
                duration_s=options.duration_s,
            )
            layout = replace(
                layout, warnings=(*layout.warnings, f"grid scale unreliable: px/mm taken from {how}")
            )
    # The layout may have ignored strips (text lines); keep the traces of the strips it uses.
    kept = {id(band) for band in layout.rows}
    traces = [trace for band, trace in zip(rows, traces, strict=True) if id(band) in kept]
    rows = list(layout.rows)
    layout = attach_lead_separators(layout, probability, traces)
    vectorized = traces_to_record(traces, layout, fs_hz=options.fs_hz, name=name)
    if template is None:
        layout, vectorized, _ = choose_layout(
            layout,
            probability,
            traces,
            fs_hz=options.fs_hz,
            name=name,
            mm_per_s=options.mm_per_s,
            mm_per_mv=options.mm_per_mv,
            duration_s=options.duration_s,
        )
    record = vectorized.record
    abstained = [lead for lead, c in vectorized.confidence.items() if c < options.min_confidence]
    warnings = list(layout.warnings)
    if abstained:
        signal = record.signal_mv.copy()
        for lead in abstained:
            signal[:, STANDARD_LEADS.index(lead)] = np.nan
        record = replace(record, signal_mv=signal)
        warnings.append(f"too little trace found for {', '.join(abstained)}: written as NaN")
    return VectorizedPage(record, vectorized.confidence, rows, traces, layout, warnings)


def sidecar(result: DigitizationResult, *, source: Path | None = None) -> dict[str, object]:
    """Return the JSON sidecar of a digitized page: calibration, layout, confidence, warnings, timings.

    Parameters
    ----------
    result : DigitizationResult
        The digitized page.
    source : Path, optional
        The input image, recorded for traceability.

    Returns
    -------
    dict
        JSON-serialisable description (see ``docs/formats.md``).
    """
    layout = result.layout
    return {
        "ecgdig_version": __version__,
        "source": None if source is None else str(source),
        "record": result.record.name,
        "fs_hz": result.record.fs_hz,
        "duration_s": layout.duration_s,
        "layout": layout.template_name,
        "px_per_mm": round(result.page.px_per_mm, 5),
        "source_px_per_mm": round(result.page.source_px_per_mm, 5),
        "px_per_mm_confidence": round(result.page.px_per_mm_confidence, 3),
        "scale_method": result.page.scale_method,
        "rotation_deg": round(result.page.rotation_deg, 3),
        "perspective_corrected": result.page.perspective_corrected,
        "orientation": None
        if result.orientation is None
        else {
            "quarter_turns": result.orientation.quarter_turns,
            "mirrored": result.orientation.mirrored,
            "confidence": result.orientation.confidence,
            "evidence": result.orientation.evidence,
        },
        "grid_colour": None if result.grid is None else result.grid.grid_colour,
        "grid_leakage": None if result.grid is None else round(result.grid.leakage, 4),
        "segmenter": result.probability.segmenter,
        "mm_per_s": layout.mm_per_s,
        "mm_per_mv": layout.mm_per_mv,
        "gain_source": layout.gain_source,
        "speed_source": layout.speed_source,
        "duration_source": layout.duration_source,
        "calibration_pulses": [
            {
                "row": p.row,
                "height_mm": round(p.height_px / layout.px_per_mm, 3),
                "width_mm": round((p.x_end_px - p.x_start_px) / layout.px_per_mm, 3),
            }
            for p in layout.pulses
        ],
        "strips": [
            {
                "baseline_px": round(band.baseline_px, 1),
                "x_start_px": round(x0, 1),
                "x_end_px": round(x1, 1),
                "time_knots": [{"x_px": round(x, 1), "t_s": round(t, 4)} for x, t in layout.time_knots(i)],
            }
            for i, (band, x0, x1) in enumerate(
                zip(layout.rows, layout.row_x_start_px, layout.row_x_end_px, strict=True)
            )
        ],
        "lead_confidence": {lead: round(c, 3) for lead, c in result.confidence.items()},
        "warnings": result.warnings,
        "timings_s": result.timings_s,
    }


def draw_overlay(result: DigitizationResult) -> np.ndarray:
    """Draw the digitized signal back onto the normalized page, for visual quality control.

    Parameters
    ----------
    result : DigitizationResult
        The digitized page.

    Returns
    -------
    (rows, cols, 3) ndarray of uint8
        The page, faded, with each lead's digitized trace in colour and strip baselines dotted.
    """
    layout = result.layout
    canvas = (0.55 * result.page.image.astype(np.float32) + 0.45 * 255).astype(np.uint8)
    px_per_mv = layout.px_per_mm * layout.mm_per_mv
    t = np.arange(result.record.n_samples) / result.record.fs_hz
    palette = [(220, 20, 60), (0, 90, 200), (0, 150, 60)]
    for k, (lead, row, start_s, end_s, shift_s) in enumerate(layout.panels):
        if lead not in result.record.lead_names:
            continue
        values = result.record.lead(lead)
        window = (t >= start_s - shift_s) & (t < end_s - shift_s) & np.isfinite(values)
        if not np.any(window):
            continue
        x = strip_time_to_x(layout, row, t[window] + shift_s)
        y = layout.rows[row].baseline_px - values[window] * px_per_mv
        points = np.round(np.stack([x, y], axis=1) * 4).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(canvas, [points], False, palette[k % len(palette)], 1, cv2.LINE_AA, shift=2)
        cv2.putText(
            canvas, lead, (int(x[0]), int(layout.rows[row].baseline_px - 4 * layout.px_per_mm)),
            cv2.FONT_HERSHEY_SIMPLEX, 0.5, palette[k % len(palette)], 1, cv2.LINE_AA,
        )  # fmt: skip
    for band in layout.rows:
        y = round(band.baseline_px)
        canvas[y, :: max(2, round(layout.px_per_mm))] = (255, 140, 0)
    return canvas


@dataclass(frozen=True)
class PageOutcome:
    """What happened to one input page in a batch.

    Attributes
    ----------
    source : Path
        The input image.
    status : str
        ``"done"``, ``"skipped"`` (outputs existed) or ``"failed"``.
    message : str
        One line: the failure reason, or a summary.
    record_path : Path or None
        The written record stem.
    seconds : float
        Wall time spent on the page.
    """

    source: Path
    status: str
    message: str = ""
    record_path: Path | None = None
    seconds: float = 0.0


def record_name_for(path: Path) -> str:
    """Return a WFDB-safe record name for an input image (its stem, unsafe characters replaced)."""
    return _RECORD_NAME_UNSAFE.sub("_", path.stem).strip("_") or "record"


def output_paths(source: Path, out_dir: Path) -> dict[str, Path]:
    """Return the output files of one page: ``hea``, ``dat``, ``json`` (sidecar) and ``overlay``."""
    stem = out_dir / record_name_for(source)
    return {
        "hea": stem.with_suffix(".hea"),
        "dat": stem.with_suffix(".dat"),
        "json": stem.with_suffix(".json"),
        "overlay": out_dir / f"{stem.name}_overlay.png",
    }


def digitize_file(
    source: str | Path,
    out_dir: str | Path,
    *,
    options: DigitizeOptions | None = None,
    overlay: bool = False,
    force: bool = False,
) -> PageOutcome:
    """Digitize one image file into ``out_dir``; never raises for a bad page.

    Parameters
    ----------
    source : str or Path
        Input image.
    out_dir : str or Path
        Output folder: ``<name>.hea/.dat`` (WFDB), ``<name>.json`` (sidecar), ``<name>_overlay.png``.
    options : DigitizeOptions, optional
        Run settings.
    overlay : bool, optional
        Also write the quality-control overlay.
    force : bool, optional
        Redo pages whose outputs already exist.

    Returns
    -------
    PageOutcome
        Status and one-line message.
    """
    source, out_dir = Path(source), Path(out_dir)
    paths = output_paths(source, out_dir)
    started = time.perf_counter()
    if not force and all(paths[k].is_file() for k in ("hea", "dat", "json")):
        return PageOutcome(
            source, "skipped", "outputs exist (use --force to redo)", paths["hea"].with_suffix("")
        )
    try:
        image = read_image(source)
        result = digitize_image(image, name=record_name_for(source), options=options)
        record_path = write_record(result.record, out_dir)
        if overlay:
            write_image(paths["overlay"], draw_overlay(result))
        # The sidecar is written last: its presence marks the page as complete.
        atomic_write_text(paths["json"], json.dumps(sidecar(result, source=source), indent=2) + "\n")
    except EcgdigError as exc:
        message = str(exc) if exc.path is not None else f"{source}: {exc}"
        return PageOutcome(source, "failed", message, None, time.perf_counter() - started)
    except MemoryError:
        return PageOutcome(source, "failed", f"{source}: out of memory", None, time.perf_counter() - started)
    except Exception as exc:  # a bug on one page must not end the batch; say it is ours
        logger.exception("internal error on %s", source)
        message = f"{source}: internal error ({type(exc).__name__}: {exc}); please report it"
        return PageOutcome(source, "failed", message, None, time.perf_counter() - started)
    shown = sum(np.any(np.isfinite(result.record.signal_mv), axis=0))
    summary = f"{result.layout.template_name}, {shown} leads, {result.page.px_per_mm:.2f} px/mm"
    return PageOutcome(source, "done", summary, record_path, time.perf_counter() - started)


def collect_inputs(inputs: Iterable[str], stdin_lines: Iterable[str] = ()) -> list[Path]:
    """Expand command-line inputs into image files, in a stable order.

    Parameters
    ----------
    inputs : iterable of str
        Files, folders (searched recursively for image suffixes; ``X_mask``, ``X_labels`` and
        ``X_overlay`` images beside a page ``X`` are skipped) or ``-`` for a list on stdin.
    stdin_lines : iterable of str
        The lines of standard input, used where ``-`` appears.

    Returns
    -------
    list of Path
        Image paths, duplicates removed. Missing files are kept, so the batch reports them.
    """
    seen: dict[Path, None] = {}
    for item in inputs:
        if item == "-":
            candidates: Iterable[Path] = (Path(line.strip()) for line in stdin_lines if line.strip())
        else:
            path = Path(item)
            if path.is_dir():
                candidates = sorted(
                    p
                    for p in path.rglob("*")
                    if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not _is_derived_image(p)
                )
            else:
                candidates = [path]
        for candidate in candidates:
            seen.setdefault(candidate, None)
    return list(seen)


def _is_derived_image(path: Path) -> bool:
    """Tell masks, label maps and overlays (``X_mask.png`` beside page ``X.*``) from pages."""
    for suffix in _DERIVED_SUFFIXES:
        if path.stem.endswith(suffix):
            base = path.stem.removesuffix(suffix)
            return any(path.with_name(base + ext).is_file() for ext in IMAGE_SUFFIXES)
    return False


def _digitize_worker(args: tuple[Path, Path, DigitizeOptions, bool, bool]) -> PageOutcome:
    source, out_dir, options, overlay, force = args
    return digitize_file(source, out_dir, options=options, overlay=overlay, force=force)


def digitize_files(
    sources: list[Path],
    out_dir: str | Path,
    *,
    options: DigitizeOptions | None = None,
    overlay: bool = False,
    force: bool = False,
    workers: int = 1,
    on_page: Callable[[PageOutcome], None] | None = None,
) -> list[PageOutcome]:
    """Digitize many pages; a failed page never stops the batch.

    Parameters
    ----------
    sources : list of Path
        Input images (see :func:`collect_inputs`).
    out_dir : str or Path
        Output folder.
    options : DigitizeOptions, optional
        Run settings.
    overlay : bool, optional
        Write quality-control overlays.
    force : bool, optional
        Redo pages whose outputs exist.
    workers : int, optional
        Parallel processes (1 = in this process).
    on_page : callable, optional
        Called with each :class:`PageOutcome` as it completes (for progress display).

    Returns
    -------
    list of PageOutcome
        One per source, in input order.
    """
    out_dir = Path(out_dir)
    options = options or DigitizeOptions()
    jobs, clashes = _plan_jobs(sources, out_dir, options, overlay, force)
    outcomes: dict[Path, PageOutcome] = dict(clashes)
    for outcome in clashes.values():
        if on_page:
            on_page(outcome)
    for outcome in _run_jobs(jobs, workers):
        outcomes[outcome.source] = outcome
        if on_page:
            on_page(outcome)
    return [outcomes[s] for s in sources if s in outcomes]


def _plan_jobs(
    sources: list[Path], out_dir: Path, options: DigitizeOptions, overlay: bool, force: bool
) -> tuple[list[tuple[Path, Path, DigitizeOptions, bool, bool]], dict[Path, PageOutcome]]:
    """Refuse inputs whose record name clashes with an earlier input's, so no output is overwritten."""
    taken: dict[str, Path] = {}
    jobs = []
    clashes: dict[Path, PageOutcome] = {}
    for source in sources:
        name = record_name_for(source)
        if name in taken:
            clashes[source] = PageOutcome(
                source,
                "failed",
                f"{source}: record name {name!r} is already used by {taken[name]}; rename one",
            )
            continue
        taken[name] = source
        jobs.append((source, out_dir, options, overlay, force))
    return jobs, clashes


def _run_jobs(
    jobs: list[tuple[Path, Path, DigitizeOptions, bool, bool]], workers: int
) -> Iterator[PageOutcome]:
    if workers <= 1 or len(jobs) <= 1:
        yield from map(_digitize_worker, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_digitize_worker, jobs)
