"""`simfer.ExperimentLoop`: suggest, observe, update, save and resume."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

import simfer  # noqa: E402
import simulators  # noqa: E402
from simfer.errors import ShapeError, SimferError  # noqa: E402

FAST = dict(n_outer=400, n_inner=400, n_posterior=1500, sampler=dict(n_chains=50, warmup=60))


@pytest.fixture(scope="module")
def oscillator():
    return simulators.LinearGaussianDesign()


def _analytic(sim, x, designs):
    """θ | data for θ ~ N(0, σθ² I), x = X(d)θ + ε: Gaussian (mean, std)."""
    matrices = sim.design_matrix(designs).double()  # [t, n_obs, p]
    precision = torch.eye(sim.theta_dim, dtype=torch.float64) / sim.prior_std**2
    precision = precision + (matrices.mT @ matrices).sum(0) / sim.noise_std**2
    cov = torch.linalg.inv(precision)
    mean = cov @ (matrices.mT @ x.double()[..., None]).sum(0)[:, 0] / sim.noise_std**2
    return mean, cov.diagonal().sqrt()


def test_the_first_suggestion_is_the_analytic_argmax_and_the_posterior_is_exact(oscillator):
    grid = torch.linspace(0.0, 1.0, 51)
    loop = simfer.ExperimentLoop(oscillator, oscillator.prior(), designs=grid, seed=1, **FAST)
    first = loop.suggest()
    best = grid[oscillator.analytic_eig(grid).argmax()]
    assert abs(float(first[0]) - float(best)) <= 0.02 + 1e-6  # one grid step
    truth = torch.tensor([0.7, -0.4])
    loop.run(2, nature=truth)
    x = torch.cat([torch.tensor(r.x) for r in loop.history])
    designs = torch.tensor([r.design for r in loop.history])
    mean, std = _analytic(oscillator, x, designs)
    draws_mean = torch.tensor(loop.history[-1].posterior_mean, dtype=torch.float64)
    draws_std = torch.tensor(loop.history[-1].posterior_std, dtype=torch.float64)
    # 1500 slice draws (ESS ≳ 150): the mean's MC error is ≲ σ/12, the std's ≲ 10 %
    assert ((draws_mean - mean).abs() / std).max() < 0.3
    assert ((draws_std / std) - 1).abs().max() < 0.2
    # the second round's EIG is computed under the first posterior: it is smaller
    assert loop.history[1].eig.eig.max() < loop.history[0].eig.eig.max()


def test_a_user_supplied_outcome_updates_the_posterior(oscillator):
    loop = simfer.ExperimentLoop(oscillator, oscillator.prior(), designs=[0.1, 0.2, 0.5], **FAST)
    assert loop.posterior is None
    design = loop.suggest()
    outcome = torch.tensor([0.5, 0.1, -0.2, -0.3])
    posterior = loop.observe(design, outcome)
    assert posterior is loop.posterior and loop.n_rounds == 1
    mean, std = _analytic(oscillator, outcome[None], design[None])
    assert ((torch.tensor(loop.history[0].posterior_mean) - mean).abs() / std).max() < 0.3
    with pytest.raises(ShapeError, match="outcome has shape"):
        loop.observe(design, torch.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        loop.observe(design, torch.full((4,), float("nan")))
    with pytest.raises(ShapeError, match="design has 1"):
        loop.observe([0.1, 0.2], outcome)


def test_a_campaign_resumes_where_it_stopped(oscillator, tmp_path):
    def fresh():
        return simfer.ExperimentLoop(
            oscillator, oscillator.prior(), designs=torch.linspace(0, 1, 21), seed=3, **FAST
        )

    truth = torch.tensor([0.3, 0.9])
    straight = fresh()
    straight.run(3, nature=truth)
    interrupted = fresh()
    interrupted.run(2, nature=truth)
    interrupted.save(tmp_path / "campaign")
    resumed = simfer.ExperimentLoop.load(tmp_path / "campaign", prior=oscillator.prior())
    assert resumed.n_rounds == 2 and resumed.posterior is not None
    resumed.run(1, nature=truth)
    assert [r.design for r in resumed.history] == [r.design for r in straight.history]
    assert torch.allclose(
        torch.tensor(resumed.history[-1].posterior_mean),
        torch.tensor(straight.history[-1].posterior_mean),
    )
    fig = resumed.plot(truth=0.3)
    assert len(fig.axes) == 2


def test_clear_errors(oscillator, tmp_path):
    board = simulators.GaltonBoard()
    with pytest.raises(ShapeError, match="takes no design"):
        simfer.ExperimentLoop(board, simfer.BoxUniform([-1.0], [1.0]), designs=[0.0])
    with pytest.raises(ShapeError, match="n_candidates"):
        simfer.ExperimentLoop(oscillator, oscillator.prior(), designs=torch.zeros(2, 3))
    with pytest.raises(FileNotFoundError, match="no experiment loop"):
        simfer.ExperimentLoop.load(tmp_path / "nothing")
    loop = simfer.ExperimentLoop(oscillator, oscillator.prior(), designs=[0.2], **FAST)
    loop.save(tmp_path / "normal")
    with pytest.raises(SimferError, match="pass prior="):
        simfer.ExperimentLoop.load(tmp_path / "normal")


def test_a_surrogate_loop_flags_thin_training_support_and_refines(tmp_path):
    from conftest import GAUSSIAN_PRIOR, ProjectionSensor
    from torch.distributions import Independent, Uniform

    sensor = ProjectionSensor()
    designs = Independent(Uniform(torch.tensor([0.0]), torch.tensor([1.0])), 1)
    data = simfer.simulate(
        sensor, GAUSSIAN_PRIOR, n=1500, design=designs, executor="serial", seed=0, progress=False
    )
    nle = simfer.LikelihoodEstimator(max_epochs=15, progress=False).fit(data)
    loop = simfer.ExperimentLoop(
        sensor,
        GAUSSIAN_PRIOR,
        designs=torch.linspace(0, 1, 11),
        estimator=nle,
        training_theta=data.theta,
        min_training_support=400,
        n_posterior=500,
        sampler=dict(n_chains=20, warmup=30),
    )
    # ten repeats at two designs pin θ down to σ/√10 ≈ 0.1 per direction: the 99 % box
    # (±0.25) around (1, 1) holds ≈ 0.06 · 0.25 · 1500 ≈ 20 of the prior-drawn θ
    truth = torch.tensor([[1.0, 1.0]])

    def measure(d: float) -> torch.Tensor:
        return sensor.simulate(truth.expand(10, 2), design=torch.full((10, 1), d), seed=int(10 * d))

    first = loop.suggest()  # the EIG of the NLE surrogate, outcomes from the simulator
    assert first.shape == (1,) and loop._pending.notes
    loop.observe([0.0], measure(0.0))  # θ_2 still free: the box is wide
    with pytest.warns(UserWarning, match="training simulations lie"):
        loop.observe([0.5], measure(0.5))
    assert loop.history[-1].training_support < 400
    # the exact posterior of the 20 outcomes (linear Gaussian, prior N(0, I))
    u = ProjectionSensor.direction(torch.tensor([[0.0]] * 10 + [[0.5]] * 10)).double()
    x = torch.cat([measure(0.0), measure(0.5)]).double()
    cov = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + u.T @ u / sensor.sigma**2)
    exact = cov @ (u * x).sum(0) / sensor.sigma**2
    low, high = loop.posterior_box()
    error_before = (loop.belief_draws().mean(0).double() - exact).norm()
    combined = loop.refine(data, 600)
    assert len(combined) == 2100 and loop.estimator is not nle
    new_theta = combined.theta[1500:]
    assert bool(((new_theta >= low) & (new_theta <= high)).all())  # drawn in the old box
    # a surrogate that had few simulations where the posterior lives improves with them
    error_after = (loop.belief_draws().mean(0).double() - exact).norm()
    assert error_after < error_before
