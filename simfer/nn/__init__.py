"""Networks: ensembles of MLPs, conditional flows (nflows) and set embeddings.

Set embeddings share one calling convention, ``embedding(x, mask)`` with x
``[batch, max_n, in_features]`` and mask ``[batch, max_n]`` (True = a real element),
returning ``[batch, out_features]``.
"""

from .flows import FLOWS, ConditionalFlow, StandardizeTransform, build_flow, seeded
from .mlp import EnsembleLinear, EnsembleMLP, Standardize
from .sets import (
    EGNN,
    DeepSets,
    EGNNLayer,
    LorentzNet,
    LorentzNetLayer,
    SetEmbedding,
    count_parameters,
    masked_pool,
    pack_sets,
    pad_sets,
    set_sizes,
    unpack_sets,
)

__all__ = [
    "FLOWS",
    "ConditionalFlow",
    "DeepSets",
    "EGNN",
    "EGNNLayer",
    "EnsembleLinear",
    "EnsembleMLP",
    "LorentzNet",
    "LorentzNetLayer",
    "SetEmbedding",
    "Standardize",
    "StandardizeTransform",
    "build_flow",
    "count_parameters",
    "masked_pool",
    "pack_sets",
    "pad_sets",
    "seeded",
    "set_sizes",
    "unpack_sets",
]
