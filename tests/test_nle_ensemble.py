"""Ensembles of `LikelihoodEstimator` (``n_ensemble``): the equal-weight mixture of E flows,

    q(x|θ) = (1/E) Σ_e q_e(x|θ),   log q = logsumexp_e log q_e − log E,

trained one after another (each its own seed and early stopping, the same validation rows)
and sampled by picking a member uniformly per draw.  ``n_ensemble=1`` is the single flow
it always was.  GaussianLinear(dim=2): θ ~ N(0, 0.1 I), x | θ ~ N(θ, 0.1 I)."""

import math
import warnings

import pytest
import torch
from torch import nn

import simfer
from simfer.streaming import hashed_uniform
from simfer.training import InMemoryRows, TrainingConfig
from simulators import GaussianLinear

E = 3
# 400 rows, 360 of them trained on: 6 steps an epoch, 25 epochs, enough for the members'
# different initialisations and batch orders to leave them measurably different.
FAST = dict(progress=False, max_epochs=25, batch_size=64, hidden=16, n_transforms=2, seed=0)


@pytest.fixture(scope="module")
def gaussian():
    return GaussianLinear(dim=2)


@pytest.fixture(scope="module")
def data(gaussian):
    return simfer.simulate(
        gaussian, gaussian.prior(), 400, seed=0, executor="serial", progress=False
    )


@pytest.fixture(scope="module")
def single(data):
    return simfer.LikelihoodEstimator(**FAST).fit(data)


@pytest.fixture(scope="module")
def ensemble(data):
    return simfer.LikelihoodEstimator(n_ensemble=E, **FAST).fit(data)


@pytest.fixture(scope="module")
def points():
    generator = torch.Generator().manual_seed(1)
    theta = 0.3 * torch.randn(64, 2, generator=generator)
    return theta, theta + 0.3 * torch.randn(64, 2, generator=generator)


def member_log_probs(estimator, x, theta):
    """log q_e(x|θ) ``[E, batch]`` straight from the member flows."""
    with torch.no_grad():
        return torch.stack(
            [f.log_prob_given_summary(x, f.summarize(theta)) for f in estimator.network.flows]
        )


def test_one_member_is_the_single_flow(single, data, points):
    """n_ensemble=1 trains, evaluates and saves exactly what the estimator without the
    argument does: the same weights (under the same keys), log q and history."""
    theta, x = points
    one = simfer.LikelihoodEstimator(n_ensemble=1, **FAST).fit(data)
    assert torch.equal(one.log_prob(x=x, theta=theta), single.log_prob(x=x, theta=theta))
    assert torch.equal(
        one.sample(20, theta=theta[0], seed=4), single.sample(20, theta=theta[0], seed=4)
    )
    assert one.history == single.history and one.member_histories == [one.history]
    state, reference = one.network.state_dict(), single.network.state_dict()
    assert list(state) == list(reference) and all(
        k.startswith(("flow.", "validity.")) for k in state
    )
    assert all(torch.equal(state[k], reference[k]) for k in state)
    assert "n_ensemble" not in one.hyperparameters()  # its file reads as before ensembles


def test_log_prob_is_the_equal_weight_mixture(ensemble, gaussian, points):
    """log q = logsumexp_e log q_e − log E, computed here from the member flows; by the
    concavity of log it is ≥ the members' mean log q_e, strictly where they differ; and
    q(·|θ) integrates to 1 (a missing − log E would make it E)."""
    theta, x = points
    members = member_log_probs(ensemble, x, theta)
    assert members.shape == (E, 64)
    mixture = torch.logsumexp(members, 0) - math.log(E)
    torch.testing.assert_close(ensemble.log_prob(x=x, theta=theta), mixture)
    assert bool((mixture >= members.mean(0) - 1e-6).all())
    assert bool((mixture > members.mean(0) + 1e-4).any())
    # ∫ q(x|θ) dx on a grid over ±3 around θ: x|θ has spread ≈ 0.32, so the window holds
    # all but ~10⁻⁹ of the mass; the midpoint rule's error on a 0.02 grid is below 10⁻³.
    h = 0.02
    axis = torch.arange(-3 + h / 2, 3, h)
    grid = torch.cartesian_prod(axis, axis)
    at = torch.tensor([0.2, -0.1])
    with torch.no_grad():
        mass = float(ensemble.log_prob(x=grid + at, theta=at).exp().sum()) * h * h
    assert mass == pytest.approx(1.0, abs=0.01)


