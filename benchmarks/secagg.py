"""Secure aggregation versus plain aggregation: time and bytes per site, at the shipped model size.

``python -m benchmarks.secagg --out docs/benchmarks-secagg.md``. For 4, 16 and 64 sites, each
repeat runs one plain round (every site ``make_update``, the coordinator ``aggregate_round``) and one
secure round over the same local models (the seven steps of ``ecgdig.federated.secagg``, every file
written to disk), and times each step. The tensors are those of the default U-Net
(``make_default_model`` + ``model_tensors``, about 0.8 M float32 parameters).

Reported, as medians over repeats: a site's time (median over sites) and the coordinator's time,
plain and secure, the bytes a site sends and receives, and the ratios secure / plain measured in the
same run. CPU speed on shared machines swings between runs, so read the ratios, not the seconds.
With the default 2 repeats the run takes about 5 minutes on 2 cores, most of it at 64 sites;
``--repeats 3`` (the committed table) about 7.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SIZES = (4, 16, 64)


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _federation(root: Path, n_sites: int, model: dict[str, np.ndarray]) -> tuple[Any, dict[str, Any], Any]:
    from ecgdig.federated.coordinator import FederationPlan, init_federation, load_plan
    from ecgdig.federated.keys import SiteKey, add_site, create_registry, generate_site_key, load_site_key

    create_registry(root / "registry.json", "bench")
    sites = {}
    for k in range(n_sites):
        site_id = f"site-{k:02d}"
        add_site(root / "registry.json", generate_site_key(site_id, root / "keys").public_key)
        sites[site_id] = load_site_key(root / "keys" / f"{site_id}.key.pem")
    coordinator = SiteKey.generate("coordinator")
    plan = FederationPlan(federation_id="bench", clip_norm=1.0, min_sites=2)
    init_federation(root, model, plan, coordinator_key=coordinator)
    return load_plan(root / "plan.json"), sites, coordinator


def _one_repeat(n_sites: int, model: dict[str, np.ndarray], work: Path, seed: int) -> dict[str, float]:
    from ecgdig.federated.coordinator import aggregate_round, make_update
    from ecgdig.federated.secagg import (
        advertise_keys,
        aggregate_secure_round,
        make_roster,
        mask_update,
        request_unmask,
        reveal_shares,
        share_keys,
    )

    plan, sites, coordinator = _federation(work / "fed", n_sites, model)
    round_dir = work / "fed" / "round-0000"
    global_path = round_dir / "global.safetensors"
    rng = np.random.default_rng(seed)
    local = {
        s: {name: t + rng.normal(0, 1e-4, t.shape).astype(np.float32) for name, t in model.items()}
        for s in sites
    }
    site_plain: dict[str, float] = {}
    site_secure: dict[str, float] = dict.fromkeys(sites, 0.0)
    updates = {s: work / s / "update.safetensors" for s in sites}
    for s, key in sites.items():
        site_plain[s] = _timed(
            lambda s=s, key=key: make_update(
                global_path, local[s], updates[s], key, plan=plan, num_examples=100
            )
        )
    coordinator_plain = _timed(
        lambda: aggregate_round(
            round_dir, list(updates.values()), work / "plain-next", coordinator_key=coordinator
        )
    )

    box = work / "box"

    def state(s: str) -> Path:
        return work / s / "state.json"

    for s, key in sites.items():
        site_secure[s] += _timed(
            lambda s=s, key=key: advertise_keys(
                global_path, state(s), box / f"{s}.advertise.json", key, plan=plan, num_examples=100
            )
        )
    roster = box / "roster.json"
    coordinator_secure = _timed(
        lambda: make_roster(
            round_dir, sorted(box.glob("*.advertise.json")), roster, coordinator_key=coordinator
        )
    )
    for s, key in sites.items():
        site_secure[s] += _timed(
            lambda s=s, key=key: share_keys(state(s), roster, box / f"{s}.shares.json", key, plan=plan)
        )
    shares = sorted(box.glob("*.shares.json"))
    for s, key in sites.items():
        site_secure[s] += _timed(
            lambda s=s, key=key: mask_update(
                state(s), roster, shares, updates[s], box / f"{s}.masked.safetensors", key, plan=plan
            )
        )
    masked = sorted(box.glob("*.masked.safetensors"))
    request = box / "request.json"
    coordinator_secure += _timed(
        lambda: request_unmask(round_dir, roster, shares, masked, request, coordinator_key=coordinator)
    )
    for s, key in sites.items():
        site_secure[s] += _timed(
            lambda s=s, key=key: reveal_shares(
                state(s), roster, request, box / f"{s}.reveal.json", key, plan=plan
            )
        )
    reveals = sorted(box.glob("*.reveal.json"))
    coordinator_secure += _timed(
        lambda: aggregate_secure_round(
            round_dir, roster, request, masked, reveals, work / "secure-next", coordinator_key=coordinator
        )
    )

    def size(p: Path) -> int:
        return p.stat().st_size

    first = sorted(sites)[0]
    sent_secure = sum(
        size(box / f"{first}.{x}") for x in ("advertise.json", "shares.json", "masked.safetensors")
    )
    sent_secure += size(box / f"{first}.reveal.json")
    received_plain = size(global_path)
    received_secure = received_plain + size(roster) + sum(size(p) for p in shares) + size(request)
    return {
        "site_plain_s": statistics.median(site_plain[s] for s in sites),
        "site_secure_s": statistics.median(site_plain[s] + site_secure[s] for s in sites),
        "coordinator_plain_s": coordinator_plain,
        "coordinator_secure_s": coordinator_secure,
        "round_plain_s": sum(site_plain.values()) + coordinator_plain,
        "round_secure_s": sum(site_plain[s] + site_secure[s] for s in sites) + coordinator_secure,
        "sent_plain_bytes": float(size(updates[first])),
        "sent_secure_bytes": float(sent_secure),
        "received_plain_bytes": float(received_plain),
        "received_secure_bytes": float(received_secure),
    }


def _mb(value: float) -> str:
    return f"{value / 1e6:.2f} MB"


def main() -> None:
    """Run the benchmark and write the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks-secagg.md"))
    parser.add_argument(
        "--repeats", type=int, default=2, help="Repeats per size (2 fit in ~5 min on 2 cores)."
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    args = parser.parse_args()

    from ecgdig.model.files import model_tensors
    from ecgdig.model.network import make_default_model

    model = model_tensors(make_default_model(seed=0))
    n_params = sum(t.size for t in model.values())
    rows = []
    for n_sites in args.sizes:
        runs = []
        for repeat in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix="ecgdig-secagg-bench-") as tmp:
                runs.append(_one_repeat(n_sites, model, Path(tmp), seed=repeat))
        med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        ratios = [r["round_secure_s"] / r["round_plain_s"] for r in runs]
        site_ratios = [r["site_secure_s"] / r["site_plain_s"] for r in runs]
        rows.append((n_sites, med, statistics.median(site_ratios), statistics.median(ratios)))
        print(f"{n_sites} sites: round ratio {statistics.median(ratios):.2f}", flush=True)

    lines = [
        "# Secure aggregation versus plain aggregation",
        "",
        f"Model: the default U-Net, {n_params:,} float32 parameters ({_mb(4 * n_params)} per update). "
        f"Medians over {args.repeats} repeats; every protocol file written to and read from disk; one "
        f"process, {os.cpu_count()} CPU(s), {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}. Produced by `python -m benchmarks.secagg`.",
        "",
        "Site time: `make_update` (plain) or `make_update` + advertise + share + mask + unmask (secure), "
        "median over sites. Coordinator time: `aggregate_round` (plain) or roster + unmask request + "
        "`aggregate_secure_round` (secure). Round: all sites' time plus the coordinator's, as if run one "
        "after another. Ratios are secure / plain, taken within each repeat, then the median.",
        "",
        "| sites | site plain | site secure | site ratio | coordinator plain | coordinator secure "
        "| round ratio | sent / site plain | sent / site secure | received / site plain "
        "| received / site secure |",
        "|------:|-----------:|------------:|-----------:|------------------:|-------------------:"
        "|------------:|------------------:|-------------------:|----------------------:"
        "|-----------------------:|",
    ]
    for n_sites, med, site_ratio, round_ratio in rows:
        lines.append(
            f"| {n_sites} | {med['site_plain_s']:.3f} s | {med['site_secure_s']:.3f} s | {site_ratio:.2f}x "
            f"| {med['coordinator_plain_s']:.3f} s | {med['coordinator_secure_s']:.3f} s "
            f"| {round_ratio:.2f}x "
            f"| {_mb(med['sent_plain_bytes'])} | {_mb(med['sent_secure_bytes'])} "
            f"| {_mb(med['received_plain_bytes'])} | {_mb(med['received_secure_bytes'])} |"
        )
    lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
