"""Page orientation: find and undo quarter turns and left-right mirroring of a whole page.

A page scanned upside down, fed sideways or saved from the back of a transparency still has a
grid, traces and text, and every later stage reads it happily: upside down, each lead becomes
another lead, negated and reversed. The orientation is read here, before
:func:`ecgdig.pipeline.normalize.normalize`, from a thumbnail (at most 1000 px across; about
3.6 px/mm on a letter page) in four steps:

1. **Ink.** Darkness of the brightest channel less half the chroma (coloured grid lines, a dark
   navy one included, fall well below black or grey ink), relative to the paper (illumination
   flattened), above the page's own grid level (the 90th percentile of the darkness in 8 mm
   tiles), with hysteresis. Specks, solid blocks and straight lines longer than 15 mm are
   dropped; on a photo, so is everything off the sheet.
2. **Axis.** The strips run along the time axis: the connected ink marks (grown by about a
   millimetre) are wider than tall, and the ink's projection across the strips (at angles up to
   20 degrees, 4 mm bins) is sharper than along them. The two log-ratios are added; the page is
   considered turned by 90 or 270 degrees only below -0.5. Aspect ratio is not used: portrait
   6x1 pages exist.
3. **Strips and beats.** With the strips horizontal (and deskewed), peaks of the ink's row profile
   give the strips; in each, the vertical ink run through the baseline gives the QRS complexes
   (the longest strokes) and the isoelectric line (the median over one RR interval). Strips
   without complexes are header or footer text and are left out.
4. **Up or down, forwards or backwards.** Independent cues vote, each clipped to +-1 and weighted:

   ===================  =======  ==============================================================
   cue                  weight   counts for upright when
   ===================  =======  ==============================================================
   calibration pulses   1 each,  the 1 mV rectangles rise: a flat top whose two ends meet equal
                        up to 3  strokes going down, and neither stroke going on past the flat
                                 (so grid squares left in the ink are not pulses)
   QRS polarity         1        complexes reach further up than down (most leads)
   rhythm strip         1        the strip with one morphology in all its quarters is at the
                                 bottom rather than the top (3x4+1, 3x4+3, 6x2+1 pages)
   strip position       0.5      the strips sit low on the sheet (header text above them)
   T after QRS          1.5      the trace strays further from its baseline just after each QRS
                                 (ST segment, T wave) than just before it (P wave)
   lead labels          1.5      text marks sit just after a quarter of the strip (the start of a
                                 lead) rather than just before one
   pulse side           0.5      pulses at the left end (some vendors print them on the right)
   ===================  =======  ==============================================================

   The first four are summed as the up/down vote V, the last three as the forwards vote H; the
   beat-based votes count fully from 15 complexes on. Turning by 180 degrees needs
   ``-(V + H) > 1.5``, mirroring ``-H > 2`` and a vertical flip ``-V > 2``, the largest margin
   winning (a mirrored scan is rarer than a turned one). Once the strips are known to run
   vertically, the better of the two quarter turns is taken.

Weights and margins were set on the 91 pages of ``shared/data`` (64 ecg-image-kit pages, 19 real
scans, 8 photos) at every quarter turn and mirrored, requiring every upright page to stay at
least 0.5 vote from being turned; the accuracy is in ``docs/pipeline-geometry.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import median_filter
from scipy.signal import find_peaks

# The sheet finder is normalize's own, so the two stages agree on what is paper.
from ecgdig.pipeline.normalize import _find_paper, flatten_illumination

__all__ = ["Orientation", "apply_orientation", "detect_orientation"]

#: Longest side of the analysed thumbnail, in pixels.
_THUMB_PX = 1000
#: Smallest side the analysis needs, in pixels (normalize's own minimum).
_MIN_SIDE_PX = 64
#: Nominal long side of a page, in mm (US letter): lengths below are in these "page millimetres"
#: until the real scale is measured by normalize. A crop of a page makes them too small, which only
#: loosens the lower bounds they set.
_PAGE_MM = 279.4
#: Axis evidence (log-ratio sum) below -this: the strips run vertically; within +-this: unclear,
#: page kept. Over the 91 shared pages in all 8 orientations the evidence had the right sign and
#: at least 0.68 in size (a wrinkled synthetic page; 95% of cases above 0.94).
_AXIS_MIN = 0.5
#: Votes by which turning 180 degrees must beat keeping a page with horizontal strips as it is.
_TURN_MARGIN = 1.5
#: Further votes a mirror must win by: mirrored scans are rarer than turned ones.
_MIRROR_PENALTY = 0.5
#: Complexes from which the beat-based votes count fully (a crop or a broken trace shows fewer).
_FULL_BEATS = 15
#: Fewer QRS complexes than this along the strips, and no grid: no ECG was seen (every real page
#: measured showed at least 2, in any orientation).
MIN_BEATS = 3


@dataclass(frozen=True)
class Orientation:
    """How to make a page upright: mirror it left-right first (if ``mirrored``), then turn it.

    Attributes
    ----------
    quarter_turns : int
        Counter-clockwise (as displayed) quarter turns, 0-3, applied after the mirroring.
    mirrored : bool
        Whether the page is a mirror image (flip left-right first).
    confidence : float
        0 to 1: how clearly the cues agree (0 when nothing was measured).
    evidence : str
        The cues, in one human-readable line.
    beats : int
        QRS-like complexes found along the strips (0: no ECG trace seen on the page).
    """

    quarter_turns: int = 0
    mirrored: bool = False
    confidence: float = 0.0
    evidence: str = ""
    beats: int = 0

    @property
    def is_identity(self) -> bool:
        """Whether the page is already upright."""
        return self.quarter_turns % 4 == 0 and not self.mirrored

    def describe(self) -> str:
        """Say what the correction does, e.g. ``"turned 90 degrees counter-clockwise"``."""
        turn = {
            0: "",
            1: "turned 90 degrees counter-clockwise",
            2: "turned 180 degrees",
            3: "turned 90 degrees clockwise",
        }[self.quarter_turns % 4]
        if self.mirrored:
            return "mirrored left-right" + (f" and {turn}" if turn else "")
        return turn or "left as it is"


def apply_orientation(image: np.ndarray, orientation: Orientation) -> np.ndarray:
    """Return ``image`` made upright by ``orientation`` (an exact pixel permutation).

    Parameters
    ----------
    image : (rows, cols[, channels]) ndarray
        The page as read.
    orientation : Orientation
        Output of :func:`detect_orientation`.

    Returns
    -------
    ndarray
        A contiguous copy (``image`` itself when nothing changes); rows and columns swap for an
        odd number of quarter turns.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.arange(6).reshape(2, 3)
    >>> apply_orientation(a, Orientation(quarter_turns=1)).tolist()
    [[2, 5], [1, 4], [0, 3]]
    >>> apply_orientation(a, Orientation(mirrored=True)).tolist()
    [[2, 1, 0], [5, 4, 3]]
    """
    if orientation.is_identity:
        return image
    out = np.fliplr(image) if orientation.mirrored else image
    return np.ascontiguousarray(np.rot90(out, orientation.quarter_turns % 4))


def detect_orientation(image: np.ndarray) -> Orientation:
    """Detect whether a page is turned by a multiple of 90 degrees and/or mirrored.

    Conservative: a page is turned only when several cues agree (see the module notes); when
    the evidence is weak it is left as it is, since turning an upright page ruins it.

    Parameters
    ----------
    image : (rows, cols[, 3 or 4]) ndarray of uint8
        The page as read (RGB, grey, or RGBA whose alpha is ignored).

    Returns
    -------
    Orientation
        The correction for :func:`apply_orientation`, its confidence, the evidence in one line
        and the number of QRS-like complexes seen (0 for an image without ECG traces).

    Examples
    --------
    >>> import numpy as np
    >>> o = detect_orientation(np.full((850, 1100, 3), 255, np.uint8))
    >>> o.is_identity, o.beats, o.evidence
    (True, 0, 'no ink')
    """
    thumb = _thumbnail(image)
    if thumb is None:
        return Orientation(evidence="image too small")
    ink, unit = _ink(thumb)
    if np.count_nonzero(ink) < 50 * unit:
        return Orientation(evidence="no ink")
    return _decide(_measure(ink, unit))


# --------------------------------------------------------------------------------------------------
# Ink
# --------------------------------------------------------------------------------------------------


def _thumbnail(image: np.ndarray) -> np.ndarray | None:
    """RGB uint8 copy at most ``_THUMB_PX`` across (None if too small to analyse)."""
    if image.ndim == 2:
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_GRAY2RGB)
    image = image[:, :, :3]
    rows, cols = image.shape[:2]
    if min(rows, cols) < _MIN_SIDE_PX:
        return None
    # Very long, thin images keep their short side usable.
    scale = min(1.0, max(_THUMB_PX / max(rows, cols), _MIN_SIDE_PX / min(rows, cols)))
    if scale < 1.0:
        size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image)


def _ink(thumb: np.ndarray) -> tuple[np.ndarray, float]:
    """Binary mask (uint8 0/1) of dark non-grid marks, and the thumbnail's px per page-mm."""
    unit = max(thumb.shape[:2]) / _PAGE_MM
    r, g, b = cv2.split(flatten_illumination(thumb))
    mx = cv2.max(cv2.max(r, g), b)
    mn = cv2.min(cv2.min(r, g), b)
    # Darkness of the brightest channel less half the chroma: coloured grid lines (a dark navy
    # grid included) fall well below black or grey ink.
    dark = 1.0 - 1.5 * mx + 0.5 * mn
    # Half the thumbnail is plenty to find a sheet on a table, at a quarter of the cost.
    paper = _find_paper(np.ascontiguousarray(thumb[::2, ::2]))
    on_paper = dark.size
    if paper is not None:
        # A photo: the table or floor around the sheet is texture, not ink.
        sheet = cv2.resize(paper.mask, (dark.shape[1], dark.shape[0]), interpolation=cv2.INTER_NEAREST)
        dark[sheet == 0] = 0.0
        on_paper = max(1, int(np.count_nonzero(sheet)))
    # The darkest 0.3% of the sheet is ink (text, thick traces): thresholds scale with it, so
    # faint photographed traces count too.
    hi = float(np.percentile(dark, 100.0 - 0.3 * on_paper / dark.size))
    # Grey and black grids are as dark as faint ink: ink must stand out of its own 8 mm tile,
    # where grid lines make up more than the lightest nine tenths of pixels rarely.
    floor = np.maximum(0.15, _tile_level(dark, round(8 * unit)) + 0.1)
    weak = (dark > np.maximum(floor, 0.3 * hi)).astype(np.uint8)
    strong = dark > np.maximum(floor, 0.5 * hi)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(weak, connectivity=8)
    keep = np.zeros(n, bool)
    keep[np.unique(labels[strong])] = True
    keep[0] = False
    # Specks (grid crossings, dots, noise) are too small to tell anything.
    keep &= np.maximum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]) >= 1.2 * unit
    ink = keep[labels].astype(np.uint8)
    # Solid blocks (redaction bars, logos, shadows, corners a rotation left black): traces and
    # text strokes are thinner than a millimetre.
    k = max(3, round(1.2 * unit)) | 1
    solid = cv2.morphologyEx(ink, cv2.MORPH_OPEN, np.ones((k, k), np.uint8))
    thick = cv2.dilate(solid, np.ones((3, 3), np.uint8))
    # Ruled lines (borders, grid lines left over) are straight for longer than any trace.
    length = max(9, round(15 * unit))
    rows = cv2.morphologyEx(ink, cv2.MORPH_OPEN, np.ones((1, length), np.uint8))
    cols = cv2.morphologyEx(ink, cv2.MORPH_OPEN, np.ones((length, 1), np.uint8))
    return ((ink > 0) & (thick == 0) & (rows == 0) & (cols == 0)).astype(np.uint8), unit


