r"""Calibration of a posterior over the prior predictive: SBC, expected coverage, TARP.

All three start from N pairs (θ_i, x_i) drawn from the joint p(θ) p(x|θ) and L posterior
draws θ_i^1 … θ_i^L ~ q(θ | x_i) for each.  If q is the true posterior, θ_i is one more
draw from q(θ|x_i), so for any statistic s the L + 1 values s(θ_i), s(θ_i^1), …,
s(θ_i^L) are exchangeable, and the rank

    r_i = #{l : s(θ_i^l) < s(θ_i)}   is uniform on {0, …, L}

(Talts, Betancourt, Simpson, Vehtari & Gelman 2018, arXiv:1804.06788, Theorem 1).  Ties,
which MCMC draws can produce, are split at random: r_i counts the ties below θ_i as a
uniform share of them.  Then u_i = (r_i + V_i) / (L + 1) with V_i ~ U(0, 1) is exactly
U(0, 1) under calibration (a randomised probability integral transform), which gives every
test here an exact null distribution at any L.

* **SBC**: s = each coordinate of θ (and optionally log q(θ|x_i) or user functions);
  uniformity of r_i by a χ² test on B bins of ranks (Talts et al.'s histogram) or by the
  Kolmogorov–Smirnov test on u_i.
* **Expected coverage**: s = log q(θ|x_i).  1 − u_i is the credibility of the smallest
  highest-posterior-density (HPD) region that contains θ_i; the empirical coverage of the
  HPD region of level c is the fraction of pairs with 1 − u_i ≤ c, which is c for a
  calibrated posterior (Hermans et al. 2022, arXiv:2110.06581).
* **TARP** (Lemos, Coogan, Hezaveh & Perreault-Levasseur 2023, arXiv:2302.03026): s =
  −‖θ − θ_ref,i‖ for a random reference point θ_ref,i, so u_i is the fraction of draws
  farther from θ_ref,i than θ_i and 1 − u_i, the fraction closer, is the credibility of
  the ball around θ_ref,i through θ_i.  The expected coverage of these balls is the
  diagonal if and only if q is the true posterior (their Theorem 3, over a reference
  distribution with full support); it needs samples only, no density.

The draws must be independent given x_i, which is why `posterior_samples` runs one slice
chain per draw by default (correlated draws from one chain make even a correct posterior
fail SBC, Talts et al. §4.1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from scipy import stats
from torch import Tensor

from ..errors import ShapeError

if TYPE_CHECKING:
    from ..inference.posterior import Posterior

__all__ = [
    "CoverageCurve",
    "SBCResult",
    "TARPResult",
    "expected_coverage",
    "per_observation_log_prob",
    "posterior_samples",
    "sbc",
    "tarp",
]

TestFunction = Callable[[Tensor], Tensor]
"""f(θ ``[..., theta_dim]``) → ``[...]``: a scalar statistic of θ for SBC."""


# -- shared pieces ----------------------------------------------------------------------------
def posterior_samples(
    posterior: Posterior,
    x: Any,
    n_samples: int,
    *,
    seed: int | None = 0,
    **options: Any,
) -> Tensor:
    """``n_samples`` independent draws from each single-observation posterior q(θ | x_i):
    x ``[N, *x_shape]`` → ``[N, n_samples, theta_dim]``, by ``posterior.sample_batched``.

    An NPE posterior draws directly.  Otherwise the slice sampler runs ``n_chains``
    chains per observation (default: ``n_samples``, so each chain contributes one draw after
    its warm-up and the draws are independent); ``options`` go to ``sample_batched``.
    """
    options.setdefault("n_chains", n_samples)
    return posterior.sample_batched(n_samples, x, seed=seed, **options)


def _observations(posterior: Posterior, x: Any) -> Tensor:
    """x as ``[N, *x_shape]`` in the posterior's dtype and device."""
    x = torch.as_tensor(x, dtype=torch.get_default_dtype(), device=posterior.device)
    if posterior.x_shape == (1,) and x.ndim == 1:
        x = x[:, None]
    if tuple(x.shape[1:]) != posterior.x_shape:
        shape = ", ".join(map(str, posterior.x_shape))
        raise ShapeError(f"x must be [N, {shape}] (one observation per row), got {list(x.shape)}")
    return x


