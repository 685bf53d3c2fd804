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

With a design column, t̂(x, d) = MLP(s(x), d) learns the score at θ_ref of an x observed at
design d, and the Fisher information I(θ_ref; d) = E_x[t̂ t̂ᵀ] depends on d: the cheapest
experiment-design criterion.

Posterior.  SALLY learns only the score at θ_ref, so its posterior is the local
(asymptotically normal) model of the log-likelihood around θ_ref,

    log p(x|θ, d) ≈ log p(x|θ_ref, d) + t(x, d)·δ − ½ δᵀ I(θ_ref; d) δ,   δ = θ − θ_ref,

whose sum over events is exact to second order in δ: trust it only where the posterior
is concentrated near θ_ref.  I is the per-event Fisher information; by default the
covariance of t̂ over the observed events estimates it (Var t(x|θ_ref) = I(θ_ref) + O(δ);
with events at several designs, their average information), or pass
``fisher_information``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from .. import losses
from ..data import RaggedSets, SimulationData
from ..errors import SimferError
from ..inference import EventTerm, Posterior
from ..nn import EnsembleMLP, Standardize
from ..nn.mlp import mlp_widths
from ..prior import describe_prior
from ..seeding import seeded
from ..streaming import Moments, StoredSimulations, StreamedRows
from ..training import fit_network
from .base import Estimator
from .dims import Dims
from .embedding import EmbeddingMixin, check_no_ensemble, observed_x, x_batch
from .rows import (
    TrainingData,
    pair_rows,
    streamed_x_dims,
    training_source,
    training_table,
    x_column,
)

__all__ = ["ScoreEstimator", "ScoreNetwork"]


class ScoreNetwork(nn.Module):
    """t̂(x) ``[E, batch, theta_dim]`` = μ_t + σ_t · MLP(s(x)), with s(x) the standardised x
    ``[batch, x_dim]`` or the output ``[batch, x_dim]`` of an embedding."""

    def __init__(self, x_dim, theta_dim, hidden, n_members, embedding=None, design_dim=0):
        super().__init__()
        self.n_members = n_members
        self.embedding = embedding
        self.x_standardize = Standardize(x_dim) if embedding is None else None
        self.target_scale = Standardize(theta_dim)  # used in reverse: μ + σ·output
        if design_dim:  # registered only with a design: design-free files keep their keys
            self.design_standardize = Standardize(design_dim)
        self.design_dim = design_dim
        self.mlp = EnsembleMLP(x_dim + design_dim, theta_dim, hidden, n_members)

    def forward(self, x: Tensor, design: Tensor | None = None) -> Tensor:
        summary = self.x_standardize(x) if self.embedding is None else self.embedding(x)
        if self.design_dim:
            if design is None:
                raise ValueError(f"this score network needs a design [batch, {self.design_dim}]")
            design = self.design_standardize(design.to(summary.dtype))
            summary = torch.cat([summary, design.expand(summary.shape[0], -1)], dim=1)
        return self.target_scale.mean + self.target_scale.std * self.mlp(summary)


def _loss(network: ScoreNetwork, batch: dict[str, Tensor], training: bool) -> Tensor:
    """SALLY's loss of every member ``[E]``."""
    predicted = network(batch["x"], batch.get("design"))
    return torch.stack([losses.sally(p, batch["joint_score"]) for p in predicted])


