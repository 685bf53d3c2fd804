"""Set embeddings on toy jets: what an equivariant summary buys, and what it costs.

One script, one run, the same simulations for every embedding.  For each budget n it
simulates `simulators.ToyJets` (θ = λ ~ U(2, 6); x a set of 2–25 final-state 4-momenta)

* for NPE: n jets at θ ~ prior;
* for ALICES: n jets with gold, half drawn at θ ~ prior and half at θ_ref = 4,

and trains the same estimator (`PosteriorEstimator`, `RatioEstimator("alices")`, same flow or
ratio network, same training settings and seed) with four summaries of x:

* ``mlp``: no embedding; each jet's particles sorted by decreasing pT = √(px² + py²), padded
  with zeros to 32 particles and flattened to 128 numbers (standardised like any vector x);
* ``deepsets``: `simfer.nn.DeepSets` on (E, px, py, pz)/100;
* ``egnn``: `simfer.nn.EGNN` with positions (px, py, pz)/100 and E/100 as a scalar feature;
* ``lorentznet``: `simfer.nn.LorentzNet` on the raw float64 (E, px, py, pz).

The set embeddings have hidden width 16, 2 layers, 8 outputs and ``pooling="mean+sum"`` (the
sum carries the number of particles, the most telling feature of these jets).

Metrics (no exact likelihood exists for ToyJets, so both are proper scores on held-out
simulations, lower is better, comparable across embeddings on the same test set):

* NPE: the expected negative log posterior density −E log q(θ|x) over 2000 fresh (θ, x)
  pairs; the prior alone scores log 4 = 1.386;
* ALICES: the held-out ALICE cross-entropy, −E[s log ŝ + (1 − s) log(1 − ŝ)] with the gold
  soft label s = 1/(1 + r(x,z|θ, θ_ref)) and ŝ = 1/(1 + r̂(x|θ, θ_ref)), over 2000 fresh
  rows (half at θ_ref); minimised by the true ratio, whatever the noise of the gold.
  r̂ = 1 scores the value given in the table's last row.

Robustness: every model is evaluated again on the same test jets boosted along the jet axis
(x) with rapidity 2 (energies grow about 3.8×).  An invariant summary gives the same score.

Results are printed, appended to a JSON-lines file, and the table in docs/benchmarks.md
(between the set-embeddings markers) is rewritten after every training, so an interrupted
run still leaves its numbers.

    .venv/bin/python benchmarks/set_embeddings.py                     # n = 10^3
    .venv/bin/python benchmarks/set_embeddings.py --budgets 1000 10000
    .venv/bin/python benchmarks/set_embeddings.py --quick             # smoke test, no docs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import simfer  # noqa: E402
from benchmarks._common import write_markdown  # noqa: E402
from simfer import losses  # noqa: E402
from simfer.data import RaggedSets, SimulationData  # noqa: E402
from simfer.nn import EGNN, DeepSets, LorentzNet, count_parameters  # noqa: E402
from simfer.seeding import seeded  # noqa: E402
from simulators import ToyJets  # noqa: E402

EMBEDDINGS = ["mlp", "deepsets", "egnn", "lorentznet"]
METHODS = ["npe", "alices"]
THETA_REF = 4.0
RAPIDITY = 2.0
MAX_PARTICLES = 32  # the MLP's fixed input: 32 particles × 4
SCALE = 100.0  # DeepSets and EGNN see momenta in units of 100
N_TEST = 2000


# -- inputs ------------------------------------------------------------------------------------
def boost_along_x(sets: RaggedSets, rapidity: float) -> RaggedSets:
    """Every 4-momentum boosted along x (the jet axis): E' = E ch + px sh, px' = px ch + E sh."""
    ch, sh = math.cosh(rapidity), math.sinh(rapidity)
    v = sets.values
    boosted = torch.stack([v[:, 0] * ch + v[:, 1] * sh, v[:, 1] * ch + v[:, 0] * sh], 1)
    return RaggedSets(torch.cat([boosted, v[:, 2:]], 1), sets.offsets)


def pt_sorted_flat(sets: RaggedSets) -> tuple[Tensor, int]:
    """``[n, MAX_PARTICLES·4]`` float32: each jet's particles by decreasing pT, zero-padded,
    flattened; and how many jets had more particles than fit (their softest are dropped)."""
    pt = sets.values[:, 1:3].norm(dim=1)
    rows = sets.row_ids()
    order = torch.argsort(-pt, stable=True)
    order = order[torch.argsort(rows[order], stable=True)]  # by jet, hardest first
    x, _ = RaggedSets(sets.values[order], sets.offsets).padded()
    truncated = int((sets.sizes > MAX_PARTICLES).sum())
    x = torch.nn.functional.pad(x[:, :MAX_PARTICLES], (0, 0, 0, max(0, MAX_PARTICLES - x.shape[1])))
    return x.flatten(1).float(), truncated


def as_input(name: str, sets: RaggedSets) -> Tensor | RaggedSets:
    return pt_sorted_flat(sets)[0] if name == "mlp" else sets


class Rescaled(nn.Module):
    """``inner(x[..., order] / scale, mask)``: fixed units and feature order for an embedding
    that, unlike LorentzNet, has no built-in normalisation."""

    def __init__(self, inner: nn.Module, order: list[int]):
        super().__init__()
        self.inner = inner
        self.register_buffer("order", torch.tensor(order))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.inner(x[..., self.order].float() / SCALE, mask)


def make_embedding(name: str) -> nn.Module | None:
    options = dict(hidden=16, n_layers=2, pooling="mean+sum")
    with seeded(0):
        if name == "deepsets":
            return Rescaled(DeepSets(4, 8, **options), [0, 1, 2, 3])
        if name == "egnn":
            return Rescaled(EGNN(4, 8, coord_dim=3, **options), [1, 2, 3, 0])
        if name == "lorentznet":
            return LorentzNet(4, 8, **options)
    return None


def with_x(data: SimulationData, x: Tensor | RaggedSets) -> SimulationData:
    return SimulationData(**{**data.columns(), "x": x})


# -- metrics -----------------------------------------------------------------------------------
def npe_score(npe, theta: Tensor, x: Tensor | RaggedSets, batch: int = 500) -> float:
    """−E log q(θ|x) over the rows (θ_i, x_i)."""
    total = 0.0
    for start in range(0, len(theta), batch):
        rows = slice(start, start + batch)
        total += float(npe.log_prob(theta=theta[rows], x=x[rows]).double().sum())
    return -total / len(theta)


def alice_score(log_r: Tensor, joint_log_ratio: Tensor) -> float:
    """The ALICE cross-entropy of log r̂ against the gold soft labels (simfer.losses.alice)."""
    return float(losses.alice(log_r.double(), joint_log_ratio.double()))


def ratio_score(ratio, test: SimulationData, x, batch: int = 500) -> float:
    """The ALICE cross-entropy of log r̂(x|θ, θ_ref) against each row's gold (its θ_ref)."""
    rows = [slice(start, start + batch) for start in range(0, len(test), batch)]
    log_r = torch.cat(
        [
            ratio.log_ratio(x=x[row], theta=test.theta[row], reference=test.theta_ref[row])
            for row in rows
        ]
    )
    return alice_score(log_r, test.joint_log_ratio)