def _pairs(theta: Any, samples: Tensor) -> tuple[Tensor, Tensor]:
    """θ ``[N, d]`` and samples ``[N, L, d]`` checked against each other."""
    samples = torch.as_tensor(samples)
    theta = torch.as_tensor(theta, dtype=samples.dtype, device=samples.device)
    if theta.ndim == 1:
        theta = theta[:, None]
    if samples.ndim != 3 or theta.ndim != 2 or samples.shape[::2] != theta.shape:
        raise ShapeError(
            f"theta must be [N, theta_dim] and samples [N, L, theta_dim], got "
            f"{list(theta.shape)} and {list(samples.shape)}"
        )
    if samples.shape[1] < 1:
        raise ValueError("at least one posterior sample per observation is needed")
    return theta, samples


def _draws(
    posterior: Posterior | None,
    theta: Any,
    x: Any,
    samples: Tensor | None,
    n_samples: int,
    seed: int | None,
    options: dict[str, Any],
) -> tuple[Tensor, Tensor]:
    """θ ``[N, d]`` and the given ``samples``, or ``n_samples`` fresh draws per row of x."""
    if samples is None:
        if posterior is None or x is None:
            raise ValueError("pass a posterior and x, or the posterior samples")
        x = _observations(posterior, x)
        samples = posterior_samples(posterior, x, n_samples, seed=seed, **options)
    return _pairs(theta, samples)


