r"""Frequentist limits from a learnt likelihood (ratio): profile scans, Wilks regions,
expected limits.

With ℓ(θ) = Σ_i log p(x_i|θ) + const over the observed events (`Posterior.log_likelihood`:
the constant cancels), split θ into parameters of interest μ (k of them) and nuisance
parameters ν.  The profile likelihood-ratio statistic is

    q(μ) = −2 [ max_ν ℓ(μ, ν) − max_θ ℓ(θ) ]  ≥ 0,

and by Wilks' theorem q(μ_true) follows χ²_k asymptotically, so {μ : q(μ) ≤ F⁻¹_{χ²_k}(CL)}
is a confidence region of level CL (1σ in one parameter: q ≤ 1; 95 %: q ≤ 3.84).

Expected limits at a hypothesised θ_true for N events (MadMiner's `AsymptoticLimits`):
the Asimov scan replaces the data by its expectation, ℓ_A(θ) = N · E_{x~p(x|θ_true)} ℓ(x|θ),
estimated from a large sample simulated at θ_true; toy scans draw N' ~ Poisson(N) events
from that sample for each toy (a bootstrap: keep the sample ≫ N) and give the median and
the 68 %/95 % bands of the expected q.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.stats import chi2
from torch import Tensor

from ..prior import BoxUniform
from .posterior import Posterior

__all__ = ["LikelihoodScan", "expected_scans", "likelihood_scan"]


@dataclass
class LikelihoodScan:
    """q(μ) on a grid.  grid ``[g, k]`` (parameters of interest), q ``[g]``, theta_hat the
    best fit ``[theta_dim]``, profiled ``[g, theta_dim]`` the full θ at each grid point."""

    grid: Tensor
    q: Tensor
    theta_hat: Tensor
    profiled: Tensor
    parameters: tuple[int, ...]

    def threshold(self, level: float) -> float:
        """The Wilks threshold F⁻¹_{χ²_k}(level) on q."""
        return float(chi2.ppf(level, df=len(self.parameters)))

    def p_value(self) -> Tensor:
        """P(χ²_k ≥ q) at each grid point ``[g]``."""
        return torch.as_tensor(chi2.sf(self.q.cpu().double().numpy(), df=len(self.parameters)))

    def inside(self, level: float = 0.95) -> Tensor:
        """Grid points inside the confidence region of level ``level`` ``[g]`` bool."""
        return self.q <= self.threshold(level)

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """For one parameter of interest: the interval's ends, linearly interpolated where q
        crosses the threshold (±inf where the region reaches the grid's end)."""
        if len(self.parameters) != 1:
            raise ValueError("interval() is for one parameter of interest; use inside()")
        mu, q = self.grid[:, 0].double().cpu(), self.q.double().cpu()
        order = torch.argsort(mu)
        mu, q = mu[order], q[order]
        cut = self.threshold(level)
        inside = torch.nonzero(q <= cut).flatten()
        if inside.numel() == 0:
            return float("nan"), float("nan")
        lo, hi = int(inside[0]), int(inside[-1])

        def crossing(a: int, b: int) -> float:
            return float(mu[a] + (cut - q[a]) * (mu[b] - mu[a]) / (q[b] - q[a]))

        low = -float("inf") if lo == 0 else crossing(lo - 1, lo)
        high = float("inf") if hi == len(mu) - 1 else crossing(hi, hi + 1)
        return low, high


def _box_transform(posterior: Posterior, free: Tensor):
    """θ on the free coordinates from unconstrained u: a scaled sigmoid inside a box prior,
    the identity otherwise."""
    prior = posterior.prior
    if isinstance(prior, BoxUniform):
        low, high = prior.low[free], prior.high[free]
        return lambda u: low + (high - low) * torch.sigmoid(u), lambda t: torch.logit(
            ((t - low) / (high - low)).clamp(1e-6, 1 - 1e-6)
        )
    return (lambda u: u), (lambda t: t)


def _maximise(
    posterior: Posterior, theta: Tensor, free: Tensor, scale: float, steps: int, lr: float
) -> tuple[Tensor, Tensor]:
    """Maximise scale·ℓ over the ``free`` coordinates of each row of θ ``[b, d]`` (Adam)."""
    forward, inverse = _box_transform(posterior, free)
    u = inverse(theta[:, free]).detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([u], lr=lr)

    def assemble(u: Tensor) -> Tensor:
        full = theta.detach().clone()
        full[:, free] = forward(u)
        return full

    for _ in range(steps):
        optimizer.zero_grad()
        (-scale * posterior.log_likelihood(assemble(u))).sum().backward()
        optimizer.step()
    with torch.no_grad():
        best = assemble(u)
        return best, scale * posterior.log_likelihood(best)


def likelihood_scan(
    posterior: Posterior,
    grid: Tensor,
    *,
    parameters: tuple[int, ...] | None = None,
    n_events: float | None = None,
    steps: int = 200,
    learning_rate: float = 0.05,
) -> LikelihoodScan:
    """q(μ) at each grid point ``[g, k]`` for the parameters of interest ``parameters``
    (default: all of θ, then grid is ``[g, theta_dim]`` and nothing is profiled).

    The nuisance parameters are profiled by Adam at every grid point at once (needs a
    log-likelihood differentiable in θ), started from the prior's mean (or centre of a
    box).  θ̂ is refined from the best grid point.  ``n_events`` rescales ℓ to that many
    events (Asimov: a large sample at θ_true standing for its expectation)."""
    d = posterior.theta_dim
    parameters = tuple(range(d)) if parameters is None else tuple(int(p) for p in parameters)
    grid = torch.as_tensor(grid, device=posterior.device, dtype=torch.get_default_dtype())
    if grid.ndim == 1 and len(parameters) == 1:
        grid = grid[:, None]
    if grid.ndim != 2 or grid.shape[1] != len(parameters):
        raise ValueError(f"grid must be [points, {len(parameters)}], got {list(grid.shape)}")
    scale = 1.0 if n_events is None else float(n_events) / posterior.n_observations
    nuisance = torch.tensor([i for i in range(d) if i not in parameters], dtype=torch.long)
    start = _centre(posterior).expand(grid.shape[0], d).clone()
    start[:, list(parameters)] = grid
    if nuisance.numel():
        profiled, log_l = _maximise(posterior, start, nuisance, scale, steps, learning_rate)
    else:
        profiled = start
        with torch.no_grad():
            log_l = scale * posterior.log_likelihood(start)
    best = int(torch.argmax(log_l))
    every = torch.arange(d)
    refined, top = _maximise(
        posterior, profiled[best : best + 1], every, scale, steps, learning_rate
    )
    if float(top[0]) < float(log_l[best]):
        refined, top = profiled[best : best + 1], log_l[best : best + 1]
    q = (-2 * (log_l - top[0])).clamp_min(0)
    return LikelihoodScan(
        grid.detach(), q.detach(), refined[0].detach(), profiled.detach(), parameters
    )


def _centre(posterior: Posterior) -> Tensor:
    prior = posterior.prior
    if isinstance(prior, BoxUniform):
        return (prior.low + prior.high) / 2
    return prior.mean.to(posterior.device)


def expected_scans(
    posterior_at_truth: Posterior,
    grid: Tensor,
    *,
    n_events: int,
    n_toys: int = 0,
    parameters: tuple[int, ...] | None = None,
    seed: int = 0,
    **scan_options,
) -> dict:
    """Expected limits at θ_true: ``posterior_at_truth`` is built on a large sample
    simulated at θ_true (its x_obs).  Returns ``{"asimov": LikelihoodScan, "toys": q
    [n_toys, g], "median": [g], "band68": ([g], [g]), "band95": ([g], [g])}`` (the toy
    entries only with ``n_toys > 0``)."""
    asimov = likelihood_scan(
        posterior_at_truth, grid, parameters=parameters, n_events=n_events, **scan_options
    )
    result: dict = {"asimov": asimov}
    if n_toys:
        pool = posterior_at_truth.x_obs
        generator = torch.Generator().manual_seed(seed)
        qs = []
        for _ in range(n_toys):
            count = int(torch.poisson(torch.tensor(float(n_events)), generator=generator))
            rows = torch.randint(pool.shape[0], (max(count, 1),), generator=generator)
            rows = rows.to(pool.device)
            designs = posterior_at_truth.design_obs
            toy = Posterior(
                posterior_at_truth.prior,
                pool[rows],
                posterior_at_truth.event_log_likelihood,
                x_shape=posterior_at_truth.x_shape,
                design=None if designs is None else designs[rows],
                design_dim=posterior_at_truth.design_dim,
                device=posterior_at_truth.device,
            )
            qs.append(likelihood_scan(toy, grid, parameters=parameters, **scan_options).q)
        toys = torch.stack(qs)
        quantiles = torch.tensor([0.025, 0.16, 0.5, 0.84, 0.975], dtype=toys.dtype)
        q = torch.quantile(toys, quantiles.to(toys.device), dim=0)
        result.update(toys=toys, median=q[2], band68=(q[1], q[3]), band95=(q[0], q[4]))
    return result
