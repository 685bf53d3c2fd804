"""Counts and skewed x in `LikelihoodEstimator`: uniform dequantisation, the spline window.

A density on integers is unbounded, so NLE trains on y = x + u, u ~ U[0, 1), on the columns
whose training values are all integers, reads the likelihood of an integer x at its cell's
centre, log P(x|θ) ≈ log q(x + ½|θ), and draws ⌊y⌋.  Counts: x ~ Poisson(θ), θ ~ U(1, 8).
``tail_bound="auto"`` widens the splines' window ±B to hold every standardised training x."""

import math

import pytest
import torch

import simfer
from simfer.errors import SimferError

PRIOR = torch.distributions.Uniform(torch.tensor([1.0]), torch.tensor([8.0]))
FAST = dict(progress=False, hidden=32, n_transforms=2, max_epochs=80, batch_size=128, seed=0)
N = 4000


def counts(theta, generator):
    """x ~ Poisson(θ): ``[batch, 1]`` integer counts (as floats)."""
    return torch.poisson(theta, generator=generator)


def counts_and_noise(theta, generator):
    """x = (Poisson(θ), θ + N(0, 1)): an integer column and a continuous one."""
    noise = torch.randn(theta.shape, generator=generator)
    return torch.cat([torch.poisson(theta, generator=generator), theta + noise], 1)


def gaussian(theta, generator):
    """x ~ N(θ, 1): continuous."""
    return theta + torch.randn(theta.shape, generator=generator)


def simulate(fn, x_dim, n=N, path=None):
    simulator = simfer.Simulator.from_function(fn, theta_dim=1, x_shape=(x_dim,))
    return simfer.simulate(
        simulator, PRIOR, n, seed=0, executor="serial", progress=False, path=path, chunk_size=500
    )


def poisson_pmf(theta: float, k: torch.Tensor) -> torch.Tensor:
    return torch.exp(k * math.log(theta) - theta - torch.lgamma(k + 1))


@pytest.fixture(scope="module")
def data():
    return simulate(counts, 1)


@pytest.fixture(scope="module")
def nle(data):
    return simfer.LikelihoodEstimator(**FAST).fit(data, PRIOR)


@pytest.mark.parametrize("theta", [2.0, 5.0])
def test_the_learnt_pmf_is_the_poisson_pmf(nle, theta):
    """exp log q(k + ½|θ) over k = 0…40 sums to one and is within a total-variation
    distance of 0.1 of Poisson(θ).  The rows within ±0.5 of θ alone (~N/7 = 570) would
    give an empirical pmf with an expected TV error of ½ Σ_k √(2 p_k(1 − p_k)/(π n)) ≈
    0.03–0.04 here; the flow pools all rows, and 0.1 leaves room for its bias."""
    assert nle.dims.dequantized == (0,)
    k = torch.arange(41.0)[:, None]
    with torch.no_grad():
        learnt = nle.log_prob(x=k, theta=[theta]).exp()
    exact = poisson_pmf(theta, k[:, 0])
    assert abs(float(learnt.sum()) - 1) < 0.05
    assert 0.5 * float((learnt - exact).abs().sum()) < 0.1


def test_draws_are_integers_with_the_poisson_mean(nle):
    """⌊y⌋ of draws y ~ q(y|θ): integers, with mean θ = 5 to within 0.2 (four standard
    errors √(5/4000) = 0.035 of the draws, plus the fit's bias).  A flow on the real line
    cannot end its support at 0: under 1 % of the draws may fall below it."""
    draws = nle.sample(4000, theta=[5.0], seed=0)
    assert draws.shape == (4000, 1)
    assert torch.equal(draws, draws.floor()) and float((draws < 0).float().mean()) < 0.01
    assert abs(float(draws.mean()) - 5.0) < 0.2


def test_without_dequantization_the_density_spikes_on_the_integers(data, nle):
    """Modelled as continuous, the held-out −log q falls below the entropy of the counts
    (E_θ H(Poisson(θ)) ≈ 2.1 nats), which no probability mass function can: the density
    is stacking spikes on the integers.  Dequantised, the held-out loss stays above it."""
    theta = torch.linspace(1, 8, 701)
    k = torch.arange(60.0)
    pmf = torch.stack([poisson_pmf(float(t), k) for t in theta])
    entropy = float(-torch.special.xlogy(pmf, pmf).sum(1).mean())
    continuous = simfer.LikelihoodEstimator(dequantize=False, **FAST).fit(data)
    assert continuous.dims.dequantized is None
    assert continuous.history.best_validation_loss[0] < entropy - 0.5
    assert nle.history.best_validation_loss[0] > entropy - 0.1


