"""Flows, NPE, NLE, SCANDAL and C2ST, checked against exact answers.

Tolerances come from the budget.  A fit is only as good as early stopping can see: it
picks the epoch by the validation NLL over N_val = 10% of the N training rows, whose
standard error is sd(log q)/√N_val.  For a d-dimensional Gaussian, log p = const − χ²_d/2
has sd √(d/2), i.e. 1 for d = 2, so with N = 3000 the fit cannot tell apart models whose
expected KL divergence differs by less than ≈ 1/√300 ≈ 0.06 nats.  The tests allow two
such standard errors, and translate it where they check moments: a Gaussian shifted by δ
has KL = ½(δ/σ)², a variance ratio r costs ≈ ¼(r − 1)² per dimension.  Monte Carlo errors
of the checks themselves (10⁴ draws: 0.01σ on a mean, 1.4% on a variance) are negligible
next to that.
"""

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from conftest import run_markdown_examples
from torch import nn

import simfer
from simfer import losses
from simfer.diagnostics import c2st
from simfer.errors import ModelFileError, ShapeError, SimferError
from simfer.estimators.base import load
from simfer.estimators.likelihood import LikelihoodEstimator, log_prob_and_score
from simfer.estimators.posterior import PosteriorEstimator
from simfer.nn.flows import build_flow
from simfer.seeding import seeded
from simulators import GaussianLinear

ROOT = Path(__file__).resolve().parent.parent
N_SIMULATIONS = 3000
N_VALIDATION = int(0.1 * N_SIMULATIONS)
KL_TOLERANCE = 2 / math.sqrt(N_VALIDATION)  # two standard errors of the validation NLL
FAST = dict(progress=False, patience=10, seed=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small networks run fastest (and steadiest on a shared machine) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def gaussian():
    return GaussianLinear(dim=2)


@pytest.fixture(scope="module")
def gaussian_data(gaussian):
    return simfer.simulate(
        gaussian,
        gaussian.prior(),
        N_SIMULATIONS,
        gold=True,
        seed=0,
        executor="serial",
        progress=False,
    )


@pytest.fixture(scope="module")
def npe(gaussian, gaussian_data):
    return PosteriorEstimator(**FAST).fit(gaussian_data, gaussian.prior())


@pytest.fixture(scope="module")
def held_out(gaussian):
    return simfer.simulate(
        gaussian, gaussian.prior(), 2000, seed=7, executor="serial", progress=False
    )


@pytest.fixture(scope="module")
def nle(gaussian_data):
    return LikelihoodEstimator("nle", **FAST).fit(gaussian_data)


@pytest.fixture(scope="module")
def scandal(gaussian_data):
    return LikelihoodEstimator("scandal", **FAST).fit(gaussian_data)


# -- the builder -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["nsf", "nsf-coupling", "maf"])
@pytest.mark.parametrize("features", [1, 2, 3])
def test_a_new_flow_is_the_standardised_gaussian_and_inverts(kind, features):
    """Every transform starts as the identity, so before training q(v|c) is the Gaussian
    with the training data's mean and standard deviation, whatever the context."""
    flow = build_flow(kind, features, 2, seed=1)
    generator = torch.Generator().manual_seed(0)
    v = 3.0 + 2.0 * torch.randn(500, features, generator=generator)
    context = torch.randn(500, 2, generator=generator)
    flow.fit_standardization(v, context)
    gaussian = torch.distributions.Normal(flow.input_standardize.mean, flow.input_standardize.std)
    expected = gaussian.log_prob(v).sum(-1)
    assert torch.allclose(flow.log_prob(v, context=context), expected, atol=1e-4)
    noise, _ = flow._transform(v, context=context)
    back, _ = flow._transform.inverse(noise, context=context)
    assert torch.allclose(back, v, atol=1e-4)
    assert flow.sample(7, context=context[:3]).shape == (3, 7, features)


@pytest.mark.parametrize("features", [1, 2, 5])
def test_the_one_column_per_pass_inverse_is_nflows_inverse(features):
    """A spline layer with random weights: its inverse (one column per pass, each pass on
    the hidden units of degree ≤ its column, `_MadeSteps`) equals nflows' generic
    autoregressive inverse (the whole MADE, all columns every pass) and undoes the forward
    map with the opposite log-determinant."""
    from nflows.transforms.autoregressive import AutoregressiveTransform

    from simfer.nn.flows import SplineAutoregressiveTransform

    flow = build_flow("nsf", features, 3, seed=features).double()
    generator = torch.Generator().manual_seed(features)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator).double())
    layer = next(
        t for t in flow._transform._transforms if isinstance(t, SplineAutoregressiveTransform)
    )
    u = 2 * torch.randn(500, features, generator=generator).double()
    context = torch.randn(500, 3, generator=generator).double()
    v, logabsdet = layer.inverse(u, context)
    expected_v, expected_logabsdet = AutoregressiveTransform.inverse(layer, u, context)
    assert torch.allclose(v, expected_v, atol=1e-12)
    assert torch.allclose(logabsdet, expected_logabsdet, atol=1e-12)
    again, forward_logabsdet = layer(v, context)
    assert torch.allclose(again, u, atol=1e-9)
    assert torch.allclose(forward_logabsdet, -logabsdet, atol=1e-9)
    # each pass's blockwise conditioner is the whole MADE's block of that variable
    from simfer.nn.flows import _MadeSteps

    made, width = layer.autoregressive_net, 3 * layer.num_bins - 1
    steps = _MadeSteps(made, context, width)
    assert steps.blockwise
    known = torch.randn(500, features, generator=generator).double()
    for i in range(features):
        whole = made(known, context)[:, i * width : (i + 1) * width]
        assert torch.allclose(steps(known, i), whole, atol=1e-12)


