"""`ScoreEstimator` (SALLY): regress t̂(x) on the joint score at a reference point.

SALLY (Brehmer et al. 2018) minimises E|t̂(x) − t(x,z|θ_ref)|² over x, z drawn at
θ_ref.  Since E[t(x,z|θ_ref) | x] = t(x|θ_ref), the minimiser is the exact score
t(x|θ_ref): the locally sufficient statistic of x near θ_ref.  Its second moment
is the Fisher information, I(θ_ref) = n · E_x[t(x|θ_ref) t(x|θ_ref)ᵀ] for n iid
events, the number physicists use to compare analyses (an analysis with a larger
information constrains θ better near θ_ref; its inverse is the Cramér–Rao bound).

The network's output is scaled by the mean and standard deviation of the
training targets (stored buffers), so it starts at the right order of magnitude.

An ``embedding`` e(x) (any ``torch.nn.Module``; for set-valued x a set embedding called
as ``embedding(x, mask)``, see `simfer.estimators.embedding`) is trained jointly:
t̂(x) = MLP(e(x)).  With a Lorentz-invariant embedding of jets the learnt score, and so the
Fisher information, is invariant by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import losses
from ..data import SimulationData
from ..errors import SimferError
from ..nn import EnsembleMLP, Standardize, seeded
from ..prior import describe_prior
from ..training import fit_network
from .base import Estimator
from .embedding import EmbeddingMixin, check_no_ensemble, x_batch

__all__ = ["ScoreEstimator", "ScoreNetwork"]


class ScoreNetwork(nn.Module):
    """t̂(x) ``[E, batch, theta_dim]`` = μ_t + σ_t · MLP(s(x)), with s(x) the standardised x
    ``[batch, x_dim]`` or the output ``[batch, x_dim]`` of an embedding."""

    def __init__(self, x_dim, theta_dim, hidden, n_members, embedding=None):
        super().__init__()
        self.n_members = n_members
        self.embedding = embedding
        self.x_standardize = Standardize(x_dim) if embedding is None else None
        self.target_scale = Standardize(theta_dim)  # used in reverse: μ + σ·output
        self.mlp = EnsembleMLP(x_dim, theta_dim, hidden, n_members)

    def forward(self, x: Tensor) -> Tensor:
        summary = self.x_standardize(x) if self.embedding is None else self.embedding(x)
        return self.target_scale.mean + self.target_scale.std * self.mlp(summary)


class ScoreEstimator(EmbeddingMixin, Estimator):
    """Learn the score t(x|θ_ref) from the joint score (SALLY).

    Args:
        method: ``"sally"``.
        hidden, n_ensemble, **training: as for `RatioEstimator`.
        embedding: a ``torch.nn.Module`` summarising x, trained jointly (needs
            ``n_ensemble=1``); required for set-valued x, where it is called as
            ``embedding(x [batch, max_n, features], mask [batch, max_n]) → [batch, k]``.
            Load a model trained with one by ``ScoreEstimator.load(path, embedding=...)``.
    """

    def __init__(
        self,
        method: str = "sally",
        *,
        hidden: Sequence[int] = (128, 128, 128),
        n_ensemble: int = 1,
        embedding: nn.Module | dict | None = None,
        **training: Any,
    ):
        if method.lower() != "sally":
            raise ValueError(f"unknown score method {method!r}; available: 'sally'")
        super().__init__(**training)
        self.method = "sally"
        self.hidden = tuple(int(h) for h in hidden)
        self.n_ensemble = int(n_ensemble)
        self._init_embedding(embedding)
        check_no_ensemble(self.n_ensemble, self.embedding)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "hidden": list(self.hidden),
            "n_ensemble": self.n_ensemble,
            "embedding": self._embedding_hyperparameter(),
        }

    def _build(self, dims: dict[str, Any]) -> ScoreNetwork:
        self._require_embedding(dims)
        return ScoreNetwork(
            dims["x_dim"],
            dims["theta_dim"],
            self.hidden,
            self.n_ensemble,
            self._embedding_module(dims),
        )

    def fit(self, data: SimulationData, prior=None) -> ScoreEstimator:
        """Train on the rows drawn at θ_ref (the reference class of ``simfer.simulate``), or
        on data simulated at one θ."""
        if not isinstance(data, SimulationData) or not data.has_gold:
            raise SimferError("SALLY mines gold: simulate with gold=True (and theta_ref=...)")
        data = data.valid_only()
        if data.from_reference is not None and bool(data.from_reference.any()):
            local = data.subset(data.from_reference)
            target, theta_ref = local.joint_score_ref, local.theta_ref[0]
        elif bool((data.theta == data.theta[0]).all()):
            local, target, theta_ref = data, data.joint_score, data.theta[0]
        else:
            raise SimferError(
                "SALLY learns the score at one point θ_ref: simulate with theta_ref=... (its "
                "reference rows are used) or at a single θ"
            )
        x, x_dims = self._training_x(local)
        x_dim = self._embedding_features(x, x_dims) if self.embedding is not None else x.shape[1]
        self.dims = {
            "x_dim": x_dim,
            "theta_dim": target.shape[1],
            "theta_ref": theta_ref.tolist(),
            **x_dims,
        }
        if prior is not None:
            self.prior_description = describe_prior(prior)
        with seeded(self.training.seed):  # the initial weights follow the seed
            network = self._build(self.dims)
        if network.x_standardize is not None:
            network.x_standardize.fit(x)
        network.target_scale.fit(target)

        def loss_fn(network: ScoreNetwork, batch: dict[str, Tensor], training: bool) -> Tensor:
            predicted = network(batch["x"])
            return torch.stack([losses.sally(p, batch["joint_score"]) for p in predicted])

        self.network = network
        self.history = fit_network(network, loss_fn, {"x": x, "joint_score": target}, self.training)
        return self

    def _x(self, x) -> Tensor:
        """x as the network takes it: flattened ``[batch, x_dim]``, whole for an embedding,
        packed for sets (one x gets a batch axis)."""
        network = self._require_fitted()
        x, _ = x_batch(x, self.dims, next(network.parameters()))
        return x if self.embedding is not None else x.flatten(1)

    def score(self, x: Tensor, *, return_std: bool = False):
        """t̂(x|θ_ref) ``[batch, theta_dim]`` (and the ensemble's standard deviation)."""
        network = self._require_fitted()
        with torch.no_grad():
            members = network(self._x(x))
        mean = members.mean(0)
        if not return_std:
            return mean
        return mean, (members.std(0) if members.shape[0] > 1 else torch.zeros_like(mean))

    def fisher_information(self, x: Tensor, n_events: int = 1) -> Tensor:
        """I(θ_ref) ≈ n_events · mean_x t̂(x) t̂(x)ᵀ ``[theta_dim, theta_dim]``, with x drawn
        at θ_ref (e.g. ``simulator.simulate(theta_ref.expand(n, -1))``)."""
        t = self.score(x)
        return n_events * (t.T @ t) / t.shape[0]
