"""Gold mining on the Galton board: simfer's ratio estimators against sbi and MadMiner.

One script, one run, the same simulations for everyone.  For every budget n (simulator
calls, reference-class rows included) it simulates

    data = simfer.simulate(GaltonBoard(n_rows=16), U(-1, 1), n, gold=True, theta_ref=[0.0])

(half the rows drawn at θ0 ~ prior, half at θ1 = 0, each with its joint log ratio and joint
score) and trains on those rows

* simfer: ``RatioEstimator(method)`` for carl, rolr, rascal, alice, alices, cascal, nre,
  bnre, and ``ScoreEstimator("sally")``;
* sbi: NRE_A, NRE_B, NRE_C and BNRE, default settings, on every simulator call as a
  (θ, x) pair (θ the point x was drawn at, so the reference rows are (0, x) pairs);
* MadMiner: ``ParameterizedRatioEstimator`` with carl, rolr, rascal, alice, alices and
  ``ScoreEstimator`` (SALLY), default settings, on the same arrays in its conventions.

Metric: the mean squared error of log r̂(x|θ0, θ1 = 0) against the exact
``board.log_likelihood_ratio`` over a fixed evaluation set (x drawn at θ1 = 0, crossed
with a grid of θ0 in [-0.9, 0.9]); for SALLY the MSE of t̂(x) against the exact score at
θ = 0 and the learned against the exact Fisher information.

Results are printed and appended as they come to benchmarks/results/gold_mining.jsonl,
and the markdown table in docs/benchmarks.md (between the gold-mining markers) is
rewritten after every training, so an interrupted run still leaves its numbers.  The same
command resumes a run cut short, cell by cell (a cell is a budget, library and method;
the latest row of each is shown, among the rows of the same settings); ``--rerun
simfer:nre`` trains chosen cells again and ``--fresh`` starts over.  See benchmarks/README.md.

    .venv/bin/python benchmarks/gold_mining.py --quick        # 10^3, 10^4, fewer epochs
    .venv/bin/python benchmarks/gold_mining.py                # 10^3, 10^4, 10^5
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import simfer  # noqa: E402
from benchmarks._common import (  # noqa: E402
    JsonLines,
    NullTracker,
    fmt,
    run_header,
    run_meta,
    sitting,
    write_markdown,
)
from simulators import GaltonBoard  # noqa: E402

SIMFER_RATIO = ["carl", "rolr", "rascal", "alice", "alices", "cascal", "nre", "bnre"]
SBI_METHODS = ["NRE_A", "NRE_B", "NRE_C", "BNRE"]
MADMINER_METHODS = ["carl", "rolr", "rascal", "alice", "alices"]
TRAIN_SEED = 1
NAME, HEADING = "gold_mining", "Gold mining on the Galton board"


# -- the fixed evaluation set ------------------------------------------------------------
class Evaluation:
    """x ~ p(x|θ1 = 0) crossed with a θ0 grid, and the exact log r(x|θ0, 0) of every pair;
    a larger x sample at 0 with the exact score t(x|0) for SALLY."""

    def __init__(self, board: GaltonBoard, n_x: int, n_grid: int, n_score: int, seed: int):
        self.x = board.simulate(torch.zeros(n_x, 1), seed=seed)  # [n_x, 1]
        self.grid = torch.linspace(-0.9, 0.9, n_grid)
        x64 = self.x.double()
        zeros = torch.zeros(n_x, 1, dtype=torch.float64)
        self.exact = torch.stack(
            [
                board.log_likelihood_ratio(x64, torch.full((n_x, 1), float(t)).double(), zeros)
                for t in self.grid
            ]
        )  # [n_grid, n_x], float64
        self.trivial = float((self.exact**2).mean())
        self.x_score = board.simulate(torch.zeros(n_score, 1), seed=seed + 1)
        self.exact_score = board.likelihood_score(
            self.x_score.double(), torch.zeros(n_score, 1, dtype=torch.float64)
        )[:, 0]
        self.exact_fisher = float((self.exact_score**2).mean())

    def mse(self, estimate) -> float:
        """MSE of an estimate ``[n_grid, n_x]`` (tensor or array) against the exact log r."""
        estimate = torch.as_tensor(np.asarray(estimate, dtype=np.float64))
        if estimate.shape != self.exact.shape:
            raise ValueError(f"estimate has shape {tuple(estimate.shape)}, not {self.exact.shape}")
        if not torch.isfinite(estimate).all():
            return math.inf
        return float(((estimate - self.exact) ** 2).mean())

    def score_metrics(self, estimate) -> dict:
        t = torch.as_tensor(np.asarray(estimate, dtype=np.float64)).reshape(-1)
        return {
            "score_mse": float(((t - self.exact_score) ** 2).mean()),
            "fisher": float((t**2).mean()),
            "fisher_exact": self.exact_fisher,
        }


# -- the three libraries -------------------------------------------------------------------
def run_simfer_ratio(method, data, evaluation, settings, seed, label=None):
    torch.manual_seed(seed)
    start = time.perf_counter()
    estimator = simfer.RatioEstimator(method, seed=seed, progress=False, **settings).fit(data)
    seconds = time.perf_counter() - start
    x, zeros = evaluation.x, torch.zeros(1)  # θ1 = 0: NRE chains through p(x)
    estimate = torch.stack(
        [
            estimator.log_ratio(x=x, theta=torch.full((len(x), 1), float(t)), reference=zeros)
            for t in evaluation.grid
        ]
    )
    history = estimator.history
    return {
        "library": "simfer",
        "method": label or method,
        "mse": evaluation.mse(estimate.double()),
        "seconds": seconds,
        "epochs": len(history.train_loss),
        "best_epoch": history.best_epoch[0] + 1,
        "alpha": getattr(estimator, "alpha_used", None),
    }


def run_simfer_sally(data, evaluation, settings, seed):
    torch.manual_seed(seed)
    start = time.perf_counter()
    estimator = simfer.ScoreEstimator("sally", seed=seed, progress=False, **settings).fit(data)
    seconds = time.perf_counter() - start
    history = estimator.history
    return {
        "library": "simfer",
        "method": "sally",
        **evaluation.score_metrics(estimator.score(x=evaluation.x_score)[:, 0].double()),
        "seconds": seconds,
        "epochs": len(history.train_loss),
        "best_epoch": history.best_epoch[0] + 1,
    }


def sbi_pairs(data):
    """Every simulator call as the (θ, x) pair an sbi user has: θ is the point x was drawn
    at (θ0 ~ prior for the θ0 rows, θ_ref = 0 for the reference rows)."""
    return data.theta_simulated.clone(), data.x.clone()


def run_sbi(method, theta, x, prior, evaluation, settings, seed):
    import sbi.inference

    torch.manual_seed(seed)  # sbi's split, atoms and initialisation draw from torch
    trainer = getattr(sbi.inference, method)(
        prior=prior, show_progress_bars=False, tracker=NullTracker()
    )
    start = time.perf_counter()
    network = trainer.append_simulations(theta, x).train(**settings)
    seconds = time.perf_counter() - start
    network.eval()
    # sbi's network is log p(x|θ)/p(x) up to a function of x (exactly so for NRE-A/C and
    # BNRE, up to c(x) for NRE-B); the difference at θ0 and θ1 = 0 cancels it.
    xs = evaluation.x
    with torch.no_grad():
        at_zero = network(torch.zeros(len(xs), 1), xs)
        estimate = torch.stack(
            [network(torch.full((len(xs), 1), float(t)), xs) - at_zero for t in evaluation.grid]
        )
    summary = trainer.summary
    return {
        "library": "sbi",
        "method": method,
        "mse": evaluation.mse(estimate.double()),
        "seconds": seconds,
        "epochs": int(summary["epochs_trained"][-1]),
        "best_epoch": None,
    }


def madminer_arrays(data):
    """MadMiner's conventions (madminer.ml.ParameterizedRatioEstimator.train and
    madminer.utils.ml.losses): y = 0 for x drawn at the numerator θ0, y = 1 for x drawn at
    the denominator θ1; ``theta`` is θ0 on every row; r_xz = p(x,z|θ0)/p(x,z|θ1); t_xz is
    the joint score at θ0 (used on the y = 0 rows only).  y and r_xz are columns [n, 1]
    as its own sampling writes them: with [n] they broadcast against the [n, 1] network
    output inside its MSELoss/BCELoss."""
    return {
        "x": data.x.numpy().astype(np.float64),
        "y": data.from_reference.numpy().astype(np.float64)[:, None],
        "theta": data.theta.numpy().astype(np.float64),
        "r_xz": np.exp(data.joint_log_ratio.numpy().astype(np.float64))[:, None],
        "t_xz": data.joint_score.numpy().astype(np.float64),
    }


def run_madminer(method, arrays, evaluation, settings, seed):
    from madminer.ml import ParameterizedRatioEstimator

    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 -- its validation split uses the global np.random
    estimator = ParameterizedRatioEstimator()
    start = time.perf_counter()
    losses_train, _ = estimator.train(method, verbose="none", **arrays, **settings)
    seconds = time.perf_counter() - start
    log_r, _ = estimator.evaluate_log_likelihood_ratio(
        x=evaluation.x.numpy().astype(np.float64),
        theta=evaluation.grid.numpy().astype(np.float64)[:, None],
        test_all_combinations=True,
    )  # [n_grid, n_x]
    return {
        "library": "madminer",
        "method": method,
        "mse": evaluation.mse(log_r),
        "seconds": seconds,
        "epochs": len(losses_train),
        "best_epoch": None,
    }


def run_madminer_sally(data, evaluation, settings, seed):
    from madminer.ml import ScoreEstimator

    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 -- its validation split uses the global np.random
    local = data.subset(data.from_reference)
    estimator = ScoreEstimator()
    start = time.perf_counter()
    losses_train, _ = estimator.train(
        "sally",
        x=local.x.numpy().astype(np.float64),
        t_xz=local.joint_score_ref.numpy().astype(np.float64),
        verbose="none",
        **settings,
    )
    seconds = time.perf_counter() - start
    t_hat = estimator.evaluate_score(evaluation.x_score.numpy().astype(np.float64))
    return {
        "library": "madminer",
        "method": "sally",
        **evaluation.score_metrics(np.asarray(t_hat)[:, 0]),
        "seconds": seconds,
        "epochs": len(losses_train),
        "best_epoch": None,
    }


# -- the markdown table ----------------------------------------------------------------------
ROW_ORDER = (
    [("simfer", m) for m in SIMFER_RATIO]
    + [("simfer", "nre (all n calls)")]
    + [("sbi", m) for m in SBI_METHODS]
    + [("madminer", m) for m in MADMINER_METHODS]
)
LIBRARY_NAME = {"simfer": "simfer", "sbi": "sbi 0.27.0", "madminer": "MadMiner 0.9.6"}


def _cell(result) -> str:
    if result is None:
        return "not run"
    if "error" in result:
        return "failed"
    return f"{fmt(result['mse'])} ({result['seconds']:.0f} s, {result['epochs']} ep)"


def render(results: list[dict], budgets: list[int], meta: dict) -> str:
    def find(library, method, budget):  # the latest row of the cell
        for r in reversed(results):
            if (r["library"], r["method"], r["budget"]) == (library, method, budget):
                return r
        return None

    head = "| method | " + " | ".join(f"n = {b:,}" for b in budgets) + " |"
    rule = "| --- |" + " --- |" * len(budgets)
    lines = [
        *run_header(meta),
        "",
        "MSE of log r̂(x|θ0, θ1 = 0) against the exact log r over "
        f"{meta['n_eval_x']} x drawn at θ1 = 0 × {meta['n_grid']} θ0 in [−0.9, 0.9] "
        "(lower is better); in brackets the training wall time and the epochs run.",
        "",
        head,
        rule,
    ]
    for library, method in ROW_ORDER:
        if not any(find(library, method, b) for b in budgets):
            continue
        cells = [_cell(find(library, method, b)) for b in budgets]
        lines.append(f"| {LIBRARY_NAME[library]} {method} | " + " | ".join(cells) + " |")
    trivial = [
        fmt(next((r["trivial"] for r in results if r["budget"] == b and "trivial" in r), None))
        for b in budgets
    ]
    lines.append("| trivial log r̂ = 0 | " + " | ".join(trivial) + " |")

    lines += [
        "",
        f"SALLY: MSE of t̂(x) against the exact score t(x|0) over {meta['n_score']} x drawn "
        "at θ = 0, and the learned Fisher information E[t̂²] against the exact E[t²] "
        f"= {fmt(meta['fisher_exact'])} (the trivial t̂ = 0 has MSE = exact Fisher).",
        "",
        head,
        rule,
    ]
    for library in ("simfer", "madminer"):
        cells = []
        for b in budgets:
            r = find(library, "sally", b)
            if r is None or "error" in r:
                cells.append(_cell(r))
            else:
                cells.append(
                    f"{fmt(r['score_mse'])}, I = {r['fisher']:.3g} "
                    f"({r['seconds']:.0f} s, {r['epochs']} ep)"
                )
        if any(c != "not run" for c in cells):
            lines.append(f"| {LIBRARY_NAME[library]} sally | " + " | ".join(cells) + " |")

    def ratio_cell(numerator, denominator, budget):
        a, b = numerator(budget), denominator(budget)
        if a is None or b is None or "mse" not in a or "mse" not in b:
            return "—"
        label = f" ({b['library']} {b['method']})" if b.get("show") else ""
        if b["mse"] == 0:
            return "—"
        return f"{a['mse'] / b['mse']:.2g}{label}"

    def simfer_row(method):
        return lambda b: find("simfer", method, b)

    def madminer_row(method):
        return lambda b: find("madminer", method, b)

    def best_sbi(budget):
        candidates = [find("sbi", m, budget) for m in SBI_METHODS]
        candidates = [c for c in candidates if c is not None and "mse" in c]
        if not candidates:
            return None
        return {**min(candidates, key=lambda c: c["mse"]), "show": True}

    comparisons = [
        ("simfer alices / best sbi NRE", simfer_row("alices"), best_sbi),
        ("simfer rascal / best sbi NRE", simfer_row("rascal"), best_sbi),
        ("simfer alices / simfer carl", simfer_row("alices"), simfer_row("carl")),
        ("simfer carl / MadMiner carl", simfer_row("carl"), madminer_row("carl")),
        ("simfer alices / MadMiner alices", simfer_row("alices"), madminer_row("alices")),
        ("simfer alice / MadMiner alice", simfer_row("alice"), madminer_row("alice")),
        ("simfer rascal / MadMiner rascal", simfer_row("rascal"), madminer_row("rascal")),
        ("simfer nre / sbi NRE_A", simfer_row("nre"), lambda b: find("sbi", "NRE_A", b)),
    ]
    lines += [
        "",
        "Ratios of MSEs at equal budget (< 1: the first is better):",
        "",
        "| comparison | " + " | ".join(f"n = {b:,}" for b in budgets) + " |",
        rule,
    ]
    for name, numerator, denominator in comparisons:
        cells = [ratio_cell(numerator, denominator, b) for b in budgets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- driver ----------------------------------------------------------------------------------
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", type=int, nargs="+", help="simulator calls per run")
    parser.add_argument("--quick", action="store_true", help="10^3 and 10^4, fewer epochs")
    parser.add_argument("--max-epochs", type=int, help="simfer max_epochs (default 100)")
    parser.add_argument("--sbi-max-epochs", type=int, help="cap sbi's max_num_epochs")
    parser.add_argument("--madminer-epochs", type=int, help="MadMiner n_epochs (default 50)")
    parser.add_argument("--skip", nargs="*", default=[], help="'sbi', 'madminer' or methods")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-eval-x", type=int, default=1000)
    parser.add_argument("--n-grid", type=int, default=19)
    parser.add_argument("--n-score", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--jsonl", default=str(ROOT / "benchmarks/results/gold_mining.jsonl"))
    parser.add_argument(
        "--rerun", nargs="*", default=[], help="cells to train again: 'library:method'"
    )
    parser.add_argument("--fresh", action="store_true", help="discard the earlier results")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    logging.getLogger("madminer").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    budgets = args.budgets or ([1_000, 10_000] if args.quick else [1_000, 10_000, 100_000])
    budgets = sorted(budgets)
    simfer_settings = {"max_epochs": args.max_epochs or (30 if args.quick else 100)}
    sbi_settings = {}
    if args.sbi_max_epochs or args.quick:
        sbi_settings["max_num_epochs"] = args.sbi_max_epochs or 100
    madminer_settings = {
        "n_epochs": args.madminer_epochs or (20 if args.quick else 50),
        # DataLoader worker processes: MadMiner's default of 8 forks 8 processes every
        # epoch on a 2-core machine; 0 loads batches in-process.  Numerically identical.
        "n_workers": 0,
    }
    skip = set(args.skip)

    board = GaltonBoard(n_rows=16)
    prior = board.prior()
    evaluation = Evaluation(board, args.n_eval_x, args.n_grid, args.n_score, seed=10_000)
    meta = {
        **run_meta("gold_mining.py", argv, args.threads, "sbi", "madminer"),
        "n_eval_x": args.n_eval_x,
        "n_grid": args.n_grid,
        "n_score": args.n_score,
        "fisher_exact": evaluation.exact_fisher,
        "settings": {
            "simfer": simfer_settings,
            "sbi": sbi_settings,
            "madminer": madminer_settings,
        },
        "status": " (running)",
        "wall_minutes": 0.0,
    }
    print(f"settings: {json.dumps(meta['settings'])}", flush=True)
    print(f"trivial MSE (log r̂ = 0): {evaluation.trivial:.4g}", flush=True)
    print(f"exact Fisher information at 0: {evaluation.exact_fisher:.4g}", flush=True)
    log = JsonLines(args.jsonl)
    if args.fresh and log.path.exists():
        log.path.unlink()
    # rows of a run with other settings (--quick, another seed …) are not this run's cells
    setup = {
        "settings": meta["settings"],
        **{k: getattr(args, k) for k in ("seed", "n_eval_x", "n_grid", "n_score")},
    }
    results: list[dict] = [r for r in log.rows() if r.get("setup") == setup]
    rerun = set(args.rerun)
    done = {
        (r["budget"], r["library"], r["method"])
        for r in results
        if "error" not in r and f"{r['library']}:{r['method']}" not in rerun
    }
    meta["status"] = sitting(len(done)) + meta["status"]
    markdown = Path(args.markdown)
    t0 = time.perf_counter()

    def record(result, budget):
        result = {"budget": budget, **result}
        results.append(result)
        log.append({**result, "setup": setup})
        shown = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in result.items()}
        print(json.dumps(shown), flush=True)
        meta["wall_minutes"] = (time.perf_counter() - t0) / 60
        write_markdown(markdown, render(results, budgets, meta), NAME, HEADING)

    def attempt(library, method, budget, function):
        if library in skip or method in skip or f"{library}:{method}" in skip:
            return
        if (budget, library, method) in done:
            return
        try:
            record(function(), budget)
        except Exception as error:  # a peer that fails is reported, never faked
            message = f"{type(error).__name__}: {error}"
            print(f"{library} {method} at n={budget} failed: {message}", flush=True)
            record({"library": library, "method": method, "error": message}, budget)

    for budget in budgets:
        seed = args.seed + budget
        data = simfer.simulate(
            board,
            prior,
            budget,
            gold=True,
            theta_ref=[0.0],
            seed=seed,
            executor="serial",
            progress=False,
        )
        assert data.n_invalid == 0
        if (budget, "reference", "trivial") not in done:
            trivial = {"library": "reference", "method": "trivial", "trivial": evaluation.trivial}
            record(trivial, budget)
        theta_sbi, x_sbi = sbi_pairs(data)
        arrays = madminer_arrays(data)
        # headline comparisons first, so a run cut short still has them
        order = [
            ("simfer", "carl"),
            ("simfer", "alices"),
            ("sbi", "NRE_A"),
            ("sbi", "NRE_C"),
            ("madminer", "carl"),
            ("madminer", "alices"),
            ("simfer", "rascal"),
            ("simfer", "alice"),
            ("simfer", "sally"),
            ("simfer", "rolr"),
            ("simfer", "cascal"),
            ("simfer", "nre"),
            ("simfer", "bnre"),
            ("simfer", "nre (all n calls)"),
            ("sbi", "NRE_B"),
            ("sbi", "BNRE"),
            ("madminer", "alice"),
            ("madminer", "rascal"),
            ("madminer", "rolr"),
            ("madminer", "sally"),
        ]
        # simfer's nre drops the reference rows (a reference row's θ did not generate its
        # x); "nre (all n calls)" gets every call as a (θ, x) pair, the data sbi gets
        runs = {
            ("simfer", "sally"): functools.partial(
                run_simfer_sally, data, evaluation, simfer_settings, TRAIN_SEED
            ),
            ("simfer", "nre (all n calls)"): functools.partial(
                run_simfer_ratio,
                "nre",
                simfer.SimulationData(theta=theta_sbi, x=x_sbi),
                evaluation,
                simfer_settings,
                TRAIN_SEED,
                "nre (all n calls)",
            ),
            ("madminer", "sally"): functools.partial(
                run_madminer_sally, data, evaluation, madminer_settings, TRAIN_SEED
            ),
        }
        for method in SIMFER_RATIO:
            runs["simfer", method] = functools.partial(
                run_simfer_ratio, method, data, evaluation, simfer_settings, TRAIN_SEED
            )
        for method in SBI_METHODS:
            runs["sbi", method] = functools.partial(
                run_sbi, method, theta_sbi, x_sbi, prior, evaluation, sbi_settings, TRAIN_SEED
            )
        for method in MADMINER_METHODS:
            runs["madminer", method] = functools.partial(
                run_madminer, method, arrays, evaluation, madminer_settings, TRAIN_SEED
            )
        for library, method in order:
            attempt(library, method, budget, runs[library, method])
    meta["status"] = sitting(len(done))
    meta["wall_minutes"] = (time.perf_counter() - t0) / 60
    table = render(results, budgets, meta)
    write_markdown(markdown, table, NAME, HEADING)
    print()
    print(table)


if __name__ == "__main__":
    main()
