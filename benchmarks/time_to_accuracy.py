"""Time to accuracy: the wall time simfer and sbi need to reach sbi's final C2ST, and the
C2ST each reaches within a fixed wall-time budget, on the sbibm tasks at 10^4 simulations.

What a user feels is not seconds per epoch but how long a fit takes to be as good as it
will get.  Each library trains once, to its own early-stopping rule, on the same
simulations with one torch thread, and at the end of every epoch the benchmark records the
training seconds so far and the weights the library would return if it stopped there (its
best-so-far weights by validation loss).  The clock is paused while the weights are
copied, so the recorded seconds are the fit's own.  Afterwards a snapshot's C2ST (mean
over the observations, against the reference posterior draws of `benchmarks/vs_sbi.py`) is
the accuracy the user would have had at that time.  The hooks: sbi's ``_converged``, called
once per epoch after validation, and simfer's per-epoch checkpoint writer, replaced by a
recorder for the run (no file is written).

* target: sbi's final mean C2ST, c*.
* time to c*: the training seconds of the first snapshot whose mean C2ST ≤ c* (found on a
  geometric grid of snapshot times, then refined by bisection between the last snapshot
  above c* and the first at or below it); sbi's own time to c* is found by the same rule,
  so it may come before its last improvement.  "stops" is the whole fit, the wait a user
  has before the fit returns.
* C2ST at the budget: each library's snapshot at half of sbi's whole fit time.

Rows (one per task and library, appended as they finish) go to
benchmarks/results/time_to_accuracy.jsonl and the table to docs/benchmarks.md between the
``time_to_accuracy`` markers; the same command resumes a run cut short.  sbi runs first on
each task, since its final C2ST is the others' target.

    .venv/bin/python benchmarks/time_to_accuracy.py --grid 8   # six tasks, NPE, ~45 min
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import simfer  # noqa: E402
import simfer.training  # noqa: E402
from benchmarks import vs_sbi  # noqa: E402
from benchmarks._common import JsonLines, fmt, run_header, run_meta, write_markdown  # noqa: E402
from simfer.diagnostics import c2st  # noqa: E402

NAME, HEADING = "time_to_accuracy", "Time to accuracy against sbi"
#: (library, simfer flow) of each NPE: sbi's, simfer's default, and simfer's coupling flow
#: (sbi's architecture, cheaper per step)
VARIANTS = {
    "sbi": ("sbi", None),
    "simfer": ("simfer", "nsf"),
    "simfer-coupling": ("simfer", "nsf-coupling"),
}


class Snapshots:
    """The training seconds and best-so-far weights at the end of every epoch; the clock
    runs from `start` and pauses while a snapshot is taken."""

    def __init__(self):
        self.seconds: list[float] = []
        self.states: list[dict[str, torch.Tensor]] = []
        self._start = 0.0
        self._paused = 0.0

    def start(self) -> None:
        self._start, self._paused = time.perf_counter(), 0.0

    def elapsed(self) -> float:
        """Training seconds since `start`, the snapshots' own time left out."""
        return time.perf_counter() - self._start - self._paused

    def take(self, state: dict[str, torch.Tensor]) -> None:
        now = time.perf_counter()
        self.seconds.append(self.elapsed())
        self.states.append({k: v.detach().clone() for k, v in state.items()})
        self._paused += time.perf_counter() - now

    def at(self, seconds: float) -> int:
        """The last snapshot taken within ``seconds`` of training (−1: none)."""
        return max((i for i, s in enumerate(self.seconds) if s <= seconds), default=-1)


def train_sbi(data, prior, snapshots: Snapshots):
    """sbi's NPE as in the converged table, with a snapshot after every epoch."""
    torch.manual_seed(vs_sbi.TRAIN_SEED)
    trainer = vs_sbi.sbi_trainer("NPE", prior)
    converged = trainer._converged

    def recorded(epoch, stop_after_epochs):
        result = converged(epoch, stop_after_epochs)
        snapshots.take(trainer._best_model_state_dict)
        return result

    trainer._converged = recorded
    trainer.append_simulations(data.theta.clone(), data.x.clone())
    snapshots.start()
    network = trainer.train(**vs_sbi.sbi_train_options(vs_sbi.NO_CAP))
    total = snapshots.elapsed()
    network.eval()

    def load(i):
        network.load_state_dict(snapshots.states[i])
        return trainer, network

    return load, total


