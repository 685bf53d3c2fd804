# %% [markdown]
# # Wrap your own simulator and check its gold
#
# A simulator draws an observation x at parameters θ by running a latent path z.  The
# likelihood p(x|θ) = ∫ p(x,z|θ) dz is usually out of reach, but along the path that was
# actually run the *joint* density p(x,z|θ) is a product of known factors.  It gives two
# per-event quantities, the "gold":
#
# * the joint log ratio  log r(x,z|θ,θ_ref) = log p(x,z|θ) − log p(x,z|θ_ref),
# * the joint score      t(x,z|θ) = ∇_θ log p(x,z|θ),
#
# which are unbiased for the quantities we want:
#
# * E[r(x,z|θ,θ_ref) | x] = r(x|θ,θ_ref) when z ~ p(z|x,θ_ref), i.e. x drawn at θ_ref;
# * E[t(x,z|θ) | x] = t(x|θ) when z ~ p(z|x,θ), i.e. x drawn at θ.
#
# This tutorial writes a small simulator as a Pyro program, wraps it with
# `simfer.Simulator.from_pyro` (which gets the gold by tracing the program once and
# replaying the recorded path at other θ), and checks both identities against the exact
# likelihood, which this toy model has, with `simfer.diagnostics.check_gold`.  Then it
# runs `simfer.simulate` into an HDF5 store and resumes it.
#
# Figures go to `$SIMFER_TUTORIAL_OUT` (default: `./tutorial_output`).

# %%
import os
import tempfile
from pathlib import Path

import h5py
import matplotlib
import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch

import simfer

matplotlib.use("Agg")  # write files, open no windows
OUT = Path(os.environ.get("SIMFER_TUTORIAL_OUT", Path.cwd() / "tutorial_output"))
OUT.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## 1. The simulator: a tilted Galton board
#
# A ball falls through `N_ROWS` rows of nails.  At position k it bounces right
# (z = 1, k → k+1) with probability p(θ,k) = σ(θ(1 + 0.3k)), left otherwise; the final
# position K is read out with Gaussian noise, x ~ N(K, 0.4²).  θ is the tilt: for θ > 0
# it pushes the ball right, except on the far left (1 + 0.3k < 0) where it pushes it
# further left, so p(x|θ) is not a simple shift of one shape.
#
# The Pyro program is written for a batch: θ is `[batch, 1]` and every sample site
# carries the batch as its leading dimension (one independent ball per row).  The
# observation is the last sample site, `"x"`.

# %%
N_ROWS = 10
SLOPE = 0.3
READOUT = 0.4


def tilted_board(theta):
    position = torch.zeros(theta.shape[0], dtype=theta.dtype)
    for row in range(N_ROWS):
        p_right = torch.sigmoid(theta[:, 0] * (1 + SLOPE * position))
        position = position + 2 * pyro.sample(f"z{row}", dist.Bernoulli(p_right)) - 1
    return pyro.sample("x", dist.Normal(position, READOUT))


sim = simfer.Simulator.from_pyro(tilted_board, theta_dim=1)
print(sim)

# %% [markdown]
# `sim.simulate(θ)` returns x `[batch, 1]`; with `gold=True` and a reference point it
# returns a `SimulationData` table with the joint log ratio and the joint score per row.

# %%
theta = torch.tensor([[0.4], [-0.4], [0.0]], dtype=torch.float64)
print(sim.simulate(theta, seed=0))
small = sim.simulate(theta, gold=True, theta_ref=[0.0], seed=0)
print(small)
print("joint log ratio:", small.joint_log_ratio)
print("joint score:    ", small.joint_score[:, 0])

# %% [markdown]
# ## 2. The exact likelihood, by dynamic programming
#
# The position after r rows is a Markov chain on {−r, −r+2, …, r}, so P(K|θ) follows
# from a forward pass over the rows, and p(x|θ) = Σ_K P(K|θ) N(x; K, 0.4²).  Written in
# torch it is differentiable, so the exact score t(x|θ) comes from autograd.  None of this
# uses simfer: it is the independent ground truth.


