"""Every figure of simfer.plotting on real results, written to PNG under the Agg backend."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from simfer import plotting  # noqa: E402
from simfer.diagnostics import expected_coverage, sbc, tarp  # noqa: E402
from simfer.inference import likelihood_scan, posterior_from_likelihood  # noqa: E402
from simulators import GaussianLinear  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sim():
    return GaussianLinear(dim=3)


@pytest.fixture(scope="module")
def calibration(sim):
    """SBC and coverage of the analytic posterior's draws on 100 prior-predictive pairs."""
    generator = torch.Generator().manual_seed(0)
    theta = torch.randn(100, 3, generator=generator) * sim.prior_var**0.5
    x = sim.simulate(theta, seed=1)
    with torch.random.fork_rng():
        torch.manual_seed(2)
        samples = torch.stack([sim.posterior(xi).sample((19,)) for xi in x])
    posterior = posterior_from_likelihood(sim.log_likelihood, sim.prior(), x[0])
    return {
        "sbc": sbc(posterior, theta, x, samples=samples, log_prob=True),
        "hpd": expected_coverage(posterior, theta, x, samples=samples),
        "tarp": tarp(None, theta, samples=samples),
    }


def saved(fig: Figure, path) -> None:
    fig.savefig(path)
    assert path.stat().st_size > 1000


def test_corner_with_reference_and_truth(sim, tmp_path):
    x_obs = torch.tensor([0.1, -0.2, 0.3])
    posterior = posterior_from_likelihood(sim.log_likelihood, sim.prior(), x_obs)
    samples = posterior.sample(2000, seed=0)
    reference = sim.posterior(x_obs).sample((2000,))
    fig = plotting.corner(
        samples, reference=reference, truth=[0.0, -0.1, 0.2], labels=["a", "b", "c"]
    )
    assert len(fig.axes) == 6  # d(d + 1)/2
    assert [ax.get_xlabel() for ax in fig.axes[-3:]] == ["a", "b", "c"]
    assert len(fig.legends) == 1
    saved(fig, tmp_path / "corner.png")
    assert len(plotting.corner(samples[:, :1]).axes) == 1
    with pytest.raises(ValueError, match="labels"):
        plotting.corner(samples, labels=["a"])


def test_sbc_ranks(calibration, tmp_path):
    result = calibration["sbc"]
    fig = plotting.sbc_ranks(result)
    assert len(fig.axes) == 4  # three coordinates and log_prob
    assert fig.axes[3].get_title().startswith("log_prob")
    saved(fig, tmp_path / "sbc.png")


def test_coverage(calibration, tmp_path):
    fig = plotting.coverage(calibration["hpd"], calibration["tarp"])
    assert len(fig.axes) == 1
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "HPD regions" in labels and "TARP" in labels
    saved(fig, tmp_path / "coverage.png")
    fig = Figure()
    ax = fig.add_subplot(1, 2, 2)
    assert plotting.coverage(calibration["hpd"], ax=ax, labels=["mine"]) is fig


def test_likelihood_contours_one_and_two_parameters(sim, tmp_path):
    events = sim.simulate(torch.full((20, 3), 0.1), seed=3)
    posterior = posterior_from_likelihood(sim.log_likelihood, sim.prior(), events, x_shape=(3,))
    line = likelihood_scan(posterior, torch.linspace(-0.4, 0.6, 41), parameters=(0,), steps=50)
    fig = plotting.likelihood_contours(line, truth=[0.1])
    assert len(fig.axes) == 1
    assert any("95%" in label for label in fig.axes[0].get_legend_handles_labels()[1])
    saved(fig, tmp_path / "scan1.png")
    a, b = torch.meshgrid(
        torch.linspace(-0.3, 0.5, 21), torch.linspace(-0.3, 0.5, 21), indexing="ij"
    )
    plane = likelihood_scan(
        posterior, torch.stack([a.ravel(), b.ravel()], 1), parameters=(0, 1), steps=50
    )
    fig = plotting.likelihood_contours(plane, truth=[0.1, 0.1], labels=["μ", "ν"])
    assert len(fig.axes) == 1 and fig.axes[0].get_xlabel() == "μ"
    saved(fig, tmp_path / "scan2.png")
