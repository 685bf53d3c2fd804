"""The demo: the main job end to end on a built-in simulator.

Simulate the Galton board with gold into an HDF5 store (resumable), check the gold
against the board's exact likelihood (`simfer.diagnostics.check_gold`), train CARL and
ALICES on the same simulations and compare their log r̂ with the exact one; plots and a
summary (summary.md, summary.json) in the output folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from .diagnostics.gold import GoldCheck, binned_mean_test, check_gold
from .runner import simulate

__all__ = ["run_demo"]

#: The demo checks the gold at this tilt, against θ_ref = 0, and plots what it checked.
DEMO_THETA = 0.5


def run_demo(
    out: str | Path = "demo_output",
    *,
    n: int = 20_000,
    seed: int = 0,
    workers: int = 2,
    epochs: int = 60,
) -> int:
    """Run the demo into ``out``; returns 0 when every check passed, else 1."""
    args = SimpleNamespace(out=out, n=n, seed=seed, workers=workers, epochs=epochs)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from simulators import GaltonBoard

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    board = GaltonBoard(n_rows=16)
    prior = board.prior()
    started = time.perf_counter()
    data = simulate(
        board,
        prior,
        args.n,
        gold=True,
        theta_ref=[0.0],
        seed=args.seed,
        path=out / "galton.h5",
        executor="serial" if args.workers == 0 else "processes",
        n_workers=args.workers or None,
    )
    seconds = time.perf_counter() - started
    trained = _train_ratio_estimators(board, data, out, args, plt)

    # Gold against the exact likelihood: E[t(x,z|θ) | x] = t(x|θ) for x drawn at θ and
    # E[r(x,z|θ,θ_ref) | x] = r(x|θ,θ_ref) for x drawn at θ_ref, and the model-free means.
    gold = check_gold(
        board,
        [DEMO_THETA],
        [0.0],
        exact_log_ratio=board.log_likelihood_ratio,
        exact_score=board.likelihood_score,
        n=args.n,
        seed=args.seed,
    )
    figure_path = out / "gold_check.png"
    _plot(board, gold, figure_path, plt)
    passed = gold.passed
    gold_wins = trained["mse"]["alices"] < trained["mse"]["carl"]
    summary = {
        "simulator": board.describe(),
        "n_simulations": len(data),
        "n_invalid": data.n_invalid,
        "seconds": round(seconds, 3),
        "store": str(out / "galton.h5"),
        "gold_check": gold.as_dict(),
        "passed": passed,
        "figure": str(figure_path),
        "ratio_estimators": trained,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [
        "# simfer demo: gold on the Galton board",
        "",
        f"- {len(data)} simulations with gold ({data.n_invalid} invalid) in {seconds:.1f} s, "
        f"stored in `{summary['store']}` (rerunning resumes from it).",
        f"- gold checked at θ = {DEMO_THETA}, θ_ref = 0 on {args.n} + {args.n} events "
        f"(`simfer.diagnostics.check_gold`):",
        *(f"  - {check.describe()}" for check in gold.checks.values()),
        f"- verdict: {'gold is unbiased (PASS)' if passed else 'gold check FAILED'} "
        f"(every |z| < {gold.z_threshold:g})",
        f"- figure: `{figure_path}`",
        "",
        "## Learning log r(x|θ0, 0) from the same simulations",
        "",
        f"- MSE of log r̂ against the exact log r (x drawn at θ1 = 0, θ0 on a grid): "
        f"CARL {trained['mse']['carl']:.4f}, ALICES {trained['mse']['alices']:.4f} "
        f"(trivial log r̂ = 0: {trained['mse']['trivial']:.3f}); gold "
        f"{'wins' if gold_wins else 'does NOT win'} by "
        f"{trained['mse']['carl'] / trained['mse']['alices']:.1f}×",
        f"- models: `{trained['models']['carl']}`, `{trained['models']['alices']}`; "
        f"figure: `{trained['figure']}`",
    ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if passed else 1


def _train_ratio_estimators(board, data, out: Path, args, plt) -> dict:
    """Train CARL and ALICES on the run's simulations, compare with the exact log r."""
    from .estimators import RatioEstimator

    settings = dict(hidden=(64, 64), max_epochs=args.epochs, seed=args.seed)
    estimators = {m: RatioEstimator(m, **settings).fit(data) for m in ("carl", "alices")}
    x = board.simulate(torch.zeros(500, 1), seed=args.seed + 7)
    reference = torch.zeros(500, 1, dtype=torch.float64)
    squared = {m: [] for m in (*estimators, "trivial")}
    for theta0 in torch.linspace(-0.9, 0.9, 19):
        theta = torch.full((500, 1), float(theta0))
        exact = board.log_likelihood_ratio(x.double(), theta.double(), reference).float()
        squared["trivial"].append(exact**2)
        for method, estimator in estimators.items():
            log_r = estimator.log_ratio(x=x, theta=theta, reference=reference.float())
            squared[method].append((log_r - exact) ** 2)
    models = {}
    for method, estimator in estimators.items():
        models[method] = str(out / f"{method}.pt")
        estimator.save(models[method])

    grid = torch.linspace(-1, 1, 81)[:, None]
    observed = (-6.0, 0.0, 4.0, 9.0)
    fig, axes = plt.subplots(1, len(observed), figsize=(16, 3.8))
    for axis, value in zip(axes, observed, strict=True):
        x_obs = torch.full((1, 1), value)
        exact = board.log_likelihood_ratio(
            x_obs.double().expand(81, 1), grid.double(), torch.zeros(81, 1, dtype=torch.float64)
        )
        axis.plot(grid[:, 0], exact, "k", lw=2, label="exact")
        for method, estimator in estimators.items():
            log_r = estimator.log_ratio(x=x_obs, theta=grid, reference=torch.zeros(81, 1))
            axis.plot(grid[:, 0], log_r, label=method.upper())
        axis.set(title=f"x = {value}", xlabel="θ0")
    axes[0].set_ylabel("log r(x | θ0, 0)")
    axes[0].legend()
    fig.tight_layout()
    figure = out / "ratio_estimators.png"
    fig.savefig(figure, dpi=100)
    plt.close(fig)
    return {
        "mse": {m: float(torch.cat(v).mean()) for m, v in squared.items()},
        "epochs": {m: len(e.history.train_loss) for m, e in estimators.items()},
        "models": models,
        "figure": str(figure),
    }


