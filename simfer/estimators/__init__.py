"""Estimators: a network, a loss from `simfer.losses`, and the one training loop."""

from .base import Estimator, load
from .histogram import HistogramLikelihood
from .likelihood import LikelihoodEstimator
from .posterior import PosteriorEstimator
from .ratio import RatioEstimator
from .score import ScoreEstimator

__all__ = [
    "Estimator",
    "HistogramLikelihood",
    "LikelihoodEstimator",
    "PosteriorEstimator",
    "RatioEstimator",
    "ScoreEstimator",
    "load",
]
