"""The Simulator interface: shapes, seeds, devices, and gold from Pyro programs."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import simfer
from simfer import GoldNotAvailableError, ShapeError, SimulatorError, SupportError


def tilted_board(theta, design=None):
    """The DESIGN.md example: 20 rows, θ-dependent bounce probability, Gaussian read-out."""
    pos = torch.zeros(theta.shape[0], dtype=theta.dtype)
    for row in range(20):
        p = torch.sigmoid(theta[:, 0] * (1 + 0.1 * pos))
        pos = pos + 2 * pyro.sample(f"z{row}", dist.Bernoulli(p)) - 1
    return pyro.sample("x", dist.Normal(pos, 0.5))


def tilted_board_joint_log_prob(theta, z, x):
    """log p(x,z|θ) of `tilted_board` written out by hand: ``z`` ``[batch, 20]``."""
    pos = torch.zeros(theta.shape[0], dtype=theta.dtype)
    total = torch.zeros_like(pos)
    for row in range(20):
        p = torch.sigmoid(theta[:, 0] * (1 + 0.1 * pos))
        total = total + z[:, row] * torch.log(p) + (1 - z[:, row]) * torch.log1p(-p)
        pos = pos + 2 * z[:, row] - 1
    return total + torch.distributions.Normal(pos, 0.5).log_prob(x)


def board_latents(sim, theta, seed):
    _, trace = sim.sample_with_latent(theta, None, simfer.seeding.make_generator(seed))
    return torch.stack([trace.nodes[f"z{r}"]["value"] for r in range(20)], dim=1)


def test_from_pyro_gold_equals_hand_computed_gold():
    sim = simfer.Simulator.from_pyro(tilted_board, theta_dim=1)
    theta = torch.linspace(-0.9, 0.9, 64, dtype=torch.float64)[:, None]
    theta_ref = torch.tensor([0.25], dtype=torch.float64)
    data = sim.simulate(theta, gold=True, theta_ref=theta_ref, seed=7)
    z = board_latents(sim, theta, seed=7)
    x = data.x[:, 0]
    expected_ratio = tilted_board_joint_log_prob(theta, z, x) - tilted_board_joint_log_prob(
        theta_ref.expand(64, 1), z, x
    )
    torch.testing.assert_close(data.joint_log_ratio, expected_ratio, rtol=0, atol=1e-12)
    # the score equals a central finite difference of the hand-written joint log density
    eps = 1e-6
    finite_difference = (
        tilted_board_joint_log_prob(theta + eps, z, x)
        - tilted_board_joint_log_prob(theta - eps, z, x)
    ) / (2 * eps)
    torch.testing.assert_close(data.joint_score[:, 0], finite_difference, rtol=1e-6, atol=1e-6)
    assert data.x.shape == (64, 1) and data.joint_score.shape == (64, 1)


def test_rsample_latent_does_not_leak_gradient_into_score():
    """z ~ N(θ, 1) drawn with rsample, x ~ N(z, 0.5): t(x,z|θ) = z − θ exactly."""

    def model(theta):
        z = pyro.sample("z", dist.Normal(theta[:, 0], 1.0))  # Normal has rsample
        return pyro.sample("x", dist.Normal(z, 0.5))

    sim = simfer.Simulator.from_pyro(model, theta_dim=1)
    theta = torch.linspace(-2, 2, 50, dtype=torch.float64)[:, None]
    data = sim.simulate(theta, gold=True, theta_ref=[0.0], seed=3)
    _, trace = sim.sample_with_latent(theta, None, simfer.seeding.make_generator(3))
    z = trace.nodes["z"]["value"]
    torch.testing.assert_close(data.joint_score[:, 0], z - theta[:, 0], rtol=0, atol=1e-12)
    expected = -0.5 * (z - theta[:, 0]) ** 2 + 0.5 * z**2  # log N(z;θ,1) − log N(z;0,1)
    torch.testing.assert_close(data.joint_log_ratio, expected, rtol=0, atol=1e-12)


def test_deterministic_observation_and_categorical_latent():
    centers = torch.tensor([-2.0, 0.0, 2.0], dtype=torch.float64)

    def model(theta):
        logits = torch.stack([theta[:, 0], torch.zeros_like(theta[:, 0]), -theta[:, 0]], dim=1)
        k = pyro.sample("k", dist.Categorical(logits=logits))
        e = pyro.sample("e", dist.Normal(theta[:, 1], 1.0))
        return pyro.deterministic("x", centers[k] + e)  # a function of the latents only

    sim = simfer.Simulator.from_pyro(model, theta_dim=2)
    theta = torch.tensor([[0.5, 0.1], [-1.0, 0.3], [2.0, -0.2]], dtype=torch.float64)
    data = sim.simulate(theta, gold=True, theta_ref=[0.0, 0.0], seed=11)
    _, trace = sim.sample_with_latent(theta, None, simfer.seeding.make_generator(11))
    k = trace.nodes["k"]["value"]
    # x is a function of (k, e, θ); only k's and e's densities enter log p(x,z|θ)
    logits = torch.stack([theta[:, 0], torch.zeros(3, dtype=theta.dtype), -theta[:, 0]], dim=1)
    log_pi = torch.log_softmax(logits, dim=1).gather(1, k[:, None])[:, 0]
    log_pi_ref = math.log(1 / 3)
    e = trace.nodes["e"]["value"]
    log_e_ratio = -0.5 * (e - theta[:, 1]) ** 2 + 0.5 * e**2  # log N(e;θ1,1) − log N(e;0,1)
    expected = log_pi - log_pi_ref + log_e_ratio
    torch.testing.assert_close(data.joint_log_ratio, expected, atol=1e-12, rtol=0)
    pi = torch.softmax(logits, dim=1)
    onehot = torch.nn.functional.one_hot(k, 3).to(theta.dtype)
    score_0 = onehot[:, 0] - onehot[:, 2] - (pi[:, 0] - pi[:, 2])
    torch.testing.assert_close(data.joint_score[:, 0], score_0, atol=1e-12, rtol=0)
    torch.testing.assert_close(data.joint_score[:, 1], e - theta[:, 1], atol=1e-12, rtol=0)
    torch.testing.assert_close(data.x[:, 0], trace.nodes["x"]["value"])


def test_deterministic_observation_that_moves_with_theta_is_refused():
    """x = z + θ1 is no random choice: the recorded choices' density misses θ1's effect."""

    def model(theta):
        z = pyro.sample("z", dist.Normal(theta[:, 0], 1.0))
        return pyro.deterministic("x", z + theta[:, 1])

    sim = simfer.Simulator.from_pyro(model, theta_dim=2)
    assert sim.simulate(torch.zeros(3, 2), seed=0).shape == (3, 1)  # plain simulation is fine
    with pytest.raises(SimulatorError, match="deterministic function of θ"):
        sim.simulate(torch.zeros(3, 2), gold=True, theta_ref=[0.0, 0.0])


def test_errors_and_nan_in_the_gold_are_named_and_flagged():
    class BrokenGold(simfer.Simulator):
        def __init__(self, fail):
            super().__init__(theta_dim=1, x_shape=(1,))
            self.fail = fail

        def sample_with_latent(self, theta, design, generator):
            return theta.clone(), None

        def joint_log_prob(self, x, latent, theta, design):
            if self.fail:
                raise ValueError("weights file missing")
            return torch.where(x[:, 0] > 0, torch.nan, 0.0) * theta[:, 0]

    with pytest.raises(SimulatorError, match="gold .* raised ValueError: weights file missing"):
        BrokenGold(fail=True).simulate(torch.zeros(2, 1), gold=True)
    data = BrokenGold(fail=False).simulate(torch.tensor([[-1.0], [1.0]]), gold=True)
    assert data.valid.tolist() == [True, False]


def test_named_observation_site_and_design():
    def model(theta, design):
        x = pyro.sample("signal", dist.Normal(theta[:, 0] * design[:, 0], 1.0))
        pyro.sample("nuisance", dist.Normal(torch.zeros_like(x), 1.0))
        return x

    sim = simfer.Simulator.from_pyro(model, theta_dim=1, observation="signal", design_dim=1)
    theta = torch.ones(4, 1)
    x_small = sim.simulate(theta, design=[0.0], seed=0)
    x_large = sim.simulate(theta, design=torch.full((4, 1), 100.0), seed=0)
    assert x_small.shape == (4, 1)
    torch.testing.assert_close(x_large - x_small, torch.full((4, 1), 100.0))
    with pytest.raises(ShapeError, match="needs a design"):
        sim.simulate(theta)
    bad = simfer.Simulator.from_pyro(model, theta_dim=1, observation="nope", design_dim=1)
    with pytest.raises(SimulatorError, match="no site named 'nope'"):
        bad.simulate(theta, design=[1.0])


def test_global_latent_without_batch_dimension_is_refused():
    def model(theta):
        shared = pyro.sample("shared", dist.Normal(0.0, 1.0))
        return pyro.sample("x", dist.Normal(theta[:, 0] + shared, 1.0))

    sim = simfer.Simulator.from_pyro(model, theta_dim=1)
    with pytest.raises(SimulatorError, match="leading dimension"):
        sim.simulate(torch.zeros(5, 1), gold=True, theta_ref=[0.0])


def test_seeds_reproduce_and_differ():
    sim = simfer.Simulator.from_pyro(tilted_board, theta_dim=1)
    theta = torch.zeros(32, 1)
    a = sim.simulate(theta, seed=1)
    assert torch.equal(a, sim.simulate(theta, seed=1))
    assert not torch.equal(a, sim.simulate(theta, seed=2))
    generator = torch.Generator().manual_seed(5)
    b = sim.simulate(theta, seed=generator)
    assert torch.equal(b, sim.simulate(theta, seed=torch.Generator().manual_seed(5)))
    # the global RNG is untouched by a seeded call
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    sim.simulate(theta, seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_from_function_torch_numpy_and_per_sample():
    def vectorised(theta, generator):
        return theta * 2 + torch.randn(theta.shape, generator=generator)

    def numpy_rows(theta, rng):
        return np.array([theta.sum(), rng.normal()])

    def unseeded(theta):
        return theta + torch.rand(theta.shape)

    theta = torch.randn(6, 3)
    a = simfer.Simulator.from_function(vectorised, theta_dim=3)
    assert torch.equal(a.simulate(theta, seed=4), a.simulate(theta, seed=4))
    b = simfer.Simulator.from_function(numpy_rows, theta_dim=3, vectorized=False, numpy=True)
    xb = b.simulate(theta, seed=4)
    assert xb.shape == (6, 2) and b.x_shape == (2,)
    torch.testing.assert_close(xb[:, 0], theta.sum(1))
    assert torch.equal(xb, b.simulate(theta, seed=4))
    c = simfer.Simulator.from_function(unseeded, theta_dim=3)
    assert torch.equal(c.simulate(theta, seed=8), c.simulate(theta, seed=8))
    with pytest.raises(GoldNotAvailableError, match="provides no gold"):
        c.simulate(theta, gold=True)


def test_subclass_with_its_own_gold_backend():
    """Level 3: a simulator that reweights its own events (no autograd): exponential decay."""

    class Decay(simfer.Simulator):
        def __init__(self):
            super().__init__(theta_dim=1, x_shape=(1,), theta_support=dist.constraints.positive)

        def sample_with_latent(self, theta, design, generator):
            u = torch.rand(theta.shape, generator=generator, dtype=theta.dtype)
            return -torch.log(u) / theta, None

        def joint_log_prob(self, x, latent, theta, design):
            return (torch.log(theta) - theta * x)[:, 0].detach().numpy() * 1.0

        def joint_score(self, x, latent, theta, design):
            return 1 / theta - x

    sim = Decay()
    theta = torch.full((10, 1), 2.0, dtype=torch.float64)
    data = sim.simulate(theta, gold=True, theta_ref=[1.0], seed=0)
    torch.testing.assert_close(data.joint_score, 1 / theta - data.x)
    torch.testing.assert_close(
        torch.as_tensor(data.joint_log_ratio), (math.log(2.0) - data.x[:, 0])
    )
    with pytest.raises(SupportError, match="outside the support"):
        sim.simulate(torch.tensor([[-1.0]]))


@pytest.mark.parametrize(
    "theta, message",
    [
        (torch.zeros(3), r"\[batch, theta_dim\].*theta\[:, None\]"),
        (torch.zeros(3, 2), r"\[batch, 1\]"),
        (torch.tensor([[float("nan")]]), "NaN"),
        (torch.tensor([[1 + 2j]]), "real numbers"),
        ("abc", "array-like"),
    ],
)
def test_bad_theta_gets_a_named_error(theta, message):
    sim = simfer.Simulator.from_pyro(tilted_board, theta_dim=1)
    with pytest.raises(simfer.SimferError, match=message):
        sim.simulate(theta)


def test_integer_theta_is_accepted_as_float():
    sim = simfer.Simulator.from_function(lambda t: t * 1.5, theta_dim=1)
    assert sim.simulate([[1], [2]]).dtype == torch.get_default_dtype()


def test_simulator_output_problems_are_named():
    wrong_batch = simfer.Simulator.from_function(lambda t: torch.zeros(3, 2), theta_dim=1)
    with pytest.raises(SimulatorError, match="returned shape"):
        wrong_batch.simulate(torch.zeros(5, 1))
    raising = simfer.Simulator.from_function(lambda t: 1 / 0, theta_dim=1, name="divider")
    with pytest.raises(SimulatorError, match="'divider' raised ZeroDivisionError"):
        raising.simulate(torch.zeros(5, 1))
    declared = simfer.Simulator.from_function(lambda t: t, theta_dim=1, x_shape=(4,))
    with pytest.raises(SimulatorError, match="declared x_shape"):
        declared.simulate(torch.zeros(2, 1))
    text = simfer.Simulator.from_function(lambda t: ["a"] * len(t), theta_dim=1)
    with pytest.raises(SimulatorError):
        text.simulate(torch.zeros(2, 1))


def test_nan_output_is_flagged_not_hidden():
    sim = simfer.Simulator.from_function(lambda t: torch.where(t > 0, torch.nan, t), theta_dim=1)
    data = sim.simulate(torch.tensor([[-1.0], [1.0]]), theta_ref=[0.0])
    assert data.valid.tolist() == [True, False]


def test_output_follows_theta_dtype_and_device():
    sim = simfer.Simulator.from_pyro(tilted_board, theta_dim=1)
    data = sim.simulate(torch.zeros(4, 1, dtype=torch.float64), gold=True, theta_ref=[0.1], seed=0)
    assert data.x.dtype == torch.float64 and data.joint_score.dtype == torch.float64
    assert data.x.device == torch.device("cpu")
