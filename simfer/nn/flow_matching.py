r"""Flow matching: a velocity field regressed on a conditional optimal-transport path.

Flow matching posterior estimation (FMPE; Wildberger, Dax, Buchholz, Green, Macke & Ho,
NeurIPS 2023, arXiv:2305.17161), after Lipman, Chen, Ben-Hamu, Nickel & Le (ICLR 2023,
arXiv:2210.02747).  In standardised coordinates z = (θ − μ)/σ, with ε ~ N(0, I) and
t ~ U(0, 1), the conditional optimal-transport path from noise (t = 0) to a training θ
(t = 1) and its velocity are

    z_t = (1 − (1 − σ_min) t) ε + t z,      u_t = dz_t/dt = z − (1 − σ_min) ε.

Regressing v(z_t, t | x) on u_t (`simfer.losses.flow_matching`) over pairs (θ, x) from
p(θ) p(x|θ) has the minimiser v*(z, t | x) = E[u_t | z_t = z, x], the velocity whose ODE
carries N(0, I) at t = 0 to the posterior p(z|x) (convolved with N(0, σ_min² I)) at t = 1
for every x at once.  Samples and log-densities come from that ODE (`simfer.nn.ode`).

Gaussian baseline.  For z ~ N(0, I) (standardised data ignoring x), E[u_t | z_t] =
b(t) z_t with b(t) = (t − (1 − σ_min) a)/(a² + t²), a = 1 − (1 − σ_min) t; the network
learns the rest, v = b(t) z + r(z, t, x), and starts at r = 0: an untrained model is the
standardised Gaussian, as simfer's flows are.

σ_min = 10⁻³ (sbi's default ``noise_scale``): the sampled density is the posterior blurred
by 10⁻³ standard deviations of the training θ, far below any fit's error.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import losses
from .ode import ContinuousFlow

__all__ = ["SIGMA_MIN", "FlowMatching"]

SIGMA_MIN = 1e-3


class FlowMatching(ContinuousFlow):
    """q(θ | x, d) as the end point (t = 1) of the flow-matching ODE from N(0, I) at t = 0.

    Takes the arguments of `simfer.nn.ode.ContinuousFlow`.
    """

    t_base = 0.0
    t_data = 1.0
    sigma_min = SIGMA_MIN

    def baseline(self, t: Tensor) -> Tensor:
        """b(t) ``[N, 1]`` (or ``[1, 1]``): the velocity's slope for standardised Gaussian data."""
        a = 1 - (1 - self.sigma_min) * t
        return ((t - (1 - self.sigma_min) * a) / (a**2 + t**2))[:, None]

    def velocity(self, z: Tensor, t: Tensor, summary: Tensor) -> Tensor:
        return self.baseline(t) * z + self.net(z, t, summary)

    def loss(self, inputs: Tensor, summary: Tensor, generator: torch.Generator) -> Tensor:
        """The flow matching loss at one (t, ε) per row, drawn from ``generator``."""
        z = self.input_standardize(inputs)
        t = torch.rand(z.shape[0], generator=generator, device=z.device, dtype=z.dtype)
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        z_t = (1 - (1 - self.sigma_min) * t[:, None]) * noise + t[:, None] * z
        return losses.flow_matching(self.velocity(z_t, t, summary), z, noise, self.sigma_min)
