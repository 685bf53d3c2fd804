"""Set-valued x: RaggedSets, padding and packing, ToyJets, and the estimators on sets (the
stores of set-valued x are tested in test_store.py)."""

import math
import warnings

import pytest
import torch
from conftest import JET_RUN

import simfer
from simfer import ModelFileError, ShapeError
from simfer.data import (
    RaggedSets,
    SimulationData,
    pack_sets,
    pad_sets,
    set_sizes,
    unpack_sets,
)
from simfer.nn import DeepSets, LorentzNet
from simfer.training import TrainingConfig, fit_network, gather
from simulators.toyjets import truncated_exponential_log_prob


def sets_4_2_1() -> RaggedSets:
    """Two-feature sets of true sizes [4, 2, 1], with all-zero elements among them (the
    case where a mask derived from the values, as sbi's NaN padding does, miscounts)."""
    return RaggedSets.from_list(
        [
            torch.tensor([[0.0, 0.0], [1.0, 2.0], [0.0, 0.0], [3.0, 0.0]]),
            torch.tensor([[0.0, 0.0], [0.0, 5.0]]),
            torch.tensor([[0.0, 0.0]]),
        ]
    )


# -- RaggedSets and SimulationData -----------------------------------------------------------
def test_ragged_sizes_survive_padding_indexing_and_batching():
    sets = sets_4_2_1()
    assert sets.sizes.tolist() == [4, 2, 1]
    x, mask = sets.padded()
    assert x.shape == (3, 4, 2) and set_sizes(mask).tolist() == [4, 2, 1]
    reference_x, reference_mask = pad_sets(sets.as_list())
    assert torch.equal(x, reference_x) and torch.equal(mask, reference_mask)
    assert set_sizes(sets.padded(max_n=7)[1]).tolist() == [4, 2, 1]
    # a training batch is padded to its own largest set, not to the largest of all
    packed = gather({"x": sets}, torch.tensor([2, 1]))["x"]
    assert packed.shape == (2, 2, 3)
    batch_x, batch_mask = unpack_sets(packed)
    assert set_sizes(batch_mask).tolist() == [1, 2]
    assert torch.equal(batch_x[1], sets[1])
    assert sets[1:].sizes.tolist() == [2, 1]
    assert sets[torch.tensor([True, False, True])].sizes.tolist() == [4, 1]
    assert sets[torch.tensor([2, 0, 0])].sizes.tolist() == [1, 4, 4]
    assert torch.equal(sets[-1], torch.zeros(1, 2))
    assert RaggedSets.concatenate([sets, sets[1:]]).sizes.tolist() == [4, 2, 1, 2, 1]
    empty = RaggedSets.from_list([torch.zeros(0, 2), torch.ones(3, 2)])
    assert empty.sizes.tolist() == [0, 3] and empty.rows_finite().all()
    assert RaggedSets.nan_sets(2, 2).rows_finite().tolist() == [False, False]
    with pytest.raises(ShapeError, match="offsets must run from 0"):
        RaggedSets(torch.zeros(5, 2), torch.tensor([0, 2, 4]))
    with pytest.raises(ShapeError, match="non-decreasing"):
        RaggedSets(torch.zeros(5, 2), torch.tensor([0, 3, 2, 5]))


def test_simulation_data_subsets_and_concatenates_sets():
    x = RaggedSets.concatenate([sets_4_2_1(), RaggedSets.nan_sets(1, 2)])
    data = SimulationData(
        theta=torch.arange(4.0)[:, None],
        x=x,
        theta_ref=torch.full((4, 1), -1.0),
        from_reference=torch.tensor([False, True, False, False]),
    )
    assert data.is_set and data.x_shape == (None, 2)
    assert data.valid.tolist() == [True, True, True, False]  # NaN marks the failed row only
    assert data.valid_only().x.sizes.tolist() == [4, 2, 1]
    assert data.subset(torch.tensor([2, 0])).x.sizes.tolist() == [1, 4]
    assert data.theta_simulated[:, 0].tolist() == [0.0, -1.0, 2.0, 3.0]
    both = SimulationData.concatenate([data, data.subset(slice(1, 3))])
    assert both.x.sizes.tolist() == [4, 2, 1, 1, 2, 1] and len(both) == 6
    assert torch.equal(data[0]["x"], x[0])
    with pytest.raises(ValueError, match="set-valued x with fixed-shape x"):
        dense = SimulationData(**{**data.columns(), "x": torch.zeros(4, 2)})
        SimulationData.concatenate([data, dense])


