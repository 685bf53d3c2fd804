"""Sources of an EIG estimate: what `simfer.design.eig` accepts, as the pieces it needs.

A source is classified once (`resolve_source`) into a `Source`, which says where the
outer x come from and how θ and designs are checked, and is adapted to the estimators
of its kind:

==============  ==========================================  ============  ==========================
kind            source (trained with a design column)       methods       outer x_n from
==============  ==========================================  ============  ==========================
``likelihood``  `simfer.Simulator` with ``has_likelihood``  nmc, pce      the simulator
``nle``         `LikelihoodEstimator` (NLE, SCANDAL)        nmc, pce      the NLE, or ``simulator=``
``ratio``       `RatioEstimator`                            infonce, nwj  ``simulator=`` (required)
``posterior``   `PosteriorEstimator` (NPE)                  ba            ``simulator=`` (required)
``score``       `ScoreEstimator` (SALLY)                    fisher        ``simulator=`` (required)
==============  ==========================================  ============  ==========================

A ratio, posterior or score surrogate cannot draw x, so the outer x_n ~ p(x|θ_n, d) come
from the simulator they were trained on (any `simfer.Simulator` with the same θ, x and
design shapes; it needs no likelihood).  An NLE can draw x itself: the estimate is then
the EIG of the surrogate model p(θ) q(x|θ, d); with ``simulator=`` the x are the
simulator's, and PCE becomes a lower bound on the simulator's EIG for any surrogate (see
docs/design.md).

`likelihood_model` turns a simulator into a `simfer.design.nmc.LikelihoodModel`: its
exact ``log_likelihood`` and its sampler (``simulate(theta, design, seed=...)``, which
replays the same random stream for the same seed at every design: the common random
numbers).  A simulator may also define ``pairwise_log_likelihood(x [c, N, *x_shape],
theta [c, M, p], design [c, D]) -> [c, N, M]`` (log p(x_jn|θ_jm,d_j) for every pair),
which is then used instead of N·M row-wise evaluations (`simulators.LinearGaussianDesign`
does, with one batched matrix product).  `surrogate_likelihood_model` does the same for
an NLE (its ``log_prob(x=, theta=, design=)`` as the log-likelihood) and `ratio_model`
for a ratio estimator (its log r̂(x|θ, θ_1, d), a log-likelihood up to a function of x).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import (
    LikelihoodNotAvailableError,
    ShapeError,
    SimferError,
    SimulatorError,
    SupportError,
)
from ..estimators import (
    LikelihoodEstimator,
    PosteriorEstimator,
    RatioEstimator,
    ScoreEstimator,
)
from ..simulator import Simulator
from .nmc import LikelihoodModel, Sampler

__all__ = [
    "ESTIMATOR_KINDS",
    "Source",
    "likelihood_model",
    "ratio_model",
    "resolve_source",
    "simulator_sampler",
    "source_kind",
    "surrogate_likelihood_model",
]

#: The estimator classes `eig` accepts, their kind, and why a simulator must draw x for
#: them (None: the estimator can draw x itself).
ESTIMATOR_KINDS: tuple[tuple[type, str, str | None], ...] = (
    (LikelihoodEstimator, "nle", None),
    (RatioEstimator, "ratio", "a ratio estimator cannot draw x"),
    (PosteriorEstimator, "posterior", "a posterior estimator draws θ, not x"),
    (ScoreEstimator, "score", "a score estimator cannot draw x"),
)


@dataclass(frozen=True)
class Source:
    """A classified source of an EIG estimate.

    Attributes:
        kind: ``"likelihood"``, ``"nle"``, ``"ratio"``, ``"posterior"`` or ``"score"``.
        model: the simulator (kind ``likelihood``) or the trained estimator.
        simulator: the simulator the outer x are drawn from; None when an NLE draws them.
        theta_dim, design_dim: the shapes every θ and design is checked against.
        name: for messages.
    """

    kind: str
    model: Any
    simulator: Simulator | None
    theta_dim: int
    design_dim: int
    name: str

    @property
    def x_from(self) -> str:
        """Where the outer x come from, in words."""
        if self.simulator is None:
            return f"the surrogate q(x|θ,d) of {self.name}"
        return f"simulator '{self.simulator.name}'"

    def sampler(self) -> Sampler:
        """``(theta [N, p], design [D], seed) -> x [N, *x_shape]``, x ~ p(x|θ,d), from the
        simulator or (an NLE without a simulator) from the surrogate; the same seed at two
        designs draws from the same base randomness (the common random numbers)."""
        if self.simulator is not None:
            return simulator_sampler(self.simulator)
        estimator = self.model

        def sample(theta: Tensor, design: Tensor, seed: int) -> Tensor:
            return estimator.sample(1, theta=theta, design=design, seed=seed)[:, 0]

        return sample

    def check_theta(self, theta: Tensor, what: str) -> Tensor:
        """θ ``[n, theta_dim]``, checked against the simulator's support when there is one."""
        if self.simulator is not None:
            return self.simulator.check_theta(theta, what=what)
        if theta.ndim != 2 or theta.shape[1] != self.theta_dim:
            raise ShapeError(
                f"{what} must have shape [n, {self.theta_dim}] for {self.name}, got "
                f"{list(theta.shape)}"
            )
        if not bool(torch.isfinite(theta).all()):
            raise SimferError(f"{what} holds NaN or inf values")
        return theta

    def check_designs(self, designs: Any, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Candidate designs as ``[k, design_dim]`` on ``device``, or a `ShapeError` (a
        `SupportError` for non-finite designs)."""
        dim = self.design_dim
        tensor = torch.as_tensor(designs, device=device)
        if not tensor.is_floating_point():
            tensor = tensor.to(dtype)
        if tensor.ndim == 1 and dim == 1:
            tensor = tensor[:, None]
        if tensor.ndim != 2 or tensor.shape[1] != dim or tensor.shape[0] == 0:
            hint = " (one design per row; a single design is [1, design_dim])" if dim > 1 else ""
            raise ShapeError(
                f"designs must be [k, design_dim] = [k, {dim}] for {self.name}"
                f"{' or [k]' if dim == 1 else ''} with k ≥ 1, got {list(tensor.shape)}{hint}"
            )
        tensor = tensor.to(dtype)
        checker = self.simulator if self.simulator is not None else _FiniteDesigns(dim)
        return checker.check_design(tensor, tensor.shape[0], device)


class _FiniteDesigns:
    """`Simulator.check_design`'s checks (finite values) for a source without a simulator."""

    def __init__(self, design_dim: int):
        self.design_dim = design_dim

    def check_design(self, design: Tensor, batch: int, device: Any = None) -> Tensor:
        if not bool(torch.isfinite(design).all()):
            bad = torch.nonzero(~torch.isfinite(design).all(1)).flatten()[:5].tolist()
            raise SupportError(f"design contains NaN or inf (rows {bad})")
        return design


def source_kind(source: Any) -> str:
    """The kind of ``source`` (see the module table), or a clear error saying why it
    cannot give an EIG."""
    if isinstance(source, Simulator):
        if source.design_dim == 0:
            raise ShapeError(
                f"simulator '{source.name}' takes no design (design_dim = 0), so there is "
                f"nothing to choose: the EIG needs p(x|θ, d) to depend on a design d. Declare "
                f"design_dim (and use the design in sample/log_likelihood)."
            )
        if not source.has_likelihood:
            raise LikelihoodNotAvailableError(
                f"simulator '{source.name}' has no tractable likelihood p(x|θ, d), so its EIG "
                f"cannot be computed exactly. Simulate with a design column, train a "
                f"surrogate on it (e.g. simfer.LikelihoodEstimator) and pass the trained "
                f"estimator as the source instead (with simulator=sim)."
            )
        return "likelihood"
    for cls, kind, _ in ESTIMATOR_KINDS:
        if isinstance(source, cls):
            name = type(source).__name__
            if source.network is None:
                raise SimferError(f"this {name} is not trained yet: call fit(data) first")
            if source.design_dim == 0:
                raise ShapeError(
                    f"this {name} was trained on simulations without a design column "
                    f"(design_dim = 0), so its EIG cannot depend on a design. Simulate with "
                    f"a design distribution, simfer.simulate(sim, prior, n, design=...), and "
                    f"refit it on those simulations."
                )
            return kind
    accepted = ", ".join(cls.__name__ for cls, _, _ in ESTIMATOR_KINDS)
    raise TypeError(
        f"cannot compute an EIG from a {type(source).__name__}: pass a simfer.Simulator with "
        f"a tractable log_likelihood, or a trained {accepted} (conditioned on a design)"
    )


def resolve_source(source: Any, simulator: Simulator | None = None) -> Source:
    """Classify ``source`` and check ``simulator`` (where the outer x come from) against it."""
    kind = source_kind(source)
    if kind == "likelihood":
        if simulator is not None and simulator is not source:
            raise ValueError(
                f"simulator= is for trained estimators (it draws their outer x); the source "
                f"'{source.name}' is itself a simulator with an exact likelihood"
            )
        return Source(
            kind, source, source, source.theta_dim, source.design_dim, f"simulator '{source.name}'"
        )
    name = type(source).__name__
    why = next(reason for cls, k, reason in ESTIMATOR_KINDS if k == kind)
    if kind == "nle" and simulator is None and source.dims.embedding:
        why = "this LikelihoodEstimator models a summary s(x) of its embedding, not x"
    if simulator is None and why is not None:
        raise TypeError(
            f"eig() of a {name} needs simulator=: {why}, so the outer x_n ~ p(x|θ_n, d) "
            f"must come from the simulator it was trained on (any simfer.Simulator with the "
            f"same θ, x and design shapes; it needs no likelihood)"
        )
    dims = source.dims
    if simulator is not None:
        if not isinstance(simulator, Simulator):
            got = type(simulator).__name__
            raise TypeError(f"simulator= must be a simfer.Simulator, got {got}")
        mismatches = [
            f"{label} {mine} vs {theirs}"
            for label, mine, theirs in (
                ("theta_dim", dims.theta_dim, simulator.theta_dim),
                ("design_dim", dims.design_dim, simulator.design_dim),
                (
                    "x_shape",
                    list(dims.x_shape),
                    list(simulator.x_shape) if simulator.x_shape is not None else None,
                ),
            )
            if theirs is not None and mine != theirs
        ]
        if mismatches:
            raise ShapeError(
                f"simulator '{simulator.name}' does not match the {name} "
                f"(estimator vs simulator: {'; '.join(mismatches)})"
            )
    return Source(kind, source, simulator, dims.theta_dim, dims.design_dim, name)


def simulator_sampler(simulator: Simulator) -> Sampler:
    """``(theta, design, seed) -> x``: x ~ p(x|θ,d) from ``simulator`` as one tensor, with a
    clear error for set-valued or non-finite x."""

    def sample(theta: Tensor, design: Tensor, seed: int) -> Tensor:
        x = simulator.simulate(theta, design, seed=seed)
        if not isinstance(x, Tensor):
            raise ShapeError(
                f"simulator '{simulator.name}' returns set-valued x ({type(x).__name__}); "
                f"EIG over designs needs x as one tensor [batch, *x_shape]"
            )
        if not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).sum())
            raise SimulatorError(
                f"simulator '{simulator.name}' returned NaN or inf in {bad} of {x.shape[0]} "
                f"rows at design {design.tolist()}; the EIG needs every outer sample"
            )
        return x

    return sample


