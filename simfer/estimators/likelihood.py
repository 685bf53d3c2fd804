r"""`LikelihoodEstimator` (NLE, SCANDAL): a conditional flow q(x|θ) for the likelihood.

NLE (Papamakarios, Sterratt & Murray 2019, arXiv:1805.07226; Lueckmann et al. 2019).
Maximising Σ_i log q(x_i|θ_i) over pairs with x_i ~ p(x|θ_i) minimises
E_θ KL(p(x|θ) ‖ q(x|θ)) + const, whose minimiser is the likelihood for every θ the
training θ cover, whatever their distribution.  The surrogate then serves any prior and
any number of iid observations: log p(θ|x_1..n) = log p(θ) + Σ_j log q(x_j|θ) + const.

SCANDAL (Brehmer, Louppe, Pavez & Cranmer, PNAS 2020, arXiv:1805.12244) adds the
gold: the joint score t(x,z|θ) = ∇_θ log p(x,z|θ) is an unbiased target for the score,
E[t(x,z|θ) | x, θ] = ∇_θ log p(x|θ), so

    ℓ = −E log q(x|θ) + α E |∇_θ log q(x|θ) − t(x,z|θ)|²

has the same minimiser q = p, and the second term tells the flow how log q must change
with θ at every training point, not only where the θ happen to fall.  ∇_θ log q is the
autograd gradient of the flow's log-density with respect to its context θ, taken with
``create_graph`` during training so the term can be minimised.  The term's floor is the
irreducible E|t(x,z) − t(x)|² (zero without a latent), and its gradient with respect to
the flow vanishes in expectation at q = p.

The default α.  For a Gaussian location family, x ~ N(θ, σ²) fitted by q = N(aθ + b, σ²),
the two terms' curvatures in the error a − 1 are Var(θ)/(2σ²) (NLL) and
α(σ² + Var θ)/σ⁴ (score term): they are equal for α = ½ / (1/σ² + 1/Var θ), i.e. half
the inverse of (Fisher information + prior precision).  Applied per θ component, with
the Fisher information estimated by the joint scores' second moment, the default is

    α = ½ / (E|t(x,z|θ)|² / d + 1 / mean_i Var(θ_i)),

which is `simfer.losses.default_score_weight(joint_score, ratio_loss_at_start=d/2)` when
the data are informative (the score term then weighs as much as the likelihood term
near the optimum).  Like that default it is unit-free (α scales as θ²).

Failed simulations.  An observed x is a simulation that succeeded, so its likelihood is
p(x, valid|θ) = p(valid|θ) p(x|θ, valid).  Training on the valid rows only learns the
second factor; when the failure rate depends on θ, dropping failures makes the
surrogate posterior favour θ where the simulator fails often (every θ looks as likely
to yield a valid x).  So when the training rows hold failures, a small classifier
(an MLP on standardised θ, trained with the same `fit_network` on valid/failed labels
by a logit cross-entropy) learns log p(valid|θ) = log σ(logit), and `log_prob` returns
log q(x|θ, valid) + log p(valid|θ).

Only rows drawn at their own θ train the estimator: the reference-class rows of
``simfer.simulate(..., theta_ref=...)`` would put half the training mass at θ_ref.

A fixed embedding.  For x without a fixed shape (sets) or of high dimension, the flow can
model the density q(s(x)|θ) of a summary s(x) instead of x itself.  The summary must be
*fixed*: trained jointly, maximising log q(s(x)|θ) would reward s for shrinking its
spread (s(x) = ε·u(x) gains −dim·log ε, unbounded as ε → 0), so the fit degenerates into
a collapsing summary and an infinite density.  `LikelihoodEstimator` therefore never
trains its ``embedding``: it uses a frozen copy, warns when the module given still has
trainable parameters, and computes every summary once before the flow trains.  A good
fixed summary is the embedding of a `PosteriorEstimator` trained on the same kind of
data (``npe.embedding``), which is learnt to be informative about θ.  p(s(x)|θ) is a
proper likelihood of the summary, so NLE and SCANDAL stay consistent for it (the joint
score is unbiased for ∇_θ log p(s(x)|θ) too, s(x) being a function of x); it equals the
likelihood of x, up to a θ-independent factor, only when s is sufficient.

Ensembles.  With ``n_ensemble`` = E > 1, E flows q_e are trained one after another, each
by `fit_network` with its own early stopping, and the likelihood is their equal-weight
mixture

    q(x|θ) = (1/E) Σ_e q_e(x|θ),   log q(x|θ) = logsumexp_e log q_e(x|θ) − log E,

a normalised density, drawn from by picking a member uniformly for each draw.  By the
concavity of the logarithm, log q ≥ (1/E) Σ_e log q_e at every x: the mixture's expected
log-likelihood is at least the members' average, and it spreads mass where they disagree.
The members differ by their seed (initial weights and the order of the batches); all hold
out the same validation rows, so their held-out losses compare.  p(valid|θ) stays one
classifier, and a fixed embedding is shared: its summaries are computed once for all.

Integer-valued x (counts).  A density on integers is unbounded: q can stack a spike of any
height on every integer, so maximum likelihood never converges (on SIR's counts an NLE
improved for 5711 epochs).  Uniform dequantisation (Uria, Murray & Larochelle 2013; Theis,
van den Oord & Bethge 2016) trains on y = x + u instead, u ~ U[0, 1)^k drawn afresh in
every batch on the k columns whose training values are all integers.  For any density q,

    E_u log q(x + u|θ) ≤ log Q(x|θ),   Q(x|θ) = ∫_[0,1)^k q(x + u|θ) du,

and Q is a probability mass function on the integers, so the loss is bounded below by the
data's entropy and the fit converges; the bound is tight when q is flat on each unit cell,
which its maximiser approaches.  The learnt likelihood of an integer x is then read at the
cell's centre, log P(x|θ) ≈ log q(x + ½|θ) (the validation loss, too, so that early
stopping watches the quantity inference uses), and draws are ⌊y⌋.  The flow standardises
y by its own moments (μ + ½, √(σ² + 1/12)), so that the u of a count that is nearly always
0 stays inside the splines' window.  ``dequantize="auto"`` finds the integer columns; the
joint score of SCANDAL needs no change (u does not depend on θ).

The spline window.  Outside ±B (standardised units) a spline is the identity, so x there
get no learnt density, only the base Gaussian's.  Counts and ODE outputs are skewed: over
10⁴ prior draws SIR's late counts reach 5–9 standard units and LotkaVolterra's populations
15–25.  ``tail_bound="auto"`` takes the smallest whole B ≥ 4 that holds every
standardised training x (y on dequantised columns); Gaussian-like x keep B = 4.
"""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution

