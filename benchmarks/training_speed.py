"""Training time per epoch, simfer against sbi, on the same simulations at equal epochs.

For every simulator of benchmarks/vs_sbi.py and both flow methods (NPE, NLE), simfer and
sbi 0.27 train the flows of that benchmark (NSF, 5 transforms, 10 bins, 64 hidden units,
batches of 256, learning rate 10⁻³, clipping at 5, 10 % validation) on the same n = 10⁴
simulations for a fixed number of epochs; the patience (20) exceeds the epochs, so neither
stops early.  simfer runs twice: with its default autoregressive NSF (as in vs_sbi.py)
and with ``flow="nsf-coupling"``, the coupling architecture of sbi's ``nsf``.  Each fit is
repeated, alternating the three, and the fastest repeat of each is kept: the one least
disturbed by other processes on the machine.  Reported: seconds per epoch (training and
validation passes, as each library's own loop does them) and the ratios to sbi.

This measures the code as it is now; the C2ST table of vs_sbi.py measures accuracy, and
its time columns are those of its own run.

    .venv/bin/python benchmarks/training_speed.py --threads 1
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
from benchmarks._common import run_header, run_meta, write_markdown  # noqa: E402
from benchmarks.vs_sbi import SIMULATORS, train_sbi, train_simfer  # noqa: E402

NAME, HEADING = "training_speed", "Training speed against sbi at equal epochs"
TRAINERS = {
    "simfer": train_simfer,
    "simfer_coupling": lambda *args: train_simfer(*args, flow="nsf-coupling"),
    "sbi": train_sbi,
}


def seconds_per_epoch(library: str, method: str, data, prior, epochs: int) -> float:
    _, seconds, ran = TRAINERS[library](method, data, prior, epochs)
    if ran != epochs:
        raise RuntimeError(f"{library} {method} ran {ran} epochs instead of {epochs}")
    return seconds / ran


def render(rows: list[dict], meta: dict) -> str:
    lines = [
        *run_header(meta),
        "",
        f"Seconds per epoch on {meta['n']:,} simulations ({meta['epochs']} epochs, fastest "
        f"of {meta['repeats']} repeats; lower is better):",
        "",
        "| simulator | method | simfer (autoregressive) | simfer (coupling) | sbi "
        "| autoregressive / sbi | coupling / sbi |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['simulator']} | {row['method']} | {row['simfer']:.3f} "
            f"| {row['simfer_coupling']:.3f} | {row['sbi']:.3f} "
            f"| {row['simfer'] / row['sbi']:.2f} | {row['simfer_coupling'] / row['sbi']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--simulators", nargs="+", choices=list(SIMULATORS), help="default: all")
    parser.add_argument("--n", type=int, default=10_000, help="simulations")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--markdown", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    started = time.perf_counter()
    meta = {
        **run_meta("training_speed.py", argv, args.threads, "sbi", "nflows"),
        "n": args.n,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "status": "",
    }
    rows = []
    for name in args.simulators or list(SIMULATORS):
        simulator = SIMULATORS[name]()
        prior = simulator.prior()
        data = simfer.simulate(simulator, prior, args.n, seed=args.n, progress=False)
        for method in ("NPE", "NLE"):
            for library in TRAINERS:  # warm-up: imports, first-call allocations
                seconds_per_epoch(library, method, data[:1000], prior, 2)
            best = {library: float("inf") for library in TRAINERS}
            for _ in range(args.repeats):
                for library in TRAINERS:
                    timing = seconds_per_epoch(library, method, data, prior, args.epochs)
                    best[library] = min(best[library], timing)
            rows.append({"simulator": name, "method": method, **best})
            print(rows[-1], flush=True)
    meta["wall_minutes"] = (time.perf_counter() - started) / 60
    table = render(rows, meta)
    print(table)
    write_markdown(Path(args.markdown), table, NAME, HEADING)


if __name__ == "__main__":
    main()
