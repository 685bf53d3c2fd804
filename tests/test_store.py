"""The HDF5 simulation store (`simfer.store`, written by ``simfer.simulate(path=...)`` and
read by `simfer.load_simulations`): round trip, resume and extend, the runs and files it
refuses (fingerprint, foreign, truncated, newer), a killed run, and stores of set-valued
x (half-written chunks, damaged ragged columns, failed sets, appending), compression."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import pytest
import torch
from conftest import JET_RUN, PRIOR, assert_same_data, simulate_on_local_dask

import simfer
import simfer.cli
from simfer import InvalidSimulationWarning, StoreError
from simfer.data import SimulationData
from simfer.store import SimulationStore
from simulators import GaltonBoard


# -- fixed-shape x -----------------------------------------------------------------------------
def test_store_round_trip_resume_and_extend(small_board, small_board_run, tmp_path):
    path = tmp_path / "small_board.h5"
    kwargs = dict(gold=True, theta_ref=[0.0], seed=42, chunk_size=40, executor="serial")
    stored = simfer.simulate(small_board, PRIOR, 300, path=path, progress=False, **kwargs)
    assert_same_data(stored, small_board_run)
    assert_same_data(simfer.load_simulations(path), small_board_run)

    class Forbidden(GaltonBoard):
        """Same fingerprint as the small_board, but any simulation is an error."""

        def sample_with_latent(self, theta, design, generator):
            raise AssertionError("a finished store must not be simulated again")

    forbidden = Forbidden(n_rows=8)
    forbidden.describe = small_board.describe
    assert_same_data(simfer.simulate(forbidden, PRIOR, 300, path=path, **kwargs), small_board_run)
    # a larger n extends the run: its rows stay, new ones follow (reproducibly) from the seed
    longer = simfer.simulate(small_board, PRIOR, 420, path=path, progress=False, **kwargs)
    assert_same_data(longer.subset(slice(0, 300)), small_board_run)
    again = tmp_path / "again.h5"
    simfer.simulate(small_board, PRIOR, 300, path=again, progress=False, **kwargs)
    assert_same_data(simfer.simulate(small_board, PRIOR, 420, path=again, **kwargs), longer)
    assert longer.theta[300:].unique().numel() == 120  # new draws, not repeats


def test_a_store_of_another_run_is_refused(small_board, tmp_path):
    path = tmp_path / "small_board.h5"
    simfer.simulate(small_board, PRIOR, 50, seed=1, path=path, executor="serial", progress=False)
    with pytest.raises(StoreError, match="prior"):
        simfer.simulate(
            small_board, simfer.BoxUniform([-2.0], [2.0]), 50, seed=1, path=path, executor="serial"
        )
    with pytest.raises(StoreError, match="n_rows"):
        simfer.simulate(GaltonBoard(n_rows=9), PRIOR, 50, path=path, executor="serial")
    with pytest.raises(StoreError, match="seed"):
        simfer.simulate(small_board, PRIOR, 50, seed=2, path=path, executor="serial")


def test_foreign_truncated_and_newer_files_are_refused(small_board, tmp_path):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as file:
        file["data"] = [1, 2, 3]
    with pytest.raises(StoreError, match="not a simfer simulation store"):
        simfer.load_simulations(foreign)
    with pytest.raises(StoreError, match="not a simfer simulation store"):
        simfer.simulate(small_board, PRIOR, 10, path=foreign, executor="serial")

    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"this is not hdf5" * 100)
    with pytest.raises(StoreError, match="truncated, corrupt"):
        simfer.load_simulations(garbage)

    good = tmp_path / "good.h5"
    simfer.simulate(small_board, PRIOR, 200, seed=3, path=good, executor="serial", progress=False)
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


# -- set-valued x ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def serial_jets(jets):
    return simfer.simulate(jets, jets.prior(), 160, executor="serial", **JET_RUN)


def test_ragged_runs_are_the_same_in_processes_and_through_the_store(jets, serial_jets, tmp_path):
    assert serial_jets.x.sizes.unique().numel() > 3  # sizes vary
    assert serial_jets.x.dtype == torch.float64
    processes = simfer.simulate(
        jets, jets.prior(), 160, executor="processes", n_workers=2, **JET_RUN
    )
    assert_same_data(processes, serial_jets)
    path = tmp_path / "jets.h5"
    stored = simfer.simulate(jets, jets.prior(), 160, path=path, executor="serial", **JET_RUN)
    assert_same_data(stored, serial_jets)
    assert_same_data(simfer.load_simulations(path), serial_jets)
    with h5py.File(path, "r") as file:
        assert "x" not in file  # no padded copy
        assert file["x.values"].shape == (int(serial_jets.x.sizes.sum()), 4)
        assert file["x.ends"].shape == (160,)
    longer = simfer.simulate(jets, jets.prior(), 220, path=path, executor="serial", **JET_RUN)
    assert_same_data(longer.subset(slice(0, 160)), serial_jets)


@pytest.mark.slow
def test_ragged_runs_are_the_same_on_a_dask_cluster(jets, serial_jets):
    assert_same_data(simulate_on_local_dask(jets, jets.prior(), 160, **JET_RUN), serial_jets)


def test_a_half_written_ragged_chunk_is_discarded(jets, tmp_path):
    path = tmp_path / "jets.h5"
    run = dict(seed=7, chunk_size=30, executor="serial", progress=False)
    first = simfer.simulate(jets, jets.prior(), 90, path=path, **run)
    # a kill while appending a fourth chunk: its elements and rows written, nothing committed
    with h5py.File(path, "r+") as file:
        n_values = file["x.values"].shape[0]
        file["x.values"].resize(n_values + 7, axis=0)
        file["x.values"][n_values:] = 99.0
        for name in file:
            if name != "x.values":
                file[name].resize(93, axis=0)
        file["x.ends"][90:] = n_values + torch.tensor([2, 5, 7]).numpy()
    assert_same_data(simfer.load_simulations(path), first)
    resumed = simfer.simulate(jets, jets.prior(), 120, path=path, **run)
    assert_same_data(resumed, simfer.simulate(jets, jets.prior(), 120, **run))
    assert not bool((resumed.x.values == 99.0).any())


def test_damaged_or_mismatched_ragged_stores_name_the_problem(jets, tmp_path, capsys):
    good = tmp_path / "good.h5"
    simfer.simulate(jets, jets.prior(), 60, seed=1, chunk_size=30, path=good, executor="serial")

    def damaged(name, edit):
        path = tmp_path / f"{name}.h5"
        shutil.copy(good, path)
        with h5py.File(path, "r+") as file:
            edit(file)
        return path

    no_ends = damaged("no_ends", lambda f: f.__delitem__("x.ends"))
    with pytest.raises(StoreError, match="no 'x.ends'"):
        simfer.load_simulations(no_ends)
    short = damaged("short", lambda f: f["x.values"].resize(3, axis=0))
    with pytest.raises(StoreError, match="holds only 3"):
        simfer.load_simulations(short)

    def decrease(file):
        file["x.ends"][5] = 0

    with pytest.raises(StoreError, match="non-decreasing"):
        simfer.load_simulations(damaged("decreasing", decrease))
    assert simfer.cli.main(["inspect", str(good)]) == 0
    assert "RaggedSets(n=60" in capsys.readouterr().out
    with SimulationStore.open(good, SimulationStore.read_fingerprint(good)) as store:
        dense = SimulationData(theta=torch.ones(2, 1), x=torch.zeros(2, 4))
        with pytest.raises(StoreError, match="fixed-shape 'x', the store holds set-valued"):
            store.append(5, 60, dense)


def sparks_sets(theta):
    """1 + ⌊5|θ|⌋ elements (θ, k), k = 0, 1, …: a set simulator whose output is checkable."""
    sizes = (1 + (5 * theta[:, 0].abs()).long()).tolist()
    return [
        torch.stack([t.expand(n), torch.arange(n, dtype=t.dtype)], 1)
        for t, n in zip(theta[:, 0], sizes, strict=True)
    ]


def assert_sparks(data: SimulationData) -> None:
    sets = data.x
    assert torch.equal(sets.sizes, 1 + (5 * data.theta[:, 0].abs()).long())
    rows = sets.row_ids()
    torch.testing.assert_close(sets.values[:, 0], data.theta[rows, 0])
    within = torch.arange(len(sets.values)) - sets.offsets[:-1][rows]
    torch.testing.assert_close(sets.values[:, 1], within.to(sets.dtype))


def test_failed_set_simulations_are_one_nan_element_and_stored(tmp_path):
    def sparks(theta):
        if float(theta[0]) > 0.6:
            raise ValueError("too hot")
        return sparks_sets(theta[None])[0]

    simulator = simfer.Simulator.from_function(
        sparks, theta_dim=1, x_shape=(None, 2), vectorized=False
    )
    path = tmp_path / "sparks.h5"
    with pytest.warns(InvalidSimulationWarning, match="raised"):
        data = simfer.simulate(
            simulator, PRIOR, 80, seed=2, chunk_size=10, path=path, executor="serial"
        )
    failed = ~data.valid
    assert bool(failed.any()) and torch.equal(failed, data.theta[:, 0] > 0.6)
    assert bool((data.x.sizes[failed] == 1).all())
    assert bool(data.x[failed].values.isnan().all())
    assert_sparks(data.valid_only())
    assert_same_data(simfer.load_simulations(path), data)


RAGGED_KILLABLE_SCRIPT = textwrap.dedent(
    """
    import os, sys, time, torch, simfer

    def sparks(theta):  # 1 + floor(5|θ|) elements (θ, k), k = 0, 1, …
        with open(os.environ["MARKER"], "a") as f:
            f.write("x")
        time.sleep(float(os.environ.get("SLEEP", "0")))
        sizes = (1 + (5 * theta[:, 0].abs()).long()).tolist()
        return [torch.stack([t.expand(n), torch.arange(n, dtype=t.dtype)], 1)
                for t, n in zip(theta[:, 0], sizes)]

    sim = simfer.Simulator.from_function(sparks, theta_dim=1, x_shape=(None, 2))
    prior = simfer.BoxUniform([-1.0], [1.0])
    data = simfer.simulate(sim, prior, 400, seed=9, chunk_size=20, path=sys.argv[1],
                           executor=sys.argv[2], n_workers=2, progress=False)
    print(len(data), int(data.x.sizes.sum()), float(data.x.values.sum()))
    """
)


@pytest.mark.slow
def test_a_killed_ragged_run_resumes_with_whole_sets(tmp_path):
    store = tmp_path / "killed.h5"
    calls = tmp_path / "calls"
    partial = kill_after_calls(tmp_path, store, RAGGED_KILLABLE_SCRIPT)
    assert 0 < len(partial) < 400 and len(partial) % 20 == 0
    assert_sparks(partial)
    calls.write_text("")
    out = run_script(tmp_path, store, "serial", sleep=0.0, source=RAGGED_KILLABLE_SCRIPT)
    assert len(calls.read_text()) == (400 - len(partial)) // 20  # only the missing chunks
    data = simfer.load_simulations(store)
    assert len(data) == 400
    assert_sparks(data)
    assert_same_data(data.subset(slice(0, len(partial))), partial)
    fresh = run_script(
        tmp_path, tmp_path / "fresh.h5", "processes", sleep=0.0, source=RAGGED_KILLABLE_SCRIPT
    )
    assert fresh == out


# -- compression -------------------------------------------------------------------------------
def test_compressed_stores_read_the_same_resume_and_merge_compressed(
    small_board, small_board_run, tmp_path
):
    kwargs = dict(gold=True, theta_ref=[0.0], seed=42, chunk_size=40, executor="serial")
    raw, gz = tmp_path / "raw.h5", tmp_path / "gz.h5"
    simfer.simulate(small_board, PRIOR, 300, path=raw, progress=False, **kwargs)
    data = simfer.simulate(
        small_board, PRIOR, 300, path=gz, compression="gzip", progress=False, **kwargs
    )
    assert_same_data(data, small_board_run)
    assert_same_data(simfer.load_simulations(gz), small_board_run)
    with h5py.File(gz, "r") as file:
        assert file.attrs["compression"] == "gzip"
        assert {file[name].compression for name in file} == {"gzip"}
    assert gz.stat().st_size < raw.stat().st_size
    # a resumed store keeps its compression, whatever the call says
    longer = simfer.simulate(small_board, PRIOR, 400, path=gz, progress=False, **kwargs)
    assert_same_data(longer.subset(slice(0, 300)), small_board_run)
    with h5py.File(gz, "r") as file:
        assert file["x"].compression == "gzip" and file["x"].shape == (400, 1)

    shards = [tmp_path / f"lzf{i}.h5" for i in range(2)]
    for i, path in enumerate(shards):
        simfer.simulate(
            small_board, PRIOR, 300, shard=(i, 2), path=path, compression="lzf", **kwargs
        )
    merged = simfer.merge_stores(shards, tmp_path / "merged.h5")
    assert_same_data(merged, small_board_run)
    with h5py.File(tmp_path / "merged.h5", "r") as file:
        assert file.attrs["compression"] == "lzf" and file["joint_score"].compression == "lzf"

    with pytest.raises(ValueError, match="compression must be None, 'gzip' or 'lzf', got 'zstd'"):
        simfer.simulate(small_board, PRIOR, 10, path=tmp_path / "z.h5", compression="zstd")
    with pytest.raises(ValueError, match="compression= applies to a store: pass path="):
        simfer.simulate(small_board, PRIOR, 10, compression="gzip")


def test_compressed_set_valued_stores(jets, serial_jets, tmp_path):
    path = tmp_path / "jets.h5"
    run = {**JET_RUN, "compression": "gzip"}
    stored = simfer.simulate(jets, jets.prior(), 160, path=path, executor="serial", **run)
    assert_same_data(stored, serial_jets)
    assert_same_data(simfer.load_simulations(path), serial_jets)
    with h5py.File(path, "r") as file:
        assert file["x.values"].compression == "gzip" and file["x.ends"].compression == "gzip"
