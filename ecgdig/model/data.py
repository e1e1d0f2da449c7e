"""Training data for the trace segmenter: random crops of synthetic pages with exact masks.

Two sources give the same stream of ``(image, target)`` crops:

- :class:`RenderedPages` renders pages on the fly from WFDB records with one or more site profiles
  (:mod:`ecgdig.render`), so every epoch sees new pages;
- :class:`PageFolder` reads pages rendered earlier (``ecgdig render``, or ecg-image-kit pages
  brought in by :mod:`ecgdig.io.ecg_image_kit`): ``<name>.png`` or ``<name>.jpg``,
  ``<name>_mask.png`` and, when present, ``<name>.json`` for the page's scale;

and :class:`MixedPages` draws each page from one of several sources at given weights.

Each page is brought to the model's scale the way the digitizer's ``normalize`` stage brings real
pages there: resampled from its true pixels per mm (read from the render's truth, including the
phone ``scale`` and perspective through the homography's local scale at the page centre) to
``px_per_mm``, and illumination-flattened with :func:`ecgdig.pipeline.normalize.flatten_illumination`.
Rotation and perspective are left in: the model learns to follow tilted traces, which is what it
meets when deskewing is imperfect. The mask is resampled with area averaging, so the target is a
soft coverage fraction in [0, 1].

Everything is a pure function of ``seed``: crop ``k`` of epoch ``e`` is the same whatever was read
before, which is what lets training resume mid-epoch (:meth:`CropStream.iter_epoch` takes a start).
The same purity lets ``workers`` processes render pages in parallel (a GPU trains faster than one
core renders): they return exactly the crops the serial stream would, in the same order.
"""

from __future__ import annotations

import json
import math
import multiprocessing
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import IterableDataset

from ecgdig.errors import ConfigError, ImageInputError
from ecgdig.io import read_image, read_record
from ecgdig.model.network import DEFAULT_PX_PER_MM, image_to_input
from ecgdig.pipeline.normalize import flatten_illumination
from ecgdig.render.page import render_page
from ecgdig.render.profiles import SiteProfile, load_profile, sample_settings
from ecgdig.types import EcgRecord

__all__ = [
    "DEFAULT_CROP_PX",
    "CropStream",
    "FixedCrops",
    "MixedPages",
    "PageFolder",
    "RenderedPages",
    "find_page_files",
    "prepare_page",
    "random_crops",
    "truth_px_per_mm",
]

#: Default training crop side in pixels (a multiple of the network's input multiple, 32).
DEFAULT_CROP_PX = 256
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Tag mixed into the seed for the per-epoch page order, apart from per-page generators.
_ORDER_TAG = 0x0DE5
#: Pages a worker pool may have in flight per worker: enough to keep every worker busy while the
#: consumer is slow for a moment, few enough that waiting crops do not pile up in memory.
_PAGES_IN_FLIGHT_PER_WORKER = 3

#: The stream a page-worker process serves, set once by :func:`_start_page_worker`.
_worker_stream: CropStream | None = None


def _start_page_worker(stream: CropStream) -> None:
    global _worker_stream
    # One thread each: the pool already has a process per core, and OpenCV's or torch's own
    # threads on top of that only contend.
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    _worker_stream = stream


def _page_crops_in_worker(epoch: int, j: int, page: int) -> tuple[np.ndarray, np.ndarray]:
    assert _worker_stream is not None, "page worker was not started with a stream"
    crops = _worker_stream.page_crops(epoch, j, page)
    return np.stack([c[0].numpy() for c in crops]), np.stack([c[1].numpy() for c in crops])


