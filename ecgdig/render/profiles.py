"""Site profiles: YAML distributions over :class:`RenderSettings`, checked against a schema at load.

A profile describes how one kind of site prints and captures its ECGs (a GE cart with an orange
grid scanned at 200 dpi; pink pages photographed on a ward; ...). Training on pages drawn from
several profiles gives non-IID federated sites. Shipped profiles live in ``ecgdig/profiles/``.

Schema (see ``docs/render.md``)::

    name: scanner                  # optional; defaults to the file stem
    description: one line
    colour_jitter: 6               # optional: +- grey levels added to sampled grid colours
    page:                          # any RenderSettings field except degradation
      layout: {choice: {"3x4+1": 6, "6x2": 1}}   # weighted choice (a list: equal weights)
      paper_rgb: {choice: [[255, 255, 255], [245, 240, 228]], weights: [3, 1]}
      dpi: {int: [150, 300]}                      # integer, inclusive
      trace_width_mm: {uniform: [0.2, 0.35]}      # float
      grid_colour: red                            # constant
    degradation:                   # any Degradation field
      rotation_deg: {normal: [0, 1.2], min: -3, max: 3}
      jpeg_quality: {prob: 0.7, then: {int: [60, 95]}, else: null}

Every possible value (choices, range ends, the bounds of a normal) is validated when the profile
is loaded, so a bad profile fails at once with a :class:`~ecgdig.errors.ConfigError` naming the
file and the field. When a profile leaves ``grid_major_rgb`` / ``grid_minor_rgb`` unset, each draw
picks one of the colour family's realistic variants (:data:`GRID_PALETTES`), or for the family
``random`` draws ecg-image-kit's random colours (:func:`~ecgdig.render.settings.random_grid_rgb`).
A list is a value only as an RGB triple or, for ``rhythm_leads``, a list of lead names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ecgdig.errors import ConfigError
from ecgdig.layouts import load_layout
from ecgdig.render.settings import GRID_PALETTES, Degradation, RenderSettings, random_grid_rgb

__all__ = ["SiteProfile", "Spec", "available_profiles", "load_profile", "sample_settings"]

_PAGE_FIELDS = tuple(f.name for f in dataclasses.fields(RenderSettings) if f.name != "degradation")
_DEG_FIELDS = tuple(f.name for f in dataclasses.fields(Degradation))
_RGB_FIELDS = {"grid_major_rgb", "grid_minor_rgb", "paper_rgb", "trace_rgb"}
_SPEC_KEYS = {"choice", "uniform", "int", "normal", "prob"}


@dataclass(frozen=True)
class Spec:
    """A distribution over one setting's value.

    Attributes
    ----------
    kind : {"const", "choice", "uniform", "int", "normal", "prob"}
        Distribution family.
    args : tuple
        ``const``: (value,); ``choice``: (values, weights); ``uniform`` / ``int``: (lo, hi);
        ``normal``: (mean, sd, lo, hi); ``prob``: (p, then_spec, else_spec).
    """

    kind: str
    args: tuple[Any, ...]

    def sample(self, rng: np.random.Generator) -> Any:
        """Draw one value."""
        if self.kind == "const":
            return self.args[0]
        if self.kind == "choice":
            values, weights = self.args
            return values[int(rng.choice(len(values), p=weights))]
        if self.kind == "uniform":
            return float(rng.uniform(self.args[0], self.args[1]))
        if self.kind == "int":
            return int(rng.integers(self.args[0], self.args[1] + 1))
        if self.kind == "normal":
            mean, sd, lo, hi = self.args
            return float(np.clip(rng.normal(mean, sd), lo, hi))
        p, then, other = self.args
        return then.sample(rng) if rng.random() < p else other.sample(rng)

    def extremes(self) -> list[Any]:
        """Every value a draw can take at the edges of its range (for validation)."""
        if self.kind == "const":
            return [self.args[0]]
        if self.kind == "choice":
            return list(self.args[0])
        if self.kind == "uniform":
            return [float(self.args[0]), float(self.args[1])]
        if self.kind == "int":
            return [int(self.args[0]), int(self.args[1])]
        if self.kind == "normal":
            return [float(self.args[2]), float(self.args[3])]
        return self.args[1].extremes() + self.args[2].extremes()


@dataclass(frozen=True)
class SiteProfile:
    """A named distribution over render settings.

    Attributes
    ----------
    name : str
        Profile name.
    description : str
        One line for humans.
    source : str
        The file it was loaded from.
    page : mapping of str to Spec
        Distributions of :class:`RenderSettings` fields (unlisted fields keep their defaults).
    degradation : mapping of str to Spec
        Distributions of :class:`Degradation` fields.
    colour_jitter : float
        Grey levels of uniform jitter added to sampled grid colours.
    """

    name: str
    description: str
    source: str
    page: Mapping[str, Spec]
    degradation: Mapping[str, Spec]
    colour_jitter: float = 0.0


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _list_value_ok(value: list[Any], where: str) -> bool:
    """Whether a YAML list is a value rather than a mistaken list of options."""
    if where.endswith(".rhythm_leads"):
        return all(isinstance(v, str) for v in value)
    return len(value) == 3 and all(_number(v) for v in value)


def _freeze(value: Any) -> Any:
    """YAML lists (RGB triples) become tuples so settings stay hashable and comparable."""
    return tuple(value) if isinstance(value, list) else value


def _parse_spec(raw: object, where: str, source: str) -> Spec:
    if not isinstance(raw, dict):
        if isinstance(raw, list) and not _list_value_ok(raw, where):
            raise ConfigError(
                f"{where}: a list is only allowed as an RGB triple (or, for rhythm_leads, lead "
                "names); use {choice: [...]}",
                source,
            )
        return Spec("const", (_freeze(raw),))
    keys = set(raw)
    kinds = keys & _SPEC_KEYS
    if len(kinds) != 1:
        raise ConfigError(
            f"{where}: a distribution needs exactly one of {sorted(_SPEC_KEYS)}, got {sorted(keys)}", source
        )
    kind = kinds.pop()
    allowed = {
        "normal": {"normal", "min", "max"},
        "prob": {"prob", "then", "else"},
        "choice": {"choice", "weights"},
    }.get(kind, {kind})
    if keys - allowed:
        raise ConfigError(f"{where}: unexpected keys {sorted(keys - allowed)} for '{kind}'", source)
    arg = raw[kind]
    if kind == "choice":
        if isinstance(arg, list) and arg:
            values, weights = [_freeze(v) for v in arg], raw.get("weights", [1.0] * len(arg))
        elif isinstance(arg, dict) and arg and "weights" not in raw:
            values, weights = [_freeze(v) for v in arg], list(arg.values())
        else:
            raise ConfigError(
                f"{where}: 'choice' needs a non-empty list (with optional 'weights') or a mapping "
                "value: weight",
                source,
            )
        if not (
            isinstance(weights, list)
            and len(weights) == len(values)
            and all(_number(w) and w >= 0 for w in weights)
            and sum(weights) > 0
        ):
            raise ConfigError(
                f"{where}: choice weights must be {len(values)} non-negative numbers, not all 0", source
            )
        total = float(sum(weights))
        return Spec("choice", (tuple(values), tuple(float(w) / total for w in weights)))
    if kind in {"uniform", "int"}:
        if not (
            isinstance(arg, list) and len(arg) == 2 and all(_number(v) for v in arg) and arg[0] <= arg[1]
        ):
            raise ConfigError(f"{where}: '{kind}' needs [low, high] with low <= high, got {arg!r}", source)
        if kind == "int" and not all(isinstance(v, int) for v in arg):
            raise ConfigError(f"{where}: 'int' bounds must be integers, got {arg!r}", source)
        return Spec(kind, (arg[0], arg[1]))
    if kind == "normal":
        if not (isinstance(arg, list) and len(arg) == 2 and all(_number(v) for v in arg) and arg[1] >= 0):
            raise ConfigError(f"{where}: 'normal' needs [mean, sd] with sd >= 0, got {arg!r}", source)
        lo, hi = raw.get("min"), raw.get("max")
        if not (_number(lo) and _number(hi) and lo <= hi):  # type: ignore[operator]
            raise ConfigError(f"{where}: 'normal' needs numeric 'min' and 'max' bounds", source)
        return Spec("normal", (float(arg[0]), float(arg[1]), float(lo), float(hi)))  # type: ignore[arg-type]
    if not (_number(arg) and 0.0 <= arg <= 1.0):  # prob
        raise ConfigError(f"{where}: 'prob' must be a number in [0, 1], got {arg!r}", source)
    if "then" not in raw:
        raise ConfigError(f"{where}: 'prob' needs a 'then' value", source)
    then = _parse_spec(raw["then"], where, source)
    other = _parse_spec(raw.get("else"), where, source)
    return Spec("prob", (float(arg), then, other))  # type: ignore[arg-type]


def _parse_section(raw: object, fields: tuple[str, ...], section: str, source: str) -> dict[str, Spec]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"'{section}' must be a mapping of setting: value", source)
    unknown = set(raw) - set(fields)
    if unknown:
        raise ConfigError(
            f"unknown {section} settings {sorted(map(str, unknown))}; known: {', '.join(fields)}", source
        )
    # Keep declaration order so sampling draws in a fixed order whatever the YAML order.
    return {name: _parse_spec(raw[name], f"{section}.{name}", source) for name in fields if name in raw}


def _validate(profile: SiteProfile) -> None:
    """Check every extreme value of every spec against the settings' own validation."""
    base = RenderSettings()
    for name, spec in profile.page.items():
        for value in spec.extremes():
            try:
                dataclasses.replace(base, **{name: value})
                if name == "layout":
                    load_layout(value)
            except ConfigError as exc:
                raise ConfigError(f"page.{name}: {exc.reason}", profile.source) from None
            except TypeError as exc:
                raise ConfigError(f"page.{name}: invalid value {value!r} ({exc})", profile.source) from None
    for name, spec in profile.degradation.items():
        for value in spec.extremes():
            try:
                Degradation(**{name: value})
            except ConfigError as exc:
                raise ConfigError(f"degradation.{name}: {exc.reason}", profile.source) from None
            except TypeError as exc:
                raise ConfigError(
                    f"degradation.{name}: invalid value {value!r} ({exc})", profile.source
                ) from None


