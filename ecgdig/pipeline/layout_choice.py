"""Layout choice: which of the templates with the page's strip count, and which lead each rhythm strip is.

The strip count narrows the layout to a few templates (six strips: 3x4+3, 6x2 or 6x1; thirteen: a
cart's 12x1 or ecg-image-kit's order). The page itself then tells them apart, by three kinds of
evidence, strongest first:

1. Printed lead labels (:mod:`ecgdig.pipeline.labels`), where the page has them.
2. The rhythm strip: it shows a lead that is also printed in a panel, and the same stretch of a lead
   read twice off one page agrees to within digitization error, whereas another lead does not. A
   template that puts the rhythm strip's lead where the page shows something else is wrong; and a
   rhythm strip that matches another lead's panel better than the template's lead is that lead
   (ecg-image-kit prints V1 or V5 rhythm strips under a 3x4 block).
3. The limb-lead identities (I - II + III = 0, aVR + aVL + aVF = 0), which hold only for leads read
   from the right places.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ecgdig.layouts import load_layout
from ecgdig.leads import limb_lead_inconsistency
from ecgdig.pipeline.layout import attach_lead_separators, infer_layout, layouts_for_row_count
from ecgdig.pipeline.vectorize import PanelSignal, VectorizedLeads, panel_signals, traces_to_record
from ecgdig.types import PageLayout, RowTrace

__all__ = ["LayoutEvidence", "choose_layout", "panel_agreement", "rhythm_agreement"]

#: An alternative layout replaces the guessed one when its limb-lead residual is below this
#: fraction of the guess's. On the 12 six-strip scanner and phone pages the right reading's
#: residual was at most 0.64 of the wrong one's (0.55 against 0.86 on a blurred 6x2 page); with
#: half, that page was read as 3x4+3 (1.0 dB instead of 10.9 dB).
_LAYOUT_SWITCH_RATIO = 0.75
#: One stretch of a lead read twice agrees at least this well (1 - residual energy / energy);
#: I and II, the most alike distinct leads, agree at 0.5-0.8 on the pages measured.
_SAME_LEAD_AGREEMENT = 0.85
#: A rhythm strip is renamed only if another panel agrees this much better than its template lead.
_RHYTHM_RENAME_MARGIN = 0.1
#: Another layout wins on its rhythm strip when the strip agrees at least this well with the lead
#: the layout puts elsewhere, and this much better than under the guessed layout (a 12x1 page in
#: ecg-image-kit's order: 0.83 against -0.84).
_RHYTHM_SUPPORT = 0.6
_RHYTHM_SWITCH_MARGIN = 0.5
#: Shortest overlap (samples at the output rate) compared.
_MIN_OVERLAP_SAMPLES = 250
#: Label evidence decides when one layout has at least this many more agreeing labels (matches
#: minus contradictions) than the others.
_LABEL_MARGIN = 2


@dataclass(frozen=True)
class LayoutEvidence:
    """What the page says about one candidate layout.

    Attributes
    ----------
    name : str
        Template name.
    labels : int or None
        Printed labels where the layout expects them minus labels that contradict it (None when
        no label was read).
    rhythm : float or None
        Mean agreement of each rhythm strip with its template lead's panel (None without rhythm
        strips).
    limb_residual : float or None
        :func:`ecgdig.leads.limb_lead_inconsistency` of the record read this way.
    """

    name: str
    labels: int | None
    rhythm: float | None
    limb_residual: float | None


def panel_agreement(a: PanelSignal, b: PanelSignal) -> float | None:
    """Return how well two panels agree where they show the same record times.

    ``1 - sum((a - b)^2) / sum(a^2)`` after each is centred on its median over the overlap: 1 for
    one lead read twice, about 0 or below for unrelated leads. None if they overlap by fewer than
    ``_MIN_OVERLAP_SAMPLES`` samples with trace in both.
    """
    start, stop = max(a.start, b.start), min(a.stop, b.stop)
    if stop - start < _MIN_OVERLAP_SAMPLES:
        return None
    x = a.mv[start - a.start : stop - a.start]
    y = b.mv[start - b.start : stop - b.start]
    both = np.isfinite(x) & np.isfinite(y)
    if np.count_nonzero(both) < _MIN_OVERLAP_SAMPLES:
        return None
    x = x[both] - np.median(x[both])
    y = y[both] - np.median(y[both])
    energy = float(np.sum(x**2))
    if energy <= 0.0:
        return None
    return 1.0 - float(np.sum((x - y) ** 2)) / energy


def _rhythm_rows(layout: PageLayout) -> list[int]:
    """Return the rhythm strips: strips that repeat, alone and lower down, a lead shown elsewhere.

    A strip holding one lead that another strip also shows is a rhythm strip, unless a strip
    further down holds that lead alone too (on a 12x1 page with a lead II rhythm strip, the
    bottom II strip is the rhythm strip, the eighth is a row of the block).
    """
    leads_by_row: dict[int, list[str]] = {}
    for lead, row, *_ in layout.panels:
        leads_by_row.setdefault(row, []).append(lead)
    single = {row: leads[0] for row, leads in leads_by_row.items() if len(leads) == 1}
    out = []
    for row, lead in single.items():
        elsewhere = any(lead in leads for r, leads in leads_by_row.items() if r != row)
        lower_alone = any(r > row and other == lead for r, other in single.items())
        if elsewhere and not lower_alone:
            out.append(row)
    return sorted(out)


def rhythm_agreement(panels: Sequence[PanelSignal], layout: PageLayout) -> dict[int, dict[str, float]]:
    """For each rhythm strip, how well it agrees with every other strip's panels, by lead.

    Parameters
    ----------
    panels : sequence of PanelSignal
        The layout's panels read off the page (:func:`ecgdig.pipeline.vectorize.panel_signals`).
    layout : PageLayout
        The layout they were read with.

    Returns
    -------
    dict
        Rhythm strip row -> {lead of a panel on another strip: agreement}; leads whose panel does
        not overlap the strip in time are absent.
    """
    out: dict[int, dict[str, float]] = {}
    rhythm_rows = _rhythm_rows(layout)
    for row in rhythm_rows:
        strip = next((p for p in panels if p.row == row), None)
        if strip is None:
            continue
        scores: dict[str, float] = {}
        for panel in panels:
            if panel.row in rhythm_rows:
                continue
            score = panel_agreement(strip, panel)
            if score is not None:
                scores[panel.lead] = max(score, scores.get(panel.lead, -np.inf))
        out[row] = scores
    return out


def _rename_rhythm_strips(layout: PageLayout, panels: Sequence[PanelSignal]) -> PageLayout:
    """Name each rhythm strip after the panel it repeats, where that is clearly another lead."""
    renames: dict[int, str] = {}
    for row, scores in rhythm_agreement(panels, layout).items():
        if not scores:
            continue
        claimed = next(lead for lead, r, *_ in layout.panels if r == row)
        best = max(scores, key=lambda lead: scores[lead])
        current = scores.get(claimed, -np.inf)
        if (
            best != claimed
            and scores[best] >= _SAME_LEAD_AGREEMENT
            and scores[best] - current >= _RHYTHM_RENAME_MARGIN
        ):
            renames[row] = best
    if not renames:
        return layout
    new_panels = tuple(
        (renames.get(row, lead), row, start, end, shift) for lead, row, start, end, shift in layout.panels
    )
    shown = ", ".join(renames[row] for row in sorted(renames))
    note = (
        f"rhythm strip{'s' if len(renames) > 1 else ''} read as {shown}: the strip repeats that lead's "
        "panel; pass --layout if this is wrong"
    )
    return replace(
        layout,
        panels=new_panels,
        template_name=f"{layout.template_name} (rhythm {shown})",
        warnings=(*layout.warnings, note),
    )


def _evidence(
    layout: PageLayout,
    panels: Sequence[PanelSignal],
    vectorized: VectorizedLeads,
    label_score: Callable[[PageLayout], int | None] | None,
) -> LayoutEvidence:
    rhythm_scores = []
    for row, scores in rhythm_agreement(panels, layout).items():
        claimed = next(lead for lead, r, *_ in layout.panels if r == row)
        if claimed in scores:
            rhythm_scores.append(scores[claimed])
    return LayoutEvidence(
        name=layout.template_name,
        labels=label_score(layout) if label_score is not None else None,
        rhythm=float(np.mean(rhythm_scores)) if rhythm_scores else None,
        limb_residual=limb_lead_inconsistency(vectorized.record.signal_mv, vectorized.record.lead_names),
    )


def _pick(evidence: Sequence[LayoutEvidence]) -> tuple[int, str]:
    """Return the index of the best-supported candidate (0 is the guess) and the deciding cue."""
    candidates = list(range(len(evidence)))
    labelled = [e.labels for e in evidence if e.labels is not None]
    if labelled:
        best = max(labelled)
        others = sorted(labelled, reverse=True)[1:]
        if not others or best - others[0] >= _LABEL_MARGIN:
            winner = next(i for i, e in enumerate(evidence) if e.labels == best)
            return winner, "its printed lead labels"
    rhythm = [e.rhythm for e in evidence]
    guess_rhythm = rhythm[0] if rhythm[0] is not None else -np.inf
    supported = [
        i
        for i in candidates[1:]
        if (r := rhythm[i]) is not None and r >= _RHYTHM_SUPPORT and r - guess_rhythm >= _RHYTHM_SWITCH_MARGIN
    ]
    if supported:
        candidates = supported
        if len(candidates) == 1:
            return candidates[0], "its rhythm strip repeating the lead the layout puts there"
    best_i = candidates[0]
    best_score = evidence[best_i].limb_residual
    if best_score is None:
        return best_i, "the strip count"
    for i in candidates[1:]:
        score = evidence[i].limb_residual
        if score is not None and score < _LAYOUT_SWITCH_RATIO * best_score:
            best_i, best_score = i, score
    return best_i, "its limb leads obeying I - II + III = 0 and aVR + aVL + aVF = 0"


def choose_layout(
    layout: PageLayout,
    probability: np.ndarray,
    traces: list[RowTrace | None],
    *,
    fs_hz: float,
    name: str,
    mm_per_s: float | None = None,
    mm_per_mv: float | None = None,
    duration_s: float | None = None,
    label_score: Callable[[PageLayout], int | None] | None = None,
) -> tuple[PageLayout, VectorizedLeads, list[LayoutEvidence]]:
    """Choose among the layouts with the guessed one's strip count, then name the rhythm strips.

    Parameters
    ----------
    layout : PageLayout
        The guessed layout (separators attached), from :func:`ecgdig.pipeline.layout.infer_layout`.
    probability : (rows, cols) ndarray of float
        The trace probability the strips were followed in (for the separators).
    traces : list of RowTrace or None
        The followed trace of each strip of ``layout.rows``.
    fs_hz : float
        Output sampling rate.
    name : str
        Record name.
    mm_per_s, mm_per_mv, duration_s : float, optional
        The user's settings, as given to ``infer_layout``.
    label_score : callable, optional
        Printed-label agreement of a layout (matches minus contradictions, None if no label).

    Returns
    -------
    tuple of (PageLayout, VectorizedLeads, list of LayoutEvidence)
        The chosen layout with its rhythm strips named, the record read with it, and the evidence
        for every candidate (the guess first).
    """
    layouts = [layout]
    for alternative in layouts_for_row_count(len(layout.rows)):
        if alternative == layout.template_name:
            continue
        candidate = infer_layout(
            list(layout.rows),
            traces,
            layout.px_per_mm,
            template=load_layout(alternative),
            mm_per_s=mm_per_s,
            mm_per_mv=mm_per_mv,
            duration_s=duration_s,
        )
        layouts.append(attach_lead_separators(candidate, probability, traces))
    readings = []
    evidence = []
    for candidate in layouts:
        panels = panel_signals(traces, candidate, fs_hz=fs_hz)
        leads = traces_to_record(traces, candidate, fs_hz=fs_hz, name=name)
        readings.append(panels)
        evidence.append(_evidence(candidate, panels, leads, label_score))
    winner, cue = _pick(evidence)
    chosen = layouts[winner]
    if winner != 0:
        note = (
            f"{len(chosen.rows)} strips read as {chosen.template_name}, not {layout.template_name}: "
            f"{cue}; pass --layout if this is wrong"
        )
        chosen = replace(chosen, warnings=(*layout.warnings, note))
    chosen = _rename_rhythm_strips(chosen, readings[winner])
    return chosen, traces_to_record(traces, chosen, fs_hz=fs_hz, name=name), evidence
