r"""`HistogramLikelihood`: SALLINO and MadMiner's histograms of learned observables.

SALLY (`ScoreEstimator`) learns the score t̂(x) ≈ t(x|θ_ref) = ∇_θ log p(x|θ)|θ_ref.  Near
θ_ref, log p(x|θ) = log p(x|θ_ref) + t(x|θ_ref)·δ + O(δ²) with δ = θ − θ_ref, so along the
direction n = δ/|δ| the one number h_n(x) = t̂(x)·n carries everything x says about θ to
first order in δ (local sufficiency).  SALLINO (Brehmer, Cranmer, Louppe & Pavez, PRD 98,
052004, 2018) then estimates the likelihood ratio of x by that of h_n,

    ℓ(x|θ) = log r̂(x|θ, θ_ref) = log p̂(h_n(x) | θ) − log p̂(h_n(x) | θ_ref),

with the one-dimensional densities of h_n estimated by histograms filled from simulations
at θ and at θ_ref.  Both densities are of the *same* variable, so no Jacobian enters: the
density of the unnormalised h = t̂·δ at θ, used alone as a likelihood, would carry an extra
−log|δ| per event (the scale of h changes with θ) and diverge at θ_ref.  With the same bins
at θ and θ_ref the bin widths cancel as well, and ℓ = log P̂_θ(b) − log P̂_θref(b) for the
bin b that holds h_n(x): a ratio of bin probabilities.

MadMiner's histogram likelihood of learned observables (``HistoLikelihood`` with
``score_components``, Brehmer, Kling, Espejo & Cranmer, CSBS 4, 3, 2020) is the other
``observable``: fixed bins of selected components of t̂ (one axis per component), the same at
every θ, and ℓ(x|θ) = log P̂_θ(b(t̂(x))): summed over events, Σ_b n_b log P̂_θ(b), the
multinomial log-likelihood of the observed bin counts.  MadMiner's rate term (a Poisson
factor for the total number of events) is left out: a simfer simulator has no cross
section.

Binning (MadMiner's rules, with one change).  By default the bin edges of each observable
are quantiles of the fill pooled over every θ of the grid (equal-population bins): 25 bins
for one observable, 8 per axis for two, 5 per axis for more, as MadMiner's defaults;
edges closer than 1e-9 merge (MadMiner drops such zero-width bins).  MadMiner cuts its
histograms at the 0.1 % and 99.9 % quantiles and folds what lies beyond into the edge bins
when it evaluates, but not when it fills; here the first and last bins are open (to ∓∞) in
both, so the fill and the evaluation agree.

Empty bins (``empty_bins``).  ``"jeffreys"`` (default) adds ½ to every count,
P̂ = (n_b + ½)/(N + B/2): finite everywhere, a bias of order 1/(N P) in log P̂.
``"epsilon"`` is MadMiner's rule: P̂ = n_b/N + 10⁻¹², normalised again; an event in a bin
that was empty at θ then costs log 10⁻¹² ≈ −27.6, which can dominate a likelihood.
``"raise"`` refuses histograms with an empty bin at any θ of the grid (use fewer bins or
more simulations).

θ between the grid's nodes.  Histograms are filled at the nodes of a grid (a product of
evenly spaced axes, one per parameter), and log P̂_θ(b) is interpolated between them by
cubic convolution (Keys, IEEE TASSP 29, 1981; Catmull–Rom weights on four nodes per axis,
linear extrapolation to a ghost node at each end): it passes through the nodes, has a
continuous gradient (for MAP and likelihood scans) and reproduces quadratics, so the
maximum of a likelihood is not tied to a node.  θ outside the grid is an error.

Simulations, and the noise they leave.  `from_simulator` simulates ``n_per_point`` events at
every node *with the same seed*: common random numbers, so neighbouring nodes share most of
their fluctuations and differences of ℓ across θ, which are what a posterior or a limit
sees, are far less noisy than each histogram.  `from_simulations` takes a table of
simulations made at the nodes of a grid (any store `simfer.load_simulations` reads);
independent fills leave each node its own noise: Var log P̂_θ(b) ≈ 1/n_b − 1/N, and over n
observed events Σ_i ℓ(x_i|θ) then jitters from node to node by about n/√N, so such a table
needs N ≫ n² simulations per node for smooth likelihood curves.

Errors of ℓ against the exact log r(x|θ, θ_ref), for an event in bin b: (i) binning: log r
varies inside the bin, by about |δ| times the bin's width in t; (ii) fill noise, the
standard deviation `log_likelihood(..., return_std=True)` gives (delta method on the counts,
fills taken as independent: an overstatement for differences across θ under common random
numbers); (iii) t̂ ≠ t, and the second-order terms: h_n is sufficient only to first order in
δ, so the error grows away from θ_ref wherever t(x|θ_ref) does not order events the way the
ratio at θ does.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from .. import __version__
from ..data import SimulationData
from ..errors import InvalidSimulationWarning, ModelFileError, ShapeError, SimferError, SupportError
from ..inference import EventTerm, Posterior
from ..prior import BoxUniform
from ..simulator import Simulator
from .embedding import observed_x
from .score import ScoreEstimator

__all__ = ["HistogramLikelihood"]

OBSERVABLES = ("sallino", "score")
EMPTY_BINS = ("jeffreys", "epsilon", "raise")
MADMINER_EPSILON = 1e-12
_MERGE_WIDTH = 1e-9  # edges closer than this merge (MadMiner's zero-width bins)
_QUANTILE_ROWS = 5_000_000  # torch.quantile's input limit is 2^24; thin out beyond this
_DIRECTION_CACHE = 1024
FORMAT = "simfer-histogram-likelihood"
FORMAT_VERSION = 1
_FILES = ("score.pt", "histograms.pt")

BinsSpec = int | Sequence[int | Sequence[float] | Tensor] | None


def default_bins(n_observables: int) -> int:
    """MadMiner's default number of bins per axis: 25 for one observable, 8 per axis for
    two, 5 per axis for more."""
    return 25 if n_observables == 1 else 8 if n_observables == 2 else 5


# -- the θ grid ------------------------------------------------------------------------------
def _keys_weights(position: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Cubic-convolution weights ``[b, 4]`` on the nodes ``[b, 4]`` of one evenly spaced
    axis of ``size`` nodes, at ``position`` ``[b]`` in units of the spacing from the first
    node; the end cells use a linearly extrapolated ghost node (two nodes: linear)."""
    cell = position.detach().floor().clamp(0, size - 2)
    t = position - cell
    t2, t3 = t * t, t * t * t
    w = [
        (-t3 + 2 * t2 - t) / 2,
        (3 * t3 - 5 * t2 + 2) / 2,
        (-3 * t3 + 4 * t2 + t) / 2,
        (t3 - t2) / 2,
    ]
    first, last = cell == 0, cell == size - 2
    # ghost node f(-1) = 2 f(0) - f(1), f(size) = 2 f(size-1) - f(size-2)
    w[1] = torch.where(first, w[1] + 2 * w[0], w[1])
    w[2] = torch.where(first, w[2] - w[0], w[2])
    w[0] = torch.where(first, torch.zeros_like(w[0]), w[0])
    w[2] = torch.where(last, w[2] + 2 * w[3], w[2])
    w[1] = torch.where(last, w[1] - w[3], w[1])
    w[3] = torch.where(last, torch.zeros_like(w[3]), w[3])
    nodes = cell.long()[:, None] + torch.arange(-1, 3, device=position.device)
    return nodes.clamp(0, size - 1), torch.stack(w, dim=1)


