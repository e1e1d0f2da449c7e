"""Degradations of a printed page: paper wear, the scanner or camera geometry, lighting and sensor.

The order is physical: :func:`paper_effects` acts on the flat sheet (creases, wrinkle shading, pen
scribbles), :func:`plan_warp` / :func:`warp_page` place the sheet in the image (rotation,
perspective, scale, a crop resized back, background around it) and move the trace mask and label
map with it (nearest neighbour) so the truth stays exact, and :func:`camera_effects` adds uneven
light, a shadow, blur, noise, a tone curve, yellowing and the light's colour temperature, optional
black-and-white thresholding and JPEG compression. ecg-image-kit's imgaug chain (rotation with black
corners, Gaussian noise, crop, colour temperature) is this chain with ``background="black"``.

Every function draws from the ``rng`` it is given, in a fixed order, so a page is reproducible from
its seed. None of this needs a neural network (ecg-image-kit's handwriting uses one; our scribbles
are random smooth pen strokes).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from ecgdig.render.draw import Stroke, composite, rasterize_strokes
from ecgdig.render.settings import Degradation, kelvin_rgb

__all__ = [
    "Warp",
    "camera_effects",
    "paper_effects",
    "plan_warp",
    "smooth_field",
    "transform_points",
    "warp_page",
]


@dataclass(frozen=True)
class Warp:
    """Where the flat page lands in the output image.

    Attributes
    ----------
    homography : (3, 3) ndarray of float64
        Maps flat-page pixel coordinates ``(x, y, 1)`` to output-image coordinates.
    output_shape : (rows, cols)
        Size of the output image.
    """

    homography: np.ndarray
    output_shape: tuple[int, int]


def transform_points(homography: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 3x3 homography to (n, 2) points ``(x, y)``; return (n, 2) float64.

    Examples
    --------
    >>> transform_points(np.diag([2.0, 2.0, 1.0]), np.array([[1.0, 3.0]])).tolist()
    [[2.0, 6.0]]
    """
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    hom = np.concatenate([pts, np.ones((len(pts), 1))], axis=1) @ np.asarray(homography, np.float64).T
    return hom[:, :2] / hom[:, 2:3]