# -- one training ------------------------------------------------------------------------------
def train_and_score(method, name, train, test, settings) -> dict:
    embedding = make_embedding(name)
    x_train = as_input(name, train.x)
    data = with_x(train, x_train)
    start = time.perf_counter()
    if method == "npe":
        estimator = simfer.PosteriorEstimator(
            embedding=embedding, hidden=32, n_transforms=2, **settings
        ).fit(data, ToyJets().prior())
    else:
        estimator = simfer.RatioEstimator(
            "alices", embedding=embedding, hidden=(64, 64), **settings
        ).fit(data)
    seconds = time.perf_counter() - start
    scores = {}
    for label, sets in (("plain", test.x), ("boosted", boost_along_x(test.x, RAPIDITY))):
        x = as_input(name, sets)
        if method == "npe":
            scores[label] = npe_score(estimator, test.theta, x)
        else:
            scores[label] = ratio_score(estimator, test, x)
    return {
        "method": method,
        "embedding": name,
        "score": scores["plain"],
        "score_boosted": scores["boosted"],
        "parameters": count_parameters(estimator.network),
        "embedding_parameters": 0 if embedding is None else count_parameters(embedding),
        "seconds": seconds,
        "epochs": len(estimator.history.train_loss),
    }


# -- the table ---------------------------------------------------------------------------------
def render(results: list[dict], budgets: list[int], meta: dict) -> str:
    def find(method, name, budget):
        return next(
            (
                r
                for r in results
                if r["method"] == method and r["embedding"] == name and r["n"] == budget
            ),
            None,
        )

    missing = [f"{b:,}" for b in (1000, 10_000, 100_000) if b not in budgets]
    not_run = f" Not run: n = {', '.join(missing)} ({meta['why_not']})." if missing else ""
    lines = [
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; machine: {meta['machine']}; total wall time "
        f"{meta['minutes']:.1f} min.{not_run}",
        "",
        f"Held-out proper scores on {meta['n_test']} fresh jets (lower is better): NPE "
        "−E log q(θ|x), ALICES the ALICE cross-entropy against the gold soft labels.  "
        "*boosted*: the same test jets boosted along the jet axis with rapidity 2.  "
        "Parameters: whole network (embedding in brackets).  Time: training wall time and "
        "epochs run.",
        "",
        "| method | summary | " + " | ".join(f"n = {b:,}" for b in budgets) + " | boosted "
        "(largest n) | parameters | time |",
        "| --- | --- | " + " | ".join("---" for _ in budgets) + " | --- | --- | --- |",
    ]
    for method in METHODS:
        for name in EMBEDDINGS:
            cells = [find(method, name, b) for b in budgets]
            last = next((c for c in reversed(cells) if c is not None), None)
            if last is None:
                continue
            scores = [f"{c['score']:.4f}" if c else "–" for c in cells]
            lines.append(
                f"| {method.upper()} | {name} | {' | '.join(scores)} | "
                f"{last['score_boosted']:.4f} | {last['parameters']:,} "
                f"({last['embedding_parameters']:,}) | {last['seconds']:.0f} s, "
                f"{last['epochs']} ep. |"
            )
    for method, label in (("npe", "prior only"), ("alices", "r̂ = 1")):
        value = f"{meta['references'][method]:.4f}"
        same = " | ".join(value for _ in budgets)
        lines.append(f"| {method.upper()} | {label} (no training) | {same} | {value} | 0 | – |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[1000])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--embeddings", nargs="+", default=EMBEDDINGS, choices=EMBEDDINGS)
    parser.add_argument("--max-epochs", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="2 epochs, 300 test jets, no docs")
    parser.add_argument(
        "--why-not",
        default="time: this machine's 2 CPU cores are shared, and one message-passing "
        "training at 10^4 takes longer than this session could spend",
        help="the reason printed for the budgets of 10^3, 10^4, 10^5 that were not run",
    )
    parser.add_argument("--out", default="/tmp/set_embeddings_results.jsonl")
    parser.add_argument("--docs", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n_test = 300 if args.quick else N_TEST
    settings = dict(
        max_epochs=2 if args.quick else args.max_epochs,
        patience=8,
        batch_size=128,
        seed=1,
        progress=False,
    )
    jets = ToyJets()
    prior = jets.prior()
    run = dict(executor="serial", progress=False)
    test_npe = simfer.simulate(jets, prior, n_test, seed=1000, **run)
    test_ratio = simfer.simulate(
        jets, prior, n_test, gold=True, theta_ref=[THETA_REF], seed=1001, **run
    )
    meta = {
        "command": " ".join(
            ["python", "benchmarks/set_embeddings.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()} CPU cores (shared with other jobs), no GPU, "
        f"{torch.get_num_threads()} torch threads; Python {platform.python_version()}, "
        f"torch {torch.__version__}",
        "why_not": args.why_not,
        "n_test": n_test,
        "references": {
            "npe": math.log(4.0),
            "alices": alice_score(torch.zeros(len(test_ratio)), test_ratio.joint_log_ratio),
        },
    }
    results: list[dict] = []
    started = time.perf_counter()
    out = Path(args.out)
    for budget in args.budgets:
        train = {
            "npe": simfer.simulate(jets, prior, budget, seed=budget, **run),
            "alices": simfer.simulate(
                jets, prior, budget, gold=True, theta_ref=[THETA_REF], seed=budget + 1, **run
            ),
        }
        tests = {"npe": test_npe, "alices": test_ratio}
        for method in args.methods:
            for name in args.embeddings:
                result = train_and_score(method, name, train[method], tests[method], settings)
                result["n"] = budget
                results.append(result)
                print(json.dumps(result), flush=True)
                with out.open("a") as file:
                    file.write(json.dumps({**result, "date": meta["date"]}) + "\n")
                meta["minutes"] = (time.perf_counter() - started) / 60
                table = render(results, args.budgets, meta)
                if not args.quick:
                    write_markdown(
                        Path(args.docs), table, "set_embeddings", "Set embeddings on toy jets"
                    )
    print(render(results, args.budgets, meta))


if __name__ == "__main__":
    main()
