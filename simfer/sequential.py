r"""`sequential`: multi-round inference for one observation x_o.

A single round spends every simulation on θ drawn from the prior, most of them where
p(θ | x_o) is negligible.  Sequential inference spends the budget over R rounds: round 1
draws θ from the prior; round r > 1 draws θ from a proposal p̃_r built from round r − 1's
posterior estimate; after every round a fresh copy of the estimator is fitted on *all*
simulations so far, and the last fit gives the posterior.  Pooled over the rounds, the
training θ follow the mixture

    p̄(θ) = Σ_r (n_r / N) p̃_r(θ),        p̃_1 = p,  N = Σ_r n_r,

and what each estimator learns from pairs θ ~ p̄, x ~ p(x|θ) decides whether its
posterior needs a correction.

NLE (and SCANDAL).  −E log q(x|θ) is minimised by q(x|θ) = p(x|θ) at every θ the
training θ cover, whatever their density (Papamakarios, Sterratt & Murray 2019,
arXiv:1805.07226): p(θ) q(x_o|θ) needs no correction.  The same holds for the
reference-class ratio methods (CARL, ROLR, ALICE, ALICES, RASCAL, CASCAL; Brehmer et al.
2020, arXiv:1805.12244): at each θ their loss contrasts x ~ p(x|θ) with x ~ p(x|θ_ref),
the rows of both classes carrying θ drawn from the same proposal, so the minimiser
log p(x|θ)/p(x|θ_ref) is pointwise in θ.

Contrastive NRE (NRE, BNRE).  The classifier tells joint pairs (θ, x) ~ p̄(θ) p(x|θ)
from marginal pairs (θ', x) ~ p̄(θ') p̄(x), θ' the θ of another training row (the same
pooled table) and p̄(x) = ∫ p̄(θ) p(x|θ) dθ.  Its Bayes-optimal logit is

    log [p̄(θ) p(x|θ)] / [p̄(θ) p̄(x)] = log p(x|θ) / p̄(x):

the proposal's density cancels because both classes draw θ from the same p̄, and what
is left differs from the likelihood by the θ-independent factor 1/p̄(x_o).  Hence
p(θ) r̂(x_o, θ) ∝ p(θ | x_o) with the *prior*, not the proposal, and no correction
(Hermans, Begy & Louppe 2020, arXiv:1903.04057; Durkan, Murray & Papamakarios 2020,
arXiv:2002.03712, the same for the multi-class SNRE-B; BNRE's balancing term keeps the
same minimiser, Delaunoy et al. 2022, arXiv:2208.13624).  Only where p̄(θ) > 0 is the
ratio learnt; round 1 covers the prior.  These methods default to posterior proposals:
round r's θ are MCMC draws of round r − 1's posterior.

NPE: truncated proposals (TSNPE; Deistler, Gonçalves & Macke, NeurIPS 2022,
arXiv:2210.04815).  The plain loss on pairs from p̄ learns p̄(θ|x) ∝ p̄(θ) p(x|θ), the
posterior under the proposal.  Posterior-shaped proposals would need APT's correction
(Greenberg et al. 2019), which simfer does not do; so NPE runs only with proposals that
are the prior truncated to a highest-probability region (HPR) of the current estimate,

    p̃_r(θ) = p(θ) 1[θ ∈ A_r] / P_p(A_r),    A_r = {θ : log q_{r−1}(θ | x_o) ≥ τ_r},

with τ_r the ε-quantile of log q_{r−1}(θ|x_o) over draws θ ~ q_{r−1}(·|x_o) (`hpr_threshold`),
so A_r holds 1 − ε of the estimate's mass (ε = 10⁻⁴ as in the paper).  Then
p̄(θ) = p(θ) w(θ) with w(θ) = Σ_r (n_r/N) 1[θ ∈ A_r] / P_p(A_r), piecewise constant
and equal to Σ_r n_r / (N P_p(A_r)) on A = ∩_r A_r (smaller, but not zero, outside A:
round 1 covers the prior).  So p̄(θ | x_o) ∝ p(θ|x_o) w(θ) has the true posterior's
shape on A and down-weights it outside.  The plain NPE loss on all rounds is therefore
right for x_o up to the true posterior's mass outside A, about ε per round when every
region A_r covers the true posterior, as TSNPE assumes.  That fails when an early
estimate is overconfident and cuts off part of the posterior; the history's
``prior_mass`` shows how far the regions shrank.
p̃_r is sampled by rejection from the prior (the default of sbi's ``RestrictedPrior``,
which also offers sampling-importance-resampling from q for regions too small for
rejection; simfer does not): the acceptance rate is P_p(A_r), reported as the round's
``prior_mass`` (the truncation volume measured in prior mass).  NLE and NRE may use
truncated proposals too (``truncation=ε``); they need no correction with either kind.
"""