from .. import losses
from ..data import SimulationData
from ..errors import SimferError
from ..inference import EventTerm
from ..nn import EnsembleMLP, Standardize
from ..nn.flows import FLOWS, ConditionalFlow, build_flow, conditioner_layers
from ..nn.mlp import check_activation
from ..prior import as_prior, describe_prior
from ..seeding import seeded
from ..streaming import Moments, StoredSimulations, StreamedRows
from ..training import RowSource, TrainingHistory, fit_network
from .base import Estimator
from .dims import Dims
from .embedding import EmbeddingMixin, design_column, observed_x, summarize, x_batch
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

__all__ = [
    "LikelihoodEstimator",
    "LikelihoodNetwork",
    "ValidityNetwork",
    "log_prob_and_score",
]

METHODS = ("nle", "scandal")
# The p(valid|θ) classifier fits a smooth function of θ alone and hardly overfits; with
# the flow's batches (256) and step (10⁻³) it is still far from converged after a few
# epochs, when a noisy validation loss can stop it.  Smaller batches and a larger step
# converge in a few epochs.
VALIDITY_TRAINING = {"batch_size": 64, "learning_rate": 3e-3}
# the least spline window of tail_bound="auto": B = 4 holds all but 6·10⁻⁵ of a Gaussian
AUTO_TAIL_BOUND = 4.0


# -- the loss, as pure functions -------------------------------------------------------------
def log_prob_and_score(
    log_prob: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    theta: Tensor,
    *,
    create_graph: bool = False,
) -> tuple[Tensor, Tensor]:
    """log q(x|θ) ``[batch]`` and its score ∇_θ log q(x|θ) ``[batch, theta_dim]`` by autograd
    (``create_graph`` to differentiate the score again, as training does)."""
    with torch.enable_grad():
        theta = theta.detach().clone().requires_grad_(True)
        log_q = log_prob(x, theta)
        (score,) = torch.autograd.grad(log_q.sum(), theta, create_graph=create_graph)
    return log_q, score


# -- networks --------------------------------------------------------------------------------
class ValidityNetwork(nn.Module):
    """logit p(valid|θ, d) ``[batch]`` from an MLP on the standardised (θ, d) ``[batch,
    theta_dim + design_dim]``."""

    def __init__(self, theta_dim: int, hidden: Sequence[int], design_dim: int = 0):
        super().__init__()
        self.theta_standardize = Standardize(theta_dim + design_dim)
        self.mlp = EnsembleMLP(theta_dim + design_dim, 1, hidden, 1)

    def forward(self, theta: Tensor, design: Tensor | None = None) -> Tensor:
        inputs = theta if design is None else torch.cat([theta, design.to(theta.dtype)], 1)
        return self.mlp(self.theta_standardize(inputs))[0, :, 0]


