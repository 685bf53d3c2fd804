r"""Convergence diagnostics of parallel Markov chains: split R̂ and effective sample size.

Both follow Gelman et al., *Bayesian Data Analysis* (3rd ed., §11.4–11.5) and Stan's
reference implementation.  ``chains`` is ``[n_chains, n_draws, dim]``.

Split R̂.  Every chain is cut in two halves, giving m chains of n draws.  With W the mean
of the within-chain variances and B/n the variance of the chain means,

    var⁺ = (n − 1)/n · W + B/n,        R̂ = √(var⁺ / W),

which tends to 1 from above as the chains mix; values above ~1.01 (Vehtari et al. 2021)
say the chains have not forgotten their starting points.

Effective sample size.  With ρ_t the autocorrelation at lag t estimated across chains as
ρ_t = 1 − (W − mean_c autocov_c(t)) / var⁺, the ESS is m·n / τ with

    τ = −1 + 2 Σ_{k} (ρ_{2k} + ρ_{2k+1}),

summing Geyer's initial positive sequence of pair sums, made monotone (Geyer 1992).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["split_r_hat", "effective_sample_size"]


def _split(chains: Tensor) -> Tensor:
    if chains.ndim != 3:
        raise ValueError(f"chains must be [n_chains, n_draws, dim], got {list(chains.shape)}")
    half = chains.shape[1] // 2
    if half < 2:
        raise ValueError(f"need at least 4 draws per chain, got {chains.shape[1]}")
    return torch.cat([chains[:, :half], chains[:, -half:]], dim=0).double()


def split_r_hat(chains: Tensor) -> Tensor:
    """Split R̂ per dimension ``[dim]`` of ``chains`` ``[n_chains, n_draws, dim]``."""
    halves = _split(chains)
    n = halves.shape[1]
    within = halves.var(dim=1).mean(0)
    between = halves.mean(1).var(dim=0) * n
    var_plus = (n - 1) / n * within + between / n
    return torch.sqrt(var_plus / within.clamp_min(torch.finfo(within.dtype).tiny))


def _autocovariance(chains: Tensor) -> Tensor:
    """Autocovariance of each chain by FFT: ``[m, n, dim]`` → ``[m, n, dim]`` (lags 0…n−1)."""
    n = chains.shape[1]
    centred = chains - chains.mean(1, keepdim=True)
    size = 2 ** (2 * n - 1).bit_length()
    spectrum = torch.fft.rfft(centred, n=size, dim=1)
    return torch.fft.irfft(spectrum * spectrum.conj(), n=size, dim=1)[:, :n] / n


def effective_sample_size(chains: Tensor) -> Tensor:
    """Bulk effective sample size per dimension ``[dim]`` (split chains, Geyer's sequence)."""
    halves = _split(chains)
    m, n, _ = halves.shape
    autocov = _autocovariance(halves)
    within = halves.var(dim=1).mean(0)
    var_plus = (n - 1) / n * within + halves.mean(1).var(dim=0)
    rho = 1 - (within - autocov.mean(0)) / var_plus.clamp_min(torch.finfo(var_plus.dtype).tiny)
    rho[0] = 1.0
    pairs = rho[: 2 * (n // 2)].reshape(n // 2, 2, -1).sum(1)  # ρ_{2k} + ρ_{2k+1}
    positive = torch.cumprod((pairs > 0).double(), dim=0)  # Geyer: stop at the first ≤ 0
    monotone = torch.cummin(torch.where(positive > 0, pairs, torch.zeros_like(pairs)), dim=0)
    tau = -1 + 2 * (monotone.values * positive).sum(0)
    tau = tau.clamp_min(1 / torch.log10(torch.tensor(float(m * n), dtype=tau.dtype)))
    return m * n / tau
