"""`simfer.sequential`: multi-round inference for one observation (TSNPE, SNLE, SNRE).

The accuracy tests compare R rounds against one round at the same total number of
simulations, on GaussianLinear (analytic posterior) in the default run and on TwoMoons
(slice MCMC on the exact likelihood) in the slow run."""

from __future__ import annotations

import math

import pytest
import torch

import simfer
from simfer.diagnostics import c2st
from simfer.errors import ShapeError, SimferError
from simfer.inference import Posterior, posterior_from_likelihood
from simfer.sequential import SequentialResult, TruncatedPrior, hpr_threshold
from simulators import GaussianLinear, TwoMoons

SERIAL = {"executor": "serial"}
# small batches: a few hundred simulations still give hundreds of gradient steps per fit
TRAINING = dict(max_epochs=200, batch_size=50, patience=20, progress=False)
TINY = dict(max_epochs=3, batch_size=50, progress=False)
SHORT = dict(max_epochs=30, batch_size=50, progress=False)


def make(kind: str, **training) -> simfer.estimators.Estimator:
    """An estimator of each supported family; MAF flows for GaussianLinear, whose
    posterior and likelihood are Gaussian (an affine flow represents them exactly)."""
    if kind == "npe":
        return simfer.PosteriorEstimator("maf", **training)
    if kind == "npe-nsf":
        return simfer.PosteriorEstimator(**training)
    if kind == "nle":
        return simfer.LikelihoodEstimator("nle", "maf", **training)
    if kind == "nle-nsf":
        return simfer.LikelihoodEstimator(**training)
    if kind == "alices":
        return simfer.RatioEstimator("alices", **training)
    return simfer.RatioEstimator("nre", **training)


def gaussian_kl(draws: torch.Tensor, reference: torch.distributions.MultivariateNormal) -> float:
    """KL(N(m̂, Ĉ) ‖ reference) of the Gaussian with the draws' mean and covariance."""
    draws = draws.double()
    fitted = torch.distributions.MultivariateNormal(draws.mean(0), torch.cov(draws.T))
    exact = torch.distributions.MultivariateNormal(
        reference.mean.double(), reference.covariance_matrix.double()
    )
    return float(torch.distributions.kl_divergence(fitted, exact))


@pytest.fixture(scope="module")
def narrow():
    """GaussianLinear in 2-d with a posterior ~30 times narrower than the prior per
    dimension (σ_post ≈ 0.032, σ_prior = 1): most prior simulations are wasted on it."""
    simulator = GaussianLinear(dim=2, prior_var=1.0, noise_var=1e-3)
    x_obs = simulator.simulate(torch.tensor([[0.7, -0.4]]), seed=1)[0]
    return simulator, simulator.prior(), x_obs, simulator.posterior(x_obs)


# -- the truncated prior -----------------------------------------------------------------------
def test_hpr_threshold_is_the_epsilon_quantile_of_the_log_density():
    # q = N(0, I₂): log q = −log 2π − r²/2 and r² ~ χ²₂, P(r² > R²) = exp(−R²/2), so the
    # 1 − ε HPR is r² ≤ −2 log ε and its threshold τ* = −log 2π + log ε exactly.
    epsilon, n = 0.01, 100_000
    q = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
    with simfer.seeding.seeded(0):
        draws = q.sample((n,))
    tau = hpr_threshold(q.log_prob(draws), epsilon)
    exact = -math.log(2 * math.pi) + math.log(epsilon)
    # the estimated excluded mass has SE √(ε(1−ε)/N) ≈ 3.1e-4, i.e. 0.031 in τ = … + log(mass):
    # 4 standard errors
    assert abs(tau - exact) < 4 * math.sqrt(epsilon * (1 - epsilon) / n) / epsilon
    # at most ⌊εN⌋ of the draws lie below τ, and N < 1/ε gives the smallest value
    values = q.log_prob(draws)
    assert int((values < tau).sum()) <= int(epsilon * n)
    assert hpr_threshold(values[:50], 1e-4) == float(values[:50].min())
    with pytest.raises(ValueError, match="epsilon"):
        hpr_threshold(values, 0.0)


