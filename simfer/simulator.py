"""`Simulator`: the one interface every other part of simfer consumes.

A simulator draws an observation x from p(x|θ, d) by running a latent path z
(the branchings of a shower, the bounces of a Galton board, the jumps of an
epidemic).  p(x|θ) = ∫ p(x,z|θ) dz is intractable, but along the path that was
actually run the *joint* density p(x,z|θ) is a product of known factors, and it
yields the "gold" of Brehmer, Louppe, Pavez & Cranmer (PNAS 2020):

    joint log ratio   log r(x,z|θ,θ_ref) = log p(x,z|θ) − log p(x,z|θ_ref)
    joint score       t(x,z|θ)           = ∇_θ log p(x,z|θ)

They are unbiased targets for the quantities we want, because p(z|x,θ_ref)
r(x,z|θ,θ_ref) = p(z|x,θ) r(x|θ,θ_ref) gives E_{z~p(z|x,θ_ref)}[r(x,z|θ,θ_ref)] =
r(x|θ,θ_ref), and ∫ ∇_θ p(z|x,θ) dz = 0 gives E_{z~p(z|x,θ)}[t(x,z|θ)] = t(x|θ).
(E[log r(x,z)] ≠ log r(x): the log of the gold ratio is *not* unbiased.)

How a simulator provides gold is a choice of three levels, from least to most work:

1. ``sample(theta, design, generator) -> x``: a black box, no gold
   (`Simulator.from_function` wraps a plain function like this).
2. ``sample_with_latent(...) -> (x, latent)`` and ``joint_log_prob(x, latent,
   theta, design) -> log p(x,z|θ)``: simfer evaluates the recorded path at any
   θ, takes differences for the ratio and autograd for the score.
   `Simulator.from_pyro` is this level with the Pyro trace as the latent: trace
   once, replay the same latent values at every other θ.
3. also override ``joint_score``: for backends torch cannot differentiate (a
   Fortran generator that reweights its events, say).

Everything batched: θ is ``[batch, theta_dim]``, x is ``[batch, *x_shape]``, the
design ``[batch, design_dim]`` (one ``[design_dim]`` design is broadcast).  A
scalar observation per event is returned as ``[batch, 1]``.

Set-valued x (a variable number of elements per event: particles, hits) is returned
as a list of ``batch`` tensors ``[n_i, features]`` or as a `simfer.data.RaggedSets`;
it becomes a `RaggedSets` (no padding) and keeps the floating dtype the simulator
returns, so 4-momenta can stay in float64 for Lorentz invariants.  Such a simulator
declares ``x_shape=(None, features)``.  Results live on θ's
device and are reproducible from ``seed`` (an int or a ``torch.Generator``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.distributions import constraints

from .data import RaggedSets, SimulationData, rows_finite
from .errors import (
    GoldNotAvailableError,
    LikelihoodNotAvailableError,
    ShapeError,
    SimulatorError,
    SupportError,
)
from .seeding import Seed, make_generator

# Seed and make_generator live in simfer.seeding; re-exported here for existing imports.
__all__ = ["Simulator", "TractableSimulator", "Seed", "make_generator"]


def _as_float_tensor(value: Any, what: str, device=None, dtype=None) -> Tensor:
    try:
        tensor = torch.as_tensor(value, device=device)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ShapeError(
            f"{what} must be array-like numbers, got {type(value).__name__}"
        ) from error
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise ShapeError(f"{what} must be real numbers, got dtype {tensor.dtype}")
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    if dtype is not None:
        tensor = tensor.to(dtype)
    return tensor


class Simulator:
    """Base class of every simulator; subclass it or use `from_function` / `from_pyro`.

    Args:
        theta_dim: number of parameters.
        x_shape: shape of one observation; None to learn it from the first call;
            ``(None, features)`` for set-valued x.
        design_dim: number of design variables (0: the simulator takes no design).
        default_design: ``[design_dim]`` design used when none is given.
        theta_support: a ``torch.distributions.constraints`` constraint that every
            θ must satisfy (default: all of R^theta_dim).
        name: a name used in messages and store fingerprints.
    """

    def __init__(
        self,
        theta_dim: int,
        x_shape: Sequence[int] | None = None,
        *,
        design_dim: int = 0,
        default_design: Sequence[float] | Tensor | None = None,
        theta_support: constraints.Constraint | None = None,
        name: str | None = None,
    ):
        if not isinstance(theta_dim, int) or theta_dim < 1:
            raise ValueError(f"theta_dim must be a positive int, got {theta_dim!r}")
        self.theta_dim = theta_dim
        self.x_shape = (
            None if x_shape is None else tuple(None if s is None else int(s) for s in x_shape)
        )
        self.design_dim = int(design_dim)
        self.default_design = (
            None if default_design is None else torch.as_tensor(default_design, dtype=torch.float64)
        )
        self.theta_support = theta_support or constraints.real
        self.name = name or type(self).__name__

    # -- the hooks a subclass implements ---------------------------------------------
    def sample(self, theta: Tensor, design: Tensor | None, generator: torch.Generator) -> Tensor:
        """Draw x ``[batch, *x_shape]`` at θ ``[batch, theta_dim]`` (override this or
        `sample_with_latent`)."""
        if type(self).sample_with_latent is Simulator.sample_with_latent:
            raise TypeError(f"{type(self).__name__} must override sample() or sample_with_latent()")
        return self.sample_with_latent(theta, design, generator)[0]

    def sample_with_latent(
        self, theta: Tensor, design: Tensor | None, generator: torch.Generator
    ) -> tuple[Tensor, Any]:
        """Draw x and record the latent path z needed by `joint_log_prob`."""
        raise GoldNotAvailableError(self.no_gold_message())

    def joint_log_prob(
        self, x: Tensor, latent: Any, theta: Tensor, design: Tensor | None
    ) -> Tensor:
        """log p(x,z|θ) ``[batch]`` of a recorded path, at any θ; differentiable in θ
        unless `joint_score` is overridden."""
        raise GoldNotAvailableError(self.no_gold_message())

    def joint_score(self, x: Tensor, latent: Any, theta: Tensor, design: Tensor | None) -> Tensor:
        """t(x,z|θ) = ∇_θ log p(x,z|θ) ``[batch, theta_dim]``; autograd by default."""
        return self._log_prob_and_score(x, latent, theta, design)[1]

    def log_likelihood(self, x: Tensor, theta: Tensor, design: Tensor | None = None) -> Tensor:
        """The exact log p(x|θ) ``[batch]``, for simulators that have one (tests, benchmarks)."""
        raise LikelihoodNotAvailableError(
            f"simulator '{self.name}' has no tractable likelihood p(x|θ); that is what the "
            f"estimators are for."
        )

    def log_likelihood_ratio(
        self, x: Tensor, theta: Tensor, theta_ref: Tensor, design: Tensor | None = None
    ) -> Tensor:
        """The exact log r(x|θ,θ_ref) = log p(x|θ) − log p(x|θ_ref) ``[batch]``."""
        return self.log_likelihood(x, theta, design) - self.log_likelihood(x, theta_ref, design)

    def likelihood_score(self, x: Tensor, theta: Tensor, design: Tensor | None = None) -> Tensor:
        """The exact score t(x|θ) = ∇_θ log p(x|θ) ``[batch, theta_dim]``, by autograd."""
        with torch.enable_grad():
            theta_leaf = torch.as_tensor(theta).detach().clone().requires_grad_(True)
            (score,) = torch.autograd.grad(
                self.log_likelihood(x, theta_leaf, design).sum(), theta_leaf
            )
        return score

    # -- capabilities --
    @property
    def has_gold(self) -> bool:
        """Whether this simulator provides the joint log ratio and joint score."""
        return type(self).joint_log_prob is not Simulator.joint_log_prob

    @property
    def has_likelihood(self) -> bool:
        return type(self).log_likelihood is not Simulator.log_likelihood

    def no_gold_message(self) -> str:
        return (
            f"simulator '{self.name}' provides no gold (joint log ratio / joint score). "
            f"Wrap a Pyro program with Simulator.from_pyro, or subclass Simulator and implement "
            f"sample_with_latent() and joint_log_prob(); or simulate with gold=False."
        )

    # -- the public entry point ---------------------------------------------------------------
    def simulate(
        self,
        theta: Tensor | Sequence,
        design: Tensor | Sequence | None = None,
        *,
        gold: bool = False,
        theta_ref: Tensor | Sequence | None = None,
        seed: Seed = None,
        at_reference: Tensor | bool | None = None,
    ) -> Tensor | SimulationData:
        """Simulate one x per row of θ.

        Args:
            theta: ``[batch, theta_dim]``.
            design: ``[batch, design_dim]`` or one ``[design_dim]`` design for all rows.
            gold: also return the joint log ratio and joint score (a `SimulationData`).
            theta_ref: the reference point θ_ref of the joint log ratio, ``[theta_dim]`` or
                ``[batch, theta_dim]``.
            seed: an int or ``torch.Generator``; the same seed gives the same result.
            at_reference: bool ``[batch]`` (or one bool): draw these rows' x at θ_ref
                instead of θ.  Gold stays evaluated at (θ, θ_ref), as the reference class
                of the gold-mining losses needs.

        Returns:
            x ``[batch, *x_shape]`` when ``gold`` is False and no θ_ref is given, else a
            `SimulationData` with the gold columns (when ``gold``) and ``valid`` flags.
        """
        theta = self.check_theta(theta)
        batch, device = theta.shape[0], theta.device
        design = self.check_design(design, batch, device, theta.dtype)
        if theta_ref is not None:
            theta_ref = self.check_theta(theta_ref, batch=batch, what="theta_ref", device=device)
            theta_ref = theta_ref.to(theta.dtype)
        if at_reference is not None:
            if theta_ref is None:
                raise ValueError("at_reference needs theta_ref: the point to draw those rows at")
            at_reference = torch.as_tensor(at_reference, dtype=torch.bool, device=device)
            at_reference = at_reference.expand(batch).clone()
            simulated_at = torch.where(at_reference[:, None], theta_ref, theta)
        else:
            simulated_at = theta
        if gold and not self.has_gold:
            raise GoldNotAvailableError(self.no_gold_message())
        generator = make_generator(seed, device)

        if not gold:
            x = self._checked_x(self._call(self.sample, simulated_at, design, generator), theta)
            if theta_ref is None:
                return x
            return SimulationData(
                theta=theta, x=x, design=design, theta_ref=theta_ref, from_reference=at_reference
            )

        x, latent = self._call(self.sample_with_latent, simulated_at, design, generator)
        x = self._checked_x(x, theta)
        log_p, score = self._gold(x, latent, theta, design)
        columns: dict[str, Tensor | None] = {"joint_score": score}
        if theta_ref is not None:
            log_p_ref, score_ref = self._gold(x, latent, theta_ref, design)
            columns["joint_log_ratio"] = (log_p - log_p_ref).detach()
            columns["joint_score_ref"] = score_ref
        # NaN gold is a failed simulation too (±inf log ratios are legitimate: r = 0 or ∞)
        gold_ok = ~torch.isnan(score).any(1) & ~torch.isnan(log_p)
        if theta_ref is not None:
            gold_ok &= ~torch.isnan(columns["joint_score_ref"]).any(1)
        valid = rows_finite(x) & gold_ok
        return SimulationData(
            theta=theta,
            x=x,
            design=design,
            theta_ref=theta_ref,
            from_reference=at_reference,
            valid=valid,
            **columns,
        )

    def _gold(self, x, latent, theta, design) -> tuple[Tensor, Tensor]:
        try:
            return self._log_prob_and_score(x, latent, theta, design)
        except (SimulatorError, GoldNotAvailableError):
            raise
        except Exception as error:
            raise SimulatorError(
                f"the gold of simulator '{self.name}' (joint_log_prob / joint_score) raised "
                f"{type(error).__name__}: {error}"
            ) from error

    __call__ = simulate

    # -- validation --
    def check_theta(
        self, theta: Any, batch: int | None = None, what: str = "theta", device=None
    ) -> Tensor:
        """θ as a float tensor ``[batch, theta_dim]``, or a `ShapeError`/`SupportError`.

        With ``batch`` given, one ``[theta_dim]`` point is broadcast to all rows."""
        theta = _as_float_tensor(theta, what, device=device)
        if batch is not None and theta.ndim == 1 and theta.shape[0] == self.theta_dim:
            theta = theta.expand(batch, self.theta_dim)
        if theta.ndim != 2 or theta.shape[1] != self.theta_dim:
            hint = ""
            if theta.ndim == 1:
                hint = (
                    f" For a batch of one parameter use {what}[:, None]."
                    if self.theta_dim == 1
                    else f" For one point use {what}[None]."
                )
            raise ShapeError(
                f"{what} must have shape [batch, theta_dim] = [batch, {self.theta_dim}] for "
                f"simulator '{self.name}', got {list(theta.shape)}.{hint}"
            )
        if batch is not None and theta.shape[0] != batch:
            raise ShapeError(f"{what} has {theta.shape[0]} rows, theta has {batch}")
        if not torch.isfinite(theta).all():
            raise SupportError(f"{what} contains NaN or inf values (rows {self._bad_rows(theta)})")
        inside = self.theta_support.check(theta)
        if inside.ndim > 1:
            inside = inside.all(-1)
        if not bool(inside.all()):
            rows = torch.nonzero(~inside).flatten()
            raise SupportError(
                f"{rows.numel()} rows of {what} lie outside the support of simulator "
                f"'{self.name}' ({self.theta_support}); first: row {int(rows[0])} = "
                f"{theta[rows[0]].tolist()}."
            )
        return theta

    @staticmethod
    def _bad_rows(values: Tensor) -> list[int]:
        return (
            torch.nonzero(~torch.isfinite(values.reshape(values.shape[0], -1)).all(1))[:5]
            .flatten()
            .tolist()
        )

    def check_design(self, design: Any, batch: int, device=None, dtype=None) -> Tensor | None:
        """The design as ``[batch, design_dim]``, broadcasting one design to all rows."""
        if self.design_dim == 0:
            if design is not None:
                raise ShapeError(f"simulator '{self.name}' takes no design, but one was given")
            return None
        if design is None:
            if self.default_design is None:
                raise ShapeError(
                    f"simulator '{self.name}' needs a design [batch, {self.design_dim}] "
                    f"(it has no default design)"
                )
            design = self.default_design
        design = _as_float_tensor(design, "design", device=device, dtype=dtype)
        if design.ndim == 0 and self.design_dim == 1:
            design = design.reshape(1)
        if design.ndim == 1 and design.shape[0] == self.design_dim:
            design = design.expand(batch, self.design_dim)
        if design.ndim != 2 or design.shape != (batch, self.design_dim):
            raise ShapeError(
                f"design must have shape [batch, design_dim] = [{batch}, {self.design_dim}] "
                f"or [{self.design_dim}], got {list(design.shape)}"
            )
        if not torch.isfinite(design).all():
            raise SupportError(f"design contains NaN or inf (rows {self._bad_rows(design)})")
        return design

    def _call(self, method: Callable, theta: Tensor, design, generator):
        try:
            return method(theta, design, generator)
        except (GoldNotAvailableError, SimulatorError, ShapeError, SupportError):
            raise
        except Exception as error:
            raise SimulatorError(
                f"simulator '{self.name}' raised {type(error).__name__}: {error} "
                f"(batch of {theta.shape[0]}, theta rows like {theta[0].tolist()})"
            ) from error

    def _checked_x(self, x: Any, theta: Tensor) -> Tensor | RaggedSets:
        if isinstance(x, tuple | list) and len(x) and not isinstance(x[0], int | float):
            x = self._checked_sets(x, theta)
        if isinstance(x, RaggedSets):
            return self._checked_set_shape(x, theta)
        try:
            x = _as_float_tensor(
                x, f"the output of simulator '{self.name}'", device=theta.device, dtype=theta.dtype
            )
        except ShapeError as error:
            raise SimulatorError(str(error)) from error
        batch = theta.shape[0]
        if x.ndim == 0 or x.shape[0] != batch:
            raise SimulatorError(
                f"simulator '{self.name}' returned shape {list(x.shape)} for {batch} parameter "
                f"rows; it must return [batch, *x_shape] with batch={batch} first."
            )
        if x.ndim == 1:
            x = x[:, None]
        if self.x_shape is None:
            self.x_shape = tuple(x.shape[1:])
        elif tuple(x.shape[1:]) != self.x_shape:
            raise SimulatorError(
                f"simulator '{self.name}' returned observations of shape {list(x.shape[1:])}, "
                f"declared x_shape is {list(self.x_shape)}"
            )
        return x.detach()

    def _checked_sets(self, x: list | tuple, theta: Tensor) -> RaggedSets:
        """A list of per-event sets ``[n_i, features]`` as `RaggedSets` (their own float dtype)."""
        try:
            sets = [torch.as_tensor(s, device=theta.device) for s in x]
        except (TypeError, ValueError, RuntimeError) as error:
            raise SimulatorError(
                f"simulator '{self.name}' returned a {type(x).__name__} that is not a list of "
                f"per-event sets [n_i, features] ({error}); return one array [batch, *x_shape] "
                f"or one set per event."
            ) from error
        sets = [s if s.is_floating_point() else s.to(theta.dtype) for s in sets]
        try:
            return RaggedSets.from_list(sets)
        except ShapeError as error:
            raise SimulatorError(
                f"simulator '{self.name}' returned a {type(x).__name__} of arrays that are not "
                f"sets [n_i, features] of one dtype: {error}"
            ) from error

    def _checked_set_shape(self, x: RaggedSets, theta: Tensor) -> RaggedSets:
        batch = theta.shape[0]
        if len(x) != batch:
            raise SimulatorError(
                f"simulator '{self.name}' returned {len(x)} sets for {batch} parameter rows; "
                f"it must return one set [n_i, features] per row."
            )
        shape = (None, x.features)
        if self.x_shape is None:
            self.x_shape = shape
        elif self.x_shape != shape:
            raise SimulatorError(
                f"simulator '{self.name}' returned sets of {x.features} features per element, "
                f"declared x_shape is {list(self.x_shape)}"
            )
        return x.to(theta.device).detach()

    def _log_prob_and_score(
        self, x: Tensor, latent: Any, theta: Tensor, design: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """log p(x,z|θ) ``[batch]`` and its θ-gradient ``[batch, theta_dim]`` in one pass."""
        batch = theta.shape[0]
        if type(self).joint_score is not Simulator.joint_score:
            # a backend of its own (numpy, Fortran event weights): no autograd needed
            log_p = self._checked_gold(self.joint_log_prob(x, latent, theta, design), theta, ())
            score = self._checked_gold(
                self.joint_score(x, latent, theta, design), theta, (self.theta_dim,)
            )
            return log_p, score
        with torch.enable_grad():
            theta_leaf = theta.detach().clone().requires_grad_(True)
            log_p = self.joint_log_prob(x, latent, theta_leaf, design)
            if log_p.shape != (batch,):
                raise SimulatorError(
                    f"joint_log_prob of '{self.name}' returned shape {list(log_p.shape)}, "
                    f"expected [batch] = [{batch}]"
                )
            if not log_p.requires_grad:
                raise SimulatorError(
                    f"joint_log_prob of '{self.name}' is not differentiable in θ (or does not "
                    f"depend on it); compute it with torch operations on theta, or override "
                    f"joint_score()."
                )
            # Rows are independent events, so the gradient of the sum is the per-row score.
            (score,) = torch.autograd.grad(log_p.sum(), theta_leaf)
        return log_p.detach(), score.detach()

    def _checked_gold(self, value: Any, theta: Tensor, tail: tuple[int, ...]) -> Tensor:
        value = torch.as_tensor(value, device=theta.device).detach().to(theta.dtype)
        if value.shape != (theta.shape[0], *tail):
            raise SimulatorError(
                f"gold of simulator '{self.name}' has shape {list(value.shape)}, expected "
                f"{[theta.shape[0], *tail]}"
            )
        return value

    # -- constructors --
    @staticmethod
    def from_function(fn: Callable, theta_dim: int, **options: Any) -> Simulator:
        """Wrap a black-box function (no gold): ``options`` are those of
        `simfer.wrappers.FunctionSimulator` (``x_shape``, ``vectorized``, ``design_dim``,
        ``default_design``, ``theta_support``, ``numpy``, ``name``)."""
        from .wrappers import FunctionSimulator  # a subclass: imported when asked for

        return FunctionSimulator(fn, theta_dim, **options)

    @staticmethod
    def from_pyro(model: Callable, theta_dim: int, **options: Any) -> Simulator:
        """Wrap a Pyro program ``model(theta[, design])``, gold by trace and replay:
        ``options`` are those of `simfer.wrappers.PyroSimulator` (``observation``,
        ``design_dim``, ``default_design``, ``theta_support``, ``name``)."""
        from .wrappers import PyroSimulator  # a subclass: imported when asked for

        return PyroSimulator(model, theta_dim, **options)

    def describe(self) -> dict[str, Any]:
        """A JSON-able fingerprint: what a store made by this simulator must match."""
        return {
            "name": self.name,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "theta_dim": self.theta_dim,
            "x_shape": None if self.x_shape is None else list(self.x_shape),
            "design_dim": self.design_dim,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, theta_dim={self.theta_dim}, "
            f"x_shape={self.x_shape}, design_dim={self.design_dim}, gold={self.has_gold})"
        )


class TractableSimulator(Simulator):
    """A simulator whose likelihood p(x|θ) is tractable and whose x is the whole path.

    With no latent beyond x, p(x,z|θ) = p(x|θ): the gold is the exact log ratio and the
    exact score.  Subclasses implement `sample` and `log_likelihood` (differentiable in θ);
    the benchmarks with known likelihoods (Gaussian models, SLCP, the Weinberg angle) are
    of this kind.
    """

    def sample(self, theta: Tensor, design: Tensor | None, generator: torch.Generator) -> Tensor:
        raise TypeError(f"{type(self).__name__} must override sample()")

    def sample_with_latent(
        self, theta: Tensor, design: Tensor | None, generator: torch.Generator
    ) -> tuple[Tensor, None]:
        return self.sample(theta, design, generator), None

    def joint_log_prob(
        self, x: Tensor, latent: None, theta: Tensor, design: Tensor | None
    ) -> Tensor:
        return self.log_likelihood(x, theta, design)
