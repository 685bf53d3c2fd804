"""Simulators and a shard runner for tests/test_shards.py, in a module of their own so
that the subprocesses those tests start can import them (``python -c`` with tests/ on
the path)."""

import os
import time

import torch

import simfer
from simulators import GaltonBoard

#: The run every shard test simulates: 9 chunks of 25 rows (the last one of 5), gold and a
#: reference class.
N_ROWS = 205
RUN = dict(gold=True, theta_ref=[0.0], seed=11, chunk_size=25, executor="serial")
PRIOR = simfer.BoxUniform([-1.0], [1.0])


class FlakyBoard(GaltonBoard):
    """A Galton board with both kinds of failed rows, and gold on the others: a batch that
    holds a θ below −0.9 raises (so its chunk is retried row by row and those rows fail),
    and x is NaN where x was drawn at a θ above 0.7."""

    def sample_with_latent(self, theta, design, generator):
        if bool((theta[:, 0] < -0.9).any()):
            raise ValueError("the board jammed")
        x, path = super().sample_with_latent(theta, design, generator)
        return torch.where(theta[:, :1] > 0.7, torch.nan, x), path


class SlowBoard(FlakyBoard):
    """`FlakyBoard` that, at every simulator call, appends a character to the file named by
    $SIMFER_TEST_CALLS (if set), and sleeps $SIMFER_TEST_SLEEP seconds (default 0) before
    simulating a whole chunk (not before the one-row calls of a chunk retried row by
    row)."""

    def sample_with_latent(self, theta, design, generator):
        calls = os.environ.get("SIMFER_TEST_CALLS")
        if calls:
            with open(calls, "a") as file:
                file.write("x")
        if len(theta) > 1:
            time.sleep(float(os.environ.get("SIMFER_TEST_SLEEP", "0")))
        return super().sample_with_latent(theta, design, generator)


def board() -> SlowBoard:
    return SlowBoard(n_rows=8)


def run_shard(index: int, count: int, path: str) -> None:
    """Simulate shard ``index`` of ``count`` of the test run into ``path`` and print its
    number of rows."""
    data = simfer.simulate(
        board(), PRIOR, N_ROWS, shard=(index, count), path=path, progress=False, **RUN
    )
    print(len(data))
