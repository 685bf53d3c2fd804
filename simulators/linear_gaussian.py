"""When to sample a damped oscillation: a linear-Gaussian experiment-design problem.

Model
-----
A damped oscillator rings with unknown quadratures θ = (A, B) (and, for
``theta_dim > 2``, those of its higher harmonics).  It is read out ``n_obs`` times,
at t_k = t₀ + k·Δ (k = 1 … n_obs), with Gaussian read-out noise:

    x_k = Σ_j X_kj(d) θ_j + ε_k,      ε_k ~ N(0, σ_ε²) iid,
    X_k,2h−1(d) = e^{−t_k/τ} cos(h ω t_k),   X_k,2h(d) = e^{−t_k/τ} sin(h ω t_k),

so x = X(d) θ + ε with a smooth n_obs × theta_dim design matrix X(d).  The design is
the sampling interval d = Δ (``design_dim = 1``, t₀ = 0), or d = (Δ, t₀)
(``design_dim = 2``).  The suggested prior is θ ~ N(0, σ_θ² I) (`prior`).

Why the design matters.  With Δ → 0 every read-out sees the same phase, cos ωt ≈ 1
and sin ωt ≈ 0: only A is measured and B stays at its prior.  With Δ large the
signal has decayed (and at Δ = π/ω every sample sits on sin ωt_k = 0 again, aliasing).
The best interval resolves both quadratures before the decay: with the defaults
(n_obs = 4, ω = π, τ = 4, σ_θ = 1, σ_ε = 0.5) the expected information gain over
Δ ∈ [0, 1] is 1.42 nats at Δ = 0 (B unresolved), dips by 0.001 nats until Δ = 0.003
(the decay acts before the phases spread), rises to its one maximum, 1.958 nats at
Δ ≈ 0.2008 (on a 101-point grid: Δ = 0.20, ≥ 0.0011 nats above its neighbours), and falls
to 0.92 nats at Δ = 1.

Expected information gain
-------------------------
For a linear-Gaussian model the mutual information between θ and x is known in
closed form (Lindley 1956; Chaloner & Verdinelli 1995, Stat. Sci. 10, 273):

    EIG(d) = ½ log det(I + Σ_θ X(d)ᵀ Σ_ε⁻¹ X(d)),   Σ_ε = σ_ε² I,

the log ratio of prior to posterior volume; `analytic_eig` computes it, in float64,
through a Cholesky factor of the symmetric form I + Lᵀ XᵀX L / σ_ε² (Σ_θ = L Lᵀ).

Likelihood
----------
log p(x|θ, d) = −‖x − X(d)θ‖² / (2σ_ε²) − (n_obs/2) log(2π σ_ε²).
`pairwise_log_likelihood` evaluates it for every pair of N observations and M
parameter points per design at once: expanding ‖x − μ‖² = ‖x‖² − 2 x·μ + ‖μ‖², the
log-likelihood is the inner product of [x, ‖x‖², 1] with [μ/σ_ε², −1/(2σ_ε²),
−‖μ‖²/(2σ_ε²) − log Z], so the whole matrix is one batched matrix product;
`simfer.design` uses it to fill its [designs, N, M] likelihood matrices without
materialising N·M copies of x.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Independent, Normal

import simfer
from simfer.errors import ShapeError

__all__ = ["LinearGaussianDesign"]

_LOG_2PI = math.log(2.0 * math.pi)


class LinearGaussianDesign(simfer.TractableSimulator):
    """x = X(d) θ + ε for a damped oscillation sampled at interval d; see the module docstring.

    Args:
        theta_dim: number of quadratures p (cos and sin of the first ⌈p/2⌉ harmonics).
        n_obs: read-outs per experiment (x is ``[batch, n_obs]``).
        omega: angular frequency ω of the fundamental.
        tau: decay time τ of the envelope e^{−t/τ}.
        noise_std: read-out noise σ_ε.
        prior_std: σ_θ of the suggested prior N(0, σ_θ² I) (`prior`, `prior_cov`).
        design_dim: 1 (d = the sampling interval Δ) or 2 (d = (Δ, t₀)).
        default_design: the design used when none is given (default Δ = 0.2, t₀ = 0).
    """

    def __init__(
        self,
        theta_dim: int = 2,
        n_obs: int = 4,
        *,
        omega: float = math.pi,
        tau: float = 4.0,
        noise_std: float = 0.5,
        prior_std: float = 1.0,
        design_dim: int = 1,
        default_design: Any = None,
    ):
        if not isinstance(n_obs, int) or n_obs < 1:
            raise ValueError(f"n_obs must be a positive int, got {n_obs!r}")
        if design_dim not in (1, 2):
            raise ValueError(
                f"design_dim must be 1 (the interval Δ) or 2 (Δ and the start t₀), "
                f"got {design_dim!r}"
            )
        for name, value in (("tau", tau), ("noise_std", noise_std), ("prior_std", prior_std)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if default_design is None:
            default_design = [0.2, 0.0][:design_dim]
        super().__init__(
            theta_dim,
            (n_obs,),
            design_dim=design_dim,
            default_design=default_design,
            name="linear_gaussian_design",
        )
        self.n_obs = n_obs
        self.omega = float(omega)
        self.tau = float(tau)
        self.noise_std = float(noise_std)
        self.prior_std = float(prior_std)

    # -- the model ------------------------------------------------------------------------
    def design_matrix(self, design: Any) -> Tensor:
        """X(d) ``[batch, n_obs, theta_dim]`` for designs ``[batch, design_dim]``
        (one ``[design_dim]`` design gives ``[1, n_obs, theta_dim]``)."""
        design = torch.as_tensor(design)
        if not design.is_floating_point():
            design = design.to(torch.get_default_dtype())
        design = self.check_design(design[None] if design.ndim == 1 else design, _rows(design))
        k = torch.arange(1, self.n_obs + 1, device=design.device, dtype=design.dtype)
        t = design[:, :1] * k  # [batch, n_obs]
        if self.design_dim == 2:
            t = t + design[:, 1:2]
        column = torch.arange(self.theta_dim, device=design.device)
        harmonic = (column // 2 + 1).to(design.dtype)  # 1 1 2 2 3 …
        phase = self.omega * t[..., None] * harmonic  # [batch, n_obs, p]
        wave = torch.where(column % 2 == 0, torch.cos(phase), torch.sin(phase))
        return torch.exp(-t / self.tau)[..., None] * wave

    def prior(self, device: str | torch.device | None = None) -> Independent:
        """The suggested prior θ ~ N(0, σ_θ² I), ``event_shape == (theta_dim,)``."""
        loc = torch.zeros(self.theta_dim, device=device)
        return Independent(Normal(loc, self.prior_std), 1)

    @property
    def prior_cov(self) -> Tensor:
        """Σ_θ = σ_θ² I ``[theta_dim, theta_dim]`` (float64) of `prior`."""
        return self.prior_std**2 * torch.eye(self.theta_dim, dtype=torch.float64)

    def analytic_eig(self, designs: Any, prior_cov: Any = None) -> Tensor:
        """EIG(d) = ½ log det(I + Σ_θ X(d)ᵀ X(d) / σ_ε²) in nats, ``[k]`` float64, for
        designs ``[k, design_dim]`` (``[k]`` when design_dim is 1) and a Gaussian prior of
        covariance ``prior_cov`` ``[theta_dim, theta_dim]`` (default σ_θ² I)."""
        designs = torch.as_tensor(designs, dtype=torch.float64)
        if designs.ndim == 1 and self.design_dim == 1:
            designs = designs[:, None]
        cov = self.prior_cov if prior_cov is None else torch.as_tensor(prior_cov)
        cov = cov.to(device=designs.device, dtype=torch.float64)
        if cov.shape != (self.theta_dim, self.theta_dim):
            raise ShapeError(
                f"prior_cov must be [theta_dim, theta_dim] = [{self.theta_dim}, "
                f"{self.theta_dim}], got {list(cov.shape)}"
            )
        chol = torch.linalg.cholesky(cov)
        xl = self.design_matrix(designs) @ chol  # X L, [k, n_obs, p]
        eye = torch.eye(self.theta_dim, dtype=torch.float64, device=designs.device)
        precision_gain = eye + xl.mT @ xl / self.noise_std**2  # I + Lᵀ XᵀX L / σ_ε²
        return torch.linalg.cholesky(precision_gain).diagonal(dim1=-2, dim2=-1).log().sum(-1)

    # -- the Simulator hooks --------------------------------------------------------------
    def sample(self, theta: Tensor, design: Tensor | None, generator: torch.Generator) -> Tensor:
        """x = X(d) θ + σ_ε ε ``[batch, n_obs]`` at θ ``[batch, theta_dim]``."""
        mean = self._mean(theta, design)
        noise = torch.randn(mean.shape, generator=generator, device=theta.device, dtype=theta.dtype)
        return mean + self.noise_std * noise

    def log_likelihood(self, x: Any, theta: Any, design: Any = None) -> Tensor:
        """log p(x|θ, d) ``[batch]`` for x ``[batch, n_obs]``, θ ``[batch, theta_dim]`` and
        designs ``[batch, design_dim]`` (or one ``[design_dim]`` design)."""
        theta = self.check_theta(torch.as_tensor(theta))
        x = torch.as_tensor(x, device=theta.device)
        dtype = torch.promote_types(x.dtype, theta.dtype)
        x, theta = x.to(dtype), theta.to(dtype)
        if x.ndim != 2 or x.shape != (theta.shape[0], self.n_obs):
            raise ShapeError(
                f"x must have shape [batch, n_obs] = [{theta.shape[0]}, {self.n_obs}], "
                f"got {list(x.shape)}"
            )
        residual = x - self._mean(theta, design)
        return -0.5 * residual.square().sum(-1) / self.noise_std**2 - self._log_norm

    def pairwise_log_likelihood(self, x: Tensor, theta: Tensor, design: Tensor) -> Tensor:
        """log p(x_jn|θ_jm, d_j) ``[k, N, M]`` for every pair (n, m) at each design j.

        Args:
            x: ``[k, N, n_obs]``.
            theta: ``[k, M, theta_dim]`` (an expanded view is fine).
            design: ``[k, design_dim]``.
        """
        scale = 1.0 / self.noise_std**2
        mean = self.design_matrix(design).to(theta.dtype) @ theta.mT  # [k, n_obs, M]
        # −‖x − μ‖²/(2σ²) − log Z = [x, ‖x‖², 1] · [μ/σ², −1/(2σ²), −‖μ‖²/(2σ²) − log Z]:
        # the whole [k, N, M] matrix is one batched product with n_obs + 2 terms
        ones = torch.ones_like(x[..., :1])
        left = torch.cat([x, x.square().sum(-1, keepdim=True), ones], dim=-1)
        offset = -0.5 * scale * mean.square().sum(-2, keepdim=True) - self._log_norm
        right = torch.cat([scale * mean, torch.full_like(offset, -0.5 * scale), offset], dim=-2)
        return left @ right

    # -- helpers ----------------------------------------------------------------------
    @property
    def _log_norm(self) -> float:
        return 0.5 * self.n_obs * (_LOG_2PI + 2.0 * math.log(self.noise_std))

    def _mean(self, theta: Tensor, design: Any) -> Tensor:
        """X(d) θ ``[batch, n_obs]``."""
        design = self.check_design(design, theta.shape[0], theta.device, theta.dtype)
        return (self.design_matrix(design) @ theta[..., None]).squeeze(-1)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "n_obs": self.n_obs,
            "omega": self.omega,
            "tau": self.tau,
            "noise_std": self.noise_std,
            "prior_std": self.prior_std,
        }


def _rows(value: Tensor) -> int:
    return value.shape[0] if value.ndim >= 2 else 1
