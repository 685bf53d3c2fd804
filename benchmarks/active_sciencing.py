"""Active sciencing on the Weinberg angle: choose the beam energy √s of the next experiment.

Nature hides sin²θ_W = 0.2312 (PDG).  Each round one experiment records the μ angular
distribution of ``--events`` e+e- → μ+μ- events at the √s the strategy picks among
``--designs`` candidates in [40, 130] GeV, and the posterior (exact likelihood, prior
U(0.15, 0.35)) is updated.  Strategies:

* ``eig``: `simfer.ExperimentLoop` with the exact likelihood: √s with the largest EIG under
  the current posterior (nested Monte Carlo, N = M = ``--n``);
* ``surrogate``: the same loop with a surrogate of ONE event amortized over √s (``--surrogate``:
  ALICES by default, or RASCAL, or a likelihood flow, NLE or SCANDAL), trained once up
  front on ``--surrogate-sims`` one-event simulations (√s drawn from the candidates) and
  saved next to the results; each experiment's 100 events enter the belief and the EIG as
  the per-event term summed over them (exact for iid events), N = M = ``--surrogate-n``;
* ``random``: √s uniform among the candidates;
* ``z-pole``: √s = M_Z every round (where LEP measured A_FB).

Every strategy sees the same nature seeds.  Reported per round, mean over seeds (and its
standard error): the posterior's differential entropy (what the EIG criterion lowers in
expectation) and its standard deviation (what the issue asks for; at the Z pole it cannot
fall below half the distance between the two mirror solutions, since A_FB there depends
on sin²θ_W only through (2 sin²θ_W − ½)²), both from the exact posterior on a grid of
4001 points; and the mean absolute error of the posterior mean.  For ``surrogate`` those
columns measure its *choices* (the exact posterior of the outcomes at the √s it picked);
its own posterior (the surrogate's, from draws) is compared with the exact one on the
same outcomes in a line under the tables.  Each (strategy, seed) run is one cell appended
to a JSON-lines file and skipped when the script runs again (``--fresh`` starts over); the
surrogate's cells are keyed by its settings, its model file is reused when they match,
and its training time is a row of the same file.  ``--markdown PATH`` also writes the
tables into that file's ``active_sciencing`` block (default: printed only).

    .venv/bin/python benchmarks/active_sciencing.py                  # 10 seeds × 8 rounds
    .venv/bin/python benchmarks/active_sciencing.py --seeds 2 --rounds 3   # a quick look
    .venv/bin/python benchmarks/active_sciencing.py --strategies surrogate --seeds 1 \
        --rounds 1 --results /tmp/as.jsonl                          # time one surrogate round
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import simfer  # noqa: E402
from benchmarks._common import (  # noqa: E402
    JsonLines,
    fmt,
    run_header,
    run_meta,
    write_markdown,
)
from simulators import WeinbergAngle  # noqa: E402
from simulators.weinberg import M_Z  # noqa: E402

TRUTH = 0.2312
STRATEGIES = ("eig", "surrogate", "random", "z-pole")
RATIO_METHODS = ("rascal", "alices")
NAME, HEADING = "active_sciencing", "Active sciencing: the experiment loop on the Weinberg angle"


def surrogate_settings(args) -> dict:
    """What the surrogate's cells are keyed by: its training budget and the loop's N = M."""
    return {
        "method": args.surrogate,
        "sims": args.surrogate_sims,
        "epochs": args.surrogate_epochs,
        "hidden": args.surrogate_hidden,
        "layers": args.surrogate_layers,
        "designs": args.designs,
        "n": args.surrogate_n,
    }


def surrogate_paths(args) -> tuple[Path, Path]:
    """The surrogate's model file and the JSON of the training settings it was made with."""
    path = Path(args.results).with_suffix(".surrogate.pt")
    return path, path.with_suffix(".json")