from __future__ import annotations

import copy
import math
import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution
from tqdm.auto import tqdm

from .data import RaggedSets, SimulationData
from .errors import ShapeError, SimferError
from .estimators import LikelihoodEstimator, PosteriorEstimator, RatioEstimator, ScoreEstimator
from .estimators.base import Estimator
from .estimators.ratio import METHODS as RATIO_METHODS
from .inference import Posterior
from .prior import TruncatedPrior, as_prior
from .runner import simulate
from .seeding import seeded
from .simulator import Simulator

__all__ = [
    "SequentialResult",
    "SequentialRound",
    "TruncatedPrior",  # re-exported from simfer.prior
    "hpr_threshold",
    "round_seed",
    "sequential",
]

SUPPORTED = (PosteriorEstimator, LikelihoodEstimator, RatioEstimator)
DEFAULT_EPSILON = 1e-4
# simulate() arguments that sequential() sets itself, round by round
RESERVED_OPTIONS = ("simulator", "prior", "n", "seed", "path")


# -- the truncated prior ------------------------------------------------------------------
def hpr_threshold(log_density: Tensor, epsilon: float) -> float:
    """τ such that {θ : log q(θ) ≥ τ} holds 1 − ε of q's mass, from log q at N draws of q
    ``[N]``: the ⌊εN⌋-th smallest value (counting from 0), so at most εN draws fall below.
    With N < 1/ε it is the smallest value: the region then holds every draw."""
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must lie in (0, 1), got {epsilon}")
    values = torch.as_tensor(log_density).flatten()
    values = values[~torch.isnan(values)]
    if values.numel() == 0:
        raise SimferError("no finite log-density among the draws: the HPR is undefined")
    k = min(int(math.floor(epsilon * values.numel())), values.numel() - 1)
    return float(torch.kthvalue(values.cpu(), k + 1).values)


class _Draws(Distribution):
    """A fixed table of draws handed out in order, each row once: the θ of a round whose
    proposal is sampled up front (MCMC draws of a posterior) fed to `simulate`."""

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, draws: Tensor, support_of: Distribution):
        self.draws = draws
        self.support_of = support_of
        self.cursor = 0
        super().__init__(torch.Size(), torch.Size(draws.shape[1:]), validate_args=False)

    @property
    def support(self):
        return self.support_of.support

    def sample(self, sample_shape: torch.Size | Sequence[int] = ()) -> Tensor:
        shape = torch.Size(sample_shape)
        n = math.prod(shape)
        if self.cursor + n > self.draws.shape[0]:
            raise SimferError(
                f"asked for {n} more proposal draws than the {self.draws.shape[0]} drawn"
            )
        rows = self.draws[self.cursor : self.cursor + n]
        self.cursor += n
        return rows.reshape(*shape, *self.event_shape)