def train_simfer(data, prior, snapshots: Snapshots, flow: str):
    """simfer's NPE as in the converged table, with a snapshot after every epoch: the loop's
    per-epoch checkpoint writer is replaced by the recorder (its ``best_state`` argument is
    the weights the fit would return)."""
    estimator = vs_sbi.simfer_estimator("NPE", vs_sbi.NO_CAP, flow)
    estimator.training.checkpoint = "/nonexistent/simfer-time-to-accuracy.pt"  # never written
    writer = simfer.training._save_checkpoint

    def recorded(path, network, optimizer, scheduler, best_state, *rest):
        snapshots.take(best_state)

    simfer.training._save_checkpoint = recorded
    try:
        snapshots.start()
        estimator.fit(data, prior)
        total = snapshots.elapsed()
    finally:
        simfer.training._save_checkpoint = writer

    def load(i):
        estimator.network.load_state_dict(snapshots.states[i])
        return estimator

    return load, total


def evaluate(library, model, prior, x_obs, references, n: int) -> list[float]:
    """C2ST of the model's posterior at each observation against its reference draws; 1 (no
    usable posterior) where the flow leaks so much mass outside the prior's support that
    sampling by rejection fails, as early snapshots can."""
    sample = vs_sbi.sample_sbi if library == "sbi" else vs_sbi.sample_simfer
    scores = []
    for j, reference in enumerate(references):
        try:
            samples, _ = sample("NPE", model, prior, x_obs[j], n, j, {})
        except Exception as error:  # noqa: BLE001 — any sampling failure scores as no posterior
            print(f"  sampling failed ({type(error).__name__}: {error}); C2ST 1", flush=True)
            scores.append(1.0)
            continue
        scores.append(c2st(reference, samples.reshape(-1, samples.shape[-1])[:n]))
    return scores


