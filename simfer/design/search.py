r"""Design search: the best design in a continuous box, and batches of designs.

`search` finds argmax_d EIG(d) over a box [low, high] ⊂ R^D without derivatives: it
evaluates `simfer.design.eig` on a grid over the box (all points in one vectorised call),
shrinks the box around the best point by ``shrink`` and repeats ``n_zoom`` times.  Every
stage uses the same seed, so the same outer and inner θ and the same simulator noise:
the estimates of different stages are common-random-number comparisons and the zoom is
not fooled by Monte-Carlo noise between stages.  The final grid step is
(high − low)·shrink^n_zoom / (n_grid − 1) per axis.  It works for any source `eig`
accepts (black-box simulators with a likelihood, trained surrogates); a smooth EIG with
one basin is found to that step, a multimodal one as well as its first grid resolves.

`greedy_batch` chooses q experiments to run in parallel.  The joint EIG of a set of
designs, EIG(d_1..d_q) = I(θ; x_1..x_q), is submodular in the set for conditionally
independent outcomes (Krause & Guestrin 2005), so the greedy choice

    d_j = argmax_d EIG(d_1, …, d_{j−1}, d)

reaches at least (1 − 1/e) of the best batch's information.  Each step is one `eig` call
on a simulator whose design is the tuple (d_1, …, d_{j−1}, d) and whose outcome is the
tuple of outcomes (`JointExperiments`), with the exact likelihood the product over its
members.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from ..errors import ShapeError
from ..simulator import Simulator, TractableSimulator
from .methods import eig
from .result import EIGResult

__all__ = ["JointExperiments", "greedy_batch", "search"]


def search(
    source: Any,
    prior: Distribution,
    low: Any,
    high: Any,
    *,
    n_grid: int | None = None,
    n_zoom: int = 3,
    shrink: float = 0.25,
    seed: int = 0,
    **eig_options: Any,
) -> EIGResult:
    """argmax_d EIG(d) over the box [low, high] by grid zooming (module docstring).

    Args:
        source, prior, **eig_options: as for `simfer.design.eig`.
        low, high: the box's corners ``[design_dim]``.
        n_grid: grid points per axis (default 41 for one design variable, 11 for two, 6
            beyond).
        n_zoom: how many times the box shrinks around the best point.
        shrink: the factor each zoom multiplies the box's widths by.
        seed: the seed of every stage (common random numbers across stages).

    Returns:
        An `EIGResult` over every design evaluated, in order; ``best()`` is the search's
        answer and ``notes`` says the final resolution.
    """
    low = torch.as_tensor(low, dtype=torch.get_default_dtype()).reshape(-1)
    high = torch.as_tensor(high, dtype=torch.get_default_dtype()).reshape(-1)
    if low.shape != high.shape or not bool((high > low).all()):
        raise ShapeError(f"need low < high of one shape, got {low.tolist()} and {high.tolist()}")
    if not 0 < shrink < 1 or n_zoom < 0:
        raise ValueError(f"need 0 < shrink < 1 and n_zoom ≥ 0, got {shrink}, {n_zoom}")
    dim = low.shape[0]
    n_grid = n_grid or {1: 41, 2: 11}.get(dim, 6)
    if n_grid < 3:
        raise ValueError(f"n_grid must be at least 3, got {n_grid}")
    lo, hi = low.clone(), high.clone()
    results: list[EIGResult] = []
    for _ in range(n_zoom + 1):
        axes = [torch.linspace(float(a), float(b), n_grid) for a, b in zip(lo, hi, strict=True)]
        grid = torch.stack([torch.stack(p) for p in itertools.product(*axes)])
        result = eig(source, prior, grid, seed=seed, **eig_options)
        results.append(result)
        best, width = result.best().to(lo), (hi - lo) * shrink
        # the next box: centred on the best point, shifted to lie inside [low, high]
        lo = torch.minimum(torch.maximum(best - width / 2, low), high - width)
        hi = lo + width
    step = ((hi - lo) / (n_grid - 1)).tolist()
    merged = _concatenate(results)
    merged.notes.append(
        f"grid zoom: {n_zoom + 1} stages of {n_grid} points per axis, final step {step}"
    )
    return merged


def _concatenate(results: list[EIGResult]) -> EIGResult:
    def cat(name: str) -> Tensor | None:
        values = [getattr(r, name) for r in results]
        return None if any(v is None for v in values) else torch.cat(values)

    first = results[0]
    notes = [n for r in results for n in r.notes]
    return EIGResult(
        designs=cat("designs"),
        eig=cat("eig"),
        stderr=cat("stderr"),
        lower=cat("lower"),
        upper=cat("upper"),
        method=first.method,
        n_outer=first.n_outer,
        n_inner=first.n_inner,
        notes=list(dict.fromkeys(notes)),
    )


class JointExperiments(TractableSimulator):
    """q experiments of one simulator, run at once: design (d_1, …, d_q) ``[batch, q·D]``,
    outcome (x_1, …, x_q) ``[batch, q, *x_shape]`` drawn independently given θ, and
    log p(x_1..q|θ, d_1..q) = Σ_j log p(x_j|θ, d_j)."""

    def __init__(self, simulator: Simulator, q: int):
        if simulator.x_shape is None or None in simulator.x_shape:
            raise ShapeError("JointExperiments needs a simulator with a fixed x_shape")
        if not simulator.has_likelihood:
            raise ShapeError(f"simulator '{simulator.name}' has no tractable likelihood")
        super().__init__(
            simulator.theta_dim,
            (q, *simulator.x_shape),
            design_dim=q * simulator.design_dim,
            theta_support=simulator.theta_support,
            name=f"{q}×{simulator.name}",
        )
        self.simulator, self.q = simulator, int(q)

    def _designs(self, design: Tensor) -> list[Tensor]:
        k = self.simulator.design_dim
        return [design[:, j * k : (j + 1) * k] for j in range(self.q)]

    def sample(self, theta: Tensor, design: Tensor | None, generator: torch.Generator) -> Tensor:
        parts = [self.simulator.sample(theta, d, generator) for d in self._designs(design)]
        return torch.stack(parts, dim=1)

    def log_likelihood(self, x: Tensor, theta: Tensor, design: Tensor | None = None) -> Tensor:
        design = self.check_design(design, theta.shape[0], theta.device, theta.dtype)
        return sum(
            self.simulator.log_likelihood(x[:, j], theta, d)
            for j, d in enumerate(self._designs(design))
        )


def greedy_batch(
    simulator: Simulator,
    prior: Distribution,
    designs: Any,
    q: int,
    *,
    seed: int = 0,
    **eig_options: Any,
) -> tuple[Tensor, list[EIGResult]]:
    """q designs to run together, chosen greedily by joint EIG (module docstring).

    Returns the chosen designs ``[q, design_dim]`` and, per step, the `EIGResult` of the
    candidates joined to the designs chosen before (its values are joint EIGs)."""
    if not isinstance(q, int) or q < 1:
        raise ValueError(f"q must be a positive int, got {q!r}")
    designs = torch.as_tensor(designs, dtype=torch.get_default_dtype())
    if designs.ndim == 1 and simulator.design_dim == 1:
        designs = designs[:, None]
    chosen: list[Tensor] = []
    steps: list[EIGResult] = []
    for j in range(q):
        joint = simulator if j == 0 else JointExperiments(simulator, j + 1)
        before = torch.cat(chosen).reshape(1, -1).expand(designs.shape[0], -1) if chosen else None
        candidates = designs if before is None else torch.cat([before, designs], dim=1)
        result = eig(joint, prior, candidates, seed=seed, **eig_options)
        steps.append(result)
        chosen.append(designs[result.best_index])
    return torch.stack(chosen), steps
