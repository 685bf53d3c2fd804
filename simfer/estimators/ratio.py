"""`RatioEstimator`: a network for log r̂(x|θ0,θ1) trained with one loss of `simfer.losses`.

The network g(x, θ0[, θ1]) outputs the log likelihood ratio directly (a logit).
With a fixed reference θ1 = θ_ref (every row of the data has the same θ_ref) it is
single-parameterized, g(x, θ0); otherwise θ1 is an input too.  The score of the
model, t̂(x|θ0) = ∇θ0 log r̂(x|θ0,θ1), is its autograd gradient, which the
score-augmented losses (RASCAL, CASCAL, ALICES) regress on the joint score.

The NRE family (``nre``, ``bnre``) learns log p(x|θ)/p(x) from (θ, x) pairs
without gold or a reference class; log r̂(x|θ0,θ1) is then g(x,θ0) − g(x,θ1).

An ensemble (``n_ensemble`` > 1) trains E members in one batched pass; their mean
is the estimate and their standard deviation an uncertainty.

An ``embedding`` summarises x before the network sees it, s = e(x), and is trained
jointly: g(e(x), θ0[, θ1]).  It is required for set-valued x (a set embedding called as
``embedding(x, mask)``, see `simfer.estimators.embedding`) and is computed once per
batch even when a loss evaluates g at several θ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import losses
from ..data import SimulationData
from ..errors import ShapeError, SimferError
from ..nn import EnsembleMLP, Standardize, seeded
from ..prior import describe_prior
from ..training import fit_network
from .base import Estimator
from .embedding import EmbeddingMixin, check_no_ensemble, x_batch

__all__ = ["RatioEstimator", "RatioNetwork"]

GOLD_METHODS = {"rolr", "rascal", "alice", "alices"}
SCORE_METHODS = {"rascal", "alices", "cascal"}
REFERENCE_METHODS = {"carl", "rolr", "rascal", "alice", "alices", "cascal"}
CONTRASTIVE_METHODS = {"nre", "bnre"}
METHODS = REFERENCE_METHODS | CONTRASTIVE_METHODS


def _member_leaf(theta: Tensor, n_members: int, requires_grad: bool) -> Tensor:
    """θ ``[batch, d]`` copied per member ``[E, batch, d]`` as a leaf, so autograd gives each
    member its own score."""
    return theta.expand(n_members, *theta.shape).detach().clone().requires_grad_(requires_grad)


class RatioNetwork(nn.Module):
    """g(s(x), θ0[, θ1]) → log r̂ ``[E, batch]``; θ standardised by stored buffers, and s(x)
    either x standardised the same way or the output ``[batch, x_dim]`` of an embedding."""

    def __init__(self, x_dim, theta_dim, double, hidden, n_members, embedding=None):
        super().__init__()
        self.n_members = n_members
        self.double = double
        self.embedding = embedding
        self.x_standardize = Standardize(x_dim) if embedding is None else None
        self.theta_standardize = Standardize(theta_dim)
        in_features = x_dim + theta_dim * (2 if double else 1)
        self.mlp = EnsembleMLP(in_features, 1, hidden, n_members)

    def summarize(self, x: Tensor) -> Tensor:
        """s(x) ``[batch, x_dim]``: x ``[batch, x_dim]`` standardised, or the embedding of x."""
        return self.x_standardize(x) if self.embedding is None else self.embedding(x)

    def forward(self, x: Tensor, theta0: Tensor, theta1: Tensor | None = None) -> Tensor:
        """x as `summarize` takes it; θ ``[batch, theta_dim]`` or per member ``[E, batch, d]``."""
        return self.head(self.summarize(x), theta0, theta1)

    def head(self, summary: Tensor, theta0: Tensor, theta1: Tensor | None = None) -> Tensor:
        """log r̂ ``[E, batch]`` from s(x) ``[batch, x_dim]`` (so that a loss evaluating
        several θ embeds x once)."""
        theta0 = theta0.expand(self.n_members, *theta0.shape[-2:])
        parts = [
            summary.to(theta0.dtype).expand(self.n_members, *summary.shape),
            self.theta_standardize(theta0),
        ]
        if self.double:
            parts.append(self.theta_standardize(theta1.expand(self.n_members, *theta1.shape[-2:])))
        return self.mlp(torch.cat(parts, dim=-1))[..., 0]


class RatioEstimator(EmbeddingMixin, Estimator):
    """Learn log r(x|θ0,θ1) from simulations.

    Args:
        method: ``carl``, ``rolr``, ``rascal``, ``alice``, ``alices``, ``cascal`` (gold
            mining, need the reference class of ``simfer.simulate(..., theta_ref=...)``),
            or ``nre``, ``bnre`` (contrastive, no reference class needed).
        hidden: hidden layer widths.
        n_ensemble: number of members trained together.
        alpha: weight of the score term (RASCAL, CASCAL, ALICES); None chooses
            `losses.default_score_weight` from the training data's joint scores.
        bnre_lambda: balancing weight of BNRE.
        bootstrap: give each ensemble member its own Poisson(1) bootstrap weights of the
            rows (bagging), so the members' spread reflects the finite simulation budget
            and not only their random initialisation.
        embedding: a ``torch.nn.Module`` summarising x, trained jointly (needs
            ``n_ensemble=1``): ``[batch, *x_shape]`` → ``[batch, k]``, or for set-valued x
            ``embedding(x [batch, max_n, features], mask [batch, max_n]) → [batch, k]``.
            Load a model trained with one by ``RatioEstimator.load(path, embedding=...)``.
        **training: settings of `simfer.training.TrainingConfig` (max_epochs, batch_size,
            learning_rate, validation_fraction, patience, device, checkpoint, …).
    """

    def __init__(
        self,
        method: str = "alices",
        *,
        hidden: Sequence[int] = (128, 128, 128),
        n_ensemble: int = 1,
        alpha: float | None = None,
        bnre_lambda: float = 100.0,
        bootstrap: bool = True,
        embedding: nn.Module | dict | None = None,
        **training: Any,
    ):
        method = method.lower()
        if method not in METHODS:
            raise ValueError(f"unknown ratio method {method!r}; choose one of {sorted(METHODS)}")
        if n_ensemble < 1:
            raise ValueError("n_ensemble must be at least 1")
        super().__init__(**training)
        self.method = method
        self.hidden = tuple(int(h) for h in hidden)
        self.n_ensemble = int(n_ensemble)
        self.alpha = alpha
        self.bnre_lambda = float(bnre_lambda)
        self.bootstrap = bool(bootstrap)
        self._init_embedding(embedding)
        check_no_ensemble(self.n_ensemble, self.embedding)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "hidden": list(self.hidden),
            "n_ensemble": self.n_ensemble,
            "alpha": self.alpha,
            "bnre_lambda": self.bnre_lambda,
            "bootstrap": self.bootstrap,
            "embedding": self._embedding_hyperparameter(),
        }

    @property
    def alpha_used(self) -> float | None:
        """The score-term weight α the fit used (the default is chosen from the data)."""
        return self.dims.get("alpha")

    def _build(self, dims: dict[str, Any]) -> RatioNetwork:
        self._require_embedding(dims)
        return RatioNetwork(
            dims["x_dim"],
            dims["theta_dim"],
            dims["double"],
            self.hidden,
            self.n_ensemble,
            self._embedding_module(dims),
        )

    # -- training ---------------------------------------------------------------------------
    def _training_rows(self, data: SimulationData) -> tuple[dict[str, Any], dict[str, Any]]:
        """The training columns and the dims describing x."""
        if not isinstance(data, SimulationData):
            raise TypeError(f"fit() takes the SimulationData of simfer.simulate, got {type(data)}")
        data = data.valid_only()
        if len(data) < 2:
            raise SimferError("fewer than two valid simulations to train on")
        if self.method in CONTRASTIVE_METHODS:
            if data.from_reference is not None:
                data = data.subset(~data.from_reference)
            x, x_dims = self._training_x(data)
            return {"x": x, "theta": data.theta}, x_dims
        if data.from_reference is None:
            raise SimferError(
                f"method '{self.method}' contrasts x drawn at θ with x drawn at θ_ref: simulate "
                f"with simfer.simulate(..., theta_ref=...) to get the reference class"
            )
        if self.method in GOLD_METHODS | SCORE_METHODS and not data.has_gold:
            raise SimferError(
                f"method '{self.method}' mines gold: simulate with gold=True (or use 'carl'/'nre')"
            )
        x, x_dims = self._training_x(data)
        rows = {
            "x": x,
            "theta": data.theta,
            "theta_ref": data.theta_ref,
            "from_reference": data.from_reference,
        }
        if data.joint_log_ratio is not None:
            rows["joint_log_ratio"] = data.joint_log_ratio
            rows["joint_score"] = data.joint_score
            rows["joint_score_ref"] = data.joint_score_ref
        return rows, x_dims

    def fit(self, data: SimulationData, prior=None) -> RatioEstimator:
        """Train on ``data`` (invalid rows are skipped); returns the estimator."""
        rows, x_dims = self._training_rows(data)
        double = "theta_ref" in rows and not bool((rows["theta_ref"] == rows["theta_ref"][0]).all())
        if self.embedding is not None:
            x_dim = self._embedding_features(rows["x"], x_dims)
        else:
            x_dim = rows["x"].shape[1]
        self.dims = {
            "x_dim": x_dim,
            "theta_dim": rows["theta"].shape[1],
            "double": double,
            "theta_ref": None if "theta_ref" not in rows else rows["theta_ref"][0].tolist(),
            **x_dims,
        }
        if prior is not None:
            self.prior_description = describe_prior(prior)
        with seeded(self.training.seed):  # the initial weights follow the seed
            network = self._build(self.dims)
        if network.x_standardize is not None:
            network.x_standardize.fit(rows["x"])
        network.theta_standardize.fit(rows["theta"])
        alpha = self.alpha
        if self.method in SCORE_METHODS and alpha is None:
            y = rows["from_reference"]
            start = math.log(2)  # a cross-entropy at r̂ = 1; ROLR's own value for RASCAL
            if self.method == "rascal":
                zeros = torch.zeros_like(rows["joint_log_ratio"])
                start = float(losses.rolr(zeros, y, rows["joint_log_ratio"]))
            alpha = losses.default_score_weight(
                rows["joint_score"], from_reference=y, ratio_loss_at_start=start
            )
        self.dims["alpha"] = alpha  # saved with the model
        if self.n_ensemble > 1 and self.bootstrap:
            generator = torch.Generator().manual_seed(self.training.seed + 1)
            rates = torch.ones(len(rows["x"]), self.n_ensemble)
            weights = torch.poisson(rates, generator=generator)
            rows["bootstrap_weight"] = weights.to(rows["theta"].dtype)
        self.network = network
        self.history = fit_network(network, self._loss_function(alpha), rows, self.training)
        return self

    def _loss_function(self, alpha: float | None):
        method, needs_score = self.method, self.method in SCORE_METHODS
        lam = self.bnre_lambda

        def loss_fn(network: RatioNetwork, batch: dict[str, Tensor], training: bool) -> Tensor:
            n_members = network.n_members
            bootstrap = batch.get("bootstrap_weight") if training else None

            def weight(e: int) -> Tensor | None:  # member e's bootstrap weights, when training
                return None if bootstrap is None else bootstrap[:, e]

            summary = network.summarize(batch["x"])
            if method in CONTRASTIVE_METHODS:
                joint = network.head(summary, batch["theta"])
                marginal = network.head(summary, torch.roll(batch["theta"], 1, dims=0))
                if method == "nre":
                    return torch.stack(
                        [
                            losses.nre_a(joint[e], marginal[e], weight=weight(e))
                            for e in range(n_members)
                        ]
                    )
                return torch.stack(
                    [
                        losses.bnre(joint[e], marginal[e], lam, weight=weight(e))
                        for e in range(n_members)
                    ]
                )
            theta_ref, y = batch.get("theta_ref"), batch["from_reference"]
            score = score_ref = None
            with torch.enable_grad():
                theta0 = _member_leaf(batch["theta"], n_members, needs_score)
                log_r = network.head(summary, theta0, theta_ref)
                if needs_score:
                    (score,) = torch.autograd.grad(log_r.sum(), theta0, create_graph=training)
                    # rows drawn at θ1 teach the score at θ1: t̂(x|θ1) = ∇θ0 log r̂ at θ0 = θ1
                    theta1 = _member_leaf(theta_ref, n_members, True)
                    log_r_at_ref = network.head(summary, theta1, theta_ref)
                    (score_ref,) = torch.autograd.grad(
                        log_r_at_ref.sum(), theta1, create_graph=training
                    )
            per_member = []
            for e in range(n_members):
                gold_score = {}
                if needs_score:
                    gold_score = dict(
                        score_ref=score_ref[e], joint_score_ref=batch["joint_score_ref"]
                    )
                gold_score["weight"] = weight(e)
                if method == "carl":
                    loss = losses.carl(log_r[e], y, weight=weight(e))
                elif method == "rolr":
                    loss = losses.rolr(log_r[e], y, batch["joint_log_ratio"], weight=weight(e))
                elif method == "alice":
                    loss = losses.alice(log_r[e], batch["joint_log_ratio"], weight=weight(e))
                elif method == "rascal":
                    loss = losses.rascal(
                        log_r[e],
                        y,
                        batch["joint_log_ratio"],
                        score[e],
                        batch["joint_score"],
                        alpha,
                        **gold_score,
                    )
                elif method == "cascal":
                    loss = losses.cascal(
                        log_r[e], y, score[e], batch["joint_score"], alpha, **gold_score
                    )
                else:  # alices
                    loss = losses.alices(
                        log_r[e],
                        y,
                        batch["joint_log_ratio"],
                        score[e],
                        batch["joint_score"],
                        alpha,
                        **gold_score,
                    )
                per_member.append(loss.to(log_r.dtype))
            return torch.stack(per_member)

        return loss_fn

    # -- evaluation --------------------------------------------------------------------------
    def _inputs(self, x, theta0, theta1):
        """The network, s(x) ``[batch, x_dim]`` and θ0, θ1 paired row by row (one row of
        either side broadcasts over the other's); x is embedded once, before pairing."""
        network = self._require_fitted()
        parameter = next(network.parameters())
        device, dtype = parameter.device, parameter.dtype
        if self.dims.get("x_kind") != "set" and list(self.dims["x_shape"]) == [1]:
            x = torch.as_tensor(x, dtype=dtype, device=device)
            x = x[:, None] if x.ndim == 1 and x.shape[0] != 1 else x
        x, _ = x_batch(x, self.dims, parameter)
        with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
            summary = self._summary(
                network.summarize, x if self.embedding is not None else x.flatten(1)
            )
        theta0 = torch.as_tensor(theta0, dtype=dtype, device=device)
        if theta0.ndim == 1:
            theta0 = theta0[None]
        if theta0.shape[-1] != self.dims["theta_dim"]:
            raise ShapeError(
                f"theta0 must be [batch, {self.dims['theta_dim']}], got {list(theta0.shape)}"
            )
        batch = max(summary.shape[0], theta0.shape[0])
        if {summary.shape[0], theta0.shape[0]} - {1, batch}:
            raise ShapeError(
                f"x has {summary.shape[0]} rows and theta0 {theta0.shape[0]}: cannot pair them"
            )
        summary, theta0 = summary.expand(batch, -1), theta0.expand(batch, -1)
        if theta1 is not None:
            theta1 = torch.as_tensor(theta1, dtype=dtype, device=device)
            theta1 = (theta1[None] if theta1.ndim == 1 else theta1).expand(batch, -1)
        return network, summary, theta0, theta1

    def _log_ratio_members(self, network, summary, theta0, theta1) -> Tensor:
        """log r̂ of every member ``[E, batch]`` from s(x) (see `_inputs`)."""
        head = network.head
        if self.method in CONTRASTIVE_METHODS:
            value = head(summary, theta0)
            return value if theta1 is None else value - head(summary, theta1)
        if self.dims["double"]:
            if theta1 is None:
                raise ValueError("this estimator is double-parameterized: pass theta1")
            return head(summary, theta0, theta1)
        if theta1 is not None and not torch.allclose(
            theta1,
            torch.as_tensor(self.dims["theta_ref"], dtype=theta1.dtype, device=theta1.device),
        ):
            # a single-parameterized estimator knows r(x|θ, θ_ref): chain through the reference
            return head(summary, theta0) - head(summary, theta1)
        return head(summary, theta0)

    def log_ratio_ensemble(self, x: Tensor, theta0: Tensor, theta1: Tensor | None = None) -> Tensor:
        """log r̂(x|θ0,θ1) of every member, ``[E, batch]``; differentiable when θ0 (or x)
        requires grad."""
        network, x, theta0, theta1 = self._inputs(x, theta0, theta1)
        with torch.set_grad_enabled(
            torch.is_grad_enabled() and (theta0.requires_grad or x.requires_grad)
        ):
            return self._log_ratio_members(network, x, theta0, theta1)

    def log_ratio(
        self, x: Tensor, theta0: Tensor, theta1: Tensor | None = None, *, return_std: bool = False
    ):
        """log r̂(x|θ0,θ1) ``[batch]`` (θ1 defaults to the training reference; for NRE the
        ratio is then to the marginal p(x)).  One x broadcasts over many θ and vice versa.
        With ``return_std`` also the ensemble's standard deviation."""
        members = self.log_ratio_ensemble(x, theta0, theta1)
        mean = members.mean(0)
        if not return_std:
            return mean
        std = members.std(0) if members.shape[0] > 1 else torch.zeros_like(mean)
        return mean, std

    def score(self, x: Tensor, theta0: Tensor, theta1: Tensor | None = None) -> Tensor:
        """t̂(x|θ0) = ∇θ0 log r̂(x|θ0,θ1) of the ensemble mean, ``[batch, theta_dim]``."""
        network, x, theta0, theta1 = self._inputs(x, theta0, theta1)
        with torch.enable_grad():
            theta0 = theta0.detach().clone().requires_grad_(True)
            log_r = self._log_ratio_members(network, x, theta0, theta1).mean(0)
            (score,) = torch.autograd.grad(log_r.sum(), theta0)
        return score
