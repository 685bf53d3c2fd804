"""The seams between stages: the per-event term protocol, design in every estimator's
context, the Dims record, and one-way imports."""

from __future__ import annotations

import ast
import inspect
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import GAUSSIAN_PRIOR, ProjectionSensor
from torch.distributions import Independent, Normal, Uniform

import simfer
import simulators
from simfer.errors import ModelFileError, ShapeError
from simfer.estimators import Estimator
from simfer.inference import EventTerm, Posterior, SupportsPosterior, likelihood_scan

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(progress=False, seed=0)


# -- a fifth estimator, written outside simfer --------------------------------------------
class ExactGaussianMean(Estimator):
    """A toy 'estimator' with the exact likelihood x ~ N(θ, σ² I): nothing in simfer knows
    it, yet it gets posteriors and limits through `event_term`."""

    def __init__(self, sigma: float = 0.5):
        super().__init__(progress=False)
        self.sigma = sigma
        self.network = torch.nn.Linear(1, 1)  # "trained": posterior() requires a network

    def event_term(self, prior, x_obs, *, design=None):
        def log_likelihood(x, theta, design):
            return Normal(theta, self.sigma).log_prob(x).sum(-1)

        x_obs = torch.as_tensor(x_obs)
        return EventTerm(log_likelihood, x_obs, (x_obs.shape[-1],), model=self)


def test_a_fifth_estimator_gets_posteriors_and_limits_without_touching_simfer():
    torch.manual_seed(0)
    sigma, n = 0.5, 40
    prior = simfer.BoxUniform([-3.0, -3.0], [3.0, 3.0])
    truth = torch.tensor([0.4, -0.7])
    x_obs = truth + sigma * torch.randn(n, 2)
    estimator = ExactGaussianMean(sigma)
    assert isinstance(estimator, SupportsPosterior)
    posterior = estimator.posterior(prior, x_obs)
    draws = posterior.sample(4000, seed=1)
    # the box is ±3 and the posterior N(x̄, σ²/n) sits ≥ 20 σ_post inside it: no truncation
    expected_mean, expected_std = x_obs.mean(0), sigma / math.sqrt(n)
    # 4000 correlated draws: the mean's Monte-Carlo error is below σ_post/10 for ESS > 100
    assert torch.allclose(draws.mean(0), expected_mean, atol=expected_std / 3)
    assert torch.allclose(draws.std(0), torch.full((2,), expected_std), rtol=0.15)
    grid = torch.linspace(-1, 1.5, 201)[:, None]
    scan = likelihood_scan(posterior, grid, parameters=[0])  # θ_2 profiled
    low, high = scan.interval(0.6827)
    # the profile of a Gaussian likelihood: the 68 % interval is x̄ ± σ/√n exactly
    step = 2.5 / 200
    assert abs(low - (expected_mean[0] - expected_std)) < step
    assert abs(high - (expected_mean[0] + expected_std)) < step


def test_any_object_with_event_term_gets_a_posterior_through_from_term():
    class NotAnEstimator:
        def event_term(self, prior, x_obs, *, design=None):
            return EventTerm(lambda x, t, d: -0.5 * ((x - t) ** 2).sum(-1), x_obs, (1,))

    term = NotAnEstimator().event_term(None, torch.tensor([[0.2]]))
    posterior = Posterior.from_term(term, simfer.BoxUniform([-5.0], [5.0]))
    assert abs(float(posterior.sample(3000, seed=0).mean()) - 0.2) < 0.1


