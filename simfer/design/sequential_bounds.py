r"""sPCE and sNMC: bounds on the total information a design policy gathers.

A sequential policy π chooses each design from what it has seen, ξ_t = π(h_{t−1}), with
the history h_t = (ξ_1, y_1, …, ξ_t, y_t).  Its quality is the total expected information
gain of its T experiments, the mutual information between θ and the whole history,

    I_T(π) = E_{p(θ) p(h_T|θ,π)} [ log p(h_T|θ,π) − log p(h_T|π) ],
    p(h_T|θ,π) = Π_t p(y_t|θ, ξ_t)

(the policy's own factors cancel: given h_{t−1} the design is fixed, so only the
likelihood of the outcomes remains).  Foster, Ivanova, Malik & Rainforth ("Deep Adaptive
Design", ICML 2021, arXiv:2103.02438, Theorem 2) bracket it with L contrastive samples
θ_1..L ~ p(θ), drawn fresh for every rollout θ_0 ~ p(θ), h_T ~ p(h_T|θ_0, π):

    sPCE_L = E[ log p(h_T|θ_0) − log (1/(L+1)) Σ_{l=0..L} p(h_T|θ_l) ]  ≤ I_T(π),
    sNMC_L = E[ log p(h_T|θ_0) − log (1/L)     Σ_{l=1..L} p(h_T|θ_l) ]  ≥ I_T(π).

Both are the nested estimators of `simfer.design.nmc` applied to the whole history (one
outer sample per rollout), so they share their properties: sPCE increases and sNMC
decreases monotonically in L; every sPCE term is ≤ log(L + 1), so sPCE saturates there
when the information is larger; near the truth (L ≫ e^{I_T}) both gaps shrink as O(1/L),
each about (E_{p(θ,h)}[p(h|θ)/p(h)] − 1)/(2L).  Their difference per rollout,
log(1 + p(h|θ_0)/Σ_l p(h|θ_l)) − log(1 + 1/L), is a computable upper bound on either gap
in expectation.

The evaluation needs only the rollouts (true θ_0, designs, outcomes) and the likelihood,
not the policy: any policy's rollouts are scored the same way, which is what makes the
bounds comparable across policies.

Cost and memory: R·(L + 1)·T likelihood evaluations, in blocks of ``[rollouts, inner]``
points whose θ fit ``max_memory`` elements; the logsumexp over l is accumulated across
blocks (float64), so L = 10⁵–10⁶ fits in any memory.  A likelihood with a pairwise path
(``pairwise_log_likelihood(x [c, N, *x_shape], θ [c, M, p], ξ [c, D]) -> [c, N, M]``, as
`simulators.LocationFinding` and `simulators.LinearGaussianDesign` have, or a
`LikelihoodModel` with ``pairwise``) is evaluated per step as a [rollouts, 1, inner] block
without copying the outcome; any other is called row by row on gathered rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution
from tqdm.auto import tqdm

from ..errors import ShapeError
from ..seeding import seeded
from .nmc import LikelihoodModel, mean_and_stderr, nested_terms_from_logsumexp

__all__ = ["SequentialBounds", "history_log_likelihood", "sequential_bounds"]

HistoryLikelihood = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass
class SequentialBounds:
    """sPCE (lower) and sNMC (upper) bounds on the total EIG of a policy, with standard
    errors over rollouts.

    Attributes:
        spce, spce_stderr, snmc, snmc_stderr: the estimates in nats and their standard
            errors (standard deviation of the per-rollout terms over √R).
        spce_terms, snmc_terms: the per-rollout terms ``[R]`` (float64, CPU); NaN where a
            term was not finite (left out, counted in ``dropped``).
        n_inner: L, the contrastive samples per rollout.
        dropped: rollouts left out because a term was not finite.
    """

    spce: float
    spce_stderr: float
    snmc: float
    snmc_stderr: float
    spce_terms: Tensor = field(repr=False)
    snmc_terms: Tensor = field(repr=False)
    n_inner: int = 0
    dropped: int = 0

    @property
    def n_rollouts(self) -> int:
        return int(self.spce_terms.shape[0])

    @property
    def saturated(self) -> bool:
        """Whether sPCE is within 10 % of its cap log(L + 1): then it says only that the
        information is at least about that much; raise L."""
        return self.spce >= 0.9 * math.log(self.n_inner + 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "spce": self.spce,
            "spce_stderr": self.spce_stderr,
            "snmc": self.snmc,
            "snmc_stderr": self.snmc_stderr,
            "n_inner": self.n_inner,
            "n_rollouts": self.n_rollouts,
            "dropped": self.dropped,
        }


def sequential_bounds(
    likelihood: Any,
    prior: Distribution,
    theta: Tensor,
    designs: Tensor,
    outcomes: Tensor,
    *,
    n_inner: int,
    seed: int = 0,
    max_memory: int = 2**22,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> SequentialBounds:
    """sPCE and sNMC of R rollouts of T experiments each (module docstring).

    Args:
        likelihood: the per-experiment log p(y|θ, ξ): a `simfer.Simulator` with a
            tractable likelihood, a `simfer.design.LikelihoodModel`, or a callable
            ``(x [B, *x_shape], theta [B, p], design [B, D]) -> [B]``.  The pairwise path
            ``pairwise_log_likelihood`` (or ``LikelihoodModel.pairwise``) is used when
            there is one.
        prior: p(θ), the law of the true θ_0 and of the contrastive θ_1..L.  Sampling is
            fastest with a prior that lives on ``device``.
        theta: the true θ_0 of each rollout ``[R, p]``.
        designs: ``[R, T, D]``, ξ_t of each rollout.
        outcomes: ``[R, T, *x_shape]``, y_t of each rollout (``[R, T]`` for scalar y).
        n_inner: L ≥ 1, the contrastive samples per rollout (fresh for each rollout).
        seed: seeds the contrastive samples (the same seed gives the same bounds).
        max_memory: the most θ elements (``rollouts × inner × p``) one block holds.
        device: where the likelihood is evaluated (default: θ's device).
        progress: a tqdm bar over the blocks.

    Returns:
        A `SequentialBounds`.
    """
    history = _history_likelihood(likelihood)
    theta, designs, outcomes = _checked(theta, designs, outcomes, likelihood)
    if not isinstance(n_inner, int) or n_inner < 1:
        raise ValueError(f"n_inner must be a positive int (L contrastive samples), got {n_inner!r}")
    device = theta.device if device is None else torch.device(device)
    theta, designs, outcomes = theta.to(device), designs.to(device), outcomes.to(device)
    n_rollouts, p = theta.shape

    log_p_true = history(outcomes, theta[:, None, :], designs)[:, 0].double()  # [R]
    rollouts_per_block = max(1, min(n_rollouts, int(max_memory) // (p * min(n_inner, 1024))))
    inner_per_block = max(1, min(n_inner, int(max_memory) // (p * rollouts_per_block)))
    inner_lse = torch.full((n_rollouts,), -math.inf, dtype=torch.float64, device=device)
    blocks = math.ceil(n_rollouts / rollouts_per_block) * math.ceil(n_inner / inner_per_block)
    bar = tqdm(total=blocks, desc="sPCE/sNMC", unit="block", disable=not progress, leave=False)
    try:
        with seeded(seed):
            for a in range(0, n_rollouts, rollouts_per_block):
                rows = slice(a, min(a + rollouts_per_block, n_rollouts))
                count = rows.stop - rows.start
                for start in range(0, n_inner, inner_per_block):
                    size = min(inner_per_block, n_inner - start)
                    contrastive = prior.sample((count, size)).to(device=device, dtype=theta.dtype)
                    if contrastive.shape != (count, size, p):
                        raise ShapeError(
                            f"prior.sample((R, L)) must give [R, L, {p}], got "
                            f"{list(contrastive.shape)}: a prior over θ of {p} dimensions"
                        )
                    log_p = history(outcomes[rows], contrastive, designs[rows])
                    block_lse = torch.logsumexp(log_p, dim=-1).double()
                    inner_lse[rows] = torch.logaddexp(inner_lse[rows], block_lse)
                    bar.update(1)
    finally:
        bar.close()
    snmc, spce = nested_terms_from_logsumexp(log_p_true, inner_lse, n_inner)
    values = torch.stack([spce, snmc]).cpu()  # [2, R]
    finite = torch.isfinite(values).all(0, keepdim=True).expand(2, -1)
    mean, stderr = mean_and_stderr(values, finite)
    values = values.where(finite, math.nan)
    return SequentialBounds(
        spce=float(mean[0]),
        spce_stderr=float(stderr[0]),
        snmc=float(mean[1]),
        snmc_stderr=float(stderr[1]),
        spce_terms=values[0],
        snmc_terms=values[1],
        n_inner=n_inner,
        dropped=int((~finite[0]).sum()),
    )


def history_log_likelihood(
    likelihood: Any, outcomes: Tensor, theta: Tensor, designs: Tensor
) -> Tensor:
    """log p(h_T|θ_m) = Σ_t log p(y_t|θ_m, ξ_t) ``[R, M]`` for every rollout r and point m.

    Args:
        likelihood: as for `sequential_bounds`.
        outcomes: ``[R, T, *x_shape]``.
        theta: ``[R, M, p]``: M points per rollout.
        designs: ``[R, T, D]``.
    """
    return _history_likelihood(likelihood)(outcomes, theta, designs)


def _history_likelihood(likelihood: Any) -> HistoryLikelihood:
    """``(outcomes [R, T, *x], theta [R, M, p], designs [R, T, D]) -> [R, M]`` summing the
    per-experiment log-likelihood over t, through the pairwise path where there is one."""
    if isinstance(likelihood, LikelihoodModel):
        pairwise, rowwise = likelihood.pairwise, likelihood.log_likelihood
    elif hasattr(likelihood, "log_likelihood"):
        pairwise = getattr(likelihood, "pairwise_log_likelihood", None)
        rowwise = likelihood.log_likelihood
    elif callable(likelihood):
        pairwise, rowwise = None, likelihood
    else:
        raise TypeError(
            f"likelihood must be a simfer.Simulator with a tractable likelihood, a "
            f"LikelihoodModel or a callable (x, theta, design) -> [B]; got "
            f"{type(likelihood).__name__}"
        )

    def total(outcomes: Tensor, theta: Tensor, designs: Tensor) -> Tensor:
        n_rollouts, n_points = theta.shape[:2]
        result = torch.zeros(n_rollouts, n_points, dtype=theta.dtype, device=theta.device)
        for t in range(designs.shape[1]):
            x, design = outcomes[:, t], designs[:, t]
            if pairwise is not None:
                value = pairwise(x[:, None], theta, design)  # [R, 1, M]
                expected = (n_rollouts, 1, n_points)
            else:
                rows = n_rollouts * n_points
                value = rowwise(
                    x[:, None].expand(-1, n_points, *x.shape[1:]).reshape(rows, *x.shape[1:]),
                    theta.reshape(rows, -1),
                    design[:, None].expand(-1, n_points, -1).reshape(rows, -1),
                )
                expected = (rows,)
            if not isinstance(value, Tensor) or tuple(value.shape) != expected:
                got = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ShapeError(f"the log-likelihood must return {list(expected)} here, got {got}")
            result += value.reshape(n_rollouts, n_points)
        return result

    return total


def _checked(
    theta: Any, designs: Any, outcomes: Any, likelihood: Any
) -> tuple[Tensor, Tensor, Tensor]:
    theta, designs = torch.as_tensor(theta), torch.as_tensor(designs)
    outcomes = torch.as_tensor(outcomes)
    if not theta.is_floating_point():
        theta = theta.to(torch.get_default_dtype())
    if theta.ndim != 2:
        raise ShapeError(
            f"theta must be [R, p] (the true θ of each rollout), got {list(theta.shape)}"
        )
    n_rollouts = theta.shape[0]
    if designs.ndim != 3 or designs.shape[0] != n_rollouts:
        raise ShapeError(
            f"designs must be [R, T, D] = [{n_rollouts}, T, D] (R = rows of theta), got "
            f"{list(designs.shape)}"
        )
    n_steps = designs.shape[1]
    if outcomes.ndim < 2 or tuple(outcomes.shape[:2]) != (n_rollouts, n_steps):
        raise ShapeError(
            f"outcomes must be [R, T, *x_shape] = [{n_rollouts}, {n_steps}, ...] (one outcome "
            f"per design), got {list(outcomes.shape)}"
        )
    x_shape = getattr(likelihood, "x_shape", None)
    if outcomes.ndim == 2 and x_shape is not None and tuple(x_shape) == (1,):
        outcomes = outcomes[..., None]
    if not (bool(torch.isfinite(designs).all()) and bool(torch.isfinite(outcomes).all())):
        raise ValueError("designs and outcomes must be finite: a failed experiment is no outcome")
    return theta, designs.to(theta.dtype), outcomes.to(theta.dtype)
