"""SALLINO and MadMiner's histograms of SALLY's score, on the Galton board, against its exact
likelihood (`GaltonBoard.log_likelihood`, `log_likelihood_ratio`, `likelihood_score`).

Setting: a 16-row board, θ_ref = 0, SALLY trained on 5000 simulations at θ_ref (its score
error is about 1 % of the score's variance), histograms filled with 50 000 simulations at
each of the 41 nodes of θ ∈ [−1, 1] (common random numbers).  The exact score t(x|0) rises
with x except on the far left: it has its minimum near x = −8 and folds back below
(t(−4|0) ≈ t(−12|0) ≈ −2.7), which is where SALLINO's local sufficiency must fail.
"""

import math

import pytest
import torch

import simfer
from simfer import HistogramLikelihood
from simfer.errors import ShapeError, SimferError, SupportError
from simfer.estimators.histogram import _Grid, _grid_of_table
from simfer.inference import likelihood_scan, posterior_from_likelihood
from simulators import GaltonBoard

GRID = torch.linspace(-1, 1, 41)
N_PER_NODE = 50_000
PRIOR = simfer.BoxUniform([-1.0], [1.0])


@pytest.fixture(scope="module")
def board():
    return GaltonBoard(n_rows=16)


@pytest.fixture(scope="module")
def sally(board, one_thread):
    data = board.simulate(torch.zeros(5000, 1), gold=True, seed=0)
    return simfer.ScoreEstimator(hidden=(64, 64), max_epochs=20, progress=False, seed=0).fit(data)


@pytest.fixture(scope="module")
def sallino(sally, board):
    return HistogramLikelihood.from_simulator(sally, board, GRID, n_per_point=N_PER_NODE)


def exact_log_r(board, x, theta: float):
    theta = torch.full((len(x), 1), theta, dtype=torch.float64)
    return board.log_likelihood_ratio(x.double(), theta, torch.zeros_like(theta))


def rms(values) -> float:
    return float(values.double().pow(2).mean().sqrt())


def bin_of(sallino, sally, x, theta: float):
    """SALLINO's bin of each x at θ (θ_ref = 0, so the direction is the sign of θ)."""
    h = sally.score(x=x).double()[:, 0] * math.copysign(1.0, theta)
    return torch.bucketize(h, sallino.edges([theta])[0], right=True)


@pytest.mark.parametrize("theta", [-0.2, -0.1, 0.1, 0.2])
def test_sallino_log_ratio_near_the_reference_within_binning_and_fill_error(
    board, sally, sallino, theta
):
    """ℓ(x|θ) − ℓ(x|θ_ref) = log P̂_θ(b) − log P̂_0(b) against the exact log r(x|θ, 0).

    Tolerance.  ℓ − log r = [log P_θ(b)/P_0(b) − log r(x)] + fill noise.  The first term is
    the histogram's bias: P_θ(b)/P_0(b) = E_0[r | b] lies between the smallest and largest
    r in the bin, so |bias_i| ≤ β_i = max_{j ∈ b(i)} |log r_j − log r_i| (measured on the
    events themselves; about |δ| times the bin's width in t).  The fill noise has standard
    deviation σ_i (delta method on the counts, `return_std`; an overstatement under common
    random numbers).  Hence rms(ℓ − log r) ≤ rms(β) + rms(noise), and rms(noise) stays
    below 2 rms(σ) for the ~25 independent bin fluctuations.  The tolerance is informative:
    it is below 3/4 of rms(log r), the error of knowing nothing (ℓ = 0).

    A tighter check of the same numbers: ℓ matches the bin average log E_0[r | b] computed
    from the exact r of the events in the bin within the fill noise (2 rms σ)."""
    x = board.simulate(torch.zeros(2000, 1), seed=7)
    log_r = exact_log_r(board, x, theta)
    value, sigma = sallino.log_likelihood(x=x, theta=[theta], return_std=True)
    reference = sallino.log_likelihood(x=x, theta=[0.0])
    assert float(reference.abs().max()) < 1e-6  # ℓ is a ratio to θ_ref
    error = value.double() - log_r
    bins = bin_of(sallino, sally, x, theta)
    beta, bin_average = torch.zeros_like(log_r), torch.zeros_like(log_r)
    for b in bins.unique():
        inside = bins == b
        beta[inside] = (log_r[inside][:, None] - log_r[inside][None, :]).abs().max(1).values
        bin_average[inside] = log_r[inside].exp().mean().log()
    tolerance = rms(beta) + 2 * rms(sigma)
    assert rms(error) <= tolerance
    assert tolerance < 0.75 * rms(log_r)
    assert rms(value.double() - bin_average) <= 2 * rms(sigma)


