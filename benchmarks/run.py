"""``make bench``: digitization quality and speed, written as Markdown tables.

Quality: pages rendered by ``ecgdig render`` from the 18 held-out PTB-XL test records (clean, scanner
and phone profiles), the 8 real phone photos with truth, the ecg-image-kit sample page and the 32
ecg-image-kit validation pages (per kind, Challenge and Kaggle metrics, see :mod:`benchmarks.eik`),
each digitized and scored with the PhysioNet Challenge 2024 SNR. Robustness: every real clinical scan
without truth must give a record or a one-line error. Speed: seconds per 200 dpi page and peak memory,
median over pages and repeats, measured in a child process limited to 2 threads.

CPU speed on shared machines swings 2-5x between runs, so figures are medians and ratios measured
within one run, never absolute pass/fail thresholds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TEST_RECORDS = DATA / "records" / "ptbxl_500hz"


def _render(profile: str, out: Path, seed: int, n_pages: int, layout: str | None = None) -> list[Path]:
    """Render ``n_pages`` pages from the test records: each record once, then second pages as needed.

    Pages beyond ``n_pages`` are deleted with their truth files, so the folder's truth records are
    exactly those of the returned pages.
    """
    from ecgdig.render import find_records, render_to_files

    records = find_records([TEST_RECORDS])
    per_record = -(-n_pages // len(records))
    pages = render_to_files(
        records, out, profile=profile, seed=seed, pages_per_record=per_record, layout=layout
    )
    # Names end in -<k>: take every record's page 0 first, then page 1, ...
    pages = sorted(pages, key=lambda p: (int(p.stem.rsplit("-", 1)[1]), p.stem))
    for surplus in pages[n_pages:]:
        for sibling in out.glob(f"{surplus.stem}[._]*"):
            sibling.unlink()
    return pages[:n_pages]


def parse_segmenter(spec: str) -> dict[str, object]:
    """Turn ``classical``, ``unet`` (the shipped model) or ``unet=MODEL_PATH`` into option fields."""
    name, _, path = spec.partition("=")
    return {"segmenter": name, "model_path": path or None}


def _digitize_and_score(
    pages: list[Path], truth_dir: Path, pred_dir: Path, segmenter: str
) -> dict[str, object]:
    from ecgdig.evaluate import evaluate_folders
    from ecgdig.pipeline.digitize import DigitizeOptions, digitize_files

    options = DigitizeOptions(**parse_segmenter(segmenter))  # type: ignore[arg-type]
    outcomes = digitize_files(pages, pred_dir, options=options, force=True)
    report = evaluate_folders(pred_dir, truth_dir)
    failed = [o.message for o in outcomes if o.status == "failed"]
    return {
        "segmenter": segmenter,
        "pages": len(pages),
        "failed": len(failed),
        "failures": failed,
        "mean_snr_db": report.mean_snr_db,
        "mean_snr_db_missing_as_zero": report.mean_snr_db_missing_as_zero,
        "median_record_snr_db": statistics.median(
            [r.snr_db for r in report.records if r.snr_db == r.snr_db] or [float("nan")]
        ),
        "mean_r": _mean([row.pearson_r for row in report.rows]),
        "n_perfect": report.n_perfect_leads,
    }


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return sum(finite) / len(finite) if finite else float("nan")


def _renamed_truth(pairs: list[tuple[Path, str]], out: Path) -> Path:
    """Copy truth records under the page names, so pages and truths match by stem."""
    from dataclasses import replace

    from ecgdig.io import read_record, write_record

    out.mkdir(parents=True, exist_ok=True)
    for record_path, name in pairs:
        write_record(replace(read_record(record_path), name=name), out)
    return out


def bench_quality(work: Path, seed: int, n_pages: int, segmenters: list[str]) -> list[dict[str, object]]:
    """Score rendered pages per profile, the real photos and the ecg-image-kit sample, per segmenter."""
    sets: list[tuple[str, list[Path], Path]] = []
    for profile in ("clean", "scanner", "phone"):
        page_dir = work / "pages" / profile
        pages = _render(profile, page_dir, seed, n_pages, layout="3x4+1" if profile == "clean" else None)
        sets.append((f"rendered {profile} ({len(pages)} pages, 18 test records)", pages, page_dir))
    photos = sorted((DATA / "pages" / "photos_with_truth").glob("*.jpg"))
    truth = _renamed_truth(
        [(DATA / "records" / "paper2pulse_truth_500hz" / p.stem.removesuffix("-0"), p.stem) for p in photos],
        work / "truth" / "photos",
    )
    sets.append(("real phone photos (8)", photos, truth))
    eik = DATA / "rendered_with_truth" / "00001_lr-0.png"
    truth = _renamed_truth(
        [(DATA / "records" / "ptbxl_100hz" / "00001_lr", eik.stem)], work / "truth" / "eik"
    )
    sets.append(("ecg-image-kit sample 00001_lr (Jan 2024 time convention)", [eik], truth))
    rows: list[dict[str, object]] = []
    for k, (name, pages, truth_dir) in enumerate(sets):
        for j, segmenter in enumerate(segmenters):
            pred = work / "pred" / f"set{k}-seg{j}"
            rows.append({"set": name, **_digitize_and_score(pages, truth_dir, pred, segmenter)})
    return rows


def bench_eik(work: Path, segmenter: str) -> dict[str, object]:
    """Score the ecg-image-kit validation pages (never trained on) per kind, with both metrics."""
    from benchmarks.eik import digitize_part, score_part

    pred = work / "pred" / f"eik-validation-{segmenter.replace('=', '-').replace('/', '_')}"
    failures = digitize_part("validation", pred, segmenter=segmenter)
    return {"segmenter": segmenter, "failures": failures, **score_part("validation", pred)}


def bench_robustness(work: Path, segmenter: str) -> dict[str, object]:
    """Digitize every real scan without truth; count records and one-line errors."""
    from ecgdig.pipeline.digitize import DigitizeOptions, digitize_files

    scans = sorted(
        p for p in (DATA / "pages" / "real_no_truth").iterdir() if p.suffix.lower() in {".png", ".jpg"}
    )
    options = DigitizeOptions(**parse_segmenter(segmenter))  # type: ignore[arg-type]
    outcomes = digitize_files(scans, work / "pred" / "real_no_truth", options=options, force=True)
    return {
        "segmenter": segmenter,
        "images": len(scans),
        "records": sum(o.status == "done" for o in outcomes),
        "errors": [o.message for o in outcomes if o.status == "failed"],
    }


_SPEED_CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(2)
from ecgdig.io import read_image
from ecgdig.pipeline.digitize import DigitizeOptions, digitize_image
pages, repeats, fields = json.loads(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
options = DigitizeOptions(**fields, threads=2)
images = [read_image(p) for p in pages]
digitize_image(images[0], options=options)  # warm-up
out = []
for image in images:
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = digitize_image(image, options=options)
        out.append({"total_s": time.perf_counter() - t0, **result.timings_s})
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"runs": out, "peak_rss_mb": peak_mb}))
"""


