"""Read a safetensors file's JSON header safely, before any tensor is touched.

Model files and federated protocol files are safetensors files received from elsewhere. Their
8-byte length prefix and JSON header are checked here (size bounds, strict JSON, a JSON object)
so that a truncated, oversized or hostile file fails with one line before ``safe_open`` reads it.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from ecgdig.errors import EcgdigError
from ecgdig.io.strict_json import loads_strict

__all__ = ["read_safetensors_header"]


def read_safetensors_header(
    path: Path, *, max_bytes: int, max_header_bytes: int, error: type[EcgdigError]
) -> tuple[dict[str, Any], Any, int]:
    """Return a safetensors file's tensor entries, its ``__metadata__`` and its size in bytes.

    Parameters
    ----------
    path : Path
        The file.
    max_bytes : int
        Refuse larger files.
    max_header_bytes : int
        Refuse larger JSON headers.
    error : type of EcgdigError
        The error raised, so each file kind keeps its own error class.

    Returns
    -------
    entries : dict
        Tensor name -> its header entry (not yet checked).
    metadata : object
        The ``__metadata__`` value as found (None when absent; the caller checks it).
    size : int
        File size in bytes.

    Raises
    ------
    EcgdigError
        Of class ``error``: missing file, too large, too short, implausible header length, a header
        that is not strict JSON or not an object.
    """
    if not path.is_file():
        raise error("file not found", path)
    size = path.stat().st_size
    if size > max_bytes:
        raise error(f"file is {size} bytes, over the {max_bytes}-byte limit", path)
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise error("not a safetensors file: shorter than 8 bytes", path)
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len < 2 or header_len > max_header_bytes or 8 + header_len > size:
            raise error(f"not a safetensors file: implausible header length {header_len}", path)
        raw = handle.read(header_len)
    try:
        entries = loads_strict(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise error(f"not a safetensors file: header is not JSON ({exc})", path) from None
    if not isinstance(entries, dict):
        raise error("not a safetensors file: header is not a JSON object", path)
    metadata = entries.pop("__metadata__", None)
    return entries, metadata, size
