"""ecgdig: digitize paper 12-lead ECG pages into calibrated WFDB records.

Every pipeline stage is a plain function; the command line in :mod:`ecgdig.cli` only parses
arguments and calls them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
