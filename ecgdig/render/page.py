"""Page geometry and drawing: one ECG record printed as a page with exact ground truth.

Geometry follows ecg-image-kit's conventions where they are fixed (Challenge 2024 pages): the
strip starts ``margin_left_mm`` from the left edge (10 mm there), a calibration pulse when printed
sits before the strip, rows are evenly spaced below a header area of ``2 / (rows + 2)`` of the page
height, lead names are printed 7 mm below the baseline at the start of each lead, and the speed and
gain are printed 5 mm above the bottom edge.

Time and voltage map to pixels exactly (pixel centres at integer coordinates): sample ``i`` of a row
is drawn at ``x = row_x0 + (i / fs + shift) * mm_per_s * px_per_mm`` and a voltage ``v`` at
``y = baseline_y - v * mm_per_mv * px_per_mm``. Row ``r`` of a layout spans strip times
``[0, strip_duration_s)``; a row of ``k`` leads puts lead ``c`` at ``[c, c + 1) * strip_duration_s / k``
(:meth:`~ecgdig.layouts.LeadPanel.time_window_s`) and shows there the record times
:meth:`~ecgdig.layouts.LeadPanel.record_window_s`: the same times (``shift = 0``, so the plotted
time of column ``x`` is ``(x - row_x0) / px_per_mm / mm_per_s`` on every row) or, on layouts whose
columns restart, the record from time zero (``shift`` = the column's start).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw

from ecgdig.errors import ConfigError, RecordInputError
from ecgdig.layouts import LayoutTemplate, LeadPanel, load_layout
from ecgdig.leads import STANDARD_LEADS, canonical_lead_name
from ecgdig.render import augment
from ecgdig.render.draw import (
    Stroke,
    composite,
    grid_coverage,
    rasterize_strokes,
    span_profile,
    supersample_factor,
)
from ecgdig.render.settings import PAPER_SIZES_MM, RenderSettings
from ecgdig.render.text import footer_items, header_items, load_font
from ecgdig.types import EcgRecord

__all__ = [
    "PULSE_HEIGHT_MV",
    "PULSE_WIDTH_S",
    "WINDOW_S",
    "LeadBox",
    "PageGeometry",
    "RenderedPage",
    "RowGeometry",
    "page_geometry",
    "render_page",
]

#: Length of the signal window a page is cut from, and of its reference record, in seconds.
WINDOW_S = 10.0
#: Calibration pulse: 1 mV for 0.2 s after 0.04 s of baseline; the signal starts where it falls.
PULSE_HEIGHT_MV = 1.0
PULSE_WIDTH_S = 0.2
_PULSE_PAD_S = 0.04
#: Lead names sit this far below (or above) the baseline, as ecg-image-kit prints them.
_LABEL_BELOW_MM = 7.0
_LABEL_ABOVE_MM = 6.0
_SEPARATOR_HALF_MM = 3.0
_EIK_SEPARATOR_HALF_MM = 3.5
_EIK_PULSE_RISE_S = 0.003
_FRAME_MM = 0.8 / 72.0 * 25.4  # matplotlib's default axes frame, 0.8 pt
_TEXT_RGB = (20, 20, 20)


@dataclass(frozen=True)
class RowGeometry:
    """One printed row.

    Attributes
    ----------
    index : int
        Row index from the top, 0-based.
    baseline_y : float
        The 0 mV line, in page pixels.
    panels : tuple of LeadPanel
        The leads printed on the row, left to right.
    rhythm : bool
        Whether the row is a full-width rhythm strip below the lead block.
    """

    index: int
    baseline_y: float
    panels: tuple[LeadPanel, ...]
    rhythm: bool = False


@dataclass(frozen=True)
class PageGeometry:
    """Where everything goes on the flat page, in page pixels (pixel centres at integers).

    Attributes
    ----------
    width_px, height_px : int
        Page size.
    px_per_mm : float
        ``dpi / 25.4``.
    strip_duration_s : float
        Seconds shown by a full-width row.
    row_x0 : float
        x of time 0 on every row.
    pulse_x0 : float or None
        x where the calibration pulse starts, None when no pulse is printed.
    rows : tuple of RowGeometry
        Rows from top to bottom.
    grid_box : (x0, y0, x1, y1)
        Area covered by the grid.
    grid_origin : (x, y)
        A crossing of two major grid lines.
    """

    width_px: int
    height_px: int
    px_per_mm: float
    strip_duration_s: float
    row_x0: float
    pulse_x0: float | None
    rows: tuple[RowGeometry, ...]
    grid_box: tuple[float, float, float, float]
    grid_origin: tuple[float, float]

    def x_of_time(self, t_s: float | np.ndarray, mm_per_s: float) -> Any:
        """Return the x (page pixels) where time ``t_s`` (seconds into the strip) is drawn."""
        return self.row_x0 + np.asarray(t_s) * mm_per_s * self.px_per_mm


@dataclass(frozen=True)
class LeadBox:
    """Where one lead panel is printed, in output-image pixels.

    Attributes
    ----------
    lead : str
        Standard lead name.
    row, column : int
        Row (from the top) and column (from the left), 0-based.
    x0, y0, x1, y1 : float
        Axis-aligned box: the lead's time span horizontally and its drawn trace vertically (line
        width included), clipped to the image. After a geometric degradation it bounds the
        transformed box (see ``quad``).
    baseline_y : float
        y of the 0 mV line at the box's horizontal centre.
    t_start_s, t_end_s : float
        Seconds of the window the lead shows (record time: on layouts whose columns restart, the
        second column's box starts at 0 s although it sits mid-strip).
    quad : tuple of (x, y)
        The four box corners (top-left, top-right, bottom-right, bottom-left) after the geometric
        transform; equal to the axis-aligned corners on a flat page.
    baseline : ((x, y), (x, y))
        The 0 mV line from the start to the end of the lead's time span.
    label_box : (x0, y0, x1, y1) or None
        Bounding box of the printed lead name, None when not printed.
    """

    lead: str
    row: int
    column: int
    x0: float
    y0: float
    x1: float
    y1: float
    baseline_y: float
    t_start_s: float
    t_end_s: float
    quad: tuple[tuple[float, float], ...]
    baseline: tuple[tuple[float, float], tuple[float, float]]
    label_box: tuple[float, float, float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (floats rounded to 1e-4 px)."""
        return _round_floats(asdict(self))


@dataclass(frozen=True)
class RenderedPage:
    """A rendered page and its ground truth.

    Attributes
    ----------
    image : (rows, cols, 3) ndarray of uint8
        The page as an RGB image, degradations applied (JPEG-decoded when JPEG is on).
    trace_mask : (rows, cols) ndarray of bool
        Pixels at least half covered by a trace or calibration pulse.
    lead_labels : (rows, cols) ndarray of uint8
        0 off the traces, else 1 + the lead's index in :data:`ecgdig.leads.STANDARD_LEADS`
        (calibration pulses carry the label of their row's first lead); nonzero exactly on
        ``trace_mask``.
    lead_boxes : tuple of LeadBox
        One per plotted lead panel.
    reference : EcgRecord
        The 12 standard leads over the chosen window at the source sampling rate, NaN where the lead
        is not plotted (as the Challenge 2024 hidden references are); named like the page.
    px_per_mm : float
        True scale of the flat page (``dpi / 25.4``), before any geometric degradation.
    settings : RenderSettings
        The settings used.
    truth : dict
        JSON-ready record of everything needed to reproduce or check the page (see
        ``docs/render.md``).
    encoded : bytes or None
        The JPEG file bytes when the page was JPEG-compressed (``image`` is their decoding).
    """

    image: np.ndarray
    trace_mask: np.ndarray
    lead_labels: np.ndarray
    lead_boxes: tuple[LeadBox, ...]
    reference: EcgRecord
    px_per_mm: float
    settings: RenderSettings
    truth: dict[str, Any] = field(default_factory=dict)
    encoded: bytes | None = None


def _page_size_mm(settings: RenderSettings) -> tuple[float, float]:
    short, long = PAPER_SIZES_MM[settings.paper]
    return (long, short) if settings.orientation == "landscape" else (short, long)


def page_geometry(settings: RenderSettings, layout: LayoutTemplate) -> PageGeometry:
    """Lay out rows, strip start and grid for ``settings`` and ``layout``.

    Parameters
    ----------
    settings : RenderSettings
        Page settings.
    layout : LayoutTemplate
        The lead layout.

    Returns
    -------
    PageGeometry

    Raises
    ------
    ConfigError
        If the strip or the rows do not fit on the page.

    Examples
    --------
    >>> from ecgdig.layouts import load_layout
    >>> g = page_geometry(RenderSettings(), load_layout("3x4+1"))
    >>> (g.width_px, g.height_px, g.strip_duration_s, len(g.rows))
    (2200, 1700, 10.0, 4)
    """
    ppm = settings.px_per_mm
    w_mm, h_mm = _page_size_mm(settings)
    width_px, height_px = round(w_mm * ppm), round(h_mm * ppm)
    lead_in_s = _PULSE_PAD_S if settings.marker_style == "cart" else 0.0
    pulse_mm = (lead_in_s + PULSE_WIDTH_S) * settings.mm_per_s if settings.calibration_pulse else 0.0
    row_x0_mm = settings.margin_left_mm + pulse_mm
    printable_s = (w_mm - row_x0_mm - settings.margin_right_mm) / settings.mm_per_s
    duration_s = min(WINDOW_S, math.floor(printable_s * 2.0 + 1e-9) / 2.0)
    if duration_s < 1.0:
        raise ConfigError(
            f"a {settings.paper} {settings.orientation} page at {settings.mm_per_s:g} mm/s leaves "
            f"{printable_s:.2f} s for the strip; reduce the margins"
        )
    n_rows = layout.n_rows
    top_mm = settings.top_margin_mm if settings.top_margin_mm is not None else 2.0 * h_mm / (n_rows + 2)
    pitch_mm = (h_mm - top_mm - settings.bottom_margin_mm) / n_rows
    if pitch_mm < 5.0:
        raise ConfigError(
            f"{n_rows} rows do not fit between top margin {top_mm:.1f} mm and bottom margin "
            f"{settings.bottom_margin_mm:.1f} mm on a {h_mm:.0f} mm tall page"
        )
    panels = layout.panels()
    n_block = len(layout.rows)
    rows = tuple(
        RowGeometry(
            index=r,
            baseline_y=(top_mm + (r + settings.baseline_position) * pitch_mm) * ppm
            - 0.5
            - (settings.rhythm_raise_mm * ppm if r >= n_block else 0.0),
            panels=tuple(p for p in panels if p.row == r),
            rhythm=r >= n_block,
        )
        for r in range(n_rows)
    )

    def px(v_mm: float) -> float:
        return v_mm * ppm - 0.5

    if settings.grid_extent == "page":
        grid_box = (-0.5, -0.5, width_px - 0.5, height_px - 0.5)
        origin = (px(settings.margin_left_mm), px(h_mm))  # ecg-image-kit counts lines from the bottom
    else:
        gx0 = settings.margin_left_mm - (5.0 if settings.margin_left_mm >= 5.0 else 0.0)
        end_mm = row_x0_mm + duration_s * settings.mm_per_s + 2.0
        gx1 = gx0 + 5.0 * math.ceil((end_mm - gx0) / 5.0)
        while gx1 > w_mm:
            gx1 -= 5.0
        gy0 = max(0.0, top_mm - 2.0)
        gy1 = gy0 + 5.0 * math.ceil((h_mm - settings.bottom_margin_mm - gy0) / 5.0)
        while gy1 > h_mm:
            gy1 -= 5.0
        grid_box = (px(gx0), px(gy0), px(gx1), px(gy1))
        origin = (px(gx0), px(gy0))
    return PageGeometry(
        width_px=width_px,
        height_px=height_px,
        px_per_mm=ppm,
        strip_duration_s=duration_s,
        row_x0=px(row_x0_mm),
        pulse_x0=px(settings.margin_left_mm) if settings.calibration_pulse else None,
        rows=rows,
        grid_box=grid_box,
        grid_origin=origin,
    )


def _sample_range(t0_s: float, t1_s: float, fs_hz: float, n: int) -> tuple[int, int]:
    """Return indices ``[i0, i1)`` of samples with times in ``[t0, t1)``, within ``[0, n)``."""
    i0 = math.ceil(t0_s * fs_hz - 1e-9)
    i1 = math.ceil(t1_s * fs_hz - 1e-9)
    return min(max(i0, 0), n), min(max(i1, 0), n)


def _finite_runs(points: np.ndarray) -> list[np.ndarray]:
    """Split an (n, 2) array at rows holding NaN."""
    ok = np.isfinite(points).all(axis=1)
    if ok.all():
        return [points] if len(points) else []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], ok.view(np.int8), [0]])))
    return [points[a:b] for a, b in zip(edges[::2], edges[1::2], strict=True)]


