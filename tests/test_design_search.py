"""Design search in a continuous box and greedy batches (`simfer.design.search`)."""

from __future__ import annotations

import pytest
import torch

import simfer
import simulators


@pytest.fixture(scope="module")
def oscillator():
    return simulators.LinearGaussianDesign()


def test_search_finds_a_design_as_informative_as_the_analytic_best(oscillator):
    result = simfer.design.search(
        oscillator, oscillator.prior(), [0.0], [1.0], n_outer=1500, n_inner=1000, progress=False
    )
    found = result.best()
    fine = torch.linspace(0, 1, 10_001)[:, None]
    truth = oscillator.analytic_eig(fine)
    # the search is right when the design it returns is as informative as the true best, up
    # to the Monte-Carlo error of comparing two designs (≤ 3 stderr of one value bounds it)
    stderr = float(result.stderr[result.best_index])
    assert float(truth.max() - oscillator.analytic_eig(found[None])[0]) <= 3 * stderr
    assert abs(float(found[0]) - float(fine[truth.argmax(), 0])) < 0.05
    assert "final step" in result.notes[-1]
    assert result.designs.shape[0] == 4 * 41  # four stages of 41 points


def test_search_in_two_dimensions_stays_in_the_box():
    sim = simulators.LinearGaussianDesign(design_dim=2)
    result = simfer.design.search(
        sim,
        sim.prior(),
        [0.05, 0.0],
        [1.0, 0.5],
        n_grid=5,
        n_zoom=1,
        n_outer=300,
        n_inner=300,
        progress=False,
    )
    assert result.designs.shape == (50, 2)
    assert bool((result.designs[:, 0] >= 0.05).all() and (result.designs[:, 1] <= 0.5).all())


def test_search_refuses_an_empty_box(oscillator):
    with pytest.raises(simfer.ShapeError, match="low < high"):
        simfer.design.search(oscillator, oscillator.prior(), [1.0], [0.5])


def test_joint_experiments_multiply_likelihoods(oscillator):
    joint = simfer.design.JointExperiments(oscillator, 2)
    theta = torch.tensor([[0.3, -0.2]])
    design = torch.tensor([[0.1, 0.6]])
    x = joint.simulate(theta, design, seed=0)
    assert x.shape == (1, 2, 4)
    expected = oscillator.log_likelihood(x[:, 0], theta, design[:, :1]) + oscillator.log_likelihood(
        x[:, 1], theta, design[:, 1:]
    )
    torch.testing.assert_close(joint.log_likelihood(x, theta, design), expected)


def test_greedy_batch_adds_information_and_matches_the_analytic_greedy_choice(oscillator):
    grid = torch.linspace(0, 1, 21)
    chosen, steps = simfer.design.greedy_batch(
        oscillator, oscillator.prior(), grid, 2, n_outer=1500, n_inner=1500, progress=False
    )
    assert chosen.shape == (2, 1)
    assert float(steps[1].eig.max()) > float(steps[0].eig.max())  # a second experiment helps
    # the analytic joint EIG of (d_1, d): ½ log det(I + Σ_j X_jᵀX_j / σ²)
    matrices = oscillator.design_matrix(grid[:, None]).double()
    first = matrices[grid.sub(chosen[0, 0]).abs().argmin()]
    gain = torch.eye(2, dtype=torch.float64) + (first.T @ first + matrices.mT @ matrices) / 0.25
    analytic = 0.5 * torch.logdet(gain)
    picked = analytic[grid.sub(chosen[1, 0]).abs().argmin()]
    stderr = float(steps[1].stderr.max())
    assert float(analytic.max() - picked) <= 3 * stderr
