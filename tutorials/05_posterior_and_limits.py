# %% [markdown]
# # From surrogate to posterior and limits
#
# An experiment at √s = 60 GeV records the angle cos θ of the μ⁻ in e⁺e⁻ → μ⁺μ⁻ for
# N = 1000 events; the forward–backward asymmetry depends on the weak mixing angle
# sin²θ_W.  We train a likelihood-ratio surrogate (ALICES, with the simulator's gold) on
# single events, then ask what the 1000 observed events say about sin²θ_W:
#
# * a Bayesian answer: `ratio.posterior(prior, x_obs)` sums log r̂(x_i|θ, θ_ref) over the
#   events and samples the posterior with many parallel slice-sampling chains;
# * a frequentist answer: the likelihood-ratio scan q(θ) = −2 Δ log L with confidence
#   intervals by Wilks' theorem, and the expected (Asimov) limits for the same N.
#
# Both are checked against the exact likelihood, which `WeinbergAngle` computes.
# Figures go to `$SIMFER_TUTORIAL_OUT` (default: `./tutorial_output`).

# %%
import os
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import torch

import simfer
from simfer.inference import expected_scans, likelihood_scan, posterior_from_likelihood
from simulators import WeinbergAngle

matplotlib.use("Agg")
OUT = Path(os.environ.get("SIMFER_TUTORIAL_OUT", Path.cwd() / "tutorial_output"))
OUT.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)  # small networks, many chains: one thread is fastest

# %% [markdown]
# ## 1. A surrogate of the single-event likelihood ratio
#
# One row is one event (`n_events=1`) at the design √s = 60 GeV; half of the rows are
# drawn at the reference θ_ref = 0.25, and every row carries its joint ratio and score.
# Every row is at the same √s, so the surrogate learns p(x|θ) at that one design: it
# records it (`ratio.dims.fixed_design`, when the rows carry a design column) and takes
# no design input.  The calls below still name the design of the events (`design=energy`):
# the surrogate accepts its own design and refuses any other with a clear error.

# %%
energy = [60.0]  # √s in GeV: the design of every simulation and observation
simulator = WeinbergAngle(n_events=1, default_energy=energy[0])
prior = simulator.prior()
data = simfer.simulate(
    simulator, prior, 10_000, gold=True, theta_ref=[0.25], seed=0, executor="serial"
)
ratio = simfer.RatioEstimator("alices", max_epochs=20, seed=0, progress=False).fit(data)
print(f"trained for {len(ratio.history.validation_loss)} epochs")

# %% [markdown]
# ## 2. The posterior from 1000 observed events
#
# `posterior` sums the per-event log-ratios log r̂(x_i|θ, θ_ref) in batches (the same as
# `ratio.log_ratio(x=x_i, theta=θ, reference=ratio.theta_ref, design=energy)`; θ_ref's
# constant cancels) and
# starts 40 chains from prior draws resampled by their likelihood (so a short warm-up of
# 50 sweeps suffices; `posterior.diagnostics` reports R̂ and the effective sample size).
# The same call on the exact likelihood gives the reference.

# %%
theta_true = torch.tensor([[0.231]])
x_obs = simulator.simulate(theta_true.expand(1000, 1), seed=42)  # [1000 events, 1]
posterior = ratio.posterior(prior, x_obs, design=energy)
samples = posterior.sample(2000, seed=0, n_chains=40, warmup=50)
print(posterior, posterior.diagnostics)
exact = posterior_from_likelihood(simulator.log_likelihood, prior, x_obs, x_shape=(1,))
reference = exact.sample(2000, seed=1, n_chains=40, warmup=50)
print(f"surrogate: {float(samples.mean()):.4f} ± {float(samples.std()):.4f}")
print(f"exact:     {float(reference.mean()):.4f} ± {float(reference.std()):.4f}")

fig, axis = plt.subplots(figsize=(5, 3.5))
bins = torch.linspace(float(reference.min()) - 0.01, float(reference.max()) + 0.01, 50)
axis.hist(reference[:, 0], bins=bins, density=True, histtype="step", color="k", label="exact")
axis.hist(samples[:, 0], bins=bins, density=True, alpha=0.5, label="ALICES surrogate")
axis.axvline(float(theta_true), color="C3", label="true value")
axis.set(xlabel="sin²θ_W", ylabel="posterior density", title="1000 events at √s = 60 GeV")
axis.legend()
fig.tight_layout()
fig.savefig(OUT / "weinberg_posterior.png", dpi=100)

# %% [markdown]
# ## 3. Confidence intervals and expected limits
#
# `likelihood_scan` evaluates q(θ) on a grid (θ̂ refined by optimisation); `interval`
# reads off where q crosses the χ²₁ quantile.  `expected_scans` builds the Asimov scan
# from a large sample simulated at the hypothesis θ = 0.231, rescaled to N = 1000 events,
# and the 68 %/95 % bands from bootstrap toys.

# %%
grid = torch.linspace(0.17, 0.29, 61)[:, None]
scan = likelihood_scan(posterior, grid, steps=50)
exact_scan = likelihood_scan(exact, grid, steps=50)
pool = simulator.simulate(theta_true.expand(20_000, 1), seed=7)
at_truth = ratio.posterior(prior, pool, design=energy)
expected = expected_scans(at_truth, grid, n_events=1000, n_toys=10, steps=50)
for label, s in [("surrogate", scan), ("exact", exact_scan)]:
    low, high = s.interval(0.6827)
    print(f"{label}: θ̂ = {float(s.theta_hat[0]):.4f}, 68% CL [{low:.4f}, {high:.4f}]")
low, high = expected["asimov"].interval(0.6827)
print(f"expected (Asimov) 68% CL width: {high - low:.4f}")

fig, axis = plt.subplots(figsize=(5, 3.5))
axis.fill_between(grid[:, 0], *expected["band68"], color="C2", alpha=0.3, label="expected ±1σ")
axis.plot(grid[:, 0], expected["asimov"].q, "C2--", label="expected (Asimov)")
axis.plot(grid[:, 0], exact_scan.q, "k", label="exact, observed")
axis.plot(grid[:, 0], scan.q, "C0", label="ALICES, observed")
for level in (0.6827, 0.95):
    axis.axhline(scan.threshold(level), color="grey", lw=0.8, ls=":")
axis.set(xlabel="sin²θ_W", ylabel="q = −2 Δ log L", ylim=(0, 10))
axis.legend()
fig.tight_layout()
fig.savefig(OUT / "weinberg_limits.png", dpi=100)

# %% [markdown]
# The surrogate's interval agrees with the exact one to a fraction of its width, and the
# observed interval is close to the expected one.

# %%
width = exact_scan.interval(0.6827)[1] - exact_scan.interval(0.6827)[0]
assert abs(float(scan.theta_hat[0] - exact_scan.theta_hat[0])) < 0.5 * width
assert abs(float(samples.mean() - reference.mean())) < 0.5 * float(reference.std())
assert posterior.diagnostics["r_hat_max"] < 1.1
print("figures in", OUT)
