"""`RatioEstimator`: a network for log r̂(x|θ0,θ1) trained with one loss of `simfer.losses`.

The network g(x, θ0[, θ1]) outputs the log likelihood ratio directly (a logit).
With a fixed reference θ1 = θ_ref (every row of the data has the same θ_ref) it is
single-parameterized, g(x, θ0); otherwise θ1 is an input too.  The score of the
model, t̂(x|θ0) = ∇θ0 log r̂(x|θ0,θ1), is its autograd gradient, which the
score-augmented losses (RASCAL, CASCAL, ALICES) regress on the joint score.

The NRE family learns log p(x|θ)/p(x) from (θ, x) pairs without gold or a reference
class; log r̂(x|θ0,θ1) is then g(x,θ0) − g(x,θ1).  ``nre`` and ``bnre`` contrast each
pair with one pair whose θ comes from another row of the batch; ``nre_b`` and ``nre_c``
with K "atoms" per x (θ of K − 1 other rows; NRE-C adds K more, all independent of x).
NRE-B pins g only up to a function c(x), which cancels in every posterior and every
ratio between two θ but not in log p(x|θ)/p(x) itself, so ``reference="marginal"``
is refused for it; NRE-C's extra class fixes c(x) = 0.

Every evaluation names its reference: ``log_ratio(x=, theta=, reference=θ1)`` is
log r̂(x|θ, θ1) for every method (a single-parameterized estimator chains through its
θ_ref, log r(x|θ,θ1) = log r(x|θ,θ_ref) − log r(x|θ1,θ_ref)), and ``reference="marginal"``
asks an NRE for log p(x|θ)/p(x).  With a design column the network is g(s(x), θ0[, θ1], d)
and every ratio is at that design: p(x|θ0,d)/p(x|θ1,d).

Each method is one row of `METHODS`: its loss, and whether it needs gold, the joint
score, and the reference class.

An ensemble (``n_ensemble`` > 1) trains E members in one batched pass; their mean
is the estimate and their standard deviation an uncertainty.

An ``embedding`` summarises x before the network sees it, s = e(x), and is trained
jointly: g(e(x), θ0[, θ1]).  It is required for set-valued x (a set embedding called as
``embedding(x, mask)``, see `simfer.estimators.embedding`) and is computed once per
batch even when a loss evaluates g at several θ.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from .. import losses
from ..data import RaggedSets, SimulationData
from ..errors import SimferError
from ..inference import EventTerm
from ..nn import EnsembleMLP, Standardize
from ..nn.mlp import check_activation, check_residual_widths, mlp_widths
from ..prior import describe_prior
from ..seeding import seeded
from ..streaming import Moments, StoredSimulations, StreamedRows, hashed_uniform
from ..training import fit_network
from .base import Estimator
from .dims import Dims
from .embedding import EmbeddingMixin, check_no_ensemble, design_column, observed_x, x_batch
from .rows import (
    TrainingData,
    as_batch,
    pair_rows,
    streamed_x_dims,
    training_source,
    training_table,
    x_column,
)

__all__ = ["METHODS", "RatioEstimator", "RatioMethod", "RatioNetwork"]


@dataclass(frozen=True)
class _Member:
    """One ensemble member's outputs on a batch, as the losses take them."""

    log_r: Tensor | None = None  # [batch]: log r̂(x|θ0, θ1) (reference-class methods)
    score: Tensor | None = None  # [batch, d]: t̂(x|θ0)
    score_ref: Tensor | None = None  # [batch, d]: t̂(x|θ1)
    joint: Tensor | None = None  # [batch] (or [batch, K] atoms): g(x, θ), column 0 the true θ
    marginal: Tensor | None = None  # [batch] (or [batch, K]): g(x, θ') with θ' of other rows
    weight: Tensor | None = None  # [batch]: bootstrap weights while training


@dataclass(frozen=True)
class RatioMethod:
    """A ratio method: its loss ``(member, batch, alpha, options) → scalar`` (``options``
    the estimator's ``bnre_lambda`` and ``gamma``), what it needs from the data (gold, the
    joint score, the reference class of ``simulate(..., theta_ref=...)``), how many blocks
    of K atoms per x it contrasts (0: one rolled pair, NRE-A/BNRE), whether its
    log r̂ to the marginal p(x) is normalised (every method but NRE-B), its network's
    default activation, and the training settings it uses unless the user gives them
    (those of `simfer.training.TrainingConfig` otherwise), as `PosteriorMethod`'s."""

    loss: Callable[[_Member, dict[str, Tensor], float | None, dict[str, float]], Tensor]
    needs_gold: bool
    needs_score: bool
    needs_reference: bool
    atom_blocks: int = 0
    normalised: bool = True
    activation: str = "silu"
    training: dict[str, Any] = field(default_factory=dict)


