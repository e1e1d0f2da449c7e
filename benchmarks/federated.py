"""Aggregation cost at the shipped model size: time and peak memory for 4, 16 and 64 sites.

``python -m benchmarks.federated --out docs/benchmarks-federated.md`` (``make bench-federated``).
For each number of sites, every site writes one real signed update file with ``make_update``: the
clipped difference between a random local model and the global model, the tensors of
``make_default_model`` (about 0.8 M float32 parameters). Then the coordinator's
``aggregate_round`` reads, validates and aggregates them into the next round folder, for FedAvg
and FedAdam, each without and with central DP (z = 1, accounting included). The update files are
written once per site count and shared by the four federations (same id, keys and initial model, so
the same signed files are valid in each).

Reported: the median (and range) of ``--repeats`` timed aggregations, and the peak memory that
Python and numpy allocate during one more, untimed aggregation (``tracemalloc``; numpy reports its
buffers to it). The coordinator streams the updates into one running sum, so the peak should stay a
small multiple of the model's size whatever the number of sites: the table gives the peak over the
model's size and the ratio of the peak at 64 sites to the peak at 4. CPU speed on shared machines
swings between runs: read the ratios and the scaling, not the absolute seconds.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

SIZES = (4, 16, 64)
CONFIGS = (("fedavg", False), ("fedavg", True), ("fedadam", False), ("fedadam", True))
NOISE_MULTIPLIER = 1.0


def _model() -> dict[str, np.ndarray]:
    from ecgdig.model.files import model_tensors
    from ecgdig.model.network import make_default_model

    return model_tensors(make_default_model(seed=0))


def _federations(work: Path, n_sites: int, model: dict[str, np.ndarray], seed: int) -> dict[str, Any]:
    """Create the four federations of one site count and the sites' signed update files."""
    from ecgdig.federated.coordinator import DpPlan, FederationPlan, init_federation, load_plan, make_update
    from ecgdig.federated.keys import SiteKey, add_site, create_registry, generate_site_key, load_site_key
    from ecgdig.federated.strategies import make_server_optimizer

    keys = work / "keys"
    sites = {}
    for k in range(n_sites):
        site_id = f"site-{k:02d}"
        sites[site_id] = generate_site_key(site_id, keys)
    coordinator = SiteKey.generate("coordinator")
    roots = {}
    for strategy, dp in CONFIGS:
        root = work / f"{strategy}{'-dp' if dp else ''}"
        create_registry(root / "registry.json", "bench")
        for paths in sites.values():
            add_site(root / "registry.json", paths.public_key)
        plan = FederationPlan(
            federation_id="bench",
            clip_norm=1.0,
            strategy=make_server_optimizer(strategy),  # type: ignore[arg-type]
            min_sites=2,
            dp=DpPlan(noise_multiplier=NOISE_MULTIPLIER) if dp else None,
        )
        init_federation(root, model, plan, coordinator_key=coordinator)
        roots[(strategy, dp)] = root
    first = roots[CONFIGS[0]]
    plan = load_plan(first / "plan.json")
    rng = np.random.default_rng(seed)
    size = sum(t.size for t in model.values())
    updates = []
    for site_id, paths in sites.items():
        # A random local model twice the clip norm away: every update is clipped, as under DP.
        local = {
            n: t + rng.normal(0, 2.0 / np.sqrt(size), t.shape).astype(np.float32) for n, t in model.items()
        }
        out = work / "updates" / f"{site_id}.safetensors"
        make_update(
            first / "round-0000" / "global.safetensors",
            local,
            out,
            load_site_key(paths.private_key, site_id),
            plan=plan,
            num_examples=100,
        )
        updates.append(out)
    return {"roots": roots, "updates": updates, "coordinator": coordinator}


def _aggregate_once(root: Path, updates: list[Path], coordinator: Any, seed: int) -> float:
    """Aggregate round 0 into a fresh folder; return the seconds. The folder and ledger are removed."""
    from ecgdig.federated.coordinator import aggregate_round

    target = root / "round-0001"
    start = time.perf_counter()
    aggregate_round(root / "round-0000", updates, target, coordinator_key=coordinator, rng=seed)
    seconds = time.perf_counter() - start
    shutil.rmtree(target)
    # Each repeat must start from the same state: an empty ledger, as round 0 left it.
    (root / "ledger.jsonl").unlink(missing_ok=True)
    return seconds


