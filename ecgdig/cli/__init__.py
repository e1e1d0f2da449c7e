"""The ``ecgdig`` command line: parses arguments, calls library functions, prints with rich.

Each module of this package registers its commands on the one typer app of
:mod:`ecgdig.cli.common`; the modules only parse arguments, call library functions and print.
Exit codes: 0 success, 1 some inputs failed (each reported in one line), 2 usage error.
"""

from __future__ import annotations

# Importing a module registers its commands; the import order is the order of `ecgdig --help`:
# the digitization pipeline first, then federated training, secure aggregation and simulation.
# isort: off
from ecgdig.cli import pages  # noqa: F401
from ecgdig.cli import federated  # noqa: F401
from ecgdig.cli import secagg  # noqa: F401
from ecgdig.cli import simulate  # noqa: F401

# isort: on
from ecgdig.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``ecgdig`` console script."""
    app()
