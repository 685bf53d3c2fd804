r"""Conditional normalizing flows: one small builder over nflows.

A flow models a density q(v|c) of a vector v ∈ R^D given a context c by an
invertible map f_c: R^D → R^D onto a standard normal base.  The change of
variables gives

    log q(v|c) = log N(f_c(v); 0, I) + log |det ∂f_c(v)/∂v|,

and f_c is a composition f_c = f_K ∘ … ∘ f_1 ∘ s of simple maps, so the log-determinant
is the sum of theirs.  Sampling inverts the chain: v = f_c⁻¹(u), u ~ N(0, I).  Training
maximises Σ log q(v_i|c_i) over simulated pairs: the minimiser of the expected negative
log-likelihood is q = p (it equals the KL divergence from p up to p's entropy).

The chain built here:

* s: standardisation v ↦ (v − μ)/σ with μ, σ stored in a `simfer.nn.Standardize`
  (buffers, saved with the weights); its log-determinant is −Σ log σ_i.  The context is
  standardised by a second `Standardize` (or passed through the user's embedding network,
  which is trained jointly).
* f_k: masked autoregressive transforms (MADE conditioners, Germain et al. 2015) with the
  context as an extra input of every layer, each followed by a reversal of the order
  (D = 2) or a fixed random permutation (D > 2), so every variable is conditioned on
  every other one somewhere in the chain.

  - ``"nsf"``: each variable goes through a monotone rational-quadratic spline (Durkan,
    Bekasov, Murray & Papamakarios, "Neural Spline Flows", NeurIPS 2019,
    arXiv:1906.04140) on [−B, B] with K bins whose widths, heights and knot derivatives
    are the MADE outputs; outside [−B, B] the map is the identity (linear tails).  A
    spline layer can make one mode into two, so a few of them model multimodal and
    curved posteriors that affine flows need many layers for.
  - ``"nsf-coupling"``: the same splines in coupling layers (Dinh et al.; sbi's ``nsf``):
    half the variables, alternating, are splined per layer, conditioned by a residual
    network on the other half and the context.  One conditioner pass samples, so drawing
    from it costs no more than evaluating it; it trains ~1.8× faster per step in 10-d, but
    is less accurate at equal epochs (docs/flows.md).  One feature falls back to the
    autoregressive form.
  - ``"maf"``: each variable goes through an affine map v_i ↦ v_i·softplus(a_i) + b_i
    (Papamakarios, Pavlakou & Murray, "Masked Autoregressive Flow", NeurIPS 2017,
    arXiv:1705.07057).

Defaults (untuned; checked on GaussianLinear and TwoMoons, see docs/flows.md): 5
transforms, MADE with 64 hidden units and 2 residual blocks, SiLU activations (a smooth
log q in the context, which SCANDAL's score term and gradient-based MCMC differentiate),
and for NSF 10 bins with a tail bound B = 4. After standardisation the inputs have unit
variance: a standard normal puts 6·10⁻⁵ of its mass beyond ±4 (2.7·10⁻³ beyond sbi's
±3), and a bounded prior standardises to within ±√3, so the splines act on essentially
all of the data while keeping a bin width of 0.8 standard deviations on average (the
widths are learnt).

Every transform starts as the identity (its conditioner's output layer has zero weights
and the identity's biases), so an untrained flow is the Gaussian with the training
data's mean and standard deviation and learns only the departures from it that the data
support; against nflows' random start this made NLE on GaussianLinear (3000
simulations) three times closer in KL and its score five times more accurate.

One feature (D = 1) works for both kinds: MADE then gives the single variable hidden
units that see only the context, i.e. a spline (or affine map) whose shape is any
function of the context.

Network weights are initialised from ``seed`` (`simfer.seeding.seeded`: the global torch
generator is forked, not touched), so a build is reproducible and a saved model rebuilds
bit-identically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from nflows.distributions import StandardNormal
from nflows.flows import Flow
from nflows.nn.nets import ResidualNet
from nflows.transforms import (
    CompositeTransform,
    MaskedAffineAutoregressiveTransform,
    MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
    PiecewiseRationalQuadraticCouplingTransform,
    RandomPermutation,
    ReversePermutation,
    Transform,
)
from torch import Tensor, nn

from ..seeding import seeded  # re-exported: `simfer.nn.flows.seeded` predates simfer.seeding
from .mlp import ACTIVATIONS, Standardize, check_activation
from .splines import rational_quadratic_spline

__all__ = [
    "FLOWS",
    "ConditionalFlow",
    "SplineAutoregressiveTransform",
    "SplineCouplingTransform",
    "StandardizeTransform",
    "build_flow",
    "conditioner_layers",
    "seeded",
]

FLOWS = ("nsf", "nsf-coupling", "maf")


@torch.no_grad()
def _start_at_identity(layer: Transform, features: int) -> None:
    """Make an autoregressive layer start as the identity map: the conditioner's output
    layer gets zero weights and the biases of the identity (spline: equal bins, unit knot
    derivatives; affine: scale 1, shift 0).  The flow then starts as the standardised
    Gaussian and learns only the departures from it that the data support."""
    if isinstance(layer, SplineCouplingTransform):
        final, features = layer.transform_net.final_layer, layer.num_transform_features
    else:
        final = layer.autoregressive_net.final_layer
    final.weight.zero_()
    bias = final.bias.view(features, -1)  # both conditioners group the outputs by variable
    bias.zero_()
    if isinstance(layer, MaskedAffineAutoregressiveTransform):
        bias[:, 0] = math.log(math.expm1(1.0 - layer._epsilon))  # softplus(u) + ε = 1
    else:
        bias[:, 2 * layer.num_bins :] = math.log(math.expm1(1.0 - layer.min_derivative))


def _spline(layer: Transform, inputs: Tensor, params: Tensor, inverse: bool):
    """A spline layer's splines on ``inputs`` ``[...]`` from the conditioner's ``params``
    ``[..., 3K − 1]`` (width logits, height logits, interior derivatives; nflows divides
    the first two by √hidden, kept so that weights carry over)."""
    bins = layer.num_bins
    return rational_quadratic_spline(
        inputs,
        params[..., :bins] * layer._logit_scale,
        params[..., bins : 2 * bins] * layer._logit_scale,
        params[..., 2 * bins :],
        bound=layer.tail_bound,
        inverse=inverse,
        min_bin_width=layer.min_bin_width,
        min_bin_height=layer.min_bin_height,
        min_derivative=layer.min_derivative,
    )


class SplineAutoregressiveTransform(MaskedPiecewiseRationalQuadraticAutoregressiveTransform):
    """nflows' masked autoregressive rational-quadratic transform (linear tails) with the
    spline evaluated by `simfer.nn.splines.rational_quadratic_spline`: the same
    parameters and the same function in fewer kernels.

    The inverse (sampling) runs the conditioner D times, as any autoregressive inverse
    must, but pass i inverts only variable i, whose parameters depend on variables < i
    alone (MADE's degrees); nflows inverts all D variables in every pass, D times the
    spline work.  Pass i also computes only variable i's 3K − 1 outputs of the final layer
    (1/D of it), and the context's terms and the masked weights are computed once for the
    D passes, not in each (`_MadeSteps`).
    """

    def __init__(self, features: int, hidden_features: int, context_features: int, **options):
        super().__init__(
            features=features,
            hidden_features=hidden_features,
            context_features=context_features,
            tails="linear",
            **options,
        )
        self._logit_scale = 1.0 / math.sqrt(hidden_features)

    def _elementwise(self, inputs: Tensor, autoregressive_params: Tensor, inverse: bool = False):
        bins = self.num_bins
        params = autoregressive_params.view(*inputs.shape, 3 * bins - 1)
        outputs, log_derivative = _spline(self, inputs, params, inverse)
        return outputs, log_derivative.sum(-1)

    def inverse(self, inputs: Tensor, context: Tensor | None = None):
        batch, features = inputs.shape
        conditioner = _MadeSteps(self.autoregressive_net, context, 3 * self.num_bins - 1)
        columns: list[Tensor] = []  # the variables found so far, [batch, 1] each
        logabsdet = inputs.new_zeros(batch)
        for i in range(features):
            known = torch.cat([*columns, inputs.new_zeros(batch, features - i)], dim=1)
            column, log_derivative = self._elementwise(
                inputs[:, i : i + 1], conditioner(known, i)[:, None], inverse=True
            )
            columns.append(column)
            logabsdet = logabsdet + log_derivative
        return torch.cat(columns, dim=1), logabsdet


class _MadeSteps:
    """nflows' residual MADE (no batch norm, no dropout) evaluated for one output variable
    at a time: ``self(known, i)`` is MADE(known, context)'s parameters of variable i
    ``[batch, width]``, exactly (up to the order of the sums).

    Variable i's outputs see only the hidden units of degree ≤ i (those that see variables
    < i), and such a unit receives only from units of degree ≤ its own, so pass i runs the
    network on those units alone: about half of them on average, a third of the work of the
    hidden layers.  The units are sorted by degree once, so each pass takes a leading block
    of every weight matrix; the context's terms, the biases and the masked weights are
    computed once for all D passes."""

    def __init__(self, made: nn.Module, context: Tensor | None, width: int):
        self.made, self.context, self.width = made, context, width
        self.activation = made.activation
        initial = made.initial_layer
        degree = initial.mask.sum(1)  # the number of variables each hidden unit sees
        order = torch.argsort(degree, stable=True)
        degree = degree[order]
        # hidden units variable i needs: those of degree ≤ i, a leading block once sorted
        self.needed = [
            int((degree <= i).sum()) for i in range(made.final_layer.mask.shape[0] // width)
        ]
        self.blockwise = _blockwise(made, order, degree, self.needed, width)
        if not self.blockwise:  # another MADE layout: the whole network in every pass
            return

        def sorted_terms(layer: nn.Module | None, bias: Tensor) -> Tensor:
            """(the context's term of ``layer``, if any) + ``bias``, units sorted."""
            term = bias if context is None or layer is None else layer(context) + bias
            return term[..., order]

        self.initial_weight = (initial.weight * initial.mask)[order]
        first = made.activation(made.context_layer(context)) if context is not None else 0.0
        self.initial_term = (first + initial.bias)[..., order]
        self.blocks = []
        for block in made.blocks:
            inner, outer = block.linear_layers
            self.blocks.append(
                (
                    (inner.weight * inner.mask)[order][:, order],
                    sorted_terms(getattr(block, "context_layer", None), inner.bias),
                    (outer.weight * outer.mask)[order][:, order],
                    outer.bias[order],
                )
            )
        final = made.final_layer
        self.final_weight = (final.weight * final.mask)[:, order]
        self.final_bias = final.bias

    def __call__(self, known: Tensor, i: int) -> Tensor:
        n, act = self.needed[i], self.activation
        rows = slice(i * self.width, (i + 1) * self.width)
        if not self.blockwise:
            return self.made(known, self.context)[:, rows]
        if n == 0:  # no hidden unit reaches variable 0 (nor the context): the bias alone
            return self.final_bias[rows].expand(known.shape[0], -1)
        temps = torch.addmm(self.initial_term[..., :n], known, self.initial_weight[:n].T)
        for inner, inner_term, outer, outer_bias in self.blocks:
            hidden = torch.addmm(inner_term[..., :n], act(temps), inner[:n, :n].T)
            temps = temps + torch.addmm(outer_bias[:n], act(hidden), outer[:n, :n].T)
        return torch.addmm(self.final_bias[rows], temps, self.final_weight[rows, :n].T)


def _blockwise(
    made: nn.Module, order: Tensor, degree: Tensor, needed: list[int], width: int
) -> bool:
    """Whether `_MadeSteps` may run ``made`` on leading blocks of its units sorted by
    ``order`` (``degree`` sorted likewise): residual blocks without batch norm or active
    dropout, each unit fed only by units of degree ≤ its own, and variable i's outputs
    only by its ``needed[i]`` first units."""
    if not made.use_residual_blocks or any(b.use_batch_norm for b in made.blocks):
        return False
    if made.training and any(b.dropout.p > 0 for b in made.blocks):
        return False
    higher = degree[None] > degree[:, None]  # [to, from]: fed by a unit of higher degree
    for block in made.blocks:
        for layer in block.linear_layers:
            if (layer.mask[order][:, order].bool() & higher).any():
                return False
    final_mask = made.final_layer.mask[:, order].view(-1, width, len(order))
    return not any(final_mask[i, :, n:].any() for i, n in enumerate(needed))


class SplineCouplingTransform(PiecewiseRationalQuadraticCouplingTransform):
    """A rational-quadratic coupling layer (linear tails): the variables where ``mask`` is
    ≤ 0 pass unchanged and, with the context, condition (through an nflows `ResidualNet`)
    the splines of the others.  Forward and inverse cost one conditioner pass each, so
    sampling is as fast as density evaluation; each layer transforms only part of v."""

    def __init__(
        self, mask: Tensor, hidden: int, context_features: int, blocks: int = 2, **options
    ):
        activation = options.pop("activation")

        def conditioner(in_features: int, out_features: int) -> ResidualNet:
            return ResidualNet(
                in_features,
                out_features,
                hidden_features=hidden,
                context_features=context_features,
                num_blocks=blocks,
                activation=activation,
            )

        super().__init__(mask, conditioner, tails="linear", **options)
        self._logit_scale = 1.0 / math.sqrt(hidden)

    def _piecewise_cdf(self, inputs: Tensor, transform_params: Tensor, inverse: bool = False):
        return _spline(self, inputs, transform_params, inverse)


class StandardizeTransform(Transform):
    """v ↦ (v − μ)/σ with log|det| = −Σ log σ; μ, σ are the buffers of a `Standardize`."""

    def __init__(self, features: int):
        super().__init__()
        self.standardize = Standardize(features)

    def _logabsdet(self, inputs: Tensor) -> Tensor:
        return -torch.log(self.standardize.std).sum().expand(inputs.shape[0])

    def forward(self, inputs: Tensor, context: Tensor | None = None):
        return self.standardize(inputs), self._logabsdet(inputs)

    def inverse(self, inputs: Tensor, context: Tensor | None = None):
        outputs = inputs * self.standardize.std + self.standardize.mean
        return outputs, -self._logabsdet(inputs)


class DesignContext:
    """What a conditional density model does with its context: the context's own summary
    (`embed`, defined by the model) with the standardised design ``[N, K]`` appended when
    the model takes one (``design_features`` K > 0, ``design_standardize``)."""

    def summarize(self, context: Tensor, design: Tensor | None = None) -> Tensor:
        """The context as the model sees it ``[N, C (+ K)]``: standardised, or embedded,
        with the standardised design ``[N, K]`` appended when the flow takes one."""
        summary = self.embed(context)
        if not self.design_features:
            if design is not None:
                raise ValueError("this flow takes no design")
            return summary
        if design is None:
            raise ValueError(f"this flow needs a design [N, {self.design_features}]")
        design = self.design_standardize(design.to(summary.dtype))
        return torch.cat([summary, design.expand(summary.shape[0], -1)], dim=1)


class ConditionalFlow(DesignContext, Flow):
    """An nflows ``Flow`` q(v|c, d) whose first transform standardises v and whose context
    network standardises c (or is the user's embedding); a design d, when the flow has
    ``design_features``, is standardised and appended to the context's summary.

    ``log_prob(v, context=c)``: v ``[N, D]``, c ``[N, C]`` (or ``[N, *x_shape]`` for an
    embedding) → ``[N]``.  ``sample(n, context=c)``: c ``[M, …]`` → ``[M, n, D]``.  With a
    design, use ``summarize(c, d)`` and the ``*_given_summary`` methods.
    """

    def __init__(
        self,
        transforms: list[Transform],
        features: int,
        context_net: nn.Module,
        design_features: int = 0,
    ):
        chain = CompositeTransform([StandardizeTransform(features), *transforms])
        super().__init__(chain, StandardNormal([features]), embedding_net=context_net)
        self.features = features
        self.design_features = int(design_features)
        # registered only with a design, so design-free models keep their saved keys
        if self.design_features:
            self.design_standardize = Standardize(self.design_features)

    @property
    def input_standardize(self) -> Standardize:
        return self._transform._transforms[0].standardize

    @property
    def context_standardize(self) -> Standardize | None:
        net = self._embedding_net
        return net if isinstance(net, Standardize) else None

    @property
    def embedding(self) -> nn.Module | None:
        net = self._embedding_net
        return None if isinstance(net, Standardize) else net

    def embed(self, context: Tensor) -> Tensor:
        """The context's own summary ``[N, C]``: standardised, or embedded (no design)."""
        return self._embedding_net(context)

    def log_prob_given_summary(self, inputs: Tensor, summary: Tensor) -> Tensor:
        """log q(v|c) ``[N]`` from v ``[N, D]`` and ``summarize(c)`` ``[N, C]`` (so that a
        caller pairing one c with many v summarises it once)."""
        noise, logabsdet = self._transform(inputs, context=summary)
        return self._distribution.log_prob(noise, context=summary) + logabsdet

    def sample_given_summary(self, n: int, summary: Tensor) -> Tensor:
        """n draws v ~ q(v|c) for each row of ``summarize(c)`` ``[M, C]`` → ``[M, n, D]``."""
        noise = self._distribution.sample(n, context=summary)  # [M, n, D]
        repeated = summary.repeat_interleave(n, dim=0)
        draws, _ = self._transform.inverse(noise.reshape(-1, self.features), context=repeated)
        return draws.reshape(summary.shape[0], n, self.features)

    def fit_standardization(
        self, inputs: Tensor, context: Tensor | None = None, design: Tensor | None = None
    ) -> None:
        """Set μ, σ of the inputs (and of the context, unless an embedding takes it, and of
        the design) from training data ``[N, D]`` (``[N, C]``, ``[N, K]``)."""
        self.input_standardize.fit(inputs)
        if context is not None and self.context_standardize is not None:
            self.context_standardize.fit(context)
        if design is not None and self.design_features:
            self.design_standardize.fit(design)


def conditioner_layers(hidden: int | Sequence[int]) -> tuple[int, int]:
    """(width, residual blocks) of a conditioner from ``hidden``, the widths of its hidden
    layers: an int w means (w, w, w, w), two residual blocks of two layers of width w; a
    sequence must hold one width an even number of times (one block per pair)."""
    if isinstance(hidden, int):
        widths = [hidden] * 4
    else:
        widths = [int(h) for h in hidden]
    if not widths or len(set(widths)) != 1 or len(widths) % 2 or widths[0] < 1:
        raise ValueError(
            f"a flow's conditioner is a residual network: its hidden layers share one positive "
            f"width and come in pairs (one residual block each), e.g. hidden=64 or (64, 64, 64, "
            f"64); got hidden={hidden!r}"
        )
    return widths[0], len(widths) // 2


def build_flow(
    kind: str,
    features: int,
    context_features: int,
    *,
    hidden: int | Sequence[int] = 64,
    n_transforms: int = 5,
    bins: int = 10,
    tail_bound: float = 4.0,
    activation: str = "silu",
    embedding: nn.Module | None = None,
    design_features: int = 0,
    seed: int = 0,
) -> ConditionalFlow:
    """A conditional flow q(v|c) over ``features`` variables (see the module docstring).

    Args:
        kind: ``"nsf"`` (autoregressive rational-quadratic splines, the default of
            simfer), ``"nsf-coupling"`` (coupling splines: faster, less accurate per epoch,
            see docs/flows.md) or ``"maf"``.
        features: D, the dimension of v (1 works).
        context_features: the dimension of the context the transforms see: of c itself,
            or of the embedding's output when ``embedding`` is given.
        hidden: the widths of each conditioner's hidden layers: an int w for two residual
            blocks of width w (the default, 64), or a sequence of one width repeated in
            pairs (`conditioner_layers`).
        n_transforms: number of autoregressive transforms.
        bins: spline bins (NSF).
        tail_bound: B, the half-width of the spline window in standardised units (NSF).
        activation: of the conditioners, one of `ACTIVATIONS`.  ``"silu"`` (default) keeps
            log q smooth in the context; ``"relu"`` (sbi's choice) fits sharp densities
            faster (TwoMoons NLE, 10⁴ simulations, 25 epochs: held-out NLL −4.20 against
            −3.98 for SiLU) and smooth ones slower (GaussianMixture: 1.237 against 1.200).
        embedding: a network applied to the raw context, trained jointly; the context is
            then not standardised (do it inside the embedding if it needs it).
        design_features: K, the number of design variables appended (standardised) to the
            context's summary; the transforms then see C + K context features.
        seed: seed of the initial weights and permutations.
    """
    kind = kind.lower()
    if kind not in FLOWS:
        raise ValueError(f"unknown flow {kind!r}; choose one of {list(FLOWS)}")
    if int(features) < 1:
        raise ValueError(f"features must be a positive integer, got {features}")
    hidden, blocks = conditioner_layers(hidden)
    if int(context_features) < 1:
        raise ValueError(f"context_features must be a positive integer, got {context_features}")
    if int(n_transforms) < 1 or int(bins) < 1 or not tail_bound > 0:
        raise ValueError(
            f"need n_transforms ≥ 1, bins ≥ 1 and tail_bound > 0; got {n_transforms}, "
            f"{bins}, {tail_bound}"
        )
    activation_fn = ACTIVATIONS[check_activation(activation)]
    if int(design_features) < 0:
        raise ValueError(f"design_features must be ≥ 0, got {design_features}")
    conditioner_context = int(context_features) + int(design_features)
    if embedding is not None and not isinstance(embedding, nn.Module):
        raise TypeError(f"embedding must be a torch.nn.Module, got {type(embedding).__name__}")
    with seeded(seed):
        transforms: list[Transform] = []
        for k in range(n_transforms):
            if kind == "nsf-coupling" and features > 1:  # alternate which half is splined
                mask = (torch.arange(features) + k) % 2 * 2 - 1
                layer = SplineCouplingTransform(
                    mask,
                    hidden,
                    conditioner_context,
                    blocks,
                    num_bins=bins,
                    tail_bound=float(tail_bound),
                    activation=activation_fn,
                )
            elif kind.startswith("nsf"):  # one feature: the autoregressive form
                layer = SplineAutoregressiveTransform(
                    features=features,
                    hidden_features=hidden,
                    context_features=conditioner_context,
                    num_bins=bins,
                    tail_bound=float(tail_bound),
                    num_blocks=blocks,
                    activation=activation_fn,
                )
            else:
                layer = MaskedAffineAutoregressiveTransform(
                    features=features,
                    hidden_features=hidden,
                    context_features=conditioner_context,
                    num_blocks=blocks,
                    activation=activation_fn,
                )
            _start_at_identity(layer, features)
            transforms.append(layer)
            if features > 1 and k < n_transforms - 1 and kind != "nsf-coupling":
                permutation = (
                    ReversePermutation(features) if features == 2 else RandomPermutation(features)
                )
                transforms.append(permutation)
        context_net = Standardize(context_features) if embedding is None else embedding
        return ConditionalFlow(transforms, features, context_net, int(design_features))
