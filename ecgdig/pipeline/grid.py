"""Remove the printed grid from a normalized page, leaving the darkness of traces and text.

Two complementary steps, applied to every page:

1. **Colour unmixing.** After normalization the paper is white, so each pixel's darkness
   ``d = 1 - rgb`` (a 3-vector) is modelled as ``alpha * k + beta * u``: an amount ``alpha`` of
   the ink's darkness vector ``k`` (measured on the darkest pixels: black, dark blue, or tinted by
   a photo's light) plus a grid-ink amount ``beta`` along the grid colour's direction
   ``u = unit(1 - grid_rgb)``. Solving this 2x2 least-squares problem per pixel (with
   ``alpha, beta >= 0``) separates a red, pink, orange, green or blue grid from the ink, including
   where a trace crosses a grid line. For a grey or black grid, or when ``k`` and ``u`` are within
   25 degrees of each other, the ink is simply the mean darkness and step 2 does the work.
2. **Line structure.** Grid lines are long, straight and axis-aligned after normalization: along
   each row (and column) of a 25 mm strip (8 mm on photos, whose lines curve, with each line
   model widened to 3 px), the *median* transmission ``1 - alpha`` is the grid line's own
   transmission, while traces and text occupy too few pixels of a row to move it.
   The grid is then divided out (``T / (T_row * T_col)``, as printed inks multiply), with the
   grid transmission floored at the grid's typical darkness so that a trace lying along a grid
   line keeps its excess darkness. This removes grey and black grids and what colour unmixing
   leaves of coloured ones.

The grid colour is estimated from the pixels on the detected grid rows and columns. Leakage is the
fraction of those grid-line pixels that still read as ink (>= 0.25) in excess of the fraction of
off-line pixels that do: traces and text fall on and off the lines alike, so their share cancels.

References
----------
Keshava & Mustard, "Spectral unmixing", IEEE Signal Processing Magazine 19(1), 2002 (linear
unmixing with non-negative abundances).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ecgdig.errors import ImageInputError
from ecgdig.types import GridSuppression, NormalizedPage

__all__ = ["INK_THRESHOLD", "suppress_grid"]

#: Ink level at and above which a pixel counts as ink (for leakage; the classical segmenter's
#: low hysteresis threshold is close to it).
INK_THRESHOLD = 0.25
#: Length of the strips in which row and column medians are taken, in millimetres (scans; photos).
_STRIP_MM = 25.0
_STRIP_MM_PHOTO = 8.0


def suppress_grid(page: NormalizedPage) -> GridSuppression:
    """Remove the grid of every colour family (and none) from a normalized page.

    Parameters
    ----------
    page : NormalizedPage
        Output of :func:`ecgdig.pipeline.normalize.normalize`: RGB ``uint8``, paper white, grid
        lines axis-aligned, ``px_per_mm`` known (approximately, when assumed).

    Returns
    -------
    GridSuppression
        ``ink`` (rows, cols) float32 in [0, 1] (1 = black trace or text), the grid colour family
        (``"red"``, ``"pink"``, ``"orange"``, ``"green"``, ``"blue"``, ``"grey"``, ``"black"`` or
        ``"none"``) and the measured leakage fraction.

    Raises
    ------
    ImageInputError
        If ``page.image`` is not a (rows, cols, 3) ``uint8`` array.

    Examples
    --------
    >>> import numpy as np
    >>> from ecgdig.types import NormalizedPage
    >>> img = np.full((200, 300, 3), 255, np.uint8)
    >>> img[::8, :] = (250, 160, 180)   # a pink grid ...
    >>> img[:, ::8] = (250, 160, 180)
    >>> img[100:102, 20:280] = 0         # ... and a black trace
    >>> out = suppress_grid(NormalizedPage(img, 8.0, 1.0, "grid", 8.0))
    >>> out.grid_colour, float(out.ink[100, 150]) > 0.9, float(out.ink[8, 150]) < 0.1
    ('pink', True, True)
    """
    image = page.image
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageInputError(
            f"page image must be a (rows, cols, 3) uint8 array, got {getattr(image, 'shape', None)} "
            f"{getattr(image, 'dtype', None)}"
        )
    rows, cols = image.shape[:2]
    px_per_mm = float(page.px_per_mm) if page.px_per_mm > 0 else 8.0
    img = image.astype(np.float32) * (1.0 / 255.0)
    mean_dark = 1.0 - cv2.transform(img, np.full((1, 3), 1.0 / 3.0))

    # Photos (perspective removed, or a grid not uniform enough for a confident scale): lines are
    # straight over shorter lengths only, and may wander by a pixel.
    photo = page.perspective_corrected or page.px_per_mm_confidence < 0.8
    strip = max(16, round((_STRIP_MM_PHOTO if photo else _STRIP_MM) * px_per_mm))

    # 1. Where are the grid lines, and what colour are they?
    row_lines, col_lines = _line_positions(mean_dark, px_per_mm)
    grid_mask = np.zeros((rows, cols), dtype=bool)
    grid_mask[row_lines, :] = True
    grid_mask[:, col_lines] = True
    colour, direction, grid_dark = _grid_colour(img, mean_dark, grid_mask)

    # 2. Colour unmixing: ink amount alpha and grid amount beta per pixel, when the ink (the
    # darkest marks: black, dark blue, or tinted by the light of a photo) and the grid differ in
    # colour by at least 25 degrees; otherwise the grid is treated like a grey one.
    alpha = mean_dark
    if direction is not None:
        ink_dark = _ink_colour(img, mean_dark, grid_dark)
        cos = float(ink_dark @ direction) / float(np.linalg.norm(ink_dark))
        if cos < math.cos(math.radians(25.0)):
            alpha = _unmix(img, ink_dark, direction)

    # 3. Divide out what remains of straight, axis-aligned lines.
    if colour != "none":
        transmission = 1.0 - alpha
        row_meds = _strip_medians(transmission, strip)  # (rows, n_strips): horizontal lines
        col_meds = _strip_medians(transmission.T, strip)  # (cols, n_strips): vertical lines
        if photo:
            # A line may wander by a pixel along a strip: widen each line model to 3 px.
            row_meds = cv2.erode(row_meds, np.ones((3, 1), np.uint8))
            col_meds = cv2.erode(col_meds, np.ones((3, 1), np.uint8))
        # The grid cannot be darker than its typical lines: keeps traces that run along a line.
        floor = _grid_floor(row_meds, col_meds)
        # Linear interpolation between strip centres (cv2.resize maps strip i's centre to i).
        t_row = cv2.resize(np.maximum(row_meds, floor), (cols, rows), interpolation=cv2.INTER_LINEAR)
        t_col = cv2.resize(np.maximum(col_meds, floor).T, (cols, rows), interpolation=cv2.INTER_LINEAR)
        ratio = cv2.divide(transmission, cv2.multiply(t_row, t_col))
        ink = 1.0 - np.minimum(ratio, 1.0, out=ratio)
    else:
        ink = np.clip(alpha, 0.0, 1.0)
    ink = ink.astype(np.float32, copy=False)

    # 4. Leakage: how much more often grid-line pixels read as ink than other pixels (traces and
    # text fall on and off the lines alike, so their share cancels).
    leakage = 0.0
    if colour != "none" and grid_mask.any() and not grid_mask.all():
        step = max(1, round(math.sqrt(grid_mask.size / 1_000_000)))
        inked = ink[::step, ::step] >= INK_THRESHOLD
        on = grid_mask[::step, ::step]
        leakage = max(0.0, float(inked[on].mean()) - float(inked[~on].mean()))
    return GridSuppression(ink=ink, grid_colour=colour, leakage=leakage)


def _line_positions(mean_dark: np.ndarray, px_per_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns holding grid lines.

    A row (column) holds a line where the median darkness along it rises above its surroundings;
    traces and text cover too little of a row to move its median.
    """
    rows, cols = mean_dark.shape
    sub_c = max(1, cols // 600)
    sub_r = max(1, rows // 600)
    row_med = np.median(mean_dark[:, ::sub_c], axis=1)
    col_med = np.median(mean_dark[::sub_r, :], axis=0)
    out = []
    for prof in (row_med, col_med):
        # Baseline: a running low percentile over about 2 mm (paper between lines).
        win = max(3, round(2.0 * px_per_mm)) | 1
        base = _running_min(prof, win)
        rise = prof - base
        # Noise from the lower half of the rises (between lines), which dense lines cannot inflate.
        low = rise[rise <= np.median(rise)]
        noise = 1.4826 * float(np.median(np.abs(low - np.median(low)))) + 1e-4
        top = float(np.percentile(rise, 99))
        lines = np.flatnonzero(rise > max(0.02, 4.0 * noise, 0.3 * top))
        # Nearly every row a "line" means no line structure (e.g. a dark, textured page).
        if lines.size > 0.8 * prof.size:
            lines = np.array([], dtype=int)
        out.append(lines)
    return out[0], out[1]


def _running_min(prof: np.ndarray, win: int) -> np.ndarray:
    kernel = np.ones((win, 1), np.uint8)
    eroded = cv2.erode(prof.astype(np.float32)[:, None], kernel, borderType=cv2.BORDER_REPLICATE)
    return cv2.blur(eroded, (1, win), borderType=cv2.BORDER_REPLICATE)[:, 0]


def _grid_colour(
    img: np.ndarray, mean_dark: np.ndarray, grid_mask: np.ndarray
) -> tuple[str, np.ndarray | None, float]:
    """Colour family, unit darkness direction (None if achromatic or absent) and typical darkness.

    ``img`` is the page as float32 RGB in [0, 1]; the grid's colour is the median over pixels on
    grid rows and columns that are marked but lighter than the darkest fifth (traces crossing).
    """
    if grid_mask.sum() < 0.005 * grid_mask.size:
        return "none", None, 0.0
    step = max(1, round(math.sqrt(grid_mask.size / 1_000_000)))
    sub_mask = grid_mask[::step, ::step]
    md = mean_dark[::step, ::step][sub_mask]
    marked = md > 0.04
    if marked.sum() < 50:
        return "none", None, 0.0
    upper = float(np.percentile(md[marked], 80))
    sel = marked & (md <= upper)
    pixels = img[::step, ::step][sub_mask]
    d = 1.0 - np.median(pixels[sel], axis=0)  # typical grid darkness per channel
    # The heaviest grid lines (majors) name the colour; the darkest 3% may be traces crossing.
    lo_h, hi_h = np.percentile(md[marked], [85, 97])
    heavy = marked & (md >= lo_h) & (md <= hi_h)
    heavy_rgb = 255.0 * np.median(pixels[heavy], axis=0) if heavy.any() else 255.0 * (1.0 - d)
    grid_dark = float(d.mean())
    spread = float(d.max() - d.min())
    norm = float(np.linalg.norm(d))
    if norm < 1e-6:
        return "none", None, 0.0
    # Achromatic when the channels' darkness differ by less than a quarter of the mean darkness.
    if spread < max(0.03, 0.25 * grid_dark):
        return ("black" if hi_h > 0.6 else "grey"), None, grid_dark
    return _hue_family(heavy_rgb), d / norm, grid_dark


def _hue_family(rgb: np.ndarray) -> str:
    r, g, b = (float(v) / 255.0 for v in rgb)
    mx, mn = max(r, g, b), min(r, g, b)
    delta = mx - mn
    # The typical grid darkness can be tinted while its heaviest lines are neutral (a photo of
    # anything but an ECG): no hue to name then.
    if delta < 1e-6:
        return "black" if 1.0 - mx > 0.6 else "grey"
    if mx == r:
        hue = (60.0 * ((g - b) / delta)) % 360.0
    elif mx == g:
        hue = 60.0 * ((b - r) / delta) + 120.0
    else:
        hue = 60.0 * ((r - g) / delta) + 240.0
    # Red hues: pink when even the heavier lines are pastel (their darkest channel stays light).
    if hue < 15.0 or hue >= 300.0:
        return "pink" if mn > 0.45 or 300.0 <= hue < 330.0 else "red"
    if hue < 60.0:
        return "orange"
    if hue < 170.0:
        return "green"
    return "blue"


def _ink_colour(img: np.ndarray, mean_dark: np.ndarray, grid_dark: float) -> np.ndarray:
    """Typical darkness vector (3,) of the ink.

    The median over the darkest 0.3% of pixels, or neutral black (0.85 in each channel) when those
    are not clearly darker than the grid.
    """
    step = max(1, round(math.sqrt(mean_dark.size / 1_000_000)))
    md = mean_dark[::step, ::step]
    thr = float(np.percentile(md, 99.7))
    if thr < grid_dark + 0.15:
        return np.full(3, 0.85)
    sel = md >= thr
    return 1.0 - np.median(img[::step, ::step][sel], axis=0).astype(np.float64)


def _unmix(img: np.ndarray, k: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Ink darkness from ``1 - rgb = a k + b u`` with ``a, b >= 0``.

    ``k`` is the ink's darkness vector and ``u`` the grid's unit direction; the result is
    ``a * mean(k)``, so a full ink pixel reads its own darkness.
    """
    kk, ku = float(k @ k), float(k @ u)
    det = kk - ku * ku
    # With s1 = d . k and s2 = d . u (d = 1 - rgb), a, b and the ink-only projection s1 / kk are
    # affine in rgb: one pass over the channels gives all three.
    s1_row = np.concatenate([-k, [k.sum()]])
    s2_row = np.concatenate([-u, [u.sum()]])
    rows = np.stack([(s1_row - ku * s2_row) / det, (kk * s2_row - ku * s1_row) / det, s1_row / kk])
    abp = cv2.transform(img, rows * float(k.mean()))
    a, b, proj = cv2.split(abp)
    # Where b < 0 the pixel holds no grid ink: project on the ink direction alone.
    np.copyto(a, proj, where=b < 0)
    return np.clip(a, 0.0, 1.0, out=a)


def _strip_medians(t: np.ndarray, strip: int) -> np.ndarray:
    """Median of each row of ``t`` within column strips about ``strip`` px wide: (rows, n_strips).

    Values are divided by the paper level (90th percentile) and capped at 1, so unmarked rows read
    exactly 1. Pass ``t.T`` for the medians of each column.
    """
    n, length = t.shape
    n_strips = max(1, round(length / strip))
    edges = np.linspace(0, length, n_strips + 1).round().astype(int)
    sub = max(1, (edges[1] - edges[0]) // 64)
    meds = np.empty((n, n_strips), dtype=np.float32)
    for i in range(n_strips):
        meds[:, i] = np.median(t[:, edges[i] : edges[i + 1] : sub], axis=1)
    return np.minimum(meds / max(float(np.percentile(meds, 90)), 1e-3), 1.0).astype(np.float32)


def _grid_floor(row_meds: np.ndarray, col_meds: np.ndarray) -> float:
    """Lowest plausible grid transmission: a little below the darkest typical grid line."""
    vals = np.concatenate([row_meds.ravel(), col_meds.ravel()])
    lines = vals[vals < 0.97]
    if lines.size < 20:
        return 1.0
    return float(np.clip(np.percentile(lines, 5) - 0.05, 0.2, 1.0))