def likelihood_model(simulator: Simulator) -> LikelihoodModel:
    """The exact likelihood and sampler of ``simulator`` as a `LikelihoodModel`."""

    def log_likelihood(x: Tensor, theta: Tensor, design: Tensor) -> Tensor:
        return simulator.log_likelihood(x, theta, design)

    return LikelihoodModel(
        log_likelihood=log_likelihood,
        sample=simulator_sampler(simulator),
        pairwise=getattr(simulator, "pairwise_log_likelihood", None),
        name=simulator.name,
    )


def surrogate_likelihood_model(source: Source) -> LikelihoodModel:
    """An NLE's log q(x|θ,d) with the source's sampler (the simulator's, or the NLE's own)."""
    estimator = source.model

    def log_likelihood(x: Tensor, theta: Tensor, design: Tensor) -> Tensor:
        return estimator.log_prob(x=x, theta=theta, design=design).to(theta.device)

    return LikelihoodModel(log_likelihood, source.sampler(), name=source.name)


def ratio_model(source: Source, reference: Any) -> LikelihoodModel:
    """A ratio estimator's log r̂(x|θ, ``reference``, d) (the ensemble mean) as the
    log-likelihood of a `LikelihoodModel`: it is log p(x|θ,d) up to a function of x, which
    cancels in every contrastive estimator; outer x from the source's simulator."""
    estimator = source.model

    def log_likelihood(x: Tensor, theta: Tensor, design: Tensor) -> Tensor:
        value = estimator.log_ratio(x=x, theta=theta, reference=reference, design=design)
        return value.to(theta.device)

    return LikelihoodModel(log_likelihood, source.sampler(), name=source.name)
