"""Fixtures and helpers shared by the test modules (import a helper with
``from conftest import ...``)."""

import math

import pytest
import torch
from torch.distributions import Independent, Normal

import simfer
from simfer.data import RaggedSets
from simulators import GaltonBoard, ToyJets

#: θ ~ U(−1, 1): the prior of the one-parameter simulators' runs.
PRIOR = simfer.BoxUniform([-1.0], [1.0])

#: The ToyJets run of the set-valued store and estimator tests (with ``jets.prior()``).
JET_RUN = dict(gold=True, theta_ref=[4.0], seed=5, chunk_size=30, progress=False)


def pytest_configure(config):
    """The whole suite runs on one torch thread: its networks are small, and intra-op
    threads that compete with another process for the cores slow it down many times."""
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module on one torch thread: small networks and thousands of tiny MCMC chains
    are far faster (and steadier on a shared machine) without intra-op threading."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_markdown_examples(path) -> None:
    """Run every ```python block of the markdown file ``path`` in order, in one namespace,
    padded so that a traceback names the line in the file; the global torch generator is
    left as it was (the examples may seed it)."""
    import re
    from pathlib import Path

    text = Path(path).read_text()
    blocks = [
        (text.count("\n", 0, match.start(1)), match.group(1))
        for match in re.finditer(r"```python\n(.*?)```", text, flags=re.S)
    ]
    assert blocks, f"{path} holds no python example"
    namespace: dict = {}
    with torch.random.fork_rng():
        for first_line, block in blocks:
            exec(compile("\n" * first_line + block, str(path), "exec"), namespace)


def assert_same_data(a: simfer.SimulationData, b: simfer.SimulationData) -> None:
    """The same columns, bit for bit (NaN equal to NaN; sets: the same sizes and elements)."""
    assert a.columns().keys() == b.columns().keys()
    for name, column in a.columns().items():
        other = b.columns()[name]
        if isinstance(column, RaggedSets):  # set-valued x: the same sizes and elements
            assert isinstance(other, RaggedSets), name
            torch.testing.assert_close(column.offsets, other.offsets, rtol=0, atol=0)
            column, other = column.values, other.values
        torch.testing.assert_close(column, other, rtol=0, atol=0, equal_nan=True)


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


@pytest.fixture(scope="session")
def small_board():
    """A Galton board of 8 rows: cheap gold for the simulate and store tests."""
    return GaltonBoard(n_rows=8)


@pytest.fixture(scope="session")
def small_board_run(small_board):
    """300 simulations of `small_board` with gold and θ_ref = 0, in this process, in chunks
    of 40: the table that other executors and the store must reproduce."""
    return simfer.simulate(
        small_board,
        PRIOR,
        300,
        gold=True,
        theta_ref=[0.0],
        seed=42,
        chunk_size=40,
        executor="serial",
        progress=False,
    )


@pytest.fixture(scope="session")
def jets():
    return ToyJets()


class ProjectionSensor(simfer.TractableSimulator):
    """x = u(d)·θ + ε with u(d) = (cos πd, sin πd) and ε ~ N(0, σ²): each measurement sees θ
    projected on a direction that the design d ∈ [0, 1] turns; a linear-Gaussian model."""

    sigma = 0.3

    def __init__(self):
        super().__init__(2, (1,), design_dim=1, name="projection_sensor")

    @staticmethod
    def direction(design):
        angle = math.pi * torch.as_tensor(design)[:, 0]
        return torch.stack([angle.cos(), angle.sin()], -1)

    def sample(self, theta, design, generator):
        mean = (self.direction(design).to(theta) * theta).sum(-1, keepdim=True)
        noise = torch.randn(mean.shape, generator=generator, dtype=theta.dtype)
        return mean + self.sigma * noise

    def log_likelihood(self, x, theta, design=None):
        mean = (self.direction(design).to(theta) * theta).sum(-1)
        return Normal(mean, self.sigma).log_prob(torch.as_tensor(x)[:, 0].to(theta))


GAUSSIAN_PRIOR = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
