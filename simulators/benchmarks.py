"""The standard SBI benchmark simulators of sbibm, as `simfer.Simulator` subclasses.

Lueckmann, Boelts, Greenberg, Gonçalves & Macke, "Benchmarking Simulation-Based
Inference", AISTATS 2021 (arXiv:2101.04653); reference implementation
https://github.com/sbi-benchmark/sbibm (``sbibm/tasks/<name>/task.py``).

==================  =========  =======  =====  ==========================================
class               θ dim      x shape  gold   exact ``log_likelihood``
==================  =========  =======  =====  ==========================================
`GaussianLinear`    10         [10]     yes    yes (and the analytic ``posterior``)
`TwoMoons`          2          [2]      yes    yes (change of variables to polar coords)
`SLCP`              5          [8]      yes    yes
`GaussianMixture`   2          [2]      yes    yes (latent: the mixture component)
`LotkaVolterra`     4          [20]     no     yes (the ODE is deterministic)
`SIR`               2          [10]     no     yes (the ODE is deterministic)
==================  =========  =======  =====  ==========================================

Gold.  Where x has a tractable density given θ and no latent path is needed
(GaussianLinear, TwoMoons, SLCP) the simulator is simfer's level 2 with an
empty latent: ``sample_with_latent`` returns ``(x, None)`` and the joint density
*is* the likelihood, p(x, z|θ) = p(x|θ), so the joint log ratio and joint score
are the exact ones.  GaussianMixture records the mixture component as a discrete
latent.  LotkaVolterra and SIR are black boxes (``sample`` only), though their
exact likelihood is available for tests and reference posteriors.

Every simulator draws all of its randomness from the ``torch.Generator`` that
simfer passes in, works in θ's dtype on θ's device, and is vectorised over the
batch.  ``prior()`` returns the sbibm prior as a torch distribution with
``event_shape == (theta_dim,)``.  ``log_likelihood(x, theta)`` broadcasts over
leading dimensions: θ ``[..., theta_dim]`` and x ``[..., *x_shape]`` give ``[...]``.

Where these simulators depart from sbibm's code (each on purpose, each noted in
its class):

* GaussianMixture draws a mixture component per event; sbibm's simulator draws
  one component for the whole batch of a call (same marginal, correlated rows).
* TwoMoons' ``log_likelihood`` is the normalised density, including the
  Jacobian 1/(π r) that sbibm's ``_likelihood`` leaves out.
* LotkaVolterra and SIR integrate their ODE with fixed-step RK4 in torch
  (sbibm calls a Julia solver through diffeqtorch); the observation times and
  the observation models are sbibm's.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import (
    Binomial,
    Independent,
    LogNormal,
    MultivariateNormal,
    constraints,
)

from simfer import BoxUniform, Simulator, TractableSimulator
from simfer.errors import ShapeError

__all__ = ["GaussianLinear", "TwoMoons", "SLCP", "GaussianMixture", "LotkaVolterra", "SIR"]

_LOG_2PI = math.log(2.0 * math.pi)


# -- shared helpers ---------------------------------------------------------------------------
def _randn(shape: tuple[int, ...], like: Tensor, generator: torch.Generator) -> Tensor:
    """Standard normal draws of ``shape`` in ``like``'s dtype, on its device."""
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def _rand(shape: tuple[int, ...], like: Tensor, generator: torch.Generator) -> Tensor:
    """U[0, 1) draws of ``shape`` in ``like``'s dtype, on its device."""
    return torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)


def _normal_log_prob(x: Tensor, loc: Tensor | float, var: float) -> Tensor:
    """Elementwise log N(x; loc, var)."""
    return -0.5 * ((x - loc) ** 2 / var + math.log(var) + _LOG_2PI)