def test_truncated_prior_is_the_prior_restricted_to_the_region_and_renormalised():
    # q = N(μ, s² I) inside the box U(−1, 1)²: the region {log q ≥ τ} is the disc of radius
    # R around μ with R² = 2 s² (−log 2πs² − τ); under the uniform prior its mass is πR²/4
    # and the truncated prior is uniform on the disc: E|θ − μ|² = R²/2.
    prior = simfer.BoxUniform([-1.0, -1.0], [1.0, 1.0])
    mu, s = torch.tensor([0.2, -0.1]), 0.15
    q = torch.distributions.MultivariateNormal(mu, s**2 * torch.eye(2))
    radius = 0.5
    tau = -math.log(2 * math.pi * s**2) - radius**2 / (2 * s**2)
    with simfer.seeding.seeded(0):
        truncated = TruncatedPrior(prior, q.log_prob, tau, n_pilot=200_000)
        draws = truncated.sample((20_000,))
    mass = math.pi * radius**2 / 4
    se = math.sqrt(mass * (1 - mass) / truncated.n_proposed)
    assert abs(truncated.prior_mass - mass) < 4 * se
    r2 = ((draws - mu) ** 2).sum(1)
    assert draws.shape == (20_000, 2) and bool((r2 <= radius**2 + 1e-6).all())
    # uniform on the disc: r²/R² ~ U(0, 1), mean ½ with SE √(1/12/n)
    assert abs(float(r2.mean()) / radius**2 - 0.5) < 4 * math.sqrt(1 / 12 / 20_000)
    assert abs(float(draws.mean(0)[0] - mu[0])) < 4 * radius / 2 / math.sqrt(20_000)
    log_p = truncated.log_prob(torch.stack([mu, torch.tensor([0.9, 0.9])]))
    assert math.isclose(
        float(log_p[0]), math.log(0.25) - math.log(truncated.prior_mass), rel_tol=1e-5
    )
    assert log_p[1] == -math.inf


def test_truncated_prior_raises_when_rejection_cannot_fill_the_draws():
    prior = simfer.BoxUniform([-1.0, -1.0], [1.0, 1.0])
    far = TruncatedPrior(prior, lambda theta: -(theta**2).sum(1), 1.0, n_pilot=100)
    with pytest.raises(SimferError, match="prior mass"):
        far.sample((10,))


# -- the loop's mechanics ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["npe", "nle", "nre", "alices"])
def test_rounds_build_proposals_from_the_previous_posterior_and_refit_on_all_data(kind, narrow):
    simulator, prior, x_obs, _ = narrow
    template = make(kind, seed=0, **SHORT)
    options = dict(SERIAL)
    if kind == "alices":
        options.update(theta_ref=[0.0, 0.0], gold=True)
    result = simfer.sequential(
        simulator,
        prior,
        x_obs,
        template,
        rounds=2,
        n_per_round=[300, 200],
        hpr_draws=2000,
        seed=3,
        simulate_options=options,
        sample_options={"warmup": 20},
        progress=False,
    )
    assert isinstance(result, SequentialResult) and isinstance(result.posterior, Posterior)
    assert template.network is None  # the template is never fitted itself
    assert len(result.estimators) == len(result.data) == len(result.proposals) == 2
    assert result.estimators[0] is not result.estimators[1]
    assert [len(d) for d in result.data] == [300, 200]
    assert [h.n_total for h in result.history] == [300, 500]
    assert result.estimator.dims.n_train == 500  # the last fit saw both rounds
    assert len(result.simulations) == 500
    first, second = result.history
    assert first.proposal == "prior" and first.prior_mass == 1.0 and result.proposals[0] is prior
    theta = result.data[1].theta
    if kind == "npe":  # TSNPE: the prior truncated to the HPR of round 1's estimate
        proposal = result.proposals[1]
        assert second.proposal == "truncated prior" and isinstance(proposal, TruncatedPrior)
        assert 0 < second.prior_mass < 1 and second.threshold == proposal.threshold
        assert bool(proposal.contains(theta).all())
    else:  # SNLE/SNRE: MCMC draws of round 1's posterior
        assert second.proposal == "posterior" and second.prior_mass is None
        assert isinstance(result.proposals[1], Posterior)
        assert "r_hat_max" in second.sampler
    # the second round's θ concentrate where round 1's posterior put them: far tighter than
    # the prior's unit spread (the posterior is σ ≈ 0.03 wide; 30 epochs on 300 simulations
    # leave it wider, but well inside the prior)
    assert float(theta.std(0).max()) < 0.5
    assert "| 2 |" in result.summary()


