"""The demo: simfer's whole journey on built-in simulators, in a few minutes on a laptop.

1. Simulate the Galton board with gold into an HDF5 store (rerunning resumes from it).
2. Check the gold against the board's exact likelihood (`simfer.diagnostics.check_gold`).
3. Train CARL and ALICES (a likelihood ratio without and with gold) and an NPE on the
   same simulations; compare log r̂ with the exact log r.
4. Posteriors against the exact posterior p(θ | x_1..m) ∝ p(θ) Π p(x_i | θ), computed on a
   fine θ grid from the board's exact likelihood: the NPE for one event, ALICES for 50
   iid events (a product of learnt ratios).  Corner plots and C2ST.
5. Calibration of the NPE on prior-predictive pairs: SBC ranks and expected coverage.
6. One round of the experiment loop on the Weinberg angle: the EIG of every beam energy
   under the prior (exact likelihood), the energy picked, the run, the posterior after.

``summary.md`` and ``summary.json`` say what was trained, how close each result is to the
exact answer, and which design was picked; the exit code is 0 when every check passed.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from .diagnostics.gold import GoldCheck, binned_mean_test, check_gold
from .runner import simulate

__all__ = ["run_demo"]

#: The demo checks the gold at this tilt, against θ_ref = 0, and plots what it checked.
DEMO_THETA = 0.5
#: The hidden tilt of the demo's observations, and how many iid events ALICES sees.
TRUE_THETA, N_EVENTS = 0.3, 50
#: A posterior is "close to exact" when a classifier cannot tell its draws from exact
#: ones: C2ST below this (0.5 is indistinguishable; 1000 draws each, noise ≈ 0.02).
C2ST_CLOSE = 0.6
#: The Weinberg round: events per run, candidate beam energies, nature's sin²θ_W.
RUN_EVENTS, ENERGIES, SIN2_THETA_W = 1000, (40.0, 130.0, 19), 0.2312


def run_demo(
    out: str | Path = "demo_output",
    *,
    n: int = 20_000,
    seed: int = 0,
    workers: int = 2,
    epochs: int = 60,
    progress: bool = True,
) -> int:
    """Run the demo into ``out``; returns 0 when every check passed, else 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from simulators import GaltonBoard

    args = SimpleNamespace(n=n, seed=seed, epochs=epochs, progress=progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    board = GaltonBoard(n_rows=16)
    prior = board.prior()

    stages = _Stages()
    stages.start(1, "simulating the Galton board with gold")
    started = time.perf_counter()
    data = simulate(
        board,
        prior,
        n,
        gold=True,
        theta_ref=[0.0],
        seed=seed,
        path=out / "galton.h5",
        executor="serial" if workers == 0 else "processes",
        n_workers=workers or None,
        progress=progress,
    )
    seconds = time.perf_counter() - started

    stages.start(2, "checking the gold against the exact likelihood")
    # E[t(x,z|θ) | x] = t(x|θ) for x drawn at θ and E[r(x,z|θ,θ_ref) | x] = r(x|θ,θ_ref)
    # for x drawn at θ_ref, and the model-free means.
    gold = check_gold(
        board,
        [DEMO_THETA],
        [0.0],
        exact_log_ratio=board.log_likelihood_ratio,
        exact_score=board.likelihood_score,
        n=n,
        seed=seed,
    )
    gold_figure = out / "gold_check.png"
    _plot(board, gold, gold_figure, plt)

    stages.start(3, "training CARL, ALICES and an NPE on the same simulations")
    trained = _train_ratio_estimators(board, data, out, args, plt)
    npe = _train_npe(data, prior, out, args)

    stages.start(4, "posteriors against the exact posterior")
    posteriors = _posteriors(board, prior, npe, trained["estimators"]["alices"], out, args, plt)

    stages.start(5, "calibration of the NPE (SBC and expected coverage)")
    calibration = _calibration(board, prior, npe, out, args, plt)

    stages.start(6, "one round of the experiment loop on the Weinberg angle")
    design = _design_round(out, args, plt)

    stages.stop()
    checks = {
        "gold is unbiased": gold.passed,
        "ALICES learns log r better than CARL": trained["mse"]["alices"] < trained["mse"]["carl"],
        f"NPE posterior close to exact (C2ST < {C2ST_CLOSE})": posteriors["npe"]["c2st"]
        < C2ST_CLOSE,
        f"ALICES posterior close to exact (C2ST < {C2ST_CLOSE})": posteriors["alices"]["c2st"]
        < C2ST_CLOSE,
        "NPE calibrated (SBC p > 0.001)": calibration["sbc_p_value"] > 1e-3,
        "the round shrank the posterior": design["std_after"] < design["std_before"],
    }
    trained.pop("estimators")
    summary = {
        "simulator": board.describe(),
        "n_simulations": len(data),
        "n_invalid": data.n_invalid,
        "seconds": round(seconds, 3),
        "store": str(out / "galton.h5"),
        "gold_check": gold.as_dict(),
        "figure": str(gold_figure),
        "ratio_estimators": trained,
        "posteriors": posteriors,
        "calibration": calibration,
        "design": design,
        "checks": checks,
        "passed": all(checks.values()),
        "stage_seconds": stages.seconds,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = _summary_lines(summary, gold, args)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if summary["passed"] else 1


class _Stages:
    """Prints each stage as it starts and keeps the wall time of each."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def start(self, index: int, title: str) -> None:
        self.stop()
        print(f"[{index}/6] {title} …", flush=True)
        self._current = (title, time.perf_counter())

    def stop(self) -> None:
        if self._current is not None:
            title, started = self._current
            self.seconds[title] = round(time.perf_counter() - started, 1)
            self._current = None


def _train_npe(data, prior, out: Path, args):
    """A neural posterior estimator q(θ | x) on the simulations drawn at θ."""
    from .estimators import PosteriorEstimator

    npe = PosteriorEstimator(
        "nsf", max_epochs=args.epochs, seed=args.seed, progress=args.progress
    ).fit(data, prior)
    npe.save(out / "npe.pt")
    return npe


def _exact_posterior_draws(board, prior, x_obs: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n draws ``[n, 1]`` of the exact posterior p(θ | x_1..m) ∝ p(θ) Π_i p(x_i | θ) of the
    board's 1-d tilt, by inverse-CDF sampling on a grid of 4001 points over the prior's
    support (uniform within each cell)."""
    low, high = float(prior.low[0]), float(prior.high[0])
    grid = torch.linspace(low, high, 4001, dtype=torch.float64)
    x = torch.as_tensor(x_obs, dtype=torch.float64).reshape(-1, 1)
    log_post = torch.cat(  # [G, m] log-likelihoods summed over the events, 500 θ at a time
        [
            board.log_likelihood(
                x.expand(len(block), -1, -1).reshape(-1, 1),
                block[:, None, None].expand(-1, len(x), 1).reshape(-1, 1),
            )
            .reshape(len(block), len(x))
            .sum(1)
            for block in grid.split(500)
        ]
    )
    weights = torch.softmax(log_post, 0)
    generator = torch.Generator().manual_seed(seed)
    cell = torch.multinomial(weights, n, replacement=True, generator=generator)
    step = (high - low) / (len(grid) - 1)
    jitter = (torch.rand(n, generator=generator, dtype=torch.float64) - 0.5) * step
    return (grid[cell] + jitter).clamp(low, high)[:, None].float()


def _compare(draws: torch.Tensor, exact: torch.Tensor, seed: int) -> dict[str, float]:
    from .diagnostics import c2st

    return {
        "c2st": float(c2st(draws, exact, seed=seed)),
        "mean": float(draws.mean()),
        "std": float(draws.std()),
        "exact_mean": float(exact.mean()),
        "exact_std": float(exact.std()),
    }


def _posteriors(board, prior, npe, alices, out: Path, args, plt) -> dict[str, Any]:
    """The NPE for one event and ALICES for N_EVENTS iid events, each against the exact
    posterior of the same observation; one panel each in posteriors.png (for a 1-d θ the
    corner plot is its diagonal: the histogram of the draws over the exact density)."""
    truth = torch.full((N_EVENTS, 1), TRUE_THETA)
    x_obs = board.simulate(truth, seed=args.seed + 11)
    results, n_draws = {}, 1000
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for axis, (name, observed) in zip(axes, (("npe", x_obs[:1]), ("alices", x_obs)), strict=True):
        exact = _exact_posterior_draws(board, prior, observed, n_draws, args.seed + 12)
        if name == "npe":
            draws = npe.sample(n_draws, x=observed[0], seed=args.seed + 13)
        else:
            draws = alices.posterior(prior, observed).sample(n_draws, seed=args.seed + 13)
        draws = draws.reshape(-1, 1)
        results[name] = {"n_events": len(observed), **_compare(draws, exact, args.seed)}
        label = "NPE, one event" if name == "npe" else f"ALICES, {len(observed)} iid events"
        both = torch.cat((draws, exact))[:, 0]
        edges = torch.linspace(float(both.min()), float(both.max()), 41).numpy()
        axis.hist(draws[:, 0].numpy(), bins=edges, density=True, alpha=0.5, label=label)
        axis.hist(exact[:, 0].numpy(), bins=edges, density=True, histtype="step", color="k")
        axis.plot([], [], color="k", label="exact posterior")
        axis.axvline(TRUE_THETA, color="tab:red", lw=1, ls="--", label="truth")
        axis.set(xlabel="θ (tilt)", title=f"{label}: C2ST {results[name]['c2st']:.3f}")
        axis.legend(fontsize=8)
    axes[0].set_ylabel("posterior density")
    fig.tight_layout()
    path = out / "posteriors.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    for result in results.values():
        result["figure"] = str(path)
    return results


def _calibration(board, prior, npe, out: Path, args, plt) -> dict[str, Any]:
    """SBC ranks and the expected coverage of the NPE on 300 prior-predictive pairs."""
    from .diagnostics import expected_coverage, sbc
    from .plotting import coverage, sbc_ranks

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed + 21)
        theta = prior.sample((300,))
    x = board.simulate(theta, seed=args.seed + 22)
    posterior = npe.posterior(prior, x[:1])
    samples = torch.stack([npe.sample(200, x=x[i], seed=args.seed + 23 + i) for i in range(len(x))])
    ranks = sbc(None, theta, x, samples=samples)
    curve = expected_coverage(posterior, theta, x, samples=samples, log_prob=_npe_log_prob(npe))
    fig = sbc_ranks(ranks)
    ranks_path = out / "sbc_ranks.png"
    fig.savefig(ranks_path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    fig = coverage(curve, labels=["NPE"])
    coverage_path = out / "coverage.png"
    fig.savefig(coverage_path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return {
        "n_pairs": len(theta),
        "n_samples": samples.shape[1],
        "sbc_p_value": float(ranks.p_values[0]),
        "coverage_max_error": float(curve.max_error()),
        "figures": [str(ranks_path), str(coverage_path)],
    }


def _npe_log_prob(npe):
    """log q(θ | x) of the NPE as ``(theta [N, L, d], x [N, …]) → [N, L]``."""

    def log_prob(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        n, m = theta.shape[:2]
        repeated = x.repeat_interleave(m, 0)
        return npe.log_prob(theta=theta.reshape(n * m, -1), x=repeated).reshape(n, m)

    return log_prob


def _design_round(out: Path, args, plt) -> dict[str, Any]:
    """One round of `simfer.ExperimentLoop` with the exact likelihood of `WeinbergAngle`:
    the EIG of every beam energy under the prior, the pick, the run, the posterior."""
    from simulators import WeinbergAngle

    from .design import ExperimentLoop
    from .prior import BoxUniform

    prior = BoxUniform([0.15], [0.35])
    low, high, count = ENERGIES
    loop = ExperimentLoop(
        WeinbergAngle(n_events=RUN_EVENTS),
        prior,
        designs=torch.linspace(low, high, count),
        n_outer=200,
        n_inner=200,
        n_posterior=1000,
        sampler={"n_chains": 40, "warmup": 40},
        seed=args.seed,
    )
    loop.run(1, nature=[SIN2_THETA_W])
    record = loop.history[0]
    from .plotting import eig_curve

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    eig_curve(record.eig, ax=left, xlabel="√s [GeV]", color="k", label="under the prior")
    left.axvline(record.design[0], color="tab:red", lw=1, ls=":", label="picked")
    left.set_title(f"EIG of a run of {RUN_EVENTS} events")
    left.legend(fontsize=8)
    grid = torch.linspace(float(prior.low[0]), float(prior.high[0]), 801)[1:-1, None]
    density = torch.softmax(loop.posterior.log_prob(grid), 0) / float(grid[1, 0] - grid[0, 0])
    right.plot(
        grid[:, 0], density, color="tab:blue", label=f"after the run at {record.design[0]:.0f} GeV"
    )
    right.axhline(1 / float(prior.high[0] - prior.low[0]), color="grey", ls="-.", label="prior")
    right.axvline(SIN2_THETA_W, color="tab:red", lw=1, ls="--", label="truth")
    right.set(xlabel="sin²θ_W", ylabel="posterior density", title="the belief after one run")
    right.legend(fontsize=8)
    fig.tight_layout()
    path = out / "design_round.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    std_before = float(prior.high[0] - prior.low[0]) / math.sqrt(12)  # a uniform's std
    return {
        "simulator": f"WeinbergAngle(n_events={RUN_EVENTS})",
        "candidates_gev": [low, high, count],
        "picked_gev": record.design[0],
        "eig_at_pick": float(record.eig.eig.max()),
        "eig_at_z_pole": float(record.eig.eig[(record.eig.designs[:, 0] - 91.19).abs().argmin()]),
        "posterior_mean": record.posterior_mean[0],
        "std_before": std_before,
        "std_after": record.posterior_std[0],
        "truth": SIN2_THETA_W,
        "figure": str(path),
    }


def _summary_lines(summary: dict, gold: GoldCheck, args) -> list[str]:
    trained, post, cal, design = (
        summary["ratio_estimators"],
        summary["posteriors"],
        summary["calibration"],
        summary["design"],
    )
    mse = trained["mse"]
    gold_wins = mse["alices"] < mse["carl"]

    def posterior_line(name: str, label: str) -> str:
        r = post[name]
        return (
            f"- {label}: C2ST against exact draws {r['c2st']:.3f} (0.5 = indistinguishable); "
            f"mean {r['mean']:.3f} vs exact {r['exact_mean']:.3f}, std {r['std']:.3f} vs "
            f"exact {r['exact_std']:.3f}; figure `{r['figure']}`"
        )

    return [
        "# simfer demo: the whole journey",
        "",
        "## 1–2. Simulation with gold, checked",
        "",
        f"- {summary['n_simulations']} Galton-board simulations with gold "
        f"({summary['n_invalid']} invalid) in {summary['seconds']:.1f} s, stored in "
        f"`{summary['store']}` (rerunning resumes from it).",
        f"- gold checked at θ = {DEMO_THETA}, θ_ref = 0 on {args.n} + {args.n} events "
        f"(`simfer.diagnostics.check_gold`):",
        *(f"  - {check.describe()}" for check in gold.checks.values()),
        f"- verdict: {'gold is unbiased (PASS)' if gold.passed else 'gold check FAILED'} "
        f"(every |z| < {gold.z_threshold:g}); figure `{summary['figure']}`",
        "",
        "## 3. Learning log r(x|θ0, 0) from the same simulations",
        "",
        f"- MSE of log r̂ against the exact log r (x drawn at θ1 = 0, θ0 on a grid): "
        f"CARL {mse['carl']:.4f}, ALICES {mse['alices']:.4f} (trivial log r̂ = 0: "
        f"{mse['trivial']:.3f}); gold {'wins' if gold_wins else 'does NOT win'} by "
        f"{mse['carl'] / mse['alices']:.1f}×",
        f"- models: `{trained['models']['carl']}`, `{trained['models']['alices']}`; "
        f"figure `{trained['figure']}`",
        "",
        f"## 4. Posteriors at a hidden tilt θ = {TRUE_THETA}, against the exact posterior",
        "",
        posterior_line("npe", "NPE (`PosteriorEstimator('nsf')`), one event"),
        posterior_line("alices", f"ALICES, {post['alices']['n_events']} iid events"),
        "",
        "## 5. Calibration of the NPE",
        "",
        f"- {cal['n_pairs']} prior-predictive pairs, {cal['n_samples']} draws each: SBC "
        f"χ² p-value {cal['sbc_p_value']:.3f}; expected coverage off the diagonal by at most "
        f"{cal['coverage_max_error']:.3f}; figures " + ", ".join(f"`{f}`" for f in cal["figures"]),
        "",
        "## 6. Picking the next experiment (Weinberg angle, exact likelihood)",
        "",
        f"- EIG of a run of {RUN_EVENTS} events at {design['candidates_gev'][2]} beam energies "
        f"from {design['candidates_gev'][0]:.0f} to {design['candidates_gev'][1]:.0f} GeV: "
        f"picked √s = {design['picked_gev']:.1f} GeV (EIG {design['eig_at_pick']:.2f} nats, "
        f"against {design['eig_at_z_pole']:.2f} at the Z pole)",
        f"- after the run: sin²θ_W = {design['posterior_mean']:.4f} ± "
        f"{design['std_after']:.4f} (prior std {design['std_before']:.4f}, truth "
        f"{design['truth']}); figure `{design['figure']}`",
        "",
        "## Checks",
        "",
        *(f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in summary["checks"].items()),
        "",
        "Wall time per stage: "
        + ", ".join(f"{name} {sec:.0f} s" for name, sec in summary["stage_seconds"].items()),
    ]


def _train_ratio_estimators(board, data, out: Path, args, plt) -> dict:
    """Train CARL and ALICES on the run's simulations, compare with the exact log r."""
    from .estimators import RatioEstimator

    settings = dict(hidden=(64, 64), max_epochs=args.epochs, seed=args.seed, progress=args.progress)
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
        "estimators": estimators,
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
