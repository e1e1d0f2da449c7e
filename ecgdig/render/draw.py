"""Rasterisation: anti-aliased strokes with exact masks, grid lines, and ink compositing.

Strokes (traces, calibration pulses, pen scribbles) are drawn by OpenCV at ``supersample`` times the
page resolution with sub-pixel vertices (``shift`` bits) and no anti-aliasing, then box-filtered
down (``cv2.INTER_AREA``). That gives the coverage of each page pixel by the stroke, at any line
width (quantised to 1/``supersample`` px), and a mask with exactly the same geometry: a pixel is in
the mask when at least half of it is covered. Grid lines are 1-D box-filter coverage profiles,
combined by broadcasting. Layers are composited like ink on paper: each multiplies the page by
``1 - coverage * (1 - ink / 255)``.

Coordinates are in page pixels with pixel centres at integers: column ``j`` covers
``[j - 0.5, j + 0.5)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "Stroke",
    "composite",
    "grid_coverage",
    "line_profile",
    "rasterize_strokes",
    "span_profile",
    "supersample_factor",
]

_SHIFT = 4  # sub-pixel bits for cv2 drawing: 1/16 of a supersampled pixel


@dataclass(frozen=True)
class Stroke:
    """An open polyline to draw.

    Attributes
    ----------
    points : (n, 2) ndarray of float64
        ``(x, y)`` vertices in page pixels (x = column, y = row), n >= 1.
    label : int
        Value written into the label map (1..255), e.g. the lead index + 1.
    """

    points: np.ndarray
    label: int


def supersample_factor(dpi: int) -> int:
    """Return the supersampling factor used at ``dpi``: 4 up to 200 dpi, fewer above (memory)."""
    return int(min(4, max(2, 800 // dpi)))


def rasterize_strokes(
    strokes: Sequence[Stroke], shape: tuple[int, int], width_px: float, supersample: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Draw polylines of one width; return their coverage and label map.

    Parameters
    ----------
    strokes : sequence of Stroke
        Polylines; parts outside the image are clipped by the drawing (the line still heads the
        right way).
    shape : (rows, cols)
        Output size in pixels.
    width_px : float
        Line width in page pixels (round joins and caps).
    supersample : int, optional
        Drawing resolution factor: vertices are placed to ``1 / supersample`` px and the width is
        quantised to ``2 / supersample`` px (odd sub-pixel counts, as OpenCV draws thick lines).

    Returns
    -------
    coverage : (rows, cols) ndarray of uint8
        Fraction of each pixel covered, 0-255.
    labels : (rows, cols) ndarray of uint8
        For pixels with ``coverage >= 128`` (at least half covered: the mask), the largest stroke
        label drawn inside the pixel; 0 elsewhere. So ``labels > 0`` is exactly the mask, and where
        strokes of two labels meet in one pixel the larger label wins.

    Notes
    -----
    Only the bounding box of the strokes is supersampled, so memory is
    ``supersample**2`` bytes per pixel of that box.
    """
    rows, cols = shape
    coverage = np.zeros(shape, np.uint8)
    labels = np.zeros(shape, np.uint8)
    drawable = [s for s in strokes if len(s.points) >= 1 and np.all(np.isfinite(s.points))]
    if not drawable:
        return coverage, labels
    s = int(supersample)
    half = width_px / 2.0 + 1.0
    allpts = np.concatenate([st.points for st in drawable])
    r0 = int(np.clip(np.floor(allpts[:, 1].min() - half), 0, rows))
    r1 = int(np.clip(np.ceil(allpts[:, 1].max() + half) + 1, 0, rows))
    c0 = int(np.clip(np.floor(allpts[:, 0].min() - half), 0, cols))
    c1 = int(np.clip(np.ceil(allpts[:, 0].max() + half) + 1, 0, cols))
    if r1 <= r0 or c1 <= c0:
        return coverage, labels
    canvas = np.zeros(((r1 - r0) * s, (c1 - c0) * s), np.uint8)
    # cv2 draws a line of thickness 2k (or 2k - 1) as 2k + 1 sub-pixels across: pick the odd
    # sub-pixel count nearest the width. Widths are thus quantised to 2 / s px, positions to 1 / s px.
    half_count = max(0, round((width_px * s - 1.0) / 2.0))
    thickness = max(1, 2 * half_count)
    # Keep far-off vertices far off but inside int32 range after shifting.
    lo_x, hi_x = -4.0 * cols, 5.0 * cols
    lo_y, hi_y = -4.0 * rows, 5.0 * rows
    scale = float(1 << _SHIFT)
    polylines: dict[int, list[np.ndarray]] = {}
    for st in drawable:
        x = np.clip(st.points[:, 0], lo_x, hi_x) - c0
        y = np.clip(st.points[:, 1], lo_y, hi_y) - r0
        # page pixel centre j sits at supersampled coordinate (j + 0.5) * s - 0.5
        pts = np.stack([(x + 0.5) * s - 0.5, (y + 0.5) * s - 0.5], axis=1)
        ipts = np.round(pts * scale).astype(np.int32)
        if len(ipts) == 1:
            ipts = np.concatenate([ipts, ipts])
        polylines.setdefault(int(st.label), []).append(ipts.reshape(-1, 1, 2))
    for label in sorted(polylines):  # fixed drawing order: deterministic overlaps
        cv2.polylines(canvas, polylines[label], False, label, thickness, cv2.LINE_8, _SHIFT)
    ink = cv2.threshold(canvas, 0, 255, cv2.THRESH_BINARY)[1]
    cov = cv2.resize(ink, (c1 - c0, r1 - r0), interpolation=cv2.INTER_AREA)
    # Largest label in each s x s block: rows by a reshape, columns by a 1 x s dilation.
    row_max = canvas.reshape(r1 - r0, s, -1).max(axis=1)
    block_max = cv2.dilate(row_max, np.ones((1, s), np.uint8), anchor=(0, 0))[:, ::s]
    coverage[r0:r1, c0:c1] = cov
    labels[r0:r1, c0:c1] = np.where(cov >= 128, block_max, 0)
    return coverage, labels


