"""An ensemble of E independent MLPs evaluated in one batched pass.

Every weight carries the members as its leading dimension: a layer maps
``[E, batch, in]`` to ``[E, batch, out]`` by one batched matrix product,
h ↦ h W_e + b_e for each member e.  Members share no parameter, so the sum of
their losses has independent gradients per member, and Adam (elementwise) trains
E networks at the cost of one wide one.  E = 1 is the plain MLP.

The activations a network of simfer may use are `ACTIVATIONS`, one home for all of them.

`Standardize` stores the affine map (v − μ)/σ learnt from the training data as
buffers, so it travels with the weights when a model is saved and loaded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ACTIVATIONS",
    "EnsembleLinear",
    "EnsembleMLP",
    "Standardize",
    "check_activation",
    "check_residual_widths",
    "mlp_widths",
]

ACTIVATIONS = {"silu": F.silu, "relu": F.relu, "elu": F.elu, "tanh": torch.tanh}


def check_activation(name: str) -> str:
    """The lower-cased activation name, or a ValueError that lists the choices."""
    name = str(name).lower()
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {list(ACTIVATIONS)}")
    return name


class Standardize(nn.Module):
    """(v − μ)/σ with μ, σ ``[features]`` stored as buffers (σ floored for constant features)."""

    def __init__(self, features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))

    @torch.no_grad()
    def fit(self, values: Tensor) -> Standardize:
        """Set μ, σ from ``values`` ``[n, features]``."""
        self.mean.copy_(values.mean(0))
        std = values.std(0) if values.shape[0] > 1 else torch.ones_like(self.std)
        self.std.copy_(torch.where(std > 1e-8 * (1 + self.mean.abs()), std, torch.ones_like(std)))
        return self

    def forward(self, values: Tensor) -> Tensor:
        return (values - self.mean) / self.std


class EnsembleLinear(nn.Module):
    """E independent affine maps: ``[E, batch, in]`` → ``[E, batch, out]``."""

    def __init__(self, n_members: int, in_features: int, out_features: int):
        super().__init__()
        bound = 1 / math.sqrt(in_features)  # the default initialisation of nn.Linear
        self.weight = nn.Parameter(
            torch.empty(n_members, in_features, out_features).uniform_(-bound, bound)
        )
        self.bias = nn.Parameter(torch.empty(n_members, 1, out_features).uniform_(-bound, bound))

    def forward(self, h: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, h, self.weight)


class EnsembleMLP(nn.Module):
    """E MLPs ``in_features → hidden… → out_features`` with one of `ACTIVATIONS` (SiLU by
    default) between the layers.

    With ``residual=True`` the hidden widths are 1 + 2B equal widths w: a first layer to w,
    then B residual blocks h ↦ h + L₂(a(L₁(a(h)))) and a last layer from h (the residual
    network of nflows and of sbi's classifiers).  Each block's L₂ starts near zero (weights
    and biases from U(±10⁻³)), so the network starts close to a linear map.

    Input ``[batch, in]`` (shared by all members) or ``[E, batch, in]``; output
    ``[E, batch, out]``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (128, 128, 128),
        n_members: int = 1,
        activation: str = "silu",
        residual: bool = False,
    ):
        super().__init__()
        self.n_members = n_members
        self.activation = ACTIVATIONS[check_activation(activation)]
        self.residual = bool(residual)
        if self.residual:
            check_residual_widths(hidden)
        sizes = [in_features, *hidden, out_features]
        self.layers = nn.ModuleList(
            EnsembleLinear(n_members, a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        if self.residual:
            with torch.no_grad():
                for closing in self.layers[2:-1:2]:
                    closing.weight.uniform_(-1e-3, 1e-3)
                    closing.bias.uniform_(-1e-3, 1e-3)

    def forward(self, h: Tensor) -> Tensor:
        if h.ndim == 2:
            h = h.expand(self.n_members, *h.shape)
        if self.residual:
            h = self.layers[0](h)
            for opening, closing in zip(self.layers[1:-1:2], self.layers[2:-1:2], strict=True):
                h = h + closing(self.activation(opening(self.activation(h))))
            return self.layers[-1](h)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = self.activation(h)
        return h


def check_residual_widths(hidden: Sequence[int]) -> None:
    """A ValueError unless ``hidden`` is 1 + 2·blocks layers of one width (residual)."""
    if len(set(hidden)) != 1 or len(hidden) % 2 == 0:
        raise ValueError(
            f"a residual network needs 1 + 2·blocks hidden layers of one width, e.g. "
            f"(50, 50, 50, 50, 50) for two blocks; got {tuple(hidden)}"
        )


def mlp_widths(hidden: int | Sequence[int], depth: int = 3) -> tuple[int, ...]:
    """The hidden layer widths of an MLP: a sequence as given, or an int w as ``depth``
    layers of width w (every width a positive int)."""
    widths = (int(hidden),) * depth if isinstance(hidden, int) else tuple(int(h) for h in hidden)
    if not widths or min(widths) < 1:
        raise ValueError(f"hidden must be positive widths, e.g. (128, 128, 128); got {hidden!r}")
    return widths
