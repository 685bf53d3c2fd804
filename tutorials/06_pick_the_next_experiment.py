# %% [markdown]
# # Pick the next experiment: active sciencing on the Weinberg angle
#
# An e⁺e⁻ collider can run at any centre-of-mass energy √s between 40 and 130 GeV.  Each
# run records the angle cos θ of the μ⁻ in e⁺e⁻ → μ⁺μ⁻, whose forward–backward asymmetry
# depends on the weak mixing angle sin²θ_W and on √s.  Which √s should the next run use
# to learn the most about sin²θ_W?
#
# The answer is the design with the largest expected information gain,
#
#     EIG(√s) = E_{p(θ) p(x|θ,√s)} [ log p(x|θ,√s) − log p(x|√s) ],
#
# the mutual information between θ and the outcome.  We compute it
#
# 1. from the exact likelihood (`WeinbergAngle` has one) by nested Monte Carlo, over all
#    candidate energies in one call;
# 2. from a surrogate trained on simulations only, amortized over √s (one training run
#    covers every energy), side by side with the exact curve;
#
# and then let `simfer.ExperimentLoop` run the campaign: pick √s, run, update, pick again.
# Figures go to `$SIMFER_TUTORIAL_OUT` (default: `./tutorial_output`).

# %%
import os
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import torch
from torch.distributions import Independent, Uniform

import simfer
from simulators import WeinbergAngle

matplotlib.use("Agg")
OUT = Path(os.environ.get("SIMFER_TUTORIAL_OUT", Path.cwd() / "tutorial_output"))
OUT.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)

prior = simfer.BoxUniform([0.15], [0.35])  # what we know of sin²θ_W before any run
energies = torch.linspace(40.0, 130.0, 19)  # the candidate √s in GeV

# %% [markdown]
# ## 1. The EIG of one event, from the exact likelihood
#
# `simfer.design.eig` draws N outer (θ, x) pairs and M inner θ once and uses them at every
# energy (common random numbers: differences between energies are far more precise than
# the values), and returns the nested Monte-Carlo estimate (an upper estimate, biased by
# O(1/M)) with the PCE lower bound from the same likelihood matrix.

# %%
one_event = WeinbergAngle(n_events=1)
exact = simfer.design.eig(
    one_event, prior, energies, n_outer=1000, n_inner=300, seed=0, progress=False
)
print(exact)
best = float(exact.best()[0])
print(f"most informative energy for one event: {best:.0f} GeV")
# the asymmetry is most sensitive to sin²θ_W just below the Z pole, where γ–Z
# interference changes fastest with √s; at the pole itself it depends on sin²θ_W only
# through (2 sin²θ_W − ½)², which is flat near ¼
assert 75.0 <= best <= 90.0
pole = int((energies - 91.1876).abs().argmin())
assert float(exact.eig.max()) > float(exact.eig[pole])

# %% [markdown]
# ## 2. The same curve from a surrogate trained on simulations only
#
# Simulations with the beam energy drawn uniformly over the range carry a design column;
# a likelihood surrogate q(x | θ, √s) (SCANDAL: a flow trained on the simulations and on
# their joint score) then conditions on √s, and `eig` estimates the EIG from it: the
# same nested Monte Carlo with log q in place of log p, outcomes drawn from the simulator.

# %%
beam = Independent(Uniform(torch.tensor([40.0]), torch.tensor([130.0])), 1)
data = simfer.simulate(
    one_event,
    prior,
    n=12_000,
    design=beam,
    gold=True,
    seed=1,
    executor="serial",
    progress=False,
)
nle = simfer.LikelihoodEstimator("scandal", max_epochs=20, seed=0, progress=False).fit(data)
surrogate = simfer.design.eig(
    nle,
    prior,
    energies,
    simulator=one_event,
    n_outer=1000,
    n_inner=300,
    seed=0,
    progress=False,
)
print(surrogate)
print(surrogate.notes)
fig, axis = plt.subplots(figsize=(6, 3.5))
exact.plot(ax=axis, label="exact", xlabel="√s [GeV]", color="k")
surrogate.plot(ax=axis, label="SCANDAL", xlabel="√s [GeV]", color="tab:orange")
axis.set_title("EIG of one event")
fig.savefig(OUT / "eig_exact_and_surrogate.png", dpi=120, bbox_inches="tight")
gap = abs(float(surrogate.best()[0]) - best)
print(f"argmax: exact {best:.0f} GeV, surrogate {float(surrogate.best()[0]):.0f} GeV")
assert gap <= 10.0  # within two grid steps of the exact choice

# %% [markdown]
# ## 3. The campaign: pick, run, update, pick again
#
# Each run now records 1000 events.  `ExperimentLoop` keeps the posterior of everything
# observed, computes the EIG of every candidate under it (its draws are the outer and
# contrastive θ), and suggests the best; `run(n, nature=θ)` lets the simulator play
# nature with a hidden sin²θ_W.  After the first runs the posterior is narrow, and the
# EIG curve of the next run changes shape: the loop adapts its choice to what it knows.

# %%
experiment = WeinbergAngle(n_events=1000)
loop = simfer.ExperimentLoop(
    experiment,
    prior,
    designs=energies,
    n_outer=200,
    n_inner=200,
    n_posterior=1000,
    sampler={"n_chains": 40, "warmup": 40},
    seed=0,
)
loop.run(3, nature=[0.2312])
for i, record in enumerate(loop.history, 1):
    print(
        f"run {i}: √s = {record.design[0]:.0f} GeV, sin²θ_W = "
        f"{record.posterior_mean[0]:.4f} ± {record.posterior_std[0]:.4f}"
    )
fig = loop.plot(truth=0.2312, design_label="√s [GeV]")
fig.savefig(OUT / "experiment_loop.png", dpi=120, bbox_inches="tight")
# the posterior on a fine grid: how much of it lies within ±0.02 of the truth (the
# prior puts 20 % there; the two mirror solutions of the Z-pole term are 0.04 apart)
grid = torch.linspace(0.1505, 0.3495, 400)[:, None]
weights = torch.softmax(loop.posterior.log_prob(grid), 0)
near = float(weights[(grid[:, 0] - 0.2312).abs() < 0.02].sum())
print(f"posterior mass within ±0.02 of the truth: {near:.2f} (prior: 0.20)")
assert near > 0.4

# %% [markdown]
# A campaign is saved as plain files and resumed later, here or on another machine.  The
# simulator is rebuilt from its class with its defaults unless it is passed: this one
# records 1000 events per run, not the default 100, so it is passed.

# %%
loop.save(OUT / "campaign")
resumed = simfer.ExperimentLoop.load(OUT / "campaign", sim=experiment)
print(resumed)

# %% [markdown]
# The one-event surrogate of section 2 can run the same campaign without the likelihood:
# `simfer.ExperimentLoop(experiment, prior, designs=energies, estimator=nle)` treats the
# 1000 events of each run as 1000 observations of the per-event term (events are
# independent given sin²θ_W and √s), at a cost of N·M·1000 network evaluations per
# candidate energy for the EIG (docs/design.md, "The experiment loop").
#
# `benchmarks/active_sciencing.py` repeats the campaign over ten nature seeds and eight
# runs against a random √s and against √s fixed at the Z pole (docs/benchmarks.md), and
# with a one-event ALICES surrogate in the loop.
# docs/design.md explains every EIG estimator, its bias and its cost.
