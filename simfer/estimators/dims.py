"""`Dims`: what a fit learnt about the shapes of its data, saved with the model.

One frozen record per trained estimator, written to the model file as JSON and read
back by `simfer.load`, so a loaded estimator rebuilds the same network.  Every field an
estimator does not use keeps its default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..errors import ModelFileError

__all__ = ["Dims"]

# Format 1 (simfer 0.1) named the flow's context width of an NPE "context_features".
_RENAMED_IN_FORMAT_2 = {"context_features": "x_dim"}


@dataclass(frozen=True)
class Dims:
    """Shapes and fitted constants of a trained estimator.

    Attributes:
        theta_dim: number of parameters.
        x_shape: the shape of one observation (``[None, features]`` for set-valued x).
        x_kind: ``"array"`` (fixed shape) or ``"set"`` (variable-size sets).
        x_dim: the width of x as the network sees it: flattened x, or the embedding's
            output ``k``.
        set_features: features per set element (set-valued x only).
        embedding: the class name of the embedding network, or None.
        design_dim: number of design variables the network conditions on (0: none).
        fixed_design: the one design every training simulation was made at, when the
            design column did not vary (the network then takes no design: it knows p(x|θ)
            at that design only).
        n_train: number of rows the fit trained on.
        theta_ref: the reference point of reference-class methods and SALLY.
        double: whether a ratio network takes θ1 as an input (no fixed reference).
        alpha: the score-term weight the fit used (RASCAL, CASCAL, ALICES, SCANDAL).
        validity: whether an NLE learnt p(valid | θ, d) from failed simulations.
        valid_fraction: the fraction of an NLE's training rows that were valid.
        dequantized: the columns of flattened x an NLE read as integers and dequantized
            (x + u, u ~ U(0, 1) in training); None when it modelled x as continuous.
        tail_bound: the spline window an NLE chose with ``tail_bound="auto"`` (None: the
            estimator's own number).
        theta_box: ``(low, high)``, the prior's box that a ``bounded=True`` posterior
            estimator mapped θ from onto R^d (`simfer.prior.LogitBox`); None: θ as it is.
    """

    theta_dim: int
    x_shape: tuple[int | None, ...]
    x_kind: str = "array"
    x_dim: int | None = None
    set_features: int | None = None
    embedding: str | None = None
    design_dim: int = 0
    fixed_design: tuple[float, ...] | None = None
    n_train: int | None = None
    theta_ref: tuple[float, ...] | None = None
    double: bool = False
    alpha: float | None = None
    validity: bool = False
    valid_fraction: float | None = None
    dequantized: tuple[int, ...] | None = None
    tail_bound: float | None = None
    theta_box: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "x_shape", tuple(self.x_shape))
        for name in ("theta_ref", "fixed_design"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in value))
        if self.dequantized is not None:
            object.__setattr__(self, "dequantized", tuple(int(v) for v in self.dequantized))
        if self.theta_box is not None:
            low, high = self.theta_box
            box = (tuple(float(v) for v in low), tuple(float(v) for v in high))
            object.__setattr__(self, "theta_box", box)
        if self.x_kind not in ("array", "set"):
            raise ValueError(f"x_kind must be 'array' or 'set', got {self.x_kind!r}")

    @property
    def is_set(self) -> bool:
        return self.x_kind == "set"

    def replace(self, **changes: Any) -> Dims:
        return replace(self, **changes)

    def as_json(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists)."""
        out = asdict(self)
        out["x_shape"] = list(self.x_shape)
        for name in ("theta_ref", "fixed_design", "dequantized"):
            if getattr(self, name) is not None:
                out[name] = list(getattr(self, name))
        if self.theta_box is not None:
            out["theta_box"] = [list(side) for side in self.theta_box]
        return out

    @classmethod
    def from_json(cls, value: dict[str, Any], *, path: Any, format_version: int) -> Dims:
        """Read the dims of a model file of any format up to the current one."""
        if not isinstance(value, dict):
            raise ModelFileError(f"'{path}' has no readable dims record")
        value = dict(value)
        if format_version < 2:
            for old, new in _RENAMED_IN_FORMAT_2.items():
                if old in value:
                    value[new] = value.pop(old)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown or "theta_dim" not in value or "x_shape" not in value:
            raise ModelFileError(
                f"'{path}' (model format {format_version}) has a dims record this simfer does "
                f"not understand (unknown {unknown}, required theta_dim and x_shape): it was "
                f"written by another version of simfer"
            )
        return cls(**value)