def test_fit_network_pads_each_batch_to_its_own_largest_set():
    sizes = [1, 1, 1, 1, 9, 1, 1, 1]
    sets = RaggedSets.from_list([torch.ones(n, 2) for n in sizes])
    torch.manual_seed(0)
    network = DeepSets(2, 1, hidden=4)
    widths = []

    def loss_fn(net, batch, training):
        widths.append(batch["x"].shape[1])
        return net(*unpack_sets(batch["x"])).square().mean()[None]

    config = TrainingConfig(max_epochs=1, batch_size=2, validation_fraction=0.25, progress=False)
    fit_network(network, loss_fn, {"x": sets}, config)
    assert min(widths) == 1 and max(widths) == 9


# -- padding and packing (simfer.data, re-exported by simfer.nn) ------------------------------
def loop_padded(sets, max_n, padding_value):
    """The per-set loop that `pad_sets` replaces: the reference it must equal."""
    max_n = max(len(s) for s in sets) if max_n is None else max_n
    x = sets[0].new_full((len(sets), max_n, sets[0].shape[1]), padding_value)
    mask = torch.zeros(len(sets), max_n, dtype=torch.bool, device=sets[0].device)
    for b, s in enumerate(sets):
        x[b, : len(s)] = s
        mask[b, : len(s)] = True
    return x, mask


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.int64])
def test_pad_sets_equals_the_per_set_loop(device, dtype):
    """Same values, mask, dtype and device as a loop, with empty sets first, in the middle and
    last, all-zero elements, extra padding and a NaN padding value."""
    generator = torch.Generator().manual_seed(0)
    sizes = [0, 3, 0, 5, 1, 0]
    sets = [(10 * torch.randn(n, 3, generator=generator)).to(dtype).to(device) for n in sizes]
    sets[3][2] = 0  # a real element that is all zeros
    for max_n, padding_value in ((None, 0.0), (8, 0.0), (5, -1.0), (7, float("nan"))):
        if padding_value != padding_value and not dtype.is_floating_point:
            continue  # no NaN in an integer tensor
        expected_x, expected_mask = loop_padded(sets, max_n, padding_value)
        for given in (sets, RaggedSets.from_list(sets)):
            x, mask = pad_sets(given, max_n=max_n, padding_value=padding_value)
            assert x.dtype == dtype and x.device == expected_x.device
            assert mask.dtype == torch.bool and mask.device == expected_x.device
            torch.testing.assert_close(x, expected_x, rtol=0, atol=0, equal_nan=True)
            assert torch.equal(mask, expected_mask) and set_sizes(mask).tolist() == sizes
        x, mask = RaggedSets.from_list(sets).padded(max_n=max_n, padding_value=padding_value)
        torch.testing.assert_close(x, expected_x, rtol=0, atol=0, equal_nan=True)
    x, mask = pad_sets([torch.zeros(0, 2, dtype=dtype, device=device)] * 3)
    assert x.shape == (3, 0, 2) and mask.shape == (3, 0) and x.dtype == dtype


def test_pad_sets_names_bad_sets():
    with pytest.raises(ShapeError, match="max_n=3 is smaller than the largest set"):
        pad_sets([torch.randn(4, 3)], max_n=3)
    with pytest.raises(ShapeError, match="set 1 has 2 features"):
        pad_sets([torch.randn(4, 3), torch.randn(2, 2)])
    with pytest.raises(ShapeError, match="torch.float64"):
        pad_sets([torch.randn(4, 3), torch.randn(2, 3, dtype=torch.float64)])
    with pytest.raises(ShapeError, match="set 0 must be a 2-D tensor"):
        pad_sets([torch.randn(4)])
    with pytest.raises(ShapeError, match="at least one set"):
        pad_sets([])
    if torch.cuda.is_available():
        with pytest.raises(ShapeError, match="on cuda"):
            pad_sets([torch.randn(4, 3), torch.randn(2, 3, device="cuda")])


def test_pack_and_unpack_sets_round_trip_and_clear_the_padding():
    x, mask = pad_sets(sets_4_2_1().as_list(), max_n=6, padding_value=float("nan"))
    packed = pack_sets(x, mask)
    assert packed.shape == (3, 6, 3) and packed.dtype == x.dtype
    assert torch.equal(packed[..., -1], mask.to(x.dtype))
    unpacked_x, unpacked_mask = unpack_sets(packed)
    assert torch.equal(unpacked_mask, mask)
    assert torch.equal(unpacked_x[mask], x[mask])
    assert not bool(unpacked_x.isnan().any())  # junk in the padding does not travel on
    assert bool((unpacked_x[~mask] == 0).all())
    with pytest.raises(ShapeError, match="bool mask"):
        pack_sets(x, mask.float())
    with pytest.raises(ShapeError, match="bool mask"):
        pack_sets(x, mask[:, :3])
    with pytest.raises(ShapeError, match=r"features \+ 1"):
        unpack_sets(torch.zeros(3, 6))
    # the same functions under every public name
    assert simfer.nn.pad_sets is simfer.nn.sets.pad_sets is simfer.data.pad_sets
    assert simfer.nn.pack_sets is simfer.nn.sets.pack_sets is simfer.data.pack_sets
    assert simfer.nn.unpack_sets is simfer.nn.sets.unpack_sets is simfer.data.unpack_sets
    assert simfer.nn.set_sizes is simfer.nn.sets.set_sizes is simfer.data.set_sizes