def line_profile(
    n: int, origin_px: float, period_px: float, width_px: float, lo_px: float, hi_px: float
) -> np.ndarray:
    """Coverage of pixels ``0..n-1`` by parallel lines ``origin + k * period`` within ``[lo, hi]``.

    Parameters
    ----------
    n : int
        Number of pixels along the axis.
    origin_px, period_px : float
        Line positions (pixel-centre coordinates).
    width_px : float
        Line width; coverage is the exact overlap of the line with each pixel (box filter).
    lo_px, hi_px : float
        Only lines within this range are drawn.

    Returns
    -------
    (n,) ndarray of float32
        Coverage in [0, 1].

    Examples
    --------
    >>> line_profile(6, 1.0, 10.0, 1.0, 0, 6).tolist()
    [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    """
    centres = np.arange(n, dtype=np.float64)
    k = np.round((centres - origin_px) / period_px)
    pos = origin_px + k * period_px
    lo_edge = np.maximum(centres - 0.5, pos - width_px / 2.0)
    hi_edge = np.minimum(centres + 0.5, pos + width_px / 2.0)
    cov = np.clip(hi_edge - lo_edge, 0.0, 1.0)
    cov[(pos < lo_px - 1e-6) | (pos > hi_px + 1e-6)] = 0.0
    return cov.astype(np.float32)


def span_profile(n: int, lo_px: float, hi_px: float) -> np.ndarray:
    """Return the coverage of pixels ``0..n-1`` by the interval ``[lo, hi]`` (box filter), float32.

    Examples
    --------
    >>> span_profile(4, 0.75, 2.0).tolist()
    [0.0, 0.75, 0.5, 0.0]
    """
    centres = np.arange(n, dtype=np.float64)
    return np.clip(np.minimum(centres + 0.5, hi_px) - np.maximum(centres - 0.5, lo_px), 0.0, 1.0).astype(
        np.float32
    )


