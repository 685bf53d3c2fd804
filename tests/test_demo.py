"""The demo runs end to end, its checks pass, and a rerun resumes from its store."""

import json

import simfer
from simfer.cli import main


def test_demo_writes_summary_plot_and_store(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--n", "4000", "--workers", "0", "--epochs", "15"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] and summary["n_simulations"] == 4000
    assert (out / "gold_check.png").stat().st_size > 10_000
    mse = summary["ratio_estimators"]["mse"]
    assert mse["alices"] < mse["carl"] < mse["trivial"]
    assert simfer.load(out / "alices.pt").method == "alices"
    assert "PASS" in (out / "summary.md").read_text()
    # a second run resumes from the store, and inspect reads it
    assert main(args) == 0
    assert main(["inspect", str(out / "galton.h5")]) == 0
    assert "n=4000" in capsys.readouterr().out