class _Grid:
    """The product of evenly spaced axes, one per parameter; nodes in C order (the last
    parameter varies fastest)."""

    def __init__(self, axes: Sequence[Tensor]):
        self.axes = [torch.as_tensor(a, dtype=torch.float64).flatten() for a in axes]
        for j, axis in enumerate(self.axes):
            if axis.numel() < 2:
                raise ShapeError(
                    f"grid axis {j} has {axis.numel()} value(s): the histograms need at least "
                    f"two θ values per parameter to interpolate between"
                )
            step = axis[1:] - axis[:-1]
            if not bool((step > 0).all()) or not torch.allclose(
                step, step[0].expand_as(step), rtol=1e-4, atol=0.0
            ):
                raise ShapeError(
                    f"grid axis {j} must be increasing and evenly spaced (e.g. torch.linspace"
                    f"(low, high, n)); got {axis.tolist()[:8]}{' …' if axis.numel() > 8 else ''}"
                )
        self.sizes = [a.numel() for a in self.axes]
        self.strides = [math.prod(self.sizes[j + 1 :]) for j in range(len(self.sizes))]

    @property
    def dim(self) -> int:
        return len(self.axes)

    @property
    def points(self) -> Tensor:
        """The nodes ``[K, theta_dim]``."""
        return torch.cartesian_prod(*self.axes).reshape(-1, self.dim)

    def describe(self) -> str:
        return " × ".join(f"[{a[0].item():g}, {a[-1].item():g}]" for a in self.axes)

    def check_inside(self, theta: Tensor, what: str = "θ") -> None:
        theta = theta.detach().double().cpu()
        for j, axis in enumerate(self.axes):
            slack = 1e-6 * float(axis[1] - axis[0])
            outside = (theta[:, j] < axis[0] - slack) | (theta[:, j] > axis[-1] + slack)
            if bool(outside.any()):
                value = theta[outside][0].tolist()
                raise SupportError(
                    f"{what} = {value} lies outside the θ grid the histograms were filled on "
                    f"({self.describe()}): fill them on a grid that covers it, or keep θ "
                    f"(the prior) inside the grid"
                )

    def weights(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """Interpolation nodes ``[b, 4^d]`` (flat indices) and weights ``[b, 4^d]`` (in θ's
        dtype, differentiable in θ) of θ ``[b, d]``."""
        self.check_inside(theta)
        index = torch.zeros(theta.shape[0], 1, dtype=torch.long, device=theta.device)
        weight = torch.ones(theta.shape[0], 1, dtype=theta.dtype, device=theta.device)
        for j, axis in enumerate(self.axes):
            low, step = float(axis[0]), float(axis[1] - axis[0])
            nodes, w = _keys_weights((theta[:, j] - low) / step, self.sizes[j])
            index = (index[:, :, None] + self.strides[j] * nodes[:, None, :]).flatten(1)
            weight = (weight[:, :, None] * w[:, None, :]).flatten(1)
        return index, weight

    def node_of(self, theta: Tensor) -> Tensor:
        """The flat node index ``[b]`` of θ rows that sit on nodes; an error otherwise."""
        theta = theta.double().cpu()
        index = torch.zeros(theta.shape[0], dtype=torch.long)
        for j, axis in enumerate(self.axes):
            step = float(axis[1] - axis[0])
            k = torch.round((theta[:, j] - axis[0]) / step).long()
            off = (k < 0) | (k >= axis.numel())
            off |= (theta[:, j] - axis[k.clamp(0, axis.numel() - 1)]).abs() > 1e-4 * step
            if bool(off.any()):
                raise ShapeError(
                    f"θ = {theta[off][0].tolist()} is not a node of the grid {self.describe()}"
                )
            index += self.strides[j] * k
        return index


def _axes_of(grid: Any, theta_dim: int) -> list[Tensor]:
    """The user's ``grid``: one axis (a 1-d sequence) for a one-parameter model, or one
    axis per parameter."""
    if isinstance(grid, Tensor) and grid.ndim == 1:
        axes = [grid]
    elif isinstance(grid, Tensor) and grid.ndim == 2 and grid.shape[1] == 1:
        axes = [grid[:, 0]]
    elif isinstance(grid, Sequence) and len(grid) and not isinstance(grid[0], int | float):
        axes = [torch.as_tensor(a) for a in grid]
    else:
        axes = [torch.as_tensor(grid)]
    if len(axes) != theta_dim:
        raise ShapeError(
            f"grid needs one evenly spaced axis per parameter ({theta_dim}), e.g. "
            f"[torch.linspace(-1, 1, 41)]{' * ' + str(theta_dim) if theta_dim > 1 else ''}; "
            f"got {len(axes)}"
        )
    return axes


def _grid_of_table(theta: Tensor) -> list[Tensor]:
    """The axes of a table's θ rows, which must fill a product of evenly spaced axes."""
    axes = [torch.unique(theta[:, j].double()) for j in range(theta.shape[1])]
    nodes = torch.unique(theta.double(), dim=0).shape[0]
    if nodes != math.prod(a.numel() for a in axes):
        raise ShapeError(
            f"the θ of these simulations take {nodes} distinct values, which do not fill a "
            f"grid (product of the {[a.numel() for a in axes]} values per parameter): simulate "
            f"at every node of a grid, or use HistogramLikelihood.from_simulator"
        )
    return axes


# -- histograms ------------------------------------------------------------------------------
@dataclass
class _Histograms:
    """One binning and the bin probabilities at every node: interior ``edges`` per axis
    (the outer bins are open), ``log_p`` and its fill variance ``var`` ``[K, B]`` (B the
    flat number of bins, C order over the axes)."""

    edges: list[Tensor]
    log_p: Tensor
    var: Tensor

    def bins(self, values: Tensor) -> Tensor:
        """The flat bin ``[r]`` of each row of ``values`` ``[r, m]``."""
        flat = torch.zeros(values.shape[0], dtype=torch.long, device=values.device)
        for j, edges in enumerate(self.edges):
            edges = edges.to(values.device, values.dtype)
            flat = flat * (edges.numel() + 1) + torch.bucketize(
                values[:, j].contiguous(), edges, right=True
            )
        return flat


def _quantile_edges(values: Tensor, n_bins: int) -> Tensor:
    """Interior edges of ``n_bins`` equal-population bins of ``values`` ``[M]``."""
    values = values.detach().double()
    if values.numel() > _QUANTILE_ROWS:  # torch.quantile takes at most 2^24 values
        values = values[:: math.ceil(values.numel() / _QUANTILE_ROWS)]
    levels = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64, device=values.device)[1:-1]
    edges = torch.quantile(values, levels)
    # an edge on a repeated fill value (common random numbers repeat values across nodes)
    # moves half-way to the nearer distinct neighbour, so no fill value sits on an edge and
    # the bins of −h mirror those of h
    distinct = torch.unique(values)
    if distinct.numel() < 3:
        return edges
    at = torch.searchsorted(distinct, edges).clamp(1, distinct.numel() - 2)
    value, below, above = distinct[at], distinct[at - 1], distinct[at + 1]
    nearer = torch.where(value - below <= above - value, below, above)
    return torch.where(value == edges, (value + nearer) / 2, edges)