# -- ToyJets -----------------------------------------------------------------------------------
def test_toyjets_conserves_four_momentum_and_sizes_vary(jets):
    theta = torch.linspace(2.0, 6.0, 400, dtype=torch.float64)[:, None]
    x = jets.simulate(theta, seed=0)
    assert isinstance(x, RaggedSets) and x.dtype == torch.float64 and x.features == 4
    total = torch.zeros(400, 4, dtype=torch.float64).index_add(0, x.row_ids(), x.values)
    energy = float(jets.root(1)[0, 0])
    torch.testing.assert_close(total, jets.root(400), rtol=0, atol=1e-9 * energy)
    mass2 = x.values[:, 0] ** 2 - x.values[:, 1:].square().sum(1)
    assert bool((mass2 <= jets.t_cut + 1e-6 * energy**2).all())
    assert bool((mass2 >= -1e-6 * energy**2).all())
    sizes = x.sizes
    assert int(sizes.min()) >= 2 and sizes.unique().numel() > 5
    assert sizes[:100].double().mean() > sizes[-100:].double().mean()  # larger λ, fewer
    _, latent = jets.sample_with_latent(theta, None, torch.Generator().manual_seed(0))
    assert torch.equal(latent.sizes, sizes - 1)  # a binary tree: one splitting fewer


def test_truncated_exponential_density_is_normalised():
    rate = torch.tensor([0.01, 1.0, 7.0], dtype=torch.float64)[:, None]
    upper = torch.tensor([3.0, 0.5, 2.0], dtype=torch.float64)[:, None]
    t = torch.linspace(0, 1, 20001, dtype=torch.float64)[None, :] * upper
    density = truncated_exponential_log_prob(t, rate, upper).exp()
    integral = torch.trapezoid(density, t, dim=1)
    torch.testing.assert_close(integral, torch.ones(3, dtype=torch.float64), rtol=1e-7, atol=0)


