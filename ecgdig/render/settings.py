"""Render settings: every knob of a synthetic page, as frozen, validated dataclasses.

:class:`RenderSettings` fixes what is printed (layout, scale, grid, text, calibration pulse) and
:class:`Degradation` what happens to the paper afterwards (creases, scanning, photographing). A site
profile (:mod:`ecgdig.render.profiles`) is a distribution over these fields; one draw of it is one
``RenderSettings``. Lengths on paper are in millimetres, pixel quantities say ``px``.

Default values reproduce the look of an ecg-image-kit page (the PhysioNet Challenge 2024 generator):
US-letter landscape at 200 dpi, red grid with 0.5 pt lines, 0.75 pt trace, 11 pt DejaVu Sans text.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from ecgdig.errors import ConfigError

__all__ = [
    "GRID_COLOURS",
    "GRID_PALETTES",
    "PAPER_SIZES_MM",
    "Degradation",
    "RenderSettings",
]

#: Paper sizes as (short side, long side) in mm.
PAPER_SIZES_MM: dict[str, tuple[float, float]] = {"letter": (215.9, 279.4), "a4": (210.0, 297.0)}

#: Grid colour families. "none" prints no grid.
GRID_COLOURS: tuple[str, ...] = ("red", "pink", "orange", "green", "blue", "grey", "none")

RGB = tuple[int, int, int]

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
}


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
        ``"grey"``, ``"dark"``, ``"wood"``, ``"cloth"``.
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
        _check_choice(self.background, "background", ("white", "grey", "dark", "wood", "cloth"))
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
    connect_columns : bool
        Join the trace across column boundaries (the signal switches lead under the pen); when
        False each lead is a separate stroke, as ecg-image-kit draws it.
    lead_names : bool
        Print lead names (I, aVR, V1, ...) next to each lead.
    label_position : {"below", "above"}
        Lead name under the start of the lead (ecg-image-kit) or above it.
    header_text : bool
        Print the patient/measurement header.
    header_style : {"eik", "ge", "minimal"}
        Header layout: ecg-image-kit's three columns, a GE-like measurement block, or one line.
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
    connect_columns: bool = False
    lead_names: bool = True
    label_position: Literal["below", "above"] = "below"
    header_text: bool = True
    header_style: Literal["eik", "ge", "minimal"] = "eik"
    footer_text: bool = True
    font: Literal["sans", "sans-bold", "serif", "mono"] = "sans"
    font_size_pt: float = 11.0
    margin_left_mm: float = 10.0
    margin_right_mm: float = 5.0
    top_margin_mm: float | None = None
    bottom_margin_mm: float = 0.0
    baseline_position: float = 0.5
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
        ):
            _check_bool(getattr(self, name), name)
        _check_choice(self.label_position, "label_position", ("below", "above"))
        _check_choice(self.header_style, "header_style", ("eik", "ge", "minimal"))
        _check_choice(self.font, "font", ("sans", "sans-bold", "serif", "mono"))
        _check_range(self.font_size_pt, "font_size_pt", 6.0, 16.0)
        _check_range(self.margin_left_mm, "margin_left_mm", 2.0, 30.0)
        _check_range(self.margin_right_mm, "margin_right_mm", 0.0, 30.0)
        _check_range(self.top_margin_mm, "top_margin_mm", 0.0, 120.0, optional=True)
        _check_range(self.bottom_margin_mm, "bottom_margin_mm", 0.0, 40.0)
        _check_range(self.baseline_position, "baseline_position", 0.3, 0.7)
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
        for name in ("grid_major_rgb", "grid_minor_rgb", "paper_rgb", "trace_rgb"):
            if isinstance(page.get(name), list):
                page[name] = tuple(page[name])
        return cls(**page, degradation=Degradation(**degradation))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
