"""Strict JSON for files that cross trust boundaries: canonical output, unambiguous input.

Model files, protocol files, plans and ledgers are all JSON read from disks that other people
wrote. Duplicate keys and ``NaN`` are refused on input (two parsers could read one document two
ways), and output is canonical (sorted keys, no whitespace, ASCII) so a hash or a signature of it is
stable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ecgdig.errors import ConfigError

__all__ = ["canonical_json", "loads_strict", "read_json_file"]


def canonical_json(obj: Any) -> str:
    """Serialize ``obj`` as canonical JSON: sorted keys, no whitespace, ASCII, no NaN.

    Floats are written as Python's shortest round-trip ``repr``, so parsing and re-serializing a
    canonical text gives the same text.

    Parameters
    ----------
    obj : object
        JSON-compatible data (dicts with string keys, lists, str, int, finite float, bool, None).

    Returns
    -------
    str
        The canonical text.

    Raises
    ------
    ValueError
        ``obj`` holds NaN or Inf.

    Examples
    --------
    >>> canonical_json({"b": 1.0, "a": [1, "x"]})
    '{"a":[1,"x"],"b":1.0}'
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def loads_strict(text: str | bytes) -> Any:
    """Parse JSON, rejecting duplicate keys and NaN / Infinity.

    Duplicate keys are the classic way to make two parsers disagree about one document; refusing
    them means this parser and the safetensors one always see the same header.

    Parameters
    ----------
    text : str or bytes
        The JSON text.

    Returns
    -------
    object
        The parsed value.

    Raises
    ------
    ValueError
        Invalid JSON, a duplicate key or a non-finite number.

    Examples
    --------
    >>> loads_strict('{"a": 1}')
    {'a': 1}
    """
    return json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)


def read_json_file(path: str | Path, what: str, *, max_bytes: int) -> Any:
    """Read a small JSON file strictly (see :func:`loads_strict`), refusing oversized ones.

    Parameters
    ----------
    path : str or Path
        The file.
    what : str
        What the file is, for the error message (``"plan"``, ``"registry"``...).
    max_bytes : int
        Largest accepted size.

    Returns
    -------
    Any
        The parsed JSON value.

    Raises
    ------
    ConfigError
        If the file is missing, too large, or not valid JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found", path)
    if path.stat().st_size > max_bytes:
        raise ConfigError(f"{what} is larger than {max_bytes} bytes", path)
    try:
        return loads_strict(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{what} is not valid JSON ({exc})", path) from None
