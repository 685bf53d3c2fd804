r"""`ExperimentLoop`: pick the most informative experiment, run it, update, pick again.

After t experiments with outcomes x_i at designs d_i the belief is the posterior

    p(θ | D_t) ∝ p(θ) Π_i ℓ(x_i | θ, d_i),

with ℓ the exact log-likelihood of a tractable simulator, or the per-event term of a
design-amortized surrogate (`simfer.inference.EventTerm`: log q(x|θ,d) for NLE, a log
ratio for ALICES/NRE).  The next design maximises the expected information gain under
that belief,

    d_{t+1} = argmax_d  E_{p(θ|D_t) p(x|θ,d)} [ log p(x|θ,d) − log p(x|d, D_t) ],

which `simfer.design.eig` estimates with the current posterior draws as the outer and
contrastive θ (`simfer.prior.Empirical`).  This is greedy (myopic) sequential design:
each step is optimal for one more experiment, not for the whole campaign.

Correctness conditions.  An amortized surrogate needs no retraining when the belief
changes: the likelihood does not depend on the prior, so Π_i ℓ is right under any
prior, as long as ℓ is accurate where the posterior lives.  After many rounds the
posterior can shrink into a region where the prior-drawn training simulations are
sparse; `training_support` counts the training θ inside the posterior's central 99 %
box (per round, in ``history``), and the loop warns when fewer than
``min_training_support`` remain.  `refine` then simulates at θ from the prior truncated
to that box (designs from the candidates), adds them to the training data and refits.
For NLE and ratio estimators the proposal needs no correction: the likelihood (or a
likelihood ratio) learnt from pairs x ~ p(x|θ,d) does not depend on how θ was drawn, only
on where it was drawn (NRE's contrastive classifier learns p(x|θ,d)/p̃(x|d) with p̃ the
proposal's marginal, a θ-independent factor).  An NPE would learn the proposal's
posterior instead and needs the truncated-prior argument of TSNPE (Deistler, Gonçalves &
Macke 2022): within the box the truncated prior is proportional to the prior.

Experiments of many events.  A surrogate trained on one-event simulations (amortized
over the design) drives a loop whose experiments record n events each, when the events of
an experiment are independent and identically distributed given (θ, d) (true of
`simulators.WeinbergAngle`: each event is one e⁺e⁻ → μ⁺μ⁻ collision).  Then
p(x_1..n|θ,d) = Π_i p(x_i|θ,d): the belief update treats the n events of an outcome as n
observations of the per-event term, Σ_i ℓ(x_i|θ,d), and the EIG of a candidate design is
that of an experiment of n events (outcomes drawn by ``sim``, the per-event term summed
over their events: `simfer.design.eig` with ``n_events=n``), at N·M·n per-event network
evaluations per design.  The number of events per outcome is read from the shapes: the
simulator's x must hold a whole number n of the estimator's x, stacked along its first
axis (``[100]`` holds 100 events of ``[1]``; `simfer.design.sources.events_per_experiment`).
Events that share something beyond (θ, d) (a nuisance drawn once per run, a drift over
the run) are not iid: train the surrogate on whole experiments instead.

A campaign is saved as a folder of JSON and ``.npz`` files (no pickle) and resumed with
`ExperimentLoop.load`.
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution

from ..data import SimulationData
from ..errors import ShapeError, SimferError
from ..inference import Posterior, posterior_from_likelihood
from ..prior import Empirical, TruncatedPrior, as_prior, describe_prior, prior_from_description
from ..seeding import seeded
from ..simulator import Simulator
from .methods import eig
from .result import EIGResult
from .sources import events_per_experiment

__all__ = ["ExperimentLoop", "Round"]

FORMAT = "simfer-experiment-loop"
FORMAT_VERSION = 1


@dataclass
class Round:
    """One experiment: its design, its outcome, the EIG curve it was chosen from (None for
    a design the user chose), and the posterior after it."""

    design: list[float]
    x: list
    eig: EIGResult | None = None
    posterior_mean: list[float] = field(default_factory=list)
    posterior_std: list[float] = field(default_factory=list)
    training_support: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "design": self.design,
            "x": self.x,
            "eig": None if self.eig is None else self.eig.as_dict(),
            "posterior_mean": self.posterior_mean,
            "posterior_std": self.posterior_std,
            "training_support": self.training_support,
        }

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> Round:
        curve = value.get("eig")
        return cls(
            design=value["design"],
            x=value["x"],
            eig=None if curve is None else EIGResult.from_dict(curve),
            posterior_mean=value.get("posterior_mean", []),
            posterior_std=value.get("posterior_std", []),
            training_support=value.get("training_support"),
        )


class ExperimentLoop:
    """Sequential experiment design: `suggest`, run the experiment, `observe`, repeat.

    Args:
        sim: the `simfer.Simulator` of the experiment (its design is d).  With no
            ``estimator`` it must have a tractable likelihood: the loop then uses it
            exactly (the reference any surrogate loop is checked against).
        prior: p(θ).
        designs: the candidate designs ``[k, design_dim]`` (``[k]`` for one variable).
        estimator: a trained estimator amortized over the design (``design_dim`` ≥ 1),
            used for the belief update and, through `simfer.design.eig`, for the EIG.  It
            may model one event of an experiment that records n iid events (``sim``'s x
            holds n of the estimator's x, stacked along the first axis): its per-event
            term is then summed over each outcome's events (see the module docstring).
        method: the EIG method (default: ``"nmc"`` for exact and NLE loops).
        n_outer: outer Monte-Carlo size of each EIG (see `simfer.design.eig`).
        n_inner: inner Monte-Carlo size of each EIG (see `simfer.design.eig`).
        n_posterior: posterior draws per round (slice sampling), the belief's sample.
        sampler: options of `Posterior.sample` (``n_chains``, ``warmup``, …).
        training_theta: the θ ``[n, theta_dim]`` of the simulations the estimator was
            trained on (``data.theta``), for the `training_support` diagnostic.
        min_training_support: warn when fewer training θ than this lie in the posterior's
            central 99 % box (estimator loops).
        seed: makes the whole campaign reproducible.
        device: where the EIG and the posterior run.
    """

    def __init__(
        self,
        sim: Simulator,
        prior: Distribution,
        *,
        designs: Any,
        estimator: Any = None,
        method: str | None = None,
        n_outer: int = 500,
        n_inner: int = 500,
        n_posterior: int = 2000,
        sampler: dict[str, Any] | None = None,
        training_theta: Tensor | None = None,
        min_training_support: int = 200,
        seed: int = 0,
        device: str | torch.device | None = None,
        progress: bool = False,
    ):
        if not isinstance(sim, Simulator):
            raise TypeError(f"sim must be a simfer.Simulator, got {type(sim).__name__}")
        if sim.design_dim < 1:
            raise ShapeError(
                f"simulator '{sim.name}' takes no design (design_dim = 0): there is no "
                f"experiment to choose"
            )
        if estimator is None and not sim.has_likelihood:
            raise SimferError(
                f"simulator '{sim.name}' has no tractable likelihood: train an estimator on "
                f"simulations with a design column (simfer.simulate(..., design=...)) and pass "
                f"estimator="
            )
        if estimator is not None and getattr(estimator, "design_dim", 0) != sim.design_dim:
            raise ShapeError(
                f"the estimator conditions on {getattr(estimator, 'design_dim', 0)} design "
                f"variables, the simulator has {sim.design_dim}: train it on simulations with "
                f"a design column"
            )
        self.n_events = 1 if estimator is None else _events_per_outcome(sim, estimator)
        self.sim = sim
        self.prior = as_prior(prior, sim.theta_dim)
        self.designs = self._as_designs(designs)
        self.estimator = estimator
        self.method = method
        self.n_outer, self.n_inner, self.n_posterior = int(n_outer), int(n_inner), int(n_posterior)
        self.sampler = dict(sampler or {})
        self.training_theta = None if training_theta is None else torch.as_tensor(training_theta)
        self.min_training_support = int(min_training_support)
        self.seed = int(seed)
        self.device = None if device is None else torch.device(device)
        self.progress = progress
        self.history: list[Round] = []
        self._x: list[Tensor] = []  # one [m, *x_shape] block per round
        self._d: list[Tensor] = []  # its designs [m, design_dim]
        self._draws: Tensor | None = None
        self._posterior: Posterior | None = None
        self._pending: EIGResult | None = None

    # -- shapes ----------------------------------------------------------------------------
    def _as_designs(self, designs: Any) -> Tensor:
        designs = torch.as_tensor(designs, dtype=torch.get_default_dtype())
        k = self.sim.design_dim
        if designs.ndim == 1 and k == 1:
            designs = designs[:, None]
        if designs.ndim != 2 or designs.shape[1] != k or designs.shape[0] < 1:
            raise ShapeError(f"designs must be [n_candidates, {k}], got {list(designs.shape)}")
        return designs

    def _as_design(self, design: Any) -> Tensor:
        design = torch.as_tensor(design, dtype=torch.get_default_dtype()).reshape(-1)
        if design.shape[0] != self.sim.design_dim:
            raise ShapeError(
                f"a design has {self.sim.design_dim} variable(s), got {list(design.shape)}"
            )
        return design

    def _as_outcome(self, x: Any) -> Tensor:
        x = torch.as_tensor(x, dtype=torch.get_default_dtype())
        shape = tuple(self.sim.x_shape or x.shape[-1:])
        if tuple(x.shape) == shape:
            x = x[None]
        if tuple(x.shape[1:]) != shape:
            raise ShapeError(
                f"an outcome has shape {list(shape)} (or [m, {', '.join(map(str, shape))}] for "
                f"m repeats at this design), got {list(x.shape)}"
            )
        if not bool(torch.isfinite(x).all()):
            raise ValueError("the outcome holds NaN or inf: a failed experiment is no outcome")
        return x

    # -- the belief ------------------------------------------------------------------------
    @property
    def n_rounds(self) -> int:
        return len(self.history)

    @property
    def posterior(self) -> Posterior | None:
        """p(θ | everything observed so far), or None before the first outcome."""
        return self._posterior

    def belief_draws(self) -> Tensor:
        """Draws of the current belief ``[n_posterior, theta_dim]``: the prior's before any
        outcome, the posterior's after."""
        if self._draws is None:
            with seeded(self.seed):
                self._draws = self.prior.sample((self.n_posterior,))
        return self._draws

    def _update_posterior(self) -> None:
        posterior = _belief(self.sim, self.prior, self.estimator, self._x, self._d, self.n_events)
        if self.device is not None:
            posterior.to(self.device)
        draws = posterior.sample(
            self.n_posterior, seed=self.seed + 1000 + self.n_rounds, **self.sampler
        )
        self._posterior, self._draws = posterior, draws.detach()

    def training_support(self) -> int | None:
        """The number of the estimator's training θ inside the current posterior's central
        99 % box (per-coordinate 0.5 % and 99.5 % quantiles of the draws); None for an
        loop without ``training_theta``."""
        theta = self.training_theta
        if theta is None or self._posterior is None:
            return None
        draws = self._draws
        low, high = torch.quantile(draws, 0.005, dim=0), torch.quantile(draws, 0.995, dim=0)
        theta = theta.to(draws)
        return int(((theta >= low) & (theta <= high)).all(1).sum())

    # -- the loop --------------------------------------------------------------------------
    def eig(self) -> EIGResult:
        """The EIG of every candidate design under the current belief."""
        belief = Empirical(self.belief_draws(), support_of=self.prior)
        options: dict[str, Any] = dict(
            method=self.method,
            n_outer=self.n_outer,
            n_inner=self.n_inner,
            seed=self.seed + self.n_rounds,
            device=self.device,
            progress=self.progress,
        )
        if self.estimator is None:
            return eig(self.sim, belief, self.designs, **options)
        if self.n_events > 1:
            options["n_events"] = self.n_events
        return eig(self.estimator, belief, self.designs, simulator=self.sim, **options)

    def suggest(self) -> Tensor:
        """The candidate design with the highest EIG under the current belief
        ``[design_dim]`` (its curve is kept for `observe` to record)."""
        self._pending = self.eig()
        return self._pending.best()

    def observe(self, design: Any, x: Any) -> Posterior:
        """Add the outcome x of an experiment at ``design`` (one outcome ``x_shape`` or m
        repeats ``[m, *x_shape]``) and update the posterior, which is returned."""
        design, x = self._as_design(design), self._as_outcome(x)
        curve, self._pending = self._pending, None  # the curve the design was chosen from
        self._x.append(x)
        self._d.append(design.expand(x.shape[0], -1))
        self._update_posterior()
        support = self.training_support()
        if support is not None and support < self.min_training_support:
            warnings.warn(
                f"only {support} training simulations lie in the current posterior's 99 % "
                f"box (below min_training_support={self.min_training_support}): the surrogate "
                f"is extrapolating. Simulate at θ drawn from loop.posterior and refit.",
                UserWarning,
                stacklevel=2,
            )
        draws = self._draws
        self.history.append(
            Round(
                design=design.tolist(),
                x=x.tolist(),
                eig=curve,
                posterior_mean=draws.mean(0).tolist(),
                posterior_std=draws.std(0).tolist(),
                training_support=support,
            )
        )
        return self._posterior

    def run(self, n_rounds: int, *, nature: Any, seed: int | None = None) -> list[Round]:
        """Play ``n_rounds`` rounds against nature: a hidden θ ``[theta_dim]`` simulated by
        ``sim`` (seeded per round), or a function ``design → x`` (a real apparatus)."""
        if not isinstance(n_rounds, int) or n_rounds < 1:
            raise ValueError(f"n_rounds must be a positive int, got {n_rounds!r}")
        base = self.seed + 7919 if seed is None else int(seed)
        if callable(nature):
            measure = nature
        else:
            truth = torch.as_tensor(nature, dtype=torch.get_default_dtype()).reshape(1, -1)
            if truth.shape[1] != self.sim.theta_dim:
                raise ShapeError(
                    f"nature's θ must be [{self.sim.theta_dim}], got {list(truth.shape[1:])}"
                )

            def measure(design: Tensor) -> Tensor:
                return self.sim.simulate(truth, design[None], seed=base + self.n_rounds)[0]

        for _ in range(n_rounds):
            design = self.suggest()
            self.observe(design, measure(design))
        return self.history

    def posterior_box(self, mass: float = 0.99) -> tuple[Tensor, Tensor]:
        """The posterior's central box holding ``mass`` per coordinate (quantiles of the
        current draws): ``(low, high)``, each ``[theta_dim]``."""
        draws = self.belief_draws()
        tail = (1 - mass) / 2
        return torch.quantile(draws, tail, dim=0), torch.quantile(draws, 1 - tail, dim=0)

    def refine(
        self,
        data: SimulationData,
        n: int,
        *,
        seed: int | None = None,
        simulator: Simulator | None = None,
        simulate_options: dict[str, Any] | None = None,
    ) -> SimulationData:
        """Simulate ``n`` rows at θ from the prior truncated to the posterior's 99 % box
        and designs uniform over the candidates, refit the estimator on ``data`` plus them
        (same settings; the loop then uses the new fit), update the posterior and return
        the combined data (see the module docstring for why no correction is needed).
        ``simulator`` makes the new rows (default ``sim``); a loop whose estimator models
        one event of a many-event experiment needs the one-event simulator here."""
        from ..runner import simulate

        if self.estimator is None:
            raise SimferError("refine() refits a surrogate; this loop uses the exact likelihood")
        if self._posterior is None:
            raise SimferError("refine() after the first observation: the prior is the belief")
        if simulator is None and self.n_events > 1:
            raise SimferError(
                f"the estimator models one event and each outcome of '{self.sim.name}' holds "
                f"{self.n_events}: pass refine(..., simulator=) the simulator of one event "
                f"(the one the estimator was trained on)"
            )
        simulator = self.sim if simulator is None else simulator
        low, high = self.posterior_box()
        proposal = TruncatedPrior.box(self.prior, low, high, n_pilot=0)
        options = {"executor": "serial", "progress": self.progress, **(simulate_options or {})}
        if data.theta_ref is not None and "theta_ref" not in options:
            options["theta_ref"] = data.theta_ref[0]
        if data.has_gold and "gold" not in options:
            options["gold"] = True
        new = simulate(
            simulator,
            proposal,
            n,
            design=Empirical(self.designs),
            seed=self.seed + 31 * (self.n_rounds + 1) if seed is None else seed,
            **options,
        )
        combined = SimulationData.concatenate([data, new])
        settings = {**self.estimator.hyperparameters(), **vars(self.estimator.training)}
        if settings.get("embedding") is not None:
            settings["embedding"] = self.estimator.embedding
        self.estimator = type(self.estimator)(**settings).fit(combined)
        self.training_theta = combined.theta
        self._update_posterior()
        return combined

    # -- looking at it ---------------------------------------------------------------------
    def plot(
        self, parameter: int = 0, *, truth: float | None = None, design_label: str = "design d"
    ):
        """The EIG curve of every round (left, the chosen design dotted) and the posterior of
        θ_parameter contracting, mean ± std per round (right, ``truth`` as a line).
        Returns the figure."""
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
        colours = plt.cm.viridis(np.linspace(0, 0.9, max(len(self.history), 1)))
        for i, (record, colour) in enumerate(zip(self.history, colours, strict=False)):
            if record.eig is None or record.eig.designs.shape[1] != 1:
                continue
            d = record.eig.designs[:, 0].cpu().numpy()
            left.plot(d, record.eig.eig.cpu().numpy(), color=colour, label=f"round {i + 1}")
            left.axvline(record.design[0], color=colour, lw=0.8, ls=":")
        left.set_xlabel(design_label)
        left.set_ylabel("EIG(d) under the current belief [nats]")
        if self.history:
            left.legend(fontsize=7, ncol=2)
        rounds = np.arange(1, len(self.history) + 1)
        mean = np.array([r.posterior_mean[parameter] for r in self.history])
        std = np.array([r.posterior_std[parameter] for r in self.history])
        right.errorbar(rounds, mean, yerr=std, fmt="o-", capsize=3, label="posterior")
        if truth is not None:
            right.axhline(truth, color="k", lw=0.8, ls="--", label="truth")
            right.legend(fontsize=8)
        right.xaxis.set_major_locator(MaxNLocator(integer=True))
        right.set_xlabel("round")
        right.set_ylabel(f"posterior of θ[{parameter}]: mean ± std")
        fig.tight_layout()
        return fig

    def __repr__(self) -> str:
        source = "exact likelihood" if self.estimator is None else type(self.estimator).__name__
        if self.n_events > 1:
            source += f" summed over {self.n_events} events per outcome"
        return (
            f"ExperimentLoop({self.sim.name}, {self.designs.shape[0]} candidate designs, "
            f"{source}, {self.n_rounds} round(s))"
        )

    # -- save and resume -------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the campaign to the folder ``path``: ``loop.json`` (settings and history),
        ``observations.npz`` (outcomes and designs, the current posterior draws) and, with
        an estimator, ``estimator.pt``.  No pickle is written."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"designs": self.designs.cpu().numpy()}
        for i, (x, d) in enumerate(zip(self._x, self._d, strict=True)):
            arrays[f"x_{i}"], arrays[f"d_{i}"] = x.cpu().numpy(), d.cpu().numpy()
        if self._draws is not None:
            arrays["draws"] = self._draws.cpu().numpy()
        if self.training_theta is not None:
            arrays["training_theta"] = self.training_theta.cpu().numpy()
        np.savez(folder / "observations.npz", **arrays)
        if self.estimator is not None:
            self.estimator.save(folder / "estimator.pt")
        simulator = type(self.sim)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "simulator": f"{simulator.__module__}:{simulator.__qualname__}",
            "simulator_description": self.sim.describe(),
            "prior": describe_prior(self.prior),
            "settings": {
                "method": self.method,
                "n_outer": self.n_outer,
                "n_inner": self.n_inner,
                "n_posterior": self.n_posterior,
                "sampler": self.sampler,
                "min_training_support": self.min_training_support,
                "seed": self.seed,
            },
            "rounds": len(self._x),
            "history": [record.as_dict() for record in self.history],
        }
        tmp = folder / "loop.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, folder / "loop.json")

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        sim: Simulator | None = None,
        prior: Distribution | None = None,
        estimator: Any = None,
    ) -> ExperimentLoop:
        """Resume a campaign saved by `save`.  ``sim`` defaults to the saved simulator
        class built with its defaults, ``prior`` to the saved `BoxUniform`, ``estimator`` to
        the saved model (pass one built with its embedding if it has one)."""
        folder = Path(path)
        if not (folder / "loop.json").exists():
            raise FileNotFoundError(f"no experiment loop saved at '{folder}' (no loop.json)")
        try:
            meta = json.loads((folder / "loop.json").read_text())
        except json.JSONDecodeError as error:
            raise SimferError(f"'{folder / 'loop.json'}' is not readable JSON: {error}") from error
        if meta.get("format") != FORMAT:
            raise SimferError(f"'{folder}' does not hold a simfer experiment loop")
        if sim is None:
            sim = _simulator_from_target(meta["simulator"])
        if prior is None:
            prior = prior_from_description(meta["prior"])
            if prior is None:
                raise SimferError(
                    f"the campaign's prior ({meta['prior'].get('type')}) cannot be rebuilt from "
                    f"its description: pass prior= to ExperimentLoop.load"
                )
        if estimator is None and (folder / "estimator.pt").exists():
            from ..estimators import load as load_estimator

            estimator = load_estimator(folder / "estimator.pt")
        with np.load(folder / "observations.npz", allow_pickle=False) as arrays:
            training = arrays["training_theta"] if "training_theta" in arrays else None
            loop = cls(
                sim,
                prior,
                designs=torch.as_tensor(arrays["designs"]),
                estimator=estimator,
                training_theta=None if training is None else torch.as_tensor(training),
                **meta["settings"],
            )
            for i in range(int(meta["rounds"])):
                loop._x.append(torch.as_tensor(arrays[f"x_{i}"]))
                loop._d.append(torch.as_tensor(arrays[f"d_{i}"]))
            shapes = {tuple(x.shape[1:]) for x in loop._x}
            if sim.x_shape is not None and shapes - {tuple(sim.x_shape)}:
                raise SimferError(
                    f"the campaign's outcomes have shape {[list(s) for s in shapes]} and an "
                    f"outcome of the simulator it is resumed with has {list(sim.x_shape)} (a "
                    f"simulator rebuilt with its defaults may record another number of "
                    f"events): pass sim= to ExperimentLoop.load"
                )
            if "draws" in arrays:
                loop._draws = torch.as_tensor(arrays["draws"])
        loop.history = [Round.from_dict(r) for r in meta["history"]]
        if loop._x:
            loop._posterior = _belief(sim, loop.prior, estimator, loop._x, loop._d, loop.n_events)
        return loop