def _ode_dtype(device: torch.device) -> torch.dtype:
    """float64 for ODE integration (float32 rounding over ~10^3 RK4 steps costs ~3e-3
    relative accuracy), except on devices without float64 (Apple MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _rk4(
    rhs: Callable[[Tensor], Tensor], y0: Tensor, dt: float, steps_per_save: int, n_saves: int
) -> Tensor:
    """Classical fixed-step Runge–Kutta for the autonomous ODE dy/dt = rhs(y).

    Vectorised over the batch: ``y0`` is ``[batch, k]``; the Python loop runs over
    time steps only.  Returns ``[batch, n_saves, k]``: y at t = 0, Δ, …, (n_saves−1)Δ
    with Δ = ``steps_per_save`` · ``dt``.
    """
    y, saved = y0, [y0]
    for _ in range(n_saves - 1):
        for _ in range(steps_per_save):
            k1 = rhs(y)
            k2 = rhs(y + (0.5 * dt) * k1)
            k3 = rhs(y + (0.5 * dt) * k2)
            k4 = rhs(y + dt * k3)
            y = y + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        saved.append(y)
    return torch.stack(saved, dim=1)


def _steps_per_save(interval: float, dt: float) -> int:
    """The number of RK4 steps of size ``dt`` between two observations ``interval`` apart."""
    steps = round(interval / dt)
    if dt <= 0 or steps < 1 or abs(steps * dt - interval) > 1e-9 * interval:
        raise ValueError(f"dt={dt} must be positive and divide the observation interval {interval}")
    return steps


class _Benchmark(Simulator):
    """Common base: input handling of ``log_likelihood``.  Every subclass also defines
    ``prior(device=None)``, the sbibm prior over θ with ``event_shape == (theta_dim,)``."""

    def _x_and_theta(self, x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        """θ ``[..., theta_dim]`` and x ``[..., *x_shape]`` as tensors in θ's dtype and device."""
        theta = torch.as_tensor(theta)
        if not theta.is_floating_point():
            theta = theta.to(torch.get_default_dtype())
        x = torch.as_tensor(x, dtype=theta.dtype, device=theta.device)
        if theta.ndim == 0 or theta.shape[-1] != self.theta_dim:
            raise ShapeError(
                f"theta must have shape [..., {self.theta_dim}] for '{self.name}', "
                f"got {list(theta.shape)}"
            )
        n = len(self.x_shape)
        if x.ndim < n or tuple(x.shape[x.ndim - n :]) != self.x_shape:
            raise ShapeError(
                f"x must have shape [..., {', '.join(map(str, self.x_shape))}] for "
                f"'{self.name}', got {list(x.shape)}"
            )
        return x, theta


class _NoLatentGold(TractableSimulator, _Benchmark):
    """Gold without a latent path: p(x, z|θ) = p(x|θ), so the joint log ratio and joint
    score are the exact log ratio and score."""


