r"""A vectorised slice sampler: many independent chains advanced together.

One update of coordinate j of one chain (Neal 2003, *Slice sampling*, Ann. Stat. 31,
§4, "stepping out" and "shrinkage"): with the current point θ and log-density f,

1. draw the slice level  log y = f(θ) − E,  E ~ Exponential(1);
2. place an interval of width w_j at random around θ_j, and step each end out by w_j
   while f is above the level there (at most ``max_step_out`` steps a side);
3. draw θ'_j uniformly in the interval; accept if f(θ') > log y, else shrink the
   interval to θ'_j's side and draw again (at most ``max_shrink`` times).

The update leaves the density invariant for any fixed w; w only sets the cost.  Every
chain runs the same steps on its own interval, so a step is one batched call of f on the
chains still working: hundreds of chains cost little more than one on a CPU, thousands
on a GPU.  During warm-up each chain's widths adapt to the size of the intervals it
accepts in, then stay fixed, so the kept draws come from a valid Markov chain.  f may be
−∞ (outside a prior's support): the interval simply never extends there.

A chain that fails to find a point above the level within ``max_shrink`` draws stays
where it is for that coordinate (this keeps the invariance: it is the identity move);
the number of such failures is reported, and a large one means f is not a continuous
density (NaN, a spike) at that place.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import SimferError
from .chains import effective_sample_size, split_r_hat

__all__ = ["SliceResult", "slice_sample"]

LogDensity = Callable[[Tensor, Tensor], Tensor]
"""f(θ ``[k, d]``, chain ``[k]`` indices) → log-density ``[k]``; −∞ outside the support."""


@dataclass
class SliceResult:
    """What `slice_sample` returns.

    chains: kept draws ``[num_chains, num_draws, dim]``.
    log_density: f at the kept draws ``[num_chains, num_draws]``.
    r_hat, ess: split R̂ and bulk effective sample size per dimension (None when too few
        draws per chain to compute them).
    evaluations: calls of f per chain and coordinate update, on average.
    stuck: coordinate updates that found no point on the slice (identity moves).
    seconds: wall time.
    """

    chains: Tensor
    log_density: Tensor
    r_hat: Tensor | None
    ess: Tensor | None
    evaluations: float
    stuck: int
    seconds: float
    width: Tensor = field(repr=False, default=None)

    def summary(self) -> dict:
        return {
            "num_chains": self.chains.shape[0],
            "draws_per_chain": self.chains.shape[1],
            "r_hat_max": None if self.r_hat is None else float(self.r_hat.max()),
            "ess_min": None if self.ess is None else float(self.ess.min()),
            "evaluations_per_update": self.evaluations,
            "stuck_updates": self.stuck,
            "seconds": self.seconds,
        }


def slice_sample(
    log_density: LogDensity,
    init: Tensor,
    num_draws: int,
    *,
    warmup: int = 100,
    thin: int = 1,
    width: Tensor | float | None = None,
    max_step_out: int = 32,
    max_shrink: int = 64,
    generator: torch.Generator | None = None,
    max_seconds: float | None = None,
    progress: bool = False,
) -> SliceResult:
    """Run ``init.shape[0]`` chains from ``init`` ``[num_chains, dim]`` (all with finite f).

    Returns ``num_draws`` draws per chain after ``warmup`` sweeps, keeping every
    ``thin``-th sweep.  ``width``: initial interval widths (a float, ``[dim]`` or
    ``[num_chains, dim]``); by default the chains' spread, or 1.  ``max_seconds`` bounds
    the wall time: past it a `SimferError` says how far the run got.
    """
    if init.ndim != 2:
        raise ValueError(f"init must be [num_chains, dim], got {list(init.shape)}")
    if num_draws < 1 or warmup < 0 or thin < 1:
        raise ValueError("num_draws ≥ 1, warmup ≥ 0 and thin ≥ 1 are required")
    theta = init.detach().clone()
    num_chains, dim = theta.shape
    device, dtype = theta.device, theta.dtype
    every = torch.arange(num_chains, device=device)
    current = log_density_rows(log_density, theta, every)
    if not bool(torch.isfinite(current).all()):
        bad = int((~torch.isfinite(current)).sum())
        raise SimferError(
            f"{bad} of {num_chains} chains start where the log-density is not finite; start "
            f"them inside the support, where the posterior has mass"
        )
    if width is None:
        spread = theta.std(0) if num_chains > 1 else torch.ones(dim, dtype=dtype, device=device)
        width = torch.where(spread > 0, 2 * spread, torch.ones_like(spread))
    width = torch.as_tensor(width, dtype=dtype, device=device).expand(num_chains, dim).clone()

    def uniform(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, device=device, dtype=dtype)

    kept, kept_density = [], []
    evaluations, updates, stuck = 0, 0, 0
    sweeps = warmup + num_draws * thin
    start = time.perf_counter()
    for sweep in tqdm(range(sweeps), desc="slice sampling", disable=not progress, leave=False):
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            raise SimferError(
                f"slice sampling ran out of its time budget ({max_seconds:g} s) after {sweep} "
                f"of {sweeps} sweeps ({evaluations / max(updates, 1):.1f} evaluations per "
                f"update): raise max_seconds, draw fewer samples, or use fewer chains"
            )
        for j in torch.randperm(dim, generator=generator, device="cpu").tolist():
            level = current - torch.empty_like(current).exponential_(generator=generator)
            w = width[:, j]
            left = theta[:, j] - w * uniform(num_chains)
            right = left + w
            for end, step in ((left, -1.0), (right, 1.0)):
                active = every
                for _ in range(max_step_out):
                    probe = theta[active].clone()
                    probe[:, j] = end[active]
                    value = log_density_rows(log_density, probe, active)
                    evaluations += active.numel()
                    outside = value > level[active]
                    active = active[outside]
                    if active.numel() == 0:
                        break
                    end[active] += step * w[active]
            lower, upper = left.clone(), right.clone()
            active = every
            for _ in range(max_shrink):
                proposal = lower[active] + (upper[active] - lower[active]) * uniform(active.numel())
                probe = theta[active].clone()
                probe[:, j] = proposal
                value = log_density_rows(log_density, probe, active)
                evaluations += active.numel()
                accept = value > level[active]
                rows = active[accept]
                theta[rows, j] = proposal[accept]
                current[rows] = value[accept]
                if sweep < warmup:  # adapt the width to the accepted interval's size
                    size = (upper[rows] - lower[rows]).clamp_min(1e-12)
                    width[rows, j] = 0.8 * width[rows, j] + 0.2 * size
                reject = ~accept
                below = proposal[reject] < theta[active[reject], j]
                moved = active[reject]
                lower[moved[below]] = proposal[reject][below]
                upper[moved[~below]] = proposal[reject][~below]
                active = moved
                if active.numel() == 0:
                    break
            stuck += active.numel()
            updates += num_chains
        if sweep >= warmup and (sweep - warmup + 1) % thin == 0:
            kept.append(theta.clone())
            kept_density.append(current.clone())
    chains = torch.stack(kept, dim=1)
    r_hat = ess = None
    if chains.shape[1] >= 4:
        r_hat, ess = split_r_hat(chains), effective_sample_size(chains)
    return SliceResult(
        chains=chains,
        log_density=torch.stack(kept_density, dim=1),
        r_hat=r_hat,
        ess=ess,
        evaluations=evaluations / max(updates, 1),
        stuck=stuck,
        seconds=time.perf_counter() - start,
        width=width,
    )


def log_density_rows(log_density: LogDensity, theta: Tensor, rows: Tensor) -> Tensor:
    """f at ``theta`` ``[k, d]`` for the chains ``rows`` ``[k]``, NaN read as −∞."""
    with torch.no_grad():
        value = log_density(theta, rows)
    return torch.nan_to_num(value, nan=-math.inf)