# -- the result ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SequentialRound:
    """What one round did.

    Attributes:
        round: 1, 2, …
        proposal: ``"prior"``, ``"posterior"`` (MCMC or direct draws of the previous
            round's posterior) or ``"truncated prior"``.
        n_simulations: simulations of this round; ``n_total``: of all rounds so far.
        n_invalid: this round's failed simulations.
        prior_mass: the proposal's share of the prior's mass: 1 for the prior, P_p(A_r)
            for a truncated prior (its rejection acceptance rate), None for posterior
            proposals.
        threshold: τ_r of the truncation region (log-density units), or None.
        sampler: the diagnostics of the posterior draws behind the proposal (R̂, ESS, …
            for MCMC), or None.
        proposal_seconds, simulate_seconds, train_seconds: wall times.
        epochs: training epochs of this round's fit.
    """

    round: int
    proposal: str
    n_simulations: int
    n_total: int
    n_invalid: int
    prior_mass: float | None
    threshold: float | None
    sampler: dict | None
    proposal_seconds: float
    simulate_seconds: float
    train_seconds: float
    epochs: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SequentialResult:
    """The outcome of `sequential`.

    Attributes:
        posterior: the final `simfer.inference.Posterior` p(θ | x_o).
        estimators: the fitted estimator of every round (the last gives ``posterior``).
        proposals: what each round drew θ from: the prior, a previous round's `Posterior`,
            or a `TruncatedPrior`.
        data: the `SimulationData` of every round.
        history: a `SequentialRound` per round.
        seed: the seed the run derived its rounds' seeds from.
    """

    posterior: Posterior
    estimators: list[Estimator]
    proposals: list[Any]
    data: list[SimulationData]
    history: list[SequentialRound]
    seed: int

    @property
    def estimator(self) -> Estimator:
        """The last round's estimator."""
        return self.estimators[-1]

    @property
    def simulations(self) -> SimulationData:
        """All rounds' simulations in one table (what the last estimator was fitted on)."""
        return SimulationData.concatenate(self.data)

    def summary(self) -> str:
        """The history as a markdown table."""
        lines = [
            "| round | proposal | simulations | total | prior mass | train s | epochs |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for h in self.history:
            mass = "—" if h.prior_mass is None else f"{h.prior_mass:.3g}"
            lines.append(
                f"| {h.round} | {h.proposal} | {h.n_simulations:,} | {h.n_total:,} | {mass} | "
                f"{h.train_seconds:.1f} | {h.epochs} |"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"SequentialResult({len(self.history)} rounds, {self.history[-1].n_total:,} "
            f"simulations, {type(self.estimator).__name__})"
        )


# -- the loop -------------------------------------------------------------------------------
def sequential(
    simulator: Simulator,
    prior: Distribution,
    x_obs: Any,
    estimator: Estimator,
    *,
    rounds: int,
    n_per_round: int | Sequence[int],
    truncation: float | str | None = "auto",
    hpr_draws: int | None = None,
    seed: int | None = None,
    simulate_options: dict[str, Any] | None = None,
    sample_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> SequentialResult:
    """Multi-round inference for the one observation ``x_obs`` (see the module docstring
    for the method and when it is correct).

    Args:
        simulator: any `simfer.Simulator`.
        prior: the prior p(θ) (a torch distribution with event shape ``[theta_dim]``).
        x_obs: one observation of shape ``simulator.x_shape``.
        estimator: a `PosteriorEstimator` (TSNPE), `LikelihoodEstimator` (SNLE) or
            `RatioEstimator` (SNRE; the reference-class methods need ``theta_ref`` and, for
            gold, ``gold=True`` in ``simulate_options``).  It is a template: every round
            fits a fresh copy of it, left untouched itself.
        rounds: the number of rounds R ≥ 1 (R = 1 is plain amortized training).
        n_per_round: simulations per round: one number, or one per round.
        truncation: ε of the truncated-prior proposals (the region holds 1 − ε of the
            current estimate's mass), or None for posterior proposals.  ``"auto"``:
            10⁻⁴ for NPE, which needs truncation, and None for NLE and NRE.
        hpr_draws: draws of the current estimate that set τ: default 10⁵ when the
            posterior is sampled directly (NPE), 10⁴ by MCMC.
        seed: makes the run reproducible (every round's simulations and proposal draws
            derive from it); None draws one (kept in ``result.seed``).
        simulate_options: keyword arguments of `simfer.simulate` for every round
            (``executor``, ``gold``, ``theta_ref``, a fixed ``design``, ``chunk_size``, …;
            not ``n``, ``seed`` or ``path``).
        sample_options: keyword arguments of `Posterior.sample` for the MCMC draws of
            posterior proposals and of the HPR (``n_chains``, ``warmup``, ``method``, …).
        progress: show a bar over the rounds (and `simulate`'s bars unless
            ``simulate_options`` says otherwise; training bars follow the estimator's own
            ``progress`` setting).

    Returns:
        A `SequentialResult`: the final posterior, every round's proposal, data and
        estimator, and the history.
    """
    _check_estimator(estimator)
    if not isinstance(simulator, Simulator):
        raise TypeError(f"sequential() needs a simfer.Simulator, got {type(simulator).__name__}")
    if not isinstance(rounds, int | np.integer) or isinstance(rounds, bool) or rounds < 1:
        raise ValueError(f"rounds must be an integer ≥ 1, got {rounds!r}")
    sizes = _round_sizes(n_per_round, int(rounds))
    epsilon = _epsilon(truncation, estimator)
    prior = as_prior(prior, simulator.theta_dim)
    x_obs = _observation(x_obs, simulator)
    options = _simulate_options(simulate_options, estimator)
    options.setdefault("progress", progress)
    design = _observation_design(options.get("design"))
    sample_options = dict(sample_options or {})
    seed = secrets.randbits(62) if seed is None else int(seed)

    estimators: list[Estimator] = []
    proposals: list[Any] = []
    data: list[SimulationData] = []
    history: list[SequentialRound] = []
    posterior: Posterior | None = None
    bar = tqdm(total=len(sizes), desc="sequential", unit="round", disable=not progress)
    for r, n in enumerate(sizes):
        start = time.perf_counter()
        if posterior is None:
            proposal, source, info = prior, prior, {"proposal": "prior", "prior_mass": 1.0}
        elif epsilon is not None:
            proposal = _truncated_prior(
                posterior,
                prior,
                epsilon,
                hpr_draws,
                sample_options,
                round_seed(seed, r, "proposal"),
            )
            source = proposal
            info = {
                "proposal": "truncated prior",
                "prior_mass": proposal.prior_mass,
                "threshold": proposal.threshold,
                "sampler": dict(posterior.diagnostics),
            }
        else:
            draws = posterior.sample(n, seed=round_seed(seed, r, "proposal"), **sample_options)
            order = torch.randperm(
                n, generator=torch.Generator().manual_seed(round_seed(seed, r, "order"))
            )
            proposal, source = posterior, _Draws(draws.detach().cpu()[order], prior)
            info = {"proposal": "posterior", "sampler": dict(posterior.diagnostics)}
        proposal_seconds = time.perf_counter() - start

        start = time.perf_counter()
        round_data = simulate(simulator, source, n, seed=round_seed(seed, r, "simulate"), **options)
        simulate_seconds = time.perf_counter() - start
        if isinstance(proposal, TruncatedPrior):  # sampling refined the mass estimate
            info["prior_mass"] = proposal.prior_mass
        data.append(round_data)

        start = time.perf_counter()
        fitted = copy.deepcopy(estimator).fit(SimulationData.concatenate(data), prior)
        posterior = fitted.posterior(prior, x_obs, design=design)
        train_seconds = time.perf_counter() - start
        estimators.append(fitted)
        proposals.append(proposal)
        history.append(
            SequentialRound(
                round=r + 1,
                proposal=info["proposal"],
                n_simulations=n,
                n_total=sum(len(d) for d in data),
                n_invalid=round_data.n_invalid,
                prior_mass=info.get("prior_mass"),
                threshold=info.get("threshold"),
                sampler=info.get("sampler"),
                proposal_seconds=proposal_seconds,
                simulate_seconds=simulate_seconds,
                train_seconds=train_seconds,
                epochs=None if fitted.history is None else len(fitted.history.train_loss),
            )
        )
        bar.update(1)
        mass = history[-1].prior_mass
        bar.set_postfix(sims=history[-1].n_total, mass="—" if mass is None else f"{mass:.2g}")
    bar.close()
    return SequentialResult(posterior, estimators, proposals, data, history, seed)


def _truncated_prior(
    posterior: Posterior,
    prior: Distribution,
    epsilon: float,
    hpr_draws: int | None,
    sample_options: dict[str, Any],
    seed: int,
) -> TruncatedPrior:
    """The prior truncated to the 1 − ε HPR of ``posterior`` (τ from its own draws)."""
    direct = posterior.normalized  # NPE with one observation: direct draws, normalised
    n = hpr_draws or (100_000 if direct else 10_000)
    options = {} if direct else sample_options
    draws = posterior.sample(int(n), seed=seed, **options)
    with torch.no_grad():
        threshold = hpr_threshold(posterior.log_prob(draws), epsilon)

    def log_density(theta: Tensor) -> Tensor:
        return posterior.log_prob(theta)

    with seeded(seed):  # as many pilot draws as HPR draws estimate the region's prior mass
        return TruncatedPrior(prior, log_density, threshold, n_pilot=int(n))


PURPOSES = ("simulate", "proposal", "order")


def round_seed(seed: int, round_index: int, purpose: str = "simulate") -> int:
    """The seed a run with ``seed`` uses in round ``round_index`` (0 for the first) for
    ``purpose``: ``"simulate"`` (the round's `simfer.simulate` call), ``"proposal"`` (the
    posterior draws behind its proposal) or ``"order"`` (their shuffle).  Another library's
    run can share round 1's simulations: ``simfer.simulate(sim, prior, n,
    seed=round_seed(seed, 0))``."""
    key = (int(round_index), PURPOSES.index(purpose))
    sequence = np.random.SeedSequence(int(seed), spawn_key=key)
    return int(sequence.generate_state(1, dtype=np.uint64)[0]) >> 2


# -- argument checks ------------------------------------------------------------------------
def _check_estimator(estimator: Any) -> None:
    if isinstance(estimator, type):
        raise TypeError(
            f"pass an estimator instance, e.g. {estimator.__name__}(max_epochs=...), not the "
            f"class: each round fits a fresh copy of it"
        )
    if isinstance(estimator, ScoreEstimator):
        raise TypeError(
            "sequential() does not support ScoreEstimator: SALLY's posterior is a local "
            "Gaussian model around θ_ref, not a global surrogate to refit round by round; use "
            "PosteriorEstimator (TSNPE), LikelihoodEstimator (SNLE) or RatioEstimator (SNRE)"
        )
    if not isinstance(estimator, SUPPORTED):
        raise TypeError(
            f"sequential() runs a PosteriorEstimator (TSNPE), LikelihoodEstimator (SNLE) or "
            f"RatioEstimator (SNRE); got {type(estimator).__name__}"
        )


def _round_sizes(n_per_round: int | Sequence[int], rounds: int) -> list[int]:
    if isinstance(n_per_round, int | np.integer) and not isinstance(n_per_round, bool):
        sizes = [int(n_per_round)] * rounds
    elif isinstance(n_per_round, Sequence) and not isinstance(n_per_round, str):
        sizes = list(n_per_round)
        if len(sizes) != rounds:
            raise ValueError(
                f"n_per_round lists {len(sizes)} sizes for rounds={rounds}: give one per round"
            )
    else:
        raise TypeError(f"n_per_round must be an int or a list of ints, got {n_per_round!r}")
    for n in sizes:
        if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 2:
            raise ValueError(f"every round needs an integer ≥ 2 of simulations, got {n!r}")
    return [int(n) for n in sizes]


def _epsilon(truncation: float | str | None, estimator: Estimator) -> float | None:
    npe = isinstance(estimator, PosteriorEstimator)
    if isinstance(truncation, str):
        if truncation != "auto":
            raise ValueError(f"truncation must be a float ε, None or 'auto', got {truncation!r}")
        return DEFAULT_EPSILON if npe else None
    if truncation is None:
        if npe:
            raise ValueError(
                "NPE needs truncated proposals (truncation=ε, e.g. 1e-4): trained with the plain "
                "loss on θ from the previous posterior it would learn the proposal posterior "
                "p̃(θ|x) ∝ p(θ|x) p̃(θ)/p(θ), not p(θ|x); within a truncated prior p̃ ∝ p and "
                "no correction is needed (TSNPE)"
            )
        return None
    epsilon = float(truncation)
    if not 0 < epsilon < 1:
        raise ValueError(f"truncation ε must lie in (0, 1), got {truncation!r}")
    return epsilon


def _observation(x_obs: Any, simulator: Simulator) -> Any:
    """x_obs as one observation of the simulator's x_shape (set-valued x and simulators that
    learn their shape on the first call pass unchecked; the estimator checks them)."""
    shape = simulator.x_shape
    if shape is None or None in shape:
        if isinstance(x_obs, RaggedSets) and len(x_obs) != 1:
            raise ShapeError(f"x_obs must be one observation, got {len(x_obs)} sets")
        return x_obs
    x = torch.as_tensor(x_obs)
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if tuple(x.shape) == (1, *shape):
        x = x[0]
    elif shape == (1,) and x.ndim == 0:
        x = x.reshape(1)
    if tuple(x.shape) != tuple(shape):
        raise ShapeError(
            f"x_obs must be one observation of shape {list(shape)} for '{simulator.name}', "
            f"got {list(x.shape)}; sequential inference targets a single observation (for n "
            f"iid events fit once and use estimator.posterior(prior, x_obs))"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x_obs holds NaN or inf: a failed simulation is not an observation")
    return x


def _simulate_options(options: dict[str, Any] | None, estimator: Estimator) -> dict[str, Any]:
    options = dict(options or {})
    reserved = sorted(set(options) & set(RESERVED_OPTIONS))
    if reserved:
        raise ValueError(
            f"simulate_options may not set {reserved}: sequential() chooses the proposal, the "
            f"number of simulations and every round's seed itself (pass seed= to sequential)"
        )
    gold = bool(options.get("gold", False))
    if isinstance(estimator, RatioEstimator):
        method = RATIO_METHODS[estimator.method]
        if method.needs_reference and options.get("theta_ref") is None:
            raise SimferError(
                f"ratio method '{estimator.method}' contrasts x at θ with x at θ_ref: pass "
                f"simulate_options={{'theta_ref': ..., 'gold': {method.needs_gold}}} (or use "
                f"'nre', 'bnre', 'nre_b' or 'nre_c', which need no reference class)"
            )
        if method.needs_gold and not gold:
            raise SimferError(
                f"ratio method '{estimator.method}' mines gold: pass simulate_options="
                f"{{'gold': True, 'theta_ref': ...}}"
            )
    if isinstance(estimator, LikelihoodEstimator) and estimator.method == "scandal" and not gold:
        raise SimferError("SCANDAL mines gold: pass simulate_options={'gold': True}")
    return options


def _observation_design(design: Any) -> Any:
    """The design of x_o: the fixed design every round simulates at, or None."""
    if design is None:
        return None
    if isinstance(design, Distribution):
        raise ValueError(
            "sequential inference targets one observation made at one design: pass that "
            "design as simulate_options={'design': d_obs}, not a distribution of designs"
        )
    design = torch.as_tensor(design)
    if design.ndim == 2 and design.shape[0] == 1:
        design = design[0]
    if design.ndim > 1:
        raise ValueError(
            f"simulate_options['design'] must be the one design of x_obs, got shape "
            f"{list(design.shape)}"
        )
    return design