def _peak_bytes(root: Path, updates: list[Path], coordinator: Any, seed: int) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        _aggregate_once(root, updates, coordinator, seed)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def run(repeats: int, sizes: tuple[int, ...] = SIZES, seed: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Measure every (sites, strategy, DP) combination; return the rows and the model's bytes."""
    model = _model()
    model_bytes = sum(t.nbytes for t in model.values())
    rows = []
    for n_sites in sizes:
        with tempfile.TemporaryDirectory(prefix=f"ecgdig-bench-fed-{n_sites}-") as tmp:
            fed = _federations(Path(tmp), n_sites, model, seed)
            for config in CONFIGS:
                root = fed["roots"][config]
                times = [
                    _aggregate_once(root, fed["updates"], fed["coordinator"], seed) for _ in range(repeats)
                ]
                peak = _peak_bytes(root, fed["updates"], fed["coordinator"], seed)
                rows.append(
                    {"sites": n_sites, "strategy": config[0], "dp": config[1], "times": times, "peak": peak}
                )
                print(
                    f"{n_sites:3d} sites {config[0]:8s} dp={config[1]!s:5s} median "
                    f"{statistics.median(times):.3f} s, peak {peak / 2**20:.1f} MiB",
                    flush=True,
                )
    return rows, model_bytes


def markdown(
    rows: list[dict[str, Any]], model_bytes: int, repeats: int, seconds: float, sizes: tuple[int, ...] = SIZES
) -> str:
    """Return the Markdown report."""
    mib = 2**20
    lines = [
        "# Aggregation benchmark (`python -m benchmarks.federated`)",
        "",
        f"Model: `make_default_model`, {model_bytes // 4:,} float32 parameters "
        f"({model_bytes / mib:.2f} MiB). "
        f"Each cell: `aggregate_round` over N real signed update files (validation, weighted sum, "
        f"server step, signed next round folder); median of {repeats} repeats (range in brackets); peak "
        "memory of one more aggregation by `tracemalloc` (Python and numpy allocations). DP: z = "
        f"{NOISE_MULTIPLIER:g}, RDP and PLD accounting included. "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; run took {seconds:.0f} s.",
        "",
        "| sites | strategy | DP | aggregate (s) | per site (ms) | peak memory (MiB) | peak / model size |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        med = statistics.median(r["times"])
        lines.append(
            f"| {r['sites']} | {r['strategy']} | {'z = 1' if r['dp'] else 'no'} | {med:.3f} "
            f"[{min(r['times']):.3f}-{max(r['times']):.3f}] | {1000 * med / r['sites']:.1f} | "
            f"{r['peak'] / mib:.1f} | {r['peak'] / model_bytes:.1f} |"
        )
    lines += [
        "",
        f"Peak memory at {sizes[-1]} sites over that at {sizes[0]} (O(model size) means about 1):",
        "",
    ]
    by = {(r["sites"], r["strategy"], r["dp"]): r for r in rows}
    for strategy, dp in CONFIGS:
        small, large = by[(sizes[0], strategy, dp)], by[(sizes[-1], strategy, dp)]
        time_ratio = statistics.median(large["times"]) / statistics.median(small["times"])
        lines.append(
            f"- {strategy}{' + DP' if dp else ''}: memory x{large['peak'] / small['peak']:.2f}, "
            f"time x{time_ratio:.1f} for x{sizes[-1] // sizes[0]} sites"
        )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks-federated.md"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sites", type=int, nargs="+", default=list(SIZES), help="site counts to measure")
    args = parser.parse_args()
    sizes = tuple(sorted(args.sites))
    start = time.perf_counter()
    rows, model_bytes = run(args.repeats, sizes)
    text = markdown(rows, model_bytes, args.repeats, time.perf_counter() - start, sizes)
    from ecgdig.io.atomic import atomic_write_text

    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