def _parse_profile(data: object, source: str, default_name: str) -> SiteProfile:
    if not isinstance(data, dict):
        raise ConfigError("a profile must be a mapping with 'page' and/or 'degradation'", source)
    unknown = set(data) - {"name", "description", "colour_jitter", "page", "degradation"}
    if unknown:
        raise ConfigError(f"unknown profile keys {sorted(map(str, unknown))}", source)
    jitter = data.get("colour_jitter", 0)
    if not _number(jitter) or not 0 <= jitter <= 40:
        raise ConfigError(f"colour_jitter must be a number in [0, 40], got {jitter!r}", source)
    profile = SiteProfile(
        name=str(data.get("name", default_name)),
        description=str(data.get("description", "")),
        source=source,
        page=_parse_section(data.get("page"), _PAGE_FIELDS, "page", source),
        degradation=_parse_section(data.get("degradation"), _DEG_FIELDS, "degradation", source),
        colour_jitter=float(jitter),
    )
    _validate(profile)
    return profile


def _profiles_folder() -> Any:
    return resources.files("ecgdig").joinpath("profiles")


def available_profiles() -> list[str]:
    """Return the names of the profiles shipped with ecgdig.

    Examples
    --------
    >>> "clean" in available_profiles()
    True
    """
    return sorted(
        p.name.removesuffix(".yaml") for p in _profiles_folder().iterdir() if p.name.endswith(".yaml")
    )