def test_members_differ_and_hold_out_the_same_rows(ensemble, data, points):
    """The members start from different weights and see the batches in different orders,
    so they end apart; each stopped on its own, on the validation rows the fit's seed splits
    off (its recorded best loss is its NLL on exactly those rows)."""
    theta, x = points
    members = member_log_probs(ensemble, x, theta)
    for a in range(E):
        for b in range(a + 1, E):
            assert float((members[a] - members[b]).abs().max()) > 1e-2
    histories = ensemble.member_histories
    assert len(histories) == E and histories[0] is ensemble.history
    assert len({tuple(h.train_loss[0]) for h in histories}) == E
    rows = InMemoryRows({"x": data.x, "theta": data.theta})
    rows.prepare(TrainingConfig(seed=FAST["seed"]), torch.device("cpu"))
    held_out = rows.validation_rows
    nll = -member_log_probs(ensemble, data.x[held_out], data.theta[held_out]).mean(1)
    best = torch.tensor([h.best_validation_loss[0] for h in histories])
    torch.testing.assert_close(nll, best)


def test_a_saved_ensemble_loads_on_cpu_identically(ensemble, points, tmp_path):
    theta, x = points
    ensemble.save(tmp_path / "ensemble.pt")
    state = torch.load(tmp_path / "ensemble.pt", weights_only=True)["state"]
    assert {k.split(".")[1] for k in state if k.startswith("flows.")} == {"0", "1", "2"}
    loaded = simfer.load(tmp_path / "ensemble.pt", device="cpu")
    assert isinstance(loaded, simfer.LikelihoodEstimator) and loaded.n_ensemble == E
    assert torch.equal(loaded.log_prob(x=x, theta=theta), ensemble.log_prob(x=x, theta=theta))
    assert torch.equal(loaded.score(x=x, theta=theta), ensemble.score(x=x, theta=theta))
    assert torch.equal(
        loaded.sample(30, theta=theta[:2], seed=5), ensemble.sample(30, theta=theta[:2], seed=5)
    )
    assert loaded.history == ensemble.history  # the first member's; the file keeps only it


def test_draws_come_from_the_mixture(ensemble):
    """Shapes, reproducibility, and the mixture's importance identity: for x ~ q,
    E[q_e(x)/q(x)] = ∫ q_e = 1 for every member e (checked within 4 standard errors).  Draws
    from member 0 alone break it (E[q_e/q] = ∫ q_0 q_e / q): the check has the power to see
    a sampler that ignored the other members."""
    at = torch.tensor([0.2, -0.1])
    assert ensemble.sample(7, theta=at).shape == (7, 2)
    assert ensemble.sample(5, theta=torch.zeros(3, 2)).shape == (3, 5, 2)
    assert torch.equal(ensemble.sample(50, theta=at, seed=2), ensemble.sample(50, theta=at, seed=2))

    def deviations(draws):
        """(mean of q_e/q − 1) / standard error, per member ``[E]``."""
        ratios = (
            member_log_probs(ensemble, draws, at.expand(len(draws), 2))
            - ensemble.log_prob(x=draws, theta=at)
        ).exp()
        return (ratios.mean(1) - 1) / (ratios.std(1) / math.sqrt(len(draws)))

    n = 20_000
    assert bool((deviations(ensemble.sample(n, theta=at, seed=3)).abs() < 4).all())
    member = ensemble.network.flows[0]
    with torch.no_grad(), simfer.seeding.seeded(3):
        alone = member.sample_given_summary(n, member.summarize(at[None]))[0]
    assert float(deviations(alone).abs().max()) > 4


def test_an_ensemble_posterior_sums_the_mixture_over_events(ensemble, gaussian):
    x_obs = gaussian.simulate(torch.full((4, 2), 0.1), seed=6)
    posterior = ensemble.posterior(gaussian.prior(), x_obs)
    theta = torch.tensor([[0.1, 0.1], [0.0, 0.3]])
    expected = torch.stack([ensemble.log_prob(x=x_obs, theta=row).sum() for row in theta])
    torch.testing.assert_close(posterior.log_likelihood(theta), expected)
    draws = posterior.sample(100, n_chains=20, warmup=20, seed=0)
    assert draws.shape == (100, 2) and bool(torch.isfinite(draws).all())


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "3", None])
def test_n_ensemble_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="n_ensemble must be an integer ≥ 1"):
        simfer.LikelihoodEstimator(n_ensemble=bad)