@dataclass(frozen=True)
class _Panel:
    """One lead panel as drawn on the flat page: record times ``t0, t1`` at strip positions ``x0, x1``."""

    panel: LeadPanel
    t0: float
    t1: float
    x0: float
    x1: float
    baseline_y: float
    points: np.ndarray  # (n, 2) vertices of this lead's trace, NaN where the signal is NaN

    @property
    def plotted(self) -> bool:
        return bool(np.isfinite(self.points).all(axis=1).any())


@dataclass
class _Traces:
    """Everything the pen draws on the flat page, and the reference it implies."""

    panels: list[_Panel]
    strokes: list[Stroke]
    separators: list[tuple[float, float]]
    pulses: list[dict[str, float]]
    reference: np.ndarray  # (n_window, 12) mV, NaN where not plotted
    thick_strokes: list[Stroke] = field(default_factory=list)  # drawn 1.5 times as wide


def _signal_lookup(record: EcgRecord) -> dict[str, np.ndarray]:
    """Map standard lead names to the record's columns (first match wins)."""
    out: dict[str, np.ndarray] = {}
    for j, name in enumerate(record.lead_names):
        canon = canonical_lead_name(name)
        if canon in STANDARD_LEADS and canon not in out:
            out[canon] = record.signal_mv[:, j]
    return out


