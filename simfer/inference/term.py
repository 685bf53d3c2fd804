r"""The seam between a trained surrogate and its posterior: the per-event term ℓ(x | θ, d).

For n iid observations x_i, each made at its own design d_i (one beam energy per run, one
sensor position per measurement), the posterior is

    log p(θ | x_1…n, d_1…n) = log p(θ) + Σ_i ℓ(x_i | θ, d_i) + const,

where ℓ equals log p(x | θ, d) up to a term that does not depend on θ.  Every estimator
says what its ℓ is, and nothing else about itself:

==========================  ============================================================
estimator                   ℓ(x | θ, d)
==========================  ============================================================
NLE, SCANDAL                log q(x | θ, d)   (+ log p(valid | θ, d) when failures seen)
CARL, ALICES, … (θ_ref)     log r̂(x | θ, θ_ref, d)        (constant: log p(x | θ_ref, d))
NRE, BNRE                   log r̂(x | θ, d) = log p(x|θ,d)/p(x|d)   (constant: log p(x|d))
SALLY                       t̂(x, d)·δ − ½ δᵀ I δ,  δ = θ − θ_ref   (local model)
HistogramLikelihood         log P̂_θ(b) − log P̂_θref(b), b the bin of t̂(x)·δ/|δ| (SALLINO)
NPE                         log q(θ | x, d) − log p(θ)     (p(θ|x,d)/p(θ) = p(x|θ,d)/p(x|d))
==========================  ============================================================

An `EventTerm` carries ℓ with the observations as ℓ takes them, and, for NPE, a direct
sampler of the single-observation posterior and its normalised density.  Anything that
has a method ``event_term(prior, x_obs, *, design=None) -> EventTerm`` (the
`SupportsPosterior` protocol) gets posteriors, MCMC, limits and calibration checks from
`Posterior.from_term`; `simfer.Estimator.posterior` does exactly that, so an estimator
written outside simfer needs no change to simfer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch import Tensor
from torch.distributions import Distribution

__all__ = ["EventLogLikelihood", "EventTerm", "SupportsPosterior"]

EventLogLikelihood = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]
"""ℓ(x ``[b, *x_shape]``, θ ``[b, theta_dim]``, d ``[b, design_dim]`` or None) → ``[b]``."""


@dataclass(frozen=True)
class EventTerm:
    """What a trained surrogate contributes to a posterior.

    Attributes:
        log_likelihood: ℓ(x, θ, d) → ``[b]`` (see the module docstring); differentiable
            in θ for NUTS/HMC and MAP.  d is None when the model takes no design.
        x_obs: the observations as ``log_likelihood`` takes them, ``[n, *x_shape]``
            (set-valued x already padded and packed).
        x_shape: the shape of one row of ``x_obs``.
        design_dim: the number of design variables ℓ conditions on (0: none).
        direct: for NPE, ``(n, x [m, *x_shape], d [m, k] or None) → θ [m, n, theta_dim]``,
            draws from the normalised single-observation posterior.
        normalized_log_prob: for NPE, ``(θ [b, theta_dim], x [1, *x_shape], d) → [b]``.
        default_method: the sampler a `Posterior` uses unless told otherwise.
        model: the object behind ℓ (moved along by ``Posterior.to``).
    """

    log_likelihood: EventLogLikelihood
    x_obs: Tensor
    x_shape: tuple[int, ...]
    design_dim: int = 0
    direct: Callable[[int, Tensor, Tensor | None], Tensor] | None = None
    normalized_log_prob: Callable[[Tensor, Tensor, Tensor | None], Tensor] | None = None
    default_method: str = "slice"
    model: Any = None


@runtime_checkable
class SupportsPosterior(Protocol):
    """A trained surrogate that can say what it contributes to a posterior."""

    def event_term(
        self, prior: Distribution, x_obs: Any, *, design: Any = None
    ) -> EventTerm: ...  # pragma: no cover - a protocol
