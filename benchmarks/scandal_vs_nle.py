r"""SCANDAL against NLE at equal budget: does the gold (the joint score) help?

For each simulator with an exact likelihood and gold (GaltonBoard with 16 rows: the gold
is the joint score along the latent path of the ball; WeinbergAngle with one event per
experiment at √s = M_Z: no latent, so the gold is the exact score) and each budget n,
one set of simulations ``simfer.simulate(sim, prior, n, gold=True, seed=n)`` trains

    LikelihoodEstimator("nle")       −E log q(x|θ)
    LikelihoodEstimator("scandal")   −E log q(x|θ) + α E|∇θ log q(x|θ) − t(x,z|θ)|²

with the same flow, epochs, batches and seed (α by simfer's default rule).  Both are
measured against the exact likelihood on a fixed evaluation set: x_ij ~ p(x|θ_i) for a
grid θ_i across the prior (inside its edges),

* KL = mean_i E_{x~p(x|θ_i)} [log p(x|θ_i) − log q(x|θ_i)], the mean Kullback–Leibler
  divergence from the true likelihood (≥ 0; 0 for q = p), estimated on the draws;
* score error = E|∇θ log q(x|θ) − ∇θ log p(x|θ)|² / E|∇θ log p(x|θ)|², the relative
  mean squared error of the likelihood's score (0 for q = p; 1 for the trivial q
  independent of θ), which is what a posterior or a likelihood-ratio limit uses.

Rows go to a JSON-lines file and the table in docs/benchmarks.md (``scandal_vs_nle``
markers) is rewritten after every training.

    .venv/bin/python benchmarks/scandal_vs_nle.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import simfer  # noqa: E402
from benchmarks._common import (  # noqa: E402
    JsonLines,
    cell_text,
    run_header,
    run_meta,
    write_markdown,
)
from simulators import GaltonBoard, WeinbergAngle  # noqa: E402

SIMULATORS = {
    "galton": lambda: GaltonBoard(n_rows=16),
    "weinberg": lambda: WeinbergAngle(n_events=1),
}
LABEL = {"galton": "GaltonBoard (16 rows)", "weinberg": "WeinbergAngle (1 event, √s = M_Z)"}
MAX_EPOCHS = {1_000: 100, 10_000: 30}
TRAIN_SEED = 1
NAME, HEADING = "scandal_vs_nle", "SCANDAL against NLE (gold or no gold)"


class Evaluation:
    """x_ij ~ p(x|θ_i) on a θ grid inside the prior, with the exact log p and score."""

    def __init__(self, simulator, n_grid: int, n_x: int, seed: int):
        prior = simulator.prior()
        low, high = prior.low, prior.high
        margin = 0.05 * (high - low)
        grid = torch.linspace(0, 1, n_grid)[:, None] * (high - low - 2 * margin) + low + margin
        self.theta = grid.repeat_interleave(n_x, 0)  # [n_grid * n_x, d]
        self.x = simulator.simulate(self.theta, seed=seed)
        theta64, x64 = self.theta.double(), self.x.double()
        self.log_p = simulator.log_likelihood(x64, theta64)
        self.score = simulator.likelihood_score(x64, theta64)
        self.fisher = float((self.score**2).sum(-1).mean())

    def metrics(self, estimator) -> dict:
        chunks = list(zip(self.x.split(4096), self.theta.split(4096), strict=True))
        log_q = torch.cat([estimator.log_prob(x=x, theta=t) for x, t in chunks]).double()
        score = torch.cat([estimator.score(x=x, theta=t) for x, t in chunks]).double()
        return {
            "kl": float((self.log_p - log_q).mean()),
            "score_error": float(((score - self.score) ** 2).sum(-1).mean()) / self.fisher,
        }


def render(rows: list[dict], meta: dict) -> str:
    budgets = sorted({r["budget"] for r in rows})
    sims = [s for s in SIMULATORS if any(r["simulator"] == s for r in rows)]

    def find(sim, budget, method):
        for r in reversed(rows):
            if (r["simulator"], r["budget"], r["method"]) == (sim, budget, method):
                return r
        return None

    head = "| simulator | method | " + " | ".join(f"n = {b:,}" for b in budgets) + " |"
    lines = [
        *run_header(meta),
        "",
        f"Mean KL(p(x|θ) ‖ q(x|θ)) in nats and relative score error "
        f"E|t̂ − t|²/E|t|² over {meta['n_grid']} θ × {meta['n_x']} x ~ p(x|θ) (lower is "
        "better), training wall time and epochs run (cap: "
        + ", ".join(f"{meta['max_epochs'][b]} at n = {b:,}" for b in budgets)
        + ").",
        "",
        head,
        "| --- | --- |" + " --- |" * len(budgets),
    ]
    for sim in sims:
        for method in ("nle", "scandal"):
            cells = [
                cell_text(
                    find(sim, b, method),
                    lambda r: (
                        f"KL {r['kl']:.3g}, score {r['score_error']:.3g} "
                        f"({r['seconds']:.0f} s, {r['epochs']} ep)"
                    ),
                )
                for b in budgets
            ]
            lines.append(f"| {LABEL[sim]} | {method} | " + " | ".join(cells) + " |")
        cells = []
        for b in budgets:
            a, c = find(sim, b, "scandal"), find(sim, b, "nle")
            if a is None or c is None or "error" in a or "error" in c:
                cells.append("—")
            else:
                cells.append(
                    f"KL {a['kl'] / c['kl']:.2g}, score {a['score_error'] / c['score_error']:.2g}"
                )
        lines.append(f"| {LABEL[sim]} | SCANDAL / NLE | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--simulators", nargs="+", choices=list(SIMULATORS))
    parser.add_argument("--budgets", type=int, nargs="+", help="default 1000 10000")
    parser.add_argument("--max-epochs", type=int, help="one cap for every budget")
    parser.add_argument("--n-grid", type=int, default=21)
    parser.add_argument("--n-x", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument(
        "--jsonl", default=str(ROOT / "benchmarks" / "results" / "scandal_vs_nle.jsonl")
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    budgets = sorted(args.budgets or MAX_EPOCHS)
    log = JsonLines(args.jsonl)
    if log.path.exists():
        log.path.unlink()
    meta = {
        **run_meta("scandal_vs_nle.py", argv, args.threads, "nflows"),
        "n_grid": args.n_grid,
        "n_x": args.n_x,
        "max_epochs": {b: args.max_epochs or MAX_EPOCHS.get(b, 30) for b in budgets},
        "status": " (running)",
        "wall_minutes": 0.0,
    }
    rows: list[dict] = []
    t0 = time.perf_counter()
    for name in args.simulators or list(SIMULATORS):
        simulator = SIMULATORS[name]()
        prior = simulator.prior()
        evaluation = Evaluation(simulator, args.n_grid, args.n_x, seed=10_000)
        # an untimed fit first, so neither method's time includes first-call costs
        warm = simfer.simulate(
            simulator, prior, 200, gold=True, seed=0, executor="serial", progress=False
        )
        simfer.LikelihoodEstimator("scandal", max_epochs=1, progress=False).fit(warm, prior)
        for budget in budgets:
            data = simfer.simulate(
                simulator, prior, budget, gold=True, seed=budget, executor="serial", progress=False
            )
            epochs = meta["max_epochs"][budget]
            for method in ("nle", "scandal"):
                row = {"simulator": name, "budget": budget, "method": method}
                try:
                    start = time.perf_counter()
                    estimator = simfer.LikelihoodEstimator(
                        method, max_epochs=epochs, seed=TRAIN_SEED, progress=False
                    ).fit(data, prior)
                    row.update(
                        seconds=time.perf_counter() - start,
                        epochs=len(estimator.history.train_loss),
                        alpha=estimator.alpha_used,
                        **evaluation.metrics(estimator),
                    )
                except Exception as error:  # reported, never faked
                    row["error"] = f"{type(error).__name__}: {error}"
                rows.append(row)
                log.append(row)
                print(json.dumps(row), flush=True)
                meta["wall_minutes"] = (time.perf_counter() - t0) / 60
                write_markdown(Path(args.markdown), render(rows, meta), NAME, HEADING)
    meta["status"] = ""
    meta["wall_minutes"] = (time.perf_counter() - t0) / 60
    table = render(rows, meta)
    write_markdown(Path(args.markdown), table, NAME, HEADING)
    print(table)


if __name__ == "__main__":
    main()
