"""Location finding (simulators.LocationFinding), the sPCE/sNMC bounds of whole rollouts
(simfer.design.sequential_bounds), and the greedy policy of benchmarks/location_finding.py."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from torch.distributions import Independent, Normal

from simfer.design import LikelihoodModel, SequentialBounds, sequential_bounds
from simfer.errors import ShapeError
from simulators import LinearGaussianDesign, LocationFinding

ROOT = Path(__file__).resolve().parents[1]


def _benchmark():
    """benchmarks/location_finding.py as a module (the benchmarks are scripts, not a package)."""
    name = "location_finding_benchmark"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks/location_finding.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _by_hand(theta: list[float], xi: list[float]) -> float:
    """DAD's mean, written out: log(0.1 + Σ_k 1/(10⁻⁴ + ‖θ_k − ξ‖²)) for K = 2 sources."""
    total = 0.1
    for k in range(2):
        distance2 = (theta[2 * k] - xi[0]) ** 2 + (theta[2 * k + 1] - xi[1]) ** 2
        total += 1.0 / (1e-4 + distance2)
    return math.log(total)


# -- the simulator -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "theta, xi",
    [
        ([0.3, -0.2, -1.0, 1.5], [0.3, -0.2]),  # on a source: μ ≈ log(10⁴)
        ([0.3, -0.2, -1.0, 1.5], [0.0, 0.0]),
        ([2.0, 2.0, -2.0, -2.0], [0.0, 3.0]),  # far from both: near the background
    ],
)
def test_samples_match_the_likelihood(theta, xi):
    """y at fixed (θ, ξ) has mean μ(θ, ξ) (DAD's formula by hand) and variance σ² = 0.25,
    within 4 standard errors of n = 40 000 draws, and log_likelihood is N(y; μ, σ²)."""
    sim = LocationFinding()
    n = 40_000
    y = sim.simulate(torch.tensor([theta], dtype=torch.float64).expand(n, -1), xi, seed=3)
    assert y.shape == (n, 1)
    mean = _by_hand(theta, xi)
    assert abs(float(y.mean()) - mean) < 4 * 0.5 / math.sqrt(n)
    # Var of the sample variance of a normal: 2σ⁴/(n − 1)
    assert abs(float(y.var()) - 0.25) < 4 * math.sqrt(2 * 0.5**4 / (n - 1))
    rows = torch.tensor([theta], dtype=torch.float64).expand(5, -1)
    reference = Normal(torch.tensor(mean, dtype=torch.float64), 0.5).log_prob(y[:5, 0])
    torch.testing.assert_close(sim.log_likelihood(y[:5], rows, xi), reference)


def test_pairwise_matches_rowwise_and_the_prior():
    sim = LocationFinding()
    generator = torch.Generator().manual_seed(0)
    theta = torch.randn(3, 7, 4, generator=generator)
    x = torch.randn(3, 5, 1, generator=generator)
    design = torch.randn(3, 2, generator=generator)
    matrix = sim.pairwise_log_likelihood(x, theta, design)
    assert matrix.shape == (3, 5, 7)
    for j in range(3):
        for n in range(5):
            rows = sim.log_likelihood(x[j, n].expand(7, 1), theta[j], design[j])
            torch.testing.assert_close(matrix[j, n], rows)
    prior = sim.prior()
    assert prior.event_shape == (4,)
    torch.testing.assert_close(
        prior.log_prob(torch.zeros(4)), torch.tensor(-2 * math.log(2 * math.pi))
    )


def test_options_and_bad_input():
    sim = LocationFinding(n_sources=3, space_dim=1, strengths=[1.0, 2.0, 0.5])
    assert (sim.theta_dim, sim.design_dim) == (3, 1)
    theta, xi = torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[1.0]])
    expected = math.log(0.1 + 1 / (1e-4 + 1) + 2 / 1e-4 + 0.5 / (1e-4 + 1))
    assert float(sim.mean_signal(theta, xi)) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="strengths"):
        LocationFinding(strengths=[1.0])
    with pytest.raises(ValueError, match="noise_std"):
        LocationFinding(noise_std=0.0)
    with pytest.raises(ShapeError, match=r"\[batch, 1\]"):
        LocationFinding().log_likelihood(torch.zeros(2, 3), torch.zeros(2, 4), [0.0, 0.0])
    with pytest.raises(ShapeError, match="theta"):
        LocationFinding().simulate(torch.zeros(2, 3), [0.0, 0.0])


