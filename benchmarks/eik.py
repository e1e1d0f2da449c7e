"""Digitization quality on pages drawn by ecg-image-kit (the PhysioNet Challenge 2024 generator).

The 64 pages in ``shared/data/pages/ecg_image_kit`` are split once, by page, in
``benchmarks/ecg_image_kit_split.csv``: 32 validation pages covering every kind (grid colour, dpi,
augmentation, layout, header) that no training reads, and 32 that training may use. This module
digitizes one part and scores it per page and per kind with both metrics (the Challenge 2024 SNR
and the 2025 Kaggle variant).

Run alone (``python -m benchmarks.eik --part validation``) it prints the per-kind table and keeps the
predictions in ``--work`` so that a second run with ``--rescore`` only scores.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EIK = REPO.parent / "shared" / "data" / "pages" / "ecg_image_kit"
SPLIT = Path(__file__).with_name("ecg_image_kit_split.csv")


def read_split(part: str = "validation") -> list[dict[str, str]]:
    """Return the split rows (``page``, ``part``, ``kind``, ``group``) of one part, or ``"all"``."""
    with SPLIT.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [r for r in rows if part == "all" or r["part"] == part]


def eik_pages(part: str = "validation") -> list[Path]:
    """Return the page images of one part of the split, in page order."""
    return [EIK / "pages" / f"{r['page']}.png" for r in read_split(part)]


def digitize_part(
    part: str, out: Path, *, segmenter: str = "unet", workers: int = 2, force: bool = True
) -> dict[str, str]:
    """Digitize one part of the split into ``out``; return each failed page's one-line message."""
    from benchmarks.run import parse_segmenter
    from ecgdig.pipeline.digitize import DigitizeOptions, digitize_files

    options = DigitizeOptions(**parse_segmenter(segmenter))  # type: ignore[arg-type]
    outcomes = digitize_files(eik_pages(part), out, options=options, force=force, workers=workers)
    return {o.source.stem: o.message for o in outcomes if o.status == "failed"}


def score_part(part: str, pred: Path) -> dict[str, object]:
    """Score the predictions in ``pred`` against the masked truth, per page and per kind.

    Returns
    -------
    dict
        ``pages``: page -> {group, challenge, kaggle}; ``groups``: group -> {n, challenge, kaggle};
        ``kinds``: the same per manifest kind; ``overall``: the mean Challenge SNR over every
        (record, lead) pair and the Kaggle mean.
    """
    from ecgdig.evaluate import evaluate_folders

    rows = read_split(part)
    names = {r["page"] for r in rows}
    by_metric = {}
    for metric in ("challenge", "kaggle"):
        report = evaluate_folders(pred, EIK / "truth", metric=metric)  # type: ignore[arg-type]
        by_metric[metric] = report
    pages: dict[str, dict[str, object]] = {}
    for r in rows:
        pages[r["page"]] = {"group": r["group"], "kind": r["kind"]}
    lead_snrs: dict[str, list[float]] = defaultdict(list)
    for metric, report in by_metric.items():
        for summary in report.records:
            if summary.record in names:
                pages[summary.record][metric] = summary.snr_db
        if metric == "challenge":
            for row in report.rows:
                if row.record in names:
                    lead_snrs[row.record].append(row.snr_db if row.snr_db == row.snr_db else 0.0)

    def summarise(key: str) -> dict[str, dict[str, float]]:
        grouped: dict[str, list[str]] = defaultdict(list)
        for page, info in pages.items():
            grouped[str(info[key])].append(page)
        out = {}
        for name, members in grouped.items():
            snrs = [s for p in members for s in lead_snrs[p]]
            kag = [float(pages[p].get("kaggle", float("nan"))) for p in members]
            out[name] = {
                "n": len(members),
                "challenge": statistics.fmean(snrs) if snrs else float("nan"),
                "kaggle": statistics.fmean([k for k in kag if k == k] or [float("nan")]),
            }
        return out

    all_snrs = [s for p in pages for s in lead_snrs[p]]
    kag_all = [float(v.get("kaggle", float("nan"))) for v in pages.values()]
    return {
        "pages": pages,
        "groups": summarise("group"),
        "kinds": summarise("kind"),
        "overall": {
            "n": len(pages),
            "challenge": statistics.fmean(all_snrs) if all_snrs else float("nan"),
            "kaggle": statistics.fmean([k for k in kag_all if k == k] or [float("nan")]),
        },
    }


def to_markdown(result: dict[str, object], failures: dict[str, str]) -> str:
    """Format :func:`score_part`'s result as Markdown tables (per kind, per group, failures)."""
    lines = ["| kind | pages | Challenge SNR dB | Kaggle SNR dB |", "|---|---:|---:|---:|"]
    kinds: dict[str, dict[str, float]] = result["kinds"]  # type: ignore[assignment]
    for name, v in sorted(kinds.items()):
        lines.append(f"| {name} | {v['n']:.0f} | {v['challenge']:.2f} | {v['kaggle']:.2f} |")
    overall: dict[str, float] = result["overall"]  # type: ignore[assignment]
    lines.append(
        f"| **all** | {overall['n']:.0f} | **{overall['challenge']:.2f}** | {overall['kaggle']:.2f} |"
    )
    lines += ["", "| group | pages | Challenge SNR dB | Kaggle SNR dB |", "|---|---:|---:|---:|"]
    groups: dict[str, dict[str, float]] = result["groups"]  # type: ignore[assignment]
    for name, v in sorted(groups.items()):
        lines.append(f"| {name} | {v['n']:.0f} | {v['challenge']:.2f} | {v['kaggle']:.2f} |")
    if failures:
        lines += ["", "Failed pages:", ""]
        lines += [f"- {page}: {message.split(': ', 1)[-1]}" for page, message in sorted(failures.items())]
    return "\n".join(lines)


def main() -> None:
    """Digitize and score one part of the ecg-image-kit split; print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="validation", choices=["validation", "train", "all"])
    parser.add_argument("--segmenter", default="unet")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ecgdig-eik"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rescore", action="store_true", help="score the predictions already in --work")
    parser.add_argument("--pages", action="store_true", help="also print the score of every page")
    args = parser.parse_args()
    pred = args.work / args.part
    failures = (
        {} if args.rescore else digitize_part(args.part, pred, segmenter=args.segmenter, workers=args.workers)
    )
    result = score_part(args.part, pred)
    print(to_markdown(result, failures))
    if args.pages:
        pages: dict[str, dict[str, object]] = result["pages"]  # type: ignore[assignment]
        for page, info in sorted(pages.items()):
            print(f"{page} {info['group']:<40} {float(info.get('challenge', float('nan'))):7.2f} "
                  f"{float(info.get('kaggle', float('nan'))):7.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