def _pulse_points(pulse_x0: float, baseline_y: float, settings: RenderSettings) -> np.ndarray:
    """Vertices of the calibration pulse before a row: baseline, 1 mV for 0.2 s, back down.

    The signal starts where the pulse falls, as printers draw it (``marker_style="cart"``).
    ecg-image-kit's pulse (``"eik"``) rises at once, falls 3 ms after the signal starts and runs
    on for another 3 ms of baseline (its 0.2 s of ones between two zero samples each side, at 500 Hz).
    """
    if settings.marker_style == "eik":
        rise, fall = _EIK_PULSE_RISE_S, _EIK_PULSE_RISE_S + PULSE_WIDTH_S
        ts = np.array([0.0, rise, rise, fall, fall, fall + _EIK_PULSE_RISE_S])
        vs = np.array([0.0, 0.0, PULSE_HEIGHT_MV, PULSE_HEIGHT_MV, 0.0, 0.0])
    else:
        rise, fall = _PULSE_PAD_S, _PULSE_PAD_S + PULSE_WIDTH_S
        ts = np.array([0.0, rise, rise, fall, fall])
        vs = np.array([0.0, 0.0, PULSE_HEIGHT_MV, PULSE_HEIGHT_MV, 0.0])
    ppm = settings.px_per_mm
    return np.stack([pulse_x0 + ts * settings.mm_per_s * ppm, baseline_y - vs * settings.mm_per_mv * ppm], 1)