def test_sallino_degrades_away_from_the_reference_where_the_score_folds(board, sallino):
    """Local sufficiency: t(x|θ_ref) carries what x says about θ to first order in δ, so
    beyond the binning error (∝ |δ|) SALLINO errs only where events with one value of t
    have different ratios at θ.  For x > −8 the Galton score is increasing in x (sufficient
    at every θ): going from |δ| = 0.1 to 0.8 on that side (θ > 0 pushes the balls right)
    the error per unit δ does not grow.  θ < 0 pushes the balls to x < −8, where t folds
    (x = −4 and −12 share t ≈ −2.7 but not their ratio at θ): there it grows.  Measured:
    rms error / |δ| ≈ 0.41 → 0.27 on the right, 0.48 → 0.85 on the left."""
    x = board.simulate(torch.zeros(2000, 1), seed=7)

    def error_per_delta(theta: float) -> float:
        value = sallino.log_likelihood(x=x, theta=[theta]).double()
        return rms(value - exact_log_r(board, x, theta)) / abs(theta)

    assert error_per_delta(0.8) <= error_per_delta(0.1)
    assert error_per_delta(-0.8) > error_per_delta(-0.1)


def test_maximum_likelihood_agrees_with_the_exact_one(board, sallino):
    """θ̂ from n = 50 events at θ_true = 0.1 (posterior MAP under a flat prior, by Adam
    through the interpolated histograms) against the exact likelihood's θ̂ on the same
    events: closer than one standard error 1/√(n I(θ̂)) of the exact estimate (I from the
    exact score's variance at θ̂)."""
    for seed in (100, 101, 102):
        x = board.simulate(torch.full((50, 1), 0.1), seed=seed)
        estimate = float(sallino.posterior(PRIOR, x).map(n_starts=4, steps=200)[0])
        exact = posterior_from_likelihood(board.log_likelihood, PRIOR, x, x_shape=(1,))
        theta_hat = float(exact.map(n_starts=4, steps=200)[0])
        draws = board.simulate(torch.full((20_000, 1), theta_hat), seed=seed)
        fisher = float(
            board.likelihood_score(
                draws.double(), torch.full((20_000, 1), theta_hat, dtype=torch.float64)
            ).var()
        )
        standard_error = 1 / math.sqrt(50 * fisher)
        assert abs(estimate - theta_hat) < standard_error, (seed, estimate, theta_hat)


def test_wilks_intervals_cover_the_truth_like_the_exact_ones(board, sallino):
    """68 % and 95 % Wilks intervals (`simfer.inference.likelihood_scan`, q ≤ 1 and 3.84) of
    SALLINO and of the exact likelihood on the same events (θ_true = 0.1, 50 events, ten
    seeds): the ends agree within a quarter of the exact 68 % width (measured: at most
    0.017 against 0.024; the histograms lose little information near θ_ref), so both give
    the same verdict on covering θ_true whenever θ_true lies farther than that from the
    exact interval's ends.  Both verdicts occur among those cases (measured: 10 covered,
    3 missed), so the comparison is not vacuous."""
    grid = torch.linspace(-0.3, 0.5, 81)
    truth, verdicts = 0.1, []
    for seed in range(100, 110):
        x = board.simulate(torch.full((50, 1), truth), seed=seed)
        ours = likelihood_scan(sallino.posterior(PRIOR, x), grid, steps=60)
        exact = likelihood_scan(
            posterior_from_likelihood(board.log_likelihood, PRIOR, x, x_shape=(1,)),
            grid,
            steps=60,
        )
        tolerance = (exact.interval(0.68)[1] - exact.interval(0.68)[0]) / 4
        for level in (0.68, 0.95):
            (low, high), (exact_low, exact_high) = ours.interval(level), exact.interval(level)
            assert abs(low - exact_low) < tolerance and abs(high - exact_high) < tolerance
            if min(abs(truth - exact_low), abs(truth - exact_high)) > tolerance:
                covers = exact_low <= truth <= exact_high
                assert (low <= truth <= high) == covers, (seed, level)
                verdicts.append(covers)
    assert sum(verdicts) >= 5 and len(verdicts) - sum(verdicts) >= 1


