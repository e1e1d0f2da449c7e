from __future__ import annotations

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from torch import nn

from ecgdig.errors import ConfigError
from ecgdig.model.network import (
    DEFAULT_ARCHITECTURE,
    UnetArchitecture,
    batchnorm_to_groupnorm,
    build_network,
    count_parameters,
    image_to_input,
    make_default_model,
)


def test_default_model_is_small_groupnorm_float32_without_buffers() -> None:
    model = make_default_model(seed=0)

    assert 200_000 < count_parameters(model) < 1_000_000
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert list(model.buffers()) == []  # the state dict is parameters only (federated files carry it)
    assert {t.dtype for t in model.state_dict().values()} == {torch.float32}


def test_output_has_input_size_and_one_logit_channel(tiny: UnetArchitecture) -> None:
    model = build_network(tiny, seed=1).eval()
    with torch.inference_mode():
        out = model(torch.zeros(2, 3, 64, 96))
    assert out.shape == (2, 1, 64, 96)


def test_same_seed_same_weights_and_global_rng_untouched(tiny: UnetArchitecture) -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = build_network(tiny, seed=3), build_network(tiny, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_forward_rejects_sides_not_multiple_of_stride() -> None:
    model = make_default_model()
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.zeros(1, 3, 100, 96))


def test_batchnorm_to_groupnorm_replaces_every_batchnorm_of_an_smp_unet() -> None:
    net = smp.Unet("resnet18", encoder_weights=None, encoder_depth=3, decoder_channels=(32, 16, 8))
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())

    batchnorm_to_groupnorm(net, channels_per_group=8)

    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    groups = {m.num_channels: m.num_groups for m in net.modules() if isinstance(m, nn.GroupNorm)}
    assert groups[64] == 8 and groups[8] == 1


def test_architecture_round_trips_and_rejects_bad_dicts() -> None:
    d = DEFAULT_ARCHITECTURE.to_dict()
    assert UnetArchitecture.from_dict(d) == DEFAULT_ARCHITECTURE

    with pytest.raises(ConfigError, match="unknown key"):
        UnetArchitecture.from_dict({**d, "dropout": 0.1})
    with pytest.raises(ConfigError, match="must match"):
        UnetArchitecture.from_dict({**d, "decoder_channels": [8, 4]})
    with pytest.raises(ConfigError, match="unknown architecture"):
        UnetArchitecture.from_dict({**d, "name": "resnet50"})


def test_image_to_input_standardizes_each_channel() -> None:
    # Prepare: half the pixels 0, half 255 in every channel -> mean 0.5, std 0.5.
    image = np.zeros((2, 2, 3), np.uint8)
    image[0] = 255

    x = image_to_input(image)

    assert x.shape == (3, 2, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(x[:, 1], -1.0, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        image_to_input(np.zeros((2, 2, 3), np.float32))


# Opacus warns that its secure RNG is off (fine for a test) and about hook internals.
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")
def test_no_inplace_activations_and_opacus_can_train_it(tiny: UnetArchitecture) -> None:
    # In-place ReLUs break Opacus's per-sample-gradient hooks; the network has none.
    model = build_network(tiny, seed=0)
    assert not any(getattr(m, "inplace", False) for m in model.modules())

    opacus = pytest.importorskip("opacus")
    from torch.utils.data import DataLoader, TensorDataset

    from ecgdig.model.train import segmentation_loss

    assert opacus.validators.ModuleValidator.validate(model, strict=False) == []
    data = DataLoader(TensorDataset(torch.randn(4, 3, 32, 32), torch.zeros(4, 1, 32, 32)), batch_size=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    private, optimizer, data = opacus.PrivacyEngine().make_private(
        module=model, optimizer=optimizer, data_loader=data, noise_multiplier=1.0, max_grad_norm=1.0
    )
    for x, t in data:
        optimizer.zero_grad()
        segmentation_loss(private(x), t)[0].backward()
        optimizer.step()