def test_only_integer_columns_are_dequantized_and_the_choice_is_saved(tmp_path):
    data = simulate(counts_and_noise, 2, n=600)
    nle = simfer.LikelihoodEstimator(**{**FAST, "max_epochs": 3}).fit(data)
    assert nle.dims.dequantized == (0,)
    x = torch.tensor([[3.0, 2.5], [3.2, 2.5], [2.8, 2.5]])
    with torch.no_grad():
        log_q = nle.log_prob(x=x, theta=[3.0])
    assert torch.equal(log_q, log_q[:1].expand(3))  # the count column is rounded first
    path = tmp_path / "nle.pt"
    nle.save(path)
    loaded = simfer.load(path)
    assert loaded.dims.dequantized == (0,)
    with torch.no_grad():
        assert torch.equal(loaded.log_prob(x=x, theta=[3.0]), log_q)


def test_a_streamed_fit_dequantizes_as_the_fit_in_memory(tmp_path):
    path = tmp_path / "counts.h5"
    simulate(counts, 1, n=1000, path=path)
    settings = {**FAST, "max_epochs": 3}
    streamed = simfer.LikelihoodEstimator(max_memory=0, **settings).fit(path)
    in_memory = simfer.LikelihoodEstimator(**settings).fit(simfer.load_simulations(path))
    assert streamed.dims.dequantized == in_memory.dims.dequantized == (0,)
    assert streamed.dims.tail_bound == in_memory.dims.tail_bound
    # both standardise y = x + u by its own moments: μ + ½ and √(σ² + 1/12)
    x = simfer.load_simulations(path).x[:, 0].double()
    expected = (x.mean() + 0.5, (x.var() + 1 / 12).sqrt())
    for fit in (streamed, in_memory):
        standardize = fit.network.flow.input_standardize
        assert float(standardize.mean) == pytest.approx(float(expected[0]), rel=1e-5)
        assert float(standardize.std) == pytest.approx(float(expected[1]), rel=1e-5)


def test_dequantize_settings_are_checked():
    with pytest.raises(ValueError, match="dequantize must be"):
        simfer.LikelihoodEstimator(dequantize="yes")
    continuous = simulate(gaussian, 1, n=300)
    with pytest.raises(SimferError, match="no column of the training x holds only integers"):
        simfer.LikelihoodEstimator(dequantize=True, **FAST).fit(continuous)
    auto = simfer.LikelihoodEstimator(**{**FAST, "max_epochs": 1}).fit(continuous)
    assert auto.dims.dequantized is None


def lognormal(theta, generator):
    """x = exp(θ + N(0, 1)): right-skewed, tens of standard units out in its tail."""
    return torch.exp(theta + torch.randn(theta.shape, generator=generator))


def test_the_auto_window_holds_every_standardised_training_x(tmp_path):
    data = simulate(lognormal, 1, n=2000)
    settings = {**FAST, "max_epochs": 2}
    nle = simfer.LikelihoodEstimator(**settings).fit(data)
    x = data.x[:, 0]
    z = float(((x - x.mean()) / x.std()).abs().max())
    assert z > 10  # the lognormal's tail: far outside the default window of ±4
    assert nle.dims.tail_bound == math.ceil(z)
    assert all(t.tail_bound == math.ceil(z) for t in splines(nle))
    path = tmp_path / "nle.pt"
    nle.save(path)
    loaded = simfer.load(path)
    assert all(t.tail_bound == math.ceil(z) for t in splines(loaded))
    theta, x = torch.tensor([[2.0], [5.0]]), torch.tensor([[3.0], [400.0]])
    with torch.no_grad():
        assert torch.equal(loaded.log_prob(x=x, theta=theta), nle.log_prob(x=x, theta=theta))
    fixed = simfer.LikelihoodEstimator(tail_bound=4.0, **settings).fit(data)
    assert fixed.dims.tail_bound is None and all(t.tail_bound == 4.0 for t in splines(fixed))
    # Gaussian-like x keep the window of 4
    assert (
        simfer.LikelihoodEstimator(**settings).fit(simulate(gaussian, 1, n=300)).dims.tail_bound
        == 4.0
    )
    with pytest.raises(ValueError, match="tail_bound must be"):
        simfer.LikelihoodEstimator(tail_bound=-1.0)


def splines(nle):
    """The spline transforms of an NLE's flow (nflows' piecewise rational-quadratic ones)."""
    return [m for m in nle.network.modules() if hasattr(m, "tail_bound") and hasattr(m, "num_bins")]
