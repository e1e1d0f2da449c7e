"""Atomic file writes: write to a temporary file in the same folder, then rename over the target.

A crash leaves either the old file or the new one, never half a file, so an interrupted batch can be
re-run and resumes from what is complete.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text"]


@contextlib.contextmanager
def atomic_path(target: str | Path, *, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it over ``target``.

    Parameters
    ----------
    target : str or Path
        The final file path. Its folder is created if missing.

    mode : int, optional
        Permission bits of the final file. By default those of a newly created file under the
        process umask (usually 0644), not the 0600 of a temporary file.

    Yields
    ------
    Path
        A path in the same folder to write to. It keeps ``target``'s suffix so libraries that
        pick a format from the extension still work.

    Notes
    -----
    If the body raises, the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent
    )
    if mode is None:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.fchmod(fd, mode)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically (see :func:`atomic_path`)."""
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_text(target: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``target`` atomically (see :func:`atomic_path`)."""
    atomic_write_bytes(target, text.encode("utf-8"))
