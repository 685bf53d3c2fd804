r"""Set embeddings: fixed-size summaries of variable-size, unordered sets.

An event that is a set {x_1, …, x_n} (particles, hits, sources) travels as a padded tensor
``x`` ``(B, N, F)`` and a boolean ``mask`` ``(B, N)``, True where a slot holds a real element;
n_b = Σ_i mask[b, i] is the true size of set b and N = max_n the padded size.  Every embedding
here is called as ``embedding(x, mask)`` and returns ``(B, out_features)``.

Three embeddings, from general to specific:

- `DeepSets` (Zaheer et al. 2017, arXiv:1703.06114): ρ(pool_i φ(x_i)).  Invariant under
  permutations of the elements, nothing more.  The cheapest.
- `EGNN` (Satorras, Hoogeboom & Welling 2021, arXiv:2102.09844): message passing on the fully
  connected graph of each set with positions x_i ∈ ℝ^D and invariant scalars h_i,

      m_ij = φ_e(h_i, h_j, ‖x_i − x_j‖²)
      x_i ← x_i + 1/(n − 1) Σ_{j≠i} (x_i − x_j) / √(1 + ‖x_i − x_j‖²) · tanh φ_x(m_ij)
      h_i ← h_i + φ_h(h_i, Σ_{j≠i} m_ij)

  then ρ(pool_i h_i).  The summary is invariant under E(D) (rotations, reflections,
  translations of the positions), the updated positions are equivariant.
- `LorentzNet` (Gong et al. 2022, arXiv:2201.08187): the same scheme for 4-momenta
  p_i = (E, px, py, pz) with the Minkowski product ⟨a, b⟩ = a⁰b⁰ − a·b,

      m_ij = φ_e(h_i, h_j, ψ(‖p_i − p_j‖²), ψ(⟨p_i, p_j⟩)),   ψ(a) = sign(a) log(1 + |a|)
      p_i ← p_i + c/(n − 1) Σ_{j≠i} p_j · tanh φ_x(m_ij)
      h_i ← h_i + φ_h(h_i, Σ_{j≠i} w_ij m_ij),   w_ij = sigmoid φ_m(m_ij)

  The summary is invariant under the Lorentz group O(1,3) (boosts, rotations, parity), the
  updated 4-vectors are equivariant.  The 4-vectors and their products are kept in float64
  whatever the working dtype, because a Minkowski product of boosted vectors cancels: at
  rapidity y the components grow like e^y while the invariant does not, and float32 leaves
  nothing of it by y ≈ 5.  Only the ψ-compressed invariants are cast to the working dtype.

Masking is exact.  The padded slots are overwritten by zeros first (``torch.where``, so NaN or
inf junk there never enters an arithmetic operation and receives an exactly zero gradient);
messages from, to and between padded slots are dropped with ``torch.where`` before any sum;
means divide by the true size n (pooling) or n − 1 (the coordinate updates), never by N.  An
empty set (an all-False row) pools to the zero vector, so its summary is ρ(0): finite, the
same for every empty set.  A one-element set has no messages; its coordinates stay put.

Packed sets.  Some interfaces take one tensor per batch (the context of an nflows flow, the
batches of `simfer.training.fit_network`).  There a set batch travels *packed*: x and its mask
in one tensor ``(B, N, F + 1)`` whose last channel is the mask as 0/1 (`pack_sets`,
`unpack_sets`), and `SetEmbedding` wraps any embedding so that it takes the packed tensor.
Padding, packing and `set_sizes` live in `simfer.data`, next to `RaggedSets`; they are
importable from here and from `simfer.nn` as well.
The estimators pack and unpack; a user never needs to.

Edges.  The fully connected graph is processed in one of two layouts, chosen by the ``edges``
attribute of `EGNN` and `LorentzNet`: ``"padded"`` computes all B·N·N pairs and masks the
unreal ones (the faster one when sets have nearly equal sizes), ``"edge_list"`` gathers only
the Σ n_b(n_b − 1) real pairs and sums messages with ``index_add_`` (the faster one when sizes
vary widely, like jets with 10–150 constituents), ``"auto"`` (the default) takes the edge list
when the real pairs are less than half of the padded ones.  Both give the same numbers up to
the order of floating-point sums.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..data import pack_sets, pad_sets, set_sizes, unpack_sets  # re-exported: public here too
from ..errors import ShapeError

__all__ = [
    "DeepSets",
    "EGNN",
    "EGNNLayer",
    "LorentzNet",
    "LorentzNetLayer",
    "SetEmbedding",
    "count_parameters",
    "masked_pool",
    "pack_sets",
    "pad_sets",
    "set_sizes",
    "unpack_sets",
]

POOLINGS = ("mean", "sum", "mean+sum")
EDGE_LAYOUTS = ("auto", "padded", "edge_list")


# ---------------------------------------------------------------------------------------------
# packed sets, masks and pooling


class SetEmbedding(nn.Module):
    """A set embedding called on packed sets: ``forward(packed)`` is
    ``embedding(*unpack_sets(packed))``.

    ``packed`` ``(B, N, F + 1)`` → ``(B, out_features)``; the wrapped module is ``.embedding``.
    """

    def __init__(self, embedding: nn.Module):
        super().__init__()
        self.embedding = embedding

    def forward(self, packed: Tensor) -> Tensor:
        return self.embedding(*unpack_sets(packed))


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """The number of (trainable) scalar parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _combine(total: Tensor, sizes: Tensor, pooling: str) -> Tensor:
    """Pooled ``(B, H)`` or ``(B, 2H)`` from the masked sum ``(B, H)`` and the true sizes."""
    if pooling == "sum":
        return total
    mean = total / sizes.clamp(min=1).to(total.dtype)[:, None]
    return mean if pooling == "mean" else torch.cat([mean, total], -1)


