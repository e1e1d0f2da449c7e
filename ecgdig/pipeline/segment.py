"""Per-pixel trace probability for a normalized page.

The classical segmenter works on the grid-free ink map of :mod:`ecgdig.pipeline.grid`:

1. **Hysteresis threshold.** Pixels above a high threshold seed the mask; connected pixels above a
   low threshold (half of it) join them. The high threshold adapts to the page's ink contrast
   (half the 99.5th percentile of the ink, clipped to [0.35, 0.6]) so faint photographed traces
   are kept and scanner noise is not.
2. **Long straight lines.** Runs of ink exactly along one row for 40 mm or one column for 25 mm
   (page borders, separator rules, grid lines left over) are removed. No trace is that straight
   for that long; pacing spikes and calibration pulses are shorter.
3. **Small blobs and solid blocks.** Connected components smaller than 0.75 mm square and shorter
   than 1 mm (grid dots, specks, JPEG noise) are dropped, and so are components thicker than 2 mm
   anywhere (redaction bars, logos): traces and text strokes are well under 1 mm thick. Text is
   kept; the layout stage copes with it. Thin, perfectly axis-aligned fragments longer than 2 mm
   (pieces of grid lines left where the paper curls) keep only a quarter of their probability.

The probability is the ink scaled by the high threshold (1 at and above it) inside the kept mask
grown by one pixel (to keep anti-aliased edges), 0 elsewhere.

A learned segmenter plugs into the same function with ``segmenter="unet"`` once it exists.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ecgdig.errors import ConfigError, ModelFileError
from ecgdig.pipeline.grid import suppress_grid
from ecgdig.types import GridSuppression, NormalizedPage, TraceProbability

__all__ = ["DEFAULT_SEGMENTER", "SEGMENTERS", "erase_ruled_lines", "lighten_cool_grid", "segment"]

#: Names accepted by :func:`segment`.
SEGMENTERS = ("classical", "unet")
#: The segmenter used unless one is named: the shipped U-Net, better than the classical one on
#: every page set measured (docs/benchmarks.md).
DEFAULT_SEGMENTER = "unet"

#: Length (mm) of a perfectly horizontal / vertical run that is taken for a ruled line: no ECG
#: stays on one pixel row for 1.6 s, and the tallest QRS flank leans by a column before 25 mm.
_LINE_MM_H = 40.0
_LINE_MM_V = 25.0
#: Length (mm) of a straight run erased from any segmenter's map as a frame or a page edge. Longer
#: than the classical segmenter's rule: the U-Net's thick strokes make a deep S wave's flank a
#: straight vertical run of 25 mm and more (a clean page's V2: 19.6 -> 17.7 dB at 25 mm).
_FRAME_LINE_MM = 60.0
#: Components thicker than this (mm) anywhere are solid blocks, not traces.
_MAX_THICKNESS_MM = 2.0


def segment(
    page: NormalizedPage,
    *,
    grid: GridSuppression | None = None,
    segmenter: str = DEFAULT_SEGMENTER,
    model_path: str | Path | None = None,
    threads: int | None = None,
) -> TraceProbability:
    """Estimate, for every pixel of a normalized page, the probability that it belongs to a trace.

    Parameters
    ----------
    page : NormalizedPage
        The normalized page (see :func:`ecgdig.pipeline.normalize.normalize`).
    grid : GridSuppression, optional
        The page's grid suppression; computed with :func:`ecgdig.pipeline.grid.suppress_grid`
        when not given.
    segmenter : str, optional
        ``"classical"`` (threshold and shape rules on the grid-free ink) or ``"unet"`` (the learned
        segmenter of :mod:`ecgdig.model`, tiled over the page on the CPU).
    model_path : str or Path, optional
        Model file for ``"unet"`` (see ``docs/model.md``); default: the model shipped in the package.
    threads : int, optional
        CPU threads for ``"unet"`` inference (default: torch's choice).

    Returns
    -------
    TraceProbability
        ``probability`` (rows, cols) float32 in [0, 1], on the grid of ``page.image``; ``extras``
        holds ``"mask"`` (uint8 0/1, the kept components before edge growth).

    Raises
    ------
    ConfigError
        If ``segmenter`` is not a known segmenter.
    ValueError
        If ``grid.ink`` does not have the page's shape.

    Examples
    --------
    >>> import numpy as np
    >>> from ecgdig.types import NormalizedPage
    >>> img = np.full((400, 600, 3), 255, np.uint8)
    >>> img[200:202, 50:550] = 30                                  # a trace (kept) ...
    >>> img[180:220, 100] = 30; img[180:220, 300] = 30             # ... with two spikes
    >>> img[50, 100:101] = 30                                      # a speck (dropped)
    >>> p = segment(NormalizedPage(img, 8.0, 1.0, "grid", 8.0)).probability
    >>> bool(p[201, 300] > 0.9), bool(p[50, 100] == 0.0)
    (True, True)
    """
    if segmenter == "unet":
        return _learned(page, model_path, threads)
    if segmenter not in SEGMENTERS:
        raise ConfigError(f"unknown segmenter {segmenter!r}; available: {', '.join(SEGMENTERS)}")
    if grid is None:
        grid = suppress_grid(page)
    ink = grid.ink
    if ink.shape != page.image.shape[:2]:
        raise ValueError(f"grid.ink has shape {ink.shape}, the page {page.image.shape[:2]}")
    return _classical(ink.astype(np.float32, copy=False), float(page.px_per_mm))


def _learned(page: NormalizedPage, model_path: str | Path | None, threads: int | None) -> TraceProbability:
    """Run the learned U-Net at its training scale and return the probability on the page's grid."""
    # Imported here: torch and the network are only needed by this segmenter.
    from ecgdig.model.files import default_model_path
    from ecgdig.model.inference import predict_trace_probability

    path = Path(model_path) if model_path is not None else default_model_path()
    if not path.is_file():
        raise ModelFileError("no such model file", path)
    model, header = _cached_model(str(path.resolve()), path.stat().st_mtime_ns)
    image = lighten_cool_grid(page.image)
    factor = header.px_per_mm / page.px_per_mm
    rows, cols = image.shape[:2]
    if abs(factor - 1.0) > 0.01:
        size = (round(cols * factor), round(rows * factor))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    probability = predict_trace_probability(image, model, threads=threads)
    if probability.shape != (rows, cols):
        probability = cv2.resize(probability, (cols, rows), interpolation=cv2.INTER_LINEAR)
    return TraceProbability(
        probability=np.clip(probability, 0.0, 1.0).astype(np.float32),
        segmenter=f"unet:{path.name}",
    )


#: Hues (degrees) of grids the shipped model reads poorly: green, cyan, blue, violet. Red, orange,
#: pink and brown grids are left alone (their brightest channel hid a brown grid less well than
#: the model reads it: eik005 15.9 -> 13.5 dB).
_COOL_HUES_DEG = (75.0, 285.0)
#: Coloured marks must be this share of the marked pixels for the page to have a coloured grid.
_COLOURED_SHARE = 0.5


def lighten_cool_grid(image: np.ndarray) -> np.ndarray:
    """Return the page with a green or blue grid turned light grey, other pages unchanged.

    Trace and text ink is dark in every channel, whereas a coloured grid line is bright in at
    least one: the brightest channel keeps the ink and turns the grid into a pale grey one. The
    shipped model reads dark blue and green grids badly (ecg-image-kit pages: 4-13 dB, the
    calibration pulse often lost), and grey grids well (15-17 dB); on those pages the brightest
    channel scored 15-18 dB.

    Parameters
    ----------
    image : (rows, cols, 3) ndarray of uint8
        RGB page.

    Returns
    -------
    ndarray
        ``image`` itself, or its brightest channel repeated in R, G and B.
    """
    step = max(1, round(np.sqrt(image.shape[0] * image.shape[1] / 250_000)))
    thumb = np.ascontiguousarray(image[::step, ::step])
    hsv = cv2.cvtColor(thumb, cv2.COLOR_RGB2HSV_FULL)
    brightest = hsv[..., 2].astype(np.float32)
    chroma = hsv[..., 1].astype(np.float32) * brightest / 255.0
    darkness = 255.0 - thumb.mean(axis=2)
    marked = (darkness > 20.0) | (chroma > 20.0)
    coloured = marked & (chroma > 0.3 * darkness + 10.0)
    n_marked = max(1, int(np.count_nonzero(marked)))
    if int(np.count_nonzero(coloured)) < _COLOURED_SHARE * n_marked:
        return image
    hue = hsv[..., 0][coloured].astype(np.float64) * (2.0 * np.pi / 256.0)
    dominant = float(np.degrees(np.angle(np.mean(np.exp(1j * hue))))) % 360.0
    if not _COOL_HUES_DEG[0] <= dominant <= _COOL_HUES_DEG[1]:
        return image
    red, green, blue = cv2.split(image)
    brightest_channel = cv2.max(cv2.max(red, green), blue)
    return cv2.merge([brightest_channel, brightest_channel, brightest_channel])


@functools.lru_cache(maxsize=2)
def _cached_model(path: str, mtime_ns: int) -> tuple[Any, Any]:
    """Load a model file once per process (a batch digitizes many pages with one model).

    ``mtime_ns`` is part of the key so that a model file replaced on disk is read again.
    """
    from ecgdig.model.files import load_model

    return load_model(path)


def _classical(ink: np.ndarray, px_per_mm: float) -> TraceProbability:
    px_per_mm = px_per_mm if px_per_mm > 0 else 8.0
    # 1. Adaptive hysteresis on lightly smoothed ink.
    smooth = cv2.GaussianBlur(ink, (0, 0), 0.6)
    step = max(1, int(np.sqrt(ink.size / 500_000)))
    top = float(np.percentile(smooth[::step, ::step], 99.5))
    high = float(np.clip(0.5 * top, 0.35, 0.6))
    low = 0.5 * high
    mask = _hysteresis(smooth, low, high)

    # 2. Long, perfectly straight horizontal / vertical runs are ruled lines.
    len_h = max(15, round(_LINE_MM_H * px_per_mm))
    len_v = max(15, round(_LINE_MM_V * px_per_mm))
    mask = cv2.subtract(mask, _straight_runs(mask, len_h, len_v))

    # 3. Components: drop specks and solid blocks.
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = np.zeros(n, dtype=bool)
    if n > 1:
        area = stats[1:, cv2.CC_STAT_AREA]
        extent = np.maximum(stats[1:, cv2.CC_STAT_WIDTH], stats[1:, cv2.CC_STAT_HEIGHT])
        min_area = max(6.0, (0.75 * px_per_mm) ** 2)
        keep[1:] = (area >= min_area) | (extent >= 1.0 * px_per_mm)
        dist = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
        keep[np.unique(labels[dist > 0.5 * _MAX_THICKNESS_MM * px_per_mm])] = False
    keep[0] = False
    kept = keep[labels].astype(np.uint8)
    # Thin, perfectly axis-aligned fragments at least 2 mm long are most likely pieces of grid
    # lines left over where the paper curls: kept, but at a quarter of their probability.
    weight = np.ones(n, dtype=np.float32)
    if n > 1:
        thin = max(2, round(0.3 * px_per_mm))
        w, h = stats[1:, cv2.CC_STAT_WIDTH], stats[1:, cv2.CC_STAT_HEIGHT]
        fragment = ((h <= thin) & (w >= 2.0 * px_per_mm)) | ((w <= thin) & (h >= 2.0 * px_per_mm))
        weight[1:][fragment] = 0.25

    # Probability: ink scaled by the high threshold, inside the kept mask grown by one pixel.
    grown = cv2.dilate(kept, np.ones((3, 3), np.uint8))
    comp_weight = cv2.dilate(weight[labels] * kept, np.ones((3, 3), np.uint8))
    probability = np.clip(ink / high, 0.0, 1.0) * grown * comp_weight
    return TraceProbability(
        probability=probability.astype(np.float32), segmenter="classical", extras={"mask": kept}
    )


def erase_ruled_lines(probability: np.ndarray, px_per_mm: float, *, threshold: float = 0.5) -> np.ndarray:
    """Return the trace probability with long, perfectly straight horizontal and vertical lines zeroed.

    Lines of at least ``_FRAME_LINE_MM`` (60 mm) along a row or a column are erased.

    A learned segmenter marks any thin dark line as trace, including the frame ecg-image-kit draws
    round its pages (a box inside a white border) and a scan's page edge; read as trace, such a
    line becomes a strip of its own or stretches every strip's span. The classical segmenter
    drops shorter straight lines from its ink mask.

    Parameters
    ----------
    probability : (rows, cols) ndarray of float
        Trace probability in [0, 1].
    px_per_mm : float
        Page scale.
    threshold : float, optional
        Probability above which a pixel is ink.

    Returns
    -------
    ndarray
        A copy with the lines (and the pixel either side, their antialiased edge) set to 0, or
        ``probability`` itself if it has none.
    """
    mask = (probability >= threshold).astype(np.uint8)
    length = max(15, round(_FRAME_LINE_MM * px_per_mm))
    ruled = _straight_runs(mask, length, length)
    if not ruled.any():
        return probability
    out = probability.copy()
    out[cv2.dilate(ruled, np.ones((3, 3), np.uint8)).astype(bool)] = 0.0
    return out


def _hysteresis(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """uint8 0/1 mask of pixels >= ``low`` connected (8-neighbourhood) to a pixel >= ``high``."""
    weak = (values >= low).astype(np.uint8)
    n, labels = cv2.connectedComponents(weak, connectivity=8)
    if n <= 1:
        return weak
    seeded = np.zeros(n, dtype=bool)
    seeded[np.unique(labels[values >= high])] = True
    seeded[0] = False
    return seeded[labels].astype(np.uint8)


def _straight_runs(mask: np.ndarray, len_h: int, len_v: int) -> np.ndarray:
    """uint8 0/1 mask of runs of at least ``len_h`` px along a row or ``len_v`` px along a column.

    Only rows (columns) holding that many set pixels can hold such a run, so the opening is
    computed on those alone.
    """
    runs = np.zeros_like(mask)
    rows = np.flatnonzero(np.count_nonzero(mask, axis=1) >= len_h)
    if rows.size:
        kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (len_h, 1))
        runs[rows] = cv2.morphologyEx(np.ascontiguousarray(mask[rows]), cv2.MORPH_OPEN, kernel)
    cols = np.flatnonzero(np.count_nonzero(mask, axis=0) >= len_v)
    if cols.size:
        kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (1, len_v))
        runs[:, cols] |= cv2.morphologyEx(np.ascontiguousarray(mask[:, cols]), cv2.MORPH_OPEN, kernel)
    return runs