def train_surrogate(args, log: JsonLines):
    """The one-event surrogate amortized over the candidate √s: loaded from its model file
    when one with the same settings was trained before, else trained (and timed) now."""
    settings = {k: v for k, v in surrogate_settings(args).items() if k != "n"}
    path, stamp = surrogate_paths(args)
    if path.exists() and stamp.exists() and json.loads(stamp.read_text()) == settings:
        print(f"surrogate: reusing {path}", flush=True)
        return simfer.load(path)
    one_event = WeinbergAngle(n_events=1)
    prior = simfer.BoxUniform([0.15], [0.35])
    candidates = torch.linspace(40.0, 130.0, args.designs)[:, None]
    ratio = args.surrogate in RATIO_METHODS
    start = time.perf_counter()
    data = simfer.simulate(
        one_event,
        prior,
        args.surrogate_sims,
        design=simfer.prior.Empirical(candidates),
        gold=True,
        theta_ref=[0.25] if ratio else None,
        seed=12345,
        executor="serial",
        progress=False,
    )
    simulated = time.perf_counter() - start
    training = dict(max_epochs=args.surrogate_epochs, seed=0, progress=False)
    if ratio:
        hidden = (args.surrogate_hidden,) * args.surrogate_layers
        estimator = simfer.RatioEstimator(args.surrogate, hidden=hidden, **training)
    else:
        estimator = simfer.LikelihoodEstimator(
            args.surrogate,
            hidden=args.surrogate_hidden,
            n_transforms=args.surrogate_layers,
            **training,
        )
    estimator.fit(data)
    seconds = time.perf_counter() - start
    estimator.save(path)
    stamp.write_text(json.dumps(settings))
    epochs = len(estimator.history.train_loss)
    log.append({"kind": "surrogate", "training": settings, "seconds": seconds, "epochs": epochs})
    print(
        f"surrogate: {args.surrogate} on {args.surrogate_sims} one-event simulations, "
        f"{epochs} epochs, {seconds:.0f} s (simulation {simulated:.1f} s)",
        flush=True,
    )
    return estimator


def play(strategy: str, seed: int, args, surrogate=None) -> dict:
    """One campaign: the posterior std and mean after every round."""
    sim = WeinbergAngle(n_events=args.events)
    prior = simfer.BoxUniform([0.15], [0.35])
    designs = torch.linspace(40.0, 130.0, args.designs)
    n = args.surrogate_n if strategy == "surrogate" else args.n
    loop = simfer.ExperimentLoop(
        sim,
        prior,
        designs=designs,
        estimator=surrogate if strategy == "surrogate" else None,
        n_outer=n,
        n_inner=n,
        n_posterior=args.draws,
        sampler=dict(n_chains=50, warmup=60),
        seed=seed,
    )
    generator = torch.Generator().manual_seed(10_000 + seed)
    truth = torch.tensor([[TRUTH]])
    grid = torch.linspace(0.15, 0.35, 4003, dtype=torch.float64)[1:-1, None]
    log_post = torch.zeros(grid.shape[0], dtype=torch.float64)
    entropy, grid_std, grid_mean, round_seconds = [], [], [], []
    start = time.perf_counter()
    for round_ in range(args.rounds):
        began = time.perf_counter()
        if strategy in ("eig", "surrogate"):
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
        grid_mean.append(mean)
        grid_std.append(float(((p * (grid[:, 0] - mean) ** 2).sum() * step) ** 0.5))
        round_seconds.append(time.perf_counter() - began)
    row = {
        "strategy": strategy,
        "seed": seed,
        "designs": [r.design[0] for r in loop.history],
        "std": grid_std,
        "entropy": entropy,
        "std_draws": [r.posterior_std[0] for r in loop.history],
        "mean": [r.posterior_mean[0] for r in loop.history],
        "exact_mean": grid_mean,
        "seconds": time.perf_counter() - start,
        "round_seconds": round_seconds,
    }
    if strategy == "surrogate":
        row["surrogate"] = surrogate_settings(args)
    return row


def _row(rows: list[dict], strategy: str, key: str, rounds: int) -> str:
    mine = [r for r in rows if r["strategy"] == strategy and len(r[key]) >= rounds]
    cells = []
    for r in range(rounds):
        values = [row[key][r] for row in mine]
        error = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0
        cells.append(f"{fmt(statistics.mean(values))} ± {fmt(error)}")
    return f"| {strategy} | {len(mine)} | " + " | ".join(cells) + " |"


def table(rows: list[dict], rounds: int, settings: dict | None = None) -> str:
    """The markdown tables; surrogate cells only of the surrogate ``settings``."""
    trainings = [r for r in rows if r.get("kind") == "surrogate"]
    rows = [
        r
        for r in rows
        if "entropy" in r and (r["strategy"] != "surrogate" or r.get("surrogate") == settings)
    ]
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
            bias = statistics.mean(
                abs(row.get("exact_mean", row["mean"])[rounds - 1] - TRUTH) for row in mine
            )
            errors.append(f"{strategy} {fmt(bias)}")
    lines.append(
        "Mean |exact posterior mean − truth| after the last round: " + ", ".join(errors) + "."
    )
    chosen = [r["designs"] for r in rows if r["strategy"] == "eig"]
    if chosen:
        first = statistics.mean(d[0] for d in chosen)
        lines.append(f"The EIG loop's first √s: {fmt(first)} GeV on average.")
    lines += _surrogate_lines(rows, rounds, settings, trainings)
    return "\n".join(lines)


