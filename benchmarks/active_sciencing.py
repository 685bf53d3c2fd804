"""Active sciencing on the Weinberg angle: choose the beam energy √s of the next experiment.

Nature hides sin²θ_W = 0.2312 (PDG).  Each round one experiment records the μ angular
distribution of ``--events`` e+e- → μ+μ- events at the √s the strategy picks among
``--designs`` candidates in [40, 130] GeV, and the posterior (exact likelihood, prior
U(0.15, 0.35)) is updated.  Strategies:

* ``eig``: `simfer.ExperimentLoop` with the exact likelihood: √s with the largest EIG under
  the current posterior (nested Monte Carlo, N = M = ``--n``);
* ``random``: √s uniform among the candidates;
* ``z-pole``: √s = M_Z every round (where LEP measured A_FB).

Every strategy sees the same nature seeds.  Reported per round, mean over seeds (and its
standard error): the posterior's differential entropy (what the EIG criterion lowers in
expectation) and its standard deviation (what the issue asks for; at the Z pole it cannot
fall below half the distance between the two mirror solutions, since A_FB there depends
on sin²θ_W only through (2 sin²θ_W − ½)²), both from the exact posterior on a grid of
4001 points; and the mean absolute error of the posterior mean.  Each (strategy, seed)
run is one cell appended to a JSON-lines file and skipped when the script runs again
(``--fresh`` starts over).

    .venv/bin/python benchmarks/active_sciencing.py                  # 10 seeds × 8 rounds
    .venv/bin/python benchmarks/active_sciencing.py --seeds 2 --rounds 3   # a quick look
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import simfer  # noqa: E402
from benchmarks._common import JsonLines, fmt, run_header, run_meta  # noqa: E402
from simulators import WeinbergAngle  # noqa: E402
from simulators.weinberg import M_Z  # noqa: E402

TRUTH = 0.2312
STRATEGIES = ("eig", "random", "z-pole")


def play(strategy: str, seed: int, args) -> dict:
    """One campaign: the posterior std and mean after every round."""
    sim = WeinbergAngle(n_events=args.events)
    prior = simfer.BoxUniform([0.15], [0.35])
    designs = torch.linspace(40.0, 130.0, args.designs)
    loop = simfer.ExperimentLoop(
        sim,
        prior,
        designs=designs,
        n_outer=args.n,
        n_inner=args.n,
        n_posterior=args.draws,
        sampler=dict(n_chains=50, warmup=60),
        seed=seed,
    )
    generator = torch.Generator().manual_seed(10_000 + seed)
    truth = torch.tensor([[TRUTH]])
    grid = torch.linspace(0.15, 0.35, 4003, dtype=torch.float64)[1:-1, None]
    log_post = torch.zeros(grid.shape[0], dtype=torch.float64)
    entropy, grid_std = [], []
    start = time.perf_counter()
    for round_ in range(args.rounds):
        if strategy == "eig":
            design = loop.suggest()
        elif strategy == "random":
            design = designs[torch.randint(len(designs), (1,), generator=generator)]
        else:
            design = torch.tensor([M_Z])
        # nature's events depend on the seed and the round only, not on the strategy
        x = sim.simulate(truth, design.reshape(1, 1), seed=1000 * seed + round_)[0]
        loop.observe(design, x)
        rows = grid.shape[0]
        log_post += sim.log_likelihood(
            x.double().expand(rows, -1), grid, design.double().reshape(1, 1).expand(rows, 1)
        )
        step = float(grid[1, 0] - grid[0, 0])
        log_p = torch.log_softmax(log_post, 0) - math.log(step)  # density on the grid
        p = log_p.exp()
        entropy.append(float(-(p * log_p).sum() * step))
        mean = float((p * grid[:, 0]).sum() * step)
        grid_std.append(float(((p * (grid[:, 0] - mean) ** 2).sum() * step) ** 0.5))
    return {
        "strategy": strategy,
        "seed": seed,
        "designs": [r.design[0] for r in loop.history],
        "std": grid_std,
        "entropy": entropy,
        "std_draws": [r.posterior_std[0] for r in loop.history],
        "mean": [r.posterior_mean[0] for r in loop.history],
        "seconds": time.perf_counter() - start,
    }


def _row(rows: list[dict], strategy: str, key: str, rounds: int) -> str:
    mine = [r for r in rows if r["strategy"] == strategy and len(r[key]) >= rounds]
    cells = []
    for r in range(rounds):
        values = [row[key][r] for row in mine]
        error = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0
        cells.append(f"{fmt(statistics.mean(values))} ± {fmt(error)}")
    return f"| {strategy} | {len(mine)} | " + " | ".join(cells) + " |"


def table(rows: list[dict], rounds: int) -> str:
    rows = [r for r in rows if "entropy" in r]
    header = "| strategy | seeds | " + " | ".join(f"round {r + 1}" for r in range(rounds)) + " |"
    rule = "|---|---|" + "---|" * rounds
    lines = []
    for key, title in (
        ("entropy", "Posterior differential entropy of sin²θ_W [nats] after each round"),
        ("std", "Posterior standard deviation of sin²θ_W after each round"),
    ):
        lines += [f"{title} (mean over seeds ± standard error):", "", header, rule]
        lines += [
            _row(rows, s, key, rounds) for s in STRATEGIES if any(r["strategy"] == s for r in rows)
        ]
        lines.append("")
    errors = []
    for strategy in STRATEGIES:
        mine = [r for r in rows if r["strategy"] == strategy and len(r["std"]) >= rounds]
        if mine:
            bias = statistics.mean(abs(row["mean"][rounds - 1] - TRUTH) for row in mine)
            errors.append(f"{strategy} {fmt(bias)}")
    lines.append("Mean |posterior mean − truth| after the last round: " + ", ".join(errors) + ".")
    chosen = [r["designs"] for r in rows if r["strategy"] == "eig"]
    if chosen:
        first = statistics.mean(d[0] for d in chosen)
        lines.append(f"The EIG loop's first √s: {fmt(first)} GeV on average.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--designs", type=int, default=31)
    parser.add_argument("--n", type=int, default=300, help="EIG outer and inner samples")
    parser.add_argument("--draws", type=int, default=1500, help="posterior draws per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--results", default=str(ROOT / "benchmarks/results/active_sciencing.jsonl")
    )
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = JsonLines(args.results)
    if args.fresh and log.path.exists():
        log.path.unlink()
    meta = run_meta("active_sciencing.py", argv, args.threads, "pyro-ppl")
    start = time.perf_counter()
    done = {
        (r["strategy"], r["seed"])
        for r in log.rows()
        if "entropy" in r and len(r["std"]) >= args.rounds
    }
    for seed in range(args.seeds):
        for strategy in STRATEGIES:
            if (strategy, seed) in done:
                continue
            row = play(strategy, seed, args)
            log.append(row)
            entropy = [round(h, 2) for h in row["entropy"]]
            print(f"{strategy:7s} seed {seed}: entropy {entropy}", flush=True)
    meta.update(wall_minutes=(time.perf_counter() - start) / 60, status="")
    print("\n".join(run_header(meta)))
    print()
    print(table(log.rows(), args.rounds))


if __name__ == "__main__":
    main()
