"""The sbibm benchmark simulators (simulators/benchmarks.py).

Every statistical check is seeded (so deterministic) and compares a Monte-Carlo
estimate to its exact value within K standard errors, the SE derived from the
maths (or, where noted, estimated from the same samples); K = 5 means a correct
simulator fails a given check with probability below 10⁻⁶ over seeds.  Densities
are checked against independent implementations (scipy, numpy conjugate
formulas) and tied to the samplers by quadrature of exp(log_likelihood) over
boxes, which needs no kernel or bandwidth.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.integrate import solve_ivp

from simfer import ShapeError, SupportError
from simulators.benchmarks import (
    SIR,
    SLCP,
    GaussianLinear,
    GaussianMixture,
    LotkaVolterra,
    TwoMoons,
)

K = 5.0
ALL = [GaussianLinear, TwoMoons, SLCP, GaussianMixture, LotkaVolterra, SIR]
GOLD = {GaussianLinear, TwoMoons, SLCP, GaussianMixture}
NO_LATENT_GOLD = [GaussianLinear, TwoMoons, SLCP]
DOUBLE = torch.float64


def _prior_draws(sim, n: int, seed: int, dtype=DOUBLE) -> torch.Tensor:
    """n seeded prior draws (torch's global RNG is restored afterwards)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return sim.prior().sample((n,)).to(dtype)


def _fd_score(fn: Callable, theta: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """Central finite difference of fn(θ) ``[batch]`` in every θ coordinate."""
    columns = []
    for i in range(theta.shape[1]):
        step = torch.zeros_like(theta)
        step[:, i] = h
        columns.append((fn(theta + step) - fn(theta - step)) / (2 * h))
    return torch.stack(columns, 1)


def _box_integral(log_density: Callable, lo, hi, nodes: int, f: Callable | None = None) -> float:
    """∫ over the box [lo, hi] (2-d) of f(x) exp(log_density(x)), x ``[m, 2]``, by a
    Gauss–Legendre product rule (f = 1 by default: the probability mass of the box)."""
    t, w = np.polynomial.legendre.leggauss(nodes)
    axes, weights = [], []
    for a, b in zip(lo, hi, strict=True):
        axes.append(0.5 * (b - a) * t + 0.5 * (a + b))
        weights.append(0.5 * (b - a) * w)
    g0, g1 = np.meshgrid(*axes, indexing="ij")
    points = torch.as_tensor(np.stack([g0.ravel(), g1.ravel()], 1))
    integrand = torch.exp(log_density(points))
    if f is not None:
        integrand = integrand * f(points)
    return float(np.sum(np.outer(*weights).ravel() * integrand.numpy()))


def _fraction_in_box(x: torch.Tensor, lo, hi) -> float:
    lo, hi = torch.as_tensor(lo, dtype=x.dtype), torch.as_tensor(hi, dtype=x.dtype)
    return float(((x >= lo) & (x < hi)).all(1).double().mean())


def _assert_within_k_se(estimate: float, exact: float, se: float, what: str) -> None:
    assert abs(estimate - exact) <= K * se, f"{what}: {estimate} vs {exact} (SE {se:.3g})"


# -- interface: shapes, dtypes, priors, seeds ---------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cls", ALL)
def test_shapes_dtypes_and_prior(cls, dtype):
    sim = cls()
    prior = sim.prior()
    assert prior.event_shape == (sim.theta_dim,)
    theta = _prior_draws(sim, 7, seed=0, dtype=dtype)
    sim.check_theta(theta)  # prior draws lie in the simulator's support
    x = sim.simulate(theta, seed=0)
    assert x.shape == (7, *sim.x_shape) and x.dtype == dtype
    assert torch.isfinite(x).all()
    log_l = sim.log_likelihood(x, theta)
    assert log_l.shape == (7,) and log_l.dtype == dtype and torch.isfinite(log_l).all()
    assert torch.isfinite(prior.log_prob(theta.float())).all()
    assert sim.has_gold == (cls in GOLD) and sim.has_likelihood


@pytest.mark.parametrize("cls", ALL)
def test_seed_reproducibility(cls):
    sim = cls()
    theta = _prior_draws(sim, 5, seed=1, dtype=torch.float32)
    x1, x2 = sim.simulate(theta, seed=11), sim.simulate(theta, seed=11)
    torch.testing.assert_close(x1, x2, rtol=0, atol=0)
    x3 = sim.simulate(theta, seed=torch.Generator().manual_seed(11))
    torch.testing.assert_close(x1, x3, rtol=0, atol=0)
    assert not torch.equal(x1, sim.simulate(theta, seed=12))
    if sim.has_gold:  # the gold path draws the same x from the same seed
        gold = sim.simulate(theta, gold=True, theta_ref=theta[0], seed=11)
        torch.testing.assert_close(gold.x, x1, rtol=0, atol=0)


@pytest.mark.parametrize("cls", ALL)
def test_log_likelihood_broadcasts_and_checks_shapes(cls):
    sim = cls()
    theta = _prior_draws(sim, 4, seed=2)
    x = sim.simulate(theta, seed=2)
    one_x = sim.log_likelihood(x[0], theta)
    torch.testing.assert_close(one_x, sim.log_likelihood(x[:1].expand_as(x), theta))
    with pytest.raises(ShapeError):
        sim.log_likelihood(x[:, :-1], theta)
    with pytest.raises(ShapeError):
        sim.log_likelihood(x, theta[:, :-1])


@pytest.mark.parametrize("cls", [LotkaVolterra, SIR])
def test_ode_models_reject_nonpositive_theta_and_bad_steps(cls):
    sim = cls()
    theta = sim.prior().mean[None].clone()
    theta[0, 0] = -0.1
    with pytest.raises(SupportError):
        sim.simulate(theta, seed=0)
    with pytest.raises(ValueError, match="divide"):
        cls(dt=0.4)


# -- gold without a latent: the joint quantities are the exact ones -----------------------------
@pytest.mark.parametrize("cls", NO_LATENT_GOLD)
def test_no_latent_gold_is_exact_ratio_and_score(cls):
    sim = cls()
    theta = _prior_draws(sim, 6, seed=3)
    theta_ref = _prior_draws(sim, 1, seed=4)[0]
    data = sim.simulate(theta, gold=True, theta_ref=theta_ref, seed=3)
    x = data.x

    def log_l(t):
        return sim.log_likelihood(x, t)

    exact_ratio = log_l(theta) - sim.log_likelihood(x, theta_ref)
    torch.testing.assert_close(data.joint_log_ratio, exact_ratio, rtol=1e-12, atol=1e-10)
    # central differences: truncation O(h² ∂³ log p) and rounding O(ε |log p| / h) are both
    # far below 1e-5 relative for h = 1e-6 in float64.
    torch.testing.assert_close(data.joint_score, _fd_score(log_l, theta), rtol=1e-5, atol=1e-5)
    ref = theta_ref.expand_as(theta)
    torch.testing.assert_close(data.joint_score_ref, _fd_score(log_l, ref), rtol=1e-5, atol=1e-5)


# -- Gaussian linear ----------------------------------------------------------------------------
def test_gaussian_linear_density_and_moments():
    sim = GaussianLinear()
    theta0 = _prior_draws(sim, 1, seed=5)[0]
    n = 20_000
    x = sim.simulate(theta0.expand(n, 10), seed=5)
    se_mean = math.sqrt(0.1 / n)
    se_var = 0.1 * math.sqrt(2.0 / (n - 1))
    for i in range(10):
        _assert_within_k_se(float(x[:, i].mean()), float(theta0[i]), se_mean, f"E[x_{i}]")
        _assert_within_k_se(float(x[:, i].var()), 0.1, se_var, f"Var[x_{i}]")
    reference = stats.multivariate_normal(theta0.numpy(), 0.1 * np.eye(10)).logpdf(x[:50].numpy())
    np.testing.assert_allclose(sim.log_likelihood(x[:50], theta0).numpy(), reference, rtol=1e-12)
    prior_ref = stats.multivariate_normal(np.zeros(10), 0.1 * np.eye(10)).logpdf(theta0.numpy())
    assert float(sim.prior().log_prob(theta0.float())) == pytest.approx(prior_ref, rel=1e-5)


@pytest.mark.parametrize("n_obs", [1, 5])
def test_gaussian_linear_posterior_is_the_conjugate_one(n_obs):
    sim = GaussianLinear(dim=3, prior_var=0.2, noise_var=0.05)
    theta0 = torch.tensor([[0.3, -0.2, 0.1]], dtype=DOUBLE)
    x_obs = sim.simulate(theta0.expand(n_obs, 3), seed=6)
    posterior = sim.posterior(x_obs[0] if n_obs == 1 else x_obs)

    # conjugate update written with matrices, in numpy
    prior_precision = np.linalg.inv(0.2 * np.eye(3))
    noise_precision = np.linalg.inv(0.05 * np.eye(3))
    cov = np.linalg.inv(prior_precision + n_obs * noise_precision)
    mean = cov @ (noise_precision @ x_obs.numpy().sum(0))
    np.testing.assert_allclose(posterior.mean.numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(posterior.covariance_matrix.numpy(), cov, rtol=1e-12)

    # Bayes: log p(θ) + Σ_j log p(x_j|θ) − log p(θ|x) is the same (log evidence) for every θ
    theta = _prior_draws(sim, 8, seed=7)
    log_prior = stats.multivariate_normal(np.zeros(3), 0.2 * np.eye(3)).logpdf(theta.numpy())
    joint = log_prior + sim.log_likelihood(x_obs[:, None, :], theta).sum(0).numpy()
    log_evidence = joint - posterior.log_prob(theta).numpy()
    np.testing.assert_allclose(log_evidence, log_evidence[0], rtol=1e-10)


def test_gaussian_linear_posterior_checks_shape():
    with pytest.raises(ShapeError):
        GaussianLinear(dim=3).posterior(torch.zeros(2, 4))


# -- two moons ----------------------------------------------------------------------------------
def test_two_moons_likelihood_normalises_and_matches_samples():
    sim = TwoMoons()
    theta0 = torch.tensor([0.3, -0.6], dtype=DOUBLE)
    centre = sim._centre(theta0).numpy()

    def log_density(points):
        return sim.log_likelihood(points, theta0)

    # the moon is the half-ring u > 0 of radius 0.1 ± 0.01 around the centre; beyond 6 sd
    # (radius 0.16) and at u < 0 the mass is below 1e-8.
    lo, hi = centre + [0.0, -0.16], centre + [0.16, 0.16]
    assert _box_integral(log_density, lo, hi, nodes=300) == pytest.approx(1.0, abs=1e-6)

    n = 40_000
    x = sim.simulate(theta0.expand(n, 2), seed=8)

    # the radial profile, N(r; 0.1, 0.01²) only after the Jacobian 1/r: E[|x - centre|]
    def radius(points):
        return torch.linalg.vector_norm(points - torch.as_tensor(centre), dim=-1)

    mean_radius = _box_integral(log_density, lo, hi, nodes=300, f=radius)
    assert mean_radius == pytest.approx(0.1, abs=1e-6)
    r = radius(x)
    se = float(r.std()) / math.sqrt(n)  # estimated from the samples
    _assert_within_k_se(float(r.mean()), mean_radius, se, "E[|x - centre|]")
    cells = [  # split the moon where a box has mass well inside (0, 1)
        (centre + [0.0, -0.16], centre + [0.07, 0.0]),
        (centre + [0.07, -0.16], centre + [0.16, 0.0]),
        (centre + [0.0, 0.03], centre + [0.16, 0.16]),
        (centre + [0.0, -0.05], centre + [0.16, 0.05]),
    ]
    for lo, hi in cells:
        mass = _box_integral(log_density, lo, hi, nodes=200)
        se = math.sqrt(mass * (1 - mass) / n)
        _assert_within_k_se(_fraction_in_box(x, lo, hi), mass, se, f"P(x in {lo}..{hi})")


# -- SLCP ---------------------------------------------------------------------------------------
def _slcp_covariance(theta: np.ndarray) -> np.ndarray:
    s1, s2, rho = theta[2] ** 2, theta[3] ** 2, np.tanh(theta[4])
    return np.array([[s1**2 + 1e-6, rho * s1 * s2], [rho * s1 * s2, s2**2 + 1e-6]])


def test_slcp_density_and_moments():
    sim = SLCP()
    theta0 = torch.tensor([0.5, -1.0, 1.2, 0.9, 0.7], dtype=DOUBLE)
    mean, cov = theta0[:2].numpy(), _slcp_covariance(theta0.numpy())

    x = sim.simulate(theta0.expand(20, 5), seed=9)
    reference = stats.multivariate_normal(mean, cov).logpdf(x.reshape(20, 4, 2).numpy()).sum(1)
    np.testing.assert_allclose(sim.log_likelihood(x, theta0).numpy(), reference, rtol=1e-10)

    n_rows = 20_000
    draws = sim.simulate(theta0.expand(n_rows, 5), seed=10).reshape(n_rows, 4, 2)
    for slot in range(4):  # each of the 4 draws has the same N(m, S)
        d = draws[:, slot].numpy()
        sample_cov = np.cov(d, rowvar=False)
        for i in range(2):
            se = math.sqrt(cov[i, i] / n_rows)
            _assert_within_k_se(d[:, i].mean(), mean[i], se, f"E[x_{slot}{i}]")
            for j in range(2):
                se = math.sqrt((cov[i, i] * cov[j, j] + cov[i, j] ** 2) / n_rows)
                _assert_within_k_se(sample_cov[i, j], cov[i, j], se, f"Cov[x_{slot}]_{i}{j}")
    # and the 4 draws are independent: cross-covariance 0, SE √(S_ii S_jj / n)
    cross = np.cov(draws[:, 0].numpy(), draws[:, 1].numpy(), rowvar=False)[:2, 2:]
    se = np.sqrt(np.outer(np.diag(cov), np.diag(cov)) / n_rows)
    assert (np.abs(cross) <= K * se).all(), cross


# -- Gaussian mixture ---------------------------------------------------------------------------
def test_gaussian_mixture_likelihood_normalises_and_matches_samples():
    sim = GaussianMixture()
    theta0 = torch.tensor([1.5, -2.0], dtype=DOUBLE)
    t = theta0.numpy()

    def log_density(points):
        return sim.log_likelihood(points, theta0)

    assert _box_integral(log_density, t - 8, t + 8, nodes=600) == pytest.approx(1.0, abs=1e-8)
    n = 40_000
    x = sim.simulate(theta0.expand(n, 2), seed=12)
    for half_width in (0.05, 0.15, 1.0):
        lo, hi = t - half_width, t + half_width
        mass = _box_integral(log_density, lo, hi, nodes=64)
        se = math.sqrt(mass * (1 - mass) / n)
        _assert_within_k_se(_fraction_in_box(x, lo, hi), mass, se, f"P(|x-θ|∞ < {half_width})")


def test_gaussian_mixture_gold_identities():
    """E[r(x,z|θ,θ_ref) | x, θ_ref] = r(x|θ,θ_ref) and E[t(x,z|θ) | x, θ] = t(x|θ), exactly."""
    sim = GaussianMixture()
    theta = _prior_draws(sim, 50, seed=13)
    theta_ref = theta + 0.05
    x = sim.simulate(theta_ref, seed=13)  # x drawn at θ_ref, near θ so both components matter
    z = [torch.full((50,), k, dtype=torch.long) for k in (0, 1)]

    joint = torch.stack([sim.joint_log_prob(x, zk, theta, None) for zk in z], -1)
    joint_ref = torch.stack([sim.joint_log_prob(x, zk, theta_ref, None) for zk in z], -1)
    # the joint terms at z = 0, 1 are the mixture's halves, written out independently
    for k, scale in enumerate((1.0, 0.1)):
        expected = math.log(0.5) + stats.norm(theta.numpy(), scale).logpdf(x.numpy()).sum(1)
        np.testing.assert_allclose(joint[:, k].numpy(), expected, rtol=1e-12)

    exact_ratio = torch.exp(sim.log_likelihood(x, theta) - sim.log_likelihood(x, theta_ref))
    posterior_ref = torch.softmax(joint_ref, -1)  # p(z | x, θ_ref)
    mean_ratio = (posterior_ref * torch.exp(joint - joint_ref)).sum(-1)
    torch.testing.assert_close(mean_ratio, exact_ratio, rtol=1e-10, atol=0)

    scores = torch.stack([sim.joint_score(x, zk, theta, None) for zk in z], 1)  # [n, 2, dim]
    posterior = torch.softmax(joint, -1)  # p(z | x, θ)
    mean_score = (posterior[..., None] * scores).sum(1)
    exact_score = _fd_score(lambda t: sim.log_likelihood(x, t), theta)
    torch.testing.assert_close(mean_score, exact_score, rtol=1e-5, atol=1e-5)
    # a score of one component is not the marginal score: the latent matters
    assert not torch.allclose(scores[:, 1], exact_score, rtol=1e-2)


def test_gaussian_mixture_simulated_gold():
    sim = GaussianMixture()
    n = 20_000
    theta = torch.tensor([[1.0, -3.0]], dtype=DOUBLE).expand(n, 2)
    theta_ref = torch.tensor([1.05, -2.95], dtype=DOUBLE)
    data = sim.simulate(theta, gold=True, theta_ref=theta_ref, seed=14, at_reference=True)
    torch.testing.assert_close(data.theta_simulated, theta_ref.expand(n, 2))

    # every row's gold is that of one of the two components, each drawn half of the time
    candidates = torch.stack(
        [
            sim.joint_log_prob(data.x, zk, theta, None)
            - sim.joint_log_prob(data.x, zk, theta_ref.expand(n, 2), None)
            for zk in (torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long))
        ],
        -1,
    )
    distance = (candidates - data.joint_log_ratio[:, None]).abs()
    assert (distance.min(-1).values < 1e-9).all()
    narrow = (distance[:, 1] < distance[:, 0]).double().mean()
    _assert_within_k_se(float(narrow), 0.5, math.sqrt(0.25 / n), "P(narrow component)")

    # E_{x,z ~ θ_ref}[r(x,z|θ,θ_ref)] = 1 (SE estimated from the samples; E[r²] = O(e^{0.5}))
    ratio = torch.exp(data.joint_log_ratio)
    _assert_within_k_se(float(ratio.mean()), 1.0, float(ratio.std()) / math.sqrt(n), "E[r]")


# -- Lotka–Volterra -----------------------------------------------------------------------------
def _lv_reference(theta: np.ndarray, times: np.ndarray) -> np.ndarray:
    a, b, g, d = theta

    def rhs(t, y):
        return [a * y[0] - b * y[0] * y[1], -g * y[1] + d * y[0] * y[1]]

    solution = solve_ivp(
        rhs, (0.0, 20.0), [30.0, 1.0], t_eval=times, method="DOP853", rtol=1e-11, atol=1e-30
    )
    return solution.y  # [2, 10]


def test_lotka_volterra_ode_matches_scipy():
    sim = LotkaVolterra()
    times = sim.times.numpy()
    np.testing.assert_allclose(times, 2.1 * np.arange(10))  # sbibm: u[:, :, ::21] of 0:0.1:20
    median = torch.exp(torch.tensor([[-0.125, -3.0, -0.125, -3.0]], dtype=DOUBLE))
    theta = torch.cat([median, _prior_draws(sim, 2, seed=15)])
    populations = torch.exp(sim.log_populations(theta)).numpy()
    for row in range(3):
        reference = _lv_reference(theta[row].numpy(), times)
        np.testing.assert_allclose(populations[row], reference, rtol=1e-3)


def test_lotka_volterra_observation_model():
    sim = LotkaVolterra()
    theta0 = _prior_draws(sim, 1, seed=16)[0]
    n = 2_000
    x = sim.simulate(theta0.expand(n, 4), seed=16)
    assert (x > 0).all()
    log_u = sim.log_populations(theta0).clamp(math.log(1e-10), math.log(1e4)).flatten()
    residual = (torch.log(x) - log_u).numpy()  # iid N(0, 0.1²), n · 20 of them
    m = residual.size
    _assert_within_k_se(residual.mean(), 0.0, 0.1 / math.sqrt(m), "E[log x - log u]")
    _assert_within_k_se(residual.std(), 0.1, 0.1 / math.sqrt(2 * m), "sd[log x - log u]")
    log_l = sim.log_likelihood(x[:20], theta0).numpy()
    reference = stats.lognorm(s=0.1, scale=np.exp(log_u.numpy())).logpdf(x[:20].numpy()).sum(1)
    np.testing.assert_allclose(log_l, reference, rtol=1e-10)


# -- SIR ----------------------------------------------------------------------------------------
def _sir_reference(theta: np.ndarray, times: np.ndarray, n: float = 1e6) -> np.ndarray:
    beta, gamma = theta

    def rhs(t, y):
        infection = beta * y[0] * y[1] / n
        return [-infection, infection - gamma * y[1], gamma * y[1]]

    y0 = [n - 1, 1.0, 0.0]
    solution = solve_ivp(
        rhs, (0.0, 160.0), y0, t_eval=times, method="DOP853", rtol=1e-11, atol=1e-30
    )
    return solution.y[1]  # I(t_k)


def test_sir_ode_matches_scipy():
    sim = SIR()
    times = sim.times.numpy()
    np.testing.assert_allclose(times, 17.0 * np.arange(10))  # sbibm: u[:, 1, ::17] of 0:1:160
    theta = torch.cat([torch.tensor([[0.4, 0.125]], dtype=DOUBLE), _prior_draws(sim, 2, seed=17)])
    infected = 1e6 * sim.infected_fraction(theta).numpy()
    for row in range(3):
        reference = _sir_reference(theta[row].numpy(), times)
        np.testing.assert_allclose(infected[row], reference, rtol=1e-3)


def test_sir_counts_and_likelihood():
    sim = SIR()
    theta0 = torch.tensor([0.5, 0.12], dtype=DOUBLE)
    n = 2_000
    x = sim.simulate(theta0.expand(n, 2), seed=18)
    assert ((x >= 0) & (x <= 1000)).all() and torch.equal(x, x.round())
    p = sim.infected_fraction(theta0).numpy()
    for k in range(10):
        se = math.sqrt(1000 * p[k] * (1 - p[k]) / n)
        _assert_within_k_se(float(x[:, k].mean()), 1000 * p[k], se, f"E[x_{k}]")
    reference = stats.binom(1000, p).logpmf(x[:20].numpy()).sum(1)
    np.testing.assert_allclose(sim.log_likelihood(x[:20], theta0).numpy(), reference, rtol=1e-8)


# -- devices ------------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cls", ALL)
def test_runs_on_cuda(cls):
    sim = cls()
    theta = _prior_draws(sim, 16, seed=19, dtype=torch.float32).cuda()
    x = sim.simulate(theta, seed=19)
    assert x.device.type == "cuda" and x.dtype == torch.float32 and torch.isfinite(x).all()
    torch.testing.assert_close(x, sim.simulate(theta, seed=19), rtol=0, atol=0)
    # the same float64 computation on both devices agrees to rounding
    x64, theta64 = x.double(), theta.double()
    on_cpu = sim.log_likelihood(x64.cpu(), theta64.cpu())
    torch.testing.assert_close(sim.log_likelihood(x64, theta64).cpu(), on_cpu, rtol=1e-6, atol=1e-6)
    if sim.has_gold:
        data = sim.simulate(theta, gold=True, theta_ref=theta[0], seed=19)
        assert data.joint_score.device.type == "cuda"
