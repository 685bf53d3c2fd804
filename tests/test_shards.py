"""Sharded runs (``simfer.simulate(..., shard=(i, N))``) and `simfer.merge_stores`: shards
of one seed merge into exactly the unsharded run, row for row (gold and failed rows
included), in this process and from real subprocesses, one of them SIGKILLed mid-run and
rerun; the merges and shard arguments that are refused, each with its reason."""

import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import h5py
import pytest
import torch
from conftest import assert_same_data
from shard_helpers import N_ROWS, PRIOR, RUN, board

import simfer
from simfer import StoreError
from simfer.store import SimulationStore

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory):
    """The test run without shards, in a store: what every merge must reproduce."""
    path = tmp_path_factory.mktemp("unsharded") / "run.h5"
    with pytest.warns(simfer.InvalidSimulationWarning):
        data = simfer.simulate(board(), PRIOR, N_ROWS, path=path, progress=False, **RUN)
    return path, data


def simulate_shards(folder: Path, count: int) -> list[Path]:
    """The stores of the ``count`` shards of the test run, simulated here."""
    paths = [folder / f"shard{index}.h5" for index in range(count)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", simfer.InvalidSimulationWarning)
        for index, path in enumerate(paths):
            simfer.simulate(
                board(), PRIOR, N_ROWS, shard=(index, count), path=path, progress=False, **RUN
            )
    return paths


def test_shards_hold_a_partition_of_the_chunks_and_merge_into_the_unsharded_run(
    unsharded, tmp_path
):
    path, data = unsharded
    assert data.n_invalid > 0 and data.has_gold  # failed rows of both kinds, and gold
    with pytest.warns(simfer.InvalidSimulationWarning):
        shards = [
            simfer.simulate(board(), PRIOR, N_ROWS, shard=(i, 4), path=tmp_path / f"s{i}.h5", **RUN)
            for i in range(4)
        ]
    # shard i holds chunks i, i+4, …: 9 chunks of 25 rows, the last of 5
    assert [len(s) for s in shards] == [55, 50, 50, 50]
    rows = torch.arange(N_ROWS)
    for i, shard in enumerate(shards):
        mine = (rows // 25) % 4 == i
        assert_same_data(shard, data.subset(mine))
    out = tmp_path / "merged.h5"
    merged = simfer.merge_stores([tmp_path / f"s{i}.h5" for i in (2, 0, 3, 1)], out)
    assert_same_data(merged, data)
    assert_same_data(simfer.load_simulations(out), simfer.load_simulations(path))
    assert SimulationStore.read_fingerprint(out) == SimulationStore.read_fingerprint(path)
    with h5py.File(out, "r") as file:  # stored in run order, each row once
        assert torch.equal(torch.as_tensor(file["row_index"][:]), rows)
    assert not out.with_name("merged.h5.merging").exists()

    # simulate() on the merged store with the run's arguments has nothing left to do
    class Forbidden(type(board())):
        def sample_with_latent(self, theta, design, generator):
            raise AssertionError("a complete merged store must not be simulated again")

    forbidden = Forbidden(n_rows=8)
    forbidden.describe = board().describe
    resumed = simfer.simulate(forbidden, PRIOR, N_ROWS, path=out, progress=False, **RUN)
    assert_same_data(resumed, data)


def test_shards_with_the_default_chunk_size_and_explicit_points(tmp_path):
    points = torch.linspace(-0.85, 0.65, 96)[:, None]
    run = dict(seed=3, gold=True, executor="serial", progress=False)
    whole = simfer.simulate(board(), theta=points, **run)  # default chunk size: ⌈96/32⌉ = 3
    paths = [tmp_path / f"p{i}.h5" for i in range(5)]
    for i, path in enumerate(paths):
        simfer.simulate(board(), theta=points, shard=(i, 5), path=path, **run)
    assert SimulationStore.read_fingerprint(paths[0])["chunk_size"] == 3
    merged = simfer.merge_stores(paths, tmp_path / "merged.h5")
    assert_same_data(merged, whole)
    torch.testing.assert_close(merged.theta, points, rtol=0, atol=0)


def test_merge_refuses_shards_of_other_runs_naming_both_files_and_the_key(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    simfer.simulate(board(), PRIOR, N_ROWS, shard=(0, 2), path=tmp_path / "a/s0.h5", **RUN)
    for name, changes in {
        "seed": dict(seed=12),
        "chunk_size": dict(chunk_size=20),
        "n_rows": dict(simulator=type(board())(n_rows=9)),
        "gold": dict(gold=False),
    }.items():
        other = tmp_path / "b" / f"{name}.h5"
        simulator = changes.pop("simulator", board())
        simfer.simulate(
            simulator, PRIOR, N_ROWS, shard=(1, 2), path=other, progress=False, **{**RUN, **changes}
        )
        with pytest.raises(StoreError, match=rf"s0.h5' and '.*{name}.h5'.*{name}"):
            simfer.merge_stores([tmp_path / "a/s0.h5", other], tmp_path / f"{name}_merged.h5")
        assert not (tmp_path / f"{name}_merged.h5").exists()
    three = tmp_path / "b" / "of_three.h5"
    simfer.simulate(board(), PRIOR, N_ROWS, shard=(1, 3), path=three, progress=False, **RUN)
    with pytest.raises(StoreError, match=r"shard.count: 's0.h5' has 2, 'of_three.h5' has 3"):
        simfer.merge_stores([tmp_path / "a/s0.h5", three], tmp_path / "m.h5")
    longer = tmp_path / "b" / "longer.h5"
    simfer.simulate(board(), PRIOR, N_ROWS + 5, shard=(1, 2), path=longer, progress=False, **RUN)
    with pytest.raises(StoreError, match=r"shard.n: 's0.h5' has 205, 'longer.h5' has 210"):
        simfer.merge_stores([tmp_path / "a/s0.h5", longer], tmp_path / "m.h5")


def test_merge_refuses_overlaps_gaps_and_foreign_stores(unsharded, tmp_path):
    path, data = unsharded
    paths = simulate_shards(tmp_path, 3)
    copy = tmp_path / "copy_of_shard1.h5"
    shutil.copy(paths[1], copy)
    with pytest.raises(StoreError, match=r"row 25 is held by both '.*shard1.h5' and '.*copy_of"):
        simfer.merge_stores([*paths, copy], tmp_path / "m.h5")
    with pytest.raises(StoreError, match=r"shard1.h5' is given twice"):
        simfer.merge_stores([paths[0], paths[1], paths[1]], tmp_path / "m.h5")
    with pytest.raises(StoreError, match=r"first row 25 \(chunk 1\): shard 1 of 3 was not given"):
        simfer.merge_stores([paths[0], paths[2]], tmp_path / "m.h5")
    with pytest.raises(StoreError, match="not a shard store"):
        simfer.merge_stores([paths[0], path], tmp_path / "m.h5")
    with pytest.raises(StoreError, match="exists already"):
        simfer.merge_stores(paths, path)
    with pytest.raises(FileNotFoundError, match="no shard store"):
        simfer.merge_stores([*paths, tmp_path / "nope.h5"], tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()

    # allow_missing: what there is; simulate() on the merged store fills the gap
    out = tmp_path / "partial.h5"
    partial = simfer.merge_stores([paths[0], paths[2]], out, allow_missing=True)
    held = (torch.arange(N_ROWS) // 25) % 3 != 1
    assert_same_data(partial, data.subset(held))
    with pytest.warns(simfer.InvalidSimulationWarning):
        filled = simfer.simulate(board(), PRIOR, N_ROWS, path=out, progress=False, **RUN)
    assert_same_data(filled, data)


def test_bad_shard_arguments_are_named(tmp_path):
    path = tmp_path / "s.h5"
    for shard in [(4, 4), (-1, 4), (0, 0), (1,), "0/4", (0.0, 2), (True, 2)]:
        with pytest.raises(ValueError, match=r"shard must be \(i, N\) with 0 ≤ i < N"):
            simfer.simulate(board(), PRIOR, 100, shard=shard, path=path, seed=1)
    with pytest.raises(ValueError, match="shard= needs an explicit seed="):
        simfer.simulate(board(), PRIOR, 100, shard=(0, 2), path=path)
    with pytest.raises(ValueError, match="shard= needs path="):
        simfer.simulate(board(), PRIOR, 100, shard=(0, 2), seed=1)
    with pytest.raises(ValueError, match="10 shards, but the run has only 4 chunks of 25 rows"):
        simfer.simulate(board(), PRIOR, 100, shard=(0, 10), path=path, seed=1, chunk_size=25)
    assert not path.exists()
    # an unsharded run never resumes a shard's store, nor a shard another shard's
    simfer.simulate(board(), PRIOR, N_ROWS, shard=(0, 2), path=path, progress=False, **RUN)
    with pytest.raises(StoreError, match="shard"):
        simfer.simulate(board(), PRIOR, N_ROWS, path=path, **RUN)
    with pytest.raises(StoreError, match="shard.index: store has 0, run has 1"):
        simfer.simulate(board(), PRIOR, N_ROWS, shard=(1, 2), path=path, **RUN)


# -- real subprocesses, one killed ------------------------------------------------------------
def start_shard(index: int, count: int, path: Path, calls: Path, sleep: float):
    """``python -c`` simulating one shard of the test run (tests/shard_helpers.py)."""
    code = (
        f"import sys; sys.path[:0] = [{str(TESTS)!r}, {str(ROOT)!r}]\n"
        f"from shard_helpers import run_shard\n"
        f"run_shard({index}, {count}, {str(path)!r})\n"
    )
    env = dict(
        os.environ, SIMFER_TEST_CALLS=str(calls), SIMFER_TEST_SLEEP=str(sleep), OMP_NUM_THREADS="1"
    )
    return subprocess.Popen(
        [sys.executable, "-W", "ignore", "-c", code],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err
    return out


@pytest.mark.slow  # four interpreters that import torch: 10–30 s, with the load of the machine
def test_shards_in_subprocesses_one_killed_and_rerun_merge_into_the_unsharded_run(
    unsharded, tmp_path
):
    _, data = unsharded
    paths = [tmp_path / f"shard{i}.h5" for i in range(3)]
    calls = [tmp_path / f"calls{i}" for i in range(3)]
    # shard 1 (chunks 1, 4, 7: rows 25–49, 100–124, 175–199) sleeps 0.5 s per chunk and is
    # killed once its first chunk is committed (its calls done, the next chunk's begun);
    # shards 0 and 2 run beside it.  A chunk whose batch raises (a θ < −0.9 in it) is one
    # call, then one per row as it is retried row by row.
    jammed = data.theta_simulated[:, 0] < -0.9

    def chunk_calls(k: int) -> int:
        return 1 + 25 * bool(jammed[25 * k : 25 * k + 25].any())

    slow = start_shard(1, 3, paths[1], calls[1], sleep=0.5)
    others = [start_shard(i, 3, paths[i], calls[i], sleep=0.0) for i in (0, 2)]
    deadline = time.time() + 120
    while time.time() < deadline and (
        not calls[1].exists() or len(calls[1].read_text()) <= chunk_calls(1)
    ):
        time.sleep(0.02)
    slow.send_signal(signal.SIGKILL)
    slow.wait()
    assert slow.returncode == -signal.SIGKILL
    # shard 0: chunks 0, 3, 6 (75 rows); shard 2: chunks 2, 5 and the last, 8, of 5 rows
    assert [int(finish(process)) for process in others] == [75, 55]
    partial = simfer.load_simulations(paths[1])
    assert 0 < len(partial) < 75 and len(partial) % 25 == 0  # whole chunks only
    with pytest.raises(StoreError, match=r"'.*shard1.h5' \(shard 1 of 3\) lacks them.*rerun"):
        simfer.merge_stores(paths, tmp_path / "merged.h5")

    with h5py.File(paths[1], "r") as file:
        stored = set(file["chunk_index"][: file.attrs["n_committed"]].tolist())
    calls[1].write_text("")
    rerun = start_shard(1, 3, paths[1], calls[1], sleep=0.0)
    assert int(finish(rerun)) == 75
    # only the chunks the killed shard lacked ran again
    assert len(calls[1].read_text()) == sum(chunk_calls(k) for k in {1, 4, 7} - stored)
    merged = simfer.merge_stores(paths, tmp_path / "merged.h5")
    assert_same_data(merged, data)
    with h5py.File(tmp_path / "merged.h5", "r") as file:
        assert torch.equal(torch.as_tensor(file["row_index"][:]), torch.arange(N_ROWS))
