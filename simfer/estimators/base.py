"""What every estimator shares: training settings, the fitted network, save and load.

A saved model is one file written by ``torch.save`` holding only tensors and
JSON text: the network's ``state_dict`` (weights and the standardisation
buffers), the constructor arguments, the data dimensions, the training history,
the prior's description and the simfer version.  `load` reads it with
``torch.load(weights_only=True)``, which refuses any pickled object, so loading
a model file never executes code from it; tensors are mapped to the requested
device, so a model trained on a GPU loads on a CPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.distributions import Distribution

from .. import __version__
from ..errors import ModelFileError, SimferError
from ..training import TrainingConfig, TrainingHistory

__all__ = ["Estimator", "load"]

FORMAT = "simfer-estimator"
FORMAT_VERSION = 1
_REGISTRY: dict[str, type[Estimator]] = {}


class Estimator:
    """Base class: subclasses define ``_build(dims)`` → network and ``_fit(data)``."""

    training_keys: ClassVar[tuple[str, ...]] = tuple(TrainingConfig.__dataclass_fields__)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    def __init__(self, **training: Any):
        unknown = set(training) - set(self.training_keys)
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unknown arguments {sorted(unknown)}; training "
                f"settings are {list(self.training_keys)}"
            )
        self.training = TrainingConfig(**training)
        self.network: nn.Module | None = None
        self.dims: dict[str, Any] = {}
        self.history: TrainingHistory | None = None
        self.prior_description: dict | None = None

    # -- what subclasses provide ----------------------------------------------------------
    def hyperparameters(self) -> dict[str, Any]:
        """The constructor arguments besides the training settings (JSON-able)."""
        return {}

    def _build(self, dims: dict[str, Any]) -> nn.Module:
        raise TypeError(f"{type(self).__name__} does not define its network")

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

    def posterior(self, prior: Distribution | None = None, x_obs: Any = None, **options: Any):
        """The `simfer.inference.Posterior` p(θ | x_obs) of this estimator: x_obs is one
        observation or ``[n, *x_shape]`` iid ones; see `simfer.inference.posterior_for`
        for what each estimator type contributes and its default sampler."""
        from ..inference import posterior_for

        if x_obs is None:
            raise TypeError("posterior(prior, x_obs) needs the observation(s) x_obs")
        return posterior_for(self, prior, x_obs, **options)

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
            "dims": json.dumps(self.dims),
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
    estimator = cls(**json.loads(payload["hyperparameters"]), **training)
    estimator.dims = json.loads(payload["dims"])
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