# %%
def exact_log_likelihood(x, theta):
    """log p(x|θ): x ``[n]``, θ ``[n]`` → ``[n]``."""
    probs = torch.ones(theta.shape[0], 1, dtype=theta.dtype)  # P(j rights so far), j = 0
    for row in range(N_ROWS):
        position = 2 * torch.arange(row + 1, dtype=theta.dtype) - row  # k = 2j − row
        p = torch.sigmoid(theta[:, None] * (1 + SLOPE * position))
        probs = torch.nn.functional.pad(probs * (1 - p), (0, 1)) + torch.nn.functional.pad(
            probs * p, (1, 0)
        )
    final = 2 * torch.arange(N_ROWS + 1, dtype=theta.dtype) - N_ROWS
    log_readout = torch.distributions.Normal(final, READOUT).log_prob(x[:, None])
    return torch.logsumexp(torch.log(probs) + log_readout, dim=1)


def exact_score(x, theta):
    """t(x|θ) = ∂/∂θ log p(x|θ) ``[n]``."""
    theta = theta.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(exact_log_likelihood(x, theta).sum(), theta)
    return grad


# the density integrates to one
grid = torch.linspace(-N_ROWS - 4, N_ROWS + 4, 20_001, dtype=torch.float64)
mass = torch.trapezoid(exact_log_likelihood(grid, torch.full_like(grid, 0.4)).exp(), grid)
assert abs(float(mass) - 1) < 1e-6, mass


# %% [markdown]
# ## 3. The check: `simfer.diagnostics.check_gold`
#
# Both identities say that a per-event difference d = gold − exact has mean zero given x.
# `check_gold` draws N events at θ and N at θ_ref with gold, bins x (here one bin per
# final position), computes the mean of d and its standard error in each bin, and adds
# the squared z-scores: under the identity this is χ² with one degree of freedom per bin.
# It also tests two identities that need no likelihood: E_θ[t(x,z|θ)] = 0 and
# E_θ_ref[r(x,z|θ,θ_ref)] = 1, the means of the two identities above over x.  A
# correct simfer fails `p > 1e-3` once in a thousand seeds; the seeds here are fixed, so
# the tutorial is deterministic.
#
# The exact quantities go in as callables with simfer's shapes: x and θ ``[n, 1]``.

# %%
N = 20_000
THETA = 0.6
EDGES = torch.arange(-N_ROWS - 1.0, N_ROWS + 2.0, 2.0, dtype=torch.float64)  # one bin per K
X_GRID = torch.linspace(-N_ROWS, N_ROWS, 801, dtype=torch.float64)


def exact_log_ratio(x, theta, theta_ref):
    """log r(x|θ,θ_ref): x, θ, θ_ref ``[n, 1]`` → ``[n]``."""
    return exact_log_likelihood(x[:, 0], theta[:, 0]) - exact_log_likelihood(
        x[:, 0], theta_ref[:, 0]
    )


def exact_score_rows(x, theta):
    """t(x|θ): x, θ ``[n, 1]`` → ``[n, 1]``."""
    return exact_score(x[:, 0], theta[:, 0])[:, None]


check = simfer.diagnostics.check_gold(
    sim,
    [THETA],
    [0.0],
    exact_log_ratio=exact_log_ratio,
    exact_score=exact_score_rows,
    n=N,
    seed=1,
    bins=EDGES,
)
print(check.summary())
assert check.passed, "the gold is biased"
assert check.score_vs_exact[0].p_value > 1e-3 and check.ratio_vs_exact.p_value > 1e-3

# %% [markdown]
# Each check must also have the power to fail.  `check.at_theta` and `check.at_reference`
# are the events it used, and `simfer.diagnostics.binned_mean_test` is its binned test on
# its own: we hand it wrong targets, which it must reject.


