"""Flow matching (FMPE) and score-based diffusion (NPSE) posteriors against exact answers.

Tolerances.  Both methods are held to the budget NPE is held to in test_flows.py: with
N = 3000 simulations, early stopping compares models on N_val = 300 held-out rows, and a
validation NLL over 300 rows of a 2-d Gaussian (sd of log p = 1) resolves KL differences
of ≈ 1/√300; two of those, KL_TOLERANCE ≈ 0.115 nats, is what a fit at this budget can
be asked for.  Translated into moments (each bound is what the whole KL budget allows if
spent on that error alone): a mean shifted by δ costs ½(δ/σ)², so |δ|/σ < √(2·0.115) =
0.48; a variance ratio r per dimension costs ½(r − 1 − log r), so r ∈ [0.56, 1.62], the
standard deviation within [0.75, 1.27].  The checks' own Monte Carlo errors are added at
three standard errors (2000 draws: 0.022σ on a mean, 1.6% on a standard deviation).  A
model that ignored x would return the prior, off by ≈ 1σ in the mean and by √2 in the
standard deviation.

log_prob is checked against the analytic log density (the KL estimate E_p[log p − log q]
must lie below the budget and above minus its Monte Carlo error, as a KL cannot be
negative) and for normalisation both ways: E_{θ∼p}[q/p] = ∫q = 1 (it integrates) and
E_{θ∼q}[p/q] = 1 (it is the density of the draws `sample` returns), each within four
standard errors estimated from the same draws plus the solver's error (tolerance 10⁻⁴ in
standardised units: ≲ 10⁻³ in log q, negligible).
"""

import math

import pytest
import torch
from torch import nn

import simfer
from simfer import losses
from simfer.errors import ModelFileError, ShapeError
from simfer.estimators.posterior import PosteriorEstimator
from simfer.nn.diffusion import VPDiffusion
from simfer.nn.flow_matching import SIGMA_MIN, FlowMatching
from simfer.nn.ode import VectorFieldNet, divergence, odeint
from simfer.seeding import seeded
from simulators import GaussianLinear

N_SIMULATIONS = 3000
KL_TOLERANCE = 2 / math.sqrt(0.1 * N_SIMULATIONS)
MEAN_TOLERANCE = math.sqrt(2 * KL_TOLERANCE)  # |δ|/σ
STD_LOW, STD_HIGH = 0.75, 1.27  # from ½(r − 1 − log r) ≤ KL_TOLERANCE, r = variance ratio
N_DRAWS = 2000
FAST = dict(progress=False, patience=10, seed=0)
METHODS = ["fmpe", "npse"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
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
        gaussian, gaussian.prior(), N_SIMULATIONS, seed=0, executor="serial", progress=False
    )


@pytest.fixture(scope="module")
def observations(gaussian):
    with seeded(2):
        theta = gaussian.prior().sample((3,))
    return gaussian.simulate(theta, seed=3)


@pytest.fixture(scope="module")
def trained(gaussian, gaussian_data):
    return {
        method: PosteriorEstimator(method=method, **FAST).fit(gaussian_data, gaussian.prior())
        for method in METHODS
    }


# -- the numerics, without training ------------------------------------------------------
def test_odeint_meets_its_tolerance_both_ways():
    """dy/dt = −t·y has y(t) = y(0)·exp(−t²/2); forwards to t = 2 and back again."""
    y0 = torch.tensor([[1.0], [-3.0]], dtype=torch.float64)
    y1 = odeint(lambda t, y: -t * y, y0, 0.0, 2.0, atol=1e-8, rtol=1e-8)
    assert torch.allclose(y1, y0 * math.exp(-2.0), rtol=0, atol=1e-7)
    back = odeint(lambda t, y: -t * y, y1, 2.0, 0.0, atol=1e-8, rtol=1e-8)
    assert torch.allclose(back, y0, rtol=0, atol=1e-6)


def test_the_exact_divergence_is_the_trace_of_the_jacobian():
    with seeded(0):
        net = VectorFieldNet(3, 2, hidden=16)
        nn.init.normal_(net.output.weight)  # a network that is not zero
        z, context = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2)
    net = net.double()
    t = torch.tensor([0.3], dtype=torch.float64)

    def field(z, s):
        return net(z, t, s.double())

    v, trace = divergence(field, z, context)
    for row in range(5):
        jacobian = torch.autograd.functional.jacobian(
            lambda y, row=row: field(y[None], context[row : row + 1])[0], z[row]
        )
        assert torch.allclose(trace[row], jacobian.trace(), atol=1e-10)
    assert torch.allclose(v, field(z, context))
    probe = torch.ones(5, 3, dtype=torch.float64)
    _, estimate = divergence(field, z, context, probe=probe)
    assert estimate.shape == (5,)


