"""simfer: simulation-based inference with gold mining, set embeddings and experiment design."""

__version__ = "0.2.0"

from . import design, diagnostics, inference, losses, streaming
from .data import SimulationData
from .design import ExperimentLoop
from .errors import (
    ExtrapolationWarning,
    GoldNotAvailableError,
    InvalidSimulationWarning,
    LikelihoodNotAvailableError,
    ModelFileError,
    ShapeError,
    SimferError,
    SimulatorError,
    StoreError,
    SupportError,
)
from .estimators import (
    HistogramLikelihood,
    LikelihoodEstimator,
    PosteriorEstimator,
    RatioEstimator,
    ScoreEstimator,
    load,
)
from .prior import BoxUniform, as_prior
from .runner import simulate
from .sequential import sequential
from .simulator import Simulator, TractableSimulator
from .store import SimulationStore, load_simulations, merge_stores
from .streaming import StoredSimulations

__all__ = [
    "__version__",
    "BoxUniform",
    "ExperimentLoop",
    "GoldNotAvailableError",
    "HistogramLikelihood",
    "InvalidSimulationWarning",
    "ExtrapolationWarning",
    "LikelihoodNotAvailableError",
    "LikelihoodEstimator",
    "ModelFileError",
    "PosteriorEstimator",
    "RatioEstimator",
    "ScoreEstimator",
    "ShapeError",
    "SimferError",
    "SimulationData",
    "Simulator",
    "SimulatorError",
    "StoreError",
    "SupportError",
    "TractableSimulator",
    "as_prior",
    "design",
    "diagnostics",
    "inference",
    "load",
    "load_simulations",
    "losses",
    "merge_stores",
    "sequential",
    "simulate",
    "SimulationStore",
    "StoredSimulations",
    "streaming",
]
