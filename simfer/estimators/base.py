"""What every estimator shares: training settings, the fitted network, save and load.

Every estimator is a thin object pairing a network with a loss of `simfer.losses`,
trained by the one loop of `simfer.training`.  It tells the posterior stage what it
contributes through one method, ``event_term(prior, x_obs, *, design=None)``, which
returns a `simfer.inference.EventTerm` (the per-event log-likelihood term ℓ(x | θ, d),
see `simfer.inference.term`); `Estimator.posterior` builds the `Posterior` from it, so
the inference stage never needs to know the estimator's type.

Every ``fit`` takes a `SimulationData`, or a store: its path or a
`simfer.StoredSimulations`.  A store whose in-memory fit stays within the training setting
``max_memory`` is read whole and trained on exactly as its table would be; a larger one is
streamed from disk a buffer at a time (`simfer.streaming`), each estimator building its
training columns buffer by buffer.

When the training data carry a design column, every estimator conditions on it: its
network's context is (x, d) or (θ, d), the design standardised like the rest, and every
evaluation method takes ``design=`` (one design broadcast, or one per row).

A saved model is one file written by ``torch.save`` holding only tensors and
JSON text: the network's ``state_dict`` (weights and the standardisation
buffers), the constructor arguments, the data dimensions (`Dims`), the training history,
the prior's description and the simfer version.  `load` reads it with
``torch.load(weights_only=True)``, which refuses any pickled object, so loading
a model file never executes code from it; tensors are mapped to the requested
device, so a model trained on a GPU loads on a CPU.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from .. import __version__
from ..errors import ModelFileError, ShapeError, SimferError
from ..inference import EventTerm, Posterior
from ..training import TrainingConfig, TrainingHistory
from .dims import Dims

__all__ = ["Estimator", "load"]

FORMAT = "simfer-estimator"
FORMAT_VERSION = 2  # 2: dims as a typed record with design_dim (1 still loads)
_REGISTRY: dict[str, type[Estimator]] = {}


class Estimator:
    """Base class: subclasses define ``_build(dims)`` → network and ``_fit(data)``."""

    training_keys: ClassVar[tuple[str, ...]] = tuple(TrainingConfig.__dataclass_fields__)
    #: hyperparameters added after model files were first written, with the value every
    #: older file was trained with: `load` fills them in when a file lacks them, so a
    #: later change of the constructor's default never changes an old model's network
    file_defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls
        cls.__signature__ = _signature_with_training(cls)

    def __init__(self, **training: Any):
        unknown = set(training) - set(self.training_keys)
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unknown arguments {sorted(unknown)}; training "
                f"settings are {list(self.training_keys)}"
            )
        self.training = TrainingConfig(**training)
        self.network: nn.Module | None = None
        self.dims: Dims | None = None
        self.history: TrainingHistory | None = None
        self.prior_description: dict | None = None

    # -- what subclasses provide ----------------------------------------------------------
    def hyperparameters(self) -> dict[str, Any]:
        """The constructor arguments besides the training settings (JSON-able)."""
        return {}

    def _build(self, dims: Dims) -> nn.Module:
        raise TypeError(f"{type(self).__name__} does not define its network")

    def event_term(self, prior: Distribution, x_obs: Any, *, design: Any = None) -> EventTerm:
        """The per-event term ℓ(x | θ, d) this estimator gives a posterior (see
        `simfer.inference.term`)."""
        raise TypeError(f"{type(self).__name__} does not define its posterior term")

    # -- shared ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return torch.device(self.training.device)

    def _require_fitted(self) -> nn.Module:
        if self.network is None:
            raise SimferError(f"this {type(self).__name__} is not trained yet: call fit(data)")
        return self.network

    def to(self, device: str | torch.device) -> Estimator:
        self.training.device = str(device)
        if self.network is not None:
            self.network.to(device)
        return self

    @property
    def design_dim(self) -> int:
        """The number of design variables the trained network conditions on (0: none)."""
        return 0 if self.dims is None else self.dims.design_dim

    def _posterior_prior(self, prior: Distribution | None) -> Distribution:
        if prior is None:
            raise SimferError(f"{type(self).__name__}.posterior needs the prior")
        return prior

    def posterior(
        self, prior: Distribution | None, x_obs: Any, *, design: Any = None, **options: Any
    ) -> Posterior:
        """The `simfer.inference.Posterior` p(θ | x_obs, design) of this estimator.

        Args:
            prior: the prior over θ (an NPE may pass None to use the prior it was fitted
                with).
            x_obs: one observation or ``[n, *x_shape]`` iid ones.
            design: for a model trained with designs, the design of the observations: one
                ``[design_dim]`` for all, or one per observation ``[n, design_dim]``, so
                that observations made at different designs combine in one posterior.
            **options: of `Posterior` (``max_rows``, …).
        """
        network = self._require_fitted()
        prior = self._posterior_prior(prior)
        if self.design_dim == 0:  # a fixed-design model: check the design, then drop it
            self._design_rows(design, next(network.parameters()))
            design = None
        term = self.event_term(prior, x_obs, design=design)
        return Posterior.from_term(term, prior, design=design, device=self.device, **options)

    def _design_rows(self, design: Any, parameter: Tensor) -> Tensor | None:
        """``design`` as ``[rows, design_dim]`` (one design is one row) on ``parameter``'s
        device and dtype, or None for a model without a design; a clear error when the call
        and the model disagree about having one."""
        name, k = type(self).__name__, self.design_dim
        if k == 0:
            fixed = None if self.dims is None else self.dims.fixed_design
            if design is not None and fixed is not None:
                value = torch.as_tensor(design, dtype=torch.float64).reshape(-1, len(fixed))
                if bool(torch.isclose(value, torch.tensor(fixed, dtype=torch.float64)).all()):
                    return None  # the one design the model knows: nothing to condition on
                raise ShapeError(
                    f"this {name} was trained on simulations all made at the design "
                    f"{list(fixed)}: it knows p(x|θ) there only, not at {value[0].tolist()}. "
                    f"Simulate with designs drawn over the range (simulate(..., design=...)) "
                    f"to condition on them."
                )
            if design is not None:
                raise ShapeError(
                    f"this {name} was trained on simulations without a design column, but "
                    f"design= was given: call it without a design (or retrain on simulations "
                    f"with a design, simfer.simulate(..., design=...))"
                )
            return None
        if design is None:
            raise ShapeError(
                f"this {name} was trained on simulations with a design [{k}]: pass design= "
                f"(one [{k}] for every row, or one per row [batch, {k}])"
            )
        value = torch.as_tensor(design, dtype=parameter.dtype, device=parameter.device)
        if value.ndim == 0 or (value.ndim == 1 and value.shape[0] == k):
            value = value.reshape(1, k)
        elif value.ndim == 1 and k == 1:
            value = value[:, None]
        if value.ndim != 2 or value.shape[1] != k:
            raise ShapeError(
                f"design must have shape [{k}] or [batch, {k}], got {list(value.shape)}"
            )
        if not bool(torch.isfinite(value).all()):
            raise ValueError("design holds NaN or inf values")
        return value

    def save(self, path: str | os.PathLike) -> None:
        """Write the trained model to ``path`` (tensors and JSON only)."""
        network = self._require_fitted()
        training = {k: v for k, v in vars(self.training).items() if k != "checkpoint"}
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "simfer_version": __version__,
            "type": type(self).__name__,
            "hyperparameters": json.dumps(self.hyperparameters()),
            "training": json.dumps(training),
            "dims": json.dumps(None if self.dims is None else self.dims.as_json()),
            "history": json.dumps(None if self.history is None else self.history.as_dict()),
            "prior": json.dumps(self.prior_description),
            "state": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Estimator:
        """Load a saved model and check that it is a ``cls``."""
        estimator = load(path, device)
        if not isinstance(estimator, cls):
            raise ModelFileError(
                f"'{path}' holds a {type(estimator).__name__}, not a {cls.__name__}; "
                f"use simfer.load(path) to load any estimator"
            )
        return estimator

    def __repr__(self) -> str:
        state = "trained" if self.network is not None else "untrained"
        return f"{type(self).__name__}({self.hyperparameters()}, {state})"


def _signature_with_training(cls: type) -> inspect.Signature:
    """The constructor's signature with ``**training`` spelled out as the keyword-only
    settings of `TrainingConfig` and their defaults, so ``help(cls)`` and editors show them
    (they are written once, in `TrainingConfig`)."""
    own = list(inspect.signature(cls.__init__).parameters.values())[1:]  # without self
    kept = [p for p in own if p.kind is not inspect.Parameter.VAR_KEYWORD]
    if len(kept) == len(own):  # no **training: nothing to spell out
        return inspect.Signature(own)
    names = {p.name for p in kept}
    training = [
        inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type
        )
        for f in dataclasses.fields(TrainingConfig)
        if f.name not in names
    ]
    return inspect.Signature(kept + training)


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> Estimator:
    """Load a model written by ``Estimator.save`` onto ``device``; never runs code from it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no model file at '{path}'")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise ModelFileError(
            f"'{path}' is not a readable simfer model file ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}). It may be truncated, "
            f"corrupt, or hold pickled objects, which simfer never loads."
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"'{path}' is not a simfer model file")
    version = int(payload.get("format_version", -1))
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"'{path}' was saved by a newer simfer ({payload.get('simfer_version')}, model "
            f"format {version}; this simfer {__version__} reads up to {FORMAT_VERSION}): "
            f"upgrade simfer to load it."
        )
    kind = payload.get("type")
    if kind not in _REGISTRY:
        raise ModelFileError(f"'{path}' holds an estimator of unknown type {kind!r}")
    cls = _REGISTRY[kind]
    training = json.loads(payload["training"])
    training["device"] = str(device)
    hyperparameters = {**cls.file_defaults, **json.loads(payload["hyperparameters"])}
    estimator = cls(**hyperparameters, **training)
    estimator.dims = Dims.from_json(json.loads(payload["dims"]), path=path, format_version=version)
    history = json.loads(payload["history"])
    estimator.history = None if history is None else TrainingHistory(**history)
    estimator.prior_description = json.loads(payload["prior"])
    estimator.network = estimator._build(estimator.dims).to(device)
    try:
        estimator.network.load_state_dict(payload["state"])
    except RuntimeError as error:
        raise ModelFileError(
            f"'{path}' has weights that do not fit its network: {error}"
        ) from error
    estimator.network.eval()
    return estimator
