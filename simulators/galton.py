"""The generalized Galton board of Brehmer, Louppe, Pavez & Cranmer (PNAS 2020).

A ball falls through ``n_rows`` rows of nails.  After ``r`` rows it sits at an
integer position ``k ∈ {−r, −r+2, …, r}``; at the nail of row ``r`` it bounces
right (``z_r = 1``, ``k → k+1``) with probability

    p(θ, r, k) = ½(1 − s_r) + s_r · σ(2θ(1 + 2u)),   u = k / n_rows,
    s_r = sin(π (r+1) / (n_rows+1)),

and left (``k → k−1``) otherwise.  σ is the logistic function.  The tilt θ pushes
the ball right in the middle and right of the board but left on its far left
side (where ``1 + 2u < 0``), and the nails near the top and bottom rows (small
``s_r``) are nearly fair, so p(x|θ) is a non-trivial, non-Gaussian function of θ.
The final position K is read out with Gaussian noise: x = K + σ_obs ε.

Gold.  The latent path is z = (z_0, …, z_{n_rows−1}); with k_r the position
before row r,

    log p(x, z|θ) = Σ_r [z_r log p(θ,r,k_r) + (1 − z_r) log(1 − p(θ,r,k_r))] + log N(x; K, σ_obs²).

Exact likelihood.  Positions form a Markov chain, so the distribution of K is
computed exactly by dynamic programming over rows (``n_rows²/2`` operations),
and p(x|θ) = Σ_K P(K|θ) N(x; K, σ_obs²).  It is differentiable, so the exact
score t(x|θ) and log r(x|θ0,θ1) follow by autograd: the ground truth that the
tests and benchmarks compare the estimators against.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from simfer import BoxUniform, Simulator

__all__ = ["GaltonBoard"]


class GaltonBoard(Simulator):
    """Generalized Galton board with a Gaussian read-out (θ: the tilt, 1 parameter).

    Args:
        n_rows: rows of nails.
        readout_sigma: standard deviation σ_obs of the Gaussian read-out of the final position.
    """

    def __init__(self, n_rows: int = 16, readout_sigma: float = 0.5):
        if n_rows < 1 or readout_sigma <= 0:
            raise ValueError("GaltonBoard needs n_rows >= 1 and readout_sigma > 0")
        super().__init__(theta_dim=1, x_shape=(1,), name="GaltonBoard")
        self.n_rows = n_rows
        self.readout_sigma = readout_sigma

    def prior(self) -> BoxUniform:
        """The prior used in simfer's examples and benchmarks: θ ~ U(−1, 1)."""
        return BoxUniform([-1.0], [1.0])

    def describe(self) -> dict:
        return {**super().describe(), "n_rows": self.n_rows, "readout_sigma": self.readout_sigma}

    # -- the board --
    def p_right(self, theta: Tensor, row: int, position: Tensor) -> Tensor:
        """p(θ, r, k): ``theta`` ``[batch, 1]``, ``position`` ``[batch, m]`` → ``[batch, m]``."""
        u = position / self.n_rows
        s = math.sin(math.pi * (row + 1) / (self.n_rows + 1))
        return 0.5 * (1 - s) + s * torch.sigmoid(2 * theta * (1 + 2 * u))

    def sample_with_latent(self, theta: Tensor, design, generator: torch.Generator):
        batch = theta.shape[0]
        position = torch.zeros(batch, 1, dtype=theta.dtype, device=theta.device)
        uniforms = torch.rand(
            batch, self.n_rows, generator=generator, dtype=theta.dtype, device=theta.device
        )
        path = torch.empty_like(uniforms)
        for row in range(self.n_rows):
            right = (uniforms[:, row : row + 1] < self.p_right(theta, row, position)).to(
                theta.dtype
            )
            path[:, row : row + 1] = right
            position = position + 2 * right - 1
        noise = torch.randn(batch, 1, generator=generator, dtype=theta.dtype, device=theta.device)
        return position + self.readout_sigma * noise, path

    def joint_log_prob(self, x: Tensor, latent: Tensor, theta: Tensor, design) -> Tensor:
        path = latent.to(theta.dtype)
        steps = 2 * path - 1
        before = torch.cumsum(steps, dim=1) - steps  # position k_r before row r
        p = torch.cat(
            [self.p_right(theta, row, before[:, row : row + 1]) for row in range(self.n_rows)],
            dim=1,
        )
        log_path = (path * torch.log(p) + (1 - path) * torch.log1p(-p)).sum(1)
        final = steps.sum(1, keepdim=True)
        return log_path + self._log_readout(x, final).squeeze(1)

    # -- exact likelihood --
    def final_position_probabilities(self, theta: Tensor) -> Tensor:
        """P(K = 2j − n_rows | θ), j = 0 … n_rows: ``[batch, n_rows + 1]``, by DP over rows."""
        theta = self.check_theta(theta)
        probs = torch.ones(theta.shape[0], 1, dtype=theta.dtype, device=theta.device)
        for row in range(self.n_rows):
            rights = torch.arange(row + 1, dtype=theta.dtype, device=theta.device)
            p = self.p_right(theta, row, (2 * rights - row).expand(theta.shape[0], -1))
            probs = torch.nn.functional.pad(probs * (1 - p), (0, 1)) + torch.nn.functional.pad(
                probs * p, (1, 0)
            )
        return probs

    def log_likelihood(self, x: Tensor, theta: Tensor, design=None) -> Tensor:
        """log p(x|θ) = log Σ_K P(K|θ) N(x; K, σ_obs²): ``x`` ``[batch, 1]`` → ``[batch]``."""
        probs = self.final_position_probabilities(theta)
        positions = 2 * torch.arange(self.n_rows + 1, dtype=probs.dtype, device=probs.device)
        positions = positions - self.n_rows
        log_terms = torch.log(probs) + self._log_readout(x.to(probs.dtype), positions[None, :])
        return torch.logsumexp(log_terms, dim=1)

    def _log_readout(self, x: Tensor, position: Tensor) -> Tensor:
        z = (x - position) / self.readout_sigma
        return -0.5 * z**2 - math.log(self.readout_sigma * math.sqrt(2 * math.pi))