def truth_px_per_mm(truth: Mapping[str, Any]) -> float:
    """Return the scale of a rendered image in pixels per mm, from its truth record.

    Parameters
    ----------
    truth : mapping
        ``RenderedPage.truth`` or the ``<name>.json`` the renderer writes: ``px_per_mm`` of the
        flat page, ``homography`` (flat page -> image, 3 x 3) and ``page_size_px``.

    Returns
    -------
    float
        ``px_per_mm`` times the homography's local linear scale (square root of its Jacobian
        determinant) at the centre of the page.

    Raises
    ------
    ValueError
        If ``px_per_mm`` is missing or not positive, or the homography is malformed.

    Examples
    --------
    >>> truth_px_per_mm({"px_per_mm": 8.0, "homography": [[0.5, 0, 3], [0, 0.5, 1], [0, 0, 1]]})
    4.0
    """
    ppm = truth.get("px_per_mm")
    if not isinstance(ppm, int | float) or isinstance(ppm, bool) or not ppm > 0:
        raise ValueError(f"truth has no positive px_per_mm (got {ppm!r})")
    hom = truth.get("homography")
    if hom is None:
        return float(ppm)
    h = np.asarray(hom, dtype=np.float64)
    if h.shape != (3, 3) or not np.isfinite(h).all():
        raise ValueError("truth homography must be a finite 3 x 3 matrix")
    size = truth.get("page_size_px") or [0, 0]
    x, y = float(size[0]) / 2.0, float(size[1]) / 2.0
    w = h[2, 0] * x + h[2, 1] * y + h[2, 2]
    u = (h[0, 0] * x + h[0, 1] * y + h[0, 2]) / w
    v = (h[1, 0] * x + h[1, 1] * y + h[1, 2]) / w
    jac = (
        np.array(
            [[h[0, 0] - u * h[2, 0], h[0, 1] - u * h[2, 1]], [h[1, 0] - v * h[2, 0], h[1, 1] - v * h[2, 1]]]
        )
        / w
    )
    return float(ppm * math.sqrt(abs(np.linalg.det(jac))))


def _resize(array: np.ndarray, factor: float) -> np.ndarray:
    rows, cols = array.shape[:2]
    size = (max(1, round(cols * factor)), max(1, round(rows * factor)))
    interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    return cv2.resize(array, size, interpolation=interp)


