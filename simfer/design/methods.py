"""`eig()`: the expected information gain of many candidate designs, by a table of methods.

    EIG(d) = E_{p(θ) p(x|θ,d)} [ log p(x|θ,d) − log p(x|d) ]

A call classifies its source (`simfer.design.sources.resolve_source`: a simulator with a
likelihood, or a design-conditioned NLE, ratio, posterior or score surrogate), picks the
method (the kind's default when none is named), checks the method accepts that kind,
draws the shared randomness and runs the method's row of `METHODS`:

=========  =====================  ==========================================  =============
method     sources                estimate (``eig``)                          lower / upper
=========  =====================  ==========================================  =============
nmc        likelihood, nle        nested Monte Carlo (≥ EIG, O(1/M))          PCE / NMC
pce        likelihood, nle        prior contrastive estimation (≤ EIG)        PCE / NMC
infonce    ratio                  InfoNCE (≤ EIG, ≤ log(K + 1))               InfoNCE / nested
nwj        ratio (NRE, BNRE)      NWJ (≤ EIG, uncapped)                       NWJ / nested
ba         posterior              Barber–Agakov (≤ EIG)                       BA / –
fisher     score (SALLY)          ½ log det(I + n Σθ F(d)) (= EIG if linear-  – / –
                                  Gaussian)
=========  =====================  ==========================================  =============

An experiment of ``n_events`` events iid given (θ, d) enters a row as its ``events`` field
says: NMC, PCE and InfoNCE sum the per-event log-likelihood (or log ratio) over the events
of each outer x (`simfer.design.sources.experiment_model`), so a surrogate trained on
one-event simulations gives the EIG of an experiment of many; Fisher scales its
criterion; NWJ and BA take one event.

A new estimator is one new row (and, for a new kind of source, one line in
`simfer.design.sources.ESTIMATOR_KINDS`); nothing else changes.  The maths of each row
is in its module: `nmc`, `contrastive`, `barber_agakov`, `fisher`.

Common random numbers.  By default every design sees the same outer θ_n, the same inner
θ_m and the same simulator (or surrogate) seed, so the differences EIG(d_i) − EIG(d_j)
are estimated far more precisely than the values themselves and the argmax is stable.
With ``common_random_numbers=False`` each design draws its own (independent estimates,
e.g. for checking calibration of the standard errors).  All draws come from ``seed``
alone (the global torch generator is left as it was).  Only ``prior.sample`` is used
(and ``prior.log_prob`` by ``"ba"``), so the prior may be a set of posterior draws
(`simfer.prior.Empirical`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from ..errors import SimferError
from ..estimators.ratio import METHODS as RATIO_METHODS
from ..prior import as_prior, distribution_device
from ..seeding import Seed, make_generator, seeded
from ..simulator import Simulator
from .barber_agakov import barber_agakov
from .contrastive import infonce_terms, nwj_terms
from .fisher import FISHER_MODES, fisher_curve, prior_covariance
from .nmc import contrastive_monte_carlo, nested_terms
from .result import EIGResult
from .sources import (
    Source,
    experiment_model,
    likelihood_model,
    ratio_model,
    resolve_source,
    source_kind,
    surrogate_likelihood_model,
)

__all__ = ["eig", "METHODS", "DEFAULT_METHOD", "ALIASES", "Method"]


@dataclass(frozen=True)
class _Options:
    n_outer: int
    n_inner: int
    seed: Seed
    device: torch.device
    dtype: torch.dtype
    common_random_numbers: bool
    max_memory: int
    progress: bool
    fisher: str = "reference"
    n_events: int = 1


@dataclass(frozen=True)
class Method:
    """One row of the method table: the source kinds it accepts, how it runs
    ``(source, prior, designs [k, D], options) -> EIGResult``, and how an experiment of
    ``n_events`` iid events enters it: ``"sum"`` (each outer x holds n events and the
    per-event log-likelihood or log ratio is summed over them), ``"criterion"`` (the
    method's formula takes n itself), or the reason it takes one event only."""

    name: str
    sources: frozenset[str]
    run: Callable[[Source, Distribution, Tensor, _Options], EIGResult]
    summary: str
    events: str = "sum"


def eig(
    source: Any,
    prior: Distribution,
    designs: Any,
    *,
    method: str | None = None,
    simulator: Simulator | None = None,
    n_outer: int = 1000,
    n_inner: int = 1000,
    seed: Seed = None,
    device: str | torch.device | None = None,
    common_random_numbers: bool = True,
    max_memory: int = 2**25,
    dtype: torch.dtype = torch.float32,
    fisher: str = "reference",
    n_events: int = 1,
    progress: bool = True,
) -> EIGResult:
    """Estimate the EIG at every candidate design at once.

    Args:
        source: a `simfer.Simulator` with a tractable ``log_likelihood`` (``has_likelihood``)
            and a design (``design_dim >= 1``), or a trained estimator conditioned on a
            design (``design_dim >= 1``): a `LikelihoodEstimator` (NLE, SCANDAL), a
            `RatioEstimator`, a `PosteriorEstimator` or a `ScoreEstimator` (SALLY).
        prior: p(θ), a torch distribution with ``event_shape == (theta_dim,)``; only its
            ``sample`` is used (and ``log_prob`` by ``"ba"``).
        designs: ``[k, design_dim]`` candidate designs (``[k]`` when design_dim is 1).
        method: the estimator (see `METHODS`; default: the source kind's, `DEFAULT_METHOD`):
            ``"nmc"`` (nested Monte Carlo) or ``"pce"`` (the prior-contrastive lower
            bound) for a likelihood or an NLE — both are computed in one pass, the
            result's ``lower`` is PCE and its ``upper`` NMC; ``"infonce"`` or ``"nwj"``
            for a ratio estimator (NWJ: NRE/BNRE only); ``"ba"`` (alias ``"posterior"``)
            for a posterior estimator; ``"fisher"`` for a score estimator.
        simulator: the `simfer.Simulator` that draws the outer x_n ~ p(x|θ_n, d) for a
            surrogate source: required for ratio, posterior and score estimators (they
            cannot draw x); for an NLE, x come from the surrogate itself unless it is
            given.  It needs no likelihood.  The result's notes say where x came from.
        n_outer: N, outer samples (θ_n, x_n) per design; the standard error is ∝ 1/√N.
        n_inner: M, inner (contrastive) samples θ_m for the marginal p(x|d) (NMC, PCE,
            InfoNCE, NWJ): NMC's upward and PCE's downward bias are O(1/M), and PCE and
            InfoNCE are capped at log(M + 1).  For ``"fisher"``: the prior draws whose
            covariance is Σ_θ when the prior has no closed-form covariance.  Unused by BA.
        seed: an int or a ``torch.Generator``: the same seed gives the same result.
        device: where the likelihood matrices are computed (default: the CPU, or a
            surrogate's own device).
        common_random_numbers: the same θ_n, θ_m and simulator seed at every design.
        max_memory: the most tensor elements one chunk holds: designs (and, when one
            design is too large, outer samples) are processed in chunks that fit, and
            rows are evaluated in batches whose inputs fit.
        dtype: of θ, x and the likelihood matrices (float32; float64 costs 2–3× the time
            for a precision far below the Monte-Carlo error). Sums are kept in float64.
        fisher: for ``"fisher"``, where x is drawn to estimate F(d): ``"reference"`` (at
            the score estimator's θ_ref) or ``"prior"`` (at prior draws, two x each).
        n_events: events per experiment, independent and identically distributed given
            (θ, d).  For ``"nmc"``, ``"pce"`` and ``"infonce"`` each outer x_n is an
            experiment of n_events events and the per-event log-likelihood (or log ratio)
            is summed over them, log p(x_n|θ,d) = Σ_i log p(x_ni|θ,d): a surrogate
            trained on one-event simulations then gives the EIG of the whole experiment.
            ``simulator=`` draws one event per row (n rows per experiment) or all n
            stacked along its first axis (``WeinbergAngle(n_events=n)`` against an
            estimator trained on ``WeinbergAngle(n_events=1)``); for a simulator with an
            exact likelihood, an experiment is n_events runs of it.  The cost is N·M·n
            per-event evaluations per design.  For ``"fisher"``: the criterion is
            ½ log det(I + n_events Σ_θ F(d)) (x from a one-event simulator).
        progress: a progress bar over the chunks.

    Returns:
        An `EIGResult`.
    """
    kind = source_kind(source)
    name = DEFAULT_METHOD[kind] if method is None else str(method).lower()
    name = ALIASES.get(name, name)
    if name not in METHODS:
        choices = "; ".join(f"{key!r}: {row.summary}" for key, row in sorted(METHODS.items()))
        raise ValueError(f"unknown EIG method {method!r}; choose one of {choices}")
    if kind not in METHODS[name].sources:
        usable = sorted(m for m, row in METHODS.items() if kind in row.sources)
        raise ValueError(
            f"method {name!r} does not apply to a {kind} source ({_name(source)}); use one "
            f"of {usable}"
        )
    if isinstance(n_events, bool) or not isinstance(n_events, int) or n_events < 1:
        raise ValueError(f"n_events must be an int ≥ 1, got {n_events!r}")
    events = METHODS[name].events
    if n_events != 1 and events not in ("sum", "criterion"):
        raise ValueError(f"n_events = {n_events} does not apply to method {name!r}: {events}")
    source = resolve_source(source, simulator, n_events if events == "sum" else 1)
    for label, value, least in (("n_outer", n_outer, 2), ("n_inner", n_inner, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{label} must be an int ≥ {least}, got {value!r}")
    if not isinstance(max_memory, int) or max_memory < 1:
        raise ValueError(f"max_memory must be a positive int (elements), got {max_memory!r}")
    if fisher not in FISHER_MODES:
        raise ValueError(f"fisher must be one of {FISHER_MODES}, got {fisher!r}")
    if device is None:
        device = source.model.device if kind != "likelihood" else "cpu"
    options = _Options(
        n_outer=n_outer,
        n_inner=n_inner,
        seed=seed,
        device=torch.device(device),
        dtype=dtype,
        common_random_numbers=bool(common_random_numbers),
        max_memory=max_memory,
        progress=progress,
        fisher=fisher,
        n_events=n_events,
    )
    prior = as_prior(prior, source.theta_dim)
    designs = source.check_designs(designs, options.device, options.dtype)
    with torch.no_grad():
        return METHODS[name].run(source, prior, designs, options)


def _name(source: Any) -> str:
    if isinstance(source, Simulator):
        return f"simulator '{source.name}'"
    return type(source).__name__


# -- shared randomness ---------------------------------------------------------------------
@dataclass
class _Draws:
    """Outer θ ``[1 or k, N, p]``, inner θ ``[1 or k, M, p]`` (or None) and one x seed per
    design: shared by all designs (common random numbers) or one set per design."""

    outer: Tensor
    inner: Tensor | None
    x_seeds: list[int]


def _draws(source: Source, prior: Distribution, k: int, o: _Options, inner: bool) -> _Draws:
    base = make_generator(o.seed, "cpu")
    if o.common_random_numbers:
        s_outer, s_inner, s_x = _seeds(base, 3)
        outer = _prior_draws(source, prior, o.n_outer, s_outer, o)[None]
        theta_inner = _prior_draws(source, prior, o.n_inner, s_inner, o)[None] if inner else None
        return _Draws(outer, theta_inner, [s_x] * k)
    seeds = [_seeds(base, 3) for _ in range(k)]
    outer = torch.stack([_prior_draws(source, prior, o.n_outer, s[0], o) for s in seeds])
    theta_inner = None
    if inner:
        theta_inner = torch.stack([_prior_draws(source, prior, o.n_inner, s[1], o) for s in seeds])
    return _Draws(outer, theta_inner, [s[2] for s in seeds])


def _seeds(generator: torch.Generator, n: int) -> list[int]:
    return [int(s) for s in torch.randint(0, 2**62, (n,), generator=generator)]


def _prior_draws(source: Source, prior: Distribution, n: int, seed: int, o: _Options) -> Tensor:
    """``[n, theta_dim]`` draws of the prior from ``seed``, checked against the source
    (the simulator's support, when there is one), in the run's dtype and on its device."""
    with seeded(seed):
        theta = prior.sample((n,))
    theta = theta.to(device=o.device, dtype=o.dtype)
    return source.check_theta(theta, what="theta drawn from the prior")


# -- notes -----------------------------------------------------------------------------------
def _where(mask: Tensor, designs: Tensor) -> str:
    rows = torch.nonzero(mask).flatten()
    shown = ", ".join(str(_rounded(designs[int(j)])) for j in rows[:3])
    return f"{int(rows.numel())} of {designs.shape[0]} designs (e.g. {shown})"


def _rounded(design: Tensor) -> list[float]:
    return [float(f"{v:.4g}") for v in design.tolist()]


def _dropped_note(dropped: Tensor, designs: Tensor, n_outer: int, what: str) -> list[str]:
    mask = dropped > 0
    if not bool(mask.any()):
        return []
    return [
        f"non-finite terms ({what}) left out at {_where(mask, designs)}; at most "
        f"{int(dropped.max())} of N = {n_outer} per design"
    ]


def _saturation_note(
    value: Tensor, stderr: Tensor, m: int, designs: Tensor, label: str
) -> list[str]:
    """A note where a bound capped at log(m + 1) comes within 10 % or 3 standard errors of
    its cap."""
    cap = math.log(m + 1)
    saturated = (value >= 0.9 * cap) | (value >= cap - 3 * stderr.nan_to_num(0.0))
    if not bool(saturated.any()):
        return []
    return [
        f"{label} saturated at its cap log(M+1) = {cap:.3g} nats (within 10 % or 3 standard "
        f"errors) at {_where(saturated, designs)}: the EIG there may be far larger than the "
        f"lower bound; increase n_inner"
    ]


def _gap_note(
    high: Tensor, high_err: Tensor, low: Tensor, low_err: Tensor, designs: Tensor, o: _Options
) -> list[str]:
    gap = high - low
    noise = (high_err.square() + low_err.square()).sqrt()
    wide = (gap > 3 * noise) & (gap > 0.05 * high.abs())
    if not bool(wide.any()):
        return []
    return [
        f"NMC − PCE gap up to {float(gap[wide].max()):.3g} nats, beyond 3 standard errors, "
        f"at {_where(wide, designs)}: M = {o.n_inner} inner samples leave an O(1/M) bias that "
        f"is not negligible; increase n_inner"
    ]


# -- NMC and PCE: an exact likelihood or an NLE ----------------------------------------------
def _nested(report: str) -> Callable[[Source, Distribution, Tensor, _Options], EIGResult]:
    """Run NMC and PCE together; report ``report`` ("nmc" or "pce") as ``eig``."""

    def run(source: Source, prior: Distribution, designs: Tensor, o: _Options) -> EIGResult:
        k = designs.shape[0]
        draws = _draws(source, prior, k, o, inner=True)
        if source.kind == "likelihood":
            model, notes = likelihood_model(source.model), []
        else:
            model = surrogate_likelihood_model(source)
            notes = [_nle_note(source)]
        notes += _events_note(source)
        estimate = contrastive_monte_carlo(
            experiment_model(model, source),
            designs,
            draws.outer,
            draws.inner,
            draws.x_seeds,
            terms=nested_terms,
            max_memory=o.max_memory,
            progress=o.progress,
            desc=f"EIG ({report}, {k} designs)",
        )
        (nmc, pce), (nmc_err, pce_err) = estimate.mean, estimate.stderr
        chosen, stderr = (nmc, nmc_err) if report == "nmc" else (pce, pce_err)
        notes += _dropped_note(estimate.dropped, designs, o.n_outer, "a likelihood of 0 or NaN")
        notes += _saturation_note(pce, pce_err, o.n_inner, designs, "PCE")
        notes += _gap_note(nmc, nmc_err, pce, pce_err, designs, o)
        return _result(designs, chosen, stderr, pce, nmc, report, o, notes)

    return run


def _nle_note(source: Source) -> str:
    if source.simulator is None:
        return (
            f"outer x drawn from {source.x_from}: this is the EIG of the surrogate model "
            f"p(θ) q(x|θ,d), bracketed by PCE and NMC as an exact likelihood's would be; pass "
            f"simulator= to draw x from the simulator instead"
        )
    return (
        f"outer x drawn from {source.x_from}, the likelihood from the surrogate "
        f"{source.name}: PCE is then a lower bound on the simulator's EIG for any surrogate "
        f"(InfoNCE with log q as its critic); NMC is an estimate, not an upper bound"
    )


def _events_note(source: Source) -> list[str]:
    n = source.n_events
    if n == 1:
        return []
    return [
        f"each outcome is an experiment of {n} events, its log-likelihood the per-event "
        f"term summed over them (exact when the events are iid given θ and d): "
        f"N·M·{n} per-event evaluations per design"
    ]


# -- InfoNCE and NWJ: a ratio estimator ------------------------------------------------------
def _contrastive(report: str) -> Callable[[Source, Distribution, Tensor, _Options], EIGResult]:
    """InfoNCE (and, for ``report == "nwj"``, NWJ) on the ratio matrix, with the nested
    estimate of the same matrix as ``upper``."""

    def run(source: Source, prior: Distribution, designs: Tensor, o: _Options) -> EIGResult:
        estimator, k = source.model, designs.shape[0]
        method = RATIO_METHODS[estimator.method]
        marginal = method.normalised and not method.needs_reference
        if report == "nwj" and not marginal:
            learns = (
                "log p(x|θ,d)/p(x|d) only up to a function of x"
                if not method.needs_reference
                else "its ratio to θ_ref, which carries the unknown factor p(x|d)/p(x|θ_ref,d)"
            )
            raise ValueError(
                f"method 'nwj' needs the marginal ratio log p(x|θ,d)/p(x|d), and a "
                f"'{estimator.method}' estimator learns {learns}: normalising it over the "
                f"contrastive θ turns NWJ into the nested estimate, which is no longer a "
                f"bound. Use method='infonce' (a lower bound for any ratio, capped at "
                f"log(n_inner + 1)), or train RatioEstimator('nre'), ('bnre') or ('nre_c') "
                f"for NWJ"
            )
        if marginal:
            reference = "marginal"
        elif method.needs_reference:
            reference = list(estimator.dims.theta_ref)
        else:  # NRE-B: a fixed θ1 = the prior's mean cancels its unknown function of x
            reference = prior.mean.tolist()
        draws = _draws(source, prior, k, o, inner=True)
        estimate = contrastive_monte_carlo(
            experiment_model(ratio_model(source, reference), source),
            designs,
            draws.outer,
            draws.inner,
            draws.x_seeds,
            terms=nwj_terms if report == "nwj" else infonce_terms,
            max_memory=o.max_memory,
            progress=o.progress,
            desc=f"EIG ({report}, {k} designs)",
        )
        infonce, nested = estimate.mean[0], estimate.mean[1]
        column = 2 if report == "nwj" else 0
        chosen, stderr = estimate.mean[column], estimate.stderr[column]
        if marginal:
            against = "the marginal p(x|d)"
        elif method.needs_reference:
            against = f"θ_ref = {reference}"
        else:
            against = f"θ1 = the prior's mean {reference}"
        notes = [
            f"outer x drawn from {source.x_from}; the critic is log r̂(x|θ,d) of "
            f"{source.name} ('{estimator.method}', against {against}): {report} is a lower "
            f"bound on the simulator's EIG for any critic; upper is the nested estimate on "
            f"the same ratio matrix (an estimate, not a bound)"
        ]
        notes += _events_note(source)
        notes += _dropped_note(estimate.dropped, designs, o.n_outer, "a log ratio of ±inf or NaN")
        notes += _saturation_note(infonce, estimate.stderr[0], o.n_inner, designs, "InfoNCE")
        return _result(designs, chosen, stderr, chosen, nested, report, o, notes)

    return run


# -- Barber–Agakov: a posterior estimator ----------------------------------------------------
def _barber_agakov(source: Source, prior: Distribution, designs: Tensor, o: _Options) -> EIGResult:
    estimator, k = source.model, designs.shape[0]
    draws = _draws(source, prior, k, o, inner=False)
    try:
        log_prior = prior.log_prob(draws.outer.to(distribution_device(prior))).to(o.device)
    except (NotImplementedError, SimferError) as error:  # torch's, or Empirical's
        raise ValueError(
            f"method 'ba' needs the prior's density log p(θ), which this "
            f"{type(prior).__name__} has not ({error}); use a prior with log_prob, or a "
            f"likelihood or ratio surrogate (NMC, PCE, InfoNCE need prior draws only)"
        ) from error

    def log_posterior(x: Tensor, theta: Tensor, design: Tensor) -> Tensor:
        return estimator.log_prob(theta=theta, x=x, design=design).to(theta.device)

    estimate = barber_agakov(
        log_posterior,
        source.sampler(),
        designs,
        draws.outer,
        log_prior,
        draws.x_seeds,
        x_numel=math.prod(estimator.dims.x_shape),
        max_memory=o.max_memory,
        progress=o.progress,
        desc=f"EIG (ba, {k} designs)",
    )
    value, stderr = estimate.mean[0], estimate.stderr[0]
    notes = [
        f"outer x drawn from {source.x_from}; q(θ|x,d) from {source.name}: a lower bound on "
        f"the simulator's EIG for any q, loose by E KL(p(θ|x,d) ‖ q(θ|x,d)), tight only "
        f"under the prior the posterior estimator was trained with"
    ]
    notes += _dropped_note(estimate.dropped, designs, o.n_outer, "log q(θ|x,d) = −inf or NaN")
    result = _result(designs, value, stderr, value, None, "ba", o, notes)
    result.n_inner = 0
    return result


# -- Fisher criterion: a score estimator (SALLY) ---------------------------------------------
def _fisher(source: Source, prior: Distribution, designs: Tensor, o: _Options) -> EIGResult:
    estimator, k = source.model, designs.shape[0]
    theta_ref = estimator.theta_ref.to(device=o.device, dtype=o.dtype)
    base = make_generator(o.seed, "cpu")
    s_outer, s_cov, s_x = _seeds(base, 3)
    cov, exact = prior_covariance(prior, lambda: _prior_draws(source, prior, o.n_inner, s_cov, o))
    if o.fisher == "reference":
        theta = source.check_theta(theta_ref.expand(o.n_outer, -1), what="theta_ref")[None]
        seeds = [s_x] * k if o.common_random_numbers else _seeds(base, k)
    else:
        draws = _draws(source, prior, k, o, inner=False)
        theta, seeds = draws.outer, draws.x_seeds

    def score(x: Tensor, design: Tensor) -> Tensor:
        return estimator.score(x=x, design=design).to(x.device)

    value, stderr, _, dropped = fisher_curve(
        score,
        source.sampler(),
        designs,
        theta,
        seeds,
        cov,
        replicates=o.fisher == "prior",
        x_numel=math.prod(estimator.dims.x_shape),
        n_events=o.n_events,
        max_memory=o.max_memory,
        progress=o.progress,
        desc=f"EIG (fisher, {k} designs)",
    )
    where = (
        f"x drawn at θ_ref = {[round(float(v), 6) for v in theta_ref.tolist()]}"
        if o.fisher == "reference"
        else "x drawn at prior θ, two per θ (within-θ covariance)"
    )
    covariance = "exact" if exact else f"the sample covariance of M = {o.n_inner} prior draws"
    notes = [
        f"Fisher criterion ½ log det(I + n Σθ F(d)) with n = {o.n_events}, F(d) = E[t̂ t̂ᵀ] "
        f"from {source.name} ({where}, from {source.x_from}); Σθ {covariance}: the EIG "
        f"itself for a linear-Gaussian model, its local Gaussian approximation otherwise"
    ]
    notes += _dropped_note(dropped, designs, o.n_outer, "a non-finite score")
    result = _result(designs, value, stderr, None, None, "fisher", o, notes)
    result.n_inner = 0 if exact else o.n_inner
    return result


def _result(
    designs: Tensor,
    value: Tensor,
    stderr: Tensor,
    lower: Tensor | None,
    upper: Tensor | None,
    method: str,
    o: _Options,
    notes: list[str],
) -> EIGResult:
    return EIGResult(
        designs=designs.detach().cpu(),
        eig=value,
        stderr=stderr,
        lower=lower,
        upper=upper,
        method=method,
        n_outer=o.n_outer,
        n_inner=o.n_inner,
        notes=notes,
    )


METHODS: dict[str, Method] = {
    "nmc": Method(
        "nmc",
        frozenset({"likelihood", "nle"}),
        _nested("nmc"),
        "nested Monte Carlo: consistent, overestimates by O(1/M)",
    ),
    "pce": Method(
        "pce",
        frozenset({"likelihood", "nle"}),
        _nested("pce"),
        "prior contrastive estimation: a lower bound, at most log(M+1)",
    ),
    "infonce": Method(
        "infonce",
        frozenset({"ratio"}),
        _contrastive("infonce"),
        "InfoNCE on a ratio estimator: a lower bound for any ratio, at most log(M+1)",
    ),
    "nwj": Method(
        "nwj",
        frozenset({"ratio"}),
        _contrastive("nwj"),
        "NWJ on an NRE/BNRE's marginal ratio: a lower bound, not capped, higher variance",
        events="NWJ needs the marginal ratio p(x|θ,d)/p(x|d) of the whole experiment, and "
        "the per-event ratios' product is not that ratio (the events are not independent "
        "under p(x|d)); use method='infonce', which takes any critic",
    ),
    "ba": Method(
        "ba",
        frozenset({"posterior"}),
        _barber_agakov,
        "Barber–Agakov on a posterior estimator: E[log q(θ|x,d) − log p(θ)], a lower bound",
        events="a posterior estimator's q(θ|x,d) of one event does not combine over events; "
        "train it on simulations of the whole experiment, or use a likelihood or ratio "
        "estimator",
    ),
    "fisher": Method(
        "fisher",
        frozenset({"score"}),
        _fisher,
        "½ log det(I + n Σθ F(d)) from SALLY's Fisher information: the EIG if linear-Gaussian",
        events="criterion",
    ),
}
#: Other names of methods.
ALIASES: dict[str, str] = {"posterior": "ba", "barber-agakov": "ba"}
DEFAULT_METHOD: dict[str, str] = {
    "likelihood": "nmc",
    "nle": "nmc",
    "ratio": "infonce",
    "posterior": "ba",
    "score": "fisher",
}
