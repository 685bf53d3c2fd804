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

Experiments of many events.  A surrogate trained on one-event simulations gives the EIG
of an experiment that records n events when the events are independent and identically
distributed given (θ, d): then p(x_1..n|θ,d) = Π_i p(x_i|θ,d), and the experiment's
log-likelihood (or log ratio) is the per-event one summed over its events.  With
``n_events = n`` (`resolve_source`) the outer x of a surrogate source is an experiment of
n events: n rows of a one-event ``simulator=`` (or of the NLE itself), or one row of a
simulator whose x holds the n events stacked along its first axis
(`events_per_experiment`: ``WeinbergAngle(n_events=100)`` holds 100 events of
``WeinbergAngle(n_events=1)``'s); `experiment_model` sums the per-event term over them
(`simfer.design.nmc.sum_over_events`).  For a simulator with an exact likelihood, n_events
means n independent runs of it.  Events that are not independent given (θ, d) (a shared
nuisance, a detector drift over the run) break this: simulate the whole experiment and
train on it instead.
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
from .nmc import LikelihoodModel, Sampler, sum_over_events

__all__ = [
    "ESTIMATOR_KINDS",
    "Source",
    "events_per_experiment",
    "experiment_model",
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
        n_events: events per experiment (iid given θ and d); each outer x holds n_events
            events of ``event_shape`` and the per-event term is summed over them.
        event_shape: the shape of one event (the estimator's x, or the simulator's for a
            likelihood source); None when unknown (set-valued x).
    """

    kind: str
    model: Any
    simulator: Simulator | None
    theta_dim: int
    design_dim: int
    name: str
    n_events: int = 1
    event_shape: tuple[int | None, ...] | None = None

    @property
    def x_from(self) -> str:
        """Where the outer x come from, in words."""
        if self.simulator is None:
            where = f"the surrogate q(x|θ,d) of {self.name}"
        else:
            where = f"simulator '{self.simulator.name}'"
        if self.n_events == 1:
            return where
        return f"{where}, {self.n_events} events per experiment"

    def sampler(self) -> Sampler:
        """``(theta [N, p], design [D], seed) -> x``, x ~ p(x|θ,d), from the simulator or
        (an NLE without a simulator) from the surrogate; the same seed at two designs draws
        from the same base randomness (the common random numbers).  x is ``[N, *x_shape]``
        for one event per experiment, ``[N, n_events, *event_shape]`` for n_events."""
        n = self.n_events
        if self.simulator is not None:
            draw = simulator_sampler(self.simulator)
            if n == 1:
                return draw
            event_shape = tuple(self.event_shape)
            # one row of the simulator holds 1 event (n rows per experiment) or all n
            repeats = n // events_per_experiment(self.simulator.x_shape, event_shape)

            def experiments(theta: Tensor, design: Tensor, seed: int) -> Tensor:
                rows = theta.repeat_interleave(repeats, 0) if repeats > 1 else theta
                return draw(rows, design, seed).reshape(theta.shape[0], n, *event_shape)

            return experiments
        estimator = self.model

        def sample(theta: Tensor, design: Tensor, seed: int) -> Tensor:
            x = estimator.sample(n, theta=theta, design=design, seed=seed)  # [N, n, *x_shape]
            return x[:, 0] if n == 1 else x

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


def events_per_experiment(
    experiment_shape: tuple[int | None, ...] | None, event_shape: tuple[int | None, ...] | None
) -> int | None:
    """How many events of ``event_shape`` one x of ``experiment_shape`` holds, stacked along
    its first axis: 1 when the shapes are equal, n for ``(n, *event_shape)`` or for
    ``(n · e_0, *event_shape[1:])`` (``(100,)`` holds 100 events of ``(1,)``); None when it
    is no whole number of them, or a shape is unknown (set-valued x)."""
    if experiment_shape is None or event_shape is None:
        return None
    outer, inner = tuple(experiment_shape), tuple(event_shape)
    if None in outer or None in inner or not inner:
        return 1 if outer == inner else None
    if outer == inner:
        return 1
    if len(outer) == len(inner) + 1 and outer[1:] == inner and outer[0] >= 1:
        return outer[0]
    if len(outer) == len(inner) and outer[1:] == inner[1:] and outer[0] % inner[0] == 0:
        return outer[0] // inner[0]
    return None


def experiment_model(model: LikelihoodModel, source: Source) -> LikelihoodModel:
    """``model`` (per-event log-likelihood) for an experiment of ``source.n_events`` events
    iid given (θ, d): the per-event term summed over each x's events
    (`simfer.design.nmc.sum_over_events`), outer x drawn by ``source.sampler()``.  The
    model itself when there is one event per experiment."""
    n = source.n_events
    if n == 1:
        return model
    return LikelihoodModel(
        sum_over_events(model.log_likelihood, n),
        source.sampler(),
        pairwise=None,  # a per-event pairwise path does not see the events
        name=f"{model.name}, {n} iid events per experiment",
    )


def resolve_source(source: Any, simulator: Simulator | None = None, n_events: int = 1) -> Source:
    """Classify ``source`` and check ``simulator`` (where the outer x come from) against it.

    With ``n_events > 1`` each outer x is an experiment of that many events iid given
    (θ, d) (see the module docstring): a surrogate's ``simulator=`` must then draw one
    event per row (the estimator's x shape) or the n events stacked
    (`events_per_experiment`)."""
    kind = source_kind(source)
    if kind == "likelihood":
        if simulator is not None and simulator is not source:
            raise ValueError(
                f"simulator= is for trained estimators (it draws their outer x); the source "
                f"'{source.name}' is itself a simulator with an exact likelihood"
            )
        if n_events > 1 and source.x_shape is None:
            raise ShapeError(
                f"simulator '{source.name}' has set-valued x of no fixed shape: n_events "
                f"needs x as one tensor; simulate the whole experiment as one x instead"
            )
        return Source(
            kind,
            source,
            source,
            source.theta_dim,
            source.design_dim,
            f"simulator '{source.name}'",
            n_events,
            None if source.x_shape is None else tuple(source.x_shape),
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
    if n_events > 1 and (dims.is_set or dims.embedding):
        raise ShapeError(
            f"n_events sums the per-event term of a {name} over the events of an "
            f"experiment, which needs each event as a fixed-shape tensor; this one "
            f"{'takes set-valued x' if dims.is_set else 'models a summary s(x) of its embedding'}"
        )
    if simulator is not None:
        if not isinstance(simulator, Simulator):
            got = type(simulator).__name__
            raise TypeError(f"simulator= must be a simfer.Simulator, got {got}")
        mismatches = [
            f"{label} {mine} vs {theirs}"
            for label, mine, theirs in (
                ("theta_dim", dims.theta_dim, simulator.theta_dim),
                ("design_dim", dims.design_dim, simulator.design_dim),
            )
            if theirs is not None and mine != theirs
        ]
        mismatches += _x_shape_mismatch(simulator, dims.x_shape, n_events)
        if mismatches:
            raise ShapeError(
                f"simulator '{simulator.name}' does not match the {name} "
                f"(estimator vs simulator: {'; '.join(mismatches)})"
            )
    return Source(
        kind,
        source,
        simulator,
        dims.theta_dim,
        dims.design_dim,
        name,
        n_events,
        tuple(dims.x_shape),
    )


def _x_shape_mismatch(simulator: Simulator, event_shape: tuple, n_events: int) -> list[str]:
    """Why ``simulator``'s x is not one event of ``event_shape`` (one event per row) or,
    for ``n_events > 1``, the n_events events stacked; empty when it is."""
    theirs = simulator.x_shape
    if theirs is None:
        if n_events > 1:
            return [f"x_shape {list(event_shape)} vs set-valued x (n_events needs a fixed shape)"]
        return []
    held = events_per_experiment(theirs, event_shape)
    if held == 1 or (held == n_events and n_events > 1):
        return []
    shapes = f"x_shape {list(event_shape)} vs {list(theirs)}"
    if held is None:
        return [shapes]
    if n_events == 1:
        return [
            f"{shapes}: the simulator's x holds {held} events of the estimator's x; pass "
            f"n_events={held} to sum the per-event term over them (exact when the events "
            f"are iid given θ and d)"
        ]
    return [f"{shapes}: the simulator's x holds {held} events, not n_events = {n_events}"]


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
