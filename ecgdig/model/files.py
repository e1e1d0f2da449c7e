"""Model files: safetensors weights plus a JSON header that says how to rebuild and use them.

A model file is an ordinary safetensors file. Its ``__metadata__`` holds exactly one entry,
``"ecgdig.model"``: a canonical JSON object (sorted keys, no whitespace) with

- ``format`` (``"ecgdig-model"``) and ``version`` (an integer, :data:`MODEL_FORMAT_VERSION`);
- ``architecture``: the :class:`~ecgdig.model.network.UnetArchitecture` as a JSON object;
- ``px_per_mm``: the scale pages must be resampled to before inference;
- ``classes``: one name per output channel (``["trace"]``);
- ``training``: a JSON object summarizing the training data and run (free form);
- ``metrics``: a JSON object of named numbers (validation Dice, ...);
- ``ecgdig_version``: the version that wrote the file.

The tensors are the network's state dict, float32, named as :meth:`torch.nn.Module.state_dict`
names them. Reading never unpickles anything (no :func:`torch.load`): the safetensors header is
parsed here and checked against the architecture before any tensor is loaded, and every failure is a
:class:`~ecgdig.errors.ModelFileError` whose message is one line naming the file and the reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from numpy.typing import NDArray
from safetensors import SafetensorError, safe_open
from torch import nn

from ecgdig import __version__
from ecgdig.errors import ConfigError, ModelFileError
from ecgdig.io.atomic import atomic_path
from ecgdig.io.safetensors_header import read_safetensors_header
from ecgdig.io.strict_json import canonical_json, loads_strict
from ecgdig.model.network import DEFAULT_PX_PER_MM, TraceUnet, UnetArchitecture, build_network

__all__ = [
    "HEADER_KEY",
    "MAX_MODEL_BYTES",
    "MODEL_FORMAT",
    "MODEL_FORMAT_VERSION",
    "SHIPPED_MODEL",
    "ModelHeader",
    "default_model_path",
    "load_model",
    "load_state_tensors",
    "model_tensors",
    "read_model_header",
    "save_model",
]

MODEL_FORMAT = "ecgdig-model"
MODEL_FORMAT_VERSION = 1
HEADER_KEY = "ecgdig.model"
#: Refuse model files larger than this (the default network is about 3.4 MB).
MAX_MODEL_BYTES = 1024**3
_MAX_ST_HEADER_BYTES = 16 * 1024**2
#: The default model shipped in the package (``make train-default`` reproduces it).
SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / "default.safetensors"
_HEADER_FIELDS = frozenset(
    {"format", "version", "architecture", "px_per_mm", "classes", "training", "metrics", "ecgdig_version"}
)


@dataclass(frozen=True)
class ModelHeader:
    """What a model file says about its weights.

    Attributes
    ----------
    architecture : UnetArchitecture
        How to rebuild the network.
    px_per_mm : float
        Pixels per mm of paper the network expects its input at.
    classes : tuple of str
        Name of each output channel; ``classes[0]`` is ``"trace"``.
    training : dict
        JSON-ready summary of the training data and run (profiles, record counts, steps, seed...).
    metrics : dict of str to float
        Named results (``"val_dice"``, ...).
    ecgdig_version : str
        Version of ecgdig that wrote the file.
    format_version : int
        File format version.
    """

    architecture: UnetArchitecture
    px_per_mm: float = DEFAULT_PX_PER_MM
    classes: tuple[str, ...] = ("trace",)
    training: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    ecgdig_version: str = __version__
    format_version: int = MODEL_FORMAT_VERSION

    def problems(self) -> list[str]:
        """Return what is wrong with this header (empty when it is valid)."""
        out: list[str] = []
        if not (
            isinstance(self.px_per_mm, float | int) and math.isfinite(self.px_per_mm) and self.px_per_mm > 0
        ):
            out.append(f"px_per_mm must be a positive number, got {self.px_per_mm!r}")
        if not self.classes or not all(isinstance(c, str) and c for c in self.classes):
            out.append("classes must be a non-empty list of non-empty strings")
        elif self.classes[0] != "trace":
            out.append(f"the first class must be 'trace', got {self.classes[0]!r}")
        elif len(self.classes) != self.architecture.classes:
            out.append(f"{len(self.classes)} class name(s) for {self.architecture.classes} output channel(s)")
        if not isinstance(self.training, Mapping):
            out.append("training must be a JSON object")
        if not isinstance(self.metrics, Mapping) or not all(
            isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for k, v in self.metrics.items()
        ):
            out.append("metrics must map names to finite numbers")
        if not isinstance(self.ecgdig_version, str):
            out.append("ecgdig_version must be a string")
        return out

    def to_json(self) -> str:
        """Return the canonical JSON stored under :data:`HEADER_KEY`.

        Raises
        ------
        ValueError
            If the header is invalid or ``training`` is not JSON-serializable.
        """
        problems = self.problems()
        if problems:
            raise ValueError(f"invalid model header: {problems[0]}")
        return canonical_json(
            {
                "format": MODEL_FORMAT,
                "version": self.format_version,
                "architecture": self.architecture.to_dict(),
                "px_per_mm": float(self.px_per_mm),
                "classes": list(self.classes),
                "training": dict(self.training),
                "metrics": {k: float(v) for k, v in self.metrics.items()},
                "ecgdig_version": self.ecgdig_version,
            }
        )

    @classmethod
    def from_json(cls, text: str, path: str | Path | None = None) -> ModelHeader:
        """Parse and check a header; raise :class:`ModelFileError` naming the first problem."""
        try:
            data = loads_strict(text)
        except ValueError as exc:
            raise ModelFileError(f"model header is not valid JSON ({exc})", path) from None
        if not isinstance(data, dict):
            raise ModelFileError("model header is not a JSON object", path)
        fmt = data.get("format")
        if fmt != MODEL_FORMAT:
            raise ModelFileError(f"unknown format {fmt!r} (expected {MODEL_FORMAT!r})", path)
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ModelFileError(f"invalid format version {version!r}", path)
        if version > MODEL_FORMAT_VERSION:
            raise ModelFileError(
                f"format version {version} is newer than this ecgdig reads ({MODEL_FORMAT_VERSION}); "
                "upgrade ecgdig",
                path,
            )
        missing, extra = sorted(_HEADER_FIELDS - set(data)), sorted(set(data) - _HEADER_FIELDS)
        if missing:
            raise ModelFileError(f"model header lacks field(s) {', '.join(missing)}", path)
        if extra:
            raise ModelFileError(f"model header has unknown field(s) {', '.join(extra)}", path)
        try:
            arch = UnetArchitecture.from_dict(data["architecture"])
        except ConfigError as exc:
            raise ModelFileError(exc.reason, path) from None
        classes = data["classes"]
        header = cls(
            architecture=arch,
            px_per_mm=data["px_per_mm"] if not isinstance(data["px_per_mm"], bool) else float("nan"),
            classes=tuple(classes) if isinstance(classes, list) else (),
            training=data["training"] if isinstance(data["training"], dict) else None,  # type: ignore[arg-type]
            metrics=data["metrics"] if isinstance(data["metrics"], dict) else None,  # type: ignore[arg-type]
            ecgdig_version=data["ecgdig_version"],
            format_version=version,
        )
        problems = header.problems()
        if problems:
            raise ModelFileError(f"invalid model header: {problems[0]}", path)
        return header


def model_tensors(model: nn.Module) -> dict[str, NDArray[np.float32]]:
    """Return the model's state dict as float32 numpy arrays (copies), sorted by name.

    Raises
    ------
    ValueError
        If a tensor is not floating point or holds NaN or Inf.
    """
    out: dict[str, NDArray[np.float32]] = {}
    for name, tensor in sorted(model.state_dict().items()):
        if not tensor.is_floating_point():
            raise ValueError(f"tensor {name!r} is {tensor.dtype}, expected floating point")
        array = tensor.detach().to("cpu", torch.float32).contiguous().numpy().copy()
        if not np.isfinite(array).all():
            raise ValueError(f"tensor {name!r} contains NaN or Inf")
        out[name] = array
    return out


def load_state_tensors(
    model: nn.Module, tensors: Mapping[str, Any], *, path: str | Path | None = None
) -> None:
    """Copy named tensors into ``model`` after checking names, shapes and finiteness.

    Parameters
    ----------
    model : torch.nn.Module
        Receives the values (in place).
    tensors : mapping of str to array-like
        One entry per state-dict tensor of ``model``, no more, no less.
    path : str or Path, optional
        File named in error messages.

    Raises
    ------
    ModelFileError
        Missing or unexpected tensors, a shape mismatch, or NaN/Inf values.
    """
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    _check_inventory({name: tuple(np.shape(v)) for name, v in tensors.items()}, expected, path)
    state: dict[str, torch.Tensor] = {}
    for name, value in tensors.items():
        t = (
            torch.as_tensor(np.asarray(value, dtype=np.float32))
            if not isinstance(value, torch.Tensor)
            else value
        )
        t = t.to(torch.float32)
        if not torch.isfinite(t).all():
            raise ModelFileError(f"tensor {name!r} contains NaN or Inf", path)
        state[name] = t
    model.load_state_dict(state, strict=True)


def _names(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_inventory(
    found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], path: str | Path | None
) -> None:
    missing = sorted(set(expected) - set(found))
    if missing:
        raise ModelFileError(f"missing tensor(s) {_names(missing)} for this architecture", path)
    extra = sorted(set(found) - set(expected))
    if extra:
        raise ModelFileError(f"unexpected tensor(s) {_names(extra)} for this architecture", path)
    for name in sorted(expected):
        if tuple(found[name]) != tuple(expected[name]):
            raise ModelFileError(
                f"tensor {name!r} has shape {list(found[name])}, "
                f"the architecture needs {list(expected[name])}",
                path,
            )


def save_model(path: str | Path, model: TraceUnet, header: ModelHeader) -> Path:
    """Write ``model``'s weights and ``header`` to ``path`` atomically.

    Parameters
    ----------
    path : str or Path
        Target file (conventionally ``*.safetensors``); its folder is created if missing.
    model : TraceUnet
        The network; its architecture must equal ``header.architecture``.
    header : ModelHeader
        Scale, classes, training summary and metrics.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If the header is invalid, its architecture differs from the model's, or a weight is NaN/Inf.
    """
    path = Path(path)
    model_arch = getattr(model, "architecture", None)
    if model_arch != header.architecture:
        raise ValueError("header.architecture does not match the model's architecture")
    header_text = header.to_json()
    tensors = {name: torch.from_numpy(array) for name, array in model_tensors(model).items()}
    data = safetensors.torch.save(tensors, metadata={HEADER_KEY: header_text})
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


@dataclass(frozen=True)
class _FileInfo:
    header: ModelHeader
    header_text: str
    shapes: dict[str, tuple[int, ...]]


def _read_info(path: Path, max_bytes: int) -> _FileInfo:
    st_header, metadata, _ = read_safetensors_header(
        path, max_bytes=max_bytes, max_header_bytes=_MAX_ST_HEADER_BYTES, error=ModelFileError
    )
    if not isinstance(metadata, dict) or not isinstance(metadata.get(HEADER_KEY), str):
        raise ModelFileError(f"not an ecgdig model file (no {HEADER_KEY!r} metadata)", path)
    header_text = metadata[HEADER_KEY]
    header = ModelHeader.from_json(header_text, path)
    shapes: dict[str, tuple[int, ...]] = {}
    for name, entry in st_header.items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("shape"), list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in entry["shape"])
        ):
            raise ModelFileError(f"not a safetensors file (malformed entry for tensor {name!r})", path)
        if entry.get("dtype") != "F32":
            raise ModelFileError(f"tensor {name!r} is {entry.get('dtype')}, expected F32", path)
        shapes[name] = tuple(entry["shape"])
    return _FileInfo(header=header, header_text=header_text, shapes=shapes)


def read_model_header(path: str | Path, *, max_bytes: int = MAX_MODEL_BYTES) -> ModelHeader:
    """Read and check a model file's header without loading its weights.

    Raises
    ------
    ModelFileError
        As :func:`load_model` does for the header.
    """
    return _read_info(Path(path), max_bytes).header


def load_model(path: str | Path, *, max_bytes: int = MAX_MODEL_BYTES) -> tuple[TraceUnet, ModelHeader]:
    """Load a model file written by :func:`save_model` (safetensors only, never pickle).

    Parameters
    ----------
    path : str or Path
        The model file.
    max_bytes : int, optional
        Refuse larger files.

    Returns
    -------
    model : TraceUnet
        Rebuilt from the header's architecture with the file's weights, in eval mode.
    header : ModelHeader
        The checked header.

    Raises
    ------
    ModelFileError
        Missing file; not a safetensors file; no ecgdig header; unknown format; a newer format
        version; an invalid header or architecture; missing, extra, non-float32 or wrongly shaped
        tensors; NaN or Inf weights. The message is one line naming the file and the reason.
    """
    path = Path(path)
    info = _read_info(path, max_bytes)
    model = build_network(info.header.architecture, seed=0)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    _check_inventory(info.shapes, expected, path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get(HEADER_KEY) != info.header_text:
                raise ModelFileError("file changed while it was being read", path)
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except SafetensorError as exc:
        raise ModelFileError(f"not a valid safetensors file ({str(exc).splitlines()[0]})", path) from None
    load_state_tensors(model, tensors, path=path)
    model.eval()
    return model, info.header


def default_model_path() -> Path:
    """Return the model file shipped in the package (see ``docs/model-card.md``).

    Raises
    ------
    ConfigError
        If the installation lacks it (a source tree where ``make train-default`` was never run).
    """
    if not SHIPPED_MODEL.is_file():
        raise ConfigError("no default model in this installation; pass --model PATH", SHIPPED_MODEL)
    return SHIPPED_MODEL
