"""Sources of an EIG estimate: what `simfer.design.eig` accepts, as the pieces it needs.

A source is classified once (`source_kind`) and adapted to the estimators of its kind:

==============  ===========================================  ===============================
kind            source                                       estimators
==============  ===========================================  ===============================
``likelihood``  a `simfer.Simulator` with ``has_likelihood``  NMC, PCE (`LikelihoodModel`)
==============  ===========================================  ===============================

`likelihood_model` turns a simulator into a `simfer.design.nmc.LikelihoodModel`: its
exact ``log_likelihood`` and its sampler (``simulate(theta, design, seed=...)``, which
replays the same random stream for the same seed at every design: the common random
numbers).  A simulator may also define ``pairwise_log_likelihood(x [c, N, *x_shape],
theta [c, M, p], design [c, D]) -> [c, N, M]`` (log p(x_jn|θ_jm,d_j) for every pair),
which is then used instead of N·M row-wise evaluations (`simulators.LinearGaussianDesign`
does, with one batched matrix product).  A trained likelihood surrogate will be one more
row: its ``log_prob(x=, theta=, design=)`` as the ``log_likelihood`` of the same model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import LikelihoodNotAvailableError, ShapeError, SimulatorError
from ..simulator import Simulator
from .nmc import LikelihoodModel

__all__ = ["likelihood_model", "source_kind"]


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
                f"estimator as the source instead."
            )
        return "likelihood"
    raise TypeError(
        f"cannot compute an EIG from a {type(source).__name__}: pass a simfer.Simulator with "
        f"a tractable log_likelihood (EIG from trained estimators is being added)."
    )


def likelihood_model(simulator: Simulator) -> LikelihoodModel:
    """The exact likelihood and sampler of ``simulator`` as a `LikelihoodModel`."""

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

    def log_likelihood(x: Tensor, theta: Tensor, design: Tensor) -> Tensor:
        return simulator.log_likelihood(x, theta, design)

    return LikelihoodModel(
        log_likelihood=log_likelihood,
        sample=sample,
        pairwise=getattr(simulator, "pairwise_log_likelihood", None),
        name=simulator.name,
    )