def test_toyjets_gold_matches_finite_differences_and_the_joint_ratio(jets):
    theta = torch.linspace(2.0, 6.0, 50, dtype=torch.float64)[:, None]
    theta_ref = torch.full_like(theta, 4.0)
    x, latent = jets.sample_with_latent(theta, None, torch.Generator().manual_seed(3))
    data = jets.simulate(theta, gold=True, theta_ref=theta_ref, seed=3)
    assert data.x.equal(x)

    def log_p(at):
        return jets.joint_log_prob(x, latent, at, None)

    torch.testing.assert_close(data.joint_log_ratio, log_p(theta) - log_p(theta_ref))
    h = 1e-5
    finite_difference = (log_p(theta + h) - log_p(theta - h)) / (2 * h)
    torch.testing.assert_close(data.joint_score[:, 0], finite_difference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("lam", [2.5, 5.0])
def test_toyjets_joint_score_has_mean_zero_at_the_true_theta(jets, lam):
    """E_{x,z ~ p(·|θ)} t(x,z|θ) = 0: a z-test with the standard error of the mean."""
    n = 10_000
    theta = torch.full((n, 1), lam, dtype=torch.float64)
    score = jets.simulate(theta, gold=True, seed=int(lam * 10)).joint_score[:, 0]
    z = score.mean() / (score.std() / math.sqrt(n))
    assert abs(float(z)) < 4.0, f"mean joint score {float(score.mean()):.4g}, z = {float(z):.2f}"


# -- estimators on sets ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jet_data(jets):
    run = {**JET_RUN, "seed": 11, "chunk_size": 100}
    return simfer.simulate(jets, jets.prior(), 300, executor="serial", **run)


def small_lorentz_net() -> LorentzNet:
    with simfer.seeding.seeded(0):
        return LorentzNet(4, 6, hidden=8, n_layers=1)


TINY = dict(max_epochs=2, seed=0, progress=False, batch_size=64)


def test_npe_on_sets_takes_every_form_of_x_and_saves(jets, jet_data, tmp_path):
    npe = simfer.PosteriorEstimator(
        embedding=small_lorentz_net(), hidden=16, n_transforms=1, **TINY
    ).fit(jet_data, jets.prior())
    assert npe.dims.x_kind == "set" and npe.dims.x_dim == 6
    theta = torch.tensor([[3.0], [5.0]])
    one = jet_data.x[0]
    expected = npe.log_prob(theta=theta, x=one)
    assert torch.isfinite(expected).all()
    padded, mask = jet_data.x[:1].padded(max_n=40)  # extra padding changes nothing
    for form in ([one], jet_data.x[:1], (padded, mask)):
        torch.testing.assert_close(npe.log_prob(theta=theta, x=form), expected)
    assert npe.sample(5, x=one, seed=0).shape == (5, 1)
    assert npe.sample(5, x=jet_data.x[:3], seed=0).shape == (3, 5, 1)
    path = tmp_path / "npe.pt"
    npe.save(path)
    loaded = simfer.PosteriorEstimator.load(path, embedding=LorentzNet(4, 6, hidden=8, n_layers=1))
    torch.testing.assert_close(loaded.log_prob(theta=theta, x=one), expected)
    with pytest.raises(ModelFileError, match="embedding=LorentzNet"):
        simfer.PosteriorEstimator.load(path)
    with pytest.raises(ShapeError, match=r"one set \[n, 4\]"):
        npe.log_prob(theta=theta, x=torch.zeros(5, 3))
    with pytest.raises(ShapeError, match="needs embedding="):
        simfer.PosteriorEstimator(**TINY).fit(jet_data)


def test_alices_on_sets_with_an_embedding(jets, jet_data, tmp_path):
    ratio = simfer.RatioEstimator(
        "alices", embedding=small_lorentz_net(), hidden=(16,), **TINY
    ).fit(jet_data)
    theta = torch.tensor([[3.0], [5.0]])
    log_r = ratio.log_ratio(x=jet_data.x[0], theta=theta, reference=ratio.theta_ref)
    assert log_r.shape == (2,) and torch.isfinite(log_r).all()
    assert ratio.score(x=jet_data.x[:2], theta=theta).shape == (2, 1)
    path = tmp_path / "ratio.pt"
    ratio.save(path)
    loaded = simfer.RatioEstimator.load(path, embedding=LorentzNet(4, 6, hidden=8, n_layers=1))
    torch.testing.assert_close(
        loaded.log_ratio(x=jet_data.x[0], theta=theta, reference=loaded.theta_ref), log_r
    )
    with pytest.raises(ValueError, match="n_ensemble must be 1"):
        simfer.RatioEstimator("alices", embedding=small_lorentz_net(), n_ensemble=2)


def test_sally_on_sets_learns_a_boost_invariant_score(jets, jet_data, tmp_path):
    """SALLY with a Lorentz-invariant embedding: its score, its Fisher information and its
    local posterior take jets in every form, and a jet boosted along any axis gets the same
    score (float64 invariants)."""
    sally = simfer.ScoreEstimator(embedding=small_lorentz_net(), hidden=(16,), **TINY)
    sally.fit(jet_data)
    assert sally.dims.x_kind == "set" and sally.dims.theta_ref == (4.0,)
    one, three = jet_data.x[0], jet_data.x[:3]
    t = sally.score(x=three)
    assert t.shape == (3, 1) and torch.isfinite(t).all()
    torch.testing.assert_close(sally.score(x=one), t[:1])
    torch.testing.assert_close(sally.score(x=three.padded(max_n=40)), t)
    boost = torch.eye(4, dtype=torch.float64)
    boost[0, 0] = boost[3, 3] = math.cosh(2.0)
    boost[0, 3] = boost[3, 0] = math.sinh(2.0)
    boosted = [s.to(torch.float64) @ boost.T for s in three.as_list()]
    torch.testing.assert_close(sally.score(x=boosted), t, rtol=1e-6, atol=1e-6)
    information = sally.fisher_information(x=jet_data.x[:50])
    assert information.shape == (1, 1) and information.item() > 0
    posterior = sally.posterior(jets.prior(), three, fisher_information=information)
    assert posterior.log_likelihood(torch.tensor([[3.0], [5.0]])).shape == (2,)
    path = tmp_path / "sally.pt"
    sally.save(path)
    loaded = simfer.ScoreEstimator.load(path, embedding=LorentzNet(4, 6, hidden=8, n_layers=1))
    torch.testing.assert_close(loaded.score(x=three), t)
    with pytest.raises(ModelFileError, match="embedding=LorentzNet"):
        simfer.ScoreEstimator.load(path)
    with pytest.raises(ShapeError, match="needs embedding="):
        simfer.ScoreEstimator(**TINY).fit(jet_data)


@pytest.fixture(scope="module")
def jet_npe(jets, jet_data):
    return simfer.PosteriorEstimator(
        embedding=small_lorentz_net(), hidden=16, n_transforms=1, **TINY
    ).fit(jet_data, jets.prior())


@pytest.fixture(scope="module")
def jet_ratio(jet_data):
    return simfer.RatioEstimator("alices", embedding=small_lorentz_net(), hidden=(16,), **TINY).fit(
        jet_data
    )


def test_estimators_embed_each_distinct_x_once(jet_data, jet_npe, jet_ratio):
    """A posterior pairs each observed jet with many θ: the embedding runs once per distinct
    jet, and the result equals the row-by-row one."""
    npe, ratio = jet_npe, jet_ratio
    theta = torch.linspace(2.5, 5.5, 60)[:, None]
    jets_ = jet_data.x[[0, 1, 2] * 20]  # three distinct jets, 60 rows
    for estimator, evaluate in (
        (npe, lambda x: npe.log_prob(theta=theta, x=x)),
        (ratio, lambda x: ratio.log_ratio(x=x, theta=theta, reference=ratio.theta_ref)),
    ):
        seen: list[int] = []
        hook = estimator.embedding.register_forward_hook(
            lambda module, args, out, seen=seen: seen.append(args[0].shape[0])
        )
        try:
            batched = evaluate(jets_)
        finally:
            hook.remove()
        assert seen == [3]
        one_by_one = torch.cat([evaluate(jets_[i])[i : i + 1] for i in range(60)])
        torch.testing.assert_close(batched, one_by_one)


def test_nle_keeps_its_embedding_fixed(jets, jet_data, tmp_path):
    embedding = small_lorentz_net()
    before = {k: v.clone() for k, v in embedding.state_dict().items()}
    with pytest.warns(UserWarning, match="NOT trained here"):
        nle = simfer.LikelihoodEstimator(
            "scandal", embedding=embedding, hidden=16, n_transforms=1, **TINY
        ).fit(jet_data)
    # the user's module is neither trained nor frozen; the estimator holds a frozen copy
    assert all(torch.equal(v, before[k]) for k, v in embedding.state_dict().items())
    assert all(p.requires_grad for p in embedding.parameters())
    assert not any(p.requires_grad for p in nle.embedding.parameters())
    theta = torch.tensor([[3.0], [5.0]])
    log_q = nle.log_prob(x=jet_data.x[0], theta=theta)
    assert torch.isfinite(log_q).all() and nle.score(x=jet_data.x[0], theta=theta).shape == (2, 1)
    path = tmp_path / "nle.pt"
    nle.save(path)
    loaded = simfer.LikelihoodEstimator.load(path, embedding=LorentzNet(4, 6, hidden=8, n_layers=1))
    torch.testing.assert_close(loaded.log_prob(x=jet_data.x[0], theta=theta), log_q)
    with pytest.raises(simfer.SimferError, match="cannot draw x"):
        nle.sample(3, theta=theta[0])
    with warnings.catch_warnings():  # a frozen embedding is what NLE wants: no warning
        warnings.simplefilter("error")
        simfer.LikelihoodEstimator(
            embedding=small_lorentz_net().requires_grad_(False), hidden=16, n_transforms=1, **TINY
        ).fit(jet_data)


def test_posteriors_from_set_estimators(jets, jet_data, jet_npe, jet_ratio):
    """est.posterior takes observed jets: one jet (NPE draws directly) or iid jets (MCMC)."""
    npe, ratio = jet_npe, jet_ratio
    one, three = jet_data.x[0], jet_data.x[:3]
    posterior = npe.posterior(jets.prior(), one)
    theta = torch.tensor([[3.0], [5.0]])
    torch.testing.assert_close(posterior.log_prob(theta), npe.log_prob(theta=theta, x=one))
    assert posterior.sample(20, seed=0).shape == (20, 1)
    for estimator in (npe, ratio):
        iid = estimator.posterior(jets.prior(), three)
        assert iid.n_observations == 3
        draws = iid.sample(40, seed=0, n_chains=8, warmup=10)
        assert draws.shape == (40, 1) and bool(jets.prior().support.check(draws).all())
    # the sum over three jets is the sum of each jet's term
    single = [ratio.posterior(jets.prior(), jet_data.x[i]).log_likelihood(theta) for i in range(3)]
    torch.testing.assert_close(iid.log_likelihood(theta), sum(single))
