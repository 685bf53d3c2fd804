r"""Continuous flows: a density defined by an ODE, sampled and evaluated by integrating it.

A time-dependent vector field v(z, t | c) on R^D transports a base density p_B at time
t_B to a density q at time t_q along the ODE dz/dt = v(z, t | c).  Sampling integrates
z(t_B) ~ p_B = N(0, I) to z(t_q).  The density follows from the instantaneous change of
variables (Chen, Rubanova, Bettencourt & Duvenaud, NeurIPS 2018, arXiv:1806.07366):
along a trajectory d log p_t(z(t))/dt = −∇·v(z(t), t), so integrating the augmented system

    dz/dt = v(z, t | c),   dℓ/dt = ∇·v(z, t | c),   z(t_q) = z,  ℓ(t_q) = 0

from t_q to t_B gives log q(z | c) = log N(z(t_B); 0, I) + ℓ(t_B), whichever way time runs.
The divergence is exact (the trace of the D × D Jacobian, from one backward pass through D
copies of the batch) for small D, or Hutchinson's unbiased estimate E_ε[εᵀ (∂v/∂z) ε] with
one Rademacher probe ε per row, fixed along the trajectory (FFJORD, Grathwohl et al.,
ICLR 2019, arXiv:1810.01367), for large D.

`odeint` integrates with the adaptive Dormand–Prince 5(4) pair (Dormand & Prince 1980),
one step size for the whole batch, the step accepted when every row's RMS error
estimate, relative to ``atol + rtol·|y|``, is at most 1.

`ContinuousFlow` is the shared body of flow matching (`simfer.nn.flow_matching`) and
score-based diffusion (`simfer.nn.diffusion`): it standardises v = θ, standardises (or
embeds) the context and appends a standardised design, exactly like
`simfer.nn.flows.ConditionalFlow`, and offers the same ``summarize`` /
``log_prob_given_summary`` / ``sample_given_summary`` methods, so an estimator uses either
interchangeably.  A subclass says which way time runs and what the velocity is; its
network is a `VectorFieldNet`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..errors import SimferError
from .flows import DesignContext
from .mlp import Standardize

__all__ = [
    "DIVERGENCES",
    "ContinuousFlow",
    "TimeFeatures",
    "TrainingNoise",
    "VectorFieldNet",
    "divergence",
    "odeint",
    "vector_field_layers",
]

DIVERGENCES = ("auto", "exact", "hutchinson")
EXACT_UP_TO = 16  # "auto": the exact trace up to this many dimensions, Hutchinson beyond

# Dormand–Prince 5(4): nodes c, stages a, 5th-order weights b and the error weights b − b̂.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_E = (
    71 / 57600,
    0.0,
    -71 / 16695,
    71 / 1920,
    -17253 / 339200,
    22 / 525,
    -1 / 40,
)


def odeint(
    f: Callable[[float, Tensor], Tensor],
    y0: Tensor,
    t0: float,
    t1: float,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    max_steps: int = 10_000,
) -> Tensor:
    """y(t1) for dy/dt = f(t, y), y(t0) = y0 ``[batch, k]``, by adaptive Dormand–Prince 5(4).

    t1 < t0 integrates backwards.  A step is accepted when the largest per-row RMS of the
    error estimate over ``atol + rtol·max(|y|, |y_new|)`` is at most 1; the next step is
    h·clamp(0.9·err^(−1/5), 0.2, 5).  Differentiable (the step sizes are not).  Raises a
    `SimferError` when the field is not finite or ``max_steps`` steps do not reach t1."""
    span = t1 - t0
    if span == 0:
        return y0
    direction = math.copysign(1.0, span)
    t, y = t0, y0
    h = 0.05 * abs(span)
    k1 = f(t, y)
    for _ in range(max_steps):
        if (t1 - t) * direction <= 1e-12 * abs(span):
            return y
        h = min(h, abs(t1 - t))
        step = direction * h
        stages = [k1]
        for i in range(1, 7):
            increment = sum(a * k for a, k in zip(_A[i], stages, strict=False) if a != 0.0)
            stages.append(f(t + _C[i] * step, y + step * increment))
        y_new = y + step * sum(b * k for b, k in zip(_A[6], stages, strict=False) if b != 0.0)
        error = step * sum(e * k for e, k in zip(_E, stages, strict=True) if e != 0.0)
        scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
        ratio = float((error / scale).detach().pow(2).mean(1).sqrt().max())
        if not math.isfinite(ratio):
            if h < 1e-8 * abs(span):
                raise SimferError(
                    "the ODE's vector field is not finite: the network returned NaN or inf"
                )
            h *= 0.2
            continue
        if ratio <= 1.0:
            t, y, k1 = t + step, y_new, stages[6]  # first same as last
        h *= min(5.0, max(0.2, 0.9 * ratio ** (-0.2) if ratio > 0 else 5.0))
    raise SimferError(
        f"the ODE solver took {max_steps} steps without reaching t = {t1}: the learnt vector "
        f"field is too stiff for atol={atol:g}, rtol={rtol:g} (loosen them, or train longer)"
    )


def divergence(
    velocity: Callable[[Tensor, Tensor], Tensor],
    z: Tensor,
    summary: Tensor,
    *,
    probe: Tensor | None = None,
    create_graph: bool = False,
) -> tuple[Tensor, Tensor]:
    """v(z) ``[batch, D]`` and its divergence ∇·v ``[batch]``.

    ``velocity(z, summary)`` maps ``[b, D]`` and ``[b, C]`` to ``[b, D]`` row by row.
    Without ``probe``, the exact trace: the D copies of the batch are stacked, and one
    backward pass with the k-th unit vector on the k-th copy gives ∂v_k/∂z_k.  With a
    ``probe`` ε ``[batch, D]`` (Rademacher), Hutchinson's estimate εᵀ(∂v/∂z)ε.
    ``create_graph`` keeps the result differentiable (for ∇_θ of a log-density)."""
    n, d = z.shape
    with torch.enable_grad():
        z = z if z.requires_grad else z.detach().requires_grad_(True)
        if probe is None:
            stacked = z.repeat(d, 1)
            v_all = velocity(stacked, summary.repeat(d, 1))
            basis = torch.eye(d, dtype=z.dtype, device=z.device).repeat_interleave(n, dim=0)
            (grad,) = torch.autograd.grad(v_all, stacked, basis, create_graph=create_graph)
            trace = grad.reshape(d, n, d).diagonal(dim1=0, dim2=2).sum(-1)
            v = v_all[:n]
        else:
            v = velocity(z, summary)
            (grad,) = torch.autograd.grad(v, z, probe, create_graph=create_graph)
            trace = (grad * probe).sum(1)
    if not create_graph:
        v, trace = v.detach(), trace.detach()
    return v, trace


class TrainingNoise:
    """The random numbers of a stochastic loss (times t and noise ε): a stream seeded by
    ``seed`` for training batches, and for validation the same draws at every epoch
    (batch k of an evaluation always gets the stream ``seed + 1 + k``), so that epochs are
    compared on common random numbers and early stopping sees the model change, not the
    noise."""

    def __init__(self, seed: int, device: torch.device | str):
        self.seed = int(seed)
        self.device = torch.device(device)
        self._training = torch.Generator(self.device).manual_seed(self.seed)
        self._validation_batch = 0

    def __call__(self, training: bool) -> torch.Generator:
        if training:
            self._validation_batch = 0
            return self._training
        self._validation_batch += 1
        seed = self.seed + 1_000_003 * self._validation_batch
        return torch.Generator(self.device).manual_seed(seed)


class TimeFeatures(nn.Module):
    """t ``[batch]`` ↦ (t, sin ω_k t, cos ω_k t) ``[batch, 2K + 1]`` with K fixed frequencies
    ω_k = π·64^(k/(K−1)), from one half-period over [0, 1] to 64 half-periods: smooth
    enough for the solver, fine enough for the fast change of a field near the data."""

    def __init__(self, n_frequencies: int = 8):
        super().__init__()
        k = torch.arange(n_frequencies, dtype=torch.float32)
        exponent = k / max(n_frequencies - 1, 1)
        self.register_buffer("frequencies", math.pi * 64.0**exponent)
        self.out_features = 2 * n_frequencies + 1

    def forward(self, t: Tensor) -> Tensor:
        angle = t[:, None] * self.frequencies
        return torch.cat([t[:, None], torch.sin(angle), torch.cos(angle)], dim=1)


def vector_field_layers(hidden: int | Sequence[int]) -> tuple[int, int]:
    """(width, residual blocks) of a `VectorFieldNet` from ``hidden``: an int w means two
    residual blocks of two layers of width w; a sequence holds one width an even number of
    times (one block per pair)."""
    widths = [hidden] * 4 if isinstance(hidden, int) else [int(h) for h in hidden]
    if not widths or len(set(widths)) != 1 or len(widths) % 2 or int(widths[0]) < 1:
        raise ValueError(
            f"a vector field network is a residual network: its hidden layers share one "
            f"positive width and come in pairs (one residual block each), e.g. hidden=128 or "
            f"(128, 128, 128, 128, 128, 128); got hidden={hidden!r}"
        )
    return int(widths[0]), len(widths) // 2


class VectorFieldNet(nn.Module):
    """r(z, t, c): a residual MLP on (z ``[batch, D]``, t ``[batch]`` or ``[1]``, c ``[batch,
    C]``) → ``[batch, D]``.

    The input layer sees (z, time features, c); each residual block h ↦ h + W₂ a(W₁ a(h) +
    U (time features, c)) sees the time and the context again.  The output layer starts at
    zero, so an untrained network returns 0 and the flow built on it starts at its
    Gaussian baseline (see the subclasses).
    """

    def __init__(
        self,
        features: int,
        context_features: int,
        hidden: int | Sequence[int] = 128,
        activation: Callable[[Tensor], Tensor] = nn.functional.silu,
        n_frequencies: int = 8,
    ):
        super().__init__()
        width, blocks = vector_field_layers(hidden)
        self.time = TimeFeatures(n_frequencies)
        conditions = self.time.out_features + context_features
        self.input = nn.Linear(features + conditions, width)
        self.inner = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.condition = nn.ModuleList(nn.Linear(conditions, width) for _ in range(blocks))
        self.outer = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.output = nn.Linear(width, features)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)
        self.activation = activation

    def forward(self, z: Tensor, t: Tensor, context: Tensor) -> Tensor:
        conditions = torch.cat([self.time(t).expand(z.shape[0], -1), context], dim=1)
        h = self.input(torch.cat([z, conditions], dim=1))
        a = self.activation
        for inner, condition, outer in zip(self.inner, self.condition, self.outer, strict=True):
            h = h + outer(a(inner(a(h)) + condition(conditions)))
        return self.output(a(h))


class ContinuousFlow(DesignContext, nn.Module, ABC):
    """q(v | c, d) defined by an ODE in standardised coordinates z = (v − μ)/σ.

    Subclasses set ``t_base`` (where z ~ N(0, I)) and ``t_data`` (where z follows q), and
    define ``velocity(z, t, summary)`` (the ODE's right-hand side) and ``loss(v, summary,
    generator)`` (their training loss on v ``[batch, D]``).  The methods mirror
    `simfer.nn.flows.ConditionalFlow`: ``summarize(c, d)`` → ``[N, C (+ K)]``,
    ``log_prob_given_summary(v [N, D], summary [N, ·])`` → ``[N]`` and
    ``sample_given_summary(n, summary [M, ·])`` → ``[M, n, D]``.

    Args:
        features: D.
        context_features: C, the width of the context's summary (the embedding's output).
        hidden: the `VectorFieldNet`'s hidden widths (`vector_field_layers`).
        activation: its activation function.
        embedding: a network applied to the raw context, trained jointly (else the
            context is standardised).
        design_features: K, design variables appended (standardised) to the summary.
        atol, rtol: tolerances of the ODE solver (`odeint`), in standardised units.
        divergence: ``"exact"``, ``"hutchinson"`` or ``"auto"`` (exact up to 16 dims).
    """

    t_base: float = 0.0
    t_data: float = 1.0

    def __init__(
        self,
        features: int,
        context_features: int,
        *,
        hidden: int | Sequence[int] = 128,
        activation: Callable[[Tensor], Tensor] = nn.functional.silu,
        embedding: nn.Module | None = None,
        design_features: int = 0,
        atol: float = 1e-5,
        rtol: float = 1e-5,
        divergence: str = "auto",
    ):
        super().__init__()
        if int(features) < 1 or int(context_features) < 1:
            raise ValueError(
                f"features and context_features must be positive, got {features}, "
                f"{context_features}"
            )
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {list(DIVERGENCES)}, got {divergence!r}")
        if not (atol > 0 and rtol > 0):
            raise ValueError(f"atol and rtol must be positive, got {atol}, {rtol}")
        self.features = int(features)
        self.design_features = int(design_features)
        self.atol, self.rtol = float(atol), float(rtol)
        self.exact = divergence == "exact" or (divergence == "auto" and features <= EXACT_UP_TO)
        self.input_standardize = Standardize(self.features)
        self.context_net = Standardize(context_features) if embedding is None else embedding
        if self.design_features:
            self.design_standardize = Standardize(self.design_features)
        self.net = VectorFieldNet(
            self.features, int(context_features) + self.design_features, hidden, activation
        )

    # -- what a subclass defines -----------------------------------------------------------
    @abstractmethod
    def velocity(self, z: Tensor, t: Tensor, summary: Tensor) -> Tensor:
        """dz/dt at z ``[N, D]``, time t (``[N]`` or ``[1]``), given ``summary`` ``[N, ·]``."""

    @abstractmethod
    def loss(self, inputs: Tensor, summary: Tensor, generator: torch.Generator) -> Tensor:
        """The training loss (a scalar) on v ``[N, D]`` given ``summary`` ``[N, ·]``."""

    # -- the context, as in ConditionalFlow ------------------------------------------------
    @property
    def context_standardize(self) -> Standardize | None:
        return self.context_net if isinstance(self.context_net, Standardize) else None

    @property
    def embedding(self) -> nn.Module | None:
        return None if isinstance(self.context_net, Standardize) else self.context_net

    def embed(self, context: Tensor) -> Tensor:
        """The context's own summary ``[N, C]``: standardised, or embedded (no design)."""
        return self.context_net(context)

    def fit_standardization(
        self, inputs: Tensor, context: Tensor | None = None, design: Tensor | None = None
    ) -> None:
        """μ, σ of v (and of the context unless embedded, and of the design) from training
        data ``[N, D]`` (``[N, C]``, ``[N, K]``)."""
        self.input_standardize.fit(inputs)
        if context is not None and self.context_standardize is not None:
            self.context_standardize.fit(context)
        if design is not None and self.design_features:
            self.design_standardize.fit(design)

    # -- the ODE ---------------------------------------------------------------------------
    def _field(self, t: float, summary: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
        time = summary.new_full((1,), t)
        return lambda z, s: self.velocity(z, time, s)

    def sample_given_summary(self, n: int, summary: Tensor) -> Tensor:
        """n draws v ~ q(v|c) for each row of ``summary`` ``[M, ·]`` → ``[M, n, D]``: z(t_base)
        ~ N(0, I) carried to t_data by the ODE, then v = μ + σ z."""
        m = summary.shape[0]
        repeated = summary.repeat_interleave(n, dim=0)
        z = torch.randn(m * n, self.features, dtype=summary.dtype, device=summary.device)
        z = odeint(
            lambda t, y: self._field(t, repeated)(y, repeated),
            z,
            self.t_base,
            self.t_data,
            atol=self.atol,
            rtol=self.rtol,
        )
        draws = z * self.input_standardize.std + self.input_standardize.mean
        return draws.reshape(m, n, self.features)

    def log_prob_given_summary(self, inputs: Tensor, summary: Tensor) -> Tensor:
        """log q(v|c) ``[N]`` from v ``[N, D]`` and ``summary`` ``[N, ·]`` by the
        instantaneous change of variables (module docstring); differentiable in v when v
        requires grad.  With Hutchinson's estimator the probes are seeded (the same v gives
        the same value)."""
        z = self.input_standardize(inputs)
        n, d = z.shape
        create_graph = torch.is_grad_enabled() and inputs.requires_grad
        probe = None
        if not self.exact:
            generator = torch.Generator(z.device).manual_seed(0)
            signs = torch.randint(0, 2, (n, d), generator=generator, device=z.device)
            probe = (2 * signs - 1).to(z.dtype)

        def augmented(t: float, y: Tensor) -> Tensor:
            v, trace = divergence(
                self._field(t, summary),
                y[:, :d],
                summary,
                probe=probe,
                create_graph=create_graph,
            )
            return torch.cat([v, trace[:, None]], dim=1)

        start = torch.cat([z, z.new_zeros(n, 1)], dim=1)
        end = odeint(augmented, start, self.t_data, self.t_base, atol=self.atol, rtol=self.rtol)
        base, accumulated = end[:, :d], end[:, d]
        log_base = -0.5 * (base**2).sum(1) - 0.5 * d * math.log(2 * math.pi)
        return log_base + accumulated - torch.log(self.input_standardize.std).sum()
