"""Simulators made from user code: a black-box function, or a Pyro program with gold.

`FunctionSimulator` calls ``fn(theta[, design])`` (torch or numpy, vectorised or
one row at a time).  Reproducibility: if ``fn`` takes a keyword ``generator``
(a ``torch.Generator``), ``rng`` (a ``numpy.random.Generator``) or ``seed`` (an
int), simfer passes it; otherwise the global torch and numpy generators are
seeded for the call and restored afterwards.

`PyroSimulator` is gold as two effect handlers around the user's program:

* ``trace``:  run ``model(θ)`` once and record every sample site's value.  The
  observation is the last sample site (or the one named), which may be a
  ``pyro.deterministic`` site.
* ``replay``: run ``model(θ')`` again with every non-observed sample site forced to
  its recorded value, and sum the sites' log-densities per event:
  log p(x,z|θ') = Σ_sites log p_site(value | parents; θ').

The joint log ratio is the difference of two replays, the joint score the
autograd gradient of a replay at θ.  Recorded values are detached, so a latent
drawn with ``rsample`` (whose value depends on θ through the reparameterisation)
does not leak θ's gradient into the score: the score is ∇_θ log p(x,z|θ) with
(x, z) held fixed, as its definition requires.  Deterministic sites carry no
density (a function of the latents adds nothing to log p(x,z|θ) once z is fixed),
so they do not change the joint ratio; they are recomputed, not replayed.  The one
exception is refused: an observation that is a deterministic function of θ itself
(x = f(z, θ)) moves with θ while the recorded choices do not, so the density of the
choices is no joint density of x; simfer raises rather than return wrong gold.
The model's return value is ignored: the observation is a site.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.distributions import constraints

from .data import RaggedSets
from .errors import SimulatorError
from .seeding import derived_seed, seeded_global_rngs
from .simulator import Simulator

__all__ = ["FunctionSimulator", "PyroSimulator"]

_SEED_KEYWORDS = ("generator", "rng", "seed")


def _accepted_parameters(fn: Callable) -> set[str]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return set()
    return set(params)


class FunctionSimulator(Simulator):
    """A black-box simulator ``fn(theta[, design]) -> x`` (no gold).

    The arguments not listed here are those of `Simulator`.

    Args:
        fn: vectorised: ``[batch, theta_dim] -> [batch, *x_shape]``; otherwise
            ``[theta_dim] -> x_shape`` called once per row.  Set-valued x (declare
            ``x_shape=(None, features)``): vectorised, a list of ``batch`` sets
            ``[n_i, features]`` (or a `simfer.data.RaggedSets`); otherwise one set
            ``[n_i, features]`` per call.
        numpy: hand ``fn`` numpy arrays instead of torch tensors.
    """

    def __init__(
        self,
        fn: Callable,
        theta_dim: int,
        x_shape: Sequence[int] | None = None,
        *,
        vectorized: bool = True,
        design_dim: int = 0,
        default_design=None,
        theta_support: constraints.Constraint | None = None,
        numpy: bool = False,
        name: str | None = None,
    ):
        super().__init__(
            theta_dim,
            x_shape,
            design_dim=design_dim,
            default_design=default_design,
            theta_support=theta_support,
            name=name or getattr(fn, "__name__", "function"),
        )
        self.fn = fn
        self.vectorized = vectorized
        self.numpy = numpy
        self._seed_keyword = next(
            (k for k in _SEED_KEYWORDS if k in _accepted_parameters(fn)), None
        )

    def _convert_in(self, value: Tensor | None):
        if value is None or not self.numpy:
            return value
        return value.detach().cpu().numpy()

    def _call_once(self, theta, design, generator: torch.Generator):
        args = (theta,) if design is None else (theta, design)
        seed = derived_seed(generator)
        if self._seed_keyword == "generator":
            return self.fn(*args, generator=generator)
        if self._seed_keyword == "rng":
            return self.fn(*args, rng=np.random.default_rng(seed))
        if self._seed_keyword == "seed":
            return self.fn(*args, seed=seed)
        with seeded_global_rngs(seed, generator.device):
            return self.fn(*args)

    def sample(self, theta: Tensor, design: Tensor | None, generator: torch.Generator):
        if self.vectorized:
            out = self._call_once(self._convert_in(theta), self._convert_in(design), generator)
            if isinstance(out, RaggedSets) or (isinstance(out, list | tuple) and self.set_valued):
                return out  # one set per row: Simulator checks and stacks them ragged
            return torch.as_tensor(np.asarray(out) if not isinstance(out, Tensor) else out)
        rows = []
        for i in range(theta.shape[0]):
            row_design = None if design is None else self._convert_in(design[i])
            out = self._call_once(self._convert_in(theta[i]), row_design, generator)
            rows.append(torch.as_tensor(out if isinstance(out, Tensor) else np.asarray(out)))
        if self.set_valued:
            return rows
        try:
            return torch.stack([r.to(torch.get_default_dtype()) for r in rows])
        except RuntimeError as error:
            shapes = sorted({tuple(r.shape) for r in rows})
            raise SimulatorError(
                f"simulator '{self.name}' returned rows of different shapes {shapes}; for a "
                f"set of variable size per event declare x_shape=(None, features)"
            ) from error

    @property
    def set_valued(self) -> bool:
        """Whether x was declared a variable-size set, ``x_shape=(None, features)``."""
        return self.x_shape is not None and len(self.x_shape) > 0 and self.x_shape[0] is None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **_code_identity(self.fn)}


class PyroSimulator(Simulator):
    """A Pyro program ``model(theta[, design])`` as a simulator with gold.

    Every sample site must carry the batch as its leading dimension (events are
    independent); the observation is the last sample site or ``observation``.
    """

    def __init__(
        self,
        model: Callable,
        theta_dim: int,
        *,
        observation: str | None = None,
        design_dim: int = 0,
        default_design=None,
        theta_support: constraints.Constraint | None = None,
        name: str | None = None,
    ):
        super().__init__(
            theta_dim,
            None,
            design_dim=design_dim,
            default_design=default_design,
            theta_support=theta_support,
            name=name or getattr(model, "__name__", "pyro_model"),
        )
        self.model = model
        self.observation = observation

    def _args(self, theta: Tensor, design: Tensor | None) -> tuple:
        return (theta,) if design is None else (theta, design)

    def _observation_site(self, trace) -> str:
        sites = [name for name, site in trace.nodes.items() if site["type"] == "sample"]
        if not sites:
            raise SimulatorError(f"Pyro program '{self.name}' has no sample site")
        if self.observation is None:
            return sites[-1]
        if self.observation not in trace.nodes:
            raise SimulatorError(
                f"Pyro program '{self.name}' has no site named '{self.observation}'; "
                f"its sample sites are {sites}"
            )
        return self.observation

    def sample_with_latent(self, theta: Tensor, design: Tensor | None, generator: torch.Generator):
        import pyro.poutine as poutine

        with seeded_global_rngs(derived_seed(generator), theta.device), torch.no_grad():
            trace = poutine.trace(self.model).get_trace(*self._args(theta, design))
        x = trace.nodes[self._observation_site(trace)]["value"]
        return x, trace

    def joint_log_prob(self, x: Tensor, latent, theta: Tensor, design: Tensor | None) -> Tensor:
        import pyro.poutine as poutine

        replayed = poutine.trace(poutine.replay(self.model, trace=latent)).get_trace(
            *self._args(theta, design)
        )
        batch = theta.shape[0]
        observation = replayed.nodes[self._observation_site(replayed)]
        if observation["infer"].get("_deterministic", False) and observation["value"].requires_grad:
            raise SimulatorError(
                f"the observation '{observation['name']}' of Pyro program '{self.name}' is a "
                f"deterministic function of θ: the joint density of the recorded random choices "
                f"then misses how θ moves x, and its gold would be wrong. Make x a sample site "
                f"(e.g. pyro.sample('x', dist.Normal(f(z, θ), σ))) or keep θ out of the map."
            )
        total = torch.zeros(batch, dtype=theta.dtype, device=theta.device)
        for name, site in replayed.nodes.items():
            if site["type"] != "sample" or site["infer"].get("_deterministic", False):
                continue
            log_p = site["fn"].log_prob(site["value"])
            log_p = _scale_and_mask(log_p, site.get("scale", 1.0), site.get("mask"))
            if log_p.ndim == 0 and batch == 1:
                log_p = log_p.reshape(1)
            if log_p.ndim == 0 or log_p.shape[0] != batch:
                raise SimulatorError(
                    f"sample site '{name}' of Pyro program '{self.name}' has log-density shape "
                    f"{list(log_p.shape)} but the batch is {batch}: every sample site must "
                    f"carry the batch as its leading dimension (one independent event per row)."
                )
            total = total + log_p.reshape(batch, -1).sum(1).to(theta.dtype)
        return total

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "model": getattr(self.model, "__qualname__", repr(self.model)),
        }


def _code_identity(fn: Callable) -> dict[str, str]:
    """The function's name and a hash of its source, so a store made by other code (an
    edited simulator) is not silently extended."""
    identity = {"function": getattr(fn, "__qualname__", type(fn).__name__)}
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):  # built-ins, functions typed into a bare interpreter
        return identity
    identity["source_sha256"] = hashlib.sha256(source.encode()).hexdigest()
    return identity


def _scale_and_mask(log_p: Tensor, scale, mask) -> Tensor:
    if mask is not None and mask is not True:
        log_p = torch.where(torch.as_tensor(mask, device=log_p.device), log_p, 0.0)
    if not (isinstance(scale, int | float) and scale == 1.0):
        log_p = log_p * scale
    return log_p