class LikelihoodNetwork(nn.Module):
    """log q(x|θ, d) = log q(x|θ, d, valid) + log p(valid|θ, d) (the second term when
    failures were seen in training): x ``[batch, x_dim]``, θ ``[batch, theta_dim]``, d
    ``[batch, design_dim]`` or None → ``[batch]``.  With a (fixed) embedding, x here is the
    summary s(x) made by `summarize`.

    Given E > 1 flows, q(x|θ, d, valid) is their mixture (1/E) Σ_e q_e(x|θ, d, valid).
    One flow is the submodule ``flow`` (the model-file keys ``flow.*`` it has always had);
    E of them are ``flows`` (keys ``flows.0.*``, …); `members` lists them either way."""

    def __init__(
        self,
        flow: ConditionalFlow | Sequence[ConditionalFlow],
        validity: ValidityNetwork | None,
        embedding: nn.Module | None = None,
    ):
        super().__init__()
        flows = [flow] if isinstance(flow, ConditionalFlow) else list(flow)
        if not flows:
            raise ValueError("a LikelihoodNetwork needs at least one flow")
        self.n_ensemble = len(flows)
        if self.n_ensemble == 1:
            self.flow = flows[0]
        else:
            self.flows = nn.ModuleList(flows)
        self.validity = validity
        self.embedding = embedding

    @property
    def members(self) -> list[ConditionalFlow]:
        """The E flows q_e (one for a single flow)."""
        return [self.flow] if self.n_ensemble == 1 else list(self.flows)

    def summarize(self, x: Tensor) -> Tensor:
        """x flattened ``[batch, x_dim]``, or its summary by the fixed embedding."""
        return x.flatten(1) if self.embedding is None else self.embedding(x)

    def log_prob_valid(self, theta: Tensor, design: Tensor | None = None) -> Tensor:
        if self.validity is None:
            return theta.new_zeros(theta.shape[0])
        return F.logsigmoid(self.validity(theta, design))

    def log_prob_members(self, x: Tensor, theta: Tensor, design: Tensor | None = None) -> Tensor:
        """log q_e(x|θ, d, valid) of every member ``[E, batch]``."""
        return torch.stack(
            [f.log_prob_given_summary(x, f.summarize(theta, design)) for f in self.members]
        )

    def forward(self, x: Tensor, theta: Tensor, design: Tensor | None = None) -> Tensor:
        if self.n_ensemble == 1:
            log_q = self.flow.log_prob_given_summary(x, self.flow.summarize(theta, design))
        else:
            members = self.log_prob_members(x, theta, design)
            log_q = torch.logsumexp(members, 0) - math.log(self.n_ensemble)
        return log_q + self.log_prob_valid(theta, design)

    def sample(self, n: int, theta: Tensor, design: Tensor | None = None) -> Tensor:
        """n draws x ~ q(x|θ, d, valid) for each row of θ ``[M, theta_dim]`` (d ``[M,
        design_dim]`` or None) → ``[M, n, x_dim]``; from a mixture, each draw comes from a
        member picked uniformly, so member e makes about n/E of them."""
        if self.n_ensemble == 1:
            return self.flow.sample_given_summary(n, self.flow.summarize(theta, design))

        def draw(e: int, rows: Tensor) -> Tensor:
            flow = self.flows[e]
            summary = flow.summarize(theta[rows], None if design is None else design[rows])
            return flow.sample_given_summary(1, summary)[:, 0]

        return mixture_draws(self.n_ensemble, theta.shape[0], n, draw, theta.device)