def grid_coverage(
    shape: tuple[int, int],
    box_px: tuple[float, float, float, float],
    origin_px: tuple[float, float],
    px_per_mm: float,
    *,
    style: str,
    minor: bool,
    major_width_px: float,
    minor_width_px: float,
) -> tuple[np.ndarray | None, np.ndarray]:
    """Coverage of the 1 mm (minor) and 5 mm (major) grid.

    Parameters
    ----------
    shape : (rows, cols)
        Page size in pixels.
    box_px : (x0, y0, x1, y1)
        Area the grid covers.
    origin_px : (x, y)
        A point where a major vertical and a major horizontal line cross.
    px_per_mm : float
        Grid scale.
    style : {"lines", "dots", "dotted"}
        See :class:`ecgdig.render.RenderSettings`.
    minor : bool
        Whether to draw the 1 mm grid.
    major_width_px, minor_width_px : float
        Line (or dot) widths.

    Returns
    -------
    minor : (rows, cols) ndarray of float32 or None
        Minor coverage (0 on major lines), or None when not drawn.
    major : (rows, cols) ndarray of float32
        Major coverage.
    """
    rows, cols = shape
    x0, y0, x1, y1 = box_px
    ox, oy = origin_px
    major_p = 5.0 * px_per_mm
    vx = line_profile(cols, ox, major_p, major_width_px, x0, x1)
    hy = line_profile(rows, oy, major_p, major_width_px, y0, y1)
    in_x, in_y = span_profile(cols, x0, x1), span_profile(rows, y0, y1)
    if style == "dotted":
        # dots along each line, about three per millimetre
        period = max(2.0, px_per_mm / 3.0)
        dash_x = (np.mod(np.arange(cols), period) < period / 2).astype(np.float32)
        dash_y = (np.mod(np.arange(rows), period) < period / 2).astype(np.float32)
        in_x, in_y = in_x * dash_x, in_y * dash_y
    major = np.maximum(np.outer(hy, in_x), np.outer(in_y, vx))
    if not minor:
        return None, major
    mvx = line_profile(cols, ox, px_per_mm, minor_width_px, x0, x1)
    mhy = line_profile(rows, oy, px_per_mm, minor_width_px, y0, y1)
    mvx *= 1.0 - np.minimum(1.0, vx * 4)  # no minor ink under the major lines
    mhy *= 1.0 - np.minimum(1.0, hy * 4)
    if style == "dots":
        minor_cov = np.outer(mhy, mvx)
    else:
        minor_cov = np.maximum(np.outer(mhy, in_x), np.outer(in_y, mvx))
    minor_cov *= 1.0 - major  # the major line is printed over the crossing minor line
    return minor_cov, major


def composite(
    paper: tuple[int, int, int] | np.ndarray,
    layers: Sequence[tuple[np.ndarray | None, tuple[int, int, int]]],
) -> np.ndarray:
    """Print ink layers on paper, multiplicatively, and return the page as uint8 RGB.

    Parameters
    ----------
    paper : (r, g, b) or (rows, cols, 3) ndarray of uint8
        Plain paper colour, or an existing page to print over.
    layers : sequence of (coverage, ink_rgb)
        ``coverage`` is (rows, cols) float32 in [0, 1] or uint8 in [0, 255] (or None to skip);
        where it covers the page, ink absorbs ``1 - ink / 255`` of the light, per channel.

    Returns
    -------
    (rows, cols, 3) ndarray of uint8

    Examples
    --------
    >>> cov = np.array([[0.0, 0.5, 1.0]], np.float32)
    >>> composite((200, 200, 200), [(cov, (0, 100, 200))])[0].tolist()
    [[200, 200, 200], [100, 139, 178], [0, 78, 157]]
    """
    planes: list[np.ndarray]
    if isinstance(paper, np.ndarray):
        planes = [plane.astype(np.float32) for plane in cv2.split(paper)]
    else:
        shape = next(layer[0].shape for layer in layers if layer[0] is not None)
        planes = [np.full(shape, float(c), np.float32) for c in paper]
    levels = np.arange(256, dtype=np.float32) / np.float32(255.0)
    for coverage, ink in layers:
        if coverage is None:
            continue
        cov8 = coverage if coverage.dtype == np.uint8 else cv2.convertScaleAbs(coverage, alpha=255.0)
        inked = cv2.countNonZero(cov8)
        if inked == 0:
            continue
        absorb = 1.0 - np.asarray(ink, np.float32) / np.float32(255.0)
        if inked < cov8.size // 8:  # sparse layer (traces, text): touch only inked pixels
            idx = np.flatnonzero(cov8)
            a = levels[cov8.reshape(-1)[idx]]
            for plane, k in zip(planes, absorb, strict=True):
                flat = plane.reshape(-1)
                flat[idx] *= 1.0 - a * k
        else:
            for c, k in enumerate(absorb):
                factor = (1.0 - levels * k).astype(np.float32).reshape(1, 256)
                planes[c] = cv2.multiply(planes[c], cv2.LUT(cov8, factor))
    return cv2.merge([cv2.convertScaleAbs(plane) for plane in planes])