def _lay_out_traces(
    geom: PageGeometry, settings: RenderSettings, window: dict[str, np.ndarray], n_window: int, fs: float
) -> _Traces:
    """Place every lead's samples on its row and build the strokes and the reference."""
    v_scale, t_scale = settings.mm_per_mv * geom.px_per_mm, settings.mm_per_s * geom.px_per_mm
    out = _Traces([], [], [], [], np.full((n_window, len(STANDARD_LEADS)), np.nan))
    for row in geom.rows:
        prev_last: np.ndarray | None = None  # the pen's last position, for connect_columns
        for panel in row.panels:
            s0, s1 = panel.time_window_s(geom.strip_duration_s)  # where on the strip
            t0, t1 = panel.record_window_s(geom.strip_duration_s)  # which record times
            i0, i1 = _sample_range(t0, t1, fs, n_window)
            lead_index = STANDARD_LEADS.index(panel.lead)
            if panel.lead in window:
                values = window[panel.lead][i0:i1]
                out.reference[i0:i1, lead_index] = values
            else:
                values = np.full(i1 - i0, np.nan)
            # A zero shift adds 0.0, leaving the positions of sequential layouts bit-identical.
            x = geom.row_x0 + (np.arange(i0, i1) / fs + (s0 - t0)) * t_scale
            pts = np.stack([x, row.baseline_y - values * v_scale], axis=1)
            draw_pts = pts
            if settings.connect_columns and prev_last is not None and len(pts) and np.isfinite(pts[0]).all():
                draw_pts = np.concatenate([prev_last[None, :], pts])  # the joining jump belongs to this lead
            out.strokes.extend(Stroke(run, lead_index + 1) for run in _finite_runs(draw_pts))
            prev_last = pts[-1] if len(pts) and np.isfinite(pts[-1]).all() else None
            x0 = float(geom.x_of_time(s0, settings.mm_per_s))
            x1 = float(geom.x_of_time(s1, settings.mm_per_s))
            out.panels.append(_Panel(panel, t0, t1, x0, x1, row.baseline_y, pts))
            if settings.lead_separators and panel.column > 0:
                out.separators.append((x0, row.baseline_y))
        if geom.pulse_x0 is not None and row.panels:
            pts = _pulse_points(geom.pulse_x0, row.baseline_y, settings)
            pen = out.thick_strokes if settings.marker_style == "eik" else out.strokes
            pen.append(Stroke(pts, STANDARD_LEADS.index(row.panels[0].lead) + 1))
            out.pulses.append(
                {
                    "row": row.index,
                    "x0": float(pts[0, 0]),
                    "x1": float(pts[-1, 0]),
                    "baseline_y": row.baseline_y,
                    "top_y": row.baseline_y - PULSE_HEIGHT_MV * v_scale,
                }
            )
    return out


