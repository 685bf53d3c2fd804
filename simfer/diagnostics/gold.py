r"""Is a simulator's gold unbiased?  `check_gold`: one check for any simulator with gold.

The gold of an event is its joint log ratio log r(x,z|θ,θ_ref) = log p(x,z|θ) −
log p(x,z|θ_ref) and its joint score t(x,z|θ) = ∇_θ log p(x,z|θ) (`simfer.simulator`).  The
gold-mining losses regress on them because they are unbiased for the intractable ratio
and score (Brehmer, Louppe, Pavez & Cranmer, PNAS 2020, arXiv:1805.12244):

    (3)  E[t(x,z|θ) | x] = t(x|θ)                  with x, z ~ p(x,z|θ),
    (4)  E[r(x,z|θ,θ_ref) | x] = r(x|θ,θ_ref)      with x, z ~ p(x,z|θ_ref).

Averaging (3) and (4) over x gives two identities that need no likelihood at all, since
E_θ[t(x|θ)] = ∫ ∇_θ p(x|θ) dx = 0 and E_θ_ref[r(x|θ,θ_ref)] = ∫ p(x|θ) dx = 1:

    (1)  E_{x,z ~ θ}[t(x,z|θ)] = 0,
    (2)  E_{x,z ~ θ_ref}[r(x,z|θ,θ_ref)] = 1.

A wrong joint density breaks them: a forgotten factor that depends on θ shifts the score's
mean and the ratio's, a missing normalisation too.  Their blind spot is an error that keeps
the means, such as a joint score with the wrong sign or scale; (3) and (4) catch those, when
the exact score or ratio is known (a toy version of the simulator, a closed form).

`check_gold` simulates n events at θ and n at θ_ref with gold and tests:

* (1) and (2) by the sample mean against its Monte-Carlo standard error (`MeanCheck`:
  z = (mean − expected)/stderr, two-sided);
* (3) and (4), when the exact quantity is given, by conditional means: with d = gold −
  exact, E[d | x] = 0 implies E[d | s(x)] = 0 for any statistic s, so the events are binned
  in s (x itself for one number per event, else the exact quantity), each bin's mean of d
  gets the z-score mean/stderr, and Σ z² is χ²-distributed with one degree of freedom per
  bin under the identity (`BinnedCheck`).  Its p-value is reported also as the one-sided
  normal z = Φ⁻¹(1 − p), so that every check is judged by the same threshold.

The result passes when no check's z reaches ``z_threshold`` (4 by default: a correct
simulator fails one check in ~16 000).  Each binned check is only as strong as its
binning: it sees a bias that averages out within a bin only through other bins.  The
ratio's variance grows with the distance between θ and θ_ref (when
∫ p(x,z|θ)²/p(x,z|θ_ref) diverges, so does the variance of r(x,z) and no standard error
holds); check at a θ that θ_ref can reach.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from scipy.stats import chi2, norm
from torch import Tensor

from ..data import RaggedSets, SimulationData
from ..errors import ShapeError
from ..seeding import Seed, make_generator

if TYPE_CHECKING:
    from ..simulator import Simulator

__all__ = ["BinnedCheck", "GoldCheck", "MeanCheck", "binned_mean_test", "check_gold"]


def _z(mean: float, expected: float, stderr: float) -> float:
    """(mean − expected)/stderr; 0 for an exact match without noise, ±inf for a miss."""
    if stderr > 0:
        return (mean - expected) / stderr
    if mean == expected:
        return 0.0
    return math.copysign(math.inf, mean - expected) if not math.isnan(mean) else math.nan


@dataclass(frozen=True)
class MeanCheck:
    """The identity E[value] = ``expected`` tested by the sample mean of ``n`` values.

    ``z`` = (mean − expected)/stderr, stderr = std/√n; ``p_value`` is two-sided."""

    identity: str
    mean: float
    stderr: float
    expected: float
    n: int

    @property
    def z(self) -> float:
        return _z(self.mean, self.expected, self.stderr)

    @property
    def p_value(self) -> float:
        return float(2 * norm.sf(abs(self.z)))

    def passes(self, z_threshold: float) -> bool:
        """Whether |z| < ``z_threshold``."""
        return abs(self.z) < z_threshold

    def as_dict(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "mean": self.mean,
            "stderr": self.stderr,
            "expected": self.expected,
            "n": self.n,
            "z": self.z,
            "p_value": self.p_value,
        }

    def describe(self) -> str:
        return (
            f"{self.identity}: mean {self.mean:.4g} ± {self.stderr:.2g} "
            f"(n = {self.n}), z = {self.z:+.2f}"
        )


@dataclass(frozen=True)
class BinnedCheck:
    """E[d | s] = 0 tested in bins of s: ``chi2`` = Σ_b z_b² on ``dof`` populated bins,
    z_b = mean_b(d)/stderr_b(d).

    Per bin (populated ones only, in increasing s): ``centres`` (the mean of s),
    ``means`` and ``stderrs`` of d, ``counts``.  ``spread``: the standard deviation of d
    over all events, the noise the test looks through.  ``z`` = Φ⁻¹(1 − p), one-sided:
    large when the bins' means stray, negative when they fit better than chance."""

    identity: str
    chi2: float
    dof: int
    spread: float
    centres: tuple[float, ...] = field(repr=False)
    means: tuple[float, ...] = field(repr=False)
    stderrs: tuple[float, ...] = field(repr=False)
    counts: tuple[int, ...] = field(repr=False)

    @property
    def p_value(self) -> float:
        return float(chi2.sf(self.chi2, self.dof))

    @property
    def z(self) -> float:
        return float(norm.isf(self.p_value))

    @property
    def pulls(self) -> tuple[float, ...]:
        """Each bin's z-score mean/stderr."""
        return tuple(_z(m, 0.0, e) for m, e in zip(self.means, self.stderrs, strict=True))

    @property
    def max_abs_pull(self) -> float:
        return max(abs(p) for p in self.pulls)

    def passes(self, z_threshold: float) -> bool:
        """Whether z < ``z_threshold`` (p above the normal tail beyond it)."""
        return self.z < z_threshold

    def as_dict(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "chi2": self.chi2,
            "dof": self.dof,
            "p_value": self.p_value,
            "z": self.z,
            "max_abs_pull": self.max_abs_pull,
            "spread": self.spread,
        }

    def describe(self) -> str:
        return (
            f"{self.identity}: χ² = {self.chi2:.1f} on {self.dof} bins, "
            f"p = {self.p_value:.3g}, z = {self.z:+.2f} (spread of the difference "
            f"{self.spread:.3g})"
        )


