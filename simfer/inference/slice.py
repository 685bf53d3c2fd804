r"""A vectorised slice sampler: many chains advanced together, one batched call at a time.

Every move is a one-dimensional slice update along a direction η (Neal 2003, *Slice
sampling*, Ann. Stat. 31, §4): with the current point θ and log-density f,

1. draw the slice level  log y = f(θ) − E,  E ~ Exponential(1);
2. place the interval [−u, 1 − u] (u ~ U(0,1)) in t around 0 along θ + t η, and step
   each end out by 1 while f is above the level there (at most ``max_step_out`` steps in
   all, split at random between the two ends as Neal's Fig. 3 prescribes);
3. draw t uniformly in the interval; accept θ + t η if f is above the level, else shrink
   the interval to t's side of 0 and draw again (at most ``max_shrink`` times).

Two kinds of direction, used alone or both in every sweep (``move="mixed"``, the default
when there are enough chains; a cycle of two kernels that each leave f invariant leaves
it invariant too).  On a 10-d Gaussian the coordinate moves give ~5× more effective
samples per second than the differential ones, on a curved banana the differential
ones ~3× more (docs/benchmarks.md); the mixture costs one more update per sweep and
keeps both strengths:

* ``"differential"`` (ensemble slice sampling, Karamanis & Beutler 2021, arXiv:2002.06212):
  the chains are split in two halves; a chain of one half moves along η = μ (θ_a − θ_b),
  the difference of two random chains of the *other* half.  Those chains do not move
  during the update, so η does not depend on the moving chain and the update leaves f
  invariant; the directions follow the shape of the distribution (correlations,
  curved ridges, several modes), and μ adapts during warm-up to keep stepping out and
  shrinking balanced: μ ← 2μ·N_out / (N_out + N_shrink).
* ``"coordinate"``: η = w_j e_j for each coordinate j in turn, with per-chain widths w
  adapting during warm-up to the intervals accepted in.  Used when there are too few
  chains for the differential move (fewer than 2·(dim + 1) per group).

Each step is one batched call of f on the chains still working: hundreds of chains cost
little more than one on a CPU, thousands on a GPU.  Adaptation stops after warm-up, so
the kept draws come from a valid Markov chain.  f may be −∞ (outside a prior's support).
Chains may form independent groups (``groups``: one posterior per observation in
`Posterior.sample_batched`); differential directions come from the chain's own group.
An update that finds no point above the level within ``max_shrink`` draws leaves the
chain where it is (the identity move, which keeps f invariant); such ``stuck`` updates
are counted: many say f is not a continuous density there (NaN, a spike).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

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

    chains: kept draws ``[n_chains, n_draws, dim]``.
    log_density: f at the kept draws ``[n_chains, n_draws]``.
    r_hat, ess: split R̂ and bulk effective sample size per dimension (None when there are
        fewer than 4 draws per chain).
    evaluations: calls of f per chain and update, on average.
    stuck: updates that found no point on the slice (identity moves).
    move: ``"mixed"``, ``"differential"`` or ``"coordinate"``.
    seconds: wall time.
    """

    chains: Tensor
    log_density: Tensor
    r_hat: Tensor | None
    ess: Tensor | None
    evaluations: float
    stuck: int
    move: str
    seconds: float

    def summary(self) -> dict:
        return {
            "n_chains": self.chains.shape[0],
            "draws_per_chain": self.chains.shape[1],
            "move": self.move,
            "r_hat_max": None if self.r_hat is None else float(self.r_hat.max()),
            "ess_min": None if self.ess is None else float(self.ess.min()),
            "evaluations_per_update": self.evaluations,
            "stuck_updates": self.stuck,
            "seconds": self.seconds,
        }


def log_density_rows(log_density: LogDensity, theta: Tensor, rows: Tensor) -> Tensor:
    """f at ``theta`` ``[k, d]`` for the chains ``rows`` ``[k]``, NaN read as −∞."""
    with torch.no_grad():
        value = log_density(theta, rows)
    return torch.nan_to_num(value, nan=-math.inf, neginf=-math.inf, posinf=math.inf)


