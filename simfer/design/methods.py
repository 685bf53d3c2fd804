"""`eig()`: the expected information gain of many candidate designs, by a table of methods.

    EIG(d) = E_{p(θ) p(x|θ,d)} [ log p(x|θ,d) − log p(x|d) ]

A call classifies its source (`simfer.design.sources.source_kind`), picks the method
(the kind's default when none is named), checks the method accepts that kind, draws the
shared randomness and runs the method's row of `METHODS`.  A new estimator — InfoNCE or
NWJ on a ratio surrogate, the Barber–Agakov bound on a posterior surrogate, a Fisher
criterion from SALLY — is one new row (and, for a new kind of source, one line in
`source_kind`); nothing else changes.

Common random numbers.  By default every design sees the same outer θ_n, the same inner
θ_m and the same simulator seed, so the differences EIG(d_i) − EIG(d_j) are estimated
far more precisely than the values themselves and the argmax is stable.  With
``common_random_numbers=False`` each design draws its own (independent estimates, e.g.
for checking calibration of the standard errors).  All draws come from ``seed`` alone
(the global torch generator is left as it was).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from ..errors import ShapeError
from ..prior import as_prior
from ..simulator import Seed, Simulator, make_generator
from .nmc import nested_monte_carlo
from .result import EIGResult
from .sources import likelihood_model, source_kind

__all__ = ["eig", "METHODS", "DEFAULT_METHOD", "Method"]


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


@dataclass(frozen=True)
class Method:
    """One row of the method table: the source kinds it accepts and how it runs
    ``(source, prior, designs [k, D], options) -> EIGResult``."""

    name: str
    sources: frozenset[str]
    run: Callable[[Any, Distribution, Tensor, _Options], EIGResult]
    summary: str


def eig(
    source: Any,
    prior: Distribution,
    designs: Any,
    *,
    method: str | None = None,
    n_outer: int = 1000,
    n_inner: int = 1000,
    seed: Seed = None,
    device: str | torch.device | None = None,
    common_random_numbers: bool = True,
    max_memory: int = 2**25,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> EIGResult:
    """Estimate the EIG at every candidate design at once.

    Args:
        source: a `simfer.Simulator` with a tractable ``log_likelihood`` (``has_likelihood``)
            and a design (``design_dim >= 1``).
        prior: p(θ), a torch distribution with ``event_shape == (theta_dim,)``.
        designs: ``[k, design_dim]`` candidate designs (``[k]`` when design_dim is 1).
        method: ``"nmc"`` (nested Monte Carlo; the default for simulators) or ``"pce"``
            (the prior-contrastive lower bound).  Both are computed in one pass: the
            result's ``lower`` is PCE and its ``upper`` NMC either way; ``eig`` and
            ``stderr`` are the chosen one's.
        n_outer: N, outer samples (θ_n, x_n) per design; the standard error is ∝ 1/√N.
        n_inner: M, inner samples θ_m for the marginal p(x|d); NMC's upward bias and
            PCE's downward bias are O(1/M), and PCE is capped at log(M + 1).
        seed: an int or a ``torch.Generator``: the same seed gives the same result.
        device: where the likelihood matrices are computed (default: the CPU).
        common_random_numbers: the same θ_n, θ_m and simulator seed at every design.
        max_memory: the most tensor elements one chunk holds: designs (and, when one
            design is too large, outer samples) are processed in chunks that fit.
        dtype: of θ, x and the likelihood matrices (float32; float64 costs 2–3× the time
            for a precision far below the Monte-Carlo error). Sums are kept in float64.
        progress: a progress bar over the chunks.

    Returns:
        An `EIGResult`.
    """
    kind = source_kind(source)
    name = DEFAULT_METHOD[kind] if method is None else str(method).lower()
    if name not in METHODS:
        choices = "; ".join(f"{key!r}: {row.summary}" for key, row in sorted(METHODS.items()))
        raise ValueError(f"unknown EIG method {method!r}; choose one of {choices}")
    if kind not in METHODS[name].sources:
        usable = sorted(m for m, row in METHODS.items() if kind in row.sources)
        raise ValueError(f"method {name!r} does not apply to a {kind} source; use one of {usable}")
    for label, value, least in (("n_outer", n_outer, 2), ("n_inner", n_inner, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{label} must be an int ≥ {least}, got {value!r}")
    if not isinstance(max_memory, int) or max_memory < 1:
        raise ValueError(f"max_memory must be a positive int (elements), got {max_memory!r}")
    options = _Options(
        n_outer=n_outer,
        n_inner=n_inner,
        seed=seed,
        device=torch.device("cpu" if device is None else device),
        dtype=dtype,
        common_random_numbers=bool(common_random_numbers),
        max_memory=max_memory,
        progress=progress,
    )
    prior = as_prior(prior, source.theta_dim)
    designs = _check_designs(source, designs, options)
    return METHODS[name].run(source, prior, designs, options)


def _check_designs(simulator: Simulator, designs: Any, options: _Options) -> Tensor:
    """Candidate designs as ``[k, design_dim]`` on the device, or a `ShapeError`."""
    dim = simulator.design_dim
    tensor = torch.as_tensor(designs, device=options.device)
    if not tensor.is_floating_point():
        tensor = tensor.to(options.dtype)
    if tensor.ndim == 1 and dim == 1:
        tensor = tensor[:, None]
    if tensor.ndim != 2 or tensor.shape[1] != dim or tensor.shape[0] == 0:
        hint = " (one design per row; a single design is [1, design_dim])" if dim > 1 else ""
        raise ShapeError(
            f"designs must be [k, design_dim] = [k, {dim}] for simulator '{simulator.name}'"
            f"{' or [k]' if dim == 1 else ''} with k ≥ 1, got {list(tensor.shape)}{hint}"
        )
    return simulator.check_design(tensor.to(options.dtype), tensor.shape[0], options.device)


# -- the nested estimators on an exact likelihood -------------------------------------------
def _nested(report: str) -> Callable[[Simulator, Distribution, Tensor, _Options], EIGResult]:
    """Run NMC and PCE together; report ``report`` ("nmc" or "pce") as ``eig``."""

    def run(simulator: Simulator, prior: Distribution, designs: Tensor, o: _Options) -> EIGResult:
        k = designs.shape[0]
        base = make_generator(o.seed, "cpu")
        if o.common_random_numbers:
            s_outer, s_inner, s_x = _seeds(base, 3)
            theta_outer = _prior_draws(simulator, prior, o.n_outer, s_outer, o)[None]
            theta_inner = _prior_draws(simulator, prior, o.n_inner, s_inner, o)[None]
            x_seeds = [s_x] * k
        else:
            seeds = [_seeds(base, 3) for _ in range(k)]
            theta_outer = torch.stack(
                [_prior_draws(simulator, prior, o.n_outer, s[0], o) for s in seeds]
            )
            theta_inner = torch.stack(
                [_prior_draws(simulator, prior, o.n_inner, s[1], o) for s in seeds]
            )
            x_seeds = [s[2] for s in seeds]
        estimate = nested_monte_carlo(
            likelihood_model(simulator),
            designs,
            theta_outer,
            theta_inner,
            x_seeds,
            max_memory=o.max_memory,
            progress=o.progress,
            desc=f"EIG ({report}, {k} designs)",
        )
        chosen, stderr = (
            (estimate.nmc, estimate.nmc_stderr)
            if report == "nmc"
            else (estimate.pce, estimate.pce_stderr)
        )
        return EIGResult(
            designs=designs.detach().cpu(),
            eig=chosen,
            stderr=stderr,
            lower=estimate.pce,
            upper=estimate.nmc,
            method=report,
            n_outer=o.n_outer,
            n_inner=o.n_inner,
            notes=_nested_notes(estimate, designs, o),
        )

    return run


def _nested_notes(estimate, designs: Tensor, o: _Options) -> list[str]:
    """What a reader of a nested estimate should know (empty when all is well)."""
    notes = []

    def where(mask: Tensor) -> str:
        rows = torch.nonzero(mask).flatten()
        shown = ", ".join(str(_rounded(designs[int(j)])) for j in rows[:3])
        return f"{int(rows.numel())} of {designs.shape[0]} designs (e.g. {shown})"

    dropped = estimate.dropped > 0
    if bool(dropped.any()):
        notes.append(
            f"non-finite terms (a likelihood of 0 or NaN) left out at {where(dropped)}; "
            f"at most {int(estimate.dropped.max())} of N = {o.n_outer} per design"
        )
    cap = math.log(o.n_inner + 1)
    saturated = estimate.pce >= 0.9 * cap
    if bool(saturated.any()):
        notes.append(
            f"PCE saturated at log(M+1) = {cap:.3g} nats at {where(saturated)}: the EIG "
            f"there may be far larger than the lower bound; increase n_inner"
        )
    gap = estimate.nmc - estimate.pce
    noise = (estimate.nmc_stderr.square() + estimate.pce_stderr.square()).sqrt()
    wide = (gap > 3 * noise) & (gap > 0.05 * estimate.nmc.abs())
    if bool(wide.any()):
        notes.append(
            f"NMC − PCE gap up to {float(gap[wide].max()):.3g} nats, beyond 3 standard errors, "
            f"at {where(wide)}: M = {o.n_inner} inner samples leave an O(1/M) bias that is "
            f"not negligible; increase n_inner"
        )
    return notes


def _rounded(design: Tensor) -> list[float]:
    return [float(f"{v:.4g}") for v in design.tolist()]


def _seeds(generator: torch.Generator, n: int) -> list[int]:
    return [int(s) for s in torch.randint(0, 2**62, (n,), generator=generator)]


@contextmanager
def _seeded_global(seed: int):
    """The global torch generators seeded by ``seed`` inside the block, restored after
    (torch distributions sample from them and take no generator)."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _prior_draws(
    simulator: Simulator, prior: Distribution, n: int, seed: int, o: _Options
) -> Tensor:
    """``[n, theta_dim]`` draws of the prior from ``seed``, checked against the
    simulator's support, in the run's dtype and on its device."""
    with _seeded_global(seed):
        theta = prior.sample((n,))
    theta = theta.to(device=o.device, dtype=o.dtype)
    return simulator.check_theta(theta, what="theta drawn from the prior")


METHODS: dict[str, Method] = {
    "nmc": Method(
        "nmc",
        frozenset({"likelihood"}),
        _nested("nmc"),
        "nested Monte Carlo: consistent, overestimates by O(1/M)",
    ),
    "pce": Method(
        "pce",
        frozenset({"likelihood"}),
        _nested("pce"),
        "prior contrastive estimation: a lower bound, at most log(M+1)",
    ),
}
DEFAULT_METHOD: dict[str, str] = {"likelihood": "nmc"}
