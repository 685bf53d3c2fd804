r"""Posterior predictive checks: could the model, fitted to x_obs, have produced x_obs?

Draw θ_s ~ q(θ | x_obs), simulate a replicate data set x_rep,s ~ p(x | θ_s) of the same
size as x_obs (n events for n iid observations), and compare a statistic T of the data:
the posterior predictive p-value (Meng 1994, Ann. Stat. 22; Gelman, Meng & Stern 1996,
Stat. Sinica 6)

    p_T = P(T(x_rep) ≥ T(x_obs) | x_obs) ≈ (1/S) Σ_s 1[T(x_rep,s) ≥ T(x_obs)].

A p-value near 0 or 1 says the model cannot reproduce that feature of the data (a
mis-specified simulator, or an x_obs outside what the surrogate was trained on).  When
x_obs does come from the model, p_T is *not* uniform: it concentrates around ½, because
the posterior has seen x_obs, and P(p_T ≤ α) ≤ 2α (Meng 1994, Theorem 1), so the check
is conservative and a small p is strong evidence.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..errors import ShapeError

if TYPE_CHECKING:
    from ..inference.posterior import Posterior
    from ..simulator import Simulator

__all__ = ["PredictiveCheck", "posterior_predictive_check"]

Statistic = Callable[[Tensor], Tensor]
"""T(x ``[reps, n_events, *x_shape]``) → ``[reps]``: a statistic of a whole data set."""


@dataclass
class PredictiveCheck:
    """The outcome of `posterior_predictive_check`.

    names: the k statistics.  observed: ``[k]`` T(x_obs).  replicated: ``[S, k]``
    T(x_rep,s) for the valid replicates.  p_values: ``[k]`` P(T(x_rep) ≥ T(x_obs)).
    theta: ``[S, theta_dim]`` the posterior draws.  n_invalid: replicates dropped because
    the simulator returned NaN or inf for one of their events.
    """

    names: tuple[str, ...]
    observed: Tensor
    replicated: Tensor
    p_values: Tensor
    theta: Tensor
    n_invalid: int = 0

    @property
    def two_sided(self) -> Tensor:
        """``[k]`` 2·min(p, 1 − p), capped at 1."""
        return (2 * torch.minimum(self.p_values, 1 - self.p_values)).clamp_max(1.0)

    def extreme(self, alpha: float = 0.01) -> tuple[str, ...]:
        """The statistics whose two-sided p-value is below α."""
        return tuple(n for n, p in zip(self.names, self.two_sided, strict=True) if float(p) < alpha)

    def __repr__(self) -> str:
        p = ", ".join(
            f"{n}: {float(v):.3g}" for n, v in zip(self.names, self.p_values, strict=True)
        )
        return f"PredictiveCheck(S={self.replicated.shape[0]}, p-values {{{p}}})"


def _coordinate_means(x_shape: tuple[int, ...]) -> dict[str, Statistic]:
    """The default statistics: the mean over events of each coordinate of x."""
    size = 1
    for s in x_shape:
        size *= s

    def mean_of(j: int) -> Statistic:
        return lambda x: x.reshape(x.shape[0], x.shape[1], -1)[:, :, j].mean(1)

    return {f"x[{j}]": mean_of(j) for j in range(size)}


def posterior_predictive_check(
    posterior: Posterior,
    simulator: Simulator,
    x_obs: Any = None,
    *,
    n_samples: int = 1000,
    statistics: Mapping[str, Statistic] | None = None,
    design: Any = None,
    seed: int = 0,
    **sample_options: Any,
) -> PredictiveCheck:
    r"""Posterior predictive p-values of ``statistics`` for x_obs (default: the posterior's
    own observations, ``[n_events, *x_shape]``).

    Draws ``n_samples`` θ from ``posterior.sample`` (``sample_options`` go there), simulates
    one replicate data set of n_events events per θ with ``simulator.simulate(θ, design,
    seed=seed + 1)``, and returns P(T(x_rep) ≥ T(x_obs)) for each statistic T(x
    ``[reps, n_events, *x_shape]``) → ``[reps]`` (default: the mean over events of each
    coordinate of x, named ``x[j]``).  See the module docstring for how to read them.
    θ always comes from ``posterior`` (conditioned on its own x_obs); passing another
    x_obs asks whether the model fitted to the one data set reproduces the other.  The
    simulator runs n_samples × n_events times, in one call.
    """
    x_obs = posterior.x_obs if x_obs is None else torch.as_tensor(x_obs)
    x_obs = x_obs.to(posterior.device, torch.get_default_dtype())
    x_shape = posterior.x_shape
    if tuple(x_obs.shape) == x_shape:
        x_obs = x_obs[None]
    if tuple(x_obs.shape[1:]) != x_shape:
        shape = ", ".join(map(str, x_shape))
        raise ShapeError(f"x_obs must be [{shape}] or [n_events, {shape}], got {x_obs.shape}")
    statistics = dict(statistics) if statistics is not None else _coordinate_means(x_shape)
    if not statistics:
        raise ValueError("no statistics to check")

    theta = posterior.sample(n_samples, seed=seed, **sample_options)
    n_events = x_obs.shape[0]
    x_rep = simulator.simulate(theta.repeat_interleave(n_events, 0), design, seed=seed + 1)
    x_rep = torch.as_tensor(x_rep).to(x_obs.dtype).reshape(n_samples, n_events, *x_shape)
    valid = torch.isfinite(x_rep.reshape(n_samples, -1)).all(1)
    x_rep = x_rep[valid]
    if x_rep.shape[0] == 0:
        raise ValueError("every replicate holds a failed simulation (NaN or inf)")

    with torch.no_grad():
        observed = torch.stack([f(x_obs[None]).reshape(()) for f in statistics.values()])
        replicated = torch.stack(
            [f(x_rep).reshape(x_rep.shape[0]) for f in statistics.values()], dim=1
        )
    p_values = (replicated >= observed).double().mean(0)
    return PredictiveCheck(
        tuple(statistics),
        observed.cpu(),
        replicated.cpu(),
        p_values.cpu(),
        theta.cpu(),
        n_invalid=int((~valid).sum()),
    )