@pytest.mark.parametrize("features", [2, 3])
def test_a_coupling_flow_with_random_weights_inverts(features):
    """The whole coupling chain maps back with the opposite log-determinant, and its
    log q integrates the change of variables: log q(v) = log N(f(v)) + log|det ∂f/∂v|,
    checked against the Jacobian by autograd."""
    flow = build_flow("nsf-coupling", features, 3, seed=features).double()
    generator = torch.Generator().manual_seed(features)
    with torch.no_grad():  # larger kicks give bins of slope ~1e-3: round-off × 10^3 a layer
        for parameter in flow.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator).double())
    v = 2 * torch.randn(50, features, generator=generator).double()
    context = torch.randn(50, 3, generator=generator).double()
    summary = flow.summarize(context)
    u, logabsdet = flow._transform(v, context=summary)
    back, inverse_logabsdet = flow._transform.inverse(u, context=summary)
    assert torch.allclose(back, v, atol=1e-9)
    assert torch.allclose(inverse_logabsdet, -logabsdet, atol=1e-9)
    jacobian = torch.autograd.functional.jacobian(
        lambda row: flow._transform(row[None], context=summary[:1])[0][0], v[0]
    )
    assert torch.allclose(torch.linalg.slogdet(jacobian).logabsdet, logabsdet[0], atol=1e-9)


def test_the_builder_names_bad_arguments():
    with pytest.raises(ValueError, match="unknown flow 'glow'"):
        build_flow("glow", 2, 2)
    with pytest.raises(ValueError, match="features must be a positive integer"):
        build_flow("nsf", 0, 2)
    with pytest.raises(TypeError, match="embedding must be a torch.nn.Module"):
        build_flow("nsf", 2, 2, embedding=lambda x: x)
    with pytest.raises(ValueError, match="unknown activation 'gelu'; choose one of"):
        build_flow("nsf", 2, 2, activation="gelu")
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        PosteriorEstimator(activation="gelu")


