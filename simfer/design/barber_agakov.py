r"""The Barber–Agakov lower bound on the EIG from a trained posterior surrogate (NPE).

The EIG is the expected drop in entropy from prior to posterior, and the posterior's
cross-entropy with any other conditional density q(θ|x,d) is larger than its entropy:

    EIG(d) = E_{p(θ) p(x|θ,d)} [ log p(θ|x,d) − log p(θ) ]
           = E_{p(θ) p(x|θ,d)} [ log q(θ|x,d) − log p(θ) ] + E_{p(x|d)} KL(p(θ|x,d) ‖ q(θ|x,d))
           ≥ E_{p(θ) p(x|θ,d)} [ log q(θ|x,d) − log p(θ) ]

(Barber & Agakov, NeurIPS 2003; the "posterior" estimator of Foster et al., NeurIPS 2019,
arXiv:1903.05480).  With q the NPE's flow and N outer pairs θ_n ~ p(θ), x_n ~ p(x|θ_n,d)
drawn from the *simulator*,

    Î_BA = (1/N) Σ_n [ log q(θ_n|x_n,d) − log p(θ_n) ].

* **Bias:** downward for every q, by the expected KL from the true posterior to q — the
  NPE's own training loss minus its floor, so a better-trained NPE gives a tighter bound.
  No inner sample, hence no nested bias and no cap: it suits large EIGs where PCE and
  InfoNCE saturate at log(M + 1).
* **The prior must be the NPE's.**  An NPE trained under the prior p₀ learns p₀(θ|x,d);
  under another prior p (a sequential loop's current posterior) the bound still holds
  but is loose by the KL between p(θ|x,d) and p₀(θ|x,d).  It also needs the density
  log p(θ), so an empirical prior (a set of draws) cannot be used.
* **Cost:** N flow evaluations per design, batched over all designs of a chunk; the
  standard error is the standard deviation of the N terms over √N.  A q that leaks
  mass outside a bounded prior only lowers the bound (the flow is normalised on R^p).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .nmc import (
    Sampler,
    TermEstimates,
    design_chunks,
    evaluate_rows,
    mean_and_stderr,
    row_batch,
    sample_outer,
)

__all__ = ["barber_agakov"]


def barber_agakov(
    log_posterior: Callable[[Tensor, Tensor, Tensor], Tensor],
    sample: Sampler,
    designs: Tensor,
    theta_outer: Tensor,
    log_prior: Tensor,
    x_seeds: Sequence[int],
    *,
    x_numel: int,
    max_memory: int = 2**25,
    progress: bool = True,
    desc: str = "EIG (ba)",
) -> TermEstimates:
    """The Barber–Agakov bound at every design.

    Args:
        log_posterior: ``(x [B, *x_shape], theta [B, p], design [B, D]) -> [B]``,
            log q(θ|x,d).
        sample: x ~ p(x|θ,d), ``(theta [N, p], design [D], seed) -> [N, *x_shape]``.
        designs: ``[k, D]``.
        theta_outer: ``[k or 1, N, p]``, prior draws.
        log_prior: ``[k or 1, N]``, log p(θ_n).
        x_seeds: ``k`` ints (equal seeds with shared θ: common random numbers).
        x_numel: elements of one x (for the memory budget).
        max_memory: the most elements one chunk of designs (x, θ and d of its N rows)
            and one batch of rows hold.

    Returns:
        A `TermEstimates` with one term (float64, on the CPU).
    """
    k, n, p = designs.shape[0], theta_outer.shape[1], theta_outer.shape[2]
    row_size = x_numel + p + designs.shape[1] + 1
    max_rows = row_batch(row_size, max_memory)
    mean = torch.empty(1, k, dtype=torch.float64)
    stderr, kept = torch.empty_like(mean), torch.empty(k, dtype=torch.float64)
    bar = tqdm(total=k, desc=desc, unit="design", disable=not progress, leave=False)
    try:
        for chunk in design_chunks(k, n * row_size, max_memory):
            index = torch.tensor(list(chunk))
            design = designs[index.to(designs.device)]
            shared = theta_outer.shape[0] == 1
            theta = theta_outer if shared else theta_outer[index.to(theta_outer.device)]
            theta = theta.expand(len(chunk), -1, -1)
            prior = log_prior if shared else log_prior[index.to(log_prior.device)]
            x = sample_outer(sample, theta, design, [int(x_seeds[j]) for j in chunk])
            log_q = evaluate_rows(log_posterior, x, theta, design, max_rows, what="log q(θ|x,d)")
            terms = (log_q.double() - prior.to(log_q.device).double()).cpu()
            finite = torch.isfinite(terms)
            mean[0, index], stderr[0, index] = mean_and_stderr(terms, finite)
            kept[index] = finite.sum(1).double()
            bar.update(len(chunk))
    finally:
        bar.close()
    return TermEstimates(mean, stderr, dropped=(n - kept).long())