def load_profile(name_or_path: str | Path) -> SiteProfile:
    """Load a site profile by shipped name (``"scanner"``) or from a YAML file path.

    Parameters
    ----------
    name_or_path : str or Path
        A name from :func:`available_profiles` or a path to a ``.yaml`` file.

    Returns
    -------
    SiteProfile
        The validated profile.

    Raises
    ------
    ConfigError
        If the name is unknown, the file unreadable or not valid YAML, or the profile breaks the
        schema; the message names the file.

    Examples
    --------
    >>> load_profile("clean").page["dpi"].sample(None)
    200
    """
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read profile: {exc.strerror}", path) from None
        source, stem = str(path), path.stem
    else:
        names = available_profiles()
        if str(name_or_path) not in names:
            raise ConfigError(
                f"unknown profile {name_or_path!r}; choose one of {', '.join(names)} or give a path"
            )
        resource = _profiles_folder().joinpath(f"{name_or_path}.yaml")
        text, source, stem = resource.read_text(encoding="utf-8"), str(resource), str(name_or_path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise ConfigError(f"invalid YAML{where}: {problem}", source) from None
    return _parse_profile(data, source, stem)


def sample_settings(profile: SiteProfile, rng: np.random.Generator | int | None = None) -> RenderSettings:
    """Draw one :class:`RenderSettings` from a profile's distribution.

    Parameters
    ----------
    profile : SiteProfile
        The distribution.
    rng : numpy.random.Generator or int or None
        Randomness; the same generator state always gives the same settings.

    Returns
    -------
    RenderSettings

    Raises
    ------
    ConfigError
        If the drawn combination is invalid (single values are checked at load time).

    Examples
    --------
    >>> s = sample_settings(load_profile("scanner"), rng=3)
    >>> 150 <= s.dpi <= 300
    True
    """
    rng = np.random.default_rng(rng)
    page = {name: spec.sample(rng) for name, spec in profile.page.items()}
    degradation = {name: spec.sample(rng) for name, spec in profile.degradation.items()}
    family = page.get("grid_colour", RenderSettings.grid_colour)
    variants = GRID_PALETTES[family]
    major, minor = variants[int(rng.integers(0, len(variants)))]
    if family == "random":
        major, minor = random_grid_rgb(rng)
    jitter = (
        rng.uniform(-profile.colour_jitter, profile.colour_jitter, 6)
        if profile.colour_jitter
        else np.zeros(6)
    )

    def jittered(rgb: tuple[int, int, int], offset: np.ndarray) -> tuple[int, int, int]:
        r, g, b = (int(np.clip(round(c + o), 0, 255)) for c, o in zip(rgb, offset, strict=True))
        return (r, g, b)

    page.setdefault("grid_major_rgb", jittered(major, jitter[:3]))
    page.setdefault("grid_minor_rgb", jittered(minor, jitter[3:]))
    try:
        return RenderSettings(**page, degradation=Degradation(**degradation))
    except ConfigError as exc:
        raise ConfigError(f"drawn settings are invalid: {exc.reason}", profile.source) from None
