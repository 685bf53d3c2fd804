"""Rows of θ and d as the networks take them, and their pairing with rows of x.

Every evaluation method takes x, θ and the design by keyword and pairs them row by row;
a single row of any of them broadcasts over the others (one x against many θ, as a
posterior needs, or one design for a whole batch).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

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