def trajectory(snapshots: Snapshots, score, target: float | None, grid: int) -> dict[int, float]:
    """Mean C2ST of snapshots on a geometric grid of times (1/64 of the fit to all of it),
    refined by bisection to the first snapshot at or below ``target`` (None: the final
    snapshot's own C2ST, so that a library's time to its own final accuracy is found by
    the same rule as the others')."""
    scored: dict[int, float] = {}

    def mean(i):
        if i not in scored:
            scored[i] = score(i)
        return scored[i]

    last = len(snapshots.seconds) - 1
    total = snapshots.seconds[last]
    for k in range(grid):
        i = snapshots.at(total * 64 ** (-k / (grid - 1)))
        if i >= 0:
            mean(i)
    target = mean(last) if target is None else target
    passing = [i for i in sorted(scored) if scored[i] <= target]
    if passing:
        high = passing[0]
        low = max((i for i in scored if i < high), default=-1)
        while high - low > 1:  # the first snapshot at or below the target lies in (low, high]
            middle = (low + high) // 2
            if mean(middle) <= target:
                high = middle
            else:
                low = middle
    return scored


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--simulators", nargs="+", choices=list(vs_sbi.SIMULATORS))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--budget", type=int, default=10_000)
    parser.add_argument("--n-obs", type=int, default=3)
    parser.add_argument("--n-c2st", type=int, default=1000)
    parser.add_argument("--grid", type=int, default=10, help="snapshot times scored per fit")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--jsonl", default=str(ROOT / "benchmarks" / "results" / f"{NAME}.jsonl"))
    parser.add_argument("--markdown", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--cache", default="/tmp/simfer_vs_sbi_references")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # early snapshots may leak most of their mass: give up on a rejection sampler sooner
    vs_sbi.SBI_MAX_SAMPLING_SECONDS = 30
    simulators = args.simulators or list(vs_sbi.SIMULATORS)
    variants = ["sbi", *[v for v in args.variants if v != "sbi"]]  # sbi first: the target

    log = JsonLines(args.jsonl)
    if args.fresh and log.path.exists():
        log.path.unlink()
    rows = log.rows()
    meta = {
        **run_meta("time_to_accuracy.py", argv, args.threads, "sbi"),
        "budget": args.budget,
        "status": " (running)",
        "wall_minutes": 0.0,
    }
    t0 = time.perf_counter()
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    warmed = False

    for name in simulators:
        todo = [v for v in variants if not _row(rows, name, args.budget, v)]
        if not todo:
            continue
        simulator = vs_sbi.SIMULATORS[name]()
        prior = simulator.prior()
        _, x_obs = vs_sbi.observations(simulator, prior, args.n_obs, seed=10_000)
        references = vs_sbi.cached_references(name, simulator, x_obs, args.n_c2st, args.cache)
        data = simfer.simulate(
            simulator, prior, args.budget, seed=args.budget, executor="serial", progress=False
        )
        if not warmed:
            vs_sbi.warm_up(simulator, prior)
            warmed = True
        for variant in todo:
            target = None
            if variant != "sbi":
                target = _row(rows, name, args.budget, "sbi")["final_c2st"]
            row = run_variant(name, variant, data, prior, x_obs, references, target, args)
            rows.append(row)
            log.append(row)
            meta["wall_minutes"] = (time.perf_counter() - t0) / 60
            print(
                f"{name} {variant}: {row['epochs']} epochs, {row['fit_seconds']:.1f} s, "
                f"C2ST {row['final_c2st']:.3f}",
                flush=True,
            )
            write_markdown(Path(args.markdown), render(rows, meta), NAME, HEADING)
    meta["status"], meta["wall_minutes"] = "", (time.perf_counter() - t0) / 60
    write_markdown(Path(args.markdown), render(rows, meta), NAME, HEADING)
    print(render(rows, meta))


def run_variant(name, variant, data, prior, x_obs, references, target, args) -> dict:
    """Train one library on ``data`` with a snapshot per epoch, and score its trajectory."""
    library, flow = VARIANTS[variant]
    snapshots = Snapshots()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if library == "sbi":
            load, total = train_sbi(data, prior, snapshots)
        else:
            load, total = train_simfer(data, prior, snapshots, flow)

        def score(i):
            values = evaluate(library, load(i), prior, x_obs, references, args.n_c2st)
            return sum(values) / len(values)

        scored = trajectory(snapshots, score, target, args.grid)
    last = len(snapshots.seconds) - 1
    return {
        "simulator": name,
        "budget": args.budget,
        "variant": variant,
        "epochs": len(snapshots.seconds),
        "fit_seconds": total,
        "final_c2st": scored[last],
        "scored": {str(i): [snapshots.seconds[i], c] for i, c in sorted(scored.items())},
    }


def _row(rows, name, budget, variant) -> dict | None:
    found = [
        r for r in rows if (r["simulator"], r["budget"], r["variant"]) == (name, budget, variant)
    ]
    return found[-1] if found else None


def time_to(row: dict, target: float) -> float | None:
    """Training seconds of the first scored snapshot with mean C2ST ≤ target."""
    times = [seconds for seconds, c in row["scored"].values() if c <= target]
    return min(times) if times else None


def at_budget(row: dict, seconds: float) -> tuple[float, float] | None:
    """(seconds, C2ST) of the last scored snapshot within ``seconds`` of training."""
    within = [(s, c) for s, c in row["scored"].values() if s <= seconds]
    return max(within) if within else None


def render(rows: list[dict], meta: dict) -> str:
    budget = meta["budget"]
    lines = [*run_header(meta), ""]
    lines += [
        f"NPE at {budget:,} simulations, one torch thread each, each library to its own "
        "early stopping. c*: sbi's final mean C2ST (3 observations). *to c\\**: training "
        "seconds until the returned weights would first reach c*; *stops*: the whole fit. "
        "*at ½ sbi*: the C2ST of the weights each library holds after half of sbi's whole "
        "fit time.",
        "",
        "| task | c* | sbi to c* / stops | simfer to c* / stops | ratio | "
        "coupling to c* / stops | ratio | at ½ sbi: sbi / simfer / coupling |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in vs_sbi.SIMULATORS:
        sbi_row = _row(rows, name, budget, "sbi")
        if sbi_row is None:
            continue
        target = sbi_row["final_c2st"]
        half = sbi_row["fit_seconds"] / 2
        cells = [vs_sbi.SIM_LABEL[name], fmt(target)]
        sbi_time = time_to(sbi_row, target)
        cells.append(f"{sbi_time:.0f} s / {sbi_row['fit_seconds']:.0f} s")
        budget_cells = [_c2st_text(at_budget(sbi_row, half))]
        for variant in ("simfer", "simfer-coupling"):
            row = _row(rows, name, budget, variant)
            if row is None:
                cells += ["—", "—"]
                budget_cells.append("—")
                continue
            reached = time_to(row, target)
            if reached is None:
                cells.append(
                    f"not reached (final {fmt(row['final_c2st'])}) / {row['fit_seconds']:.0f} s"
                )
                cells.append("—")
            else:
                cells.append(f"{reached:.0f} s / {row['fit_seconds']:.0f} s")
                cells.append(f"{reached / sbi_time:.2f}")
            budget_cells.append(_c2st_text(at_budget(row, half)))
        cells.append(" / ".join(budget_cells))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _c2st_text(found) -> str:
    return "—" if found is None else fmt(found[1])


if __name__ == "__main__":
    main()