def prepare_page(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    source_px_per_mm: float,
    px_per_mm: float = DEFAULT_PX_PER_MM,
    flatten: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Bring a page and its trace mask to the model's scale and input form.

    Parameters
    ----------
    image : (rows, cols, 3) ndarray of uint8
        The page.
    mask : (rows, cols) ndarray of bool or uint8
        Trace mask (nonzero on the traces).
    source_px_per_mm : float
        Scale of ``image``.
    px_per_mm : float, optional
        Scale the model works at.
    flatten : bool, optional
        Flatten the illumination as ``normalize`` does before segmentation.

    Returns
    -------
    x : (3, rows', cols') ndarray of float32
        Network input (:func:`~ecgdig.model.network.image_to_input` of the resampled page).
    target : (rows', cols') ndarray of float32
        Trace coverage in [0, 1] at the new scale.

    Raises
    ------
    ValueError
        If the shapes disagree or a scale is not positive.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (rows, cols, 3) uint8, got {image.shape} {image.dtype}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape[:2]}")
    if not (source_px_per_mm > 0 and px_per_mm > 0):
        raise ValueError(f"scales must be positive, got {source_px_per_mm} and {px_per_mm}")
    factor = px_per_mm / source_px_per_mm
    target = (mask > 0).astype(np.float32)
    if abs(factor - 1.0) > 1e-3:
        image = _resize(image, factor)
        target = np.clip(_resize(target, factor), 0.0, 1.0)
    if flatten:
        flat = flatten_illumination(image)
        image = np.clip(flat * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return image_to_input(image), target


def random_crops(
    x: np.ndarray,
    target: np.ndarray,
    *,
    crop_px: int,
    count: int,
    rng: np.random.Generator,
    trace_fraction: float = 0.7,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Cut ``count`` random square crops from a prepared page.

    Parameters
    ----------
    x : (3, rows, cols) ndarray of float32
        Network input of the whole page.
    target : (rows, cols) ndarray of float32
        Trace coverage.
    crop_px : int
        Crop side; pages smaller than that are padded (input by reflection, target with 0).
    count : int
        Number of crops.
    rng : numpy.random.Generator
        Source of the positions.
    trace_fraction : float, optional
        Fraction of crops centred near a random trace pixel; the rest are uniform over the page.

    Returns
    -------
    list of (image, target)
        ``(3, crop_px, crop_px)`` and ``(1, crop_px, crop_px)`` float32 tensors.
    """
    rows, cols = target.shape
    pad_r, pad_c = max(0, crop_px - rows), max(0, crop_px - cols)
    if pad_r or pad_c:
        x = np.pad(x, ((0, 0), (0, pad_r), (0, pad_c)), mode="symmetric")
        target = np.pad(target, ((0, pad_r), (0, pad_c)))
        rows, cols = target.shape
    on_trace = np.flatnonzero(target[::4, ::4] > 0.5)
    sub_cols = (cols + 3) // 4
    crops = []
    for _ in range(count):
        if on_trace.size and rng.random() < trace_fraction:
            k = on_trace[rng.integers(on_trace.size)]
            cr, cc = 4 * (k // sub_cols), 4 * (k % sub_cols)
            r0 = cr - crop_px // 2 + int(rng.integers(-crop_px // 4, crop_px // 4 + 1))
            c0 = cc - crop_px // 2 + int(rng.integers(-crop_px // 4, crop_px // 4 + 1))
        else:
            r0 = int(rng.integers(0, rows - crop_px + 1))
            c0 = int(rng.integers(0, cols - crop_px + 1))
        r0 = min(max(r0, 0), rows - crop_px)
        c0 = min(max(c0, 0), cols - crop_px)
        xi = torch.from_numpy(np.ascontiguousarray(x[:, r0 : r0 + crop_px, c0 : c0 + crop_px]))
        ti = torch.from_numpy(np.ascontiguousarray(target[None, r0 : r0 + crop_px, c0 : c0 + crop_px]))
        crops.append((xi, ti))
    return crops


class CropStream(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """Base of the crop sources: ``pages_per_epoch`` pages, ``crops_per_page`` crops each.

    Subclasses implement :meth:`load_page`. Page ``j`` of epoch ``e`` draws from a generator
    seeded by ``(seed, e, j)`` and the page order of an epoch from ``(seed, e)``, so any position
    of the stream can be produced without reading what comes before it.

    Parameters
    ----------
    pages_per_epoch : int
        Pages in one epoch.
    seed : int
        Non-negative seed.
    crop_px : int
        Crop side in pixels.
    crops_per_page : int
        Crops cut from each page (rendering or decoding a page costs more than a training step on
        one crop, so several crops share a page).
    px_per_mm : float
        The model's scale.
    flatten : bool
        Flatten illumination as the digitizer does.
    trace_fraction : float
        Fraction of crops centred near a trace.
    workers : int
        Processes that load pages in parallel (0 or 1: pages are loaded in this process). The
        crops and their order do not depend on it. The processes start at the first page read and
        stay until :meth:`close` (or the end of a ``with`` block).
    """

    def __init__(
        self,
        *,
        pages_per_epoch: int,
        seed: int,
        crop_px: int = DEFAULT_CROP_PX,
        crops_per_page: int = 8,
        px_per_mm: float = DEFAULT_PX_PER_MM,
        flatten: bool = True,
        trace_fraction: float = 0.7,
        workers: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("pages_per_epoch", pages_per_epoch),
            ("crop_px", crop_px),
            ("crops_per_page", crops_per_page),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ConfigError(f"workers must be a non-negative integer, got {workers!r}")
        if not 0.0 <= trace_fraction <= 1.0:
            raise ConfigError(f"trace_fraction must be in [0, 1], got {trace_fraction!r}")
        if not px_per_mm > 0:
            raise ConfigError(f"px_per_mm must be positive, got {px_per_mm!r}")
        self.pages_per_epoch = pages_per_epoch
        self.seed = seed
        self.crop_px = crop_px
        self.crops_per_page = crops_per_page
        self.px_per_mm = float(px_per_mm)
        self.flatten = flatten
        self.trace_fraction = float(trace_fraction)
        self.workers = workers
        self.epoch = 0
        self._pool: ProcessPoolExecutor | None = None

    def __getstate__(self) -> dict[str, Any]:
        # What a worker process receives: everything but the pool itself.
        return {k: v for k, v in self.__dict__.items() if k != "_pool"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pool = None

    def __enter__(self) -> CropStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the page-worker processes, if any were started (reading again restarts them)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    @property
    def epoch_size(self) -> int:
        """Crops in one epoch."""
        return self.pages_per_epoch * self.crops_per_page

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch :meth:`__iter__` yields (as ``DistributedSampler.set_epoch``)."""
        self.epoch = int(epoch)

    def summary(self) -> dict[str, Any]:
        """Return a JSON-ready description for model-file headers."""
        return {
            "source": type(self).__name__,
            "pages_per_epoch": self.pages_per_epoch,
            "crops_per_page": self.crops_per_page,
            "crop_px": self.crop_px,
            "px_per_mm": self.px_per_mm,
            "flatten": self.flatten,
            "seed": self.seed,
        }

    def load_page(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
        """Return page ``index`` (an epoch-independent id) as (image, mask, its px per mm)."""
        raise NotImplementedError  # abstract; subclasses implement it

    def page_count(self) -> int:
        """Return the number of distinct pages (records or files) the epochs cycle through."""
        raise NotImplementedError  # abstract; subclasses implement it

    def _page_generator(self, epoch: int, j: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, int(epoch), int(j)]))

    def _order_generator(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, int(epoch), _ORDER_TAG]))

    def _order(self, epoch: int) -> np.ndarray:
        """Return the page shown at each position of ``epoch``: ``pages_per_epoch`` page indices."""
        return _cycled_permutations(self._order_generator(epoch), self.page_count(), self.pages_per_epoch)

    def iter_epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the crops of ``epoch`` from position ``start`` (0-based) to the epoch's end.

        Yields
        ------
        image : (3, crop_px, crop_px) float32 tensor
            Network input.
        target : (1, crop_px, crop_px) float32 tensor
            Trace coverage in [0, 1].
        """
        if not 0 <= start <= self.epoch_size:
            raise ValueError(f"start must be in [0, {self.epoch_size}], got {start}")
        order = self._order(epoch)
        first_page, skip = divmod(start, self.crops_per_page)
        pages = range(first_page, self.pages_per_epoch)
        if self.workers > 1:
            crops_by_page = self._crops_from_workers(epoch, pages, order)
        else:
            crops_by_page = (self.page_crops(epoch, j, int(order[j])) for j in pages)
        for j, crops in zip(pages, crops_by_page, strict=True):
            yield from crops[skip if j == first_page else 0 :]

    def page_crops(self, epoch: int, j: int, page: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Return the crops of the ``j``-th page of ``epoch``, which shows page ``page``."""
        rng = self._page_generator(epoch, j)
        image, mask, source_ppm = self.load_page(page, rng)
        x, target = prepare_page(
            image, mask, source_px_per_mm=source_ppm, px_per_mm=self.px_per_mm, flatten=self.flatten
        )
        return random_crops(
            x,
            target,
            crop_px=self.crop_px,
            count=self.crops_per_page,
            rng=rng,
            trace_fraction=self.trace_fraction,
        )

    def _crops_from_workers(
        self, epoch: int, pages: range, order: np.ndarray
    ) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        if self._pool is None:
            # "spawn": the parent may hold CUDA or OpenMP state that a forked child must not inherit.
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_page_worker,
                initargs=(self,),
            )
        pending: deque[Future[tuple[np.ndarray, np.ndarray]]] = deque()
        upcoming = iter(pages)
        limit = self.workers * _PAGES_IN_FLIGHT_PER_WORKER
        try:
            while True:
                while len(pending) < limit and (j := next(upcoming, None)) is not None:
                    pending.append(self._pool.submit(_page_crops_in_worker, epoch, j, int(order[j])))
                if not pending:
                    return
                xs, ts = pending.popleft().result()
                yield [(torch.from_numpy(x), torch.from_numpy(t)) for x, t in zip(xs, ts, strict=True)]
        finally:
            for future in pending:
                future.cancel()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_epoch(self.epoch)


