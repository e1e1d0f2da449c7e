"""Hand-drawn test pages: known signals drawn with OpenCV at a known scale (no renderer involved)."""

from __future__ import annotations

import cv2
import numpy as np

PX_PER_MM = 8.0


def draw_strips(
    signals_mv: list[np.ndarray],
    fs_hz: float,
    *,
    px_per_mm: float = PX_PER_MM,
    mm_per_s: float = 25.0,
    mm_per_mv: float = 10.0,
    row_spacing_mm: float = 40.0,
    x0_mm: float = 15.0,
    pulse: bool = False,
    size_mm: tuple[float, float] = (216.0, 280.0),
) -> tuple[np.ndarray, list[float], float]:
    """Draw one strip per signal; return (probability map, baselines_px, x_start_px)."""
    rows, cols = round(size_mm[0] * px_per_mm), round(size_mm[1] * px_per_mm)
    canvas = np.zeros((rows, cols), dtype=np.uint8)
    baselines = []
    x_start = x0_mm * px_per_mm + (0.2 * mm_per_s * px_per_mm if pulse else 0.0)
    for i, sig in enumerate(signals_mv):
        base = (30.0 + i * row_spacing_mm) * px_per_mm
        baselines.append(base)
        t = np.arange(sig.size) / fs_hz
        x = x_start + t * mm_per_s * px_per_mm
        y = base - sig * mm_per_mv * px_per_mm
        pts = [np.stack([x, y], axis=1)]
        if pulse:
            x0 = x0_mm * px_per_mm
            top = base - mm_per_mv * px_per_mm
            pts.insert(0, np.array([[x0 - 4, base], [x0, base], [x0, top], [x_start, top], [x_start, base]]))
        poly = np.concatenate(pts)
        cv2.polylines(canvas, [np.round(poly * 16).astype(np.int32)], False, 255, 2, cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) / 255.0, baselines, x_start


def ecg_like(fs_hz: float, duration_s: float, *, seed: int = 0, amplitude_mv: float = 1.2) -> np.ndarray:
    """A crude ECG: narrow Gaussian R waves at 75 bpm with T waves and a little wander."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(fs_hz * duration_s)) / fs_hz
    out = 0.05 * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 6))
    for beat in np.arange(0.3 + rng.uniform(0, 0.3), duration_s, 0.8):
        out += amplitude_mv * np.exp(-0.5 * ((t - beat) / 0.012) ** 2)
        out -= 0.25 * amplitude_mv * np.exp(-0.5 * ((t - beat - 0.03) / 0.01) ** 2)
        out += 0.25 * np.exp(-0.5 * ((t - beat - 0.3) / 0.05) ** 2)
    return out
