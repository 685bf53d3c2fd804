"""Ensembles of `PosteriorEstimator` (``n_ensemble``): the equal-weight mixture of E posterior
networks, q(θ|x) = (1/E) Σ_e q_e(θ|x), trained one after another (`fit_members`) and sampled
by picking a member per draw.  GaussianLinear(dim=2): θ ~ N(0, 0.1 I), x | θ ~ N(θ, 0.1 I),
so p(θ|x) = N(x/2, 0.05 I)."""

import copy
import math

import pytest
import torch

import simfer
from simfer.estimators.members import member_seeds
from simulators import GaussianLinear

E = 3
FAST = dict(progress=False, max_epochs=25, batch_size=64, hidden=16, n_transforms=2, seed=0)


@pytest.fixture(scope="module")
def data():
    simulator = GaussianLinear(dim=2)
    return simfer.simulate(
        simulator, simulator.prior(), 400, seed=0, executor="serial", progress=False
    )


@pytest.fixture(scope="module")
def ensemble(data):
    return simfer.PosteriorEstimator(n_ensemble=E, **FAST).fit(data)


def test_the_ensemble_is_the_mixture_of_its_members(ensemble, data):
    """log q = logsumexp_e log q_e − log E, member by member; member 0 is the single fit of
    the same seed (weights and all), and the others differ from it by their seeds."""
    single = simfer.PosteriorEstimator(**FAST).fit(data)
    theta, x = data.theta[:50], data.x[:50]
    members = ensemble.network.members
    with torch.no_grad():
        summary = members[0].embed(x)
        each = torch.stack([m.log_prob_given_summary(theta, summary) for m in members])
        mixture = ensemble.log_prob(theta=theta, x=x)
        torch.testing.assert_close(mixture, each.logsumexp(0) - math.log(E))
        torch.testing.assert_close(each[0], single.log_prob(theta=theta, x=x))
    assert bool((each[1] - each[0]).abs().max() > 1e-3)
    assert len(ensemble.member_histories) == E
    assert ensemble.history is ensemble.member_histories[0]
    assert len(set(member_seeds(0, E))) == E


def test_draws_come_from_every_member_in_equal_shares(ensemble):
    """Each draw's member is uniform.  Shifting member e's θ standardisation by 100·e makes
    the member of every draw readable from it; with 3000 draws each member makes 1000 ± 26
    (binomial standard deviation), asserted within 5 of them."""
    shifted = copy.deepcopy(ensemble)
    for e, member in enumerate(shifted.network.members):
        member._transform._transforms[0].standardize.mean += 100.0 * e
    draws = shifted.sample(3000, x=torch.tensor([0.2, -0.1]), seed=3)
    assert draws.shape == (3000, 2)
    member = torch.round(draws[:, 0] / 100).long()
    counts = torch.bincount(member, minlength=E)
    assert counts.sum() == 3000 and counts.numel() == E
    assert bool(((counts - 1000).abs() < 5 * math.sqrt(3000 * (1 / E) * (1 - 1 / E))).all())


def test_an_ensemble_saves_loads_and_streams(data, ensemble, tmp_path):
    ensemble.save(tmp_path / "npe5.pt")
    loaded = simfer.load(tmp_path / "npe5.pt")
    assert loaded.n_ensemble == E and len(loaded.network.members) == E
    theta, x = data.theta[:20], data.x[:20]
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.log_prob(theta=theta, x=x), ensemble.log_prob(theta=theta, x=x)
        )
    path = tmp_path / "linear.h5"
    simulator = GaussianLinear(dim=2)
    simfer.simulate(
        simulator, simulator.prior(), 400, seed=0, executor="serial", path=path, progress=False
    )
    streamed = simfer.PosteriorEstimator(n_ensemble=2, max_memory=0, **FAST).fit(path)
    assert len(streamed.member_histories) == 2
    assert all(len(h.train_loss) > 0 for h in streamed.member_histories)


def test_ensemble_settings_are_checked():
    with pytest.raises(ValueError, match="n_ensemble must be an integer ≥ 1"):
        simfer.PosteriorEstimator(n_ensemble=0)
    with pytest.raises(ValueError, match="n_ensemble > 1 needs embedding=None"):
        simfer.PosteriorEstimator(n_ensemble=2, embedding=torch.nn.Linear(2, 2))
