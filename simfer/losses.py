r"""Every training loss of simfer, as a pure function of network outputs and targets.

Tensors in, a scalar tensor out: no modules, no state, no data-dependent Python control
flow (no ``.item()``, no boolean indexing), so each loss runs on any device and under
``torch.func.vmap`` (an ensemble trained in one vectorised pass).

Conventions
-----------
A ratio network outputs the **log-ratio** ``log_r`` = log r̂(x|θ0,θ1), a logit, never a
probability.  θ0 is a row's ``theta``, θ1 its reference ``theta_ref``.  The label ``y`` =
``from_reference`` is 1 when x was drawn at θ1 and 0 when it was drawn at θ0.  For a
balanced sample (as many rows drawn at θ0 as at θ1) the Bayes-optimal probability of the
class "x drawn at θ0" is

    P(y = 0 | x) = p(x|θ0) / (p(x|θ0) + p(x|θ1)) = r / (1 + r) = σ(log r),

so log r is exactly the logit of that classifier, and every cross-entropy below is
written with ``logsigmoid(±log_r)``: finite and exact for any finite logit (log σ(a) = a
for a → −∞, 0 for a → +∞), never a sigmoid followed by a log.

Gold (Brehmer, Louppe, Pavez & Cranmer, PNAS 2020, arXiv:1805.12244): per row, the joint
log ratio ``joint_log_ratio`` = log r(x,z|θ0,θ1) ``[batch]`` and the joint score
``joint_score`` = t(x,z|θ0) = ∇_θ0 log p(x,z|θ0) ``[batch, theta_dim]``.  They are
unbiased for the intractable quantities when z follows the right posterior:

    E[r(x,z|θ0,θ1) | x]   = r(x|θ0,θ1)     for z ~ p(z|x,θ1)   (rows with y = 1),
    E[1/r(x,z|θ0,θ1) | x] = 1/r(x|θ0,θ1)   for z ~ p(z|x,θ0)   (rows with y = 0),
    E[t(x,z|θ0) | x]      = t(x|θ0)        for z ~ p(z|x,θ0)   (rows with y = 0),

while E[log r(x,z)|x] ≠ log r(x): no loss regresses log r̂ on the joint log ratio.  The
model's score t̂(x|θ0) = ∇_θ0 log r̂(x|θ0,θ1) is computed by the estimator (autograd) and
passed in as ``score``.

Arguments come in one order: the network's output first, then the label y where the loss
needs one, then the gold targets, then the model's score and its target, then the
hyper-parameter (α, λ, γ); ``weight`` and the optional θ1 scores are keyword-only.  y
must be a bool or integer tensor and the log ratios floating point, so swapped arguments
raise a TypeError instead of training on nonsense.

Each loss is a mean over rows.  ``weight`` ``[batch]`` gives per-row weights; the mean is
then self-normalised, Σ w_i ℓ_i / Σ w_i, so scaling all weights changes nothing and the
loss keeps its scale (log 2 at the start for a cross-entropy).  Weights must have a
positive sum.

Extreme values: nothing is clamped (a clamp of log r silently biases the estimate).  The
cross-entropies stay finite for any finite logit.  Only ROLR (and RASCAL) need r itself;
they compute in float64, see `rolr` for the range and what happens beyond it.

References: CARL, Cranmer, Pavez & Louppe, arXiv:1506.02169; ROLR, RASCAL, CASCAL, SALLY,
SALLINO, Brehmer, Cranmer, Louppe & Pavez, arXiv:1805.00013 and arXiv:1805.00020; ALICE,
ALICES, Stoye, Brehmer, Louppe, Pavez & Cranmer, arXiv:1808.00973; NRE-A, Hermans, Begy &
Louppe, ICML 2020, arXiv:1903.04057; NRE-B, Durkan, Murray & Papamakarios, ICML 2020,
arXiv:2002.03712; NRE-C, Miller, Weniger & Forré, NeurIPS 2022, arXiv:2210.06170; BNRE,
Delaunoy, Hermans, Rozet, Wehenkel & Louppe, NeurIPS 2022, arXiv:2208.13624.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "carl",
    "rolr",
    "alice",
    "score_mse",
    "rascal",
    "cascal",
    "alices",
    "sally",
    "nre_a",
    "nre_b",
    "nre_c",
    "bnre",
    "default_score_weight",
    "negative_log_likelihood",
    "scandal",
    "default_scandal_weight",
    "validity",
    "flow_matching",
    "denoising_score_matching",
]


# -- helpers ------------------------------------------------------------------------------
def _rows(name: str, value: Tensor, batch: int | None = None) -> int:
    """Check that ``value`` has shape ``[batch]``; return the batch size."""
    if value.dim() != 1:
        raise ValueError(f"{name} must have shape [batch], got {list(value.shape)}")
    if batch is not None and value.shape[0] != batch:
        raise ValueError(f"{name} has {value.shape[0]} rows, expected {batch}")
    return value.shape[0]


def _matrix(name: str, value: Tensor, batch: int | None = None) -> tuple[int, int]:
    """Check that ``value`` has shape ``[batch, d]``; return ``(batch, d)``."""
    if value.dim() != 2:
        raise ValueError(f"{name} must have shape [batch, d], got {list(value.shape)}")
    if batch is not None and value.shape[0] != batch:
        raise ValueError(f"{name} has {value.shape[0]} rows, expected {batch}")
    return value.shape[0], value.shape[1]


def _labels(from_reference: Tensor, batch: int, dtype: torch.dtype) -> Tensor:
    """``from_reference`` (bool or integer 0/1) ``[batch]`` as a float tensor of ``dtype``."""
    _rows("from_reference", from_reference, batch)
    if from_reference.is_floating_point() or from_reference.is_complex():
        raise TypeError(
            f"from_reference must be a bool (or integer 0/1) tensor, got {from_reference.dtype}; "
            "was it swapped with a log ratio?"
        )
    return from_reference.to(dtype)


def _real(name: str, value: Tensor) -> None:
    """Check that ``value`` is a floating-point tensor (a log ratio, a score, logits)."""
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")


def _mean(values: Tensor, weight: Tensor | None) -> Tensor:
    """Mean of ``values`` ``[batch]``, self-normalised by ``weight`` ``[batch]`` if given."""
    if weight is None:
        return values.mean()
    _rows("weight", weight, values.shape[0])
    weight = weight.to(values.dtype)
    return (weight * values).sum() / weight.sum()


def _squared_error(estimate: Tensor, target: Tensor, name: str, batch: int) -> Tensor:
    """|estimate − target|² per row: ``[batch, theta_dim]`` twice → ``[batch]``."""
    _, dim = _matrix(name, estimate, batch)
    _, target_dim = _matrix(f"joint {name}", target, batch)
    if dim != target_dim:
        raise ValueError(f"{name} has {dim} components, its target {target_dim}")
    return ((estimate - target) ** 2).sum(dim=1)


def _score_term(
    score: Tensor,
    joint_score: Tensor,
    y: Tensor,
    weight: Tensor | None,
    score_ref: Tensor | None,
    joint_score_ref: Tensor | None,
) -> Tensor:
    """The gold score term of RASCAL, CASCAL and ALICES, each row paired with its class.

    Rows drawn at θ0 (y = 0) compare t̂(x|θ0) with t(x,z|θ0); if given, rows drawn at θ1
    (y = 1) compare t̂(x|θ1) with t(x,z|θ1).  The mean runs over the rows that carry a
    term; a batch with none gives 0.
    """
    batch = y.shape[0]
    if weight is not None:
        _rows("weight", weight, batch)
    w = torch.ones_like(y) if weight is None else weight.to(y.dtype)
    w0 = w * (1 - y)
    total = (w0 * _squared_error(score, joint_score, "score", batch)).sum()
    norm = w0.sum()
    if (score_ref is None) != (joint_score_ref is None):
        raise ValueError("score_ref and joint_score_ref go together: give both or neither")
    if score_ref is not None:
        w1 = w * y
        total = total + (w1 * _squared_error(score_ref, joint_score_ref, "score_ref", batch)).sum()
        norm = norm + w1.sum()
    return total / norm.clamp_min(torch.finfo(norm.dtype).tiny)


# -- parameterized classifiers and gold-mining ratio losses ---------------------------------
def carl(log_r: Tensor, from_reference: Tensor, *, weight: Tensor | None = None) -> Tensor:
    r"""CARL: cross-entropy of the classifier "x drawn at θ0 vs at θ1", logit log r̂.

    ℓ = −E[(1 − y) log σ(log r̂) + y log σ(−log r̂)]

    Shapes: ``log_r`` ``[batch]`` (log r̂(x|θ0,θ1)), ``from_reference`` ``[batch]`` (y, bool
    or integer 0/1), ``weight`` ``[batch]`` or None.

    Minimiser: the cross-entropy is minimised pointwise by σ(log r̂(x)) = P(y = 0 | x), which
    for a balanced sample is r(x)/(1 + r(x)), i.e. log r̂ = log r(x|θ0,θ1) (Cranmer et al.
    2015).  With class fractions π0 ≠ π1 the minimiser shifts to log r + log(π0/π1):
    balance the classes, or give the rows weights 1/(2π_y).  In the issue's notation the
    classifier is ŝ = σ(−log r̂) = P(y = 1 | x) and r̂ = (1 − ŝ)/ŝ.

    Extreme values: ``logsigmoid`` is exact for any finite logit (log r̂ = ±200 costs 200 or
    0); the loss grows linearly, not exponentially, in a wrong |log r̂|, and nothing is
    clamped.
    """
    batch = _rows("log_r", log_r)
    _real("log_r", log_r)
    y = _labels(from_reference, batch, log_r.dtype)
    per_row = -((1 - y) * F.logsigmoid(log_r) + y * F.logsigmoid(-log_r))
    return _mean(per_row, weight)


def rolr(
    log_r: Tensor,
    from_reference: Tensor,
    joint_log_ratio: Tensor,
    *,
    weight: Tensor | None = None,
) -> Tensor:
    r"""ROLR: squared error on r for rows drawn at θ1 and on 1/r for rows drawn at θ0.

    ℓ = E[ y (r̂(x) − r(x,z))² + (1 − y) (1/r̂(x) − 1/r(x,z))² ],   r̂ = exp(log r̂)

    Shapes: ``log_r`` ``[batch]``, ``from_reference`` ``[batch]`` (y), ``joint_log_ratio``
    ``[batch]`` (log r(x,z|θ0,θ1)), ``weight`` ``[batch]`` or None.

    Minimiser: a squared error is minimised by the conditional mean of its target.  For rows
    drawn at θ1 (y = 1), z ~ p(z|x,θ1) and E[r(x,z)|x] = ∫ p(z|x,θ1) p(x,z|θ0)/p(x,z|θ1) dz
    = r(x|θ0,θ1).  For rows drawn at θ0 the same regression would converge to
    E[r(x,z)|x, θ0] ≠ r(x): there the unbiased target is 1/r, since
    E[1/r(x,z)|x] = r(x|θ1,θ0) = 1/r(x|θ0,θ1) for z ~ p(z|x,θ0).  Each row is therefore
    paired with the term of its own class (Brehmer et al., arXiv:1805.00020; MadMiner's
    ``ratio_mse`` does the same).  Both terms are minimised by log r̂ = log r(x).

    Extreme values: the loss is heavy-tailed by nature (a squared error in r space), so it is
    computed in float64 and returned as a float64 scalar: no clamp, exact for
    |log r̂|, |log r(x,z)| up to about 354 (r² < 1.8·10³⁰⁸) on the side of the row's class
    (exp(+log r) for y = 1, exp(−log r) for y = 0; the other side is never exponentiated,
    so a row drawn at θ0 with log r = +1000 is harmless).  Beyond that the row's term, and
    the loss, are +inf (NaN if both the estimate and the target exceed e^709): never a
    silently wrong finite number, and the training loop must stop on it.  The gradient
    2 r̂ (r̂ − r) reaches the network in its own dtype, so a float32 network sees an
    infinite gradient once |log r̂| exceeds about 44.  Where joint ratios span many orders of
    magnitude, prefer `alice`, whose loss is linear in log r.
    """
    batch = _rows("log_r", log_r)
    _rows("joint_log_ratio", joint_log_ratio, batch)
    _real("log_r", log_r)
    _real("joint_log_ratio", joint_log_ratio)
    sign = 2 * _labels(from_reference, batch, torch.float64) - 1  # +1: r term, −1: 1/r term
    estimate = torch.exp(sign * log_r.to(torch.float64))
    target = torch.exp(sign * joint_log_ratio.to(torch.float64))
    return _mean((estimate - target) ** 2, weight)


def alice(
    log_r: Tensor,
    joint_log_ratio: Tensor,
    *,
    weight: Tensor | None = None,
) -> Tensor:
    r"""ALICE: cross-entropy with the soft labels s(x,z) = 1/(1 + r(x,z)) of the joint ratio.

    ℓ = −E[ s(x,z) log σ(−log r̂) + (1 − s(x,z)) log σ(log r̂) ],
    s(x,z) = σ(−log r(x,z)),   ŝ(x) = σ(−log r̂(x)) the model's P(y = 1 | x)

    Shapes: ``log_r`` ``[batch]``, ``joint_log_ratio`` ``[batch]``, ``weight`` ``[batch]`` or
    None.  Every row is used whichever class it was drawn from; the label y is not needed.

    Minimiser: over the balanced mixture ½p(x,z|θ0) + ½p(x,z|θ1), s(x,z) = P(y = 1 | x,z), so
    E[s(x,z) | x] = P(y = 1 | x) = 1/(1 + r(x)).  A cross-entropy with soft labels is
    minimised pointwise by ŝ(x) = E[s|x], i.e. log r̂ = log r(x|θ0,θ1) (Stoye et al.,
    arXiv:1808.00973).  The identity needs a balanced sample: equal numbers of rows drawn
    at θ0 and θ1, or weights that make the two classes' total weights equal.

    Extreme values: the label is σ(∓log r(x,z)), bounded in [0, 1] for any joint ratio, and
    the model enters through ``logsigmoid``: finite for every finite input (joint log
    ratios of ±200 give labels of exactly 0 or 1 in float32), nothing is clamped.
    """
    batch = _rows("log_r", log_r)
    _rows("joint_log_ratio", joint_log_ratio, batch)
    _real("log_r", log_r)
    _real("joint_log_ratio", joint_log_ratio)
    label = torch.sigmoid(-joint_log_ratio)  # s(x,z) = 1/(1 + r(x,z))
    per_row = -(label * F.logsigmoid(-log_r) + (1 - label) * F.logsigmoid(log_r))
    return _mean(per_row, weight)


# -- score losses ---------------------------------------------------------------------------
def score_mse(score: Tensor, joint_score: Tensor, *, weight: Tensor | None = None) -> Tensor:
    r"""Mean squared error of an estimated score against the joint score.

    ℓ = E |t̂(x) − t(x,z)|²   (squared Euclidean norm over θ, mean over rows)

    Shapes: ``score`` ``[batch, theta_dim]``, ``joint_score`` ``[batch, theta_dim]``,
    ``weight`` ``[batch]`` or None.

    Minimiser: E[t(x,z|θ) | x] = t(x|θ) when z ~ p(z|x,θ), i.e. when x was drawn at the θ
    the score is taken at, so t̂ = t(x|θ) minimises ℓ; its floor is the irreducible
    E|t(x,z) − t(x)|².  Rows drawn elsewhere must not enter (see `rascal` for the class
    pairing).  Extreme values: a plain difference of finite scores, no exponential, no clamp.
    """
    batch, _ = _matrix("score", score)
    return _mean(_squared_error(score, joint_score, "score", batch), weight)


def sally(score: Tensor, joint_score: Tensor, *, weight: Tensor | None = None) -> Tensor:
    r"""SALLY: regression of t̂(x) on the joint score at the reference point.

    ℓ = E_{x,z ~ p(x,z|θ_ref)} |t̂(x) − t(x,z|θ_ref)|²

    Shapes: ``score`` ``[batch, theta_dim]`` (the network's t̂(x), a function of x only),
    ``joint_score`` ``[batch, theta_dim]``, ``weight`` ``[batch]`` or None.  The rows must
    be drawn at θ_ref and the target is the joint score at θ_ref: ``joint_score`` for rows
    whose θ is θ_ref, or ``joint_score_ref`` for rows drawn at the reference.

    Minimiser: E[t(x,z|θ_ref) | x] = t(x|θ_ref) for z ~ p(z|x,θ_ref), so t̂(x) = t(x|θ_ref)
    (Brehmer et al., arXiv:1805.00020); it is `score_mse` on those rows.  SALLINO has no
    loss of its own: it uses this t̂ as a one-dimensional summary t̂(x|θ_ref)·(θ − θ_ref),
    the local linear approximation of log r(x|θ,θ_ref), whose density is then modelled in
    one dimension.  Extreme values: as `score_mse`.
    """
    return score_mse(score, joint_score, weight=weight)


def rascal(
    log_r: Tensor,
    from_reference: Tensor,
    joint_log_ratio: Tensor,
    score: Tensor,
    joint_score: Tensor,
    alpha: float,
    *,
    weight: Tensor | None = None,
    score_ref: Tensor | None = None,
    joint_score_ref: Tensor | None = None,
) -> Tensor:
    r"""RASCAL = ROLR + α · score term.

    ℓ = ℓ_ROLR + α · Σ_i w_i [(1 − y_i) |t̂(x_i|θ0) − t(x_i,z_i|θ0)|²
                              + y_i |t̂(x_i|θ1) − t(x_i,z_i|θ1)|²] / Σ_i w_i c_i

    where the θ1 part is present only when ``score_ref`` and ``joint_score_ref`` are given,
    and c_i = 1 for the rows that carry a term (the score term is an honest MSE over them;
    a batch with none gives 0).

    Shapes: ``log_r``, ``from_reference``, ``joint_log_ratio``, ``weight`` ``[batch]``;
    ``score`` = t̂(x|θ0) = ∇_θ0 log r̂, ``joint_score`` = t(x,z|θ0), and optionally
    ``score_ref`` = t̂(x|θ1) = −∇_θ1 log r̂ (double-parameterized networks, where θ1 is an
    input) and ``joint_score_ref`` = t(x,z|θ1), all ``[batch, theta_dim]``.

    Minimiser: ROLR is minimised by log r̂ = log r(x) (see `rolr`).  The joint score at θ0 is
    unbiased for t(x|θ0) only for z ~ p(z|x,θ0), i.e. rows drawn at θ0 (y = 0); on rows
    drawn at θ1, E[t(x,z|θ0)|x] ≠ t(x|θ0).  So the θ0 score term uses the y = 0 rows only and
    the θ1 term the y = 1 rows only, and the true log r minimises both terms at once: the
    score term adds information without moving the optimum (Brehmer et al.,
    arXiv:1805.00020; MadMiner masks the same way).  Choose ``alpha`` with
    `default_score_weight`, passing the ROLR loss of the untrained model.

    Extreme values: as `rolr` (float64 result, +inf beyond |log r| ≈ 354); the score term
    has no exponential.
    """
    batch = _rows("log_r", log_r)
    y = _labels(from_reference, batch, score.dtype)
    score_term = _score_term(score, joint_score, y, weight, score_ref, joint_score_ref)
    return rolr(log_r, from_reference, joint_log_ratio, weight=weight) + alpha * score_term


def cascal(
    log_r: Tensor,
    from_reference: Tensor,
    score: Tensor,
    joint_score: Tensor,
    alpha: float,
    *,
    weight: Tensor | None = None,
    score_ref: Tensor | None = None,
    joint_score_ref: Tensor | None = None,
) -> Tensor:
    r"""CASCAL = CARL + α · score term (the score term of `rascal`).

    ℓ = ℓ_CARL + α · [θ0 rows: |t̂(x|θ0) − t(x,z|θ0)|²; θ1 rows, if given: |t̂(x|θ1) −
    t(x,z|θ1)|²], averaged over the rows that carry a term.

    Shapes as `carl` and `rascal`.  Minimiser: CARL's cross-entropy is minimised by
    log r̂ = log r(x) on a balanced sample, the score term by ∇_θ0 log r̂ = t(x|θ0), which
    the same function satisfies: the optimum is unchanged, the score adds information
    (Brehmer et al., arXiv:1805.00020).  ``alpha``: `default_score_weight` (log 2 at the
    start for this cross-entropy).  Extreme values: as `carl`; no exponential anywhere.
    """
    batch = _rows("log_r", log_r)
    y = _labels(from_reference, batch, score.dtype)
    score_term = _score_term(score, joint_score, y, weight, score_ref, joint_score_ref)
    return carl(log_r, from_reference, weight=weight) + alpha * score_term


def alices(
    log_r: Tensor,
    from_reference: Tensor,
    joint_log_ratio: Tensor,
    score: Tensor,
    joint_score: Tensor,
    alpha: float,
    *,
    weight: Tensor | None = None,
    score_ref: Tensor | None = None,
    joint_score_ref: Tensor | None = None,
) -> Tensor:
    r"""ALICES = ALICE + α · score term (the score term of `rascal`).

    ℓ = ℓ_ALICE + α · [θ0 rows: |t̂(x|θ0) − t(x,z|θ0)|²; θ1 rows, if given: |t̂(x|θ1) −
    t(x,z|θ1)|²], averaged over the rows that carry a term.

    Shapes as `alice` and `rascal`; ``from_reference`` is needed for the score term only.
    Minimiser: ALICE is minimised by log r̂ = log r(x) because E[s(x,z)|x] over the balanced
    mixture is s(x) = 1/(1 + r(x)); the score term by ∇_θ0 log r̂ = t(x|θ0) on the rows drawn
    at θ0; the same log r satisfies both (Stoye et al., arXiv:1808.00973).  ``alpha``:
    `default_score_weight` (log 2 at the start for this cross-entropy).  Extreme values: as
    `alice`; no exponential anywhere.
    """
    batch = _rows("log_r", log_r)
    y = _labels(from_reference, batch, score.dtype)
    score_term = _score_term(score, joint_score, y, weight, score_ref, joint_score_ref)
    return alice(log_r, joint_log_ratio, weight=weight) + alpha * score_term


def default_score_weight(
    joint_score: Tensor,
    *,
    from_reference: Tensor | None = None,
    ratio_loss_at_start: float = math.log(2),
    weight: Tensor | None = None,
) -> float:
    r"""The default weight α of the score term: α = ℓ_ratio(start) / E|t(x,z)|².

    Shapes: ``joint_score`` ``[n, theta_dim]`` (the training data's t(x,z|θ0)),
    ``from_reference`` ``[n]`` or None, ``weight`` ``[n]`` or None.  With
    ``from_reference`` only the rows drawn at θ0 count (those that carry the score term).

    Reasoning.  At the start of training log r̂ ≈ 0 and t̂ ≈ 0, so the ratio loss is
    ``ratio_loss_at_start`` (log 2 for the cross-entropies of CARL and ALICE, exactly; for
    ROLR pass ``float(rolr(torch.zeros_like(jlr), y, jlr))`` on the training data) and the
    score term is E|t(x,z)|², the trace of the joint-score second moment (≈ the Fisher
    information of p(x,z|θ0), as the score has mean zero).  This α makes the two terms equal
    at the start, so neither dominates the early gradients, without tuning per problem.
    It is also unit-free: measuring θ in other units, θ → cθ, scales the scores by 1/c and
    the score term by 1/c², and α by c², so α · score term — and the whole training — does
    not depend on the units of θ (a fixed α would).  For several parameters α is a single
    number: the component with the largest score scale sets it, so standardise θ when the
    parameters' scales differ a lot.

    It is a heuristic, not an optimum: a larger α trusts the score more (useful when θ0 and
    θ1 are close), a smaller one the ratio; the reference implementation, MadMiner, has no
    default and leaves α to the user (its tutorials use 0.1 to 10).  Returns a Python
    float; raises ValueError if the joint scores carry no scale (all zero) or are not
    finite.
    """
    n, _ = _matrix("joint_score", joint_score)
    squared = (joint_score.to(torch.float64) ** 2).sum(dim=1)
    w = torch.ones_like(squared) if weight is None else weight.to(torch.float64)
    if weight is not None:
        _rows("weight", weight, n)
    if from_reference is not None:
        w = w * (1 - _labels(from_reference, n, torch.float64))
    if float(w.sum()) <= 0:
        raise ValueError("default_score_weight needs rows drawn at θ0 with positive weight")
    second_moment = float((w * squared).sum() / w.sum())
    if not math.isfinite(second_moment) or second_moment <= 0:
        raise ValueError(
            f"the joint scores have mean squared norm {second_moment}: the score term carries "
            "no scale to balance (check the gold)"
        )
    return ratio_loss_at_start / second_moment


# -- neural ratio estimation (likelihood-to-evidence ratio, no gold) -------------------------
def nre_a(logits_joint: Tensor, logits_marginal: Tensor, *, weight: Tensor | None = None) -> Tensor:
    r"""NRE-A (AALR): binary cross-entropy of joint pairs against marginal pairs.

    ℓ = −½ E_{p(θ,x)}[log σ(log r̂(θ,x))] − ½ E_{p(θ)p(x)}[log σ(−log r̂(θ,x))]

    Shapes: ``logits_joint`` ``[batch]`` (log r̂ at pairs (θ_i, x_i) drawn jointly),
    ``logits_marginal`` ``[batch]`` (log r̂ at pairs (θ'_i, x_i), θ'_i independent of x_i,
    e.g. θ rolled by one over the batch), ``weight`` ``[batch]`` or None (one weight per
    row i, for both of its pairs).

    Minimiser: the Bayes-optimal classifier of equally many joint and marginal pairs is
    d = p(θ,x)/(p(θ,x) + p(θ)p(x)), whose logit is log r(θ,x) = log p(x|θ)/p(x) (Hermans,
    Begy & Louppe 2020).  The ½ makes this the mean over the 2·batch pairs (as lampe and
    sbi), log 2 at the start.  Extreme values: ``logsigmoid`` only; exact for any finite
    logit, no clamp.
    """
    batch = _rows("logits_joint", logits_joint)
    _rows("logits_marginal", logits_marginal, batch)
    per_row = -0.5 * (F.logsigmoid(logits_joint) + F.logsigmoid(-logits_marginal))
    return _mean(per_row, weight)


def bnre(
    logits_joint: Tensor,
    logits_marginal: Tensor,
    lmbda: float = 100.0,
    *,
    weight: Tensor | None = None,
) -> Tensor:
    r"""BNRE: NRE-A plus the balancing penalty of Delaunoy et al. (2022).

    ℓ = ℓ_NRE-A + λ (E_{p(θ,x)}[σ(log r̂)] + E_{p(θ)p(x)}[σ(log r̂)] − 1)²

    Shapes as `nre_a`; ``lmbda`` = λ, 100 by default as in the paper (and in lampe and sbi,
    whose cross-entropy is likewise the mean over the 2·batch pairs).  The expectations
    are batch means (weighted if ``weight`` is given).

    Minimiser: the Bayes-optimal d = σ(log r) is balanced, E_joint[d] + E_marginal[d] = 1,
    so the penalty vanishes there and the optimum of NRE-A, log r̂ = log r(θ,x), is kept;
    with finite data the penalty pushes towards conservative (wider) posteriors.  Extreme
    values: σ is bounded and the cross-entropy uses ``logsigmoid``; no clamp.
    """
    cross_entropy = nre_a(logits_joint, logits_marginal, weight=weight)
    balance = _mean(torch.sigmoid(logits_joint) + torch.sigmoid(logits_marginal), weight) - 1
    return cross_entropy + lmbda * balance**2


def nre_b(logits: Tensor, *, weight: Tensor | None = None) -> Tensor:
    r"""NRE-B (SNRE-B): which of K parameters generated x?  Multiclass cross-entropy.

    ℓ = −E[ log r̂(θ_1,x) − log Σ_{k=1}^K r̂(θ_k,x) ]   (softmax over the K logits)

    Shapes: ``logits`` ``[batch, K]``, K ≥ 2: column 0 is log r̂ at the pair (θ, x) drawn
    jointly, columns 1 … K−1 at K−1 parameters drawn independently of x; ``weight``
    ``[batch]`` or None.

    Minimiser: the Bayes-optimal posterior of the index is r(θ_k,x)/Σ_j r(θ_j,x), which only
    fixes the logits up to a function of x: log r̂ = log r(θ,x) + c(x) (Durkan, Murray &
    Papamakarios 2020), so this loss cannot pin the normalisation (use `nre_c` for that).
    Extreme values: ``logsumexp``, exact for any finite logits, no clamp.
    """
    _, k = _matrix("logits", logits)
    if k < 2:
        raise ValueError(f"nre_b needs K >= 2 columns (the joint pair and contrasts), got {k}")
    per_row = torch.logsumexp(logits, dim=1) - logits[:, 0]
    return _mean(per_row, weight)


def nre_c(
    logits_joint: Tensor,
    logits_marginal: Tensor,
    gamma: float = 1.0,
    *,
    weight: Tensor | None = None,
) -> Tensor:
    r"""NRE-C (contrastive NRE, Miller, Weniger & Forré 2022): K + 1 classes.

    A set Θ = (θ_1 … θ_K) and x; class y = k ∈ {1 … K}: θ_k generated x, the others are
    drawn from the prior; class y = 0: all K are independent of x.  With γ = K p_K / p_0 the
    odds of "Θ contains the true θ", the classifier built from the ratio network is

        q(y = k | Θ, x) = γ r̂(θ_k,x) / (K + γ Σ_j r̂(θ_j,x)),
        q(y = 0 | Θ, x) = K / (K + γ Σ_j r̂(θ_j,x)),

    and the loss is the cross-entropy with class prior p_0 = 1/(1 + γ), K p_K = γ/(1 + γ):

        ℓ = −E[ γ/(1+γ) · log q(y = 1 | Θ_joint, x) + 1/(1+γ) · log q(y = 0 | Θ_marg, x) ].

    Shapes: ``logits_joint`` ``[batch, K]``: column 0 is log r̂ at the pair drawn jointly,
    columns 1 … K−1 at parameters drawn independently of x (by symmetry the true index can
    be fixed to the first); ``logits_marginal`` ``[batch, K]``: log r̂ at K further
    parameters all drawn independently of x (same x); ``gamma`` = γ > 0; ``weight``
    ``[batch]`` or None.  K = 1 with γ = 1 is exactly `nre_a`; γ → ∞ tends to NRE-B.

    Minimiser: the class posteriors above are Bayes-optimal exactly when r̂ = r(θ,x) =
    p(x|θ)/p(x), with no free function of x (the y = 0 class fixes the normalisation that
    NRE-B leaves open).  The weights γ/(1+γ), 1/(1+γ) are the paper's (its corrected
    version, arXiv:2210.06170v3) and sbi's ``NRE_C``; they must match the γ inside q, else
    the optimum shifts.  Extreme values: everything in log space with ``logsumexp`` (log K
    and log γ enter as logits), exact for any finite logits, no clamp.
    """
    batch, k = _matrix("logits_joint", logits_joint)
    _, k_marginal = _matrix("logits_marginal", logits_marginal, batch)
    if k_marginal != k:
        raise ValueError(f"logits_joint has K = {k} columns, logits_marginal {k_marginal}")
    if not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"nre_c needs a finite gamma > 0, got {gamma}")
    log_gamma, log_k = math.log(gamma), math.log(k)

    def log_normaliser(logits: Tensor) -> Tensor:  # log(K + γ Σ_j r̂_j)
        return torch.logaddexp(
            torch.logsumexp(logits, dim=1) + log_gamma, torch.full_like(logits[:, 0], log_k)
        )

    log_q_joint = log_gamma + logits_joint[:, 0] - log_normaliser(logits_joint)
    log_q_independent = log_k - log_normaliser(logits_marginal)
    per_row = -(gamma * log_q_joint + log_q_independent) / (1 + gamma)
    return _mean(per_row, weight)


# -- density estimation (NPE, NLE, SCANDAL) ------------------------------------------------
def negative_log_likelihood(log_q: Tensor, *, weight: Tensor | None = None) -> Tensor:
    r"""Maximum likelihood for a conditional density: ℓ = −E log q(v|c).

    Shapes: ``log_q`` ``[batch]`` (the flow's log-density of each training pair), ``weight``
    ``[batch]`` or None.  NPE takes v = θ, c = x (pairs from p(θ) p(x|θ)), NLE v = x, c = θ.

    Minimiser: E_c KL(p(v|c) ‖ q(v|c)) + const is minimised by q = p for every c the
    training pairs cover.  Extreme values: a mean of log-densities, nothing clamped.
    """
    _rows("log_q", log_q)
    _real("log_q", log_q)
    return -_mean(log_q, weight)


def scandal(
    log_q: Tensor,
    score: Tensor,
    joint_score: Tensor,
    alpha: float,
    *,
    weight: Tensor | None = None,
) -> Tensor:
    r"""SCANDAL: ℓ = −E log q(x|θ) + α E|∇_θ log q(x|θ) − t(x,z|θ)|².

    Shapes: ``log_q`` ``[batch]``, ``score`` (∇_θ log q by autograd) and ``joint_score``
    ``[batch, theta_dim]``, ``weight`` ``[batch]`` or None.  Minimiser: q = p, where the
    score term's gradient vanishes in expectation and the term itself is the irreducible
    E|t(x,z) − t(x)|²; α = 0 is NLE.  Extreme values: a log density and a squared
    difference of finite scores, nothing clamped.
    """
    batch = _rows("log_q", log_q)
    _matrix("score", score, batch)
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"scandal needs a finite alpha ≥ 0, got {alpha}")
    return negative_log_likelihood(log_q, weight=weight) + alpha * score_mse(
        score, joint_score, weight=weight
    )


def default_scandal_weight(joint_score: Tensor, theta: Tensor) -> float:
    r"""SCANDAL's default α = ½ / (E|t|²/d + 1/mean_i Var θ_i).

    For a Gaussian location family x ~ N(θ, σ²) fitted by q = N(aθ + b, σ²), the two terms'
    curvatures in the error a − 1 are Var(θ)/(2σ²) (likelihood) and α(σ² + Var θ)/σ⁴
    (score): equal for α = ½ / (1/σ² + 1/Var θ), half the inverse of (Fisher information
    + prior precision).  Per θ component, with the Fisher information estimated by the
    joint scores' second moment, that is the formula above; unit-free (α scales as θ²).
    Shapes: ``joint_score`` and ``theta`` ``[batch, theta_dim]``.
    """
    if not bool(torch.isfinite(joint_score).all()):
        raise ValueError("the joint scores of valid simulations hold NaN or inf: check the gold")
    d = joint_score.shape[1]
    fisher = float((joint_score.double() ** 2).sum(1).mean()) / d
    variance = float(theta.double().var(0).mean()) if theta.shape[0] > 1 else math.inf
    precision = 1 / variance if variance > 0 else 0.0
    if fisher + precision <= 0:
        raise ValueError("the joint scores are all zero and θ does not vary: α is undefined")
    return 0.5 / (fisher + precision)


def validity(logits: Tensor, valid: Tensor, *, weight: Tensor | None = None) -> Tensor:
    r"""Cross-entropy of a classifier of simulation success: ℓ = −E[v log σ(a) + (1 − v)
    log σ(−a)], a = logit p(valid|θ, d).

    Shapes: ``logits`` ``[batch]``, ``valid`` ``[batch]`` (1 for a valid simulation, 0 for
    a failed one, as floats), ``weight`` ``[batch]`` or None.  Minimiser: σ(a) = p(valid |
    θ, d).  Extreme values: written with ``logsigmoid``, finite for any finite logit.
    """
    batch = _rows("logits", logits)
    _rows("valid", valid, batch)
    per_row = -(valid * F.logsigmoid(logits) + (1 - valid) * F.logsigmoid(-logits))
    return _mean(per_row, weight)


# -- continuous flows (FMPE, NPSE) ----------------------------------------------------------
def flow_matching(
    velocity: Tensor,
    target: Tensor,
    noise: Tensor,
    sigma_min: float,
    *,
    weight: Tensor | None = None,
) -> Tensor:
    r"""Conditional flow matching on the optimal-transport path: ℓ = E |v − u_t|², with
    u_t = z − (1 − σ_min) ε the velocity of z_t = (1 − (1 − σ_min) t) ε + t z.

    Shapes: ``velocity`` v(z_t, t | c), ``target`` z (the standardised training v) and
    ``noise`` ε, all ``[batch, D]``; ``weight`` ``[batch]`` or None.  Minimiser (Lipman et
    al. 2023, arXiv:2210.02747): v*(z_t, t | c) = E[u_t | z_t, c], whose ODE carries
    N(0, I) at t = 0 to p(z | c) blurred by N(0, σ_min² I) at t = 1; the loss then still
    holds E Var(u_t | z_t, c) > 0, so its value says nothing absolute about the fit.
    Extreme values: a squared difference, nothing clamped.
    """
    batch, dim = _matrix("velocity", velocity)
    for name, value in (("target", target), ("noise", noise)):
        if tuple(value.shape) != (batch, dim):
            raise ValueError(f"{name} must have shape [{batch}, {dim}], got {list(value.shape)}")
    if not 0 <= sigma_min < 1:
        raise ValueError(f"sigma_min must lie in [0, 1), got {sigma_min}")
    goal = target - (1 - sigma_min) * noise
    return _mean(((velocity - goal) ** 2).sum(1), weight)


def denoising_score_matching(
    score: Tensor, noise: Tensor, std: Tensor, *, weight: Tensor | None = None
) -> Tensor:
    r"""Denoising score matching with weight σ_t²: ℓ = E σ_t² |s(z_t, t | c) + ε/σ_t|² =
    E |σ_t s + ε|², for z_t = α_t z + σ_t ε.

    Shapes: ``score`` s ``[batch, D]`` at the noised z_t, ``noise`` ε ``[batch, D]``, ``std``
    σ_t ``[batch]``, ``weight`` ``[batch]`` or None.  −ε/σ_t is the score of the kernel
    p(z_t | z), an unbiased target (Vincent 2011): for each t the minimiser is s* = ∇ log
    p_t(z_t | c), the score of the diffused conditional density.  σ_t² is the weight under
    which a network predicting ε̂ = −σ_t s sees the loss E|ε̂ − ε|² (Ho et al. 2020), of the
    same scale at every t.  Extreme values: σ_t s is formed before squaring, so s ~ 1/σ_t
    as σ_t → 0 is harmless; nothing clamped.
    """
    batch, dim = _matrix("score", score)
    if tuple(noise.shape) != (batch, dim):
        raise ValueError(f"noise must have shape [{batch}, {dim}], got {list(noise.shape)}")
    _rows("std", std, batch)
    return _mean(((std[:, None] * score + noise) ** 2).sum(1), weight)
