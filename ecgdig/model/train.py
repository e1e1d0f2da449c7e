r"""Training loop of the trace segmenter: Dice + BCE, AdamW, FedProx, resumable checkpoints.

:func:`train` is what both the centralized ``ecgdig train`` and a federated site's local epochs
call. The loss is the sum of the mean binary cross-entropy and the soft Dice loss of the trace
channel,

.. math:: L = \\mathrm{BCE}(z, t) + 1 - \\frac{2 \\sum p t + 1}{\\sum p + \\sum t + 1},
          \\qquad p = \\sigma(z),

over the whole batch, plus, when ``proximal_mu > 0``, the FedProx proximal term
:math:`\\frac{\\mu}{2} \\lVert w - w_{global} \\rVert^2` over every trainable parameter (Li et al.
2020, eq. 2), which keeps a site's local epochs near the global model on non-IID data.

The data is a stream of crops indexed by position: step ``s`` (0-based) trains on positions
``[s B, (s + 1) B)`` of the concatenated epochs, epoch ``e`` occupying ``[e N, (e + 1) N)`` with
``N`` crops per epoch. Since a :class:`~ecgdig.model.data.CropStream` can start anywhere, a run
that resumes from a checkpoint sees exactly the batches the uninterrupted run would have seen, and
its losses are identical on the same machine and thread count.

Checkpoints are one safetensors file: the model's tensors (``model.*``), AdamW's moment estimates
(``adamw.exp_avg.*``, ``adamw.exp_avg_sq.*``), the FedProx reference weights when used
(``global.*``), and in ``__metadata__`` a JSON object with the step, the loss history and the run's
settings, which must match for a resume. Nothing is pickled.

References
----------
Li et al., "Federated optimization in heterogeneous networks" (FedProx), MLSys 2020, eq. 2.
Loshchilov & Hutter, "Decoupled weight decay regularization" (AdamW), ICLR 2019.
Milletari, Navab & Ahmadi, "V-Net" (soft Dice loss), 3DV 2016.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import nn

from ecgdig.errors import ConfigError, ModelFileError, TrainingDivergedError
from ecgdig.io.atomic import atomic_path
from ecgdig.model.inference import torch_threads
from ecgdig.model.network import make_default_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "CropSource",
    "StepInfo",
    "TrainResult",
    "evaluate_dice",
    "make_default_model",
    "proximal_term",
    "segmentation_loss",
    "train",
]

CHECKPOINT_FORMAT = "ecgdig-checkpoint"
_CHECKPOINT_VERSION = 1
_CHECKPOINT_KEY = "ecgdig.checkpoint"
#: Cosine schedules decay to this fraction of the peak learning rate.
_MIN_LR_FRACTION = 0.02


class CropSource(Protocol):
    """What :func:`train` reads: ``epoch_size`` crops per epoch, each epoch startable anywhere."""

    @property
    def epoch_size(self) -> int:
        """Crops per epoch."""
        ...

    def iter_epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(image, target)`` crops of ``epoch`` from position ``start``."""
        ...


@dataclass(frozen=True)
class StepInfo:
    """Passed to ``on_step`` after every optimizer step.

    Attributes
    ----------
    step : int
        Steps done so far (1 after the first).
    total_steps : int
        Steps the run will do.
    loss : float
        Total loss of this step's batch (before the update).
    bce : float
        Binary cross-entropy part.
    dice_loss : float
        Soft Dice loss part.
    proximal : float
        FedProx term (0 when off).
    lr : float
        Learning rate used.
    elapsed_s : float
        Seconds since this call to :func:`train` began.
    val_dice : float or None
        Validation Dice when it was computed after this step.
    """

    step: int
    total_steps: int
    loss: float
    bce: float
    dice_loss: float
    proximal: float
    lr: float
    elapsed_s: float
    val_dice: float | None = None