def _merged(edges: Tensor) -> Tensor:
    edges = torch.unique(edges.double())  # sorted
    if edges.numel() < 2:
        return edges
    keep = torch.cat([torch.ones(1, dtype=torch.bool), (edges[1:] - edges[:-1]) > _MERGE_WIDTH])
    return edges[keep.to(edges.device)]


def _bin_specs(bins: BinsSpec, n_observables: int) -> list[int | Tensor]:
    if bins is None:
        return [default_bins(n_observables)] * n_observables
    if isinstance(bins, int):
        specs: list = [bins] * n_observables
    else:
        specs = list(bins)
    if len(specs) != n_observables:
        raise ShapeError(f"bins: one entry per observable ({n_observables}), got {len(specs)}")
    out: list[int | Tensor] = []
    for spec in specs:
        if isinstance(spec, int):
            if spec < 2:
                raise ValueError(f"bins: at least 2 bins per observable, got {spec}")
            out.append(spec)
        else:
            edges = torch.as_tensor(spec, dtype=torch.float64).flatten()
            if edges.numel() < 3 or not bool((edges[1:] > edges[:-1]).all()):
                raise ValueError(
                    "bins: explicit edges must increase and number at least 3 (two bins); the "
                    "first and last bins are open, so only the interior edges matter"
                )
            out.append(edges[1:-1])
    return out


