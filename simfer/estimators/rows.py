"""Rows of θ and d as the networks take them, their pairing with rows of x, and the table
a fit trains on.

Every evaluation method takes x, θ and the design by keyword and pairs them row by row;
a single row of any of them broadcasts over the others (one x against many θ, as a
posterior needs, or one design for a whole batch).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..data import SimulationData
from ..errors import ShapeError

__all__ = ["as_batch", "pair_rows"]


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
