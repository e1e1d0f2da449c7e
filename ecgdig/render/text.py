"""Printed text: fonts and the made-up header and footer an ECG page carries.

Fonts are the DejaVu and STIX faces bundled with matplotlib (a dependency): DejaVu Sans is what
ecg-image-kit pages are printed in. The header content is synthetic (random plausible
measurements; age and sex from the record's comments when present) and never copies patient data
other than the record name, as ecg-image-kit prints it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ImageFont

from ecgdig.errors import ConfigError
from ecgdig.types import EcgRecord

__all__ = ["TextItem", "font_path", "footer_items", "header_items", "load_font"]

_FONT_FILES = {
    "sans": "DejaVuSans.ttf",
    "sans-bold": "DejaVuSans-Bold.ttf",
    "serif": "STIXGeneral.ttf",
    "mono": "DejaVuSansMono.ttf",
}

_INTERPRETATIONS = (
    "Sinus rhythm",
    "Normal sinus rhythm",
    "Sinus bradycardia",
    "Sinus tachycardia",
    "Atrial fibrillation with rapid ventricular response",
    "Left axis deviation",
    "Possible left ventricular hypertrophy",
    "Nonspecific ST abnormality",
    "Borderline ECG",
    "Abnormal ECG",
    "Normal ECG",
    "Inferior infarct, age undetermined",
    "Right bundle branch block",
    "Incomplete right bundle branch block",
    "First degree AV block",
)


@dataclass(frozen=True)
class TextItem:
    """One string printed on the page.

    Attributes
    ----------
    x_mm, y_mm : float
        Left end of the text baseline, from the page's top-left corner, in mm.
    text : str
        The string.
    """

    x_mm: float
    y_mm: float
    text: str


def font_path(font: str) -> Path:
    """Return the TrueType file for a font name (``"sans"``, ``"sans-bold"``, ``"serif"``, ``"mono"``).

    Raises
    ------
    ConfigError
        If the name is unknown or matplotlib's font folder is missing.
    """
    if font not in _FONT_FILES:
        raise ConfigError(f"unknown font {font!r}; choose one of {', '.join(_FONT_FILES)}")
    # Locate matplotlib's data folder without importing matplotlib (which costs ~0.3 s).
    spec = importlib.util.find_spec("matplotlib")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / "mpl-data" / "fonts" / "ttf" / _FONT_FILES[font]
        if path.is_file():
            return path
    raise ConfigError(f"font file {_FONT_FILES[font]} not found (is matplotlib installed?)")


def load_font(font: str, size_px: float) -> ImageFont.FreeTypeFont:
    """Load ``font`` at a pixel size (em height), for :mod:`PIL.ImageDraw`."""
    return ImageFont.truetype(str(font_path(font)), size=max(4, round(size_px)))


def _comment_value(record: EcgRecord, key: str) -> str | None:
    for line in record.comments:
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() == key:
            return value.strip() or None
    return None


def header_items(
    style: str, record: EcgRecord, page_width_mm: float, rng: np.random.Generator
) -> list[TextItem]:
    """Make the header text block for one page.

    Parameters
    ----------
    style : {"eik", "eik-2024", "ge", "minimal"}
        ``"eik"``: ecg-image-kit's three columns (name, age, sex / ID, height / date, weight), lines
        5 mm apart from 5.9 mm below the top edge. ``"eik-2024"``: the block the July 2024
        ecg-image-kit prints in the same places (ID, age, sex / name / date; fields it lacks stay
        blank, as on the Challenge pages). ``"ge"``: a GE-like block with measurements and an
        interpretation statement. ``"minimal"``: one line.
    record : EcgRecord
        The record printed (its name, and age and sex comments when present).
    page_width_mm : float
        Page width; columns are spread over it.
    rng : numpy.random.Generator
        Source of the made-up values.

    Returns
    -------
    list of TextItem
        Positions in mm from the page's top-left corner.
    """
    age = _comment_value(record, "age") or str(int(rng.integers(18, 90)))
    sex_raw = (_comment_value(record, "sex") or ("Female", "Male")[int(rng.integers(0, 2))]).lower()
    sex = "Female" if sex_raw.startswith("f") else "Male"
    date = f"{int(rng.integers(1985, 2024))}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}"
    clock = f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}:{int(rng.integers(0, 60)):02d}"
    rate = int(rng.integers(45, 120))
    pr, qrs = int(rng.integers(120, 220)), int(rng.integers(70, 130))
    qt = int(rng.integers(340, 460))
    qtc = int(qt / np.sqrt(60.0 / rate))
    col = page_width_mm / 279.4  # ecg-image-kit spaces its columns 75 mm apart on letter paper
    if style == "eik":
        id_line = f"ID: {record.name}" if rng.random() < 0.5 else "ID: "
        columns = [
            [f"Name: {record.name}", f"Age: {age} yrs", f"Sex: {sex}"],
            [id_line, f"Height: {int(rng.integers(150, 195)) if rng.random() < 0.5 else ''}"],
            [f"Date: {date}, {clock}", f"Weight: {int(rng.integers(45, 110))} Kgs"],
        ]
        return [
            TextItem(1.25 + 75.0 * col * c, 5.9 + 5.0 * i, text)
            for c, lines in enumerate(columns)
            for i, text in enumerate(lines)
        ]
    if style == "eik-2024":
        # The Challenge pages mostly lack age and date (PTB-XL headers carry neither): keep the
        # labels with blank values as often as not.
        blank = rng.random(3) < 0.5
        shown_age, shown_sex = ("" if blank[0] else age), ("Unknown" if blank[1] else sex)
        columns = [
            [f"ID: {record.name}", f"Age: {shown_age} yrs", f"Sex: {shown_sex}"],
            ["Name: "],
            ["Date: ," if blank[2] else f"Date: {date}, {clock}"],
        ]
        return [
            TextItem(1.25 + 75.0 * col * c, 5.9 + 5.0 * i, text)
            for c, lines in enumerate(columns)
            for i, text in enumerate(lines)
        ]
    if style == "ge":
        pid = f"{int(rng.integers(0, 10**10)):010d}"
        left = ["Patient name:", f"Patient ID: {pid}", f"Age(years): {age}", f"Sex: {sex[0]}", "Group:"]
        middle = [
            f"Vent. rate(bpm): {rate}",
            f"PR interval(ms): {pr}",
            f"QRS duration(ms): {qrs}",
            f"QT/QTc (ms): {qt} / {qtc}",
            f"Date/Time: {date[5:7]}/{date[8:10]}/{date[:4]}, {clock[:5]}",
        ]
        n_statements = int(rng.integers(1, 4))
        picks = rng.choice(len(_INTERPRETATIONS), size=n_statements, replace=False)
        right = [_INTERPRETATIONS[int(k)].upper() for k in picks] + ["Comments:"]
        items = [TextItem(8.0 * col, 5.0 + 3.2 * i, t) for i, t in enumerate(left)]
        items += [TextItem(70.0 * col, 5.0 + 3.2 * i, t) for i, t in enumerate(middle)]
        items += [TextItem(140.0 * col, 5.0 + 3.2 * i, t) for i, t in enumerate(right)]
        return items
    if style == "minimal":
        return [TextItem(5.0 * col, 6.0, f"{record.name}    {date} {clock}    {rate} bpm    {sex}, {age} y")]
    raise ConfigError(f"unknown header_style {style!r}")


def footer_items(
    style: str, mm_per_s: float, mm_per_mv: float, page_height_mm: float, page_width_mm: float
) -> list[TextItem]:
    """Make the speed/gain footer (``"25mm/s"``, ``"10mm/mV"``), 5 mm above the bottom edge.

    ecg-image-kit prints the two values at 50 mm and 100 mm from the left edge; the GE-like style
    prints them together with a filter note.
    """
    y = page_height_mm - 5.0
    col = page_width_mm / 279.4
    if style == "ge":
        return [
            TextItem(10.0 * col, y, f"{mm_per_s:.1f} mm/s   {mm_per_mv:.1f} mm/mV"),
            TextItem(95.0 * col, y, "0.05-150 Hz   12SL"),
        ]
    return [
        TextItem(50.0 * col, y, f"{mm_per_s:g}mm/s"),
        TextItem(100.0 * col, y, f"{mm_per_mv:g}mm/mV"),
    ]
