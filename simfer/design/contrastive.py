r"""InfoNCE and NWJ: EIG lower bounds from a trained ratio surrogate.

A ratio estimator gives a critic f(x, θ) = log r̂(x|θ, θ_1, d) that is, when exact,
log p(x|θ,d) up to a function of x alone: log p(x|θ,d) − log p(x|θ_ref,d) for the
reference-class methods (CARL, ROLR, RASCAL, ALICE(S), CASCAL; θ_1 = θ_ref), and
log p(x|θ,d) − log p(x|d) for NRE and BNRE (``reference="marginal"``).  Two variational
bounds on the mutual information turn such a critic into an EIG estimate without ever
normalising a density.  Both draw N outer pairs θ_n ~ p(θ), x_n ~ p(x|θ_n,d) — x from
the *simulator*, which a ratio estimator cannot replace — and K contrastive θ_k ~ p(θ),
shared by all outer pairs, and use only the N × K matrix f_nk = f(x_n, θ_k) and the
diagonal f_n = f(x_n, θ_n), exactly like NMC and PCE (`simfer.design.nmc`).

* **InfoNCE** (van den Oord et al. 2018, arXiv:1807.03748; Poole et al., ICML 2019,
  arXiv:1905.06922), with the outer θ_n counted among its own K + 1 candidates:

      Î_NCE = (1/N) Σ_n [ f_n − log (1/(K+1)) (e^{f_n} + Σ_k e^{f_nk}) ].

  E[Î_NCE] ≤ EIG for *every* critic f, so the surrogate's errors can only loosen it; it
  is tight (as K → ∞) when f = log p(x|θ,d) + c(x) for any c(x).  An x-dependent term
  cancels between f_n and the logsumexp, so ratios against a fixed θ_ref serve as they
  are: log r(x|θ_n,θ_ref) − log mean_k r(x|θ_k,θ_ref).  With the exact likelihood as
  critic this is PCE.  **Cap:** e^{f_n} is one of the K + 1 summands, so every term, and
  the estimate, is ≤ log(K + 1) exactly (K = ``n_inner``); near that value the bound has
  saturated and says only that the EIG is at least about log(K + 1).

* **NWJ** (Nguyen, Wainwright & Jordan, IEEE Trans. Inf. Theory 56 (2010) 5847; the
  I_NWJ of Poole et al. 2019): for any function T(x, θ),
  I ≥ E_{p(θ,x)}[T] − e^{−1} E_{p(θ)p(x)}[e^T], with equality at T = 1 + log p(x|θ)/p(x).
  With T = 1 + log r̂, r̂(x|θ,d) ≈ p(x|θ,d)/p(x|d) the marginal ratio of an NRE/BNRE,

      Î_NWJ = (1/N) Σ_n [ log r̂(x_n|θ_n) + 1 − (1/K) Σ_k r̂(x_n|θ_k) ].

  Also a lower bound for every r̂, and *not* capped by log(K + 1).  It needs the ratio's
  normalisation: if r̂ = c(x)·p(x|θ)/p(x), then E[Î_NWJ] = EIG − E_x[c − 1 − log c]
  (≈ ½ E (log c)² for small errors), so a critic that is right up to an x-dependent
  factor — all InfoNCE asks for — is penalised.  Its variance is that of r̂ over
  prior-drawn (mismatched) pairs, E_{p(θ)p(x)}[r²] − 1, which grows quickly with the EIG.

**Why NWJ is refused for reference-class ratios.**  log r̂(x|θ, θ_ref) carries the unknown
offset c(x) = p(x|d)/p(x|θ_ref,d), which makes the penalty E[c − 1 − log c] arbitrary.
Normalising it with the contrastive θ, ĉ(x) = (1/K) Σ_k r̂(x|θ_k,θ_ref), makes the penalty
term exactly 1 and turns NWJ into the nested estimate below, which is no longer a bound.
`simfer.design.eig` therefore applies NWJ to NRE/BNRE only and points other ratio
estimators to InfoNCE (the same N × K matrix, a bound for them as they are).

**The nested estimate on the same matrix**, f_n − log (1/K) Σ_k e^{f_nk}, comes free: with
an exact critic it is NMC (an overestimate by O(1/K)), and `eig` reports it as the
result's ``upper``.  For a surrogate it is an estimate, not a bound.

Cost: N·K critic evaluations per design (N·(K + 1) with the diagonal), in row batches
that fit ``max_memory`` (`simfer.design.nmc.contrastive_monte_carlo`).
"""

from __future__ import annotations

import math

from torch import Tensor

from .nmc import logsumexp_last, nested_terms_from_logsumexp

__all__ = ["infonce_terms", "nwj_terms"]


def infonce_terms(
    log_r_outer: Tensor, log_r_inner: Tensor, *, overwrite: bool = False
) -> tuple[Tensor, Tensor]:
    """Per-outer-sample InfoNCE and nested terms ``[..., N]`` from the critic's diagonal
    f_n ``[..., N]`` and matrix f_nk ``[..., N, K]`` (``overwrite``: the logsumexp is taken
    in place in ``log_r_inner``).  Every InfoNCE term is ≤ log(K + 1)."""
    k = log_r_inner.shape[-1]
    nested, infonce = nested_terms_from_logsumexp(
        log_r_outer, logsumexp_last(log_r_inner, overwrite), k
    )
    return infonce, nested


def nwj_terms(
    log_r_outer: Tensor, log_r_inner: Tensor, *, overwrite: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-outer-sample InfoNCE, nested and NWJ terms ``[..., N]`` from one logsumexp (the
    critic is the marginal log ratio log r̂(x|θ)/p(x)); the NWJ term log r̂_n + 1 −
    (1/K) Σ_k r̂_nk is computed in float64."""
    k = log_r_inner.shape[-1]
    inner = logsumexp_last(log_r_inner, overwrite)
    nested, infonce = nested_terms_from_logsumexp(log_r_outer, inner, k)
    nwj = log_r_outer.double() + 1.0 - (inner.double() - math.log(k)).exp()
    return infonce, nested, nwj
