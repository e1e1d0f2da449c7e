"""Render settings: every knob of a synthetic page, as frozen, validated dataclasses.

:class:`RenderSettings` fixes what is printed (layout, scale, grid, text, calibration pulse) and
:class:`Degradation` what happens to the paper afterwards (creases, scanning, photographing). A site
profile (:mod:`ecgdig.render.profiles`) is a distribution over these fields; one draw of it is one
``RenderSettings``. Lengths on paper are in millimetres, pixel quantities say ``px``.

Default values reproduce the look of an ecg-image-kit page (the PhysioNet Challenge 2024 generator):
US-letter landscape at 200 dpi, red grid with 0.5 pt lines, 0.75 pt trace, 11 pt DejaVu Sans text.
Every field added later defaults to "off", so settings saved before it render the same page.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ecgdig.errors import ConfigError
from ecgdig.leads import STANDARD_LEADS

__all__ = [
    "ECG_IMAGE_KIT_GRID_RGB",
    "GRID_COLOURS",
    "GRID_PALETTES",
    "PAPER_SIZES_MM",
    "Degradation",
    "RenderSettings",
    "kelvin_rgb",
    "random_grid_rgb",
]

#: Paper sizes as (short side, long side) in mm.
PAPER_SIZES_MM: dict[str, tuple[float, float]] = {"letter": (215.9, 279.4), "a4": (210.0, 297.0)}

#: Grid colour families. "none" prints no grid; "random" is ecg-image-kit's random colour mode (a
#: profile draws each page's colours with :func:`random_grid_rgb`).
GRID_COLOURS: tuple[str, ...] = (
    "red",
    "pink",
    "orange",
    "green",
    "blue",
    "grey",
    "none",
    "brown",
    "dark-blue",
    "dark-green",
    "random",
)

RGB = tuple[int, int, int]

#: Header text layouts (see :attr:`RenderSettings.header_style`).
HEADER_STYLES: tuple[str, ...] = ("eik", "eik-2024", "ge", "minimal")

#: What can surround the paper in the image (see :attr:`Degradation.background`).
BACKGROUNDS: tuple[str, ...] = ("white", "grey", "dark", "wood", "cloth", "black")

#: ecg-image-kit's fixed grid colours (``--standard_grid_color 1..5`` and the black-and-white mode),
#: as (major, minor) 8-bit RGB: its float colours times 255, rounded half up as matplotlib's Agg
#: renderer prints them (the pages' pixels on fully covered lines have exactly these values).
ECG_IMAGE_KIT_GRID_RGB: dict[str, tuple[RGB, RGB]] = {
    "colour1": ((109, 50, 47), (150, 107, 101)),  # brown
    "colour2": ((255, 203, 221), (254, 237, 248)),  # pink
    "colour3": ((0, 0, 102), (0, 0, 179)),  # dark blue: 1 mm and 5 mm lines look alike
    "colour4": ((0, 77, 0), (0, 204, 77)),  # dark green
    "colour5": ((255, 0, 0), (254, 223, 219)),  # red
    "bw": ((102, 102, 102), (191, 191, 191)),  # black-and-white mode (its trace is black)
}

#: Realistic (major, minor) line colours per family, measured on real scans and on ecg-image-kit's
#: palette. The first entry of each family is its default.
GRID_PALETTES: dict[str, tuple[tuple[RGB, RGB], ...]] = {
    "red": (
        ((255, 0, 0), (254, 223, 219)),  # ecg-image-kit "colour5"
        ((235, 90, 90), (248, 200, 200)),
        ((226, 60, 60), (250, 215, 210)),
        ((250, 120, 110), (252, 222, 218)),
    ),
    "pink": (
        ((255, 203, 221), (254, 237, 248)),  # ecg-image-kit "colour2"
        ((232, 160, 168), (246, 222, 228)),  # digital export, pink grid
        ((248, 168, 192), (248, 216, 240)),
        ((240, 150, 170), (250, 225, 232)),
    ),
    "orange": (
        ((248, 128, 0), (248, 128, 0)),  # GE Marquette print: minor dots in the major colour
        ((240, 150, 70), (250, 205, 170)),
        ((235, 140, 60), (248, 210, 180)),
    ),
    "green": (
        ((110, 180, 130), (200, 232, 210)),
        ((60, 150, 90), (190, 225, 200)),
        ((0, 77, 0), (0, 204, 77)),  # ecg-image-kit "colour4"
    ),
    "blue": (
        ((150, 170, 220), (220, 230, 248)),
        ((120, 150, 200), (205, 220, 240)),
        ((0, 0, 102), (0, 0, 179)),  # ecg-image-kit "colour3"
    ),
    "grey": (
        ((102, 102, 102), (191, 191, 191)),  # ecg-image-kit black-and-white style
        ((150, 150, 150), (210, 210, 210)),
        ((120, 120, 120), (200, 200, 200)),
    ),
    "none": (((255, 255, 255), (255, 255, 255)),),
    # Families added for ecg-image-kit's dark palettes (the existing families' variant lists stay as
    # they were, so profiles drawing from them give the same pages).
    "brown": (
        ECG_IMAGE_KIT_GRID_RGB["colour1"],
        ((125, 65, 55), (170, 125, 115)),
        ((95, 45, 40), (140, 100, 95)),
    ),
    "dark-blue": (
        ECG_IMAGE_KIT_GRID_RGB["colour3"],
        ((20, 30, 120), (50, 60, 190)),
        ((0, 0, 80), (0, 0, 150)),
    ),
    "dark-green": (
        ECG_IMAGE_KIT_GRID_RGB["colour4"],
        ((20, 95, 30), (40, 190, 90)),
        ((0, 60, 20), (30, 170, 80)),
    ),
    "random": (((184, 30, 54), (227, 61, 80)),),  # one draw of ecg-image-kit's random mode
}


def random_grid_rgb(rng: np.random.Generator) -> tuple[RGB, RGB]:
    """Draw grid colours as ecg-image-kit's random colour mode does (``--random_grid_color``).

    The major line gets red in [0, 0.8] and green and blue in [0, 0.5]; the minor line adds one
    offset in [0, 0.2] to the major red and to fresh green and blue draws in [0, 0.5]. Both are
    dark, so the 1 mm and 5 mm lines often look alike.

    Parameters
    ----------
    rng : numpy.random.Generator
        Randomness (six uniform draws).

    Returns
    -------
    (major, minor) : tuple of RGB
        8-bit colours, rounded half up as matplotlib prints them.

    Examples
    --------
    >>> major, minor = random_grid_rgb(np.random.default_rng(0))
    >>> major[0] <= minor[0] <= major[0] + 52
    True
    """
    major = rng.uniform(0.0, [0.8, 0.5, 0.5])
    offset = rng.uniform(0.0, 0.2)
    minor = np.array([major[0], rng.uniform(0.0, 0.5), rng.uniform(0.0, 0.5)]) + offset

    def to8(c: np.ndarray) -> RGB:
        r, g, b = (int(np.floor(v * 255.0 + 0.5)) for v in c)
        return (r, g, b)

    return to8(major), to8(minor)


def kelvin_rgb(kelvin: float) -> tuple[float, float, float]:
    """Return the RGB gains (0-1) of a black body at ``kelvin``, as a colour-temperature filter.

    Tanner Helland's fit to Mitchell Charity's black-body table, the table imgaug's
    ``ChangeColorTemperature`` (ecg-image-kit's augmentation) interpolates: within 4 grey levels of
    the paper colours measured on ecg-image-kit pages (2339-19702 K). 6600 K is neutral; lower is
    orange, higher is blue.

    Examples
    --------
    >>> [round(255 * g) for g in kelvin_rgb(6600)]
    [255, 255, 255]
    >>> [round(255 * g) for g in kelvin_rgb(2800)]
    [255, 170, 95]
    """
    t = kelvin / 100.0
    if t < 66.0:
        r = 255.0
        g = 99.4708025861 * np.log(t) - 161.1195681661
        b = 0.0 if t <= 19.0 else 138.5177312231 * np.log(t - 10.0) - 305.0447927307
    else:
        r = 329.698727446 * (t - 60.0) ** -0.1332047592 if t > 66.0 else 255.0
        g = 288.1221695283 * (t - 60.0) ** -0.0755148492 if t > 66.0 else 255.0
        b = 255.0
    red, green, blue = (float(np.clip(v, 0.0, 255.0)) / 255.0 for v in (r, g, b))
    return red, green, blue


def _check_rgb(value: object, name: str) -> None:
    if not (
        isinstance(value, tuple)
        and len(value) == 3
        and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)
    ):
        raise ConfigError(f"{name} must be three integers 0-255, got {value!r}")


def _check_range(value: object, name: str, lo: float, hi: float, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ConfigError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")


def _check_choice(value: object, name: str, choices: tuple[object, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def _check_bool(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")


def _check_rhythm_leads(value: object) -> None:
    if value is None:
        return
    if not (isinstance(value, tuple) and len(value) <= 3 and all(lead in STANDARD_LEADS for lead in value)):
        raise ConfigError(
            f"rhythm_leads must be null or a list of up to 3 of {', '.join(STANDARD_LEADS)}, got {value!r}"
        )


@dataclass(frozen=True)
class Degradation:
    """What happens to a printed page before it becomes an image (all off by default).

    Paper effects are applied on the flat page, then the geometric transform, then lighting and
    the camera or scanner. Every geometric step transforms the masks and boxes too.

    Attributes
    ----------
    creases : int
        Number of fold lines (0-6): a dark ridge and a slight brightness step across each.
    wrinkles : float
        Strength of wrinkle shading, 0 (flat) to 1 (crumpled): shading only, the ink does not move.
    scribbles : int
        Number of handwriting-like pen strokes (0-10), not part of the trace mask.
    rotation_deg : float
        In-plane rotation, counter-clockwise positive, in [-15, 15].
    perspective : float
        Random corner displacement as a fraction of the page's short side, in [0, 0.2].
    scale : float
        Output pixels per page pixel before perspective, in [0.3, 2] (a phone's resolution).
    background : str
        What surrounds the paper where the image shows more than the page: ``"white"`` (scanner lid),
        ``"grey"``, ``"dark"``, ``"wood"``, ``"cloth"``, ``"black"`` (exactly 0, as ecg-image-kit's
        rotation fills the corners).
    background_margin : float
        Extra canvas around the page on each side, as a fraction of the page size, in [0, 0.4].
    uneven_light : float
        Amplitude of a smooth multiplicative illumination field, in [0, 0.6].
    shadow : float
        Darkness of a soft-edged shadow over part of the image, in [0, 0.7].
    blur_sigma_px : float
        Gaussian blur in output pixels, in [0, 4].
    noise_sigma : float
        Gaussian pixel noise in grey levels (0-255 scale), in [0, 30].
    gamma : float
        Tone curve exponent, out = in ** gamma, in [0.4, 2.5].
    sepia : float
        Yellowing of the whole image (old paper, warm light), 0 (none) to 1 (strong).
    bw_threshold : int or None
        If set, binarise to black and white at this luminance (0-255), as fax and B/W scanners do.
    jpeg_quality : int or None
        If set, JPEG-compress at this quality (5-95); pages are then written as ``.jpg``.
    trace_fade : float
        Faded print, in [0, 0.9]: the traces' ink is lightened by up to this fraction, smoothly
        varying over the sheet (a printer short of toner, an aged thermal print). The trace mask
        is unchanged: a faint trace is still trace.
    crop : float
        Fraction of the image's width and height cut from each side and resized back to the full
        size, in [0, 0.05] (ecg-image-kit's ``Crop(percent)``: a zoom about the centre of up to 11 %).
    colour_temperature_k : float or None
        If set, the light's colour temperature in kelvin, 1000-40000 (ecg-image-kit's
        ``ChangeColorTemperature``): below 6600 K the page turns orange, above it blue.
    """

    creases: int = 0
    wrinkles: float = 0.0
    scribbles: int = 0
    rotation_deg: float = 0.0
    perspective: float = 0.0
    scale: float = 1.0
    background: str = "white"
    background_margin: float = 0.0
    uneven_light: float = 0.0
    shadow: float = 0.0
    blur_sigma_px: float = 0.0
    noise_sigma: float = 0.0
    gamma: float = 1.0
    sepia: float = 0.0
    bw_threshold: int | None = None
    jpeg_quality: int | None = None
    trace_fade: float = 0.0
    crop: float = 0.0
    colour_temperature_k: float | None = None

    def __post_init__(self) -> None:
        _check_range(self.creases, "creases", 0, 6)
        if not isinstance(self.creases, int):
            raise ConfigError(f"creases must be an integer, got {self.creases!r}")
        _check_range(self.wrinkles, "wrinkles", 0.0, 1.0)
        _check_range(self.scribbles, "scribbles", 0, 10)
        if not isinstance(self.scribbles, int):
            raise ConfigError(f"scribbles must be an integer, got {self.scribbles!r}")
        _check_range(self.rotation_deg, "rotation_deg", -15.0, 15.0)
        _check_range(self.perspective, "perspective", 0.0, 0.2)
        _check_range(self.scale, "scale", 0.3, 2.0)
        _check_choice(self.background, "background", BACKGROUNDS)
        _check_range(self.background_margin, "background_margin", 0.0, 0.4)
        _check_range(self.uneven_light, "uneven_light", 0.0, 0.6)
        _check_range(self.shadow, "shadow", 0.0, 0.7)
        _check_range(self.blur_sigma_px, "blur_sigma_px", 0.0, 4.0)
        _check_range(self.noise_sigma, "noise_sigma", 0.0, 30.0)
        _check_range(self.gamma, "gamma", 0.4, 2.5)
        _check_range(self.sepia, "sepia", 0.0, 1.0)
        _check_range(self.bw_threshold, "bw_threshold", 1, 254, optional=True)
        _check_range(self.jpeg_quality, "jpeg_quality", 5, 95, optional=True)
        _check_range(self.trace_fade, "trace_fade", 0.0, 0.9)
        _check_range(self.crop, "crop", 0.0, 0.05)
        _check_range(self.colour_temperature_k, "colour_temperature_k", 1000.0, 40000.0, optional=True)
        for name in ("bw_threshold", "jpeg_quality"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, int):
                raise ConfigError(f"{name} must be an integer or null, got {value!r}")

    @property
    def is_geometric(self) -> bool:
        """Whether the page is warped (rotation, perspective, scale or background margin)."""
        return (
            self.rotation_deg != 0.0
            or self.perspective > 0.0
            or self.scale != 1.0
            or self.background_margin > 0.0
            or self.crop > 0.0
        )


@dataclass(frozen=True)
class RenderSettings:
    """Everything that decides how one ECG page is printed and degraded.

    Attributes
    ----------
    layout : str
        Lead layout name or YAML path (see :func:`ecgdig.layouts.load_layout`).
    dpi : int
        Print resolution, 100-300 dots per inch; ``px_per_mm = dpi / 25.4``.
    paper : {"letter", "a4"}
        Paper size.
    orientation : {"landscape", "portrait"}
        Page orientation. The strip shows ``min(10 s, printable width / mm_per_s)`` rounded down
        to 0.5 s (10 s on landscape paper at 25 mm/s, 5 s at 50 mm/s).
    mm_per_s : {25, 50}
        Paper speed in mm/s.
    mm_per_mv : {5, 10, 20}
        Gain in mm/mV.
    grid_colour : str
        Grid colour family, one of :data:`GRID_COLOURS`.
    grid_major_rgb, grid_minor_rgb : tuple of int or None
        Exact line colours; None takes the family's default from :data:`GRID_PALETTES`.
    grid_style : {"lines", "dots", "dotted"}
        ``"lines"``: solid 1 mm and 5 mm lines; ``"dots"``: solid 5 mm lines with a dot at each 1 mm
        crossing (GE style); ``"dotted"``: both line families printed as dotted lines.
    grid_minor : bool
        Whether the 1 mm lines (or dots) are printed.
    grid_major_width_mm, grid_minor_width_mm : float
        Grid line widths in mm (0.05-0.6).
    grid_extent : {"page", "panel"}
        Grid over the whole sheet (ecg-image-kit) or only a box around the traces (most printers).
    paper_rgb : tuple of int
        Paper colour.
    trace_rgb : tuple of int
        Trace (and text) ink colour.
    trace_width_mm : float
        Trace line width in mm (0.08-0.6); ecg-image-kit uses 0.75 pt = 0.265 mm.
    calibration_pulse : bool
        Print a 1 mV, 0.2 s rectangular pulse before each row.
    lead_separators : bool
        Print a short vertical tick at each column boundary.
    marker_style : {"cart", "eik"}
        How pulses and separators look. ``"cart"``: the pulse rises after 0.04 s of baseline and
        is drawn like the trace; separators are 1.5 trace widths by 6 mm. ``"eik"``: as
        ecg-image-kit draws them, the pulse rises at the margin, falls as the signal starts 0.2 s
        later and is 1.5 times as thick; separators are bold bars, 3 trace widths by 7 mm.
    connect_columns : bool
        Join the trace across column boundaries (the signal switches lead under the pen); when
        False each lead is a separate stroke, as ecg-image-kit draws it.
    lead_names : bool
        Print lead names (I, aVR, V1, ...) next to each lead.
    label_position : {"below", "above"}
        Lead name under the start of the lead (ecg-image-kit) or above it.
    header_text : bool
        Print the patient/measurement header.
    header_style : {"eik", "eik-2024", "ge", "minimal"}
        Header layout: ecg-image-kit's three columns (name, age, sex / ID, height / date, weight),
        the July 2024 ecg-image-kit block (ID, age, sex / name / date), a GE-like measurement block,
        or one line.
    footer_text : bool
        Print the speed and gain ("25mm/s 10mm/mV") near the bottom.
    font : {"sans", "sans-bold", "serif", "mono"}
        Typeface for all text (DejaVu Sans is what ecg-image-kit prints).
    font_size_pt : float
        Text size in points (6-16).
    margin_left_mm : float
        Distance from the left paper edge to the start of each row (pulse included), 2-30 mm.
    margin_right_mm : float
        Smallest blank margin right of the strip, 0-30 mm.
    top_margin_mm : float or None
        Height above the first row slot (the header area); None uses ecg-image-kit's rule,
        2 / (rows + 2) of the page height.
    bottom_margin_mm : float
        Height below the last row slot, 0-40 mm.
    baseline_position : float
        Where the baseline sits within its row slot, 0 = top, 1 = bottom (0.3-0.7).
    rhythm_leads : tuple of str or None
        The leads of the full-width rhythm strips, top to bottom (0-3 standard names), replacing
        the layout's own (``("V1",)`` prints a 3x4+1 page with a V1 strip); None keeps the layout's.
    rhythm_raise_mm : float
        How far the rhythm strips' baselines sit above the other rows' position in their slots,
        0-10 mm (ecg-image-kit draws them 3 mm higher); their lead names move with them.
    label_offset_mm : float or None
        Distance from the baseline to the lead name's text baseline, 2-15 mm, below or above it
        per ``label_position``; None: 7 mm below (ecg-image-kit) or 6 mm above.
    page_frame : bool
        Print a thin black frame along the page's edges (the plot frame on ecg-image-kit pages).
    border_mm : float
        Blank paper added around the whole printed page, 0-50 mm (ecg-image-kit's ``pad_inches``:
        25.4 mm); the image grows by twice this and everything on the page moves with it.
    degradation : Degradation
        Paper, geometric and photometric degradations.
    """

    layout: str = "3x4+1"
    dpi: int = 200
    paper: Literal["letter", "a4"] = "letter"
    orientation: Literal["landscape", "portrait"] = "landscape"
    mm_per_s: float = 25.0
    mm_per_mv: float = 10.0
    grid_colour: str = "red"
    grid_major_rgb: RGB | None = None
    grid_minor_rgb: RGB | None = None
    grid_style: Literal["lines", "dots", "dotted"] = "lines"
    grid_minor: bool = True
    grid_major_width_mm: float = 0.176
    grid_minor_width_mm: float = 0.176
    grid_extent: Literal["page", "panel"] = "page"
    paper_rgb: RGB = (255, 255, 255)
    trace_rgb: RGB = (0, 0, 0)
    trace_width_mm: float = 0.265
    calibration_pulse: bool = False
    lead_separators: bool = False
    marker_style: Literal["cart", "eik"] = "cart"
    connect_columns: bool = False
    lead_names: bool = True
    label_position: Literal["below", "above"] = "below"
    header_text: bool = True
    header_style: Literal["eik", "eik-2024", "ge", "minimal"] = "eik"
    footer_text: bool = True
    font: Literal["sans", "sans-bold", "serif", "mono"] = "sans"
    font_size_pt: float = 11.0
    margin_left_mm: float = 10.0
    margin_right_mm: float = 5.0
    top_margin_mm: float | None = None
    bottom_margin_mm: float = 0.0
    baseline_position: float = 0.5
    rhythm_leads: tuple[str, ...] | None = None
    rhythm_raise_mm: float = 0.0
    label_offset_mm: float | None = None
    page_frame: bool = False
    border_mm: float = 0.0
    degradation: Degradation = field(default_factory=Degradation)

    def __post_init__(self) -> None:
        if not isinstance(self.layout, str) or not self.layout:
            raise ConfigError(f"layout must be a layout name or path, got {self.layout!r}")
        if isinstance(self.dpi, bool) or not isinstance(self.dpi, int) or not 100 <= self.dpi <= 300:
            raise ConfigError(f"dpi must be an integer in [100, 300], got {self.dpi!r}")
        _check_choice(self.paper, "paper", tuple(PAPER_SIZES_MM))
        _check_choice(self.orientation, "orientation", ("landscape", "portrait"))
        _check_choice(self.mm_per_s, "mm_per_s", (25, 50))
        _check_choice(self.mm_per_mv, "mm_per_mv", (5, 10, 20))
        _check_choice(self.grid_colour, "grid_colour", GRID_COLOURS)
        for name in ("grid_major_rgb", "grid_minor_rgb"):
            if getattr(self, name) is not None:
                _check_rgb(getattr(self, name), name)
        _check_rgb(self.paper_rgb, "paper_rgb")
        _check_rgb(self.trace_rgb, "trace_rgb")
        _check_choice(self.grid_style, "grid_style", ("lines", "dots", "dotted"))
        _check_range(self.grid_major_width_mm, "grid_major_width_mm", 0.05, 0.6)
        _check_range(self.grid_minor_width_mm, "grid_minor_width_mm", 0.05, 0.6)
        _check_choice(self.grid_extent, "grid_extent", ("page", "panel"))
        _check_range(self.trace_width_mm, "trace_width_mm", 0.08, 0.6)
        for name in (
            "grid_minor",
            "calibration_pulse",
            "lead_separators",
            "connect_columns",
            "lead_names",
            "header_text",
            "footer_text",
            "page_frame",
        ):
            _check_bool(getattr(self, name), name)
        _check_choice(self.label_position, "label_position", ("below", "above"))
        _check_choice(self.marker_style, "marker_style", ("cart", "eik"))
        _check_choice(self.header_style, "header_style", HEADER_STYLES)
        _check_choice(self.font, "font", ("sans", "sans-bold", "serif", "mono"))
        _check_range(self.font_size_pt, "font_size_pt", 6.0, 16.0)
        _check_range(self.margin_left_mm, "margin_left_mm", 2.0, 30.0)
        _check_range(self.margin_right_mm, "margin_right_mm", 0.0, 30.0)
        _check_range(self.top_margin_mm, "top_margin_mm", 0.0, 120.0, optional=True)
        _check_range(self.bottom_margin_mm, "bottom_margin_mm", 0.0, 40.0)
        _check_range(self.baseline_position, "baseline_position", 0.3, 0.7)
        _check_rhythm_leads(self.rhythm_leads)
        _check_range(self.rhythm_raise_mm, "rhythm_raise_mm", 0.0, 10.0)
        _check_range(self.label_offset_mm, "label_offset_mm", 2.0, 15.0, optional=True)
        _check_range(self.border_mm, "border_mm", 0.0, 50.0)
        if not isinstance(self.degradation, Degradation):
            raise ConfigError(f"degradation must be a Degradation, got {type(self.degradation).__name__}")

    @property
    def px_per_mm(self) -> float:
        """Pixels per millimetre of paper on the flat page, ``dpi / 25.4``."""
        return self.dpi / 25.4

    @property
    def grid_rgb(self) -> tuple[RGB, RGB]:
        """The (major, minor) grid colours actually printed."""
        major, minor = GRID_PALETTES[self.grid_colour][0]
        return (self.grid_major_rgb or major, self.grid_minor_rgb or minor)

    @property
    def image_suffix(self) -> str:
        """``".jpg"`` when the page is JPEG-compressed, else ``".png"``."""
        return ".jpg" if self.degradation.jpeg_quality is not None else ".png"

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as JSON-ready nested dicts (tuples become lists)."""
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RenderSettings:
        """Rebuild settings from :meth:`to_dict` output (for example a page's truth JSON).

        Raises
        ------
        ConfigError
            If a key is unknown or a value is invalid.
        """
        page = dict(data)
        degradation = page.pop("degradation", {}) or {}
        page_fields = {f.name for f in dataclasses.fields(cls)}
        deg_fields = {f.name for f in dataclasses.fields(Degradation)}
        unknown = (set(page) - page_fields) | (set(degradation) - deg_fields)
        if unknown:
            raise ConfigError(f"unknown render settings {sorted(unknown)}")
        for name in ("grid_major_rgb", "grid_minor_rgb", "paper_rgb", "trace_rgb", "rhythm_leads"):
            if isinstance(page.get(name), list):
                page[name] = tuple(page[name])
        return cls(**page, degradation=Degradation(**degradation))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
