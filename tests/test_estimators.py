"""Ratio and score estimators on the Galton board, whose exact log r and score are known."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import simfer
from simfer import ModelFileError
from simulators import GaltonBoard

FAST = dict(hidden=(64, 64), progress=False, seed=0)


@pytest.fixture(scope="module")
def board():
    return GaltonBoard(n_rows=16)


@pytest.fixture(scope="module")
def data(board):
    return simfer.simulate(
        board,
        board.prior(),
        10_000,
        gold=True,
        theta_ref=[0.0],
        seed=0,
        executor="serial",
        progress=False,
    )


@pytest.fixture(scope="module")
def evaluation(board):
    """x ~ p(x|θ1 = 0) and a grid of θ0 with the exact log r(x|θ0, 0) of every pair."""
    x = board.simulate(torch.zeros(400, 1), seed=1)
    grid = torch.linspace(-0.9, 0.9, 19)
    exact = torch.stack(
        [
            board.log_likelihood_ratio(
                x.double(),
                torch.full((400, 1), float(t), dtype=torch.float64),
                torch.zeros(400, 1, dtype=torch.float64),
            ).float()
            for t in grid
        ]
    )
    return x, grid, exact


def log_ratio_mse(estimator, evaluation) -> float:
    x, grid, exact = evaluation
    estimate = torch.stack(
        [estimator.log_ratio(x, torch.full((len(x), 1), float(t)), torch.zeros(1)) for t in grid]
    )
    return float(((estimate - exact) ** 2).mean())


@pytest.mark.parametrize("method", ["carl", "rolr", "rascal", "alice", "alices", "cascal", "nre"])
def test_every_method_learns_the_galton_ratio(method, data, evaluation):
    estimator = simfer.RatioEstimator(method, max_epochs=20, **FAST).fit(
        data.subset(slice(0, 4000))
    )
    trivial = float((evaluation[2] ** 2).mean())  # log r̂ = 0
    assert log_ratio_mse(estimator, evaluation) < 0.7 * trivial
    assert len(estimator.history.train_loss) <= 20


def test_bnre_is_balanced(data, evaluation, board):
    """BNRE trades sharpness for balance: E_p(θ,x) σ(f) + E_p(θ)p(x) σ(f) = 1 on new data."""
    estimator = simfer.RatioEstimator("bnre", max_epochs=20, **FAST).fit(
        data.subset(slice(0, 4000))
    )
    trivial = float((evaluation[2] ** 2).mean())
    assert log_ratio_mse(estimator, evaluation) < trivial
    fresh = simfer.simulate(board, board.prior(), 4000, seed=11, executor="serial", progress=False)
    joint = estimator.log_ratio(fresh.x, fresh.theta)
    marginal = estimator.log_ratio(fresh.x, torch.roll(fresh.theta, 1, 0))
    balance = float(torch.sigmoid(joint).mean() + torch.sigmoid(marginal).mean())
    assert abs(balance - 1) < 0.05


def test_gold_beats_the_classifier_at_equal_budget(data, evaluation):
    """The point of gold mining: ALICES needs far fewer simulations than CARL."""
    carl = simfer.RatioEstimator("carl", max_epochs=40, **FAST).fit(data)
    alices = simfer.RatioEstimator("alices", max_epochs=40, **FAST).fit(data)
    assert log_ratio_mse(alices, evaluation) < 0.5 * log_ratio_mse(carl, evaluation)


def board_log_likelihood(x, theta, rows=12):
    """Exact log p(x|θ) of `tilted_board` below, by dynamic programming over positions."""
    positions = torch.arange(-rows, rows + 1, dtype=torch.float64)
    probs = (positions == 0).double().expand(len(theta), -1).clone()
    for _ in range(rows):
        p = torch.sigmoid(theta * (1 + 0.1 * positions))  # [batch, positions]
        moved_right = torch.nn.functional.pad((probs * p)[:, :-1], (1, 0))
        moved_left = torch.nn.functional.pad((probs * (1 - p))[:, 1:], (0, 1))
        probs = moved_right + moved_left
    readout = torch.distributions.Normal(positions, 0.5).log_prob(x)
    return torch.logsumexp(torch.log(probs) + readout, dim=1)


def test_a_pyro_simulator_trains_through_the_same_fit():
    def tilted_board(theta, design=None):
        pos = torch.zeros(theta.shape[0])
        for row in range(12):
            p = torch.sigmoid(theta[:, 0] * (1 + 0.1 * pos))
            pos = pos + 2 * pyro.sample(f"z{row}", dist.Bernoulli(p)) - 1
        return pyro.sample("x", dist.Normal(pos, 0.5))

    sim = simfer.Simulator.from_pyro(tilted_board, theta_dim=1)
    prior = simfer.BoxUniform([-1.0], [1.0])
    data = simfer.simulate(
        sim, prior, 4000, gold=True, theta_ref=[0.0], seed=2, executor="serial", progress=False
    )
    estimator = simfer.RatioEstimator("alices", max_epochs=20, **FAST).fit(data)
    x = sim.simulate(torch.zeros(300, 1), seed=5)
    squared_errors, trivial = [], []
    for t in torch.linspace(-0.9, 0.9, 7):
        theta0 = torch.full((300, 1), float(t))
        exact = board_log_likelihood(x.double(), theta0.double()) - board_log_likelihood(
            x.double(), torch.zeros(300, 1, dtype=torch.float64)
        )
        squared_errors.append((estimator.log_ratio(x, theta0) - exact.float()) ** 2)
        trivial.append(exact.float() ** 2)
    assert float(torch.cat(squared_errors).mean()) < 0.2 * float(torch.cat(trivial).mean())
    score = simfer.ScoreEstimator("sally", max_epochs=20, **FAST).fit(data)
    exact_score = (
        board_log_likelihood(x.double(), torch.full((300, 1), 1e-4, dtype=torch.float64))
        - board_log_likelihood(x.double(), torch.full((300, 1), -1e-4, dtype=torch.float64))
    ) / 2e-4
    assert float(((score.score(x)[:, 0] - exact_score.float()) ** 2).mean()) < 0.2 * float(
        exact_score.var()
    )


def test_ensemble_spread_is_a_usable_error_bar(data, evaluation):
    """The spread of a bagged 5-member ensemble tracks the error but under-covers: measured
    on this board, the exact log r falls inside ±1 spread ~25% of the time (68% would be
    calibrated) and inside ±3 spreads ~70%; the spread misses the members' shared bias.
    The test pins that behaviour so a regression (no spread, or one unrelated to the
    error) fails; it does not claim calibration."""
    ensemble = simfer.RatioEstimator("alices", n_ensemble=5, max_epochs=25, **FAST).fit(
        data.subset(slice(0, 3000))
    )
    x, grid, exact = evaluation
    pairs = [
        ensemble.log_ratio(x, torch.full((len(x), 1), float(t)), return_std=True) for t in grid
    ]
    means, stds = zip(*pairs, strict=True)
    error, spread = (torch.stack(means) - exact).abs(), torch.stack(stds)
    assert float(spread.mean()) > 0
    large_error = error > error.quantile(0.9)
    assert float(spread[large_error].mean()) > 1.5 * float(spread[~large_error].mean())
    assert float((error <= spread).float().mean()) > 0.15
    assert float((error <= 3 * spread).float().mean()) > 0.5


def test_sally_learns_the_score_and_the_fisher_information(board, data):
    estimator = simfer.ScoreEstimator("sally", max_epochs=40, **FAST).fit(data)
    x = board.simulate(torch.zeros(20_000, 1), seed=3)
    exact = board.likelihood_score(x.double(), torch.zeros(20_000, 1, dtype=torch.float64))
    estimate = estimator.score(x)
    assert float(((estimate - exact.float()) ** 2).mean()) < 0.05 * float(exact.var())
    exact_fisher = float((exact**2).mean())
    learned_fisher = float(estimator.fisher_information(x)[0, 0])
    assert abs(learned_fisher / exact_fisher - 1) < 0.1
    assert float(estimator.fisher_information(x, n_events=100)[0, 0]) == pytest.approx(
        100 * learned_fisher, rel=1e-5
    )


def test_save_and_load_give_identical_outputs(data, tmp_path):
    subset = data.subset(slice(0, 1000))
    ratio = simfer.RatioEstimator("alices", n_ensemble=2, max_epochs=3, **FAST).fit(subset)
    score = simfer.ScoreEstimator("sally", max_epochs=3, **FAST).fit(subset)
    x, theta = subset.x[:50], subset.theta[:50]
    ratio.save(tmp_path / "ratio.pt")
    score.save(tmp_path / "score.pt")
    loaded = simfer.load(tmp_path / "ratio.pt")
    assert isinstance(loaded, simfer.RatioEstimator) and loaded.method == "alices"
    assert torch.equal(loaded.log_ratio_ensemble(x, theta), ratio.log_ratio_ensemble(x, theta))
    assert torch.equal(loaded.score(x, theta), ratio.score(x, theta))
    assert loaded.history.train_loss == ratio.history.train_loss
    assert torch.equal(simfer.ScoreEstimator.load(tmp_path / "score.pt").score(x), score.score(x))
    with pytest.raises(ModelFileError, match="holds a ScoreEstimator, not a RatioEstimator"):
        simfer.RatioEstimator.load(tmp_path / "score.pt")


def test_bad_model_files_are_refused_without_running_code(data, tmp_path):
    truncated = tmp_path / "truncated.pt"
    simfer.RatioEstimator("carl", max_epochs=1, **FAST).fit(data.subset(slice(0, 200))).save(
        truncated
    )
    truncated.write_bytes(truncated.read_bytes()[:500])
    with pytest.raises(ModelFileError, match="not a readable simfer model file"):
        simfer.load(truncated)

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": "simfer-estimator", "evil": Payload()}, unsafe)
    with pytest.raises(ModelFileError, match="pickled objects"):
        simfer.load(unsafe)

    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ModelFileError, match="not a simfer model file"):
        simfer.load(foreign)

    newer = tmp_path / "newer.pt"
    torch.save({"format": "simfer-estimator", "format_version": 99, "simfer_version": "9.0"}, newer)
    with pytest.raises(ModelFileError, match="newer simfer"):
        simfer.load(newer)


def test_estimators_explain_what_data_they_need(board):
    plain = simfer.simulate(board, board.prior(), 100, seed=0, executor="serial", progress=False)
    with pytest.raises(simfer.SimferError, match="theta_ref"):
        simfer.RatioEstimator("carl").fit(plain)
    no_gold = simfer.simulate(
        board, board.prior(), 100, theta_ref=[0.0], seed=0, executor="serial", progress=False
    )
    with pytest.raises(simfer.SimferError, match="gold=True"):
        simfer.RatioEstimator("alices").fit(no_gold)
    with pytest.raises(ValueError, match="unknown ratio method"):
        simfer.RatioEstimator("magic")
    with pytest.raises(TypeError, match="unknown arguments"):
        simfer.RatioEstimator("carl", epochs=3)
    with pytest.raises(simfer.SimferError, match="not trained yet"):
        simfer.RatioEstimator("carl").log_ratio(torch.zeros(1, 1), torch.zeros(1, 1))


def test_a_fit_is_reproducible_from_its_seed(data):
    subset = data.subset(slice(0, 600))
    first = simfer.RatioEstimator("alices", max_epochs=3, **FAST).fit(subset)
    torch.manual_seed(12345)  # the global generator must not matter
    second = simfer.RatioEstimator("alices", max_epochs=3, **FAST).fit(subset)
    x, theta = subset.x[:20], subset.theta[:20]
    assert torch.equal(first.log_ratio(x, theta), second.log_ratio(x, theta))