def _plot(board, gold: GoldCheck, path: Path, plt) -> None:
    """Three panels from the events the gold check used: p(x|θ), the joint score and the
    joint ratio against the exact ones."""
    data, at_ref = gold.at_theta, gold.at_reference
    grid = torch.linspace(-16.5, 16.5, 600, dtype=torch.float64)[:, None]
    grid_theta = torch.full_like(grid, DEMO_THETA)
    edges = torch.arange(-15.0, 16.0, 2.0, dtype=torch.float64)  # one bin per final position

    def binned(values, x):
        """Each bin's mean x, mean value and its standard error."""
        means = binned_mean_test(values, x[:, 0], edges, min_count=20)
        return means.centres, means.means, means.stderrs

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].hist(data.x[:, 0], bins=200, density=True, alpha=0.5, label="simulated")
    axes[0].plot(grid, board.log_likelihood(grid, grid_theta).exp(), label="exact p(x|θ)")
    axes[0].set(xlabel="x", ylabel="density", title=f"Galton board, θ = {DEMO_THETA}")
    axes[1].scatter(data.x[:2000, 0], data.joint_score[:2000, 0], s=2, alpha=0.3, label="t(x,z|θ)")
    axes[1].errorbar(
        *binned(data.joint_score[:, 0], data.x), fmt="o", color="k", label="binned mean"
    )
    axes[1].plot(grid, board.likelihood_score(grid, grid_theta)[:, 0], label="exact t(x|θ)")
    axes[1].set(xlabel="x", ylabel="score", title="joint score vs exact score", ylim=(-15, 15))
    ratio = at_ref.joint_log_ratio.exp()
    axes[2].errorbar(*binned(ratio, at_ref.x), fmt="o", color="k", label="binned mean r(x,z)")
    exact = board.log_likelihood_ratio(grid, grid_theta, torch.zeros_like(grid)).exp()
    axes[2].plot(grid, exact, label="exact r(x|θ, 0)")
    axes[2].set(xlabel="x", ylabel="ratio", yscale="log", title="joint ratio vs exact ratio")
    for axis in axes:
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
