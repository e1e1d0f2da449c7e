"""A site's round: load the signed global model, train locally, write the clipped, signed update.

The federation's network architecture travels beside ``plan.json`` as ``model.json`` (a model-file
header without weights, see ``docs/model.md``): the signed global model carries only tensors, and a
site needs the architecture to rebuild the network. A wrong ``model.json`` cannot slip through: the
global tensors must match the rebuilt network name for name and shape.

Local training is :func:`ecgdig.model.train.train` with the plan's FedProx ``mu`` and epochs; the
update is :func:`ecgdig.federated.coordinator.make_update` (``clip(w_local - w_global, S)``, signed,
written atomically). A run killed part-way resumes from its checkpoint when restarted with the same
arguments; the checkpoint's name carries the global model's hash, so a checkpoint of another round
is never picked up, and it is deleted once the update is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ecgdig.errors import ConfigError
from ecgdig.federated.coordinator import FederationPlan, UpdateInfo, make_update
from ecgdig.federated.files import FileHeader
from ecgdig.federated.keys import Registry, SiteKey
from ecgdig.federated.validate import ValidUpdate, validate_model, validate_update
from ecgdig.io.atomic import atomic_write_text
from ecgdig.model.files import ModelHeader, load_state_tensors, model_tensors
from ecgdig.model.network import TraceUnet
from ecgdig.model.train import CropSource, StepInfo, TrainResult, train

__all__ = [
    "MODEL_SPEC_FILE",
    "SiteRound",
    "build_global_network",
    "read_model_spec",
    "train_site_update",
    "verify_site_update",
    "write_model_spec",
]

#: File beside ``plan.json`` describing the network the federation trains.
MODEL_SPEC_FILE = "model.json"

_MAX_SPEC_BYTES = 1024**2


def write_model_spec(path: str | Path, header: ModelHeader) -> Path:
    """Write the federation's network description (architecture, input scale, classes).

    Training data summaries and metrics are dropped: the file is shared with every site and says
    only how to rebuild the network.

    Parameters
    ----------
    path : str or Path
        Target file, conventionally ``<federation>/model.json``.
    header : ModelHeader
        Header of the model the federation starts from.

    Returns
    -------
    Path
        The file written (atomically).
    """
    spec = ModelHeader(architecture=header.architecture, px_per_mm=header.px_per_mm, classes=header.classes)
    atomic_write_text(path, spec.to_json() + "\n")
    return Path(path)


def read_model_spec(path: str | Path) -> ModelHeader:
    """Read ``model.json`` written by :func:`write_model_spec`.

    Raises
    ------
    ModelFileError
        Unreadable, oversized or invalid description (one line naming the file).
    ConfigError
        The file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("no such file (the federation's model.json, written by fed-init)", path)
    if path.stat().st_size > _MAX_SPEC_BYTES:
        raise ConfigError(f"larger than {_MAX_SPEC_BYTES} bytes; not a model description", path)
    return ModelHeader.from_json(path.read_text(encoding="utf-8"), path)


def build_global_network(
    global_path: str | Path, plan: FederationPlan, spec: ModelHeader, *, expected_round: int | None = None
) -> tuple[TraceUnet, FileHeader]:
    """Verify a signed global model and load it into a freshly built network.

    Parameters
    ----------
    global_path : str or Path
        A round's ``global.safetensors``.
    plan : FederationPlan
        The federation's plan (coordinator key, federation id).
    spec : ModelHeader
        The federation's network description.
    expected_round : int, optional
        Refuse a global model that opens another round.

    Returns
    -------
    network : TraceUnet
        The network with the global weights, in eval mode.
    header : FileHeader
        The verified header (round, payload hash, clip norm).

    Raises
    ------
    UpdateRejectedError
        Bad signature, other federation, unexpected round.
    ModelFileError
        The tensors do not fit the described network.
    """
    header, tensors = validate_model(
        global_path,
        federation_id=plan.federation_id,
        coordinator_id=plan.coordinator_id,
        coordinator_public_key=plan.coordinator_key_bytes,
        expected_round=expected_round,
    )
    network = TraceUnet(spec.architecture)
    load_state_tensors(network, tensors, path=global_path)
    network.eval()
    return network, header


@dataclass(frozen=True)
class SiteRound:
    """What :func:`train_site_update` did.

    Attributes
    ----------
    update : UpdateInfo
        The update file written and its signed header.
    training : TrainResult
        Local losses and timing.
    round_number : int
        The round trained.
    num_examples : int
        Pages the site trained on (its aggregation weight ``n_k``).
    """

    update: UpdateInfo
    training: TrainResult
    round_number: int
    num_examples: int