@dataclass(frozen=True)
class TrainResult:
    """What a training run did.

    Attributes
    ----------
    steps : int
        Optimizer steps done in total (a resumed run counts the earlier ones).
    examples : int
        Crops trained on in total.
    losses : tuple of float
        Loss of every step, from the first (earlier runs included when resumed).
    val_dice : tuple of (int, float)
        ``(step, Dice)`` for every validation.
    seconds : float
        Wall time of this call.
    resumed_from : int
        Step this call started at (0 for a fresh run).
    settings : dict
        JSON-ready run settings (learning rate, batch size, seed, ...).
    """

    steps: int
    examples: int
    losses: tuple[float, ...]
    val_dice: tuple[tuple[int, float], ...]
    seconds: float
    resumed_from: int = 0
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def final_val_dice(self) -> float | None:
        """The last validation Dice, if any."""
        return self.val_dice[-1][1] if self.val_dice else None

    def summary(self) -> dict[str, Any]:
        """Return a JSON-ready summary for a model file's ``training`` header field."""
        tail = self.losses[-50:]
        return {
            "steps": self.steps,
            "examples": self.examples,
            "final_loss_mean50": float(np.mean(tail)) if tail else None,
            "val_dice": self.final_val_dice,
            **dict(self.settings),
        }


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(total, bce, dice_loss)`` for the trace channel of ``logits``.

    Parameters
    ----------
    logits : (N, C, H, W) tensor
        Network output; channel 0 is the trace.
    target : (N, 1, H, W) tensor
        Trace coverage in [0, 1] (soft targets allowed).

    Returns
    -------
    total, bce, dice_loss : scalar tensors
        ``total = bce + dice_loss``; the soft Dice is computed over the whole batch with +1
        smoothing in numerator and denominator.
    """
    z = logits[:, :1]
    bce = F.binary_cross_entropy_with_logits(z, target)
    p = torch.sigmoid(z)
    dice_loss = 1.0 - (2.0 * (p * target).sum() + 1.0) / (p.sum() + target.sum() + 1.0)
    return bce + dice_loss, bce, dice_loss


def proximal_term(model: nn.Module, global_params: Mapping[str, torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx's proximal term ``mu / 2 * sum ||w - w_global||^2`` over trainable parameters.

    Parameters
    ----------
    model : torch.nn.Module
        The local model.
    global_params : mapping of str to tensor
        Reference weights by parameter name (the global model the round started from).
    mu : float
        Proximal coefficient (>= 0).

    Returns
    -------
    scalar tensor
        Differentiable in the model's parameters; its gradient is ``mu * (w - w_global)``.

    Raises
    ------
    ValueError
        If a trainable parameter has no reference or a reference has another shape.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Linear(2, 1)
    >>> ref = {k: v.detach().clone() for k, v in net.named_parameters()}
    >>> float(proximal_term(net, ref, 0.1).detach())
    0.0
    """
    total = torch.zeros((), device=next(model.parameters()).device)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        ref = global_params.get(name)
        if ref is None:
            raise ValueError(f"global_params has no tensor for parameter {name!r}")
        if tuple(ref.shape) != tuple(param.shape):
            raise ValueError(
                f"global_params[{name!r}] has shape {tuple(ref.shape)}, the model {tuple(param.shape)}"
            )
        total = total + ((param - ref.detach().to(param.device)) ** 2).sum()
    return 0.5 * float(mu) * total


def evaluate_dice(model: nn.Module, data: CropSource, *, batch_size: int = 8) -> float:
    """Dice of the thresholded trace prediction (probability > 0.5) over all crops of ``data``.

    The counts are pooled over every crop (one global Dice); target pixels count as trace where
    their coverage exceeds 0.5. Two empty masks give 1.0. The model is left in eval mode.
    """
    model.eval()
    device = next(model.parameters()).device
    inter = pred_sum = true_sum = 0.0
    with torch.inference_mode():
        batch: list[tuple[torch.Tensor, torch.Tensor]] = []
        for item in [*data.iter_epoch(0), None]:
            if item is not None:
                batch.append(item)
            if batch and (item is None or len(batch) == batch_size):
                x = torch.stack([b[0] for b in batch]).to(device)
                t = torch.stack([b[1] for b in batch]).to(device) > 0.5
                pred = model(x)[:, :1] > 0.0
                inter += float((pred & t).sum())
                pred_sum += float(pred.sum())
                true_sum += float(t.sum())
                batch = []
    denom = pred_sum + true_sum
    return 1.0 if denom == 0 else 2.0 * inter / denom


