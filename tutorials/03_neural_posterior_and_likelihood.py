# %% [markdown]
# # Neural posterior and likelihood estimation
#
# Two ways to turn simulations into a posterior with a conditional normalizing flow:
#
# * **NPE** learns the posterior q(θ|x) itself, from pairs (θ, x) drawn from the prior
#   and the simulator, and then samples it directly at any observation (amortised);
# * **NLE** learns the likelihood q(x|θ); the posterior p(θ) q(x_obs|θ) is then sampled
#   by MCMC (simfer runs many slice-sampling chains at once).  **SCANDAL** is NLE plus
#   gold: it also fits ∇θ log q(x|θ) to the joint score of every simulation.
#
# The simulator is the two-moons benchmark of sbibm: its posterior is a pair of thin
# crescents, a hard shape for a flow, and its exact likelihood is known, so simfer can
# draw exact reference samples and measure every estimate with C2ST (the accuracy of a
# classifier telling estimate from reference: 0.5 means indistinguishable).
#
# Figures go to `$SIMFER_TUTORIAL_OUT` (default: `./tutorial_output`).

# %%
import os
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import torch

import simfer
from simfer.diagnostics import c2st
from simfer.inference import posterior_from_likelihood
from simulators import TwoMoons

matplotlib.use("Agg")
OUT = Path(os.environ.get("SIMFER_TUTORIAL_OUT", Path.cwd() / "tutorial_output"))
OUT.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)  # small networks, many chains: one thread is fastest, even when idle

# %% [markdown]
# ## 1. Simulate once, with gold
#
# TwoMoons has no latent variables, so its gold (`gold=True`) is the exact score of the
# likelihood; all three estimators train on the same 2000 rows.

# %%
moons = TwoMoons()
prior = moons.prior()
data = simfer.simulate(moons, prior, 2000, gold=True, seed=0, executor="serial", progress=False)
x_obs = moons.simulate(torch.tensor([[0.3, -0.4]]), seed=1)[0]
print(data)
print("observation:", x_obs)

# %% [markdown]
# ## 2. Train NPE, NLE and SCANDAL
#
# The default flow is a neural spline flow (5 autoregressive rational-quadratic spline
# transforms); the same settings and seed for all three.

# %%
settings = dict(max_epochs=25, seed=0, progress=False)
npe = simfer.PosteriorEstimator("nsf", **settings).fit(data, prior)
nle = simfer.LikelihoodEstimator("nle", **settings).fit(data, prior)
scandal = simfer.LikelihoodEstimator("scandal", **settings).fit(data, prior)
print(f"SCANDAL's score weight α = {scandal.alpha_used:.3g}")

# %% [markdown]
# ## 3. Posterior samples
#
# Every estimator hands out a `Posterior` for an observation: NPE samples its flow
# directly (rejecting the draws outside the prior's box), NLE and SCANDAL run slice
# sampling on log p(θ) + log q(x_obs|θ).  The reference comes from the exact likelihood
# by rejection sampling from the prior (exact, and cheap in two dimensions).

# %%
n = 1000
mcmc = dict(n_chains=100, warmup=30)  # 100 chains, 30 warm-up sweeps
nle_posterior = nle.posterior(prior, x_obs)
samples = {
    "NPE": npe.posterior(prior, x_obs).sample(n, seed=0),
    "NLE": nle_posterior.sample(n, seed=0, **mcmc),
    "SCANDAL": scandal.posterior(prior, x_obs).sample(n, seed=0, **mcmc),
}
exact = posterior_from_likelihood(moons.log_likelihood, prior, x_obs)
reference = exact.sample(n, method="rejection", seed=0)
scores = {name: c2st(reference, draws) for name, draws in samples.items()}
for name, score in scores.items():
    print(f"{name:8s} C2ST against the exact posterior: {score:.3f}")
assert all(draws.shape == (n, 2) for draws in samples.values())
# 2000 simulations and 25 epochs keep this tutorial short; the estimates are blurred
# versions of the thin exact posterior (C2ST ~0.8–0.9 here; docs/benchmarks.md shows how
# they sharpen with 10^4 and 10^5 simulations), but far from the prior (C2ST ~1)
assert all(score < 0.95 for score in scores.values()), scores

# %% [markdown]
# ## 4. A corner plot against the reference
#
# The diagonal shows each parameter's marginal, the lower panel the joint; the
# reference is grey.  (`simfer.plotting.corner` draws one sample against a reference;
# to overlay three estimates in one figure, here it is a few lines of matplotlib.)


# %%
def corner(reference, estimates, labels, path):
    d = reference.shape[1]
    figure, axes = plt.subplots(d, d, figsize=(3.2 * d, 3.2 * d))
    colours = ["tab:blue", "tab:orange", "tab:green"]
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            if j > i:
                ax.axis("off")
                continue
            if i == j:
                bins = torch.linspace(
                    float(reference[:, i].min()), float(reference[:, i].max()), 40
                )
                ax.hist(reference[:, i], bins=bins, density=True, color="0.6", label="exact")
                for (name, draws), colour in zip(estimates.items(), colours, strict=False):
                    ax.hist(
                        draws[:, i],
                        bins=bins,
                        density=True,
                        histtype="step",
                        color=colour,
                        label=name,
                    )
                ax.set_xlabel(labels[i])
            else:
                ax.scatter(reference[:, j], reference[:, i], s=2, color="0.6", alpha=0.5)
                for draws, colour in zip(estimates.values(), colours, strict=False):
                    ax.scatter(draws[:, j], draws[:, i], s=1, color=colour, alpha=0.4)
                ax.set_xlabel(labels[j])
                ax.set_ylabel(labels[i])
    axes[0, 0].legend(fontsize=8)
    figure.suptitle("TwoMoons posterior: estimates against the exact one", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


labels = ["θ₁", "θ₂"]
corner(reference, {"NPE": samples["NPE"]}, labels, OUT / "corner_npe.png")
corner(
    reference,
    {"NLE": samples["NLE"], "SCANDAL": samples["SCANDAL"]},
    labels,
    OUT / "corner_nle.png",
)

# %% [markdown]
# ## 5. Amortisation and sampling diagnostics
#
# NPE is amortised: a new observation costs one pass of the flow, no retraining.
# The MCMC posterior keeps its chain diagnostics (split R̂ near 1 means the chains
# mixed).

# %%
other = moons.simulate(torch.tensor([[-0.5, 0.2]]), seed=2)[0]
print("NPE at another x:", npe.sample(5, x=other, seed=0))
print("slice sampler:", {k: v for k, v in nle_posterior.diagnostics.items() if k != "method"})
print("figures in", OUT)
