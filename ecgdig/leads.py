"""Standard 12-lead names, case-insensitive matching (as the Challenge scorer does it), lead relations."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["STANDARD_LEADS", "canonical_lead_name", "limb_lead_inconsistency"]

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


#: Limb-lead identities that hold at every instant (Einthoven; Goldberger's augmented leads):
#: each tuple of (lead, coefficient) sums to zero.
LIMB_LEAD_IDENTITIES: tuple[tuple[tuple[str, float], ...], ...] = (
    (("I", 1.0), ("II", -1.0), ("III", 1.0)),
    (("aVR", 1.0), ("aVL", 1.0), ("aVF", 1.0)),
    (("aVR", 1.0), ("I", 0.5), ("II", 0.5)),
    (("aVF", 1.0), ("II", -0.5), ("III", -0.5)),
)


def limb_lead_inconsistency(
    signal_mv: np.ndarray, lead_names: Sequence[str], *, min_samples: int = 250
) -> float | None:
    """Measure how far a record's limb leads are from the identities they must obey.

    I - II + III = 0 and aVR + aVL + aVF = 0 at every instant (and aVR = -(I + II) / 2,
    aVF = (II + III) / 2), so leads read from the right places on a page satisfy them up to
    digitization error, whereas leads taken from the wrong strips or time windows do not. This is
    what tells a 6x2 page from a 3x4+3 page: both have six strips.

    Parameters
    ----------
    signal_mv : (samples, leads) ndarray of float
        The record, NaN where a lead is not shown.
    lead_names : sequence of str
        Names of the columns of ``signal_mv``.
    min_samples : int, optional
        Shortest common stretch over which an identity is checked.

    Returns
    -------
    float or None
        Mean over the checkable identities of residual energy over the energy of its terms (0 for
        exact leads, about 1 for unrelated ones), or None if no identity could be checked.
    """
    index = {canonical_lead_name(n): i for i, n in enumerate(lead_names)}
    ratios: list[float] = []
    for identity in LIMB_LEAD_IDENTITIES:
        if any(lead not in index for lead, _ in identity):
            continue
        terms = np.stack([coef * signal_mv[:, index[lead]] for lead, coef in identity], axis=1)
        common = np.all(np.isfinite(terms), axis=1)
        if np.count_nonzero(common) < min_samples:
            continue
        terms = terms[common]
        # Each strip has its own baseline offset on paper; identities hold for the deflections.
        terms = terms - np.median(terms, axis=0)
        energy = float(np.sum(terms**2))
        if energy <= 0.0:
            continue
        ratios.append(float(np.sum(np.sum(terms, axis=1) ** 2)) / energy)
    return float(np.mean(ratios)) if ratios else None
