"""Expected information gain with exact likelihoods: `simfer.design.eig`, NMC and PCE.

References: the closed-form EIG of `simulators.LinearGaussianDesign`, Pyro's
``pyro.contrib.oed.eig.nmc_eig`` on the same model, and for `WeinbergAngle` (1-d θ)
an outer Monte Carlo whose marginal p(x|d) is a Gauss–Legendre quadrature over the
prior (no inner-sample bias).  Every tolerance is a multiple of a standard error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as pdist  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import run_markdown_examples  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from pyro.contrib.oed.eig import nmc_eig  # noqa: E402

import simfer  # noqa: E402
from simfer.design import (  # noqa: E402
    EIGResult,
    LikelihoodModel,
    eig,
    nested_monte_carlo,
    nested_terms,
)
from simfer.design.sources import likelihood_model  # noqa: E402
from simfer.errors import LikelihoodNotAvailableError, ShapeError, SupportError  # noqa: E402
from simulators import GaussianLinear, LinearGaussianDesign, WeinbergAngle  # noqa: E402
from simulators.weinberg import M_Z  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SIM = LinearGaussianDesign()
GRID = torch.linspace(0.0, 1.0, 41)
STEP = float(GRID[1] - GRID[0])
N = M = 2000


@pytest.fixture(scope="module")
def analytic() -> torch.Tensor:
    return SIM.analytic_eig(GRID)


@pytest.fixture(scope="module")
def nmc() -> EIGResult:
    return eig(SIM, SIM.prior(), GRID, n_outer=N, n_inner=M, seed=0, progress=False)


@pytest.fixture(scope="module")
def pce() -> EIGResult:
    return eig(SIM, SIM.prior(), GRID, method="pce", n_outer=N, n_inner=M, seed=0, progress=False)


# -- the reference model -------------------------------------------------------------------
def test_analytic_eig_is_the_gaussian_mutual_information():
    """½ log det(I + Σθ XᵀX/σ²) equals ½ log det(X Σθ Xᵀ + σ² I) − ½ log det(σ² I), the
    Gaussian mutual information written in x-space (Sylvester), for an anisotropic prior."""
    sim = LinearGaussianDesign(theta_dim=3, n_obs=5, design_dim=2)
    designs = torch.tensor([[0.1, 0.0], [0.3, 0.2], [0.7, 1.0]], dtype=torch.float64)
    cov = torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, -0.2], [0.0, -0.2, 0.5]], dtype=torch.float64)
    x_matrix = sim.design_matrix(designs)
    noise = sim.noise_std**2 * torch.eye(5, dtype=torch.float64)
    marginal = x_matrix @ cov @ x_matrix.mT + noise
    expected = 0.5 * (torch.logdet(marginal) - torch.logdet(noise))
    torch.testing.assert_close(sim.analytic_eig(designs, cov), expected, rtol=1e-12, atol=1e-12)


def test_linear_gaussian_curve_has_one_interior_maximum():
    d = torch.linspace(0.0, 1.0, 2001)
    curve = SIM.analytic_eig(d)
    best = int(curve.argmax())
    assert 0.15 < float(d[best]) < 0.25
    # one maximum: rising from Δ = 0.005 (a 0.001-nat dip before: the decay acts before
    # the phases spread) to the argmax, falling after it
    rising, falling = torch.diff(curve[10 : best + 1]), torch.diff(curve[best:])
    assert bool((rising > 0).all()) and bool((falling < 0).all())
    assert float(curve[best] - max(curve[0], curve[-1])) > 0.5  # well above both ends


def test_pairwise_likelihood_matches_rowwise():
    theta = torch.randn(7, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    design = torch.tensor([[0.35]], dtype=torch.float64)
    x = SIM.simulate(theta, design[0], seed=1)
    matrix = SIM.pairwise_log_likelihood(x[None], theta[None], design)[0]
    rows = SIM.log_likelihood(
        x[:, None].expand(7, 7, 4).reshape(-1, 4), theta.repeat(7, 1), design[0]
    )
    torch.testing.assert_close(matrix, rows.reshape(7, 7), rtol=1e-10, atol=1e-10)


# -- NMC and PCE against the closed form --------------------------------------------------
def test_nmc_matches_analytic_at_every_design(nmc, analytic):
    # NMC's upward bias is O(1/M) and bounded by NMC − PCE (both biases point away from
    # the EIG); at M = 2000 that gap is ≤ 0.011 nats, under 0.6 standard errors at every
    # design, so the test is a 3-standard-error test of the noise (the bias shifts it by
    # about a quarter of a standard error).
    assert float(((nmc.upper - nmc.lower) / nmc.stderr).max()) < 0.6
    z = (nmc.eig - analytic) / nmc.stderr
    assert float(z.abs().max()) < 3.0, z
    assert nmc.method == "nmc" and (nmc.n_outer, nmc.n_inner) == (N, M) and nmc.notes == []


def test_pce_is_a_lower_bound_from_the_same_pass(nmc, pce, analytic):
    assert torch.equal(pce.eig, nmc.lower) and torch.equal(pce.upper, nmc.eig)
    assert bool((pce.eig <= analytic + 3 * pce.stderr).all())
    assert bool((pce.eig <= math.log(M + 1)).all())
    assert bool((nmc.lower <= nmc.upper).all())


def test_argmax_within_one_grid_step(nmc, analytic):
    assert abs(float(nmc.best()[0]) - float(GRID[int(analytic.argmax())])) <= STEP + 1e-9
    assert nmc.best_index == int(torch.argmax(nmc.eig))


def test_bias_directions_at_small_inner_sample():
    """With M = 8 inner samples NMC overestimates and PCE underestimates, far beyond noise."""
    result = eig(SIM, SIM.prior(), [0.2], n_outer=20_000, n_inner=8, seed=3, progress=False)
    exact = float(SIM.analytic_eig([0.2])[0])
    assert float(result.upper[0]) > exact + 5 * float(result.stderr[0])
    assert float(result.lower[0]) < exact - 5 * float(result.stderr[0])
    assert any("gap" in note for note in result.notes)


def test_pce_saturation_is_noted():
    sharp = LinearGaussianDesign(noise_std=0.01)  # EIG ≈ 9 nats ≫ log(M + 1) = 2.4
    result = eig(sharp, sharp.prior(), [0.2, 0.4], n_outer=200, n_inner=10, seed=0, progress=False)
    assert bool((result.lower <= math.log(11) + 1e-9).all())
    assert any("saturated" in note for note in result.notes)


def test_nested_terms_hand_values_and_extremes():
    outer = torch.tensor([0.0, -1.0, 2.0, 0.0])
    inner = torch.tensor(
        [[0.0, 0.0, 0.0], [-1.0, -3.0, -5.0], [700.0, -700.0, 0.0], [-math.inf] * 3]
    )
    nmc, pce = nested_terms(outer, inner)
    log_mean = torch.logsumexp(inner, 1) - math.log(3)
    torch.testing.assert_close(nmc[:3], (outer - log_mean)[:3])  # 700 does not overflow
    assert float(nmc[0]) == 0.0 and float(pce[0]) == 0.0  # all likelihoods equal
    assert float(nmc[3]) == math.inf and float(pce[3]) == pytest.approx(math.log(4))
    assert bool((pce <= math.log(4) + 1e-6).all())
    in_place = nested_terms(outer, inner.clone(), overwrite=True)
    torch.testing.assert_close(in_place[0], nmc)
    torch.testing.assert_close(in_place[1], pce)


def test_non_finite_terms_are_dropped_and_counted():
    """A likelihood of 0 (log = −inf) at some x makes those terms non-finite: they are
    left out of both estimates and counted (`eig` reports the count in its notes)."""
    model = likelihood_model(SIM)

    def log_likelihood(x, theta, design):
        value = model.log_likelihood(x, theta, design)
        return value.where(x[:, 0] < 2.0, -math.inf)  # "impossible" beyond x₀ = 2

    bare = LikelihoodModel(log_likelihood=log_likelihood, sample=model.sample)
    theta = torch.randn(1, 400, 2, generator=torch.Generator().manual_seed(0))
    estimate = nested_monte_carlo(bare, torch.tensor([[0.2]]), theta, theta[:, :50], [0])
    assert 0 < int(estimate.dropped[0]) < 400 and math.isfinite(float(estimate.nmc[0]))


# -- common random numbers, chunking, seeds -------------------------------------------------
def test_common_random_numbers_shared_across_designs():
    same = eig(SIM, SIM.prior(), [0.3, 0.3], n_outer=300, n_inner=300, seed=1, progress=False)
    assert torch.equal(same.eig[0], same.eig[1])
    apart = eig(
        SIM,
        SIM.prior(),
        [0.3, 0.3],
        n_outer=300,
        n_inner=300,
        seed=1,
        common_random_numbers=False,
        progress=False,
    )
    assert not torch.equal(apart.eig[0], apart.eig[1])


def test_common_random_numbers_make_differences_precise():
    """Over 8 seeds, EIG(0.25) − EIG(0.2) scatters several times less with common random
    numbers than with independent draws per design, while the values scatter alike."""
    spread = {}
    for shared in (True, False):
        runs = torch.stack(
            [
                eig(
                    SIM,
                    SIM.prior(),
                    [0.2, 0.25],
                    n_outer=400,
                    n_inner=400,
                    seed=s,
                    common_random_numbers=shared,
                    progress=False,
                ).eig
                for s in range(8)
            ]
        )
        spread[shared] = (float((runs[:, 1] - runs[:, 0]).std()), float(runs[:, 0].std()))
    assert spread[True][0] < 0.35 * spread[False][0]
    assert spread[True][0] < 0.5 * spread[True][1]


def test_chunking_does_not_change_the_result():
    designs = torch.linspace(0.05, 0.95, 7)
    kwargs = {"n_outer": 300, "n_inner": 200, "seed": 4, "progress": False}
    whole = eig(SIM, SIM.prior(), designs, **kwargs)
    pieces = eig(SIM, SIM.prior(), designs, max_memory=5_000, **kwargs)  # 25 outer rows
    torch.testing.assert_close(pieces.eig, whole.eig, rtol=0, atol=1e-6)
    torch.testing.assert_close(pieces.lower, whole.lower, rtol=0, atol=1e-6)


def test_rowwise_path_matches_pairwise_path():
    """The generic core on a bare batched log-likelihood (as a surrogate would plug in)
    gives the pairwise fast path's numbers."""
    model = likelihood_model(SIM)
    bare = LikelihoodModel(log_likelihood=model.log_likelihood, sample=model.sample)
    assert model.pairwise is not None and bare.pairwise is None
    generator = torch.Generator().manual_seed(0)
    designs = torch.tensor([[0.1], [0.2], [0.6]])
    theta_outer = torch.randn(1, 150, 2, generator=generator)
    theta_inner = torch.randn(1, 120, 2, generator=generator)
    args = (designs, theta_outer, theta_inner, [7, 7, 7])
    fast = nested_monte_carlo(model, *args, progress=False)
    slow = nested_monte_carlo(bare, *args, max_memory=2_000, progress=False)
    torch.testing.assert_close(slow.nmc, fast.nmc, rtol=0, atol=1e-5)
    torch.testing.assert_close(slow.pce, fast.pce, rtol=0, atol=1e-5)


