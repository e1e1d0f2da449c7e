"""Normalize a page: flatten the illumination, rectify, crop, measure the grid and resample.

The Challenge 2024 metric forgives a time shift and a baseline offset but never a scale error (a 1%
error in px/mm costs about 7 dB of SNR on a typical lead), so the scale is measured from the printed
grid, to about 0.01% on a clean scan, and never taken from DPI metadata. The steps, in order:

1. **Illumination.** Each channel is divided by a large-kernel estimate of the paper (a maximum
   filter 1% of the page wide, which erases grid, traces and text, then blurred), so paper reads
   white everywhere and the grid keeps its hue.
2. **Paper.** On a thumbnail, a bright page on a clearly darker background (photos) is found by
   Otsu's threshold; the background is then ignored and the output cropped to the page.
3. **Grid channel.** Chroma (max - min over RGB) when most marks on the paper are coloured, which
   ignores black traces and text entirely; otherwise darkness, clipped at twice the typical
   darkness of marks so that dark traces weigh like grid lines.
4. **Coarse deskew.** The angular distribution of the windowed 2-D power spectrum of the grid
   channel: each line family puts all its harmonics on one line through the origin. The two
   families are found separately (perspective makes them non-perpendicular) and an affine map
   makes both roughly axis-aligned.
5. **Fine angle.** For each family, the image is cut into strips along the lines; each strip's
   profile across the lines is a robust sum (two smallest of four sub-strips, so sloped trace
   segments and text barely count). The slope maximizing the sharpness (sum of squares) of the
   strips' sum after shifting each strip by slope x position is found by grid and golden-section
   search. Shifts are exact (Fourier phase ramps; the sharpness follows from Parseval's theorem),
   since interpolation would blur every non-integer shift and bias the slope towards zero.
6. **Perspective.** When the page is a photo or the period differs between page halves, the same
   slope search runs in up to 4x4 tiles; the lines through the tile centres give the two
   vanishing points (least squares with outlier rejection), and the homography that sends the
   line through them back to infinity makes the grid parallel and evenly spaced (affine
   rectification). Two rounds; kept only if the period becomes more uniform.
7. **Period.** On each aligned profile the autocorrelation gives the comb's period (robust to the
   equal-height harmonics of thin lines); the frequency is refined by maximizing the
   harmonic-summed periodogram (chirp-z zoom), the maximum-likelihood frequency of a periodic
   signal. The period is divided while folding the profile at it (median over periods) shows
   4 equally spaced fainter lines or dots inside it (or 1, for alternating weights). Whether the
   final comb is the 1 mm or the 5 mm spacing is decided by folding at five periods (is every
   fifth line at least 30% heavier, in both axes?) and otherwise by the number of periods across
   the page. The two axes are reconciled (same level) and measured separately, so non-square
   scans are resampled anisotropically.
8. **Resample.** One warp (deskew, homography, anisotropic scale and crop composed) maps the
   full-resolution source to ``target_px_per_mm``.
9. **Local dewarp** (photos, and pages whose period still varies). A curled or folded sheet is
   not a plane, so after the homography the grid period still drifts along the strips (the real
   photos: 40 to 45 px per 5 mm within one strip), and with it the time scale. In tiles four grid
   periods wide, the phase of the comb (median profile across the lines, so traces do not count)
   gives each tile's offset from a perfect comb; offsets are unwrapped from the most coherent tile
   outwards, a robust cubic surface is fitted to them (tiles that disagree with their neighbours
   or with it left out), and that smooth displacement field is folded into the same single
   resampling. The corrected page is measured once more and the residual field composed with
   the first (a cubic leaves part of a strong fold). Real photos 5.90 -> 7.82 dB with the lead
   separators' columns; rendered phone pages, which have no curl, 11.46 -> 10.95 dB (see
   ``docs/pipeline-geometry.md``).

If no periodic grid is found, the scale is assumed from the page width (US letter, 279.4 mm across
the long side, i.e. 200 dpi for a 2200-px page) with confidence 0.05 and a warning; the layout
stage cross-checks it with the calibration pulse. Any confidence below 0.3 means "not measured".

References
----------
Reyna et al., "Digitization and classification of ECG images: the George B. Moody PhysioNet Challenge
2024" (the SNR metric). Rife & Boorstyn, "Single-tone parameter estimation from discrete-time
observations", IEEE Trans. Inf. Theory 20(5), 1974 (periodogram-maximum frequency estimation).
Hartley & Zisserman, *Multiple View Geometry in Computer Vision*, 2nd ed., sec. 2.7 (affine
rectification from the vanishing line).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from warnings import catch_warnings, simplefilter

import cv2
import numpy as np
from scipy.signal import zoom_fft

from ecgdig.errors import ImageInputError
from ecgdig.types import NormalizedPage

__all__ = [
    "ASSUMED_CONFIDENCE",
    "US_LETTER_LONG_SIDE_MM",
    "GridMeasurement",
    "estimate_grid_px_per_mm",
    "flatten_illumination",
    "measure_grid",
    "normalize",
]

#: Long side of a US-letter page, used to assume a scale when no grid is found.
US_LETTER_LONG_SIDE_MM = 279.4
#: Confidence reported when the scale is assumed (no grid); measured scales report at least 0.3.
ASSUMED_CONFIDENCE = 0.05
#: Longest side of the thumbnail used for paper detection, colour choice and the coarse angle.
_THUMB_SIDE_PX = 1024
#: A sheet of paper is a quadrilateral, even in perspective: its hull fills most of its smallest
#: enclosing rectangle. A bright region that does not (light falling on part of the sheet, a shadow
#: cutting it) is not the paper, and cropping to it would cut traces off.
_MIN_PAPER_RECT_FILL = 0.75
#: Smallest 1-mm period (px) that can be resolved; below this the minor lines are not sought.
_MIN_PERIOD_PX = 2.2
#: Smallest comb period (px) accepted from the autocorrelation directly (finer ones may be aliases).
_MIN_DIRECT_PERIOD_PX = 3.0
#: Longest side of the copy the grid is analysed on (the final warp reads the full-resolution source).
_ANALYSIS_SIDE_PX = 2400
#: Local dewarp: pages whose grid period differs between halves by more than this (or photos) are
#: checked; tiles are this many grid periods (at least this many px) a side; a tile holds a grid
#: when its comb coherence exceeds the minimum; at least this many tiles must; below this largest
#: offset (px) nothing is changed.
_DEWARP_MIN_SPREAD = 0.004
_DEWARP_TILE_PERIODS = 4.0
_DEWARP_MIN_TILE_PX = 64
_DEWARP_MIN_COHERENCE = 0.15
_DEWARP_MIN_TILES = 12
_DEWARP_MIN_PX = 0.5
#: Largest departure of a tile's offset from its neighbours' median, in grid periods.
_DEWARP_MAX_JUMP_PERIODS = 0.25
#: Measure-and-correct rounds: a cubic surface fitted to a strongly bent sheet leaves part of the
#: bend, which the grid of the corrected page shows; a second round took the real photos' largest
#: residual from 6.6 to 1.2 mm (full runs: photos 7.71 -> 7.82 dB, phone 10.92 -> 10.95; a third
#: round gave the photos 7.67).
_DEWARP_PASSES = 2
#: Fold pass (see ``_fine_line_offsets``; real photos 7.97 -> 11.10 dB, rendered phone pages
#: 11.70 -> 11.95, scanner and clean pages untouched): band height and smoothing along the lines'
#: normal (mm); a column holds lines where the demodulated amplitude is at least this fraction of
#: the profile's, and a band needs this fraction of such columns (the page, the next); chroma/darkness ratio
#: of a coloured pixel; largest hue distance (radians) from the grid's; smallest mean offset (px)
#: worth correcting.
_FINE_BAND_MM = 20.0
_FINE_SMOOTH_MM = 5.0
_FINE_MIN_COHERENCE = 0.3
_FINE_MIN_COHERENT_FRACTION = 0.2
_FINE_MIN_COHERENT_PAGE = 0.3
_FINE_MIN_HUE_RATIO = 0.12
_FINE_MAX_HUE_DISTANCE = 0.5
_FINE_MIN_MEAN_PX = 0.5


@dataclass(frozen=True)
class GridMeasurement:
    """The grid scale and orientation measured in an image.

    Attributes
    ----------
    px_per_mm_x, px_per_mm_y : float
        Pixels per millimetre along the page's time axis (grid columns) and voltage axis (grid
        rows), measured perpendicular to the lines after rectification, in the rectified frame.
    confidence : float
        0 to 1. At least 0.3 when measured from the grid (0.3 + 0.7 x periodicity x agreement of
        the axes x uniformity across the page x certainty of the 1 mm / 5 mm decision); 0.05 when
        no grid was found and the values are assumed from the page width.
    method : str
        ``"grid-1mm"`` (minor lines measured), ``"grid-5mm"`` (major lines only, 1 mm inferred),
        ``"grid-1mm-ambiguous"``/``"grid-5mm-ambiguous"`` (single-level grid, level guessed) or
        ``"assumed-page-width"`` (no grid).
    rotation_deg : float
        Counter-clockwise angle (as displayed) of the grid's horizontal lines in the input.
    shear_deg : float
        Departure of the two line families from perpendicular, in degrees.
    grid_channel : str
        ``"chroma"`` or ``"darkness"``: the channel the grid was measured in.
    perspective_corrected : bool
        Whether a grid-based homography (vanishing points of the line families) was applied.
    local_spread : float
        Largest relative difference of the period between page halves (perspective, wrinkles).
    warnings : tuple of str
        Notes about doubtful steps.
    """

    px_per_mm_x: float
    px_per_mm_y: float
    confidence: float
    method: str
    rotation_deg: float
    shear_deg: float = 0.0
    grid_channel: str = "none"
    perspective_corrected: bool = False
    local_spread: float = 0.0
    warnings: tuple[str, ...] = ()

    @property
    def px_per_mm(self) -> float:
        """Geometric mean of the two axes' scales."""
        return math.sqrt(self.px_per_mm_x * self.px_per_mm_y)