class LikelihoodEstimator(EmbeddingMixin, Estimator):
    """Learn the likelihood q(x|θ) with a conditional normalizing flow (NLE, SCANDAL).

    Args:
        method: ``"nle"`` (maximum likelihood) or ``"scandal"`` (plus the joint-score term;
            needs ``simfer.simulate(..., gold=True)``).
        flow: ``"nsf"`` (default), ``"nsf-coupling"`` or ``"maf"``; see `simfer.nn.flows`.
        alpha: weight of SCANDAL's score term; None chooses
            `simfer.losses.default_scandal_weight` from the training data.
        hidden: the widths of each conditioner's hidden layers: an int w (default 64) for
            two residual blocks of width w, or a sequence such as (64, 64, 64, 64).
        n_transforms: number of autoregressive transforms
            (`simfer.nn.flows.build_flow`).
        bins: spline bins of each transform (`simfer.nn.flows.build_flow`).
        tail_bound: B, the half-width of the spline window in standardised units
            (`simfer.nn.flows.build_flow`), or ``"auto"`` (default): the smallest whole
            B ≥ 4 that holds every standardised training x (``dims.tail_bound``).  Outside
            the window a spline is the identity (see the module docstring).
        activation: activation of the conditioners (`simfer.nn.flows.build_flow`).
        validity_hidden: hidden widths of the p(valid|θ) classifier (trained only when the
            training rows hold failed simulations).
        n_ensemble: E, the number of flows, trained one after another (each with its own
            seed and early stopping); the likelihood is their equal-weight mixture (see the
            module docstring).  ``history`` is then the first member's training history and
            ``member_histories`` all E of them.
        dequantize: ``"auto"`` (default) dequantises the columns of x whose training values
            are all integers (counts: see the module docstring), ``True`` does the same
            but fails when there is none, ``False`` models every column as continuous.
            The columns used are ``dims.dequantized``; at evaluation such a column is
            rounded to the nearest integer.
        embedding: a *fixed* summary s(x) (``[batch, *x_shape]`` → ``[batch, k]``, or for
            set-valued x ``embedding(x, mask)``): the flow then models q(s(x)|θ).  It is
            never trained (see the module docstring for why); pass a pre-trained one such
            as ``npe.embedding``.  A frozen copy is kept; load a saved model with
            ``LikelihoodEstimator.load(path, embedding=...)``.
        **training: settings of `simfer.training.TrainingConfig`.
    """

    def __init__(
        self,
        method: str = "nle",
        flow: str = "nsf",
        *,
        alpha: float | None = None,
        hidden: int | Sequence[int] = 64,
        n_transforms: int = 5,
        bins: int = 10,
        tail_bound: float | str = "auto",
        activation: str = "silu",
        validity_hidden: Sequence[int] = (64, 64),
        n_ensemble: int = 1,
        dequantize: bool | str = "auto",
        embedding: nn.Module | dict | None = None,
        **training: Any,
    ):
        method, flow = str(method).lower(), str(flow).lower()
        if method not in METHODS:
            raise ValueError(f"unknown likelihood method {method!r}; choose one of {METHODS}")
        if flow not in FLOWS:
            raise ValueError(f"unknown flow {flow!r}; choose one of {list(FLOWS)}")
        if alpha is not None and not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be a finite number ≥ 0, got {alpha}")
        if (
            isinstance(n_ensemble, bool)
            or not isinstance(n_ensemble, numbers.Integral)
            or n_ensemble < 1
        ):
            raise ValueError(
                f"n_ensemble must be an integer ≥ 1 (the number of flows in the ensemble), "
                f"got {n_ensemble!r}"
            )
        if dequantize not in (True, False, "auto"):
            raise ValueError(f"dequantize must be 'auto', True or False, got {dequantize!r}")
        super().__init__(**training)
        self.method = method
        self.flow = flow
        self.alpha = None if alpha is None else float(alpha)
        conditioner_layers(hidden)  # a clear error now rather than at fit
        self.hidden = hidden if isinstance(hidden, int) else [int(h) for h in hidden]
        self.n_transforms = int(n_transforms)
        self.bins = int(bins)
        if tail_bound != "auto" and not (
            isinstance(tail_bound, numbers.Real) and math.isfinite(tail_bound) and tail_bound > 0
        ):
            raise ValueError(f"tail_bound must be 'auto' or a number > 0, got {tail_bound!r}")
        self.tail_bound = tail_bound if tail_bound == "auto" else float(tail_bound)
        self.activation = check_activation(activation)
        self.validity_hidden = tuple(int(h) for h in validity_hidden)
        self.n_ensemble = int(n_ensemble)
        self.dequantize = dequantize
        self.validity_history: TrainingHistory | None = None
        # set by fit; a model file keeps only `history` (the first member's)
        self.member_histories: list[TrainingHistory] | None = None
        self._init_embedding(embedding)
        if isinstance(embedding, dict) and self.embedding is not None:
            self.embedding.requires_grad_(False)  # an instance given to load(): fixed weights

    def hyperparameters(self) -> dict[str, Any]:
        return (
            {
                "method": self.method,
                "flow": self.flow,
                "alpha": self.alpha,
                "hidden": self.hidden,
                "n_transforms": self.n_transforms,
                "bins": self.bins,
                "tail_bound": self.tail_bound,
                "activation": self.activation,
                "validity_hidden": list(self.validity_hidden),
                "embedding": self._embedding_hyperparameter(),
            }
            | ({"n_ensemble": self.n_ensemble} if self.n_ensemble > 1 else {})
            | ({} if self.dequantize == "auto" else {"dequantize": self.dequantize})
        )

    @property
    def alpha_used(self) -> float | None:
        """The score-term weight α the fit used (None for NLE)."""
        return None if self.dims is None else self.dims.alpha

    def _build(self, dims: Dims) -> LikelihoodNetwork:
        self._require_embedding(dims)
        flows = [
            build_flow(
                self.flow,
                dims.x_dim,
                dims.theta_dim,
                hidden=self.hidden,
                n_transforms=self.n_transforms,
                bins=self.bins,
                tail_bound=self._window(dims),
                activation=self.activation,
                design_features=dims.design_dim,
                seed=seed,
            )
            for seed in member_seeds(self.training.seed, self.n_ensemble)
        ]
        validity = None
        if dims.validity:
            with seeded(self.training.seed + 1):
                validity = ValidityNetwork(dims.theta_dim, self.validity_hidden, dims.design_dim)
        return LikelihoodNetwork(flows, validity, self._embedding_module(dims.is_set))

    def _freeze_embedding(self) -> None:
        """Replace the embedding by a frozen copy, warning if it had trainable parameters."""
        trainable = sum(p.numel() for p in self.embedding.parameters() if p.requires_grad)
        if trainable:
            warnings.warn(
                f"LikelihoodEstimator keeps its embedding fixed: it learns the density "
                f"q(s(x)|θ) of the summary s, and a summary trained with it would collapse "
                f"(a shrinking s has an unbounded density). The {trainable} trainable "
                f"parameters of {type(self.embedding).__name__} are NOT trained here; a frozen "
                f"copy is used. Pass a pre-trained embedding (e.g. npe.embedding of a fitted "
                f"PosteriorEstimator) and call embedding.requires_grad_(False) to silence this.",
                UserWarning,
                stacklevel=3,
            )
        self.embedding = copy.deepcopy(self.embedding).requires_grad_(False).eval()

    # -- training ---------------------------------------------------------------------------
    def fit(self, data: TrainingData, prior: Distribution | None = None) -> LikelihoodEstimator:
        """Train q(x|θ) (q(x|θ, d) when ``data`` has a design column) on the rows drawn at
        their own θ (and p(valid|θ, d) if some of them failed).

        ``data``: a `SimulationData`, or a store (its path, or a
        `simfer.StoredSimulations`), streamed when it does not fit in ``max_memory``
        (`simfer.streaming`)."""
        data = training_source(data, self.training)
        if isinstance(data, StoredSimulations):
            return self._fit_streamed(data, prior)
        data = training_table(data)
        if data.from_reference is not None:
            data = data.subset(~data.from_reference)
        n_valid = int(data.valid.sum())
        if n_valid < 2:
            raise SimferError(
                f"fewer than two valid simulations drawn at their own θ to train on "
                f"({data.n_invalid} of {len(data)} rows failed)"
            )
        if self.method == "scandal" and not data.has_gold:
            raise SimferError(
                "SCANDAL mines gold: simulate with simfer.simulate(..., gold=True), or use "
                "method='nle'"
            )
        good = data.valid_only()
        x, x_dims = self._training_x(good)
        if self.embedding is not None:
            self._freeze_embedding()
            x = summarize(self._embedding_module(good.is_set), x).to(good.theta.dtype)
        dequantized = self._dequantized_columns(
            None if self.embedding is not None else _integer_columns(x)
        )
        tail_bound = self._tail_bound(Moments().add(x), x.amin(0), x.amax(0), dequantized)
        theta = good.theta
        tensors = {"x": x, "theta": theta}
        if design_column(good) is not None:
            tensors["design"] = good.design.to(theta.dtype)
        alpha = None
        if self.method == "scandal":
            tensors["joint_score"] = good.joint_score
            alpha = self.alpha
            if alpha is None:
                alpha = losses.default_scandal_weight(good.joint_score, theta)
        if prior is not None:
            self.prior_description = describe_prior(as_prior(prior, data.theta_dim))
        learn_validity = n_valid < len(data)
        self.dims = Dims(
            **x_dims,
            x_dim=x.shape[1],
            alpha=alpha,
            validity=learn_validity,
            valid_fraction=n_valid / len(data),
            n_train=n_valid,
            dequantized=dequantized,
            tail_bound=tail_bound,
        )
        network = self._build(self.dims)
        for flow in network.members:
            flow.fit_standardization(x, theta, tensors.get("design"))
            _standardize_dequantized(flow.input_standardize, dequantized)
        self.network = network

        def member_rows(e: int, seed: int) -> dict[str, Tensor] | RowSource:
            return tensors if e == 0 else MemberRows(tensors, seed)

        self._fit_members(network, self._loss_function(alpha), member_rows)
        if learn_validity:
            labels = {"theta": data.theta, "valid": data.valid.to(theta.dtype)}
            inputs = data.theta
            if self.dims.design_dim:
                labels["design"] = data.design.to(theta.dtype)
                inputs = torch.cat([inputs, labels["design"]], 1)
            network.validity.theta_standardize.fit(inputs)
            config = replace(self.training, **VALIDITY_TRAINING)
            if config.checkpoint:
                config = replace(config, checkpoint=f"{config.checkpoint}.validity")
            self.validity_history = fit_network(network.validity, _validity_loss, labels, config)
        network.to(self.device)
        return self

    def _fit_streamed(
        self, source: StoredSimulations, prior: Distribution | None
    ) -> LikelihoodEstimator:
        """`fit` on a store streamed a buffer at a time: one pass for the counts, the design,
        the standardisation (of the fixed embedding's summaries, if any) and SCANDAL's α,
        then `fit_network` on `StreamedRows` for the flow, and again for p(valid|θ, d)."""
        probe, _ = source.read(source.blocks()[:1])
        if self.method == "scandal" and not probe.has_gold:
            raise SimferError(
                "SCANDAL mines gold: simulate with simfer.simulate(..., gold=True), or use "
                "method='nle'"
            )
        del probe
        if self.embedding is not None:
            self._freeze_embedding()

        def own(data: SimulationData) -> SimulationData:
            return data if data.from_reference is None else data.subset(~data.from_reference)

        def x_of(good: SimulationData) -> Tensor:
            if self.embedding is None:
                return x_column(good, False)
            embedding = self._embedding_module(good.is_set)
            return summarize(embedding, x_column(good, True)).to(good.theta.dtype)

        names = ("x", "theta", "design", "score", "theta_all", "inputs_all")
        stats = {name: Moments() for name in names}
        first, integer, low, high = None, None, None, None
        for data, _ in source.buffers():
            data = own(data)
            stats["theta_all"].add(data.theta)
            if data.design is not None:
                stats["inputs_all"].add(
                    torch.cat([data.theta, data.design.to(data.theta.dtype)], 1)
                )
            good = data.valid_only()
            if len(good) == 0:
                continue
            first = good if first is None else first
            x = x_of(good)
            stats["x"].add(x)
            low = x.amin(0) if low is None else torch.minimum(low, x.amin(0))
            high = x.amax(0) if high is None else torch.maximum(high, x.amax(0))
            if self.embedding is None:
                integer = _integer_columns(x) & (True if integer is None else integer)
            stats["theta"].add(good.theta)
            if good.design is not None:
                stats["design"].add(good.design)
            if self.method == "scandal":
                stats["score"].add(good.joint_score)
        n_valid, n_own = stats["theta"].count, stats["theta_all"].count
        if n_valid < 2:
            raise SimferError(
                f"fewer than two valid simulations drawn at their own θ to train on in "
                f"'{source.path}' ({n_own - n_valid} of {n_own} rows failed)"
            )
        x_dims = streamed_x_dims(self, first, stats["design"])
        varying = x_dims["design_dim"] > 0
        alpha = None
        if self.method == "scandal":
            alpha = self.alpha
            if alpha is None:
                alpha = _scandal_weight(stats["score"], stats["theta"])
        if prior is not None:
            self.prior_description = describe_prior(as_prior(prior, first.theta_dim))
        learn_validity = n_valid < n_own
        dequantized = self._dequantized_columns(integer)
        self.dims = Dims(
            **x_dims,
            x_dim=int(stats["x"].mean.numel()),
            alpha=alpha,
            validity=learn_validity,
            valid_fraction=n_valid / n_own,
            n_train=n_valid,
            dequantized=dequantized,
            tail_bound=self._tail_bound(stats["x"], low, high, dequantized),
        )
        network = self._build(self.dims)
        for flow in network.members:
            stats["x"].fit(flow.input_standardize)
            _standardize_dequantized(flow.input_standardize, self.dims.dequantized)
            stats["theta"].fit(flow.context_standardize)
            if varying:
                stats["design"].fit(flow.design_standardize)

        def rows(data: SimulationData, _: Tensor) -> dict[str, Tensor]:
            good = own(data).valid_only()
            if len(good) == 0:  # no row left (an embedding cannot summarise none)
                return {}
            columns = {"x": x_of(good), "theta": good.theta}
            if varying:
                columns["design"] = good.design.to(good.theta.dtype)
            if alpha is not None:
                columns["joint_score"] = good.joint_score
            return columns

        self.network = network

        def member_rows(e: int, _: int) -> RowSource:
            return StreamedRows(source, rows) if e == 0 else MemberStream(source, rows, e)

        self._fit_members(network, self._loss_function(alpha), member_rows)
        if learn_validity:

            def labels(data: SimulationData, _: Tensor) -> dict[str, Tensor]:
                data = own(data)
                columns = {"theta": data.theta, "valid": data.valid.to(data.theta.dtype)}
                if varying:
                    columns["design"] = data.design.to(data.theta.dtype)
                return columns

            stats["inputs_all" if varying else "theta_all"].fit(network.validity.theta_standardize)
            config = replace(self.training, **VALIDITY_TRAINING)
            if config.checkpoint:
                config = replace(config, checkpoint=f"{config.checkpoint}.validity")
            self.validity_history = fit_network(
                network.validity, _validity_loss, StreamedRows(source, labels), config
            )
        network.to(self.device)
        return self

    def _fit_members(
        self,
        network: LikelihoodNetwork,
        loss_fn: Callable,
        rows: Callable[[int, int], dict[str, Tensor] | RowSource],
    ) -> None:
        """Train the flows one after another (`fit_members`); set ``history`` and
        ``member_histories``."""
        histories = fit_members(network.members, loss_fn, rows, self.training)
        self.history, self.member_histories = histories[0], histories

    def _dequantized_columns(self, integer: Tensor | None) -> tuple[int, ...] | None:
        """The columns to dequantise, from the mask ``[x_dim]`` of the training x's integer
        columns (None: the flow models an embedding's summaries, never dequantised)."""
        if self.dequantize is False:
            return None
        if integer is None:
            if self.dequantize is True:
                raise SimferError(
                    "dequantize=True dequantises integer columns of x itself, but this "
                    "LikelihoodEstimator models the summary s(x) of its embedding: pass "
                    "dequantize='auto' or False"
                )
            return None
        columns = tuple(int(i) for i in torch.nonzero(integer).flatten())
        if not columns and self.dequantize is True:
            raise SimferError(
                "dequantize=True, but no column of the training x holds only integers: pass "
                "dequantize='auto' or False to model x as continuous"
            )
        return columns or None

    def _window(self, dims: Dims) -> float:
        """B of the flows' splines: the one the fit chose, the number given, or for a MAF
        (which has no splines) the least window."""
        if dims.tail_bound is not None:
            return dims.tail_bound
        return AUTO_TAIL_BOUND if self.tail_bound == "auto" else self.tail_bound

    def _tail_bound(
        self, moments: Moments, low: Tensor, high: Tensor, dequantized: Sequence[int] | None
    ) -> float | None:
        """The spline window B of ``tail_bound="auto"``: the smallest whole number ≥ 4 with
        every training x (y = x + u on dequantised columns) inside ±B once standardised,
        from the x's moments and their per-column ``low`` and ``high`` ``[x_dim]``.  None
        for a fixed ``tail_bound`` (or a flow without splines)."""
        if self.tail_bound != "auto" or self.flow == "maf":
            return None
        standardize = Standardize(low.numel())
        moments.fit(standardize)
        _standardize_dequantized(standardize, dequantized)
        if dequantized is not None:
            high = high.clone()
            high[list(dequantized)] += 1
        z = torch.maximum(standardize(high[None]).abs(), standardize(low[None]).abs())
        return float(max(AUTO_TAIL_BOUND, math.ceil(float(z.max()))))

    def _loss_function(self, alpha: float | None):
        columns = self.dims.dequantized
        # the noise u has its own generator (the fit's seed + 2; + 1 seeds p(valid|θ))
        dequantize = None if columns is None else _Dequantizer(columns, self.training.seed + 2)

        def loss_fn(flow: ConditionalFlow, batch: dict[str, Tensor], training: bool) -> Tensor:
            design = batch.get("design")
            x = batch["x"]
            if dequantize is not None:
                x = dequantize(x) if training else cell_centres(x, columns)

            def log_q_of(x: Tensor, theta: Tensor) -> Tensor:
                return flow.log_prob_given_summary(x, flow.summarize(theta, design))

            if alpha is None:
                return losses.negative_log_likelihood(log_q_of(x, batch["theta"]))[None]
            log_q, score = log_prob_and_score(log_q_of, x, batch["theta"], create_graph=training)
            return losses.scandal(log_q, score, batch["joint_score"], alpha)[None]

        return loss_fn

    # -- evaluation --------------------------------------------------------------------------
    def _inputs(
        self, x: Any, theta: Any, design: Any
    ) -> tuple[LikelihoodNetwork, Tensor, Tensor, Tensor | None]:
        network = self._require_fitted()
        parameter = next(network.members[0].parameters())
        x, _ = x_batch(x, self.dims, parameter)
        theta = as_batch(theta, (self.dims.theta_dim,), "theta", parameter)
        design = self._design_rows(design, parameter)
        summary = self._summary(network.summarize, x).to(theta.dtype)
        if self.dims.dequantized is not None:
            summary = cell_centres(summary, self.dims.dequantized)
        x, theta, design = pair_rows({"x": summary, "theta": theta, "design": design})
        return network, x, theta, design

    def log_prob(self, *, x: Any, theta: Any, design: Any = None) -> Tensor:
        """log q(x|θ, d) ``[batch]`` (with log p(valid|θ, d) folded in when failures were
        seen): x ``[batch, *x_shape]`` or one x, θ ``[batch, theta_dim]`` or one θ, and for a
        model trained with designs ``design`` ``[batch, design_dim]`` or one; one row of
        any broadcasts over the others'.  Differentiable when θ (or x) requires grad."""
        network, x, theta, design = self._inputs(x, theta, design)
        grad = torch.is_grad_enabled() and (theta.requires_grad or x.requires_grad)
        with torch.set_grad_enabled(grad):
            return network(x, theta, design)

    def log_prob_valid(self, *, theta: Any, design: Any = None) -> Tensor:
        """log p(valid|θ, d) ``[batch]`` (zeros when no training simulation failed)."""
        network = self._require_fitted()
        parameter = next(network.parameters())
        theta = as_batch(theta, (self.dims.theta_dim,), "theta", parameter)
        design = self._design_rows(design, parameter)
        theta, design = pair_rows({"theta": theta, "design": design})
        with torch.no_grad():
            return network.log_prob_valid(theta, design)

    def score(self, *, x: Any, theta: Any, design: Any = None) -> Tensor:
        """∇_θ log q(x|θ, d) ``[batch, theta_dim]``."""
        network, x, theta, design = self._inputs(x, theta, design)
        _, score = log_prob_and_score(lambda x, theta: network(x, theta, design), x, theta)
        return score

    def sample(self, n: int, *, theta: Any, design: Any = None, seed: int | None = None) -> Tensor:
        """n draws x ~ q(x|θ, d, valid): ``[n, *x_shape]`` for one θ, ``[m, n, *x_shape]`` for
        θ ``[m, theta_dim]`` (and designs ``[m, design_dim]`` or one); ``seed`` makes them
        reproducible.  From an ensemble, each draw comes from a member picked uniformly."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        network = self._require_fitted()
        if self.dims.embedding:
            raise SimferError(
                "this LikelihoodEstimator models the summary s(x) of its embedding, not x: it "
                "cannot draw x (draw from the simulator instead)"
            )
        parameter = next(network.parameters())
        single = theta is not None and tuple(torch.as_tensor(theta).shape) == (self.dims.theta_dim,)
        theta = as_batch(theta, (self.dims.theta_dim,), "theta", parameter)
        design = self._design_rows(design, parameter)
        theta, design = pair_rows({"theta": theta, "design": design})
        single = single and theta.shape[0] == 1
        context = seeded(seed) if seed is not None else contextlib.nullcontext()
        with torch.no_grad(), context:
            draws = network.sample(n, theta, design)
        if self.dims.dequantized is not None:  # y = x + u: x = ⌊y⌋
            columns = list(self.dims.dequantized)
            draws[..., columns] = draws[..., columns].floor()
        draws = draws.reshape(theta.shape[0], n, *self.dims.x_shape)
        return draws[0] if single else draws

    def event_term(self, prior: Distribution, x_obs: Any, *, design: Any = None) -> EventTerm:
        """ℓ(x | θ, d) = log q(x | θ, d): the learnt likelihood itself."""
        network = self._require_fitted()
        x_obs, x_shape, as_x = observed_x(x_obs, self.dims, next(network.parameters()))

        def log_likelihood(x: Tensor, theta: Tensor, design: Tensor | None) -> Tensor:
            return self.log_prob(x=as_x(x), theta=theta, design=design)

        return EventTerm(log_likelihood, x_obs, x_shape, design_dim=self.design_dim, model=self)


def _integer_columns(x: Tensor) -> Tensor:
    """Which columns of x ``[n, x_dim]`` hold only integers ``[x_dim]`` (bool)."""
    return (x == x.round()).all(0)


def cell_centres(x: Tensor, columns: Sequence[int]) -> Tensor:
    """x ``[batch, x_dim]`` with the dequantised ``columns`` rounded to the nearest integer
    k and moved to the centre k + ½ of its cell [k, k + 1) (differentiable in the others)."""
    mask = torch.zeros(x.shape[-1], dtype=torch.bool, device=x.device)
    mask[list(columns)] = True
    return torch.where(mask, x.round() + 0.5, x)


def _standardize_dequantized(standardize: Standardize, columns: Sequence[int] | None) -> None:
    """Turn the μ, σ of x into those of y = x + u on the dequantised ``columns``: μ + ½ and
    √(σ² + 1/12).  A count that is nearly always 0 has σ ≪ 1, and its u would otherwise
    sit tens of standard units out, beyond the splines' window."""
    if columns is None:
        return
    columns = list(columns)
    with torch.no_grad():
        standardize.mean[columns] += 0.5
        standardize.std[columns] = (standardize.std[columns] ** 2 + 1 / 12).sqrt()


