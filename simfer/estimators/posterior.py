r"""`PosteriorEstimator` (NPE): a conditional flow q(θ|x) trained on simulated pairs.

Neural posterior estimation (Papamakarios & Murray 2016, arXiv:1605.06376; Greenberg,
Nonnenmacher & Macke 2019, arXiv:1905.07488).  Pairs (θ_i, x_i) drawn from the joint
p(θ) p(x|θ) are samples of p(x) p(θ|x), so maximising Σ_i log q(θ_i|x_i) minimises

    E_{p(x)} KL(p(θ|x) ‖ q(θ|x)) + const,

whose minimiser over all conditional densities is the posterior itself, for every x at
once (amortised).  Only rows drawn at their own θ are such pairs: the reference-class
rows of ``simfer.simulate(..., theta_ref=...)`` are drawn at θ_ref and are left out.
Failed simulations are left out too, which is harmless here: the fit then learns
p(θ|x, valid), and an observed x is valid (see `LikelihoodEstimator` for why NLE must
instead model the failures).

Leakage.  A flow has support R^d, so for a bounded prior (a box) some of q(θ|x)'s mass
can leak outside it.  `sample` draws from q truncated to the prior's support by
rejection, reports the fraction of proposals kept (``acceptance_rate``), and raises
a `SimferError` quoting that rate when fewer than ``min_acceptance`` of the proposals
land inside (the flow then has little to say about this x: usually x lies far from the
training simulations).  `log_prob` is −∞ outside the support and, with
``leakage_correction=True``, renormalised inside by the estimated acceptance,
log q(θ|x) − log P_q(θ ∈ support | x).  With ``bounded=True`` and a `BoxUniform` prior
nothing leaks: the estimator learns the density of z = logit((θ − low)/(high − low)) on
R^d (`simfer.prior.LogitBox`), every draw maps back inside the box, and
log q(θ|x) = log q_z(z(θ)|x) + log |det ∂z/∂θ|.

Three methods learn q(θ|x), one row each of `METHODS`:

* ``"npe"`` (the default): a conditional normalizing flow (``flow=``, see
  `simfer.nn.flows`) trained by maximum likelihood, as above.
* ``"fmpe"``: flow matching (Wildberger et al. 2023, arXiv:2305.17161): a velocity field
  regressed on the conditional optimal-transport path from N(0, I) to θ
  (`simfer.nn.flow_matching`).
* ``"npse"``: score-based diffusion (Sharrock et al. 2022, arXiv:2210.04872; Geffner et al.
  2023, arXiv:2209.14249): the score of θ diffused by a variance-preserving SDE, learnt by
  denoising score matching (`simfer.nn.diffusion`).

The last two are minimised by the posterior too, for every x at once, and are sampled and
evaluated through an ODE (the probability-flow ODE, `simfer.nn.ode`): ``sample`` and
``log_prob`` cost one ODE solve each (``log_prob`` with the divergence along it), tens to
hundreds of network passes against one or D for a flow.  Everything else, rejection
against the prior's support, embeddings, designs, ``posterior``, save and load, is shared.
Their losses are Monte Carlo estimates over random times and noise, so they train with
their own defaults (``PosteriorMethod.training``): early stopping on a moving average of
the validation loss, a longer patience and the "plateau" learning-rate schedule.

An ``embedding`` (any ``torch.nn.Module`` mapping x ``[batch, *x_shape]`` to
``[batch, k]``, or, for set-valued x, a set embedding called as ``embedding(x, mask)``)
is trained jointly with the flow, so the summary learns to keep what the posterior needs.
A model file cannot hold the embedding's code, only its weights: load such a model with
``PosteriorEstimator.load(path, embedding=<a fresh instance>)``.  See
`simfer.estimators.embedding` for the forms set-valued x may take.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from .. import losses
from ..data import RaggedSets, SimulationData
from ..errors import SimferError
from ..inference import EventTerm
from ..nn.diffusion import VPDiffusion
from ..nn.flow_matching import FlowMatching
from ..nn.flows import FLOWS, ConditionalFlow, build_flow, conditioner_layers
from ..nn.mlp import ACTIVATIONS, check_activation
from ..nn.ode import DIVERGENCES, ContinuousFlow, TrainingNoise, vector_field_layers
from ..prior import (
    BoxUniform,
    LogitBox,
    as_prior,
    check_in_support,
    describe_prior,
    distribution_device,
    inside_support,
    prior_from_description,
)
from ..seeding import seeded
from ..streaming import Moments, StoredSimulations, StreamedRows
from .base import Estimator
from .dims import Dims
from .embedding import EmbeddingMixin, design_column, observed_x, x_batch
from .members import MemberRows, MemberStream, fit_members, member_seeds, mixture_draws
from .rows import (
    TrainingData,
    as_batch,
    pair_rows,
    streamed_x_dims,
    training_source,
    training_table,
    x_column,
)

__all__ = ["METHODS", "PosteriorEstimator", "PosteriorMethod"]

Network = ConditionalFlow | ContinuousFlow


@dataclass(frozen=True)
class PosteriorMethod:
    """One way to learn q(θ|x): its network (built from the estimator, the dims and a seed
    for the initial weights), the network's default hidden widths, the
    loss of a batch (network, θ ``[N, D]``, summary ``[N, ·]``, the generator of the loss's
    own noise) → scalar, and the training settings it uses unless the user gives them
    (those of `simfer.training.TrainingConfig` otherwise)."""

    build: Callable[[PosteriorEstimator, Dims, int], Network]
    default_hidden: int
    check_hidden: Callable[[Any], Any]
    loss: Callable[[Network, Tensor, Tensor, torch.Generator], Tensor]
    training: dict[str, Any] = field(default_factory=dict)


def _flow(estimator: PosteriorEstimator, dims: Dims, seed: int) -> ConditionalFlow:
    return build_flow(
        estimator.flow,
        dims.theta_dim,
        dims.x_dim,
        hidden=estimator.hidden,
        n_transforms=estimator.n_transforms,
        bins=estimator.bins,
        tail_bound=estimator.tail_bound,
        activation=estimator.activation,
        embedding=estimator._embedding_module(dims.is_set),
        design_features=dims.design_dim,
        seed=seed,
    )


def _continuous(
    kind: type[ContinuousFlow],
) -> Callable[[PosteriorEstimator, Dims, int], Network]:
    def build(estimator: PosteriorEstimator, dims: Dims, seed: int) -> ContinuousFlow:
        with seeded(seed):
            return kind(
                dims.theta_dim,
                dims.x_dim,
                hidden=estimator.hidden,
                activation=ACTIVATIONS[estimator.activation],
                embedding=estimator._embedding_module(dims.is_set),
                design_features=dims.design_dim,
                atol=estimator.ode_tolerance,
                rtol=estimator.ode_tolerance,
                divergence=estimator.divergence,
            )

    return build


def _maximum_likelihood(network: ConditionalFlow, theta, summary, generator) -> Tensor:
    return losses.negative_log_likelihood(network.log_prob_given_summary(theta, summary))


def _own_loss(network: ContinuousFlow, theta, summary, generator) -> Tensor:
    return network.loss(theta, summary, generator)


#: The training defaults of fmpe and npse (docs/flow_matching.md has the measurements).
#: Their validation loss is a Monte Carlo estimate over random times and noise, so one
#: epoch's raw loss is often a lucky draw that the next 20 epochs fail to beat: early
#: stopping follows its moving average (β = 0.9, about the last 10 epochs) with a patience
#: of 50, and the learning rate is halved when that average stalls ("plateau"), so a fit
#: ends when it has stalled at a small learning rate rather than on a clock; 1000 epochs
#: is only a cap.
VECTOR_FIELD_TRAINING: dict[str, Any] = {
    "max_epochs": 1000,
    "patience": 50,
    "smoothing": 0.9,
    "schedule": "plateau",
}

METHODS: dict[str, PosteriorMethod] = {
    "npe": PosteriorMethod(_flow, 64, conditioner_layers, _maximum_likelihood),
    "fmpe": PosteriorMethod(
        _continuous(FlowMatching), 128, vector_field_layers, _own_loss, VECTOR_FIELD_TRAINING
    ),
    "npse": PosteriorMethod(
        _continuous(VPDiffusion), 128, vector_field_layers, _own_loss, VECTOR_FIELD_TRAINING
    ),
}


class PosteriorEnsemble(nn.Module):
    """The equal-weight mixture q(θ|x) = (1/E) Σ_e q_e(θ|x) of E posterior networks
    (``members``, model-file keys ``members.0.*``, …), with the interface of one: log q is
    logsumexp_e log q_e − log E and each draw comes from a member picked uniformly.  The
    members standardise x and the design from the same training rows, so the context
    ``[M, C]`` made by member 0 (`embed`, `design_standardize`) is every member's.  Each
    member trains alone (`simfer.estimators.members.fit_members`)."""

    def __init__(self, members: Sequence[Network]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def embed(self, context: Tensor) -> Tensor:
        return self.members[0].embed(context)

    @property
    def design_standardize(self) -> nn.Module:
        return self.members[0].design_standardize

    def fit_standardization(self, theta: Tensor, x: Tensor, design: Tensor | None) -> None:
        for member in self.members:
            member.fit_standardization(theta, x, design)

    def log_prob_given_summary(self, theta: Tensor, summary: Tensor) -> Tensor:
        """log q(θ|x) ``[batch]`` of θ ``[batch, D]`` given contexts ``[batch, C]``."""
        members = torch.stack([m.log_prob_given_summary(theta, summary) for m in self.members])
        return torch.logsumexp(members, 0) - math.log(len(self.members))

    def sample_given_summary(self, n: int, context: Tensor) -> Tensor:
        """n draws ``[M, n, D]`` for each context ``[M, C]``; member e makes about n/E."""
        return mixture_draws(
            len(self.members),
            context.shape[0],
            n,
            lambda e, rows: self.members[e].sample_given_summary(1, context[rows])[:, 0],
            context.device,
        )


class PosteriorEstimator(EmbeddingMixin, Estimator):
    """Learn the posterior q(θ|x): a conditional normalizing flow (NPE), flow matching
    (FMPE) or score-based diffusion (NPSE).

    Args:
        flow: for ``method="npe"``: ``"nsf"`` (neural spline flow, the default),
            ``"nsf-coupling"`` or ``"maf"``; see `simfer.nn.flows`.
        method: ``"npe"`` (default), ``"fmpe"`` or ``"npse"`` (see the module docstring).
        hidden: the widths of the network's hidden layers: an int w for two residual blocks
            of width w, or a sequence such as (64, 64, 64, 64) (one width, in pairs); None
            is 64 for a flow's conditioners, 128 for the vector field of fmpe and npse.
        n_transforms: number of autoregressive transforms (npe).
        bins: spline bins (NSF).
        tail_bound: half-width of the spline window, in standardised units (NSF).
        activation: of the conditioners: ``"silu"`` (default), ``"relu"``, ``"elu"`` or
            ``"tanh"`` (see `simfer.nn.flows.build_flow`).
        embedding: a ``torch.nn.Module`` mapping x ``[batch, *x_shape]`` to ``[batch, k]``,
            or for set-valued x a set embedding ``embedding(x [batch, max_n, features],
            mask [batch, max_n]) → [batch, k]`` (`simfer.nn.LorentzNet`, …); trained
            jointly with the flow (``fit`` trains this instance in place).  Without it x is
            flattened and standardised; set-valued x needs one.
        min_acceptance: `sample` raises when fewer than this fraction of its proposals fall
            inside the prior's support.
        n_ensemble: E > 1 trains E networks one after another (their seeds drawn from the
            fit's, each with its own early stopping, the same validation rows) and returns
            their equal-weight mixture, a normalised density (no embedding); ``history`` is
            the first member's, ``member_histories`` all E.  On TwoMoons at 10⁴
            simulations five flows reach C2ST 0.53, the sbibm paper's NPE at 10⁵.
        bounded: learn q on R^d through the logit of the prior's box (`fit` then needs a
            `BoxUniform` prior): every draw lies inside the prior, with no rejection, where
            a flow on θ itself may leak mass out of the box when simulations are few.
        ode_tolerance: absolute and relative tolerance of the ODE solver of fmpe and npse
            (`simfer.nn.ode.odeint`), in standardised units of θ.
        divergence: how fmpe and npse's ``log_prob`` takes the divergence of the velocity:
            ``"exact"``, ``"hutchinson"`` (an unbiased estimate from one probe per row) or
            ``"auto"`` (exact up to 16 parameters).
        **training: settings of `simfer.training.TrainingConfig` (max_epochs, batch_size,
            learning_rate, validation_fraction, patience, seed, device, checkpoint, …).
            Their defaults are TrainingConfig's, except that fmpe and npse, whose
            validation loss is a noisy Monte Carlo estimate, default to
            ``max_epochs=1000, patience=50, smoothing=0.9, schedule="plateau"``: early
            stopping and the learning rate follow the loss's moving average, and a fit
            ends when it has stalled at a small learning rate (see docs/flow_matching.md).
            A setting given here always wins.
    """

    def __init__(
        self,
        flow: str = "nsf",
        *,
        method: str = "npe",
        hidden: int | Sequence[int] | None = None,
        n_transforms: int = 5,
        bins: int = 10,
        tail_bound: float = 4.0,
        activation: str = "silu",
        embedding: nn.Module | dict | None = None,
        min_acceptance: float = 1e-3,
        bounded: bool = False,
        n_ensemble: int = 1,
        ode_tolerance: float = 1e-4,
        divergence: str = "auto",
        **training: Any,
    ):
        flow, method = str(flow).lower(), str(method).lower()
        if flow in METHODS and flow != "npe":
            raise ValueError(
                f"{flow!r} is a method, not a flow: use PosteriorEstimator(method={flow!r})"
            )
        if flow not in FLOWS:
            raise ValueError(f"unknown flow {flow!r}; choose one of {list(FLOWS)}")
        if method not in METHODS:
            raise ValueError(f"unknown posterior method {method!r}; choose one of {list(METHODS)}")
        if not 0 < min_acceptance <= 1:
            raise ValueError(f"min_acceptance must lie in (0, 1], got {min_acceptance}")
        if not 0 < ode_tolerance < 1:
            raise ValueError(f"ode_tolerance must lie in (0, 1), got {ode_tolerance}")
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {list(DIVERGENCES)}, got {divergence!r}")
        super().__init__(**{**METHODS[method].training, **training})
        self.flow = flow
        self.method = method
        if hidden is None:
            hidden = METHODS[method].default_hidden
        METHODS[method].check_hidden(hidden)  # a clear error now rather than at fit
        self.hidden = hidden if isinstance(hidden, int) else [int(h) for h in hidden]
        self.ode_tolerance = float(ode_tolerance)
        self.divergence = divergence
        self.n_transforms = int(n_transforms)
        self.bins = int(bins)
        self.tail_bound = float(tail_bound)
        self.activation = check_activation(activation)
        self.min_acceptance = float(min_acceptance)
        self.bounded = bool(bounded)
        if isinstance(n_ensemble, bool) or not isinstance(n_ensemble, int) or n_ensemble < 1:
            raise ValueError(f"n_ensemble must be an integer ≥ 1, got {n_ensemble!r}")
        self.n_ensemble = n_ensemble
        self._init_embedding(embedding)
        if self.n_ensemble > 1 and self.embedding is not None:
            raise ValueError(
                "n_ensemble > 1 needs embedding=None: each member would train its own copy "
                "of the embedding, which a model file cannot rebuild; use one member with "
                "an embedding"
            )
        self.prior: Distribution | None = None
        self.member_histories: list | None = None
        self.acceptance_rate: float | Tensor | None = None

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "flow": self.flow,
            "method": self.method,
            "hidden": self.hidden,
            "n_transforms": self.n_transforms,
            "bins": self.bins,
            "tail_bound": self.tail_bound,
            "activation": self.activation,
            "embedding": self._embedding_hyperparameter(),
            "min_acceptance": self.min_acceptance,
            "bounded": self.bounded,
            **({"n_ensemble": self.n_ensemble} if self.n_ensemble > 1 else {}),
            "ode_tolerance": self.ode_tolerance,
            "divergence": self.divergence,
        }

    def _build(self, dims: Dims) -> Network | PosteriorEnsemble:
        self._require_embedding(dims)
        build = METHODS[self.method].build
        if self.n_ensemble == 1:
            return build(self, dims, self.training.seed)
        seeds = member_seeds(self.training.seed, self.n_ensemble)
        return PosteriorEnsemble([build(self, dims, seed) for seed in seeds])

    @staticmethod
    def _members(network: Network | PosteriorEnsemble) -> list[Network]:
        return list(network.members) if isinstance(network, PosteriorEnsemble) else [network]

    def _train(self, network, rows: Callable[[int, int], Any]) -> None:
        """Train the network, or each member of an ensemble in turn (`fit_members`)."""
        histories = fit_members(self._members(network), self._loss_function(), rows, self.training)
        self.history, self.member_histories = histories[0], histories

    # -- training ---------------------------------------------------------------------------
    def fit(self, data: TrainingData, prior: Distribution | None = None) -> PosteriorEstimator:
        """Train q(θ|x) (q(θ|x, d) when ``data`` has a design column) on the valid rows of
        ``data`` drawn at their own θ.  ``prior`` (the one the data were simulated from)
        bounds `sample` by rejection; it is saved with the model if it is a `BoxUniform`.

        ``data``: a `SimulationData`, or a store (its path, or a
        `simfer.StoredSimulations`), streamed when it does not fit in ``max_memory``
        (`simfer.streaming`)."""
        data = training_source(data, self.training)
        if isinstance(data, StoredSimulations):
            return self._fit_streamed(data, prior)
        data = training_table(data)
        keep = data.valid.clone()
        if data.from_reference is not None:
            keep &= ~data.from_reference
        if int(keep.sum()) < 2:
            raise SimferError(
                f"fewer than two valid simulations drawn at their own θ to train on "
                f"({data.n_invalid} of {len(data)} rows failed)"
            )
        data = data.subset(keep)
        x, x_dims = self._training_x(data)
        box = self._set_prior(prior, data.theta_dim)
        theta = data.theta if box is None else self._to_real(box, data.theta)
        if self.embedding is not None:
            x_dim = self._embedding_features(x)
        else:
            x_dim = x.shape[1]
        self.dims = Dims(**x_dims, x_dim=x_dim, n_train=len(data), theta_box=box)
        tensors = {"theta": theta, "x": x}
        if design_column(data) is not None:
            tensors["design"] = data.design.to(theta.dtype)
        network = self._build(self.dims)
        network.fit_standardization(theta, x, tensors.get("design"))
        self.network = network
        self._train(network, lambda e, seed: tensors if e == 0 else MemberRows(tensors, seed))
        return self

    def _fit_streamed(
        self, source: StoredSimulations, prior: Distribution | None
    ) -> PosteriorEstimator:
        """`fit` on a store streamed a buffer at a time: one pass for the number of rows,
        the design and the standardisation, then `fit_network` on `StreamedRows`."""

        def own(data: SimulationData) -> Tensor:
            keep = data.valid.clone()
            if data.from_reference is not None:
                keep &= ~data.from_reference
            return keep

        box = self._set_prior(prior, None)  # θ's width is checked against it below
        stats = {"theta": Moments(), "x": Moments(), "design": Moments()}
        first = None
        for data, _ in source.buffers():
            data = data.subset(own(data))
            if len(data) == 0:
                continue
            first = data if first is None else first
            stats["theta"].add(data.theta if box is None else self._to_real(box, data.theta))
            if not data.is_set and self.embedding is None:
                stats["x"].add(data.x)
            if data.design is not None:
                stats["design"].add(data.design)
        n = stats["theta"].count
        if n < 2:
            raise SimferError(
                f"fewer than two valid simulations drawn at their own θ to train on in "
                f"'{source.path}' ({n} of {len(source)} rows)"
            )
        x_dims = streamed_x_dims(self, first, stats["design"])
        if prior is not None:
            as_prior(prior, first.theta_dim)
        varying = x_dims["design_dim"] > 0
        embedded = self.embedding is not None
        if embedded:
            x_dim = self._embedding_features(x_column(first, True))
        else:
            x_dim = int(stats["x"].mean.numel())
        self.dims = Dims(**x_dims, x_dim=x_dim, n_train=n, theta_box=box)
        network = self._build(self.dims)
        for member in self._members(network):
            stats["theta"].fit(member.input_standardize)
            if member.context_standardize is not None:
                stats["x"].fit(member.context_standardize)
            if varying:
                stats["design"].fit(member.design_standardize)

        def rows(data: SimulationData, _: Tensor) -> dict[str, Tensor | RaggedSets]:
            data = data.subset(own(data))
            theta = data.theta if box is None else self._to_real(box, data.theta)
            columns = {"theta": theta, "x": x_column(data, embedded)}
            if varying:
                columns["design"] = data.design.to(data.theta.dtype)
            return columns

        self.network = network

        def member_rows(e: int, _: int) -> StreamedRows:
            return StreamedRows(source, rows) if e == 0 else MemberStream(source, rows, e)

        self._train(network, member_rows)
        return self

    def _set_prior(self, prior: Distribution | None, theta_dim: int):
        """Keep the fit's prior (saved with the model when a `BoxUniform`); with
        ``bounded=True`` return its box ``(low, high)``, which it must be."""
        if prior is not None:
            self.prior = as_prior(prior, theta_dim)
            self.prior_description = describe_prior(self.prior)
        if not self.bounded:
            return None
        if not isinstance(self.prior, BoxUniform):
            raise SimferError(
                f"bounded=True maps θ from the prior's box onto R^d: fit(data, prior) needs a "
                f"BoxUniform prior, got {'none' if prior is None else type(prior).__name__} "
                f"(use bounded=False for an unbounded prior)"
            )
        return (tuple(self.prior.low.tolist()), tuple(self.prior.high.tolist()))

    def _to_real(self, box, theta: Tensor) -> Tensor:
        """z = `LogitBox` (θ) ``[N, D]`` of training θ, which must lie in the box."""
        check_in_support(self.prior, theta, "the training θ")
        return LogitBox(*box).to_real(theta)

    @property
    def _box(self) -> LogitBox | None:
        box = None if self.dims is None else self.dims.theta_box
        return None if box is None else LogitBox(*box)

    def _draw(self, network: Network, n: int, context: Tensor) -> Tensor:
        """n draws ``[n, theta_dim]`` of q(θ|x) for one context ``[1, C]`` (mapped back
        into the box when the network learnt z = logit(θ))."""
        draws = network.sample_given_summary(n, context)[0]
        return draws if self._box is None else self._box.to_box(draws)

    def _loss_function(self):
        loss = METHODS[self.method].loss
        noise = TrainingNoise(self.training.seed, self.device)

        def loss_fn(network: Network, batch: dict[str, Tensor], training: bool) -> Tensor:
            summary = network.summarize(batch["x"], batch.get("design"))
            return loss(network, batch["theta"], summary, noise(training))[None]

        return loss_fn

    # -- evaluation --------------------------------------------------------------------------
    def _context(self, x: Any, design: Any) -> tuple[Network, Tensor, bool]:
        """The network, the summary of (x, d) as the flow's context ``[batch, C]``, and
        whether x was one observation (x is embedded once per distinct row)."""
        network = self._require_fitted()
        parameter = next(network.parameters())
        x, single = x_batch(x, self.dims, parameter)
        if self.embedding is None:
            x = x.reshape(x.shape[0], -1)
        design = self._design_rows(design, parameter)
        summary = self._summary(network.embed, x)
        if design is not None:
            summary, design = pair_rows({"x": summary, "design": design})
            # the embedding already ran once per distinct x: append the design only
            summary = torch.cat([summary, network.design_standardize(design)], dim=1)
        return network, summary, single

    def _prior(self, prior: Distribution | None, device: torch.device) -> Distribution | None:
        if prior is None and self.prior is None:  # a loaded model: its saved BoxUniform
            self.prior = prior_from_description(self.prior_description)
        prior = self.prior if prior is None else as_prior(prior, self.dims.theta_dim)
        if isinstance(prior, BoxUniform):
            prior = prior.to(device)
        return prior

    def _posterior_prior(self, prior: Distribution | None) -> Distribution:
        prior = self._prior(prior, self.device)
        if prior is None:
            raise SimferError("pass the prior: this PosteriorEstimator was fitted without one")
        return prior

    def log_prob(
        self,
        *,
        theta: Any,
        x: Any,
        design: Any = None,
        prior: Distribution | None = None,
        leakage_correction: bool = False,
        n_estimate: int = 10_000,
    ) -> Tensor:
        """log q(θ|x, d) ``[batch]``; θ ``[batch, theta_dim]`` (or one ``[theta_dim]``), x one
        observation or ``[batch, *x_shape]``, and for a model trained with designs
        ``design`` ``[batch, design_dim]`` or one; one row broadcasts over the others'.

        With a bounded prior (the one given to `fit`, or ``prior``) it is −∞ outside the
        support; ``leakage_correction`` subtracts log P_q(θ ∈ support | x, d), estimated
        from ``n_estimate`` draws (one x and design only).  Differentiable when θ requires
        grad."""
        network = self._require_fitted()
        theta = as_batch(theta, (self.dims.theta_dim,), "theta", next(network.parameters()))
        prior = self._prior(prior, theta.device)
        grad = torch.is_grad_enabled() and theta.requires_grad
        with torch.set_grad_enabled(grad):
            _, context, _ = self._context(x, design)
            theta, summary = pair_rows({"theta": theta, "x": context})
            box = self._box
            if box is None:
                log_q = network.log_prob_given_summary(theta, summary)
            else:  # q(θ) = q_z(z(θ)) |det ∂z/∂θ| inside the box, 0 outside
                z = box.to_real(theta)
                log_q = network.log_prob_given_summary(z, summary) + box.log_abs_det(theta)
                low, high = (torch.tensor(v).to(theta) for v in self.dims.theta_box)
                inside = ((theta >= low) & (theta <= high)).all(-1)
                log_q = torch.where(inside, log_q, torch.full_like(log_q, -math.inf))
            if prior is not None:
                log_q = torch.where(
                    inside_support(prior, theta), log_q, torch.full_like(log_q, -math.inf)
                )
                if leakage_correction:
                    if not bool((context == context[:1]).all()):
                        raise ValueError("leakage_correction needs one observation x")
                    draws = self._draw(network, n_estimate, context[:1])
                    rate = float(inside_support(prior, draws).double().mean())
                    if rate == 0:
                        raise SimferError(
                            f"none of {n_estimate} draws of q(θ|x) fell inside the prior's "
                            f"support: the leakage correction is undefined at this x"
                        )
                    log_q = log_q - math.log(rate)
        return log_q

    def sample(
        self,
        n: int,
        *,
        x: Any,
        design: Any = None,
        seed: int | None = None,
        prior: Distribution | None = None,
        batch_size: int = 100_000,
    ) -> Tensor:
        """n draws of θ ~ q(θ|x, d), truncated to the prior's support by rejection.

        One observation x (``x_shape``) gives ``[n, theta_dim]``; a batch ``[m, *x_shape]``
        gives ``[m, n, theta_dim]`` (``design`` one for all or ``[m, design_dim]``).
        ``acceptance_rate`` then holds the fraction of proposals kept (a float, or ``[m]``
        for a batch).  ``seed`` makes the draws
        reproducible (the global generator is left as it was)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        with torch.no_grad():
            network, context, single = self._context(x, design)
        single = single and context.shape[0] == 1
        prior = self._prior(prior, context.device)
        with torch.no_grad(), seeded(seed) if seed is not None else contextlib.nullcontext():
            draws, rates = [], []
            for row in range(context.shape[0]):
                kept, rate = self._sample_one(network, context[row : row + 1], n, prior, batch_size)
                draws.append(kept)
                rates.append(rate)
        self.acceptance_rate = rates[0] if single else torch.tensor(rates)
        return draws[0] if single else torch.stack(draws)

    def _sample_one(self, network, context, n, prior, batch_size) -> tuple[Tensor, float]:
        if prior is None:
            return self._draw(network, n, context), 1.0
        kept, n_kept, n_drawn = [], 0, 0
        budget = math.ceil(n / self.min_acceptance)
        while n_kept < n:
            if n_drawn == 0:  # the draws of an unbounded prior are those of no prior at all
                wanted = n
            else:
                rate = max(n_kept / n_drawn, self.min_acceptance)
                wanted = math.ceil(1.2 * (n - n_kept) / rate) + 16
            k = min(wanted, batch_size, budget - n_drawn)
            if k <= 0:
                raise SimferError(
                    f"only {n_kept} of {n_drawn} draws of q(θ|x) ({n_kept / n_drawn:.3%}) fell "
                    f"inside the prior's support, below min_acceptance={self.min_acceptance:g}: "
                    f"the flow leaks nearly all its mass out of the prior at this x (is x far "
                    f"from the training simulations?)"
                    + (
                        ""
                        if self.bounded or not isinstance(prior, BoxUniform)
                        else "; PosteriorEstimator(bounded=True) learns q inside the box and "
                        "never leaks"
                    )
                )
            proposals = self._draw(network, k, context)
            inside = inside_support(prior, proposals)
            kept.append(proposals[inside])
            n_kept += int(inside.sum())
            n_drawn += k
        return torch.cat(kept)[:n], n_kept / n_drawn

    def event_term(self, prior: Distribution, x_obs: Any, *, design: Any = None) -> EventTerm:
        """ℓ(x | θ, d) = log q(θ | x, d) − log p(θ), since p(θ|x,d)/p(θ) = p(x|θ,d)/p(x|d);
        with one observation the posterior is also drawn directly from q, truncated to the
        prior's support."""
        network = self._require_fitted()
        x_obs, x_shape, as_x = observed_x(x_obs, self.dims, next(network.parameters()))
        prior_device = distribution_device(prior)

        def log_likelihood(x: Tensor, theta: Tensor, design: Tensor | None) -> Tensor:
            log_p = prior.log_prob(theta.to(prior_device)).to(theta.device)
            return self.log_prob(theta=theta, x=as_x(x), design=design) - log_p

        def direct(n: int, x: Tensor, design: Tensor | None) -> Tensor:
            draws = self.sample(n, x=as_x(x), design=design, prior=prior)
            return draws if draws.ndim == 3 else draws[None]

        def normalized_log_prob(theta: Tensor, x: Tensor, design: Tensor | None) -> Tensor:
            design = None if design is None else design[:1]
            return self.log_prob(theta=theta, x=as_x(x[:1]), design=design, prior=prior)

        return EventTerm(
            log_likelihood,
            x_obs,
            x_shape,
            design_dim=self.design_dim,
            direct=direct,
            normalized_log_prob=normalized_log_prob,
            model=self,
        )
