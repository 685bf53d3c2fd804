r"""Rejection sampling from the prior: exact draws of p(θ|x) ∝ p(θ) L(θ).

Propose θ ~ p(θ) and accept with probability L(θ)/M, M ≥ max L.  M is not known in
advance, so it is the largest L seen so far: a pilot batch sets it, and whenever a batch
holds a larger value M' every draw already accepted is kept with probability M/M' (and
the batch is judged against M').  Each kept draw has then been accepted with probability
L(θ)/M_final, M_final ≥ L at every proposal made: the kept draws are exact draws of the
posterior restricted to where the proposals have been.

The acceptance rate is ∫p(θ)L(θ)dθ / M, small when the posterior is much narrower than
the prior (many iid events); below ``min_acceptance`` the sampler stops and says so.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution

from ..errors import SimferError

__all__ = ["rejection_sample"]


def rejection_sample(
    log_target: Callable[[Tensor], Tensor],
    prior: Distribution,
    n: int,
    *,
    batch_size: int = 10_000,
    max_proposals: int = 10_000_000,
    min_acceptance: float = 1e-4,
    max_seconds: float | None = None,
) -> tuple[Tensor, dict]:
    """n exact draws ``[n, theta_dim]`` of exp(log_target) = p(θ)·L(θ) (unnormalised),
    with prior proposals; returns the draws and ``{"acceptance_rate", "proposals"}``."""
    start = time.perf_counter()
    accepted: list[Tensor] = []
    n_accepted, proposals, bound = 0, 0, -math.inf
    while n_accepted < n:
        theta = prior.sample((batch_size,))
        with torch.no_grad():
            log_l = torch.nan_to_num(
                log_target(theta) - prior.log_prob(theta), nan=-math.inf, neginf=-math.inf
            )
        proposals += batch_size
        new_bound = max(bound, float(log_l.max()))
        if new_bound > bound and accepted:  # re-judge earlier acceptances against M'
            keep = math.exp(bound - new_bound)
            accepted = [a[torch.rand(a.shape[0], device=a.device) < keep] for a in accepted]
        bound = new_bound
        if bound > -math.inf:
            take = torch.rand(batch_size, device=theta.device).log() < log_l - bound
            accepted.append(theta[take])
        n_accepted = sum(a.shape[0] for a in accepted)
        rate = n_accepted / proposals
        if proposals >= 100_000 and rate < min_acceptance or proposals >= max_proposals:
            raise SimferError(
                f"rejection sampling accepted {n_accepted} of {proposals} prior proposals "
                f"({rate:.2e}; min_acceptance={min_acceptance:g}, max_proposals="
                f"{max_proposals:g}): the posterior is far narrower than the prior. "
                f"Use method='slice' (or 'nuts'), which does not propose from the prior"
            )
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            raise SimferError(
                f"rejection sampling ran out of its time budget ({max_seconds:g} s) with "
                f"{n_accepted} of {n} draws (acceptance {rate:.2e}); use method='slice'"
            )
    draws = torch.cat(accepted)[:n]
    return draws, {"acceptance_rate": n_accepted / proposals, "proposals": proposals}