def test_sallino_in_one_parameter_is_the_score_histogram_ratio(sally, board, sallino):
    """With one parameter the direction is ±1, so SALLINO's variable is ±t̂ and its bins are
    the quantile bins of t̂: ℓ_SALLINO(θ) = ℓ_score(θ) − ℓ_score(θ_ref) (MadMiner's histogram
    of the score component, relative to θ_ref)."""
    histogram = HistogramLikelihood.from_simulator(
        sally, board, GRID, n_per_point=N_PER_NODE, observable="score"
    )
    x = board.simulate(torch.full((500, 1), 0.3), seed=4)
    for theta in (0.35, 0.6, -0.45):
        relative = histogram.log_likelihood(x=x, theta=[theta]) - histogram.log_likelihood(
            x=x, theta=[0.0]
        )
        torch.testing.assert_close(sallino.log_likelihood(x=x, theta=[theta]), relative)


def test_the_likelihood_is_smooth_between_nodes(board, sallino):
    """Cubic convolution between nodes: ℓ passes through the node values, and the summed
    log-likelihood of 50 events has its maximum between nodes, where the exact one has it
    (not pinned to a node as linear interpolation would pin it)."""
    x = board.simulate(torch.full((50, 1), 0.1), seed=100)
    fine = torch.linspace(0.0, 0.3, 301)[:, None]
    ours = sallino.posterior(PRIOR, x).log_likelihood(fine)
    exact = posterior_from_likelihood(board.log_likelihood, PRIOR, x, x_shape=(1,))
    best, exact_best = (
        float(fine[ours.argmax(), 0]),
        float(fine[exact.log_likelihood(fine).argmax(), 0]),
    )
    nodes = GRID[(GRID >= 0) & (GRID <= 0.3)]
    assert float((nodes - best).abs().min()) > 0.002  # not on a node
    assert abs(best - exact_best) < 0.02


def test_keys_interpolation_reproduces_quadratics_and_lines():
    """Away from the end cells the weights reproduce any quadratic (Keys 1981); in the end
    cells (linear ghost node) any line."""
    grid = _Grid([torch.linspace(-1, 1, 11, dtype=torch.float64)])
    nodes = grid.points[:, 0].double()
    theta = torch.linspace(-0.8, 0.8, 37, dtype=torch.float64)[:, None]
    index, weight = grid.weights(theta)
    quadratic = 0.3 - 1.7 * nodes + 2.2 * nodes**2
    torch.testing.assert_close(
        (weight * quadratic[index]).sum(1), 0.3 - 1.7 * theta[:, 0] + 2.2 * theta[:, 0] ** 2
    )
    theta = torch.tensor([[-0.95], [0.97], [1.0], [-1.0]], dtype=torch.float64)
    index, weight = grid.weights(theta)
    torch.testing.assert_close((weight * (2 - 3 * nodes)[index]).sum(1), 2 - 3 * theta[:, 0])


def test_a_table_at_the_grid_nodes_fills_the_same_histograms(sally, board):
    """`from_simulations` on the table `from_simulator` would simulate (same seed at every
    node) gives the same likelihood, to the bit."""
    grid = torch.linspace(-0.5, 0.5, 5)
    direct = HistogramLikelihood.from_simulator(sally, board, grid, n_per_point=3000, seed=9)
    theta = grid.repeat_interleave(3000)[:, None]
    x = torch.cat([board.simulate(t.expand(3000, 1).clone(), seed=9) for t in grid])
    table = simfer.SimulationData(theta=theta, x=x)
    from_table = HistogramLikelihood.from_simulations(sally, table)
    probe = board.simulate(torch.full((200, 1), 0.2), seed=1)
    for t in (-0.37, 0.05, 0.44):
        assert torch.equal(
            from_table.log_likelihood(x=probe, theta=[t]), direct.log_likelihood(x=probe, theta=[t])
        )
    shuffled = table.subset(torch.randperm(len(table), generator=torch.Generator().manual_seed(0)))
    again = HistogramLikelihood.from_simulations(sally, shuffled)
    torch.testing.assert_close(
        again.log_likelihood(x=probe, theta=[0.3]), direct.log_likelihood(x=probe, theta=[0.3])
    )