def render_page(
    record: EcgRecord,
    settings: RenderSettings,
    rng: np.random.Generator | int | None = None,
    *,
    page_name: str | None = None,
) -> RenderedPage:
    """Print ``record`` on a synthetic ECG page and return the image with its exact truth.

    Parameters
    ----------
    record : EcgRecord
        Any sampling rate; lead names are matched case-insensitively (``avr`` is aVR). A record
        longer than 10 s is cut to a 10 s window starting at a sample drawn from ``rng``.
    settings : RenderSettings
        How to print and degrade the page.
    rng : numpy.random.Generator or int or None
        Randomness (window start, header values, degradations); an int seeds a new Generator and
        is recorded as ``truth["seed"]``.
    page_name : str, optional
        Name of the reference record (default ``"<record.name>-0"``).

    Returns
    -------
    RenderedPage

    Raises
    ------
    RecordInputError
        If the record shows none of the layout's leads.
    ConfigError
        If the layout cannot be loaded or does not fit the page.

    Examples
    --------
    >>> import numpy as np
    >>> from ecgdig.types import EcgRecord
    >>> t = np.arange(5000) / 500
    >>> rec = EcgRecord("demo", np.tile(np.sin(2 * np.pi * t)[:, None], (1, 12)), 500.0,
    ...                 ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"))
    >>> page = render_page(rec, RenderSettings(dpi=100), rng=0)
    >>> page.image.shape, bool(page.trace_mask.any()), round(page.px_per_mm, 4)
    ((850, 1100, 3), True, 3.937)
    """
    seed = int(rng) if isinstance(rng, int | np.integer) and not isinstance(rng, bool) else None
    rng = np.random.default_rng(rng)
    layout = load_layout(settings.layout)
    if settings.rhythm_leads is not None:
        layout = dataclasses.replace(layout, rhythm=settings.rhythm_leads)
    geom = page_geometry(settings, layout)
    ppm, fs = geom.px_per_mm, float(record.fs_hz)
    signals = _signal_lookup(record)
    if not any(p.lead in signals for p in layout.panels()):
        raise RecordInputError(
            f"record {record.name!r} has none of the leads of layout {layout.name!r} "
            f"(it has {', '.join(record.lead_names)})"
        )
    # The 10 s window (the whole record when shorter).
    n_window = min(record.n_samples, round(WINDOW_S * fs))
    start = int(rng.integers(0, record.n_samples - n_window + 1)) if record.n_samples > n_window else 0
    window = {name: sig[start : start + n_window] for name, sig in signals.items()}
    traces = _lay_out_traces(geom, settings, window, n_window, fs)

    # Print: grid, text and separators, traces.
    shape = (geom.height_px, geom.width_px)
    width_px = settings.trace_width_mm * ppm
    supersample = supersample_factor(settings.dpi)
    trace_cov, labels = rasterize_strokes(traces.strokes, shape, width_px, supersample)
    if traces.thick_strokes:
        # Both masks are "at least half covered"; their union is the max of the coverages.
        thick_cov, thick_labels = rasterize_strokes(traces.thick_strokes, shape, 1.5 * width_px, supersample)
        trace_cov, labels = np.maximum(trace_cov, thick_cov), np.maximum(labels, thick_labels)
    text_cov, label_boxes = _draw_text(record, settings, geom, traces, rng)
    minor, major = None, None
    if settings.grid_colour != "none":
        minor, major = grid_coverage(
            shape,
            geom.grid_box,
            geom.grid_origin,
            ppm,
            style=settings.grid_style,
            minor=settings.grid_minor,
            major_width_px=settings.grid_major_width_mm * ppm,
            minor_width_px=settings.grid_minor_width_mm * ppm,
        )
    major_rgb, minor_rgb = settings.grid_rgb
    deg = settings.degradation
    trace_cov = augment.fade_ink(trace_cov, deg.trace_fade, rng)
    frame_cov = _frame_coverage(shape, ppm) if settings.page_frame else None
    image = composite(
        settings.paper_rgb,
        [
            (minor, minor_rgb),
            (major, major_rgb),
            (text_cov, _TEXT_RGB),
            (frame_cov, (0, 0, 0)),
            (trace_cov, settings.trace_rgb),
        ],
    )
    mask = labels > 0
    # A border widens the sheet before anything happens to it (ecg-image-kit pads, then augments).
    border_px = round(settings.border_mm * ppm)
    if border_px:
        image = cv2.copyMakeBorder(
            image, border_px, border_px, border_px, border_px, cv2.BORDER_CONSTANT, value=settings.paper_rgb
        )
        mask = np.pad(mask, border_px)
        labels = np.pad(labels, border_px)

    # Degrade: paper, then geometry (masks and boxes follow), then lighting and camera.
    image = augment.paper_effects(image, deg, rng, ppm)
    warp = augment.plan_warp(mask.shape, deg, rng)
    if warp is not None:
        image, mask, labels = augment.warp_page(image, mask, labels, warp, deg.background, rng)
    image, encoded = augment.camera_effects(image, deg, rng)
    homography = warp.homography if warp is not None else np.eye(3)
    if border_px:
        homography = homography @ np.array([[1.0, 0.0, border_px], [0.0, 1.0, border_px], [0.0, 0.0, 1.0]])

    boxes = tuple(
        _lead_box(p, label_boxes.get(i), homography, image.shape[:2], width_px, shape)
        for i, p in enumerate(traces.panels)
        if p.plotted
    )
    name = page_name or f"{record.name}-0"
    reference = EcgRecord(name, traces.reference, fs, STANDARD_LEADS, comments=record.comments)
    truth: dict[str, Any] = {
        "page": name,
        "record": record.name,
        "fs_hz": fs,
        "window_start_sample": start,
        "window_start_s": round(start / fs, 6),
        "window_samples": n_window,
        "strip_duration_s": geom.strip_duration_s,
        "layout": layout.name,
        "rhythm_leads": list(layout.rhythm),
        "column_times": layout.column_times,
        "px_per_mm": ppm,
        "mm_per_s": settings.mm_per_s,
        "mm_per_mv": settings.mm_per_mv,
        "page_size_px": [geom.width_px, geom.height_px],
        "image_size_px": [int(image.shape[1]), int(image.shape[0])],
        "border_px": border_px,
        "row_x0_px": geom.row_x0,
        "rows": [
            {"row": r.index, "baseline_y_px": r.baseline_y, "leads": [p.lead for p in r.panels]}
            for r in geom.rows
        ],
        "homography": [[float(v) for v in row] for row in homography],
        "rotation_deg": deg.rotation_deg,
        "calibration_pulses": traces.pulses,
        "lead_separators": [[x, y] for x, y in traces.separators],
        "lead_boxes": [b.to_dict() for b in boxes],
        "settings": settings.to_dict(),
    }
    if seed is not None:
        truth["seed"] = seed
    return RenderedPage(
        image=image,
        trace_mask=mask,
        lead_labels=labels,
        lead_boxes=boxes,
        reference=reference,
        px_per_mm=ppm,
        settings=settings,
        truth=truth,
        encoded=encoded,
    )