def _gold_score(m: _Member, batch: dict[str, Tensor]) -> dict[str, Tensor | None]:
    joint_score_ref = batch.get("joint_score_ref")  # None: MadMiner's samples without t_xz1
    return {
        "score_ref": None if joint_score_ref is None else m.score_ref,
        "joint_score_ref": joint_score_ref,
        "weight": m.weight,
    }


def _ratio_and_score(loss: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """A loss on the log ratio and the score with both gold targets (RASCAL, ALICES)."""

    def member_loss(m: _Member, b: dict[str, Tensor], alpha: float | None, o: dict) -> Tensor:
        return loss(
            m.log_r,
            b["from_reference"],
            b["joint_log_ratio"],
            m.score,
            b["joint_score"],
            alpha,
            **_gold_score(m, b),
        )

    return member_loss


def _nre_family(loss: Callable[..., Tensor], **contrasts: Any) -> RatioMethod:
    """A method of the NRE family: (θ, x) pairs only, no gold, no reference class, ReLU,
    minibatches of 128."""
    return RatioMethod(
        loss,
        needs_gold=False,
        needs_score=False,
        needs_reference=False,
        activation="relu",
        training={"batch_size": 128},
        **contrasts,
    )


METHODS: dict[str, RatioMethod] = {
    "carl": RatioMethod(
        lambda m, b, alpha, o: losses.carl(m.log_r, b["from_reference"], weight=m.weight),
        needs_gold=False,
        needs_score=False,
        needs_reference=True,
    ),
    "rolr": RatioMethod(
        lambda m, b, alpha, o: losses.rolr(
            m.log_r, b["from_reference"], b["joint_log_ratio"], weight=m.weight
        ),
        needs_gold=True,
        needs_score=False,
        needs_reference=True,
    ),
    "alice": RatioMethod(
        lambda m, b, alpha, o: losses.alice(m.log_r, b["joint_log_ratio"], weight=m.weight),
        needs_gold=True,
        needs_score=False,
        needs_reference=True,
    ),
    "rascal": RatioMethod(
        _ratio_and_score(losses.rascal), needs_gold=True, needs_score=True, needs_reference=True
    ),
    "cascal": RatioMethod(
        lambda m, b, alpha, o: losses.cascal(
            m.log_r, b["from_reference"], m.score, b["joint_score"], alpha, **_gold_score(m, b)
        ),
        needs_gold=True,
        needs_score=True,
        needs_reference=True,
    ),
    "alices": RatioMethod(
        _ratio_and_score(losses.alices), needs_gold=True, needs_score=True, needs_reference=True
    ),
    "nre": _nre_family(lambda m, b, alpha, o: losses.nre_a(m.joint, m.marginal, weight=m.weight)),
    "bnre": _nre_family(
        lambda m, b, alpha, o: losses.bnre(m.joint, m.marginal, o["bnre_lambda"], weight=m.weight)
    ),
    "nre_b": _nre_family(
        lambda m, b, alpha, o: losses.nre_b(m.joint, weight=m.weight),
        atom_blocks=1,
        normalised=False,
    ),
    "nre_c": _nre_family(
        lambda m, b, alpha, o: losses.nre_c(m.joint, m.marginal, o["gamma"], weight=m.weight),
        atom_blocks=2,
    ),
}

MARGINAL = "marginal"

#: P(K ≤ k) of K ~ Poisson(1), k = 0 … 19 (beyond, the tail is below 10⁻¹⁸)
_POISSON_ONE_CDF = np.cumsum([math.exp(-1) / math.factorial(k) for k in range(20)])


def poisson_one_weights(rows: Tensor, seed: int, members: int) -> Tensor:
    """Bootstrap weights ``[m, members]`` of the rows at run positions ``rows`` ``[m]``:
    Poisson(1) draws by inversion of a seeded hash of the row (`hashed_uniform`), so a
    streamed fit gives a row the same weights in every epoch without holding them."""
    weights = [
        np.searchsorted(_POISSON_ONE_CDF, hashed_uniform(rows, seed, stream=2 + e), side="right")
        for e in range(members)
    ]
    return torch.from_numpy(np.stack(weights, axis=1).astype(np.float64))


def _atom_logits(
    network: RatioNetwork, summary: Tensor, theta: Tensor, shifts: range, design: Tensor | None
) -> Tensor:
    """g(s(x_i), θ_{i−s}) ``[E, batch, len(shifts)]``: for each shift s, θ ``[batch, d]``
    rolled by s over the (shuffled) batch, so s = 0 is the pair drawn jointly and every
    s ≢ 0 (mod batch) a parameter drawn independently of x_i; s(x) is computed once."""
    n, k = theta.shape[0], len(shifts)
    rolled = torch.cat([torch.roll(theta, s, dims=0) for s in shifts])
    repeated = None if design is None else design.repeat(k, 1)
    logits = network.head(summary.repeat(k, 1), rolled, design=repeated)  # [E, k·batch]
    return logits.view(logits.shape[0], k, n).transpose(1, 2)


def _atoms_in_batch(num_atoms: int, batch: int, blocks: int) -> int:
    """K for a batch of ``batch`` rows: ``num_atoms``, fewer when the batch cannot give
    each x ``blocks``·K − 1 parameters of other rows (a short last batch), and never
    below 2 for NRE-B (one block), whose loss needs a contrast; the optimum r̂ = r holds
    for every K."""
    k = min(num_atoms, max(batch // blocks, 1))
    return max(k, 2) if blocks == 1 else k


def _member_leaf(theta: Tensor, n_members: int, requires_grad: bool) -> Tensor:
    """θ ``[batch, d]`` copied per member ``[E, batch, d]`` as a leaf, so autograd gives each
    member its own score."""
    return theta.expand(n_members, *theta.shape).detach().clone().requires_grad_(requires_grad)


class RatioNetwork(nn.Module):
    """g(s(x), θ0[, θ1][, d]) → log r̂ ``[E, batch]``; θ and d standardised by stored
    buffers, and s(x) either x standardised the same way or the output ``[batch, x_dim]``
    of an embedding."""

    def __init__(
        self,
        x_dim,
        theta_dim,
        double,
        hidden,
        n_members,
        embedding=None,
        design_dim=0,
        activation="silu",
        residual=False,
    ):
        super().__init__()
        self.n_members = n_members
        self.double = double
        self.embedding = embedding
        self.x_standardize = Standardize(x_dim) if embedding is None else None
        self.theta_standardize = Standardize(theta_dim)
        if design_dim:  # registered only with a design: design-free files keep their keys
            self.design_standardize = Standardize(design_dim)
        self.design_dim = design_dim
        in_features = x_dim + theta_dim * (2 if double else 1) + design_dim
        self.mlp = EnsembleMLP(in_features, 1, hidden, n_members, activation, residual)

    def summarize(self, x: Tensor) -> Tensor:
        """s(x) ``[batch, x_dim]``: x ``[batch, x_dim]`` standardised, or the embedding of x."""
        return self.x_standardize(x) if self.embedding is None else self.embedding(x)

    def forward(
        self,
        x: Tensor,
        theta0: Tensor,
        theta1: Tensor | None = None,
        design: Tensor | None = None,
    ) -> Tensor:
        """x as `summarize` takes it; θ ``[batch, theta_dim]`` or per member ``[E, batch, d]``."""
        return self.head(self.summarize(x), theta0, theta1, design)

    def head(
        self,
        summary: Tensor,
        theta0: Tensor,
        theta1: Tensor | None = None,
        design: Tensor | None = None,
    ) -> Tensor:
        """log r̂ ``[E, batch]`` from s(x) ``[batch, x_dim]`` (so that a loss evaluating
        several θ embeds x once)."""
        theta0 = theta0.expand(self.n_members, *theta0.shape[-2:])
        parts = [
            summary.to(theta0.dtype).expand(self.n_members, *summary.shape),
            self.theta_standardize(theta0),
        ]
        if self.double:
            parts.append(self.theta_standardize(theta1.expand(self.n_members, *theta1.shape[-2:])))
        if self.design_dim:
            if design is None:
                raise ValueError(f"this ratio network needs a design [batch, {self.design_dim}]")
            d = self.design_standardize(design.to(theta0.dtype))
            parts.append(d.expand(self.n_members, *d.shape[-2:]))
        return self.mlp(torch.cat(parts, dim=-1))[..., 0]


class RatioEstimator(EmbeddingMixin, Estimator):
    """Learn log r(x|θ0,θ1) from simulations.

    Args:
        method: ``carl``, ``rolr``, ``rascal``, ``alice``, ``alices``, ``cascal`` (gold
            mining, need the reference class of ``simfer.simulate(..., theta_ref=...)``),
            or ``nre``, ``bnre``, ``nre_b``, ``nre_c`` (contrastive, no reference class
            needed; ``nre_b`` learns log p(x|θ)/p(x) only up to a function of x, enough for
            posteriors and ratios between θ, see the module docstring).
        hidden: the widths of the hidden layers, e.g. (128, 128, 128) (the default); an
            int w means three layers of width w.
        n_ensemble: number of members trained together.
        alpha: weight of the score term (RASCAL, CASCAL, ALICES); None chooses
            `losses.default_score_weight` from the training data's joint scores.
        bnre_lambda: balancing weight of BNRE.
        num_atoms: K, the parameters each x is contrasted with in NRE-B and NRE-C (the
            true one and K − 1 others; 10 as in sbi and the sbibm paper's NRE).
        gamma: γ of NRE-C, the odds of a set holding the true θ (1 as in sbi).
        activation: of the network, one of `simfer.nn.mlp.ACTIVATIONS`; None is ``"relu"``
            for the NRE family, whose classifiers it makes markedly sharper (TwoMoons at 10³
            simulations, NRE-B: C2ST 0.77 against SiLU's 0.85), and ``"silu"`` for the
            methods that mine gold, whose score t̂ = ∇θ log r̂ must be smooth (a ReLU
            network's is piecewise constant).
        residual: a residual network (`simfer.nn.mlp.EnsembleMLP`): ``hidden`` is then 1 +
            2·blocks layers of one width, e.g. ``(50,) * 5``, sbi's classifier.
        bootstrap: give each ensemble member its own Poisson(1) bootstrap weights of the
            rows (bagging), so the members' spread reflects the finite simulation budget
            and not only their random initialisation.
        embedding: a ``torch.nn.Module`` summarising x, trained jointly (needs
            ``n_ensemble=1``): ``[batch, *x_shape]`` → ``[batch, k]``, or for set-valued x
            ``embedding(x [batch, max_n, features], mask [batch, max_n]) → [batch, k]``.
            Load a model trained with one by ``RatioEstimator.load(path, embedding=...)``.
        **training: settings of `simfer.training.TrainingConfig` (max_epochs, batch_size,
            learning_rate, validation_fraction, patience, device, checkpoint, …).  The NRE
            family (nre, bnre, nre_b, nre_c) defaults to ``batch_size=128``, the others to
            TrainingConfig's 256; a setting given here always wins.
    """

    file_defaults: ClassVar[dict[str, Any]] = {"activation": "silu"}  # before NRE took ReLU

    def __init__(
        self,
        method: str = "alices",
        *,
        hidden: int | Sequence[int] = (128, 128, 128),
        n_ensemble: int = 1,
        alpha: float | None = None,
        bnre_lambda: float = 100.0,
        num_atoms: int = 10,
        gamma: float = 1.0,
        activation: str | None = None,
        residual: bool = False,
        bootstrap: bool = True,
        embedding: nn.Module | dict | None = None,
        **training: Any,
    ):
        method = str(method).lower()
        if method not in METHODS:
            raise ValueError(f"unknown ratio method {method!r}; choose one of {sorted(METHODS)}")
        if n_ensemble < 1:
            raise ValueError("n_ensemble must be at least 1")
        if int(num_atoms) != num_atoms or num_atoms < 2:
            raise ValueError(f"num_atoms must be a whole number >= 2, got {num_atoms!r}")
        if not (math.isfinite(gamma) and gamma > 0):
            raise ValueError(f"gamma must be finite and > 0, got {gamma!r}")
        super().__init__(**{**METHODS[method].training, **training})
        self.method = method
        self.hidden = mlp_widths(hidden)
        self.n_ensemble = int(n_ensemble)
        self.alpha = alpha
        self.bnre_lambda = float(bnre_lambda)
        self.num_atoms = int(num_atoms)
        self.gamma = float(gamma)
        self.activation = METHODS[method].activation if activation is None else activation
        self.activation = check_activation(self.activation)
        self.residual = bool(residual)
        if self.residual:
            check_residual_widths(self.hidden)
        self.bootstrap = bool(bootstrap)
        self._init_embedding(embedding)
        check_no_ensemble(self.n_ensemble, self.embedding)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "hidden": list(self.hidden),
            "n_ensemble": self.n_ensemble,
            "alpha": self.alpha,
            "bnre_lambda": self.bnre_lambda,
            "num_atoms": self.num_atoms,
            "gamma": self.gamma,
            "activation": self.activation,
            "residual": self.residual,
            "bootstrap": self.bootstrap,
            "embedding": self._embedding_hyperparameter(),
        }

    @property
    def alpha_used(self) -> float | None:
        """The score-term weight α the fit used (the default is chosen from the data)."""
        return None if self.dims is None else self.dims.alpha

    @property
    def theta_ref(self) -> Tensor | None:
        """The training reference θ_ref ``[theta_dim]`` of a single-parameterized
        reference-class estimator (None for NRE/BNRE and double-parameterized fits)."""
        if self.dims is None or self.dims.theta_ref is None or self.dims.double:
            return None
        return torch.tensor(self.dims.theta_ref, device=self.device)

    def _build(self, dims: Dims) -> RatioNetwork:
        self._require_embedding(dims)
        return RatioNetwork(
            dims.x_dim,
            dims.theta_dim,
            dims.double,
            self.hidden,
            self.n_ensemble,
            self._embedding_module(dims.is_set),
            dims.design_dim,
            self.activation,
            self.residual,
        )

    # -- training ---------------------------------------------------------------------------
    def _training_rows(self, data: SimulationData) -> tuple[dict[str, Any], dict[str, Any]]:
        """The training columns and the dims describing x."""
        data = training_table(data).valid_only()
        if len(data) < 2:
            raise SimferError("fewer than two valid simulations to train on")
        method = METHODS[self.method]
        varying = design_column(data) is not None
        design = {"design": data.design.to(data.theta.dtype)} if varying else {}
        if not method.needs_reference:
            if data.from_reference is not None:
                data = data.subset(~data.from_reference)
                design = {"design": data.design.to(data.theta.dtype)} if varying else {}
            x, x_dims = self._training_x(data)
            return {"x": x, "theta": data.theta, **design}, x_dims
        if data.from_reference is None:
            raise SimferError(
                f"method '{self.method}' contrasts x drawn at θ with x drawn at θ_ref: simulate "
                f"with simfer.simulate(..., theta_ref=...) to get the reference class"
            )
        if method.needs_gold and not data.has_gold:
            raise SimferError(
                f"method '{self.method}' mines gold: simulate with gold=True (or use 'carl'/'nre')"
            )
        x, x_dims = self._training_x(data)
        rows = {
            "x": x,
            "theta": data.theta,
            "theta_ref": data.theta_ref,
            "from_reference": data.from_reference,
            **design,
        }
        if data.joint_log_ratio is not None:
            rows["joint_log_ratio"] = data.joint_log_ratio
            for name in ("joint_score", "joint_score_ref"):  # MadMiner's ratio samples lack t_xz1
                if getattr(data, name) is not None:
                    rows[name] = getattr(data, name)
        return rows, x_dims

    def fit(self, data: TrainingData, prior=None) -> RatioEstimator:
        """Train on ``data`` (invalid rows are skipped); returns the estimator.

        ``data``: a `SimulationData`, or a store (its path, or a
        `simfer.StoredSimulations`), streamed when it does not fit in ``max_memory``
        (`simfer.streaming`; NRE/BNRE then contrast θ and x within each batch, whose rows
        come from a buffer of random blocks)."""
        data = training_source(data, self.training)
        if isinstance(data, StoredSimulations):
            return self._fit_streamed(data, prior)
        rows, x_dims = self._training_rows(data)
        double = "theta_ref" in rows and not bool((rows["theta_ref"] == rows["theta_ref"][0]).all())
        if self.embedding is not None:
            x_dim = self._embedding_features(rows["x"])
        else:
            x_dim = rows["x"].shape[1]
        self.dims = Dims(
            **x_dims,
            x_dim=x_dim,
            double=double,
            theta_ref=None if "theta_ref" not in rows else rows["theta_ref"][0].tolist(),
            n_train=len(rows["theta"]),
        )
        if prior is not None:
            self.prior_description = describe_prior(prior)
        with seeded(self.training.seed):  # the initial weights follow the seed
            network = self._build(self.dims)
        if network.x_standardize is not None:
            network.x_standardize.fit(rows["x"])
        network.theta_standardize.fit(rows["theta"])
        if "design" in rows:
            network.design_standardize.fit(rows["design"])
        alpha = self.alpha
        if METHODS[self.method].needs_score and alpha is None:
            y = rows["from_reference"]
            start = math.log(2)  # a cross-entropy at r̂ = 1; ROLR's own value for RASCAL
            if self.method == "rascal":
                zeros = torch.zeros_like(rows["joint_log_ratio"])
                start = float(losses.rolr(zeros, y, rows["joint_log_ratio"]))
            alpha = losses.default_score_weight(
                rows["joint_score"], from_reference=y, ratio_loss_at_start=start
            )
        self.dims = self.dims.replace(alpha=alpha)  # saved with the model
        if self.n_ensemble > 1 and self.bootstrap:
            generator = torch.Generator().manual_seed(self.training.seed + 1)
            rates = torch.ones(len(rows["x"]), self.n_ensemble)
            weights = torch.poisson(rates, generator=generator)
            rows["bootstrap_weight"] = weights.to(rows["theta"].dtype)
        self.network = network
        self.history = fit_network(network, self._loss_function(alpha), rows, self.training)
        return self

    def _check_columns(self, data: SimulationData) -> None:
        """The clear errors of `_training_rows` for a store's columns (read from its first
        rows)."""
        method = METHODS[self.method]
        if method.needs_reference and data.from_reference is None:
            raise SimferError(
                f"method '{self.method}' contrasts x drawn at θ with x drawn at θ_ref: simulate "
                f"with simfer.simulate(..., theta_ref=...) to get the reference class"
            )
        if method.needs_gold and not data.has_gold:
            raise SimferError(
                f"method '{self.method}' mines gold: simulate with gold=True (or use 'carl'/'nre')"
            )

    def _fit_streamed(self, source: StoredSimulations, prior) -> RatioEstimator:
        """`fit` on a store streamed a buffer at a time: one pass for the number of rows, the
        reference, the design, the standardisation and the default α, then `fit_network` on
        `StreamedRows` whose transform builds `_training_rows`' columns per buffer."""
        method = METHODS[self.method]
        probe, _ = source.read(source.blocks()[:1])
        self._check_columns(probe)
        del probe

        def kept(data: SimulationData) -> Tensor:
            keep = data.valid.clone()
            if not method.needs_reference and data.from_reference is not None:
                keep &= ~data.from_reference
            return keep

        stats = {name: Moments() for name in ("x", "theta", "design", "theta_ref", "score")}
        rolr_sum, first = 0.0, None
        for data, _ in source.buffers():
            data = data.subset(kept(data))
            if len(data) == 0:
                continue
            first = data if first is None else first
            stats["theta"].add(data.theta)
            if not data.is_set and self.embedding is None:
                stats["x"].add(data.x)
            for name in ("design", "theta_ref"):
                if getattr(data, name) is not None:
                    stats[name].add(getattr(data, name))
            if method.needs_score:
                stats["score"].add(data.joint_score[~data.from_reference])
                if self.method == "rascal":
                    zeros = torch.zeros_like(data.joint_log_ratio)
                    rolr = losses.rolr(zeros, data.from_reference, data.joint_log_ratio)
                    rolr_sum += float(rolr) * len(data)
        n = stats["theta"].count
        if n < 2:
            raise SimferError(f"fewer than two valid simulations to train on in '{source.path}'")
        x_dims = streamed_x_dims(self, first, stats["design"])
        varying = x_dims["design_dim"] > 0
        reference = method.needs_reference
        double = reference and not stats["theta_ref"].constant
        embedded = self.embedding is not None
        if embedded:
            x_dim = self._embedding_features(x_column(first, True))
        else:
            x_dim = int(stats["x"].mean.numel())
        self.dims = Dims(
            **x_dims,
            x_dim=x_dim,
            double=double,
            theta_ref=first.theta_ref[0].tolist() if reference else None,
            n_train=n,
        )
        if prior is not None:
            self.prior_description = describe_prior(prior)
        with seeded(self.training.seed):  # the initial weights follow the seed
            network = self._build(self.dims)
        if network.x_standardize is not None:
            stats["x"].fit(network.x_standardize)
        stats["theta"].fit(network.theta_standardize)
        if varying:
            stats["design"].fit(network.design_standardize)
        alpha = self.alpha
        if method.needs_score and alpha is None:
            if stats["score"].count == 0:
                raise SimferError(
                    f"'{source.path}' holds no valid row drawn at θ (from_reference False): "
                    f"the score term of '{self.method}' has nothing to learn from"
                )
            start = rolr_sum / n if self.method == "rascal" else math.log(2)
            # the default depends on the data only through E|t(x,z)|² over the rows drawn at
            # θ0: one row of that squared norm gives the same α
            second_moment = float(stats["score"].second_moment.sum())
            alpha = losses.default_score_weight(
                torch.tensor([[math.sqrt(second_moment)]], dtype=torch.float64),
                ratio_loss_at_start=start,
            )
        self.dims = self.dims.replace(alpha=alpha)
        bootstrap = self.n_ensemble > 1 and self.bootstrap
        seed, members = self.training.seed, self.n_ensemble

        def rows(data: SimulationData, index: Tensor) -> dict[str, Tensor | RaggedSets]:
            keep = kept(data)
            data, index = data.subset(keep), index[keep]
            columns = {"x": x_column(data, embedded), "theta": data.theta}
            if varying:
                columns["design"] = data.design.to(data.theta.dtype)
            if reference:
                columns["theta_ref"] = data.theta_ref
                columns["from_reference"] = data.from_reference
                for name in ("joint_log_ratio", "joint_score", "joint_score_ref"):
                    if data.joint_log_ratio is not None and getattr(data, name) is not None:
                        columns[name] = getattr(data, name)
            if bootstrap:
                weights = poisson_one_weights(index, seed + 1, members)
                columns["bootstrap_weight"] = weights.to(data.theta.dtype)
            return columns

        self.network = network
        self.history = fit_network(
            network, self._loss_function(alpha), StreamedRows(source, rows), self.training
        )
        return self

    def _loss_function(self, alpha: float | None):
        method = METHODS[self.method]
        options = {"bnre_lambda": self.bnre_lambda, "gamma": self.gamma}

        def loss_fn(network: RatioNetwork, batch: dict[str, Tensor], training: bool) -> Tensor:
            n_members = network.n_members
            bootstrap = batch.get("bootstrap_weight") if training else None
            design = batch.get("design")
            summary = network.summarize(batch["x"])
            outputs: dict[str, Tensor] = {}
            theta = batch["theta"]
            if method.atom_blocks:  # K atoms per x: the true θ and θ of other rows
                k = _atoms_in_batch(self.num_atoms, theta.shape[0], method.atom_blocks)
                for block, name in enumerate(("joint", "marginal")[: method.atom_blocks]):
                    shifts = range(block * k, (block + 1) * k)
                    outputs[name] = _atom_logits(network, summary, theta, shifts, design)
            elif not method.needs_reference:  # contrastive: (θ, x) pairs against shuffled θ
                outputs["joint"] = network.head(summary, theta, design=design)
                shuffled = torch.roll(theta, 1, dims=0)  # x keeps its own design
                outputs["marginal"] = network.head(summary, shuffled, design=design)
            else:
                theta_ref = batch.get("theta_ref")
                with torch.enable_grad():
                    theta0 = _member_leaf(batch["theta"], n_members, method.needs_score)
                    outputs["log_r"] = network.head(summary, theta0, theta_ref, design)
                    if method.needs_score:
                        (outputs["score"],) = torch.autograd.grad(
                            outputs["log_r"].sum(), theta0, create_graph=training
                        )
                        # rows drawn at θ1 teach the score at θ1: t̂(x|θ1) = ∇θ0 log r̂ at θ0 = θ1
                        theta1 = _member_leaf(theta_ref, n_members, True)
                        at_ref = network.head(summary, theta1, theta_ref, design)
                        (outputs["score_ref"],) = torch.autograd.grad(
                            at_ref.sum(), theta1, create_graph=training
                        )
            per_member = []
            for e in range(n_members):
                member = _Member(
                    **{k: v[e] for k, v in outputs.items()},
                    weight=None if bootstrap is None else bootstrap[:, e],
                )
                loss = method.loss(member, batch, alpha, options)
                per_member.append(loss.to(batch["theta"].dtype))  # ROLR computes in float64
            return torch.stack(per_member)

        return loss_fn

    # -- evaluation --------------------------------------------------------------------------
    def _inputs(self, x: Any, theta: Any, reference: Any, design: Any):
        """The network, s(x) ``[batch, x_dim]``, θ, the reference (rows, or `MARGINAL`, or
        None) and d, paired row by row (one row of any broadcasts over the others'); x is
        embedded once per distinct row, before pairing."""
        network = self._require_fitted()
        parameter = next(network.parameters())
        if x is not None and not self.dims.is_set and list(self.dims.x_shape) == [1]:
            x = torch.as_tensor(x, dtype=parameter.dtype, device=parameter.device)
            x = x[:, None] if x.ndim == 1 and x.shape[0] != 1 else x
        x, _ = x_batch(x, self.dims, parameter)
        with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
            summary = self._summary(
                network.summarize, x if self.embedding is not None else x.flatten(1)
            )
        theta = as_batch(theta, (self.dims.theta_dim,), "theta", parameter)
        design = self._design_rows(design, parameter)
        theta1 = None
        if isinstance(reference, str):
            if reference != MARGINAL:
                raise ValueError(f"reference must be a θ point or 'marginal', got {reference!r}")
        elif reference is not None:
            theta1 = as_batch(reference, (self.dims.theta_dim,), "reference", parameter)
        summary, theta, theta1, design = pair_rows(
            {"x": summary, "theta": theta, "reference": theta1, "design": design}
        )
        marginal = isinstance(reference, str)
        return network, summary, theta, (MARGINAL if marginal else theta1), design

    def _log_ratio_members(self, network, summary, theta0, reference, design) -> Tensor:
        """log r̂(x|θ0, reference, d) of every member ``[E, batch]`` (see `log_ratio`)."""
        head = network.head
        name = type(self).__name__
        if reference is None:
            if METHODS[self.method].normalised and not METHODS[self.method].needs_reference:
                hint = ", or 'marginal' for log p(x|θ)/p(x)"
            elif self.dims.theta_ref is not None:
                hint = f" (this estimator was trained against θ_ref = {list(self.dims.theta_ref)})"
            else:
                hint = ""
            raise TypeError(f"{name}.log_ratio needs reference=: a θ point θ1{hint}")
        if not METHODS[self.method].needs_reference:
            value = head(summary, theta0, design=design)
            if reference is MARGINAL:
                return value
            return value - head(summary, reference, design=design)
        if reference is MARGINAL:
            raise ValueError(
                f"a '{self.method}' estimator learns ratios between parameter points, not to "
                f"the marginal p(x): pass reference=θ1 (e.g. its θ_ref, est.theta_ref)"
            )
        if self.dims.double:
            return head(summary, theta0, reference, design)
        # a single-parameterized estimator knows r(x|θ, θ_ref): a row whose θ1 is not θ_ref
        # chains through the reference, log r(x|θ,θ1) = log r(x|θ,θ_ref) − log r(x|θ1,θ_ref)
        theta_ref = torch.tensor(
            self.dims.theta_ref, dtype=reference.dtype, device=reference.device
        )
        at_ref = torch.isclose(reference, theta_ref.expand_as(reference)).all(-1)
        value = head(summary, theta0, design=design)
        if bool(at_ref.all()):
            return value
        return torch.where(at_ref, value, value - head(summary, reference, design=design))

    def log_ratio_ensemble(
        self, *, x: Any, theta: Any, reference: Any, design: Any = None
    ) -> Tensor:
        """log r̂(x|θ, θ1, d) of every member, ``[E, batch]`` (arguments as in `log_ratio`);
        differentiable when θ (or x) requires grad."""
        if isinstance(reference, str) and not METHODS[self.method].normalised:
            raise ValueError(
                f"a '{self.method}' estimator learns log p(x|θ)/p(x) only up to a function of "
                f"x, so its ratio to the marginal p(x) is not defined: pass reference=θ1 for "
                f"log p(x|θ)/p(x|θ1), or train RatioEstimator('nre_c'), whose extra class "
                f"fixes the normalisation"
            )
        return self._ensemble(x, theta, reference, design)

    def _ensemble(self, x: Any, theta: Any, reference: Any, design: Any) -> Tensor:
        """`log_ratio_ensemble` without its check: the posterior's term of an NRE-B takes
        its unnormalised g(x, θ), whose c(x) is the same for every θ."""
        network, x, theta, reference, design = self._inputs(x, theta, reference, design)
        inputs = [x, theta] + ([reference] if isinstance(reference, Tensor) else [])
        with torch.set_grad_enabled(
            torch.is_grad_enabled() and any(v.requires_grad for v in inputs)
        ):
            return self._log_ratio_members(network, x, theta, reference, design)

    def log_ratio(
        self,
        *,
        x: Any,
        theta: Any,
        reference: Any,
        design: Any = None,
        return_std: bool = False,
    ):
        """log r̂(x|θ, θ1) = log p(x|θ, d) − log p(x|θ1, d) ``[batch]``.

        Args:
            x: ``[batch, *x_shape]`` or one x (sets as in `simfer.estimators.embedding`).
            theta: θ ``[batch, theta_dim]`` or one.
            reference: θ1 ``[batch, theta_dim]`` or one (often ``est.theta_ref``); or
                ``"marginal"`` (NRE, BNRE, NRE-C) for log p(x|θ, d)/p(x|d).
            design: for a model trained with designs, ``[batch, design_dim]`` or one.
            return_std: also return the ensemble members' standard deviation.

        One row of any argument broadcasts over the others'.
        """
        members = self.log_ratio_ensemble(x=x, theta=theta, reference=reference, design=design)
        mean = members.mean(0)
        if not return_std:
            return mean
        std = members.std(0) if members.shape[0] > 1 else torch.zeros_like(mean)
        return mean, std

    def score(self, *, x: Any, theta: Any, design: Any = None) -> Tensor:
        """t̂(x|θ, d) = ∇θ log r̂(x|θ, θ1, d) of the ensemble mean, ``[batch, theta_dim]``
        (independent of θ1 in theory; a double-parameterized network is evaluated at its
        training θ_ref, or at θ itself when it has none)."""
        if self.dims is not None and self.dims.double and self.dims.theta_ref is None:
            reference = theta  # any fixed θ1: the gradient is taken in θ alone
        else:
            reference = self._term_reference(None)
        network, x, theta, reference, design = self._inputs(x, theta, reference, design)
        with torch.enable_grad():
            theta = theta.detach().clone().requires_grad_(True)
            log_r = self._log_ratio_members(network, x, theta, reference, design).mean(0)
            (score,) = torch.autograd.grad(log_r.sum(), theta)
        return score

    def _term_reference(self, prior: Distribution | None) -> Any:
        """The reference of the posterior's term: the marginal (NRE), θ_ref (single
        reference), or for a double-parameterized net θ_ref or the prior's mean."""
        if not METHODS[self.method].needs_reference:
            return MARGINAL
        if self.dims.theta_ref is not None:
            return list(self.dims.theta_ref)
        if prior is None:
            raise SimferError("this double-parameterized estimator needs a prior for its term")
        return prior.mean

    def event_term(self, prior: Distribution, x_obs: Any, *, design: Any = None) -> EventTerm:
        """ℓ(x | θ, d) = log r̂(x | θ, θ1, d), the ensemble mean, with θ1 fixed (θ_ref, or
        the marginal p(x|d) for NRE): its log p(x | θ1, d) is the same for every θ."""
        network = self._require_fitted()
        x_obs, x_shape, as_x = observed_x(x_obs, self.dims, next(network.parameters()))
        reference = self._term_reference(prior)

        def log_likelihood(x: Tensor, theta: Tensor, design: Tensor | None) -> Tensor:
            return self._ensemble(as_x(x), theta, reference, design).mean(0)

        return EventTerm(log_likelihood, x_obs, x_shape, design_dim=self.design_dim, model=self)
