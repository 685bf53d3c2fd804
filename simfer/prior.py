"""Priors over the parameters θ: `BoxUniform` and any torch or Pyro distribution.

A prior is any ``torch.distributions.Distribution`` whose samples have shape
``[n, theta_dim]`` (``event_shape == (theta_dim,)``).  `as_prior` turns the
common near-misses into that form: a scalar distribution becomes a 1-d prior,
and a distribution with ``batch_shape == (d,)`` (independent components, e.g.
``Normal(torch.zeros(3), 1.0)``) becomes a ``d``-dimensional one.  Pyro
distributions are torch distributions, so they work unchanged.

`BoxUniform(low, high)` is the product of uniforms on ``[low_i, high_i)``, with
density ``∏_i 1/(high_i − low_i)`` inside the box and ``log_prob = −inf``
outside (never an exception: samplers probe outside the box on purpose).

`LogitBox` maps such a box onto R^d, z = logit((θ − low)/(high − low)), so that an
estimator may learn a density on R^d whose every draw maps back inside the box.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Uniform

from .errors import ShapeError, SimferError, SupportError

__all__ = [
    "BoxUniform",
    "Empirical",
    "LogitBox",
    "TruncatedPrior",
    "as_prior",
    "check_in_support",
    "describe_prior",
    "distribution_device",
    "inside_support",
    "prior_from_description",
]


class BoxUniform(Independent):
    """Uniform prior on the box ``[low, high)`` in ``theta_dim`` dimensions.

    Args:
        low: lower corner, ``[theta_dim]``.
        high: upper corner, ``[theta_dim]``; every ``high_i > low_i``.
        device: where samples and log-densities live.
    """

    def __init__(
        self,
        low: Sequence[float] | Tensor,
        high: Sequence[float] | Tensor,
        device: str | torch.device | None = None,
    ):
        low_t = torch.as_tensor(low, dtype=torch.get_default_dtype(), device=device)
        high_t = torch.as_tensor(high, dtype=torch.get_default_dtype(), device=device)
        if low_t.ndim != 1 or high_t.shape != low_t.shape:
            raise ShapeError(
                f"BoxUniform needs low and high as two 1-d sequences of equal length "
                f"[theta_dim]; got shapes {list(low_t.shape)} and {list(high_t.shape)}."
            )
        if not (torch.isfinite(low_t).all() and torch.isfinite(high_t).all()):
            raise ValueError("BoxUniform bounds must be finite; use a Normal prior for R^d.")
        if not (high_t > low_t).all():
            bad = torch.nonzero(high_t <= low_t).flatten().tolist()
            raise ValueError(f"BoxUniform needs high > low in every dimension; not in {bad}.")
        super().__init__(Uniform(low_t, high_t, validate_args=False), 1, validate_args=False)

    @property
    def low(self) -> Tensor:
        return self.base_dist.low

    @property
    def high(self) -> Tensor:
        return self.base_dist.high

    def to(self, device: str | torch.device) -> BoxUniform:
        return BoxUniform(self.low, self.high, device=device)

    def __repr__(self) -> str:
        return f"BoxUniform(low={self.low.tolist()}, high={self.high.tolist()})"


class LogitBox:
    r"""The bijection from the box ``[low, high]`` onto R^d, coordinate by coordinate:

        u = (θ − low)/(high − low),   z = log u − log(1 − u),   θ = low + (high − low)·σ(z),

    with log |det ∂z/∂θ| = Σ_j −log(high_j − low_j) − log u_j − log(1 − u_j).  A density
    q_z on R^d is the density q(θ) = q_z(z(θ)) · |det ∂z/∂θ| on the box, and every draw of
    q_z maps inside it.  Computed in float64 with u clamped to [ε, 1 − ε], ε = 10⁻⁷ (|z| ≤
    16.1), so θ on a face of the box (a float32 uniform draw can be exactly ``low``)
    stays finite.  Shapes: θ and z ``[batch, d]``; the Jacobian term ``[batch]``.
    """

    EPS = 1e-7

    def __init__(self, low: Sequence[float], high: Sequence[float]):
        self.low = tuple(float(v) for v in low)
        self.high = tuple(float(v) for v in high)
        if len(self.low) != len(self.high) or not all(
            h > lo for lo, h in zip(self.low, self.high, strict=True)
        ):
            raise ValueError(f"LogitBox needs high > low in every dimension: {low}, {high}")

    def _bounds(self, like: Tensor) -> tuple[Tensor, Tensor]:
        low = torch.tensor(self.low, dtype=torch.float64, device=like.device)
        return low, torch.tensor(self.high, dtype=torch.float64, device=like.device) - low

    def _fraction(self, theta: Tensor) -> Tensor:
        low, width = self._bounds(theta)
        return ((theta.double() - low) / width).clamp(self.EPS, 1 - self.EPS)

    def to_real(self, theta: Tensor) -> Tensor:
        """z ``[batch, d]`` of θ ``[batch, d]`` in the box (θ's dtype)."""
        u = self._fraction(theta)
        return (torch.log(u) - torch.log1p(-u)).to(theta.dtype)

    def to_box(self, z: Tensor) -> Tensor:
        """θ ``[batch, d]`` of z ``[batch, d]``, inside the closed box (z's dtype)."""
        low, width = self._bounds(z)
        return (low + width * torch.sigmoid(z.double())).to(z.dtype)

    def log_abs_det(self, theta: Tensor) -> Tensor:
        """log |det ∂z/∂θ| ``[batch]`` at θ ``[batch, d]`` in the box (θ's dtype)."""
        _, width = self._bounds(theta)
        u = self._fraction(theta)
        return -(torch.log(width) + torch.log(u) + torch.log1p(-u)).sum(-1).to(theta.dtype)


class Empirical(Distribution):
    """The empirical distribution of draws θ_1 … θ_n ``[n, theta_dim]`` (posterior draws,
    say): `sample` resamples them uniformly with replacement.  It has no density (a sum
    of point masses), so ``log_prob`` raises; its support is that of ``support_of`` (the
    distribution the draws came from, e.g. the prior), or all of R^d.

    An experiment loop passes its current posterior draws as the "prior" of the next
    EIG: outer and contrastive θ then come from what is known now.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, draws: Tensor, support_of: Distribution | None = None):
        draws = torch.as_tensor(draws)
        if draws.ndim != 2 or draws.shape[0] < 1:
            raise ShapeError(f"draws must be [n, theta_dim] with n ≥ 1, got {list(draws.shape)}")
        self.draws = draws
        self._support_of = support_of
        super().__init__(torch.Size(), torch.Size(draws.shape[1:]), validate_args=False)

    @property
    def support(self):
        if self._support_of is not None:
            return self._support_of.support
        return torch.distributions.constraints.real_vector

    @property
    def mean(self) -> Tensor:
        return self.draws.mean(0)

    @property
    def variance(self) -> Tensor:
        return self.draws.var(0)

    def sample(self, sample_shape: torch.Size | Sequence[int] = ()) -> Tensor:
        shape = torch.Size(sample_shape)
        index = torch.randint(self.draws.shape[0], shape, device=self.draws.device)
        return self.draws[index]

    def log_prob(self, value: Tensor) -> Tensor:
        raise SimferError(
            "an empirical distribution (a set of draws) has no density; methods that need "
            "log p(θ) (the Barber–Agakov bound) cannot use it"
        )


class TruncatedPrior(Distribution):
    """The prior truncated to a region A = {θ : s(θ) ≥ τ}: p̃(θ) = p(θ) 1[θ ∈ A] / P_p(A).

    The region is the highest-probability region of a posterior estimate when s = log q
    (TSNPE's proposal, `simfer.sequential`), or a box (`TruncatedPrior.box`, the experiment
    loop's refinement).  `sample` draws by rejection from the prior.  Every proposal it
    makes updates the estimate of the region's prior mass P_p(A) (``prior_mass``, the
    acceptance rate), which normalises `log_prob`.

    Args:
        prior: the prior p(θ) (event shape ``[theta_dim]``).
        log_density: s, θ ``[batch, theta_dim]`` → ``[batch]``: a posterior's ``log_prob``
            (any constant offset is fine if τ was computed with the same one), or any score
            whose upper level set is the region.
        threshold: τ.
        n_pilot: prior draws tested at construction to estimate P_p(A).
        max_proposals: the most prior draws one `sample` call may test; it raises a
            `SimferError` beyond that (the region is too small for rejection).
        batch_size: prior draws tested at once.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(
        self,
        prior: Distribution,
        log_density: Callable[[Tensor], Tensor],
        threshold: float,
        *,
        n_pilot: int = 100_000,
        max_proposals: int = 10_000_000,
        batch_size: int = 100_000,
    ):
        self.prior = as_prior(prior)
        self.log_density = log_density
        self.threshold = float(threshold)
        self.max_proposals = int(max_proposals)
        self.batch_size = int(batch_size)
        super().__init__(torch.Size(), self.prior.event_shape, validate_args=False)
        self.n_proposed = 0
        self.n_accepted = 0
        if n_pilot > 0:
            self.contains(self.prior.sample((int(n_pilot),)), count=True)

    @classmethod
    def box(cls, prior: Distribution, low: Tensor, high: Tensor, **options) -> TruncatedPrior:
        """The prior truncated to the box [low, high] (each ``[theta_dim]``): s(θ) is the
        smallest distance to a face, negative outside, and τ = 0."""
        low, high = torch.as_tensor(low), torch.as_tensor(high)
        prior = as_prior(prior)
        if low.shape != prior.event_shape or high.shape != low.shape:
            raise ShapeError(
                f"low and high must be [{prior.event_shape[0]}], got {list(low.shape)} and "
                f"{list(high.shape)}"
            )
        if not bool((high > low).all()):
            raise ValueError("a truncation box needs high > low in every dimension")

        def margin(theta: Tensor) -> Tensor:
            lo, hi = low.to(theta), high.to(theta)
            return torch.minimum(theta - lo, hi - theta).amin(-1)

        return cls(prior, margin, 0.0, **options)

    @property
    def support(self):
        return self.prior.support

    @property
    def prior_mass(self) -> float:
        """P_p(A) estimated by the fraction of prior draws tested so far that fell in A."""
        if self.n_proposed == 0:
            return math.nan
        return self.n_accepted / self.n_proposed

    def contains(self, theta: Tensor, *, count: bool = False) -> Tensor:
        """``[batch]`` bool: whether each θ ``[batch, theta_dim]`` lies in the prior's support
        and in {log q ≥ τ}; with ``count`` the rows enter the ``prior_mass`` estimate."""
        inside = []
        with torch.no_grad():
            for rows in theta.split(self.batch_size):
                value = torch.as_tensor(self.log_density(rows)).to(rows.device)
                keep = inside_support(self.prior, rows) & (value >= self.threshold)
                inside.append(keep & ~torch.isnan(value))
        inside = torch.cat(inside) if inside else torch.zeros(0, dtype=torch.bool)
        if count:
            self.n_proposed += int(inside.numel())
            self.n_accepted += int(inside.sum())
        return inside

    def sample(self, sample_shape: torch.Size | Sequence[int] = ()) -> Tensor:
        shape = torch.Size(sample_shape)
        n = math.prod(shape)
        kept, n_kept, proposed = [], 0, 0
        while n_kept < n:
            rate = max(self.prior_mass if self.n_accepted else 0.0, 1 / max(self.n_proposed, 1))
            wanted = min(math.ceil(1.2 * (n - n_kept) / rate) + 16, self.batch_size)
            wanted = min(wanted, self.max_proposals - proposed)
            if wanted <= 0:
                raise SimferError(
                    f"only {n_kept} of {proposed} prior draws fell inside the truncation region "
                    f"(prior mass ≈ {self.prior_mass:.2e}): rejection from the prior cannot fill "
                    f"{n} draws within max_proposals={self.max_proposals:,}. The region is far "
                    f"smaller than the prior: use NLE or NRE with posterior proposals "
                    f"(truncation=None), or a prior closer to the posterior"
                )
            theta = self.prior.sample((wanted,))
            inside = self.contains(theta, count=True)
            kept.append(theta[inside])
            n_kept += int(inside.sum())
            proposed += wanted
        return torch.cat(kept)[:n].reshape(*shape, *self.event_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        """log p(θ) − log P_p(A) inside the region, −∞ outside ``[batch]``."""
        value = torch.as_tensor(value)
        flat = value.reshape(-1, *self.event_shape)
        log_p = self.prior.log_prob(flat) - math.log(self.prior_mass)
        inside = self.contains(flat).to(log_p.device)
        log_p = torch.where(inside, log_p, torch.full_like(log_p, -math.inf))
        return log_p.reshape(value.shape[: value.ndim - len(self.event_shape)])

    def __repr__(self) -> str:
        return (
            f"TruncatedPrior(threshold={self.threshold:.4g}, prior_mass≈{self.prior_mass:.3g}, "
            f"of {self.prior!r})"
        )


def as_prior(prior: Distribution, theta_dim: int | None = None) -> Distribution:
    """Return ``prior`` with ``event_shape == (theta_dim,)``, or raise a `ShapeError`."""
    if not isinstance(prior, Distribution):
        raise TypeError(
            f"a prior must be a torch.distributions.Distribution (Pyro's work too), "
            f"got {type(prior).__name__}; for a box use simfer.BoxUniform(low, high)."
        )
    event, batch = tuple(prior.event_shape), tuple(prior.batch_shape)
    if event == () and batch == ():
        prior = Independent(prior.expand((1,)), 1)
    elif event == () and len(batch) == 1:
        prior = Independent(prior, 1)
    elif len(event) != 1 or batch != ():
        raise ShapeError(
            f"a prior must describe one vector θ: event_shape (theta_dim,) and no batch "
            f"shape; got event_shape {event} and batch_shape {batch}."
        )
    if theta_dim is not None and prior.event_shape[0] != theta_dim:
        raise ShapeError(
            f"the prior is over {prior.event_shape[0]} parameters but the simulator "
            f"expects theta_dim={theta_dim}."
        )
    return prior


def _jsonable(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return repr(value)


def describe_prior(prior: Distribution) -> dict[str, Any]:
    """A JSON-able description of a prior (its type and parameters), for fingerprints."""
    if isinstance(prior, BoxUniform):
        return {"type": "BoxUniform", "low": _jsonable(prior.low), "high": _jsonable(prior.high)}
    description: dict[str, Any] = {"type": type(prior).__name__}
    if isinstance(prior, Independent):
        description["reinterpreted_batch_ndims"] = prior.reinterpreted_batch_ndims
        description["base"] = describe_prior(prior.base_dist)
        return description
    for name in sorted(getattr(prior, "arg_constraints", {})):
        if name in prior.__dict__ or hasattr(type(prior), name):
            try:
                description[name] = _jsonable(getattr(prior, name))
            except Exception:  # lazy properties of exotic distributions
                continue
    json.dumps(description)
    return description


def prior_from_description(description: dict | None) -> Distribution | None:
    """Rebuild a saved `BoxUniform` (the one prior a JSON description determines); None for
    any other description."""
    if description and description.get("type") == "BoxUniform":
        return BoxUniform(description["low"], description["high"])
    return None


def distribution_device(distribution: Distribution) -> torch.device:
    """The device a torch distribution's parameters live on (the first tensor among its
    attributes, or a wrapped base distribution's); the CPU for one without tensors."""
    for value in vars(distribution).values():
        if isinstance(value, Tensor):
            return value.device
        if isinstance(value, Distribution):
            return distribution_device(value)
    return torch.device("cpu")


def inside_support(prior: Distribution, theta: Tensor) -> Tensor:
    """``[batch]`` bool: which rows of θ ``[batch, d]`` lie in the prior's support (a prior
    whose support cannot be checked counts the rows where its log-density is finite; a
    prior left on the CPU is checked there)."""
    try:
        inside = prior.support.check(theta)
    except NotImplementedError:  # distributions without a checkable support
        inside = torch.isfinite(prior.log_prob(theta))
    except RuntimeError:
        if theta.device.type == "cpu":
            raise
        return inside_support(prior, theta.cpu()).to(theta.device)
    while inside.ndim > 1:
        inside = inside.all(-1)
    return inside


def check_in_support(prior: Distribution, theta: Tensor, what: str = "theta") -> None:
    """Raise a `SupportError` naming the rows of ``theta`` outside the prior's support."""
    inside = inside_support(prior, theta)
    if not bool(inside.all()):
        rows = torch.nonzero(~inside).flatten()
        first = theta[rows[0]].tolist()
        raise SupportError(
            f"{int(rows.numel())} of {theta.shape[0]} rows of {what} lie outside the prior's "
            f"support (first: row {int(rows[0])} = {first}). Draw θ from the prior, or widen it."
        )
