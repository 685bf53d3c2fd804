"""`EIGResult`: an expected-information-gain curve over candidate designs, with its errors.

Every estimator of `simfer.design` returns one: the designs ``[k, design_dim]``, the
estimate EIG(d_j) ``[k]`` in nats, its Monte-Carlo standard error ``[k]`` (the standard
deviation of the per-outer-sample terms over √N), and, where the method gives them, a
lower and an upper estimate that bracket the EIG in expectation (for nested Monte Carlo:
the PCE lower bound and the upward-biased NMC value itself).  ``best()`` is the design
with the largest estimate; ``plot()`` draws the curve (`simfer.plotting.eig_curve`);
``as_dict()`` / ``from_dict()`` write and read a JSON-able summary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["EIGResult"]


@dataclass
class EIGResult:
    """EIG estimates at ``k`` candidate designs.

    Attributes:
        designs: ``[k, design_dim]``.
        eig: ``[k]``, the estimate of the chosen ``method``, in nats.
        stderr: ``[k]``, its Monte-Carlo standard error.
        lower: ``[k]`` or None, an estimate that is ≤ EIG in expectation (PCE).
        upper: ``[k]`` or None, an estimate that is ≥ EIG in expectation (NMC).
        method: the estimator, e.g. ``"nmc"`` or ``"pce"``.
        n_outer: N, outer samples (θ_n, x_n) per design.
        n_inner: M, inner (contrastive) samples θ_m per design.
        notes: what a reader should know: saturation, dropped terms, wide brackets.
    """

    designs: Tensor
    eig: Tensor
    stderr: Tensor
    lower: Tensor | None = None
    upper: Tensor | None = None
    method: str = "nmc"
    n_outer: int = 0
    n_inner: int = 0
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.designs = torch.as_tensor(self.designs)
        if self.designs.ndim == 1:
            self.designs = self.designs[:, None]
        k = self.designs.shape[0]
        for name in ("eig", "stderr", "lower", "upper"):
            value = getattr(self, name)
            if value is None:
                continue
            value = torch.as_tensor(value)
            if value.shape != (k,):
                raise ValueError(f"{name} must have shape [k] = [{k}], got {list(value.shape)}")
            setattr(self, name, value)

    @property
    def best_index(self) -> int:
        """Index of the design with the largest ``eig`` (NaN values never win)."""
        values = torch.nan_to_num(self.eig.double(), nan=-math.inf)
        return int(torch.argmax(values))

    def best(self) -> Tensor:
        """The design ``[design_dim]`` with the largest ``eig``."""
        return self.designs[self.best_index]

    def plot(self, ax: Axes | None = None, **kwargs: Any) -> Figure:
        """The EIG curve (heat map for 2-d designs); see `simfer.plotting.eig_curve`."""
        from ..plotting import eig_curve

        return eig_curve(self, ax=ax, **kwargs)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able summary (non-finite numbers become None)."""

        def values(tensor: Tensor | None) -> list | None:
            if tensor is None:
                return None
            return [_number(v) for v in tensor.detach().cpu().double().flatten().tolist()]

        designs = self.designs.detach().cpu().double()
        return {
            "method": self.method,
            "n_outer": self.n_outer,
            "n_inner": self.n_inner,
            "designs": [[_number(v) for v in row] for row in designs.tolist()],
            "eig": values(self.eig),
            "stderr": values(self.stderr),
            "lower": values(self.lower),
            "upper": values(self.upper),
            "best_index": self.best_index,
            "best": [_number(v) for v in self.best().detach().cpu().double().tolist()],
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, summary: dict[str, Any]) -> EIGResult:
        """The result written by `as_dict` (None values read back as NaN)."""

        def tensor(values: list | None) -> Tensor | None:
            if values is None:
                return None
            return torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float64)

        designs = [[math.nan if v is None else v for v in row] for row in summary["designs"]]
        return cls(
            designs=torch.tensor(designs, dtype=torch.float64),
            eig=tensor(summary["eig"]),
            stderr=tensor(summary["stderr"]),
            lower=tensor(summary.get("lower")),
            upper=tensor(summary.get("upper")),
            method=summary["method"],
            n_outer=int(summary["n_outer"]),
            n_inner=int(summary["n_inner"]),
            notes=list(summary.get("notes", [])),
        )

    def __repr__(self) -> str:
        j = self.best_index
        best = ", ".join(f"{v:.4g}" for v in self.best().tolist())
        return (
            f"EIGResult(method={self.method!r}, k={self.designs.shape[0]}, "
            f"N={self.n_outer}, M={self.n_inner}, best=[{best}], "
            f"eig={float(self.eig[j]):.4g} ± {float(self.stderr[j]):.2g}, "
            f"notes={len(self.notes)})"
        )


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None