def test_save_and_load_give_the_same_likelihood(sally, board, tmp_path):
    histogram = HistogramLikelihood.from_simulator(
        sally,
        board,
        torch.linspace(-1, 1, 9),
        n_per_point=2000,
        observable="score",
        bins=[[-9.0, -2.0, 0.0, 1.0, 3.0, 9.0]],
        empty_bins="epsilon",
    )
    histogram.save(tmp_path / "histo")
    loaded = HistogramLikelihood.load(tmp_path / "histo")
    x = board.simulate(torch.full((100, 1), -0.2), seed=2)
    assert loaded.observable == "score" and loaded.empty_bins == "epsilon"
    assert [e.tolist() for e in loaded.edges()] == [[-2.0, 0.0, 1.0, 3.0]]
    for theta in (-0.9, 0.13):
        torch.testing.assert_close(
            loaded.log_likelihood(x=x, theta=[theta]), histogram.log_likelihood(x=x, theta=[theta])
        )
    (tmp_path / "histo" / "histograms.pt").write_bytes(b"not a file")
    with pytest.raises(simfer.ModelFileError, match="not a readable histogram file"):
        HistogramLikelihood.load(tmp_path / "histo")
    with pytest.raises(FileNotFoundError, match="histograms.pt missing"):
        HistogramLikelihood.load(tmp_path / "score-only")


def test_empty_bin_policies(sally, board):
    """At θ = −1 no simulated ball reaches x ≥ 10 (t̂ ≥ 10): with a bin edge there that bin
    is empty.  ``"raise"`` refuses, MadMiner's ``"epsilon"`` gives an event there
    log(10⁻¹²), Jeffreys log(½ / (N + 1)) (two bins)."""
    options = dict(n_per_point=4000, observable="score", bins=[[-30.0, 10.0, 30.0]])
    grid = torch.linspace(-1, -0.5, 3)
    with pytest.raises(SimferError, match="bins are empty .* use fewer bins"):
        HistogramLikelihood.from_simulator(sally, board, grid, empty_bins="raise", **options)
    x = torch.tensor([[14.0]])
    assert float(sally.score(x=x)[0, 0]) > 10
    epsilon = HistogramLikelihood.from_simulator(
        sally, board, grid, empty_bins="epsilon", **options
    )
    assert float(epsilon.log_likelihood(x=x, theta=[-1.0])) == pytest.approx(
        math.log(1e-12), abs=1e-3
    )
    jeffreys = HistogramLikelihood.from_simulator(sally, board, grid, **options)
    value = float(jeffreys.log_likelihood(x=x, theta=[-1.0]))
    assert value == pytest.approx(math.log(0.5 / 4001), rel=1e-5)


def test_bad_input_gets_a_clear_error(sally, board, sallino):
    x = board.simulate(torch.zeros(5, 1), seed=0)
    with pytest.raises(SupportError, match=r"outside the θ grid .*\[-1, 1\]"):
        sallino.log_likelihood(x=x, theta=[1.5])
    with pytest.raises(SupportError, match="a corner of the prior's box"):
        sallino.posterior(simfer.BoxUniform([-2.0], [1.0]), x)
    with pytest.raises(SupportError, match="θ_ref"):
        HistogramLikelihood.from_simulator(sally, board, torch.linspace(0.2, 1, 5), n_per_point=10)
    with pytest.raises(ShapeError, match="evenly spaced"):
        HistogramLikelihood.from_simulator(
            sally, board, torch.tensor([-1.0, -0.5, 0.0, 1.0]), n_per_point=10
        )
    theta = torch.tensor([[-0.5], [0.0], [0.5], [0.25]]).repeat_interleave(10, 0)
    table = simfer.SimulationData(theta=theta, x=board.simulate(theta, seed=0))
    with pytest.raises(ShapeError, match="evenly spaced"):
        HistogramLikelihood.from_simulations(sally, table)
    with pytest.raises(ShapeError, match="do not fill a grid"):  # 3 of the 2 × 2 nodes
        _grid_of_table(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    with pytest.raises(ShapeError, match="theta must be"):
        sallino.log_likelihood(x=x, theta=torch.zeros(3, 1))
    with pytest.raises(ShapeError, match="takes no design"):
        sallino.posterior(PRIOR, x, design=[0.5])
    with pytest.raises(ValueError, match="unknown observable"):
        HistogramLikelihood.from_simulator(sally, board, GRID, n_per_point=10, observable="x")
    with pytest.raises(ValueError, match="components is for observable='score'"):
        HistogramLikelihood.from_simulator(sally, board, GRID, n_per_point=10, components=[0])
    with pytest.raises(ValueError, match="at least 2 bins"):
        HistogramLikelihood.from_simulator(sally, board, GRID, n_per_point=10, bins=1)
    with pytest.raises(SimferError, match="not trained yet"):
        HistogramLikelihood.from_simulator(simfer.ScoreEstimator(), board, GRID)