def test_simfers_spline_is_nflows_spline_and_inverts():
    """simfer's gather-based spline evaluates nflows' parameterisation (the same function
    to float64 round-off), is the identity outside [−B, B], and its inverse undoes it with
    the opposite log-derivative."""
    from nflows.transforms.splines.rational_quadratic import (
        unconstrained_rational_quadratic_spline,
    )

    from simfer.nn.splines import rational_quadratic_spline

    generator = torch.Generator().manual_seed(0)

    def draw(*shape, scale):
        return scale * torch.randn(*shape, generator=generator, dtype=torch.float64)

    x = draw(2000, 3, scale=3.0)  # about 18 % of it outside B = 4
    widths, heights = draw(2000, 3, 8, scale=2), draw(2000, 3, 8, scale=2)
    derivatives = draw(2000, 3, 7, scale=2)
    for inverse in (False, True):
        expected = unconstrained_rational_quadratic_spline(
            x, widths, heights, derivatives, inverse=inverse, tails="linear", tail_bound=4.0
        )
        got = rational_quadratic_spline(x, widths, heights, derivatives, bound=4.0, inverse=inverse)
        for a, b in zip(got, expected, strict=True):
            assert torch.allclose(a, b, rtol=0, atol=1e-9)
    y, log_derivative = rational_quadratic_spline(x, widths, heights, derivatives, bound=4.0)
    outside = x.abs() > 4
    assert outside.any() and torch.equal(y[outside], x[outside])
    assert torch.all(log_derivative[outside] == 0)
    back, inverse_log_derivative = rational_quadratic_spline(
        y, widths, heights, derivatives, bound=4.0, inverse=True
    )
    assert torch.allclose(back, x, atol=1e-8)
    assert torch.allclose(inverse_log_derivative, -log_derivative, atol=1e-8)


# -- NPE ---------------------------------------------------------------------------------------
def test_npe_matches_the_analytic_gaussian_posterior(gaussian, npe):
    """Eight observations from the prior predictive; at each, 10⁴ draws of q(θ|x) against
    the exact posterior N(μ, v I): the KL divergence within the budget's tolerance, the
    mean within 0.5σ (KL ½(δ/σ)² = 0.12), the variances within ±50%, the correlation
    (0 exactly) below 0.3.  A model that ignored x (returned the prior) would be off by
    ~1σ in the mean and a factor 2 in the variance."""
    with seeded(2):
        theta = gaussian.prior().sample((8,))
    x_obs = gaussian.simulate(theta, seed=3)
    kls, mean_errors, variance_ratios, correlations = [], [], [], []
    for i, x in enumerate(x_obs):
        exact = gaussian.posterior(x)
        draws = npe.sample(10_000, x=x, seed=i)
        sd = exact.variance.sqrt()
        mean_errors.append(((draws.mean(0) - exact.mean) / sd).abs().max())
        covariance = torch.cov(draws.T)
        variance_ratios.append(covariance.diagonal() / exact.variance)
        correlations.append(covariance[0, 1] / covariance.diagonal().prod().sqrt())
        with seeded(i):
            reference = exact.sample((4000,))
        kls.append((exact.log_prob(reference) - npe.log_prob(theta=reference, x=x)).mean())
    kls, mean_errors = torch.stack(kls), torch.stack(mean_errors)
    variance_ratios, correlations = torch.stack(variance_ratios), torch.stack(correlations)
    print(
        f"\nNPE (N={N_SIMULATIONS}, {len(npe.history.train_loss)} epochs): KL mean "
        f"{kls.mean():.4f} max {kls.max():.4f}; |mean error|/σ max {mean_errors.max():.3f}; "
        f"variance ratio {variance_ratios.min():.3f}..{variance_ratios.max():.3f}; "
        f"|corr| max {correlations.abs().max():.3f}"
    )
    assert float(kls.mean()) < KL_TOLERANCE
    assert float(mean_errors.max()) < math.sqrt(2 * KL_TOLERANCE) + 0.02
    assert float((variance_ratios - 1).abs().max()) < 0.5
    assert float(correlations.abs().max()) < 0.3
    assert npe.acceptance_rate == 1.0  # a Gaussian prior has no boundary to leak across


def test_npe_trains_only_on_rows_drawn_at_their_own_theta(gaussian):
    data = simfer.simulate(
        gaussian,
        gaussian.prior(),
        400,
        theta_ref=[0.0, 0.0],
        seed=1,
        executor="serial",
        progress=False,
    )
    npe = PosteriorEstimator("maf", max_epochs=1, **FAST).fit(data)
    assert npe.dims.n_train == int((~data.from_reference).sum()) < len(data)


