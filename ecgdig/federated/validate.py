"""Accept or reject protocol files: everything is checked before an update reaches aggregation.

:func:`validate_update` is the coordinator's gate: an update that is unsigned, signed by an unknown
or wrong key, altered, for another federation, round or base model, of the wrong shape, not finite,
or above the clip bound raises :class:`~ecgdig.errors.UpdateRejectedError` with a one-line reason and
is never aggregated. :func:`validate_model` is the site's gate for the global model it receives.

Checks run from cheap to expensive, and the tensors are only read once the signed header has been
verified and matched against the round (see ``docs/formats.md`` for the full order).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecgdig.errors import UpdateRejectedError
from ecgdig.federated.files import (
    MAX_FILE_BYTES,
    FileHeader,
    FileKind,
    TensorFileInfo,
    decode_signature,
    read_file_info,
    read_tensors,
    verify_signature,
)
from ecgdig.federated.keys import Registry
from ecgdig.federated.strategies import Tensors, global_l2_norm

__all__ = [
    "NORM_TOLERANCE",
    "ValidUpdate",
    "check_update_header",
    "validate_model",
    "validate_update",
]

NORM_TOLERANCE = 1e-6
"""Relative slack on the clip bound: an update is rejected if ``||delta||_2 > S * (1 + 1e-6)``.
Float32 rounding of a correctly clipped update stays far below it (:func:`clip_by_l2_norm` even
guarantees ``<= S``); it only absorbs a different summation order at the sender."""


@dataclass(frozen=True)
class ValidUpdate:
    """An update that passed every check.

    Parameters
    ----------
    path : Path
        The file.
    header : FileHeader
        Its verified header.
    tensors : dict of str to float32 ndarray
        The clipped delta.
    l2_norm : float
        Its global L2 norm (<= the clip bound).
    """

    path: Path
    header: FileHeader
    tensors: Tensors
    l2_norm: float

    @property
    def site_id(self) -> str:
        """The site that signed the update."""
        return self.header.site_id


def _short(sha: str) -> str:
    return f"{sha[:12]}..."


def _check_kind(info: TensorFileInfo, kind: FileKind) -> None:
    if info.header.kind != kind:
        raise UpdateRejectedError(f"expected a {kind} file, got a {info.header.kind} file", info.path)


def check_update_header(
    path: str | Path,
    *,
    registry: Registry,
    expected_round: int,
    expected_base_sha256: str,
    clip_norm: float,
    max_bytes: int = MAX_FILE_BYTES,
) -> TensorFileInfo:
    """Run the header-only checks of :func:`validate_update` (no tensor data is read).

    Parameters
    ----------
    path : str or Path
        The update file.
    registry : Registry
        Trusted site keys and the federation id.
    expected_round : int
        The round being aggregated (the round of the global model the sites trained from).
    expected_base_sha256 : str
        ``payload_sha256`` of that global model.
    clip_norm : float
        The federation's clip bound ``S``.
    max_bytes : int, optional
        File size bound.

    Returns
    -------
    TensorFileInfo
        Headers and tensor inventory of a signed, current update.

    Raises
    ------
    UpdateRejectedError
        Not a protocol file, not an update, unsigned, unknown site, bad signature, other federation,
        wrong round, wrong base model, or another clip bound.
    """
    info = read_file_info(path, max_bytes=max_bytes)
    header = info.header
    _check_kind(info, "update")
    if header.signature is None:
        raise UpdateRejectedError("unsigned update: the header has no signature", info.path)
    if decode_signature(header) is None:
        raise UpdateRejectedError("malformed signature: not base64 of 64 bytes", info.path)
    public_key = registry.sites.get(header.site_id)
    if public_key is None:
        raise UpdateRejectedError(
            f"unknown site {header.site_id!r}: not in the federation's registry", info.path
        )
    if not verify_signature(header, public_key):
        raise UpdateRejectedError(
            f"bad signature: header altered or not signed by site {header.site_id!r}'s registered key",
            info.path,
        )
    if header.federation_id != registry.federation_id:
        raise UpdateRejectedError(
            f"update belongs to federation {header.federation_id!r}, expected {registry.federation_id!r}",
            info.path,
        )
    if header.round != expected_round:
        raise UpdateRejectedError(
            f"update is for round {header.round}, expected round {expected_round} (stale or replayed file)",
            info.path,
        )
    if header.base_sha256 != expected_base_sha256:
        raise UpdateRejectedError(
            f"update was computed from base model {_short(header.base_sha256)}, "
            f"expected the current global model {_short(expected_base_sha256)}",
            info.path,
        )
    if header.clip_norm != clip_norm:
        raise UpdateRejectedError(
            f"update declares clip norm {header.clip_norm!r}, the federation uses {clip_norm!r}", info.path
        )
    if header.num_examples < 1:
        raise UpdateRejectedError("update declares 0 training examples", info.path)
    return info


def _check_inventory(info: TensorFileInfo, reference_shapes: Mapping[str, tuple[int, ...]]) -> None:
    missing = sorted(set(reference_shapes) - set(info.tensors))
    extra = sorted(set(info.tensors) - set(reference_shapes))
    if missing:
        raise UpdateRejectedError(f"missing tensors: {_names(missing)}", info.path)
    if extra:
        raise UpdateRejectedError(f"unexpected tensors: {_names(extra)}", info.path)
    for name in sorted(reference_shapes):
        spec = info.tensors[name]
        expected = tuple(int(d) for d in reference_shapes[name])
        if spec.shape != expected:
            raise UpdateRejectedError(
                f"tensor {name!r} has shape {spec.shape}, expected {expected}", info.path
            )


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def _check_finite(info: TensorFileInfo, tensors: Tensors) -> None:
    for name in sorted(tensors):
        if not np.isfinite(tensors[name]).all():
            raise UpdateRejectedError(f"tensor {name!r} contains NaN or Inf", info.path)


def validate_update(
    path: str | Path,
    *,
    registry: Registry,
    expected_round: int,
    expected_base_sha256: str,
    reference_shapes: Mapping[str, tuple[int, ...]],
    clip_norm: float,
    max_bytes: int = MAX_FILE_BYTES,
) -> ValidUpdate:
    """Check an update file completely and return its tensors.

    Parameters
    ----------
    path : str or Path
        The update file.
    registry : Registry
        Trusted site keys and the federation id.
    expected_round : int
        The round being aggregated.
    expected_base_sha256 : str
        ``payload_sha256`` of that round's global model.
    reference_shapes : mapping of str to tuple of int
        The global model's tensor names and shapes (all float32).
    clip_norm : float
        The clip bound ``S``; the update's L2 norm must not exceed ``S * (1 + 1e-6)``.
    max_bytes : int, optional
        File size bound (default 2 GiB).

    Returns
    -------
    ValidUpdate
        The verified update.

    Raises
    ------
    UpdateRejectedError
        With a one-line reason naming the file: not a safetensors file, unsigned, unknown site, bad
        signature or tampered header, tampered payload, other federation, wrong round (replay),
        wrong base model, missing or extra tensors, wrong dtype or shape, NaN or Inf, or a norm
        above the clip bound.
    """
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"clip_norm must be a finite positive number, got {clip_norm!r}")
    info = check_update_header(
        path,
        registry=registry,
        expected_round=expected_round,
        expected_base_sha256=expected_base_sha256,
        clip_norm=clip_norm,
        max_bytes=max_bytes,
    )
    _check_inventory(info, reference_shapes)
    tensors = read_tensors(info)
    _check_finite(info, tensors)
    norm = global_l2_norm(tensors)
    if norm > clip_norm * (1.0 + NORM_TOLERANCE):
        raise UpdateRejectedError(
            f"update L2 norm {norm:.6g} exceeds the clip norm {clip_norm:.6g}", info.path
        )
    return ValidUpdate(path=info.path, header=info.header, tensors=tensors, l2_norm=norm)


def validate_model(
    path: str | Path,
    *,
    federation_id: str,
    coordinator_id: str,
    coordinator_public_key: bytes,
    expected_round: int | None = None,
    max_bytes: int = MAX_FILE_BYTES,
) -> tuple[FileHeader, Tensors]:
    """Check a global model file (signed by the coordinator) and return its header and tensors.

    Parameters
    ----------
    path : str or Path
        The model file.
    federation_id : str
        The federation it must belong to.
    coordinator_id : str
        The signer id the coordinator uses.
    coordinator_public_key : bytes
        The coordinator's raw Ed25519 public key (from ``plan.json``, fingerprint checked out of band).
    expected_round : int, optional
        The round it must open, if known.
    max_bytes : int, optional
        File size bound.

    Returns
    -------
    header : FileHeader
        The verified header.
    tensors : dict of str to float32 ndarray
        The model.

    Raises
    ------
    UpdateRejectedError
        Not a model file, unsigned, not signed by the coordinator, other federation or round,
        altered payload, or NaN / Inf.
    """
    info = read_file_info(path, max_bytes=max_bytes)
    header = info.header
    _check_kind(info, "model")
    if header.signature is None:
        raise UpdateRejectedError("unsigned model: the header has no signature", info.path)
    if header.site_id != coordinator_id or not verify_signature(header, coordinator_public_key):
        raise UpdateRejectedError(
            "bad signature: the model was altered or not signed by the coordinator", info.path
        )
    if header.federation_id != federation_id:
        raise UpdateRejectedError(
            f"model belongs to federation {header.federation_id!r}, expected {federation_id!r}", info.path
        )
    if expected_round is not None and header.round != expected_round:
        raise UpdateRejectedError(
            f"model is for round {header.round}, expected round {expected_round}", info.path
        )
    tensors = read_tensors(info)
    _check_finite(info, tensors)
    return header, tensors