# %%
def plot_check(x, gold, exact, exact_curve, label, title, filename, log_scale=False):
    """Top: binned means of the gold against the exact curve.  Bottom: the pull of each
    bin, mean(gold − exact) / its standard error, which must scatter like N(0, 1)."""
    test = simfer.diagnostics.binned_mean_test
    figure, (top, bottom) = plt.subplots(
        2, 1, sharex=True, figsize=(6, 5.5), gridspec_kw={"height_ratios": [2, 1]}
    )
    top.plot(X_GRID, exact_curve, label=f"exact {label}(x)")
    means = test(gold, x, EDGES)
    top.errorbar(
        means.centres,
        means.means,
        means.stderrs,
        fmt="o",
        ms=4,
        capsize=2,
        label=f"mean of {label}(x,z) in bin",
    )
    top.set(ylabel=label, title=title, yscale="log" if log_scale else "linear")
    top.legend()
    differences = test(gold - exact, x, EDGES)
    bottom.axhspan(-2, 2, color="0.9")
    bottom.axhline(0.0, color="black", lw=0.8)
    bottom.plot(differences.centres, differences.pulls, "o", ms=4)
    bottom.set(xlabel="x", ylabel="pull", ylim=(-4, 4))
    figure.tight_layout()
    figure.savefig(OUT / filename, dpi=120)
    plt.close(figure)


# %% [markdown]
# ### The joint score
#
# The N events at θ = 0.6: E[t(x,z|θ) | x] = t(x|θ), so the binned means of the joint
# score follow the exact score curve.  The joint score is much noisier than t(x|θ) (it
# knows the path, not just x), which is why the averages need error bars.  The score at
# θ + 0.1 is the wrong target.

# %%
data = check.at_theta
theta = data.theta
x = data.x[:, 0]
joint_score = data.joint_score[:, 0]
exact = exact_score(x, theta[:, 0])

p_score = check.score_vs_exact[0].p_value
p_wrong = simfer.diagnostics.binned_mean_test(
    joint_score - exact_score(x, theta[:, 0] + 0.1), x, EDGES
).p_value
print(f"joint score vs exact score:      p = {p_score:.3f}")
print(f"joint score vs score at θ + 0.1: p = {p_wrong:.2e}")
print(f"spread of t(x,z|θ) − t(x|θ): {check.score_vs_exact[0].spread:.2f}")
plot_check(
    x,
    joint_score,
    exact,
    exact_score(X_GRID, torch.full_like(X_GRID, THETA)),
    label="t",
    title=f"Joint score at θ = {THETA}, x drawn at θ",
    filename="01_joint_score.png",
)

assert p_wrong < 1e-6, "the check has no power: it accepts the score at the wrong θ"
assert check.score_vs_exact[0].spread > 0.1  # the gold is noisy; the test is not trivial

# %% [markdown]
# ### The joint ratio
#
# The N events drawn at the reference θ_ref = 0 (`at_reference=True`), with the gold
# evaluated at (θ, θ_ref) = (0.6, 0): E[r(x,z|θ,θ_ref) | x] = r(x|θ,θ_ref), so the binned
# means of exp(joint log ratio) follow the exact ratio.  Averaging the *log* ratio
# instead gives E[log r(x,z) | x] < log r(x|θ,θ_ref) (Jensen's inequality): the log of the
# gold is biased, and the same test rejects it.

# %%
at_ref = check.at_reference
assert bool(at_ref.from_reference.all())
x_ref = at_ref.x[:, 0]
exact_log_r = exact_log_ratio(at_ref.x, at_ref.theta, at_ref.theta_ref)

