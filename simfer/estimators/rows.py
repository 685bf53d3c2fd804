"""Rows of θ and d as the networks take them, their pairing with rows of x, and the table
a fit trains on.

Every evaluation method takes x, θ and the design by keyword and pairs them row by row;
a single row of any of them broadcasts over the others (one x against many θ, as a
posterior needs, or one design for a whole batch).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from ..data import RaggedSets, SimulationData
from ..errors import ShapeError
from ..streaming import Moments, StoredSimulations, open_training_data
from ..training import TrainingConfig

__all__ = [
    "TrainingData",
    "as_batch",
    "pair_rows",
    "streamed_x_dims",
    "training_source",
    "training_table",
    "x_column",
]

#: What every ``fit`` takes: a table in memory, a store (streamed when it does not fit), or
#: the path of a store or of any file `simfer.load_simulations` reads.
TrainingData = SimulationData | StoredSimulations | str | os.PathLike


def as_batch(value: Any, event_shape: tuple[int, ...], name: str, parameter: Tensor) -> Tensor:
    """``value`` of shape ``event_shape`` (one) or ``[batch, *event_shape]`` as a float tensor
    ``[batch, *event_shape]`` on ``parameter``'s device, in its dtype."""
    if value is None:
        raise TypeError(f"{name}= is required")
    if torch.as_tensor(value).is_complex():
        raise TypeError(f"{name} is complex; simfer's networks take real numbers")
    value = torch.as_tensor(value, dtype=parameter.dtype, device=parameter.device)
    if tuple(value.shape) == event_shape:
        value = value[None]
    if value.ndim != len(event_shape) + 1 or tuple(value.shape[1:]) != event_shape:
        wanted = ", ".join(map(str, event_shape))
        raise ShapeError(
            f"{name} must have shape [{wanted}] or [batch, {wanted}], got {list(value.shape)}"
        )
    if value.shape[0] == 0:
        raise ShapeError(f"{name} has no rows: pass at least one")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} holds NaN or inf values")
    return value


def pair_rows(named: dict[str, Tensor | None]) -> list[Tensor | None]:
    """Broadcast batches over their first dimension (a batch of one pairs with many);
    None entries (no design) pass through.  Returns the tensors in the order given."""
    present = {k: v for k, v in named.items() if v is not None}
    n = max(v.shape[0] for v in present.values())
    if {v.shape[0] for v in present.values()} - {1, n}:
        sizes = ", ".join(f"{k} {v.shape[0]}" for k, v in present.items())
        raise ShapeError(
            f"cannot pair rows of {sizes}: give equally many rows, or one row of any of them"
        )
    return [None if v is None else v.expand(n, *v.shape[1:]) for v in named.values()]


def training_table(data: Any, needs: str = "fit() takes") -> SimulationData:
    """``data`` checked to be a `SimulationData` and its floating columns in torch's default
    dtype (a table the user built from float64 arrays trains like a simulated one)."""
    if not isinstance(data, SimulationData):
        raise TypeError(
            f"{needs} a SimulationData (from simfer.simulate, simfer.load_simulations or "
            f"SimulationData(theta=..., x=...)), got {type(data).__name__}"
        )
    return data.to(dtype=torch.get_default_dtype())


def training_source(
    data: TrainingData, config: TrainingConfig
) -> SimulationData | StoredSimulations:
    """What a fit trains on: a `SimulationData` as given; a path opened (a simfer store as a
    `StoredSimulations`, other files read whole by `simfer.load_simulations`); a store read
    whole when an in-memory fit stays within ``config.max_memory``, so that it trains
    exactly as ``fit(simfer.load_simulations(path))``, and returned as it is, to be
    streamed, when it does not."""
    opened = isinstance(data, str | os.PathLike)
    if opened:
        data = open_training_data(data)
    if isinstance(data, StoredSimulations) and data.fits(config):
        table = data.load()
        if opened:
            data.close()
        return table
    return data


def x_column(data: SimulationData, embedded: bool) -> Tensor | RaggedSets:
    """The x a network trains on: ``[n, x_dim]`` flattened, whole for an embedding, sets
    ragged (the rows of `EmbeddingMixin._training_x`, for a buffer that may be empty)."""
    if data.is_set or embedded:
        return data.x
    return data.x.flatten(1)


def streamed_x_dims(estimator: Any, first: SimulationData, design: Moments) -> dict[str, Any]:
    """The `Dims` fields of x and the design for a streamed fit: those of the first rows it
    trains on, with the design judged over the whole store (``design``: its moments over
    the rows trained on), as an in-memory fit judges it over the whole table."""
    _, dims = estimator._training_x(first)
    varying = design.count > 0 and not design.constant
    dims["design_dim"] = int(design.mean.numel()) if varying else 0
    dims["fixed_design"] = (
        tuple(float(v) for v in first.design[0]) if design.count and not varying else None
    )
    return dims