def masked_pool(h: Tensor, mask: Tensor, pooling: str = "mean") -> Tensor:
    """Pool ``h`` ``(B, N, H)`` over the real elements: ``"mean"`` (Σ/n with the true n, 0 for an
    empty set), ``"sum"``, or ``"mean+sum"`` (both, concatenated to ``(B, 2H)``)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    return _combine(torch.where(mask[..., None], h, 0).sum(1), mask.sum(1), pooling)


def _check_input(x: Tensor, mask: Tensor | None, in_features: int) -> Tensor:
    """Validate ``(x, mask)`` and return the mask (all True when None)."""
    if x.ndim != 3 or x.shape[-1] != in_features:
        raise ShapeError(f"x must have shape (batch, max_n, {in_features}), got {tuple(x.shape)}")
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if mask.dtype != torch.bool:
        raise ShapeError(f"mask must be a bool tensor (True = a real element), got {mask.dtype}")
    if mask.shape != x.shape[:2]:
        raise ShapeError(f"mask has shape {tuple(mask.shape)}, x has {tuple(x.shape)}")
    return mask


def _mlp(sizes: Sequence[int], final_activation: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or final_activation:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def _check_pooling(pooling: str) -> int:
    """The width multiplier of a pooling (2 for mean+sum)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    return 2 if pooling == "mean+sum" else 1


# ---------------------------------------------------------------------------------------------
# the fully connected graph of each set, in two layouts