# -- one-way imports ----------------------------------------------------------------------
def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add("." * node.level + node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_inference_imports_nothing_from_estimators():
    for path in (ROOT / "simfer" / "inference").glob("*.py"):
        offending = {m for m in _imports(path) if "estimators" in m}
        assert not offending, f"{path.name} imports {offending}"


# -- design in every estimator's context --------------------------------------------------


@pytest.fixture(scope="module")
def sensor():
    return ProjectionSensor()


@pytest.fixture(scope="module")
def design_data(sensor):
    designs = Independent(Uniform(torch.tensor([0.0]), torch.tensor([1.0])), 1)
    return simfer.simulate(
        sensor,
        GAUSSIAN_PRIOR,
        n=6000,
        gold=True,
        theta_ref=[0.0, 0.0],
        design=designs,
        executor="serial",
        seed=3,
        progress=False,
    )


def _analytic_posterior(x, designs):
    """θ | x_1..3 for θ ~ N(0, I), x_i = u(d_i)·θ + ε: Gaussian with precision I + Σ_i u_i
    u_iᵀ / σ² and mean cov · Σ_i u_i x_i / σ²."""
    u = ProjectionSensor.direction(designs).double()  # [3, 2]
    precision = torch.eye(2, dtype=torch.float64) + u.T @ u / ProjectionSensor.sigma**2
    cov = torch.linalg.inv(precision)
    mean = cov @ (u * x.double()).sum(0) / ProjectionSensor.sigma**2
    return mean, cov


@pytest.fixture(scope="module")
def three_observations(sensor):
    designs = torch.tensor([[0.1], [0.45], [0.8]])
    truth = torch.tensor([[0.8, -0.5]]).expand(3, 2)
    x = sensor.simulate(truth, design=designs, seed=11)
    return x, designs


@pytest.mark.parametrize(
    "make",
    [
        lambda: simfer.LikelihoodEstimator(max_epochs=40, **FAST),
        lambda: simfer.RatioEstimator("alices", max_epochs=40, **FAST),
    ],
    ids=["nle", "alices"],
)
def test_surrogates_amortized_over_designs_recover_the_posterior_of_three_designs(
    make, design_data, three_observations
):
    x, designs = three_observations
    estimator = make().fit(design_data)
    assert estimator.dims.design_dim == 1
    draws = estimator.posterior(GAUSSIAN_PRIOR, x, design=designs).sample(3000, seed=0).double()
    mean, cov = _analytic_posterior(x, designs)
    std = cov.diagonal().sqrt()
    # Tolerances: the Monte-Carlo error of 3000 slice draws (ESS ≳ 300) is ≲ 0.06 σ; the
    # rest is the surrogate's error after 6000 simulations, allowed up to 0.35 σ in the
    # mean and 25 % in the width.  The same draws with the designs ignored (all at the
    # middle design) land ≥ 1 σ away (checked below), so the test sees the design.
    assert ((draws.mean(0) - mean).abs() / std).max() < 0.35
    assert ((draws.std(0) / std) - 1).abs().max() < 0.25
    wrong_mean, _ = _analytic_posterior(x, designs[[1, 1, 1]])
    assert ((wrong_mean - mean).abs() / std).max() > 1.0


def test_every_estimator_trains_and_evaluates_with_a_design_column(design_data, tmp_path):
    x, d = design_data.x[:5], design_data.design[:5]
    theta = design_data.theta[:5]
    small = dict(max_epochs=2, **FAST)
    npe = simfer.PosteriorEstimator(**small).fit(design_data)
    nle = simfer.LikelihoodEstimator("scandal", **small).fit(design_data)
    carl = simfer.RatioEstimator("carl", **small).fit(design_data)
    nre = simfer.RatioEstimator("nre", **small).fit(design_data)
    sally = simfer.ScoreEstimator(**small).fit(design_data)
    values = {
        "npe": lambda e, **kw: e.log_prob(theta=theta, x=x, **kw),
        "nle": lambda e, **kw: e.log_prob(x=x, theta=theta, **kw),
        "carl": lambda e, **kw: e.log_ratio(x=x, theta=theta, reference=e.theta_ref, **kw),
        "nre": lambda e, **kw: e.log_ratio(x=x, theta=theta, reference="marginal", **kw),
        "sally": lambda e, **kw: e.score(x=x, **kw),
    }
    estimators = {"npe": npe, "nle": nle, "carl": carl, "nre": nre, "sally": sally}
    for name, estimator in estimators.items():
        value = values[name](estimator, design=d)
        assert torch.isfinite(value).all(), name
        # the design matters: another design changes the value
        assert not torch.allclose(value, values[name](estimator, design=d.flip(0) + 0.3)), name
        # one design broadcasts over the batch
        one = values[name](estimator, design=d[0])
        assert torch.allclose(one[:1], value[:1], atol=1e-5), name
        with pytest.raises(ShapeError, match="trained on simulations with a design"):
            values[name](estimator)
        estimator.save(tmp_path / f"{name}.pt")
        loaded = simfer.load(tmp_path / f"{name}.pt")
        assert loaded.dims == estimator.dims
        assert torch.allclose(values[name](loaded, design=d), value, atol=1e-6), name
    draws = npe.sample(7, x=x[0], design=d[0], seed=0)
    assert draws.shape == (7, 2)
    assert nle.sample(3, theta=theta[0], design=d[0], seed=0).shape == (3, 1)


def test_a_model_without_design_refuses_one():
    data = simfer.simulate(
        simulators.GaussianLinear(dim=2),
        simulators.GaussianLinear(dim=2).prior(),
        n=300,
        executor="serial",
        seed=0,
        progress=False,
    )
    nle = simfer.LikelihoodEstimator(max_epochs=1, **FAST).fit(data)
    with pytest.raises(ShapeError, match="without a design column"):
        nle.log_prob(x=data.x[:2], theta=data.theta[:2], design=[0.5])
    with pytest.raises(ShapeError, match="without a design column"):
        nle.posterior(data_prior(), data.x[:2], design=[0.5])


def data_prior():
    return simulators.GaussianLinear(dim=2).prior()


def test_posterior_needs_one_design_per_observation_or_one_for_all(design_data, three_observations):
    x, designs = three_observations
    nle = simfer.LikelihoodEstimator(max_epochs=1, **FAST).fit(design_data)
    with pytest.raises(ShapeError, match="pass design="):
        nle.posterior(GAUSSIAN_PRIOR, x)
    with pytest.raises(ShapeError, match="one per observation"):
        nle.posterior(GAUSSIAN_PRIOR, x, design=designs[:2])
    shared = nle.posterior(GAUSSIAN_PRIOR, x, design=designs[0])
    assert shared.design_obs.shape == (3, 1)


# -- the Dims record ----------------------------------------------------------------------
def test_dims_is_frozen_and_format_1_model_files_still_load(tmp_path):
    data = simfer.simulate(
        simulators.GaussianLinear(dim=2),
        data_prior(),
        n=300,
        executor="serial",
        seed=0,
        progress=False,
    )
    npe = simfer.PosteriorEstimator(max_epochs=1, **FAST).fit(data)
    with pytest.raises(AttributeError):
        npe.dims.theta_dim = 3
    path = tmp_path / "npe.pt"
    npe.save(path)
    payload = torch.load(path, weights_only=True)
    old = json.loads(payload["dims"])
    old["context_features"] = old.pop("x_dim")  # the format-1 name
    del old["design_dim"]
    payload.update(format_version=1, dims=json.dumps(old))
    torch.save(payload, tmp_path / "old.pt")
    loaded = simfer.load(tmp_path / "old.pt")
    assert loaded.dims == npe.dims
    x = data.x[:3]
    assert torch.equal(
        loaded.log_prob(theta=data.theta[:3], x=x), npe.log_prob(theta=data.theta[:3], x=x)
    )
    old["mystery"] = 1
    payload.update(dims=json.dumps(old))
    torch.save(payload, tmp_path / "odd.pt")
    with pytest.raises(ModelFileError, match="model format 1"):
        simfer.load(tmp_path / "odd.pt")


# -- a consistent public API ----------------------------------------------------------------
@pytest.mark.parametrize(
    "cls",
    [
        simfer.RatioEstimator,
        simfer.ScoreEstimator,
        simfer.PosteriorEstimator,
        simfer.LikelihoodEstimator,
    ],
)
def test_training_settings_show_in_the_signature_and_hidden_means_widths(cls):
    parameters = inspect.signature(cls).parameters
    for name in ("max_epochs", "batch_size", "learning_rate", "patience", "seed", "device"):
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    assert "training" not in parameters
    cls(hidden=32)  # one width at the default depth
    with pytest.raises(ValueError, match="hidden"):
        cls(hidden=(0,))


def test_simulations_at_one_design_give_a_fixed_design_model():
    """Simulations all at one design (simulate(..., design=[60.0])) fill the design column
    with one value: the model records it and takes no design input (it knows p(x|θ) at
    that design only)."""
    weinberg = simulators.WeinbergAngle(n_events=5)
    prior = simfer.BoxUniform([0.2], [0.26])
    data = simfer.simulate(
        weinberg, prior, n=300, design=[60.0], executor="serial", seed=0, progress=False
    )
    assert data.design is not None and bool((data.design == 60.0).all())
    nle = simfer.LikelihoodEstimator(max_epochs=1, **FAST).fit(data)
    assert nle.design_dim == 0 and nle.dims.fixed_design == (60.0,)
    x, theta = data.x[:3], data.theta[:3]
    plain = nle.log_prob(x=x, theta=theta)
    torch.testing.assert_close(nle.log_prob(x=x, theta=theta, design=data.design[0]), plain)
    with pytest.raises(ShapeError, match="all made at the design"):
        nle.log_prob(x=x, theta=theta, design=[91.0])
    posterior = nle.posterior(prior, x, design=data.design[0])
    assert posterior.design_obs is None