def _cycled_permutations(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    """Return ``length`` indices: random permutations of ``range(n)`` one after another, cut short."""
    if length == 0:
        return np.zeros(0, np.int64)
    return np.concatenate([rng.permutation(n) for _ in range(math.ceil(length / n))])[:length]


def _apportion(weights: Sequence[float], total: int) -> np.ndarray:
    """Split ``total`` into whole counts proportional to ``weights`` (largest remainders).

    Ties go to the earlier weight, so the split is a pure function of its arguments.
    """
    quotas = np.asarray(weights, np.float64) / float(np.sum(weights)) * total
    counts = np.floor(quotas).astype(np.int64)
    by_remainder = np.argsort(-(quotas - counts), kind="stable")
    counts[by_remainder[: total - int(counts.sum())]] += 1
    return counts


class MixedPages(CropStream):
    """Crops of pages drawn from several sources at given weights (rendered pages and folders).

    Only the sources' pages are used (:meth:`~CropStream.page_count` and
    :meth:`~CropStream.load_page`): the mix crops them with its own settings and seed, and the
    sources' own seeds, crop settings and epoch lengths play no part.

    Epoch ``e`` shows ``pages_per_epoch`` pages; source ``k`` gets ``weights[k]`` of them (whole
    numbers by largest remainders, so the ratio holds in every epoch, not only on average), placed
    at random positions, and each source steps through its own pages in random order, a new one
    once all were shown. All of it is drawn from ``(seed, e)``, and page ``j`` of epoch ``e`` from
    ``(seed, e, j)`` as in every stream: the crops are the same whatever ``workers`` is, and any
    position can be started from (resuming a checkpoint).

    Parameters
    ----------
    sources : sequence of CropStream
        Two or more sources, e.g. a :class:`RenderedPages` and :class:`PageFolder` s, at the mix's
        ``px_per_mm`` (a :class:`PageFolder` takes a page without JSON to be at its own scale).
    weights : sequence of float
        One positive weight per source; normalized to sum to 1.
    pages_per_epoch : int, optional
        Pages per epoch (default: the sources' pages together).
    **kwargs
        ``seed`` (required) and the other :class:`CropStream` settings.

    Raises
    ------
    ConfigError
        Fewer than two sources, weights that do not match them or are not positive, or a source at
        another scale.
    """

    def __init__(
        self,
        sources: Sequence[CropStream],
        weights: Sequence[float],
        *,
        pages_per_epoch: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.sources = list(sources)
        if len(self.sources) < 2:
            raise ConfigError(f"a mix needs at least two sources, got {len(self.sources)}")
        if len(weights) != len(self.sources):
            raise ConfigError(f"{len(weights)} weight(s) for {len(self.sources)} sources")
        if not all(isinstance(w, int | float) and math.isfinite(w) and w > 0 for w in weights):
            raise ConfigError(f"weights must be positive, got {list(weights)}")
        total = float(sum(weights))
        self.weights = [float(w) / total for w in weights]
        self._offsets = np.cumsum([0] + [s.page_count() for s in self.sources])
        super().__init__(pages_per_epoch=pages_per_epoch or int(self._offsets[-1]), **kwargs)
        for source in self.sources:
            if source.px_per_mm != self.px_per_mm:
                raise ConfigError(
                    f"a {type(source).__name__} at {source.px_per_mm:g} px/mm in a mix at {self.px_per_mm:g}"
                )

    def page_count(self) -> int:
        """Return the number of distinct pages of all the sources."""
        return int(self._offsets[-1])

    def source_counts(self) -> list[int]:
        """Return the pages each source shows in an epoch (the same in every epoch)."""
        return [int(c) for c in _apportion(self.weights, self.pages_per_epoch)]

    def epoch_sources(self, epoch: int) -> np.ndarray:
        """Return the index of the source of each page of ``epoch``, in the order they are shown."""
        return np.searchsorted(self._offsets, self._order(epoch), side="right") - 1

    def summary(self) -> dict[str, Any]:
        """Return a JSON-ready description: crop settings, and each source with its weight."""
        parts = []
        for source, weight in zip(self.sources, self.weights, strict=True):
            # The source's own crop settings and seed are not used: keep what says what it holds.
            unused = CropStream.summary(source).keys() - {"source"}
            part = {k: v for k, v in source.summary().items() if k not in unused}
            parts.append(dict(part, weight=weight))
        return dict(super().summary(), sources=parts)

    def load_page(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
        """Load page ``index`` of the concatenated sources with the source that holds it."""
        k = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return self.sources[k].load_page(index - int(self._offsets[k]), rng)

    def _order(self, epoch: int) -> np.ndarray:
        rng = self._order_generator(epoch)
        counts = _apportion(self.weights, self.pages_per_epoch)
        which = rng.permutation(np.repeat(np.arange(len(self.sources)), counts))
        order = np.empty(self.pages_per_epoch, np.int64)
        for k, source in enumerate(self.sources):
            local = _cycled_permutations(rng, source.page_count(), int(counts[k]))
            order[which == k] = self._offsets[k] + local
        return order


class RenderedPages(CropStream):
    """Crops of pages rendered on the fly from WFDB records.

    Parameters
    ----------
    records : sequence of str, Path or EcgRecord
        Record stems or ``.hea`` files (read when needed) or records in memory. Never pass the
        held-out test records.
    profiles : str, Path, SiteProfile or a sequence of them
        Site profiles (shipped names such as ``"scanner"`` and ``"phone"``, YAML paths or loaded
        profiles); each page draws one uniformly.
    pages_per_epoch : int, optional
        Pages per epoch (default: one per record).
    **kwargs
        ``seed`` (required), ``crop_px``, ``crops_per_page``, ``px_per_mm``, ``flatten``,
        ``trace_fraction``, as for :class:`CropStream`.
    """

    def __init__(
        self,
        records: Sequence[str | Path | EcgRecord],
        profiles: str | Path | SiteProfile | Sequence[str | Path | SiteProfile],
        *,
        pages_per_epoch: int | None = None,
        **kwargs: Any,
    ) -> None:
        if not records:
            raise ConfigError("no records given")
        self.records = list(records)
        plist = [profiles] if isinstance(profiles, str | Path | SiteProfile) else list(profiles)
        if not plist:
            raise ConfigError("no profiles given")
        self.profiles = [p if isinstance(p, SiteProfile) else load_profile(p) for p in plist]
        super().__init__(pages_per_epoch=pages_per_epoch or len(self.records), **kwargs)

    def page_count(self) -> int:
        """Return the number of records."""
        return len(self.records)

    def summary(self) -> dict[str, Any]:
        """Return a JSON-ready description (records, profiles, crop settings)."""
        return dict(
            super().summary(),
            records=len(self.records),
            profiles=[p.name for p in self.profiles],
        )

    def load_page(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
        """Render a page of record ``index`` with a profile and settings drawn from ``rng``."""
        item = self.records[index]
        record = item if isinstance(item, EcgRecord) else read_record(item)
        profile = self.profiles[int(rng.integers(len(self.profiles)))]
        settings = sample_settings(profile, rng)
        page = render_page(record, settings, rng)
        return page.image, page.trace_mask, truth_px_per_mm(page.truth)


class PageFolder(CropStream):
    """Crops of pages rendered earlier into a folder (``ecgdig render`` output).

    Parameters
    ----------
    folder : str or Path
        Holds ``<name>.png`` / ``<name>.jpg`` with ``<name>_mask.png``; ``<name>.json`` (the
        renderer's truth) gives the scale. A page without JSON is taken to be at ``px_per_mm``
        already (for example pages normalized beforehand).
    pages_per_epoch : int, optional
        Pages per epoch (default: every page once).
    **kwargs
        ``seed`` (required) and the other :class:`CropStream` settings.

    Raises
    ------
    ConfigError
        If the folder is missing or holds no page with a mask.
    """

    def __init__(self, folder: str | Path, *, pages_per_epoch: int | None = None, **kwargs: Any) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ConfigError("not a folder", self.folder)
        self.pages = find_page_files(self.folder)
        if not self.pages:
            raise ConfigError("folder holds no page with a <name>_mask.png", self.folder)
        super().__init__(pages_per_epoch=pages_per_epoch or len(self.pages), **kwargs)

    def page_count(self) -> int:
        """Return the number of pages in the folder."""
        return len(self.pages)

    def summary(self) -> dict[str, Any]:
        """Return a JSON-ready description (folder name, page count, crop settings)."""
        return dict(super().summary(), folder=self.folder.name, pages=len(self.pages))

    def load_page(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
        """Read page ``index``, its mask and its scale."""
        image_path, mask_path, json_path = self.pages[index]
        image = read_image(image_path)
        mask = read_image(mask_path)[:, :, 0] > 127
        if mask.shape != image.shape[:2]:
            raise ImageInputError(
                f"mask is {mask.shape[::-1]} px but the page is {image.shape[1::-1]}", mask_path
            )
        ppm = self.px_per_mm
        if json_path is not None:
            try:
                ppm = truth_px_per_mm(json.loads(json_path.read_text(encoding="utf-8")))
            except (ValueError, OSError) as exc:
                raise ConfigError(f"cannot read the page scale: {exc}", json_path) from None
        return image, mask, ppm


def find_page_files(folder: Path) -> list[tuple[Path, Path, Path | None]]:
    """Return ``(image, mask, json or None)`` for every page in ``folder`` that has a mask, sorted."""
    out = []
    for mask in sorted(folder.glob("*_mask.png")):
        stem = mask.name[: -len("_mask.png")]
        image = next(
            (folder / f"{stem}{s}" for s in _IMAGE_SUFFIXES if (folder / f"{stem}{s}").is_file()), None
        )
        if image is None:
            continue
        truth = folder / f"{stem}.json"
        out.append((image, mask, truth if truth.is_file() else None))
    return out


class FixedCrops(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Crops held in memory (validation sets, small training sets).

    Parameters
    ----------
    crops : sequence of (image, target)
        Tensors as :class:`CropStream` yields them.
    seed : int, optional
        If given, each epoch visits the crops in its own order, drawn from ``(seed, epoch)``;
        otherwise always in the stored order.
    """

    def __init__(
        self, crops: Sequence[tuple[torch.Tensor, torch.Tensor]], *, seed: int | None = None
    ) -> None:
        self.crops = list(crops)
        self.seed = seed

    @classmethod
    def from_stream(cls, stream: CropStream, epoch: int = 0, *, seed: int | None = None) -> FixedCrops:
        """Read epoch ``epoch`` of ``stream`` into memory."""
        return cls(list(stream.iter_epoch(epoch)), seed=seed)

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.crops[index]

    @property
    def epoch_size(self) -> int:
        """Number of crops."""
        return len(self.crops)

    def iter_epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the crops of ``epoch`` from position ``start``."""
        if self.seed is None:
            order = np.arange(len(self.crops))
        else:
            order = np.random.default_rng(np.random.SeedSequence([self.seed, int(epoch)])).permutation(
                len(self.crops)
            )
        for k in order[start:]:
            yield self.crops[int(k)]
