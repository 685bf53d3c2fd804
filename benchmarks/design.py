"""Expected information gain: simfer's exact nested Monte Carlo against Pyro's ``nmc_eig``.

One script, the same model for both: `simulators.LinearGaussianDesign` (a damped
oscillation read out 4 times at interval Δ; θ ~ N(0, I₂), σ_ε = 0.5), 101 candidate
designs Δ ∈ [0, 1], whose EIG is known in closed form (``analytic_eig``; its argmax on the
grid is Δ = 0.20, 0.0011 nats above the next grid point).

* Pyro: ``pyro.contrib.oed.eig.nmc_eig(model, design, ["x"], ["theta"], N, M)`` on the
  same model written as a Pyro program (vectorised over its N outer and M inner samples),
  called once per design — its estimate for one design batch would need [M, N, 101]
  tensors — after ``pyro.set_rng_seed(seed)``, so designs get independent draws.
* simfer: ``simfer.design.eig(sim, prior, designs, n_outer=N, n_inner=M, seed=seed)``:
  all designs in one vectorised pass with common random numbers, the PCE lower bound in
  the same pass (float32 by default; a float64 row too).

Measured per seed: wall time of the whole curve, the largest relative error
|EIG^ − EIG| / EIG over the 101 designs, and whether the argmax is exactly the analytic
one.  simfer also runs at a larger N, M that still fits in Pyro's time at N = M = 2000.
Last, simfer's exact NMC curve on `simulators.WeinbergAngle` (sin²θ_W from the μ
angular distribution of 100 events; the design is √s).

Every finished cell is appended to a JSON-lines file and skipped when the script runs
again (delete the file, or pass --fresh, to start over); the markdown table is printed.

    .venv/bin/python benchmarks/design.py                                 # full: ~20 min
    .venv/bin/python benchmarks/design.py --pyro-seeds 3 --big-n 20000 --big-m 2000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyro  # noqa: E402
import pyro.distributions as pdist  # noqa: E402
from pyro.contrib.oed.eig import nmc_eig  # noqa: E402

import simfer  # noqa: E402
from benchmarks._common import JsonLines, fmt, run_header, run_meta  # noqa: E402
from simulators import LinearGaussianDesign, WeinbergAngle  # noqa: E402

SIM = LinearGaussianDesign()
DESIGNS = torch.linspace(0.0, 1.0, 101)
ENERGIES = torch.cat([torch.linspace(20.0, 160.0, 57), torch.tensor([91.1876])]).sort().values


def pyro_model(design: torch.Tensor) -> torch.Tensor:
    """`LinearGaussianDesign` as a Pyro program over a design batch ``[..., 1]``."""
    batch = design.shape[:-1]
    x_matrix = SIM.design_matrix(design.reshape(-1, 1)).reshape(*batch, SIM.n_obs, 2)
    prior = pdist.Normal(torch.zeros(2), SIM.prior_std).expand([*batch, 2]).to_event(1)
    theta = pyro.sample("theta", prior)
    mean = (x_matrix.to(theta.dtype) @ theta[..., None]).squeeze(-1)
    return pyro.sample("x", pdist.Normal(mean, SIM.noise_std).to_event(1))


def pyro_curve(n: int, m: int, seed: int) -> torch.Tensor:
    with torch.random.fork_rng(devices=[]):
        pyro.set_rng_seed(seed)
        values = [
            float(nmc_eig(pyro_model, d.reshape(1), ["x"], ["theta"], N=n, M=m)) for d in DESIGNS
        ]
    return torch.tensor(values, dtype=torch.float64)


def simfer_curve(n: int, m: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    result = simfer.design.eig(
        SIM, SIM.prior(), DESIGNS, n_outer=n, n_inner=m, seed=seed, dtype=dtype, progress=False
    )
    return result.eig


def scores(curve: torch.Tensor, exact: torch.Tensor) -> dict:
    best = int(exact.argmax())
    return {
        "max_rel_error": float(((curve - exact).abs() / exact).max()),
        "argmax": float(DESIGNS[int(curve.argmax())]),
        "argmax_exact": int(curve.argmax()) == best,
    }


def run_cell(log: JsonLines, done: set, key: str, work) -> dict | None:
    """Run ``work()`` unless ``key`` is in ``done``; append and print its row."""
    if key in done:
        return None
    row = {"cell": key}
    try:
        row.update(work())
    except Exception as error:  # reported, never faked
        row["error"] = f"{type(error).__name__}: {error}"
    log.append(row)
    done.add(key)
    print(json.dumps(row), flush=True)
    return row


def render(rows: list[dict], meta: dict, args) -> str:
    by_key = {r["cell"]: r for r in rows if "error" not in r}
    failed = [r["cell"] for r in rows if "error" in r]
    configs = [
        ("Pyro `nmc_eig` (float32, one call per design)", "pyro", 2000, 2000, args.pyro_seeds),
        ("simfer `design.eig` float32", "simfer-f32", 2000, 2000, args.seeds),
        ("simfer `design.eig` float64", "simfer-f64", 2000, 2000, args.seeds),
        ("simfer `design.eig` float32", "simfer-f32", args.big_n, args.big_m, args.big_seeds),
    ]
    pyro_cells = [by_key.get(f"lg/pyro/2000/2000/{s}") for s in range(args.pyro_seeds)]
    pyro_cells = [c for c in pyro_cells if c is not None]
    pyro_time = statistics.median(c["seconds"] for c in pyro_cells) if pyro_cells else None
    pyro_cpu = statistics.median(c["cpu_seconds"] for c in pyro_cells) if pyro_cells else None
    lines = [
        *run_header(meta),
        "",
        "`LinearGaussianDesign` (θ ∈ R², 4 read-outs, σ_ε = 0.5), 101 designs Δ ∈ [0, 1]; "
        "errors against the closed-form EIG. Time: one whole curve, wall (CPU), median over "
        "seeds; Pyro's time over simfer's, wall (CPU); "
        "relative error: max over the designs, median (worst) over seeds; argmax: seeds "
        "whose argmax is exactly the analytic Δ = 0.20.",
        "",
        "| estimator | N | M | seeds | time per curve | Pyro / simfer | max rel. error "
        "| argmax exact |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, library, n, m, seeds in configs:
        cells = [by_key.get(f"lg/{library}/{n}/{m}/{s}") for s in range(seeds)]
        cells = [c for c in cells if c is not None]
        if not cells:
            lines.append(f"| {label} | {n} | {m} | 0 | not run | — | — | — |")
            continue
        seconds = statistics.median(c["seconds"] for c in cells)
        cpu = statistics.median(c["cpu_seconds"] for c in cells)
        errors = [c["max_rel_error"] for c in cells]
        speed = "—"
        if pyro_time and library != "pyro":
            speed = f"{pyro_time / seconds:.0f}× ({pyro_cpu / cpu:.0f}×)"
        lines.append(
            f"| {label} | {n} | {m} | {len(cells)} | {fmt(seconds)} s ({fmt(cpu)} s) | "
            f"{speed} | "
            f"{statistics.median(errors):.2%} ({max(errors):.2%}) | "
            f"{sum(c['argmax_exact'] for c in cells)}/{len(cells)} |"
        )
    lines += [
        "",
        f"Targets: ≥ 30× Pyro's speed at equal N, M; within 2 % of the analytic EIG at every "
        f"design; argmax exact in ≥ 19/20 seeds within Pyro's wall time at N = M = 2000. "
        f"Pyro ran {len(pyro_cells)} seed(s) (`--pyro-seeds`; about "
        f"{fmt(pyro_time)} s each here).",
    ]
    weinberg = by_key.get(f"weinberg/{args.weinberg_n}/{args.weinberg_n}/0")
    if weinberg is not None:
        curve = weinberg["eig"]
        shown = [20.0, 35.0, 50.0, 70.0, 80.0, 85.0, 90.0, 91.1876, 95.0, 100.0, 110.0, 130.0]
        picks = [
            min(range(len(curve)), key=lambda i, e=e: abs(weinberg["energies"][i] - e))
            for e in shown
        ]
        lines += [
            "",
            f"`WeinbergAngle` (sin²θ_W ~ U(0.15, 0.35), 100 events per experiment): exact NMC "
            f"at N = M = {args.weinberg_n} over {len(curve)} energies in "
            f"{fmt(weinberg['seconds'])} s; best √s = {weinberg['best']:.1f} GeV.",
            "",
            "| √s [GeV] | " + " | ".join(f"{weinberg['energies'][i]:.1f}" for i in picks) + " |",
            "| --- |" + " --- |" * len(picks),
            "| EIG [nats] | "
            + " | ".join(f"{curve[i]:.3f} ± {weinberg['stderr'][i]:.3f}" for i in picks)
            + " |",
        ]
    if failed:
        lines += ["", f"Failed cells (see the JSON lines): {', '.join(failed)}."]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="simfer seeds at N = M = 2000")
    parser.add_argument("--pyro-seeds", type=int, default=20, help="Pyro seeds (~35 s each)")
    parser.add_argument("--big-n", type=int, default=30_000, help="simfer's larger N")
    parser.add_argument("--big-m", type=int, default=3_000, help="simfer's larger M")
    parser.add_argument("--big-seeds", type=int, default=20)
    parser.add_argument("--weinberg-n", type=int, default=500, help="N = M on WeinbergAngle")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both libraries")
    parser.add_argument("--fresh", action="store_true", help="forget earlier cells")
    parser.add_argument("--jsonl", default=str(ROOT / "benchmarks" / "results" / "design.jsonl"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = JsonLines(args.jsonl)
    if args.fresh and log.path.exists():
        log.path.unlink()
    done = {r["cell"] for r in log.rows() if "error" not in r and "cell" in r}
    meta = {**run_meta("design.py", argv, args.threads, "pyro-ppl"), "status": ""}
    exact = SIM.analytic_eig(DESIGNS)
    t0 = time.perf_counter()

    # untimed first calls, so no timing includes one-off costs
    simfer_curve(50, 50, 0, torch.float32)
    with torch.random.fork_rng(devices=[]):
        nmc_eig(pyro_model, DESIGNS[:1], ["x"], ["theta"], N=50, M=50)

    def timed(curve_fn):
        def work():
            start, cpu = time.perf_counter(), time.process_time()
            curve = curve_fn()
            return {
                "seconds": time.perf_counter() - start,
                "cpu_seconds": time.process_time() - cpu,
                **scores(curve, exact),
            }

        return work

    # Pyro and simfer at equal N = M alternate seed by seed, so that both see the same
    # load on a shared machine; then simfer in float64 and at the larger N, M.
    plan = []
    for seed in range(max(args.seeds, args.pyro_seeds)):
        if seed < args.seeds:
            plan.append(("simfer-f32", 2000, 2000, seed, torch.float32))
        if seed < args.pyro_seeds:
            plan.append(("pyro", 2000, 2000, seed, None))
    plan += [("simfer-f64", 2000, 2000, seed, torch.float64) for seed in range(args.seeds)]
    plan += [
        ("simfer-f32", args.big_n, args.big_m, seed, torch.float32)
        for seed in range(args.big_seeds)
    ]
    reused = 0
    for library, n, m, seed, dtype in plan:
        if library == "pyro":
            work = timed(lambda s=seed: pyro_curve(2000, 2000, s))
        else:
            work = timed(lambda n=n, m=m, s=seed, t=dtype: simfer_curve(n, m, s, t))
        reused += run_cell(log, done, f"lg/{library}/{n}/{m}/{seed}", work) is None

    def weinberg():
        sim = WeinbergAngle(n_events=100)
        start = time.perf_counter()
        n = args.weinberg_n
        result = simfer.design.eig(
            sim, sim.prior(), ENERGIES, n_outer=n, n_inner=n, seed=0, progress=False
        )
        return {
            "seconds": time.perf_counter() - start,
            "energies": ENERGIES.tolist(),
            "eig": result.eig.tolist(),
            "stderr": result.stderr.tolist(),
            "lower": result.lower.tolist(),
            "best": float(result.best()[0]),
            "notes": result.notes,
        }

    reused += (
        run_cell(log, done, f"weinberg/{args.weinberg_n}/{args.weinberg_n}/0", weinberg) is None
    )
    meta["wall_minutes"] = (time.perf_counter() - t0) / 60
    if reused:
        meta["status"] = f" in this run; {reused} cells reused from {log.path.name}"
    print()
    print(render(log.rows(), meta, args))


if __name__ == "__main__":
    main()
