from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from ecgdig.model.inference import plan_tiles, predict_trace_probability
from ecgdig.model.network import UnetArchitecture, build_network, make_default_model


@pytest.mark.parametrize(
    ("length", "tile", "overlap"),
    [(1, 512, 64), (447, 512, 64), (1000, 512, 64), (1728, 512, 64), (2240, 256, 128), (300, 128, 0)],
)
def test_tile_weights_sum_to_one_and_starts_keep_the_stride_phase(
    length: int, tile: int, overlap: int
) -> None:
    plan = plan_tiles(length, tile, overlap, multiple=32)

    total = np.zeros(plan.padded)
    for start, weights in zip(plan.starts, plan.weights, strict=True):
        total[start : start + plan.tile] += weights

    np.testing.assert_allclose(total, 1.0, atol=1e-12)
    assert all(s % 32 == 0 for s in plan.starts) and plan.tile % 32 == 0
    assert plan.pad_before + length <= plan.padded


def test_tiled_equals_untiled_for_a_model_whose_receptive_field_the_overlap_covers(
    tiny_no_norm: UnetArchitecture, make_page: Callable[..., tuple[np.ndarray, np.ndarray]]
) -> None:
    # Prepare: a no-norm network (bounded receptive field) and a page that fits one 512 tile.
    model = build_network(tiny_no_norm, seed=2)
    rng = np.random.default_rng(0)
    image, _ = make_page(0, rows=200, cols=330)
    image = np.clip(image.astype(int) + rng.integers(-20, 20, image.shape), 0, 255).astype(np.uint8)

    # Execute: one tile versus 3 x 4 tiles of 128 px overlapping by 64 px.
    whole = predict_trace_probability(image, model, tile=512, overlap=64)
    tiled = predict_trace_probability(image, model, tile=128, overlap=64)

    # Assert
    assert whole.shape == image.shape[:2] and whole.dtype == np.float32
    assert np.abs(whole - tiled).max() < 1e-4


def test_default_model_probabilities_and_argument_checks() -> None:
    model = make_default_model()
    image = np.full((70, 90, 3), 230, np.uint8)
    before = torch.get_num_threads()

    prob = predict_trace_probability(image[:, :, 0], model, threads=2)  # grey accepted

    assert prob.shape == (70, 90) and ((prob >= 0) & (prob <= 1)).all()
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="multiple of 32"):
        predict_trace_probability(image, model, tile=500)
    with pytest.raises(ValueError, match="overlap < tile"):
        predict_trace_probability(image, model, tile=64, overlap=64)
    with pytest.raises(ValueError, match="uint8"):
        predict_trace_probability(image.astype(np.float32), model)


def test_group_norm_model_tiles_agree_closely_inside_the_page(
    tiny: UnetArchitecture, make_page: Callable[..., tuple[np.ndarray, np.ndarray]]
) -> None:
    # GroupNorm statistics depend on the tile, so tiling is not exact here; it must stay close.
    model = build_network(tiny, seed=1)
    image, _ = make_page(1, rows=160, cols=200)
    a = predict_trace_probability(image, model, tile=256, overlap=64)
    b = predict_trace_probability(image, model, tile=128, overlap=64)
    assert np.abs(a - b).mean() < 0.05
