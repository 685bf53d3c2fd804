"""Networks: ensembles of MLPs with stored standardisation (flows and set embeddings follow)."""

from .mlp import EnsembleLinear, EnsembleMLP, Standardize

__all__ = ["EnsembleLinear", "EnsembleMLP", "Standardize"]