def bench_speed(pages: list[Path], repeats: int, segmenter: str) -> dict[str, object]:
    """Median seconds per page (2 threads) and per stage, and peak resident memory."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", _SPEED_CHILD, json.dumps([str(p) for p in pages]), str(repeats),
         json.dumps(parse_segmenter(segmenter))],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    runs = data["runs"]
    stages = [k for k in runs[0] if k != "total_s"]
    return {
        "segmenter": segmenter,
        "pages": len(pages),
        "repeats": repeats,
        "median_s": statistics.median(r["total_s"] for r in runs),
        "min_s": min(r["total_s"] for r in runs),
        "max_s": max(r["total_s"] for r in runs),
        "stages_median_s": {s: statistics.median(r[s] for r in runs) for s in stages},
        "peak_rss_mb": data["peak_rss_mb"],
    }


def to_markdown(
    quality: list[dict[str, object]],
    robust: list[dict[str, object]],
    speed: list[dict[str, object]],
    meta: dict[str, object],
    eik: list[dict[str, object]] | None = None,
) -> str:
    """Format the results as the Markdown written to ``docs/benchmarks-latest.md``."""
    lines = [
        "# Latest `make bench` run",
        "",
        f"Run {meta['date']} on {meta['machine']} (Python {meta['python']}), "
        f"segmenters {', '.join(f'`{s}`' for s in meta['segmenters'])}, seed {meta['seed']}, "  # type: ignore[attr-defined]
        f"{meta['wall_s']:.0f} s wall.",
        "",
        "## Digitization quality (PhysioNet Challenge 2024 SNR, mean over (record, lead) pairs)",
        "",
        "| page set | segmenter | pages | failed | mean SNR dB | missing as 0 dB | median record SNR dB "
        "| mean r |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in quality:
        lines.append(
            f"| {row['set']} | `{row['segmenter']}` | {row['pages']} | {row['failed']} | "
            f"{row['mean_snr_db']:.2f} | {row['mean_snr_db_missing_as_zero']:.2f} | "
            f"{row['median_record_snr_db']:.2f} | {row['mean_r']:.3f} |"
        )
    for result in eik or []:
        from benchmarks.eik import to_markdown as eik_markdown

        lines += [
            "",
            f"## ecg-image-kit validation pages (32, never trained on), `{result['segmenter']}`",
            "",
            "Pages drawn by the PhysioNet Challenge 2024 generator (`benchmarks/ecg_image_kit_split.csv`);"
            " Challenge SNR is the mean over (record, lead) pairs, Kaggle SNR the mean of per-page scores.",
            "",
            eik_markdown(result, result["failures"]),  # type: ignore[arg-type]
        ]
    lines += ["", "## Real clinical scans without truth", ""]
    for result in robust:
        errors: list[str] = result["errors"]  # type: ignore[assignment]
        lines += [
            f"`{result['segmenter']}`: {result['records']} of {result['images']} images gave a record; "
            f"{len(errors)} gave one-line errors:",
            "",
        ]
        lines += [f"- `{Path(e.split(':')[0]).name}`: {e.split(': ', 1)[-1]}" for e in errors]
        lines.append("")
    lines += ["## Speed (200 dpi clean pages, 2 threads)", ""]
    for result in speed:
        stages: dict[str, float] = result["stages_median_s"]  # type: ignore[assignment]
        total = sum(stages.values()) or 1.0
        lines += [
            f"`{result['segmenter']}`: median {result['median_s']:.2f} s per page "
            f"(min {result['min_s']:.2f}, max {result['max_s']:.2f}) over {result['pages']} pages x "
            f"{result['repeats']} repeats; peak resident memory {result['peak_rss_mb']:.0f} MB.",
            "",
            "| stage | median s | share |",
            "|---|---:|---:|",
        ]
        lines += [f"| {stage} | {sec:.3f} | {sec / total:.0%} |" for stage, sec in stages.items()]
        lines.append("")
    if len(speed) > 1:
        base = float(speed[0]["median_s"])  # type: ignore[arg-type]
        lines += [
            "Ratios to `"
            + str(speed[0]["segmenter"])
            + "` measured in this run: "
            + ", ".join(f"`{r['segmenter']}` {float(r['median_s']) / base:.2f}x" for r in speed[1:]),  # type: ignore[arg-type]
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    """Run the benchmarks and write the Markdown report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks-latest.md")
    parser.add_argument("--pages", type=int, default=20, help="rendered pages per profile")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument(
        "--segmenter",
        action="append",
        help="classical, unet (the shipped model) or unet=MODEL_PATH; repeat to compare "
        "[default: classical and unet]",
    )
    parser.add_argument("--speed-pages", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-robustness", action="store_true", help="skip the real scans without truth")
    args = parser.parse_args()
    segmenters: list[str] = args.segmenter or ["classical", "unet"]
    if not DATA.is_dir():
        sys.exit(f"benchmarks need the real data at {DATA}")
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="ecgdig-bench-") as tmp:
        work = Path(tmp)
        quality = bench_quality(work, args.seed, args.pages, segmenters)
        eik = [bench_eik(work, s) for s in segmenters]
        robust = [] if args.skip_robustness else [bench_robustness(work, s) for s in segmenters]
        clean_pages = sorted((work / "pages" / "clean").glob("*.png"))
        clean_pages = [p for p in clean_pages if not p.stem.endswith(("_mask", "_labels"))][
            : args.speed_pages
        ]
        speed = [bench_speed(clean_pages, args.repeats, s) for s in segmenters]
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "segmenters": segmenters,
        "seed": args.seed,
        "wall_s": time.time() - started,
    }
    markdown = to_markdown(quality, robust, speed, meta, eik)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown, encoding="utf-8")
    args.out.with_suffix(".json").write_text(
        json.dumps(
            {"quality": quality, "eik": eik, "robustness": robust, "speed": speed, "meta": meta},
            indent=2,
            default=str,
        )
    )
    print(markdown)


if __name__ == "__main__":
    main()
