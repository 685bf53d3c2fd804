r"""simfer's sequential inference (TSNPE, SNLE, SNRE) against sbi's, at equal budgets.

For every task (TwoMoons, GaussianLinear in 10-d) and seed s, the observation x_s is
drawn at θ_s ~ prior (fixed seeds, as in benchmarks/vs_sbi.py), and every method spends
the same total budget N on it:

* one round, N simulations from the prior: simfer's ``PosteriorEstimator`` (NPE),
  ``LikelihoodEstimator`` (NLE), ``RatioEstimator("nre")`` (NRE, the binary NRE-A), and
  sbi 0.27's ``NPE_C`` (first round: maximum likelihood), ``NLE_A`` and ``NRE_A``, all
  trained on the *same* simulations;
* R rounds of N/R simulations: ``simfer.sequential`` with the same three estimators (TSNPE
  with ε = 10⁻⁴; SNLE and SNRE with posterior proposals), and sbi's TSNPE (``NPE_C``
  trained with the first-round loss on all rounds, proposals ``RestrictedPrior`` of
  ``get_density_thresholder(posterior, quantile=1e-4)``, sampled by rejection), SNPE-C
  (APT's atomic loss, posterior proposals), SNLE (``NLE_A``) and SNRE (``NRE_A``) with
  posterior proposals.  Round 1 of every sequential run is the same simulations
  (``simfer.simulate(sim, prior, N/R, seed=simfer.sequential.round_seed(s, 0))``);
  later rounds differ, since each method proposes its own θ.

The same flow (5 spline transforms of 10 bins, 64 hidden units, tail bound 4), the same
classifier width (three hidden layers of 128 for simfer's NRE, sbi's residual classifier
of width 128 with two blocks), batch size 50, learning rate 10⁻³, gradient clipping at
5, 10 % validation, early stopping after 20 epochs and the same cap on epochs.  What
differs: sbi continues training the same network from round to round, simfer refits a
fresh one on all the simulations each round; MCMC for (S)NLE/(S)NRE is each library's own
slice sampler (simfer's ensemble slice with 100 chains, 100 warm-up sweeps; sbi's
``slice_np_vectorized`` with 100 chains, 100 warm-up steps, resampling initialisation).

Metric: C2ST (`simfer.diagnostics.c2st`, sbibm's recipe) between ``--n-c2st`` posterior
draws and as many reference draws: the analytic Gaussian for GaussianLinear, the exact
inversion sampler of benchmarks/vs_sbi.py for TwoMoons.  Wall time per cell covers
simulation, training and sampling.

Resumable: every finished cell (task, method, library, seed, budget, rounds) is one line of
benchmarks/results/sequential.jsonl; running the same command again skips it.  The table
is printed (markdown); docs/benchmarks.md is left alone.

    .venv/bin/python benchmarks/sequential.py --quick      # TwoMoons, 3 × 500, 1 seed
    .venv/bin/python benchmarks/sequential.py              # both tasks, 3 × 1000, 3 seeds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import simfer  # noqa: E402
from benchmarks._common import JsonLines, NullTracker, run_meta  # noqa: E402
from benchmarks.vs_sbi import observations, two_moons_reference  # noqa: E402
from simfer.diagnostics import c2st  # noqa: E402
from simfer.seeding import seeded  # noqa: E402
from simfer.sequential import round_seed  # noqa: E402
from simulators import GaussianLinear, TwoMoons  # noqa: E402

TASKS = {"two_moons": TwoMoons, "gaussian_linear": lambda: GaussianLinear(dim=10)}
TASK_LABEL = {"two_moons": "TwoMoons", "gaussian_linear": "GaussianLinear (10-d)"}
# (method, library, rounds > 1?): the one-round baselines and the sequential methods
METHODS = [
    ("NPE", False),
    ("TSNPE", True),
    ("SNPE-C", True),
    ("NLE", False),
    ("SNLE", True),
    ("NRE", False),
    ("SNRE", True),
]
LIBRARIES = ("simfer", "sbi")
SBI_ONLY = {"SNPE-C"}  # APT's atomic loss: simfer runs NPE only with truncated proposals
FLOW = {"hidden": 64, "n_transforms": 5, "bins": 10, "tail_bound": 4.0}
TRAINING = {"batch_size": 50, "learning_rate": 1e-3, "validation_fraction": 0.1, "patience": 20}
EPSILON = 1e-4
HPR_DRAWS = 100_000
MCMC = {"n_chains": 100, "warmup": 100}
OBSERVATION_SEED = 10_000


def reference(task: str, simulator, x_obs, n: int, seed: int) -> torch.Tensor:
    if task == "gaussian_linear":
        with seeded(seed):
            return simulator.posterior(x_obs).sample((n,)).float()
    return two_moons_reference(simulator, x_obs, n, torch.Generator().manual_seed(seed))


# -- simfer ------------------------------------------------------------------------------
def simfer_estimator(family: str, max_epochs: int):
    settings = {**TRAINING, "max_epochs": max_epochs, "seed": 1, "progress": False}
    if family == "NPE":
        return simfer.PosteriorEstimator("nsf", **FLOW, **settings)
    if family == "NLE":
        return simfer.LikelihoodEstimator("nle", "nsf", **FLOW, **settings)
    return simfer.RatioEstimator("nre", hidden=(128, 128, 128), **settings)


def run_simfer(method, simulator, prior, x_obs, sizes, seed, args) -> tuple[torch.Tensor, dict]:
    family = {"TSNPE": "NPE", "SNLE": "NLE", "SNRE": "NRE"}.get(method, method)
    result = simfer.sequential(
        simulator,
        prior,
        x_obs,
        simfer_estimator(family, args.max_epochs),
        rounds=len(sizes),
        n_per_round=sizes,
        truncation=EPSILON if family == "NPE" else None,
        hpr_draws=HPR_DRAWS if family == "NPE" else None,
        seed=seed,
        simulate_options={"executor": "serial", "progress": False},
        sample_options={"n_chains": MCMC["n_chains"], "warmup": MCMC["warmup"]},
        progress=False,
    )
    draws = result.posterior.sample(args.n_c2st, seed=seed, **_mcmc_if(family != "NPE"))
    info = {
        "epochs": [h.epochs for h in result.history],
        "prior_mass": [h.prior_mass for h in result.history],
    }
    return draws, info


def _mcmc_if(mcmc: bool) -> dict:
    return {"n_chains": MCMC["n_chains"], "warmup": MCMC["warmup"]} if mcmc else {}


# -- sbi ---------------------------------------------------------------------------------
def run_sbi(method, simulator, prior, x_obs, sizes, seed, args) -> tuple[torch.Tensor, dict]:
    from sbi.inference import NLE_A, NPE_C, NRE_A
    from sbi.neural_nets import classifier_nn, likelihood_nn, posterior_nn
    from sbi.utils import RestrictedPrior, get_density_thresholder

    family = {"TSNPE": "NPE", "SNPE-C": "NPE", "SNLE": "NLE", "SNRE": "NRE"}.get(method, method)
    flow = {
        "model": "nsf",
        "hidden_features": FLOW["hidden"],
        "num_transforms": FLOW["n_transforms"],
        "num_bins": FLOW["bins"],
        "tail_bound": FLOW["tail_bound"],
    }
    if family == "NPE":
        trainer_class, network = NPE_C, posterior_nn(**flow)
    elif family == "NLE":
        trainer_class, network = NLE_A, likelihood_nn(**flow)
    else:
        trainer_class, network = NRE_A, classifier_nn(model="resnet", hidden_features=128)
    torch.manual_seed(seed)  # sbi draws its initialisation and splits from torch's generator
    trainer = trainer_class(
        prior=prior, show_progress_bars=False, tracker=NullTracker(), **_estimator(family, network)
    )
    mcmc = {
        "num_chains": MCMC["n_chains"],
        "warmup_steps": MCMC["warmup"],
        "thin": 1,
        "init_strategy": "resample",
    }
    proposal, epochs, masses = prior, [], []
    for r, n in enumerate(sizes):
        if r == 0:  # the same first-round simulations as simfer.sequential(seed=seed)
            data = simfer.simulate(
                simulator, prior, n, seed=round_seed(seed, 0), executor="serial", progress=False
            )
            theta, x = data.theta, data.x
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                theta = proposal.sample((n,))
            x = simulator.simulate(theta, seed=round_seed(seed, r))
        kwargs = {"proposal": proposal} if method == "SNPE-C" and r > 0 else {}
        trainer.append_simulations(theta, x, **kwargs)
        train = {
            "training_batch_size": TRAINING["batch_size"],
            "learning_rate": TRAINING["learning_rate"],
            "validation_fraction": TRAINING["validation_fraction"],
            "stop_after_epochs": TRAINING["patience"],
            "max_num_epochs": args.max_epochs - 1,  # sbi counts epochs 0 … max_num_epochs
            "clip_max_norm": 5.0,
            "show_train_summary": False,
        }
        if method == "TSNPE":
            train["force_first_round_loss"] = True
        trainer.train(**train)
        epochs.append(int(trainer.summary["epochs_trained"][-1]))
        if family == "NPE":
            posterior = trainer.build_posterior().set_default_x(x_obs)
        else:
            posterior = trainer.build_posterior(
                mcmc_method="slice_np_vectorized", mcmc_parameters=mcmc
            ).set_default_x(x_obs)
        if method == "TSNPE":
            threshold = get_density_thresholder(
                posterior, quantile=EPSILON, num_samples_to_estimate_support=HPR_DRAWS
            )
            proposal = RestrictedPrior(prior, threshold, sample_with="rejection")
            with seeded(seed + r):
                masses.append(float(threshold(prior.sample((HPR_DRAWS,))).float().mean()))
        else:
            proposal = posterior
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        draws = posterior.sample((args.n_c2st,), show_progress_bars=False)
    return draws, {"epochs": epochs, "prior_mass": [1.0, *masses[: len(sizes) - 1]]}


def _estimator(family, network) -> dict:
    key = "classifier" if family == "NRE" else "density_estimator"
    return {key: network}


# -- the table -----------------------------------------------------------------------------
def _key(row: dict) -> tuple:
    return (row["task"], row["method"], row["library"], row["seed"], row["budget"], row["rounds"])


def render(rows: list[dict], meta: dict) -> str:
    cells: dict[tuple, list[dict]] = {}
    for row in rows:
        if row.get("kind") == "cell" and "error" not in row:
            cells.setdefault((row["task"], row["method"], row["library"]), []).append(row)
    failed = [r for r in rows if r.get("kind") == "cell" and "error" in r]
    lines = [
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; machine: {meta['machine']}; {meta['versions']}; "
        f"total wall time {meta['wall_minutes']:.1f} min.",
        "",
        f"C2ST against the reference posterior ({meta['n_c2st']} draws a side; 0.5 is "
        f"perfect), mean ± standard deviation over seeds, at a total budget of "
        f"{meta['budget']:,} simulations: one round from the prior, or {meta['rounds']} "
        f"rounds of {meta['budget'] // meta['rounds']:,}.  In brackets: the wall time of "
        f"the cell (simulate, train, sample) and the number of seeds.",
        "",
        "| task | method | rounds | simfer | sbi |",
        "| --- | --- | --- | --- | --- |",
    ]
    for task in TASKS:
        for method, sequential in METHODS:
            texts = []
            for library in LIBRARIES:
                found = cells.get((task, method, library), [])
                if not found:
                    texts.append("—" if library == "simfer" and method in SBI_ONLY else "not run")
                    continue
                scores = [r["c2st"] for r in found]
                spread = f" ± {statistics.stdev(scores):.3f}" if len(scores) > 1 else ""
                seconds = statistics.mean(r["seconds"] for r in found)
                texts.append(
                    f"{statistics.mean(scores):.3f}{spread} ({seconds:.0f} s, {len(found)})"
                )
            if all(t in ("not run", "—") for t in texts):
                continue
            rounds = meta["rounds"] if sequential else 1
            lines.append(f"| {TASK_LABEL[task]} | {method} | {rounds} | {' | '.join(texts)} |")
    masses = [
        r for r in rows if r.get("kind") == "cell" and "error" not in r and r["method"] == "TSNPE"
    ]
    if masses:
        lines += [
            "",
            "TSNPE's truncation regions: prior mass of each round's proposal (1 = the prior):",
            "",
            "| task | library | seed | prior mass per round |",
            "| --- | --- | --- | --- |",
        ]
        for r in masses:
            text = ", ".join("—" if m is None else f"{m:.3g}" for m in r["info"]["prior_mass"])
            lines.append(f"| {TASK_LABEL[r['task']]} | {r['library']} | {r['seed']} | {text} |")
    if failed:
        lines += ["", "Failed cells:", ""]
        lines += [
            f"- {r['task']} {r['library']} {r['method']} seed {r['seed']}: {r['error']}"
            for r in failed
        ]
    return "\n".join(lines)


# -- driver ---------------------------------------------------------------------------------
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS))
    parser.add_argument("--methods", nargs="+", choices=[m for m, _ in METHODS])
    parser.add_argument("--libraries", nargs="+", choices=LIBRARIES, default=list(LIBRARIES))
    parser.add_argument("--seeds", type=int, nargs="+", help="observations/seeds (0 1 2)")
    parser.add_argument("--budget", type=int, help="total simulations per method (3000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-epochs", type=int, help="cap on epochs per fit (200)")
    parser.add_argument("--n-c2st", type=int, help="draws a side of each C2ST (1000)")
    parser.add_argument("--quick", action="store_true", help="TwoMoons, 3 × 500, seed 0")
    parser.add_argument("--fresh", action="store_true", help="ignore the finished cells")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--jsonl", default=str(ROOT / "benchmarks" / "results" / "sequential.jsonl")
    )
    args = parser.parse_args(argv)
    tasks = args.tasks or (["two_moons"] if args.quick else list(TASKS))
    methods = args.methods or [m for m, _ in METHODS]
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.budget = args.budget or (1500 if args.quick else 3000)
    args.max_epochs = args.max_epochs or (100 if args.quick else 200)
    args.n_c2st = args.n_c2st or (500 if args.quick else 1000)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)

    log = JsonLines(args.jsonl)
    if args.fresh and log.path.exists():
        log.path.unlink()
    rows = log.rows()
    done = {_key(r) for r in rows if r.get("kind") == "cell" and "error" not in r}
    meta = {
        **run_meta("sequential.py", argv, args.threads, "sbi", "nflows"),
        "budget": args.budget,
        "rounds": args.rounds,
        "n_c2st": args.n_c2st,
        "wall_minutes": 0.0,
    }
    t0 = time.perf_counter()
    for task in tasks:
        simulator = TASKS[task]()
        prior = simulator.prior()
        _, x_all = observations(simulator, prior, max(seeds) + 1, seed=OBSERVATION_SEED)
        for seed in seeds:
            x_obs = x_all[seed]
            truth = reference(task, simulator, x_obs, args.n_c2st, 20_000 + seed)
            for method, sequential in methods_of(methods):
                rounds = args.rounds if sequential else 1
                sizes = _sizes(args.budget, rounds)
                for library in args.libraries:
                    if library == "simfer" and method in SBI_ONLY:
                        continue
                    row = {
                        "kind": "cell",
                        "task": task,
                        "method": method,
                        "library": library,
                        "seed": seed,
                        "budget": args.budget,
                        "rounds": rounds,
                        "max_epochs": args.max_epochs,
                    }
                    if _key(row) in done:
                        continue
                    start = time.perf_counter()
                    try:
                        run = run_simfer if library == "simfer" else run_sbi
                        draws, info = run(method, simulator, prior, x_obs, sizes, seed, args)
                        row["seconds"] = time.perf_counter() - start
                        draws = draws.reshape(-1, draws.shape[-1])[: args.n_c2st]
                        row.update(c2st=c2st(truth, draws, seed=seed), info=info)
                    except Exception as error:  # a failure is reported, never faked
                        row["error"] = f"{type(error).__name__}: {error}"
                    rows.append(row)
                    log.append(row)
                    shown = {
                        k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                    }
                    print(json.dumps(shown), flush=True)
    meta["wall_minutes"] = (time.perf_counter() - t0) / 60
    print()
    print(render(rows, meta))


def methods_of(names: list[str]) -> list[tuple[str, bool]]:
    return [(m, s) for m, s in METHODS if m in names]


def _sizes(budget: int, rounds: int) -> list[int]:
    base = budget // rounds
    return [base + (1 if r < budget - base * rounds else 0) for r in range(rounds)]


if __name__ == "__main__":
    main()
