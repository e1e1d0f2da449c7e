"""Batch rendering to files: pages, masks, label maps, truth JSON and reference WFDB records.

For page ``k`` of record ``R`` the files are ``R-k.png`` (or ``R-k.jpg`` when the drawn settings
JPEG-compress), ``R-k_mask.png``, ``R-k_labels.png``, ``R-k.json`` and the reference record
``R-k.hea`` / ``R-k.dat``, so ``ecgdig evaluate`` pairs a digitized ``R-k`` with its truth by stem.
Every file is written atomically; the JSON is written last, so a page with its JSON is complete.

Each page draws from its own generator, seeded by ``(seed, record name, k)``: the same seed gives
byte-identical files on the same platform, whatever the order or subset of records rendered.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from ecgdig.errors import ConfigError, RecordInputError
from ecgdig.io import atomic_write_bytes, atomic_write_text, read_record, write_record
from ecgdig.io.records import record_stem
from ecgdig.render.page import RenderedPage, render_page
from ecgdig.render.profiles import SiteProfile, load_profile, sample_settings

__all__ = ["find_records", "page_rng", "render_to_files", "write_rendered_page"]


def page_rng(seed: int, record_name: str, page_index: int) -> np.random.Generator:
    """Return the generator for page ``page_index`` of ``record_name`` under ``seed``.

    The record name enters through SHA-256 (Python's ``hash`` is salted per process).

    Examples
    --------
    >>> a = page_rng(7, "00001_lr", 0).integers(1 << 30)
    >>> b = page_rng(7, "00001_lr", 0).integers(1 << 30)
    >>> bool(a == b), bool(a == page_rng(7, "00001_lr", 1).integers(1 << 30))
    (True, False)
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    name_key = int.from_bytes(hashlib.sha256(record_name.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([int(seed), name_key, int(page_index)]))


def find_records(paths: Iterable[str | Path]) -> list[Path]:
    """Expand record files and folders into WFDB record stems.

    Parameters
    ----------
    paths : iterable of str or Path
        Record stems, ``.hea`` / ``.dat`` files, or folders (searched recursively for ``.hea``).

    Returns
    -------
    list of Path
        Record stems, folders' contents sorted, duplicates removed, in input order.

    Raises
    ------
    RecordInputError
        If a path does not exist or a folder holds no record.
    """
    stems: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(record_stem(h) for h in path.rglob("*.hea"))
            if not found:
                raise RecordInputError("folder holds no WFDB record (.hea)", path)
            stems.extend(found)
        else:
            stem = record_stem(path)
            if not stem.with_suffix(".hea").is_file():
                raise RecordInputError("no WFDB header (.hea) found", stem.with_suffix(".hea"))
            stems.append(stem)
    return list(dict.fromkeys(stems))


def write_rendered_page(page: RenderedPage, out_dir: str | Path) -> Path:
    """Write one rendered page and its truth files into ``out_dir``; return the image path.

    The stem is the reference record's name. The JSON is written last. A page image of the same
    stem in the other format (``.png`` versus ``.jpg``), left by an earlier run, is removed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = page.reference.name
    if page.encoded is not None:
        image_path, stale = out_dir / f"{stem}.jpg", out_dir / f"{stem}.png"
        atomic_write_bytes(image_path, page.encoded)
    else:
        image_path, stale = out_dir / f"{stem}.png", out_dir / f"{stem}.jpg"
        atomic_write_bytes(image_path, _png_bytes(page.image))
    stale.unlink(missing_ok=True)  # a page rendered earlier in the other format would be read twice
    atomic_write_bytes(out_dir / f"{stem}_mask.png", _png_bytes(page.trace_mask.astype(np.uint8) * 255))
    atomic_write_bytes(out_dir / f"{stem}_labels.png", _png_bytes(page.lead_labels))
    write_record(page.reference, out_dir)
    truth = dict(page.truth, image=image_path.name, mask=f"{stem}_mask.png", labels=f"{stem}_labels.png")
    atomic_write_text(out_dir / f"{stem}.json", json.dumps(truth, sort_keys=True, allow_nan=False) + "\n")
    return image_path


def _png_bytes(array: np.ndarray) -> bytes:
    """PNG-encode a uint8 image with fast zlib settings (noisy pages barely compress anyway)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def render_to_files(
    record_paths: Iterable[str | Path],
    out_dir: str | Path,
    *,
    profile: SiteProfile | str | Path,
    seed: int,
    pages_per_record: int = 1,
    layout: str | None = None,
    dpi: int | None = None,
) -> list[Path]:
    """Render every record ``pages_per_record`` times with settings drawn from ``profile``.

    Parameters
    ----------
    record_paths : iterable of str or Path
        WFDB records (stems or ``.hea`` files) or folders of records.
    out_dir : str or Path
        Output folder (created if missing).
    profile : SiteProfile or str or Path
        A loaded profile, a shipped profile name or a YAML path.
    seed : int
        Non-negative seed; page ``k`` of record ``R`` uses :func:`page_rng` ``(seed, R, k)``.
    pages_per_record : int, optional
        Pages per record, each with its own settings and window.
    layout : str, optional
        Override the drawn layout (a shipped name or a YAML path).
    dpi : int, optional
        Override the drawn resolution (100-300).

    Returns
    -------
    list of Path
        The page images written, in order.

    Raises
    ------
    ConfigError
        For a bad profile, seed, page count or override, or two records with the same name.
    RecordInputError
        If a record cannot be read or shows none of the layout's leads.
    """
    if isinstance(pages_per_record, bool) or not isinstance(pages_per_record, int) or pages_per_record < 1:
        raise ConfigError(f"pages_per_record must be a positive integer, got {pages_per_record!r}")
    page_rng(seed, "", 0)  # validates the seed before any work
    site = profile if isinstance(profile, SiteProfile) else load_profile(profile)
    stems = find_records(record_paths)
    names: dict[str, Path] = {}
    for stem in stems:
        if stem.name in names:
            raise ConfigError(
                f"two records are named {stem.name!r} ({names[stem.name]} and {stem}); outputs would collide"
            )
        names[stem.name] = stem
    overrides: dict[str, object] = {}
    if layout is not None:
        overrides["layout"] = str(layout)
    if dpi is not None:
        overrides["dpi"] = dpi
    written: list[Path] = []
    for stem in stems:
        record = read_record(stem)
        for k in range(pages_per_record):
            rng = page_rng(seed, record.name, k)
            settings = sample_settings(site, rng)
            if overrides:
                settings = dataclasses.replace(settings, **overrides)  # type: ignore[arg-type]
            page = render_page(record, settings, rng, page_name=f"{record.name}-{k}")
            page.truth.update(seed=int(seed), page_index=k, profile=site.name)
            written.append(write_rendered_page(page, out_dir))
    return written