p_ratio = check.ratio_vs_exact.p_value
p_log = simfer.diagnostics.binned_mean_test(at_ref.joint_log_ratio - exact_log_r, x_ref, EDGES)
p_log = p_log.p_value
print(f"joint ratio vs exact ratio:          p = {p_ratio:.3f}")
print(f"joint log ratio vs exact log ratio:  p = {p_log:.2e}  (Jensen)")
exact_log_r_grid = exact_log_likelihood(
    X_GRID, torch.full_like(X_GRID, THETA)
) - exact_log_likelihood(X_GRID, torch.zeros_like(X_GRID))
plot_check(
    x_ref,
    at_ref.joint_log_ratio.exp(),
    exact_log_r.exp(),
    exact_log_r_grid.exp(),
    label="r",
    title=f"Joint ratio at θ = {THETA}, θ_ref = 0, x drawn at θ_ref",
    filename="01_joint_ratio.png",
    log_scale=True,
)

assert p_log < 1e-6, "the check has no power: it accepts the biased log-space average"

# %% [markdown]
# ## 4. Simulate a training set into an HDF5 store
#
# `simfer.simulate` draws θ from the prior, cuts the run into chunks and commits every
# finished chunk to the store.  With `theta_ref`, half of the rows draw x at θ_ref (the
# reference class); gold is evaluated at (θ, θ_ref) on every row.  Chunk k's θ and random
# numbers derive from `(seed, k)` alone, so the table does not depend on how or where the
# chunks ran.  We run in this process (`executor="serial"`); `"processes"` or a Dask
# client's `get_executor()` give the same rows.

# %%
prior = simfer.BoxUniform(low=[-1.0], high=[1.0])
workdir = tempfile.TemporaryDirectory()
path = Path(workdir.name) / "board.h5"
settings = dict(gold=True, theta_ref=[0.0], seed=7, chunk_size=250, executor="serial")

table = simfer.simulate(sim, prior, 2000, path=path, progress=False, **settings)
print(table)
print("rows drawn at θ_ref:", int(table.from_reference.sum()))
loaded = simfer.load_simulations(path)
for name, column in table.columns().items():
    assert torch.equal(column, loaded.columns()[name]), name
assert len(loaded) == 2000 and loaded.n_invalid == 0

# %% [markdown]
# ## 5. Resume
#
# A run that stopped early (killed, or simply run with a smaller n) leaves whole chunks in
# its store.  Calling `simulate` again with the same arguments simulates only the chunks
# the store lacks; calling it on a finished store simulates nothing and returns the
# stored rows.  We stop a run after 1000 rows (four whole chunks of 250), resume it to
# 2000, and compare with the uninterrupted run above: the rows are identical, because
# chunk k is the same function of (seed, k) in both.  A run killed mid-chunk loses only
# that chunk's uncommitted rows; see docs/simulate.md for the commit protocol.


# %%
def chunks_committed(store):
    with h5py.File(store, "r") as file:
        return int(file.attrs["chunks_committed"])


resumed_path = Path(workdir.name) / "resumed.h5"
simfer.simulate(sim, prior, 1000, path=resumed_path, progress=False, **settings)
print("chunks after the first 1000 rows:", chunks_committed(resumed_path))
resumed = simfer.simulate(sim, prior, 2000, path=resumed_path, progress=False, **settings)
print("chunks after resuming to 2000:  ", chunks_committed(resumed_path))
again = simfer.simulate(sim, prior, 2000, path=resumed_path, progress=False, **settings)
print("chunks after calling again:     ", chunks_committed(resumed_path))

assert chunks_committed(resumed_path) == 2000 // 250  # each chunk simulated exactly once
for name, column in table.columns().items():
    assert torch.equal(column, resumed.columns()[name]), name
    assert torch.equal(column, again.columns()[name]), name

# %% [markdown]
# A store made by another run is refused rather than mixed: here a different seed.

# %%
try:
    simfer.simulate(sim, prior, 2000, path=path, progress=False, **{**settings, "seed": 8})
except simfer.StoreError as error:
    print("StoreError:", error)
else:
    raise AssertionError("a store of another run was accepted")

workdir.cleanup()
print("figures in", OUT)
