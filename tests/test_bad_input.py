"""Property-based tests of the public entry points: any input gets a correct result or a
named simfer error (never an internal traceback, never a silent wrong answer)."""

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import simfer
from simfer import SimferError
from simulators import GaltonBoard, WeinbergAngle

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

arrays = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64, np.int64, np.bool_, np.complex64]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
)
float_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    elements=st.floats(allow_nan=True, allow_infinity=True, width=32),
)


@pytest.fixture(scope="module")
def board():
    return GaltonBoard(n_rows=4)


@FAST
@given(theta=st.one_of(arrays, float_arrays))
def test_theta_of_any_shape_and_dtype(board, theta):
    try:
        x = board.simulate(theta, seed=0)
    except SimferError:
        return
    theta_t = torch.as_tensor(theta)
    assert theta_t.ndim == 2 and theta_t.shape[1] == 1  # only a valid θ got through
    assert bool(torch.isfinite(theta_t).all()) and theta_t.dtype not in (torch.bool,)
    assert x.shape == (theta_t.shape[0], 1) and bool(torch.isfinite(x).all())


@FAST
@given(
    theta=float_arrays,
    design=st.one_of(st.none(), float_arrays, st.floats(allow_nan=True)),
)
def test_theta_and_design_of_any_shape_for_a_designed_experiment(theta, design):
    weinberg = WeinbergAngle(n_events=3)
    try:
        x = weinberg.simulate(theta, design, seed=0)
    except SimferError:
        return
    assert x.shape == (np.shape(theta)[0], 3)
    assert bool(((x >= -1) & (x <= 1)).all())


@FAST
@given(output=st.one_of(arrays, float_arrays, st.just("text"), st.just(None)))
def test_whatever_a_simulator_returns(output):
    sim = simfer.Simulator.from_function(lambda theta: output, theta_dim=2)
    try:
        x = sim.simulate(torch.zeros(2, 2), seed=0)
    except SimferError:
        return
    assert x.shape[0] == 2 and x.is_floating_point()


@FAST
@given(
    n=st.integers(min_value=1, max_value=60),
    chunk_size=st.integers(min_value=1, max_value=25),
    fraction=st.floats(min_value=0.05, max_value=0.95),
)
def test_simulate_returns_every_row_once_in_order(board, n, chunk_size, fraction):
    prior = simfer.BoxUniform([-1.0], [1.0])
    kwargs = dict(seed=1, chunk_size=chunk_size, executor="serial", progress=False)
    data = simfer.simulate(
        board, prior, n, gold=True, theta_ref=[0.2], reference_fraction=fraction, **kwargs
    )
    assert len(data) == n and data.n_invalid == 0
    assert int(data.from_reference.sum()) == math.floor(n * fraction)
    again = simfer.simulate(
        board, prior, n, gold=True, theta_ref=[0.2], reference_fraction=fraction, **kwargs
    )
    assert torch.equal(again.x, data.x) and torch.equal(again.theta, data.theta)


@FAST
@given(low=float_arrays, high=float_arrays)
def test_box_uniform_bounds(low, high):
    try:
        prior = simfer.BoxUniform(low, high)
    except (SimferError, ValueError):
        return
    sample = prior.sample((5,))
    assert sample.shape == (5, len(low))
    assert bool(torch.isfinite(prior.log_prob(sample)).all())


@FAST
@given(
    n=st.one_of(st.integers(-3, 0), st.floats(), st.just("10"), st.booleans()),
)
def test_simulate_rejects_a_bad_budget(board, n):
    with pytest.raises(ValueError):
        simfer.simulate(board, simfer.BoxUniform([-1.0], [1.0]), n, executor="serial")
