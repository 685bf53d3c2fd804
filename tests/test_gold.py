"""Gold is an unbiased target: E[t(x,z|θ) | x] = t(x|θ) and E[r(x,z|θ0,θ1) | x] = r(x|θ0,θ1).

Each check bins x, computes within every bin the mean of d = gold − exact and its
standard error from the sample variance, and combines the bins' z-scores into a
χ² statistic with one degree of freedom per bin: under the identity, the p-value
is uniform, so requiring p > 1e-3 fails a correct implementation once in a
thousand seeds.  Every check is paired with a deliberately wrong target that the
same test must reject (p < 1e-6), so the test is known to have power.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy.stats import chi2

import simfer
from simulators import GaltonBoard

N = 40_000


def conditional_mean_p_value(d: torch.Tensor, x: torch.Tensor, edges: torch.Tensor) -> float:
    """p-value of "E[d | x in bin] = 0 in every bin" from the bins' z-scores."""
    bins = torch.bucketize(x, edges)
    statistic, dof = 0.0, 0
    for b in bins.unique():
        values = d[bins == b]
        if values.numel() < 50:
            continue
        z = values.mean() / (values.std() / values.numel() ** 0.5)
        statistic += float(z) ** 2
        dof += 1
    assert dof >= 5, "too few populated bins for a meaningful test"
    return float(chi2.sf(statistic, dof))


@pytest.fixture(scope="module")
def board():
    return GaltonBoard(n_rows=16)


def test_galton_joint_score_is_unbiased_for_the_exact_score(board):
    theta = torch.full((N, 1), 0.4, dtype=torch.float64)
    data = board.simulate(theta, gold=True, theta_ref=[0.0], seed=101)
    x = data.x[:, 0]
    exact = board.likelihood_score(data.x, theta)[:, 0]
    edges = torch.arange(-16.0, 17.0, 2.0, dtype=torch.float64) + 1.0  # one bin per final position
    assert conditional_mean_p_value(data.joint_score[:, 0] - exact, x, edges) > 1e-3
    # the joint score is noisy around t(x|θ), so the test is not trivially satisfied ...
    assert (data.joint_score[:, 0] - exact).std() > 0.1
    # ... and it rejects the score at the wrong θ
    wrong = board.likelihood_score(data.x, torch.full_like(theta, 0.5))[:, 0]
    assert conditional_mean_p_value(data.joint_score[:, 0] - wrong, x, edges) < 1e-6


def test_galton_joint_ratio_is_unbiased_for_the_exact_ratio(board):
    """x ~ p(x|θ1 = θ_ref), gold at θ0: E[r(x,z|θ0,θ1) | x] = r(x|θ0,θ1)."""
    theta0 = torch.full((N, 1), 0.3, dtype=torch.float64)
    data = board.simulate(theta0, gold=True, theta_ref=[0.0], at_reference=True, seed=202)
    assert bool(data.from_reference.all())
    x = data.x[:, 0]
    exact_log_r = board.log_likelihood_ratio(data.x, theta0, data.theta_ref)
    edges = torch.arange(-16.0, 17.0, 2.0, dtype=torch.float64) + 1.0
    d = data.joint_log_ratio.exp() - exact_log_r.exp()
    assert conditional_mean_p_value(d, x, edges) > 1e-3
    # log r(x,z) is not unbiased for log r(x): the same test rejects a log-space average
    d_log = data.joint_log_ratio - exact_log_r
    assert conditional_mean_p_value(d_log, x, edges) < 1e-6


def mixture_model(theta):
    """z ~ Categorical(softmax(θ0, 0, −θ0)), x ~ N(c_z + θ1, 1): a Pyro program with gold."""
    logits = torch.stack([theta[:, 0], torch.zeros_like(theta[:, 0]), -theta[:, 0]], dim=1)
    z = pyro.sample("z", dist.Categorical(logits=logits))
    centers = torch.tensor([-1.5, 0.0, 1.5], dtype=theta.dtype)
    return pyro.sample("x", dist.Normal(centers[z] + theta[:, 1], 1.0))


def mixture_log_likelihood(x, theta):
    logits = torch.stack([theta[:, 0], torch.zeros_like(theta[:, 0]), -theta[:, 0]], dim=1)
    centers = torch.tensor([-1.5, 0.0, 1.5], dtype=theta.dtype)
    components = torch.distributions.Normal(centers[None, :] + theta[:, 1:2], 1.0)
    log_joint = torch.log_softmax(logits, 1) + components.log_prob(x[:, :1])
    return torch.logsumexp(log_joint, dim=1)


def mixture_score(x, theta):
    theta = theta.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(mixture_log_likelihood(x, theta).sum(), theta)
    return grad


def test_pyro_program_gold_is_unbiased():
    sim = simfer.Simulator.from_pyro(mixture_model, theta_dim=2)
    theta = torch.tensor([[0.7, 0.2]], dtype=torch.float64).expand(N, 2)
    data = sim.simulate(theta, gold=True, theta_ref=[0.0, 0.0], seed=303)
    x = data.x[:, 0]
    edges = torch.quantile(x, torch.linspace(0.05, 0.95, 19, dtype=torch.float64))
    exact = mixture_score(data.x, theta)
    for j in range(2):
        assert conditional_mean_p_value(data.joint_score[:, j] - exact[:, j], x, edges) > 1e-3
    wrong = mixture_score(data.x, theta + 0.1)
    assert conditional_mean_p_value(data.joint_score[:, 0] - wrong[:, 0], x, edges) < 1e-6

    at_ref = sim.simulate(theta, gold=True, theta_ref=[0.0, 0.0], at_reference=True, seed=304)
    x_ref = at_ref.x[:, 0]
    exact_r = (
        mixture_log_likelihood(at_ref.x, theta) - mixture_log_likelihood(at_ref.x, at_ref.theta_ref)
    ).exp()
    d = at_ref.joint_log_ratio.exp() - exact_r
    edges = torch.quantile(x_ref, torch.linspace(0.05, 0.95, 19, dtype=torch.float64))
    assert conditional_mean_p_value(d, x_ref, edges) > 1e-3


def test_galton_exact_likelihood_is_normalised_and_matches_samples(board):
    theta = torch.tensor([[0.4], [-0.8]], dtype=torch.float64)
    probs = board.final_position_probabilities(theta)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, dtype=torch.float64))
    grid = torch.linspace(-24, 24, 24001, dtype=torch.float64)[:, None]
    for t in theta[:, 0].tolist():
        density = board.log_likelihood(grid, torch.full_like(grid, t)).exp()
        assert abs(float(torch.trapezoid(density, grid[:, 0])) - 1) < 1e-6
    # sampled final positions follow the dynamic-programming distribution (χ² test)
    data = board.simulate(theta[:1].expand(N, 1), gold=True, seed=5)
    _, path = board.sample_with_latent(
        theta[:1].expand(N, 1), None, simfer.seeding.make_generator(5)
    )
    rights = path.sum(1).long()
    counts = torch.bincount(rights, minlength=17).double()
    expected = probs[0] * N
    keep = expected > 5
    statistic = float((((counts - expected) ** 2 / expected)[keep]).sum())
    assert chi2.sf(statistic, int(keep.sum()) - 1) > 1e-3
    assert data.x.shape == (N, 1)