# -- the bounds ----------------------------------------------------------------------------
def _linear_gaussian_rollouts(n_rollouts: int, seed: int = 0):
    """T = 3 fixed read-outs of `LinearGaussianDesign` (one per step, θ ∈ R², σ_θ = 1,
    σ_ε = 0.5) and the closed-form total EIG ½ log det(I + Σ_t X_tᵀX_t / σ_ε²)."""
    sim = LinearGaussianDesign(theta_dim=2, n_obs=1)
    steps = torch.tensor([[0.1], [0.35], [0.6]])  # Δ of each step: t = Δ
    matrix = sim.design_matrix(steps).double()  # [T, 1, 2]
    information = torch.eye(2, dtype=torch.float64) + (matrix.mT @ matrix).sum(0) / 0.25
    total_eig = 0.5 * float(torch.logdet(information))
    generator = torch.Generator().manual_seed(seed)
    theta = torch.randn(n_rollouts, 2, generator=generator)
    designs = steps.expand(n_rollouts, -1, -1)
    noise = torch.randn(n_rollouts, 3, 1, generator=generator)
    outcomes = (matrix.float()[None] @ theta[:, None, :, None]).squeeze(-1) + 0.5 * noise
    return sim, theta, designs, outcomes, total_eig


def test_bounds_converge_to_the_closed_form_eig():
    """Both bounds reach the exact total EIG of fixed designs of a linear-Gaussian model.

    Tolerance (derived for this model): to first order in 1/L both gaps are
    (E_{p(θ,h)}[p(h|θ)/p(h)] − 1)/(2L), and for a linear-Gaussian model
    E_{p(θ,h)}[p(h|θ)/p(h)] = Π_i (1 + λ_i) = e^{2·EIG} (λ_i the eigenvalues of
    Σ_θ XᵀX/σ²), so each gap is ≈ (e^{2·EIG} − 1)/(2L) and their sum, the expected width
    sNMC − sPCE, ≈ (e^{2·EIG} − 1)/L.  Each estimate must lie within 4 standard errors of
    the EIG plus twice its gap (higher-order terms), the width must stay below 1.5× its
    first-order value (an average of a heavy-tailed ratio, whose sample mean falls short of
    its mean far more often than it exceeds it), and it must shrink ~10× from L to 10L.
    """
    sim, theta, designs, outcomes, total_eig = _linear_gaussian_rollouts(4000)
    prior = Independent(Normal(torch.zeros(2), 1.0), 1)
    width = {}
    for n_inner in (200, 2000):
        bounds = sequential_bounds(sim, prior, theta, designs, outcomes, n_inner=n_inner, seed=1)
        gap = (math.exp(2 * total_eig) - 1) / (2 * n_inner)
        assert abs(bounds.spce - total_eig) < 4 * bounds.spce_stderr + 2 * gap
        assert abs(bounds.snmc - total_eig) < 4 * bounds.snmc_stderr + 2 * gap
        width[n_inner] = bounds.snmc - bounds.spce
        assert 0 < width[n_inner] < 1.5 * 2 * gap
    assert 6 < width[200] / width[2000] < 16


def test_pairwise_and_rowwise_paths_agree():
    """The simulator's pairwise path, a row-wise callable and a LikelihoodModel without
    a pairwise path give the same bounds from the same seed."""
    sim, theta, designs, outcomes, _ = _linear_gaussian_rollouts(50)
    prior = Independent(Normal(torch.zeros(2), 1.0), 1)
    options = dict(n_inner=300, seed=4, max_memory=2**12)  # several blocks of each kind
    pairwise = sequential_bounds(sim, prior, theta, designs, outcomes, **options)
    rowwise = sequential_bounds(sim.log_likelihood, prior, theta, designs, outcomes, **options)
    model = LikelihoodModel(log_likelihood=sim.log_likelihood, sample=sim.simulate)
    modelled = sequential_bounds(model, prior, theta, designs, outcomes, **options)
    for other in (rowwise, modelled):
        torch.testing.assert_close(other.spce_terms, pairwise.spce_terms, rtol=0, atol=1e-4)
        torch.testing.assert_close(other.snmc_terms, pairwise.snmc_terms, rtol=0, atol=1e-4)
    again = sequential_bounds(sim, prior, theta, designs, outcomes, **options)
    assert again.spce == pairwise.spce and again.snmc == pairwise.snmc


def test_spce_below_snmc_and_its_cap():
    """On location-finding rollouts: every sPCE term is ≤ log(L + 1) (its cap, by
    construction), sPCE ≤ sNMC on the same rollouts, and `saturated` flags a capped sPCE."""
    sim = LocationFinding()
    generator = torch.Generator().manual_seed(2)
    theta = torch.randn(64, 4, generator=generator)
    designs = torch.randn(64, 5, 2, generator=generator)
    outcomes = sim.mean_signal(theta[:, None], designs) + 0.5 * torch.randn(
        64, 5, generator=generator
    )
    prior = sim.prior()
    small = sequential_bounds(sim, prior, theta, designs, outcomes, n_inner=10)
    assert isinstance(small, SequentialBounds) and small.n_rollouts == 64
    assert bool((small.spce_terms <= math.log(11) + 1e-9).all())
    assert small.spce <= small.snmc
    large = sequential_bounds(sim, prior, theta, designs, outcomes, n_inner=5000)
    assert small.spce <= large.spce <= large.snmc <= small.snmc
    assert not large.saturated and large.dropped == 0
    assert set(large.as_dict()) >= {"spce", "spce_stderr", "snmc", "snmc_stderr", "n_inner"}
    # measurements next to the first source identify it: far more than log(11) nats
    near = theta[:, None, :2] + 0.05 * torch.randn(64, 5, 2, generator=generator)
    lit = sim.mean_signal(theta[:, None], near) + 0.5 * torch.randn(64, 5, generator=generator)
    capped = sequential_bounds(sim, prior, theta, near, lit, n_inner=10)
    assert capped.saturated and capped.spce <= math.log(11)