def _fill(
    values: Tensor, node: Tensor, n_nodes: int, specs: list[int | Tensor], empty_bins: str
) -> _Histograms:
    """Bin ``values`` ``[M, m]`` (the node of each row in ``node`` ``[M]``) and turn the
    counts at each node into log-probabilities by the empty-bin policy."""
    edges = [
        _merged(_quantile_edges(values[:, j], spec) if isinstance(spec, int) else spec)
        for j, spec in enumerate(specs)
    ]
    histograms = _Histograms(edges, torch.empty(0), torch.empty(0))
    n_bins = math.prod(e.numel() + 1 for e in edges)
    flat = histograms.bins(values.double())
    counts = torch.bincount(node * n_bins + flat, minlength=n_nodes * n_bins)
    counts = counts.reshape(n_nodes, n_bins).double()
    total = counts.sum(1, keepdim=True)
    if empty_bins == "raise" and bool((counts == 0).any()):
        empty = int((counts == 0).sum())
        nodes = int((counts == 0).any(1).sum())
        raise SimferError(
            f"{empty} of the {n_nodes * n_bins} bins are empty (at {nodes} of the {n_nodes} "
            f"θ nodes): use fewer bins, more simulations per node, or empty_bins='jeffreys' "
            f"(adds ½ to every count) or 'epsilon' (MadMiner's 1e-12)"
        )
    if empty_bins == "jeffreys":
        counts, total = counts + 0.5, total + 0.5 * n_bins
        p = counts / total
    elif empty_bins == "epsilon":
        p = counts / total + MADMINER_EPSILON
        p = p / p.sum(1, keepdim=True)
    else:
        p = counts / total
    var = torch.where(counts > 0, 1 / counts - 1 / total, torch.full_like(counts, math.inf))
    histograms.log_p, histograms.var = p.log(), var.clamp_min(0)
    return histograms