def _draw_text(
    record: EcgRecord,
    settings: RenderSettings,
    geom: PageGeometry,
    traces: _Traces,
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[int, tuple[float, float, float, float]]]:
    """Draw header, footer, lead names and separators.

    Returns the ink coverage (uint8) and the lead-name boxes by index in ``traces.panels``.
    """
    ppm = geom.px_per_mm
    canvas = Image.new("L", (geom.width_px, geom.height_px), 0)
    draw = ImageDraw.Draw(canvas)
    size_px = settings.font_size_pt / 72.0 * settings.dpi
    font = load_font(settings.font, size_px)
    w_mm, h_mm = geom.width_px / ppm, geom.height_px / ppm
    if settings.header_text:
        header_font = load_font(settings.font, size_px * (0.75 if settings.header_style == "ge" else 1.0))
        for item in header_items(settings.header_style, record, w_mm, rng):
            draw.text((item.x_mm * ppm, item.y_mm * ppm), item.text, fill=255, font=header_font, anchor="ls")
    if settings.footer_text:
        for item in footer_items(settings.header_style, settings.mm_per_s, settings.mm_per_mv, h_mm, w_mm):
            draw.text((item.x_mm * ppm, item.y_mm * ppm), item.text, fill=255, font=font, anchor="ls")
    label_boxes: dict[int, tuple[float, float, float, float]] = {}
    if settings.lead_names:
        below = settings.label_offset_mm if settings.label_offset_mm is not None else _LABEL_BELOW_MM
        above = settings.label_offset_mm if settings.label_offset_mm is not None else _LABEL_ABOVE_MM
        for i, p in enumerate(traces.panels):
            if settings.label_position == "below":
                xy = (p.x0, p.baseline_y + below * ppm)
            else:
                xy = (p.x0 + 0.5 * ppm, p.baseline_y - above * ppm)
            draw.text(xy, p.panel.lead, fill=255, font=font, anchor="ls")
            x0, y0, x1, y1 = draw.textbbox(xy, p.panel.lead, font=font, anchor="ls")
            label_boxes[i] = (float(x0), float(y0), float(x1), float(y1))
    ink = np.array(canvas)
    # Lead separators: short vertical bars, 1.5 trace widths wide, centred on the baseline.
    if settings.marker_style == "eik":  # ecg-image-kit's bold bars: 3 trace widths by 7 mm
        half_w, half_h = settings.trace_width_mm * ppm * 1.5, _EIK_SEPARATOR_HALF_MM * ppm
    else:
        half_w, half_h = settings.trace_width_mm * ppm * 0.75, _SEPARATOR_HALF_MM * ppm
    for x, y in traces.separators:
        c0, c1 = max(0, int(x - half_w) - 1), min(geom.width_px, int(x + half_w) + 2)
        r0, r1 = max(0, int(y - half_h) - 1), min(geom.height_px, int(y + half_h) + 2)
        if c1 <= c0 or r1 <= r0:
            continue
        bar = np.outer(
            span_profile(r1 - r0, y - half_h - r0, y + half_h - r0),
            span_profile(c1 - c0, x - half_w - c0, x + half_w - c0),
        )
        ink[r0:r1, c0:c1] = np.maximum(ink[r0:r1, c0:c1], (bar * 255.0 + 0.5).astype(np.uint8))
    return ink, label_boxes


