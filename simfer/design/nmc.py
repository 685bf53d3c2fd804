r"""Nested Monte Carlo (NMC) and prior contrastive estimation (PCE) of the EIG.

The expected information gain of a design d is the mutual information between the
parameters θ and the outcome x,

    EIG(d) = E_{p(θ) p(x|θ,d)} [ log p(x|θ,d) − log p(x|d) ],
    p(x|d) = E_{p(θ')} [ p(x|θ',d) ].

Both estimators draw N outer pairs θ_n ~ p(θ), x_n ~ p(x|θ_n,d) and M inner
(contrastive) points θ_m ~ p(θ), shared by all outer pairs, and need only the
N × M matrix ℓ_nm = log p(x_n|θ_m,d) and the diagonal ℓ_n = log p(x_n|θ_n,d):

* **NMC** (Ryan 2003; Rainforth et al., ICML 2018, arXiv:1709.06181) replaces
  p(x_n|d) by its unbiased estimate (1/M) Σ_m p(x_n|θ_m,d):

      Û_NMC = (1/N) Σ_n [ ℓ_n − (logsumexp_m ℓ_nm − log M) ].

  log is concave, so E[log p̂(x)] ≤ log p(x) (Jensen): Û_NMC overestimates the EIG
  for every M, and E[Û_NMC] decreases monotonically in M towards it.  Once the inner
  average is close to its mean the bias is ½ E_x[Var_θ p(x|θ,d) / p(x|d)²] / M =
  O(1/M); reaching that regime needs M ≫ e^EIG (the inner points must land in the
  posterior, whose prior mass is about e^−EIG).

* **PCE** (Foster et al., AISTATS 2020, arXiv:1911.00294) counts the outer θ_n among
  its own M + 1 contrastive samples:

      Û_PCE = (1/N) Σ_n [ ℓ_n − log( (e^ℓ_n + Σ_m e^ℓ_nm) / (M + 1) ) ].

  It is a lower bound in expectation, E[Û_PCE] ≤ EIG, increases monotonically in M,
  and each term is ≤ log(M + 1) (the numerator is one of the summands), so it
  *saturates* at log(M + 1) when the EIG is larger.

Both come from the same logsumexp over the same matrix, so they cost one pass
together: `nested_terms`.  Sharing the inner points between outer samples (as Pyro's
``nmc_eig`` does) keeps the likelihood matrix a product structure (a matrix product
for linear-Gaussian models) and does not bias either estimator; the correlation it
adds between terms vanishes to first order because E_x[p(x|θ_m,d)/p(x|d)] = 1, so
the standard error is the standard deviation of the N per-outer-sample terms over √N.

`nested_monte_carlo` runs the generic core, `contrastive_monte_carlo`: it takes a
`LikelihoodModel` — any batched log-likelihood ``log_likelihood(x [B, *x_shape], theta
[B, p], design [B, D]) -> [B]`` and a sampler of x — so the exact likelihood of a
simulator, a trained likelihood surrogate (NLE's ``log_prob(x=, theta=, design=)``) and
a log ratio log r̂(x|θ, θ_1) (which equals log p(x|θ) up to a function of x; the
InfoNCE and NWJ bounds of `simfer.design.contrastive`) use the same code, and any
function of the matrix row (``terms``) is averaged over the outer samples.  It is
vectorised over designs: ``k`` designs are processed in chunks whose [c, n, M]
likelihood block fits ``max_memory`` elements (chunks over outer samples when a
single design does not fit), never one Python iteration per (design, sample) — x is
drawn once per design (the common random numbers need one seed per draw), and
`evaluate_rows` evaluates the gathered rows of all designs of a chunk in large batches.

An experiment of n events iid given (θ, d) has log p(x|θ,d) = Σ_i log p(x_i|θ,d):
`sum_over_events` turns a per-event log-likelihood into that of the experiment, one call
on all B·n events of B rows (x ``[B, n, *event_shape]``), so the matrix costs N·M·n
per-event evaluations in the same large batches (the row batch shrinks by n, the events
per call stay the same).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

__all__ = [
    "LikelihoodModel",
    "NestedEstimate",
    "TermEstimates",
    "contrastive_monte_carlo",
    "design_chunks",
    "evaluate_rows",
    "logsumexp_last",
    "mean_and_stderr",
    "nested_monte_carlo",
    "nested_terms",
    "nested_terms_from_logsumexp",
    "row_batch",
    "sample_outer",
    "sum_over_events",
]

_BLOCK = 2**18  # elements of one likelihood block: ~1-2 MB, cache-sized
_EVENTS_PER_CALL = 2**12  # events per per-event call of `sum_over_events`

LogLikelihood = Callable[[Tensor, Tensor, Tensor], Tensor]
PairwiseLogLikelihood = Callable[[Tensor, Tensor, Tensor], Tensor]
Sampler = Callable[[Tensor, Tensor, int], Tensor]
Terms = Callable[..., tuple[Tensor, ...]]


def sum_over_events(
    log_likelihood: LogLikelihood, n_events: int, events_per_call: int = _EVENTS_PER_CALL
) -> LogLikelihood:
    """The log-likelihood of an experiment of ``n_events`` events, iid given (θ, d), from the
    per-event ``log_likelihood``: Σ_i log p(x_i|θ,d).

    The returned function takes x ``[B, n_events, *event_shape]``, θ ``[B, p]`` and design
    ``[B, D]`` and returns ``[B]``: the B·n_events events (θ and d repeated per event) go
    through ``log_likelihood`` in calls of ``events_per_call`` events, then each row's
    events are summed.  Calls of a few thousand events keep a network's activations in
    the cache: 2.5× faster per event than one call of 2^18 on a CPU (measured, ALICES
    with two hidden layers of 128)."""

    def total(x: Tensor, theta: Tensor, design: Tensor) -> Tensor:
        rows = x.shape[0]
        if x.ndim < 2 or x.shape[1] != n_events:
            raise ValueError(
                f"an experiment holds {n_events} events: x must be [rows, {n_events}, "
                f"*event_shape], got {list(x.shape)}"
            )
        events = x.reshape(rows * n_events, *x.shape[2:])
        theta = theta.repeat_interleave(n_events, 0)
        design = design.repeat_interleave(n_events, 0)
        size = max(1, int(events_per_call))
        pieces = [
            _checked(
                log_likelihood(events[a : a + size], theta[a : a + size], design[a : a + size]),
                (min(size, events.shape[0] - a),),
                "log_likelihood",
            )
            for a in range(0, events.shape[0], size)
        ]
        return torch.cat(pieces).reshape(rows, n_events).sum(1)

    return total


@dataclass
class LikelihoodModel:
    """What the nested estimators need of a source: a likelihood and a sampler of x.

    Attributes:
        log_likelihood: ``(x [B, *x_shape], theta [B, p], design [B, D]) -> [B]``,
            log p(x|θ,d) row by row (exact, or a trained surrogate's).
        sample: ``(theta [N, p], design [D], seed) -> x [N, *x_shape]``: x ~ p(x|θ,d),
            reproducible from the int ``seed`` (for an experiment of n events summed by
            `sum_over_events`, x is ``[N, n, *event_shape]``).  The same seed at two designs must
            draw from the same base randomness (the common random numbers).
        pairwise: optional fast path, ``(x [c, N, *x_shape], theta [c, M, p],
            design [c, D]) -> [c, N, M]`` = log p(x_jn|θ_jm,d_j) for every pair; built
            from ``log_likelihood`` (in batches of rows) when None.  The matrix it
            returns is consumed: overwritten in place by the logsumexp.
        name: for messages.
    """

    log_likelihood: LogLikelihood
    sample: Sampler
    pairwise: PairwiseLogLikelihood | None = None
    name: str = "source"


@dataclass
class NestedEstimate:
    """NMC and PCE estimates ``[k]`` with their standard errors, and the number of
    per-outer-sample terms that were not finite (left out of both) per design."""

    nmc: Tensor
    nmc_stderr: Tensor
    pce: Tensor
    pce_stderr: Tensor
    dropped: Tensor


@dataclass
class TermEstimates:
    """Means ``[T, k]`` of T per-outer-sample terms at k designs, their standard errors
    ``[T, k]`` (float64, on the CPU), and per design the number of outer samples left out
    because one of their terms was not finite ``[k]``."""

    mean: Tensor
    stderr: Tensor
    dropped: Tensor


def nested_terms(
    log_p_outer: Tensor, log_p_inner: Tensor, *, overwrite: bool = False
) -> tuple[Tensor, Tensor]:
    """Per-outer-sample NMC and PCE terms from one logsumexp.

    Args:
        log_p_outer: ``[..., N]``, ℓ_n = log p(x_n|θ_n,d).
        log_p_inner: ``[..., N, M]``, ℓ_nm = log p(x_n|θ_m,d), θ_m independent of x_n.
        overwrite: compute the logsumexp in place in ``log_p_inner`` (no temporary of
            its size; its values are lost).

    Returns:
        ``(nmc, pce)``, each ``[..., N]``: ℓ_n − (logsumexp_m ℓ_nm − log M) and
        ℓ_n − (logaddexp(ℓ_n, logsumexp_m ℓ_nm) − log(M + 1)); the PCE term is
        ≤ log(M + 1) by construction.
    """
    m = log_p_inner.shape[-1]
    return nested_terms_from_logsumexp(log_p_outer, logsumexp_last(log_p_inner, overwrite), m)


def nested_terms_from_logsumexp(
    log_p_outer: Tensor, inner: Tensor, m: int
) -> tuple[Tensor, Tensor]:
    """`nested_terms` from ℓ_n and the row logsumexp_m ℓ_nm over ``m`` inner points."""
    nmc = log_p_outer - inner + math.log(m)
    pce = log_p_outer - torch.logaddexp(log_p_outer, inner) + math.log(m + 1)
    return nmc, pce


def logsumexp_last(values: Tensor, overwrite: bool = False) -> Tensor:
    """logsumexp over the last axis; in place in ``values`` when ``overwrite`` (and it is
    contiguous), so that no temporary of its size is made."""
    if overwrite and values.is_contiguous():
        return _logsumexp_(values)
    return torch.logsumexp(values, dim=-1)


def _logsumexp_(values: Tensor) -> Tensor:
    """logsumexp over the last axis, exponentiating ``values`` in place: max + log Σ
    exp(ℓ − max), with the max of an all −inf row taken as 0 (the result is −inf)."""
    shift = values.amax(dim=-1, keepdim=True)
    shift = shift.where(torch.isfinite(shift), 0.0)
    total = values.sub_(shift).exp_().sum(dim=-1)
    return total.log_().add_(shift.squeeze(-1))


def nested_monte_carlo(
    model: LikelihoodModel,
    designs: Tensor,
    theta_outer: Tensor,
    theta_inner: Tensor,
    x_seeds: Sequence[int],
    *,
    max_memory: int = 2**25,
    progress: bool = True,
    desc: str = "EIG",
) -> NestedEstimate:
    """NMC and PCE at every design, in one pass over the likelihood matrices.

    Args:
        model: the likelihood and the sampler of x.
        designs: ``[k, D]``.
        theta_outer: ``[k, N, p]`` or ``[1, N, p]`` (the same θ_n for every design).
        theta_inner: ``[k, M, p]`` or ``[1, M, p]``.
        x_seeds: ``k`` ints; x at design j is ``model.sample(theta_outer[j], designs[j],
            x_seeds[j])``.  Equal seeds with shared θ are common random numbers.
        max_memory: the most tensor elements a likelihood evaluation holds: the
            [c, n, M] block (at most 2^18 elements anyway, so that it stays in cache),
            and for the row-wise path each batch of rows times its size (x, θ, design).
        progress: a tqdm bar over the designs, advanced chunk by chunk.

    Returns:
        A `NestedEstimate` (float64, on the CPU).
    """
    estimate = contrastive_monte_carlo(
        model,
        designs,
        theta_outer,
        theta_inner,
        x_seeds,
        terms=nested_terms,
        max_memory=max_memory,
        progress=progress,
        desc=desc,
    )
    (nmc, pce), (nmc_stderr, pce_stderr) = estimate.mean, estimate.stderr
    return NestedEstimate(nmc, nmc_stderr, pce, pce_stderr, dropped=estimate.dropped)


def contrastive_monte_carlo(
    model: LikelihoodModel,
    designs: Tensor,
    theta_outer: Tensor,
    theta_inner: Tensor,
    x_seeds: Sequence[int],
    *,
    terms: Terms = nested_terms,
    max_memory: int = 2**25,
    progress: bool = True,
    desc: str = "EIG",
) -> TermEstimates:
    """Means of per-outer-sample terms of the matrix ℓ_nm = log p(x_n|θ_m,d) at every design.

    The arguments are those of `nested_monte_carlo`, plus ``terms(log_p_outer [c, n],
    log_p_inner [c, n, M], overwrite=True) -> (term_1, ..., term_T)``, each ``[c, n]``
    (`nested_terms` gives NMC and PCE; it may overwrite ``log_p_inner``).  An outer sample
    with a non-finite term is left out of every mean, and counted.

    Returns:
        A `TermEstimates` (float64, on the CPU).
    """
    k, n_outer, n_inner = designs.shape[0], theta_outer.shape[1], theta_inner.shape[1]
    rows_ok = theta_outer.shape[0] in (1, k) and theta_inner.shape[0] in (1, k)
    if len(x_seeds) != k or not rows_ok:
        raise ValueError("theta_outer, theta_inner and x_seeds must have 1 or k rows each")
    # Blocks of the likelihood matrix small enough to stay in the CPU's cache between
    # filling it and its logsumexp (several times faster than one large chunk).
    block = max(1, min(int(max_memory), _BLOCK))
    per_group = max(1, min(k, block // (n_outer * n_inner)))  # designs per block
    outer_rows = n_outer if per_group > 1 else max(1, block // n_inner)
    groups = [range(a, min(a + per_group, k)) for a in range(0, k, per_group)]

    means, stderrs, kept = None, None, torch.empty(k, dtype=torch.float64)
    bar = tqdm(total=k, desc=desc, unit="design", disable=not progress, leave=False)
    try:
        for group in groups:
            index = torch.tensor(list(group))
            design = designs[index.to(designs.device)]
            c = len(group)
            outer = _rows_for(theta_outer, index, k).expand(c, -1, -1)
            inner = _rows_for(theta_inner, index, k).expand(c, -1, -1)
            x = sample_outer(model.sample, outer, design, [int(x_seeds[j]) for j in group])
            max_rows = row_batch(_row_size(x, outer, design), max_memory)
            log_p_outer = evaluate_rows(model.log_likelihood, x, outer, design, max_rows)
            pieces = []
            for start in range(0, n_outer, outer_rows):
                stop = min(start + outer_rows, n_outer)
                log_p_inner = _matrix(model, x[:, start:stop], inner, design, max_rows)
                block_terms = terms(
                    log_p_outer[:, start:stop].to(log_p_inner.dtype), log_p_inner, overwrite=True
                )
                pieces.append([t.double().cpu() for t in block_terms])
            columns = zip(*pieces, strict=True)  # per term, its blocks of outer rows
            values = torch.stack([torch.cat(column, 1) for column in columns])  # [T, c, N]
            finite = torch.isfinite(values).all(0)
            if means is None:
                means = torch.empty(values.shape[0], k, dtype=torch.float64)
                stderrs = torch.empty_like(means)
            for t, value in enumerate(values):
                means[t, index], stderrs[t, index] = mean_and_stderr(value, finite)
            kept[index] = finite.sum(1).double()
            bar.update(c)
    finally:
        bar.close()
    return TermEstimates(means, stderrs, dropped=(n_outer - kept).long())


def sample_outer(sample: Sampler, theta: Tensor, designs: Tensor, seeds: Sequence[int]) -> Tensor:
    """x ``[c, N, *x_shape]``: one draw ``sample(theta[j], designs[j], seeds[j])`` per design
    (θ ``[c, N, p]``, designs ``[c, D]``).  The one loop over designs: common random numbers
    need each design's x drawn from its own seed."""
    draws = [sample(theta[j], designs[j], int(seeds[j])) for j in range(designs.shape[0])]
    return torch.stack([x.to(theta.device) for x in draws])


def design_chunks(k: int, elements_per_design: int, max_memory: int) -> list[range]:
    """Consecutive ranges of the ``k`` designs whose ``elements_per_design`` each fit
    ``max_memory`` elements together (at least one design per range)."""
    per_chunk = max(1, min(k, int(max_memory) // max(1, elements_per_design)))
    return [range(a, min(a + per_chunk, k)) for a in range(0, k, per_chunk)]


def row_batch(row_size: int, max_memory: int) -> int:
    """Rows per call of a row-wise function whose rows hold ``row_size`` elements: a
    cache-sized batch (at least 1024 rows), within ``max_memory`` elements."""
    return max(1, min(int(max_memory) // row_size, max(_BLOCK // row_size, 1024)))


def _row_size(x: Tensor, theta: Tensor, design: Tensor) -> int:
    return x[0, 0].numel() + theta.shape[-1] + design.shape[-1] + 1


def evaluate_rows(
    function: Callable[[Tensor, Tensor, Tensor], Tensor],
    x: Tensor,
    theta: Tensor,
    design: Tensor,
    max_rows: int,
    tail: tuple[int, ...] = (),
    what: str = "log_likelihood",
) -> Tensor:
    """``function(x_jn, θ_jn, d_j)`` for every design j and outer sample n, ``[c, n, *tail]``
    (x ``[c, n, *x_shape]``, θ ``[c, n, p]``, design ``[c, D]``), in row-wise calls of at most
    ``max_rows`` rows that each return ``[rows, *tail]``."""
    c, n = x.shape[:2]
    x, theta = x.reshape(c * n, *x.shape[2:]), theta.reshape(c * n, -1)
    design = design[:, None].expand(c, n, -1).reshape(c * n, -1)
    pieces = [
        _checked(
            function(x[a : a + max_rows], theta[a : a + max_rows], design[a : a + max_rows]),
            (min(max_rows, c * n - a), *tail),
            what,
        )
        for a in range(0, c * n, max_rows)
    ]
    return torch.cat(pieces).reshape(c, n, *tail)


def mean_and_stderr(terms: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """Per row of ``terms`` ``[c, N]``: the mean of the kept terms and its standard error
    (unbiased standard deviation over √n); NaN where fewer than 1 (2) are kept."""
    n = keep.sum(1).double()
    mean = terms.where(keep, 0.0).sum(1) / n.clamp(min=1.0)
    squares = (terms - mean[:, None]).where(keep, 0.0).square().sum(1)
    stderr = (squares / (n - 1.0).clamp(min=1.0) / n.clamp(min=1.0)).sqrt()
    return mean.where(n > 0, math.nan), stderr.where(n > 1, math.nan)


def _rows_for(theta: Tensor, index: Tensor, k: int) -> Tensor:
    """The rows of a ``[k or 1, n, p]`` θ tensor for the designs in ``index``."""
    return theta[index.to(theta.device)] if theta.shape[0] == k else theta


def _matrix(
    model: LikelihoodModel, x: Tensor, theta: Tensor, design: Tensor, max_rows: int
) -> Tensor:
    """log p(x_jn|θ_jm,d_j) ``[c, n, M]``: the model's pairwise path, or its row-wise
    log-likelihood on batches of at most ``max_rows`` gathered (n, m) pairs."""
    c, n, m = x.shape[0], x.shape[1], theta.shape[1]
    if model.pairwise is not None:
        out = model.pairwise(x, theta, design)
        if out.shape != (c, n, m):
            raise ValueError(
                f"the pairwise log-likelihood of '{model.name}' returned shape "
                f"{list(out.shape)}, expected [c, N, M] = {[c, n, m]}"
            )
        return out
    total = c * n * m
    pieces = []
    for start in range(0, total, max_rows):
        index = torch.arange(start, min(start + max_rows, total), device=x.device)
        j, rest = index // (n * m), index % (n * m)
        value = model.log_likelihood(x[j, rest // m], theta[j, rest % m], design[j])
        pieces.append(_checked(value, (index.numel(),), "log_likelihood"))
    return torch.cat(pieces).reshape(c, n, m)


def _checked(value: Tensor, shape: tuple[int, ...], what: str) -> Tensor:
    if not isinstance(value, Tensor) or tuple(value.shape) != tuple(shape):
        got = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{what} must return one value per row, {list(shape)}; got {got}")
    return value