def binned_mean_test(
    d: Tensor,
    s: Tensor,
    bins: int | Tensor = 20,
    *,
    min_count: int = 50,
    identity: str = "E[d | s] = 0",
) -> BinnedCheck:
    """Test E[d | s] = 0 in bins of the statistic s.  The result also holds each bin's
    mean and standard error of d (and mean s), which is what a plot of binned means needs.

    Args:
        d: ``[n]`` the values whose conditional mean should vanish (gold − exact).
        s: ``[n]`` what to bin on (any function of x).
        bins: a number of quantile bins of s (equally populated), or the bin edges
            ``[k]`` (k + 1 bins, the outer two open).
        min_count: bins with fewer events are skipped (their standard error is unreliable).
        identity: the name shown in reports.

    Raises:
        ShapeError: d and s are not two ``[n]`` tensors.
        ValueError: no bin holds ``min_count`` events.
    """
    d, s = torch.as_tensor(d).detach(), torch.as_tensor(s).detach()
    if d.ndim != 1 or s.shape != d.shape:
        raise ShapeError(f"d and s must both be [n], got {list(d.shape)} and {list(s.shape)}")
    d, s = d.double().cpu().contiguous(), s.double().cpu().contiguous()
    if isinstance(bins, int):
        if bins < 1:
            raise ValueError(f"bins must be a positive number, got {bins}")
        edges = torch.quantile(s, torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1])
    else:
        edges = torch.as_tensor(bins, dtype=torch.float64).flatten()
    index = torch.bucketize(s, edges)
    counts = torch.bincount(index, minlength=len(edges) + 1)
    totals = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, index, d)
    centre_totals = torch.zeros_like(totals).index_add_(0, index, s)
    populated = counts >= max(min_count, 2)
    if not bool(populated.any()):
        raise ValueError(
            f"no bin holds {min_count} events ({len(d)} events in {len(counts)} bins): "
            f"simulate more events or use fewer bins"
        )
    means = totals / counts.clamp(min=1)
    squares = torch.zeros_like(totals).index_add_(0, index, (d - means[index]) ** 2)
    variances = squares / (counts - 1).clamp(min=1)
    stderrs = (variances / counts.clamp(min=1)).sqrt()
    centres = centre_totals / counts.clamp(min=1)
    keep = populated.nonzero().flatten()
    pulls = [_z(float(means[b]), 0.0, float(stderrs[b])) for b in keep]
    return BinnedCheck(
        identity=identity,
        chi2=float(sum(p * p for p in pulls)),
        dof=len(keep),
        spread=float(d.std()) if len(d) > 1 else 0.0,
        centres=tuple(float(centres[b]) for b in keep),
        means=tuple(float(means[b]) for b in keep),
        stderrs=tuple(float(stderrs[b]) for b in keep),
        counts=tuple(int(counts[b]) for b in keep),
    )


