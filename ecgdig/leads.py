"""Standard 12-lead names and case-insensitive matching, as the Challenge scorer does it."""

from __future__ import annotations

__all__ = ["STANDARD_LEADS", "canonical_lead_name"]

STANDARD_LEADS: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
)  # fmt: skip

_BY_LOWER = {name.lower(): name for name in STANDARD_LEADS}


def canonical_lead_name(name: str) -> str:
    """Return the standard spelling of a lead name, matched case-insensitively.

    Parameters
    ----------
    name : str
        A lead name as a source spells it (``"AVR"``, ``"avr"``, ``"v1"``).

    Returns
    -------
    str
        The standard spelling (``"aVR"``, ``"V1"``), or ``name`` stripped if it is not one of the
        twelve standard leads.

    Examples
    --------
    >>> canonical_lead_name("AVR")
    'aVR'
    >>> canonical_lead_name("vx")
    'vx'
    """
    stripped = name.strip()
    return _BY_LOWER.get(stripped.lower(), stripped)
