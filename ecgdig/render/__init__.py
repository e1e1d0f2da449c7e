"""Synthetic ECG pages with exact ground truth: training data, test pages and non-IID sites.

A record is printed on a page (:func:`render_page`) with settings drawn from a site profile
(:func:`load_profile`, :func:`sample_settings`), then optionally creased, photographed or scanned.
Every step keeps the truth exact: the trace mask and per-lead label map follow the ink through every
geometric transform, lead boxes and baselines are transformed with them, and the reference record
is the source signal over the plotted window, NaN where a lead is not plotted, as the PhysioNet
Challenge 2024 hidden references are. :func:`render_to_files` writes pages with their truth files.

Modules: :mod:`~ecgdig.render.settings` (the knobs), :mod:`~ecgdig.render.page` (geometry and
drawing), :mod:`~ecgdig.render.draw` (rasterisation), :mod:`~ecgdig.render.text` (fonts and header
text), :mod:`~ecgdig.render.augment` (degradations), :mod:`~ecgdig.render.profiles` (YAML site
profiles) and :mod:`~ecgdig.render.files` (batch output).
"""

from ecgdig.render.files import find_records, page_rng, render_to_files, write_rendered_page
from ecgdig.render.page import (
    PULSE_HEIGHT_MV,
    PULSE_WIDTH_S,
    WINDOW_S,
    LeadBox,
    PageGeometry,
    RenderedPage,
    page_geometry,
    render_page,
)
from ecgdig.render.profiles import SiteProfile, available_profiles, load_profile, sample_settings
from ecgdig.render.settings import (
    ECG_IMAGE_KIT_GRID_RGB,
    GRID_COLOURS,
    GRID_PALETTES,
    Degradation,
    RenderSettings,
    kelvin_rgb,
    random_grid_rgb,
)

__all__ = [
    "ECG_IMAGE_KIT_GRID_RGB",
    "GRID_COLOURS",
    "GRID_PALETTES",
    "PULSE_HEIGHT_MV",
    "PULSE_WIDTH_S",
    "WINDOW_S",
    "Degradation",
    "LeadBox",
    "PageGeometry",
    "RenderSettings",
    "RenderedPage",
    "SiteProfile",
    "available_profiles",
    "find_records",
    "kelvin_rgb",
    "load_profile",
    "page_geometry",
    "page_rng",
    "random_grid_rgb",
    "render_page",
    "render_to_files",
    "sample_settings",
    "write_rendered_page",
]
