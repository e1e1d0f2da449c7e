"""Lead-layout templates: which lead is printed where on a page.

Templates are YAML files in this folder (data, not code), so a new print format needs no code change.
A template has ``rows`` (each a list of lead names shown side by side, splitting the strip evenly)
and ``rhythm`` (leads shown for the whole duration on rows of their own, below the others). Column
``c`` of ``k`` covers ``[c, c+1) / k`` of the strip's width; ``column_times`` says which time it
shows: ``sequential`` (the default, what carts print: the same fraction of the record, so the page
reads as one time axis) or ``restart`` (every column shows the record from time zero, as
ecg-image-kit's two-column pages do). ``guess_rank`` orders the templates that print the same
number of strips when the digitizer has to guess: 0 is the usual print, the others are tried too
(see :func:`layouts_by_strip_count`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from ecgdig.errors import ConfigError
from ecgdig.leads import STANDARD_LEADS, canonical_lead_name

__all__ = ["LayoutTemplate", "LeadPanel", "available_layouts", "layouts_by_strip_count", "load_layout"]


@dataclass(frozen=True)
class LeadPanel:
    """One lead as printed on one row of a page.

    Attributes
    ----------
    lead : str
        Standard lead name.
    row : int
        Row index from the top, 0-based (rhythm rows follow the lead rows).
    column : int
        Column index within the row, 0-based.
    n_columns : int
        Number of leads sharing the row.
    start_fraction, end_fraction : float
        Part of the row's width the lead occupies, in [0, 1] (as a fraction of the strip's duration).
    shift_fraction : float
        How far the record time shown lags the strip position, as a fraction of the duration:
        0 when the page reads as one time axis, ``start_fraction`` when every column restarts at
        time zero.
    """

    lead: str
    row: int
    column: int
    n_columns: int
    start_fraction: float
    end_fraction: float
    shift_fraction: float = 0.0

    def time_window_s(self, duration_s: float) -> tuple[float, float]:
        """Return the strip times ``(start_s, end_s)`` the lead occupies on a strip of ``duration_s``."""
        return self.start_fraction * duration_s, self.end_fraction * duration_s

    def record_window_s(self, duration_s: float) -> tuple[float, float]:
        """Return the record times ``(start_s, end_s)`` the lead shows (strip time minus the shift)."""
        shift = self.shift_fraction * duration_s
        start, end = self.time_window_s(duration_s)
        return start - shift, end - shift


@dataclass(frozen=True)
class LayoutTemplate:
    """A page layout: rows of leads plus rhythm strips.

    Attributes
    ----------
    name : str
        Template name, e.g. ``"3x4+1"``.
    rows : tuple of tuple of str
        Lead names per (non-rhythm) row, left to right.
    rhythm : tuple of str
        Rhythm-strip leads, top to bottom, each on its own full-width row.
    description : str
        One line for humans.
    column_times : {"sequential", "restart"}
        Whether column ``c`` shows the ``c``-th part of the record or the record from time zero.
    guess_rank : int
        Order among the templates with as many strips when guessing (0 = the usual print).
    """

    name: str
    rows: tuple[tuple[str, ...], ...]
    rhythm: tuple[str, ...]
    description: str = ""
    column_times: str = "sequential"
    guess_rank: int = 0

    @property
    def n_rows(self) -> int:
        """Total number of printed rows, rhythm strips included."""
        return len(self.rows) + len(self.rhythm)

    def panels(self) -> list[LeadPanel]:
        """Return every printed lead panel, row by row, left to right."""
        out: list[LeadPanel] = []
        for row_index, row in enumerate(self.rows):
            k = len(row)
            restart = self.column_times == "restart"
            out.extend(
                LeadPanel(lead, row_index, c, k, c / k, (c + 1) / k, c / k if restart else 0.0)
                for c, lead in enumerate(row)
            )
        for offset, lead in enumerate(self.rhythm):
            out.append(LeadPanel(lead, len(self.rows) + offset, 0, 1, 0.0, 1.0))
        return out

    @property
    def leads(self) -> tuple[str, ...]:
        """Distinct leads shown, in standard order."""
        shown = {p.lead for p in self.panels()}
        return tuple(name for name in STANDARD_LEADS if name in shown)


def _parse_template(data: object, source: str) -> LayoutTemplate:
    if not isinstance(data, dict):
        raise ConfigError("layout file must be a mapping with 'name', 'rows' and 'rhythm'", source)
    unknown = set(data) - {"name", "description", "rows", "rhythm", "column_times", "guess_rank"}
    if unknown:
        raise ConfigError(f"unknown layout keys {sorted(unknown)}", source)
    rows_raw = data.get("rows")
    rhythm_raw = data.get("rhythm") or []
    if not isinstance(rows_raw, list) or not all(isinstance(r, list) and r for r in rows_raw):
        raise ConfigError("'rows' must be a list of non-empty lists of lead names", source)
    if not isinstance(rhythm_raw, list):
        raise ConfigError("'rhythm' must be a list of lead names", source)
    rows = tuple(tuple(canonical_lead_name(str(lead)) for lead in row) for row in rows_raw)
    rhythm = tuple(canonical_lead_name(str(lead)) for lead in rhythm_raw)
    for lead in [lead for row in rows for lead in row] + list(rhythm):
        if lead not in STANDARD_LEADS:
            raise ConfigError(f"unknown lead {lead!r} (expected one of {', '.join(STANDARD_LEADS)})", source)
    if not rows and not rhythm:
        raise ConfigError("layout shows no lead", source)
    column_times = str(data.get("column_times", "sequential"))
    if column_times not in ("sequential", "restart"):
        raise ConfigError(f"column_times must be 'sequential' or 'restart', not {column_times!r}", source)
    guess_rank = data.get("guess_rank", 0)
    if not isinstance(guess_rank, int) or isinstance(guess_rank, bool) or guess_rank < 0:
        raise ConfigError(f"guess_rank must be a whole number >= 0, not {guess_rank!r}", source)
    return LayoutTemplate(
        name=str(data.get("name", Path(source).stem)),
        rows=rows,
        rhythm=rhythm,
        description=str(data.get("description", "")),
        column_times=column_times,
        guess_rank=guess_rank,
    )


def available_layouts() -> list[str]:
    """Return the names of the layout templates shipped with ecgdig."""
    folder = resources.files(__name__)
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_layout(name_or_path: str | Path) -> LayoutTemplate:
    """Load a layout template by shipped name (``"3x4+1"``) or from a YAML file path.

    Parameters
    ----------
    name_or_path : str or Path
        A shipped template name (see :func:`available_layouts`) or a path to a YAML file.

    Returns
    -------
    LayoutTemplate
        The validated template.

    Raises
    ------
    ConfigError
        If the name is unknown or the file is invalid.

    Examples
    --------
    >>> load_layout("3x4+1").n_rows
    4
    """
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read layout: {exc.strerror}", path) from None
        source = str(path)
    else:
        names = available_layouts()
        if str(name_or_path) not in names:
            raise ConfigError(f"unknown layout {name_or_path!r}; choose one of {', '.join(names)}")
        text = resources.files(__name__).joinpath(f"{name_or_path}.yaml").read_text(encoding="utf-8")
        source = f"{name_or_path}.yaml"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {str(exc).splitlines()[0]}", source) from None
    return _parse_template(data, source)


@functools.cache
def layouts_by_strip_count() -> dict[int, tuple[str, ...]]:
    """Return the shipped layouts grouped by how many strips they print, the usual one first.

    Built from the template files (``guess_rank``, then name), so a new print format is one
    YAML file.

    Returns
    -------
    dict of int to tuple of str
        Strip count -> layout names.

    Examples
    --------
    >>> layouts_by_strip_count()[4]
    ('3x4+1',)
    """
    grouped: dict[int, list[LayoutTemplate]] = {}
    for name in available_layouts():
        template = load_layout(name)
        grouped.setdefault(template.n_rows, []).append(template)
    return {
        n: tuple(t.name for t in sorted(group, key=lambda t: (t.guess_rank, t.name)))
        for n, group in sorted(grouped.items())
    }