def _stream(data: CropSource, position: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n = data.epoch_size
    epoch, start = divmod(position, n)
    while True:
        yield from data.iter_epoch(epoch, start)
        epoch, start = epoch + 1, 0


def _lr_at(step: int, total: int, lr: float, schedule: str, warmup: int) -> float:
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return lr * (_MIN_LR_FRACTION + (1 - _MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress)))


def _tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode("utf-8") + b"\x00")
        h.update(tensors[name].detach().cpu().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    global_params: Mapping[str, torch.Tensor] | None,
    meta: dict[str, Any],
) -> None:
    names = {id(p): n for n, p in model.named_parameters()}
    tensors: dict[str, torch.Tensor] = {
        f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()
    }
    adam_steps = set()
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state:
                continue
            name = names[id(p)]
            tensors[f"adamw.exp_avg.{name}"] = state["exp_avg"].detach().cpu().contiguous()
            tensors[f"adamw.exp_avg_sq.{name}"] = state["exp_avg_sq"].detach().cpu().contiguous()
            adam_steps.add(float(state["step"]))
    if global_params is not None:
        for k, v in global_params.items():
            tensors[f"global.{k}"] = v.detach().cpu().contiguous()
    meta = dict(
        meta, format=CHECKPOINT_FORMAT, version=_CHECKPOINT_VERSION, adam_step=max(adam_steps, default=0.0)
    )
    data = safetensors.torch.save(
        tensors, metadata={_CHECKPOINT_KEY: json.dumps(meta, sort_keys=True, allow_nan=False)}
    )
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _load_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta_text = (handle.metadata() or {}).get(_CHECKPOINT_KEY)
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise ModelFileError(f"not a readable checkpoint ({str(exc).splitlines()[0]})", path) from None
    if meta_text is None:
        raise ModelFileError(f"not an ecgdig checkpoint (no {_CHECKPOINT_KEY!r} metadata)", path)
    meta = json.loads(meta_text)
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(
            f"unknown checkpoint format {meta.get('format') if isinstance(meta, dict) else None!r}", path
        )
    if meta.get("version") != _CHECKPOINT_VERSION:
        raise ModelFileError(f"unsupported checkpoint version {meta.get('version')!r}", path)
    return meta, tensors


