"""Resident memory of training on a store: streamed from a large store against in memory.

Writes synthetic one-parameter gold stores in simfer's store format (`SimulationStore`, in
chunks of 65 536 rows, HDF5 chunks of 4096): θ ~ U(−1, 1), half the rows drawn at θ_ref = 0,
x ~ N(θ or θ_ref, 1), with the exact gold of that Gaussian location model
(log r(x|θ, 0) = xθ − θ²/2, t(x|θ) = x − θ, t(x|0) = x): θ, x, θ_ref and the three gold
columns in float32 and two flags, 26 bytes a row, the table of the measurement in
docs/own_data.md.  Then trains an NPE (the default NSF) and ALICES (the default MLP) for one
epoch each, in a fresh interpreter per fit:

* ``memory``: ``fit(simfer.load_simulations(path))`` on the ``--memory-rows`` store (the
  in-memory path, today's);
* ``stream``: ``fit(simfer.StoredSimulations(path, buffer_rows=...))`` with
  ``max_memory=0`` on the ``--memory-rows`` store and on the ``--rows`` store.

Reported per fit: the peak resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``)
above the interpreter's peak after a warm-up fit of the same estimator on 4096 rows (torch
allocates ~90 MiB once, at the first training step, whatever the data), its ratio to the
table, the peak above the imports, and the seconds of the fit (loading included).  Bounded
memory shows as streamed peaks that do not grow with the store.

    .venv/bin/python benchmarks/streaming_memory.py                         # 10⁷ and 10⁶ rows
    .venv/bin/python benchmarks/streaming_memory.py --rows 100000 --memory-rows 100000

Run it alone: the other benchmarks' processes would share the machine's memory and cores.
The stores (~260 MiB at 10⁷ rows) go to ``--folder`` and are kept for the next run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import simfer  # noqa: E402
from benchmarks._common import write_markdown  # noqa: E402
from simfer.store import SimulationStore  # noqa: E402

NAME, HEADING = "streaming_memory", "Resident memory of training on a store, streamed and in memory"
WRITE_CHUNK = 65_536
WARM_UP_ROWS = 4096
ESTIMATORS = {
    "npe": lambda **settings: simfer.PosteriorEstimator(**settings),
    "alices": lambda **settings: simfer.RatioEstimator("alices", **settings),
}


def peak_rss_bytes() -> int:
    """The process's peak resident memory so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def write_store(path: Path, n: int, seed: int = 0) -> None:
    """A synthetic gold store of n rows at ``path`` (kept if it is already complete)."""
    fingerprint = {
        "synthetic": "Gaussian location model with exact gold (benchmarks/streaming_memory.py)",
        "n": n,
        "seed": seed,
        "chunk_size": WRITE_CHUNK,
    }
    if path.exists():
        try:
            with SimulationStore.open(path, fingerprint) as store:
                if store.n_committed == n:
                    return
        except simfer.StoreError:
            pass
        path.unlink()
    generator = torch.Generator().manual_seed(seed)
    with SimulationStore.open(path, fingerprint) as store:
        for chunk, start in enumerate(range(0, n, WRITE_CHUNK)):
            store.append(chunk, start, synthetic_rows(min(WRITE_CHUNK, n - start), generator))


def synthetic_rows(m: int, generator: torch.Generator) -> simfer.SimulationData:
    """m rows of the Gaussian location model with its exact gold (the module docstring)."""
    theta = torch.rand(m, 1, generator=generator) * 2 - 1
    at_ref = torch.rand(m, generator=generator) < 0.5
    x = torch.where(at_ref[:, None], 0.0, theta) + torch.randn(m, 1, generator=generator)
    return simfer.SimulationData(
        theta=theta,
        x=x,
        theta_ref=torch.zeros(m, 1),
        from_reference=at_ref,
        joint_log_ratio=(x * theta - theta**2 / 2)[:, 0],
        joint_score=x - theta,
        joint_score_ref=x.clone(),
        valid=torch.ones(m, dtype=torch.bool),
    )


