"""Fixtures for the federated core: keys, a registry and a small initialized federation on disk."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ecgdig.federated.coordinator import FederationPlan, init_federation, round_dir_name
from ecgdig.federated.keys import SiteKey, add_site, create_registry, generate_site_key, load_site_key

SITES = ("site-a", "site-b", "site-c", "site-d", "site-e", "site-f", "site-g", "site-h")


def _initial_model() -> dict[str, np.ndarray]:
    return {
        "conv.weight": np.array([[0.5, -1.0, 2.0], [0.0, 1.5, -0.5]], dtype=np.float32),
        "conv.bias": np.array([0.1, 0.2, 0.3], dtype=np.float32),
    }


@dataclass
class Federation:
    root: Path
    plan: FederationPlan
    coordinator: SiteKey
    sites: dict[str, SiteKey]
    outsider: SiteKey

    def round_dir(self, number: int) -> Path:
        return self.root / round_dir_name(number)


@pytest.fixture
def model0() -> dict[str, np.ndarray]:
    """The initial 'model' of every test federation: a (2, 3) weight and a (3,) bias."""
    return _initial_model()


@pytest.fixture
def make_federation(tmp_path: Path) -> Callable[..., Federation]:
    """Return a factory: ``make_federation(n_sites=3, **plan_fields)`` initializes a federation."""

    def factory(n_sites: int = 3, rng: Any = 0, **plan_fields: Any) -> Federation:
        root = tmp_path / "federation"
        keys_dir = tmp_path / "keys"
        create_registry(root / "registry.json", "fed-test")
        sites: dict[str, SiteKey] = {}
        for site_id in SITES[:n_sites]:
            paths = generate_site_key(site_id, keys_dir)
            add_site(root / "registry.json", paths.public_key)
            sites[site_id] = load_site_key(paths.private_key)
        coordinator = load_site_key(generate_site_key("coordinator", keys_dir).private_key)
        outsider = SiteKey.generate("site-x")
        fields: dict[str, Any] = {"federation_id": "fed-test", "clip_norm": 10.0, "min_sites": 2}
        fields.update(plan_fields)
        result = init_federation(
            root, _initial_model(), FederationPlan(**fields), coordinator_key=coordinator, rng=rng
        )
        return Federation(
            root=root, plan=result.plan, coordinator=coordinator, sites=sites, outsider=outsider
        )

    return factory