def smooth_field(shape: tuple[int, int], cells: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Make a smooth random field: ``cells`` Gaussian values upsampled bicubically to ``shape``.

    Returns
    -------
    (rows, cols) ndarray of float32
        Smooth noise, roughly zero-mean and unit-variance (the coarse values are standardised).
    """
    coarse = rng.standard_normal((cells[0] + 1, cells[1] + 1))
    coarse = ((coarse - coarse.mean()) / (coarse.std() or 1.0)).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def fade_ink(coverage: np.ndarray, depth: float, rng: np.random.Generator) -> np.ndarray:
    """Lighten ink coverage by a smooth field that reaches ``depth`` (0-1) where the print is faintest.

    Parameters
    ----------
    coverage : (rows, cols) ndarray of uint8
        Ink coverage, 0-255 (as :func:`~ecgdig.render.draw.rasterize_strokes` gives it).
    depth : float
        Largest fraction of the ink removed; 0 returns ``coverage`` itself.
    rng : numpy.random.Generator
        Randomness (drawn from only when ``depth > 0``).

    Returns
    -------
    (rows, cols) ndarray of uint8
        Coverage times ``1 - depth * f``, ``f`` a smooth field scaled to [0, 1].
    """
    if depth <= 0.0:
        return coverage
    small = _low_res(coverage.shape[:2], 8)
    field = smooth_field(small, (2, 4), rng)
    span = float(field.max() - field.min()) or 1.0
    keep = 1.0 - np.float32(depth) * (field - field.min()) / span
    keep = cv2.resize(keep, (coverage.shape[1], coverage.shape[0]), interpolation=cv2.INTER_LINEAR)
    return np.rint(coverage * keep).astype(np.uint8)


def _signed_distance(shape: tuple[int, int], point: tuple[float, float], angle_rad: float) -> np.ndarray:
    """Signed distance (px) of each pixel from the line through ``point`` at ``angle`` (x axis = 0)."""
    ny, nx = np.cos(angle_rad), -np.sin(angle_rad)
    ys = (np.arange(shape[0], dtype=np.float32) - np.float32(point[1])) * np.float32(ny)
    xs = (np.arange(shape[1], dtype=np.float32) - np.float32(point[0])) * np.float32(nx)
    return ys[:, None] + xs[None, :]


def _apply_gain(image: np.ndarray, gain: np.ndarray, max_gain: float) -> np.ndarray:
    """Multiply a uint8 RGB image by a smooth gain field (any size; upsampled bilinearly).

    ``gain`` is (rows, cols) or (rows, cols, 3) float32 in [0, max_gain]; it is quantised to 1/255
    of ``max_gain`` (invisible under sensor noise) so the product is one saturating uint8 multiply.
    """
    rows, cols = image.shape[:2]
    if gain.shape[:2] != (rows, cols):
        gain = cv2.resize(gain, (cols, rows), interpolation=cv2.INTER_LINEAR)
    gain8 = cv2.convertScaleAbs(gain, alpha=255.0 / max_gain)
    if gain8.ndim == 2:
        gain8 = cv2.merge([gain8, gain8, gain8])
    return cv2.multiply(image, gain8, scale=max_gain / 255.0)


def _low_res(shape: tuple[int, int], factor: int) -> tuple[int, int]:
    return max(2, -(-shape[0] // factor)), max(2, -(-shape[1] // factor))


def _wrinkle_relief(shape: tuple[int, int], strength: float, rng: np.random.Generator) -> np.ndarray:
    """Shading of crumpled paper lit from one side (float32 around 1).

    The height map is a sum of absolute values of smooth fields stretched along one random
    direction: ``|f|`` has sharp valleys where ``f`` crosses zero, which shade like creases between
    flat facets.
    """
    rows, cols = shape
    side = int(np.ceil(np.hypot(rows, cols)))
    direction = rng.uniform(0.0, 180.0)
    height = np.zeros((side, side), np.float32)
    for cells, weight in (((3, 9), 1.0), ((6, 16), 0.5), ((12, 30), 0.25)):
        height += weight * np.abs(smooth_field((side, side), cells, rng))
    turn = cv2.getRotationMatrix2D((side / 2.0, side / 2.0), direction, 1.0)
    turn[:, 2] -= np.array([(side - cols) / 2.0, (side - rows) / 2.0])
    relief = cv2.warpAffine(height, turn, (cols, rows), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    gy, gx = np.gradient(relief)
    light = rng.uniform(0.0, 2.0 * np.pi)
    slope = gx * np.float32(np.cos(light)) + gy * np.float32(np.sin(light))
    slope /= float(slope.std()) or 1.0
    return np.clip(1.0 + 0.12 * strength * slope, 0.45, 1.2).astype(np.float32)


def paper_effects(
    image: np.ndarray, degradation: Degradation, rng: np.random.Generator, px_per_mm: float
) -> np.ndarray:
    """Fold creases, wrinkle shading and pen scribbles on the flat page.

    Parameters
    ----------
    image : (rows, cols, 3) ndarray of uint8
        The printed page.
    degradation : Degradation
        Uses ``creases``, ``wrinkles`` and ``scribbles``.
    rng : numpy.random.Generator
        Randomness.
    px_per_mm : float
        Page scale (crease widths and pen widths are physical).

    Returns
    -------
    (rows, cols, 3) ndarray of uint8
        The page; the input itself when nothing applies.
    """
    d = degradation
    if d.creases == 0 and d.wrinkles == 0.0 and d.scribbles == 0:
        return image
    rows, cols = image.shape[:2]
    if d.creases or d.wrinkles > 0.0:
        # Shading is smooth across the sheet: compute it at half resolution.
        half = _low_res((rows, cols), 2)
        f = half[1] / cols
        shade = np.ones(half, np.float32)
        for _ in range(d.creases):
            vertical = rng.random() < 0.5
            frac = float(rng.choice([1 / 3, 1 / 2, 2 / 3])) + rng.normal(0.0, 0.04)
            angle = np.deg2rad((90.0 if vertical else 0.0) + rng.normal(0.0, 2.0))
            point = (frac * cols * f, rows * f / 2.0) if vertical else (cols * f / 2.0, frac * rows * f)
            dist = _signed_distance(half, point, angle)
            ridge_w = max(1.0, rng.uniform(0.4, 1.5) * px_per_mm * f)
            side_w = rng.uniform(5.0, 25.0) * px_per_mm * f
            depth, step = rng.uniform(0.05, 0.22), rng.uniform(-0.05, 0.05)
            highlight = rng.uniform(0.0, 0.06)
            shade *= (
                1.0
                - depth * np.exp(-((dist / ridge_w) ** 2))
                + highlight * np.exp(-(((dist - 2.0 * ridge_w) / ridge_w) ** 2))
                + step * np.tanh(dist / side_w)
            )
        if d.wrinkles > 0.0:
            shade *= cv2.resize(
                _wrinkle_relief(_low_res((rows, cols), 4), d.wrinkles, rng), (half[1], half[0])
            )
        image = _apply_gain(image, np.clip(shade, 0.0, 1.5), 1.5)
    if d.scribbles:
        strokes = []
        for k in range(d.scribbles):
            n = int(rng.integers(8, 30))
            start = np.array([rng.uniform(0.05, 0.95) * cols, rng.uniform(0.05, 0.95) * rows])
            steps = rng.normal(0.0, 3.0, (n, 2)) * px_per_mm
            steps[:, 0] += rng.uniform(1.0, 4.0) * px_per_mm  # handwriting runs left to right
            ctrl = start + np.cumsum(steps, axis=0)
            t = np.linspace(0.0, 1.0, 8 * n)
            xs = np.interp(t, np.linspace(0, 1, n), ctrl[:, 0])
            ys = np.interp(t, np.linspace(0, 1, n), ctrl[:, 1])
            kernel = np.ones(7) / 7.0  # smooth the random walk into a pen stroke
            xs, ys = np.convolve(xs, kernel, "valid"), np.convolve(ys, kernel, "valid")
            strokes.append(Stroke(np.stack([xs, ys], axis=1), k + 1))
        pen_w = rng.uniform(0.25, 0.6) * px_per_mm
        cov, _ = rasterize_strokes(strokes, (rows, cols), pen_w, 2)
        pen = [(25, 40, 140), (30, 30, 35), (20, 70, 160)][int(rng.integers(0, 3))]
        image = composite(image, [(cov, pen)])
    return image


def plan_warp(page_shape: tuple[int, int], degradation: Degradation, rng: np.random.Generator) -> Warp | None:
    """Draw the page's placement in the image; None when there is no geometric degradation.

    The page is scaled by ``scale``, rotated by ``rotation_deg`` about its centre
    (counter-clockwise as displayed), centred on a canvas ``1 + 2 * background_margin`` times the
    page size, and each corner is then moved by up to ``perspective`` times the short side. Last,
    ``crop`` cuts ``round(crop * size)`` pixels from each side of the canvas and resizes it back,
    as imgaug's ``Crop(percent, keep_size=True)`` does in ecg-image-kit: a zoom about the centre.
    """
    d = degradation
    if not d.is_geometric:
        return None
    rows, cols = page_shape
    out_rows = round(rows * (1.0 + 2.0 * d.background_margin) * d.scale)
    out_cols = round(cols * (1.0 + 2.0 * d.background_margin) * d.scale)
    src = np.array([[-0.5, -0.5], [cols - 0.5, -0.5], [cols - 0.5, rows - 0.5], [-0.5, rows - 0.5]])
    centre_in = np.array([(cols - 1) / 2.0, (rows - 1) / 2.0])
    centre_out = np.array([(out_cols - 1) / 2.0, (out_rows - 1) / 2.0])
    theta = np.deg2rad(d.rotation_deg)
    rot = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    dst = centre_out + (src - centre_in) @ rot.T * d.scale
    jitter = rng.uniform(-1.0, 1.0, (4, 2)) * d.perspective * min(rows, cols) * d.scale
    dst = dst + jitter
    if d.crop > 0.0:
        # Kept pixels [k - 0.5, n - k - 0.5] stretch over [-0.5, n - 0.5]: about the centre by n / (n - 2k).
        cut = np.array([round(d.crop * out_cols), round(d.crop * out_rows)], np.float64)
        size = np.array([out_cols, out_rows], np.float64)
        dst = centre_out + (dst - centre_out) * size / (size - 2.0 * cut)
    homography = cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32))
    return Warp(homography=homography.astype(np.float64), output_shape=(out_rows, out_cols))


def _background(shape: tuple[int, int], kind: str, rng: np.random.Generator) -> np.ndarray:
    """Make a background texture (uint8 RGB) for the area around the paper."""
    rows, cols = shape
    if kind == "black":  # ecg-image-kit's rotation fills the corners with 0
        return np.zeros((rows, cols, 3), np.uint8)
    if kind == "white":
        base, texture = np.array([250.0, 250.0, 248.0]) - rng.uniform(0, 10), 1.0
    elif kind == "grey":
        base, texture = np.full(3, rng.uniform(110, 190)), 4.0
    elif kind == "dark":
        base, texture = np.full(3, rng.uniform(15, 60)) + rng.uniform(-5, 5, 3), 4.0
    elif kind == "wood":
        base, texture = np.array([rng.uniform(120, 175), rng.uniform(80, 115), rng.uniform(40, 75)]), 18.0
    else:  # cloth
        base, texture = rng.uniform(40, 200, 3), 10.0
    small = _low_res(shape, 4)
    if kind == "wood":
        grain = smooth_field(small, (max(8, small[0] // 6), 3), rng)  # streaks along x
    else:
        grain = smooth_field(small, (max(4, small[0] // 10), max(4, small[1] // 10)), rng)
    bg = base.astype(np.float32)[None, None, :] + (grain * np.float32(texture))[..., None]
    return cv2.convertScaleAbs(cv2.resize(bg, (cols, rows), interpolation=cv2.INTER_LINEAR))


def warp_page(
    image: np.ndarray,
    mask: np.ndarray,
    labels: np.ndarray,
    warp: Warp,
    background: str,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Place the page in the output image; warp masks with nearest neighbour.

    Returns
    -------
    image : (rows, cols, 3) ndarray of uint8
        The page bilinearly warped over the background.
    mask : (rows, cols) ndarray of bool
    labels : (rows, cols) ndarray of uint8
    """
    rows, cols = warp.output_shape
    size = (cols, rows)
    hom = warp.homography
    out = _background((rows, cols), background, rng)
    # BORDER_TRANSPARENT leaves the background wherever the page does not reach.
    cv2.warpPerspective(image, hom, size, dst=out, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT)
    warped_labels = cv2.warpPerspective(
        labels, hom, size, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT
    )
    warped_mask = cv2.warpPerspective(
        mask.view(np.uint8), hom, size, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT
    ).astype(bool)
    return out, warped_mask, warped_labels


def camera_effects(
    image: np.ndarray, degradation: Degradation, rng: np.random.Generator
) -> tuple[np.ndarray, bytes | None]:
    """Lighting, optics and sensor: uneven light, shadow, blur, noise, gamma, sepia, colour, B/W, JPEG.

    Returns
    -------
    image : (rows, cols, 3) ndarray of uint8
        The degraded image (the JPEG decoding when JPEG is on).
    encoded : bytes or None
        The JPEG file bytes, when ``jpeg_quality`` is set.
    """
    d = degradation
    shape = image.shape[:2]
    if d.uneven_light > 0 or d.shadow > 0:
        # Light varies slowly: build the gain at 1/8 resolution.
        small = _low_res(shape, 8)
        gain = np.ones((*small, 3), np.float32)
        if d.uneven_light > 0:
            field = smooth_field(small, (2, 3), rng)
            span = float(field.max() - field.min()) or 1.0
            light = 1.0 - d.uneven_light * (field.max() - field) / span
            tint = np.clip(1.0 + rng.normal(0.0, 0.02, 3), 0.9, 1.0).astype(np.float32)
            gain *= light[..., None] * tint
        if d.shadow > 0:
            angle = rng.uniform(0.0, np.pi)
            point = (rng.uniform(0.2, 0.8) * small[1], rng.uniform(0.2, 0.8) * small[0])
            soft = max(0.5, rng.uniform(0.01, 0.08) * min(small))
            dist = _signed_distance(small, point, angle)
            # The logistic written with tanh: no overflow far from the shadow edge.
            amount = d.shadow * 0.5 * (1.0 + np.tanh(dist / (2.0 * soft)))
            cast = np.array([1.0, 0.97, 0.92], np.float32)  # shadows look slightly blue
            gain *= 1.0 - amount[..., None] * cast
        image = _apply_gain(image, gain, 1.0)
    if d.blur_sigma_px > 0:
        image = cv2.GaussianBlur(image, (0, 0), d.blur_sigma_px)
    if d.noise_sigma > 0:
        # Luminance noise with a triangular distribution of standard deviation noise_sigma (the sum
        # of two uniforms: close to Gaussian after blur and JPEG, and three times cheaper to draw).
        noise = rng.random(shape, dtype=np.float32)
        noise += rng.random(shape, dtype=np.float32)
        noise -= np.float32(1.0)
        noise *= np.float32(d.noise_sigma * np.sqrt(6.0))
        grain = np.rint(noise).astype(np.int16)
        image = cv2.add(image, cv2.merge([grain, grain, grain]), dtype=cv2.CV_8U)
    if d.gamma != 1.0 or d.sepia > 0.0 or d.colour_temperature_k is not None:
        # Tone curve, yellowing and the light's colour in one per-channel lookup table.
        levels = 255.0 * (np.arange(256) / 255.0) ** d.gamma
        channel_gain = 1.0 - d.sepia * np.array([0.0, 0.12, 0.32])
        if d.colour_temperature_k is not None:
            channel_gain = channel_gain * np.array(kelvin_rgb(d.colour_temperature_k))
        lut = np.clip(levels[:, None] * channel_gain[None, :] + 0.5, 0, 255).astype(np.uint8)
        image = cv2.LUT(image, lut.reshape(1, 256, 3))
    if d.bw_threshold is not None:
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        binary = np.where(grey < d.bw_threshold, 0, 255).astype(np.uint8)
        image = cv2.merge([binary, binary, binary])
    if d.jpeg_quality is None:
        return image, None
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(d.jpeg_quality))
    encoded = buffer.getvalue()
    with Image.open(io.BytesIO(encoded)) as decoded:
        image = np.asarray(decoded.convert("RGB"), dtype=np.uint8).copy()
    return image, encoded