class GaussianLinear(_NoLatentGold):
    """Gaussian linear (sbibm ``gaussian_linear``): infer the mean of a Gaussian.

    θ ~ N(0, σ₀² I),  x | θ ~ N(θ, σ² I),  θ, x ∈ R^dim, with σ₀² = σ² = 0.1.
    (sbibm names the variances ``prior_scale`` and ``simulator_scale`` but uses them
    as covariances, ``precision_matrix = inverse(scale · I)``; so do we.)

    log p(x|θ) = −½ Σ_i [(x_i − θ_i)²/σ² + log(2πσ²)], and with n iid observations
    the conjugate posterior is N(μ_n, v_n I), v_n = (1/σ₀² + n/σ²)⁻¹, μ_n = v_n Σ_j x_j/σ².

    Args:
        dim: dimension of θ and x.
        prior_var: σ₀², the prior variance per dimension.
        noise_var: σ², the observation-noise variance per dimension.
    """

    def __init__(self, dim: int = 10, prior_var: float = 0.1, noise_var: float = 0.1):
        super().__init__(dim, (dim,), name="gaussian_linear")
        self.prior_var = float(prior_var)
        self.noise_var = float(noise_var)

    def prior(self, device: str | torch.device | None = None) -> MultivariateNormal:
        """θ ~ N(0, σ₀² I)."""
        loc = torch.zeros(self.theta_dim, device=device)
        cov = self.prior_var * torch.eye(self.theta_dim, device=device)
        return MultivariateNormal(loc, covariance_matrix=cov)

    def sample(self, theta: Tensor, design: Tensor | None, generator: torch.Generator) -> Tensor:
        """x = θ + σ ε, ε ~ N(0, I): ``[batch, dim]``."""
        return theta + math.sqrt(self.noise_var) * _randn(tuple(theta.shape), theta, generator)

    def log_likelihood(self, x: Tensor, theta: Tensor, design: Tensor | None = None) -> Tensor:
        """log N(x; θ, σ² I) ``[...]``."""
        x, theta = self._x_and_theta(x, theta)
        return _normal_log_prob(x, theta, self.noise_var).sum(-1)

    def posterior(self, x_obs: Tensor) -> MultivariateNormal:
        """The exact posterior p(θ | x_obs) for one observation ``[dim]`` or n iid
        observations ``[n, dim]``: N(μ_n, v_n I) (see the class docstring)."""
        x_obs = torch.as_tensor(x_obs)
        if not x_obs.is_floating_point():
            x_obs = x_obs.to(torch.get_default_dtype())
        if x_obs.ndim == 1:
            x_obs = x_obs[None]
        if x_obs.ndim != 2 or x_obs.shape[1] != self.theta_dim or x_obs.shape[0] == 0:
            raise ShapeError(
                f"x_obs must have shape [{self.theta_dim}] or [n, {self.theta_dim}], "
                f"got {list(x_obs.shape)}"
            )
        n = x_obs.shape[0]
        var = 1.0 / (1.0 / self.prior_var + n / self.noise_var)
        loc = var * x_obs.sum(0) / self.noise_var
        eye = torch.eye(self.theta_dim, dtype=x_obs.dtype, device=x_obs.device)
        return MultivariateNormal(loc, covariance_matrix=var * eye)


# -- Two moons --------------------------------------------------------------------------------
class TwoMoons(_NoLatentGold):
    """Two moons (sbibm ``two_moons``): a crescent-shaped, bimodal posterior.

    θ ~ U(−1, 1)²;  a ~ U(−π/2, π/2),  r ~ N(0.1, 0.01²);
    x = (r cos a + 0.25, r sin a) + (−|θ₁ + θ₂|/√2, (−θ₁ + θ₂)/√2).

    Gold.  x is a deterministic function of (θ, a, r), so p(x, a, r | θ) has no
    density in x and cannot serve as a joint density.  Instead the latent is
    integrated out exactly: with (u, v) = x − s(θ) − (0.25, 0) and s(θ) the shift
    above, (r, a) ↦ (u, v) = (r cos a, r sin a) is a bijection from
    R × (−π/2, π/2) onto the plane less the line u = 0, with inverse
    r = sign(u)·√(u² + v²), a = arctan(v/u) and Jacobian |∂(u, v)/∂(r, a)| = |r|, so

        p(x|θ) = N(r; 0.1, 0.01²) · (1/π) / √(u² + v²).

    The simulator therefore has gold with no latent (joint = exact likelihood).
    (sbibm's ``_likelihood`` keeps only the N(r) factor, without 1/(π r).)
    """

    offset = 0.25
    r_loc = 0.1
    r_scale = 0.01

    def __init__(self):
        super().__init__(2, (2,), name="two_moons")

    def prior(self, device: str | torch.device | None = None) -> BoxUniform:
        """θ ~ U(−1, 1)²."""
        return BoxUniform([-1.0, -1.0], [1.0, 1.0], device=device)

    def _centre(self, theta: Tensor) -> Tensor:
        """s(θ) + (0.25, 0): the centre of the moon, ``[..., 2]``."""
        t1, t2 = theta[..., 0], theta[..., 1]
        return torch.stack(
            (self.offset - torch.abs(t1 + t2) / math.sqrt(2.0), (t2 - t1) / math.sqrt(2.0)), -1
        )

    def sample(self, theta: Tensor, design: Tensor | None, generator: torch.Generator) -> Tensor:
        """x ``[batch, 2]`` by the generative model above."""
        batch = theta.shape[0]
        a = math.pi * (_rand((batch,), theta, generator) - 0.5)
        r = self.r_loc + self.r_scale * _randn((batch,), theta, generator)
        return self._centre(theta) + torch.stack((r * torch.cos(a), r * torch.sin(a)), -1)

    def log_likelihood(self, x: Tensor, theta: Tensor, design: Tensor | None = None) -> Tensor:
        """log p(x|θ) = log N(r; 0.1, 0.01²) − log π − log √(u² + v²) ``[...]``."""
        x, theta = self._x_and_theta(x, theta)
        uv = x - self._centre(theta)
        u, v = uv[..., 0], uv[..., 1]
        rho = torch.hypot(u, v)
        r = torch.where(u >= 0, rho, -rho)
        log_p_r = _normal_log_prob(r, self.r_loc, self.r_scale**2)
        return log_p_r - math.log(math.pi) - torch.log(rho)


