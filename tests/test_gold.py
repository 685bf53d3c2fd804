"""Gold is an unbiased target: E[t(x,z|θ) | x] = t(x|θ) and E[r(x,z|θ0,θ1) | x] = r(x|θ0,θ1),
checked by `simfer.diagnostics.check_gold`.

Its binned checks take, within every bin of x, the mean of d = gold − exact and its
standard error from the sample variance, and combine the bins' z-scores into a χ²
statistic with one degree of freedom per bin: under the identity, the p-value is uniform,
so requiring p > 1e-3 fails a correct implementation once in a thousand seeds.  Every
check is paired with a deliberately wrong target or a simulator with wrong gold that the
same check must reject (p < 1e-6), so the check is known to have power.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy.stats import chi2

import simfer
from simfer.diagnostics import binned_mean_test, check_gold
from simfer.errors import ShapeError
from simulators import GaltonBoard, GaussianLinear

N = 40_000
EDGES = torch.arange(-16.0, 17.0, 2.0, dtype=torch.float64) + 1.0  # one bin per final position


@pytest.fixture(scope="module")
def board():
    return GaltonBoard(n_rows=16)


def test_galton_joint_score_is_unbiased_for_the_exact_score(board):
    check = check_gold(
        board, [0.4], [0.0], exact_score=board.likelihood_score, n=N, seed=101, bins=EDGES
    )
    (binned,) = check.score_vs_exact
    assert binned.p_value > 1e-3 and binned.dof >= 5
    assert check.passed and check.ratio_vs_exact is None
    assert abs(check.score_mean[0].z) < 4 and abs(check.ratio_mean.z) < 4
    # the joint score is noisy around t(x|θ), so the test is not trivially satisfied ...
    assert binned.spread > 0.1
    # ... and it rejects the score at the wrong θ (the same events: the same seed)
    wrong = check_gold(
        board,
        [0.4],
        [0.0],
        exact_score=lambda x, theta: board.likelihood_score(x, theta + 0.1),
        n=N,
        seed=101,
        bins=EDGES,
    )
    assert torch.equal(wrong.at_theta.x, check.at_theta.x)
    assert wrong.score_vs_exact[0].p_value < 1e-6
    assert not wrong.passed and wrong.failed == ["score_vs_exact[0]"]


def test_galton_joint_ratio_is_unbiased_for_the_exact_ratio(board):
    """x ~ p(x|θ1 = θ_ref), gold at θ0: E[r(x,z|θ0,θ1) | x] = r(x|θ0,θ1)."""
    check = check_gold(
        board,
        [0.3],
        [0.0],
        exact_log_ratio=board.log_likelihood_ratio,
        n=N,
        seed=202,
        bins=EDGES,
    )
    at_ref = check.at_reference
    assert bool(at_ref.from_reference.all()) and check.at_theta.from_reference is None
    assert check.ratio_vs_exact.p_value > 1e-3 and check.ratio_vs_exact.dof >= 5
    assert check.passed
    # log r(x,z) is not unbiased for log r(x): the same test rejects a log-space average
    exact_log_r = board.log_likelihood_ratio(at_ref.x, at_ref.theta, at_ref.theta_ref)
    d_log = at_ref.joint_log_ratio - exact_log_r
    assert binned_mean_test(d_log, at_ref.x[:, 0], EDGES).p_value < 1e-6


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


def mixture_log_ratio(x, theta, theta_ref):
    return mixture_log_likelihood(x, theta) - mixture_log_likelihood(x, theta_ref)


def test_pyro_program_gold_is_unbiased():
    sim = simfer.Simulator.from_pyro(mixture_model, theta_dim=2)
    exact = dict(exact_score=mixture_score, exact_log_ratio=mixture_log_ratio)
    check = check_gold(sim, [0.7, 0.2], [0.0, 0.0], n=N, seed=303, **exact)
    for binned in (*check.score_vs_exact, check.ratio_vs_exact):
        assert binned.p_value > 1e-3 and binned.dof >= 5, binned
    assert check.passed, check.summary()
    wrong = check_gold(
        sim,
        [0.7, 0.2],
        [0.0, 0.0],
        n=N,
        seed=303,
        exact_score=lambda x, theta: mixture_score(x, theta + 0.1),
    )
    assert wrong.score_vs_exact[0].p_value < 1e-6 and not wrong.passed


class SignErrorBoard(GaltonBoard):
    """A Galton board whose hand-written joint score has the wrong sign: a level-3 gold
    backend with a bug that keeps the score's mean at zero."""

    def joint_score(self, x, latent, theta, design):
        with torch.enable_grad():
            leaf = theta.detach().clone().requires_grad_(True)
            log_p = self.joint_log_prob(x, latent, leaf, design)
            (score,) = torch.autograd.grad(log_p.sum(), leaf)
        return -score


