"""The ``ecgdig`` command line: parses arguments, calls library functions, prints with rich.

Each module of this package registers its commands on the one typer app of
:mod:`ecgdig.cli.common`; the modules only parse arguments, call library functions and print.
Exit codes: 0 success, 1 some inputs failed (each reported in one line), 2 usage error.
"""

from __future__ import annotations

from ecgdig.cli import (
    federated,  # noqa: F401
    pages,  # noqa: F401  (registers the commands)
    secagg,  # noqa: F401
    simulate,  # noqa: F401
)
from ecgdig.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``ecgdig`` console script."""
    app()