def test_npe_rejects_leaked_draws_and_reports_the_acceptance(tmp_path):
    """θ ~ U(0, 1), x ~ N(θ, 0.3²): at x = 0 the posterior is piled against θ = 0 and a
    flow (support R) leaks across it.  Samples stay in the box, the reported acceptance is
    the flow's own mass inside, and a prior the flow has no mass in is refused with the
    rate in the message."""

    def noisy(theta, generator):
        return theta + 0.3 * torch.randn(theta.shape, generator=generator)

    simulator = simfer.Simulator.from_function(noisy, theta_dim=1, x_shape=(1,))
    prior = simfer.BoxUniform([0.0], [1.0])
    data = simfer.simulate(simulator, prior, 2000, seed=0, executor="serial", progress=False)
    npe = PosteriorEstimator(max_epochs=40, **FAST).fit(data, prior)
    x = torch.tensor([-0.2])
    draws = npe.sample(4000, x=x, seed=0)
    assert draws.shape == (4000, 1)
    assert bool(((draws >= 0) & (draws < 1)).all())
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(1)
        free = npe.network.sample(20_000, context=x[None])[0]
    inside = float(((free >= 0) & (free < 1)).float().mean())
    print(f"\nleakage at x = -0.2: acceptance {npe.acceptance_rate:.4f}, independent {inside:.4f}")
    assert 0.5 < npe.acceptance_rate < 1.0
    assert abs(npe.acceptance_rate - inside) < 4 * math.sqrt(0.25 / 4000) + 0.01
    assert bool(torch.isinf(npe.log_prob(theta=torch.tensor([[-0.1], [1.5]]), x=x)).all())
    log_p = npe.log_prob(theta=torch.tensor([0.1]), x=x)
    corrected = npe.log_prob(theta=torch.tensor([0.1]), x=x, leakage_correction=True)
    assert 0 < float(corrected - log_p) < 1  # −log(acceptance) > 0
    npe.save(tmp_path / "box.pt")  # the box prior travels with the model
    assert torch.equal(
        load(tmp_path / "box.pt").sample(300, x=x, seed=2), npe.sample(300, x=x, seed=2)
    )
    with pytest.raises(SimferError, match=r"fell inside the prior's support.*bounded=True"):
        npe.sample(10, x=x, prior=simfer.BoxUniform([5.0], [5.001]))


def test_npe_trains_an_embedding_and_reloads_it(gaussian, gaussian_data, tmp_path):
    with seeded(0):
        embedding = nn.Sequential(nn.Linear(2, 32), nn.SiLU(), nn.Linear(32, 4))
    npe = PosteriorEstimator("maf", embedding=embedding, max_epochs=25, **FAST)
    npe.fit(gaussian_data.subset(slice(0, 2000)))
    x = torch.tensor([0.3, -0.4])
    draws = npe.sample(4000, x=x, seed=0)
    exact = gaussian.posterior(x)
    assert float(((draws.mean(0) - exact.mean) / exact.variance.sqrt()).abs().max()) < 0.5
    npe.save(tmp_path / "embedded.pt")
    with pytest.raises(ModelFileError, match="embedding network.*PosteriorEstimator.load"):
        simfer.load(tmp_path / "embedded.pt")
    fresh = nn.Sequential(nn.Linear(2, 32), nn.SiLU(), nn.Linear(32, 4))
    loaded = PosteriorEstimator.load(tmp_path / "embedded.pt", embedding=fresh)
    theta = gaussian_data.theta[:50]
    assert torch.equal(loaded.log_prob(theta=theta, x=x), npe.log_prob(theta=theta, x=x))
    assert torch.equal(loaded.sample(100, x=x, seed=4), npe.sample(100, x=x, seed=4))


