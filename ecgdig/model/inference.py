"""Tiled inference: a trace probability for every pixel of a page of any size.

The page is standardized once (:func:`~ecgdig.model.network.image_to_input`, statistics over the
whole page), padded by reflection, and cut into overlapping square tiles whose origins are
multiples of the network's output stride, so the strided layers see the same pixel phase in every
tile. Each tile's probabilities are weighted by a separable window and the weights of overlapping
tiles sum to one exactly:

- across an overlap of ``o`` pixels between two neighbouring tiles the later tile's weight is
  ``0`` over the first ``o / 4`` pixels, rises as a raised cosine over the middle ``o / 2`` and is
  ``1`` over the last ``o / 4``; the earlier tile gets one minus that. Predictions within ``o / 4``
  of a tile's inner edge, where the network sees padding instead of page, are never used;
- on sides that face the (padded) page border a tile's weight stays 1.

The page is padded by ``o / 2`` pixels on every side before tiling, so page pixels are never at a
tile's outer edge either. A page that fits one tile is run as a single tile.

This is the standard sliding-window scheme of nnU-Net (Isensee et al. 2021), with a cosine ramp
in place of its Gaussian so the weights are exactly complementary.

References
----------
Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image
segmentation", Nature Methods 18, 2021.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ecgdig.model.network import image_to_input

__all__ = [
    "DEFAULT_OVERLAP",
    "DEFAULT_TILE",
    "TilePlan",
    "plan_tiles",
    "predict_trace_probability",
    "torch_threads",
]

#: Default tile side in pixels (the size the default model is validated at).
DEFAULT_TILE = 512
#: Default overlap between neighbouring tiles in pixels.
DEFAULT_OVERLAP = 64


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one axis go and how they are weighted.

    Attributes
    ----------
    tile : int
        Tile length along the axis (shorter than asked when one tile covers the page).
    padded : int
        Length of the padded axis.
    pad_before : int
        Padding added before the page (the page starts at this index).
    starts : tuple of int
        Start of each tile on the padded axis.
    weights : tuple of ndarray
        One ``(tile,)`` float64 weight profile per tile; their sum over the padded axis is 1.
    """

    tile: int
    padded: int
    pad_before: int
    starts: tuple[int, ...]
    weights: tuple[np.ndarray, ...]


def _ramp(overlap: int) -> np.ndarray:
    """Weight of the later tile across an overlap: 0 for a quarter, cosine rise, 1 for a quarter."""
    t = np.arange(overlap, dtype=np.float64)
    lo, hi = overlap / 4.0, 3.0 * overlap / 4.0
    u = np.clip((t + 0.5 - lo) / (hi - lo), 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * u)


def plan_tiles(length: int, tile: int, overlap: int, multiple: int = 1) -> TilePlan:
    """Plan the tiles along one axis of ``length`` page pixels.

    Parameters
    ----------
    length : int
        Page pixels along the axis.
    tile : int
        Tile side (a multiple of the network's input multiple).
    overlap : int
        Pixels shared by neighbouring tiles (a multiple of the input multiple, smaller than ``tile``).
    multiple : int, optional
        When one tile covers the padded page, it is shortened to the page plus padding rounded up
        to this multiple.

    Returns
    -------
    TilePlan

    Examples
    --------
    >>> plan = plan_tiles(1000, 512, 64)
    >>> plan.starts, plan.padded
    ((0, 448, 896), 1408)
    >>> plan_tiles(100, 512, 64, multiple=32).tile  # 100 + 2 * 32 padding, rounded up to 32
    192
    >>> total = np.zeros(plan.padded)
    >>> for s, w in zip(plan.starts, plan.weights):
    ...     total[s:s + 512] += w
    >>> bool(np.allclose(total, 1.0))
    True
    """
    if length < 1:
        raise ValueError(f"length must be positive, got {length}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got {overlap} for tile {tile}")
    margin = overlap // 2
    step = tile - overlap
    needed = length + 2 * margin
    if needed <= tile:
        short = min(tile, math.ceil(needed / multiple) * multiple)
        return TilePlan(tile=short, padded=short, pad_before=margin, starts=(0,), weights=(np.ones(short),))
    n = 1 + math.ceil((needed - tile) / step)
    padded = tile + (n - 1) * step
    starts = tuple(i * step for i in range(n))
    ramp = _ramp(overlap)
    weights = []
    for i in range(n):
        w = np.ones(tile, dtype=np.float64)
        if overlap:
            if i > 0:
                w[:overlap] = ramp
            if i < n - 1:
                w[tile - overlap :] = 1.0 - ramp
        weights.append(w)
    return TilePlan(tile=tile, padded=padded, pad_before=margin, starts=starts, weights=tuple(weights))


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Set torch's intra-op thread count inside the block and restore it after (None: leave it)."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _input_multiple(model: nn.Module) -> int:
    arch = getattr(model, "architecture", None)
    return int(getattr(arch, "input_multiple", 32))