def test_bounds_bad_input():
    sim = LocationFinding()
    prior = sim.prior()
    theta, designs, outcomes = torch.zeros(4, 4), torch.zeros(4, 3, 2), torch.zeros(4, 3)
    with pytest.raises(ShapeError, match=r"designs must be \[R, T, D\]"):
        sequential_bounds(sim, prior, theta, designs[0], outcomes, n_inner=5)
    with pytest.raises(ShapeError, match="outcomes must be"):
        sequential_bounds(sim, prior, theta, designs, outcomes[:, :2], n_inner=5)
    with pytest.raises(ValueError, match="n_inner"):
        sequential_bounds(sim, prior, theta, designs, outcomes, n_inner=0)
    with pytest.raises(ValueError, match="finite"):
        sequential_bounds(sim, prior, theta, designs, outcomes * math.nan, n_inner=5)
    with pytest.raises(TypeError, match="likelihood must be"):
        sequential_bounds(3, prior, theta, designs, outcomes, n_inner=5)


# -- the greedy policy ---------------------------------------------------------------------
def test_greedy_beats_random():
    """24 rollouts of T = 8 on the same θ and measurement noise; sPCE with the same 5000
    contrastive θ per rollout.  The paired difference greedy − random must exceed 3 of its
    standard errors (a false pass under no advantage has probability ≈ 0.1 %).  Why the
    margin holds: over seeds 0–3 at these sizes the difference measured 1.8–2.3 nats at
    4.4–6.8 standard errors (a random ξ ~ N(0, I) lands within the ~0.3 that a source
    lights up only by chance; greedy measures where the posterior expects
    a source), so the fixed-seed result is no fluke of the seed."""
    bench = _benchmark()
    sim = LocationFinding()
    prior = sim.prior()
    settings = bench.GreedySettings(
        particles=256, outer=64, grid=7, source_candidates=16, refine=8, moves=3
    )
    theta = bench.true_theta(sim, 0, 24, 0, "cpu")
    noise = bench.nature_noise(0, 24, 8, 0, "cpu")
    generator = torch.Generator().manual_seed(0)
    random_run = bench.run_random(sim, theta, noise, generator)
    greedy_run = bench.run_greedy(sim, prior, theta, noise, generator, settings)
    scores = [
        sequential_bounds(sim, prior, theta, d, y, n_inner=5000, seed=9)
        for d, y in (random_run, greedy_run)
    ]
    difference = scores[1].spce_terms - scores[0].spce_terms
    stderr = float(difference.std()) / math.sqrt(24)
    assert float(difference.mean()) > 3 * stderr
    assert not scores[1].saturated
    # the greedy policy's designs sit nearer the sources than random ones
    distance = (greedy_run[0][:, :, None] - theta.view(24, 1, 2, 2)).norm(dim=-1).amin(-1)
    random_distance = (random_run[0][:, :, None] - theta.view(24, 1, 2, 2)).norm(dim=-1).amin(-1)
    assert float(distance.mean()) < float(random_distance.mean())


def test_benchmark_script_writes_its_table(tmp_path):
    """The script at a tiny size: cells appended, resumed without rerunning, the table
    written between its markers in the given markdown file only."""
    bench = _benchmark()
    results, markdown = tmp_path / "lf.jsonl", tmp_path / "lf.md"
    argv = ["--rollouts", "4", "--chunk", "2", "--steps", "2", "--inner", "200"]
    argv += ["--particles", "64", "--outer", "16", "--grid", "3", "--source-candidates", "4"]
    argv += ["--refine", "2", "--moves", "1", "--device", "cpu"]
    argv += ["--results", str(results), "--markdown", str(markdown)]
    bench.main(argv)
    rows = results.read_text().splitlines()
    assert len(rows) == 4  # 2 policies × 2 chunks
    text = markdown.read_text()
    assert "<!-- location-finding:begin -->" in text and "| greedy | 4 |" in text
    bench.main(argv)  # resumed: nothing new is run
    assert len(results.read_text().splitlines()) == 4