def child(mode: str, estimator: str, path: str, buffer_rows: int, threads: int) -> None:
    """One fit in this interpreter; prints its measurement as one JSON line."""
    torch.set_num_threads(threads)
    imports = peak_rss_bytes()
    settings = dict(max_epochs=1, progress=False)
    # torch's one-time allocations (autograd engine, kernels' workspaces) on a small table,
    # so that the growth measured after it is that of the data
    warm_up = synthetic_rows(WARM_UP_ROWS, torch.Generator().manual_seed(1))
    ESTIMATORS[estimator](**settings).fit(warm_up)
    del warm_up
    baseline = peak_rss_bytes()
    start = time.perf_counter()
    if mode == "memory":
        data = simfer.load_simulations(path)
        ESTIMATORS[estimator](**settings).fit(data)
        rows = len(data)
    else:
        store = simfer.StoredSimulations(path, buffer_rows=buffer_rows)
        ESTIMATORS[estimator](max_memory=0, **settings).fit(store)
        rows = len(store)
    seconds = time.perf_counter() - start
    with SimulationStore.open_readonly(path) as store:
        table = store.table_bytes
    print(
        json.dumps(
            {
                "estimator": estimator,
                "mode": mode,
                "rows": rows,
                "table_bytes": table,
                "imports_bytes": imports,
                "baseline_bytes": baseline,
                "peak_bytes": peak_rss_bytes(),
                "seconds": seconds,
                "buffer_rows": buffer_rows if mode == "stream" else None,
            }
        )
    )


def run_child(mode: str, estimator: str, path: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", mode, estimator, str(path)]
    command += ["--buffer-rows", str(args.buffer_rows), "--threads", str(args.threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    lines = [
        "| estimator | rows | training | table (MiB) | peak RSS above the warm-up (MiB) "
        "| × table | above the imports (MiB) | s |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    mib = 2**20
    for r in results:
        above = (r["peak_bytes"] - r["baseline_bytes"]) / mib
        imports = (r["peak_bytes"] - r["imports_bytes"]) / mib
        how = "in memory" if r["mode"] == "memory" else f"streamed ({r['buffer_rows']}-row buffer)"
        lines.append(
            f"| {r['estimator']} | {r['rows']:.0e} | {how} | {r['table_bytes'] / mib:.1f} | "
            f"{above:.0f} | {above * mib / r['table_bytes']:.2f} | {imports:.0f} | "
            f"{r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows of the large store")
    parser.add_argument("--memory-rows", type=int, default=1_000_000, help="rows trained in memory")
    parser.add_argument("--buffer-rows", type=int, default=65_536)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=ESTIMATORS)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/simfer-streaming-memory"))
    parser.add_argument(
        "--write-docs", action="store_true", help="write the table into docs/benchmarks.md"
    )
    parser.add_argument("--child", nargs=3, metavar=("MODE", "ESTIMATOR", "PATH"))
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child, args.buffer_rows, args.threads)
        return
    args.folder.mkdir(parents=True, exist_ok=True)
    small, large = args.folder / f"{args.memory_rows}.h5", args.folder / f"{args.rows}.h5"
    for path, n in ((small, args.memory_rows), (large, args.rows)):
        start = time.perf_counter()
        write_store(path, n)
        print(f"store of {n} rows at {path}: {time.perf_counter() - start:.1f} s", flush=True)
    runs = [("memory", small)] + [("stream", small)] * (large != small) + [("stream", large)]
    results = []
    for estimator in args.estimators:
        for mode, path in runs:
            results.append(run_child(mode, estimator, path, args))
            print(json.dumps(results[-1]), flush=True)
    text = table(results)
    print(text)
    if args.write_docs:
        command = "python benchmarks/streaming_memory.py " + " ".join(argv or sys.argv[1:])
        write_markdown(
            ROOT / "docs" / "benchmarks.md",
            f"{text}\n\nOne epoch each, {args.threads} torch thread(s); `{command.strip()}`.",
            NAME,
            HEADING,
        )


if __name__ == "__main__":
    main()