def train(
    model: nn.Module,
    data: CropSource,
    *,
    steps: int | None = None,
    epochs: float | None = None,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 8,
    seed: int = 0,
    val_data: CropSource | None = None,
    val_every: int | None = None,
    proximal_mu: float = 0.0,
    global_params: Mapping[str, torch.Tensor] | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 100,
    on_step: Callable[[StepInfo], None] | None = None,
    schedule: Literal["constant", "cosine"] = "constant",
    warmup_steps: int = 0,
    threads: int | None = None,
    device: str | torch.device = "cpu",
) -> TrainResult:
    """Train ``model`` in place on crops from ``data``.

    Parameters
    ----------
    model : torch.nn.Module
        Usually a :class:`~ecgdig.model.network.TraceUnet`; trained in place (left in eval mode).
    data : CropSource
        A :class:`~ecgdig.model.data.CropStream` (``RenderedPages``, ``PageFolder``) or
        :class:`~ecgdig.model.data.FixedCrops`.
    steps : int, optional
        Optimizer steps. Give exactly one of ``steps`` and ``epochs``.
    epochs : float, optional
        Passes over ``data.epoch_size`` crops (the last batch may be short).
    lr : float, optional
        Peak AdamW learning rate.
    weight_decay : float, optional
        AdamW decoupled weight decay.
    batch_size : int, optional
        Crops per step.
    seed : int, optional
        Recorded with the run and checked on resume; the data's randomness comes from the data
        source's own seed and the model's from its construction.
    val_data : CropSource, optional
        Validation crops (its epoch 0 is used every time); Dice is computed every ``val_every``
        steps and after the last step.
    val_every : int, optional
        Validate this often (None: only at the end).
    proximal_mu : float, optional
        FedProx coefficient; 0 turns the term off.
    global_params : mapping of str to tensor, optional
        FedProx reference weights by parameter name; default: the model's weights when this run
        started (not resumed), which is the global model a federated site has just loaded.
    checkpoint : str or Path, optional
        Checkpoint file. If it exists the run resumes from it (its settings must match); it is
        rewritten atomically every ``checkpoint_every`` steps and at the end.
    checkpoint_every : int, optional
        Steps between checkpoints.
    on_step : callable, optional
        Called with a :class:`StepInfo` after every step.
    schedule : {"constant", "cosine"}, optional
        Learning-rate schedule after the warm-up (cosine decays to 2% of ``lr``).
    warmup_steps : int, optional
        Linear warm-up steps.
    threads : int, optional
        Torch intra-op threads during the call (restored afterwards).
    device : str or torch.device, optional
        Where the steps run (``"cpu"``, ``"cuda"``, ``"cuda:1"``). The model is moved there for
        the call and back to where it was afterwards; checkpoints hold CPU tensors, so a run
        started on a GPU can resume on a CPU and the other way round. Runs on a GPU are not
        bit-for-bit repeatable.

    Returns
    -------
    TrainResult

    Raises
    ------
    ConfigError
        For inconsistent settings, or a checkpoint made with other settings.
    ModelFileError
        For an unreadable checkpoint.
    TrainingDivergedError
        If a step's loss is not finite (the last checkpoint stays as it was).
    """
    if (steps is None) == (epochs is None):
        raise ConfigError("give exactly one of steps and epochs")
    for name, value in (("batch_size", batch_size), ("checkpoint_every", checkpoint_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if not (lr > 0 and weight_decay >= 0 and proximal_mu >= 0 and warmup_steps >= 0):
        raise ConfigError("lr must be positive and weight_decay, proximal_mu, warmup_steps non-negative")
    if schedule not in ("constant", "cosine"):
        raise ConfigError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    n = data.epoch_size
    if n < 1:
        raise ConfigError("the training data is empty")
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"steps must be a positive integer, got {steps!r}")
        total_examples = steps * batch_size
    else:
        if not (epochs is not None and epochs > 0):
            raise ConfigError(f"epochs must be positive, got {epochs!r}")
        total_examples = max(1, round(epochs * n))
    total_steps = math.ceil(total_examples / batch_size)
    try:
        run_on = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r} ({exc})") from None
    if run_on.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA GPU")
    came_from = next(model.parameters()).device
    model.to(run_on)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    settings: dict[str, Any] = {
        "lr": lr,
        "weight_decay": weight_decay,
        "batch_size": batch_size,
        "seed": seed,
        "total_steps": total_steps,
        "total_examples": total_examples,
        "epoch_size": n,
        "proximal_mu": proximal_mu,
        "schedule": schedule,
        "warmup_steps": warmup_steps,
    }
    losses: list[float] = []
    val_history: list[tuple[int, float]] = []
    start_step = 0
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    ref: dict[str, torch.Tensor] | None = None
    if ckpt_path is not None and ckpt_path.exists():
        meta, tensors = _load_checkpoint(ckpt_path)
        saved = meta.get("settings", {})
        for key, value in settings.items():
            if saved.get(key) != value:
                raise ConfigError(
                    f"checkpoint was made with {key}={saved.get(key)!r}, this run has {key}={value!r}",
                    ckpt_path,
                )
        model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        try:
            model.load_state_dict(model_state, strict=True)
        except RuntimeError as exc:
            raise ModelFileError(
                f"checkpoint does not fit the model ({str(exc).splitlines()[0]})", ckpt_path
            ) from None
        if meta["adam_step"] > 0:
            state: dict[int, dict[str, torch.Tensor]] = {}
            for i, (name, _p) in enumerate((k, p) for k, p in model.named_parameters() if p.requires_grad):
                state[i] = {
                    "step": torch.tensor(float(meta["adam_step"])),
                    "exp_avg": tensors[f"adamw.exp_avg.{name}"],
                    "exp_avg_sq": tensors[f"adamw.exp_avg_sq.{name}"],
                }
            optimizer.load_state_dict(
                {"state": state, "param_groups": optimizer.state_dict()["param_groups"]}
            )
        if proximal_mu > 0:
            ref = {k[len("global.") :]: v.to(run_on) for k, v in tensors.items() if k.startswith("global.")}
        start_step = int(meta["step"])
        losses = [float(v) for v in meta["losses"]]
        val_history = [(int(s), float(d)) for s, d in meta["val_dice"]]
    if proximal_mu > 0 and ref is None:
        source = global_params if global_params is not None else dict(model.named_parameters())
        ref = {k: torch.as_tensor(v).detach().to(run_on, torch.float32, copy=True) for k, v in source.items()}
    if proximal_mu > 0 and ref is not None and global_params is not None and start_step > 0:
        given = {k: torch.as_tensor(v).to(torch.float32) for k, v in global_params.items()}
        if _tensor_digest(given) != _tensor_digest(ref):
            raise ConfigError(
                "global_params differ from the ones the checkpoint was trained against", ckpt_path
            )

    def save(step: int) -> None:
        if ckpt_path is None:
            return
        meta = {
            "step": step,
            "settings": settings,
            "losses": losses,
            "val_dice": [list(v) for v in val_history],
        }
        _save_checkpoint(ckpt_path, model, optimizer, ref, meta)

    began = time.perf_counter()
    with torch_threads(threads):
        stream = _stream(data, start_step * batch_size)
        for step in range(start_step, total_steps):
            size = min(batch_size, total_examples - step * batch_size)
            batch = [next(stream) for _ in range(size)]
            x = torch.stack([b[0] for b in batch]).to(run_on, non_blocking=True)
            t = torch.stack([b[1] for b in batch]).to(run_on, non_blocking=True)
            rate = _lr_at(step, total_steps, lr, schedule, warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = rate
            model.train()
            optimizer.zero_grad(set_to_none=True)
            loss, bce, dice_loss = segmentation_loss(model(x), t)
            prox = (
                proximal_term(model, ref, proximal_mu)
                if ref is not None and proximal_mu > 0
                else torch.zeros((), device=run_on)
            )
            total = loss + prox
            loss_value = float(total.detach())
            if not math.isfinite(loss_value):
                raise TrainingDivergedError(
                    f"training diverged: loss is {loss_value} at step {step + 1}; try a lower learning rate"
                )
            total.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            losses.append(loss_value)
            done = step + 1
            dice_now = None
            if val_data is not None and ((val_every and done % val_every == 0) or done == total_steps):
                dice_now = evaluate_dice(model, val_data, batch_size=batch_size)
                val_history.append((done, dice_now))
            if done % checkpoint_every == 0 or done == total_steps:
                save(done)
            if on_step is not None:
                on_step(
                    StepInfo(
                        step=done,
                        total_steps=total_steps,
                        loss=loss_value,
                        bce=float(bce.detach()),
                        dice_loss=float(dice_loss.detach()),
                        proximal=float(prox.detach()),
                        lr=rate,
                        elapsed_s=time.perf_counter() - began,
                        val_dice=dice_now,
                    )
                )
    model.eval()
    model.to(came_from)
    return TrainResult(
        steps=total_steps,
        examples=total_examples,
        losses=tuple(losses),
        val_dice=tuple(val_history),
        seconds=time.perf_counter() - began,
        resumed_from=start_step,
        settings=settings,
    )
