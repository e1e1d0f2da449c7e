"""A site's round on a real (tiny) U-Net: verify the global model, train, write a clipped signed update."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ecgdig.errors import ModelFileError, UpdateRejectedError
from ecgdig.federated.coordinator import FederationPlan, aggregate_round, init_federation, round_dir_name
from ecgdig.federated.files import read_file_info, read_tensors
from ecgdig.federated.keys import SiteKey, add_site, create_registry, generate_site_key, load_site_key
from ecgdig.federated.site import read_model_spec, train_site_update, write_model_spec
from ecgdig.model.data import FixedCrops
from ecgdig.model.files import ModelHeader, model_tensors
from ecgdig.model.network import TraceUnet, UnetArchitecture

TINY = UnetArchitecture(encoder_widths=(4, 8), decoder_channels=(8, 4), channels_per_group=4)


def _crops(seed: int, n: int = 4) -> FixedCrops:
    """Dark horizontal lines on light crops, the line pixels as target."""
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(n):
        image = torch.full((3, 32, 32), 0.9)
        target = torch.zeros((1, 32, 32))
        row = int(rng.integers(4, 28))
        image[:, row : row + 2] = 0.1
        target[:, row : row + 2] = 1.0
        crops.append((image, target))
    return FixedCrops(crops)


@pytest.fixture
def federation(tmp_path: Path) -> tuple[Path, FederationPlan, dict[str, SiteKey]]:
    root = tmp_path / "fed"
    create_registry(root / "registry.json", "fed-unet")
    keys = {}
    for site_id in ("site-a", "site-b"):
        paths = generate_site_key(site_id, tmp_path / "keys")
        add_site(root / "registry.json", paths.public_key)
        keys[site_id] = load_site_key(paths.private_key)
    keys["coordinator"] = load_site_key(generate_site_key("coordinator", tmp_path / "keys").private_key)
    torch.manual_seed(0)
    initial = model_tensors(TraceUnet(TINY))
    plan = FederationPlan(federation_id="fed-unet", clip_norm=0.5, min_sites=2, local_epochs=2)
    plan = init_federation(root, initial, plan, coordinator_key=keys["coordinator"]).plan
    write_model_spec(root / "model.json", ModelHeader(architecture=TINY, training={"private": "dropped"}))
    return root, plan, keys


def test_site_update_is_clipped_signed_and_aggregates(federation, tmp_path: Path) -> None:
    root, plan, keys = federation
    spec = read_model_spec(root / "model.json")
    global_path = root / round_dir_name(0) / "global.safetensors"
    updates = []

    for k, site_id in enumerate(("site-a", "site-b")):
        out = tmp_path / f"{site_id}.safetensors"
        result = train_site_update(
            global_path, _crops(k), out, keys[site_id], plan=plan, spec=spec, num_examples=4, lr=5e-2,
            threads=1,
        )  # fmt: skip
        updates.append(out)
        delta = read_tensors(read_file_info(out))
        norm = float(np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in delta.values())))
        assert result.training.steps == 1  # 2 epochs of 4 crops, batch 8
        assert 0.0 < norm <= plan.clip_norm * (1 + 1e-6)
        assert result.update.header.site_id == site_id and result.update.header.round == 0
        assert not list(tmp_path.glob("*.ckpt.safetensors")), "checkpoint left behind"

    report = aggregate_round(root / round_dir_name(0), updates, coordinator_key=keys["coordinator"])
    assert len(report.accepted) == 2 and not report.rejected
    assert spec.training == {}  # run details of the initial model never reach the sites


def test_fedprox_term_pulls_the_update_towards_the_global_model(federation, tmp_path: Path) -> None:
    root, plan, keys = federation
    spec = read_model_spec(root / "model.json")
    global_path = root / round_dir_name(0) / "global.safetensors"
    norms = {}
    for mu in (0.0, 1000.0):
        out = tmp_path / f"mu{mu:g}.safetensors"
        result = train_site_update(
            global_path, _crops(0, n=16), out, keys["site-a"], plan=plan, spec=spec, num_examples=16,
            proximal_mu=mu, epochs=4, batch_size=4, lr=5e-2, threads=1,
        )  # fmt: skip
        norms[mu] = result.update.norm_before_clip
    assert norms[1000.0] < 0.5 * norms[0.0]


def test_global_model_that_does_not_fit_the_spec_is_refused(federation, tmp_path: Path) -> None:
    root, plan, keys = federation
    other = ModelHeader(architecture=UnetArchitecture(encoder_widths=(4, 16), decoder_channels=(8, 4)))
    with pytest.raises(ModelFileError):
        train_site_update(
            root / round_dir_name(0) / "global.safetensors", _crops(0), tmp_path / "u.safetensors",
            keys["site-a"], plan=plan, spec=other, num_examples=4,
        )  # fmt: skip


def test_global_model_signed_by_someone_else_is_refused(federation, tmp_path: Path) -> None:
    root, plan, keys = federation
    forged = tmp_path / "forged"
    create_registry(forged / "registry.json", "fed-unet")
    add_site(forged / "registry.json", generate_site_key("site-a", tmp_path / "k2").public_key)
    torch.manual_seed(1)
    impostor = SiteKey.generate("coordinator")
    init_federation(forged, model_tensors(TraceUnet(TINY)), FederationPlan("fed-unet", 0.5, min_sites=1),
                    coordinator_key=impostor)  # fmt: skip
    with pytest.raises(UpdateRejectedError, match="signature"):
        train_site_update(
            forged / round_dir_name(0) / "global.safetensors", _crops(0), tmp_path / "u.safetensors",
            keys["site-a"], plan=plan, spec=read_model_spec(root / "model.json"), num_examples=4,
        )  # fmt: skip