# -- SLCP -------------------------------------------------------------------------------------
class SLCP(_NoLatentGold):
    """Simple likelihood, complex posterior (sbibm ``slcp``; Papamakarios et al. 2019).

    θ ~ U(−3, 3)⁵;  m = (θ₁, θ₂), s₁ = θ₃², s₂ = θ₄², ρ = tanh θ₅,
    S = [[s₁² + ε, ρ s₁ s₂], [ρ s₁ s₂, s₂² + ε]] with sbibm's jitter ε = 10⁻⁶;
    x = (x₁, …, x₄) with x_j ~ N(m, S) iid, flattened to ``[8]`` as
    (x₁₁, x₁₂, x₂₁, …, x₄₂) like sbibm.

    log p(x|θ) = Σ_j log N(x_j; m, S).  S is factorised in closed form,
    S = L Lᵀ with L₁₁ = √S₁₁, L₂₁ = S₁₂/L₁₁, L₂₂ = √(S₂₂ − L₂₁²).
    """

    num_draws = 4
    jitter = 1e-6

    def __init__(self):
        super().__init__(5, (2 * self.num_draws,), name="slcp")

    def prior(self, device: str | torch.device | None = None) -> BoxUniform:
        """θ ~ U(−3, 3)⁵."""
        return BoxUniform([-3.0] * 5, [3.0] * 5, device=device)

    def _loc_and_scale_tril(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """m ``[..., 2]`` and the Cholesky factor L of S ``[..., 2, 2]``."""
        s1, s2 = theta[..., 2] ** 2, theta[..., 3] ** 2
        rho = torch.tanh(theta[..., 4])
        s11 = s1**2 + self.jitter
        l11 = torch.sqrt(s11)
        l21 = rho * s1 * s2 / l11
        # S₂₂ − L₂₁² = s₂² (1 − ρ² s₁²/S₁₁) + ε, written without the cancellation
        l22 = torch.sqrt(s2**2 * (1 - rho**2 * s1**2 / s11) + self.jitter)
        zero = torch.zeros_like(l11)
        scale_tril = torch.stack((torch.stack((l11, zero), -1), torch.stack((l21, l22), -1)), -2)
        return theta[..., :2], scale_tril

    def sample(self, theta: Tensor, design: Tensor | None, generator: torch.Generator) -> Tensor:
        """x = m + L ε_j for j = 1..4, ε_j ~ N(0, I₂): ``[batch, 8]``."""
        loc, scale_tril = self._loc_and_scale_tril(theta)
        eps = _randn((theta.shape[0], self.num_draws, 2), theta, generator)
        draws = loc[:, None, :] + torch.einsum("bij,bnj->bni", scale_tril, eps)
        return draws.reshape(theta.shape[0], -1)

    def log_likelihood(self, x: Tensor, theta: Tensor, design: Tensor | None = None) -> Tensor:
        """Σ_j log N(x_j; m, S) ``[...]``."""
        x, theta = self._x_and_theta(x, theta)
        loc, scale_tril = self._loc_and_scale_tril(theta)
        draws = x.reshape(*x.shape[:-1], self.num_draws, 2)
        dist = MultivariateNormal(loc[..., None, :], scale_tril=scale_tril[..., None, :, :])
        return dist.log_prob(draws).sum(-1)


# -- Gaussian mixture -------------------------------------------------------------------------
class GaussianMixture(_Benchmark):
    """Gaussian mixture (sbibm ``gaussian_mixture``): a wide and a narrow component.

    θ ~ U(−10, 10)^dim;  z ~ Categorical(0.5, 0.5);  x | θ, z ~ N(θ, σ_z² I) with
    σ = (1.0, 0.1).  So p(x|θ) = 0.5 N(x; θ, I) + 0.5 N(x; θ, 0.01 I).

    Gold: the component z (``[batch]`` int64, 0 wide, 1 narrow) is the latent;
    log p(x, z|θ) = log 0.5 + log N(x; θ, σ_z² I).  The exact likelihood is the
    logsumexp of the two joint terms.

    sbibm draws *one* component for all rows of a simulator call (its
    ``mixture_idx`` site has no batch shape); here every event draws its own,
    which has the same marginal and makes the rows independent, as simfer assumes.

    Args:
        dim: dimension of θ and x.
        prior_bound: the prior is U(−prior_bound, prior_bound)^dim.
    """

    weights = (0.5, 0.5)
    scales = (1.0, 0.1)

    def __init__(self, dim: int = 2, prior_bound: float = 10.0):
        super().__init__(dim, (dim,), name="gaussian_mixture")
        self.prior_bound = float(prior_bound)

    def prior(self, device: str | torch.device | None = None) -> BoxUniform:
        """θ ~ U(−prior_bound, prior_bound)^dim."""
        bound = [self.prior_bound] * self.theta_dim
        return BoxUniform([-b for b in bound], bound, device=device)

    def sample_with_latent(
        self, theta: Tensor, design: Tensor | None, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """x ``[batch, dim]`` and the component z ``[batch]``."""
        z = (_rand((theta.shape[0],), theta, generator) >= self.weights[0]).long()
        scale = torch.tensor(self.scales, dtype=theta.dtype, device=theta.device)[z]
        return theta + scale[:, None] * _randn(tuple(theta.shape), theta, generator), z

    def _log_joint_per_component(self, x: Tensor, theta: Tensor) -> Tensor:
        """log p(x, z=k|θ) for k = 0, 1: ``[..., 2]``."""
        return torch.stack(
            [
                math.log(w) + _normal_log_prob(x, theta, s**2).sum(-1)
                for w, s in zip(self.weights, self.scales, strict=True)
            ],
            -1,
        )

    def joint_log_prob(
        self, x: Tensor, latent: Tensor, theta: Tensor, design: Tensor | None
    ) -> Tensor:
        """log 0.5 + log N(x; θ, σ_z² I) ``[batch]``."""
        log_joint = self._log_joint_per_component(x, theta)
        return log_joint.gather(-1, latent.long()[..., None]).squeeze(-1)

    def log_likelihood(self, x: Tensor, theta: Tensor, design: Tensor | None = None) -> Tensor:
        """log Σ_z p(x, z|θ) ``[...]``."""
        x, theta = self._x_and_theta(x, theta)
        return torch.logsumexp(self._log_joint_per_component(x, theta), -1)


# -- Lotka–Volterra ---------------------------------------------------------------------------
class _ODEBenchmark(_Benchmark):
    """An ODE model observed at ``num_obs`` times ``obs_interval`` apart, integrated by RK4
    with step ``dt``, under independent LogNormal(``prior_loc``, ``prior_scale``) priors."""

    obs_interval: float
    num_obs: int
    prior_loc: tuple[float, ...]
    prior_scale: tuple[float, ...]

    def __init__(self, theta_dim: int, x_shape: tuple[int, ...], dt: float, name: str):
        super().__init__(theta_dim, x_shape, theta_support=constraints.positive, name=name)
        self.dt = float(dt)
        self._steps = _steps_per_save(self.obs_interval, self.dt)

    @property
    def times(self) -> Tensor:
        """The observation times t_k ``[num_obs]``."""
        return self.obs_interval * torch.arange(self.num_obs, dtype=torch.float64)

    def prior(self, device: str | torch.device | None = None) -> Independent:
        """Independent LogNormal(prior_loc, prior_scale) over θ."""
        loc = torch.tensor(self.prior_loc, device=device)
        scale = torch.tensor(self.prior_scale, device=device)
        return Independent(LogNormal(loc, scale), 1)


class LotkaVolterra(_ODEBenchmark):
    """Lotka–Volterra predator–prey model (sbibm ``lotka_volterra``).

    θ = (α, β, γ, δ), independent LogNormal priors with log-means
    (−0.125, −3, −0.125, −3) and log-sd 0.5.  Populations (prey p, predator q)

        dp/dt = α p − β p q,   dq/dt = −γ q + δ p q,   (p, q)(0) = (30, 1),

    observed at t_k = 2.1 k, k = 0, …, 9 (sbibm solves on the grid 0, 0.1, …, 20
    and keeps every 21st point starting with t = 0, i.e. ``u[:, :, ::21]``).
    x = (x_p(t_0..t_9), x_q(t_0..t_9)) ``[20]``, prey first, with
    log x ~ N(log clamp(u, 10⁻¹⁰, 10⁴), 0.1²) per entry, as in sbibm.

    The ODE is integrated in log-populations, d log p/dt = α − β q and
    d log q/dt = −γ + δ p, which keeps populations positive and makes the error
    relative, with fixed-step RK4 (``dt`` = 0.01) in float64, vectorised over the
    batch; the relative error against a tight reference solver is below 10⁻⁴ for
    prior draws.  A row whose solution diverges gives NaN (sbibm: NaN as well).

    No gold (simulated as a black box); ``log_likelihood`` is exact because the
    ODE is deterministic: Σ_k log LogNormal(x_k; log u_k(θ), 0.1).

    Args:
        dt: RK4 step; must divide the observation interval 2.1.
    """

    initial_populations = (30.0, 1.0)
    obs_interval = 2.1
    num_obs = 10
    noise_scale = 0.1
    clamp = (1e-10, 1e4)
    prior_loc = (-0.125, -3.0, -0.125, -3.0)
    prior_scale = (0.5, 0.5, 0.5, 0.5)

    def __init__(self, dt: float = 0.01):
        super().__init__(4, (2 * self.num_obs,), dt, name="lotka_volterra")

    def log_populations(self, theta: Tensor) -> Tensor:
        """log (p, q) at the observation times: ``[..., 2, 10]`` (unclamped), θ's dtype."""
        flat = theta.reshape(-1, 4).to(_ode_dtype(theta.device))
        alpha, beta, gamma, delta = flat.T[..., None]

        def rhs(y: Tensor) -> Tensor:
            return torch.cat(
                (alpha - beta * torch.exp(y[:, 1:]), delta * torch.exp(y[:, :1]) - gamma), 1
            )

        y0 = torch.log(torch.tensor(self.initial_populations, dtype=flat.dtype, device=flat.device))
        path = _rk4(rhs, y0.expand(flat.shape[0], 2), self.dt, self._steps, self.num_obs)
        return path.transpose(1, 2).reshape(*theta.shape[:-1], 2, self.num_obs).to(theta.dtype)

    def _obs_loc(self, theta: Tensor) -> Tensor:
        """log clamp(u, 1e-10, 1e4) flattened to ``[..., 20]``, the mean of log x."""
        low, high = (math.log(c) for c in self.clamp)
        return self.log_populations(theta).clamp(low, high).flatten(-2)

    def sample(self, theta: Tensor, design: Tensor | None, generator: torch.Generator) -> Tensor:
        """x = exp(log u + 0.1 ε): ``[batch, 20]``."""
        with torch.no_grad():
            loc = self._obs_loc(theta)
        return torch.exp(loc + self.noise_scale * _randn(tuple(loc.shape), loc, generator))

    def log_likelihood(self, x: Tensor, theta: Tensor, design: Tensor | None = None) -> Tensor:
        """Σ_k log LogNormal(x_k; log u_k(θ), 0.1²) ``[...]``."""
        x, theta = self._x_and_theta(x, theta)
        return LogNormal(self._obs_loc(theta), self.noise_scale).log_prob(x).sum(-1)


# -- SIR --------------------------------------------------------------------------------------
class SIR(_ODEBenchmark):
    """SIR epidemic model (sbibm ``sir``).

    θ = (β, γ): contact rate and recovery rate (1/days), with independent priors
    β ~ LogNormal(log 0.4, 0.5), γ ~ LogNormal(log 1/8, 0.2).  With N = 10⁶,

        dS/dt = −β S I/N,  dI/dt = β S I/N − γ I,  dR/dt = γ I,
        (S, I, R)(0) = (N − 1, 1, 0),

    observed at t_k = 17 k days, k = 0, …, 9 (sbibm solves daily on [0, 160] and
    keeps ``u[:, 1, ::17]``, so the first observation is at t = 0).
    x_k ~ Binomial(1000, clamp(I(t_k)/N, 0, 1)): ``[10]`` counts of infected in a
    sample of 1000, returned as floats in θ's dtype.

    The ODE is integrated in (log s, log i) with s = S/N, i = I/N
    (d log s/dt = −β i, d log i/dt = β s − γ) by fixed-step RK4 (``dt`` = 0.25 days)
    in float64, vectorised over the batch; relative error below 10⁻⁵ for prior draws.

    No gold (simulated as a black box); ``log_likelihood`` is exact because the
    ODE is deterministic: Σ_k log Binomial(x_k; 1000, I(t_k)/N).

    Args:
        population: N.
        total_count: the size of the sample the infected are counted in.
        dt: RK4 step in days; must divide the observation interval of 17 days.
    """

    obs_interval = 17.0
    num_obs = 10
    prior_loc = (math.log(0.4), math.log(0.125))
    prior_scale = (0.5, 0.2)

    def __init__(self, population: float = 1e6, total_count: int = 1000, dt: float = 0.25):
        super().__init__(2, (self.num_obs,), dt, name="sir")
        self.population = float(population)
        self.total_count = int(total_count)

    def infected_fraction(self, theta: Tensor) -> Tensor:
        """I(t_k)/N at the observation times: ``[..., 10]``, θ's dtype."""
        flat = theta.reshape(-1, 2).to(_ode_dtype(theta.device))
        beta, gamma = flat.T[..., None]

        def rhs(y: Tensor) -> Tensor:
            return torch.cat((-beta * torch.exp(y[:, 1:]), beta * torch.exp(y[:, :1]) - gamma), 1)

        i0 = 1.0 / self.population
        y0 = torch.tensor([math.log1p(-i0), math.log(i0)], dtype=flat.dtype, device=flat.device)
        path = _rk4(rhs, y0.expand(flat.shape[0], 2), self.dt, self._steps, self.num_obs)
        return torch.exp(path[..., 1]).reshape(*theta.shape[:-1], self.num_obs).to(theta.dtype)

    def _probs(self, theta: Tensor) -> Tensor:
        return self.infected_fraction(theta).clamp(0.0, 1.0)

    def sample(self, theta: Tensor, design: Tensor | None, generator: torch.Generator) -> Tensor:
        """x_k ~ Binomial(1000, I(t_k)/N): ``[batch, 10]``."""
        with torch.no_grad():
            probs = self._probs(theta)
        count = torch.full_like(probs, float(self.total_count))
        return torch.binomial(count, probs, generator=generator)

    def log_likelihood(self, x: Tensor, theta: Tensor, design: Tensor | None = None) -> Tensor:
        """Σ_k log Binomial(x_k; 1000, I(t_k)/N) ``[...]``."""
        x, theta = self._x_and_theta(x, theta)
        dist = Binomial(self.total_count, probs=self._probs(theta), validate_args=False)
        return dist.log_prob(x).sum(-1)