def test_seed_reproducible_and_global_rng_untouched():
    state = torch.get_rng_state()
    kwargs = {"n_outer": 100, "n_inner": 100, "progress": False}
    first = eig(SIM, SIM.prior(), [0.1, 0.5], seed=11, **kwargs)
    again = eig(SIM, SIM.prior(), [0.1, 0.5], seed=torch.Generator().manual_seed(11), **kwargs)
    other = eig(SIM, SIM.prior(), [0.1, 0.5], seed=12, **kwargs)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first.eig, eig(SIM, SIM.prior(), [0.1, 0.5], seed=11, **kwargs).eig)
    assert not torch.equal(first.eig, other.eig)
    assert again.eig.shape == (2,)


def test_designs_as_k_or_k_by_1_and_float64():
    a = eig(SIM, SIM.prior(), [0.1, 0.5], n_outer=50, n_inner=50, seed=0, progress=False)
    b = eig(SIM, SIM.prior(), [[0.1], [0.5]], n_outer=50, n_inner=50, seed=0, progress=False)
    assert torch.equal(a.eig, b.eig) and a.designs.shape == (2, 1)
    c = eig(
        SIM, SIM.prior(), [0.1], n_outer=50, n_inner=50, seed=0, dtype=torch.float64, progress=False
    )
    assert math.isfinite(float(c.eig[0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_agrees_with_cpu():
    kwargs = {"n_outer": 2000, "n_inner": 2000, "seed": 0, "progress": False}
    cpu = eig(SIM, SIM.prior(), [0.2, 0.6], **kwargs)
    gpu = eig(SIM, SIM.prior(), [0.2, 0.6], device="cuda", **kwargs)
    assert bool(((gpu.eig - cpu.eig).abs() <= 4 * math.sqrt(2) * cpu.stderr).all())


# -- clear errors ------------------------------------------------------------------------
def test_bad_inputs_give_clear_errors():
    prior = SIM.prior()
    with pytest.raises(ShapeError, match=r"\[k, 1\]"):
        eig(SIM, prior, torch.zeros(5, 2), progress=False)
    with pytest.raises(ShapeError, match="k ≥ 1"):
        eig(SIM, prior, torch.zeros(0), progress=False)
    two = LinearGaussianDesign(design_dim=2)
    with pytest.raises(ShapeError, match=r"\[k, 2\]"):
        eig(two, two.prior(), torch.zeros(5), progress=False)
    with pytest.raises(SupportError, match="NaN"):
        eig(SIM, prior, [0.1, math.nan], progress=False)
    with pytest.raises(ShapeError, match="theta_dim=2"):
        eig(SIM, simfer.BoxUniform([0.0] * 3, [1.0] * 3), [0.1], progress=False)
    with pytest.raises(ValueError, match="unknown EIG method"):
        eig(SIM, prior, [0.1], method="bogus", progress=False)
    with pytest.raises(ValueError, match=r"does not apply to a likelihood source.*'nmc', 'pce'"):
        eig(SIM, prior, [0.1], method="infonce", progress=False)
    with pytest.raises(ValueError, match="n_outer"):
        eig(SIM, prior, [0.1], n_outer=1, progress=False)
    with pytest.raises(TypeError, match="Simulator"):
        eig(lambda theta, d: theta, prior, [0.1], progress=False)


def test_simulator_without_likelihood_is_refused():
    black_box = simfer.Simulator.from_function(
        lambda theta, design: theta * design, theta_dim=1, design_dim=1
    )
    with pytest.raises(LikelihoodNotAvailableError, match="trained estimator"):
        eig(black_box, simfer.BoxUniform([0.0], [1.0]), [0.5], progress=False)


def test_simulator_without_design_is_refused():
    sim = GaussianLinear(dim=2)
    with pytest.raises(ShapeError, match="design_dim = 0"):
        eig(sim, sim.prior(), [0.5], progress=False)


# -- the same numbers as Pyro's nmc_eig ---------------------------------------------------
def pyro_model(design: torch.Tensor) -> torch.Tensor:
    """`LinearGaussianDesign` as a Pyro program over a design batch ``[..., 1]``."""
    batch = design.shape[:-1]
    x_matrix = SIM.design_matrix(design.reshape(-1, 1)).reshape(*batch, SIM.n_obs, 2)
    prior = pdist.Normal(torch.zeros(2), SIM.prior_std).expand([*batch, 2]).to_event(1)
    theta = pyro.sample("theta", prior)
    mean = (x_matrix.to(theta.dtype) @ theta[..., None]).squeeze(-1)
    return pyro.sample("x", pdist.Normal(mean, SIM.noise_std).to_event(1))


def test_agrees_with_pyro_nmc_eig():
    designs = [0.05, 0.2, 0.6]
    ours = eig(SIM, SIM.prior(), designs, n_outer=1000, n_inner=1000, seed=5, progress=False)
    with torch.random.fork_rng(devices=[]):
        pyro.set_rng_seed(5)
        theirs = torch.tensor(
            [
                float(nmc_eig(pyro_model, torch.tensor([d]), ["x"], ["theta"], N=1000, M=1000))
                for d in designs
            ],
            dtype=torch.float64,
        )
    # same estimator, same N and M (so the same O(1/M) bias): independent draws differ by
    # noise only, whose standard error is √2 times ours
    combined = math.sqrt(2.0) * ours.stderr
    assert bool(((ours.eig - theirs).abs() <= 3 * combined).all()), (ours.eig, theirs)
    exact = SIM.analytic_eig(torch.tensor(designs))
    assert bool(((theirs - exact).abs() <= 3 * combined).all())


# -- the Weinberg angle: where is A_FB informative about sin²θ_W? ---------------------------
def quadrature_eig(sim: WeinbergAngle, energy: float, n: int, seed: int) -> tuple[float, float]:
    """EIG(√s) by outer Monte Carlo with p(x|√s) = ∫ p(x|θ) p(θ) dθ by 128-point
    Gauss–Legendre quadrature over the uniform prior box (1-d θ): no inner-sample bias."""
    low, high = (float(v) for v in (sim.prior().low[0], sim.prior().high[0]))
    nodes, weights = np.polynomial.legendre.leggauss(128)
    grid = torch.tensor(low + (high - low) * (nodes + 1) / 2, dtype=torch.float64)
    log_weight = torch.tensor(np.log(weights / 2))  # prior density × Jacobian × weight
    generator = torch.Generator().manual_seed(seed)
    theta = low + (high - low) * torch.rand(n, 1, generator=generator, dtype=torch.float64)
    x = sim.simulate(theta, [energy], seed=seed)
    log_p = sim.log_likelihood(x, theta, [energy])
    at_nodes = torch.stack(
        [sim.log_likelihood(x, t.expand(n, 1), [energy]) for t in grid[:, None]], 1
    )
    terms = log_p - torch.logsumexp(at_nodes + log_weight, dim=1)
    return float(terms.mean()), float(terms.std() / math.sqrt(n))


def test_weinberg_eig_curve_and_its_physics():
    """sin²θ_W from A_FB of 100 events.  At 35 GeV A_FB moves by only 0.05 across the
    prior: almost no information.  At the Z pole Re χ = 0 and A_FB ≈ 3v²a²/(v²+a²)²
    depends on v = 2 sin²θ_W − ½ through v² only, flat at the prior's centre (v = 0), the
    two sides of sin²θ_W = ¼ alike.  Just below the pole (85 GeV) the γ–Z interference
    competes with the pure Z term, their ratio moving with 1/(4 sin²θ_W cos²θ_W), and
    A_FB is steep in sin²θ_W: the most informative of the three, as the quadrature
    reference confirms."""
    sim = WeinbergAngle(n_events=100)
    energies = torch.tensor([35.0, 85.0, M_Z])
    result = eig(sim, sim.prior(), energies, n_outer=400, n_inner=400, seed=0, progress=False)
    reference = [quadrature_eig(sim, float(e), n=600, seed=10 + i) for i, e in enumerate(energies)]
    for j, (value, stderr) in enumerate(reference):
        combined = math.hypot(float(result.stderr[j]), stderr)
        assert abs(float(result.eig[j]) - value) < 3 * combined, (j, result.eig, reference)
    low, below_pole, pole = (v for v, _ in reference)
    assert below_pole > pole + 0.15 and pole > low + 0.3  # ≈ 0.70, 0.44, 0.01 nats
    assert float(result.best()[0]) == 85.0
    assert float(result.eig[1] - result.eig[2]) > 4 * float(result.stderr[1])


def test_docs_examples_run():
    """Every python block of docs/design.md runs (and asserts what it claims)."""
    run_markdown_examples(Path(__file__).resolve().parent.parent / "docs" / "design.md")


# -- EIGResult ---------------------------------------------------------------------------
def test_result_summary_round_trip(nmc):
    summary = nmc.as_dict()
    text = json.dumps(summary, allow_nan=False)
    back = EIGResult.from_dict(json.loads(text))
    torch.testing.assert_close(back.eig, nmc.eig.double())
    assert back.best_index == nmc.best_index and summary["best"] == [float(nmc.best()[0])]
    assert "nmc" in repr(nmc) and "best=[0.2]" in repr(nmc)


def test_result_plots(nmc, analytic, tmp_path):
    fig = nmc.plot(reference=analytic, xlabel="sampling interval Δ")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert any(s.endswith("lower") for s in labels) and any("±2 stderr" in s for s in labels)
    assert any("best" in s for s in labels)
    fig.savefig(tmp_path / "curve.png")

    two = LinearGaussianDesign(design_dim=2)
    grid = torch.cartesian_prod(torch.linspace(0.05, 0.5, 6), torch.linspace(0.0, 1.0, 5))
    heat = eig(two, two.prior(), grid, n_outer=100, n_inner=100, seed=0, progress=False)
    fig2 = heat.plot(xlabel="Δ, t₀")
    assert len(fig2.axes) == 2  # the map and its colour bar
    fig2.savefig(tmp_path / "heat.png")

    three = EIGResult(torch.zeros(2, 3), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="one or two design variables"):
        three.plot()
