"""Posteriors, samplers and limits, checked against exact answers.

Sampler tolerances are Monte Carlo errors: a mean estimated from draws with effective
sample size ESS has standard error sd/√ESS, and the checks allow 4 of them (a false alarm
once in ~16000 checks).  Trained surrogates add their own error, bounded by what early
stopping can resolve: with N_val validation rows the validation NLL has standard error
≈ 1/√N_val nats for a 2-d Gaussian (tests/test_flows.py), so a fit may be off by
KL ≈ 2/√N_val; a mean shift δ costs ½(δ/σ)² and a variance ratio r about ¼(r − 1)², which
bounds |δ|/σ ≤ √(2·KL) and |r − 1| ≤ 2√KL.
"""

import math
import warnings
from pathlib import Path

import pytest
import torch
from conftest import run_markdown_examples
from scipy import stats

import simfer
from simfer.errors import ShapeError, SimferError
from simfer.inference import (
    EventTerm,
    Posterior,
    SupportsPosterior,
    effective_sample_size,
    expected_scans,
    likelihood_scan,
    posterior_from_likelihood,
    slice_sample,
    split_r_hat,
)
from simulators import GaussianLinear

N_SIMULATIONS = 3000
KL_TOLERANCE = 2 / math.sqrt(0.1 * N_SIMULATIONS)
MEAN_TOLERANCE = math.sqrt(2 * KL_TOLERANCE)  # in posterior standard deviations
VARIANCE_TOLERANCE = 2 * math.sqrt(KL_TOLERANCE)  # on the variance ratio
FAST = dict(progress=False, patience=10, seed=0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gaussian():
    return GaussianLinear(dim=2)


@pytest.fixture(scope="module")
def observation(gaussian):
    theta = torch.tensor([0.2, -0.3])
    return gaussian.simulate(theta[None], seed=11)[0]


@pytest.fixture(scope="module")
def data(gaussian):
    return simfer.simulate(
        gaussian, gaussian.prior(), N_SIMULATIONS, seed=0, executor="serial", progress=False
    )


def check_moments(draws, mean, variance, mean_tolerance, variance_tolerance):
    sd = variance.sqrt()
    shift = ((draws.mean(0) - mean) / sd).abs().max()
    ratio = draws.var(0) / variance
    assert shift < mean_tolerance, (draws.mean(0), mean)
    assert ((ratio - 1).abs() < variance_tolerance).all(), ratio


# -- chain diagnostics ---------------------------------------------------------------------------
def test_r_hat_and_ess_of_independent_and_autocorrelated_chains():
    generator = torch.Generator().manual_seed(0)
    iid = torch.randn(8, 1000, 2, generator=generator, dtype=torch.float64)
    assert float(split_r_hat(iid).max()) < 1.01
    ess = effective_sample_size(iid)
    assert ((ess / 8000 - 1).abs() < 0.15).all(), ess
    # AR(1) with ρ = 0.8: ESS = N (1 − ρ) / (1 + ρ) = N / 9
    rho, noise = 0.8, torch.randn(8, 4000, 1, generator=generator, dtype=torch.float64)
    chain = torch.zeros_like(noise)
    for t in range(1, noise.shape[1]):
        chain[:, t] = rho * chain[:, t - 1] + math.sqrt(1 - rho**2) * noise[:, t]
    ratio = float(effective_sample_size(chain)[0]) / (32000 / 9)
    assert 0.75 < ratio < 1.3, ratio
    # chains stuck at different places do not mix: R̂ far above 1
    stuck = iid + torch.arange(8, dtype=torch.float64)[:, None, None]
    assert float(split_r_hat(stuck).min()) > 1.5


# -- samplers on exact densities -----------------------------------------------------------------
def banana_log_likelihood(x, theta):
    """θ1 ~ N(0, 1), θ2 | θ1 ~ N(θ1², 0.5²): E θ2 = 1, Var θ2 = 2 + 0.25 (x is ignored)."""
    return -0.5 * theta[:, 0] ** 2 - 0.5 * ((theta[:, 1] - theta[:, 0] ** 2) / 0.5) ** 2


BANANA_MEAN = torch.tensor([0.0, 1.0])
BANANA_VARIANCE = torch.tensor([1.0, 2.25])


@pytest.fixture(scope="module")
def banana():
    prior = simfer.BoxUniform([-7.0, -5.0], [7.0, 60.0])
    return posterior_from_likelihood(banana_log_likelihood, prior, torch.zeros(1))


def check_against_banana(draws, ess):
    sd = BANANA_VARIANCE.sqrt()
    error = (draws.mean(0) - BANANA_MEAN).abs() / (sd / ess.sqrt())
    assert (error < 4).all(), (draws.mean(0), ess)


def test_slice_sampler_on_a_banana(banana):
    draws = banana.sample(40_000, seed=0, n_chains=100, warmup=200)
    info = banana.diagnostics
    assert info["move"] == "mixed" and info["stuck_updates"] == 0
    assert info["r_hat_max"] < 1.1, info  # Gelman & Rubin (1992)'s threshold
    ess = torch.tensor(info["ess_min"])
    check_against_banana(draws, ess)
    # Var θ1 from ESS draws: standard error √(2/ESS) of the ratio (θ1 is Gaussian)
    assert abs(float(draws[:, 0].var()) - 1) < 4 * math.sqrt(2 / ess)


@pytest.mark.slow
def test_differential_moves_mix_better_than_coordinate_moves(banana):
    ess = {}
    for move in ("differential", "coordinate"):
        banana.sample(40_000, seed=0, n_chains=100, warmup=200, move=move)
        ess[move] = banana.diagnostics["ess_min"]
    assert ess["differential"] > 1.5 * ess["coordinate"], ess


@pytest.mark.slow
def test_nuts_agrees_with_slice_on_a_banana(banana):
    draws = banana.sample(2000, method="nuts", seed=0, n_chains=2, warmup=500, max_tree_depth=10)
    info = banana.diagnostics
    assert info["r_hat_max"] < 1.1
    check_against_banana(draws, torch.tensor(info["ess_min"]))
    nuts_ess = torch.tensor(info["ess_min"])
    slice_draws = banana.sample(20_000, seed=1, n_chains=100, warmup=200)
    slice_ess = torch.tensor(banana.diagnostics["ess_min"])
    # the two chains' means differ by less than 4 standard errors of their difference (a KS
    # test would be wrong here: MCMC draws are autocorrelated)
    se = BANANA_VARIANCE.sqrt() * (1 / nuts_ess + 1 / slice_ess).sqrt()
    assert ((draws.mean(0) - slice_draws.mean(0)).abs() < 4 * se).all()


def test_every_sampler_recovers_the_exact_gaussian_posterior(gaussian, observation):
    x = gaussian.simulate(torch.tensor([[0.2, -0.3]]).expand(5, -1), seed=3)
    posterior = posterior_from_likelihood(
        gaussian.log_likelihood, gaussian.prior(), x, x_shape=(2,)
    )
    exact = gaussian.posterior(x)
    for method, n in [("slice", 4000), ("rejection", 4000), ("nuts", 600)]:
        options = dict(n_chains=2, warmup=100) if method == "nuts" else {}
        draws = posterior.sample(n, method=method, seed=0, **options)
        ess = posterior.diagnostics.get("ess_min", n)
        check_moments(draws, exact.mean, exact.variance, 4 / math.sqrt(ess), 0.15)
        # rejection draws are exact and independent: a KS test per coordinate
        if method == "rejection":
            for j in range(2):
                cdf = stats.norm(float(exact.mean[j]), float(exact.variance[j].sqrt())).cdf
                assert stats.kstest(draws[:, j].numpy(), cdf).pvalue > 1e-3
    assert torch.allclose(posterior.map(), exact.mean, atol=1e-3)


def test_posterior_contracts_like_one_over_root_n(gaussian):
    theta = torch.tensor([[0.1, 0.1]])
    widths = []
    for n in (4, 64):
        x = gaussian.simulate(theta.expand(n, -1), seed=n)
        posterior = posterior_from_likelihood(
            gaussian.log_likelihood, gaussian.prior(), x, x_shape=(2,)
        )
        draws = posterior.sample(4000, seed=0)
        widths.append(draws.std(0))
        check_moments(draws, gaussian.posterior(x).mean, gaussian.posterior(x).variance, 0.1, 0.15)
    # posterior variance 1/(1/0.1 + n/0.1): the ratio of widths is √(65/5) = 3.6 (not 4: prior)
    ratio = widths[0] / widths[1]
    assert ((ratio / math.sqrt(65 / 5) - 1).abs() < 0.1).all(), ratio


def test_sample_batched_matches_each_observation(gaussian):
    x = gaussian.simulate(torch.tensor([[0.3, 0.0], [-0.4, 0.2], [0.0, -0.5]]), seed=5)
    posterior = posterior_from_likelihood(gaussian.log_likelihood, gaussian.prior(), x[0])
    draws = posterior.sample_batched(2000, x, seed=0)
    assert draws.shape == (3, 2000, 2)
    for i in range(3):
        exact = gaussian.posterior(x[i : i + 1])
        check_moments(draws[i], exact.mean, exact.variance, 0.12, 0.15)


def test_a_posterior_from_any_event_term_pairs_each_observation_with_its_design(gaussian):
    """`Posterior.from_term` takes the `EventTerm` of anything with an ``event_term`` method;
    ℓ(x, θ, d) gets rows of x, θ and each observation's own design, already paired."""
    sigma = math.sqrt(gaussian.noise_var)

    class Scaled:  # x ~ N(θ, (σ d)²): the design scales the noise
        def event_term(self, prior, x_obs, *, design=None):
            def log_likelihood(x, theta, design):
                assert x.shape[0] == theta.shape[0] == design.shape[0]
                return torch.distributions.Normal(theta, sigma * design).log_prob(x).sum(-1)

            return EventTerm(log_likelihood, x_obs, (2,), design_dim=1, model=self)

    model, prior = Scaled(), gaussian.prior()
    assert isinstance(model, SupportsPosterior)
    x = gaussian.simulate(torch.zeros(3, 2), seed=2)
    designs = torch.tensor([[1.0], [2.0], [0.5]])
    term = model.event_term(prior, x, design=designs)
    posterior = Posterior.from_term(term, prior, design=designs)
    theta = prior.sample((7,))

    def exact(scales):
        return sum(
            torch.distributions.Normal(theta, sigma * float(d)).log_prob(x[i]).sum(-1)
            for i, d in enumerate(scales)
        )

    assert torch.allclose(posterior.log_likelihood(theta), exact(designs[:, 0]), atol=1e-5)
    assert torch.allclose(
        posterior.log_prob(theta), exact(designs[:, 0]) + prior.log_prob(theta), atol=1e-5
    )
    shared = Posterior.from_term(term, prior, design=torch.tensor([2.0]))  # one for all
    assert torch.allclose(shared.log_likelihood(theta), exact([2.0] * 3), atol=1e-5)
    with pytest.raises(ShapeError, match="pass design="):
        Posterior.from_term(term, prior)
    with pytest.raises(ShapeError, match="one per observation"):
        Posterior.from_term(term, prior, design=torch.ones(2, 1))


# -- budgets and errors --------------------------------------------------------------------------
def test_rejection_stops_when_acceptance_collapses():
    # 100 events in 10-d: acceptance ≈ (1 + 100)^(−10/2) ≈ 1e-10, far below min_acceptance
    model = GaussianLinear(dim=10)
    x = model.simulate(torch.zeros(100, 10), seed=1)
    posterior = posterior_from_likelihood(model.log_likelihood, model.prior(), x, x_shape=(10,))
    with pytest.raises(SimferError, match=r"accepted .* method='slice'"):
        posterior.sample(100, method="rejection", seed=0)


def test_slice_sampler_time_budget_and_bad_starts():
    def log_density(theta, rows):
        return -0.5 * (theta**2).sum(-1)

    with pytest.raises(SimferError, match="time budget"):
        slice_sample(log_density, torch.zeros(10, 2), 10**6, max_seconds=0.2)

    def nowhere(theta, rows):
        return torch.full(theta.shape[:1], -math.inf)

    with pytest.raises(SimferError, match="not finite"):
        slice_sample(nowhere, torch.zeros(4, 2), 10)


def test_chains_that_run_away_on_an_extrapolating_surrogate_are_warned_of():
    """sbi's NRE on LotkaVolterra grew without bound in θ, and every chain ran out to ~10³⁸
    under its LogNormal prior.  Here ℓ = 3θ does the same: the LogNormal's tail,
    exp(−(log θ)²/2), cannot hold exp(3θ), so the "posterior" is improper and the chains
    leave the prior's reach.  A proper posterior in the prior's bulk warns of nothing."""
    prior = torch.distributions.Independent(
        torch.distributions.LogNormal(torch.zeros(2), torch.ones(2)), 1
    )

    def runaway(x, theta):
        return 3 * theta.sum(-1)

    posterior = posterior_from_likelihood(runaway, prior, torch.zeros(1))
    with pytest.warns(simfer.ExtrapolationWarning, match=r"beyond the prior's reach.*R̂"):
        posterior.sample(100, seed=0, n_chains=20, warmup=10)
    assert posterior.diagnostics["beyond_reach"] > 0.5
    with pytest.warns(simfer.ExtrapolationWarning, match="run away on it.  Check"):
        posterior.sample(40, seed=0, n_chains=20, warmup=10)  # 2 per chain: no R̂
    low, high = posterior.reach()
    assert bool((low < 0).all()) and bool((high > 20).all())  # 10⁴ LogNormal draws: e^3.9

    def bulk(x, theta):
        return -2 * ((theta.log() - 0.3) ** 2).sum(-1)

    posterior = posterior_from_likelihood(bulk, prior, torch.zeros(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", simfer.ExtrapolationWarning)
        posterior.sample(400, seed=0, n_chains=20, warmup=50)
    assert posterior.diagnostics["beyond_reach"] == 0.0


def test_posterior_input_errors(gaussian):
    prior = gaussian.prior()
    with pytest.raises(ShapeError, match=r"x_obs must be one observation \[2\]"):
        posterior_from_likelihood(gaussian.log_likelihood, prior, torch.zeros(3), x_shape=(2,))
    posterior = posterior_from_likelihood(gaussian.log_likelihood, prior, torch.zeros(2))
    with pytest.raises(ShapeError, match=r"theta must be \[batch, 2\]"):
        posterior.log_prob(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="method='direct' needs an NPE"):
        posterior.sample(10, method="direct")
    with pytest.raises(ValueError, match="NaN or inf"):
        posterior_from_likelihood(gaussian.log_likelihood, prior, torch.tensor([0.0, math.nan]))

    def zero_likelihood(x, theta):
        return torch.full(theta.shape[:1], -math.inf)

    hopeless = posterior_from_likelihood(zero_likelihood, prior, torch.zeros(2))
    with pytest.raises(SimferError, match="−∞ or NaN at all"):
        hopeless.sample(10)


# -- limits --------------------------------------------------------------------------------------
def test_wilks_intervals_cover_at_the_nominal_rate(gaussian):
    """q(θ0_true) with θ1 profiled is χ²_1 for a Gaussian: the 68.3 % and 95 % regions
    cover θ0_true in a binomial fraction of toys (tolerance: 3.5 binomial SE)."""
    theta = torch.tensor([0.2, -0.1])
    toys, n_events = 300, 10
    q = []
    for toy in range(toys):
        x = gaussian.simulate(theta[None].expand(n_events, -1), seed=1000 + toy)
        posterior = posterior_from_likelihood(
            gaussian.log_likelihood, gaussian.prior(), x, x_shape=(2,)
        )
        scan = likelihood_scan(posterior, theta[:1], parameters=(0,), steps=60, learning_rate=0.1)
        q.append(float(scan.q[0]))
    q = torch.tensor(q)
    for level in (0.6827, 0.95):
        covered = float((q <= stats.chi2.ppf(level, 1)).double().mean())
        assert abs(covered - level) < 3.5 * math.sqrt(level * (1 - level) / toys), (level, covered)


def test_interval_and_asimov_limits_match_the_gaussian_formula():
    model = GaussianLinear(dim=1, prior_var=100.0, noise_var=1.0)
    prior = simfer.BoxUniform([-5.0], [5.0])
    x = model.simulate(torch.full((25, 1), 0.5), seed=2)
    posterior = posterior_from_likelihood(model.log_likelihood, prior, x, x_shape=(1,))
    scan = likelihood_scan(posterior, torch.linspace(-1.5, 2.5, 801)[:, None])
    low, high = scan.interval(0.6827)
    # q(μ) = n (μ − x̄)²: the 1σ interval is x̄ ± 1/√n, up to the grid's interpolation
    assert abs(low - (float(x.mean()) - 0.2)) < 1e-3 and abs(high - (float(x.mean()) + 0.2)) < 1e-3
    assert abs(float(scan.theta_hat[0]) - float(x.mean())) < 1e-3
    # Asimov: q_A(μ) = N (μ − μ_true)² from a large sample at μ_true = 0.5
    pool = model.simulate(torch.full((20_000, 1), 0.5), seed=3)
    at_truth = posterior_from_likelihood(model.log_likelihood, prior, pool, x_shape=(1,))
    grid = torch.tensor([[0.5 - 0.2], [0.5], [0.5 + 0.4]])
    expected = expected_scans(at_truth, grid, n_events=25, n_toys=30, seed=0)
    # the pool mean is off by ≈ 1/√20000 = 0.007, moving q_A by ≤ 2·25·0.4·0.03 ≈ 0.6 at 4 SE
    assert torch.allclose(expected["asimov"].q, torch.tensor([1.0, 0.0, 4.0]), atol=0.6)
    assert expected["toys"].shape == (30, 3)
    # each toy's q at the true μ is χ²_1: P(q ≤ 1) = 0.683, within 3.5 binomial SE of 30 toys
    covered = float((expected["toys"][:, 1] <= 1.0).double().mean())
    assert abs(covered - 0.6827) < 3.5 * math.sqrt(0.6827 * 0.3173 / 30), covered


# -- every estimator type ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def routes(gaussian, data):
    prior = gaussian.prior()
    npe = simfer.PosteriorEstimator(**FAST).fit(data, prior)
    nle = simfer.LikelihoodEstimator("nle", flow="maf", **FAST).fit(data)
    nre = simfer.RatioEstimator("nre", **FAST).fit(data)
    return {"npe": npe, "nle": nle, "nre": nre}


@pytest.mark.parametrize(
    "route,method",
    [("npe", None), ("nle", None), ("nle", "nuts"), ("nre", None), ("nre", "nuts")],
)
def test_every_route_recovers_the_analytic_posterior(routes, gaussian, observation, route, method):
    posterior = routes[route].posterior(gaussian.prior(), observation)
    n = 300 if method == "nuts" else 4000
    options = dict(n_chains=2, warmup=60) if method == "nuts" else {}
    draws = posterior.sample(n, method=method, seed=0, **options)
    exact = gaussian.posterior(observation[None])
    check_moments(draws, exact.mean, exact.variance, MEAN_TOLERANCE, VARIANCE_TOLERANCE)
    assert posterior.normalized == (route == "npe")


def test_npe_with_iid_observations_uses_the_product_of_posteriors(routes, gaussian):
    x = gaussian.simulate(torch.tensor([[0.2, -0.3]]).expand(8, -1), seed=4)
    posterior = routes["npe"].posterior(gaussian.prior(), x)
    assert not posterior.normalized
    draws = posterior.sample(1000, seed=0, n_chains=50, warmup=50)
    assert posterior.diagnostics["method"] == "slice"
    exact = gaussian.posterior(x)
    # eight events multiply eight errors of the single-event fit: 8× the KL budget
    kl = 8 * KL_TOLERANCE
    check_moments(draws, exact.mean, exact.variance, math.sqrt(2 * kl), 2 * math.sqrt(kl))
    batched = posterior.sample_batched(200, x[:3], seed=0)
    assert batched.shape == (3, 200, 2) and posterior.diagnostics["method"] == "direct"


def test_the_examples_in_docs_inference_run(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    run_markdown_examples(Path(__file__).resolve().parent.parent / "docs" / "inference.md")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_posterior_samples_on_the_gpu(routes, gaussian, observation):
    posterior = routes["nle"].posterior(gaussian.prior(), observation).to("cuda")
    draws = posterior.sample(2000, seed=0)
    assert draws.device.type == "cuda" and posterior.diagnostics["n_chains"] == 1000
    exact = gaussian.posterior(observation[None])
    check_moments(draws.cpu(), exact.mean, exact.variance, MEAN_TOLERANCE, VARIANCE_TOLERANCE)
    routes["nle"].to("cpu")