def test_an_ensemble_shares_one_fixed_embedding(data, points, tmp_path):
    """With a fixed summary s(x) every member models q_e(s(x)|θ); the one frozen embedding
    is shared (one copy of its weights in the file)."""
    theta, x = points
    torch.manual_seed(0)
    summary = nn.Linear(2, 2).requires_grad_(False)
    nle = simfer.LikelihoodEstimator(n_ensemble=2, embedding=summary, **FAST).fit(data)
    with torch.no_grad():
        s = summary(x)
    members = member_log_probs(nle, s, theta)
    torch.testing.assert_close(
        nle.log_prob(x=x, theta=theta), torch.logsumexp(members, 0) - math.log(2)
    )
    nle.save(tmp_path / "embedded.pt")
    state = torch.load(tmp_path / "embedded.pt", weights_only=True)["state"]
    assert sum(k.startswith("embedding.") for k in state) == 2  # weight and bias, once
    loaded = simfer.LikelihoodEstimator.load(tmp_path / "embedded.pt", embedding=nn.Linear(2, 2))
    assert torch.equal(loaded.log_prob(x=x, theta=theta), nle.log_prob(x=x, theta=theta))


def test_failures_keep_one_validity_classifier():
    """With failed simulations log q(x|θ) = log mixture(x|θ, valid) + log p(valid|θ), the
    second from one classifier whatever E."""

    def fragile(theta, generator):
        x = theta + 0.3 * torch.randn(theta.shape, generator=generator)
        failed = torch.rand(theta.shape, generator=generator) < 0.5 * torch.sigmoid(4 * theta)
        return torch.where(failed, torch.full_like(x, math.nan), x)

    simulator = simfer.Simulator.from_function(fragile, theta_dim=1, x_shape=(1,))
    prior = simfer.BoxUniform([-1.0], [1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", simfer.InvalidSimulationWarning)
        data = simfer.simulate(simulator, prior, 400, seed=0, executor="serial", progress=False)
    nle = simfer.LikelihoodEstimator(n_ensemble=2, **{**FAST, "max_epochs": 3}).fit(data)
    assert isinstance(nle.network.validity, simfer.estimators.likelihood.ValidityNetwork)
    theta = torch.linspace(-0.9, 0.9, 7)[:, None]
    x = torch.full((7, 1), 0.1)
    valid = nle.log_prob_valid(theta=theta)
    assert bool((valid < 0).all())
    mixture = torch.logsumexp(member_log_probs(nle, x, theta), 0) - math.log(2)
    torch.testing.assert_close(nle.log_prob(x=x, theta=theta), mixture + valid)


def test_each_member_checkpoints_and_a_finished_fit_resumes_to_the_same_model(
    data, points, tmp_path
):
    theta, x = points
    settings = dict(n_ensemble=2, checkpoint=str(tmp_path / "fit.pt"), **{**FAST, "max_epochs": 3})
    first = simfer.LikelihoodEstimator(**settings).fit(data)
    assert (tmp_path / "fit.pt").exists() and (tmp_path / "fit.pt.member1").exists()
    again = simfer.LikelihoodEstimator(**settings).fit(data)
    assert torch.equal(again.log_prob(x=x, theta=theta), first.log_prob(x=x, theta=theta))


def test_a_streamed_ensemble_trains_every_member(gaussian, points, tmp_path):
    """From a store streamed a buffer at a time (max_memory=0) the members, too, hold out
    the same rows and end apart."""
    theta, x = points
    path = tmp_path / "runs.h5"
    simfer.simulate(
        gaussian, gaussian.prior(), 400, seed=0, executor="serial", progress=False, path=path
    )
    settings = {**FAST, "max_epochs": 3}
    nle = simfer.LikelihoodEstimator(n_ensemble=2, max_memory=0, **settings).fit(path)
    assert len(nle.member_histories) == 2
    stored = simfer.load_simulations(path)
    held_out = torch.from_numpy(hashed_uniform(torch.arange(400), FAST["seed"]) < 0.1)
    nll = -member_log_probs(nle, stored.x[held_out], stored.theta[held_out]).mean(1)
    best = torch.tensor([h.best_validation_loss[0] for h in nle.member_histories])
    torch.testing.assert_close(nll, best)
    members = member_log_probs(nle, x, theta)
    assert float((members[0] - members[1]).abs().max()) > 1e-3
    torch.testing.assert_close(
        nle.log_prob(x=x, theta=theta), torch.logsumexp(members, 0) - math.log(2)
    )