def _mean_check(values: Tensor, expected: float, identity: str) -> MeanCheck:
    values = values.detach().double()
    n = len(values)
    stderr = float(values.std() / math.sqrt(n)) if n > 1 else math.inf
    return MeanCheck(identity, float(values.mean()), stderr, expected, n)


@dataclass(frozen=True, eq=False)
class GoldCheck:
    """The outcome of `check_gold`.

    ``score_mean``: (1) per component of θ, E_θ[t_j(x,z|θ)] = 0.  ``ratio_mean``: (2)
    E_θ_ref[r(x,z|θ,θ_ref)] = 1.  ``score_vs_exact``: (3) per component, binned (None
    without ``exact_score``).  ``ratio_vs_exact``: (4), binned (None without
    ``exact_log_ratio``).  ``passed``: every check below ``z_threshold``.

    ``at_theta`` and ``at_reference`` are the simulations the checks used (x drawn at θ and
    at θ_ref, gold at (θ, θ_ref) in both), for plots or further tests; ``n_invalid``
    counts the failed simulations left out."""

    simulator: str
    theta: Tensor
    theta_ref: Tensor
    z_threshold: float
    score_mean: tuple[MeanCheck, ...]
    ratio_mean: MeanCheck
    score_vs_exact: tuple[BinnedCheck, ...] | None
    ratio_vs_exact: BinnedCheck | None
    n_invalid: int
    at_theta: SimulationData = field(repr=False)
    at_reference: SimulationData = field(repr=False)

    @property
    def checks(self) -> dict[str, MeanCheck | BinnedCheck]:
        """Every check that ran, by name."""
        named: dict[str, MeanCheck | BinnedCheck] = {}
        for j, check in enumerate(self.score_mean):
            named[f"score_mean[{j}]"] = check
        named["ratio_mean"] = self.ratio_mean
        for j, check in enumerate(self.score_vs_exact or ()):
            named[f"score_vs_exact[{j}]"] = check
        if self.ratio_vs_exact is not None:
            named["ratio_vs_exact"] = self.ratio_vs_exact
        return named

    @property
    def failed(self) -> list[str]:
        """The names of the checks at or beyond the threshold."""
        return [name for name, c in self.checks.items() if not c.passes(self.z_threshold)]

    @property
    def passed(self) -> bool:
        return not self.failed

    @staticmethod
    def _point(theta: Tensor) -> Any:
        """A point as a list, or a summary of per-row values."""
        if theta.ndim == 1:
            return theta.tolist()
        low, high = theta.min(0).values.tolist(), theta.max(0).values.tolist()
        return {"rows": theta.shape[0], "min": low, "max": high}

    @staticmethod
    def _show(theta: Tensor) -> str:
        if theta.ndim == 1:
            return "[" + ", ".join(f"{v:.4g}" for v in theta.tolist()) + "]"
        return f"one per event ({theta.shape[0]} rows)"

    def as_dict(self) -> dict[str, Any]:
        """The numbers, JSON-able (inf and NaN as Python floats)."""
        return {
            "simulator": self.simulator,
            "theta": self._point(self.theta),
            "theta_ref": self._point(self.theta_ref),
            "n": [len(self.at_theta), len(self.at_reference)],
            "n_invalid": self.n_invalid,
            "z_threshold": self.z_threshold,
            "passed": self.passed,
            "failed": self.failed,
            "checks": {name: check.as_dict() for name, check in self.checks.items()},
        }

    def summary(self) -> str:
        """A few lines for a person: the verdict, then one line per check."""
        theta, theta_ref = self._show(self.theta), self._show(self.theta_ref)
        verdict = "PASS" if self.passed else f"FAIL ({', '.join(self.failed)})"
        lines = [
            f"gold of '{self.simulator}' at θ = {theta}, θ_ref = {theta_ref}, "
            f"{len(self.at_theta)} + {len(self.at_reference)} events "
            f"({self.n_invalid} invalid left out): {verdict}, threshold |z| < {self.z_threshold:g}"
        ]
        lines += [f"  {name}: {check.describe()}" for name, check in self.checks.items()]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _as_rows(sim: Simulator, value: Any, n: int, what: str, dtype, device) -> Tensor:
    """θ or θ_ref as ``[n, theta_dim]``, from one point ``[theta_dim]`` or from rows."""
    tensor = torch.as_tensor(value, dtype=dtype, device=device)
    if tensor.ndim < 2:
        tensor = tensor.reshape(-1)  # one point (a number, for one parameter): every row
    return sim.check_theta(tensor, batch=n, what=what, device=device)


