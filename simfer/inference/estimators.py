r"""`posterior_for`: the `Posterior` of each trained estimator type (``est.posterior``).

======================  ===========================================  ==================
estimator               per-event term ℓ(x|θ) (see `Posterior`)      default sampler
======================  ===========================================  ==================
`PosteriorEstimator`    log q(θ|x) − log p(θ)                        direct (1 event),
                                                                     slice (n events)
`LikelihoodEstimator`   log q(x|θ)  (with log p(valid|θ))            slice
`RatioEstimator`        log r̂(x|θ, θ_ref) (ensemble mean)            slice
`ScoreEstimator`        t̂(x)·δ − ½ δᵀ I δ,  δ = θ − θ_ref            slice
======================  ===========================================  ==================

SALLY learns only the score at θ_ref, so its posterior is the local (asymptotically
normal) model of the log-likelihood around θ_ref, log p(x|θ) ≈ log p(x|θ_ref) + t(x)·δ −
½ δᵀ I(θ_ref) δ, whose sum over events is exact to second order in δ: trust it only
where the posterior is concentrated near θ_ref.  I(θ_ref) is the per-event Fisher
information; by default the covariance of t̂ over the observed events estimates it
(Var t(x|θ_ref) = I(θ_ref) + O(δ)), or pass ``fisher_information``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from ..errors import SimferError
from ..estimators.embedding import x_batch
from ..nn.sets import unpack_sets
from .posterior import Posterior, distribution_device

__all__ = ["posterior_for"]


def posterior_for(estimator: Any, prior: Distribution | None, x_obs: Any, **options: Any):
    """The `Posterior` of a trained estimator given x_obs (one or ``[n, *x_shape]`` iid)."""
    from ..estimators import LikelihoodEstimator, PosteriorEstimator, RatioEstimator, ScoreEstimator

    network = estimator._require_fitted()
    device = estimator.device
    x_shape = tuple(estimator.dims["x_shape"])
    as_x = _as_estimator_x(estimator)
    if estimator.dims.get("x_kind") == "set":  # pad the observed sets once, then as arrays
        x_obs, _ = x_batch(x_obs, estimator.dims, next(network.parameters()))
        x_shape = tuple(x_obs.shape[1:])
    if isinstance(estimator, PosteriorEstimator):
        prior = estimator._prior(prior, device)
        if prior is None:
            raise SimferError("pass the prior: this PosteriorEstimator was fitted without one")
        prior_device = distribution_device(prior)
        return Posterior(
            prior,
            x_obs,
            lambda x, theta: (
                estimator.log_prob(theta, as_x(x))
                - prior.log_prob(theta.to(prior_device)).to(theta.device)
            ),
            x_shape=x_shape,
            model=estimator,
            direct=lambda n, x: estimator.sample(n, as_x(x), prior=prior),
            normalized_log_prob=lambda theta, x: estimator.log_prob(
                theta, as_x(x[:1]), prior=prior
            ),
            default_method="slice",
            device=device,
            **options,
        )
    if prior is None:
        raise SimferError(f"{type(estimator).__name__}.posterior needs the prior")
    if isinstance(estimator, LikelihoodEstimator):

        def term(x: Tensor, theta: Tensor) -> Tensor:
            return estimator.log_prob(as_x(x), theta)

    elif isinstance(estimator, RatioEstimator):
        theta_ref = estimator.dims.get("theta_ref")
        theta1 = None
        if estimator.dims.get("double"):
            theta1 = torch.as_tensor(theta_ref if theta_ref is not None else prior.mean)

        def term(x: Tensor, theta: Tensor) -> Tensor:
            return estimator.log_ratio_ensemble(as_x(x), theta, theta1).mean(0)

    elif isinstance(estimator, ScoreEstimator):
        fisher_information = options.pop("fisher_information", None)
        term = _local_model(estimator, x_obs, x_shape, as_x, fisher_information)
    else:
        raise TypeError(f"no posterior for a {type(estimator).__name__}")
    return Posterior(prior, x_obs, term, x_shape=x_shape, model=estimator, device=device, **options)


def _as_estimator_x(estimator: Any):
    """What the estimator takes for the Posterior's rows of x: the rows themselves, or for
    set-valued x (held packed, ``[n, max_n, features + 1]``) padded ``(x, mask)`` pairs."""
    if estimator.dims.get("x_kind") == "set":
        return unpack_sets
    return lambda x: x


def _local_model(estimator: Any, x_obs: Any, x_shape, as_x, fisher_information: Tensor | None):
    """ℓ(x|θ) = t̂(x)·δ − ½ δᵀ I δ with δ = θ − θ_ref (see the module docstring)."""
    theta_ref = torch.as_tensor(estimator.dims["theta_ref"], device=estimator.device)
    if fisher_information is None:
        x = torch.as_tensor(x_obs, device=estimator.device)  # packed sets are a tensor too
        t = estimator.score(as_x(x.reshape(-1, *x_shape)))
        if t.shape[0] <= 2 * t.shape[1]:
            raise SimferError(
                f"estimating the Fisher information from {t.shape[0]} observed event(s) is not "
                f"possible: pass fisher_information= (ScoreEstimator.fisher_information(x) on "
                f"simulations at θ_ref)"
            )
        fisher_information = torch.cov(t.T).reshape(t.shape[1], t.shape[1])
    info = torch.as_tensor(fisher_information, device=estimator.device)

    def term(x: Tensor, theta: Tensor) -> Tensor:
        delta = theta - theta_ref.to(theta.dtype)
        t = estimator.score(as_x(x))
        return (t * delta).sum(-1) - 0.5 * ((delta @ info.to(theta.dtype)) * delta).sum(-1)

    return term