class ForgotLeftBouncesBoard(GaltonBoard):
    """A Galton board whose joint density forgets the probability of bouncing left:
    Σ_r z_r log p_r instead of Σ_r [z_r log p_r + (1 − z_r) log(1 − p_r)]."""

    def joint_log_prob(self, x, latent, theta, design):
        path = latent.to(theta.dtype)
        steps = 2 * path - 1
        before = torch.cumsum(steps, dim=1) - steps
        p = torch.cat(
            [self.p_right(theta, row, before[:, row : row + 1]) for row in range(self.n_rows)],
            dim=1,
        )
        final = steps.sum(1, keepdim=True)
        return (path * torch.log(p)).sum(1) + self._log_readout(x, final).squeeze(1)


def test_check_gold_fails_on_wrong_gold():
    # a sign error keeps E_θ[t] = 0, so only the comparison with the exact score sees it
    flipped = SignErrorBoard(n_rows=16)
    exact = dict(exact_score=flipped.likelihood_score, exact_log_ratio=flipped.log_likelihood_ratio)
    check = check_gold(flipped, [0.4], [0.0], n=10_000, seed=1, **exact)
    assert check.failed == ["score_vs_exact[0]"] and not check.passed
    assert check.score_vs_exact[0].p_value < 1e-6
    assert "FAIL (score_vs_exact[0])" in check.summary()
    assert check.as_dict()["passed"] is False
    # a forgotten factor breaks the model-free identities: no exact likelihood needed
    forgetful = ForgotLeftBouncesBoard(n_rows=16)
    check = check_gold(forgetful, [0.4], [0.0], n=10_000, seed=2)
    assert not check.passed
    assert check.score_mean[0].p_value < 1e-6 and check.ratio_mean.p_value < 1e-6
    # the same board with its factor back passes at the same seed
    assert check_gold(GaltonBoard(n_rows=16), [0.4], [0.0], n=10_000, seed=2).passed


def test_check_gold_takes_theta_per_event_and_exact_gold():
    board = GaltonBoard(n_rows=8)
    theta = board.prior().sample((4000,))
    check = check_gold(
        board,
        theta,
        [0.0],
        exact_score=board.likelihood_score,
        exact_log_ratio=board.log_likelihood_ratio,
        seed=0,
    )
    assert check.passed, check.summary()
    assert len(check.at_theta) == 4000 and torch.equal(check.at_theta.theta, theta.double())
    assert check.as_dict()["theta"]["rows"] == 4000
    with pytest.raises(ShapeError, match="4000 rows, but n = 10"):
        check_gold(board, theta, [0.0], n=10)
    # gold that is the exact likelihood (no latent path): every difference is exactly 0,
    # binned on the exact score (x has ten features)
    linear = GaussianLinear()
    exact = check_gold(
        linear,
        torch.full((10,), 0.1),
        torch.zeros(10),
        n=2000,
        seed=0,
        exact_score=linear.likelihood_score,
        exact_log_ratio=linear.log_likelihood_ratio,
    )
    assert exact.passed and len(exact.checks) == 10 + 1 + 10 + 1
    assert all(binned.spread == 0 and binned.z < 0 for binned in exact.score_vs_exact)
    with pytest.raises(simfer.GoldNotAvailableError):
        check_gold(simfer.Simulator.from_function(torch.exp, theta_dim=1), [0.0], [0.0])


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