class _Slicer:
    """The state of all chains and the one-dimensional slice update along directions."""

    def __init__(self, log_density, theta, generator, max_step_out, max_shrink):
        self.log_density, self.theta, self.generator = log_density, theta, generator
        self.max_step_out, self.max_shrink = max_step_out, max_shrink
        every = torch.arange(theta.shape[0], device=theta.device)
        self.current = log_density_rows(log_density, theta, every)
        self.evaluations = self.updates = self.stuck = 0

    def uniform(self, n: int) -> Tensor:
        theta = self.theta
        return torch.rand(n, generator=self.generator, device=theta.device, dtype=theta.dtype)

    def f(self, rows: Tensor, t: Tensor, direction: Tensor) -> Tensor:
        self.evaluations += rows.numel()
        point = self.theta[rows] + t[:, None] * direction
        return log_density_rows(self.log_density, point, rows)

    def update(self, rows: Tensor, direction: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Slice-update chains ``rows`` along ``direction`` ``[k, d]``; returns the
        steps out and shrinks per chain and the accepted bracket length (in t)."""
        k = rows.numel()
        level = self.current[rows] - torch.empty(k, dtype=self.theta.dtype).exponential_(
            generator=self.generator
        ).to(self.theta.device)
        left = -self.uniform(k)
        right = left + 1
        budget_left = torch.floor(self.max_step_out * self.uniform(k))
        budget_right = self.max_step_out - 1 - budget_left
        steps_out = torch.zeros_like(left)
        for end, budget, sign in ((left, budget_left, -1.0), (right, budget_right, 1.0)):
            active = torch.arange(k, device=rows.device)
            while active.numel():
                active = active[budget[active] > 0]
                if not active.numel():
                    break
                above = self.f(rows[active], end[active], direction[active]) > level[active]
                active = active[above]
                end[active] += sign
                budget[active] -= 1
                steps_out[active] += 1
        shrinks = torch.zeros_like(left)
        size = right - left
        active = torch.arange(k, device=rows.device)
        for _ in range(self.max_shrink):
            t = left[active] + (right[active] - left[active]) * self.uniform(active.numel())
            value = self.f(rows[active], t, direction[active])
            accept = value > level[active]
            done = active[accept]
            self.theta[rows[done]] += t[accept, None] * direction[done]
            self.current[rows[done]] = value[accept]
            size[done] = right[done] - left[done]
            miss, t_miss = active[~accept], t[~accept]
            shrinks[miss] += 1
            below = t_miss < 0
            left[miss[below]] = t_miss[below]
            right[miss[~below]] = t_miss[~below]
            active = miss
            if not active.numel():
                break
        self.stuck += active.numel()
        self.updates += k
        return steps_out, shrinks, size


def slice_sample(
    log_density: LogDensity,
    init: Tensor,
    n_draws: int,
    *,
    warmup: int = 100,
    thin: int = 1,
    move: str = "auto",
    groups: int = 1,
    width: Tensor | float | None = None,
    max_step_out: int = 32,
    max_shrink: int = 64,
    generator: torch.Generator | None = None,
    max_seconds: float | None = None,
    progress: bool = False,
) -> SliceResult:
    """Run ``init.shape[0]`` chains from ``init`` ``[n_chains, dim]`` (all with finite f).

    Returns ``n_draws`` draws per chain after ``warmup`` sweeps, keeping every
    ``thin``-th sweep.  ``groups``: the chains form that many equal consecutive groups
    sampling different densities.  ``move``: ``"mixed"``, ``"differential"``,
    ``"coordinate"`` or ``"auto"`` (mixed when each group has ≥ 2·(dim + 1) chains, else
    coordinate).  ``width``:
    initial coordinate widths (float, ``[dim]`` or ``[n_chains, dim]``; default twice
    the chains' spread).  ``max_seconds`` bounds the wall time: past it a `SimferError`
    says how far the run got.
    """
    if init.ndim != 2:
        raise ValueError(f"init must be [n_chains, dim], got {list(init.shape)}")
    if n_draws < 1 or warmup < 0 or thin < 1:
        raise ValueError("n_draws ≥ 1, warmup ≥ 0 and thin ≥ 1 are required")
    n_chains, dim = init.shape
    if n_chains % groups:
        raise ValueError(f"{n_chains} chains do not split into {groups} equal groups")
    per_group = n_chains // groups
    if move == "auto":
        move = "mixed" if per_group >= 2 * (dim + 1) else "coordinate"
    if move not in ("differential", "coordinate", "mixed"):
        raise ValueError(
            f"move must be 'mixed', 'differential', 'coordinate' or 'auto', got {move!r}"
        )
    if move != "coordinate" and per_group < 4:
        raise ValueError(f"the {move} move needs at least 4 chains per group")
    state = _Slicer(log_density, init.detach().clone(), generator, max_step_out, max_shrink)
    theta, device = state.theta, init.device
    if not bool(torch.isfinite(state.current).all()):
        bad = int((~torch.isfinite(state.current)).sum())
        raise SimferError(
            f"{bad} of {n_chains} chains start where the log-density is not finite; start "
            f"them inside the support, where the posterior has mass"
        )
    if width is None:
        spread = theta.std(0) if n_chains > 1 else torch.ones_like(theta[0])
        width = torch.where(spread > 0, 2 * spread, torch.ones_like(spread))
    width = torch.as_tensor(width, dtype=theta.dtype, device=device)
    width = width.expand(n_chains, dim).clone()
    scale = torch.ones(groups, dtype=theta.dtype, device=device)  # μ of the differential move
    half = per_group // 2
    position = torch.arange(n_chains, device=device) % per_group
    group_of = torch.arange(n_chains, device=device) // per_group
    halves = [torch.nonzero(position < half).flatten(), torch.nonzero(position >= half).flatten()]

    kept, kept_density = [], []
    sweeps = warmup + n_draws * thin
    start = time.perf_counter()
    for sweep in tqdm(range(sweeps), desc="slice sampling", disable=not progress, leave=False):
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            raise SimferError(
                f"slice sampling ran out of its time budget ({max_seconds:g} s) after {sweep} "
                f"of {sweeps} sweeps ({state.evaluations / max(state.updates, 1):.1f} "
                f"evaluations per update): raise max_seconds, draw fewer samples, or use "
                f"fewer chains"
            )
        adapting = sweep < warmup
        if move in ("differential", "mixed"):
            for moving, other in (halves, halves[::-1]):
                size = other.numel() // groups  # partners: two distinct chains of `other`
                base = group_of[moving] * per_group + (0 if other is halves[0] else half)
                a = torch.randint(size, (moving.numel(),), generator=generator).to(device)
                b = torch.randint(size - 1, (moving.numel(),), generator=generator).to(device)
                b = b + (b >= a).long()
                direction = theta[base + a] - theta[base + b]
                direction = scale[group_of[moving], None] * direction
                steps_out, shrinks, _ = state.update(moving, direction)
                if adapting:
                    out = torch.zeros(groups, dtype=theta.dtype, device=device)
                    shrunk = torch.zeros_like(out)
                    out.index_add_(0, group_of[moving], steps_out)
                    shrunk.index_add_(0, group_of[moving], shrinks)
                    scale *= torch.where(out + shrunk > 0, 2 * out / (out + shrunk), 1.0).clamp(
                        0.5, 2.0
                    )
        if move in ("coordinate", "mixed"):
            every = torch.arange(n_chains, device=device)
            for j in torch.randperm(dim, generator=generator).tolist():
                direction = torch.zeros_like(theta)
                direction[:, j] = width[:, j]
                _, _, size = state.update(every, direction)
                if adapting:
                    width[:, j] = 0.8 * width[:, j] + 0.2 * (size * width[:, j]).clamp_min(1e-12)
        if not adapting and (sweep - warmup + 1) % thin == 0:
            kept.append(theta.clone())
            kept_density.append(state.current.clone())
    chains = torch.stack(kept, dim=1)
    r_hat = ess = None
    if chains.shape[1] >= 4:
        grouped = chains.reshape(groups, per_group, *chains.shape[1:])
        r_hat = torch.stack([split_r_hat(g) for g in grouped]).amax(0)
        ess = torch.stack([effective_sample_size(g) for g in grouped]).amin(0)
    return SliceResult(
        chains=chains,
        log_density=torch.stack(kept_density, dim=1),
        r_hat=r_hat,
        ess=ess,
        evaluations=state.evaluations / max(state.updates, 1),
        stuck=state.stuck,
        move=move,
        seconds=time.perf_counter() - start,
    )