def _tile_level(dark: np.ndarray, tile: int) -> np.ndarray:
    """Return the 90th percentile of ``dark`` in square tiles, interpolated to every pixel.

    The tiles are centred on the image (edges reflected), so a turned page gets the same tiles.
    """
    rows, cols = dark.shape
    tile = max(8, tile)
    ty, tx = -(-rows // tile), -(-cols // tile)
    pad_y, pad_x = ty * tile - rows, tx * tile - cols
    pads = ((pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2))
    padded = np.pad(dark, pads, mode="reflect")
    cut = padded.reshape(ty, tile, tx, tile).transpose(0, 2, 1, 3).reshape(ty, tx, -1)
    level = np.percentile(cut, 90, axis=2).astype(np.float32)
    full = cv2.resize(level, (tx * tile, ty * tile), interpolation=cv2.INTER_LINEAR)
    return full[pad_y // 2 : pad_y // 2 + rows, pad_x // 2 : pad_x // 2 + cols]


# --------------------------------------------------------------------------------------------------
# Axis
# --------------------------------------------------------------------------------------------------


def _elongation(ink: np.ndarray, unit: float) -> float:
    """Area-weighted mean log(width / height) of the ink's connected marks (grown by ~1.4 mm)."""
    k = max(3, round(1.4 * unit)) | 1
    _, _, stats, _ = cv2.connectedComponentsWithStats(cv2.dilate(ink, np.ones((k, k), np.uint8)))
    w = stats[1:, cv2.CC_STAT_WIDTH].astype(np.float64)
    h = stats[1:, cv2.CC_STAT_HEIGHT].astype(np.float64)
    area = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
    big = np.maximum(w, h) > 8 * unit  # text and specks carry no direction
    if not big.any():
        return 0.0
    return float((area * np.clip(np.log(w / h), -3.0, 3.0))[big].sum() / area[big].sum())


def _projection(ink: np.ndarray, unit: float) -> tuple[float, float, float]:
    """Log-ratio of the sharpest row and column projections, and the angle of each.

    Sharpness is the sum of squared bin counts (4 mm bins) of the ink projected across lines at
    -20..20 degrees: strips make the projection across them peaky. Returns (log ratio, angle of
    the rows, angle of the columns), angles in degrees, positive clockwise as displayed.
    """
    ys, xs = np.nonzero(ink)
    step = xs.size // 30_000 + 1  # a subsample is plenty and keeps this cheap
    x = xs[::step].astype(np.float32)
    y = ys[::step].astype(np.float32)
    bin_px = 4.0 * unit

    def sharpness(deg: float, rows: bool) -> tuple[float, float]:
        c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        p = y * c - x * s if rows else x * c + y * s
        h = np.bincount(((p - p.min()) / bin_px).astype(np.int64)).astype(np.float64)
        return float(h @ h), deg

    best = []
    for rows in (True, False):
        # Every second degree, then the neighbours of the best.
        coarse = max(sharpness(deg, rows) for deg in range(-20, 21, 2))
        best.append(max(coarse, *(sharpness(coarse[1] + d, rows) for d in (-1, 1))))
    return math.log(best[0][0] / best[1][0]), best[0][1], best[1][1]


def _to_frame(ink: np.ndarray, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate ``ink`` so lines at ``angle_deg`` become horizontal; also the rotated image area."""
    h, w = ink.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle_deg, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(h * sin + w * cos), int(h * cos + w * sin)
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    frame = cv2.warpAffine(ink * 255, m, (nw, nh), flags=cv2.INTER_LINEAR) > 100
    area = cv2.warpAffine(np.full_like(ink, 255), m, (nw, nh), flags=cv2.INTER_NEAREST) > 0
    return frame.astype(np.uint8), area


# --------------------------------------------------------------------------------------------------
# Strips, beats, pulses, labels (in the frame: strips horizontal)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Strip:
    """Ink of one strip: rows ``top``.. of the frame, columns ``x0``.. (where ink was found)."""

    top: int
    x0: int
    band: np.ndarray  # bool (rows, cols), one-pixel gaps closed vertically
    has: np.ndarray  # bool (cols,): ink in the column
    med: np.ndarray  # median ink row per column, gaps interpolated

    @property
    def baseline(self) -> float:
        """Typical row of the trace, in frame rows."""
        return self.top + float(np.median(self.med))


@dataclass(frozen=True)
class _Beats:
    """What the QRS complexes of one strip say."""

    n: int = 0
    polarity: float = 0.0  # sum over complexes of (up - down) / (up + down)
    after: float = 0.0  # summed departure from the baseline just after the complexes
    before: float = 0.0  # ... and just before them
    spread: float | None = None  # how unlike the strip's quarters are (None: too few complexes)


def _strips(frame: np.ndarray, unit: float) -> list[_Strip]:
    """Trace strips: peaks of the ink's row profile whose band holds ink across most columns."""
    rows = frame.shape[0]
    profile = cv2.GaussianBlur(frame.sum(axis=1).astype(np.float32)[:, None], (1, 0), 0.1, sigmaY=unit)[:, 0]
    if profile.max() <= 0:
        return []
    peaks, _ = find_peaks(profile, distance=max(3, round(6 * unit)), prominence=0.15 * float(profile.max()))
    used = np.flatnonzero(frame.any(axis=0))
    width = max(1.0, float(np.percentile(used, 98) - np.percentile(used, 2)))
    spacing = float(np.median(np.diff(peaks))) if peaks.size > 1 else 20 * unit
    strips = []
    for i, p in enumerate(peaks):
        lo = round((peaks[i - 1] + p) / 2) if i > 0 else max(0, round(p - spacing / 2))
        hi = round((peaks[i + 1] + p) / 2) if i + 1 < peaks.size else min(rows, round(p + spacing / 2))
        has: np.ndarray = np.asarray(frame[lo:hi].any(axis=0))
        found = np.flatnonzero(has)
        if found.size < 10:
            continue
        x0, x1 = int(found[0]), int(found[-1]) + 1
        # Text lines and stray marks are short or broken; a trace runs on.
        if x1 - x0 < 0.3 * width or has[x0:x1].mean() < 0.5:
            continue
        band = cv2.morphologyEx(frame[lo:hi, x0:x1], cv2.MORPH_CLOSE, np.ones((3, 1), np.uint8)) > 0
        has = has[x0:x1]
        count = band.sum(axis=0)
        med = np.argmax(np.cumsum(band, axis=0) >= (count + 1) // 2, axis=0).astype(np.float64)
        idx = np.arange(band.shape[1])
        strips.append(_Strip(lo, x0, band, has, np.interp(idx, idx[has], med[has])))
    return strips


def _runs(s: _Strip, window: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Baseline (running median over ``window`` px) and the ink run's extent up and down from it.

    In each column the vertical run of ink nearest to the baseline is taken: a QRS stroke crosses
    the baseline, a T wave lies beside it (and then has no extent on the baseline's side).
    """
    base = median_filter(s.med, size=max(5, round(window)) | 1, mode="nearest")
    band = s.band
    bh, bw = band.shape
    r = np.arange(bh)[:, None]
    idx = np.arange(bw)
    r0 = np.argmin(np.where(band, np.abs(r - base[None, :]), np.inf), axis=0)
    top = np.maximum.accumulate(np.where(band, -1, r), axis=0)[r0, idx] + 1
    bottom = np.minimum.accumulate(np.where(band, bh, r)[::-1], axis=0)[::-1][r0, idx] - 1
    up = np.where(s.has, np.clip(base - top, 0.0, bottom - top), 0.0)
    down = np.where(s.has, np.clip(bottom - base, 0.0, bottom - top), 0.0)
    return base, up, down


def _qrs(stroke: np.ndarray, unit: float) -> np.ndarray:
    """Columns of QRS complexes: the longest vertical strokes (T waves are slower, so shorter)."""
    # A complex spans a few columns (the R and S strokes): take the longest stroke near each.
    near = np.ones((1, max(1, round(unit)) | 1), np.uint8)
    stroke = cv2.dilate(stroke.astype(np.float32)[None, :], near)[0]
    tall = max(3.0 * unit, 3.0, 0.3 * float(np.percentile(stroke, 99.5)))
    peaks, props = find_peaks(stroke, height=tall, distance=max(3, round(8 * unit)))
    if peaks.size >= 4:
        # Tall T waves can pass the first bar; complexes are far taller than them.
        heights = np.sort(props["peak_heights"])
        peaks = peaks[props["peak_heights"] >= 0.5 * float(np.median(heights[heights.size // 2 :]))]
    return peaks


def _beats(s: _Strip, unit: float) -> _Beats:
    """QRS complexes of a strip: polarity, asymmetry in time, and how alike its quarters are."""
    _, up, down = _runs(s, 15 * unit)
    qrs = _qrs(up + down, unit)
    if qrs.size < 2:
        return _Beats()
    # The isoelectric line is the median over a whole beat, whatever the scale.
    rr = float(np.median(np.diff(qrs)))
    base, up, down = _runs(s, min(max(rr, 8 * unit), 60 * unit))
    stroke = up + down
    qrs = _qrs(stroke, unit)
    if qrs.size < 2:
        return _Beats()
    rr = float(np.median(np.diff(qrs)))
    departure = np.abs(base - s.med)
    steep = stroke > 1.5 * unit  # the complexes themselves are left out of the waves
    half = max(1, round(1.5 * unit))
    pol = np.empty(qrs.size)
    amp = np.empty(qrs.size)
    after = before = 0.0
    near, far = round(0.12 * rr), round(0.45 * rr)
    for i, q in enumerate(qrs):
        u = float(up[max(0, q - half) : q + half + 1].max())
        d = float(down[max(0, q - half) : q + half + 1].max())
        pol[i] = (u - d) / max(u + d, 1e-6)
        amp[i] = max(u + d, 1.0)
        if q - far >= 0 and q + far < stroke.size:
            # ST segment and T wave after the complex; P wave (smaller) before it.
            after += float(departure[q + near : q + far][~steep[q + near : q + far]].sum())
            before += float(departure[q - far : q - near][~steep[q - far : q - near]].sum())
    quarter = np.minimum(4 * qrs // max(1, stroke.size), 3)
    present = [k for k in range(4) if np.any(quarter == k)]
    spread = None
    if len(present) >= 3:
        # A rhythm strip shows one lead throughout; a 3x4 row shows four different ones.
        p = [float(np.median(pol[quarter == k])) for k in present]
        a = [float(np.log(np.median(amp[quarter == k]))) for k in present]
        spread = float(np.std(p) + np.std(a))
    return _Beats(int(qrs.size), float(pol.sum()), after, before, spread)


def _descents(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel, the rows spanned by the longest ink path going down (and up) from it.

    Paths may drift by a pixel a row, so strokes that a photo's shear tilts, or that jog by a
    pixel, still count at full length.
    """
    rows, cols = mask.shape
    ink = mask.astype(np.int32)
    out = []
    for order in (range(rows - 1, -1, -1), range(rows)):
        runs = np.empty((rows, cols), np.int32)
        prev = np.zeros(cols + 2, np.int32)
        cur = prev[1:-1]
        for r in order:
            np.maximum(np.maximum(prev[:-2], prev[2:]), cur, out=cur)
            cur += 1
            cur *= ink[r]
            runs[r] = cur
        out.append(runs)
    return out[0], out[1]


def _pulses(frame: np.ndarray, unit: float) -> list[tuple[float, int]]:
    """Calibration pulses: (position 0..1 across the ink, +1 for a rising pulse, -1 falling).

    A pulse is a flat segment whose two ends meet strokes of about equal length going the same
    way (down from the top of a rising pulse), 0.3 to 1.3 times as long as the flat is wide
    (10 x 5 mm at 10 mm/mV and 25 mm/s), with neither stroke going on past the flat: grid lines
    left in the ink cross there, and would make every grid square a pulse. Pulses are printed at
    the ends of the strips, so only the outer fifth of the ink on each side is searched.
    """
    used = np.flatnonzero(frame.any(axis=0))
    if used.size == 0:
        return []
    left, span = int(used[0]), max(1, int(used[-1] - used[0]))
    rows = frame.shape[0]
    reach = max(1, round(0.5 * unit))
    # Both outer fifths side by side, a blank gap between them: one pass finds the pulses of both.
    sides = [(max(0, left - reach), left + span // 5 + reach)]
    sides.append((max(0, left + span - span // 5 - reach), min(frame.shape[1], left + span + 1 + reach)))
    gap = np.zeros((rows, 2 * reach + 2), np.uint8)
    part = np.hstack([frame[:, sides[0][0] : sides[0][1]], gap, frame[:, sides[1][0] : sides[1][1]]])
    shift = sides[1][0] - (sides[0][1] - sides[0][0] + gap.shape[1])  # part column -> frame column
    flats = cv2.morphologyEx(part, cv2.MORPH_OPEN, np.ones((1, max(3, round(2 * unit))), np.uint8))
    n, _, stats, _ = cv2.connectedComponentsWithStats(flats, connectivity=8)
    if n <= 1:
        return []
    # One-pixel gaps along a stroke are closed first.
    down, up = _descents(cv2.morphologyEx(part, cv2.MORPH_CLOSE, np.ones((3, 1), np.uint8)) > 0)

    def stroke(runs: np.ndarray, x: int, r0: int, r1: int) -> int:
        r0, r1 = max(0, r0), min(rows, r1)
        return int(runs[r0:r1, max(0, x - reach) : x + reach + 1].max()) if r0 < r1 else 0

    found = []
    for x, y, w, h, _ in stats[1:]:
        if h > max(3, round(0.8 * unit)) or w > 15 * unit:
            continue
        bottom = y + h - 1
        ends = (x, x + w - 1)
        going_down = [stroke(down, e, bottom + 1, bottom + 3) for e in ends]
        going_up = [stroke(up, e, y - 2, y) for e in ends]
        for lengths, beyond, sign in ((going_down, max(going_up), 1), (going_up, max(going_down), -1)):
            d = min(lengths)
            if (
                d >= 4 * unit
                and beyond < 1.5 * unit
                and max(lengths) - d <= 0.25 * max(lengths)
                and 0.3 <= w / d <= 1.3
            ):
                centre = x + w / 2 + (sides[0][0] if x < sides[0][1] - sides[0][0] else shift)
                found.append(((centre - left) / span, sign))
    return found


def _label_side(frame: np.ndarray, strips: list[_Strip], unit: float) -> tuple[float, int]:
    """Whether text marks sit just after (+) or just before (-) the quarters of their strip.

    Lead labels are printed at the start of each lead: a quarter of a 3x4 row, half of a 6x2 row
    (two quarters), the left end of a 12x1 row. Returns the mean sign over marks within a quarter
    of a quarter of a boundary (counted as at least four), and how many there were.
    """
    _, _, stats, centroids = cv2.connectedComponentsWithStats(frame, connectivity=8)
    w, h = stats[1:, cv2.CC_STAT_WIDTH], stats[1:, cv2.CC_STAT_HEIGHT]
    text = (h >= 1.5 * unit) & (h <= 6 * unit) & (w <= 15 * unit)
    cx, cy = centroids[1:][text].T
    nearest = np.argmin(np.abs(np.array([s.baseline for s in strips])[None, :] - cy[:, None]), axis=1)
    x0 = np.array([s.x0 for s in strips], np.float64)[nearest]
    x1 = x0 + np.array([s.band.shape[1] for s in strips], np.float64)[nearest]
    quarters = 4 * (cx - x0) / np.maximum(1.0, x1 - x0)
    offset = quarters - np.round(quarters)
    near = (cx >= x0 - 5 * unit) & (cx <= x1 + 5 * unit) & (np.abs(offset) < 0.25)
    if not near.any():
        return 0.0, 0
    return float(np.sign(offset[near]).sum()) / max(4, int(near.sum())), int(near.sum())


# --------------------------------------------------------------------------------------------------
# Cues and decision
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cues:
    """Everything measured, in the frame where the strips run horizontally."""

    axis: float  # > 0: strips run along the image rows
    vertical: bool  # the frame is the image turned 90 degrees counter-clockwise
    strips: int = 0
    beats: int = 0
    pulses_up: int = 0
    pulses_down: int = 0
    pulses_left: int = 0
    pulses_right: int = 0
    polarity: float = 0.0  # mean over complexes of (up - down) / (up + down)
    rhythm: float = 0.0  # spread of the first strip less that of the last one
    position: float = 0.0  # (space above the strips - space below) / sheet height
    after: float = 0.0  # (departure after the complexes - before) / both
    labels: float = 0.0
    n_labels: int = 0


def _traces(frame: np.ndarray, unit: float) -> list[tuple[_Strip, _Beats]]:
    """Return the strips that show beats (a line of header or footer text passes for a strip)."""
    return [(s, b) for s in _strips(frame, unit) if (b := _beats(s, unit)).n >= 2]


def _measure(ink: np.ndarray, unit: float) -> _Cues:
    """Every cue, measured with the strips turned horizontal."""
    ratio, angle_rows, angle_cols = _projection(ink, unit)
    axis = ratio + _elongation(ink, unit)
    vertical = axis < -_AXIS_MIN
    if vertical:
        frame, area = _to_frame(np.ascontiguousarray(np.rot90(ink, 1)), angle_cols)
    else:
        frame, area = _to_frame(ink, angle_rows)
    measured = _traces(frame, unit)
    if abs(axis) < _AXIS_MIN:
        # Too close to call, so the page stays as it is; but its beats are counted whichever way
        # the strips run, since no beats at all means no ECG.
        across = _traces(_to_frame(np.ascontiguousarray(np.rot90(ink, 1)), angle_cols)[0], unit)
        n_beats = max(sum(b.n for _, b in measured), sum(b.n for _, b in across))
        return _Cues(axis, vertical, strips=len(measured), beats=n_beats)
    if not measured:
        return _Cues(axis, vertical)
    pulses = _pulses(frame, unit)
    strips = [s for s, _ in measured]
    beats = [b for _, b in measured]
    n = sum(b.n for b in beats)
    after, before = sum(b.after for b in beats), sum(b.before for b in beats)
    rhythm = 0.0
    if len(strips) >= 3 and beats[0].spread is not None and beats[-1].spread is not None:
        rhythm = beats[0].spread - beats[-1].spread
    sheet = np.flatnonzero(area[:, area.shape[1] // 2])
    height = max(1.0, float(sheet[-1] - sheet[0]))
    position = ((strips[0].baseline - sheet[0]) - (sheet[-1] - strips[-1].baseline)) / height
    labels, n_labels = _label_side(frame, strips, unit)
    return _Cues(
        axis=axis,
        vertical=vertical,
        strips=len(strips),
        beats=n,
        pulses_up=sum(1 for _, sign in pulses if sign > 0),
        pulses_down=sum(1 for _, sign in pulses if sign < 0),
        pulses_left=sum(1 for x, _ in pulses if x < 0.2),
        pulses_right=sum(1 for x, _ in pulses if x > 0.8),
        polarity=sum(b.polarity for b in beats) / max(1, n),
        rhythm=rhythm,
        position=float(position),
        after=(after - before) / max(after + before, 1e-6),
        labels=labels,
        n_labels=n_labels,
    )


def _clip(x: float) -> float:
    return float(min(1.0, max(-1.0, x)))


def _votes(c: _Cues) -> tuple[float, float, list[str]]:
    """Up/down (V) and forwards/backwards (H) votes, positive when upright; and the evidence."""
    reliable = min(1.0, c.beats / _FULL_BEATS)
    # Over a hundred "labels" are grid remnants and noise, not text.
    labels = c.labels if c.n_labels <= 100 else 0.0
    vertical = (
        2.0 * float(np.clip((c.pulses_up - c.pulses_down) / 2, -1.5, 1.5))
        + 1.0 * _clip(c.polarity / 0.4) * reliable
        + 1.0 * _clip(c.rhythm / 0.5)
        + 0.5 * _clip(c.position / 0.3)
    )
    horizontal = (
        1.5 * _clip(c.after / 0.3) * reliable
        + 1.5 * _clip(labels / 0.5)
        + 0.5 * _clip((c.pulses_left - c.pulses_right) / 4)
    )
    evidence = [
        f"pulses {c.pulses_up} up/{c.pulses_down} down, {c.pulses_left} left/{c.pulses_right} right",
        f"QRS polarity {c.polarity:+.2f}",
        f"rhythm strip {c.rhythm:+.2f}",
        f"strip position {c.position:+.2f}",
        f"T after QRS {c.after:+.2f} ({c.beats} beats)",
        f"lead labels {labels:+.2f}",
    ]
    return vertical, horizontal, evidence


def _compose(first: tuple[bool, int], second: tuple[bool, int]) -> tuple[bool, int]:
    """(mirrored, quarter turns) of applying ``first`` then ``second`` (mirror before turning)."""
    m1, k1 = first
    m2, k2 = second
    # A mirror reverses the sense of the turns before it.
    return m1 != m2, (k2 + (-k1 if m2 else k1)) % 4


def _decide(c: _Cues) -> Orientation:
    """Pick the correction the votes favour, leaving the page alone unless clearly outvoted."""
    lines = f"strips {'vertical' if c.vertical else 'horizontal'} (axis {c.axis:+.2f})"
    if abs(c.axis) < _AXIS_MIN or c.strips == 0:
        reason = "axis unclear" if abs(c.axis) < _AXIS_MIN else "no trace strips"
        return Orientation(confidence=0.0, evidence=f"{lines}; {reason}", beats=c.beats)
    v, h, evidence = _votes(c)
    # Once strips run vertically the page must turn one way or the other: no margin for "as is".
    margin = 0.0 if c.vertical else _TURN_MARGIN
    gains = {
        (False, 0): 0.0,
        (False, 2): -(v + h) - margin,
        (True, 0): -h - _MIRROR_PENALTY - margin,
        (True, 2): -v - _MIRROR_PENALTY - margin,
    }
    best = max(gains, key=lambda state: gains[state])
    runner_up = max(g for state, g in gains.items() if state != best)
    mirrored, turns = _compose((False, 1) if c.vertical else (False, 0), best)
    confidence = min(1.0, abs(c.axis) / 2.0, (gains[best] - runner_up) / 3.0)
    return Orientation(
        quarter_turns=turns,
        mirrored=mirrored,
        confidence=round(max(0.0, confidence), 3),
        evidence=f"{lines}; up {v:+.1f}, forwards {h:+.1f}: " + "; ".join(evidence),
        beats=c.beats,
    )
