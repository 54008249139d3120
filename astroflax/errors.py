"""User-facing exception types for astroflax.

All derive from :class:`AstroflaxError` and from :class:`ValueError` (so generic
``except ValueError`` handlers still work). Messages are meant to be shown to
the user as-is: one line that names what is wrong, where (file, column,
row / object_id) and what was expected.
"""

from __future__ import annotations

__all__ = ["AstroflaxError", "DataError", "ConfigError", "CheckpointError"]


class AstroflaxError(ValueError):
    """Base class of astroflax's user-facing errors."""


class DataError(AstroflaxError):
    """Bad user-supplied data (missing file/column, invalid value, ...)."""


class ConfigError(AstroflaxError):
    """Bad user-supplied configuration."""


class CheckpointError(AstroflaxError):
    """Missing, incomplete or incompatible checkpoint / iterator state."""


class TrainingDiverged(AstroflaxError, FloatingPointError):
    """The loss became NaN/Inf; earlier checkpoints are untouched."""
