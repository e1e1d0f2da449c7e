"""Run single pipeline stages on files, so each stage is usable alone from the shell.

A normalized page travels as ``page.png`` plus ``page.json`` (its scale and how it was found); the
later stages read that pair, or normalize a raw image first when no JSON is beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ecgdig.errors import ImageInputError
from ecgdig.io import atomic_write_text, read_image, write_image, write_record
from ecgdig.pipeline.digitize import DigitizeOptions, record_name_for, vectorize_probability
from ecgdig.pipeline.grid import suppress_grid
from ecgdig.pipeline.normalize import normalize
from ecgdig.pipeline.segment import DEFAULT_SEGMENTER, segment
from ecgdig.types import NormalizedPage

__all__ = ["grid_file", "load_page", "normalize_file", "segment_file", "vectorize_file"]


def _page_json(page: NormalizedPage) -> dict[str, object]:
    return {
        "px_per_mm": page.px_per_mm,
        "px_per_mm_confidence": page.px_per_mm_confidence,
        "scale_method": page.scale_method,
        "source_px_per_mm": page.source_px_per_mm,
        "rotation_deg": page.rotation_deg,
        "perspective_corrected": page.perspective_corrected,
        "warnings": list(page.warnings),
    }


def normalize_file(
    source: str | Path, out_png: str | Path, *, target_px_per_mm: float = 8.0
) -> dict[str, object]:
    """Normalize an image file; write ``out_png`` and its ``.json`` scale sidecar.

    Parameters
    ----------
    source : str or Path
        Input page image.
    out_png : str or Path
        Normalized page image to write; the sidecar goes beside it with suffix ``.json``.
    target_px_per_mm : float, optional
        Output scale.

    Returns
    -------
    dict
        The sidecar content.
    """
    page = normalize(read_image(source), target_px_per_mm=target_px_per_mm)
    info = _page_json(page)
    write_image(out_png, page.image)
    atomic_write_text(Path(out_png).with_suffix(".json"), json.dumps(info, indent=2) + "\n")
    return info


def load_page(path: str | Path, *, target_px_per_mm: float = 8.0) -> NormalizedPage:
    """Load a normalized page written by :func:`normalize_file`, or normalize a raw image.

    Parameters
    ----------
    path : str or Path
        ``page.png`` with ``page.json`` beside it, or any page image.
    target_px_per_mm : float, optional
        Scale used when the image must be normalized first.

    Returns
    -------
    NormalizedPage
        The page.
    """
    path = Path(path)
    image = read_image(path)
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return normalize(image, target_px_per_mm=target_px_per_mm)
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
        return NormalizedPage(
            image=image,
            px_per_mm=float(info["px_per_mm"]),
            px_per_mm_confidence=float(info.get("px_per_mm_confidence", 1.0)),
            scale_method=str(info.get("scale_method", "sidecar")),
            source_px_per_mm=float(info.get("source_px_per_mm", info["px_per_mm"])),
            rotation_deg=float(info.get("rotation_deg", 0.0)),
            perspective_corrected=bool(info.get("perspective_corrected", False)),
            warnings=tuple(info.get("warnings", ())),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ImageInputError(f"page sidecar is not valid: {exc}", sidecar) from None


def grid_file(source: str | Path, out_png: str | Path) -> dict[str, object]:
    """Suppress the grid of a page; write the remaining ink as a grey image (black = ink).

    Returns
    -------
    dict
        Grid colour and leakage.
    """
    page = load_page(source)
    grid = suppress_grid(page)
    write_image(out_png, (255 - np.clip(grid.ink, 0, 1) * 255).astype(np.uint8))
    info = {"grid_colour": grid.grid_colour, "leakage": grid.leakage, "px_per_mm": page.px_per_mm}
    atomic_write_text(Path(out_png).with_suffix(".json"), json.dumps(info, indent=2) + "\n")
    return info


def segment_file(
    source: str | Path,
    out_png: str | Path,
    *,
    segmenter: str = DEFAULT_SEGMENTER,
    model_path: str | Path | None = None,
    threads: int | None = None,
) -> dict[str, object]:
    """Segment the traces of a page; write the probability as an 8-bit image (white = trace).

    ``model_path`` and ``threads`` are passed to :func:`~ecgdig.pipeline.segment.segment` for the
    learned segmenter.

    Returns
    -------
    dict
        Segmenter name, scale and the fraction of trace pixels.
    """
    page = load_page(source)
    probability = segment(page, segmenter=segmenter, model_path=model_path, threads=threads)
    write_image(out_png, np.round(np.clip(probability.probability, 0, 1) * 255).astype(np.uint8))
    info = {
        "segmenter": probability.segmenter,
        "px_per_mm": page.px_per_mm,
        "trace_fraction": float(np.mean(probability.probability >= 0.5)),
    }
    atomic_write_text(Path(out_png).with_suffix(".json"), json.dumps(info, indent=2) + "\n")
    return info


def vectorize_file(
    mask_png: str | Path,
    out_dir: str | Path,
    *,
    px_per_mm: float | None = None,
    options: DigitizeOptions | None = None,
) -> dict[str, object]:
    """Vectorize a trace mask or probability image into a WFDB record in ``out_dir``.

    Parameters
    ----------
    mask_png : str or Path
        Grey image, white = trace (as written by :func:`segment_file`).
    out_dir : str or Path
        Output folder.
    px_per_mm : float, optional
        Scale of the mask; by default read from the ``.json`` beside it.
    options : DigitizeOptions, optional
        Layout, speed, gain and rate.

    Returns
    -------
    dict
        Layout, gain, lead confidence and warnings.
    """
    mask_png = Path(mask_png)
    if px_per_mm is None:
        sidecar = mask_png.with_suffix(".json")
        if not sidecar.is_file():
            raise ImageInputError("no .json with px_per_mm beside the mask; pass --px-per-mm", mask_png)
        px_per_mm = float(json.loads(sidecar.read_text(encoding="utf-8"))["px_per_mm"])
    image = read_image(mask_png)
    probability = image.mean(axis=2).astype(np.float32) / 255.0
    vectorized = vectorize_probability(
        probability, px_per_mm, name=record_name_for(mask_png), options=options
    )
    write_record(vectorized.record, out_dir)
    return {
        "record": str(Path(out_dir) / vectorized.record.name),
        "layout": vectorized.layout.template_name,
        "mm_per_mv": vectorized.layout.mm_per_mv,
        "lead_confidence": {k: round(v, 3) for k, v in vectorized.confidence.items()},
        "warnings": vectorized.warnings,
    }