def _single(rows: Tensor) -> Tensor:
    """One point ``[theta_dim]`` when every row is the same, else the rows (on the CPU)."""
    return rows[0].cpu() if bool((rows == rows[:1]).all()) else rows.cpu()


def _bin_statistic(x: Tensor | RaggedSets, exact: Tensor, bin_by: Callable | None) -> Tensor:
    if bin_by is not None:
        return torch.as_tensor(bin_by(x)).reshape(-1)
    if isinstance(x, Tensor) and x.shape[1:].numel() == 1:
        return x.reshape(-1)
    return exact


def _call_exact(fn: Callable, *args: Any, design: Tensor | None) -> Tensor:
    value = fn(*args) if design is None else fn(*args, design)
    return torch.as_tensor(value).detach()


def check_gold(
    sim: Simulator,
    theta: Tensor | Sequence[float],
    theta_ref: Tensor | Sequence[float],
    *,
    exact_log_ratio: Callable[..., Tensor] | None = None,
    exact_score: Callable[..., Tensor] | None = None,
    n: int | None = None,
    seed: Seed = None,
    design: Tensor | Sequence[float] | None = None,
    bins: int | Tensor = 20,
    bin_by: Callable[[Tensor | RaggedSets], Tensor] | None = None,
    min_count: int = 50,
    z_threshold: float = 4.0,
    dtype: torch.dtype = torch.float64,
) -> GoldCheck:
    """Check that ``sim``'s gold is unbiased (see the module docstring for the identities).

    Args:
        sim: a simulator with gold (`Simulator.has_gold`).
        theta: the point θ ``[theta_dim]``, or one θ per event ``[n, theta_dim]`` (e.g.
            prior draws: the identities hold at every θ, so also averaged over them).
        theta_ref: the reference point θ_ref ``[theta_dim]`` (or ``[n, theta_dim]``).
        exact_log_ratio: ``(x, theta, theta_ref[, design]) -> [n]``, the exact
            log r(x|θ,θ_ref), e.g. ``sim.log_likelihood_ratio``; enables check (4).
        exact_score: ``(x, theta[, design]) -> [n, theta_dim]``, the exact t(x|θ), e.g.
            ``sim.likelihood_score``; enables check (3).
        n: events simulated at θ, and again at θ_ref (default 10 000, or the rows of θ).
        seed: an int, a ``torch.Generator`` or None; the same seed gives the same events.
        design: the design the simulator runs at, ``[design_dim]`` or ``[n, design_dim]``;
            passed to the exact callables as their last argument.
        bins: quantile bins of the binned checks (a number) or their edges (a tensor).
        bin_by: ``x -> [n]``, the statistic to bin on; default x itself when an event is
            one number, else the exact score component or exact log ratio being checked.
        min_count: the fewest events a bin needs to count.
        z_threshold: the z at or beyond which a check fails.
        dtype: floating dtype of θ, hence of x and the gold (float64: the sums of many
            log-densities keep their digits).

    Returns:
        a `GoldCheck` (``.passed``, ``.summary()``, ``.as_dict()``, each check's numbers).

    Raises:
        GoldNotAvailableError: the simulator has no gold.
        ShapeError, SupportError: θ or θ_ref of the wrong shape or outside the support.
    """
    device = theta.device if isinstance(theta, Tensor) else None
    if torch.as_tensor(theta).ndim == 2:  # one θ per event
        if n is not None and n != len(theta):
            raise ShapeError(f"theta has {len(theta)} rows, but n = {n}")
        n = len(theta)
    n = 10_000 if n is None else int(n)
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    theta = _as_rows(sim, theta, n, "theta", dtype, device)
    theta_ref = _as_rows(sim, theta_ref, n, "theta_ref", dtype, device)
    generator = make_generator(seed, theta.device)
    run = dict(gold=True, theta_ref=theta_ref, seed=generator)
    at_theta = sim.simulate(theta, design, **run)
    at_reference = sim.simulate(theta, design, at_reference=True, **run)
    n_invalid = at_theta.n_invalid + at_reference.n_invalid
    at_theta, at_reference = at_theta.valid_only(), at_reference.valid_only()

    score_mean = tuple(
        _mean_check(at_theta.joint_score[:, j], 0.0, f"E_θ[t_{j}(x,z|θ)] = 0")
        for j in range(sim.theta_dim)
    )
    ratio = at_reference.joint_log_ratio.exp()
    ratio_mean = _mean_check(ratio, 1.0, "E_θ_ref[r(x,z|θ,θ_ref)] = 1")

    binned = dict(bins=bins, min_count=min_count)
    score_vs_exact = None
    if exact_score is not None:
        exact = _call_exact(exact_score, at_theta.x, at_theta.theta, design=at_theta.design)
        exact = exact.reshape(len(at_theta), sim.theta_dim).to(at_theta.joint_score)
        score_vs_exact = tuple(
            binned_mean_test(
                at_theta.joint_score[:, j] - exact[:, j],
                _bin_statistic(at_theta.x, exact[:, j], bin_by),
                identity=f"E[t_{j}(x,z|θ) − t_{j}(x|θ) | x] = 0",
                **binned,
            )
            for j in range(sim.theta_dim)
        )
    ratio_vs_exact = None
    if exact_log_ratio is not None:
        exact_log_r = _call_exact(
            exact_log_ratio,
            at_reference.x,
            at_reference.theta,
            at_reference.theta_ref,
            design=at_reference.design,
        )
        exact_log_r = exact_log_r.reshape(len(at_reference)).to(ratio)
        ratio_vs_exact = binned_mean_test(
            ratio - exact_log_r.exp(),
            _bin_statistic(at_reference.x, exact_log_r, bin_by),
            identity="E[r(x,z|θ,θ_ref) − r(x|θ,θ_ref) | x] = 0",
            **binned,
        )
    return GoldCheck(
        simulator=sim.name,
        theta=_single(theta),
        theta_ref=_single(theta_ref),
        z_threshold=float(z_threshold),
        score_mean=score_mean,
        ratio_mean=ratio_mean,
        score_vs_exact=score_vs_exact,
        ratio_vs_exact=ratio_vs_exact,
        n_invalid=n_invalid,
        at_theta=at_theta,
        at_reference=at_reference,
    )