def train_site_update(
    global_path: str | Path,
    data: CropSource,
    out_path: str | Path,
    site_key: SiteKey,
    *,
    plan: FederationPlan,
    spec: ModelHeader,
    num_examples: int,
    epochs: float | None = None,
    proximal_mu: float | None = None,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    checkpoint_every: int | None = None,
    threads: int | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
) -> SiteRound:
    """Train the global model on the site's crops and write the site's clipped, signed update.

    Parameters
    ----------
    global_path : str or Path
        The round's ``global.safetensors``, verified against the coordinator's key first.
    data : CropSource
        The site's training crops (``ecgdig.model.run.open_training_data`` opens records or pages).
    out_path : str or Path
        Update file to write.
    site_key : SiteKey
        The site's signing key.
    plan : FederationPlan
        The federation's plan: clip norm, FedProx ``mu`` and local epochs come from it.
    spec : ModelHeader
        The federation's network description (``model.json``).
    num_examples : int
        Pages (or records) the site holds: the update's aggregation weight.
    epochs : float, optional
        Local epochs over ``data.epoch_size`` crops (default: ``plan.local_epochs``).
    proximal_mu : float, optional
        FedProx coefficient (default: ``plan.proximal_mu``).
    batch_size, lr, seed : optional
        Local optimizer settings (AdamW, constant learning rate).
    checkpoint : str or Path, optional
        Resumable checkpoint (default: ``<out>.<global hash>.ckpt.safetensors``); removed once the
        update is written.
    checkpoint_every : int, optional
        Steps between checkpoints (default: :func:`ecgdig.model.train.train`'s).
    threads : int, optional
        CPU threads.
    on_step : callable, optional
        Progress callback.

    Returns
    -------
    SiteRound
        The update and how training went.

    Raises
    ------
    UpdateRejectedError
        The global model fails verification.
    ModelFileError
        The global model does not fit ``spec``.
    ConfigError
        Invalid settings, or a checkpoint made with other settings.
    """
    network, header = build_global_network(global_path, plan, spec)
    global_params = {name: p.detach().clone() for name, p in network.named_parameters()}
    out_path = Path(out_path)
    if checkpoint is None:
        checkpoint = out_path.with_name(f"{out_path.name}.{header.payload_sha256[:12]}.ckpt.safetensors")
    mu = plan.proximal_mu if proximal_mu is None else float(proximal_mu)
    # Only forward an explicit value, so the checkpoint interval's default lives in train() alone.
    every: dict[str, Any] = {} if checkpoint_every is None else {"checkpoint_every": checkpoint_every}
    result = train(
        network,
        data,
        epochs=float(plan.local_epochs if epochs is None else epochs),
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        proximal_mu=mu,
        global_params=global_params if mu > 0 else None,
        checkpoint=checkpoint,
        on_step=on_step,
        threads=threads,
        **every,
    )
    with torch.no_grad():
        local = model_tensors(network)
    update = make_update(global_path, local, out_path, site_key, plan=plan, num_examples=num_examples)
    Path(checkpoint).unlink(missing_ok=True)
    return SiteRound(update=update, training=result, round_number=header.round, num_examples=num_examples)


def verify_site_update(
    update_path: str | Path, global_path: str | Path, site_key: SiteKey, *, plan: FederationPlan
) -> ValidUpdate:
    """Check that a file is a valid update of this site for this global model.

    The coordinator's checks (:func:`~ecgdig.federated.validate.validate_update`) with a registry
    holding only this site's key: signature, federation, round, base model, clip norm, tensor names
    and shapes, finiteness and norm. A site uses it to tell a finished update from a file of another
    round or site before training again.

    Parameters
    ----------
    update_path : str or Path
        The update file.
    global_path : str or Path
        The round's ``global.safetensors`` it must have been trained from (verified first).
    site_key : SiteKey
        The site's key; the update must be signed by it.
    plan : FederationPlan
        The federation's plan (coordinator key, clip norm).

    Returns
    -------
    ValidUpdate
        The verified update.

    Raises
    ------
    UpdateRejectedError
        The global model fails verification, or the update is not a valid update of this site for it
        (the reason names the file).
    """
    header, global_tensors = validate_model(
        global_path,
        federation_id=plan.federation_id,
        coordinator_id=plan.coordinator_id,
        coordinator_public_key=plan.coordinator_key_bytes,
    )
    own = Registry(federation_id=plan.federation_id, sites={site_key.site_id: site_key.public_key})
    return validate_update(
        update_path,
        registry=own,
        expected_round=header.round,
        expected_base_sha256=header.payload_sha256,
        reference_shapes={name: tuple(t.shape) for name, t in global_tensors.items()},
        clip_norm=plan.clip_norm,
    )