def _events_per_outcome(sim: Simulator, estimator: Any) -> int:
    """The events of the estimator's x in one outcome of ``sim`` (1 when the shapes are
    equal), or a `ShapeError` saying why they do not fit."""
    dims = getattr(estimator, "dims", None)
    if dims is None:  # not fitted: eig() says so
        return 1
    held = events_per_experiment(sim.x_shape, dims.x_shape)
    if held is None:
        raise ShapeError(
            f"the estimator models x of shape {list(dims.x_shape)} and an outcome of "
            f"'{sim.name}' has shape {list(sim.x_shape) if sim.x_shape else sim.x_shape}, "
            f"which is no whole number of such events stacked along the first axis (an "
            f"outcome [n·k] or [n, k] for events [k]). Train the estimator on simulations "
            f"of one event of this experiment (e.g. the same simulator with one event), or "
            f"of the whole experiment"
        )
    if held > 1 and (dims.is_set or dims.embedding):
        raise ShapeError(
            f"an outcome of '{sim.name}' holds {held} events of the estimator's x, but the "
            f"estimator {'takes set-valued x' if dims.is_set else 'models an embedding summary'}"
            f": its per-event term cannot be summed over events; train it on whole outcomes"
        )
    return held


def _belief(
    sim: Simulator,
    prior: Distribution,
    estimator: Any,
    outcomes: list[Tensor],
    designs: list[Tensor],
    n_events: int,
) -> Posterior:
    """p(θ | every outcome): from the exact likelihood, or from the estimator's per-event
    term with each outcome ``[m, *x_shape]`` split into its ``n_events`` events (one
    observation each, at its outcome's design)."""
    x, d = torch.cat(outcomes), torch.cat(designs)
    if estimator is None:
        return posterior_from_likelihood(
            sim.log_likelihood,
            prior,
            x,
            x_shape=tuple(x.shape[1:]),
            design=d,
            design_dim=sim.design_dim,
        )
    if n_events > 1:
        x = x.reshape(x.shape[0] * n_events, *estimator.dims.x_shape)
        d = d.repeat_interleave(n_events, 0)
    return estimator.posterior(prior, x, design=d)


def _simulator_from_target(target: str) -> Simulator:
    module, _, name = target.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
        sim = obj()
    except Exception as error:
        raise SimferError(
            f"cannot rebuild the campaign's simulator {target!r} with its defaults "
            f"({type(error).__name__}: {error}): pass sim= to ExperimentLoop.load"
        ) from error
    if not isinstance(sim, Simulator):
        raise SimferError(f"{target!r} did not build a simfer.Simulator: pass sim=")
    return sim
