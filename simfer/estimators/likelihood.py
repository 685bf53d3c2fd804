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
"""

from __future__ import annotations

import contextlib
import copy
import math
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
from ..nn import EnsembleMLP, Standardize
from ..nn.flows import FLOWS, ConditionalFlow, build_flow, check_activation, seeded
from ..prior import as_prior, describe_prior
from ..training import TrainingHistory, fit_network
from .base import Estimator
from .embedding import EmbeddingMixin, summarize, x_batch
from .posterior import as_batch, pair_rows

__all__ = [
    "LikelihoodEstimator",
    "LikelihoodNetwork",
    "ValidityNetwork",
    "default_scandal_weight",
    "log_prob_and_score",
    "scandal_loss",
]

METHODS = ("nle", "scandal")
# The p(valid|θ) classifier fits a smooth function of θ alone and hardly overfits; with
# the flow's batches (256) and step (10⁻³) it is still far from converged after a few
# epochs, when a noisy validation loss can stop it.  Smaller batches and a larger step
# converge in a few epochs.
VALIDITY_TRAINING = {"batch_size": 64, "learning_rate": 3e-3}


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


def scandal_loss(
    log_q: Tensor,
    score: Tensor,
    joint_score: Tensor,
    alpha: float,
    *,
    weight: Tensor | None = None,
) -> Tensor:
    r"""SCANDAL: ℓ = −E log q(x|θ) + α E|∇_θ log q(x|θ) − t(x,z|θ)|².

    Shapes: ``log_q`` ``[batch]``, ``score`` and ``joint_score`` ``[batch, theta_dim]``,
    ``weight`` ``[batch]`` or None (self-normalised, as in `simfer.losses`).  Minimiser:
    q = p, where the score term's gradient vanishes in expectation and the term itself
    is the irreducible E|t(x,z) − t(x)|².  α = 0 is NLE.  Extreme values: none; a log
    density and a squared difference of finite scores, nothing clamped.
    """
    if weight is None:
        nll = -log_q.mean()
    else:
        nll = -(weight * log_q).sum() / weight.sum()
    return nll + alpha * losses.score_mse(score, joint_score, weight=weight)


def default_scandal_weight(joint_score: Tensor, theta: Tensor) -> float:
    """α = ½ / (E|t|²/d + 1/mean Var θ_i): see the module docstring for the derivation."""
    if not bool(torch.isfinite(joint_score).all()):
        raise ValueError("the joint scores of valid simulations hold NaN or inf: check the gold")
    d = joint_score.shape[1]
    fisher = float((joint_score.double() ** 2).sum(1).mean()) / d
    variance = float(theta.double().var(0).mean()) if theta.shape[0] > 1 else math.inf
    precision = 1 / variance if variance > 0 else 0.0
    if fisher + precision <= 0:
        raise ValueError("the joint scores are all zero and θ does not vary: α is undefined")
    return 0.5 / (fisher + precision)


# -- networks --------------------------------------------------------------------------------
class ValidityNetwork(nn.Module):
    """logit p(valid|θ) ``[batch]`` from an MLP on standardised θ ``[batch, theta_dim]``."""

    def __init__(self, theta_dim: int, hidden: Sequence[int]):
        super().__init__()
        self.theta_standardize = Standardize(theta_dim)
        self.mlp = EnsembleMLP(theta_dim, 1, hidden, 1)

    def forward(self, theta: Tensor) -> Tensor:
        return self.mlp(self.theta_standardize(theta))[0, :, 0]


class LikelihoodNetwork(nn.Module):
    """log q(x|θ) = log q(x|θ, valid) + log p(valid|θ) (the second term when failures were
    seen in training): x ``[batch, x_dim]``, θ ``[batch, theta_dim]`` → ``[batch]``.  With a
    (fixed) embedding, x here is the summary s(x) made by `summarize`."""

    def __init__(
        self,
        flow: ConditionalFlow,
        validity: ValidityNetwork | None,
        embedding: nn.Module | None = None,
    ):
        super().__init__()
        self.flow = flow
        self.validity = validity
        self.embedding = embedding

    def summarize(self, x: Tensor) -> Tensor:
        """x flattened ``[batch, x_dim]``, or its summary by the fixed embedding."""
        return x.flatten(1) if self.embedding is None else self.embedding(x)

    def log_prob_valid(self, theta: Tensor) -> Tensor:
        if self.validity is None:
            return theta.new_zeros(theta.shape[0])
        return F.logsigmoid(self.validity(theta))

    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        return self.flow.log_prob(x, context=theta) + self.log_prob_valid(theta)


class LikelihoodEstimator(EmbeddingMixin, Estimator):
    """Learn the likelihood q(x|θ) with a conditional normalizing flow (NLE, SCANDAL).

    Args:
        method: ``"nle"`` (maximum likelihood) or ``"scandal"`` (plus the joint-score term;
            needs ``simfer.simulate(..., gold=True)``).
        flow: ``"nsf"`` (default), ``"nsf-coupling"`` or ``"maf"``; see `simfer.nn.flows`.
        alpha: weight of SCANDAL's score term; None chooses `default_scandal_weight` from
            the training data.
        hidden, n_transforms, bins, tail_bound, activation: the flow's architecture
            (`simfer.nn.flows.build_flow`).
        validity_hidden: hidden widths of the p(valid|θ) classifier (trained only when the
            training rows hold failed simulations).
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
        hidden: int = 64,
        n_transforms: int = 5,
        bins: int = 10,
        tail_bound: float = 4.0,
        activation: str = "silu",
        validity_hidden: Sequence[int] = (64, 64),
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
        super().__init__(**training)
        self.method = method
        self.flow = flow
        self.alpha = None if alpha is None else float(alpha)
        self.hidden = int(hidden)
        self.n_transforms = int(n_transforms)
        self.bins = int(bins)
        self.tail_bound = float(tail_bound)
        self.activation = check_activation(activation)
        self.validity_hidden = tuple(int(h) for h in validity_hidden)
        self.validity_history: TrainingHistory | None = None
        self._init_embedding(embedding)
        if isinstance(embedding, dict) and self.embedding is not None:
            self.embedding.requires_grad_(False)  # an instance given to load(): fixed weights

    def hyperparameters(self) -> dict[str, Any]:
        return {
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

    @property
    def alpha_used(self) -> float | None:
        """The score-term weight α the fit used (None for NLE)."""
        return self.dims.get("alpha")

    def _build(self, dims: dict[str, Any]) -> LikelihoodNetwork:
        self._require_embedding(dims)
        flow = build_flow(
            self.flow,
            dims["x_dim"],
            dims["theta_dim"],
            hidden=self.hidden,
            n_transforms=self.n_transforms,
            bins=self.bins,
            tail_bound=self.tail_bound,
            activation=self.activation,
            seed=self.training.seed,
        )
        validity = None
        if dims.get("validity"):
            with seeded(self.training.seed + 1):
                validity = ValidityNetwork(dims["theta_dim"], self.validity_hidden)
        return LikelihoodNetwork(flow, validity, self._embedding_module(dims))

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
    def fit(self, data: SimulationData, prior: Distribution | None = None) -> LikelihoodEstimator:
        """Train q(x|θ) on the rows of ``data`` drawn at their own θ (and p(valid|θ) if some
        of them failed)."""
        if not isinstance(data, SimulationData):
            raise TypeError(f"fit() takes the SimulationData of simfer.simulate, got {type(data)}")
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
            x = summarize(self._embedding_module(x_dims), x).to(good.theta.dtype)
        theta = good.theta
        tensors = {"x": x, "theta": theta}
        alpha = None
        if self.method == "scandal":
            tensors["joint_score"] = good.joint_score
            alpha = self.alpha
            if alpha is None:
                alpha = default_scandal_weight(good.joint_score, theta)
        if prior is not None:
            self.prior_description = describe_prior(as_prior(prior, data.theta_dim))
        learn_validity = n_valid < len(data)
        self.dims = {
            "x_dim": x.shape[1],
            "theta_dim": data.theta_dim,
            **x_dims,
            "alpha": alpha,
            "validity": learn_validity,
            "valid_fraction": n_valid / len(data),
            "n_train": n_valid,
        }
        network = self._build(self.dims)
        network.flow.fit_standardization(x, theta)
        self.network = network
        self.history = fit_network(network.flow, self._loss_function(alpha), tensors, self.training)
        if learn_validity:
            network.validity.theta_standardize.fit(data.theta)
            config = replace(self.training, **VALIDITY_TRAINING)
            if config.checkpoint:
                config = replace(config, checkpoint=f"{config.checkpoint}.validity")
            labels = {"theta": data.theta, "valid": data.valid.to(theta.dtype)}
            self.validity_history = fit_network(network.validity, _validity_loss, labels, config)
        network.to(self.device)
        return self

    def _loss_function(self, alpha: float | None):
        def loss_fn(flow: ConditionalFlow, batch: dict[str, Tensor], training: bool) -> Tensor:
            if alpha is None:
                return -flow.log_prob(batch["x"], context=batch["theta"]).mean()[None]
            log_q, score = log_prob_and_score(
                lambda x, theta: flow.log_prob(x, context=theta),
                batch["x"],
                batch["theta"],
                create_graph=training,
            )
            return scandal_loss(log_q, score, batch["joint_score"], alpha)[None]

        return loss_fn

    # -- evaluation --------------------------------------------------------------------------
    def _inputs(self, x: Any, theta: Any) -> tuple[LikelihoodNetwork, Tensor, Tensor]:
        network = self._require_fitted()
        parameter = next(network.flow.parameters())
        x, _ = x_batch(x, self.dims, parameter)
        theta = as_batch(theta, (self.dims["theta_dim"],), "theta", parameter)
        summary = self._summary(network.summarize, x).to(theta.dtype)
        x, theta = pair_rows(summary, theta, ("x", "theta"))
        return network, x, theta

    def log_prob(self, x: Any, theta: Any) -> Tensor:
        """log q(x|θ) ``[batch]`` (with log p(valid|θ) folded in when failures were seen):
        x ``[batch, *x_shape]`` or one x, θ ``[batch, theta_dim]`` or one θ; one row
        broadcasts over the other's.  Differentiable when θ (or x) requires grad."""
        network, x, theta = self._inputs(x, theta)
        grad = torch.is_grad_enabled() and (theta.requires_grad or x.requires_grad)
        with torch.set_grad_enabled(grad):
            return network(x, theta)

    def log_prob_valid(self, theta: Any) -> Tensor:
        """log p(valid|θ) ``[batch]`` (zeros when no training simulation failed)."""
        network = self._require_fitted()
        theta = as_batch(theta, (self.dims["theta_dim"],), "theta", next(network.parameters()))
        with torch.no_grad():
            return network.log_prob_valid(theta)

    def score(self, x: Any, theta: Any) -> Tensor:
        """∇_θ log q(x|θ) ``[batch, theta_dim]``."""
        network, x, theta = self._inputs(x, theta)
        _, score = log_prob_and_score(network, x, theta)
        return score

    def sample(self, n: int, theta: Any, *, seed: int | None = None) -> Tensor:
        """n draws x ~ q(x|θ, valid): ``[n, *x_shape]`` for one θ, ``[m, n, *x_shape]`` for
        θ ``[m, theta_dim]``; ``seed`` makes them reproducible."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        network = self._require_fitted()
        if self.dims.get("embedding"):
            raise SimferError(
                "this LikelihoodEstimator models the summary s(x) of its embedding, not x: it "
                "cannot draw x (draw from the simulator instead)"
            )
        single = tuple(torch.as_tensor(theta).shape) == (self.dims["theta_dim"],)
        theta = as_batch(theta, (self.dims["theta_dim"],), "theta", next(network.parameters()))
        context = seeded(seed) if seed is not None else contextlib.nullcontext()
        with torch.no_grad(), context:
            draws = network.flow.sample(n, context=theta)
        draws = draws.reshape(theta.shape[0], n, *self.dims["x_shape"])
        return draws[0] if single else draws


def _validity_loss(network: ValidityNetwork, batch: dict[str, Tensor], training: bool) -> Tensor:
    """Cross-entropy of the logit of p(valid|θ) against the valid/failed labels."""
    return F.binary_cross_entropy_with_logits(network(batch["theta"]), batch["valid"])[None]
