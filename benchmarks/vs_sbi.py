r"""simfer's NPE and NLE against sbi's on the sbibm simulators, on the same simulations.

For every simulator (TwoMoons, SLCP, GaussianLinear in 10-d, GaussianMixture) and budget n
(10^3, 10^4, 10^5 simulations) the script simulates once,

    data = simfer.simulate(simulator, prior, n, seed=n)

and trains on exactly those (θ, x) pairs

* simfer: ``PosteriorEstimator("nsf")`` (NPE, direct sampling with rejection against the
  prior's support) and ``LikelihoodEstimator("nle")`` (NLE, sampled by
  ``estimator.posterior(prior, x_obs)``: simfer's vectorised slice sampler);
* sbi 0.27: ``NPE`` (SNPE-C, first round: maximum likelihood) and ``NLE`` with
  ``posterior_nn``/``likelihood_nn("nsf")``, the NLE posterior sampled by sbi's
  ``slice_np_vectorized`` MCMC;

with the same flow size (5 spline transforms of 10 bins, 64 hidden units, 2 residual
blocks, tail bound 4 in standardised units), batch size 256 (the ratio methods: each
library's own, simfer's NRE family 128 and sbi's 200), learning rate 10⁻³, gradient
clipping at norm 5, 10 % validation, early stopping after 20 epochs without improvement
and the same cap on epochs.  What differs is in benchmarks/README.md.

Metric: C2ST (`simfer.diagnostics.c2st`, sbibm's recipe) between the method's posterior
samples and reference samples, at fixed observations x_j ~ p(x|θ_j), θ_j drawn from the
prior with fixed seeds, averaged over the observations.  Reference posteriors:

* GaussianLinear: the analytic Gaussian (``simulator.posterior(x_obs)``).
* GaussianMixture: p(x|θ) = ½ N(x; θ, I) + ½ N(x; θ, 0.01 I) is symmetric in x − θ, so
  under the uniform prior the posterior is the same mixture centred on x_obs, truncated
  to the box: draw the mixture, keep the draws inside (exact).
* TwoMoons: sbibm's inversion of the simulator: draw the latent (a, r), solve the
  simulator for θ on both branches of |θ₁ + θ₂| (each with probability ½), keep the
  solutions inside the box (exact: the map θ ↦ x − s(θ) is a rotation on each branch).
* SLCP: simfer's slice sampler on the exact likelihood, one draw from each of as many
  chains as draws after 500 warm-up sweeps; the likelihood depends on θ₃ and θ₄ only
  through θ₃², θ₄², so each draw's signs of θ₃, θ₄ are flipped at random, which gives the
  four symmetric modes their exact equal weights.

``--check-references`` (on by default) tests the non-analytic references against an
independent sampler on the exact likelihood: rejection sampling from the prior
(TwoMoons, GaussianMixture) and importance sampling with a defensive mixture proposal
fitted to the reference draws (SLCP); the C2ST between the two is reported.

Every finished cell is appended to a JSON-lines file and the table in docs/benchmarks.md
(between the ``vs_sbi`` markers) is rewritten, so a run cut short keeps its numbers; run
the same command again and the finished cells are skipped.

    .venv/bin/python benchmarks/vs_sbi.py --quick          # 10^3 only, a few minutes
    .venv/bin/python benchmarks/vs_sbi.py                  # 10^3, 10^4, 10^5
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import simfer  # noqa: E402
from benchmarks._common import (  # noqa: E402
    JsonLines,
    NullTracker,
    cell_text,
    fmt,
    run_header,
    run_meta,
    sitting,
    write_markdown,
)
from simfer.diagnostics import c2st  # noqa: E402
from simfer.prior import inside_support  # noqa: E402
from simulators import (  # noqa: E402
    SIR,
    SLCP,
    GaussianLinear,
    GaussianMixture,
    LotkaVolterra,
    TwoMoons,
)

SIMULATORS = {
    "two_moons": TwoMoons,
    "slcp": SLCP,
    "gaussian_linear": lambda: GaussianLinear(dim=10),
    "gaussian_mixture": GaussianMixture,
    "sir": SIR,
    "lotka_volterra": LotkaVolterra,
}
#: the tasks whose reference posterior is drawn by MCMC (SLCP) or adaptive importance
#: sampling (the ODE tasks) on the exact likelihood, checked by importance sampling with a
#: proposal fitted to the reference draws (the others have exact samplers, checked by
#: rejection from the prior)
MCMC_REFERENCE = ("slcp", "sir", "lotka_volterra")
#: run by ``--converged`` only (the capped table predates them)
ODE_TASKS = ("sir", "lotka_volterra")
METHODS = [("simfer", "NPE"), ("sbi", "NPE"), ("simfer", "NLE"), ("sbi", "NLE")]
# --converged adds neural ratio estimation: simfer's NRE (binary classifier of joint against
# marginal pairs, its default MLP) and sbi's NRE_A (the same loss, sbi's default classifier),
# and NRE-B (which of 10 θ made x), the paper's NRE: simfer's RatioEstimator("nre_b") and
# sbi's NRE_B, each with its default classifier and 10 atoms
CONVERGED_METHODS = [*METHODS, ("simfer", "NRE"), ("sbi", "NRE")]
CONVERGED_METHODS += [("simfer", "NRE-B"), ("sbi", "NRE-B")]
RATIO = {"NRE": "nre", "NRE-B": "nre_b"}  # the benchmark's ratio rows: simfer's method
# and the vector-field posteriors, each library with its own network and defaults:
# simfer's PosteriorEstimator(method="fmpe"|"npse") (VP SDE) against sbi's FMPE and NPSE
# (its default VE SDE), sampled directly (probability-flow ODE / sbi's own sampler)
VECTOR_FIELD = ("FMPE", "NPSE")
CONVERGED_METHODS += [(lib, m) for m in VECTOR_FIELD for lib in ("simfer", "sbi")]
DIRECT = ("NPE", *VECTOR_FIELD)  # sampled without MCMC
# and gold mining, simfer's alone (sbi has none), on the tasks whose simulator gives gold
# (`Simulator.has_gold`): SCANDAL, NLE plus the joint-score term, on the same simulations
# with their gold; ALICES, log r̂(x|θ, θ_ref) against a reference class at θ_ref, the
# prior's mean, which takes half of the budget's simulations (`simulate(theta_ref=...)`)
GOLD = ("SCANDAL", "ALICES")
CONVERGED_METHODS += [("simfer", m) for m in GOLD]
# --npe-ensemble E: the moonshot table, simfer's PosteriorEstimator(n_ensemble=E) (method
# "NPE-E", sampled directly like NPE) beside the paper's NPE figures
MOONSHOT_NAME = "moonshot"
MOONSHOT_HEADING = "Moonshot: an NPE ensemble at 10^4 simulations against the paper's NPE"


@functools.cache
def _has_gold(name: str) -> bool:
    return SIMULATORS[name]().has_gold


def applies(name: str, method: str) -> bool:
    """Whether ``method`` runs on the task ``name``: the gold rows need a simulator with gold."""
    return method not in GOLD or _has_gold(name)


def is_direct(method: str) -> bool:
    """Whether ``method`` is sampled without MCMC (NPE, its ensembles, FMPE, NPSE)."""
    return method in DIRECT or method.startswith("NPE-")


# --converged trains with no cap: each library stops by its own early-stopping rule (20
# epochs without a validation improvement); this bound is never reached
NO_CAP = 100_000
# The sbibm paper (Lueckmann et al., AISTATS 2021, Fig. 2 and its v1.1 GaussianMixture
# rerun): mean C2ST over 10 observations at 10^3 / 10^4 / 10^5 simulations.  Its NRE is
# sbi's SNRE_B with 10 atoms (sbibm/algorithms/sbi/snre.py), hence the key "NRE-B".
PAPER = {
    "two_moons": {
        "NPE": (0.73, 0.61, 0.54),
        "NLE": (0.77, 0.71, 0.67),
        "NRE-B": (0.82, 0.76, 0.63),
    },
    "slcp": {"NPE": (0.98, 0.90, 0.83), "NLE": (0.95, 0.77, 0.70), "NRE-B": (0.97, 0.95, 0.92)},
    "gaussian_linear": {
        "NPE": (0.69, 0.55, 0.51),
        "NLE": (0.65, 0.55, 0.51),
        "NRE-B": (0.67, 0.56, 0.54),
    },
    "gaussian_mixture": {
        "NPE": (0.72, 0.62, 0.55),
        "NLE": (0.74, 0.72, 0.69),
        "NRE-B": (0.78, 0.75, 0.74),
    },
    "sir": {"NPE": (0.82, 0.68, 0.58), "NLE": (0.76, 0.75, 0.73), "NRE-B": (0.84, 0.77, 0.69)},
    "lotka_volterra": {
        "NPE": (1.00, 1.00, 0.98),
        "NLE": (0.99, 0.96, 0.95),
        "NRE-B": (1.00, 1.00, 1.00),
    },
}
PAPER_BUDGETS = (1_000, 10_000, 100_000)
# The cap on epochs per budget: about 10^3 gradient steps or more at every budget, and a
# full run within ~50 minutes on 2 CPU cores (10^5 simulations cost ~10 s an epoch).
MAX_EPOCHS = {1_000: 100, 10_000: 25, 100_000: 4}
QUICK_MAX_EPOCHS = 20
FLOW = {"hidden": 64, "n_transforms": 5, "bins": 10, "tail_bound": 4.0}
TRAINING = {"batch_size": 256, "learning_rate": 1e-3, "validation_fraction": 0.1, "patience": 20}
TRAIN_SEED = 1
# the observations' noise is simulated with seed + this, independent of their θ's seed
OBSERVATION_NOISE_SEED = 7_919
# sbi's NPE rejects its draws outside the prior's box with no floor on the acceptance
# (simfer stops below 10⁻³); a flow that leaks all its mass would sample for ever
SBI_MAX_SAMPLING_SECONDS = 120
NAME, HEADING = "vs_sbi", "NPE and NLE against sbi on the sbibm simulators"
CONVERGED_NAME = "converged"
CONVERGED_HEADING = "Converged: NPE, NLE and NRE against sbi and the sbibm paper"


# -- observations and reference posteriors -------------------------------------------------
def observations(simulator, prior, n_obs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """θ_j ~ prior and x_j ~ p(x|θ_j), j < n_obs, from fixed seeds (``[n_obs, …]`` each).

    θ and the simulator's noise come from two different seeds.  (Until 2026-12-07 both used
    ``seed``, so the noise replayed the prior's own random numbers: on GaussianLinear x was
    exactly 2θ, a draw from N(0, 0.4 I) instead of the prior predictive N(0, 0.2 I).)"""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        theta = prior.sample((n_obs,))
    return theta, simulator.simulate(theta, seed=seed + OBSERVATION_NOISE_SEED)


def _box(prior) -> tuple[torch.Tensor, torch.Tensor]:
    return prior.low.double(), prior.high.double()


def _inside(theta: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    return ((theta >= low) & (theta < high)).all(-1)


def two_moons_reference(simulator: TwoMoons, x_obs, n: int, generator) -> torch.Tensor:
    """Exact posterior draws by inverting the simulator (sbibm's method), see the module
    docstring: with p = x − (r cos a + ¼, r sin a) = (−|θ₁+θ₂|/√2, (θ₂−θ₁)/√2),
    θ₁ = (±A − B)/2, θ₂ = (±A + B)/2 for A = −√2 p₁ ≥ 0, B = √2 p₂."""
    x = torch.as_tensor(x_obs, dtype=torch.float64)
    low, high = _box(simulator.prior())
    kept, total = [], 0
    while total < n:
        m = 4 * (n - total) + 1000
        a = math.pi * (torch.rand(m, generator=generator, dtype=torch.float64) - 0.5)
        r = simulator.r_loc + simulator.r_scale * torch.randn(
            m, generator=generator, dtype=torch.float64
        )
        p0 = x[0] - (r * torch.cos(a) + simulator.offset)
        p1 = x[1] - r * torch.sin(a)
        big, diff = -math.sqrt(2.0) * p0, math.sqrt(2.0) * p1
        sign = 2.0 * (torch.rand(m, generator=generator, dtype=torch.float64) < 0.5) - 1.0
        theta = torch.stack(((sign * big - diff) / 2, (sign * big + diff) / 2), -1)
        good = (big >= 0) & _inside(theta, low, high)
        kept.append(theta[good])
        total += int(good.sum())
    return torch.cat(kept)[:n].float()


def gaussian_mixture_reference(simulator: GaussianMixture, x_obs, n: int, generator):
    """Exact posterior draws: the likelihood's mixture centred on x_obs, truncated to the
    box by rejection."""
    x = torch.as_tensor(x_obs, dtype=torch.float64)
    low, high = _box(simulator.prior())
    scales = torch.tensor(simulator.scales, dtype=torch.float64)
    weights = torch.tensor(simulator.weights, dtype=torch.float64)
    kept, total = [], 0
    while total < n:
        m = 2 * (n - total) + 100
        z = torch.multinomial(weights, m, replacement=True, generator=generator)
        eps = torch.randn(m, x.shape[0], generator=generator, dtype=torch.float64)
        theta = x + scales[z, None] * eps
        good = _inside(theta, low, high)
        kept.append(theta[good])
        total += int(good.sum())
    return torch.cat(kept)[:n].float()


def mcmc_reference(simulator, x_obs, n: int, seed: int, mcmc: dict) -> torch.Tensor:
    """Slice sampling on the exact likelihood with simfer's sampler: one draw from each of
    ``n`` chains after the warm-up; for SLCP then random sign flips of θ₃ and θ₄ (the
    likelihood's symmetries) for the modes' exact weights."""
    from simfer.inference import posterior_from_likelihood

    prior = simulator.prior()
    posterior = posterior_from_likelihood(simulator.log_likelihood, prior, x_obs)
    draws = posterior.sample(
        n, seed=seed, n_chains=mcmc["n_chains"], warmup=mcmc["warmup_steps"], thin=mcmc["thin"]
    ).double()
    print(f"{simulator.name} reference: {posterior.diagnostics}", flush=True)
    if isinstance(simulator, SLCP):
        generator = torch.Generator().manual_seed(seed)
        signs = 2.0 * (torch.rand(n, 2, generator=generator, dtype=torch.float64) < 0.5) - 1.0
        draws[:, 2:4] = draws[:, 2:4].abs() * signs
    return draws.float()


def adaptive_importance_reference(
    simulator, x_obs, n: int, generator, batch: int = 50_000, rounds: int = 8
) -> tuple[torch.Tensor, float]:
    """Posterior draws for the ODE tasks (positive θ under LogNormal priors) by adaptive
    importance sampling in z = log θ, where the prior is Gaussian: each round draws
    ``batch`` z from a Student-t (5 degrees of freedom) with the weighted mean and twice the
    weighted covariance of the previous round (the first round from the prior), weighs
    w ∝ p(x_obs|θ) p(z) / q(z), and stops once the effective sample size
    ESS = (Σw)²/Σw² of a round exceeds 20 n; n draws are then resampled from that round.
    Every weight is exact, so the draws are exact up to the resampling (returns them and
    the ESS).  A batch of ODE solves costs about one slice-sampler sweep of 10³ chains,
    which needs hundreds of sweeps on these narrow posteriors."""
    df = 5  # the Student-t's degrees of freedom
    loc = torch.tensor(simulator.prior_loc, dtype=torch.float64)
    scale = torch.tensor(simulator.prior_scale, dtype=torch.float64)
    z_prior = torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)
    x = torch.as_tensor(x_obs, dtype=torch.float64)
    mean, cov = loc, torch.diag(scale**2)
    for round_ in range(rounds):
        chol = torch.linalg.cholesky(cov)
        eps = torch.randn(batch, len(loc), generator=generator, dtype=torch.float64)
        if round_ == 0:
            z = loc + scale * eps
            log_q = z_prior.log_prob(z)
        else:  # a χ²(df) draw per row, from the same generator
            chi2 = torch.randn(batch, df, generator=generator, dtype=torch.float64).pow(2).sum(1)
            z = mean + (eps @ chol.T) * (df / chi2).sqrt()[:, None]
            log_q = _student_t_log_prob(z, mean, chol, df)
        theta = z.exp()
        log_w = simulator.log_likelihood(x.expand(batch, -1), theta).double()
        log_w = log_w + z_prior.log_prob(z) - log_q
        log_w = torch.nan_to_num(log_w, nan=-math.inf)
        w = torch.softmax(log_w, 0)
        ess = float(1 / (w**2).sum())
        if ess >= 20 * n or round_ == rounds - 1:
            break
        if ess < 100:  # the weights sit on a few draws: start from the Laplace approximation
            mean, cov = _laplace(simulator, x, z_prior, z[log_w.topk(10).indices])
            continue
        mean = (w[:, None] * z).sum(0)
        centred = z - mean
        cov = 2 * (w[:, None, None] * centred[:, :, None] * centred[:, None, :]).sum(0)
        cov = cov + 1e-10 * torch.eye(len(loc), dtype=torch.float64)
    assert bool(torch.isfinite(theta[w > 0]).all())
    index = torch.multinomial(w, n, replacement=True, generator=generator)
    return theta[index].float(), ess


def _laplace(simulator, x, z_prior, starts) -> tuple[torch.Tensor, torch.Tensor]:
    """The mode of log p(x|e^z) + log p(z) found by L-BFGS from each of ``starts`` (the best
    one kept) and the inverse Hessian there (twice it, for a proposal wider than the
    posterior): (mean ``[d]``, covariance ``[d, d]``)."""

    def log_post(z):
        return simulator.log_likelihood(x.expand(len(z), -1), z.exp()) + z_prior.log_prob(z)

    z = starts.clone().requires_grad_(True)
    optimiser = torch.optim.LBFGS([z], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = -log_post(z).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        best = z[log_post(z).argmax()].detach()
    hessian = torch.autograd.functional.hessian(lambda v: log_post(v[None])[0], best)
    return best, 2 * torch.linalg.inv(-hessian)


def _student_t_log_prob(z, mean, chol, df: float) -> torch.Tensor:
    """log density of the multivariate Student-t with location ``mean``, scale ``chol``."""
    d = z.shape[1]
    solved = torch.linalg.solve_triangular(chol, (z - mean).T, upper=False).T
    maha = solved.pow(2).sum(1)
    return (
        math.lgamma((df + d) / 2)
        - math.lgamma(df / 2)
        - d / 2 * math.log(df * math.pi)
        - torch.log(torch.diagonal(chol)).sum()
        - (df + d) / 2 * torch.log1p(maha / df)
    )


def reference_samples(name, simulator, x_obs, n, seed, mcmc) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if name == "gaussian_linear":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return simulator.posterior(x_obs).sample((n,)).float()
    if name == "two_moons":
        return two_moons_reference(simulator, x_obs, n, generator)
    if name == "gaussian_mixture":
        return gaussian_mixture_reference(simulator, x_obs, n, generator)
    if name == "slcp":
        return mcmc_reference(simulator, x_obs, n, seed, mcmc)
    if name in ODE_TASKS:
        draws, ess = adaptive_importance_reference(simulator, x_obs, n, generator)
        print(f"{name} reference: importance sampling, ESS {ess:.0f}", flush=True)
        return draws
    raise ValueError(name)


def cached_references(name, simulator, x_obs, n: int, cache: Path) -> list[torch.Tensor]:
    """``n`` reference draws for each observation in ``x_obs``, cached in the folder
    ``cache`` (``{name}_obs{j}_{n}_{digest of x_j}.pt``); SLCP's are one draw from each of
    n chains after 500 warm-up sweeps."""
    mcmc = {"n_chains": n, "warmup_steps": 500, "thin": 1}
    references = []
    for j in range(len(x_obs)):
        digest = hashlib.sha256(x_obs[j].double().numpy().tobytes()).hexdigest()[:12]
        path = Path(cache) / f"{name}_obs{j}_{n}_{digest}.pt"
        if path.exists():
            references.append(torch.load(path, weights_only=True))
            continue
        start = time.perf_counter()
        reference = reference_samples(name, simulator, x_obs[j], n, 20_000 + j, mcmc)
        print(f"{name}: reference {j} in {time.perf_counter() - start:.1f} s", flush=True)
        torch.save(reference, path)
        references.append(reference)
    return references


# -- independent checks of the references ----------------------------------------------------
def rejection_check(simulator, x_obs, n: int, seed: int) -> torch.Tensor:
    """Posterior draws by rejection from the uniform prior with the exact likelihood:
    accept θ with probability exp(log p(x|θ) − M), M above the largest log-likelihood
    seen in a large pilot sample (its excess is checked on every batch)."""
    generator = torch.Generator().manual_seed(seed)
    low, high = _box(simulator.prior())
    x = torch.as_tensor(x_obs, dtype=torch.float64)

    def draw(m):
        u = torch.rand(m, low.shape[0], generator=generator, dtype=torch.float64)
        theta = low + (high - low) * u
        return theta, simulator.log_likelihood(x.expand(m, -1), theta)

    _, pilot = draw(2_000_000)
    bound = float(pilot.max()) + 0.5
    kept, total = [], 0
    while total < n:
        theta, log_l = draw(2_000_000)
        if float(log_l.max()) > bound:
            raise RuntimeError("the rejection bound was exceeded; raise the margin")
        keep = torch.rand(len(theta), generator=generator, dtype=torch.float64) < torch.exp(
            log_l - bound
        )
        kept.append(theta[keep])
        total += int(keep.sum())
    return torch.cat(kept)[:n].float()


def importance_check(simulator, x_obs, reference: torch.Tensor, n: int, seed: int):
    """Sampling-importance-resampling on the exact posterior with the defensive proposal
    0.9·(Gaussian kernel density of the reference draws) + 0.1·prior; returns the
    resampled draws and the importance sampler's effective sample size."""
    generator = torch.Generator().manual_seed(seed)
    prior = simulator.prior()
    centres = reference.double()[: min(len(reference), 2000)]
    d = centres.shape[1]
    bandwidth = (4 / (d + 2)) ** (1 / (d + 4)) * len(centres) ** (-1 / (d + 4))  # Silverman
    chol = torch.linalg.cholesky(torch.cov(centres.T) * bandwidth**2)
    m = 200_000
    from_kde = torch.rand(m, generator=generator) < 0.9
    pick = torch.randint(len(centres), (m,), generator=generator)
    eps = torch.randn(m, d, generator=generator, dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        from_prior = prior.sample((m,)).double()
    theta = torch.where(from_kde[:, None], centres[pick] + eps @ chol.T, from_prior)
    kernel = torch.distributions.MultivariateNormal(
        torch.zeros(d, dtype=torch.float64), scale_tril=chol
    )
    log_kde = torch.cat(
        [
            torch.logsumexp(kernel.log_prob(chunk[:, None, :] - centres[None]), 1)
            for chunk in theta.split(5000)
        ]
    ) - math.log(len(centres))
    inside = inside_support(prior, theta.float())
    log_prior = torch.full((m,), -math.inf, dtype=torch.float64)
    log_prior[inside] = prior.log_prob(theta[inside].float()).double()
    log_q = torch.logaddexp(math.log(0.9) + log_kde, math.log(0.1) + log_prior)
    x = torch.as_tensor(x_obs, dtype=torch.float64).expand(int(inside.sum()), -1)
    log_w = torch.full((m,), -math.inf, dtype=torch.float64)
    log_w[inside] = (
        simulator.log_likelihood(x, theta[inside]).double() + log_prior[inside] - log_q[inside]
    )
    w = torch.softmax(log_w, 0)
    ess = float(1 / (w**2).sum())
    index = torch.multinomial(w, n, replacement=True, generator=generator)
    return theta[index].float(), ess


# -- the four methods ---------------------------------------------------------------------------
def _random_subset(samples: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return samples[torch.randperm(len(samples), generator=generator)[:n]]


def simfer_estimator(method, max_epochs, flow="nsf"):
    """simfer's estimator for ``method``, unfitted: NPE, NLE, NRE and NRE-B with the flow size
    and training settings of the table (FLOW, TRAINING; NLE with the spline window it chooses
    to hold the data, which counts and ODE outputs need); FMPE and NPSE with their own training
    defaults (smoothed early stopping, `PosteriorEstimator`), as sbi's vector-field
    trainers keep theirs (`sbi_train_options`)."""
    settings = {**FLOW, **TRAINING, "max_epochs": max_epochs, "seed": TRAIN_SEED, "progress": False}
    if method == "NPE":
        return simfer.PosteriorEstimator(flow, **settings)
    if method.startswith("NPE-"):  # an ensemble of NPE flows
        return simfer.PosteriorEstimator(flow, n_ensemble=int(method[4:]), **settings)
    if method == "NLE":  # simfer's own spline window (tail_bound="auto"), sbi's stays ±4
        settings.pop("tail_bound")
        return simfer.LikelihoodEstimator("nle", flow, **settings)
    if method == "SCANDAL":  # NLE's flow and window, plus the joint-score term
        settings.pop("tail_bound")
        return simfer.LikelihoodEstimator("scandal", flow, **settings)
    if method in VECTOR_FIELD:
        options = {"max_epochs": max_epochs, "seed": TRAIN_SEED, "progress": False}
        return simfer.PosteriorEstimator(method=method.lower(), **options)
    # the ratio estimators keep their own minibatch size (the NRE family's is 128)
    settings = {k: v for k, v in settings.items() if k not in FLOW and k != "batch_size"}
    return simfer.RatioEstimator(RATIO.get(method, method.lower()), **settings)


def train_simfer(method, data, prior, max_epochs, flow="nsf"):
    estimator = simfer_estimator(method, max_epochs, flow)
    start = time.perf_counter()
    estimator.fit(data, prior)
    seconds = time.perf_counter() - start
    return estimator, seconds, len(estimator.history.train_loss)


def sample_simfer(method, estimator, prior, x_obs, n, seed, mcmc):
    if is_direct(method):
        return estimator.sample(n, x=x_obs, seed=seed), {"acceptance": estimator.acceptance_rate}
    posterior = estimator.posterior(prior, x_obs)
    samples = posterior.sample(
        n, seed=seed, n_chains=mcmc["n_chains"], warmup=mcmc["warmup_steps"], thin=mcmc["thin"]
    )
    return samples, posterior.diagnostics


def sbi_trainer(method, prior):
    """sbi's trainer for ``method``: NPE and NLE with the flow size of simfer's (FLOW), NRE,
    NRE-B (10 atoms, sbi's default), FMPE and NPSE with sbi's default networks."""
    from sbi.inference import FMPE, NLE, NPE, NPSE, NRE_A, NRE_B
    from sbi.neural_nets import likelihood_nn, posterior_nn

    options = {"prior": prior, "show_progress_bars": False, "tracker": NullTracker()}
    if method in ("NPE", "NLE"):
        build = posterior_nn if method == "NPE" else likelihood_nn
        options["density_estimator"] = build(
            model="nsf",
            hidden_features=FLOW["hidden"],
            num_transforms=FLOW["n_transforms"],
            num_bins=FLOW["bins"],
            tail_bound=FLOW["tail_bound"],
        )
    trainers = {"NPE": NPE, "NLE": NLE, "NRE": NRE_A, "NRE-B": NRE_B, "FMPE": FMPE, "NPSE": NPSE}
    return trainers[method](**options)


def sbi_train_options(max_epochs, method="NPE") -> dict:
    """The arguments of sbi's ``train``: the training settings of the table (TRAINING); for
    FMPE and NPSE only the cap, so that sbi's own defaults hold (batch 200, learning rate
    5·10⁻⁴, patience 20 on the validation loss smoothed with ``ema_loss_decay=0.1``)."""
    cap = {"max_num_epochs": max_epochs - 1, "show_train_summary": False}  # epochs 0 … max
    if method in VECTOR_FIELD:
        return cap
    # the ratio methods keep sbi's own minibatch of 200, as simfer's keep theirs
    batch = {} if method in RATIO else {"training_batch_size": TRAINING["batch_size"]}
    return {
        **cap,
        **batch,
        "learning_rate": TRAINING["learning_rate"],
        "validation_fraction": TRAINING["validation_fraction"],
        "stop_after_epochs": TRAINING["patience"],
        "clip_max_norm": 5.0,
    }


def train_sbi(method, data, prior, max_epochs):
    """sbi's trainer for ``method`` (`sbi_trainer`) trained with the table's settings."""
    torch.manual_seed(TRAIN_SEED)  # sbi's split and initialisation draw from torch
    trainer = sbi_trainer(method, prior)
    start = time.perf_counter()
    network = trainer.append_simulations(data.theta.clone(), data.x.clone()).train(
        **sbi_train_options(max_epochs, method)
    )
    seconds = time.perf_counter() - start
    network.eval()
    return (trainer, network), seconds, int(trainer.summary["epochs_trained"][-1])


def sample_sbi(method, model, prior, x_obs, n, seed, mcmc, own_mcmc=False):
    """NPE: sbi's DirectPosterior (rejection against the prior's support).  NLE: sbi's
    learnt likelihood log q(x|θ) sampled by simfer's slice sampler with the settings of
    simfer's NLE (the same sampler for both, so the C2ST compares the learnt likelihoods),
    or with ``own_mcmc`` by sbi's own ``slice_np_vectorized`` (see benchmarks/README.md)."""
    trainer, network = model
    torch.manual_seed(seed)
    if method in DIRECT or own_mcmc:
        if method in DIRECT:
            posterior = trainer.build_posterior()
        else:
            posterior = trainer.build_posterior(
                mcmc_method="slice_np_vectorized",
                mcmc_parameters={
                    "num_chains": mcmc["n_chains"],
                    "warmup_steps": mcmc["warmup_steps"],
                    "thin": mcmc["thin"],
                    "init_strategy": "resample",
                },
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            options = {"max_sampling_time": SBI_MAX_SAMPLING_SECONDS} if method == "NPE" else {}
            return posterior.sample((n,), x=x_obs, show_progress_bars=False, **options), {}

    from simfer.inference import posterior_from_likelihood

    def log_likelihood(x, theta):
        with torch.no_grad():
            if method in RATIO:  # the classifier's logit is log r(x, θ) (NRE-B: + c(x))
                return network(theta, x.expand(len(theta), *x.shape[1:]))
            return network.log_prob(x[None], theta)[0]

    posterior = posterior_from_likelihood(log_likelihood, prior, x_obs)
    samples = posterior.sample(
        n, seed=seed, n_chains=mcmc["n_chains"], warmup=mcmc["warmup_steps"], thin=mcmc["thin"]
    )
    return samples, posterior.diagnostics


def warm_up(simulator, prior) -> None:
    """One tiny untimed fit of each kind, so that no timed run pays first-call costs
    (imports, lazy initialisation; 5–60 s on a loaded machine)."""
    data = simfer.simulate(simulator, prior, 300, seed=0, executor="serial", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method in ("NPE", "NLE"):
            train_simfer(method, data, prior, 2)
            train_sbi(method, data, prior, 2)


# -- the table -------------------------------------------------------------------------------
SIM_LABEL = {
    "two_moons": "TwoMoons",
    "slcp": "SLCP",
    "gaussian_linear": "GaussianLinear (10-d)",
    "gaussian_mixture": "GaussianMixture",
    "sir": "SIR",
    "lotka_volterra": "LotkaVolterra",
}


def _latest(rows: list[dict]) -> dict:
    cells = {}
    for row in rows:
        if row.get("kind") == "cell":
            cells[row["simulator"], row["budget"], row["library"], row["method"]] = row
    return cells


def render(rows: list[dict], simulators: list[str], budgets: list[int], meta: dict) -> str:
    cells = _latest(rows)
    methods = meta["methods"]
    kinds = list(dict.fromkeys(m for _, m in methods))

    def cell(sim, budget, library, method):
        return cells.get((sim, budget, library, method))

    head = "| simulator | method | " + " | ".join(f"n = {b:,}" for b in budgets) + " |"
    rule = "| --- | --- |" + " --- |" * len(budgets)
    lines = [
        *run_header(meta),
        "",
        f"C2ST against reference posterior samples ({meta['n_c2st']} draws each, mean over "
        f"{meta['n_obs']} observations; 0.5 is perfect), and in brackets the training wall "
        f"time and the epochs run (cap: {meta['max_epochs_text']}; early stopping after "
        f"{TRAINING['patience']} epochs without improvement; simfer halves its learning rate "
        "after 5 stalled epochs, sbi keeps it constant)."
        + (
            " FMPE and NPSE train with each library's own defaults: simfer's patience 50 on "
            "a moving average (β = 0.9) of the validation loss, sbi's patience 20 on its "
            "moving average (ema_loss_decay 0.1)."
            if any(m in VECTOR_FIELD for _, m in methods)
            else ""
        )
        + (
            " NRE and NRE-B train in minibatches of each library's own default (simfer's NRE "
            f"family 128, sbi 200); NPE and NLE in {TRAINING['batch_size']}."
            if any(m in RATIO for _, m in methods)
            else ""
        )
        + (
            " SCANDAL and ALICES mine gold, where the simulator gives it (simfer only; sbi has "
            "no gold mining): SCANDAL is NLE's flow on the same simulations with their joint "
            "scores; ALICES learns log r̂(x|θ, θ_ref) against a reference class at θ_ref = the "
            "prior's mean, drawn from half of the budget's simulations."
            if any(m in GOLD for _, m in methods)
            else ""
        )
        + (
            " The paper's rows are the sbibm figures (10 observations, sbi's defaults)."
            if meta.get("converged")
            else ""
        ),
        "",
        head,
        rule,
    ]
    for sim in simulators:
        if meta.get("converged"):
            for method in kinds:
                paper = "NPE" if method.startswith("NPE-") else method
                figures = PAPER.get(sim, {}).get(paper)
                if figures is None:
                    continue
                texts = [
                    f"{figures[PAPER_BUDGETS.index(b)]:.2f}" if b in PAPER_BUDGETS else "—"
                    for b in budgets
                ]
                lines.append(f"| {SIM_LABEL[sim]} | paper {paper} | " + " | ".join(texts) + " |")
        for library, method in methods:
            if not applies(sim, method):
                continue
            texts = [
                cell_text(
                    cell(sim, b, library, method),
                    lambda r: (
                        f"{r['c2st_mean']:.3f} ({r['train_seconds']:.0f} s, {r['epochs']} ep)"
                    ),
                )
                for b in budgets
            ]
            lines.append(f"| {SIM_LABEL[sim]} | {library} {method} | " + " | ".join(texts) + " |")

    lines += [
        "",
        f"Seconds to draw {meta['n_time']:,} posterior samples at one observation (NPE, "
        "FMPE, NPSE: direct, with rejection against the prior's support; the likelihood and "
        "ratio methods: slice-sampling MCMC, "
        f"{meta['mcmc']['n_chains']} chains, {meta['mcmc']['warmup_steps']} warm-up steps, "
        f"thinning {meta['mcmc']['thin']}):",
        "",
        head,
        rule,
    ]
    for sim in simulators:
        for library, method in methods:
            if not applies(sim, method):
                continue
            texts = []
            for b in budgets:
                r = cell(sim, b, library, method)
                ok = r is not None and "error" not in r
                texts.append(fmt(r["sample_seconds"]) if ok else "—")
            lines.append(f"| {SIM_LABEL[sim]} | {library} {method} | " + " | ".join(texts) + " |")

    def ratio(sim, b, method, key):
        a, c = cell(sim, b, "simfer", method), cell(sim, b, "sbi", method)
        if a is None or c is None or "error" in a or "error" in c:
            return "—"
        if key == "c2st":
            return f"{a['c2st_mean'] - c['c2st_mean']:+.3f}"
        if key == "epoch":
            x = (a["train_seconds"] / a["epochs"]) / (c["train_seconds"] / c["epochs"])
        else:
            x = a["sample_seconds"] / c["sample_seconds"]
        return f"{x:.2f}"

    compared = [m for m in kinds if ("sbi", m) in methods and ("simfer", m) in methods]
    if compared:  # the methods both libraries ran (not the moonshot's, nor gold mining)
        lines += [
            "",
            "simfer against sbi from the same run: C2ST difference simfer − sbi (negative: simfer "
            "closer to the reference), training seconds per epoch simfer / sbi (equal epochs, "
            "equal batches), sampling time simfer / sbi:",
            "",
            "| simulator | method | quantity | " + " | ".join(f"n = {b:,}" for b in budgets) + " |",
            "| --- | --- | --- |" + " --- |" * len(budgets),
        ]
    for sim in simulators:
        for method in compared:
            for key, label in (
                ("c2st", "C2ST simfer − sbi"),
                ("epoch", "s/epoch simfer / sbi"),
                ("sample", "sampling simfer / sbi"),
            ):
                texts = [ratio(sim, b, method, key) for b in budgets]
                lines.append(
                    f"| {SIM_LABEL[sim]} | {method} | {label} | " + " | ".join(texts) + " |"
                )

    checks = [r for r in rows if r.get("kind") == "reference_check"]
    if checks:
        lines += [
            "",
            "Reference posteriors checked against an independent sampler on the exact "
            "likelihood (C2ST between the two; 0.5 = indistinguishable):",
            "",
            "| simulator | observation | check | C2ST | note |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in checks:
            lines.append(
                f"| {SIM_LABEL[r['simulator']]} | {r['observation']} | {r['check']} | "
                f"{r['c2st']:.3f} | {r.get('note', '')} |"
            )
    return "\n".join(lines)


# -- driver -------------------------------------------------------------------------------------
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--simulators", nargs="+", choices=list(SIMULATORS), help="default: all")
    parser.add_argument("--budgets", type=int, nargs="+", help="default 1000 10000 100000")
    parser.add_argument("--quick", action="store_true", help="10^3 only, 20 epochs, 500 draws")
    parser.add_argument("--max-epochs", type=int, help="one cap for every budget")
    parser.add_argument("--skip", nargs="*", default=[], help="'sbi', 'NLE', 'simfer:NLE', …")
    parser.add_argument("--n-obs", type=int, default=3, help="observations per simulator")
    parser.add_argument("--n-c2st", type=int, help="draws of each side of a C2ST (1000)")
    parser.add_argument("--n-time", type=int, help="draws timed at the first observation (10^4)")
    parser.add_argument("--chains", type=int, default=500, help="MCMC chains of NLE")
    parser.add_argument("--warmup", type=int, default=30, help="MCMC warm-up steps of NLE")
    parser.add_argument("--no-check-references", action="store_true")
    parser.add_argument(
        "--sbi-mcmc", action="store_true", help="sample sbi's NLE with sbi's own slice sampler"
    )
    parser.add_argument("--fresh", action="store_true", help="ignore the finished cells")
    parser.add_argument(
        "--converged",
        action="store_true",
        help="no epoch cap, NRE rows, the paper's figures; its own log and table",
    )
    parser.add_argument(
        "--npe-ensemble",
        type=int,
        help="with --converged: only simfer's NPE ensemble of this many flows, in its own table",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--jsonl", help="default benchmarks/results/{vs_sbi,converged}.jsonl")
    parser.add_argument("--cache", default="/tmp/simfer_vs_sbi_references")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    simulators = args.simulators or [s for s in SIMULATORS if args.converged or s not in ODE_TASKS]
    budgets = sorted(args.budgets or ([1_000] if args.quick else list(MAX_EPOCHS)))
    n_c2st = args.n_c2st or (500 if args.quick else 1000)
    n_time = args.n_time or (2000 if args.quick else 10_000)

    methods = CONVERGED_METHODS if args.converged else METHODS
    table, heading = (CONVERGED_NAME, CONVERGED_HEADING) if args.converged else (NAME, HEADING)
    if args.npe_ensemble:
        if not args.converged:
            parser.error("--npe-ensemble needs --converged")
        methods = [("simfer", f"NPE-{args.npe_ensemble}")]
        table, heading = MOONSHOT_NAME, MOONSHOT_HEADING
    jsonl = args.jsonl or str(ROOT / "benchmarks" / "results" / f"{table}.jsonl")

    def max_epochs(budget):
        if args.converged:
            return NO_CAP
        if args.max_epochs:
            return args.max_epochs
        if args.quick:
            return QUICK_MAX_EPOCHS
        return MAX_EPOCHS.get(budget, 30)

    mcmc = {"n_chains": args.chains, "warmup_steps": args.warmup, "thin": 1}
    skip = set(args.skip)
    log = JsonLines(jsonl)
    if args.fresh and log.path.exists():
        log.path.unlink()
    rows = log.rows()
    done = {k for k, r in _latest(rows).items() if "error" not in r}
    checked = {
        (r["simulator"], r["observation"]) for r in rows if r.get("kind") == "reference_check"
    }
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)

    meta = {
        **run_meta("vs_sbi.py", argv, args.threads, "sbi", "nflows"),
        "n_obs": args.n_obs,
        "n_c2st": n_c2st,
        "n_time": n_time,
        "mcmc": mcmc,
        "max_epochs_text": (
            "none"
            if args.converged
            else ", ".join(f"{max_epochs(b)} at n = {b:,}" for b in budgets)
        ),
        "methods": methods,
        "converged": args.converged,
        "status": " (running)",
        "wall_minutes": 0.0,
    }
    meta["status"] = sitting(len(done)) + meta["status"]
    markdown = Path(args.markdown)
    t0 = time.perf_counter()

    def record(row):
        rows.append(row)
        log.append(row)
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
        print(json.dumps(shown), flush=True)
        meta["wall_minutes"] = (time.perf_counter() - t0) / 60
        write_markdown(markdown, render(rows, *shown_cells(), meta), table, heading)

    def shown_cells():
        """The simulators and budgets of this run and of the finished cells it resumes."""
        cells = _latest(rows)
        names = {k[0] for k in cells} | set(simulators)
        return [s for s in SIMULATORS if s in names], sorted({k[1] for k in cells} | set(budgets))

    def prepare(name):
        """The simulator, its prior, the observations and their reference samples (cached
        on disk), checked once against an independent sampler."""
        simulator = SIMULATORS[name]()
        prior = simulator.prior()
        _, x_obs = observations(simulator, prior, args.n_obs, seed=10_000)
        references = cached_references(name, simulator, x_obs, n_c2st, cache)
        if not args.no_check_references and name != "gaussian_linear":
            for j in range(args.n_obs):
                if (name, j) in checked:
                    continue
                if name in MCMC_REFERENCE:
                    other, ess = importance_check(
                        simulator, x_obs[j], references[j], n_c2st, 30_000 + j
                    )
                    check, note = "importance sampling", f"ESS {ess:.0f} of 200,000"
                else:
                    other, note = rejection_check(simulator, x_obs[j], n_c2st, 30_000 + j), ""
                    check = "rejection from the prior"
                record(
                    {
                        "kind": "reference_check",
                        "simulator": name,
                        "observation": j,
                        "check": check,
                        "c2st": c2st(references[j], other),
                        "note": note,
                    }
                )
                checked.add((name, j))
        return simulator, prior, x_obs, references

    def run_cell(name, budget, library, method, data, prepared):
        simulator, prior, x_obs, references = prepared
        row = {
            "kind": "cell",
            "simulator": name,
            "budget": budget,
            "library": library,
            "method": method,
            "max_epochs": max_epochs(budget),
            "threads": args.threads,
        }
        try:
            if library == "simfer":
                train, sample = train_simfer, sample_simfer
            else:
                train = train_sbi

                def sample(*a):
                    return sample_sbi(*a, own_mcmc=args.sbi_mcmc)

            model, seconds, epochs = train(method, data, prior, max_epochs(budget))
            row.update(train_seconds=seconds, epochs=epochs)
            if library == "simfer":  # the loop's rule, to tell rows of older defaults apart
                row.update(schedule=model.training.schedule, smoothing=model.training.smoothing)
                row["floor_gain"] = simfer.training.FLOOR_GAIN  # the plateau's end (2026-12-08)
                if method in RATIO:
                    row.update(activation=model.activation, batch_size=model.training.batch_size)
                if method in GOLD:
                    row["alpha"] = model.alpha_used
                if data.theta_ref is not None:
                    row["theta_ref"] = data.theta_ref[0].tolist()
            scores, infos = [], []
            for j in range(args.n_obs):
                n = n_time if j == 0 else n_c2st
                start = time.perf_counter()
                samples, info = sample(method, model, prior, x_obs[j], n, j, mcmc)
                if j == 0:
                    row["sample_seconds"] = time.perf_counter() - start
                samples = _random_subset(samples.reshape(-1, samples.shape[-1]), n_c2st, j)
                scores.append(c2st(references[j], samples))
                infos.append({k: v for k, v in info.items() if isinstance(v, int | float)})
            row.update(c2st=scores, c2st_mean=sum(scores) / len(scores), info=infos)
        except Exception as error:  # a failure is reported, never faked
            row["error"] = f"{type(error).__name__}: {error}"
        record(row)

    # budget-major: a run cut short leaves every simulator at the smaller budgets
    prepared = {}
    warmed = False
    for budget in budgets:
        for name in simulators:
            todo = [
                (lib, m)
                for lib, m in methods
                if (name, budget, lib, m) not in done
                and not ({lib, m, f"{lib}:{m}"} & skip)
                and applies(name, m)
            ]
            if not todo:
                continue
            if name not in prepared:
                prepared[name] = prepare(name)
            simulator, prior = prepared[name][:2]
            if not warmed:
                warm_up(simulator, prior)
                warmed = True
            datasets = {}
            for library, method in todo:
                # the budget's simulations (seed = n), with gold for SCANDAL (the same θ and
                # x), with half of them drawn at θ_ref for ALICES
                key = (method in GOLD, method == "ALICES")
                if key not in datasets:
                    datasets[key] = simfer.simulate(
                        simulator,
                        prior,
                        budget,
                        seed=budget,
                        gold=key[0],
                        theta_ref=prior.mean if key[1] else None,
                        executor="serial",
                        progress=False,
                    )
                    assert datasets[key].n_invalid == 0
                run_cell(name, budget, library, method, datasets[key], prepared[name])
    meta["status"] = sitting(len(done))
    meta["wall_minutes"] = (time.perf_counter() - t0) / 60
    text = render(rows, *shown_cells(), meta)
    write_markdown(markdown, text, table, heading)
    print()
    print(text)


if __name__ == "__main__":
    main()