@pytest.mark.parametrize("kind", [FlowMatching, VPDiffusion])
@pytest.mark.parametrize("how", ["exact", "hutchinson"])
def test_an_untrained_model_is_the_standardised_gaussian(kind, how):
    """The network starts at zero, so the ODE is linear: FMPE's carries N(0, I) to
    N(0, (1 + σ_min²) I), NPSE's stands still.  Both divergences are exact for a linear
    field (Rademacher probes: εᵀ b I ε = b·D), so log q is the Gaussian's to the solver's
    tolerance, and the draws have its moments."""
    model = kind(2, 1, hidden=16, divergence=how)
    mean, std = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0])
    model.input_standardize.mean.copy_(mean)
    model.input_standardize.std.copy_(std)
    variance = (1 + SIGMA_MIN**2 if kind is FlowMatching else 1.0) * std**2
    exact = torch.distributions.Normal(mean, variance.sqrt())
    with seeded(0):
        theta = exact.sample((200,))
    summary = torch.zeros(200, 1)
    log_q = model.log_prob_given_summary(theta, summary)
    assert torch.allclose(log_q, exact.log_prob(theta).sum(1), atol=1e-3)
    with seeded(1):
        draws = model.sample_given_summary(4000, summary[:1])[0]
    assert ((draws.mean(0) - mean) / std).abs().max() < 4 / math.sqrt(4000)
    assert ((draws.std(0) / std) - 1).abs().max() < 4 / math.sqrt(2 * 4000)


# -- the losses ----------------------------------------------------------------------------
def test_the_losses_vanish_at_their_targets_and_are_squared_errors():
    z = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    noise = torch.tensor([[0.5, 0.0], [1.0, 1.0]])
    target = z - (1 - 0.1) * noise
    assert float(losses.flow_matching(target, z, noise, 0.1)) == 0.0
    # an error of (1, 0) and (0, 2): squared norms 1 and 4, mean 2.5
    shifted = target + torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert float(losses.flow_matching(shifted, z, noise, 0.1)) == pytest.approx(2.5)
    std = torch.tensor([0.5, 2.0])
    score = -noise / std[:, None]  # the kernel's score −ε/σ
    assert float(losses.denoising_score_matching(score, noise, std)) == 0.0
    # σ s + ε = (1, 0) on the first row only: 1/2
    off = score + torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    assert float(losses.denoising_score_matching(off, noise, std)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"noise must have shape \[2, 2\]"):
        losses.flow_matching(target, z, noise[:, :1], 0.1)
    with pytest.raises(ValueError, match="sigma_min must lie in"):
        losses.flow_matching(target, z, noise, 1.0)
    with pytest.raises(ValueError, match=r"std must have shape \[batch\]"):
        losses.denoising_score_matching(score, noise, std[:, None])


# -- trained on GaussianLinear ------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_the_posterior_matches_the_analytic_gaussian(method, trained, gaussian, observations):
    estimator = trained[method]
    kls = []
    for i, x in enumerate(observations):
        exact = gaussian.posterior(x)
        sd = exact.variance.sqrt()
        draws = estimator.sample(N_DRAWS, x=x, seed=i)
        mean_error = ((draws.mean(0) - exact.mean) / sd).abs().max()
        std_ratio = draws.std(0) / sd
        print(f"\n{method} x={x.tolist()}: |δ|/σ {mean_error:.3f}, sd ratio {std_ratio.tolist()}")
        assert float(mean_error) < MEAN_TOLERANCE + 3 / math.sqrt(N_DRAWS)
        assert float(std_ratio.min()) > STD_LOW - 3 / math.sqrt(2 * N_DRAWS)
        assert float(std_ratio.max()) < STD_HIGH + 3 / math.sqrt(2 * N_DRAWS)
        with seeded(10 + i):
            reference = exact.sample((300,))
        log_ratio = exact.log_prob(reference) - estimator.log_prob(theta=reference, x=x)
        kls.append(float(log_ratio.mean()))
        assert kls[-1] > -3 * float(log_ratio.std()) / math.sqrt(300)
    print(f"{method}: KL {kls}")
    assert sum(kls) / len(kls) < KL_TOLERANCE


