# %% [markdown]
# # Mining gold
#
# A classifier (CARL) learns the likelihood ratio r(x|θ0,θ1) from one bit per
# simulation: was x drawn at θ0 or at θ1?  A simulator with gold tells much more: the
# joint ratio r(x,z|θ0,θ1) and the joint score t(x,z|θ0) of the very path it ran.
# ALICES regresses on both: a cross-entropy with the soft labels 1/(1 + r(x,z)) and a
# squared error between the model's score ∇θ0 log r̂ and t(x,z|θ0).  Both targets are
# unbiased, so both losses are minimised by the true ratio, but the gold targets carry
# far less noise than a label.
#
# This tutorial trains CARL and ALICES on *the same* simulations of the Galton board,
# whose exact likelihood simfer computes by dynamic programming, and compares their
# log r̂ with the exact log r.
#
# Figures go to `$SIMFER_TUTORIAL_OUT` (default: `./tutorial_output`).

# %%
import os
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import torch

import simfer
from simulators import GaltonBoard

matplotlib.use("Agg")
OUT = Path(os.environ.get("SIMFER_TUTORIAL_OUT", Path.cwd() / "tutorial_output"))
OUT.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)  # small networks: one thread is fastest, and steady on a busy machine

# %% [markdown]
# ## 1. One budget of simulations, with gold
#
# `theta_ref=[0.0]` makes half of the 8000 rows draw x at θ1 = 0 (the reference class a
# classifier contrasts with) while every row carries the gold at (θ0, θ1).  Both
# estimators get exactly these rows.

# %%
board = GaltonBoard(n_rows=16)
data = simfer.simulate(
    board, board.prior(), 8000, gold=True, theta_ref=[0.0], seed=0, executor="serial"
)
print(data)

# %% [markdown]
# ## 2. Train CARL and ALICES
#
# Same network size, same training settings, same seed.

# %%
settings = dict(hidden=(64, 64), max_epochs=40, seed=0, progress=False)
carl = simfer.RatioEstimator("carl", **settings).fit(data)
alices = simfer.RatioEstimator("alices", **settings).fit(data)
print(f"ALICES score weight α = {alices.alpha_used:.3f} (chosen from the joint scores)")

# %% [markdown]
# ## 3. Compare with the exact log r(x|θ0, 0)
#
# For a few observed x, scan θ0 and plot the estimated and exact log-ratio curves.  Then
# measure the mean squared error over x drawn at θ1 = 0 and a grid of θ0.  Every call
# names its reference θ1: here `est.theta_ref`, the θ1 = 0 the estimators were trained
# against (x, θ and the reference are passed by keyword).

# %%
theta_grid = torch.linspace(-1, 1, 81)[:, None]
observed = [-6.0, 0.0, 4.0, 9.0]
fig, axes = plt.subplots(1, len(observed), figsize=(16, 3.8), sharey=False)
for axis, x_value in zip(axes, observed, strict=True):
    x = torch.full((1, 1), x_value)
    exact = board.log_likelihood_ratio(
        x.double().expand(81, 1), theta_grid.double(), torch.zeros(81, 1, dtype=torch.float64)
    )
    axis.plot(theta_grid[:, 0], exact, "k", lw=2, label="exact")
    carl_curve = carl.log_ratio(x=x, theta=theta_grid, reference=carl.theta_ref)
    alices_curve = alices.log_ratio(x=x, theta=theta_grid, reference=alices.theta_ref)
    axis.plot(theta_grid[:, 0], carl_curve, "--", label="CARL")
    axis.plot(theta_grid[:, 0], alices_curve, label="ALICES")
    axis.set(title=f"x = {x_value}", xlabel="θ0")
axes[0].set_ylabel("log r(x | θ0, 0)")
axes[0].legend()
fig.tight_layout()
fig.savefig(OUT / "mining_gold_curves.png", dpi=100)

x_eval = board.simulate(torch.zeros(500, 1), seed=1)


def log_ratio_mse(estimator) -> float:
    errors = []
    for theta0 in torch.linspace(-0.9, 0.9, 19):
        theta = torch.full((500, 1), float(theta0))
        exact = board.log_likelihood_ratio(
            x_eval.double(), theta.double(), torch.zeros(500, 1, dtype=torch.float64)
        )
        estimate = estimator.log_ratio(x=x_eval, theta=theta, reference=estimator.theta_ref)
        errors.append((estimate - exact.float()) ** 2)
    return float(torch.cat(errors).mean())


mse_carl, mse_alices = log_ratio_mse(carl), log_ratio_mse(alices)
print(f"MSE of log r̂: CARL {mse_carl:.4f}, ALICES {mse_alices:.4f} ({mse_carl / mse_alices:.1f}×)")

# %% [markdown]
# The gold pays: at the same number of simulations ALICES is several times closer to the
# exact ratio.  (How many more simulations CARL would need is measured in
# `docs/benchmarks.md`.)

# %%
assert mse_alices < 0.5 * mse_carl, "ALICES should beat CARL clearly at equal budget"
print("figures in", OUT)
