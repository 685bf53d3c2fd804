r"""Location finding: where are the hidden sources?  The benchmark of sequential design.

Model (Foster, Ivanova, Malik & Rainforth, "Deep Adaptive Design", ICML 2021,
arXiv:2103.02438, section 6.1; after Sheng & Hu 2005)
-----------------------------------------------------------------------------
K sources sit at unknown positions θ_k ∈ R^p (defaults K = 2, p = 2, so θ ∈ R^4, laid
out as (θ_1, θ_2, …), p coordinates each), each a priori θ_k ~ N(0, I_p).  A sensor
placed at the design ξ ∈ R^p measures the total intensity of the sources, which falls
off as the inverse square of the distance, on a log scale with a background b:

    μ(θ, ξ) = log( b + Σ_k α_k / (m + ‖θ_k − ξ‖²) ),
    y = μ(θ, ξ) + ε,   ε ~ N(0, σ²),

with b = 0.1, m = 10⁻⁴ (which caps a source's intensity at α_k/m = 10⁴ when the sensor
sits on it), σ = 0.5 and α_k = 1.  The outcome x = y is ``[batch, 1]``; the design is ξ
``[batch, p]``.  Within a distance ~0.3 of a source the signal rises far above the
background, so a well-placed sensor says much more than a random one: over T = 30
measurements, DAD reports a total EIG of ≈ 8.3 nats for random designs ξ_t ~ N(0, I)
and ≈ 11.2 for its trained policy.

Checked against DAD's code (github.com/ae-foster/dad, ``location_finding.py``,
``HiddenObjects.forward_map``; ``neural/modules.py``; ``location_finding_eval.py``):

* the mean is exactly ``log(base_signal + Σ_k (max_signal + ‖ξ − θ_k‖²)^−1)``: the
  paper's α_k are all 1 in the code (no α), and the paper's m is the code's
  ``max_signal`` = 10⁻⁴ (a floor on the squared distance, not a maximum signal);
  ``base_signal`` = b = 0.1;
* the noise is ``Normal(mean, noise_scale)`` with ``noise_scale`` = 0.5 a standard
  deviation (σ = 0.5, not a variance); the prior is K independent N(0, I_p);
* the random baseline (``RandomDesignBaseline``) draws each ξ_t ~ N(0, I_p), independently
  of the outcomes;
* the evaluation (``location_finding_eval.py``) computes sPCE and sNMC with 5·10⁵
  contrastive θ drawn fresh for each rollout, over 2048 rollouts
  (`simfer.design.sequential_bounds`).

This model takes the α_k as an option (``strengths``, default all 1) and is otherwise
DAD's.

Likelihood
----------
log p(y|θ,ξ) = −(y − μ(θ,ξ))² / (2σ²) − ½ log(2π σ²).  `pairwise_log_likelihood`
evaluates it for every pair of N outcomes and M parameter points per design (the
N × M matrix of `simfer.design`'s nested estimators) from the M means alone, so it never
copies x M times.  `mean_signal` broadcasts over any leading dimensions, for particle
methods that need μ at many (θ, ξ) at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Independent, Normal

import simfer
from simfer.errors import ShapeError

__all__ = ["LocationFinding"]

_LOG_2PI = math.log(2.0 * math.pi)


class LocationFinding(simfer.TractableSimulator):
    """y = log(b + Σ_k α_k / (m + ‖θ_k − ξ‖²)) + N(0, σ²); see the module docstring.

    Args:
        n_sources: K, the number of hidden sources.
        space_dim: p, the dimension of the space they sit in (and of the design ξ).
        base_signal: b, the background.
        max_signal: m, the floor of the squared distance (DAD's name).
        noise_std: σ, the standard deviation of the measurement noise.
        strengths: α_k, one per source (default all 1, as in DAD's code).
        prior_std: the standard deviation of the suggested prior θ_k ~ N(0, prior_std² I).
        default_design: the sensor position used when none is given (default the origin).
    """

    def __init__(
        self,
        n_sources: int = 2,
        space_dim: int = 2,
        *,
        base_signal: float = 0.1,
        max_signal: float = 1e-4,
        noise_std: float = 0.5,
        strengths: Sequence[float] | None = None,
        prior_std: float = 1.0,
        default_design: Any = None,
    ):
        for name, value in (("n_sources", n_sources), ("space_dim", space_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name, value in (
            ("base_signal", base_signal),
            ("max_signal", max_signal),
            ("noise_std", noise_std),
            ("prior_std", prior_std),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        strengths = [1.0] * n_sources if strengths is None else [float(a) for a in strengths]
        if len(strengths) != n_sources or not all(a > 0 for a in strengths):
            raise ValueError(
                f"strengths must be {n_sources} positive numbers (one per source), got {strengths}"
            )
        super().__init__(
            n_sources * space_dim,
            (1,),
            design_dim=space_dim,
            default_design=[0.0] * space_dim if default_design is None else default_design,
            name="location_finding",
        )
        self.n_sources, self.space_dim = n_sources, space_dim
        self.base_signal, self.max_signal = float(base_signal), float(max_signal)
        self.noise_std, self.prior_std = float(noise_std), float(prior_std)
        self.strengths = tuple(strengths)

    # -- the model ------------------------------------------------------------------------
    def mean_signal(self, theta: Tensor, design: Tensor) -> Tensor:
        """μ(θ, ξ) = log(b + Σ_k α_k / (m + ‖θ_k − ξ‖²)) ``[...]`` for θ ``[..., theta_dim]``
        and ξ ``[..., space_dim]`` whose leading dimensions broadcast (no checks: the raw
        model, for code that has validated its inputs)."""
        sources = theta.unflatten(-1, (self.n_sources, self.space_dim))  # [..., K, p]
        distance2 = (sources - design.unsqueeze(-2)).square().sum(-1)  # [..., K]
        inverse = (distance2 + self.max_signal).reciprocal()
        if any(a != 1.0 for a in self.strengths):
            inverse = inverse * torch.tensor(self.strengths, dtype=theta.dtype, device=theta.device)
        return (inverse.sum(-1) + self.base_signal).log()

    def prior(self, device: str | torch.device | None = None) -> Independent:
        """The prior θ_k ~ N(0, prior_std² I_p), independent, as one ``[theta_dim]`` event."""
        loc = torch.zeros(self.theta_dim, device=device)
        return Independent(Normal(loc, self.prior_std), 1)

    # -- the Simulator hooks --------------------------------------------------------------
    def sample(self, theta: Tensor, design: Tensor | None, generator: torch.Generator) -> Tensor:
        """y = μ(θ, ξ) + σ ε ``[batch, 1]`` at θ ``[batch, theta_dim]``."""
        design = self.check_design(design, theta.shape[0], theta.device, theta.dtype)
        mean = self.mean_signal(theta, design)
        noise = torch.randn(mean.shape, generator=generator, device=theta.device, dtype=theta.dtype)
        return (mean + self.noise_std * noise)[:, None]

    def log_likelihood(self, x: Any, theta: Any, design: Any = None) -> Tensor:
        """log p(y|θ, ξ) ``[batch]`` for y ``[batch, 1]``, θ ``[batch, theta_dim]`` and
        designs ``[batch, space_dim]`` (or one ``[space_dim]`` design)."""
        theta = self.check_theta(torch.as_tensor(theta))
        x = torch.as_tensor(x, device=theta.device)
        dtype = torch.promote_types(x.dtype, theta.dtype)
        x, theta = x.to(dtype), theta.to(dtype)
        if x.shape != (theta.shape[0], 1):
            raise ShapeError(
                f"x must have shape [batch, 1] = [{theta.shape[0]}, 1] (one measurement per "
                f"row), got {list(x.shape)}"
            )
        design = self.check_design(design, theta.shape[0], theta.device, dtype)
        return self.log_density(x[:, 0], self.mean_signal(theta, design))

    def pairwise_log_likelihood(self, x: Tensor, theta: Tensor, design: Tensor) -> Tensor:
        """log p(y_jn|θ_jm, ξ_j) ``[k, N, M]`` for every pair (n, m) at each design j.

        Args:
            x: ``[k, N, 1]``.
            theta: ``[k, M, theta_dim]`` (an expanded view is fine).
            design: ``[k, space_dim]``.
        """
        mean = self.mean_signal(theta, design[:, None, :])  # [k, M]
        return self.log_density(x.to(mean.dtype), mean[:, None, :])

    def log_density(self, y: Tensor, mean: Tensor) -> Tensor:
        """log N(y; mean, σ²), broadcasting ``y`` and ``mean``."""
        return -0.5 * ((y - mean) / self.noise_std).square() - self._log_norm

    @property
    def _log_norm(self) -> float:
        return 0.5 * _LOG_2PI + math.log(self.noise_std)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "n_sources": self.n_sources,
            "space_dim": self.space_dim,
            "base_signal": self.base_signal,
            "max_signal": self.max_signal,
            "noise_std": self.noise_std,
            "strengths": list(self.strengths),
            "prior_std": self.prior_std,
        }