def test_a_seed_makes_the_rounds_reproducible(narrow):
    simulator, prior, x_obs, _ = narrow

    def run():
        return simfer.sequential(
            simulator,
            prior,
            x_obs,
            make("npe", seed=0, **TINY),
            rounds=2,
            n_per_round=200,
            hpr_draws=2000,
            seed=11,
            simulate_options=SERIAL,
            progress=False,
        )

    a, b = run(), run()
    assert a.seed == b.seed == 11
    assert torch.equal(a.data[1].theta, b.data[1].theta)
    assert torch.equal(a.data[1].x, b.data[1].x)


# -- accuracy at an equal budget ---------------------------------------------------------------
# The KL divergences (one round → three rounds) over training and simulation seeds 0–3,
# measured with exactly this set-up: NPE 0.045→0.014, 0.041→0.012, 0.234→0.037, 0.086→0.033;
# NRE 1.97→0.007, 2.98→0.130, 1.62→0.012, 2.64→0.148; NLE 0.044→0.104, 0.055→0.098,
# 0.082→0.024, 0.060→0.030.
@pytest.mark.parametrize(
    "kind, tolerance",
    [
        ("npe", 0.02),  # the prior's draws rarely land near x_o: rounds help every time
        ("nre", 0.02),  # one round is off by nats: rounds help every time
        # NLE learns this model's global shift x = θ + ε as well from prior draws as from
        # posterior draws, so rounds gain nothing here and the two KLs differ by training
        # noise alone (standard deviation ≈ 0.035 per run, ≈ 0.05 for the difference)
        ("nle", 0.1),
    ],
)
def test_three_rounds_are_at_least_as_close_as_one_round_on_gaussian_linear(
    kind, tolerance, narrow
):
    """3 × 500 simulations against 1 × 1500, distance to the analytic posterior measured by
    the KL divergence of the draws' Gaussian fit (mean and covariance) from it.

    Tolerance: 4000 draws (slice draws for NLE/NRE: ESS ≳ 1000) fit a 2-d Gaussian whose KL
    from the truth is ≈ (d + d(d+1)/2) / (2·ESS) ≤ 0.003 from Monte-Carlo noise alone; 0.02
    is that noise several times over, so NPE and NRE are asked for "not worse" rather
    than "better by a margin" (they are better by far, above).  NLE's 0.1 is two standard
    deviations of its training noise.  Three rounds must also be close in absolute terms:
    KL < 0.2 (e.g. a mean off by 0.6 σ)."""
    simulator, prior, x_obs, reference = narrow
    distance = {}
    for rounds in (1, 3):
        result = simfer.sequential(
            simulator,
            prior,
            x_obs,
            make(kind, seed=0, **TRAINING),
            rounds=rounds,
            n_per_round=1500 // rounds,
            hpr_draws=10_000,
            seed=0,
            simulate_options=SERIAL,
            sample_options={"warmup": 50},
            progress=False,
        )
        draws = result.posterior.sample(4000, seed=1, warmup=50)  # NPE: direct, no warm-up
        distance[rounds] = gaussian_kl(draws, reference)
    assert distance[3] <= distance[1] + tolerance, distance
    assert distance[3] < 0.2, distance


# -- clear errors ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    simulator = GaussianLinear(dim=2)
    return simulator, simulator.prior(), torch.zeros(2)


def _call(small, estimator=None, **kwargs):
    simulator, prior, x_obs = small
    arguments = dict(rounds=2, n_per_round=100, progress=False, simulate_options=SERIAL)
    arguments.update(kwargs)
    x_obs = arguments.pop("x_obs", x_obs)
    estimator = make("nle", **TINY) if estimator is None else estimator
    return simfer.sequential(simulator, prior, x_obs, estimator, **arguments)


@pytest.mark.parametrize(
    "x_obs", [torch.zeros(3), torch.zeros(5, 2), torch.zeros(2, 1), torch.zeros(())]
)
def test_x_obs_of_the_wrong_shape_is_refused_before_simulating(small, x_obs):
    with pytest.raises(ShapeError, match=r"one observation of shape \[2\]"):
        _call(small, x_obs=x_obs)


def test_x_obs_with_nan_is_refused(small):
    with pytest.raises(ValueError, match="NaN"):
        _call(small, x_obs=torch.tensor([0.0, math.nan]))


@pytest.mark.parametrize("rounds", [0, -1, 1.5, True, "3"])
def test_rounds_must_be_a_positive_integer(small, rounds):
    with pytest.raises(ValueError, match="rounds must be an integer"):
        _call(small, rounds=rounds)


def test_n_per_round_must_fit_the_rounds(small):
    with pytest.raises(ValueError, match="one per round"):
        _call(small, rounds=3, n_per_round=[100, 100])
    with pytest.raises(ValueError, match="integer ≥ 2"):
        _call(small, n_per_round=[100, 0])
    with pytest.raises(TypeError, match="n_per_round"):
        _call(small, n_per_round=100.0)


@pytest.mark.parametrize(
    "estimator, message",
    [
        (simfer.ScoreEstimator(progress=False), "does not support ScoreEstimator"),
        (simfer.PosteriorEstimator, "instance"),
        (object(), "got object"),
    ],
)
def test_an_unsupported_estimator_is_refused(small, estimator, message):
    with pytest.raises(TypeError, match=message):
        _call(small, estimator=estimator)


def test_npe_needs_truncation_and_truncation_needs_a_valid_epsilon(small):
    with pytest.raises(ValueError, match="NPE needs truncated proposals"):
        _call(small, estimator=make("npe", **TINY), truncation=None)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        _call(small, truncation=2.0)
    with pytest.raises(ValueError, match="'auto'"):
        _call(small, truncation="hpr")


def test_simulate_options_are_checked_against_the_estimator(small):
    with pytest.raises(ValueError, match="may not set"):
        _call(small, simulate_options={"seed": 1})
    with pytest.raises(SimferError, match="theta_ref"):
        _call(small, estimator=make("alices", **TINY))
    with pytest.raises(SimferError, match="gold"):
        _call(small, estimator=make("alices", **TINY), simulate_options={"theta_ref": [0, 0]})
    with pytest.raises(SimferError, match="SCANDAL"):
        _call(small, estimator=simfer.LikelihoodEstimator("scandal", **TINY))
    with pytest.raises(ValueError, match="one design"):
        _call(small, simulate_options={"design": torch.distributions.Uniform(0.0, 1.0)})


# -- TwoMoons against an exact-likelihood reference (slow) -------------------------------------
@pytest.fixture(scope="module")
def two_moons():
    """TwoMoons at one observation, and 1000 reference draws: simfer's slice sampler on the
    exact likelihood, one draw from each of 1000 chains after 100 warm-up sweeps (against
    sbibm's exact inversion sampler this gives C2ST 0.50)."""
    simulator = TwoMoons()
    prior = simulator.prior()
    x_obs = simulator.simulate(torch.tensor([[0.3, -0.2]]), seed=4)[0]
    posterior = posterior_from_likelihood(simulator.log_likelihood, prior, x_obs)
    reference = posterior.sample(1000, seed=1, n_chains=1000, warmup=100)
    return simulator, prior, x_obs, reference


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["npe-nsf", "nle-nsf", "nre"])
def test_three_rounds_are_at_least_as_close_as_one_round_on_two_moons(kind, two_moons):
    """3 × 1000 simulations against 1 × 3000, C2ST against the exact-likelihood reference.

    Tolerance: C2ST with 1000 draws a side has a standard deviation of about
    √(¼ / 2000) ≈ 0.011 (the accuracy of held-out fair coins), so the difference of two
    C2STs has ≈ 0.016; "at least as close" allows 0.05, three of those.  Measured with this
    set-up (one round → three): NPE 0.662 → 0.548, NLE 0.543 → 0.523, NRE 0.835 → 0.587."""
    simulator, prior, x_obs, reference = two_moons
    score = {}
    for rounds in (1, 3):
        result = simfer.sequential(
            simulator,
            prior,
            x_obs,
            make(kind, seed=0, **TRAINING),
            rounds=rounds,
            n_per_round=3000 // rounds,
            seed=0,
            simulate_options=SERIAL,
            sample_options={"warmup": 50},
            progress=False,
        )
        score[rounds] = c2st(reference, result.posterior.sample(1000, seed=3), seed=0)
    assert score[3] <= score[1] + 0.05, score
