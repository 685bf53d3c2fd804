"""Estimators: a network, a loss from `simfer.losses`, and the one training loop."""

from .base import Estimator, load
from .ratio import RatioEstimator
from .score import ScoreEstimator

__all__ = ["Estimator", "RatioEstimator", "ScoreEstimator", "load"]