def _randomized_ranks(
    true: Tensor, drawn: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Ranks of ``true`` ``[N, k]`` among ``drawn`` ``[N, L, k]``, ties split at random:
    r ``[N, k]`` in {0…L} (long) and the randomised PIT u = (r + V)/(L + 1) ``[N, k]``."""
    below = (drawn < true[:, None]).sum(1)
    ties = (drawn == true[:, None]).sum(1)
    share = torch.rand(ties.shape, generator=generator, dtype=torch.float64)
    ranks = below + torch.floor(share * (ties + 1)).long().clamp_max(ties)
    jitter = torch.rand(ranks.shape, generator=generator, dtype=torch.float64)
    return ranks, (ranks.double() + jitter) / (drawn.shape[1] + 1)


def _generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


def per_observation_log_prob(
    posterior: Posterior,
    theta: Tensor,
    x: Tensor,
    *,
    design: Tensor | None = None,
    max_rows: int | None = None,
) -> Tensor:
    """log q(θ_ij | x_i, d_i) + c_i for θ ``[N, k, theta_dim]``, x ``[N, *x_shape]`` and,
    for a model with a design, ``design`` (one ``[design_dim]`` or ``[N, design_dim]``) →
    ``[N, k]``: the prior's log-density plus the posterior's per-event term ℓ(x_i|θ, d_i),
    −∞ outside the prior's support.  c_i is an unknown constant per observation (the
    evidence), harmless wherever only values for the same x_i are compared."""
    n, k, d = theta.shape
    design = posterior._as_designs(design, n)
    rows = theta.reshape(n * k, d)
    owner = torch.arange(n, device=x.device).repeat_interleave(k)
    step = max_rows or posterior.max_rows
    out = torch.full((n * k,), -math.inf, dtype=rows.dtype, device=rows.device)
    with torch.no_grad():
        for start in range(0, n * k, step):
            part = rows[start : start + step]
            inside = posterior.inside(part)
            if not bool(inside.any()):
                continue
            kept = part[inside]
            rows_of = owner[start : start + step][inside]
            value = posterior.prior.log_prob(kept) + posterior.event_log_likelihood(
                x[rows_of], kept, None if design is None else design[rows_of]
            )
            chunk = out[start : start + step]
            chunk[inside] = torch.nan_to_num(value.to(out.dtype), nan=-math.inf)
    return out.reshape(n, k)


# -- SBC --------------------------------------------------------------------------------------
@dataclass
class SBCResult:
    """The outcome of `sbc`.

    ranks: ``[N, k]`` rank of θ_i (or of each test statistic) among its L draws, in {0…L}.
    pit: ``[N, k]`` the randomised u_i = (r_i + V_i)/(L + 1), U(0, 1) under calibration.
    names: the k columns: ``theta[0]`` …, then the test functions.
    n_samples: L.  bins: B, the χ² test's number of rank bins.
    p_values: ``[k]`` p-values of the uniformity test (``test``: ``"chi2"`` or ``"ks"``).
    """

    ranks: Tensor
    pit: Tensor
    names: tuple[str, ...]
    n_samples: int
    bins: int
    p_values: Tensor
    test: str

    def bin_probabilities(self) -> Tensor:
        """``[bins]``: the probability of each rank bin under uniform ranks (bin b holds
        the ranks r with ⌊r·B/(L+1)⌋ = b; unequal when B does not divide L + 1)."""
        return _bin_probabilities(self.n_samples, self.bins)

    def histogram(self) -> Tensor:
        """``[k, bins]``: how many ranks fall in each bin, per column."""
        index = (self.ranks * self.bins) // (self.n_samples + 1)
        counts = torch.zeros(self.ranks.shape[1], self.bins, dtype=torch.long)
        return counts.scatter_add_(1, index.T.cpu(), torch.ones_like(index.T.cpu()))

    def passed(self, alpha: float = 0.01) -> bool:
        """True unless some column's p-value is below α/k (Bonferroni over the k columns:
        a calibrated posterior fails with probability at most α)."""
        return bool((self.p_values >= alpha / len(self.names)).all())

    def __repr__(self) -> str:
        p = ", ".join(
            f"{n}: {float(v):.3g}" for n, v in zip(self.names, self.p_values, strict=True)
        )
        return (
            f"SBCResult(N={self.ranks.shape[0]}, L={self.n_samples}, {self.test} p-values {{{p}}})"
        )


def _bin_probabilities(n_samples: int, bins: int) -> Tensor:
    values = torch.arange(n_samples + 1)
    counts = torch.bincount((values * bins) // (n_samples + 1), minlength=bins)
    return counts.double() / (n_samples + 1)


def sbc(
    posterior: Posterior | None,
    theta: Any,
    x: Any = None,
    *,
    n_samples: int = 100,
    samples: Tensor | None = None,
    log_prob: bool = False,
    test_functions: Mapping[str, TestFunction] | None = None,
    test: str = "chi2",
    bins: int | None = None,
    seed: int | None = 0,
    **sample_options: Any,
) -> SBCResult:
    r"""Simulation-based calibration of ``posterior`` on pairs (θ_i, x_i) from the prior
    predictive: θ ``[N, theta_dim]``, x ``[N, *x_shape]``.

    For each i, L = ``n_samples`` independent draws from q(θ | x_i) (`posterior_samples`,
    or pass them as ``samples`` ``[N, L, theta_dim]``; then ``posterior`` may be None
    unless ``log_prob``) give the rank r_i of each coordinate of θ_i among the draws, which
    is uniform on {0…L} when q is the true posterior (module docstring).  ``log_prob``
    adds the rank of log q(θ_i|x_i) (sensitive to over- and under-dispersion in all
    coordinates at once), ``test_functions`` more columns f(θ).  The uniformity test is
    Pearson's χ² on B bins of ranks (bin b holds ranks r with ⌊rB/(L+1)⌋ = b and has
    probability (its number of ranks)/(L+1)), df = B − 1, B by default min(20, L + 1,
    N/10) so each bin expects at least 10 ranks; or with ``test="ks"`` the
    Kolmogorov–Smirnov test of the randomised u_i against U(0, 1), exact at any L.
    """
    if test not in ("chi2", "ks"):
        raise ValueError(f"test must be 'chi2' or 'ks', got {test!r}")
    theta, samples = _draws(posterior, theta, x, samples, n_samples, seed, sample_options)
    n, n_draws, d = samples.shape
    true, drawn = [theta], [samples]
    names = [f"theta[{j}]" for j in range(d)]
    if log_prob:
        if posterior is None or x is None:
            raise ValueError("log_prob=True needs the posterior and x")
        x = _observations(posterior, x)
        values = per_observation_log_prob(posterior, torch.cat([theta[:, None], samples], 1), x)
        true.append(values[:, :1])
        drawn.append(values[:, 1:, None])
        names.append("log_prob")
    for name, function in (test_functions or {}).items():
        true.append(torch.as_tensor(function(theta)).reshape(n, 1))
        drawn.append(torch.as_tensor(function(samples)).reshape(n, n_draws, 1))
        names.append(name)
    true_all = torch.cat([t.double().cpu() for t in true], 1)
    drawn_all = torch.cat([s.double().cpu() for s in drawn], 2)
    ranks, pit = _randomized_ranks(true_all, drawn_all, _generator(seed))

    bins = int(bins) if bins is not None else max(2, min(20, n_draws + 1, n // 10))
    if not 2 <= bins <= n_draws + 1:
        raise ValueError(f"bins must be between 2 and L + 1 = {n_draws + 1}, got {bins}")
    result = SBCResult(ranks, pit, tuple(names), n_draws, bins, torch.empty(0), test)
    if test == "chi2":
        expected = n * result.bin_probabilities()
        observed = result.histogram().double()
        statistic = ((observed - expected) ** 2 / expected).sum(1)
        p = stats.chi2.sf(statistic.numpy(), df=bins - 1)
    else:
        p = [stats.kstest(pit[:, j].numpy(), "uniform").pvalue for j in range(pit.shape[1])]
    result.p_values = torch.as_tensor(p, dtype=torch.float64).reshape(-1)
    return result


# -- coverage curves --------------------------------------------------------------------------
@dataclass
class CoverageCurve:
    """Empirical against nominal coverage: ``coverage[g]`` is the fraction of the N pairs
    whose θ_i lies in the credible region of level ``levels[g]``.

    credibility: ``[N]`` for each pair the level of the smallest region (of the curve's
    family) that contains θ_i; U(0, 1) under calibration, so ``coverage`` is its
    empirical distribution function on ``levels``.
    """

    levels: Tensor
    coverage: Tensor
    credibility: Tensor
    label: str = "coverage"

    @property
    def n(self) -> int:
        return int(self.credibility.shape[0])

    def max_error(self) -> float:
        """sup_c |coverage(c) − c| over all levels (the Kolmogorov–Smirnov distance of the
        credibilities from U(0, 1))."""
        return float(stats.kstest(self.credibility.numpy(), "uniform").statistic)

    def ks_p_value(self) -> float:
        """P-value of the Kolmogorov–Smirnov test of the credibilities against U(0, 1)."""
        return float(stats.kstest(self.credibility.numpy(), "uniform").pvalue)

    def dkw_tolerance(self, alpha: float = 0.01) -> float:
        """ε with P(sup_c |coverage(c) − c| > ε) ≤ α for a calibrated posterior
        (Dvoretzky–Kiefer–Wolfowitz with Massart's constant): √(log(2/α) / 2N)."""
        return math.sqrt(math.log(2 / alpha) / (2 * self.n))

    def band(self, confidence: float = 0.99) -> tuple[Tensor, Tensor]:
        """The pointwise central binomial interval of a calibrated posterior's coverage,
        Binomial(N, c)/N at each level c: two ``[g]`` tensors."""
        low, high = stats.binom.interval(confidence, self.n, self.levels.numpy())
        return torch.as_tensor(low) / self.n, torch.as_tensor(high) / self.n


@dataclass
class TARPResult(CoverageCurve):
    """`CoverageCurve` of TARP's balls, with ``atc`` = ∫_{½}^{1} (coverage(c) − c) dc
    (negative: over-confident, positive: under-confident) and ``references`` ``[N, d]``
    (in the normalised coordinates)."""

    atc: float = 0.0
    references: Tensor = field(default=None, repr=False)

    def atc_tolerance(self, alpha: float = 0.01) -> float:
        """z_{1−α/2} · sd(ATC) for a calibrated posterior, where N·Var(ATC) → ∫∫ over
        [½, 1]² of (min(s, t) − st) = 5/192 (a Brownian bridge's integral)."""
        return float(stats.norm.ppf(1 - alpha / 2)) * math.sqrt(5 / 192 / self.n)


def _curve(credibility: Tensor, levels: Any) -> tuple[Tensor, Tensor]:
    levels = torch.linspace(0, 1, 101, dtype=torch.float64) if levels is None else levels
    levels = torch.as_tensor(levels, dtype=torch.float64).reshape(-1)
    coverage = (credibility[:, None] <= levels[None]).double().mean(0)
    return levels, coverage


def expected_coverage(
    posterior: Posterior,
    theta: Any,
    x: Any,
    *,
    n_samples: int = 100,
    samples: Tensor | None = None,
    levels: Any = None,
    log_prob: Callable[[Tensor, Tensor], Tensor] | None = None,
    seed: int | None = 0,
    **sample_options: Any,
) -> CoverageCurve:
    r"""Expected coverage of the highest-posterior-density regions of ``posterior`` on
    pairs θ ``[N, theta_dim]``, x ``[N, *x_shape]`` from the prior predictive.

    For each pair, L draws θ_i^l ~ q(θ|x_i) (or ``samples`` ``[N, L, theta_dim]``) and the
    rank r_i of log q(θ_i|x_i) among the log q(θ_i^l|x_i) give the credibility of the
    smallest HPD region containing θ_i, 1 − (r_i + V_i)/(L + 1) with V_i ~ U(0, 1) (the
    fraction of posterior mass denser than θ_i); the coverage at level c is the fraction of
    pairs whose credibility is ≤ c (``levels``, default 0, 0.01, …, 1).  For a calibrated
    posterior the credibilities are U(0, 1) and coverage(c) ~ Binomial(N, c)/N; a curve
    under the diagonal is over-confident, above it under-confident.

    The density is p(θ) exp ℓ(x_i|θ) with the posterior's per-event term ℓ (the density
    ``sample_batched`` samples for observation x_i alone), known up to a constant per
    observation, which the ranks do not see; for NPE this is the flow's log q(θ|x_i)
    restricted to the prior's support.  It assumes ℓ is exact for the surrogate (a
    surrogate's own density; for an MCMC posterior the draws must have converged).  Pass
    ``log_prob(θ [b, d], x [b, *x_shape]) → [b]`` to rank by another density instead.
    """
    x = _observations(posterior, x)
    theta, samples = _draws(posterior, theta, x, samples, n_samples, seed, sample_options)
    everything = torch.cat([theta[:, None], samples], 1)
    if log_prob is None:
        values = per_observation_log_prob(posterior, everything, x)
    else:
        n, k, d = everything.shape
        with torch.no_grad():
            values = log_prob(everything.reshape(n * k, d), x.repeat_interleave(k, 0))
        values = values.reshape(n, k)
    _, pit = _randomized_ranks(
        values[:, :1].double().cpu(), values[:, 1:, None].double().cpu(), _generator(seed)
    )
    credibility = 1 - pit[:, 0]
    levels, coverage = _curve(credibility, levels)
    return CoverageCurve(levels, coverage, credibility, label="HPD regions")


def tarp(
    posterior: Posterior | None,
    theta: Any,
    x: Any = None,
    *,
    n_samples: int = 100,
    samples: Tensor | None = None,
    references: Tensor | None = None,
    normalize: bool = True,
    levels: Any = None,
    seed: int | None = 0,
    **sample_options: Any,
) -> TARPResult:
    r"""TARP coverage (Tests of Accuracy with Random Points) of ``posterior`` on pairs
    θ ``[N, theta_dim]``, x ``[N, *x_shape]``; samples only, so any posterior (or just
    ``samples`` ``[N, L, theta_dim]``) will do.

    With ``normalize``, θ and the draws are mapped to [0, 1]^d by the range of the true
    θ_i.  Each pair gets a reference point θ_ref,i (``references`` ``[N, d]`` in those
    coordinates, default uniform on the box spanned by the true θ_i: [0, 1]^d when
    normalised) and the credibility 1 − u_i, u_i the
    randomised fraction of draws farther from θ_ref,i than θ_i (module docstring): the
    level of the ball around θ_ref,i whose surface passes through θ_i.  The coverage
    curve is the fraction of pairs with credibility ≤ c; ``atc`` = ∫_{½}^{1} (coverage(c)
    − c) dc = mean_i(1 − max(cred_i, ½)) − ⅜ (exact, no binning), about 0 ± `atc_tolerance`
    for a calibrated posterior; ``ks_p_value()`` tests the whole curve.
    """
    theta, samples = _draws(posterior, theta, x, samples, n_samples, seed, sample_options)
    theta, samples = theta.double().cpu(), samples.double().cpu()
    n, _, d = samples.shape
    generator = _generator(seed)
    low, high = theta.min(0).values, theta.max(0).values
    scale = torch.where(high > low, high - low, torch.ones_like(high))
    if normalize:
        theta, samples = (theta - low) / scale, (samples - low) / scale
        low, scale = torch.zeros_like(low), torch.ones_like(scale)
    if references is None:
        references = low + scale * torch.rand(n, d, generator=generator, dtype=torch.float64)
    references = torch.as_tensor(references, dtype=torch.float64)
    if references.shape != (n, d):
        raise ShapeError(f"references must be [{n}, {d}], got {list(references.shape)}")
    distance_true = (theta - references).norm(dim=-1)
    distance_drawn = (samples - references[:, None]).norm(dim=-1)
    # statistic −distance: u_i is the fraction of draws farther from the reference
    _, pit = _randomized_ranks(-distance_true[:, None], -distance_drawn[..., None], generator)
    credibility = 1 - pit[:, 0]
    levels, coverage = _curve(credibility, levels)
    atc = float((1 - credibility.clamp_min(0.5)).mean()) - 3 / 8
    return TARPResult(levels, coverage, credibility, "TARP", atc=atc, references=references)