def _surrogate_lines(
    rows: list[dict], rounds: int, settings: dict | None, trainings: list[dict]
) -> list[str]:
    """The surrogate's own posterior against the exact one on its outcomes, how often it
    picked the exact loop's √s, and its costs."""
    mine = [r for r in rows if r["strategy"] == "surrogate" and len(r["std"]) >= rounds]
    if not mine or settings is None:
        return []
    last = rounds - 1
    std_ratio = statistics.mean(r["std_draws"][last] / r["std"][last] for r in mine)
    shift = statistics.mean(
        abs(r["mean"][last] - r["exact_mean"][last]) / r["std"][last] for r in mine
    )
    exact = {r["seed"]: r["designs"] for r in rows if r["strategy"] == "eig"}
    same = [r["designs"][0] == exact[r["seed"]][0] for r in mine if r["seed"] in exact]
    seconds = statistics.mean(s for r in mine for s in r["round_seconds"])
    training = {k: v for k, v in settings.items() if k != "n"}
    trained = [r for r in trainings if r.get("training") == training]
    budget = (
        f"{settings['method']} on {settings['sims']} one-event simulations "
        f"({settings['epochs']} epochs max, width {settings['hidden']} × {settings['layers']})"
    )
    if trained:
        budget += f", trained in {trained[-1]['seconds']:.0f} s"
    lines = [
        f"Surrogate loop: {budget}; EIG with N = M = {settings['n']}, {fmt(seconds)} s per round.",
        f"Its own posterior after round {rounds} against the exact posterior of the same "
        f"outcomes: std ratio {fmt(std_ratio)}, |mean shift| {fmt(shift)} exact stds "
        f"(means over seeds).",
    ]
    if same:
        lines.append(f"First √s equal to the exact loop's in {sum(same)} of {len(same)} seeds.")
    return lines


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
        "--strategies",
        default=",".join(STRATEGIES),
        help=f"comma-separated, from {','.join(STRATEGIES)}",
    )
    parser.add_argument(
        "--surrogate",
        default="alices",
        choices=(*RATIO_METHODS, "nle", "scandal"),
        help="the one-event surrogate of the 'surrogate' strategy",
    )
    parser.add_argument("--surrogate-sims", type=int, default=16_000)
    parser.add_argument("--surrogate-epochs", type=int, default=100)
    parser.add_argument(
        "--surrogate-hidden", type=int, default=128, help="width of each hidden layer"
    )
    parser.add_argument(
        "--surrogate-layers",
        type=int,
        default=2,
        help="hidden layers of a ratio MLP, or transforms of a flow",
    )
    parser.add_argument(
        "--surrogate-n", type=int, default=None, help="EIG N = M of the surrogate loop (--n)"
    )
    parser.add_argument(
        "--results", default=str(ROOT / "benchmarks/results/active_sciencing.jsonl")
    )
    parser.add_argument(
        "--markdown", default=None, help="also write the tables into this file's block"
    )
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args(argv)
    if args.surrogate_n is None:
        args.surrogate_n = args.n
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        parser.error(f"unknown strategies {unknown}; choose from {list(STRATEGIES)}")
    torch.set_num_threads(args.threads)
    log = JsonLines(args.results)
    if args.fresh:
        for path in (log.path, *surrogate_paths(args)):
            path.unlink(missing_ok=True)
    meta = run_meta("active_sciencing.py", argv, args.threads, "pyro-ppl")
    start = time.perf_counter()
    settings = surrogate_settings(args)
    done = {
        (r["strategy"], r["seed"])
        for r in log.rows()
        if "entropy" in r
        and len(r["std"]) >= args.rounds
        and (r["strategy"] != "surrogate" or r.get("surrogate") == settings)
    }
    surrogate = None
    for seed in range(args.seeds):
        for strategy in strategies:
            if (strategy, seed) in done:
                continue
            if strategy == "surrogate" and surrogate is None:
                surrogate = train_surrogate(args, log)
            row = play(strategy, seed, args, surrogate)
            log.append(row)
            entropy = [round(h, 2) for h in row["entropy"]]
            print(
                f"{strategy:9s} seed {seed}: entropy {entropy} "
                f"({row['seconds']:.0f} s, {statistics.mean(row['round_seconds']):.1f} s/round)",
                flush=True,
            )
    meta.update(wall_minutes=(time.perf_counter() - start) / 60, status="")
    text = "\n".join(run_header(meta)) + "\n\n" + table(log.rows(), args.rounds, settings)
    print(text)
    if args.markdown:
        write_markdown(Path(args.markdown), text, NAME, HEADING)


if __name__ == "__main__":
    main()
