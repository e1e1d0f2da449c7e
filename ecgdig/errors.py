"""The package's exception types.

Every expected failure raises an :class:`EcgdigError` subclass whose message is one line naming the
file (when there is one) and the problem, so the command line can print it without a traceback.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ConfigError",
    "DigitizationError",
    "EcgdigError",
    "ImageInputError",
    "ModelFileError",
    "PrivacyBudgetError",
    "RecordInputError",
    "TrainingDivergedError",
    "UpdateRejectedError",
]


class EcgdigError(Exception):
    """Base class of every expected ecgdig failure.

    Parameters
    ----------
    message : str
        What went wrong, in one line.
    path : str or Path, optional
        The file concerned; it is prefixed to the message.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


class ImageInputError(EcgdigError):
    """An input image is unreadable, truncated, empty, too large or not an ECG page."""


class RecordInputError(EcgdigError):
    """A WFDB record cannot be read or does not hold what is needed."""


class DigitizationError(EcgdigError):
    """A page was read but could not be digitized (no grid, no traces, ...)."""


class ConfigError(EcgdigError):
    """A YAML layout or profile, or a command-line combination, is invalid."""


class ModelFileError(EcgdigError):
    """A model file is missing, not safetensors, or incompatible with this version."""


class TrainingDivergedError(EcgdigError):
    """Training produced a non-finite loss (too high a learning rate, or broken inputs)."""


class UpdateRejectedError(EcgdigError):
    """A federated update or protocol file failed validation."""


class PrivacyBudgetError(EcgdigError):
    """A round would push epsilon above the allowed maximum; it was refused before any noise."""
