"""Fixtures for the segmenter tests: tiny architectures and synthetic pages with exact masks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from ecgdig.model.data import CropStream
from ecgdig.model.network import UnetArchitecture

#: Two stages, GroupNorm: a few thousand parameters, milliseconds per step on 64 x 64 crops.
TINY = UnetArchitecture(encoder_widths=(4, 8), decoder_channels=(8, 4), channels_per_group=4)
#: The same without normalization: predictions depend on a bounded neighbourhood only.
TINY_NO_NORM = UnetArchitecture(encoder_widths=(4, 8), decoder_channels=(8, 4), norm="none")


def synthetic_page(
    rng: np.random.Generator, rows: int = 96, cols: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """A pinkish page with a dark sine trace (2 px thick) and its exact mask."""
    image = np.empty((rows, cols, 3), np.uint8)
    image[:] = (250, 225, 220)
    image[:, ::8] = (240, 150, 150)  # a grid line every 8 px
    mask = np.zeros((rows, cols), bool)
    phase, amp = rng.uniform(0, 6.28), rng.uniform(5, 20)
    x = np.arange(cols)
    y = np.round(rows / 2 + amp * np.sin(x / 9.0 + phase)).astype(int)
    for dy in (0, 1):
        mask[np.clip(y + dy, 0, rows - 1), x] = True
    image[mask] = (20, 20, 20)
    return image, mask


class SyntheticPages(CropStream):
    """A CropStream over synthetic pages drawn from each page's generator (no files, no renderer)."""

    def __init__(self, n_pages: int = 3, **kwargs: object) -> None:
        self.n_pages = n_pages
        super().__init__(pages_per_epoch=n_pages, **kwargs)  # type: ignore[arg-type]

    def page_count(self) -> int:
        return self.n_pages

    def load_page(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
        image, mask = synthetic_page(np.random.default_rng([index, int(rng.integers(1 << 30))]))
        return image, mask, 8.0


@pytest.fixture
def tiny() -> UnetArchitecture:
    return TINY


@pytest.fixture
def tiny_no_norm() -> UnetArchitecture:
    return TINY_NO_NORM


@pytest.fixture
def make_page() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """Factory ``make_page(seed, rows=96, cols=128)`` for :func:`synthetic_page`."""

    def make(seed: int, rows: int = 96, cols: int = 128) -> tuple[np.ndarray, np.ndarray]:
        return synthetic_page(np.random.default_rng(seed), rows, cols)

    return make


@pytest.fixture
def synthetic_stream() -> SyntheticPages:
    return SyntheticPages(n_pages=3, seed=5, crop_px=64, crops_per_page=2, flatten=False)


@pytest.fixture(autouse=True)
def _fixed_threads() -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