@pytest.mark.parametrize("method", METHODS)
def test_log_prob_integrates_to_one_and_is_the_density_of_the_draws(
    method, trained, gaussian, observations
):
    estimator, x = trained[method], observations[0]
    exact = gaussian.posterior(x)
    with seeded(5):
        from_p = exact.sample((1000,))
    from_q = estimator.sample(1000, x=x, seed=6)
    integral = torch.exp(estimator.log_prob(theta=from_p, x=x) - exact.log_prob(from_p))
    reweighted = torch.exp(exact.log_prob(from_q) - estimator.log_prob(theta=from_q, x=x))
    for name, w in (("∫q", integral), ("E_q[p/q]", reweighted)):
        error = float(w.std()) / math.sqrt(len(w))
        print(f"\n{method} {name} = {float(w.mean()):.4f} ± {error:.4f}")
        assert abs(float(w.mean()) - 1) < 4 * error + 0.01


def test_save_and_load_give_identical_draws_and_densities(trained, observations, tmp_path):
    x = observations[0]
    theta = torch.tensor([[0.1, -0.2], [0.3, 0.0]])
    for method, estimator in trained.items():
        estimator.save(tmp_path / f"{method}.pt")
        loaded = simfer.load(tmp_path / f"{method}.pt")
        assert isinstance(loaded, PosteriorEstimator) and loaded.method == method
        assert torch.equal(loaded.sample(50, x=x, seed=3), estimator.sample(50, x=x, seed=3))
        assert torch.equal(loaded.log_prob(theta=theta, x=x), estimator.log_prob(theta=theta, x=x))
        assert not torch.equal(estimator.sample(50, x=x, seed=4), estimator.sample(50, x=x, seed=3))


def test_the_posterior_object_draws_directly_and_evaluates(trained, gaussian, observations):
    posterior = trained["fmpe"].posterior(gaussian.prior(), observations[0])
    draws = posterior.sample(200, seed=0)
    assert draws.shape == (200, 2) and posterior.diagnostics["method"] == "direct"
    assert torch.isfinite(posterior.log_prob(draws[:10])).all()


def test_log_prob_is_differentiable_in_theta(trained, gaussian, observations):
    """∇_θ log q against the analytic posterior's score at a few points (a loose check:
    the fit's error, not the solver's, dominates)."""
    x = observations[0]
    exact = gaussian.posterior(x)
    theta = exact.mean + torch.tensor([[0.1, 0.0], [0.0, -0.1]])
    theta.requires_grad_(True)
    (grad,) = torch.autograd.grad(trained["npse"].log_prob(theta=theta, x=x).sum(), theta)
    expected = -(theta.detach() - exact.mean) / exact.variance
    assert torch.isfinite(grad).all()
    assert float((grad - expected).norm() / expected.norm()) < 0.5


@pytest.mark.parametrize("method", METHODS)
def test_an_embedding_trains_with_the_vector_field_and_reloads(
    method, gaussian, gaussian_data, tmp_path
):
    with seeded(0):
        embedding = nn.Sequential(nn.Linear(2, 32), nn.SiLU(), nn.Linear(32, 4))
    estimator = PosteriorEstimator(method=method, embedding=embedding, max_epochs=40, **FAST)
    estimator.fit(gaussian_data)
    x = torch.tensor([0.3, -0.4])
    exact = gaussian.posterior(x)
    draws = estimator.sample(1000, x=x, seed=0)
    mean_error = ((draws.mean(0) - exact.mean) / exact.variance.sqrt()).abs().max()
    assert float(mean_error) < MEAN_TOLERANCE + 3 / math.sqrt(1000)
    estimator.save(tmp_path / "embedded.pt")
    with pytest.raises(ModelFileError, match="embedding network"):
        simfer.load(tmp_path / "embedded.pt")
    fresh = nn.Sequential(nn.Linear(2, 32), nn.SiLU(), nn.Linear(32, 4))
    loaded = PosteriorEstimator.load(tmp_path / "embedded.pt", embedding=fresh)
    assert torch.equal(loaded.sample(20, x=x, seed=1), estimator.sample(20, x=x, seed=1))


