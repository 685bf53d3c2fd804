r"""Score-based diffusion: denoising score matching under a variance-preserving SDE.

Neural posterior score estimation (NPSE; Sharrock, Simons, Liu & Beaumont, ICML 2024,
arXiv:2210.04872; Geffner, Papamakarios & Mnih, ICML 2023, arXiv:2209.14249), on the
SDE framework of Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole (ICLR 2021,
arXiv:2011.13456).  In standardised coordinates z = (θ − μ)/σ the variance-preserving
(VP) SDE dz = −½ β(t) z dt + √β(t) dW, β(t) = β_min + t (β_max − β_min), has the
transition kernel

    z_t = α_t z + σ_t ε,   ε ~ N(0, I),   α_t = exp(−¼ t² (β_max − β_min) − ½ t β_min),
    σ_t² = 1 − α_t²,

whose score is ∇ log p(z_t | z) = −ε/σ_t.  Denoising score matching with weight σ_t²
(`simfer.losses.denoising_score_matching`) over pairs (θ, x) from p(θ) p(x|θ) and
t ~ U(t_min, 1) has the minimiser s*(z, t | x) = ∇_z log p_t(z | x), the score of the
diffused posterior, for every x at once.  Sampling and log-densities use the
probability-flow ODE, which has the same marginals p_t as the SDE:

    dz/dt = −½ β(t) [z + s(z, t | x)],

run from N(0, I) at t = 1 down to t_min (`simfer.nn.ode`).

Why VP rather than variance exploding (VE, z_t = z + σ_t ε with σ_t up to σ_max).
θ is standardised, so under VP every marginal keeps unit scale and the base N(0, I) at
t = 1 is the diffused posterior up to α_1 = e^(−5.03) ≈ 0.0066 of its mean (a KL below
10⁻⁴ for a posterior mean within 1.5 prior standard deviations); VE needs σ_max far
beyond the prior's range, a base N(0, σ_max² I) that is never exactly right, and a noise
scale spanning five decades, which makes the ODE stiffer (more solver steps for the same
tolerance).  Under VP the Gaussian baseline below is exact at every t for standardised
Gaussian data.

Parameterisation.  The network predicts the noise, ε̂ = σ_t z + r(z, t, x), and the score
is s = −ε̂/σ_t; with r = 0 (its start) s = −z, the exact score of N(0, I) at every t under
VP, so an untrained model is the standardised Gaussian and the ODE's velocity is 0.

Constants (Song et al. 2021's VP defaults): β_min = 0.1, β_max = 20, t_min = 10⁻³, where
σ_t ≈ 0.0105: the sampled density is the posterior blurred by 1% of a prior standard
deviation, which raises each variance by 10⁻⁴ of the prior's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import losses
from .ode import ContinuousFlow

__all__ = ["BETA_MAX", "BETA_MIN", "T_MIN", "VPDiffusion"]

BETA_MIN, BETA_MAX, T_MIN = 0.1, 20.0, 1e-3


class VPDiffusion(ContinuousFlow):
    """q(θ | x, d) at t = t_min of the VP probability-flow ODE started from N(0, I) at t = 1.

    Takes the arguments of `simfer.nn.ode.ContinuousFlow`.
    """

    t_base = 1.0
    t_data = T_MIN
    beta_min, beta_max = BETA_MIN, BETA_MAX

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t: Tensor) -> Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def sigma(self, t: Tensor) -> Tensor:
        """σ_t = √(1 − α_t²), written with expm1 so that it stays exact for small t."""
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    def score(self, z: Tensor, t: Tensor, summary: Tensor) -> Tensor:
        """s(z, t | x) ``[N, D]`` = −ε̂/σ_t, ε̂ = σ_t z + r(z, t, x)."""
        sigma = self.sigma(t)[:, None]
        return -(sigma * z + self.net(z, t, summary)) / sigma

    def velocity(self, z: Tensor, t: Tensor, summary: Tensor) -> Tensor:
        return -0.5 * self.beta(t)[:, None] * (z + self.score(z, t, summary))

    def loss(self, inputs: Tensor, summary: Tensor, generator: torch.Generator) -> Tensor:
        """Denoising score matching at one (t, ε) per row, drawn from ``generator``."""
        z = self.input_standardize(inputs)
        u = torch.rand(z.shape[0], generator=generator, device=z.device, dtype=z.dtype)
        t = self.t_data + (1 - self.t_data) * u
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        sigma = self.sigma(t)
        z_t = torch.exp(self.log_alpha(t))[:, None] * z + sigma[:, None] * noise
        return losses.denoising_score_matching(self.score(z_t, t, summary), noise, sigma)
