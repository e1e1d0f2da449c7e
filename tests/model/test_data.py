from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from ecgdig.errors import ConfigError
from ecgdig.model.data import (
    CropStream,
    FixedCrops,
    PageFolder,
    RenderedPages,
    prepare_page,
    random_crops,
    truth_px_per_mm,
)

PageFactory = Callable[..., tuple[np.ndarray, np.ndarray]]


def test_truth_scale_follows_the_homography() -> None:
    assert truth_px_per_mm({"px_per_mm": 7.874}) == 7.874
    identity = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert truth_px_per_mm(
        {"px_per_mm": 7.874, "homography": identity, "page_size_px": [2200, 1700]}
    ) == pytest.approx(7.874)
    rotated_half = [
        [0.5 * np.cos(0.1), -0.5 * np.sin(0.1), 40],
        [0.5 * np.sin(0.1), 0.5 * np.cos(0.1), 9],
        [0, 0, 1],
    ]
    assert truth_px_per_mm(
        {"px_per_mm": 8.0, "homography": rotated_half, "page_size_px": [100, 80]}
    ) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="px_per_mm"):
        truth_px_per_mm({})


def test_prepare_page_resamples_image_and_soft_mask(make_page: PageFactory) -> None:
    image, mask = make_page(0, rows=96, cols=128)

    x, target = prepare_page(image, mask, source_px_per_mm=4.0, px_per_mm=8.0, flatten=True)

    assert x.shape == (3, 192, 256) and target.shape == (192, 256)
    assert target.min() >= 0.0 and target.max() <= 1.0
    # Area is conserved up to interpolation: twice the scale, four times the trace pixels.
    assert target.sum() == pytest.approx(4 * mask.sum(), rel=0.1)


def test_random_crops_are_seeded_and_centred_on_traces(make_page: PageFactory) -> None:
    image, mask = make_page(0, rows=96, cols=400)
    x, target = prepare_page(image, mask, source_px_per_mm=8.0, flatten=False)

    a = random_crops(x, target, crop_px=64, count=5, rng=np.random.default_rng(3), trace_fraction=1.0)
    b = random_crops(x, target, crop_px=64, count=5, rng=np.random.default_rng(3), trace_fraction=1.0)

    for (xa, ta), (xb, tb) in zip(a, b, strict=True):
        assert xa.shape == (3, 64, 64) and ta.shape == (1, 64, 64)
        assert torch.equal(xa, xb) and torch.equal(ta, tb)
        assert ta.sum() > 0


def test_small_pages_are_padded_to_the_crop(make_page: PageFactory) -> None:
    image, mask = make_page(0, rows=40, cols=50)
    x, target = prepare_page(image, mask, source_px_per_mm=8.0, flatten=False)
    ((xc, tc),) = random_crops(x, target, crop_px=64, count=1, rng=np.random.default_rng(0))
    assert xc.shape == (3, 64, 64) and float(tc[0, 40:].sum()) == 0.0


def test_stream_is_deterministic_and_starts_anywhere(synthetic_stream: CropStream) -> None:
    full = list(synthetic_stream.iter_epoch(1))
    again = list(synthetic_stream.iter_epoch(1))
    tail = list(synthetic_stream.iter_epoch(1, start=3))
    other_epoch = list(synthetic_stream.iter_epoch(2))

    assert len(full) == synthetic_stream.epoch_size == 6
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full, again, strict=True))
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[3:], tail, strict=True)
    )
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(full, other_epoch, strict=True))
    fixed = FixedCrops.from_stream(synthetic_stream, seed=0)
    assert len(fixed) == 6
    orders = [[id(c[0]) for c in fixed.iter_epoch(e)] for e in (0, 0, 1)]
    assert orders[0] == orders[1] != orders[2] and sorted(orders[0]) == sorted(orders[2])


_TINY_PROFILE = """
name: tiny
page: {layout: "3x4", dpi: 100, header_text: false, footer_text: false}
degradation: {rotation_deg: {uniform: [-3, 3]}, scale: {uniform: [0.8, 1.0]}, background_margin: 0.05}
"""


def test_rendered_pages_and_page_folder_give_seeded_crops_at_the_model_scale(
    tmp_path: Path,
) -> None:
    from ecgdig.io import write_record
    from ecgdig.render.files import render_to_files
    from ecgdig.types import EcgRecord

    t = np.arange(5000) / 500.0
    signal = np.stack([np.sin(2 * np.pi * (1 + 0.1 * j) * t) for j in range(12)], axis=1)
    names = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
    write_record(EcgRecord("rec1", signal, 500.0, names), tmp_path / "records")
    profile = tmp_path / "tiny.yaml"
    profile.write_text(_TINY_PROFILE)

    stream = RenderedPages([tmp_path / "records" / "rec1"], profile, seed=1, crop_px=64, crops_per_page=3)
    a, b = list(stream), list(stream)
    assert len(a) == 3 and all(torch.equal(x[0], y[0]) for x, y in zip(a, b, strict=True))
    assert stream.summary()["profiles"] == ["tiny"]

    render_to_files([tmp_path / "records"], tmp_path / "pages", profile=profile, seed=1)
    folder = PageFolder(tmp_path / "pages", seed=1, crop_px=64, crops_per_page=2)
    crops = list(folder)
    assert len(crops) == 2 and crops[0][0].shape == (3, 64, 64)
    assert folder.pages[0][2] is not None  # the truth JSON was found and gives the scale


def test_worker_processes_give_the_serial_stream_crop_for_crop(tmp_path: Path) -> None:
    from ecgdig.io import write_record
    from ecgdig.types import EcgRecord

    t = np.arange(5000) / 500.0
    names = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
    for k in range(3):
        signal = np.stack([np.sin(2 * np.pi * (1 + 0.1 * j + 0.3 * k) * t) for j in range(12)], axis=1)
        write_record(EcgRecord(f"rec{k}", signal, 500.0, names), tmp_path / "records")
    profile = tmp_path / "tiny.yaml"
    profile.write_text(_TINY_PROFILE)
    records = [tmp_path / "records" / f"rec{k}" for k in range(3)]
    common = {"seed": 4, "crop_px": 64, "crops_per_page": 2, "pages_per_epoch": 5}

    serial = list(RenderedPages(records, profile, **common).iter_epoch(1, start=3))
    with RenderedPages(records, profile, workers=2, **common) as parallel:
        from_workers = list(parallel.iter_epoch(1, start=3))
        again = list(parallel.iter_epoch(1, start=3))  # the pool is reused across epochs
    assert parallel._pool is None  # leaving the block stopped the workers
    assert len(serial) == len(from_workers) == 2 * 5 - 3
    for (x, t_), (xw, tw), (xa, _) in zip(serial, from_workers, again, strict=True):
        assert torch.equal(x, xw) and torch.equal(t_, tw) and torch.equal(x, xa)
    with pytest.raises(ConfigError, match="workers"):
        RenderedPages(records, profile, workers=-1, **common)
