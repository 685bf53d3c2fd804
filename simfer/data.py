"""`SimulationData`: the table of simulations every estimator trains on.

One row per simulator call.  The columns (``n`` rows, all torch tensors):

========================  =====================  ==================================================
column                    shape                  meaning
========================  =====================  ==================================================
``theta``                 ``[n, theta_dim]``     θ: the parameter point the row belongs to
``x``                     ``[n, *x_shape]``      the observation (NaN/inf where ``valid`` is False),
                                                 or a `RaggedSets` of n variable-size sets
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

Set-valued x.  When every event is a set of elements (the particles of a jet, the hits
of a track), x is a `RaggedSets`: the elements of all n sets stacked into ``values``
``[total_elements, features]`` and ``offsets`` ``[n + 1]``, set i being
``values[offsets[i]:offsets[i+1]]``.  Nothing is padded on the way from the simulator
to the store; batches are padded to their own largest set when an estimator trains
(`RaggedSets.padded`).  A failed simulation's set is one element of NaN, so NaN keeps
meaning "failed" for sets too, and an empty set stays a legitimate observation.

Padded and packed sets.  A set embedding takes a batch as ``x`` ``[B, N, F]`` and a boolean
``mask`` ``[B, N]`` (True = a real element; the mask comes from the sizes, never from the
values, so an all-zero element counts): `RaggedSets.padded`, or `pad_sets` for a list of
per-event tensors; `set_sizes` reads the sizes back from a mask.  Interfaces that take one
tensor per batch (the context of a flow, the batches of the training loop) get the two
*packed* into ``[B, N, F + 1]``, the mask as a last 0/1 channel (`pack_sets`,
`unpack_sets`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from .errors import ShapeError

__all__ = [
    "SimulationData",
    "RaggedSets",
    "COLUMNS",
    "rows_finite",
    "pad_sets",
    "pack_sets",
    "unpack_sets",
    "set_sizes",
]

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


class RaggedSets:
    """n sets of different sizes, stored without padding.

    ``values`` ``[total_elements, features]`` holds the elements of all sets one after
    the other, ``offsets`` ``[n + 1]`` (int64, ``offsets[0] = 0``, non-decreasing) where
    each set starts: set i is ``values[offsets[i]:offsets[i+1]]``, of size
    ``sizes[i] = offsets[i+1] − offsets[i]`` (0 is allowed).

    Indexing mirrors a tensor's first dimension: ``sets[i]`` (an int) is set i,
    ``[n_i, features]``; a slice, a boolean mask ``[n]`` or an index tensor gives a new
    `RaggedSets` of those sets, in that order (vectorised, no Python loop over sets).
    `padded` turns them into the ``(x, mask)`` pair the set embeddings take.
    """

    __slots__ = ("values", "offsets")

    def __init__(self, values: Tensor, offsets: Tensor):
        values, offsets = torch.as_tensor(values), torch.as_tensor(offsets)
        if values.ndim != 2:
            raise ShapeError(
                f"RaggedSets values must be [total_elements, features], got {list(values.shape)}"
            )
        if offsets.ndim != 1 or len(offsets) < 1 or offsets.is_floating_point():
            raise ShapeError(
                f"RaggedSets offsets must be an integer tensor [n + 1], got {offsets.dtype} "
                f"{list(offsets.shape)}"
            )
        offsets = offsets.to(device=values.device, dtype=torch.int64)
        if int(offsets[0]) != 0 or int(offsets[-1]) != len(values):
            raise ShapeError(
                f"RaggedSets offsets must run from 0 to the number of values ({len(values)}), "
                f"got {int(offsets[0])} … {int(offsets[-1])}"
            )
        if bool((offsets[1:] < offsets[:-1]).any()):
            raise ShapeError("RaggedSets offsets must be non-decreasing (sizes ≥ 0)")
        self.values = values
        self.offsets = offsets

    # -- construction --
    @classmethod
    def from_sizes(cls, values: Tensor, sizes: Tensor | Sequence[int]) -> RaggedSets:
        """From the stacked elements and each set's size ``[n]``."""
        sizes = torch.as_tensor(sizes, dtype=torch.int64, device=values.device)
        offsets = torch.zeros(len(sizes) + 1, dtype=torch.int64, device=values.device)
        torch.cumsum(sizes, 0, out=offsets[1:])
        return cls(values, offsets)

    @classmethod
    def from_list(cls, sets: Sequence[Tensor]) -> RaggedSets:
        """From per-event tensors ``[n_i, features]`` (all with the same features, dtype and
        device)."""
        if len(sets) == 0:
            raise ShapeError("RaggedSets.from_list needs at least one set")
        sets = [torch.as_tensor(s) for s in sets]
        first = sets[0]
        for i, s in enumerate(sets):
            if s.ndim != 2:
                raise ShapeError(
                    f"set {i} must be a 2-D tensor [n_elements, features], got shape "
                    f"{list(s.shape)}"
                )
            if s.shape[1] != first.shape[1] or s.dtype != first.dtype or s.device != first.device:
                raise ShapeError(
                    f"set {i} has {s.shape[1]} features, {s.dtype} on {s.device}; every set "
                    f"must be like set 0: {first.shape[1]} features, {first.dtype} on "
                    f"{first.device}"
                )
        return cls.from_sizes(torch.cat(sets), [len(s) for s in sets])

    @classmethod
    def nan_sets(
        cls, n: int, features: int, dtype: torch.dtype = torch.float32, device=None
    ) -> RaggedSets:
        """n failed simulations: each set is one element of NaN."""
        values = torch.full((n, features), float("nan"), dtype=dtype, device=device)
        return cls(values, torch.arange(n + 1, device=device))

    @staticmethod
    def concatenate(parts: Sequence[RaggedSets]) -> RaggedSets:
        """The sets of ``parts`` one after the other."""
        if not parts:
            raise ValueError("nothing to concatenate")
        features = {p.features for p in parts}
        if len(features) > 1:
            raise ShapeError(f"cannot concatenate sets with different features {features}")
        return RaggedSets.from_sizes(
            torch.cat([p.values for p in parts]), torch.cat([p.sizes for p in parts])
        )

    # -- shape --
    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def sizes(self) -> Tensor:
        """``[n]`` int64: the number of elements of every set."""
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def features(self) -> int:
        return self.values.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def max_size(self) -> int:
        return int(self.sizes.max()) if len(self) else 0

    def to(self, device=None, dtype: torch.dtype | None = None) -> RaggedSets:
        offsets = self.offsets if device is None else self.offsets.to(device)
        return RaggedSets(self.values.to(device=device, dtype=dtype), offsets)

    def detach(self) -> RaggedSets:
        return RaggedSets(self.values.detach(), self.offsets)

    def row_ids(self) -> Tensor:
        """``[total_elements]``: the set each element belongs to."""
        return torch.repeat_interleave(torch.arange(len(self), device=self.device), self.sizes)

    # -- selection --
    def _positions(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """The value positions of the sets ``rows`` ``[m]`` (in that order) and their sizes."""
        sizes = self.sizes[rows]
        starts = self.offsets[:-1][rows]
        new_starts = torch.cumsum(sizes, 0) - sizes
        total = int(sizes.sum())
        within = torch.arange(total, device=self.device) - torch.repeat_interleave(
            new_starts, sizes, output_size=total
        )
        return torch.repeat_interleave(starts, sizes, output_size=total) + within, sizes

    def _rows(self, index) -> Tensor:
        n = len(self)
        if isinstance(index, slice):
            return torch.arange(n, device=self.device)[index]
        index = torch.as_tensor(index, device=self.device)
        if index.dtype == torch.bool:
            if index.shape != (n,):
                raise ShapeError(f"a boolean mask over {n} sets must be [{n}], got {index.shape}")
            return index.nonzero().flatten()
        if index.ndim != 1 or index.is_floating_point():
            raise ShapeError("sets are indexed by an int, a slice, a bool mask or 1-D indices")
        return torch.where(index < 0, index + n, index)

    def __getitem__(self, index) -> Tensor | RaggedSets:
        if isinstance(index, int):
            if not -len(self) <= index < len(self):
                raise IndexError(f"set {index} of {len(self)}")
            index %= len(self)
            return self.values[self.offsets[index] : self.offsets[index + 1]]
        positions, sizes = self._positions(self._rows(index))
        return RaggedSets.from_sizes(self.values[positions], sizes)

    def padded(
        self,
        device: str | torch.device | None = None,
        max_n: int | None = None,
        padding_value: float = 0.0,
    ) -> tuple[Tensor, Tensor]:
        """``x`` ``[n, max_n, features]`` (``padding_value`` in the padding) and ``mask``
        ``[n, max_n]`` (True = a real element); ``max_n`` defaults to the largest set here.

        One scatter: element j of set i goes to ``x[i, j]``, with i from `row_ids` and j
        its position after ``offsets[i]``."""
        sets = self.to(device) if device is not None else self
        sizes = sets.sizes
        longest = sets.max_size
        max_n = longest if max_n is None else int(max_n)
        if max_n < longest:
            raise ShapeError(f"max_n={max_n} is smaller than the largest set ({longest})")
        rows = sets.row_ids()
        columns = torch.arange(len(sets.values), device=sets.device) - sets.offsets[:-1][rows]
        x = sets.values.new_full((len(sets), max_n, sets.features), padding_value)
        x[rows, columns] = sets.values
        mask = torch.arange(max_n, device=sets.device) < sizes[:, None]
        return x, mask

    def as_list(self) -> list[Tensor]:
        """The sets as per-event tensors ``[n_i, features]``."""
        return list(torch.split(self.values, self.sizes.tolist()))

    def rows_finite(self) -> Tensor:
        """``[n]`` bool: the sets whose elements are all finite (an empty set is)."""
        bad = (~torch.isfinite(self.values).all(1)).to(torch.int64)
        count = torch.zeros(len(self), dtype=torch.int64, device=self.device)
        return count.index_add_(0, self.row_ids(), bad) == 0

    def equal(self, other: RaggedSets) -> bool:
        """Same sizes and the same values (NaN equal to NaN)."""
        return bool(
            torch.equal(self.offsets.cpu(), other.offsets.cpu())
            and self.values.shape == other.values.shape
            and torch.equal(self.values.isnan(), other.values.isnan())
            and torch.equal(self.values.nan_to_num(), other.values.nan_to_num())
        )

    def __repr__(self) -> str:
        sizes = self.sizes
        span = f"{int(sizes.min())}…{int(sizes.max())}" if len(self) else "-"
        return (
            f"RaggedSets(n={len(self)}, sizes {span}, features={self.features}, dtype={self.dtype})"
        )


def pad_sets(
    sets: Sequence[Tensor] | RaggedSets, max_n: int | None = None, padding_value: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Pad per-event sets ``[n_b, F]`` into ``x`` ``[B, max_n, F]`` and ``mask`` ``[B, max_n]``.

    ``sets``: a list of tensors of one dtype, device and number of features (the result
    keeps them), or a `RaggedSets`.  The mask comes from the lengths, never from the
    values, so elements that are all zeros count.  ``max_n`` defaults to the largest n_b;
    a larger one adds padding.  The padded slots hold ``padding_value``.  Vectorised: one
    concatenation and one scatter (`RaggedSets.padded`), whatever the number of sets."""
    ragged = sets if isinstance(sets, RaggedSets) else RaggedSets.from_list(sets)
    return ragged.padded(max_n=max_n, padding_value=padding_value)


def set_sizes(mask: Tensor) -> Tensor:
    """The true size n_b of every set, ``[B]`` int64, from a boolean ``mask`` ``[B, N]``."""
    if mask.dtype != torch.bool or mask.ndim != 2:
        raise ShapeError(f"mask must be a 2-D bool tensor (batch, max_n), got {mask.dtype}")
    return mask.sum(-1)


def pack_sets(x: Tensor, mask: Tensor) -> Tensor:
    """x ``[B, N, F]`` and mask ``[B, N]`` as one tensor ``[B, N, F + 1]`` (the mask last, as
    0/1 in x's dtype; padded slots of x set to 0, so junk there never travels on)."""
    if x.ndim != 3 or mask.shape != x.shape[:2] or mask.dtype != torch.bool:
        raise ShapeError(
            f"pack_sets takes x (batch, max_n, features) and a bool mask (batch, max_n); got "
            f"x {tuple(x.shape)} and mask {mask.dtype} {tuple(mask.shape)}"
        )
    return torch.cat([torch.where(mask[..., None], x, 0), mask[..., None].to(x.dtype)], -1)


def unpack_sets(packed: Tensor) -> tuple[Tensor, Tensor]:
    """The inverse of `pack_sets`: ``[B, N, F + 1]`` → x ``[B, N, F]``, mask ``[B, N]``."""
    if packed.ndim != 3 or packed.shape[-1] < 2:
        raise ShapeError(
            f"a packed set batch is (batch, max_n, features + 1), got {tuple(packed.shape)}"
        )
    return packed[..., :-1], packed[..., -1] > 0.5


def rows_finite(x: Tensor | RaggedSets) -> Tensor:
    """``[n]`` bool: the rows of x (a tensor ``[n, …]`` or sets) that hold no NaN or inf."""
    if isinstance(x, RaggedSets):
        return x.rows_finite()
    return torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)


def _cat(values: list[Tensor | RaggedSets]) -> Tensor | RaggedSets:
    if isinstance(values[0], RaggedSets):
        if not all(isinstance(v, RaggedSets) for v in values):
            raise ValueError("cannot concatenate set-valued x with fixed-shape x")
        return RaggedSets.concatenate(values)
    return torch.cat(values)


def _shape(value: Tensor | RaggedSets) -> list:
    if isinstance(value, RaggedSets):
        return [None, value.features]
    return list(value.shape[1:])


#: The shape every column but x must have: "theta" means ``[n, theta_dim]``, "rows" ``[n]``,
#: "matrix" ``[n, k]`` for any k; with the dtype kind it must be of.
_COLUMN_SHAPES = {
    "design": ("matrix", "float"),
    "theta_ref": ("theta", "float"),
    "from_reference": ("rows", "bool"),
    "joint_log_ratio": ("rows", "float"),
    "joint_score": ("theta", "float"),
    "joint_score_ref": ("theta", "float"),
    "valid": ("rows", "bool"),
}


def _as_column(name: str, value) -> Tensor:
    """A column given as a numpy array or a nested list, as a tensor; floating values in
    torch's default dtype (float32 unless changed), the dtype simfer's networks train in,
    rather than numpy's float64."""
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ShapeError(
            f"SimulationData column '{name}' must be a tensor or an array, got "
            f"{type(value).__name__} ({error})"
        ) from error
    return tensor.to(torch.get_default_dtype()) if tensor.is_floating_point() else tensor


def _check_column(name: str, value: Tensor, wanted: tuple[str, str], n: int, theta_dim: int):
    shape, kind = wanted
    expected = {"theta": f"[{n}, {theta_dim}]", "rows": f"[{n}]", "matrix": f"[{n}, k]"}[shape]
    ok = {
        "theta": value.shape == (n, theta_dim),
        "rows": value.shape == (n,),
        "matrix": value.ndim == 2,
    }[shape]
    if not ok:
        raise ShapeError(
            f"SimulationData column '{name}' must have shape {expected}, got {list(value.shape)}"
        )
    if kind == "bool" and value.dtype != torch.bool:
        raise ShapeError(
            f"SimulationData column '{name}' must be bool, got {value.dtype} (use values != 0)"
        )
    if kind == "float" and not value.is_floating_point():
        raise ShapeError(
            f"SimulationData column '{name}' must be floating point, got {value.dtype}"
        )


@dataclass(frozen=True)
class SimulationData:
    """A table of n simulations, one row per simulator call: what every estimator trains on.

    `simfer.simulate` and `simfer.load_simulations` return one; build one yourself from
    (θ, x) pairs simulated elsewhere, e.g. ``SimulationData(theta=theta, x=x)``.  Columns
    are torch tensors, kept as given; numpy arrays and lists are converted, floating ones
    to torch's default dtype (float32, what simfer's networks train in, rather than
    numpy's float64).  The columns:

    Args:
        theta: θ, the parameter point of each row, ``[n, theta_dim]`` (for one parameter,
            ``[n, 1]``).
        x: the observation of each row, ``[n, *x_shape]`` (e.g. ``[n, x_dim]``), or a
            `RaggedSets` of n variable-size sets.  NaN/inf marks a failed simulation.
        design: the experimental design of each row, ``[n, design_dim]``, or None.
        theta_ref: the reference point θ_ref of each row, ``[n, theta_dim]`` (usually one
            point repeated), or None.  Needed with ``from_reference`` by the reference-class
            methods (CARL, ROLR, ALICE, RASCAL, ALICES, CASCAL).
        from_reference: ``[n]`` bool, True where x was drawn at θ_ref instead of θ.
        joint_log_ratio: ``[n]``, log r(x,z|θ,θ_ref) = log p(x,z|θ) − log p(x,z|θ_ref),
            evaluated at the row's (θ, θ_ref) whichever point x was drawn at.
        joint_score: ``[n, theta_dim]``, t(x,z|θ) = ∇_θ log p(x,z|θ) at the row's θ.
        joint_score_ref: ``[n, theta_dim]``, t(x,z|θ_ref), the joint score at θ_ref.
        valid: ``[n]`` bool, False where the simulation failed; by default the rows whose
            x is finite.  Invalid rows are kept and never trained on.

    The gold columns (``joint_*``) are optional; estimators that need one say so.  Shapes
    are checked here, so a mistake surfaces when the table is built, not when training.

    It is a map-style ``torch.utils.data.Dataset``: ``data[i]`` (an int) is a
    dict of the row's tensors, while ``data[index]`` with a slice, a boolean
    mask or an index tensor is a new `SimulationData` with those rows.
    """

    theta: Tensor
    x: Tensor | RaggedSets
    design: Tensor | None = None
    theta_ref: Tensor | None = None
    from_reference: Tensor | None = None
    joint_log_ratio: Tensor | None = None
    joint_score: Tensor | None = None
    joint_score_ref: Tensor | None = None
    valid: Tensor | None = None

    def __post_init__(self) -> None:
        for name, value in self.columns().items():
            if not isinstance(value, Tensor | RaggedSets):
                object.__setattr__(self, name, _as_column(name, value))
        if self.theta.ndim != 2:
            raise ShapeError(
                f"SimulationData theta must be [n, theta_dim], got shape {list(self.theta.shape)}"
                + (" (one parameter: pass theta[:, None])" if self.theta.ndim == 1 else "")
            )
        n, theta_dim = self.theta.shape
        for name, value in self.columns().items():
            if len(value) != n:
                raise ShapeError(
                    f"SimulationData column '{name}' has {len(value)} rows, theta has {n}."
                )
            wanted = _COLUMN_SHAPES.get(name)
            if wanted is not None and not isinstance(value, RaggedSets):
                _check_column(name, value, wanted, n, theta_dim)
        if self.valid is None:
            object.__setattr__(self, "valid", rows_finite(self.x))

    # -- table access -----------------------------------------------------------
    def columns(self) -> dict[str, Tensor | RaggedSets]:
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
    def x_shape(self) -> tuple[int | None, ...]:
        """The shape of one x; ``(None, features)`` for set-valued x."""
        return tuple(_shape(self.x))

    @property
    def is_set(self) -> bool:
        """Whether x is set-valued (a `RaggedSets`)."""
        return isinstance(self.x, RaggedSets)

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

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> SimulationData:
        """The table on ``device`` and/or with its floating columns (θ, x, gold, design) in
        ``dtype``; the bool flags stay bool."""

        def moved(value: Tensor | RaggedSets) -> Tensor | RaggedSets:
            floating = isinstance(value, RaggedSets) or value.is_floating_point()
            return value.to(device=device, dtype=dtype if floating else None)

        return replace(self, **{k: moved(v) for k, v in self.columns().items()})

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
        return SimulationData(**{k: _cat([p.columns()[k] for p in parts]) for k in names})

    def __repr__(self) -> str:
        cols = ", ".join(f"{k}{_shape(v)}" for k, v in self.columns().items())
        return f"SimulationData(n={len(self)}, invalid={self.n_invalid}, columns: {cols})"
