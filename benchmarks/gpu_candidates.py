"""Train candidate default models side by side within one short GPU lease.

A lent GPU comes for minutes, once, so every candidate worth comparing is trained in the same
call: one process per candidate, each with its own page-rendering workers, all on the one GPU
(the network is small; rendering pages on the CPU is what limits the rate). The number of steps
is set from the page rate measured first, so that the runs end inside the time given; every run
also writes a resumable checkpoint, which survives if the lease ends first.

Each candidate is exactly an ``ecgdig train`` run (``--device cuda --workers N``) with the
settings in :data:`CANDIDATES`; the chosen one is reproduced by ``make train-default-gpu``.
Candidates are compared afterwards, on a CPU, by ``make bench``-style scoring of each file.

Usage::

    python -m benchmarks.gpu_candidates RECORDS OUT [--seconds 420] [--workers 7] [--device cuda]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

#: Profiles every candidate renders with: half the pages are photographs, half of those of worn
#: prints (``phone-worn``: crumpled, shadowed, faded), the pages the earlier model did worst on.
PROFILES = ("clean", "scanner", "phone", "phone-worn")
BATCH = 32
#: Candidate name -> (model to start from, or None for random weights; peak learning rate; seed).
CANDIDATES: dict[str, tuple[str | None, float, int]] = {
    "finetune": ("ecgdig/models/default.safetensors", 1e-3, 11),
    "scratch": (None, 2e-3, 12),
}
#: Steps are planned for this fraction of the measured rate. On the H200 machine lent on
#: 2026-12-04, 14 workers measured 15 pages/s alone, but two runs of 7 workers each, sharing its
#: 16 cores with their own main processes and validation, got about 2 pages/s each.
_RATE_MARGIN = 0.3


def measure_pages_per_second(records: Path, workers: int, pages: int) -> float:
    """Render ``pages`` pages with ``workers`` processes and return pages per second (start-up excluded)."""
    from ecgdig.model.run import open_training_data

    data, _, _, _ = open_training_data([records], profiles=PROFILES, seed=99, hold_out=False, workers=workers)
    with data:
        stream = data.iter_epoch(0)
        per_page = data.crops_per_page
        # Skip the start-up and the pages already in flight when the clock would start (the
        # stream keeps three per worker queued): counted, they made the rate look twice as high.
        for _ in range(per_page * workers * 3):
            next(stream)
        began = time.perf_counter()
        for _ in range(per_page * pages):
            next(stream)
        return pages / (time.perf_counter() - began)


def train_one(name: str, records: Path, out: Path, steps: int, workers: int, device: str) -> None:
    """Train candidate ``name`` for ``steps`` steps and write ``out/<name>.safetensors``."""
    from ecgdig.model.run import train_to_file
    from ecgdig.model.train import StepInfo

    init, lr, seed = CANDIDATES[name]
    log = (out / f"{name}.log").open("a", encoding="utf-8")

    def report(info: StepInfo) -> None:
        if info.step % 100 == 0 or info.step == info.total_steps or info.val_dice is not None:
            log.write(json.dumps(dataclasses.asdict(info)) + "\n")
            log.flush()

    run = train_to_file(
        [records], out / f"{name}.safetensors", profiles=PROFILES, steps=steps, batch_size=BATCH, lr=lr,
        seed=seed, checkpoint=out / f"{name}.ckpt.safetensors", on_step=report, init_from=init,
        snr_records=0, device=device, workers=workers,
    )  # fmt: skip
    summary = {"name": name, "steps": run.result.steps, "seconds": run.result.seconds, **run.metrics}
    log.write(json.dumps(summary) + "\n")
    print(json.dumps(summary), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Measure the page rate, then train every candidate at once and print a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, default=420.0, help="training time per candidate")
    parser.add_argument("--workers", type=int, default=7, help="rendering processes per candidate")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=0, help="fixed steps (0: from the measured rate)")
    parser.add_argument("--only", default="", help="train this candidate in this process (internal)")
    parser.add_argument("--deadline", type=float, default=0.0, help="stop the runs after this many seconds")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only:
        train_one(args.only, args.records, args.out, args.steps, args.workers, args.device)
        return 0

    steps = args.steps
    if not steps:
        rate = measure_pages_per_second(args.records, args.workers * len(CANDIDATES), pages=12 * args.workers)
        crops_per_s = _RATE_MARGIN * rate / len(CANDIDATES) * 16
        steps = max(1, int(crops_per_s * args.seconds / BATCH))
        print(
            f"{rate:.1f} pages/s with {args.workers * len(CANDIDATES)} workers -> {steps} steps each",
            flush=True,
        )
    began = time.perf_counter()
    runs = {
        name: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.gpu_candidates",
                str(args.records),
                str(args.out),
                "--only",
                name,
                "--steps",
                str(steps),
                "--workers",
                str(args.workers),
                "--device",
                args.device,
            ],
        )
        for name in CANDIDATES
    }
    codes: dict[str, int] = {}
    while len(codes) < len(runs):
        time.sleep(1.0)
        late = args.deadline and time.perf_counter() - began > args.deadline
        for name, proc in runs.items():
            if name in codes:
                continue
            if late and proc.poll() is None:
                # Its last checkpoint stays: ``ecgdig train`` with the same settings resumes it.
                print(f"{name}: past the deadline, stopped", flush=True)
                proc.terminate()
            if (code := proc.poll()) is not None:
                codes[name] = code
    print(f"all candidates done in {time.perf_counter() - began:.0f} s: exit codes {codes}", flush=True)
    return max(codes.values())


if __name__ == "__main__":
    sys.exit(main())
