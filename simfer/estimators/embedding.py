"""What the estimators share about x: embeddings, set-valued x and their shapes.

Every estimator takes an optional ``embedding``: a ``torch.nn.Module`` that summarises x
into a vector ``[batch, k]``.  For fixed-shape x it is called as ``embedding(x)`` on
``[batch, *x_shape]``; for set-valued x (a `simfer.data.RaggedSets`) as
``embedding(x, mask)`` on ``[batch, max_n, features]`` and ``[batch, max_n]``, the calling
convention of `simfer.nn.DeepSets`, `simfer.nn.EGNN` and `simfer.nn.LorentzNet`.  Inside
the estimators a set batch travels packed (`simfer.nn.pack_sets`), padded to the largest
set of its own batch, and the embedding is wrapped in a `simfer.nn.SetEmbedding`.

Set-valued x can be given to a trained estimator as one set ``[n, features]``, a list of
sets, a `RaggedSets`, or a padded pair ``(x [batch, max_n, features], mask [batch,
max_n])``.  Sets keep their floating dtype (float64 4-momenta stay float64; the
embeddings cast after computing their invariants).

A model file holds an embedding's weights but never its code: `EmbeddingMixin.load`
takes a freshly built instance (``embedding=``) and fills in the weights.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..data import RaggedSets, SimulationData
from ..errors import ModelFileError, ShapeError
from ..nn.sets import SetEmbedding, pack_sets, unpack_sets
from ..training import gather
from .base import Estimator
from .dims import Dims

__all__ = [
    "EmbeddingMixin",
    "check_no_ensemble",
    "design_column",
    "observed_x",
    "once_per_distinct_row",
    "summarize",
    "x_batch",
]

_LOADING_EMBEDDING: contextvars.ContextVar[nn.Module | None] = contextvars.ContextVar(
    "simfer_loading_embedding", default=None
)


def _set_shape_message(features: int) -> str:
    return (
        f"one set [n, {features}], a list of sets [n_i, {features}], a RaggedSets, or a "
        f"padded pair (x [batch, max_n, {features}], mask [batch, max_n])"
    )


def x_batch(x: Any, dims: Dims, parameter: Tensor) -> tuple[Tensor, bool]:
    """x as the network takes it, on ``parameter``'s device, and whether it was one x.

    Fixed-shape x: ``[batch, *x_shape]`` in the parameter's dtype (one ``x_shape`` x gets a
    batch axis).  Sets: packed ``[batch, max_n, features + 1]`` in their own float dtype."""
    if x is None:
        raise TypeError("x= is required")
    if not dims.is_set:
        shape = tuple(dims.x_shape)
        if torch.as_tensor(x).is_complex():
            raise TypeError("x is complex; simfer's networks take real numbers")
        value = torch.as_tensor(x, dtype=parameter.dtype, device=parameter.device)
        single = tuple(value.shape) == shape
        if single:
            value = value[None]
        if value.ndim != len(shape) + 1 or tuple(value.shape[1:]) != shape:
            wanted = ", ".join(map(str, shape))
            raise ShapeError(
                f"x must have shape [{wanted}] or [batch, {wanted}], got {list(value.shape)}"
            )
        if value.shape[0] == 0:
            raise ShapeError("x has no rows: pass at least one observation")
        _check_finite(value)
        return value, single
    features = int(dims.set_features)
    single = False
    if isinstance(x, RaggedSets):
        sets = x
    elif isinstance(x, tuple) and len(x) == 2 and torch.as_tensor(x[1]).dtype == torch.bool:
        values, mask = torch.as_tensor(x[0]), torch.as_tensor(x[1])
        if values.ndim != 3 or values.shape[-1] != features or mask.shape != values.shape[:2]:
            raise ShapeError(
                f"x must be {_set_shape_message(features)}; got a pair x {list(values.shape)}, "
                f"mask {list(mask.shape)}"
            )
        packed = pack_sets(values, mask).to(parameter.device)
        _check_finite(packed)
        return _as_float(packed), False
    elif isinstance(x, list | tuple):
        try:
            sets = RaggedSets.from_list([torch.as_tensor(s) for s in x])
        except ShapeError as error:
            raise ShapeError(f"x must be {_set_shape_message(features)}: {error}") from error
    else:
        value = torch.as_tensor(x)
        if value.ndim != 2:
            raise ShapeError(
                f"x must be {_set_shape_message(features)}; got a tensor {list(value.shape)} "
                f"(a padded batch needs its mask: pass (x, mask))"
            )
        sets, single = RaggedSets.from_list([value]), True
    if sets.features != features:
        raise ShapeError(
            f"x must be {_set_shape_message(features)}; its elements have {sets.features} features"
        )
    packed = pack_sets(*sets.to(parameter.device).padded())
    _check_finite(packed)
    return _as_float(packed), single


def observed_x(x_obs: Any, dims: Dims, parameter: Tensor):
    """Observations as a `Posterior` holds them, the shape of one, and the map from its rows
    back to what the estimator takes: fixed-shape x as given (the `Posterior` checks it);
    sets padded and packed once, ``[n, max_n, features + 1]``, unpacked per call."""
    if not dims.is_set:
        return x_obs, tuple(dims.x_shape), lambda x: x
    packed, _ = x_batch(x_obs, dims, parameter)
    return packed, tuple(packed.shape[1:]), unpack_sets


def design_column(data: SimulationData) -> Tensor | None:
    """The design column the network conditions on: ``data.design`` when it varies between
    rows, else None (simulations all at one design, e.g. a simulator's default design,
    teach nothing about the design; `Dims.fixed_design` records it)."""
    design = data.design
    if design is None or len(design) == 0 or bool((design == design[:1]).all()):
        return None
    return design


def _fixed_design(data: SimulationData) -> tuple[float, ...] | None:
    if data.design is None or design_column(data) is not None or len(data.design) == 0:
        return None
    return tuple(float(v) for v in data.design[0])


def _as_float(value: Tensor) -> Tensor:
    return value if value.is_floating_point() else value.to(torch.get_default_dtype())


def _check_finite(value: Tensor) -> None:
    if not bool(torch.isfinite(value).all()):
        raise ValueError("x holds NaN or inf values")


class EmbeddingMixin:
    """Embedding handling shared by the estimators: construction, the x the fit trains on,
    the shape check of the embedding's output, and loading with ``embedding=``.

    Put it before `Estimator` in the bases; the class sets ``self.embedding`` through
    `_init_embedding` in its constructor.
    """

    embedding: nn.Module | None
    _embedding_name: str | None

    def _init_embedding(self, embedding: nn.Module | dict | None) -> None:
        self._embedding_name = None
        if isinstance(embedding, dict):  # from a model file: only the class name is stored
            self._embedding_name = embedding.get("class", "?")
            embedding = _LOADING_EMBEDDING.get()
        elif embedding is not None and not isinstance(embedding, nn.Module):
            raise TypeError(f"embedding must be a torch.nn.Module, got {type(embedding).__name__}")
        self.embedding = embedding

    def _embedding_hyperparameter(self) -> dict | None:
        if self.embedding is not None:
            return {"class": type(self.embedding).__qualname__}
        if self._embedding_name is not None:
            return {"class": self._embedding_name}
        return None

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        *,
        embedding: nn.Module | None = None,
    ) -> Estimator:
        """Load a saved model; pass a fresh ``embedding`` of the class it was trained with
        (its weights come from the file)."""
        token = _LOADING_EMBEDDING.set(embedding)
        try:
            estimator = super().load(path, device)
        finally:
            _LOADING_EMBEDDING.reset(token)
        return estimator

    def _require_embedding(self, dims: Dims) -> None:
        """On load: a model trained with an embedding needs one to rebuild its network."""
        if dims.embedding and self.embedding is None:
            name = type(self).__name__
            raise ModelFileError(
                f"this {name} was trained with an embedding network ({dims.embedding}); a "
                f"model file holds its weights but never its code. Load it with "
                f"simfer.{name}.load(path, embedding={dims.embedding}(...)) built as for "
                f"training."
            )

    def _summary(self, summarize: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """``summarize(x)``; with an embedding, once per distinct row of x."""
        if self.embedding is None:
            return summarize(x)
        return once_per_distinct_row(summarize, x)

    def _embedding_module(self, is_set: bool) -> nn.Module | None:
        """The embedding as the network calls it: wrapped to take packed sets for sets."""
        if self.embedding is None:
            return None
        return SetEmbedding(self.embedding) if is_set else self.embedding

    def _training_x(self, data: SimulationData) -> tuple[Tensor | RaggedSets, dict[str, Any]]:
        """The x column the fit trains on and the `Dims` fields that describe it and the
        design column: fixed-shape x flattened to ``[n, x_dim]`` unless an embedding takes
        it whole; sets kept ragged."""
        dims: dict[str, Any] = {
            "theta_dim": data.theta_dim,
            "x_shape": tuple(data.x_shape),
            "embedding": None if self.embedding is None else type(self.embedding).__qualname__,
            "design_dim": 0 if design_column(data) is None else int(data.design.shape[1]),
            "fixed_design": _fixed_design(data),
        }
        if data.is_set:
            if self.embedding is None:
                raise ShapeError(
                    f"x is set-valued (a variable number of elements with {data.x.features} "
                    f"features each): {type(self).__name__} needs embedding=, a set embedding "
                    f"called as embedding(x [batch, max_n, {data.x.features}], mask [batch, "
                    f"max_n]) → [batch, k], e.g. simfer.nn.DeepSets({data.x.features}, 16) or "
                    f"simfer.nn.LorentzNet({data.x.features}, 16) for 4-momenta."
                )
            dims.update(x_kind="set", set_features=data.x.features)
            return data.x, dims
        dims["x_kind"] = "array"
        x = data.x if self.embedding is not None else data.x.reshape(len(data), -1)
        return x, dims

    def _embedding_features(self, x: Tensor | RaggedSets) -> int:
        """k, the width of the embedding's output on the first rows of x (a clear error when
        it is not ``[batch, k]``)."""
        module = self._embedding_module(isinstance(x, RaggedSets))
        rows = min(2, len(x))
        if isinstance(x, RaggedSets):
            probe = pack_sets(*x[:rows].padded())
            given = f"x [batch, max_n, {x.features}] and mask [batch, max_n]"
        else:
            probe = x[:rows]
            given = f"x [batch, {', '.join(map(str, x.shape[1:]))}]"
        parameter = next(module.parameters(), None)
        if parameter is not None:
            probe = probe.to(parameter.device)
        try:
            with torch.no_grad():
                out = module(probe)
        except Exception as error:
            raise ShapeError(
                f"the embedding {type(self.embedding).__name__} failed on {given}: "
                f"{type(error).__name__}: {error}"
            ) from error
        if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != rows:
            shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ShapeError(f"the embedding must map {given} to [batch, k]; it returned {shape}")
        return int(out.shape[1])


def check_no_ensemble(n_ensemble: int, embedding: nn.Module | None) -> None:
    """An embedding is one network shared by all members, which the per-member training
    (clipping, early stopping) cannot handle."""
    if embedding is not None and n_ensemble > 1:
        raise ValueError(
            f"an embedding is shared by all ensemble members, so n_ensemble must be 1 with "
            f"embedding= (got {n_ensemble}); train several estimators for an ensemble"
        )


def summarize(module: nn.Module, x: Tensor | RaggedSets, batch_size: int = 1024) -> Tensor:
    """``module`` applied to all rows of x in batches, without gradients: ``[n, k]``."""
    parameter = next(module.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    outputs = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            index = torch.arange(start, min(start + batch_size, len(x)))
            batch = gather({"x": x}, index)["x"].to(device)
            outputs.append(module(batch))
    return torch.cat(outputs)


def once_per_distinct_row(function: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``function(x)`` ``[batch, k]``, computed once per distinct row of x.

    A posterior pairs every observed x with many θ (chains, grid points), so the rows an
    estimator sees repeat; an embedding costs far more than finding the repeats (message
    passing over each set against one sort of the rows).  Rows are compared bit for bit;
    x that requires grad is passed whole (the de-duplication is not differentiable)."""
    if x.shape[0] <= 1 or x.requires_grad:
        return function(x)
    distinct, inverse = torch.unique(x.flatten(1), dim=0, return_inverse=True)
    if distinct.shape[0] == x.shape[0]:
        return function(x)
    return function(distinct.reshape(-1, *x.shape[1:]))[inverse]