def test_bad_input_is_named(trained):
    with pytest.raises(ValueError, match="unknown posterior method 'ddpm'"):
        PosteriorEstimator(method="ddpm")
    with pytest.raises(ValueError, match=r"'fmpe' is a method, not a flow.*method='fmpe'"):
        PosteriorEstimator("fmpe")
    with pytest.raises(ValueError, match="vector field network is a residual network"):
        PosteriorEstimator(method="npse", hidden=(64, 32))
    with pytest.raises(ValueError, match="divergence must be one of"):
        PosteriorEstimator(method="fmpe", divergence="trace")
    with pytest.raises(ValueError, match="ode_tolerance must lie in"):
        PosteriorEstimator(method="fmpe", ode_tolerance=0)
    estimator = trained["fmpe"]
    with pytest.raises(ShapeError, match=r"x must have shape \[2\] or \[batch, 2\]"):
        estimator.sample(10, x=torch.zeros(3))
    with pytest.raises(ShapeError, match=r"theta must have shape \[2\]"):
        estimator.log_prob(theta=torch.zeros(3), x=torch.zeros(2))
    with pytest.raises(ValueError, match="x holds NaN"):
        estimator.log_prob(theta=torch.zeros(2), x=torch.tensor([math.nan, 0.0]))
    with pytest.raises(TypeError, match="positional argument"):
        estimator.log_prob(torch.zeros(2), torch.zeros(2))
    with pytest.raises(ShapeError, match="without a design column"):
        estimator.sample(5, x=torch.zeros(2), design=torch.zeros(1))


def test_the_examples_in_docs_flow_matching_run(monkeypatch, tmp_path):
    from pathlib import Path

    from conftest import run_markdown_examples

    page = Path(__file__).resolve().parent.parent / "docs" / "flow_matching.md"
    monkeypatch.chdir(tmp_path)  # the examples write their model files here
    run_markdown_examples(page)


# -- training defaults ---------------------------------------------------------------------
VECTOR_FIELD_DEFAULTS = {
    "max_epochs": 1000,
    "patience": 50,
    "smoothing": 0.9,
    "schedule": "plateau",
}


@pytest.mark.parametrize("method", METHODS)
def test_the_vector_fields_train_with_their_own_defaults_unless_told(method):
    """fmpe and npse default to a smoothed validation loss, a patience of 50 and the plateau
    schedule; any setting the user gives wins; the flows keep TrainingConfig's defaults."""
    from dataclasses import asdict

    from simfer.training import TrainingConfig

    training = asdict(PosteriorEstimator(method=method).training)
    assert training == {**asdict(TrainingConfig()), **VECTOR_FIELD_DEFAULTS}
    told = dict(max_epochs=7, patience=3, smoothing=0.0, schedule="cosine")
    training = asdict(PosteriorEstimator(method=method, **told).training)
    assert training == {**asdict(TrainingConfig()), **told}
    assert asdict(PosteriorEstimator(method="npe").training) == asdict(TrainingConfig())
    assert asdict(PosteriorEstimator("maf").training) == asdict(TrainingConfig())
    with pytest.raises(ValueError, match=r"smoothing must be a number in \[0, 1\)"):
        PosteriorEstimator(method=method, smoothing=1.0)


def test_a_vector_field_fit_follows_the_smoothed_validation_loss(gaussian_data, tmp_path):
    """The defaults reach the loop: the history's smoothed loss is the moving average of the
    raw one, s_k = 0.9 s_{k−1} + 0.1 v_k (float32 arithmetic: relative error ≲ 10⁻⁶), the
    best epoch is the smoothed loss's argmin, and a saved and loaded model keeps them."""
    estimator = PosteriorEstimator(method="fmpe", max_epochs=6, progress=False, seed=0)
    estimator.fit(gaussian_data)
    history = estimator.history
    raw = [v[0] for v in history.validation_loss]
    smoothed = [s[0] for s in history.smoothed_validation_loss]
    expected = [raw[0]]
    for v in raw[1:]:
        expected.append(0.9 * expected[-1] + 0.1 * v)
    assert smoothed == pytest.approx(expected, rel=1e-6)
    assert smoothed != pytest.approx(raw, rel=1e-3)
    assert history.best_epoch == [min(range(len(smoothed)), key=smoothed.__getitem__)]
    estimator.save(tmp_path / "fmpe.pt")
    assert simfer.load(tmp_path / "fmpe.pt").training.smoothing == 0.9
