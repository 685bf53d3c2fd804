"""The errors and warnings simfer raises, each named for the problem it reports.

Every one derives from :class:`SimferError` so that a caller can catch simfer's
complaints as a group; the shape and support errors are also ``ValueError`` and
the simulator failure a ``RuntimeError``, so generic handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "SimferError",
    "ShapeError",
    "SupportError",
    "GoldNotAvailableError",
    "LikelihoodNotAvailableError",
    "SimulatorError",
    "StoreError",
    "ModelFileError",
    "InvalidSimulationWarning",
    "ExtrapolationWarning",
]


class SimferError(Exception):
    """Base class of every error raised by simfer."""


class ShapeError(SimferError, ValueError):
    """An array has the wrong shape or dtype for what it is used as."""


class SupportError(SimferError, ValueError):
    """A parameter point lies outside the prior's or the simulator's support."""


class GoldNotAvailableError(SimferError):
    """Gold (joint log ratio, joint score) was asked of a simulator that has none."""


class LikelihoodNotAvailableError(SimferError):
    """An exact likelihood was asked of a simulator that does not have one."""


class SimulatorError(SimferError, RuntimeError):
    """The user's simulator raised, or returned something simfer cannot use."""


class StoreError(SimferError):
    """A simulation store on disk is corrupt, foreign or made for another run."""


class ModelFileError(SimferError):
    """A saved model file is corrupt, foreign, unsafe or from a newer simfer."""


class InvalidSimulationWarning(UserWarning):
    """Some simulations returned NaN or inf (or raised) and were flagged invalid."""


class ExtrapolationWarning(UserWarning):
    """Posterior draws lie where the prior, and so the training data, almost never puts θ:
    the surrogate extrapolates there, and MCMC chains may have run away on it."""