class ScoreEstimator(EmbeddingMixin, Estimator):
    """Learn the score t(x|θ_ref) from the joint score (SALLY).

    Args:
        method: ``"sally"``.
        hidden: as for `RatioEstimator`.
        n_ensemble: as for `RatioEstimator`.
        **training: as for `RatioEstimator`.
        embedding: a ``torch.nn.Module`` summarising x, trained jointly (needs
            ``n_ensemble=1``); required for set-valued x, where it is called as
            ``embedding(x [batch, max_n, features], mask [batch, max_n]) → [batch, k]``.
            Load a model trained with one by ``ScoreEstimator.load(path, embedding=...)``.
    """

    def __init__(
        self,
        method: str = "sally",
        *,
        hidden: int | Sequence[int] = (128, 128, 128),
        n_ensemble: int = 1,
        embedding: nn.Module | dict | None = None,
        **training: Any,
    ):
        if method.lower() != "sally":
            raise ValueError(f"unknown score method {method!r}; available: 'sally'")
        super().__init__(**training)
        self.method = "sally"
        self.hidden = mlp_widths(hidden)
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

    def _build(self, dims: Dims) -> ScoreNetwork:
        self._require_embedding(dims)
        return ScoreNetwork(
            dims.x_dim,
            dims.theta_dim,
            self.hidden,
            self.n_ensemble,
            self._embedding_module(dims.is_set),
            dims.design_dim,
        )

    @property
    def theta_ref(self) -> Tensor | None:
        """θ_ref ``[theta_dim]``, the point the score is learnt at."""
        if self.dims is None:
            return None
        return torch.tensor(self.dims.theta_ref, device=self.device)

    def fit(self, data: TrainingData, prior=None) -> ScoreEstimator:
        """Train on the rows drawn at θ_ref (the reference class of ``simfer.simulate``), or
        on data simulated at one θ.

        ``data``: a `SimulationData`, or a store (its path, or a
        `simfer.StoredSimulations`), streamed when it does not fit in ``max_memory``
        (`simfer.streaming`)."""
        data = training_source(data, self.training)
        if isinstance(data, StoredSimulations):
            return self._fit_streamed(data, prior)
        data = training_table(data)
        if not data.has_gold:
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
        x_dim = self._embedding_features(x) if self.embedding is not None else x.shape[1]
        self.dims = Dims(**x_dims, x_dim=x_dim, theta_ref=theta_ref.tolist(), n_train=len(local))
        if prior is not None:
            self.prior_description = describe_prior(prior)
        with seeded(self.training.seed):  # the initial weights follow the seed
            network = self._build(self.dims)
        if network.x_standardize is not None:
            network.x_standardize.fit(x)
        network.target_scale.fit(target)
        tensors = {"x": x, "joint_score": target}
        if self.dims.design_dim:
            tensors["design"] = local.design.to(target.dtype)
            network.design_standardize.fit(tensors["design"])
        self.network = network
        self.history = fit_network(network, _loss, tensors, self.training)
        return self

    def _fit_streamed(self, source: StoredSimulations, prior) -> ScoreEstimator:
        """`fit` on a store streamed a buffer at a time: one pass that gathers the moments of
        both candidate training sets (the reference-class rows, and all rows for a run at
        one θ), then `fit_network` on `StreamedRows` of the chosen one."""
        probe, _ = source.read(source.blocks()[:1])
        if not probe.has_gold:
            raise SimferError("SALLY mines gold: simulate with gold=True (and theta_ref=...)")
        del probe
        kinds = ("reference", "all")
        stats = {(k, c): Moments() for k in kinds for c in ("x", "target", "design", "theta")}
        first: dict[str, SimulationData] = {}
        for data, _ in source.buffers():
            data = data.valid_only()
            parts = {"all": (data, data.joint_score)}
            if data.from_reference is not None and bool(data.from_reference.any()):
                local = data.subset(data.from_reference)
                parts["reference"] = (local, local.joint_score_ref)
            for kind, (part, target) in parts.items():
                if len(part) == 0:
                    continue
                first.setdefault(kind, part)
                stats[kind, "theta"].add(part.theta)
                stats[kind, "target"].add(target)
                if not part.is_set and self.embedding is None:
                    stats[kind, "x"].add(part.x)
                if part.design is not None:
                    stats[kind, "design"].add(part.design)
        if "reference" in first:
            kind, target, theta_ref = (
                "reference",
                "joint_score_ref",
                first["reference"].theta_ref[0],
            )
        elif "all" in first and stats["all", "theta"].constant:
            kind, target, theta_ref = "all", "joint_score", first["all"].theta[0]
        else:
            raise SimferError(
                "SALLY learns the score at one point θ_ref: simulate with theta_ref=... (its "
                "reference rows are used) or at a single θ"
            )
        n = stats[kind, "theta"].count
        x_dims = streamed_x_dims(self, first[kind], stats[kind, "design"])
        embedded = self.embedding is not None
        if embedded:
            x_dim = self._embedding_features(x_column(first[kind], True))
        else:
            x_dim = int(stats[kind, "x"].mean.numel())
        self.dims = Dims(**x_dims, x_dim=x_dim, theta_ref=theta_ref.tolist(), n_train=n)
        if prior is not None:
            self.prior_description = describe_prior(prior)
        with seeded(self.training.seed):  # the initial weights follow the seed
            network = self._build(self.dims)
        if network.x_standardize is not None:
            stats[kind, "x"].fit(network.x_standardize)
        stats[kind, "target"].fit(network.target_scale)
        varying = self.dims.design_dim > 0
        if varying:
            stats[kind, "design"].fit(network.design_standardize)

        def rows(data: SimulationData, _: Tensor) -> dict[str, Tensor | RaggedSets]:
            data = data.valid_only()
            if kind == "reference":
                data = data.subset(data.from_reference)
            columns = {"x": x_column(data, embedded), "joint_score": getattr(data, target)}
            if varying:
                columns["design"] = data.design.to(data.theta.dtype)
            return columns

        self.network = network
        self.history = fit_network(network, _loss, StreamedRows(source, rows), self.training)
        return self

    def _members(self, x: Any, design: Any) -> Tensor:
        """t̂ of every member ``[E, batch, theta_dim]`` (x flattened, whole for an embedding,
        packed for sets; one x gets a batch axis; x and d paired row by row)."""
        network = self._require_fitted()
        parameter = next(network.parameters())
        x, _ = x_batch(x, self.dims, parameter)
        x = x if self.embedding is not None else x.flatten(1)
        design = self._design_rows(design, parameter)
        if design is not None:
            x, design = pair_rows({"x": x, "design": design})
        with torch.no_grad():
            return network(x, design)

    def score(self, *, x: Any, design: Any = None, return_std: bool = False):
        """t̂(x|θ_ref, d) ``[batch, theta_dim]`` (and the ensemble's standard deviation):
        x ``[batch, *x_shape]`` or one, and for a model trained with designs ``design``
        ``[batch, design_dim]`` or one."""
        members = self._members(x, design)
        mean = members.mean(0)
        if not return_std:
            return mean
        return mean, (members.std(0) if members.shape[0] > 1 else torch.zeros_like(mean))

    def fisher_information(self, *, x: Any, design: Any = None, n_events: int = 1) -> Tensor:
        """I(θ_ref; d) ≈ n_events · mean_x t̂(x, d) t̂(x, d)ᵀ ``[theta_dim, theta_dim]``, with x
        drawn at θ_ref (e.g. ``simulator.simulate(theta_ref.expand(n, -1), design=d)``)."""
        t = self.score(x=x, design=design)
        return n_events * (t.T @ t) / t.shape[0]

    def posterior(
        self,
        prior: Distribution | None,
        x_obs: Any,
        *,
        design: Any = None,
        fisher_information: Tensor | None = None,
        **options: Any,
    ) -> Posterior:
        """The local-model posterior (see the module docstring); ``fisher_information``
        ``[theta_dim, theta_dim]`` per event, estimated from the observed events if None."""
        self._require_fitted()
        prior = self._posterior_prior(prior)
        term = self.event_term(prior, x_obs, design=design, fisher_information=fisher_information)
        return Posterior.from_term(term, prior, design=design, device=self.device, **options)

    def event_term(
        self,
        prior: Distribution,
        x_obs: Any,
        *,
        design: Any = None,
        fisher_information: Tensor | None = None,
    ) -> EventTerm:
        """ℓ(x | θ, d) = t̂(x, d)·δ − ½ δᵀ I δ with δ = θ − θ_ref (the module docstring)."""
        network = self._require_fitted()
        x_obs, x_shape, as_x = observed_x(x_obs, self.dims, next(network.parameters()))
        theta_ref = self.theta_ref
        if fisher_information is None:
            x = torch.as_tensor(x_obs, device=self.device)  # packed sets are a tensor too
            x = x.reshape(-1, *x_shape) if x_shape else x
            t = self.score(x=as_x(x), design=design)
            if t.shape[0] <= 2 * t.shape[1]:
                raise SimferError(
                    f"estimating the Fisher information from {t.shape[0]} observed event(s) is "
                    f"not possible: pass fisher_information= (ScoreEstimator.fisher_information("
                    f"x=...) on simulations at θ_ref)"
                )
            fisher_information = torch.cov(t.T).reshape(t.shape[1], t.shape[1])
        info = torch.as_tensor(fisher_information, device=self.device)

        def log_likelihood(x: Tensor, theta: Tensor, design: Tensor | None) -> Tensor:
            delta = theta - theta_ref.to(theta.dtype)
            t = self.score(x=as_x(x), design=design)
            return (t * delta).sum(-1) - 0.5 * ((delta @ info.to(theta.dtype)) * delta).sum(-1)

        return EventTerm(log_likelihood, x_obs, x_shape, design_dim=self.design_dim, model=self)
