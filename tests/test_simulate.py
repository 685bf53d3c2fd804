"""simfer.simulate: executors, the reference class, failed simulations, bad arguments.
The store it writes is tested in test_store.py."""

import h5py
import pytest
import torch
from conftest import PRIOR, assert_same_data, simulate_on_local_dask

import simfer
from simfer import InvalidSimulationWarning, ShapeError, SimulatorError, SupportError


def test_columns_and_reference_class(small_board_run):
    data = small_board_run
    assert len(data) == 300 and data.n_invalid == 0
    assert data.x.shape == (300, 1) and data.joint_score.shape == (300, 1)
    assert int(data.from_reference.sum()) == 150  # exactly half, spread evenly
    simulated = data.theta_simulated
    torch.testing.assert_close(simulated[data.from_reference], torch.zeros(150, 1))
    torch.testing.assert_close(simulated[~data.from_reference], data.theta[~data.from_reference])
    assert bool(((data.theta > -1) & (data.theta < 1)).all())


def test_local_processes_give_the_same_data(small_board, small_board_run):
    parallel = simfer.simulate(
        small_board,
        PRIOR,
        300,
        gold=True,
        theta_ref=[0.0],
        seed=42,
        chunk_size=40,
        executor="processes",
        n_workers=2,
        progress=False,
    )
    assert_same_data(parallel, small_board_run)


def test_dask_local_cluster_gives_the_same_data(small_board, small_board_run):
    data = simulate_on_local_dask(
        small_board, PRIOR, 300, gold=True, theta_ref=[0.0], seed=42, chunk_size=40, progress=False
    )
    assert_same_data(data, small_board_run)


@pytest.mark.parametrize("chunk_size", [None, 1])
def test_failed_simulations_are_flagged_counted_and_reported(chunk_size):
    def flaky(theta):
        if bool((theta < -0.9).any()):
            raise ValueError("solver diverged")
        return torch.where(theta > 0.8, torch.inf, theta**2)

    sim = simfer.Simulator.from_function(flaky, theta_dim=1)
    expected = r"returned NaN/inf, \d+ raised \(first: .*solver diverged"
    with pytest.warns(InvalidSimulationWarning, match=expected):
        data = simfer.simulate(
            sim, PRIOR, 400, seed=0, chunk_size=chunk_size, executor="serial", progress=False
        )
    theta = data.theta[:, 0]
    expected_invalid = (theta < -0.9) | (theta > 0.8)
    assert torch.equal(~data.valid, expected_invalid)
    assert data.n_invalid == int(expected_invalid.sum()) > 0
    assert torch.isnan(data.x[theta < -0.9]).all()  # θ kept, x marked missing
    clean = data.valid_only()
    torch.testing.assert_close(clean.x, clean.theta**2)


def test_a_simulator_that_always_raises_is_an_error_and_stores_nothing(tmp_path):
    """A bug, not a failure rate: stop early, and keep the store clean for the fixed code."""
    calls = tmp_path / "calls"  # the simulator runs on a (cloud-pickled) copy: count on disk

    def broken(theta):
        with open(calls, "a") as file:
            file.write("x")
        return 1 / 0

    sim = simfer.Simulator.from_function(broken, theta_dim=1)
    path = tmp_path / "broken.h5"
    with pytest.raises(SimulatorError, match="every simulation .* raised.*ZeroDivisionError"):
        simfer.simulate(sim, PRIOR, 1000, seed=0, chunk_size=1, path=path, executor="serial")
    assert len(calls.read_text()) == 16  # it gave up early instead of burning the budget
    with h5py.File(path, "r") as file:
        assert int(file.attrs["n_committed"]) == 0


def test_bad_arguments_get_named_errors(small_board):
    with pytest.raises(ShapeError, match="theta_dim=1"):
        simfer.simulate(small_board, simfer.BoxUniform([0.0, 0.0], [1.0, 1.0]), 10)
    positive = simfer.Simulator.from_function(
        torch.log, theta_dim=1, theta_support=torch.distributions.constraints.positive
    )
    with pytest.raises(SupportError, match="outside the support"):
        simfer.simulate(positive, PRIOR, 10, executor="serial", progress=False)
    with pytest.raises(ValueError, match="positive number"):
        simfer.simulate(small_board, PRIOR, 0)
    with pytest.raises(TypeError, match="simfer.Simulator"):
        simfer.simulate(lambda t: t, PRIOR, 10)
    with pytest.raises(simfer.GoldNotAvailableError):
        simfer.simulate(positive, PRIOR, 10, gold=True)
    with pytest.raises(TypeError, match="executor"):
        simfer.simulate(small_board, PRIOR, 10, executor="threads")


def test_progress_counts_finished_simulations(small_board, capsys):
    simfer.simulate(small_board, PRIOR, 90, seed=0, chunk_size=30, executor="serial", progress=True)
    assert "90/90" in capsys.readouterr().err