class _Padded:
    """All N·N pairs of each padded set; unreal pairs (padding, i = j) masked out.

    Node tensors are ``(B, N, ·)``, edge tensors ``(B, N, N, ·)`` indexed [b, i, j]: i receives,
    j sends.
    """

    def __init__(self, mask: Tensor):
        n = mask.shape[1]
        eye = torch.eye(n, dtype=torch.bool, device=mask.device)
        self.mask = mask
        self.sizes = mask.sum(1)
        self.node_mask = mask[..., None]
        self.edge_mask = (mask[:, :, None] & mask[:, None, :] & ~eye)[..., None]
        self.n_others = (self.sizes - 1).clamp(min=1)[:, None, None]

    def nodes(self, x: Tensor) -> Tensor:
        return torch.where(self.node_mask, x, 0)

    clean = nodes

    def receivers(self, v: Tensor) -> Tensor:
        return v[:, :, None, :].expand(-1, -1, v.shape[1], -1)

    def senders(self, v: Tensor) -> Tensor:
        return v[:, None, :, :].expand(-1, v.shape[1], -1, -1)

    def aggregate(self, e: Tensor) -> Tensor:
        """Σ_{j≠i} e_ij over the real senders j of each node i."""
        return torch.where(self.edge_mask, e, 0).sum(2)

    def pool(self, h: Tensor, pooling: str) -> Tensor:
        return _combine(torch.where(self.node_mask, h, 0).sum(1), self.sizes, pooling)

    def pad(self, v: Tensor) -> Tensor:
        return v


class _EdgeList:
    """Only the real nodes (in row-major order) and the Σ n_b(n_b − 1) real pairs.

    Node tensors are ``(n_nodes, ·)``, edge tensors ``(n_edges, ·)``; messages are summed into
    their receiver with ``index_add_``.  Edges come from the mask in one vectorised ``nonzero``.
    """

    def __init__(self, mask: Tensor):
        batch, n = mask.shape
        eye = torch.eye(n, dtype=torch.bool, device=mask.device)
        self.mask = mask
        self.sizes = mask.sum(1)
        self.slot = mask.nonzero(as_tuple=True)  # (b, i) of each real node
        self.n_nodes = self.slot[0].shape[0]
        compact = (torch.cumsum(mask.flatten(), 0) - 1).view(batch, n)
        b, i, j = (mask[:, :, None] & mask[:, None, :] & ~eye).nonzero(as_tuple=True)
        self.receiver, self.sender = compact[b, i], compact[b, j]
        self.n_others = (self.sizes - 1).clamp(min=1)[self.slot[0]][:, None]

    def nodes(self, x: Tensor) -> Tensor:
        return x[self.slot]

    def clean(self, v: Tensor) -> Tensor:
        return v

    def receivers(self, v: Tensor) -> Tensor:
        return v[self.receiver]

    def senders(self, v: Tensor) -> Tensor:
        return v[self.sender]

    def aggregate(self, e: Tensor) -> Tensor:
        """Σ_{j≠i} e_ij over the real senders j of each node i."""
        return e.new_zeros(self.n_nodes, e.shape[-1]).index_add_(0, self.receiver, e)

    def pool(self, h: Tensor, pooling: str) -> Tensor:
        total = h.new_zeros(self.mask.shape[0], h.shape[-1]).index_add_(0, self.slot[0], h)
        return _combine(total, self.sizes, pooling)

    def pad(self, v: Tensor) -> Tensor:
        return v.new_zeros(*self.mask.shape, v.shape[-1]).index_put(self.slot, v)


def _graph(mask: Tensor, edges: str) -> _Padded | _EdgeList:
    if edges not in EDGE_LAYOUTS:
        raise ValueError(f"edges must be one of {EDGE_LAYOUTS}, got {edges!r}")
    if edges == "auto":
        sizes = mask.sum(1)
        real = int((sizes * (sizes - 1)).sum())
        padded = mask.shape[0] * mask.shape[1] * (mask.shape[1] - 1)
        edges = "edge_list" if real < padded / 2 else "padded"
    return _EdgeList(mask) if edges == "edge_list" else _Padded(mask)


def _mean_over_others(e: Tensor, graph: _Padded | _EdgeList) -> Tensor:
    """1/(n − 1) Σ_{j≠i} e_ij with the true n of the set (n = 1: no term, 0)."""
    return graph.aggregate(e) / graph.n_others.to(e.dtype)


# ---------------------------------------------------------------------------------------------
# Deep Sets