# -- NLE and SCANDAL ---------------------------------------------------------------------------
def test_nle_and_scandal_learn_the_exact_likelihood(
    gaussian, gaussian_data, nle, scandal, held_out
):
    """On held-out pairs from the joint, E[log p − log q] is the expected KL (tolerance
    as above, d = 2); the score is checked against the exact (x − θ)/σ².  GaussianLinear's
    gold has no latent, so the joint score is the exact score and SCANDAL must learn it
    far better than NLE, which sees the θ-dependence only through where the θ fall."""
    exact = gaussian.log_likelihood(held_out.x, held_out.theta)
    exact_score = (held_out.x - held_out.theta) / gaussian.noise_var
    fisher = float((exact_score**2).sum(1).mean())
    results = {}
    for name, estimator in (("nle", nle), ("scandal", scandal)):
        log_q = estimator.log_prob(x=held_out.x, theta=held_out.theta)
        score = estimator.score(x=held_out.x, theta=held_out.theta)
        results[name] = dict(
            kl=float((exact - log_q).mean()),
            corr=float(torch.corrcoef(torch.stack([log_q, exact]))[0, 1]),
            rmse=float((log_q - exact).pow(2).mean().sqrt()),
            score=float(((score - exact_score) ** 2).sum(1).mean()) / fisher,
            epochs=len(estimator.history.train_loss),
        )
    print(f"\nNLE/SCANDAL (N={N_SIMULATIONS}, α={scandal.alpha_used:.4f}): {results}")
    for result in results.values():
        assert result["kl"] < KL_TOLERANCE
        assert result["corr"] > 0.9
    assert results["scandal"]["score"] < 0.1
    assert results["scandal"]["score"] < 0.5 * results["nle"]["score"]
    # the default α = ½/(E|t|²/d + 1/Var θ) = ½/(1/σ² + 1/σ₀²) = 0.025 here
    assert scandal.alpha_used == pytest.approx(0.5 / (1 / 0.1 + 1 / 0.1), rel=0.05)
    assert scandal.alpha_used == losses.default_scandal_weight(
        gaussian_data.joint_score, gaussian_data.theta
    )
    # one x broadcasts over many θ
    theta = held_out.theta[:10]
    assert torch.allclose(
        nle.log_prob(x=held_out.x[0], theta=theta),
        nle.log_prob(x=held_out.x[:1].expand(10, -1), theta=theta),
    )


def test_scandal_score_term_vanishes_for_the_exact_likelihood(gaussian, gaussian_data):
    """(a) Without a latent the joint score is the exact score: at q = p the score term is
    zero row by row.  (b) With a latent, z ~ N(θ, 1), x ~ N(z, 1): t(x,z|θ) = z − θ while
    t(x|θ) = (x − θ)/2.  At the exact q = N(θ, 2) the term is the irreducible E Var(z|x,θ)
    = ½, and the gradient of the SCANDAL loss with respect to q's parameters vanishes in
    expectation (it does not at a wrong q)."""
    rows = gaussian_data.subset(slice(0, 500))
    log_q, score = log_prob_and_score(gaussian.log_likelihood, rows.x, rows.theta)
    assert float(((score - rows.joint_score) ** 2).sum(1).max()) < 1e-6 * float(
        (rows.joint_score**2).sum(1).mean()
    )
    assert torch.allclose(
        losses.scandal(log_q, score, rows.joint_score, 1.0), -log_q.mean(), atol=1e-5
    )

    generator = torch.Generator().manual_seed(0)
    n, parts = 200_000, 20
    theta = torch.rand(n, 1, generator=generator, dtype=torch.float64) * 4 - 2
    z = theta + torch.randn(n, 1, generator=generator, dtype=torch.float64)
    x = z + torch.randn(n, 1, generator=generator, dtype=torch.float64)
    joint_score = z - theta

    def gradients(a, b, log_var):
        parameters = torch.tensor([a, b, log_var], dtype=torch.float64, requires_grad=True)

        def log_prob(x, theta):
            mean = parameters[0] * theta + parameters[1]
            return torch.distributions.Normal(mean, (0.5 * parameters[2]).exp()).log_prob(x)[:, 0]

        grads, terms = [], []
        for part in torch.arange(n).chunk(parts):
            log_q, score = log_prob_and_score(log_prob, x[part], theta[part], create_graph=True)
            loss = losses.scandal(log_q, score, joint_score[part], 1.0)
            grads.append(torch.autograd.grad(loss, parameters)[0])
            terms.append(((score - joint_score[part]) ** 2).mean().detach())
        grads = torch.stack(grads)
        return grads.mean(0), grads.std(0) / math.sqrt(parts), torch.stack(terms).mean()

    mean, error, term = gradients(1.0, 0.0, math.log(2.0))
    assert bool((mean.abs() < 4 * error).all()), (mean, error)
    assert float(term) == pytest.approx(0.5, abs=0.01)
    wrong, wrong_error, _ = gradients(1.2, 0.0, math.log(2.0))
    assert float(wrong.abs().max()) > 10 * float(wrong_error.max())


