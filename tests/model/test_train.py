from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ecgdig.errors import ConfigError
from ecgdig.model.data import CropStream, FixedCrops
from ecgdig.model.network import UnetArchitecture, build_network
from ecgdig.model.train import StepInfo, evaluate_dice, proximal_term, segmentation_loss, train


def test_one_step_reduces_the_loss_on_a_fixed_batch(
    synthetic_stream: CropStream, tiny: UnetArchitecture
) -> None:
    # Prepare
    model = build_network(tiny, seed=0)
    batch = FixedCrops.from_stream(synthetic_stream)
    x = torch.stack([c[0] for c in batch.crops])
    t = torch.stack([c[1] for c in batch.crops])
    with torch.no_grad():
        before = float(segmentation_loss(model(x), t)[0])

    # Execute: one full-batch step.
    result = train(model, batch, steps=1, batch_size=len(batch), lr=5e-3)

    # Assert
    with torch.no_grad():
        after = float(segmentation_loss(model(x), t)[0])
    assert result.losses[0] == pytest.approx(before, rel=1e-5)
    assert after < before


def test_proximal_term_is_zero_at_the_global_weights_and_has_gradient_mu_times_difference(
    tiny: UnetArchitecture,
) -> None:
    model = build_network(tiny, seed=0)
    reference = {k: v.detach().clone() for k, v in model.named_parameters()}
    mu = 0.3
    assert float(proximal_term(model, reference, mu).detach()) == 0.0

    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    proximal_term(model, reference, mu).backward()

    for name, p in model.named_parameters():
        assert p.grad is not None
        torch.testing.assert_close(p.grad, mu * (p.detach() - reference[name]))


def test_proximal_term_checks_reference_names(tiny: UnetArchitecture) -> None:
    model = build_network(tiny, seed=0)
    with pytest.raises(ValueError, match="no tensor for parameter"):
        proximal_term(model, {}, 0.1)


class _Stop(Exception):
    pass


def _stop_at(step: int) -> Callable[[StepInfo], None]:
    def callback(info: StepInfo) -> None:
        if info.step == step:
            raise _Stop

    return callback


def test_resume_from_checkpoint_repeats_the_uninterrupted_losses(
    synthetic_stream: CropStream, tmp_path: Path, tiny: UnetArchitecture
) -> None:
    # Batches of 4 from epochs of 6 crops: batches straddle epoch boundaries; FedProx on.
    kwargs = dict(steps=5, batch_size=4, lr=3e-3, proximal_mu=0.01, schedule="cosine", warmup_steps=2)
    straight = train(build_network(tiny, seed=0), synthetic_stream, **kwargs)  # type: ignore[arg-type]

    ckpt = tmp_path / "run.ckpt.safetensors"
    with pytest.raises(_Stop):
        train(
            build_network(tiny, seed=0),
            synthetic_stream,
            checkpoint=ckpt,
            checkpoint_every=1,
            on_step=_stop_at(3),
            **kwargs,
        )  # type: ignore[arg-type]
    fresh = build_network(tiny, seed=99)  # different init: everything must come from the checkpoint
    resumed = train(fresh, synthetic_stream, checkpoint=ckpt, **kwargs)  # type: ignore[arg-type]

    assert resumed.resumed_from == 3
    assert resumed.losses == straight.losses
    assert resumed.steps == 5


def test_resume_refuses_other_settings(
    synthetic_stream: CropStream, tmp_path: Path, tiny: UnetArchitecture
) -> None:
    ckpt = tmp_path / "c.safetensors"
    train(build_network(tiny, seed=0), synthetic_stream, steps=1, batch_size=2, checkpoint=ckpt)
    with pytest.raises(ConfigError, match="batch_size=2, this run has batch_size=3"):
        train(build_network(tiny, seed=0), synthetic_stream, steps=1, batch_size=3, checkpoint=ckpt)


def test_epochs_validation_and_callback(synthetic_stream: CropStream, tiny: UnetArchitecture) -> None:
    seen: list[StepInfo] = []
    result = train(
        build_network(tiny, seed=0),
        synthetic_stream,
        epochs=1,
        batch_size=4,
        val_data=FixedCrops.from_stream(synthetic_stream),
        on_step=seen.append,
    )
    assert result.steps == 2 and result.examples == 6  # 4 + a short batch of 2
    assert [s.step for s in seen] == [1, 2] and seen[-1].val_dice is not None
    assert result.final_val_dice == seen[-1].val_dice
    assert 0.0 <= evaluate_dice(build_network(tiny, seed=0), synthetic_stream) <= 1.0
    with pytest.raises(ConfigError, match="exactly one"):
        train(build_network(tiny, seed=0), synthetic_stream)


def test_a_diverging_run_is_a_clear_error_not_a_traceback(tiny) -> None:
    from ecgdig.errors import EcgdigError
    from ecgdig.model.network import TraceUnet

    model = TraceUnet(tiny)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    crops = [(torch.rand(3, 32, 32), (torch.rand(1, 32, 32) > 0.5).float()) for _ in range(2)]
    with pytest.raises(EcgdigError, match="training diverged: loss is nan at step 1"):
        train(model, FixedCrops(crops), steps=1, batch_size=2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_asking_for_a_gpu_without_one_is_a_clear_error(synthetic_stream: CropStream, tiny) -> None:
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        train(build_network(tiny, seed=0), synthetic_stream, steps=1, device="cuda")
    with pytest.raises(ConfigError, match="unknown device"):
        train(build_network(tiny, seed=0), synthetic_stream, steps=1, device="abacus")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_run_follows_the_cpu_run_and_resumes_on_the_cpu(
    synthetic_stream: CropStream, tmp_path: Path, tiny: UnetArchitecture
) -> None:
    kwargs = dict(steps=4, batch_size=4, lr=3e-3, proximal_mu=0.01)
    on_cpu = train(build_network(tiny, seed=0), synthetic_stream, **kwargs)  # type: ignore[arg-type]
    ckpt = tmp_path / "run.ckpt.safetensors"
    with pytest.raises(_Stop):
        train(
            build_network(tiny, seed=0), synthetic_stream, device="cuda", checkpoint=ckpt,
            checkpoint_every=1, on_step=_stop_at(2), **kwargs,
        )  # type: ignore[arg-type]  # fmt: skip
    model = build_network(tiny, seed=5)
    resumed = train(model, synthetic_stream, checkpoint=ckpt, **kwargs)  # type: ignore[arg-type]

    # Convolutions on the GPU round differently (TF32 among them): close, not equal.
    assert resumed.losses == pytest.approx(on_cpu.losses, rel=2e-2)
    assert next(model.parameters()).device.type == "cpu"