def _frame_coverage(shape: tuple[int, int], px_per_mm: float) -> np.ndarray:
    """Coverage of a 0.8 pt frame line centred on the page's edge: half of it falls on the page.

    matplotlib snaps the frame of ecg-image-kit's pages to whole pixels, so it is at least one
    pixel wide (1.1 px at 200 dpi, 1 px below).
    """
    rows, cols = shape
    width = max(1.0, _FRAME_MM / 2.0 * px_per_mm)
    across = np.maximum(span_profile(cols, -0.5, width - 0.5), span_profile(cols, cols - 0.5 - width, cols))
    down = np.maximum(span_profile(rows, -0.5, width - 0.5), span_profile(rows, rows - 0.5 - width, rows))
    return np.maximum(across[None, :], down[:, None])


def _lead_box(
    p: _Panel,
    label_box: tuple[float, float, float, float] | None,
    homography: np.ndarray,
    out_shape: tuple[int, ...],
    width_px: float,
    page_shape: tuple[int, int],
) -> LeadBox:
    """Box of one lead panel on the flat page, mapped through ``homography`` and clipped."""
    ys = p.points[:, 1]
    ys = ys[np.isfinite(ys)]
    half = width_px / 2.0
    rows, cols = page_shape
    top, bottom = max(float(ys.min()) - half, -0.5), min(float(ys.max()) + half, rows - 0.5)
    x0, x1 = max(p.x0, -0.5), min(p.x1, cols - 0.5)
    quad = augment.transform_points(homography, np.array([[x0, top], [x1, top], [x1, bottom], [x0, bottom]]))
    base = augment.transform_points(
        homography, np.array([[p.x0, p.baseline_y], [p.x1, p.baseline_y], [(p.x0 + p.x1) / 2, p.baseline_y]])
    )
    if label_box is not None:
        lx0, ly0, lx1, ly1 = label_box
        corners = augment.transform_points(
            homography, np.array([[lx0, ly0], [lx1, ly0], [lx1, ly1], [lx0, ly1]])
        )
        label_box = (*corners.min(axis=0).tolist(), *corners.max(axis=0).tolist())
    h, w = out_shape[0], out_shape[1]
    return LeadBox(
        lead=p.panel.lead,
        row=p.panel.row,
        column=p.panel.column,
        x0=float(np.clip(quad[:, 0].min(), -0.5, w - 0.5)),
        y0=float(np.clip(quad[:, 1].min(), -0.5, h - 0.5)),
        x1=float(np.clip(quad[:, 0].max(), -0.5, w - 0.5)),
        y1=float(np.clip(quad[:, 1].max(), -0.5, h - 0.5)),
        baseline_y=float(base[2, 1]),
        t_start_s=p.t0,
        t_end_s=p.t1,
        quad=tuple((float(x), float(y)) for x, y in quad),
        baseline=((float(base[0, 0]), float(base[0, 1])), (float(base[1, 0]), float(base[1, 1]))),
        label_box=label_box,
    )


def _round_floats(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _round_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_round_floats(v) for v in value]
    return value