def test_nle_learns_where_the_simulator_fails(tmp_path):
    """x ~ N(θ, 0.3²) on θ ~ U(−1, 1), but the simulator fails (NaN) with probability
    0.8·σ(4θ): mostly at large θ.  NLE folds the learnt log p(valid|θ) into the
    likelihood; the posterior of an observed x then matches the exact one,
    p(θ|x) ∝ p(θ)(1 − p_fail(θ)) N(x; θ, 0.3²), while the flow alone is biased to large θ."""

    def fail_probability(theta):
        return 0.8 * torch.sigmoid(4 * theta)

    def fragile(theta, generator):
        x = theta + 0.3 * torch.randn(theta.shape, generator=generator)
        failed = torch.rand(theta.shape, generator=generator) < fail_probability(theta)
        return torch.where(failed, torch.full_like(x, math.nan), x)

    simulator = simfer.Simulator.from_function(fragile, theta_dim=1, x_shape=(1,))
    prior = simfer.BoxUniform([-1.0], [1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", simfer.InvalidSimulationWarning)
        data = simfer.simulate(simulator, prior, 3000, seed=0, executor="serial", progress=False)
    assert 0.3 < data.n_invalid / len(data) < 0.5
    nle = LikelihoodEstimator("nle", "maf", **FAST).fit(data, prior)
    grid = torch.linspace(-0.95, 0.95, 39)[:, None]
    exact_valid = torch.log1p(-fail_probability(grid[:, 0]))
    learnt_valid = nle.log_prob_valid(theta=grid)
    # p(valid|θ) against the truth: a 0.1-wide bin of θ holds ~150 of the 3000 simulations,
    # where p ≈ 0.2 at the edge that is a standard error √(0.2·0.8/150) ≈ 0.033; allow two.
    error = float((learnt_valid.exp() - exact_valid.exp()).abs().max())
    print(f"\np(valid|θ): max error {error:.4f}")
    assert error < 0.07
    x = torch.tensor([0.4])
    exact_log_post = torch.distributions.Normal(grid[:, 0], 0.3).log_prob(x) + exact_valid
    folded = nle.log_prob(x=x, theta=grid)
    flow_only = folded - learnt_valid

    def grid_mean(log_density):
        return float((torch.softmax(log_density, 0) * grid[:, 0]).sum())

    exact_mean = grid_mean(exact_log_post)
    errors = abs(grid_mean(folded) - exact_mean), abs(grid_mean(flow_only) - exact_mean)
    print(f"posterior mean error: folded {errors[0]:.4f}, dropped failures {errors[1]:.4f}")
    assert errors[0] < 0.03
    assert errors[1] > 2 * errors[0]

    nle.save(tmp_path / "fragile.pt")
    loaded = load(tmp_path / "fragile.pt")
    assert loaded.dims.validity
    assert torch.equal(loaded.log_prob(x=x, theta=grid), folded)


# -- save and load -----------------------------------------------------------------------------
def test_trained_flows_survive_save_and_load_bit_identically(npe, nle, scandal, held_out, tmp_path):
    x, theta = held_out.x[:200], held_out.theta[:200]
    npe.save(tmp_path / "npe.pt")
    loaded = load(tmp_path / "npe.pt")
    assert isinstance(loaded, PosteriorEstimator) and loaded.flow == "nsf"
    assert torch.equal(loaded.log_prob(theta=theta, x=x), npe.log_prob(theta=theta, x=x))
    assert torch.equal(loaded.sample(500, x=x[0], seed=3), npe.sample(500, x=x[0], seed=3))
    assert loaded.history.train_loss == npe.history.train_loss
    for name, estimator in (("nle", nle), ("scandal", scandal)):
        estimator.save(tmp_path / f"{name}.pt")
        again = LikelihoodEstimator.load(tmp_path / f"{name}.pt")
        assert again.method == name and again.alpha_used == estimator.alpha_used
        assert torch.equal(again.log_prob(x=x, theta=theta), estimator.log_prob(x=x, theta=theta))
        assert torch.equal(again.score(x=x, theta=theta), estimator.score(x=x, theta=theta))
        assert torch.equal(
            again.sample(50, theta=theta[0], seed=1), estimator.sample(50, theta=theta[0], seed=1)
        )
    with pytest.raises(ModelFileError, match="holds a PosteriorEstimator"):
        LikelihoodEstimator.load(tmp_path / "npe.pt")


def test_an_npe_file_of_model_format_1_still_loads(npe, held_out, tmp_path):
    """simfer 0.1 wrote model format 1: the dims a plain dict that named the flow's context
    width "context_features" (now `Dims.x_dim`).  Such a file loads into the same model; a
    format-2 file with the old name is refused as not understood."""
    npe.save(tmp_path / "npe.pt")
    payload = torch.load(tmp_path / "npe.pt", weights_only=True)
    assert payload["format_version"] == 2 and json.loads(payload["dims"])["x_dim"] == 2
    old_dims = {
        "theta_dim": 2,
        "context_features": 2,
        "n_train": npe.dims.n_train,
        "x_shape": [2],
        "embedding": None,
        "x_kind": "array",
    }
    payload["dims"] = json.dumps(old_dims)
    payload["format_version"] = 1
    torch.save(payload, tmp_path / "format_1.pt")
    old = load(tmp_path / "format_1.pt")
    assert isinstance(old, PosteriorEstimator) and old.dims == npe.dims
    x, theta = held_out.x[:50], held_out.theta[:50]
    assert torch.equal(old.log_prob(theta=theta, x=x), npe.log_prob(theta=theta, x=x))
    payload["format_version"] = 2
    torch.save(payload, tmp_path / "misnamed.pt")
    with pytest.raises(ModelFileError, match="context_features"):
        load(tmp_path / "misnamed.pt")


def test_a_relu_flow_keeps_its_activation_through_save_and_load(gaussian_data, held_out, tmp_path):
    relu = LikelihoodEstimator("nle", activation="relu", **{**FAST, "max_epochs": 2})
    relu.fit(gaussian_data)
    relu.save(tmp_path / "relu.pt")
    again = LikelihoodEstimator.load(tmp_path / "relu.pt")
    assert again.activation == "relu"
    x, theta = held_out.x[:200], held_out.theta[:200]
    assert torch.equal(again.log_prob(x=x, theta=theta), relu.log_prob(x=x, theta=theta))


# -- bad input ---------------------------------------------------------------------------------
def test_flow_estimators_name_bad_input(gaussian, gaussian_data, npe, nle):
    with pytest.raises(ValueError, match="unknown flow 'realnvp'"):
        PosteriorEstimator("realnvp")
    with pytest.raises(ValueError, match="unknown likelihood method 'snle'"):
        LikelihoodEstimator("snle")
    with pytest.raises(TypeError, match="unknown arguments"):
        PosteriorEstimator(epochs=3)
    with pytest.raises(TypeError, match="embedding must be a torch.nn.Module"):
        PosteriorEstimator(embedding="deepsets")
    with pytest.raises(SimferError, match="not trained yet"):
        PosteriorEstimator().sample(10, x=torch.zeros(2))
    with pytest.raises(TypeError, match="SimulationData"):
        PosteriorEstimator().fit((gaussian_data.theta, gaussian_data.x))
    no_gold = simfer.simulate(
        gaussian, gaussian.prior(), 50, seed=0, executor="serial", progress=False
    )
    with pytest.raises(SimferError, match="gold=True"):
        LikelihoodEstimator("scandal").fit(no_gold)
    with pytest.raises(ShapeError, match=r"x must have shape \[2\] or \[batch, 2\]"):
        npe.sample(10, x=torch.zeros(3))
    with pytest.raises(ValueError, match="x holds NaN"):
        npe.log_prob(theta=torch.zeros(2), x=torch.tensor([math.nan, 0.0]))
    with pytest.raises(ShapeError, match="cannot pair rows of x 3, theta 4"):
        nle.log_prob(x=torch.zeros(3, 2), theta=torch.zeros(4, 2))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        npe.sample(0, x=torch.zeros(2))
    with pytest.raises(TypeError, match="positional argument"):
        npe.log_prob(torch.zeros(2), torch.zeros(2))
    with pytest.raises(TypeError, match="positional argument"):
        nle.log_prob(torch.zeros(2), torch.zeros(2))
    with pytest.raises(ShapeError, match="without a design column"):
        nle.log_prob(x=torch.zeros(2), theta=torch.zeros(2), design=torch.zeros(1))
    everything_failed = gaussian_data.subset(slice(0, 10))
    everything_failed = type(everything_failed)(
        theta=everything_failed.theta, x=torch.full_like(everything_failed.x, math.nan)
    )
    with pytest.raises(SimferError, match="fewer than two valid simulations"):
        LikelihoodEstimator().fit(everything_failed)


# -- C2ST --------------------------------------------------------------------------------------
def test_c2st_is_one_half_for_one_distribution_and_one_for_disjoint_ones():
    """Under P = Q each of the 2N held-out predictions is a fair coin: the accuracy has a
    standard deviation √(¼/2N), 0.011 for N = 1000; the test allows four."""
    generator = torch.Generator().manual_seed(0)
    n = 1000
    tolerance = 4 * math.sqrt(0.25 / (2 * n))
    same = [
        c2st(
            torch.randn(n, 2, generator=generator),
            torch.randn(n, 2, generator=generator),
            seed=seed,
        )
        for seed in range(2)
    ]
    disjoint = c2st(
        torch.rand(300, 2, generator=generator), 2 + torch.rand(300, 2, generator=generator)
    )
    shifted = c2st(
        torch.randn(n, 2, generator=generator),
        torch.randn(n, 2, generator=generator) + torch.tensor([1.0, 0.0]),
    )
    bayes = 0.5 + 0.5 * (2 * torch.distributions.Normal(0, 1).cdf(torch.tensor(0.5)) - 1)
    print(
        f"\nC2ST: same {same}, disjoint {disjoint:.4f}, shifted by 1σ {shifted:.4f} "
        f"(Bayes {float(bayes):.4f})"
    )
    assert all(abs(value - 0.5) < tolerance for value in same)
    assert disjoint > 0.99
    assert abs(shifted - float(bayes)) < tolerance + 0.02
    with pytest.raises(ShapeError, match="dimensions"):
        c2st(torch.zeros(20, 2), torch.zeros(20, 3))


def test_c2st_scores_a_sample_far_out_as_distinguishable_not_as_perfect():
    """A diverged MCMC chain (sbi's NRE on LotkaVolterra ran every chain out to ~10³⁸) is
    disjoint from the reference: the Bayes accuracy is 1.  In float32 the classifier's
    Adam state overflowed, every logit became NaN and the score was exactly ½; a handful of
    such points among good ones must only move the score by their share, ½·10/1000."""
    generator = torch.Generator().manual_seed(1)
    reference = torch.randn(500, 2, generator=generator)
    for scale in (1e30, 1e37):
        far = scale * (1 + torch.rand(500, 2, generator=generator))
        assert c2st(reference, far) > 0.99
    n = 1000
    mostly_good = torch.randn(n, 2, generator=generator)
    mostly_good[:10] = 1e37
    score = c2st(torch.randn(n, 2, generator=generator), mostly_good)
    assert abs(score - (0.5 + 0.5 * 10 / n)) < 4 * math.sqrt(0.25 / (2 * n))
    with pytest.raises(FloatingPointError, match="diverged MCMC chain"):
        c2st(reference, torch.full((500, 2), 1e200, dtype=torch.float64))


# -- the documentation's examples run --------------------------------------------------------
def test_the_examples_in_docs_flows_run(monkeypatch, tmp_path):
    """Run every ```python block of docs/flows.md in order, in one namespace."""
    monkeypatch.chdir(tmp_path)  # the examples save models
    run_markdown_examples(ROOT / "docs" / "flows.md")
