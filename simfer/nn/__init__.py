"""Networks: ensembles of MLPs, conditional flows (nflows) and set embeddings.

Set embeddings share one calling convention, ``embedding(x, mask)`` with x
``[batch, max_n, in_features]`` and mask ``[batch, max_n]`` (True = a real element),
returning ``[batch, out_features]``.
"""

# seeded lives in simfer.seeding, the set helpers in simfer.data; both stay importable here
from ..data import pack_sets, pad_sets, set_sizes, unpack_sets
from ..seeding import seeded
from .flows import FLOWS, ConditionalFlow, StandardizeTransform, build_flow
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
