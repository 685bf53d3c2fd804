"""simfer.simulate: executors, the on-disk store, resuming after a kill, failed simulations."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import pytest
import torch

import simfer
from simfer import InvalidSimulationWarning, ShapeError, SimulatorError, StoreError, SupportError
from simfer.data import RaggedSets
from simulators import GaltonBoard

PRIOR = simfer.BoxUniform([-1.0], [1.0])


def assert_same_data(a: simfer.SimulationData, b: simfer.SimulationData) -> None:
    assert a.columns().keys() == b.columns().keys()
    for name, column in a.columns().items():
        other = b.columns()[name]
        if isinstance(column, RaggedSets):  # set-valued x: the same sizes and elements
            assert isinstance(other, RaggedSets), name
            torch.testing.assert_close(column.offsets, other.offsets, rtol=0, atol=0)
            column, other = column.values, other.values
        torch.testing.assert_close(column, other, rtol=0, atol=0, equal_nan=True)


@pytest.fixture(scope="module")
def board():
    return GaltonBoard(n_rows=8)


@pytest.fixture(scope="module")
def serial_run(board):
    return simfer.simulate(
        board,
        PRIOR,
        300,
        gold=True,
        theta_ref=[0.0],
        seed=42,
        chunk_size=40,
        executor="serial",
        progress=False,
    )


def test_columns_and_reference_class(serial_run):
    data = serial_run
    assert len(data) == 300 and data.n_invalid == 0
    assert data.x.shape == (300, 1) and data.joint_score.shape == (300, 1)
    assert int(data.from_reference.sum()) == 150  # exactly half, spread evenly
    simulated = data.theta_simulated
    torch.testing.assert_close(simulated[data.from_reference], torch.zeros(150, 1))
    torch.testing.assert_close(simulated[~data.from_reference], data.theta[~data.from_reference])
    assert bool(((data.theta > -1) & (data.theta < 1)).all())


def test_local_processes_give_the_same_data(board, serial_run):
    parallel = simfer.simulate(
        board,
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
    assert_same_data(parallel, serial_run)


def simulate_on_local_dask(*args, **kwargs) -> simfer.SimulationData:
    """`simfer.simulate(*args, **kwargs)` on a two-worker local Dask cluster."""
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        return simfer.simulate(*args, executor=client.get_executor(), **kwargs)


def test_dask_local_cluster_gives_the_same_data(board, serial_run):
    data = simulate_on_local_dask(
        board, PRIOR, 300, gold=True, theta_ref=[0.0], seed=42, chunk_size=40, progress=False
    )
    assert_same_data(data, serial_run)


def test_store_round_trip_resume_and_extend(board, serial_run, tmp_path):
    path = tmp_path / "board.h5"
    kwargs = dict(gold=True, theta_ref=[0.0], seed=42, chunk_size=40, executor="serial")
    stored = simfer.simulate(board, PRIOR, 300, path=path, progress=False, **kwargs)
    assert_same_data(stored, serial_run)
    assert_same_data(simfer.load_simulations(path), serial_run)

    class Forbidden(GaltonBoard):
        """Same fingerprint as the board, but any simulation is an error."""

        def sample_with_latent(self, theta, design, generator):
            raise AssertionError("a finished store must not be simulated again")

    forbidden = Forbidden(n_rows=8)
    forbidden.describe = board.describe
    assert_same_data(simfer.simulate(forbidden, PRIOR, 300, path=path, **kwargs), serial_run)
    # a larger n extends the run: its rows stay, new ones follow (reproducibly) from the seed
    longer = simfer.simulate(board, PRIOR, 420, path=path, progress=False, **kwargs)
    assert_same_data(longer.subset(slice(0, 300)), serial_run)
    again = tmp_path / "again.h5"
    simfer.simulate(board, PRIOR, 300, path=again, progress=False, **kwargs)
    assert_same_data(simfer.simulate(board, PRIOR, 420, path=again, **kwargs), longer)
    assert longer.theta[300:].unique().numel() == 120  # new draws, not repeats


def test_a_store_of_another_run_is_refused(board, tmp_path):
    path = tmp_path / "board.h5"
    simfer.simulate(board, PRIOR, 50, seed=1, path=path, executor="serial", progress=False)
    with pytest.raises(StoreError, match="prior"):
        simfer.simulate(
            board, simfer.BoxUniform([-2.0], [2.0]), 50, seed=1, path=path, executor="serial"
        )
    with pytest.raises(StoreError, match="n_rows"):
        simfer.simulate(GaltonBoard(n_rows=9), PRIOR, 50, path=path, executor="serial")
    with pytest.raises(StoreError, match="seed"):
        simfer.simulate(board, PRIOR, 50, seed=2, path=path, executor="serial")


def test_foreign_truncated_and_newer_files_are_refused(board, tmp_path):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as file:
        file["data"] = [1, 2, 3]
    with pytest.raises(StoreError, match="not a simfer simulation store"):
        simfer.load_simulations(foreign)
    with pytest.raises(StoreError, match="not a simfer simulation store"):
        simfer.simulate(board, PRIOR, 10, path=foreign, executor="serial")

    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"this is not hdf5" * 100)
    with pytest.raises(StoreError, match="truncated, corrupt"):
        simfer.load_simulations(garbage)

    good = tmp_path / "good.h5"
    simfer.simulate(board, PRIOR, 200, seed=3, path=good, executor="serial", progress=False)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(StoreError):
        simfer.load_simulations(truncated)

    with h5py.File(good, "r+") as file:
        file.attrs["format_version"] = 99
    with pytest.raises(StoreError, match="newer simfer"):
        simfer.load_simulations(good)


KILLABLE_SCRIPT = textwrap.dedent(
    """
    import os, sys, time, torch, simfer

    def slow_simulator(theta):  # defined in __main__: reaches workers by cloudpickle
        marker = os.environ["MARKER"]
        with open(marker, "a") as f:
            f.write("x")
        time.sleep(float(os.environ.get("SLEEP", "0")))
        return theta * 3 + 1

    sim = simfer.Simulator.from_function(slow_simulator, theta_dim=1)
    prior = simfer.BoxUniform([-1.0], [1.0])
    data = simfer.simulate(sim, prior, 400, seed=9, chunk_size=20, path=sys.argv[1],
                           executor=sys.argv[2], n_workers=2, progress=False)
    print(len(data), float(data.x.sum()))
    """
)


def run_script(
    tmp_path: Path,
    store: Path,
    executor: str,
    sleep: float,
    wait: bool = True,
    source: str = KILLABLE_SCRIPT,
):
    """Run ``source`` (a script simulating into ``store``) in a fresh process; each simulator
    call appends a character to ``tmp_path/calls``.  ``wait=False`` returns the process."""
    script = tmp_path / "killable.py"
    script.write_text(source)
    env = dict(os.environ, MARKER=str(tmp_path / "calls"), SLEEP=str(sleep))
    process = subprocess.Popen(
        [sys.executable, str(script), str(store), executor],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if wait:
        out, err = process.communicate(timeout=240)
        assert process.returncode == 0, err
        return out
    return process


def kill_after_calls(
    tmp_path: Path, store: Path, source: str = KILLABLE_SCRIPT, calls: int = 6
) -> simfer.SimulationData:
    """Start ``source`` serially, SIGKILL it after ``calls`` simulator calls, and return
    what its store holds then."""
    marker = tmp_path / "calls"
    process = run_script(tmp_path, store, "serial", sleep=0.1, wait=False, source=source)
    deadline = time.time() + 120
    while (not marker.exists() or len(marker.read_text()) < calls) and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return simfer.load_simulations(store)


def test_a_killed_run_resumes_without_lost_or_duplicated_rows(tmp_path):
    store = tmp_path / "killed.h5"
    calls = tmp_path / "calls"
    partial = kill_after_calls(tmp_path, store)
    assert 0 < len(partial) < 400
    assert len(partial) % 20 == 0  # whole chunks only
    calls.write_text("")
    out = run_script(tmp_path, store, "serial", sleep=0.0)
    resumed_calls = len(calls.read_text())
    assert resumed_calls == (400 - len(partial)) // 20  # only the missing chunks ran
    with h5py.File(store, "r") as file:
        rows = torch.as_tensor(file["row_index"][:])
    assert torch.equal(rows.sort().values, torch.arange(400))
    data = simfer.load_simulations(store)
    torch.testing.assert_close(data.x, data.theta * 3 + 1)
    assert out.split()[0] == "400"
    # the same run from scratch, in worker processes, gives identical rows
    calls.write_text("")
    fresh = run_script(tmp_path, tmp_path / "fresh.h5", "processes", sleep=0.0)
    assert fresh == out


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


def test_bad_arguments_get_named_errors(board):
    with pytest.raises(ShapeError, match="theta_dim=1"):
        simfer.simulate(board, simfer.BoxUniform([0.0, 0.0], [1.0, 1.0]), 10)
    positive = simfer.Simulator.from_function(
        torch.log, theta_dim=1, theta_support=torch.distributions.constraints.positive
    )
    with pytest.raises(SupportError, match="outside the support"):
        simfer.simulate(positive, PRIOR, 10, executor="serial", progress=False)
    with pytest.raises(ValueError, match="positive number"):
        simfer.simulate(board, PRIOR, 0)
    with pytest.raises(TypeError, match="simfer.Simulator"):
        simfer.simulate(lambda t: t, PRIOR, 10)
    with pytest.raises(simfer.GoldNotAvailableError):
        simfer.simulate(positive, PRIOR, 10, gold=True)
    with pytest.raises(TypeError, match="executor"):
        simfer.simulate(board, PRIOR, 10, executor="threads")


def test_progress_counts_finished_simulations(board, capsys):
    simfer.simulate(board, PRIOR, 90, seed=0, chunk_size=30, executor="serial", progress=True)
    assert "90/90" in capsys.readouterr().err
