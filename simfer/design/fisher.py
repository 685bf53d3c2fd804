r"""A Fisher-information design criterion from a trained score surrogate (SALLY).

SALLY learns t̂(x|θ_ref, d) ≈ ∇_θ log p(x|θ,d) at θ = θ_ref; its second moment is the
Fisher information of one observation at design d,

    F(d) = E_{p(x|θ_ref,d)} [ t(x|θ_ref,d) t(x|θ_ref,d)ᵀ ].

`simfer.design.eig` (``method="fisher"``) turns it into the Bayesian D-optimal criterion

    U_F(d) = ½ log det( I + n Σ_θ^{1/2} F(d) Σ_θ^{1/2} ) = ½ log det( I + n Σ_θ F(d) ),

with Σ_θ the prior covariance and n = ``n_events`` iid observations per experiment (the
two forms agree by Sylvester's identity; the symmetric one is computed).  It is on the
EIG's scale, in nats: **for a linear-Gaussian model** x = X(d)θ + ε, ε ~ N(0, Σ_ε), with a
Gaussian prior, F(d) = X(d)ᵀ Σ_ε⁻¹ X(d) for every θ and U_F is *exactly* the EIG (the
log ratio of prior to posterior volume, Lindley 1956; Chaloner & Verdinelli, Stat. Sci.
10 (1995) 273).  Otherwise it is the EIG of the local Gaussian (Laplace) approximation
of the model at θ_ref: good when the posterior is near-Gaussian and F varies little over
the prior, and blind to what F(θ_ref) does not see (multimodal posteriors, a θ_ref at
which the design's sensitivity vanishes).  Plain log det F(d) has the same argmax when
the data dominate the prior (n Σ_θ F ≫ I), but diverges for a design that leaves a
direction unmeasured; the prior term keeps U_F finite and comparable across designs.

Two estimates of F(d) from simulated x (``fisher=``):

* ``"reference"`` (default): x_n ~ p(x|θ_ref, d), where SALLY was trained,
  F̂ = (1/N) Σ_n t̂_n t̂_nᵀ;
* ``"prior"``: θ_n ~ p(θ) and two replicates x_n, x_n' ~ p(x|θ_n, d) each, and the
  within-θ covariance F̂ = (1/N) Σ_n ½ (t̂_n − t̂_n')(t̂_n − t̂_n')ᵀ — unbiased for
  E_θ Cov_{x|θ}[t(x|θ_ref)], which equals F for a linear-Gaussian model and E_θ F(θ) to
  first order in θ − θ_ref otherwise (the mean shift E_{x|θ} t(x|θ_ref) ≈ F (θ − θ_ref)
  cancels in the difference).  The x then come from all over the prior, where SALLY saw
  no training data unless the prior is concentrated near θ_ref: check it there first.

**Standard error** by the delta method: U_F(F̂) ≈ U_F(F) + Σ_n ψ_n / N with
ψ_n = ½ tr(G A_n), G = n Σ^{1/2} (I + n Σ^{1/2} F̂ Σ^{1/2})⁻¹ Σ^{1/2} and A_n the n-th
matrix averaged into F̂; ``stderr`` is the standard deviation of ψ_n over √N.  **Bias:**
log det is concave, so the plug-in U_F(F̂) is biased *down* by O(1/N) (Jensen), besides
the surrogate's error in t̂ (a score error δt biases F by E[δt δtᵀ] + cross terms).
**Cost:** N score evaluations per design (2N for ``"prior"``), batched over designs; no
inner sample.  The prior covariance is exact for a `MultivariateNormal` or an
`Independent` prior (e.g. `simfer.BoxUniform`), else the sample covariance of
``n_inner`` prior draws.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent
from tqdm.auto import tqdm

from .nmc import Sampler, design_chunks, evaluate_rows, row_batch, sample_outer

__all__ = ["FISHER_MODES", "fisher_criterion", "fisher_curve", "prior_covariance"]

FISHER_MODES = ("reference", "prior")


def prior_covariance(prior: Distribution, draws: Callable[[], Tensor]) -> tuple[Tensor, bool]:
    """Σ_θ ``[p, p]`` (float64) and whether it is exact: a `MultivariateNormal`'s
    ``covariance_matrix``, an `Independent` prior's diagonal of variances, else the sample
    covariance of ``draws()`` ``[M, p]``."""
    exact = getattr(prior, "covariance_matrix", None)
    if isinstance(exact, Tensor):
        return exact.detach().double().cpu(), True
    if isinstance(prior, Independent):
        try:
            variance = prior.variance
        except NotImplementedError:
            variance = None
        if isinstance(variance, Tensor) and bool(torch.isfinite(variance).all()):
            return torch.diag_embed(variance.detach().double().cpu()), True
    theta = draws().double().cpu()
    return torch.atleast_2d(torch.cov(theta.T)), False


def _symmetric_sqrt(matrix: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0.0).sqrt()) @ vectors.mT


def fisher_criterion(fisher: Tensor, prior_cov: Tensor, n_events: int = 1) -> tuple[Tensor, Tensor]:
    """U_F = ½ log det(I + n Σ^{1/2} F Σ^{1/2}) ``[k]`` for Fisher matrices ``[k, p, p]``, and
    its gradient with respect to F, G = ½ n Σ^{1/2} (I + n Σ^{1/2} F Σ^{1/2})⁻¹ Σ^{1/2}
    ``[k, p, p]`` (float64)."""
    root = _symmetric_sqrt(prior_cov.double())
    fisher = 0.5 * (fisher.double() + fisher.double().mT)
    inside = torch.eye(root.shape[0], dtype=torch.float64) + n_events * root @ fisher @ root
    values, vectors = torch.linalg.eigh(inside)  # symmetric, eigenvalues ≥ 1
    value = 0.5 * values.clamp(min=1e-300).log().sum(-1)
    inverse = (vectors / values[..., None, :]) @ vectors.mT
    return value, 0.5 * n_events * root @ inverse @ root


def fisher_curve(
    score: Callable[[Tensor, Tensor], Tensor],
    sample: Sampler,
    designs: Tensor,
    theta: Tensor,
    x_seeds: Sequence[int],
    prior_cov: Tensor,
    *,
    replicates: bool,
    x_numel: int,
    n_events: int = 1,
    max_memory: int = 2**25,
    progress: bool = True,
    desc: str = "EIG (fisher)",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """U_F(d) at every design, with its standard error, F̂(d) and the dropped rows.

    Args:
        score: t̂(x|θ_ref,d), ``(x [B, *x_shape], design [B, D]) -> [B, p]``.
        sample: x ~ p(x|θ,d), ``(theta [N, p], design [D], seed) -> [N, *x_shape]``.
        designs: ``[k, D]``.
        theta: ``[k or 1, N, p]``: θ_ref repeated (``"reference"``) or prior draws.
        x_seeds: ``k`` ints (common random numbers when equal).
        prior_cov: Σ_θ ``[p, p]``.
        replicates: two x per θ and the within-θ covariance (``"prior"``), or one x per
            θ and the second moment (``"reference"``).
        x_numel: elements of one x (for the memory budget).
        n_events: iid observations per experiment.

    Returns:
        ``(value [k], stderr [k], fisher [k, p, p], dropped [k])`` (float64, CPU).
    """
    k, n, p = designs.shape[0], theta.shape[1], theta.shape[2]
    draws_per_theta = 2 if replicates else 1
    row_size = x_numel + 2 * p + designs.shape[1] + 1
    max_rows = row_batch(row_size, max_memory)
    value = torch.empty(k, dtype=torch.float64)
    stderr, dropped = torch.empty_like(value), torch.zeros(k, dtype=torch.long)
    fisher = torch.empty(k, p, p, dtype=torch.float64)

    def rows(x: Tensor, _theta: Tensor, design: Tensor) -> Tensor:
        return score(x, design)

    bar = tqdm(total=k, desc=desc, unit="design", disable=not progress, leave=False)
    try:
        for chunk in design_chunks(k, draws_per_theta * n * row_size, max_memory):
            index = torch.tensor(list(chunk))
            design = designs[index.to(designs.device)]
            rows_theta = theta if theta.shape[0] == 1 else theta[index.to(theta.device)]
            rows_theta = rows_theta.expand(len(chunk), -1, -1).repeat(1, draws_per_theta, 1)
            x = sample_outer(sample, rows_theta, design, [int(x_seeds[j]) for j in chunk])
            t = evaluate_rows(rows, x, rows_theta, design, max_rows, tail=(p,), what="score")
            t = t.double().cpu()
            if replicates:  # A_n = ½ (t_n − t_n')(t_n − t_n')ᵀ: the within-θ covariance
                u, weight = t[:, :n] - t[:, n:], 0.5
            else:  # A_n = t_n t_nᵀ
                u, weight = t, 1.0
            finite = torch.isfinite(u).all(-1)
            u = u.where(finite[..., None], 0.0)
            count = finite.sum(1).double().clamp(min=1.0)
            estimate = weight * torch.einsum("cni,cnj->cij", u, u) / count[:, None, None]
            criterion, gradient = fisher_criterion(estimate, prior_cov, n_events)
            psi = weight * torch.einsum("cni,cij,cnj->cn", u, gradient, u)  # tr(G A_n)
            centred = psi - psi.where(finite, 0.0).sum(1, keepdim=True) / count[:, None]
            spread = centred.where(finite, 0.0).square().sum(1) / (count - 1).clamp(min=1.0)
            value[index], stderr[index] = criterion, (spread / count).sqrt()
            fisher[index], dropped[index] = estimate, (n - finite.sum(1)).long()
            bar.update(len(chunk))
    finally:
        bar.close()
    return value, stderr, fisher, dropped
