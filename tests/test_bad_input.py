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


# -- a trained estimator's keyword-only evaluation methods -------------------------------------
small_shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3)
real_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64]),
    shape=small_shapes,
    elements=st.floats(-3, 3, width=32) | st.sampled_from([math.nan, math.inf]),
) | hnp.arrays(dtype=np.int64, shape=small_shapes, elements=st.integers(-2, 2))


@pytest.fixture(scope="module")
def trained(board):
    """One tiny estimator of each family, trained for an epoch (the tests need shapes)."""
    prior = simfer.BoxUniform([-1.0], [1.0])
    data = simfer.simulate(
        board, prior, 300, gold=True, theta_ref=[0.0], seed=0, executor="serial", progress=False
    )
    quick = dict(progress=False, seed=0, max_epochs=1)
    flows = dict(hidden=8, n_transforms=1, **quick)
    return {
        "carl": simfer.RatioEstimator("carl", hidden=(8,), **quick).fit(data),
        "nre": simfer.RatioEstimator("nre", hidden=(8,), **quick).fit(data),
        "sally": simfer.ScoreEstimator(hidden=(8,), **quick).fit(data),
        "nle": simfer.LikelihoodEstimator(**flows).fit(data),
        "npe": simfer.PosteriorEstimator(**flows).fit(data, prior),
    }


def evaluate(estimator, name, arguments):
    if name in ("carl", "nre"):
        return estimator.log_ratio(**arguments)
    if name == "sally":
        return estimator.score(x=arguments["x"], design=arguments["design"])
    arguments.pop("reference")
    return estimator.log_prob(**arguments)


@FAST
@given(
    name=st.sampled_from(["carl", "nre", "sally", "nle", "npe"]),
    argument=st.sampled_from(["x", "theta", "reference", "design"]),
    value=st.one_of(real_arrays, st.just("marginal"), st.just("evidence"), st.just([0.5])),
)
def test_evaluation_arguments_of_any_shape_and_dtype(trained, name, argument, value):
    """Two rows of x and θ with one of x, θ, the reference or the design replaced by anything:
    a finite result for the two rows, or a named error (ShapeError, ValueError; a TypeError
    for text where only the reference may be a word)."""
    arguments = dict(x=torch.zeros(2, 1), theta=torch.full((2, 1), 0.3), design=None)
    arguments["reference"] = "marginal" if name == "nre" else torch.zeros(1)
    arguments[argument] = value
    named = (
        (SimferError, ValueError, TypeError)
        if isinstance(value, str)
        else (SimferError, ValueError)
    )
    try:
        result = evaluate(trained[name], name, arguments)
    except named:
        return
    assert bool(torch.isfinite(result).all())
    if name == "sally" and argument == "x":  # t̂(x) depends on x alone: one row per x
        assert result.ndim == 2 and result.shape[1] == 1
    else:
        assert result.shape[0] == 2
    if argument == "design":  # none of these models takes a design
        raise AssertionError(f"{name} accepted design={value!r}")
