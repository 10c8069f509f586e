"""Every error type a user can catch, in one place (``af.errors``).

All derive from :class:`AmortflowError` (itself a ``ValueError`` where the cause is a bad value, so
existing ``except ValueError`` code keeps working). Each message names the offending argument,
file or site and says what to do; the README lists them.
"""
from __future__ import annotations


class AmortflowError(Exception):
    """Base class of amortflow's errors."""


class ObservationError(AmortflowError, ValueError):
    """Observations that do not fit the model: wrong shape or dtype, NaN, infinite or
    float32-overflowing values, no datasets."""


class ConfigError(AmortflowError, ValueError):
    """A setting outside its allowed range (the message names the field and the range)."""


class BetaRangeError(ConfigError):
    """A temperature ``beta`` outside the range a generalized-Bayes estimator was trained on
    (the message names the range, how to retrain, and the explicit opt-in to extrapolate)."""


class ProgressError(AmortflowError, ValueError):
    """An ``out_dir`` progress folder that belongs to another run, or a damaged progress file
    (the message names the file; delete it to recompute that stage)."""


class CheckpointError(AmortflowError, ValueError):
    """A saved estimator or training checkpoint that is missing, malformed, damaged (checksum),
    non-finite, of another model / seed / simulations, or does not match its architecture."""


class TrainingDivergedError(AmortflowError, RuntimeError):
    """The training loss became NaN or infinite (the message names the step)."""


class ResultFileError(AmortflowError, ValueError):
    """A saved :class:`~amortflow.WorkflowResult` that is missing, damaged, partial or of
    another model than the one passed to ``WorkflowResult.load``."""


__all__ = ["CheckpointError", "TrainingDivergedError", "ResultFileError", "AmortflowError", "ObservationError", "ConfigError", "BetaRangeError", "ProgressError"]
