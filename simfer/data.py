"""`SimulationData`: the table of simulations every estimator trains on.

One row per simulator call.  The columns (``n`` rows, all torch tensors):

========================  =====================  ==================================================
column                    shape                  meaning
========================  =====================  ==================================================
``theta``                 ``[n, theta_dim]``     θ: the parameter point the row belongs to
``x``                     ``[n, *x_shape]``      the observation (NaN/inf where ``valid`` is False)
``design``                ``[n, design_dim]``    the experimental design, or None
``theta_ref``             ``[n, theta_dim]``     the reference point θ_ref, or None
``from_reference``        ``[n]`` bool           x was drawn at θ_ref instead of θ (the reference
                                                 class of CARL/ROLR/ALICE), or None
``joint_log_ratio``       ``[n]``                log p(x,z|θ) − log p(x,z|θ_ref)
``joint_score``           ``[n, theta_dim]``     t(x,z|θ) = ∇_θ log p(x,z|θ)
``joint_score_ref``       ``[n, theta_dim]``     t(x,z|θ_ref), the score at the reference (SALLY)
``valid``                 ``[n]`` bool           False where the simulator failed (NaN/inf/raised)
========================  =====================  ==================================================

Gold is always evaluated at the row's ``(theta, theta_ref)`` whichever of the two
x was drawn at, so a row drawn at θ_ref carries exactly the targets that the
reference class of the gold-mining losses needs.  ``theta_simulated`` gives the
point each x was really drawn at.

Invalid rows are kept (with their θ) rather than dropped: estimators that must
correct for a θ-dependent failure rate need them; `valid_only` drops them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

__all__ = ["SimulationData", "COLUMNS"]

COLUMNS = (
    "theta",
    "x",
    "design",
    "theta_ref",
    "from_reference",
    "joint_log_ratio",
    "joint_score",
    "joint_score_ref",
    "valid",
)


@dataclass(frozen=True)
class SimulationData:
    """A table of simulations; see the module docstring for the columns.

    It is a map-style ``torch.utils.data.Dataset``: ``data[i]`` (an int) is a
    dict of the row's tensors, while ``data[index]`` with a slice, a boolean
    mask or an index tensor is a new `SimulationData` with those rows.
    """

    theta: Tensor
    x: Tensor
    design: Tensor | None = None
    theta_ref: Tensor | None = None
    from_reference: Tensor | None = None
    joint_log_ratio: Tensor | None = None
    joint_score: Tensor | None = None
    joint_score_ref: Tensor | None = None
    valid: Tensor | None = None

    def __post_init__(self) -> None:
        n = self.theta.shape[0]
        for name, value in self.columns().items():
            if value.shape[0] != n:
                raise ValueError(
                    f"SimulationData column '{name}' has {value.shape[0]} rows, theta has {n}."
                )
        if self.valid is None:
            flat = self.x.reshape(n, -1)
            object.__setattr__(self, "valid", torch.isfinite(flat).all(dim=1))

    # -- table access -----------------------------------------------------------
    def columns(self) -> dict[str, Tensor]:
        """The columns that are present, by name."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }

    @property
    def has_gold(self) -> bool:
        return self.joint_score is not None

    @property
    def theta_dim(self) -> int:
        return self.theta.shape[1]

    @property
    def x_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def n_invalid(self) -> int:
        return int((~self.valid).sum())

    @property
    def theta_simulated(self) -> Tensor:
        """``[n, theta_dim]``: the point each x was drawn at (θ_ref for reference rows)."""
        if self.from_reference is None:
            return self.theta
        return torch.where(self.from_reference[:, None], self.theta_ref, self.theta)

    def __len__(self) -> int:
        return self.theta.shape[0]

    def __getitem__(self, index):
        if isinstance(index, int):
            return {name: value[index] for name, value in self.columns().items()}
        return self.subset(index)

    def subset(self, index: slice | Tensor) -> SimulationData:
        """The rows selected by a slice, a boolean mask ``[n]`` or an index tensor."""
        return replace(self, **{k: v[index] for k, v in self.columns().items()})

    def valid_only(self) -> SimulationData:
        """The rows whose simulation succeeded."""
        return self.subset(self.valid)

    def to(self, device: str | torch.device) -> SimulationData:
        return replace(self, **{k: v.to(device) for k, v in self.columns().items()})

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for i in range(len(self)):
            yield self[i]

    @staticmethod
    def concatenate(parts: list[SimulationData]) -> SimulationData:
        """Stack tables with the same columns row-wise."""
        if not parts:
            raise ValueError("nothing to concatenate")
        names = parts[0].columns().keys()
        for part in parts[1:]:
            if part.columns().keys() != names:
                raise ValueError("cannot concatenate SimulationData with different columns")
        return SimulationData(**{k: torch.cat([p.columns()[k] for p in parts]) for k in names})

    def __repr__(self) -> str:
        cols = ", ".join(f"{k}{list(v.shape[1:])}" for k, v in self.columns().items())
        return f"SimulationData(n={len(self)}, invalid={self.n_invalid}, columns: {cols})"