@dataclass(frozen=True)
class _Geometry:
    """Everything :func:`normalize` needs to build the final warp (internal)."""

    measurement: GridMeasurement
    pre: np.ndarray  # 3x3: source px -> rectified ("aligned") frame, before scaling
    region: tuple[float, float, float, float]  # x0, y0, x1, y1 of the content in the aligned frame
    flat: np.ndarray  # flattened source, uint8 (rows, cols, 3)
    aligned_px_per_mm_x: float  # scale of the aligned frame
    aligned_px_per_mm_y: float
    paper: np.ndarray | None = None  # (n, 2) paper outline in source px, when a background was seen
    level_mm: float = 1.0  # spacing of the measured comb's lines on paper: 1 (minor) or 5 (major only)


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def normalize(
    image: np.ndarray,
    *,
    target_px_per_mm: float | None = 8.0,
    flatten: bool = True,
    correct_perspective: bool = True,
) -> NormalizedPage:
    """Flatten, rectify, crop and resample a page image to a known square scale.

    Parameters
    ----------
    image : (rows, cols, 3) ndarray of uint8
        The page, RGB (a 2-D grey image is accepted too).
    target_px_per_mm : float or None, optional
        Output scale in pixels per millimetre of paper; ``None`` keeps the measured source scale of
        the time (x) axis and resamples only the other axis, so the output grid is square.
    flatten : bool, optional
        Return the illumination-flattened image (paper white) rather than the original colours.
    correct_perspective : bool, optional
        Estimate and remove perspective from the grid's vanishing points when the page is a photo
        or its grid period is not uniform.

    Returns
    -------
    NormalizedPage
        The resampled RGB page and how its scale was found. ``rotation_deg`` is the counter-clockwise
        angle of the input's grid rows that was removed.

    Raises
    ------
    ImageInputError
        If ``image`` is not a non-empty 2-D or (rows, cols, 3) ``uint8`` array of at least 64 px a side.
    ValueError
        If ``target_px_per_mm`` is not positive.

    Examples
    --------
    >>> import numpy as np
    >>> page = normalize(np.full((300, 400, 3), 255, np.uint8))
    >>> page.scale_method, page.px_per_mm_confidence < 0.3
    ('assumed-page-width', True)
    """
    rgb = _check_image(image)
    if target_px_per_mm is not None and not (target_px_per_mm > 0 and math.isfinite(target_px_per_mm)):
        raise ValueError(f"target_px_per_mm must be positive, got {target_px_per_mm}")
    geo = _analyse(rgb, correct_perspective=correct_perspective)
    m = geo.measurement
    out_x = m.px_per_mm_x if target_px_per_mm is None else float(target_px_per_mm)
    scale = np.diag([out_x / geo.aligned_px_per_mm_x, out_x / geo.aligned_px_per_mm_y, 1.0])
    x0, y0, x1, y1 = geo.region
    shift = np.array([[1.0, 0.0, -x0 * scale[0, 0]], [0.0, 1.0, -y0 * scale[1, 1]], [0.0, 0.0, 1.0]])
    total = shift @ scale @ geo.pre
    out_cols = max(1, round((x1 - x0) * scale[0, 0]))
    out_rows = max(1, round((y1 - y0) * scale[1, 1]))
    out = _warp(geo.flat if flatten else rgb, total, (out_rows, out_cols))
    outside = None
    if geo.paper is not None:
        # Photos: the table around the page is no ink; paint it white.
        outside = np.full((out_rows, out_cols), 255, np.uint8)
        cv2.fillPoly(outside, [np.round(_apply(total, geo.paper) * 16).astype(np.int32)], 0, shift=4)
        out[outside > 0] = 255
    warnings = m.warnings
    if (
        correct_perspective
        and m.confidence >= 0.3
        and (geo.paper is not None or m.local_spread > _DEWARP_MIN_SPREAD)
    ):
        period = geo.level_mm * out_x
        paper_out = None if outside is None else outside == 0
        field: tuple[np.ndarray, np.ndarray] | None = None

        def flat_page() -> np.ndarray:
            """Return the flattened page through the current field (the grid is measured on it)."""
            return out if flatten else _warp(geo.flat, total, (out_rows, out_cols), displacement=field)

        def resampled(displacement: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
            """Return the output through ``displacement`` (one interpolation of the source), paper mask."""
            source = geo.flat if flatten else rgb
            image = _warp(source, total, (out_rows, out_cols), displacement=displacement)
            if outside is None:
                return image, None
            moved = cv2.remap(outside, *_displaced_grid(*displacement), cv2.INTER_NEAREST, borderValue=255)
            image[moved > 0] = 255
            return image, moved == 0

        for _ in range(_DEWARP_PASSES):
            step = _grid_displacement(flat_page(), period, paper_out)
            if step is None:
                break
            field = _compose_displacements(field, step)
            out, paper_out = resampled(field)
        # Folds and creases bend the sheet along lines, which no smooth surface follows: the lines
        # of the result are measured once more, band by band, and moved onto the comb.
        step = _fine_line_offsets(flat_page(), period, paper_out, out_x)
        if step is not None:
            field = _compose_displacements(field, step)
            out, paper_out = resampled(field)
        if field is not None:
            dx, dy = field
            shift_mm = float(max(np.ptp(dx), np.ptp(dy))) / out_x
            warnings = (
                *warnings,
                f"grid curvature straightened locally (lines moved by up to {shift_mm:.1f} mm)",
            )
    return NormalizedPage(
        image=out,
        px_per_mm=out_x,
        px_per_mm_confidence=m.confidence,
        scale_method=m.method,
        source_px_per_mm=m.px_per_mm,
        rotation_deg=m.rotation_deg,
        perspective_corrected=m.perspective_corrected,
        warnings=warnings,
    )


def measure_grid(image: np.ndarray, *, correct_perspective: bool = True) -> GridMeasurement:
    """Measure the grid's scale (x and y separately), angle and confidence in a page image.

    Parameters
    ----------
    image : (rows, cols, 3) ndarray of uint8
        The page, RGB (a 2-D grey image is accepted too).
    correct_perspective : bool, optional
        Remove perspective first (see :func:`normalize`); the scales are then those of the
        source at the page centre, along the page's axes.

    Returns
    -------
    GridMeasurement
        Scales, angle, confidence, method and warnings.

    Raises
    ------
    ImageInputError
        If ``image`` is not a usable image array.
    """
    return _analyse(_check_image(image), correct_perspective=correct_perspective).measurement


def estimate_grid_px_per_mm(image: np.ndarray) -> tuple[float, float]:
    """Estimate an image's scale in pixels per millimetre from its printed grid.

    Parameters
    ----------
    image : (rows, cols, 3) ndarray of uint8
        The page, RGB (a 2-D grey image is accepted too). It may be rotated.

    Returns
    -------
    px_per_mm : float
        Geometric mean of the x and y scales (see :func:`measure_grid` for both).
    confidence : float
        0 to 1; below 0.3 no grid was found and the value is assumed from the page width.

    Raises
    ------
    ImageInputError
        If ``image`` is not a usable image array.
    """
    m = measure_grid(image, correct_perspective=False)
    return m.px_per_mm, m.confidence


def flatten_illumination(image: np.ndarray, *, kernel_px: int | None = None) -> np.ndarray:
    """Divide each channel by a large-kernel estimate of the paper brightness.

    Parameters
    ----------
    image : (rows, cols, 3) ndarray of uint8
        RGB image.
    kernel_px : int, optional
        Size of the maximum filter that erases grid, traces and text (default 1% of the longer side,
        at least 9 px).

    Returns
    -------
    (rows, cols, 3) ndarray of float32
        Values in [0, 1]; the paper reads about 1 in each channel.
    """
    rgb = _check_image(image)
    return _flatten(rgb, kernel_px).astype(np.float32) / 255.0


# --------------------------------------------------------------------------------------------------
# Input checks and image helpers
# --------------------------------------------------------------------------------------------------


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ImageInputError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageInputError(f"image must have shape (rows, cols, 3), got {image.shape}")
    if image.dtype != np.uint8:
        raise ImageInputError(f"image must be uint8, got {image.dtype}")
    if min(image.shape[:2]) < 64:
        raise ImageInputError(f"image is only {image.shape[1]}x{image.shape[0]} px; need 64 px a side")
    return np.ascontiguousarray(image)


def _flatten(rgb: np.ndarray, kernel_px: int | None) -> np.ndarray:
    """Flattened copy of ``rgb`` as uint8 (paper about 255 in each channel)."""
    rows, cols = rgb.shape[:2]
    k = kernel_px if kernel_px is not None else max(9, round(max(rows, cols) / 100))
    # Maximum filter that erases thin dark marks, computed as a small dilation, max-pooling by f,
    # and the rest of the dilation at low resolution; then blurred and enlarged.
    f = max(1, k // 4)
    pooled = cv2.dilate(rgb, cv2.getStructuringElement(cv2.MORPH_RECT, (f, f)))[f // 2 :: f, f // 2 :: f]
    kk = max(1, round(k / f)) | 1
    small = cv2.dilate(np.ascontiguousarray(pooled), cv2.getStructuringElement(cv2.MORPH_RECT, (kk, kk)))
    small = cv2.GaussianBlur(small.astype(np.float32), (0, 0), max(1.0, kk / 2.0))
    # The maximum picks the brightest noise: scale so the paper's typical value reads 1.
    step = max(1, round(math.sqrt(rows * cols / 40_000)))
    sample = rgb[::step, ::step].astype(np.float32)
    bg_sample = cv2.resize(small, (sample.shape[1], sample.shape[0]), interpolation=cv2.INTER_LINEAR)
    ratio = (sample / np.maximum(bg_sample, 8.0)).reshape(-1, 3)
    bright = ratio[ratio.mean(axis=1) > 0.8]
    if bright.shape[0] > 100:
        small *= np.median(bright, axis=0).astype(np.float32)
    bg = cv2.resize(np.clip(small, 8.0, 255.0).astype(np.uint8), (cols, rows), interpolation=cv2.INTER_LINEAR)
    return cv2.divide(rgb, bg, scale=255.0)


def _warp(
    image: np.ndarray,
    matrix: np.ndarray,
    shape: tuple[int, int],
    *,
    displacement: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Warp a uint8 RGB ``image`` by a 3x3 source->output matrix with white fill, anti-aliased.

    ``displacement`` (dx, dy), each of ``shape``: output pixel (u, v) reads what ``matrix`` alone
    would put at (u + dx, v + dy); one interpolation of the source either way.
    """
    rows, cols = shape
    lin = matrix[:2, :2]
    zoom = math.sqrt(abs(np.linalg.det(lin)))
    if zoom < 0.75:
        # Pre-shrink with area averaging so thin lines survive a large reduction.
        f = zoom / 0.95
        small = cv2.resize(image, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        fx = small.shape[1] / image.shape[1]
        fy = small.shape[0] / image.shape[0]
        matrix = matrix @ np.diag([1.0 / fx, 1.0 / fy, 1.0])
        image = small
    border = (255, 255, 255)
    if displacement is not None:
        u, v = _displaced_grid(*displacement)
        src = cv2.perspectiveTransform(np.dstack([u, v]), np.linalg.inv(matrix))
        return cv2.remap(
            image,
            src[..., 0],
            src[..., 1],
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=border,
        )
    if np.allclose(matrix[2], [0.0, 0.0, 1.0]):
        return cv2.warpAffine(
            image,
            matrix[:2],
            (cols, rows),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=border,
        )
    return cv2.warpPerspective(
        image,
        matrix,
        (cols, rows),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=border,
    )


# --------------------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------------------


def _analyse(rgb: np.ndarray, *, correct_perspective: bool) -> _Geometry:
    rows, cols = rgb.shape[:2]
    warnings: list[str] = []
    flat = _flatten(rgb, None)

    # Analysis copy, at most _ANALYSIS_SIDE_PX across (the final warp reads the full-resolution
    # source). Pixel centres: x_a = (x + 0.5) * s - 0.5.
    a = min(1.0, _ANALYSIS_SIDE_PX / max(rows, cols))
    flat_a = cv2.resize(flat, None, fx=a, fy=a, interpolation=cv2.INTER_AREA) if a < 1.0 else flat
    sx, sy = flat_a.shape[1] / cols, flat_a.shape[0] / rows
    to_a = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])

    # Paper versus background (photos): the background is zeroed in the grid channel.
    t = min(1.0, _THUMB_SIDE_PX / max(rows, cols))
    thumb = cv2.resize(rgb, None, fx=t, fy=t, interpolation=cv2.INTER_AREA) if t < 1.0 else rgb
    paper = _find_paper(thumb)
    mask_a = None
    outline = np.array([[0.0, 0.0], [cols, 0.0], [cols, rows], [0.0, rows]]) - 0.5
    if paper is not None:
        mask_a = (
            cv2.resize(paper.mask, (flat_a.shape[1], flat_a.shape[0]), interpolation=cv2.INTER_NEAREST) > 0
        )
        outline = (paper.hull + 0.5) / np.array([thumb.shape[1] / cols, thumb.shape[0] / rows]) - 0.5
    channel_name, gridc = _grid_channel(flat_a, mask_a)
    if mask_a is not None:
        gridc = np.where(mask_a, gridc, 0.0).astype(np.float32)

    # Coarse deskew (canvas enlarged to keep the corners), then the fine analysis.
    m, s = _coarse_slopes(gridc)
    ha, wa = gridc.shape
    if max(abs(m), abs(s)) < math.tan(math.radians(0.3)):
        m = s = 0.0  # within the fine search's reach: spare a warp (scans)
    frame, size = _fit_canvas(_deskew(m, s, wa / 2.0, ha / 2.0), wa, ha)
    g = _warp_channel(gridc, frame, size)
    result = _fine_grid(g)
    perspective = False
    if correct_perspective and (paper is not None or result is None or result.local_spread > 0.004):
        # Two rounds: the second measures what the first left (tile slopes are slightly biased
        # towards zero where lines are steep).
        for _ in range(2):
            persp = _perspective_from_tiles(g)
            if persp is None:
                break
            frame2, size2 = _fit_canvas(persp @ frame, wa, ha)
            g2 = _warp_channel(gridc, frame2, size2)
            result2 = _fine_grid(g2)
            if result2 is None or (result is not None and result2.local_spread >= 0.8 * result.local_spread):
                break
            result, frame, g, perspective = result2, frame2, g2, True
            if result.local_spread < 0.003:
                break
    if result is None:
        return _fallback(flat, outline, warnings, channel_name, paper is not None)

    # The residual affine (about the frame centre) makes both line families axis-aligned.
    hh, ww = g.shape
    aff = np.eye(3)
    aff[:2, :2] = result.affine
    c = np.array([ww / 2.0, hh / 2.0])
    aff[:2, 2] = c - result.affine @ c
    aligned = aff @ frame @ to_a
    region = _outline_bbox(aligned, outline)
    warnings.extend(result.warnings)
    if not perspective and result.local_spread > 0.01:
        warnings.append(
            "perspective not corrected: the grid-based homography did not make the grid more uniform"
        )
    # Scale of the aligned frame relative to the source, at the page centre.
    centre = np.mean(outline, axis=0)
    jinv = np.linalg.inv(_jacobian(aligned, centre))  # aligned px -> source px
    rotation = _rotation_of(aligned, centre)
    measurement = GridMeasurement(
        px_per_mm_x=result.px_per_mm_x * float(np.linalg.norm(jinv[:, 0])),
        px_per_mm_y=result.px_per_mm_y * float(np.linalg.norm(jinv[:, 1])),
        confidence=result.confidence,
        method=result.method,
        rotation_deg=rotation,
        shear_deg=result.shear_deg,
        grid_channel=channel_name,
        perspective_corrected=perspective,
        local_spread=result.local_spread,
        warnings=tuple(warnings),
    )
    # The final warp maps the source to the aligned frame; the scale step uses the aligned px/mm.
    return _Geometry(
        measurement,
        aligned,
        region,
        flat,
        result.px_per_mm_x,
        result.px_per_mm_y,
        outline if paper is not None else None,
        level_mm=5.0 if result.method.startswith("grid-5mm") else 1.0,
    )


def _fallback(
    flat: np.ndarray, outline: np.ndarray, warnings: list[str], channel_name: str, is_paper: bool
) -> _Geometry:
    # Without a grid, a sheet seen on a background still shows its four corners: mapping them to a
    # rectangle removes the rotation and perspective of a photo (the strips become straight rows).
    pre = _sheet_rectification(outline) if is_paper else None
    if pre is None:
        pre = np.eye(3)
    else:
        warnings.append("no periodic grid found: the photo was rectified from the sheet's corners")
    region = _outline_bbox(pre, outline)
    long_side = max(region[2] - region[0], region[3] - region[1])
    px_per_mm = long_side / US_LETTER_LONG_SIDE_MM
    warnings.append(
        f"no periodic grid found: scale assumed from the page width ({long_side:.0f} px = "
        f"{US_LETTER_LONG_SIDE_MM} mm, US letter; 200 dpi for a 2200 px page) = {px_per_mm:.3f} px/mm; "
        "check it against the calibration pulse"
    )
    centre = np.mean(outline, axis=0)
    measurement = GridMeasurement(
        px_per_mm_x=px_per_mm,
        px_per_mm_y=px_per_mm,
        confidence=ASSUMED_CONFIDENCE,
        method="assumed-page-width",
        rotation_deg=_rotation_of(pre, centre),
        grid_channel=channel_name,
        perspective_corrected=not np.allclose(pre, np.eye(3)),
        warnings=tuple(warnings),
    )
    paper = outline if is_paper else None
    return _Geometry(measurement, pre, region, flat, px_per_mm, px_per_mm, paper)


def _sheet_rectification(outline: np.ndarray) -> np.ndarray | None:
    """Return the homography taking a sheet's four corners to an upright rectangle, or None.

    The corners come from the sheet's outline (its convex hull) simplified to four points (None if
    it does not simplify to four). The rectangle's sides are the means of the opposite edges, so
    the scale stays that of the photo.
    """
    hull = outline.astype(np.float32).reshape(-1, 1, 2)
    quad = cv2.approxPolyDP(hull, 0.02 * cv2.arcLength(hull, True), True).reshape(-1, 2)
    if len(quad) != 4:
        return None
    # Order: top-left, top-right, bottom-right, bottom-left (by the sums and differences of x, y).
    total, diff = quad.sum(axis=1), np.diff(quad, axis=1).ravel()
    ordered = np.array(
        [quad[np.argmin(total)], quad[np.argmin(diff)], quad[np.argmax(total)], quad[np.argmax(diff)]],
        dtype=np.float32,
    )
    if len({tuple(p) for p in ordered.tolist()}) != 4:
        return None
    tl, tr, br, bl = ordered
    width = 0.5 * (np.linalg.norm(tr - tl) + np.linalg.norm(br - bl))
    height = 0.5 * (np.linalg.norm(bl - tl) + np.linalg.norm(br - tr))
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32) + tl
    return cv2.getPerspectiveTransform(ordered, target).astype(np.float64)


def _apply(matrix: np.ndarray, pts: np.ndarray) -> np.ndarray:
    q = matrix @ np.vstack([pts.T, np.ones(len(pts))])
    return (q[:2] / q[2]).T


def _outline_bbox(matrix: np.ndarray, outline: np.ndarray) -> tuple[float, float, float, float]:
    q = _apply(matrix, outline)
    return float(q[:, 0].min()), float(q[:, 1].min()), float(q[:, 0].max()), float(q[:, 1].max())


def _fit_canvas(matrix: np.ndarray, cols: int, rows: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Translate ``matrix`` so the transformed (cols x rows) image starts at 0; return it and the size."""
    corners = np.array([[0.0, 0.0], [cols, 0.0], [cols, rows], [0.0, rows]])
    x0, y0, x1, y1 = _outline_bbox(matrix, corners)
    shift = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])
    return shift @ matrix, (max(1, math.ceil(y1 - y0)), max(1, math.ceil(x1 - x0)))


def _warp_channel(g: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    rows, cols = size
    if np.allclose(matrix, np.eye(3)) and (rows, cols) == g.shape:
        return g
    if np.allclose(matrix[2], [0.0, 0.0, 1.0]):
        return cv2.warpAffine(g, matrix[:2], (cols, rows), flags=cv2.INTER_LINEAR)
    return cv2.warpPerspective(g, matrix, (cols, rows), flags=cv2.INTER_LINEAR)


def _jacobian(matrix: np.ndarray, point: np.ndarray) -> np.ndarray:
    """2x2 Jacobian of the projective map ``matrix`` at ``point`` (rows: d(out_x), d(out_y))."""
    x, y = point
    num = matrix[:2] @ np.array([x, y, 1.0])
    den = float(matrix[2] @ np.array([x, y, 1.0]))
    return (matrix[:2, :2] * den - np.outer(num, matrix[2, :2])) / den**2


def _rotation_of(matrix: np.ndarray, point: np.ndarray) -> float:
    """Rotation removed by ``matrix`` at ``point``, counter-clockwise as displayed, in degrees.

    It is the angle of the source direction that ``matrix`` maps to the output's x axis.
    """
    jinv = np.linalg.inv(_jacobian(matrix, point))
    dx, dy = jinv[:, 0]
    return -math.degrees(math.atan2(dy, dx))


# --------------------------------------------------------------------------------------------------
# Local dewarp (curled or folded photos)
# --------------------------------------------------------------------------------------------------


def _displaced_grid(dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (u + dx, v + dy) of an output grid, as float32 maps for ``cv2.remap``."""
    rows, cols = dx.shape
    u = np.arange(cols, dtype=np.float32)[None, :] + dx
    v = np.arange(rows, dtype=np.float32)[:, None] + dy
    return u.astype(np.float32), v.astype(np.float32)


def _compose_displacements(
    first: tuple[np.ndarray, np.ndarray] | None, then: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """One field doing ``first`` (None: nothing) and then ``then``: pixel u reads u + t(u) + f(u + t(u))."""
    if first is None:
        return then
    u, v = _displaced_grid(*then)
    moved = [cv2.remap(f, u, v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) for f in first]
    return then[0] + moved[0], then[1] + moved[1]


def _grid_displacement(
    flat: np.ndarray, period: float, paper: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """How far the grid lines of a rectified page sit from a perfect comb, as dense (dx, dy) maps.

    A homography cannot flatten a curled or folded sheet: the grid period then varies along the
    strips, and so does the time scale. Here the page is cut into tiles a few grid periods wide; in
    each, the median profile across the vertical lines (and, separately, the horizontal ones: a
    median ignores traces and text, which cross few of a tile's rows) is projected on the comb
    ``exp(-2 pi i x / period)`` in page coordinates. Its phase is the lines' offset from the comb,
    modulo a period. The phasors are smoothed over neighbouring tiles, the phase is unwrapped from
    the most coherent tile outwards through coherent tiles (quality-guided), and a cubic surface is
    fitted to the tiles' offsets, leaving out tiles that disagree with their neighbours or with the
    surface. The surface, less its median, is interpolated to every pixel. Returns None when the
    lines are already within ``_DEWARP_MIN_PX`` of the comb everywhere or too few tiles hold a grid.
    """
    rows, cols = flat.shape[:2]
    _, gridc = _grid_channel(flat, paper)
    if paper is not None:
        gridc = np.where(paper, gridc, 0.0).astype(np.float32)
    tile = int(max(_DEWARP_MIN_TILE_PX, round(_DEWARP_TILE_PERIODS * period)))
    ny, nx = rows // tile, cols // tile
    if ny < 3 or nx < 3:
        return None
    blocks = gridc[: ny * tile, : nx * tile].reshape(ny, tile, nx, tile)
    window = np.hanning(tile + 2)[1:-1]
    offsets = np.arange(tile)
    fields = []
    for axis, starts in ((1, np.arange(nx) * tile), (3, np.arange(ny) * tile)):
        # axis 1: profile along x (lines counted down each tile's columns); axis 3: along y.
        # A grid line crosses every row of its tile; traces and text cross few, so the median
        # along the lines ignores them (a sum would not).
        across = blocks if axis == 1 else blocks.transpose(0, 3, 2, 1)  # (ny, along-line, nx, tile)
        prof = np.median(across, axis=1)
        prof = prof - prof.mean(axis=2, keepdims=True)
        start = starts[None, :] if axis == 1 else starts[:, None]
        phase_ref = np.exp(-2j * np.pi * (start[..., None] + offsets) / period)
        phasor = np.sum(prof * window * phase_ref, axis=2)
        energy = np.sqrt(np.sum((prof * window) ** 2, axis=2) * tile / 2.0) + 1e-9
        coherence = np.abs(phasor) / energy  # about 0.2-0.6 for clear lines, under 0.1 for none
        fields.append((phasor / energy, coherence))
    good = np.minimum(fields[0][1], fields[1][1]) > _DEWARP_MIN_COHERENCE
    if good.sum() < _DEWARP_MIN_TILES:
        return None
    maps = []
    for phasor, _ in fields:
        smooth = _smooth_tiles(np.where(good, phasor, 0.0))
        unwrapped = _unwrap_from_best(np.angle(smooth), np.where(good, np.abs(smooth), 0.0))
        reached = ~np.isnan(unwrapped)
        if reached.sum() < _DEWARP_MIN_TILES:
            return None
        shift = -unwrapped * period / (2.0 * np.pi)
        # The sheet bends smoothly: a tile a quarter period or more from the median of its
        # neighbours was unwrapped wrongly (or read a trace rather than the grid).
        local = _nan_median_3x3(np.where(reached, shift, np.nan))
        reached &= np.abs(shift - local) < _DEWARP_MAX_JUMP_PERIODS * period
        if reached.sum() < _DEWARP_MIN_TILES:
            return None
        # The field itself is a smooth surface through the tiles: tile-to-tile detail on flat pages
        # is measurement noise (creases, dotted grids, traces) and cost rendered phone pages 1 dB,
        # while a sheet's curl is smooth. Tiles that disagree with the surface carry no weight in it.
        surface = _robust_surface(shift, reached, period)
        # Tiles that agree with it (modulo a period: an unwrapping slip through a gap) are the
        # trusted ones, for the offset's reference and for the other family's unwrapping.
        rewrapped = shift + period * np.round((surface - shift) / period)
        reached &= np.abs(rewrapped - surface) < _DEWARP_MAX_JUMP_PERIODS * period
        if reached.sum() < _DEWARP_MIN_TILES:
            return None
        maps.append(surface - np.median(surface[reached]))
        good = good & reached
    if max(float(np.ptp(f[good])) for f in maps) < _DEWARP_MIN_PX:
        return None
    dense = []
    for shift in maps:
        full = cv2.resize(shift.astype(np.float32), (nx * tile, ny * tile), interpolation=cv2.INTER_LINEAR)
        dense.append(cv2.copyMakeBorder(full, 0, rows - ny * tile, 0, cols - nx * tile, cv2.BORDER_REPLICATE))
    return dense[0], dense[1]


def _fine_line_offsets(
    flat: np.ndarray, period: float, paper: np.ndarray | None, px_per_mm: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """How far the grid lines of a dewarped page still sit from the comb, at millimetre detail.

    The cubic surface of :func:`_grid_displacement` follows a curl but not a fold: a folded or
    creased sheet bends along a line, and either side of it the period changes abruptly (the real
    photos kept time errors of up to 1.3 mm inside a strip). Here each family of lines is measured
    in overlapping bands ``_FINE_BAND_MM`` tall (vertical lines; the horizontal ones in bands as
    wide), by complex demodulation: the band's median profile across the lines, times
    ``exp(-2 pi i x / period)``, smoothed over ``_FINE_SMOOTH_MM``, gives the lines' offset from the
    comb at every column. Only pixels of the grid's own hue count (see :func:`_grid_hue_mask`):
    trace strokes, creases, pen and shadow edges are lines too, and pulled the phase where they
    were counted, so grey grids are left to the cubic passes. Offsets are taken from the page's
    mean phase (the comb's origin is arbitrary) and trusted within a quarter period of it, where
    stretches without coherent lines are filled from their neighbours along the band. A family
    whose mean offset is under ``_FINE_MIN_MEAN_PX`` is left alone (on flat rendered phone pages
    that much is measurement noise, and correcting it cost 0.2 dB). Returns (dx, dy) in the
    convention of :func:`_grid_displacement`, or None if neither family needs a correction.
    """
    hue = _grid_hue_mask(flat, paper)
    if hue is None:
        return None
    _, gridc = _grid_channel(flat, paper)
    gridc = np.where(hue, gridc, 0.0).astype(np.float32)
    dx = _band_offsets(gridc, period, px_per_mm)
    dy_t = _band_offsets(np.ascontiguousarray(gridc.T), period, px_per_mm)
    if dx is None and dy_t is None:
        return None
    zeros = np.zeros(gridc.shape, np.float32)
    return (zeros if dx is None else dx), (zeros if dy_t is None else np.ascontiguousarray(dy_t.T))


def _band_offsets(gridc: np.ndarray, period: float, px_per_mm: float) -> np.ndarray | None:
    """Dense offsets (px) of the vertical lines of ``gridc`` from the comb, band by band (see above)."""
    rows, cols = gridc.shape
    band = round(_FINE_BAND_MM * px_per_mm)
    if rows < 2 * band or cols < 8 * period:
        return None
    x = np.arange(cols)
    carrier = np.exp(-2j * np.pi * x / period)
    sigma = max(period, _FINE_SMOOTH_MM * px_per_mm)

    def smooth(values: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(values[None], (0, 0), sigma)[0]

    tops = range(0, rows - band + 1, band // 2)
    phasor = np.empty((len(tops), cols), np.complex128)
    coherent = np.empty((len(tops), cols), bool)
    for i, top in enumerate(tops):
        profile = np.median(gridc[top : top + band], axis=0).astype(np.float64)
        profile -= cv2.GaussianBlur(profile[None], (0, 0), period)[0]
        demodulated = profile * carrier
        phasor[i] = smooth(demodulated.real) + 1j * smooth(demodulated.imag)
        coherent[i] = np.abs(phasor[i]) > _FINE_MIN_COHERENCE * np.sqrt(smooth(profile**2) / 2.0 + 1e-12)
    if coherent.mean() < _FINE_MIN_COHERENT_PAGE:
        return None
    unit = phasor[coherent] / np.maximum(np.abs(phasor[coherent]), 1e-12)
    offset = -np.angle(phasor * np.conj(np.sum(unit))) * period / (2.0 * np.pi)
    # Near half a period the wrap is a coin toss, and a slip moves a line by a whole period.
    trusted = coherent & (np.abs(offset) < _DEWARP_MAX_JUMP_PERIODS * period)
    centres, filled = [], []
    for i, top in enumerate(tops):
        known = np.flatnonzero(trusted[i])
        if known.size >= _FINE_MIN_COHERENT_FRACTION * cols:
            centres.append(top + band / 2.0)
            filled.append(np.interp(x, known, offset[i, known]))
    if len(centres) < 2 or float(np.mean(np.abs(filled))) < _FINE_MIN_MEAN_PX:
        return None
    # Linear between band centres (constant beyond the outer ones).
    y = np.arange(rows, dtype=np.float64)
    weights = np.stack([np.interp(y, centres, np.eye(len(centres))[k]) for k in range(len(centres))], axis=1)
    return (weights @ np.array(filled)).astype(np.float32)


def _grid_hue_mask(flat: np.ndarray, paper: np.ndarray | None) -> np.ndarray | None:
    """Pixels of the page in the hue of its coloured grid; None when most marks are grey.

    Coloured: chroma above ``_FINE_MIN_HUE_RATIO`` of darkness (black ink sits near 0.06, red and
    pink grid lines near 0.3 on the real photos); the grid's hue is the circular mean of the
    coloured pixels, and blue pen, say, is more than ``_FINE_MAX_HUE_DISTANCE`` radians from red.
    """
    chroma, darkness = _channels(flat)
    marked = (darkness > 0.05) | (chroma > 0.05)  # pale grids are marked by their colour alone
    if paper is not None:
        marked &= paper
    coloured = marked & (chroma > _FINE_MIN_HUE_RATIO * darkness)
    n_coloured = int(coloured.sum())
    if n_coloured < 0.5 * max(int(marked.sum()), 1):
        return None
    hue = cv2.cvtColor(flat, cv2.COLOR_RGB2HSV_FULL)[..., 0].astype(np.float32) * np.float32(
        2.0 * np.pi / 256.0
    )
    sample = hue[coloured][:: max(1, n_coloured // 200_000)]
    dominant = float(np.angle(np.mean(np.exp(1j * sample))))
    # Circular distance in float32 arithmetic (complex exponentials of every pixel took half the pass).
    distance = np.abs(np.mod(hue - np.float32(dominant) + np.float32(np.pi), np.float32(2.0 * np.pi)) - np.pi)
    return coloured & (distance < _FINE_MAX_HUE_DISTANCE)


def _robust_surface(values: np.ndarray, known: np.ndarray, period: float) -> np.ndarray:
    """Cubic surface over the tile grid fitted to ``values`` where ``known``, outliers down-weighted.

    Iteratively reweighted: tiles further than a quarter period (or three robust deviations)
    from the fit are left out of the next fit.
    """
    ny, nx = values.shape
    v, u = np.mgrid[0:ny, 0:nx]
    u = (u - (nx - 1) / 2.0) / max(nx, 1)
    v = (v - (ny - 1) / 2.0) / max(ny, 1)
    # Degree 3: degree 2 missed the photos' curls (6.27 against 7.18 dB), degree 4 followed more
    # noise on flat rendered phone pages (10.59 against 10.93 dB).
    basis = np.stack([u**a * v**b for a in range(4) for b in range(4 - a)], axis=-1)  # (ny, nx, 10)
    inlier = known.copy()
    fit = np.zeros_like(values)
    for _ in range(4):
        if inlier.sum() < basis.shape[-1] + 2:
            break
        coef, *_ = np.linalg.lstsq(basis[inlier], values[inlier], rcond=None)
        fit = basis @ coef
        residual = np.abs(values - fit)
        spread = 1.4826 * float(np.median(residual[inlier]))
        inlier = known & (residual < max(_DEWARP_MAX_JUMP_PERIODS * period, 3.0 * spread))
    return fit


def _nan_median_3x3(values: np.ndarray) -> np.ndarray:
    """Median of each tile's 3x3 neighbourhood, ignoring NaN (NaN where all nine are)."""
    padded = np.pad(values, 1, constant_values=np.nan)
    rows, cols = values.shape
    stack = np.stack([padded[i : i + rows, j : j + cols] for i in range(3) for j in range(3)])
    with catch_warnings():
        simplefilter("ignore", RuntimeWarning)  # all-NaN neighbourhoods give NaN, as wanted
        return np.nanmedian(stack, axis=0)


def _smooth_tiles(values: np.ndarray) -> np.ndarray:
    """Gaussian smoothing over tiles (one tile sigma) of a complex field, zeros counting as missing."""
    weight = (values != 0).astype(np.float64)
    parts = []
    for part in (values.real, values.imag, weight):
        parts.append(cv2.GaussianBlur(part, (0, 0), 1.0, borderType=cv2.BORDER_REPLICATE))
    return (parts[0] + 1j * parts[1]) / np.maximum(parts[2], 1e-6)


def _unwrap_from_best(phase: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Quality-guided 2-D phase unwrapping: grow from the best tile, best neighbour first.

    Tiles of zero quality are neither unwrapped nor crossed: they stay NaN.
    """
    ny, nx = phase.shape
    out = np.full_like(phase, np.nan)
    i0, j0 = (int(k) for k in np.unravel_index(int(np.argmax(quality)), phase.shape))
    out[i0, j0] = phase[i0, j0]
    heap: list[tuple[float, int, int, float]] = []

    def push_neighbours(i: int, j: int) -> None:
        for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
            if 0 <= a < ny and 0 <= b < nx and quality[a, b] > 0 and np.isnan(out[a, b]):
                heapq.heappush(heap, (-float(quality[a, b]), a, b, float(out[i, j])))

    push_neighbours(i0, j0)
    while heap:
        _, i, j, ref = heapq.heappop(heap)
        if not np.isnan(out[i, j]):
            continue
        out[i, j] = phase[i, j] + 2.0 * np.pi * round((ref - phase[i, j]) / (2.0 * np.pi))
        push_neighbours(i, j)
    return out


# --------------------------------------------------------------------------------------------------
# Paper detection (thumbnail)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Paper:
    mask: np.ndarray  # uint8 (thumb rows, thumb cols), 255 on the paper (slightly eroded)
    hull: np.ndarray  # (n, 2) convex hull of the paper in thumbnail px


def _find_paper(thumb: np.ndarray) -> _Paper | None:
    """Find a bright page on a clearly darker background; None when the page fills the frame."""
    rows, cols = thumb.shape[:2]
    grey = cv2.cvtColor(thumb, cv2.COLOR_RGB2GRAY)
    blurred = cv2.GaussianBlur(grey, (0, 0), max(rows, cols) / 150.0)
    _, bright = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    lo, hi = blurred[bright == 0], blurred[bright > 0]
    if lo.size < 0.03 * blurred.size or hi.size < 0.03 * blurred.size:
        return None
    if float(np.median(hi)) - float(np.median(lo)) < 40:
        return None
    n, labels, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=4)
    if n <= 1:
        return None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    comp = (labels == best).astype(np.uint8) * 255
    contours, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contour = max(contours, key=cv2.contourArea)
    frac = cv2.contourArea(contour) / float(rows * cols)
    if frac > 0.95 or frac < 0.15:
        return None
    hull = cv2.convexHull(contour)
    (_, _), (width, height), _ = cv2.minAreaRect(hull)
    if cv2.contourArea(hull) < _MIN_PAPER_RECT_FILL * width * height:
        return None
    mask = np.zeros((rows, cols), np.uint8)
    cv2.drawContours(mask, [contour], -1, 255, thickness=cv2.FILLED)  # fills holes (traces, text)
    k = max(3, round(max(rows, cols) / 200)) | 1
    eroded = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return _Paper(eroded, hull.reshape(-1, 2).astype(np.float64))


# --------------------------------------------------------------------------------------------------
# Grid channel and angle
# --------------------------------------------------------------------------------------------------


def _channels(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chroma (max - min over RGB) and darkness (1 - mean) of a flattened uint8 image, in [0, 1]."""
    r, g, b = cv2.split(flat)
    chroma = cv2.subtract(cv2.max(cv2.max(r, g), b), cv2.min(cv2.min(r, g), b))
    mean = cv2.transform(flat, np.full((1, 3), 1.0 / 3.0))
    return chroma.astype(np.float32) / 255.0, (255 - mean).astype(np.float32) / 255.0


def _grid_channel(flat: np.ndarray, mask: np.ndarray | None) -> tuple[str, np.ndarray]:
    """Return the name and the (rows, cols) float32 channel in which the grid is measured.

    Chroma when most marked paper pixels are coloured (the grid: traces and text are black or dark
    blue and nearly achromatic once the paper is flattened); darkness otherwise, clipped at twice
    the typical darkness of marked pixels (mostly grid lines) so dark traces weigh like grid lines.
    """
    rows, cols = flat.shape[:2]
    chroma, darkness = _channels(flat)
    step = max(1, round(math.sqrt(rows * cols / 250_000)))
    c, d = chroma[::step, ::step], darkness[::step, ::step]
    marked = (d > 0.08) | (c > 0.08)
    if mask is not None:
        marked &= mask[::step, ::step]
    n_marked = int(marked.sum())
    if n_marked > 50 and float(np.mean(c[marked] > 0.6 * d[marked] + 0.04)) > 0.5:
        return "chroma", chroma
    clip = 0.5
    if n_marked > 50:
        clip = float(np.clip(2.0 * np.median(d[marked]), 0.15, 0.5))
    return "darkness", np.minimum(darkness, clip)


def _coarse_slopes(gridc: np.ndarray) -> tuple[float, float]:
    """Coarse slopes of the two line families, in image coordinates (y down).

    ``m`` is the slope dy/dx of the horizontal lines, ``s`` the slope dx/dy of the vertical ones.

    From the angular distribution of the power spectrum of the central part (at most 768 px
    square, Hann-windowed) of the grid channel: a family of parallel lines puts all its harmonics
    on one line through the origin, perpendicular to the lines, while line crossings, shading,
    traces and text spread theirs. Frequencies below 1/50 cycle/px (shading, page layout) are left
    out. Each family is the peak within 45 degrees of its axis; in a photo the two may differ by
    perspective. A family whose peak is weak or more than 20 degrees from the other's (mod 90)
    takes the other's angle.
    """
    rows, cols = gridc.shape
    h, w = min(rows, 768), min(cols, 768)
    y0, x0 = (rows - h) // 2, (cols - w) // 2
    crop = gridc[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
    crop = (crop - crop.mean()) * np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    power = np.abs(np.fft.rfft2(crop)) ** 2
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    radius = np.hypot(fx, fy)
    keep = (radius >= 0.02) & (radius <= 0.45)
    if not keep.any() or not np.any(power[keep] > 0):
        return 0.0, 0.0
    # The spectral direction of a family equals its lines' gradient direction.
    ang = np.degrees(
        np.arctan2(np.broadcast_to(fy, power.shape)[keep], np.broadcast_to(fx, power.shape)[keep])
    )
    hist, _ = np.histogram(ang % 180.0, bins=720, range=(0.0, 180.0), weights=power[keep])
    k = np.exp(-0.5 * (np.arange(-8, 9) / 2.0) ** 2)
    hist = np.convolve(np.concatenate([hist[-8:], hist, hist[:8]]), k, mode="same")[8:-8]

    def peak(lo_deg: float, hi_deg: float) -> tuple[float, float]:
        idx = np.arange(round(lo_deg * 4), round(hi_deg * 4)) % 720
        i = int(idx[np.argmax(hist[idx])])
        a, b, c = hist[(i - 1) % 720], hist[i], hist[(i + 1) % 720]
        den = a - 2 * b + c
        off = 0.5 * (a - c) / den if den < 0 else 0.0
        return (i + 0.5 + off) * 0.25, float(b)

    ah, wh = peak(45.0, 135.0)  # horizontal lines: energy along +-fy
    av, wv = peak(135.0, 225.0)  # vertical lines: energy along +-fx
    dev_h = ah - 90.0  # line angle of the horizontal family
    dev_v = ((av + 90.0) % 180.0) - 90.0  # spectral angle of the vertical family, in (-90, 90]
    if abs(dev_h - dev_v) > 20.0 or min(wh, wv) < 0.1 * max(wh, wv):
        dev_h = dev_v = dev_h if wh >= wv else dev_v
    return math.tan(math.radians(dev_h)), -math.tan(math.radians(dev_v))


def _deskew(m: float, s: float, cx: float, cy: float) -> np.ndarray:
    """3x3 affine about (cx, cy) making both line families axis-aligned.

    Lines of slope ``m`` (dy/dx) become horizontal and lines of slope ``s`` (dx/dy) vertical; for a
    pure rotation the map is the inverse rotation scaled by cos^2.
    """
    lin = np.array([[1.0, -s], [-m, 1.0]]) / (1.0 - m * s)
    out = np.eye(3)
    out[:2, :2] = lin
    out[:2, 2] = np.array([cx, cy]) - lin @ np.array([cx, cy])
    return out


# --------------------------------------------------------------------------------------------------
# Fine angle and period
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FineResult:
    affine: np.ndarray  # 2x2 making both families axis-aligned (in the coarse-rotated frame)
    slope_h: float  # residual slope of the horizontal family (dy/dx, image coords)
    slope_v: float  # residual slope of the vertical family (dx/dy)
    period_h: float  # spacing of the horizontal lines in the analysed frame (px, before the affine)
    period_v: float
    px_per_mm_x: float
    px_per_mm_y: float
    confidence: float
    method: str
    shear_deg: float
    local_spread: float
    warnings: tuple[str, ...]


def _fine_grid(g: np.ndarray) -> _FineResult | None:
    """Measure both line families of a grid channel whose lines are within 1.5 degrees of the axes."""
    # Horizontal family: row profiles of vertical strips; vertical family: the transpose.
    fam_h = _family(g, axis=0)
    fam_v = _family(g, axis=1)
    if fam_h is None or fam_v is None:
        return None
    fam_h, fam_v, note = _reconcile(fam_h, fam_v)
    if fam_h is None or fam_v is None:
        return None
    warnings: list[str] = [note] if note else []
    # Line spacing along the axes of the affine-rectified frame (see module docstring).
    det = 1.0 - fam_h.slope * fam_v.slope
    affine = np.array([[1.0, -fam_v.slope], [-fam_h.slope, 1.0]]) / det
    period_y = fam_h.period / det
    period_x = fam_v.period / det
    level, level_note, level_conf = _decide_level(fam_h, fam_v)
    if level_note:
        warnings.append(level_note)
    px_x = period_x / level
    px_y = period_y / level
    if min(px_x, px_y) < 2.0:
        warnings.append(
            f"very low resolution ({min(px_x, px_y):.2f} px/mm in the analysed copy): traces cannot be "
            "digitized reliably"
        )
    aniso = abs(px_x - px_y) / max(px_x, px_y)
    if aniso > 0.01:
        warnings.append(
            f"grid cells are not square ({px_x:.4f} px/mm across, {px_y:.4f} px/mm down in the analysed "
            "frame): resampled anisotropically"
        )
    spread = max(fam_h.spread, fam_v.spread)
    if spread > 0.01:
        warnings.append(
            f"grid period varies by {100 * spread:.1f}% across the page (perspective or curl not fully "
            "corrected)"
        )
    shear = math.degrees(math.atan(fam_h.slope) + math.atan(fam_v.slope))
    # Confidence: periodicity of both families, agreement, level decision, local consistency.
    # Confidence: 0.3 + 0.7 x (periodicity of the weaker family) x (agreement of the two axes) x
    # (consistency across the page) x (certainty of the 1 mm / 5 mm decision). A grid that is not
    # periodic enough (detection < 0.05) is not used at all: the caller falls back to an assumption
    # with confidence 0.05, so any value below 0.3 means "not measured".
    detection = min(_snr_confidence(fam_h.snr), _snr_confidence(fam_v.snr))
    if detection < 0.05:  # SNR below about 12.6
        return None
    agree = max(0.0, 1.0 - max(0.0, aniso - 0.005) / 0.05)
    consistency = max(0.0, 1.0 - max(0.0, spread - 0.003) / 0.05)
    confidence = 0.3 + 0.7 * detection * agree * consistency * level_conf
    method = "grid-1mm" if level == 1.0 else "grid-5mm"
    if level_conf < 1.0:
        method += "-ambiguous"
    return _FineResult(
        affine=affine,
        slope_h=fam_h.slope,
        slope_v=fam_v.slope,
        period_h=fam_h.period,
        period_v=fam_v.period,
        px_per_mm_x=px_x,
        px_per_mm_y=px_y,
        confidence=float(np.clip(confidence, 0.0, 1.0)),
        method=method,
        shear_deg=shear,
        local_spread=spread,
        warnings=tuple(warnings),
    )


def _snr_confidence(snr: float) -> float:
    # Harmonic-summed comb power over the spectral floor: 2-5 for noise, 20-50 for a grid smeared by
    # perspective or curl, 1e3-1e5 for a scanned grid.
    return float(np.clip((math.log10(max(snr, 1e-9)) - 1.0) / 2.0, 0.0, 1.0))


@dataclass(frozen=True)
class _Family:
    slope: float  # residual slope of the lines in the coarse-rotated frame
    period: float  # elementary comb period along the profile axis (px)
    snr: float
    extent: float  # length of the profile axis covered by the grid (px)
    spread: float  # relative period difference between halves of the page
    profile: np.ndarray = field(repr=False)  # aligned, detrended profile over the covered extent
    parts: tuple[np.ndarray, ...] = field(repr=False)  # the four half-page profiles


def _family(g: np.ndarray, *, axis: int) -> _Family | None:
    """Measure the line family whose lines run perpendicular to ``axis`` (0: horizontal lines)."""
    img = g if axis == 0 else g.T
    n_along = img.shape[1]  # profiles run along axis 0 of img; strips split axis 1
    n_strips = int(np.clip(n_along // 64, 8, 32))
    strips = _strip_profiles(img, n_strips)
    slope = _best_slope(strips)
    profile = strips.profile(slope)
    support = img.sum(axis=1, dtype=np.float64)
    if support.max() <= 0:
        return None
    covered = np.flatnonzero(support > 0.02 * support.max())
    if covered.size < 64:
        return None
    lo, hi = int(covered[0]), int(covered[-1]) + 1
    prof = profile[lo:hi]
    half = n_strips // 2
    mid = prof.size // 2
    parts = (
        strips.profile(slope, slice(0, half))[lo:hi],
        strips.profile(slope, slice(half, n_strips))[lo:hi],
        prof[:mid],
        prof[mid:],
    )
    found = _comb_period(prof)
    if found is None:
        return None
    return _measured(_Family(slope, found[0], found[1], float(hi - lo), 0.0, prof, parts))


def _measured(fam: _Family, period: float | None = None) -> _Family | None:
    """Refine ``fam`` at (about) ``period`` and measure its spread across the page halves."""
    if period is not None:
        r = _refine_period(fam.profile, period, rel_span=0.08)
        if r is None:
            return None
        fam = _Family(fam.slope, r[0], r[1], fam.extent, 0.0, fam.profile, fam.parts)
    refined = (_refine_period(p, fam.period, rel_span=0.03, n_freq=257) for p in fam.parts)
    halves = [r[0] for r in refined if r is not None]
    spread = (max(halves) - min(halves)) / fam.period if len(halves) >= 2 else 0.0
    return _Family(fam.slope, fam.period, fam.snr, fam.extent, float(spread), fam.profile, fam.parts)


def _reconcile(fam_h: _Family, fam_v: _Family) -> tuple[_Family | None, _Family | None, str]:
    """Make both families report the same comb level (the grid is square to within a few %).

    When their periods differ by more than 10%, each family is re-measured near the other's period
    and the candidate whose weaker family is the more periodic wins.
    """
    ratio = fam_v.period / fam_h.period
    if abs(ratio - 1.0) < 0.1:
        return fam_h, fam_v, ""
    best: tuple[float, _Family, _Family] | None = None
    for h, v in ((fam_h, _measured(fam_v, fam_h.period)), (_measured(fam_h, fam_v.period), fam_v)):
        if h is None or v is None or abs(v.period / h.period - 1.0) >= 0.1:
            continue
        score = min(h.snr, v.snr)
        if best is None or score > best[0]:
            best = (score, h, v)
    if best is not None:
        return best[1], best[2], ""
    note = f"row and column grid periods disagree ({fam_h.period:.3f} vs {fam_v.period:.3f} px)"
    return fam_h, fam_v, note


@dataclass(frozen=True)
class _Strips:
    """Spectra of robust strip profiles, for exact (Fourier) shifting (internal)."""

    spectra: np.ndarray  # (n_freq, n_strips) complex: rfft of each zero-padded strip profile
    centres: np.ndarray  # (n_strips,) strip centre minus the image centre, px
    n: int  # profile length
    n_fft: int

    def _phases(self, slope: float, sel: slice) -> np.ndarray:
        # exp(2 pi i f shift) for f = j / n_fft, by cumulative products (far cheaper than exp).
        step = np.exp(2j * np.pi * slope * self.centres[sel] / self.n_fft)
        ph = np.empty((self.spectra.shape[0], step.size), dtype=np.complex128)
        ph[0] = 1.0
        ph[1:] = step
        return np.cumprod(ph, axis=0)

    def sharpness(self, slope: float) -> float:
        """Sum of squares of the aligned profile (Parseval), excluding the mean."""
        total = np.sum(self.spectra[1:] * self._phases(slope, slice(None))[1:], axis=1)
        return float(np.vdot(total, total).real)

    def profile(self, slope: float, sel: slice = slice(None)) -> np.ndarray:
        """Sum of the strips in ``sel``, each advanced by ``slope * centre`` px (exact shift)."""
        total = np.sum(self.spectra[:, sel] * self._phases(slope, sel), axis=1)
        return np.fft.irfft(total, self.n_fft)[_PAD : _PAD + self.n]


def _strip_profiles(img: np.ndarray, n_strips: int) -> _Strips:
    """Robust, detrended strip profiles of ``img`` along axis 0, ready for alignment.

    Each strip is split into 4 sub-strips; a strip's value is twice the sum of its two smallest
    sub-strip sums (a cheap robust mean): a grid line crosses every sub-strip, while sloped trace
    segments, QRS spikes and text cross few. Shifting is done exactly in the Fourier domain: linear
    interpolation would smooth every non-integer shift and so bias the slope search towards 0.
    """
    n_prof, n_along = img.shape
    edges = np.linspace(0, n_along, 4 * n_strips + 1).round().astype(int)
    sub = np.add.reduceat(img, edges[:-1], axis=1, dtype=np.float64).reshape(n_prof, n_strips, 4)
    sub.sort(axis=2)
    strips = 2.0 * (sub[:, :, 0] + sub[:, :, 1])
    centres = (edges[:-1:4] + edges[4::4]) / 2.0 - n_along / 2.0
    # Remove each strip's slow trend so shading and dense text do not dominate.
    sigma = max(12.0, n_prof / 150.0)
    strips -= cv2.GaussianBlur(strips, (1, 0), sigmaX=0.1, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
    n_fft = cv2.getOptimalDFTSize(n_prof + 2 * _PAD)
    padded = np.zeros((n_strips, n_fft))
    padded[:, _PAD : _PAD + n_prof] = strips.T
    return _Strips(np.ascontiguousarray(np.fft.rfft(padded, axis=1).T), centres, n_prof, n_fft)


def _perspective_from_tiles(g: np.ndarray) -> np.ndarray | None:
    """Affine-rectifying homography of the grid from line directions measured in tiles.

    In each tile of a 4x4 (at most) split the slopes of both line families are measured (within 8
    degrees of the axes); the horizontal lines through the tile centres meet in one vanishing point
    and the vertical lines in another (least squares, in homogeneous coordinates). The homography
    sending the line through both points back to infinity makes each family parallel and evenly
    spaced (Hartley & Zisserman, sec. 2.7.1); the remaining affine part is measured by the fine
    analysis that follows. Returns None if too few tiles hold a clear grid or the correction is
    implausibly strong.
    """
    rows, cols = g.shape
    # Tiles cover the paper (the channel is zero on the background).
    nz_rows = np.flatnonzero(np.count_nonzero(g, axis=1) > 0.3 * np.count_nonzero(g, axis=1).max())
    nz_cols = np.flatnonzero(np.count_nonzero(g, axis=0) > 0.3 * np.count_nonzero(g, axis=0).max())
    if nz_rows.size < 2 or nz_cols.size < 2:
        return None
    r0, r1, c0, c1 = int(nz_rows[0]), int(nz_rows[-1]) + 1, int(nz_cols[0]), int(nz_cols[-1]) + 1
    size = max(160.0, min(r1 - r0, c1 - c0) / 4.0)
    nty, ntx = min(4, int((r1 - r0) // size)), min(4, int((c1 - c0) // size))
    if nty < 2 or ntx < 2 or nty * ntx < 5:
        return None
    ys = np.linspace(r0, r1, nty + 1).round().astype(int)
    xs = np.linspace(c0, c1, ntx + 1).round().astype(int)
    norm = max(rows, cols) / 2.0
    lines_h: list[np.ndarray] = []
    lines_v: list[np.ndarray] = []
    for i in range(nty):
        for j in range(ntx):
            tile = g[ys[i] : ys[i + 1], xs[j] : xs[j + 1]]
            nz = tile != 0
            if float(np.count_nonzero(nz)) < 0.5 * tile.size:
                continue  # mostly background
            # The measurement belongs where the paper is: the centroid of the non-background part.
            ty, tx = np.nonzero(nz)
            u = (xs[j] + float(tx.mean()) - cols / 2.0) / norm
            v = (ys[i] + float(ty.mean()) - rows / 2.0) / norm
            for axis, lines in ((0, lines_h), (1, lines_v)):
                img = tile if axis == 0 else tile.T
                # Narrow strips: a line sloping up to 8 degrees must stay within a pixel per sub-strip.
                strips = _strip_profiles(img, int(np.clip(img.shape[1] // 12, 8, 48)))
                slope, contrast = _slope_search(strips, 8.0)
                if contrast < 3.0:
                    continue
                lines.append(np.array([u, v, slope, math.log10(contrast)]))
    vp_h = _vanishing_point(lines_h, horizontal=True)
    vp_v = _vanishing_point(lines_v, horizontal=False)
    if vp_h is None or vp_v is None:
        return None
    horizon = np.cross(vp_h, vp_v)
    if abs(horizon[2]) < 1e-9 or np.hypot(horizon[0], horizon[1]) / abs(horizon[2]) > 0.7:
        return None  # vanishing line within ~1.4 half-widths of the centre: not a plausible photo
    a, b = horizon[0] / horizon[2], horizon[1] / horizon[2]
    to_n = np.array([[1 / norm, 0.0, -cols / 2.0 / norm], [0.0, 1 / norm, -rows / 2.0 / norm], [0, 0, 1.0]])
    hom = np.linalg.inv(to_n) @ np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [a, b, 1.0]]) @ to_n
    return hom / hom[2, 2]


def _vanishing_point(obs: list[np.ndarray], *, horizontal: bool) -> np.ndarray | None:
    """Least-squares meeting point (homogeneous) of lines through tile centres, with outliers removed.

    ``obs`` rows are (u, v, slope, weight); horizontal lines are v' = v + slope (u' - u), vertical
    lines u' = u + slope (v' - v). Tiles whose direction misses the fitted point by more than
    max(0.4 degree, 2.5 x the median miss) are dropped and the point refitted.
    """
    if len(obs) < 5:
        return None
    arr = np.array(obs)
    u, v, s, w = arr.T
    if horizontal:
        lines = np.stack([s, -np.ones_like(s), v - s * u], axis=1)
        dirs = np.stack([np.ones_like(s), s], axis=1)
    else:
        lines = np.stack([np.ones_like(s), -s, -(u - s * v)], axis=1)
        dirs = np.stack([s, np.ones_like(s)], axis=1)
    lines /= np.hypot(lines[:, 0], lines[:, 1])[:, None]
    dirs /= np.hypot(dirs[:, 0], dirs[:, 1])[:, None]
    keep = np.ones(len(arr), dtype=bool)
    vp = None
    for _ in range(3):
        if keep.sum() < 5:
            return None
        vp = np.linalg.svd(lines[keep] * w[keep, None])[2][-1]
        to_vp = np.stack([vp[0] - u * vp[2], vp[1] - v * vp[2]], axis=1)
        to_vp /= np.maximum(np.hypot(to_vp[:, 0], to_vp[:, 1]), 1e-12)[:, None]
        miss = np.degrees(
            np.arcsin(np.clip(np.abs(to_vp[:, 0] * dirs[:, 1] - to_vp[:, 1] * dirs[:, 0]), 0, 1))
        )
        limit = max(0.4, 2.5 * float(np.median(miss[keep])))
        new_keep = miss <= limit
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return vp


#: Zero padding of strip profiles: larger than any shift a strip may need during the slope search.
_PAD = 64


def _best_slope(strips: _Strips, *, span_deg: float = 1.5) -> float:
    """Slope (dy/dx) maximizing the sharpness of the aligned profile, within ``span_deg``."""
    return _slope_search(strips, span_deg)[0]


def _slope_search(strips: _Strips, span_deg: float) -> tuple[float, float]:
    """Best slope and its contrast: peak sharpness over the median sharpness of the searched range."""
    max_centre = max(1.0, float(np.abs(strips.centres).max()))
    span = min(math.tan(math.radians(span_deg)), (_PAD - 2) / max_centre)
    # The sharpness peak is about (line width / page width) wide: sample it at about half of that.
    n_grid = int(np.clip(2 * span * max_centre / 2.5, 21, 129)) | 1
    grid = np.linspace(-span, span, n_grid)
    vals = np.array([strips.sharpness(s) for s in grid])
    i = int(np.argmax(vals))
    step = grid[1] - grid[0]
    a, b = grid[max(0, i - 1)], grid[min(grid.size - 1, i + 1)]
    gr = (math.sqrt(5) - 1) / 2
    c, d = b - gr * (b - a), a + gr * (b - a)
    fc, fd = strips.sharpness(c), strips.sharpness(d)
    while b - a > step * 1e-2:
        if fc > fd:
            b, d, fd = d, c, fc
            c = b - gr * (b - a)
            fc = strips.sharpness(c)
        else:
            a, c, fc = c, d, fd
            d = a + gr * (b - a)
            fd = strips.sharpness(d)
    best = (a + b) / 2.0
    return best, max(fc, fd) / max(float(np.median(vals)), 1e-300)


def _spectrum(x: np.ndarray, f_lo: float, f_hi: float, m: int) -> np.ndarray:
    """Power of the DTFT of ``x`` at ``m`` frequencies from ``f_lo`` to ``f_hi`` (cycles/px)."""
    return np.abs(zoom_fft(x, [f_lo, f_hi], m=m, fs=1.0, endpoint=True)) ** 2


def _windowed(prof: np.ndarray) -> np.ndarray:
    return (prof - prof.mean()) * np.hanning(prof.size)


def _harmonics(f0: float) -> np.ndarray:
    return np.arange(1, max(1, min(6, int(0.45 / f0))) + 1)


def _harmonic_sum(x: np.ndarray, f_lo: float, f_hi: float, m: int, harmonics: np.ndarray) -> np.ndarray:
    total = np.zeros(m)
    for h in harmonics:
        total += _spectrum(x, h * f_lo, h * f_hi, m)
    return total


def _refine_period(
    prof: np.ndarray, period: float, *, rel_span: float = 0.08, n_freq: int = 513
) -> tuple[float, float] | None:
    """Refine a comb period by maximizing the harmonic-summed periodogram around it.

    Returns ``(period_px, snr)``, snr being the peak over the median of the harmonic sum in the bands
    0.55-0.9 and 1.1-1.45 times the frequency, or None if the profile is too short.
    """
    if prof.size < 4 * period:
        return None
    x = _windowed(prof)
    f0 = 1.0 / period
    harmonics = _harmonics(f0)
    m = n_freq
    lo, hi = f0 * (1 - rel_span), f0 * (1 + rel_span)
    power = _harmonic_sum(x, lo, hi, m, harmonics)
    i = int(np.argmax(power))
    step = (hi - lo) / (m - 1)
    off = 0.0
    if 0 < i < m - 1:
        a, b, c = power[i - 1], power[i], power[i + 1]
        den = a - 2 * b + c
        off = 0.5 * (a - c) / den if den < 0 else 0.0
    f_best = lo + (i + off) * step
    below = _harmonic_sum(x, 0.55 * f_best, 0.9 * f_best, 129, harmonics)
    above = _harmonic_sum(x, 1.1 * f_best, 1.45 * f_best, 129, harmonics)
    floor = float(np.median(np.concatenate([below, above])))
    return 1.0 / f_best, float(power[i] / max(floor, 1e-300))


def _comb_period(prof: np.ndarray) -> tuple[float, float] | None:
    """Elementary period of a line comb in a profile: ``(period_px, snr)``.

    The autocorrelation's first strong peak gives a start (a comb of thin lines has harmonics of
    nearly equal power, so the periodogram's maximum is not a safe start); the period is then
    divided while the fold shows 5 equally spaced lines within it (1 mm lines or dots in 5 mm
    squares) or 2 (alternating line weights from resampling), and finally refined on the
    periodogram. Other subdivisions do not occur on ECG paper; allowing them let the alias of an
    unresolvable 1 mm grid pass as a 3-way subdivision of the 5 mm one.
    """
    n = prof.size
    x = prof - prof.mean()
    if not np.any(x):
        return None
    max_period = min(n / 6.0, 250.0)
    if max_period < 3 * _MIN_PERIOD_PX:
        return None
    nfft = 1 << math.ceil(math.log2(2 * n))
    spec = np.fft.rfft(x, nfft)
    acf = np.fft.irfft(np.abs(spec) ** 2, nfft)[: math.floor(max_period) + 2]
    acf /= acf[0]
    i = np.arange(2, acf.size - 1)
    # Combs finer than 3 px are taken only as subdivisions of a coarser one (below): near the
    # Nyquist limit a finer grid aliases into a false comb of 2-3 px.
    is_peak = (acf[i] > acf[i - 1]) & (acf[i] >= acf[i + 1]) & (i >= _MIN_DIRECT_PERIOD_PX)
    peaks = i[is_peak]
    if peaks.size == 0:
        return None
    heights = acf[peaks]
    top = float(heights.max())
    if top < 0.05:
        return None
    first = int(peaks[np.argmax(heights >= 0.35 * top)])
    a, b, c = acf[first - 1], acf[first], acf[first + 1]
    den = a - 2 * b + c
    p0 = first + (0.5 * (a - c) / den if den < 0 else 0.0)
    refined = _refine_period(prof, p0)
    if refined is None:
        return None
    period = refined[0]
    for _ in range(3):
        for k in (5, 2):
            if period / k >= _MIN_PERIOD_PX and _subdivision_evidence(prof, period, k) >= 3.0:
                sub = _refine_period(prof, period / k, rel_span=0.02)
                if sub is not None:
                    refined = sub
                    period = sub[0]
                    break
        else:
            break
    return refined


def _fold(prof: np.ndarray, period: float, n_bins: int) -> np.ndarray:
    """Median over whole periods of the profile, sampled at ``n_bins`` phases per period.

    The median (not the mean) keeps a few periods that hold strong non-grid structure (trace
    baselines, text rows) from shaping the template.
    """
    n_periods = int((prof.size - 1) // period)
    if n_periods < 1:
        return np.zeros(n_bins)
    pos = (np.arange(n_periods)[:, None] + np.arange(n_bins)[None, :] / n_bins) * period
    samples = np.interp(pos.ravel(), np.arange(prof.size), prof).reshape(n_periods, n_bins)
    return np.median(samples, axis=0)


def _k_lines(template: np.ndarray, anchor: int, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Values at ``k`` equally spaced phases from ``anchor``, at the mid-phases, and the noise level."""
    nb = template.size
    w = max(1, nb // (12 * k))
    ext = np.concatenate([template, template, template])

    def around(centre: float, peak: bool) -> float:
        c = nb + round(centre) % nb
        seg = ext[c - w : c + w + 1]
        return float(seg.max() if peak else seg.mean())

    lines = np.array([around(anchor + j * nb / k, True) for j in range(k)])
    mids = np.array([around(anchor + (j + 0.5) * nb / k, False) for j in range(k)])
    near = np.zeros(nb, dtype=bool)
    for j in range(k):
        c = round(anchor + j * nb / k)
        near[np.arange(c - 3 * w, c + 3 * w + 1) % nb] = True
    rest = template[~near]
    noise = 1.4826 * float(np.median(np.abs(rest - np.median(rest)))) if rest.size > 5 else 0.0
    return lines, mids, noise


def _fold_contrast(prof: np.ndarray, period: float, k: int) -> tuple[float, float]:
    """Contrast of the k - 1 inner lines of a fold of ``prof`` at ``period``.

    Returns the weakest inner line's rise above the mid-phases in noise units, and the same rise
    relative to the main line's height.
    """
    nb = k * max(3, math.ceil(2 * period / k))
    t = _fold(prof, period, nb)
    anchor = int(np.argmax(t))
    lines, mids, noise = _k_lines(t, anchor, k)
    contrast = float(lines[1:].min() - mids.mean())
    major = float(lines[0] - mids.mean())
    if major <= 0:
        return 0.0, 0.0
    return contrast / max(noise, 1e-3 * major), contrast / major


def _subdivision_evidence(prof: np.ndarray, period: float, k: int) -> float:
    """Evidence that a comb of ``period`` has ``k - 1`` further, equally spaced lines within it.

    The profile is folded at the period (median over every period of the page); the weakest of the
    ``k - 1`` expected positions must rise above the mid-phases by at least 4% of the main line,
    and is scored in units of the fold's noise. Returns 0 when it does not.
    """
    if prof.size < 4 * period:
        return 0.0
    sigma, rel = _fold_contrast(prof, period, k)
    return sigma if rel >= 0.04 else 0.0


def _heavier_line(prof: np.ndarray, period: float) -> tuple[float, float]:
    """Rise of the heaviest of five lines in a fold of ``prof`` at five periods.

    Returns the rise over the other four lines in noise units, and the same rise relative to the
    heaviest line's height above the mid-phases.
    """
    nb = 5 * max(3, math.ceil(2 * period))
    t = _fold(prof, 5.0 * period, nb)
    lines, mids, noise = _k_lines(t, int(np.argmax(t)), 5)
    rise = float(lines[0] - lines[1:].max())
    height = float(lines[0] - mids.mean())
    if height <= 0:
        return 0.0, 0.0
    return rise / max(noise, 1e-3 * height), rise / height


def _major_evidence(prof: np.ndarray, period: float, *, min_rel: float = 0.3) -> float:
    """Evidence that every fifth line of a comb of ``period`` is heavier (5 mm major lines).

    The profile is folded at five periods (median over at least three of them); the heaviest line
    must exceed the other four by ``min_rel`` of its height (printed major lines are 40-90% heavier
    in every page seen; trace baselines falling at one phase give up to about 25%), and is scored
    in noise units. Returns 0 when it does not.
    """
    if prof.size < 3 * 5 * period:
        return 0.0
    sigma, rel = _heavier_line(prof, period)
    return sigma if rel >= min_rel else 0.0


def _decide_level(fam_h: _Family, fam_v: _Family) -> tuple[float, str, float]:
    """Return (comb periods per mm: 1 or 5, note, confidence factor) for the measured combs."""
    period = math.sqrt(fam_h.period * fam_v.period)
    n_periods = max(fam_h.extent, fam_v.extent) / period
    # Read as 1 mm, fewer than 80 periods would make the image under 8 cm across, and a grid whose
    # period varies across the page folds poorly: ask for more in both cases. Both axes must show
    # the heavier lines (printed major lines always run both ways).
    min_rel = 0.45 if n_periods < 80 or max(fam_h.spread, fam_v.spread) > 0.01 else 0.3
    major = min(
        _major_evidence(fam_h.profile, fam_h.period, min_rel=min_rel),
        _major_evidence(fam_v.profile, fam_v.period, min_rel=min_rel),
    )
    if major >= 6.0:
        return 1.0, "", 1.0
    # Single-level grid: a whole ECG page spans ~180-280 mm; a page of 5 mm squares has 35-60 of them.
    if n_periods >= 110:
        if period < 3.5:
            # A 1 mm grid this fine should show its 5 mm lines; without them it may be the alias of
            # an unresolvable grid (1 mm between 1.4 and 2 px aliases to 2-3.5 px).
            return (
                1.0,
                (
                    f"single-level grid of {period:.2f} px ({n_periods:.0f} periods across the page), near "
                    "the resolution limit: taken as 1 mm lines, but it may be an alias"
                ),
                0.3,
            )
        return 1.0, f"single-level grid ({n_periods:.0f} periods across the page): taken as 1 mm lines", 0.8
    return 5.0, f"single-level grid ({n_periods:.0f} periods across the page): taken as 5 mm lines", 0.8