class DeepSets(nn.Module):
    """ρ(pool_{i ≤ n} φ(x_i)): ``(B, N, in_features)``, mask ``(B, N)`` → ``(B, out_features)``.

    φ has ``n_layers`` SiLU layers of width ``hidden``; ρ maps the pooled vector through
    ``n_layers − 1`` of them to ``out_features``.  ``pooling`` is ``"mean"`` (divided by the
    true n), ``"sum"`` or ``"mean+sum"`` (both; the sum carries the set size).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int = 64,
        n_layers: int = 2,
        pooling: str = "mean",
    ):
        super().__init__()
        width = _check_pooling(pooling)
        self.in_features, self.out_features, self.pooling = in_features, out_features, pooling
        self.phi = _mlp([in_features] + [hidden] * n_layers, final_activation=True)
        self.rho = _mlp([width * hidden] + [hidden] * (n_layers - 1) + [out_features])

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        mask = _check_input(x, mask, self.in_features)
        x = torch.where(mask[..., None], x, 0).to(self.rho[0].weight.dtype)
        return self.rho(masked_pool(self.phi(x), mask, self.pooling))


# ---------------------------------------------------------------------------------------------
# EGNN


class EGNNLayer(nn.Module):
    """One E(n)-equivariant layer (Satorras et al. 2021, equations 3–6), one method each."""

    def __init__(self, hidden: int):
        super().__init__()
        self.phi_e = _mlp([2 * hidden + 1, hidden, hidden], final_activation=True)
        self.phi_x = _mlp([hidden, hidden, 1])
        self.phi_h = _mlp([2 * hidden, hidden, hidden])

    def edge_model(self, h_i: Tensor, h_j: Tensor, d2: Tensor) -> Tensor:
        """m_ij = φ_e(h_i, h_j, ‖x_i − x_j‖²)."""
        return self.phi_e(torch.cat([h_i, h_j, d2], -1))

    def coord_model(self, x: Tensor, diff: Tensor, d2: Tensor, m: Tensor, graph) -> Tensor:
        """x_i + 1/(n − 1) Σ_{j≠i} (x_i − x_j)/√(1 + ‖x_i − x_j‖²) · tanh φ_x(m_ij).

        The step along each pair is shorter than 1 (a bounded, smooth stand-in for the paper's
        φ_x(m_ij)(x_i − x_j), which grows without bound with the distance), so no clamp is
        needed; unlike a division by ‖x_i − x_j‖ + ε it is differentiable at coincident points.
        """
        step = diff * torch.rsqrt(1 + d2) * torch.tanh(self.phi_x(m))
        return x + _mean_over_others(step, graph)

    def node_model(self, h: Tensor, m_sum: Tensor) -> Tensor:
        """h_i + φ_h(h_i, Σ_{j≠i} m_ij)."""
        return h + self.phi_h(torch.cat([h, m_sum], -1))

    def forward(self, h: Tensor, x: Tensor, graph) -> tuple[Tensor, Tensor]:
        diff = graph.receivers(x) - graph.senders(x)
        d2 = diff.square().sum(-1, keepdim=True)
        m = self.edge_model(graph.receivers(h), graph.senders(h), d2)
        x = self.coord_model(x, diff, d2, m, graph)
        h = self.node_model(h, graph.aggregate(m))
        return graph.clean(h), graph.clean(x)


class EGNN(nn.Module):
    """E(n)-equivariant graph network on each set, summarised invariantly.

    ``x`` ``(B, N, in_features)``: positions in the first ``coord_dim`` features, invariant
    scalars (charge, particle type…) in the rest; mask ``(B, N)``; output
    ``(B, out_features)`` = ρ(pool h_i) after ``n_layers`` `EGNNLayer` of width ``hidden``.
    The initial h_i is a linear map of the scalars (a learnt vector when there are none).

    Positions enter only through differences and distances: use units in which typical
    distances are O(1).  ``edges`` picks the layout of the pairs (module docstring); it is a
    plain attribute and can be changed at any time.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        coord_dim: int = 3,
        hidden: int = 64,
        n_layers: int = 4,
        pooling: str = "mean",
        edges: str = "auto",
    ):
        super().__init__()
        if not 1 <= coord_dim <= in_features:
            raise ShapeError(f"coord_dim={coord_dim} must be in 1..in_features={in_features}")
        width = _check_pooling(pooling)
        self.in_features, self.out_features = in_features, out_features
        self.coord_dim, self.pooling, self.edges = coord_dim, pooling, edges
        n_scalars = in_features - coord_dim
        self.embed = nn.Linear(n_scalars, hidden) if n_scalars else None
        self.h_init = None if n_scalars else nn.Parameter(torch.zeros(hidden))
        self.layers = nn.ModuleList(EGNNLayer(hidden) for _ in range(n_layers))
        self.rho = _mlp([width * hidden, hidden, out_features])

    def _propagate(self, x: Tensor, mask: Tensor | None):
        mask = _check_input(x, mask, self.in_features)
        graph = _graph(mask, self.edges)
        nodes = graph.nodes(x).to(self.rho[0].weight.dtype)
        coords, scalars = nodes[..., : self.coord_dim], nodes[..., self.coord_dim :]
        if self.embed is not None:
            h = graph.clean(self.embed(scalars))
        else:
            h = graph.clean(self.h_init.expand(*scalars.shape[:-1], -1))
        for layer in self.layers:
            h, coords = layer(h, coords, graph)
        return graph, h, coords

    def message_passing(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Node features ``(B, N, hidden)`` (invariant) and positions ``(B, N, coord_dim)``
        (equivariant) after the last layer; padded slots are zero."""
        graph, h, coords = self._propagate(x, mask)
        return graph.pad(h), graph.pad(coords)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        graph, h, _ = self._propagate(x, mask)
        return self.rho(graph.pool(h, self.pooling))


# ---------------------------------------------------------------------------------------------
# LorentzNet


def minkowski(a: Tensor, b: Tensor) -> Tensor:
    """⟨a, b⟩ = a⁰b⁰ − a¹b¹ − a²b² − a³b³ over the last dimension, kept as ``(…, 1)``."""
    return a[..., :1] * b[..., :1] - (a[..., 1:] * b[..., 1:]).sum(-1, keepdim=True)


def psi(a: Tensor) -> Tensor:
    """ψ(a) = sign(a) log(1 + |a|), written so that its gradient is 1/(1 + |a|) at 0 too."""
    return torch.where(a >= 0, torch.log1p(a.clamp(min=0)), -torch.log1p((-a).clamp(min=0)))


class LorentzNetLayer(nn.Module):
    """One Lorentz group equivariant block (LGEB, Gong et al. 2022, equations 3.3–3.5).

    ``coord_weight`` is c in the 4-vector update; the paper keeps it small (1e-3) so that the
    4-vectors drift slowly from layer to layer.
    """

    def __init__(self, hidden: int, coord_weight: float = 1e-3):
        super().__init__()
        self.coord_weight = coord_weight
        self.phi_e = _mlp([2 * hidden + 2, hidden, hidden], final_activation=True)
        self.phi_m = nn.Sequential(nn.Linear(hidden, 1), nn.Sigmoid())
        self.phi_x = _mlp([hidden, hidden, 1])
        self.phi_h = _mlp([2 * hidden, hidden, hidden])

    def edge_model(self, h_i: Tensor, h_j: Tensor, norm: Tensor, dot: Tensor) -> Tensor:
        """m_ij = φ_e(h_i, h_j, ψ(‖p_i − p_j‖²), ψ(⟨p_i, p_j⟩)); ``norm``, ``dot`` already ψ'd."""
        return self.phi_e(torch.cat([h_i, h_j, norm, dot], -1))

    def coord_model(self, p: Tensor, p_j: Tensor, m: Tensor, graph) -> Tensor:
        """p_i + c/(n − 1) Σ_{j≠i} p_j · tanh φ_x(m_ij), in the dtype of ``p`` (float64).

        tanh bounds the weights, where the reference code clamps the products p_j φ_x to ±100,
        a component-wise clamp that is not even Lorentz covariant.
        """
        weight = torch.tanh(self.phi_x(m)).to(p.dtype)
        return p + self.coord_weight * _mean_over_others(p_j * weight, graph)

    def node_model(self, h: Tensor, m: Tensor, graph) -> Tensor:
        """h_i + φ_h(h_i, Σ_{j≠i} w_ij m_ij) with the edge gate w_ij = sigmoid φ_m(m_ij)."""
        return h + self.phi_h(torch.cat([h, graph.aggregate(self.phi_m(m) * m)], -1))

    def forward(self, h: Tensor, p: Tensor, graph) -> tuple[Tensor, Tensor]:
        p_i, p_j = graph.receivers(p), graph.senders(p)
        norm, dot = minkowski(p_i - p_j, p_i - p_j), minkowski(p_i, p_j)  # in p's dtype
        m = self.edge_model(
            graph.receivers(h), graph.senders(h), psi(norm).to(h.dtype), psi(dot).to(h.dtype)
        )
        p = self.coord_model(p, p_j, m, graph)
        h = self.node_model(h, m, graph)
        return graph.clean(h), graph.clean(p)


class LorentzNet(nn.Module):
    """Lorentz-equivariant graph network on each set of 4-momenta, summarised invariantly.

    ``x`` ``(B, N, in_features)``: (E, px, py, pz) in the first four features (metric
    diag(+1, −1, −1, −1)), invariant scalars (charge, particle type…) in the rest; mask
    ``(B, N)``; output ``(B, out_features)`` = ρ(pool h_i) after ``n_layers``
    `LorentzNetLayer` of width ``hidden``.  The initial h_i is a linear map of ψ(m_i²) =
    ψ(⟨p_i, p_i⟩) and the scalars.

    ``invariant_dtype`` (default float64) is the dtype in which the 4-vectors are carried and
    their Minkowski products computed, whatever the dtype of the network; ``None`` uses the
    network's dtype (the naive scheme, which float32 breaks under large boosts; needed only on
    devices without float64).  Give the 4-momenta in float64 too: a float32 copy of a boosted
    4-vector has already lost its mass.  ``edges`` as in `EGNN`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int = 64,
        n_layers: int = 4,
        pooling: str = "mean",
        coord_weight: float = 1e-3,
        edges: str = "auto",
        invariant_dtype: torch.dtype | None = torch.float64,
    ):
        super().__init__()
        if in_features < 4:
            raise ShapeError(f"LorentzNet reads (E, px, py, pz): in_features={in_features} < 4")
        width = _check_pooling(pooling)
        self.in_features, self.out_features = in_features, out_features
        self.pooling, self.edges, self.invariant_dtype = pooling, edges, invariant_dtype
        self.embed = nn.Linear(1 + in_features - 4, hidden)
        self.layers = nn.ModuleList(LorentzNetLayer(hidden, coord_weight) for _ in range(n_layers))
        self.rho = _mlp([width * hidden, hidden, out_features])

    def _propagate(self, x: Tensor, mask: Tensor | None):
        mask = _check_input(x, mask, self.in_features)
        graph = _graph(mask, self.edges)
        dtype = self.rho[0].weight.dtype
        nodes = graph.nodes(x)
        p = nodes[..., :4].to(self.invariant_dtype or dtype)
        mass2 = psi(minkowski(p, p)).to(dtype)
        h = graph.clean(self.embed(torch.cat([mass2, nodes[..., 4:].to(dtype)], -1)))
        for layer in self.layers:
            h, p = layer(h, p, graph)
        return graph, h, p

    def message_passing(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Node features ``(B, N, hidden)`` (invariant) and 4-vectors ``(B, N, 4)``
        (equivariant, in ``invariant_dtype``) after the last layer; padded slots are zero."""
        graph, h, p = self._propagate(x, mask)
        return graph.pad(h), graph.pad(p)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        graph, h, _ = self._propagate(x, mask)
        return self.rho(graph.pool(h, self.pooling))
