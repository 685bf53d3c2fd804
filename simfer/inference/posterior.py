r"""`Posterior`: what the observations x_obs say about θ, from any likelihood-like term.

For n iid observations x_1 … x_n (one event or thousands, the LHC case), each made at
its design d_i when the model takes one, the posterior is

    log p(θ | x_1…n) = log p(θ) + Σ_i ℓ(x_i | θ, d_i) + const,

where the per-event term ℓ is anything equal to log p(x|θ) up to a θ-independent
constant: the exact log-likelihood, a learnt log q(x|θ) (NLE), a learnt log-ratio
log r̂(x|θ, θ_ref) (CARL, ALICES, NRE, …: the constant is log p(x|θ_ref) or log p(x)), or
for NPE log q(θ|x_i) − log p(θ), since p(θ|x_i) / p(θ) = p(x_i|θ) / p(x_i).  The last
identity gives NPE with iid data the correct target p(θ) Π_i [q(θ|x_i) / p(θ)]
(the product of the single-event posteriors divided by the prior n − 1 times), which
MCMC then samples; with one observation NPE samples q(θ|x) directly.  What each
estimator's ℓ is, and the protocol through which it hands ℓ over, is in
`simfer.inference.term`.

The sum over events is taken in chunks of at most ``max_rows`` (θ, x) pairs on the
estimator's device, so the memory does not grow with the number of events.

Samplers (``method=``): ``"direct"`` (NPE, one observation: flow draws truncated to the
prior), ``"slice"`` (many parallel chains, `simfer.inference.slice`), ``"nuts"``/``"hmc"``
(Pyro, on the prior's support mapped to R^d), ``"rejection"`` (prior proposals; exact).
`log_prob` is normalised only for NPE with one observation (``normalized`` says which);
otherwise it is the log-density up to a constant.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, biject_to

from ..errors import ExtrapolationWarning, ShapeError, SimferError
from ..prior import BoxUniform, as_prior, distribution_device, inside_support
from ..seeding import seeded
from .slice import slice_sample
from .term import EventLogLikelihood, EventTerm

__all__ = ["Posterior", "posterior_from_likelihood"]

METHODS = ("direct", "slice", "nuts", "hmc", "rejection")

# MCMC draws are checked against the range of this many prior draws (see `Posterior.reach`),
# and more than this fraction beyond it is warned of (`ExtrapolationWarning`).
REACH_DRAWS = 10_000
REACH_WARNING = 0.01


class Posterior:
    """p(θ | x_obs) ∝ p(θ) Π_i exp ℓ(x_i | θ, d_i) for one or n iid observations.

    Args:
        prior: the prior over θ (a torch/Pyro distribution, event shape ``[theta_dim]``).
        x_obs: one observation ``x_shape`` or n iid observations ``[n, *x_shape]``.
        event_log_likelihood: ℓ(x, θ, d) (see the module docstring; d is None without a
            design); differentiable in θ for ``nuts``/``hmc`` and `map`.
        x_shape: the shape of one observation.
        design: with ``design_dim`` > 0, the design of every observation: one
            ``[design_dim]`` shared by all, or one per observation ``[n, design_dim]``.
        design_dim: the number of design variables ℓ takes (0: none).
        model: the estimator behind ℓ (moved by `to`), or None.
        direct: for NPE, a function ``(n, x [m, *x_shape], d [m, k] | None) → θ [m, n,
            theta_dim]`` drawing from the (normalised) posterior directly, and
            ``normalized_log_prob`` ``(θ, x, d) → [batch]`` its log-density.
        default_method: the sampler `sample` uses unless told otherwise.
        max_rows: the largest number of (θ, x) pairs ℓ is called with at once.
    """

    def __init__(
        self,
        prior: Distribution,
        x_obs: Any,
        event_log_likelihood: EventLogLikelihood,
        *,
        x_shape: tuple[int, ...],
        design: Any = None,
        design_dim: int = 0,
        model: Any = None,
        direct: Callable[[int, Tensor, Tensor | None], Tensor] | None = None,
        normalized_log_prob: Callable[[Tensor, Tensor, Tensor | None], Tensor] | None = None,
        default_method: str = "slice",
        max_rows: int = 2**16,
        device: str | torch.device = "cpu",
    ):
        self.prior = as_prior(prior)
        self._prior_device = distribution_device(self.prior)
        self.theta_dim = int(self.prior.event_shape[0])
        self.x_shape = tuple(x_shape)
        self.device = torch.device(device)
        self.x_obs = self._as_observations(x_obs)
        self.design_dim = int(design_dim)
        self.design_obs = self._as_designs(design, self.x_obs.shape[0])
        self.event_log_likelihood = event_log_likelihood
        self.model = model
        self._direct = direct
        self._normalized_log_prob = normalized_log_prob
        if default_method not in METHODS:
            raise ValueError(f"unknown method {default_method!r}; choose one of {METHODS}")
        self.default_method = default_method
        self.max_rows = int(max_rows)
        self.diagnostics: dict[str, Any] = {}
        self._reach: tuple[Tensor, Tensor] | None = None

    @classmethod
    def from_term(
        cls, term: EventTerm, prior: Distribution, *, design: Any = None, **options: Any
    ) -> Posterior:
        """The posterior of an `EventTerm` (what ``estimator.event_term(...)`` returns);
        ``options`` are this class's keyword arguments (``device``, ``max_rows``, …)."""
        return cls(
            prior,
            term.x_obs,
            term.log_likelihood,
            x_shape=term.x_shape,
            design=design,
            design_dim=term.design_dim,
            model=term.model,
            direct=term.direct,
            normalized_log_prob=term.normalized_log_prob,
            default_method=term.default_method,
            **options,
        )

    # -- shapes -------------------------------------------------------------------------------
    def _as_observations(self, x: Any) -> Tensor:
        x = torch.as_tensor(x, device=self.device)
        if not x.is_floating_point():  # float64 observations (4-momenta) stay float64
            x = x.to(torch.get_default_dtype())
        if tuple(x.shape) == self.x_shape:
            x = x[None]
        elif self.x_shape == (1,) and x.ndim == 1:
            x = x[:, None]
        if tuple(x.shape[1:]) != self.x_shape:
            shape = ", ".join(map(str, self.x_shape))
            raise ShapeError(
                f"x_obs must be one observation [{shape}] or n iid observations "
                f"[n, {shape}], got {list(x.shape)}"
            )
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x_obs holds NaN or inf: a failed simulation is not an observation")
        return x

    def _as_designs(self, design: Any, n: int) -> Tensor | None:
        """The design of each of n observations ``[n, design_dim]``, or None."""
        if self.design_dim == 0:
            if design is not None:
                raise ShapeError(
                    "a design was given, but the likelihood of this posterior takes none (its "
                    "estimator was trained on simulations without a design column)"
                )
            return None
        k = self.design_dim
        if design is None:
            raise ShapeError(
                f"this posterior's likelihood conditions on a design [{k}]: pass design= (one "
                f"[{k}] for all observations, or one per observation [n, {k}])"
            )
        design = torch.as_tensor(design, device=self.device)
        if not design.is_floating_point():
            design = design.to(torch.get_default_dtype())
        if design.ndim == 0 or (design.ndim == 1 and design.shape[0] == k):
            design = design.reshape(1, k).expand(n, k)
        elif design.ndim == 1 and k == 1 and design.shape[0] == n:
            design = design[:, None]
        if tuple(design.shape) != (n, k):
            raise ShapeError(
                f"design must be one design [{k}] or one per observation [{n}, {k}], got "
                f"{list(design.shape)}"
            )
        if not bool(torch.isfinite(design).all()):
            raise ValueError("design holds NaN or inf")
        return design

    def _as_theta(self, theta: Any) -> Tensor:
        theta = torch.as_tensor(theta, device=self.device)
        if not theta.is_floating_point():
            theta = theta.to(torch.get_default_dtype())
        single = theta.ndim == 1
        theta = theta[None] if single else theta
        if theta.ndim != 2 or theta.shape[1] != self.theta_dim:
            raise ShapeError(
                f"theta must be [batch, {self.theta_dim}] or [{self.theta_dim}], "
                f"got {list(theta.shape)}"
            )
        return theta

    @property
    def n_observations(self) -> int:
        return self.x_obs.shape[0]

    @property
    def normalized(self) -> bool:
        """True when `log_prob` is the normalised log-density (NPE, one observation)."""
        return self._normalized_log_prob is not None and self.n_observations == 1

    # -- densities ----------------------------------------------------------------------------
    def inside(self, theta: Tensor) -> Tensor:
        """Whether each row of θ ``[batch, theta_dim]`` lies in the prior's support."""
        return inside_support(self.prior, theta)

    def prior_log_prob(self, theta: Tensor) -> Tensor:
        """log p(θ) ``[batch]``, evaluated on the prior's own device (a torch distribution
        other than `BoxUniform` cannot move, so θ goes to it and the result comes back)."""
        return self.prior.log_prob(theta.to(self._prior_device)).to(theta.device)

    def _sum_over_events(self, theta: Tensor, x: Tensor, design: Tensor | None) -> Tensor:
        """Σ_i ℓ(x_i | θ_b, d_i) for every θ_b: θ ``[b, d]``, x ``[n, *x_shape]``, designs
        ``[n, k]`` or None → ``[b]``."""
        b, n = theta.shape[0], x.shape[0]
        per_chunk = max(1, self.max_rows // max(b, 1))
        total = theta.new_zeros(b)
        for start in range(0, n, per_chunk):
            events = x[start : start + per_chunk]
            k = events.shape[0]
            designs = None
            if design is not None:
                designs = design[start : start + per_chunk].repeat(b, 1)
            value = self.event_log_likelihood(
                events.repeat(b, *([1] * len(self.x_shape))),
                theta.repeat_interleave(k, dim=0),
                designs,
            )
            total = total + value.reshape(b, k).sum(1)
        return total

    def log_likelihood(self, theta: Any) -> Tensor:
        """Σ_i ℓ(x_i | θ, d_i) ``[batch]`` (log-likelihood up to a θ-independent constant)."""
        return self._sum_over_events(self._as_theta(theta), self.x_obs, self.design_obs)

    def log_prob(self, theta: Any) -> Tensor:
        """log p(θ | x_obs) ``[batch]`` for θ ``[batch, theta_dim]``: −∞ outside the prior's
        support; normalised only when `normalized` is True, else up to a constant."""
        theta = self._as_theta(theta)
        if self.normalized:
            return self._normalized_log_prob(theta, self.x_obs, self.design_obs)
        return self._unnormalized(theta, self.x_obs, self.design_obs)

    def _unnormalized(
        self, theta: Tensor, x: Tensor, design: Tensor | None, rows: Tensor | None = None
    ) -> Tensor:
        """log p(θ) + Σ ℓ on the rows inside the support, −∞ elsewhere.  With ``rows``,
        θ's row b belongs to observation ``rows[b]`` of x (one event each)."""
        inside = self.inside(theta)
        value = torch.full(theta.shape[:1], -math.inf, dtype=theta.dtype, device=theta.device)
        if bool(inside.any()):
            kept = theta[inside]
            if rows is None:
                term = self._sum_over_events(kept, x, design)
            else:
                owner = rows[inside]
                term = self.event_log_likelihood(
                    x[owner], kept, None if design is None else design[owner]
                )
            value = value.masked_scatter(inside, self.prior_log_prob(kept) + term)
        return value

    # -- sampling -----------------------------------------------------------------------------
    def sample(
        self,
        n: int,
        *,
        method: str | None = None,
        seed: int | None = None,
        n_chains: int | None = None,
        warmup: int | None = None,
        thin: int = 1,
        max_seconds: float | None = None,
        progress: bool = False,
        **options: Any,
    ) -> Tensor:
        """n draws θ ~ p(θ | x_obs) ``[n, theta_dim]``.

        ``method``: one of ``direct`` (NPE with one observation, its default), ``slice``
        (the default otherwise), ``nuts``, ``hmc``, ``rejection``.  MCMC runs
        ``n_chains`` chains (slice: 100 on a CPU, 1000 on a GPU; NUTS/HMC: 4) for
        ``warmup`` sweeps (slice 100, NUTS 300) and keeps every ``thin``-th; chains start
        from prior draws resampled by their likelihood.  ``diagnostics`` then holds R̂,
        effective sample size, acceptance and timings.  ``max_seconds`` bounds the wall
        time; rejection also takes ``max_proposals``.  ``seed`` makes the draws
        reproducible without touching the global random state.
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        method = self._method(method)
        with seeded(seed) if seed is not None else contextlib.nullcontext():
            if method == "direct":
                draws = self._direct(n, self.x_obs, self.design_obs)[0]
                self.diagnostics = {"method": "direct"}
                return draws
            if method == "rejection":
                from .rejection import rejection_sample

                draws, info = rejection_sample(
                    self._target(), self.prior, n, max_seconds=max_seconds, **options
                )
                self.diagnostics = {"method": "rejection", **info}
                return draws
            if method in ("nuts", "hmc"):
                from .mcmc import pyro_mcmc

                chains = n_chains or 4
                init = self._initial_points(chains, self.x_obs, self.design_obs)
                samples, info = pyro_mcmc(
                    self._target(),
                    self.prior,
                    init,
                    n,
                    kernel=method,
                    warmup=300 if warmup is None else warmup,
                    thin=thin,
                    max_seconds=max_seconds,
                    progress=progress,
                    **options,
                )
                self.diagnostics = {"method": method, **info}
                self._check_reach(samples)
                return samples
            chains = n_chains or self._default_chains(n)
            init = self._initial_points(chains, self.x_obs, self.design_obs)
            result = slice_sample(
                lambda theta, rows: self._unnormalized(theta, self.x_obs, self.design_obs),
                init,
                math.ceil(n / chains),
                warmup=100 if warmup is None else warmup,
                thin=thin,
                max_seconds=max_seconds,
                progress=progress,
                **options,
            )
            self.diagnostics = {"method": "slice", **result.summary()}
            draws = result.chains.transpose(0, 1).reshape(-1, self.theta_dim)[:n]
            self._check_reach(draws)
            return draws

    def sample_batched(
        self,
        n: int,
        x_batch: Any,
        *,
        design: Any = None,
        method: str | None = None,
        seed: int | None = None,
        n_chains: int | None = None,
        warmup: int = 100,
        thin: int = 1,
        max_seconds: float | None = None,
        progress: bool = False,
    ) -> Tensor:
        """n draws for each of m observations at once: x_batch ``[m, *x_shape]`` (each row
        its own single-event posterior) → ``[m, n, theta_dim]``; ``design`` is one for all
        or one per row ``[m, design_dim]``.  NPE draws directly; the others run
        ``n_chains`` slice chains per observation (default 20), all together."""
        x = self._as_observations(x_batch)
        design = self._as_designs(design, x.shape[0])
        method = self._method(method, n_observations=1)
        with seeded(seed) if seed is not None else contextlib.nullcontext():
            if method == "direct":
                self.diagnostics = {"method": "direct"}
                return self._direct(n, x, design)
            if method != "slice":
                raise ValueError("sample_batched runs 'direct' (NPE) or 'slice'")
            m, chains = x.shape[0], n_chains or 20
            init = self._initial_points(chains, x, design, batched=True)  # [m * chains, d]
            owner = torch.arange(m, device=x.device).repeat_interleave(chains)
            result = slice_sample(
                lambda theta, rows: self._unnormalized(theta, x, design, owner[rows]),
                init,
                math.ceil(n / chains),
                groups=m,
                warmup=warmup,
                thin=thin,
                max_seconds=max_seconds,
                progress=progress,
            )
        self.diagnostics = {"method": "slice", **result.summary()}
        draws = result.chains.reshape(m, chains, -1, self.theta_dim).transpose(1, 2)
        draws = draws.reshape(m, -1, self.theta_dim)[:, :n]
        self._check_reach(draws)
        return draws

    def reach(self) -> tuple[Tensor, Tensor]:
        """``(low, high)``, each ``[theta_dim]``: per coordinate, the range of 10⁴ prior draws
        widened by its own width on each side.  A surrogate trained on prior draws has seen
        no θ beyond it, and a posterior that puts its mass there rests on extrapolation.
        Drawn once, with a fixed seed and without touching the global random state."""
        if self._reach is None:
            devices = [self._prior_device] if self._prior_device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(0)
                theta = self.prior.sample((REACH_DRAWS,)).to(self.device)
            low, high = theta.min(0).values, theta.max(0).values
            self._reach = (low - (high - low), high + (high - low))
        return self._reach

    def _check_reach(self, draws: Tensor) -> None:
        """Record in ``diagnostics["beyond_reach"]`` the fraction of MCMC draws ``[..., d]``
        beyond `reach`, and warn when it exceeds 1 %."""
        low, high = self.reach()
        beyond = float(((draws < low) | (draws > high)).any(-1).float().mean())
        self.diagnostics["beyond_reach"] = beyond
        if beyond > REACH_WARNING:
            farthest = float(draws.abs().max())
            r_hat = self.diagnostics.get("r_hat_max")  # None with < 4 draws per chain
            r_hat = "" if r_hat is None else f" (R̂ {r_hat:.3g})"
            warnings.warn(
                f"{beyond:.1%} of the posterior draws lie beyond the prior's reach (the "
                "range of 10⁴ prior draws, widened by its width on each side; |θ| up to "
                f"{farthest:.3g}): the surrogate was trained where the prior puts θ and "
                f"extrapolates there, and the MCMC chains may have run away on it{r_hat}.  "
                "Check x_obs against the training data, or train on simulations that "
                "cover these θ.",
                ExtrapolationWarning,
                stacklevel=3,
            )

    def _method(self, method: str | None, n_observations: int | None = None) -> str:
        single = (n_observations or self.n_observations) == 1
        if method is None:
            return "direct" if self._direct is not None and single else self.default_method
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
        if method == "direct" and (self._direct is None or not single):
            raise ValueError(
                "method='direct' needs an NPE posterior with one observation; with iid "
                "observations the product of posteriors is sampled by 'slice' or 'nuts'"
            )
        return method

    def _default_chains(self, n: int) -> int:
        return min(n, 1000 if self.device.type == "cuda" else 100)

    def _target(self) -> Callable[[Tensor], Tensor]:
        return lambda theta: self._unnormalized(theta, self.x_obs, self.design_obs)

    def _initial_points(
        self,
        chains: int,
        x: Tensor,
        design: Tensor | None,
        *,
        batched: bool = False,
        per_chain: int = 10,
    ) -> Tensor:
        """Start points: ``max(per_chain·chains, 1000)`` prior draws resampled in proportion
        to their likelihood (sampling importance resampling), for the whole x, or with
        ``batched`` for each row of x on its own (observation-major ``[m * chains, d]``)."""
        groups = x.shape[0] if batched else 1
        k = max(per_chain * chains, 1000)
        theta = self.prior.sample((groups * k,)).to(self.device)
        with torch.no_grad():
            if groups == 1:
                log_w = self._unnormalized(theta, x, design) - self.prior_log_prob(theta)
            else:
                rows = torch.arange(groups, device=self.device).repeat_interleave(k)
                log_w = self._unnormalized(theta, x, design, rows) - self.prior_log_prob(theta)
        log_w = torch.nan_to_num(log_w.reshape(groups, k), nan=-math.inf, neginf=-math.inf)
        finite = torch.isfinite(log_w).any(1)
        if not bool(finite.all()):
            raise SimferError(
                f"the likelihood is −∞ or NaN at all {k} prior draws for {int((~finite).sum())} "
                f"observation(s): is x_obs far outside what the estimator was trained on?"
            )
        weights = torch.softmax(log_w, dim=1)
        picks = torch.multinomial(weights, chains, replacement=True)
        return (
            theta.reshape(groups, k, -1)
            .gather(1, picks[..., None].expand(-1, -1, self.theta_dim))
            .reshape(groups * chains, self.theta_dim)
        )

    # -- point estimate, device ---------------------------------------------------------------
    def map(
        self,
        *,
        n_starts: int = 16,
        steps: int = 300,
        learning_rate: float = 0.05,
        seed: int | None = 0,
    ) -> Tensor:
        """The maximum a posteriori θ ``[theta_dim]``: Adam on the log-density in the
        unconstrained space of the prior's support, from the ``n_starts`` best of 1000
        prior draws; the best end point wins."""
        transform = biject_to(self.prior.support)
        with seeded(seed) if seed is not None else contextlib.nullcontext():
            candidates = self.prior.sample((max(1000, n_starts),)).to(self.device)
        with torch.no_grad():
            start = candidates[self.log_prob(candidates).topk(n_starts).indices]
        unconstrained = transform.inv(start).detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([unconstrained], lr=learning_rate)
        for _ in range(steps):
            optimizer.zero_grad()
            loss = -self.log_prob(transform(unconstrained)).sum()
            if not loss.requires_grad:
                raise SimferError("map() needs a log-likelihood that is differentiable in θ")
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            end = transform(unconstrained)
            return end[self.log_prob(end).argmax()].detach()

    def to(self, device: str | torch.device) -> Posterior:
        """Move the observations, a `BoxUniform` prior and the estimator to ``device``."""
        self.device = torch.device(device)
        self.x_obs = self.x_obs.to(self.device)
        if self.design_obs is not None:
            self.design_obs = self.design_obs.to(self.device)
        if isinstance(self.prior, BoxUniform):
            self.prior = self.prior.to(self.device)
            self._prior_device = self.device
        if self.model is not None and hasattr(self.model, "to"):
            self.model.to(self.device)
        if self._reach is not None:
            self._reach = tuple(bound.to(self.device) for bound in self._reach)
        return self

    def __repr__(self) -> str:
        what = type(self.model).__name__ if self.model is not None else "a log-likelihood"
        return (
            f"Posterior(theta_dim={self.theta_dim}, {self.n_observations} observation(s), "
            f"from {what}, default method {self._method(None)!r})"
        )


def posterior_from_likelihood(
    log_likelihood: Callable[..., Tensor],
    prior: Distribution,
    x_obs: Any,
    *,
    x_shape: tuple[int, ...] | None = None,
    design: Any = None,
    design_dim: int | None = None,
    device: str | torch.device = "cpu",
) -> Posterior:
    """The posterior of an exact (or any) per-event log-likelihood, e.g. a simulator's
    ``log_likelihood(x [b, *x_shape], θ [b, d]) → [b]``, or with ``design`` (one
    ``[design_dim]`` or one per observation) ``log_likelihood(x, θ, design [b, k])``; x_obs
    is one observation, or ``[n, *x_shape]`` iid ones when ``x_shape`` is given (default:
    x_obs is one)."""
    x_obs = torch.as_tensor(x_obs)
    if x_shape is None:
        x_shape = tuple(x_obs.shape) if x_obs.ndim else (1,)
    if design is None:
        design_dim = 0
    elif design_dim is None:
        design_dim = int(torch.as_tensor(design).shape[-1]) if torch.as_tensor(design).ndim else 1

    def term(x: Tensor, theta: Tensor, d: Tensor | None) -> Tensor:
        return log_likelihood(x, theta) if d is None else log_likelihood(x, theta, d)

    return Posterior(
        prior,
        x_obs,
        term,
        x_shape=x_shape,
        design=design,
        design_dim=design_dim,
        device=device,
    )
