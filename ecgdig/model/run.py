"""Train a trace segmenter from records or rendered pages and write the model file: ``ecgdig train``.

Records are rendered on the fly with the chosen site profiles; folders of pages with masks
(``<name>.png`` with ``<name>_mask.png``, written by ``ecgdig render`` or ``ecgdig import-eik``)
are read as they are. Given both, ``pages_fraction`` of the training pages of every epoch come
from the folders and the rest are rendered from records. The last tenth of the records (at most
40) is held out for validation Dice and never trained on.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ecgdig.errors import ConfigError
from ecgdig.model.data import CropStream, FixedCrops, MixedPages, PageFolder, RenderedPages
from ecgdig.model.files import ModelHeader, load_model, load_state_tensors, model_tensors, save_model
from ecgdig.model.inference import torch_threads
from ecgdig.model.network import DEFAULT_PX_PER_MM, count_parameters, make_default_model
from ecgdig.model.train import StepInfo, TrainResult, evaluate_dice, train
from ecgdig.render import find_records

__all__ = [
    "DEFAULT_PAGES_FRACTION",
    "TrainRun",
    "average_models",
    "open_training_data",
    "train_to_file",
    "validation_snr",
]

_CROP_PX = 256
#: Share of training pages drawn from page folders when records are given as well.
DEFAULT_PAGES_FRACTION = 0.25


@dataclass(frozen=True)
class TrainRun:
    """Outcome of :func:`train_to_file`.

    Attributes
    ----------
    model_path : Path
        The model file written.
    result : TrainResult
        Losses, validation Dice and timing.
    n_train, n_val : int
        Records (or pages) used for training and held out for validation.
    metrics : dict of str to float
        The metrics written to the model file's header.
    """

    model_path: Path
    result: TrainResult
    n_train: int
    n_val: int
    metrics: Mapping[str, float] = field(default_factory=dict)


def train_to_file(
    inputs: Sequence[str | Path],
    out_path: str | Path,
    *,
    profiles: Sequence[str] = ("scanner", "phone"),
    steps: int = 1000,
    batch_size: int = 8,
    lr: float = 2e-3,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    threads: int | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    init_from: str | Path | None = None,
    snr_records: int = 0,
    device: str = "cpu",
    workers: int = 0,
    pages: Sequence[str | Path] = (),
    pages_fraction: float | None = None,
) -> TrainRun:
    """Train the default U-Net and write it as a model file.

    Parameters
    ----------
    inputs : sequence of str or Path
        WFDB records or folders of them, and folders of pages with masks (as ``pages``).
    out_path : str or Path
        Model file to write (safetensors with a JSON header; see ``docs/model.md``).
    profiles : sequence of str
        Site profiles used to render records.
    steps, batch_size, lr, seed : optional
        Training settings; the same seed gives the same model.
    checkpoint : str or Path, optional
        Resumable checkpoint: a run killed and restarted with the same arguments continues from it.
    threads : int, optional
        CPU threads.
    on_step : callable, optional
        Progress callback.
    init_from : str or Path, optional
        Start from this model file's architecture and weights (fine-tuning) instead of a freshly
        initialized default network.
    snr_records : int, optional
        After training, digitize pages rendered from this many held-out records (one per profile)
        and store their Challenge SNR in the header's metrics (:func:`validation_snr`).
    device : str, optional
        Where the training steps run (``"cpu"`` or a CUDA device such as ``"cuda"``); the model
        file is the same either way and runs on a CPU.
    workers : int, optional
        Processes rendering pages in parallel (0: in this process); the crops do not depend on it.
    pages : sequence of str or Path, optional
        Folders of pages with masks to train on, alone or with the records.
    pages_fraction : float, optional
        With both records and page folders, the fraction of training pages drawn from the folders
        (default :data:`DEFAULT_PAGES_FRACTION`); see :func:`open_training_data`.

    Returns
    -------
    TrainRun
        Where the model went and how training went.

    Raises
    ------
    ConfigError
        If the inputs hold no record or page, too few records to hold some out, or the pages
        fraction does not fit them (see :func:`open_training_data`).
    """
    data, val_source, n_train, n_val = open_training_data(
        inputs, profiles=profiles, seed=seed, hold_out=True, workers=workers, pages=pages,
        pages_fraction=pages_fraction,
    )  # fmt: skip
    if init_from is None:
        model, started_from = make_default_model(seed=seed), None
    else:
        model, init_header = load_model(init_from)
        if init_header.px_per_mm != DEFAULT_PX_PER_MM:
            raise ConfigError(
                f"fine-tuning needs a model at {DEFAULT_PX_PER_MM:g} px/mm, this one is at "
                f"{init_header.px_per_mm:g}",
                init_from,
            )
        started_from = {"file": Path(init_from).name, "metrics": dict(init_header.metrics)}
    with data:
        result = train(
            model, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed, val_data=val_source,
            val_every=max(50, steps // 5), checkpoint=checkpoint, on_step=on_step, schedule="cosine",
            warmup_steps=min(50, steps // 10), threads=threads, device=device,
        )  # fmt: skip
    header = ModelHeader(
        architecture=model.architecture,
        px_per_mm=DEFAULT_PX_PER_MM,
        classes=("trace",),
        training={
            "data": data.summary(),
            "held_out": n_val,
            "profiles": list(profiles),
            **_page_folders_summary(data),
            "run": result.summary(),
            "parameters": count_parameters(model),
            **({} if started_from is None else {"fine_tuned_from": started_from}),
        },
        metrics={} if result.final_val_dice is None else {"val_dice_crops": float(result.final_val_dice)},
    )
    path = save_model(out_path, model, header)
    if snr_records and n_val:
        scores = _held_out_snr(path, inputs, n_val, snr_records, profiles, seed, threads)
        header = replace(header, metrics={**header.metrics, **scores})
        path = save_model(out_path, model, header)
    return TrainRun(Path(path), result, n_train, n_val, dict(header.metrics))


def average_models(
    model_paths: Sequence[str | Path],
    out_path: str | Path,
    *,
    weights: Sequence[float] | None = None,
    validate_on: Sequence[str | Path] = (),
    profiles: Sequence[str] = ("scanner", "phone"),
    seed: int = 0,
    snr_records: int = 4,
    threads: int | None = None,
) -> Path:
    """Write the weighted mean of the weights of model files of one architecture.

    Averaging a fine-tuned model with the model it started from (or several fine-tunes of one
    start) is a "model soup" (Wortsman et al. 2022, "Model soups", ICML; and WiSE-FT, CVPR 2022):
    the fine-tunes stay in one basin of the loss, so their mean is a model too, and it usually
    keeps what each gained. The shipped model is the mean of a model and its fine-tune; it beat
    its start on every benchmark set (``docs/model-card.md``).

    Parameters
    ----------
    model_paths : sequence of str or Path
        Two or more model files with the same architecture and scale.
    out_path : str or Path
        The averaged model file (header: the first file's architecture; ``training`` lists every
        parent with its weight and training summary; metrics only when ``validate_on`` is given).
    weights : sequence of float, optional
        One non-negative weight per file (default: equal); they are normalized to sum to 1.
    validate_on : sequence of str or Path, optional
        Training records: when given, the averaged model is scored on their held-out part as
        :func:`train_to_file` scores a model it trains (``val_dice_crops`` on the validation
        crops of ``profiles`` and ``seed``, and the validation SNR of ``snr_records`` records),
        and the metrics go into the header.
    profiles, seed, snr_records, threads : optional
        Settings of that validation, as for :func:`train_to_file`.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    ConfigError
        Fewer than two files, weights that do not match them or are negative or all zero, or files
        of different architectures or scales.
    ModelFileError
        A file that is not a valid model file.
    """
    from ecgdig.federated.strategies import weighted_mean

    if len(model_paths) < 2:
        raise ConfigError("averaging needs at least two model files")
    weights = [1.0] * len(model_paths) if weights is None else [float(w) for w in weights]
    if len(weights) != len(model_paths):
        raise ConfigError(f"{len(weights)} weight(s) for {len(model_paths)} model files")
    if any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"weights must be non-negative and not all zero, got {weights}")
    loaded = [load_model(path) for path in model_paths]
    first_model, first_header = loaded[0]
    for path, (_, header) in zip(model_paths[1:], loaded[1:], strict=True):
        if header.architecture != first_header.architecture or header.px_per_mm != first_header.px_per_mm:
            raise ConfigError(
                f"another architecture or scale than {Path(model_paths[0]).name}: models of different "
                "shapes cannot be averaged",
                path,
            )
    total = sum(weights)
    parts = [(model_tensors(model), w / total) for (model, _), w in zip(loaded, weights, strict=True)]
    mean = weighted_mean(parts)
    load_state_tensors(first_model, mean, path=out_path)
    header = ModelHeader(
        architecture=first_header.architecture,
        px_per_mm=first_header.px_per_mm,
        classes=first_header.classes,
        training={
            "weight_average": [
                {"file": Path(path).name, "weight": w / total, "training": dict(header.training)}
                for path, (_, header), w in zip(model_paths, loaded, weights, strict=True)
            ]
        },
    )
    path = save_model(out_path, first_model, header)
    if validate_on:
        _, validation, _, n_val = open_training_data(validate_on, profiles=profiles, seed=seed, hold_out=True)
        metrics: dict[str, float] = {}
        if validation is not None:
            with torch_threads(threads):
                metrics["val_dice_crops"] = evaluate_dice(first_model, validation)
        if snr_records and n_val:
            metrics.update(_held_out_snr(path, validate_on, n_val, snr_records, profiles, seed, threads))
        path = save_model(out_path, first_model, replace(header, metrics=metrics))
    return path


def _held_out_snr(
    model_path: Path,
    inputs: Sequence[str | Path],
    n_val: int,
    snr_records: int,
    profiles: Sequence[str],
    seed: int,
    threads: int | None,
) -> dict[str, float]:
    """Score the validation SNR on ``snr_records`` of the ``n_val`` records held out of ``inputs``."""
    held_out = find_records(_split_inputs(inputs)[0])[-n_val:][:snr_records]
    return validation_snr(model_path, held_out, profiles=profiles, seed=seed + 2, threads=threads)


def _held_out_count(n_records: int) -> int:
    """Return how many records to hold out for validation: a tenth, at least 1, at most 40."""
    return min(40, max(1, n_records // 10))


def validation_snr(
    model_path: str | Path,
    records: Sequence[str | Path],
    *,
    profiles: Sequence[str],
    seed: int,
    threads: int | None = None,
) -> dict[str, float]:
    """Digitize pages rendered from ``records`` with a model file and score them (Challenge SNR).

    One page per record and profile is rendered with its truth into a temporary folder, digitized
    with ``--segmenter unet`` and this model, and scored; a page that fails to digitize counts as
    an all-missing prediction (0 dB).

    Parameters
    ----------
    model_path : str or Path
        The model file.
    records : sequence of str or Path
        Held-out WFDB records (never the test records).
    profiles : sequence of str
        Site profiles to render with.
    seed : int
        Rendering seed.
    threads : int, optional
        CPU threads for inference.

    Returns
    -------
    dict of str to float
        ``val_snr_db`` (mean over profiles) and ``val_snr_db_<profile>`` for each profile.
    """
    from ecgdig.evaluate import evaluate_folders
    from ecgdig.pipeline.digitize import DigitizeOptions, digitize_files
    from ecgdig.render import render_to_files

    options = DigitizeOptions(segmenter="unet", model_path=str(model_path), threads=threads)
    scores: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ecgdig-val-") as tmp:
        for profile in profiles:
            truth = Path(tmp) / "truth" / profile
            pages = render_to_files(records, truth, profile=profile, seed=seed)
            prediction = Path(tmp) / "pred" / profile
            # Created up front: when every page fails nothing is written, and that scores 0 dB.
            prediction.mkdir(parents=True, exist_ok=True)
            digitize_files(pages, prediction, options=options, force=True)
            report = evaluate_folders(prediction, truth)
            scores[f"val_snr_db_{Path(profile).stem}"] = float(report.mean_snr_db_missing_as_zero)
    scores["val_snr_db"] = float(np.mean(list(scores.values())))
    return scores


def _is_page_folder(path: Path) -> bool:
    return path.is_dir() and any(path.glob("*_mask.png"))


def _split_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """Split training inputs into WFDB record paths and folders of pages with masks.

    A folder of rendered pages also holds their truth records (``.hea``): it counts as pages only.
    """
    paths = [Path(p) for p in inputs]
    return [p for p in paths if not _is_page_folder(p)], [p for p in paths if _is_page_folder(p)]


def _page_folders_summary(data: CropStream) -> dict[str, Any]:
    """Return the page folders ``data`` trains on and the share of pages they give, for headers."""
    if isinstance(data, PageFolder):
        return {"page_folders": [data.folder.name], "pages_fraction": 1.0}
    if isinstance(data, MixedPages):
        parts = [(s, w) for s, w in zip(data.sources, data.weights, strict=True) if isinstance(s, PageFolder)]
        if parts:
            return {
                "page_folders": [s.folder.name for s, _ in parts],
                "pages_fraction": sum(w for _, w in parts),
            }
    return {}


def open_training_data(
    inputs: Sequence[str | Path],
    *,
    profiles: Sequence[str] = ("scanner", "phone"),
    seed: int = 0,
    hold_out: bool = True,
    crops_per_page: int = 16,
    workers: int = 0,
    pages: Sequence[str | Path] = (),
    pages_fraction: float | None = None,
) -> tuple[CropStream, FixedCrops | None, int, int]:
    """Open the crop source for WFDB records (rendered on the fly), folders of pages, or both.

    Parameters
    ----------
    inputs : sequence of str or Path
        WFDB records or folders of them; a folder holding ``<name>_mask.png`` files counts as a
        folder of pages (as if given in ``pages``).
    profiles : sequence of str, optional
        Site profiles used to render records.
    seed : int, optional
        Seed of the crop stream (validation crops use ``seed + 1``).
    hold_out : bool, optional
        Hold the last tenth of the records (at most 40, at least 1) out for validation crops.
        Folders of pages are never split.
    crops_per_page : int, optional
        Crops cut from each page.
    workers : int, optional
        Processes loading pages in parallel for the training stream (and while the validation
        crops are read); close the stream, or use it in a ``with`` block, to stop them.
    pages : sequence of str or Path, optional
        Folders of pages with masks (``ecgdig render`` or ``ecgdig import-eik`` output).
    pages_fraction : float, optional
        With records and page folders both given, the fraction of training pages drawn from the
        folders, in (0, 1) (default :data:`DEFAULT_PAGES_FRACTION`). An epoch is then one page per
        training record plus the folder pages that keep that fraction; within the folders every
        page is equally likely. Several folders without records are mixed by their page counts.

    Returns
    -------
    data : CropStream
        The training crops: :class:`RenderedPages`, :class:`PageFolder` or :class:`MixedPages`.
    validation : FixedCrops or None
        Validation crops, when records were held out.
    n_train, n_val : int
        Records and pages used for training, and records held out.

    Raises
    ------
    ConfigError
        If the inputs hold no record or page, a ``pages`` entry holds no page with a mask, the
        fraction is outside (0, 1) or given without both kinds of input, or there are too few
        records to hold some out.
    """
    common: dict[str, Any] = {
        "crop_px": _CROP_PX,
        "px_per_mm": DEFAULT_PX_PER_MM,
        "crops_per_page": crops_per_page,
        "workers": workers,
    }
    record_inputs, input_folders = _split_inputs(inputs)
    # Unused by the mix (it crops with its own settings), but every stream needs them.
    folders = [PageFolder(f, seed=seed, **common) for f in [*input_folders, *map(Path, pages)]]
    if pages_fraction is not None and not (record_inputs and folders):
        raise ConfigError("a pages fraction needs both WFDB records and folders of pages")
    if not record_inputs:
        if not folders:
            raise ConfigError("no training records or pages given")
        n_pages = sum(f.page_count() for f in folders)
        if len(folders) == 1:
            return folders[0], None, n_pages, 0
        counts = [f.page_count() for f in folders]
        return MixedPages(folders, counts, seed=seed, **common), None, n_pages, 0
    fraction = DEFAULT_PAGES_FRACTION if pages_fraction is None else float(pages_fraction)
    if folders and not 0.0 < fraction < 1.0:
        raise ConfigError(f"the pages fraction must be between 0 and 1 (exclusive), got {pages_fraction!r}")
    records = find_records(record_inputs)
    validation, n_val = None, 0
    if hold_out:
        if len(records) < 2:
            raise ConfigError("training needs at least 2 records (one is held out for validation)")
        n_val = _held_out_count(len(records))
        with RenderedPages(
            records[-n_val:], list(profiles), seed=seed + 1, **dict(common, crops_per_page=4)
        ) as held_out:
            validation = FixedCrops.from_stream(held_out)
        records = records[:-n_val]
    rendered = RenderedPages(records, list(profiles), seed=seed, **common)
    if not folders:
        return rendered, validation, len(records), n_val
    n_pages = sum(f.page_count() for f in folders)
    # Each folder page is equally likely: a folder's weight is its share of the folder pages.
    weights = [1.0 - fraction, *(fraction * f.page_count() / n_pages for f in folders)]
    mixed = MixedPages(
        [rendered, *folders], weights, pages_per_epoch=math.ceil(len(records) / (1.0 - fraction)),
        seed=seed, **common,
    )  # fmt: skip
    return mixed, validation, len(records) + n_pages, n_val
