"""Tests of the e+e- → μ+μ- simulator `simulators.weinberg.WeinbergAngle`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

import simfer
from simulators.weinberg import GAMMA_Z, M_Z, SIN2_THETA_W, WeinbergAngle

F64 = torch.float64
THETA = torch.tensor([[SIN2_THETA_W]], dtype=F64)
ENERGIES = [35.0, M_Z, 130.0]


def complex_asymmetry(sin2: float, energy: float, m_z: float = M_Z, gamma_z: float = GAMMA_Z):
    """A_FB straight from the complex χ of the module docstring (numpy, float64)."""
    s = energy**2
    chi = s / (4 * sin2 * (1 - sin2) * (s - m_z**2 + 1j * m_z * gamma_z))
    v2, a2 = (-0.5 + 2 * sin2) ** 2, 0.25
    a0 = 1 + 2 * v2 * chi.real + (v2 + a2) ** 2 * abs(chi) ** 2
    a1 = 4 * a2 * chi.real + 8 * v2 * a2 * abs(chi) ** 2
    return 3 * a1 / (8 * a0)


def prior_draws(sim: WeinbergAngle, n: int, seed: int) -> torch.Tensor:
    """``[n, theta_dim]`` float64 points of the simulator's prior box, from a fixed seed."""
    prior = sim.prior()
    u = torch.rand(n, sim.theta_dim, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return prior.low.double() + (prior.high.double() - prior.low.double()) * u


# -- the physics -------------------------------------------------------------------------
def test_asymmetry_check_values():
    a_fb = WeinbergAngle().asymmetry(THETA, torch.tensor([[e] for e in ENERGIES], dtype=F64))
    # Z pole: Re χ = 0, so A_FB = (3/4) A_e² |χ|²(v²+a²)²/A0 with A_e = 2va/(v²+a²) = 0.1496;
    # the photon term shifts it by 1/A0 ≈ 0.6 %: 0.0167.
    sin2 = SIN2_THETA_W
    v, a = -0.5 + 2 * sin2, -0.5
    a_e = 2 * v * a / (v**2 + a**2)
    assert 0.016 < float(a_fb[1]) < 0.018
    assert float(a_fb[1]) == pytest.approx(0.75 * a_e**2, rel=0.01)
    # 35 GeV: A_FB ≈ (3/2) a² Re χ = (3/8) s / [(s − M_Z²) 4 sin²θ_W cos²θ_W] = −0.0911.
    assert float(a_fb[0]) == pytest.approx(-0.09, abs=0.002)
    assert float(a_fb[2]) == pytest.approx(0.70, abs=0.005)


@pytest.mark.parametrize("sin2", [0.05, 0.2312, 0.5, 0.9])
def test_real_arithmetic_matches_complex(sin2):
    sim = WeinbergAngle(parameters=("sin2_theta_w", "m_z", "gamma_z"))
    energies = [10.0, 35.0, 88.0, M_Z, 95.0, 130.0, 500.0]
    theta = torch.tensor([[sin2, M_Z, GAMMA_Z]], dtype=F64)
    a_fb = sim.asymmetry(theta, torch.tensor([[e] for e in energies], dtype=F64))
    expected = [complex_asymmetry(sin2, e) for e in energies]
    np.testing.assert_allclose(a_fb.numpy(), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("energy", ENERGIES)
def test_density_integrates_to_one(energy):
    sim = WeinbergAngle(n_events=1)

    def density(c: float) -> float:
        return math.exp(float(sim.log_likelihood(torch.tensor([[c]], dtype=F64), THETA, [energy])))

    total, _ = integrate.quad(density, -1.0, 1.0)
    assert total == pytest.approx(1.0, abs=1e-10)
    assert density(1.5) == 0.0
    first_moment, _ = integrate.quad(lambda c: c * density(c), -1.0, 1.0)
    assert first_moment == pytest.approx(2 / 3 * float(sim.asymmetry(THETA, [energy])), abs=1e-10)


def test_sample_mean_matches_analytic():
    # E[c] = ∫ c [A0(1+c²) + A1 c] dc / (8A0/3) = A1/(4A0) = (2/3) A_FB; E[c²] = 2/5.
    n = 20_000
    sim = WeinbergAngle(n_events=n)
    design = torch.tensor([[e] for e in ENERGIES], dtype=F64)
    theta = THETA.expand(len(ENERGIES), 1)
    x = sim.simulate(theta, design, seed=0)
    assert x.shape == (len(ENERGIES), n) and x.dtype == F64
    assert bool((x.abs() <= 1).all())
    mean = 2 / 3 * sim.asymmetry(theta, design)
    standard_error = torch.sqrt((0.4 - mean**2) / n)
    assert bool(((x.mean(1) - mean).abs() < 4 * standard_error).all())
    assert bool(((x.pow(2).mean(1) - 0.4).abs() < 4 * math.sqrt(8 / 175 / n)).all())


@pytest.mark.parametrize(("energy", "dtype"), [(35.0, F64), (M_Z, torch.float32), (130.0, F64)])
def test_kolmogorov_smirnov(energy, dtype):
    sim = WeinbergAngle(n_events=5_000)
    theta = THETA.to(dtype)
    events = sim.simulate(theta, [energy], seed=1)[0].double()

    def cdf(c: np.ndarray) -> np.ndarray:
        return sim.cdf(torch.as_tensor(c, dtype=F64)[None], THETA, [energy])[0].numpy()

    assert float(sim.cdf([[-1.0] * 5_000], THETA, [energy]).max()) == 0.0
    assert float(sim.cdf([[1.0] * 5_000], THETA, [energy]).min()) == pytest.approx(1.0)
    assert stats.kstest(events.numpy(), cdf).pvalue > 0.01


# -- gold --------------------------------------------------------------------------------
@pytest.mark.parametrize("parameters", [("sin2_theta_w",), ("sin2_theta_w", "m_z", "gamma_z")])
def test_gold_is_exact(parameters):
    sim = WeinbergAngle(n_events=50, parameters=parameters)
    assert sim.has_gold and sim.has_likelihood
    theta = prior_draws(sim, 6, seed=2)
    theta_ref = sim.prior().mean.to(F64)
    design = torch.tensor([[35.0], [88.0], [M_Z], [93.0], [130.0], [200.0]], dtype=F64)
    data = sim.simulate(theta, design, gold=True, theta_ref=theta_ref, seed=2)
    log_ratio = sim.log_likelihood(data.x, theta, design) - sim.log_likelihood(
        data.x, theta_ref, design
    )
    torch.testing.assert_close(data.joint_log_ratio, log_ratio, rtol=1e-12, atol=1e-10)
    assert data.joint_score.shape == (6, len(parameters))
    # Central differences: error h² f'''/6 with h = 1e-5, far below the tolerance.
    h = 1e-5
    for i in range(len(parameters)):
        step = torch.zeros(len(parameters), dtype=F64)
        step[i] = h
        up = sim.log_likelihood(data.x, theta + step, design)
        down = sim.log_likelihood(data.x, theta - step, design)
        fd = (up - down) / (2 * h)
        torch.testing.assert_close(data.joint_score[:, i], fd, rtol=1e-6, atol=1e-6)


def test_float32_autograd_matches_float64():
    sim = WeinbergAngle(n_events=100)
    theta = torch.tensor([[0.22], [0.24]])
    data32 = sim.simulate(theta, [130.0], gold=True, theta_ref=[0.23], seed=3)
    assert data32.joint_score.dtype == torch.float32
    assert bool(torch.isfinite(data32.joint_score).all())
    x = data32.x.double()
    with torch.enable_grad():
        theta64 = theta.double().requires_grad_(True)
        (score64,) = torch.autograd.grad(sim.log_likelihood(x, theta64, [130.0]).sum(), theta64)
    torch.testing.assert_close(data32.joint_score.double(), score64, rtol=1e-3, atol=1e-3)


# -- interface ---------------------------------------------------------------------------
def test_seed_reproducibility():
    sim = WeinbergAngle(n_events=20)
    theta = torch.tensor([[0.2], [0.3]])
    first = sim.simulate(theta, seed=7)
    assert torch.equal(first, sim.simulate(theta, seed=7))
    assert not torch.equal(first, sim.simulate(theta, seed=8))
    assert torch.equal(
        sim.simulate(theta, seed=torch.Generator().manual_seed(7)),
        sim.simulate(theta, seed=torch.Generator().manual_seed(7)),
    )


def test_three_parameters_shapes_and_prior():
    sim = WeinbergAngle(n_events=30, parameters=("sin2_theta_w", "m_z", "gamma_z"))
    assert sim.theta_dim == 3 and sim.x_shape == (30,) and sim.design_dim == 1
    prior = sim.prior()
    theta = prior_draws(sim, 8, seed=4).float()
    assert bool(torch.isfinite(prior.log_prob(theta)).all())
    assert theta.shape == (8, 3)
    assert bool(sim.theta_support.check(theta).all())
    data = sim.simulate(theta, gold=True, theta_ref=prior.mean, seed=4)
    assert data.x.shape == (8, 30)
    assert data.joint_score.shape == data.joint_score_ref.shape == (8, 3)
    assert data.joint_log_ratio.shape == (8,)
    assert sim.log_likelihood(data.x, theta).shape == (8,)
    assert sim.asymmetry(theta).shape == (8,)
    assert sim.describe()["parameters"] == ["sin2_theta_w", "m_z", "gamma_z"]


def test_fixed_values_and_parameter_order():
    sim1 = WeinbergAngle(parameters=("sin2_theta_w",))
    sim2 = WeinbergAngle(parameters=("gamma_z", "sin2_theta_w"), m_z=M_Z)
    a1 = sim1.asymmetry(torch.tensor([[0.22]], dtype=F64), [95.0])
    a2 = sim2.asymmetry(torch.tensor([[GAMMA_Z, 0.22]], dtype=F64), [95.0])
    torch.testing.assert_close(a1, a2)
    # The fixed M_Z is used: at its own pole A_FB is the same ≈ (3/4) A_e² as at 91.19 GeV.
    moved = WeinbergAngle(m_z=95.0).asymmetry(torch.tensor([[0.22]], dtype=F64), [95.0])
    torch.testing.assert_close(
        moved, sim1.asymmetry(torch.tensor([[0.22]], dtype=F64)), rtol=0.01, atol=0
    )
    with pytest.raises(ValueError, match="parameters"):
        WeinbergAngle(parameters=("sin2_theta_w", "alpha"))
    with pytest.raises(ValueError, match="parameters"):
        WeinbergAngle(parameters=("m_z", "m_z"))
    with pytest.raises(ValueError, match="n_events"):
        WeinbergAngle(n_events=0)
    with pytest.raises(ValueError, match="gamma_z"):
        WeinbergAngle(gamma_z=-1.0)


def test_design_broadcasting():
    sim = WeinbergAngle(n_events=10)
    theta = torch.full((3, 1), 0.23, dtype=F64)
    one = sim.simulate(theta, [130.0], seed=5)
    per_row = sim.simulate(theta, torch.full((3, 1), 130.0), seed=5)
    assert torch.equal(one, per_row)
    assert torch.equal(sim.simulate(theta, seed=5), sim.simulate(theta, [M_Z], seed=5))
    mixed = sim.simulate(theta, [[35.0], [M_Z], [130.0]], gold=True, theta_ref=[0.2], seed=5)
    assert mixed.design.shape == (3, 1)
    expected = sim.asymmetry(theta[:1], [[35.0], [M_Z], [130.0]])
    torch.testing.assert_close(sim.asymmetry(theta, [[35.0], [M_Z], [130.0]]), expected)
    # One row of x against many θ rows: a likelihood scan.
    scan = sim.log_likelihood(one[:1], torch.linspace(0.2, 0.3, 7, dtype=F64)[:, None], [130.0])
    assert scan.shape == (7,)
    with pytest.raises(simfer.ShapeError):
        sim.simulate(theta, [[35.0], [M_Z]])
    with pytest.raises(simfer.ShapeError):
        sim.log_likelihood(one[:, :5], theta, [130.0])


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.2, float("nan")])
def test_outside_support_raises(bad):
    sim = WeinbergAngle(n_events=5)
    with pytest.raises(simfer.SupportError):
        sim.simulate([[0.2], [bad]])
    with pytest.raises(simfer.SupportError):
        sim.log_likelihood([[0.0] * 5], [[bad]])


def test_invalid_mass_width_and_energy_raise():
    sim = WeinbergAngle(n_events=5, parameters=("sin2_theta_w", "m_z", "gamma_z"))
    with pytest.raises(simfer.SupportError):
        sim.simulate([[0.23, -91.0, 2.5]])
    with pytest.raises(simfer.SupportError):
        sim.simulate([[0.23, 91.0, 0.0]])
    with pytest.raises(simfer.SupportError):
        sim.asymmetry([[0.23, 91.0, 2.5]], [-10.0])


def test_events_outside_range_have_zero_likelihood():
    sim = WeinbergAngle(n_events=3)
    log_p = sim.log_likelihood([[0.1, 0.5, 1.01], [0.1, 0.5, -1.0]], [0.23])
    assert float(log_p[0]) == -math.inf and math.isfinite(float(log_p[1]))
