"""The demo runs the whole journey end to end, writes its plots and summary, and a rerun
resumes from its store.  With the small budget of the fast test only the checks that hold
at any budget are asserted (the gold is unbiased; gold beats no gold); the slow test runs
the defaults of `make demo` and asserts every check."""

import json

import pytest

import simfer
from simfer.cli import main

FIGURES = (
    "gold_check.png",
    "ratio_estimators.png",
    "posteriors.png",
    "sbc_ranks.png",
    "coverage.png",
    "design_round.png",
)


def test_demo_writes_every_stage_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--n", "4000", "--workers", "0", "--epochs", "15"]
    main(args)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_simulations"] == 4000
    for name in FIGURES:
        assert (out / name).stat().st_size > 10_000, name
    assert summary["checks"]["gold is unbiased"]
    mse = summary["ratio_estimators"]["mse"]
    assert mse["alices"] < mse["carl"] < mse["trivial"]
    assert simfer.load(out / "alices.pt").method == "alices"
    assert isinstance(simfer.load(out / "npe.pt"), simfer.PosteriorEstimator)
    for name in ("npe", "alices"):
        assert 0.4 < summary["posteriors"][name]["c2st"] <= 1.0
    assert 0.0 <= summary["calibration"]["sbc_p_value"] <= 1.0
    assert 40.0 <= summary["design"]["picked_gev"] <= 130.0
    text = (out / "summary.md").read_text()
    for heading in ("Simulation with gold", "Posteriors", "Calibration", "next experiment"):
        assert heading in text
    # a second run resumes from the store, and inspect reads it
    main(args)
    assert main(["inspect", str(out / "galton.h5")]) == 0
    assert "n=4000" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_defaults_pass_every_check(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0, (out / "summary.md").read_text()