class _Dequantizer:
    """y = x + u with u ~ U[0, 1) on ``columns`` of x ``[batch, x_dim]`` (0 elsewhere),
    drawn from its own generator seeded by ``seed`` (created on the batches' device)."""

    def __init__(self, columns: Sequence[int], seed: int):
        self.columns, self.seed = list(columns), seed
        self.generator: torch.Generator | None = None

    def __call__(self, x: Tensor) -> Tensor:
        if self.generator is None or self.generator.device != x.device:
            self.generator = torch.Generator(x.device).manual_seed(self.seed)
        u = torch.zeros_like(x)
        u[:, self.columns] = torch.rand(
            (x.shape[0], len(self.columns)), generator=self.generator, device=x.device
        ).to(x.dtype)
        return x + u


def _scandal_weight(score: Moments, theta: Moments) -> float:
    """`simfer.losses.default_scandal_weight` from streamed moments: it depends on the data
    only through E|t|² and the variances of θ, so two rows with the same moments (each t of
    squared norm E|t|², θ at μ ± σ/√2 per component) give the same α."""
    d = theta.mean.numel()
    joint_score = torch.full((2, d), math.sqrt(float(score.second_moment.sum()) / d))
    half_width = (theta.variance / 2).sqrt()
    thetas = torch.stack([theta.mean - half_width, theta.mean + half_width])
    return losses.default_scandal_weight(joint_score.double(), thetas)


def _validity_loss(network: ValidityNetwork, batch: dict[str, Tensor], training: bool) -> Tensor:
    logits = network(batch["theta"], batch.get("design"))
    return losses.validity(logits, batch["valid"])[None]
