"""Networks: ensembles of MLPs with stored standardisation, and set embeddings.

Set embeddings share one calling convention, ``embedding(x, mask)`` with x
``[batch, max_n, in_features]`` and mask ``[batch, max_n]`` (True = a real element),
returning ``[batch, out_features]``.
"""

from .mlp import EnsembleLinear, EnsembleMLP, Standardize
from .sets import (
    EGNN,
    DeepSets,
    EGNNLayer,
    LorentzNet,
    LorentzNetLayer,
    count_parameters,
    masked_pool,
    pad_sets,
    set_sizes,
)

__all__ = [
    "DeepSets",
    "EGNN",
    "EGNNLayer",
    "EnsembleLinear",
    "EnsembleMLP",
    "LorentzNet",
    "LorentzNetLayer",
    "Standardize",
    "count_parameters",
    "masked_pool",
    "pad_sets",
    "set_sizes",
]