def predict_trace_probability(
    image: np.ndarray,
    model: nn.Module,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    threads: int | None = None,
    batch_size: int = 4,
) -> np.ndarray:
    """Return the probability that each pixel of ``image`` is on an ECG trace.

    Parameters
    ----------
    image : (rows, cols, 3) ndarray of uint8
        The page at the model's scale (``ModelHeader.px_per_mm``); a 2-D grey image is accepted.
    model : torch.nn.Module
        A :class:`~ecgdig.model.network.TraceUnet` (channel 0 of its output is the trace logit).
        It is switched to eval mode and left there.
    tile : int, optional
        Tile side in pixels; a multiple of the model's input multiple (32 by default).
    overlap : int, optional
        Overlap between neighbouring tiles in pixels; a multiple of the input multiple, below
        ``tile``. It should cover the network's useful receptive field (64 does for the default).
    threads : int, optional
        Torch intra-op threads for this call (restored afterwards); None leaves the setting alone.
    batch_size : int, optional
        Tiles per forward pass.

    Returns
    -------
    (rows, cols) ndarray of float32
        Probabilities in [0, 1].

    Raises
    ------
    ValueError
        For a malformed image or tile settings.

    Examples
    --------
    >>> from ecgdig.model.network import make_default_model
    >>> prob = predict_trace_probability(np.full((100, 150, 3), 255, np.uint8), make_default_model())
    >>> prob.shape, prob.dtype, bool(((prob >= 0) & (prob <= 1)).all())
    ((100, 150), dtype('float32'), True)
    """
    if isinstance(image, np.ndarray) and image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    x = image_to_input(image)  # validates the image
    m = _input_multiple(model)
    for name, value in (("tile", tile), ("overlap", overlap)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value % m:
            raise ValueError(f"{name} must be a non-negative multiple of {m}, got {value!r}")
    if tile < m or overlap >= tile:
        raise ValueError(f"need 0 <= overlap < tile and tile >= {m}, got tile={tile}, overlap={overlap}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    rows, cols = x.shape[1:]
    plan_r, plan_c = plan_tiles(rows, tile, overlap, m), plan_tiles(cols, tile, overlap, m)
    pad = (
        (0, 0),
        (plan_r.pad_before, plan_r.padded - rows - plan_r.pad_before),
        (plan_c.pad_before, plan_c.padded - cols - plan_c.pad_before),
    )
    padded = np.pad(x, pad, mode="symmetric")
    out = np.zeros((plan_r.padded, plan_c.padded), dtype=np.float32)
    boxes = [(i, j) for i in range(len(plan_r.starts)) for j in range(len(plan_c.starts))]
    model.eval()
    with torch_threads(threads), torch.inference_mode():
        for k in range(0, len(boxes), batch_size):
            chunk = boxes[k : k + batch_size]
            th, tw = plan_r.tile, plan_c.tile
            batch = np.stack(
                [
                    padded[
                        :, plan_r.starts[i] : plan_r.starts[i] + th, plan_c.starts[j] : plan_c.starts[j] + tw
                    ]
                    for i, j in chunk
                ]
            )
            tensor = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
            prob = torch.sigmoid(model(tensor)[:, 0]).numpy()
            for (i, j), p in zip(chunk, prob, strict=True):
                w = np.outer(plan_r.weights[i], plan_c.weights[j]).astype(np.float32)
                r0, c0 = plan_r.starts[i], plan_c.starts[j]
                out[r0 : r0 + th, c0 : c0 + tw] += w * p
    r0, c0 = plan_r.pad_before, plan_c.pad_before
    return np.clip(out[r0 : r0 + rows, c0 : c0 + cols], 0.0, 1.0)