# -- the likelihood --------------------------------------------------------------------------
class HistogramLikelihood:
    """ℓ(x|θ) from histograms of SALLY's learnt observables (see the module docstring).

    Build it with `from_simulator` or `from_simulations` (or `load`); the constructor takes
    what they compute.

    Args:
        score: a trained `ScoreEstimator` (SALLY) without a design.
        grid: one evenly spaced axis per parameter (a 1-d tensor for one parameter).
        observables: t̂ of every simulated event ``[M, theta_dim]``.
        node: the flat grid node each event was simulated at ``[M]``.
        observable: ``"sallino"`` (h = t̂·n, n = (θ − θ_ref)/|θ − θ_ref|) or ``"score"``
            (the components of t̂ in ``components``, MadMiner's histograms).
        components: for ``"score"``, the components of t̂ to histogram (default: all).
        bins: bins per observable: an int for all, or one entry per observable, an int
            (equal-population bins of the pooled fill) or explicit edges (the first and
            last bins are open); default MadMiner's 25 / 8 / 5 per axis.
        empty_bins: ``"jeffreys"``, ``"epsilon"`` or ``"raise"`` (the module docstring).
    """

    def __init__(
        self,
        score: ScoreEstimator,
        grid: Any,
        observables: Tensor,
        node: Tensor,
        *,
        observable: str = "sallino",
        components: Sequence[int] | None = None,
        bins: BinsSpec = None,
        empty_bins: str = "jeffreys",
    ):
        _check_score(score)
        theta_dim = score.dims.theta_dim
        if observable not in OBSERVABLES:
            raise ValueError(f"unknown observable {observable!r}; available: {OBSERVABLES}")
        if empty_bins not in EMPTY_BINS:
            raise ValueError(f"unknown empty_bins {empty_bins!r}; available: {EMPTY_BINS}")
        if observable == "sallino" and components is not None:
            raise ValueError("components is for observable='score'; SALLINO projects all of t̂")
        if components is None:
            components = list(range(theta_dim))
        components = [int(c) for c in components]
        if (
            not components
            or len(set(components)) != len(components)
            or not all(0 <= c < theta_dim for c in components)
        ):
            raise ValueError(
                f"components must be distinct indices of t̂ in 0…{theta_dim - 1}, got {components}"
            )
        self.score = score
        self.observable = observable
        self.components = components
        self.empty_bins = empty_bins
        self._grid = _Grid(_axes_of(grid, theta_dim))
        self.observables = torch.as_tensor(observables).detach().double().cpu()
        self.node = torch.as_tensor(node).long().cpu()
        n_nodes = self.grid.shape[0]
        if self.observables.ndim != 2 or self.observables.shape[1] != theta_dim:
            raise ShapeError(
                f"observables must be t̂ [M, {theta_dim}], got {list(self.observables.shape)}"
            )
        if self.node.shape != self.observables.shape[:1]:
            raise ShapeError("node must give the grid node of every row of observables")
        counts = torch.bincount(self.node, minlength=n_nodes)
        if counts.numel() > n_nodes or bool((counts == 0).any()):
            raise SimferError(
                "every node of the grid needs simulations (some have none, or a node index is "
                "out of range)"
            )
        self.theta_ref = score.theta_ref.detach().cpu().double()
        if observable == "sallino":  # its ratio needs the histograms at θ_ref
            self._grid.check_inside(self.theta_ref[None], what="θ_ref (SALLY's reference point)")
        n_observables = 1 if observable == "sallino" else len(components)
        self._bin_specs = _bin_specs(bins, n_observables)
        self._histograms: dict[tuple[float, ...], _Histograms] = {}
        if observable == "score":
            self._fixed = _fill(
                self.observables[:, components], self.node, n_nodes, self._bin_specs, empty_bins
            )

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_simulator(
        cls,
        score: ScoreEstimator,
        simulator: Simulator,
        grid: Any,
        *,
        n_per_point: int = 20_000,
        seed: int = 0,
        batch_size: int = 65_536,
        **options: Any,
    ) -> HistogramLikelihood:
        """Simulate ``n_per_point`` events at every node of ``grid``, all with the same
        ``seed`` (common random numbers: the module docstring), evaluate t̂ on them and
        fill the histograms.  ``options``: of the constructor (``observable``, …).  Rows with
        NaN or inf x are dropped with an `InvalidSimulationWarning`."""
        _check_score(score)
        if int(n_per_point) < 1:
            raise ValueError(f"n_per_point must be positive, got {n_per_point}")
        axes = _axes_of(grid, score.dims.theta_dim)
        points = _Grid(axes).points.to(torch.get_default_dtype())
        observables, nodes, dropped = [], [], 0
        for k, theta in enumerate(points):
            x = simulator.simulate(theta.expand(int(n_per_point), -1).clone(), seed=seed)
            if isinstance(x, Tensor):
                finite = torch.isfinite(x.flatten(1)).all(1)
                dropped += int((~finite).sum())
                x = x[finite]
            t = _score_of(score, x, batch_size)
            observables.append(t)
            nodes.append(torch.full((t.shape[0],), k, dtype=torch.long))
        if dropped:
            warnings.warn(
                f"{dropped} of {len(points) * int(n_per_point)} simulations returned NaN or inf "
                f"and were left out of the histograms",
                InvalidSimulationWarning,
                stacklevel=2,
            )
        return cls(score, axes, torch.cat(observables), torch.cat(nodes), **options)

    @classmethod
    def from_simulations(
        cls,
        score: ScoreEstimator,
        data: SimulationData | str | os.PathLike,
        *,
        batch_size: int = 65_536,
        **options: Any,
    ) -> HistogramLikelihood:
        """Fill the histograms from a table of simulations made at the nodes of a grid (a
        `SimulationData`, or the path of anything `simfer.load_simulations` reads): its θ
        rows must fill a product of evenly spaced axes; invalid rows are left out.  Each
        node's fill is independent, so mind the n/√N noise (the module docstring)."""
        _check_score(score)
        if not isinstance(data, SimulationData):
            from ..store import load_simulations

            data = load_simulations(data)
        data = data.valid_only()
        if len(data) == 0:
            raise SimferError("no valid simulations to fill the histograms with")
        theta = data.theta
        if theta.ndim != 2 or theta.shape[1] != score.dims.theta_dim:
            raise ShapeError(
                f"the simulations' θ must be [n, {score.dims.theta_dim}] for this score model, "
                f"got {list(theta.shape)}"
            )
        axes = _grid_of_table(theta)
        node = _Grid(axes).node_of(theta)
        return cls(score, axes, _score_of(score, data.x, batch_size), node, **options)

    # -- evaluation --------------------------------------------------------------------------
    @property
    def grid(self) -> Tensor:
        """The θ nodes the histograms were filled at ``[K, theta_dim]``."""
        return self._grid.points

    @property
    def axes(self) -> list[Tensor]:
        """The grid's axis, one per parameter."""
        return list(self._grid.axes)

    @property
    def theta_dim(self) -> int:
        return self._grid.dim

    def events_per_node(self) -> Tensor:
        """The number of simulations filled at each node ``[K]``."""
        return torch.bincount(self.node, minlength=self.grid.shape[0])

    def edges(self, theta: Any = None) -> list[Tensor]:
        """The interior bin edges of each observable (the outer bins are open): for
        SALLINO those of the direction of θ ``[theta_dim]`` from θ_ref."""
        if self.observable == "score":
            return list(self._fixed.edges)
        if theta is None:
            raise ValueError("SALLINO's bins depend on the direction of θ − θ_ref: pass theta")
        theta = torch.as_tensor(theta, dtype=torch.float64).reshape(1, -1)
        return list(self._sallino(self._directions(theta)[0]).edges)

    def _directions(self, theta: Tensor) -> Tensor:
        """n = (θ − θ_ref)/|θ − θ_ref| per row ``[b, d]`` (e_1 at θ_ref), float64, detached."""
        delta = theta.detach().double().cpu() - self.theta_ref
        norm = delta.norm(dim=1, keepdim=True)
        first = torch.zeros_like(delta)
        first[:, 0] = 1.0
        return torch.where(norm > 0, delta / norm.clamp_min(1e-300), first)

    def _sallino(self, direction: Tensor) -> _Histograms:
        key = tuple(round(float(v), 9) for v in direction)
        if key not in self._histograms:
            if len(self._histograms) >= _DIRECTION_CACHE:
                self._histograms.clear()
            h = self.observables @ torch.tensor(key, dtype=torch.float64)
            self._histograms[key] = _fill(
                h[:, None], self.node, self.grid.shape[0], self._bin_specs, self.empty_bins
            )
        return self._histograms[key]

    def log_likelihood(self, *, x: Any, theta: Any, return_std: bool = False):
        """ℓ(x|θ) ``[batch]``: for SALLINO the estimated log r(x|θ, θ_ref), for
        ``"score"`` the log-probability of t̂(x)'s bin at θ (log p(x|θ) up to a term free of
        θ); differentiable in θ.  x ``[batch, *x_shape]`` (or one), θ ``[batch,
        theta_dim]`` (or one ``[theta_dim]`` for all rows).  With ``return_std``, also the
        standard deviation of ℓ from the finite fill (the module docstring)."""
        t = self.score.score(x=x).double()
        theta = torch.as_tensor(theta)
        if not theta.is_floating_point():
            theta = theta.to(torch.get_default_dtype())
        theta = theta.to(t.device)
        if theta.ndim == 1 and theta.shape[0] == self.theta_dim:
            theta = theta[None].expand(t.shape[0], -1)
        if theta.ndim != 2 or theta.shape[1] != self.theta_dim or theta.shape[0] != t.shape[0]:
            raise ShapeError(
                f"theta must be [{self.theta_dim}] or [batch, {self.theta_dim}] with the batch of "
                f"x ({t.shape[0]}), got {list(theta.shape)}"
            )
        value, std = self._log_likelihood(t, theta, return_std)
        return (value, std) if return_std else value

    def _log_likelihood(self, t: Tensor, theta: Tensor, with_std: bool):
        index, weight = self._grid.weights(theta)
        value = theta.new_zeros(theta.shape[0])
        std = torch.zeros(theta.shape[0], dtype=torch.float64) if with_std else None
        if self.observable == "score":
            groups = [(torch.arange(theta.shape[0]), None)]
        else:  # one group of rows per direction of θ − θ_ref (two in one dimension)
            unique, inverse = torch.unique(self._directions(theta), dim=0, return_inverse=True)
            groups = [(torch.nonzero(inverse == g).flatten(), n) for g, n in enumerate(unique)]
            reference = self._grid.weights(self.theta_ref[None].to(theta.device, theta.dtype))
        for rows, direction in groups:
            rows = rows.to(theta.device)
            if direction is None:
                histograms, values = self._fixed, t[rows][:, self.components]
            else:
                histograms = self._sallino(direction)
                values = (t[rows] @ direction.to(t.device))[:, None]
            bins = histograms.bins(values).cpu()
            nodes, w = index[rows].cpu(), weight[rows]
            if direction is not None:  # subtract ℓ at θ_ref: the same bins, its own weights
                ref_nodes = reference[0].cpu().expand(len(rows), -1)
                nodes = torch.cat([nodes, ref_nodes], dim=1)
                w = torch.cat([w, -reference[1].to(w).expand(len(rows), -1)], dim=1)
            log_p = histograms.log_p[nodes, bins[:, None]].to(w.device, w.dtype)
            value = value.index_put((rows,), (w * log_p).sum(1))
            if with_std:
                var = histograms.var[nodes, bins[:, None]]
                c = w.detach().double().cpu()
                same = nodes[:, :, None] == nodes[:, None, :]  # merge repeated nodes
                coupled = (c[:, :, None] * c[:, None, :] * same).sum(2)
                contribution = torch.where(coupled == 0, torch.zeros_like(var), coupled * var)
                std[rows.cpu()] = contribution.sum(1).clamp_min(0).sqrt()
        return value, std

    # -- posteriors --------------------------------------------------------------------------
    def event_term(self, prior: Distribution, x_obs: Any, *, design: Any = None) -> EventTerm:
        """ℓ(x|θ) as the per-event term of a posterior (`simfer.inference.term`); a
        `BoxUniform` prior must lie inside the grid."""
        if design is not None:
            raise ShapeError(
                "HistogramLikelihood takes no design: its score model and histograms are for "
                "one experiment"
            )
        if isinstance(prior, BoxUniform):
            corners = torch.stack([prior.low, prior.high]).detach().double().cpu()
            self._grid.check_inside(corners, what="a corner of the prior's box")
        network = self.score._require_fitted()
        x_obs, x_shape, as_x = observed_x(x_obs, self.score.dims, next(network.parameters()))

        def log_likelihood(x: Tensor, theta: Tensor, design: Tensor | None) -> Tensor:
            return self.log_likelihood(x=as_x(x), theta=theta)

        return EventTerm(log_likelihood, x_obs, x_shape, model=self)

    def posterior(
        self, prior: Distribution, x_obs: Any, *, design: Any = None, **options: Any
    ) -> Posterior:
        """p(θ | x_obs) ∝ p(θ) Π_i exp ℓ(x_i|θ) for one or ``[n, *x_shape]`` iid
        observations (`simfer.inference.Posterior`; ``options`` are its keyword arguments,
        e.g. ``max_rows``); ``design`` must be None."""
        if prior is None:
            raise SimferError("HistogramLikelihood.posterior needs the prior")
        term = self.event_term(prior, x_obs, design=design)
        return Posterior.from_term(term, prior, device=self.score.device, **options)

    def to(self, device: str | torch.device) -> HistogramLikelihood:
        """Move the score model to ``device`` (the histograms stay on the CPU: they are
        looked up, not computed with)."""
        self.score.to(device)
        return self

    # -- files -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write a folder: ``score.pt`` (the score model, `Estimator.save`) and
        ``histograms.pt`` (the grid, t̂ of the fill and the settings: tensors and JSON)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.score.save(path / _FILES[0])
        settings = {
            "observable": self.observable,
            "components": None if self.observable == "sallino" else self.components,
            "bins": [s if isinstance(s, int) else s.tolist() for s in self._bin_specs],
            "explicit_edges": [not isinstance(s, int) for s in self._bin_specs],
            "empty_bins": self.empty_bins,
        }
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "simfer_version": __version__,
            "settings": json.dumps(settings),
            "axes": [a.clone() for a in self._grid.axes],
            "observables": self.observables.float(),
            "node": self.node.int(),
        }
        tmp = path / (_FILES[1] + ".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path / _FILES[1])

    @classmethod
    def load(
        cls, path: str | os.PathLike, device: str | torch.device = "cpu"
    ) -> HistogramLikelihood:
        """Read a folder written by `save` (never runs code from it: ``weights_only``)."""
        path = Path(path)
        missing = [name for name in _FILES if not (path / name).exists()]
        if missing:
            raise FileNotFoundError(
                f"'{path}' is not a saved HistogramLikelihood: {', '.join(missing)} missing"
            )
        score = ScoreEstimator.load(path / _FILES[0], device=device)
        try:
            payload = torch.load(path / _FILES[1], map_location="cpu", weights_only=True)
        except Exception as error:
            raise ModelFileError(
                f"'{path / _FILES[1]}' is not a readable histogram file ({type(error).__name__}); "
                f"it may be truncated or hold pickled objects, which simfer never loads"
            ) from error
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ModelFileError(f"'{path / _FILES[1]}' is not a simfer histogram file")
        if int(payload.get("format_version", -1)) > FORMAT_VERSION:
            raise ModelFileError(
                f"'{path / _FILES[1]}' was written by a newer simfer "
                f"({payload.get('simfer_version')}): upgrade simfer to read it"
            )
        settings = json.loads(payload["settings"])
        bins = [
            torch.tensor([-math.inf, *spec, math.inf]) if explicit else spec
            for spec, explicit in zip(settings["bins"], settings["explicit_edges"], strict=True)
        ]
        return cls(
            score,
            payload["axes"],
            payload["observables"],
            payload["node"],
            observable=settings["observable"],
            components=settings["components"],
            bins=bins,
            empty_bins=settings["empty_bins"],
        )

    def __repr__(self) -> str:
        return (
            f"HistogramLikelihood(observable={self.observable!r}, grid {self._grid.describe()} "
            f"({self.grid.shape[0]} nodes), {self.observables.shape[0]} simulations)"
        )


def _check_score(score: Any) -> None:
    if not isinstance(score, ScoreEstimator):
        raise TypeError(
            f"HistogramLikelihood needs a trained ScoreEstimator, got {type(score).__name__}"
        )
    score._require_fitted()
    if score.design_dim:
        raise ShapeError(
            "HistogramLikelihood takes a score model without a design (this one conditions on "
            f"a design [{score.design_dim}]): fill histograms for one experiment at a time"
        )


def _score_of(score: ScoreEstimator, x: Any, batch_size: int) -> Tensor:
    """t̂(x) ``[n, theta_dim]`` in batches, on the CPU in float64."""
    if not isinstance(x, Tensor):
        return score.score(x=x).detach().double().cpu()
    parts = [
        score.score(x=x[start : start + batch_size]).detach().double().cpu()
        for start in range(0, x.shape[0], batch_size)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, score.dims.theta_dim, dtype=torch.float64)
