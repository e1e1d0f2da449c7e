"""Pages drawn by ecg-image-kit's generator, with exact trace masks, as a training folder.

The PhysioNet Challenge 2024 page generator (``alphanumericslab/ecg-image-kit``,
``codes/ecg-image-generator``) run with ``--store_config 2`` writes, next to each page image, a JSON
file whose ``leads`` list gives for every drawn lead the ``plotted_pixels``: one ``[row, col]``
point per sample, in continuous page-pixel coordinates where pixel ``(i, j)`` covers
``[i, i + 1) x [j, j + 1)``. Drawing those polylines at the generator's line width (0.75 pt)
rebuilds the trace mask exactly, which makes the generator's pages training data for the segmenter
(:class:`ecgdig.model.data.PageFolder`) alongside the pages ``ecgdig render`` draws.

Two corrections bring the points onto the image:

- **white border** (``--pad_inches``): the JSON describes the page before the border was added, so
  the image is larger than the JSON's ``width`` x ``height`` by the border on every side; the
  points move by the border (read from the sizes, not trusted from ``pad_inches``);
- **crop** (``--augment -c``): imgaug crops ``t = round(f H)`` rows and ``l = round(f W)`` columns
  from each side and resizes the page back, but the JSON's points are not adjusted. The drawn
  fraction ``f`` is not in the JSON (its ``crop`` field is the requested maximum); the shared data's
  ``MANIFEST.csv`` has it, and :func:`find_ecg_image_kit_pages` reads it from there.

Rotation needs nothing: the generator rotates the points with the page.

The mask is rasterised by :func:`ecgdig.render.draw.rasterize_strokes`, the code that draws the
masks of ``ecgdig render``'s pages: the polyline is drawn with its sub-pixel positions at 8 times
the resolution and a pixel is in the mask when at least half of it is covered. So both sources
define "trace pixel" the same way. (Flooring the points and dilating a 1-px line by an integer
kernel, the simplest recipe, cannot draw a 2.08 px line: it gives 2 or 3 px and loses on which side
of the floored row the line's second pixel lies.)
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import cv2
import numpy as np

from ecgdig.errors import ConfigError, EcgdigError, ImageInputError
from ecgdig.io.atomic import atomic_write_bytes, atomic_write_text
from ecgdig.io.images import read_image, write_image
from ecgdig.render.draw import Stroke, rasterize_strokes

__all__ = [
    "LINE_WIDTH_PT",
    "EikPage",
    "ImportOutcome",
    "find_ecg_image_kit_pages",
    "plotted_pixels_mask",
    "read_crop_fractions",
    "read_ecg_image_kit_page",
    "read_split",
    "trace_ink_agreement",
    "write_training_folder",
]

#: The generator draws every trace 0.75 pt wide (matplotlib ``linewidth``).
LINE_WIDTH_PT = 0.75
_MM_PER_INCH = 25.4
_PT_PER_INCH = 72.0
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Drawing resolution of the masks: positions to 1/8 px, widths to 1/4 px.
_SUPERSAMPLE = 8
#: Points allowed outside the image before the JSON is taken to belong to another page. A few may
#: stick out legitimately: a rotated page's trace can run into the corner the rotation cut off.
_MAX_OUTSIDE_FRACTION = 0.01
#: ``MANIFEST.csv``'s ``augmentations`` entry for a crop, e.g. ``crop 0.13% per side``.
_CROP_RE = re.compile(r"crop\s+([0-9]*\.?[0-9]+)\s*%\s*per side")


@dataclass(frozen=True)
class EikPage:
    """One ecg-image-kit page on disk.

    Attributes
    ----------
    name : str
        Output name (the image's stem).
    image_path : Path
        The page image (PNG or JPEG).
    json_path : Path or None
        The generator's ``--store_config 2`` JSON (None if none was found: the page then fails).
    pixels_path : Path or None
        ``<name>.pixels.json.gz`` when the plotted pixels were moved out of the JSON.
    crop_fraction : float
        Fraction of each side imgaug cropped (0 when not cropped).
    """

    name: str
    image_path: Path
    json_path: Path | None
    pixels_path: Path | None = None
    crop_fraction: float = 0.0


@dataclass(frozen=True)
class ImportOutcome:
    """What happened to one page in :func:`write_training_folder`.

    Attributes
    ----------
    name : str
        The page's name.
    status : str
        ``"written"``, ``"skipped"`` (its three files existed) or ``"failed"``.
    message : str
        The failure, in one line naming the file (empty otherwise).
    mask_on_ink : float or None
        For written pages, the fraction of mask pixels on trace ink (:func:`trace_ink_agreement`).
    """

    name: str
    status: str
    message: str = ""
    mask_on_ink: float | None = None


def read_ecg_image_kit_page(
    image_path: str | Path,
    json_path: str | Path,
    pixels_path: str | Path | None = None,
    *,
    crop_fraction: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Read an ecg-image-kit page and rasterise its exact trace mask.

    Parameters
    ----------
    image_path : str or Path
        The page image.
    json_path : str or Path
        The generator's ``--store_config 2`` JSON for that page.
    pixels_path : str or Path, optional
        A JSON (``.json``) or gzipped JSON (``.json.gz``) list with one ``plotted_pixels`` list per
        entry of the JSON's ``leads``. Without it the points are read from each lead's
        ``plotted_pixels`` in the JSON itself.
    crop_fraction : float, optional
        Fraction of each side imgaug's crop removed, in [0, 0.5) (the generator does not record it;
        see :func:`read_crop_fractions`).

    Returns
    -------
    image : (rows, cols, 3) ndarray of uint8
        The page.
    mask : (rows, cols) ndarray of bool
        Pixels at least half covered by a trace drawn 0.75 pt wide along the plotted pixels.
    px_per_mm : float
        The image's scale: the JSON's dpi over 25.4, times the crop's enlargement.

    Raises
    ------
    ImageInputError
        If the image cannot be read, its size does not fit the JSON's, or the points fall outside it.
    ConfigError
        If the JSON or the pixel list is missing, malformed or does not match (one line naming the
        file).
    """
    image, mask, px_per_mm, _ = _load_page(
        Path(image_path), Path(json_path), None if pixels_path is None else Path(pixels_path), crop_fraction
    )
    return image, mask, px_per_mm


def _load_page(
    image_path: Path, json_path: Path, pixels_path: Path | None, crop_fraction: float
) -> tuple[np.ndarray, np.ndarray, float, dict[str, Any]]:
    """Do :func:`read_ecg_image_kit_page` and also return the JSON."""
    if not 0.0 <= crop_fraction < 0.5:
        raise ConfigError(f"crop fraction must be in [0, 0.5), got {crop_fraction!r}", image_path)
    meta = _read_json(json_path)
    width, height = _positive(meta, "width", json_path), _positive(meta, "height", json_path)
    dpi = _positive(meta, "resolution", json_path)
    leads = _plotted_pixels(meta, json_path, pixels_path)
    n_points = sum(len(p) for p in leads)
    if n_points == 0:
        raise ConfigError("no lead has plotted pixels", pixels_path or json_path)
    image = read_image(image_path)
    rows, cols = image.shape[:2]
    border_px = _border(rows, cols, height, width, image_path)
    crop = (round(crop_fraction * rows), round(crop_fraction * cols))
    outside = sum(int(np.count_nonzero(_outside(p, rows, cols, border_px, crop))) for p in leads)
    if outside > _MAX_OUTSIDE_FRACTION * n_points:
        raise ImageInputError(
            f"{outside} of {n_points} plotted pixels of {json_path.name} fall outside the {cols}x{rows} "
            "image: not this page's JSON?",
            image_path,
        )
    mask = plotted_pixels_mask(leads, (rows, cols), dpi=dpi, border_px=border_px, crop_px=crop)
    # The crop's resize enlarges the page by H / (H - 2t) down and W / (W - 2l) across: the
    # geometric mean is the scale the model's resampling should undo.
    enlarge = math.sqrt(rows / (rows - 2 * crop[0]) * cols / (cols - 2 * crop[1]))
    return image, mask, dpi / _MM_PER_INCH * enlarge, meta


def plotted_pixels_mask(
    leads: Sequence[np.ndarray],
    shape: tuple[int, int],
    *,
    dpi: float,
    border_px: int = 0,
    crop_px: tuple[int, int] = (0, 0),
    line_width_pt: float = LINE_WIDTH_PT,
) -> np.ndarray:
    """Draw the generator's plotted pixels as a trace mask.

    Parameters
    ----------
    leads : sequence of (n, 2) ndarray
        Each lead's ``[row, col]`` points as the JSON gives them (pixel ``(i, j)`` covers
        ``[i, i + 1) x [j, j + 1)``); consecutive points are joined.
    shape : (rows, cols)
        The image's size.
    dpi : float
        The page's resolution (sets the line width in pixels).
    border_px : int, optional
        White border added around the page after the points were recorded.
    crop_px : (top, left), optional
        Rows cropped from the top and bottom and columns from the left and right before the page
        was resized back to ``shape``.
    line_width_pt : float, optional
        The drawn line width in points (1/72 inch).

    Returns
    -------
    (rows, cols) ndarray of bool
        Pixels at least half covered by the lines.
    """
    rows, cols = shape
    width_px = line_width_pt / _PT_PER_INCH * dpi
    mask = np.zeros(shape, bool)
    for points in leads:
        if len(points) == 0:
            continue
        row, col = _to_image(np.asarray(points, np.float64), rows, cols, border_px, crop_px)
        # rasterize_strokes puts pixel centres at integers: shift from the JSON's pixel corners.
        stroke = Stroke(np.stack([col - 0.5, row - 0.5], axis=1), label=1)
        # One lead at a time at 8x: a lead's box is small enough to supersample that finely, and
        # 1/8 px steps keep a 2.08 px line from rounding to three rows half covered.
        mask |= rasterize_strokes([stroke], shape, width_px, _SUPERSAMPLE)[1] > 0
    return mask


def _to_image(
    points: np.ndarray, rows: int, cols: int, border_px: int, crop_px: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Return the rows and columns of JSON points in the image (border, then crop)."""
    row, col = points[:, 0] + border_px, points[:, 1] + border_px
    top, left = crop_px
    # The crop removes t rows at each end and the resize stretches rows - 2t back to rows.
    return (row - top) * rows / (rows - 2 * top), (col - left) * cols / (cols - 2 * left)


def _outside(
    points: np.ndarray, rows: int, cols: int, border_px: int, crop_px: tuple[int, int]
) -> np.ndarray:
    row, col = _to_image(points, rows, cols, border_px, crop_px)
    return (row < 0) | (row >= rows) | (col < 0) | (col >= cols)


def _border(rows: int, cols: int, height: int, width: int, image_path: Path) -> int:
    """Return the white border implied by the image and JSON sizes (the same on every side)."""
    extra_r, extra_c = rows - height, cols - width
    if extra_r == extra_c and extra_r >= 0 and extra_r % 2 == 0:
        return extra_r // 2
    raise ImageInputError(
        f"image is {cols}x{rows} px but its JSON describes a {width}x{height} page (not even with an "
        "equal white border): not this page's JSON?",
        image_path,
    )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError("no such file", path)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"not a readable JSON file ({_one_line(exc)})", path) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("leads"), list):
        raise ConfigError("not an ecg-image-kit JSON (no 'leads' list; run the generator with "
                          "--store_config 2)", path)  # fmt: skip
    if not all(isinstance(lead, dict) for lead in meta["leads"]):
        raise ConfigError("'leads' must be a list of objects", path)
    return meta


def _positive(meta: dict[str, Any], key: str, path: Path) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 or value != int(value):
        raise ConfigError(f"'{key}' must be a positive whole number, got {value!r}", path)
    return int(value)


def _plotted_pixels(meta: dict[str, Any], json_path: Path, pixels_path: Path | None) -> list[np.ndarray]:
    """Return each JSON lead's ``[row, col]`` points, from the pixel file or inline."""
    leads = meta["leads"]
    if pixels_path is not None:
        source = pixels_path
        if not pixels_path.is_file():
            raise ConfigError("no such file", pixels_path)
        try:
            if pixels_path.name.endswith(".gz"):
                with gzip.open(pixels_path, "rt", encoding="utf-8") as handle:
                    lists = json.load(handle)
            else:
                lists = json.loads(pixels_path.read_text(encoding="utf-8"))
        except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"not a readable pixel list ({_one_line(exc)})", pixels_path) from None
        if not isinstance(lists, list) or len(lists) != len(leads):
            count = len(lists) if isinstance(lists, list) else type(lists).__name__
            raise ConfigError(
                f"holds {count} pixel lists but {json_path.name} has {len(leads)} leads", pixels_path
            )
    else:
        source = json_path
        if not all("plotted_pixels" in lead for lead in leads):
            raise ConfigError(
                "leads have no 'plotted_pixels' (moved to a <name>.pixels.json.gz? pass it too)", json_path
            )
        lists = [lead["plotted_pixels"] for lead in leads]
    points = []
    for k, raw in enumerate(lists):
        try:
            array = np.asarray(raw if raw else np.empty((0, 2)), dtype=np.float64)
        except (TypeError, ValueError):
            array = np.empty((0, 3))
        if array.ndim != 2 or array.shape[1] != 2 or not np.isfinite(array).all():
            raise ConfigError(f"plotted pixels of lead {k} are not a list of finite [row, col] pairs", source)
        points.append(array)
    return points


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def trace_ink_agreement(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    trace_rgb: Sequence[float],
    grid_rgbs: Sequence[Sequence[float]] = (),
    near_px: int = 4,
) -> tuple[float, float]:
    """Measure how well a trace mask fits the trace ink of a page.

    Each pixel is unmixed as white paper plus shares of the trace colour and of at most one grid
    colour (whichever explains it best), after white-balancing the page on its median colour (the
    paper, which colour-temperature augmentation tints). Its trace share ``a`` in [0, 1] is its ink:
    a page's darkness alone cannot tell a trace from a dark grid (the blue and green grids are
    darker than some traces).

    Parameters
    ----------
    image : (rows, cols, 3) ndarray of uint8
        The page.
    mask : (rows, cols) ndarray of bool
        The trace mask.
    trace_rgb : sequence of 3 floats
        The trace colour (the JSON's ``ecg_plot_color``).
    grid_rgbs : sequence of RGB triples, optional
        Grid colours (``grid_line_color_major``, ``grid_line_color_minor``).
    near_px : int, optional
        How far from the mask ink counts as "near a trace".

    Returns
    -------
    on_ink : float
        Fraction of mask pixels with ``a >= 1/3`` (a mask pixel is at least half covered, but the
        generator's anti-aliasing and augmentations blur a half-covered pixel's ink).
    covered : float
        Fraction of the clear ink (``a >= 1/2``, and darker than a grid of the trace's hue) within
        ``near_px`` of the mask that the mask covers. Below 1 by what the plotted pixels leave
        out: the calibration pulse, lead separators and lead names near the traces.
    """
    pixels = image.reshape(-1, 3).astype(np.float32)
    paper = np.median(pixels[:: max(1, pixels.shape[0] // 200_000)], axis=0)
    offset = pixels * (255.0 / np.maximum(paper, 1.0)) - 255.0  # from white paper
    trace = np.asarray(trace_rgb, np.float32) - 255.0
    # Each model explains a pixel as white paper plus shares of the trace and of at most one grid
    # colour (least squares, shares clipped to [0, 1]); the model with the smallest residual wins.
    # A grid in the trace's hue (grey grid, black trace) is no model: colour cannot tell its lines
    # from a faint trace, so clear ink must instead be darker than such a grid.
    bases = [trace[:, None]]
    grid_share = 0.0
    for grid_rgb in grid_rgbs:
        grid = np.asarray(grid_rgb, np.float32) - 255.0
        pair = np.stack([trace, grid], axis=1)
        if np.linalg.matrix_rank(pair, tol=1.0) == 2:
            bases.append(pair)
        else:
            grid_share = max(grid_share, float(grid @ trace / max(float(trace @ trace), 1.0)))
    best_residual = np.full(pixels.shape[0], np.inf, np.float32)
    share = np.zeros(pixels.shape[0], np.float32)
    for basis in bases:
        # einsum rather than @: BLAS is slow on matrices three columns wide.
        shares = np.clip(np.einsum("ij,kj->ik", offset, np.linalg.pinv(basis)), 0.0, 1.0)
        left = offset - np.einsum("ik,jk->ij", shares, basis)
        residual = np.einsum("ij,ij->i", left, left)
        better = residual < best_residual
        best_residual[better], share[better] = residual[better], shares[better, 0]
    ink = share.reshape(mask.shape)
    on_ink = float((ink[mask] >= 1.0 / 3.0).mean()) if mask.any() else 0.0
    near = cv2.dilate(mask.astype(np.uint8), np.ones((2 * near_px + 1,) * 2, np.uint8)) > 0
    clear = (ink >= max(0.5, grid_share + 0.1)) & near
    covered = float((clear & mask).sum() / clear.sum()) if clear.any() else 0.0
    return on_ink, covered


def read_crop_fractions(manifest: str | Path) -> dict[str, float]:
    """Return the crop fraction of every cropped page in a ``MANIFEST.csv``.

    Parameters
    ----------
    manifest : str or Path
        A CSV with ``page`` and ``augmentations`` columns; a crop reads ``crop 0.13% per side``.

    Returns
    -------
    dict of str to float
        Page name to fraction (0.0013 for the example); pages without a crop are left out.

    Raises
    ------
    ConfigError
        If the file cannot be read or lacks those columns.
    """
    path = Path(manifest)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not {"page", "augmentations"} <= set(reader.fieldnames or ()):
                raise ConfigError("needs 'page' and 'augmentations' columns", path)
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"cannot read the manifest ({_one_line(exc)})", path) from None
    fractions = {}
    for row in rows:
        found = _CROP_RE.search(row.get("augmentations") or "")
        if found:
            fractions[row["page"]] = float(found.group(1)) / 100.0
    return fractions


def read_split(path: str | Path, part: str = "train") -> set[str]:
    """Return the pages of one part of a split CSV (columns ``page`` and ``part``).

    Raises
    ------
    ConfigError
        If the file cannot be read, lacks the columns or names no page of ``part``.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not {"page", "part"} <= set(reader.fieldnames or ()):
                raise ConfigError("needs 'page' and 'part' columns", path)
            pages = {row["page"] for row in reader if row["part"] == part}
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"cannot read the split ({_one_line(exc)})", path) from None
    if not pages:
        raise ConfigError(f"no page has part={part!r}", path)
    return pages


def find_ecg_image_kit_pages(folder: str | Path, *, names: Iterable[str] | None = None) -> list[EikPage]:
    """Find the pages of an ecg-image-kit output folder.

    Two layouts are read: the generator's own (images and JSON side by side, plotted pixels inline)
    and the shared data's (``pages/`` images, ``meta/<name>.json`` and ``meta/<name>.pixels.json.gz``,
    ``MANIFEST.csv`` with the crop fractions).

    Parameters
    ----------
    folder : str or Path
        The folder.
    names : iterable of str, optional
        Keep only these pages (image stems), e.g. the training part of a split.

    Returns
    -------
    list of EikPage
        Sorted by name; a page whose JSON is missing has ``json_path=None``.

    Raises
    ------
    ConfigError
        If the folder is missing or holds no page image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError("not a folder", folder)
    image_dir = folder / "pages" if (folder / "pages").is_dir() else folder
    images = sorted(
        p for p in image_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    if not images:
        raise ConfigError("holds no page image (.png, .jpg)", image_dir)
    manifest = folder / "MANIFEST.csv"
    crops = read_crop_fractions(manifest) if manifest.is_file() else {}
    keep = None if names is None else set(names)
    pages = []
    for image in images:
        if keep is not None and image.stem not in keep:
            continue
        json_path = next(
            (p for p in (image.with_suffix(".json"), folder / "meta" / f"{image.stem}.json") if p.is_file()),
            None,
        )
        pixels = None if json_path is None else json_path.with_name(f"{image.stem}.pixels.json.gz")
        pages.append(
            EikPage(
                name=image.stem,
                image_path=image,
                json_path=json_path,
                pixels_path=pixels if pixels is not None and pixels.is_file() else None,
                crop_fraction=crops.get(image.stem, 0.0),
            )
        )
    return pages


def write_training_folder(
    pages: Sequence[EikPage],
    out_dir: str | Path,
    *,
    force: bool = False,
    on_page: Callable[[ImportOutcome], None] | None = None,
) -> list[ImportOutcome]:
    """Write pages with their exact masks in the layout :class:`~ecgdig.model.data.PageFolder` reads.

    For each page: ``<name>.png`` (or ``.jpg``: the source file's bytes, not re-encoded), then
    ``<name>.json`` (``px_per_mm`` and where the page came from), then ``<name>_mask.png``, each
    written atomically. The mask comes last, so a page with a mask is complete (``PageFolder``
    ignores an image without one); a page whose three files exist is skipped. A failed page never
    stops the batch.

    Parameters
    ----------
    pages : sequence of EikPage
        The pages (:func:`find_ecg_image_kit_pages`).
    out_dir : str or Path
        The training folder.
    force : bool, optional
        Write pages whose files exist again.
    on_page : callable, optional
        Called with each page's :class:`ImportOutcome` as it completes.

    Returns
    -------
    list of ImportOutcome
        One per page, in order.
    """
    out_dir = Path(out_dir)
    outcomes = []
    for page in pages:
        suffix = page.image_path.suffix.lower()
        targets = (
            out_dir / f"{page.name}{suffix}",
            out_dir / f"{page.name}.json",
            out_dir / f"{page.name}_mask.png",
        )
        if not force and all(t.is_file() for t in targets):
            outcome = ImportOutcome(page.name, "skipped")
        else:
            try:
                outcome = _write_page(page, *targets)
            except EcgdigError as exc:
                outcome = ImportOutcome(page.name, "failed", str(exc))
            except OSError as exc:  # the output side: a full disk, a read-only folder
                outcome = ImportOutcome(page.name, "failed", f"{out_dir}: cannot write ({_one_line(exc)})")
        outcomes.append(outcome)
        if on_page is not None:
            on_page(outcome)
    return outcomes


def _write_page(page: EikPage, image_out: Path, json_out: Path, mask_out: Path) -> ImportOutcome:
    if page.json_path is None:
        raise ConfigError(
            "no JSON beside it or in meta/ (run the generator with --store_config 2)", page.image_path
        )
    image, mask, px_per_mm, meta = _load_page(
        page.image_path, page.json_path, page.pixels_path, page.crop_fraction
    )
    grids = [meta[k] for k in ("grid_line_color_major", "grid_line_color_minor") if _is_rgb(meta.get(k))]
    trace = meta.get("ecg_plot_color")
    on_ink = trace_ink_agreement(image, mask, trace_rgb=trace, grid_rgbs=grids)[0] if _is_rgb(trace) else None
    # The source's bytes: re-encoding would only cost time (noisy pages are 5 MB of PNG).
    atomic_write_bytes(image_out, page.image_path.read_bytes())
    truth = {
        "source": "ecg-image-kit",
        "image": page.image_path.name,
        "json": page.json_path.name,
        "px_per_mm": px_per_mm,
        "dpi": _positive(meta, "resolution", page.json_path),
        "crop_fraction": page.crop_fraction,
        "mask_on_ink": on_ink,
    }
    atomic_write_text(json_out, json.dumps(truth, indent=1, sort_keys=True) + "\n")
    write_image(mask_out, mask.astype(np.uint8) * 255)
    return ImportOutcome(page.name, "written", mask_on_ink=on_ink)


def _is_rgb(value: object) -> TypeGuard[list[float]]:
    return (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )
