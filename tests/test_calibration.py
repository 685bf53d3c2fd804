"""SBC, expected coverage, TARP and posterior predictive checks on GaussianLinear.

The exact posterior (the simulator's likelihood through a real `Posterior`, sampled by the
many-chain slice sampler) must pass; a tempered posterior p(θ|x)^4 (same mean, a quarter
of the variance: over-confident) and a shifted one (the likelihood of x − 0.3: biased)
must fail.  Every threshold is a quantile of the test's null distribution at level
ALPHA = 0.01, so at a fixed seed a correct implementation fails with probability ≤ 1 %.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

import simfer
from simfer.diagnostics import (
    CoverageCurve,
    expected_coverage,
    per_observation_log_prob,
    posterior_predictive_check,
    posterior_samples,
    sbc,
    tarp,
)
from simfer.errors import ShapeError
from simfer.inference import posterior_from_likelihood
from simulators import GaussianLinear

ALPHA = 0.01
N_PAIRS = 200  # (θ_i, x_i) pairs from the prior predictive
N_DRAWS = 49  # L posterior draws per pair: ranks in {0, …, 49}
TEMPER = 4.0  # the over-confident posterior is p(θ|x)^TEMPER
SHIFT = 0.3  # the biased posterior uses the likelihood of x − SHIFT (≈ 0.7 posterior sd)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sim():
    return GaussianLinear(dim=2)


@pytest.fixture(scope="module")
def pairs(sim):
    prior = sim.prior()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        theta = prior.sample((N_PAIRS,))
    return theta, sim.simulate(theta, seed=1)


def make_posteriors(sim):
    prior = sim.prior()
    x0 = torch.zeros(2)

    def tempered(x, theta):  # p(θ)^T L^T = p(θ) · exp[T ℓ + (T − 1) log p(θ)]
        return TEMPER * sim.log_likelihood(x, theta) + (TEMPER - 1) * prior.log_prob(theta)

    return {
        "exact": posterior_from_likelihood(sim.log_likelihood, prior, x0, x_shape=(2,)),
        "tempered": posterior_from_likelihood(tempered, prior, x0, x_shape=(2,)),
        "power": posterior_from_likelihood(
            lambda x, theta: TEMPER * sim.log_likelihood(x, theta), prior, x0, x_shape=(2,)
        ),
        "shifted": posterior_from_likelihood(
            lambda x, theta: sim.log_likelihood(x - SHIFT, theta), prior, x0, x_shape=(2,)
        ),
    }


@pytest.fixture(scope="module")
def posteriors(sim):
    return make_posteriors(sim)


@pytest.fixture(scope="module")
def draws(posteriors, pairs):
    _, x = pairs
    return {
        name: posterior_samples(post, x, N_DRAWS, seed=2, warmup=50)
        for name, post in posteriors.items()
        if name in ("exact", "tempered")
    }


# -- the sampler we calibrate against --------------------------------------------------------
def test_exact_draws_match_the_analytic_posterior(sim, pairs, draws):
    """The draws SBC uses are the conjugate posterior's: per-pair means within 4 standard
    errors (pooled z-scores of all pairs: mean 0 ± 4/√(2N), variance 1 ± 4·√(2/(2N)))."""
    _, x = pairs
    samples = draws["exact"]
    exact = [sim.posterior(xi) for xi in x]
    loc = torch.stack([p.mean for p in exact])
    sd = torch.stack([p.stddev for p in exact])
    z = ((samples - loc[:, None]) / sd[:, None]).reshape(-1)
    count = z.numel()
    assert abs(float(z.mean())) < 4 / math.sqrt(N_PAIRS * 2)  # draws of one pair correlate
    assert abs(float(z.var()) - 1) < 4 * math.sqrt(2 / (N_PAIRS * 2))
    assert count == N_PAIRS * N_DRAWS * 2


def test_per_observation_log_prob_is_the_posterior_up_to_a_constant(sim, posteriors, pairs):
    _, x = pairs
    theta = torch.randn(5, 7, 2, generator=torch.Generator().manual_seed(3)) * 0.3
    values = per_observation_log_prob(posteriors["exact"], theta, x[:5])
    truth = torch.stack([sim.posterior(x[i]).log_prob(theta[i]) for i in range(5)])
    difference = values - truth  # log evidence per observation
    assert torch.allclose(difference, difference[:, :1].expand_as(difference), atol=1e-4)


# -- SBC -------------------------------------------------------------------------------------
def test_sbc_passes_for_the_exact_posterior(posteriors, pairs, draws):
    theta, x = pairs
    result = sbc(posteriors["exact"], theta, x, samples=draws["exact"], log_prob=True)
    print(result)
    assert result.names == ("theta[0]", "theta[1]", "log_prob")
    assert result.ranks.shape == (N_PAIRS, 3)
    assert int(result.ranks.min()) >= 0 and int(result.ranks.max()) <= N_DRAWS
    assert result.bins == 20
    assert result.histogram().sum(1).tolist() == [N_PAIRS] * 3
    assert math.isclose(float(result.bin_probabilities().sum()), 1.0)
    assert result.passed(ALPHA)
    ks = sbc(None, theta, samples=draws["exact"], test="ks", seed=4)
    print(ks)
    assert ks.passed(ALPHA)


def test_sbc_fails_for_an_overconfident_posterior(posteriors, pairs, draws):
    theta, x = pairs
    result = sbc(posteriors["tempered"], theta, x, samples=draws["tempered"], log_prob=True)
    print(result)
    assert not result.passed(ALPHA)
    # over-confidence piles the ranks of θ_i up at both ends: the outer bins are full
    histogram = result.histogram()[:2].double()
    expected = N_PAIRS * result.bin_probabilities()
    assert bool((histogram[:, 0] > expected[0]).all() and (histogram[:, -1] > expected[-1]).all())


def test_sbc_fails_for_a_shifted_posterior(posteriors, pairs):
    theta, x = pairs
    result = sbc(posteriors["shifted"], theta, x, n_samples=N_DRAWS, seed=2, warmup=50)
    print(result)
    assert not result.passed(ALPHA)
    # x − 0.3 moves the posterior down: θ_i ranks high
    assert bool((result.ranks.double().mean(0) > N_DRAWS / 2).all())


def test_sbc_test_functions_and_errors(pairs, draws):
    theta, _ = pairs
    result = sbc(None, theta, samples=draws["exact"], test_functions={"sum": lambda t: t.sum(-1)})
    assert result.names[-1] == "sum" and result.ranks.shape == (N_PAIRS, 3)
    with pytest.raises(ShapeError, match="samples"):
        sbc(None, theta[:10], samples=draws["exact"])
    with pytest.raises(ValueError, match="posterior"):
        sbc(None, theta)
    with pytest.raises(ValueError, match="bins"):
        sbc(None, theta, samples=draws["exact"], bins=N_DRAWS + 2)


# -- expected coverage -----------------------------------------------------------------------
def test_expected_coverage_of_the_exact_posterior_is_the_diagonal(posteriors, pairs, draws):
    theta, x = pairs
    curve = expected_coverage(posteriors["exact"], theta, x, samples=draws["exact"])
    print(f"exact: max |coverage − c| = {curve.max_error():.3f}, DKW ε = {curve.dkw_tolerance()}")
    assert curve.levels.shape == curve.coverage.shape == (101,)
    assert float(curve.coverage[0]) == 0.0 and float(curve.coverage[-1]) == 1.0
    assert curve.max_error() <= curve.dkw_tolerance(ALPHA)
    low, high = curve.band(1 - ALPHA / 3)  # three levels at once, Bonferroni
    for level in (50, 68, 95):
        assert float(low[level]) <= float(curve.coverage[level]) <= float(high[level])


def test_expected_coverage_of_an_overconfident_posterior_is_below(posteriors, pairs, draws):
    theta, x = pairs
    curve = expected_coverage(posteriors["tempered"], theta, x, samples=draws["tempered"])
    print(
        f"tempered: coverage at 0.68 / 0.95 = {curve.coverage[68]:.3f} / {curve.coverage[95]:.3f}"
    )
    assert curve.max_error() > curve.dkw_tolerance(ALPHA)
    low, _ = curve.band(1 - ALPHA / 2)
    assert float(curve.coverage[68]) < float(low[68])
    assert float(curve.coverage[95]) < float(low[95])


def test_expected_coverage_with_an_explicit_density(sim, posteriors, pairs, draws):
    """Ranking by the analytic posterior density gives the same credibilities."""
    theta, x = pairs

    def analytic(t, xs):
        var = 1 / (1 / sim.prior_var + 1 / sim.noise_var)
        loc = var * xs / sim.noise_var
        return -0.5 * ((t - loc) ** 2).sum(-1) / var

    ours = expected_coverage(posteriors["exact"], theta, x, samples=draws["exact"])
    theirs = expected_coverage(
        posteriors["exact"], theta, x, samples=draws["exact"], log_prob=analytic
    )
    assert torch.allclose(ours.credibility, theirs.credibility)


# -- TARP ------------------------------------------------------------------------------------
def test_tarp_of_the_exact_posterior(pairs, draws):
    theta, _ = pairs
    result = tarp(None, theta, samples=draws["exact"], seed=5)
    print(f"exact: ATC = {result.atc:.4f} ± {result.atc_tolerance(ALPHA):.4f}")
    assert isinstance(result, CoverageCurve)
    assert abs(result.atc) <= result.atc_tolerance(ALPHA)
    assert result.ks_p_value() >= ALPHA


def test_tarp_of_an_overconfident_posterior(pairs, draws):
    theta, _ = pairs
    result = tarp(None, theta, samples=draws["tempered"], seed=5)
    print(f"tempered: ATC = {result.atc:.4f}, KS p = {result.ks_p_value():.2g}")
    assert result.atc < -result.atc_tolerance(ALPHA)
    assert result.ks_p_value() < ALPHA


def test_a_biased_overconfident_posterior_fails_sbc_and_the_tarp_ks_test(posteriors, pairs):
    """The likelihood to the power 4 is over-confident and pulled towards x: its TARP curve
    crosses the diagonal, so the signed ATC may stay small (printed), but the KS test of
    the whole curve and SBC reject it."""
    theta, x = pairs
    posterior = posteriors["power"]
    samples = posterior_samples(posterior, x, N_DRAWS, seed=2, warmup=50)
    balls = tarp(None, theta, samples=samples, seed=5)
    result = sbc(posterior, theta, x, samples=samples, log_prob=True)
    print(f"power: ATC = {balls.atc:.4f}, KS p = {balls.ks_p_value():.2g}; {result}")
    assert balls.ks_p_value() < ALPHA
    assert not result.passed(ALPHA)


# -- posterior predictive checks -------------------------------------------------------------
def test_ppc_of_data_from_the_model(sim, pairs):
    """p_T ≤ a has probability ≤ 2a under the model (Meng 1994): with a = 0.001 on both
    sides of 2 statistics a correct check fails here with probability ≤ 0.8 %."""
    _, x = pairs
    posterior = posterior_from_likelihood(sim.log_likelihood, sim.prior(), x[0])
    check = posterior_predictive_check(posterior, sim, n_samples=4000, seed=6)
    print(check)
    assert check.names == ("x[0]", "x[1]") and check.replicated.shape == (4000, 2)
    assert bool(((check.p_values > 0.001) & (check.p_values < 0.999)).all())
    assert check.extreme(ALPHA) == ()


def test_ppc_flags_data_far_from_the_model(sim):
    far = torch.full((2,), 5.0)  # ≈ 11 prior-predictive standard deviations
    posterior = posterior_from_likelihood(sim.log_likelihood, sim.prior(), far)
    check = posterior_predictive_check(posterior, sim, n_samples=2000, seed=6)
    print(check)
    assert check.p_values.tolist() == [0.0, 0.0]
    assert check.extreme(ALPHA) == ("x[0]", "x[1]")


def test_ppc_with_iid_events_and_a_custom_statistic(sim):
    events = sim.simulate(torch.full((30, 2), 0.2), seed=8)
    posterior = posterior_from_likelihood(sim.log_likelihood, sim.prior(), events, x_shape=(2,))
    spread = {"spread": lambda x: x[..., 0].std(1)}  # σ = √0.1 ≈ 0.32 in the model
    check = posterior_predictive_check(posterior, sim, statistics=spread, n_samples=500)
    assert check.replicated.shape == (500, 1)
    assert 0.001 < float(check.p_values[0]) < 0.999
    wide = events * 4
    assert (
        float(
            posterior_predictive_check(
                posterior, sim, wide, statistics=spread, n_samples=300
            ).p_values
        )
        == 0
    )


# -- a trained surrogate ---------------------------------------------------------------------
@pytest.mark.slow
def test_sbc_on_a_trained_npe(sim, pairs):
    """NPE on 2000 simulations: direct draws pass SBC and its HPD coverage is the diagonal
    (within the DKW band), through the same code as the exact posterior."""
    data = simfer.simulate(sim, sim.prior(), 2000, seed=9, executor="serial", progress=False)
    npe = simfer.PosteriorEstimator(progress=False, patience=10, seed=0).fit(data, sim.prior())
    theta, x = pairs
    posterior = npe.posterior(sim.prior(), x[0])
    samples = posterior_samples(posterior, x, N_DRAWS, seed=10)
    result = sbc(posterior, theta, x, samples=samples, log_prob=True)
    curve = expected_coverage(posterior, theta, x, samples=samples)
    print(result, curve.max_error())
    assert result.passed(ALPHA)
    assert curve.max_error() <= curve.dkw_tolerance(ALPHA)


def test_the_tests_reject_a_calibrated_posterior_at_their_nominal_rate():
    """200 exactly calibrated problems (θ_i and its L draws iid N(0, 1)): each test rejects
    at level 0.05 in Binomial(200, 0.05) of them, inside [2, 21] with probability 0.999
    (for the DKW bound, which is conservative, only the upper end applies)."""
    generator = torch.Generator().manual_seed(11)
    level, rejections = 0.05, {"chi2": 0, "ks": 0, "dkw": 0, "atc": 0, "tarp ks": 0}
    for seed in range(200):
        draws = torch.randn(N_PAIRS, N_DRAWS + 1, 2, generator=generator)
        theta, samples = draws[:, 0], draws[:, 1:]
        rejections["chi2"] += not sbc(None, theta, samples=samples, seed=seed).passed(level)
        ks = sbc(None, theta, samples=samples, seed=seed, test="ks")
        rejections["ks"] += not ks.passed(level)
        balls = tarp(None, theta, samples=samples, seed=seed)
        rejections["dkw"] += balls.max_error() > balls.dkw_tolerance(level)
        rejections["atc"] += abs(balls.atc) > balls.atc_tolerance(level)
        rejections["tarp ks"] += balls.ks_p_value() < level
    print(rejections)
    low, high = stats.binom.interval(0.999, 200, level)
    assert rejections["dkw"] <= high
    for name in ("chi2", "ks", "atc", "tarp ks"):
        assert low <= rejections[name] <= high, name


def test_null_distributions_used_above():
    """The constants behind the thresholds: χ² bins and the ATC variance 5/192."""
    assert stats.chi2.sf(0, df=19) == 1.0
    grid = torch.linspace(0.5, 1, 401, dtype=torch.float64)
    s, t = torch.meshgrid(grid, grid, indexing="ij")
    kernel = torch.minimum(s, t) - s * t
    integral = torch.trapezoid(torch.trapezoid(kernel, grid), grid)
    assert math.isclose(float(integral), 5 / 192, rel_tol=1e-4)
