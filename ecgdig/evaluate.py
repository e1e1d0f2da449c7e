"""Evaluate a folder of digitized WFDB records against a folder of reference records.

:func:`evaluate_folders` walks the truth folder as the Challenge scorer does (every ``.hea``, in
sub-folders too, sorted), pairs each record with the prediction of the same relative path, scores it
with :func:`ecgdig.metrics.score_record` and returns a frozen :class:`EvaluationReport`.
:func:`plot_overlay` draws one record's digitized leads over its reference for quality control.

A truth record without a prediction is *missing*. The Challenge scorer represents a missing output
as an all-NaN signal, whose leads score NaN and are left out of its mean; the report does the same
and counts them, and also gives the mean with every unscored lead counted as 0 dB (the score of an
all-zero output), which a system cannot raise by skipping records.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ecgdig.errors import RecordInputError
from ecgdig.io.atomic import atomic_path
from ecgdig.io.records import read_record
from ecgdig.metrics import (
    PERFECT_SNR_DB,
    LeadScore,
    Metric,
    apply_alignment,
    challenge_mean_snr_db,
    kaggle_mean_snr_db,
    kaggle_record_ratio,
    resample_mv,
    score_record,
)
from ecgdig.types import EcgRecord

__all__ = [
    "EvaluationReport",
    "LeadRow",
    "RecordSummary",
    "evaluate_folders",
    "plot_overlay",
    "plot_overlays",
]


@dataclass(frozen=True)
class LeadRow:
    """One (record, lead) pair of an evaluation.

    Attributes
    ----------
    record : str
        Record path relative to the truth folder, without ``.hea``.
    lead : str
        Lead name as the truth spells it.
    snr_db : float
        The metric's SNR for this lead (see :class:`ecgdig.metrics.LeadScore`); NaN if unscored.
    pearson_r : float
        Pearson r of the aligned prediction with the truth.
    rmse_mv : float
        RMSE of the aligned prediction, mV.
    perfect : bool
        Zero error on every compared sample (the SNR then reads :data:`~ecgdig.metrics.PERFECT_SNR_DB`).
    missing : bool
        The prediction had no finite sample for this lead.
    coverage : float
        Fraction of the truth's finite samples covered by the aligned prediction.
    shift_samples : int
        Estimated delay of the prediction, samples.
    offset_mv : float
        Estimated vertical offset of the prediction, mV.
    shift_applied : bool
        Whether that shift and offset were forgiven (applied).
    """

    record: str
    lead: str
    snr_db: float
    pearson_r: float
    rmse_mv: float
    perfect: bool
    missing: bool
    coverage: float
    shift_samples: int
    offset_mv: float
    shift_applied: bool


@dataclass(frozen=True)
class RecordSummary:
    """One record of an evaluation.

    Attributes
    ----------
    record : str
        Record path relative to the truth folder, without ``.hea``.
    snr_db : float
        Challenge: mean of the record's scored leads (NaN if none). Kaggle: ``10 log10`` of the
        record's pooled ratio.
    n_leads : int
        Leads scored or attempted.
    n_perfect : int
        Leads reconstructed exactly.
    prediction : str
        ``"found"``, ``"missing"`` (no ``.hea``) or ``"unreadable: <reason>"``.
    """

    record: str
    snr_db: float
    n_leads: int
    n_perfect: int
    prediction: str


@dataclass(frozen=True)
class EvaluationReport:
    """The result of :func:`evaluate_folders`.

    Attributes
    ----------
    metric : str
        ``"challenge"`` or ``"kaggle"``.
    mean_snr_db : float
        The score as the metric computes it. Challenge: mean over (record, lead) pairs, NaN pairs
        (missing predictions) left out. Kaggle: ``10 log10`` of the mean linear ratio over records.
    mean_snr_db_missing_as_zero : float
        Challenge: the same mean with every unscored lead counted as 0 dB. Kaggle: equal to
        ``mean_snr_db`` (its missing predictions are already scored as zeros).
    perfect_snr_db : float
        The ceiling a perfect lead is reported at (:data:`~ecgdig.metrics.PERFECT_SNR_DB`).
    n_records : int
        Truth records evaluated.
    n_missing_records : int
        Truth records whose prediction is missing or unreadable (both scored as missing).
    n_leads : int
        (record, lead) pairs.
    n_leads_scored : int
        Pairs with a finite SNR (those entering the Challenge mean).
    n_perfect_leads : int
        Pairs reconstructed exactly.
    missing_records : tuple of str
        Records with no prediction ``.hea``.
    unreadable_records : tuple of str
        ``"<record>: <reason>"`` for predictions that exist but cannot be read.
    records : tuple of RecordSummary
        Per-record results, in truth order.
    rows : tuple of LeadRow
        Per-(record, lead) results.
    """

    metric: str
    mean_snr_db: float
    mean_snr_db_missing_as_zero: float
    perfect_snr_db: float
    n_records: int
    n_missing_records: int
    n_leads: int
    n_leads_scored: int
    n_perfect_leads: int
    missing_records: tuple[str, ...]
    unreadable_records: tuple[str, ...]
    records: tuple[RecordSummary, ...]
    rows: tuple[LeadRow, ...]

    def to_json(self, *, indent: int | None = 2) -> str:
        """Return the report as strict JSON (NaN written as ``null``).

        Parameters
        ----------
        indent : int or None, optional
            Passed to :func:`json.dumps`.

        Returns
        -------
        str
            A JSON object with the attributes above; ``records`` and ``rows`` are lists of objects.
        """
        return json.dumps(_finite_or_none(asdict(self)), indent=indent, allow_nan=False)


def _finite_or_none(value: object) -> object:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(item) for item in value]
    return value


def evaluate_folders(
    pred_dir: str | Path, truth_dir: str | Path, *, metric: Metric = "challenge"
) -> EvaluationReport:
    """Score every record of ``truth_dir`` against the record of the same name in ``pred_dir``.

    Parameters
    ----------
    pred_dir : str or Path
        Folder of digitized WFDB records (``<name>.hea`` + signal file).
    truth_dir : str or Path
        Folder of reference WFDB records; sub-folders are searched too, and a prediction is looked
        up at the same relative path.
    metric : {"challenge", "kaggle"}, optional
        The PhysioNet Challenge 2024 SNR (default) or the 2025 Kaggle variant.

    Returns
    -------
    EvaluationReport
        Per-lead rows, per-record summaries, the overall score and the counts of missing
        predictions and perfect leads.

    Raises
    ------
    RecordInputError
        If a folder does not exist, ``truth_dir`` holds no record, a truth record cannot be read,
        or a record names a lead twice.
    ValueError
        For an unknown ``metric``.

    Notes
    -----
    A prediction that is absent, or whose files cannot be read, is scored as missing (an all-NaN
    record, as the Challenge scorer does; zeros for the Kaggle metric) and listed in the report.
    """
    if metric not in ("challenge", "kaggle"):
        raise ValueError(f"unknown metric {metric!r}; expected 'challenge' or 'kaggle'")
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    for folder in (truth_dir, pred_dir):
        if not folder.is_dir():
            raise RecordInputError("no such folder", folder)
    # Predictions are often written inside the truth folder (``truth/pred``): never score them as truths.
    nested = pred_dir.resolve() if truth_dir.resolve() in pred_dir.resolve().parents else None
    names = sorted(
        p.relative_to(truth_dir).with_suffix("").as_posix()
        for p in truth_dir.rglob("*.hea")
        if nested is None or nested not in p.resolve().parents
    )
    if not names:
        raise RecordInputError("no WFDB records (.hea) found", truth_dir)

    rows: list[LeadRow] = []
    summaries: list[RecordSummary] = []
    missing: list[str] = []
    unreadable: list[str] = []
    all_scores: list[LeadScore] = []
    ratios: list[float] = []
    for name in names:
        truth = read_record(truth_dir / f"{name}.hea")
        pred: EcgRecord | None = None
        status = "found"
        if not (pred_dir / f"{name}.hea").is_file():
            status = "missing"
            missing.append(name)
        else:
            try:
                pred = read_record(pred_dir / f"{name}.hea")
            except RecordInputError as exc:
                status = f"unreadable: {exc.reason}"
                unreadable.append(f"{name}: {exc.reason}")
        scores = score_record(pred, truth, metric)
        all_scores.extend(scores)
        if metric == "challenge":
            record_snr = challenge_mean_snr_db(scores)
        else:
            ratio = kaggle_record_ratio(scores)
            if not math.isnan(ratio):  # a record without any standard lead has no Kaggle score
                ratios.append(ratio)
            record_snr = 10.0 * math.log10(ratio) if ratio > 0 else float("nan")
        summaries.append(RecordSummary(name, record_snr, len(scores), sum(s.perfect for s in scores), status))
        rows.extend(
            LeadRow(
                record=name,
                lead=s.lead,
                snr_db=s.snr_db,
                pearson_r=s.pearson_r,
                rmse_mv=s.rmse_mv,
                perfect=s.perfect,
                missing=s.missing,
                coverage=s.coverage,
                shift_samples=s.shift_samples,
                offset_mv=s.offset_mv,
                shift_applied=s.shift_applied,
            )
            for s in scores
        )

    snrs = np.array([s.snr_db for s in all_scores], dtype=np.float64)
    if metric == "challenge":
        mean = challenge_mean_snr_db(all_scores)
        as_zero = float(np.where(np.isnan(snrs), 0.0, snrs).mean()) if snrs.size else float("nan")
    else:
        mean = as_zero = kaggle_mean_snr_db(ratios)
    return EvaluationReport(
        metric=metric,
        mean_snr_db=mean,
        mean_snr_db_missing_as_zero=as_zero,
        perfect_snr_db=PERFECT_SNR_DB,
        n_records=len(names),
        n_missing_records=len(missing) + len(unreadable),
        n_leads=len(all_scores),
        n_leads_scored=int(np.isfinite(snrs).sum()),
        n_perfect_leads=sum(s.perfect for s in all_scores),
        missing_records=tuple(missing),
        unreadable_records=tuple(unreadable),
        records=tuple(summaries),
        rows=tuple(rows),
    )


def plot_overlay(
    pred: EcgRecord, truth: EcgRecord, path: str | Path, *, metric: Metric = "challenge"
) -> Path:
    """Write a PNG with one small panel per truth lead: digitized over reference, SNR in the title.

    Parameters
    ----------
    pred : EcgRecord
        The digitized record.
    truth : EcgRecord
        The reference record.
    path : str or Path
        The PNG to write (atomically; its folder is created).
    metric : {"challenge", "kaggle"}, optional
        Whose alignment and SNR to show.

    Returns
    -------
    Path
        ``path``.

    Notes
    -----
    The prediction is drawn as the metric scored it: resampled to the truth's rate and, where the
    metric applied them, shifted and offset. Uses matplotlib's Agg canvas directly, so no global
    backend is set.
    """
    path = Path(path)
    scores = {s.lead: s for s in score_record(pred, truth, metric)}
    by_key = {name.strip().casefold(): j for j, name in enumerate(pred.lead_names)}
    leads = list(truth.lead_names)
    n_cols = 3 if len(leads) > 4 else 1
    n_rows = max(1, math.ceil(len(leads) / n_cols))
    fig = Figure(figsize=(4.0 * n_cols, 1.6 * n_rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    t_truth = np.arange(truth.n_samples) / truth.fs_hz
    for k, name in enumerate(leads):
        ax = fig.add_subplot(n_rows, n_cols, k + 1)
        score = scores.get(name)
        j = by_key.get(name.strip().casefold())
        if j is not None:
            est = resample_mv(pred.signal_mv[:, j], pred.fs_hz, truth.fs_hz)
            if score is not None and score.shift_applied:
                est = apply_alignment(est, score.shift_samples, score.offset_mv)
            est = est[: truth.n_samples]
            ax.plot(t_truth[: est.size], est, color="tab:red", linewidth=1.2, alpha=0.7, label="digitized")
        ax.plot(t_truth, truth.signal_mv[:, k], color="black", linewidth=0.6, label="reference")
        if score is None:
            title = f"{name}: not scored"
        elif math.isnan(score.snr_db):
            title = f"{name}: SNR n/a" + (" (missing)" if score.missing else "")
        else:
            title = f"{name}: SNR {score.snr_db:.1f} dB" + (" (perfect)" if score.perfect else "")
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_xlim(0.0, truth.duration_s)
    fig.axes[0].legend(fontsize=6, loc="upper right")
    fig.supxlabel("time (s)", fontsize=8)
    fig.supylabel("mV", fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def plot_overlays(
    report: EvaluationReport, pred_dir: str | Path, truth_dir: str | Path, out_dir: str | Path
) -> list[Path]:
    """Write one overlay PNG per evaluated record that has a readable prediction.

    Parameters
    ----------
    report : EvaluationReport
        The result of :func:`evaluate_folders` on the same folders.
    pred_dir, truth_dir : str or Path
        The folders that were evaluated.
    out_dir : str or Path
        Folder for ``<record>.png`` files (sub-folders mirror the truth folder).

    Returns
    -------
    list of Path
        The PNG files written.
    """
    pred_dir, truth_dir, out_dir = Path(pred_dir), Path(truth_dir), Path(out_dir)
    skipped = set(report.missing_records) | {u.split(":", 1)[0] for u in report.unreadable_records}
    written = []
    for summary in report.records:
        if summary.record in skipped:
            continue
        truth = read_record(truth_dir / summary.record)
        pred = read_record(pred_dir / summary.record)
        target = out_dir / f"{summary.record}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        written.append(plot_overlay(pred, truth, target, metric=report.metric))  # type: ignore[arg-type]
    return written
