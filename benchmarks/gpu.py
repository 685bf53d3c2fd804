r"""Every GPU path of simfer in one script, with its figures against the same code on a CPU.

Run it wherever a CUDA device is present (CI has none and never runs it); on a machine
without one, ``--device cpu --small`` runs every path at small sizes, which is how the
script itself is tested.  Each measurement is one cell, appended to a JSON-lines file as it
finishes and rendered as a table between the ``gpu`` markers of docs/benchmarks.md; a
rerun skips the finished cells (``--fresh`` starts over).

Paths and figures (``device`` is the GPU; every row is also run on ``--baseline`` = cpu):

* training throughput: rows per second of one epoch (after one warm-up epoch) of NPE
  (NSF), NLE (NSF) and ALICES on ``--train-rows`` GaltonBoard simulations with gold
  (throughput, not convergence: two epochs each, the same batches on both devices);
* NPE direct sampling: posterior draws per second (goal ≥ 10⁶/s on a GPU), 10⁶ draws of a
  2-d TwoMoons NPE;
* many-chain slice sampling: effective samples per second of an NLE posterior with
  ``--chains`` (≥ 1000) chains;
* EIG over many designs: seconds for `simfer.design.eig` of `LinearGaussianDesign` (exact
  likelihood, N = M = 2000) over ``--designs`` candidate designs;
* sbi on the same device (if installed): NPE training throughput and draws per second;
* portability: every estimator trained on the device, saved, loaded on the CPU, gives the
  same outputs (max |difference| of log-densities / log-ratios on fixed inputs); NPE, NLE,
  ALICES, SALLY, NRE-B, a bounded NPE ensemble and FMPE (`PORTABLE`).

    .venv/bin/python benchmarks/gpu.py                            # on a GPU machine
    .venv/bin/python benchmarks/gpu.py --device cpu --small \
        --results /tmp/gpu.jsonl --markdown /tmp/gpu.md           # the paths on a CPU
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

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
    write_markdown,
)
from simulators import GaltonBoard, LinearGaussianDesign, TwoMoons  # noqa: E402

NAME, HEADING = "gpu", "GPU: every path against the same code on a CPU"


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, function):
    """(result, seconds) of ``function()`` with the device's queue drained around it."""
    synchronize(device)
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return result, time.perf_counter() - start


# -- the measurements: each returns the row's figures --------------------------------------------
def training_throughput(device: str, args, data) -> dict:
    rows = {}
    makers = {
        "NPE": lambda **s: simfer.PosteriorEstimator("nsf", **s),
        "NLE": lambda **s: simfer.LikelihoodEstimator("nle", **s),
        "ALICES": lambda **s: simfer.RatioEstimator("alices", **s),
    }
    for name, make in makers.items():
        settings = dict(max_epochs=2, batch_size=args.batch, device=device, progress=False)

        def fit(make=make, settings=settings):
            return make(**settings).fit(data)

        estimator, seconds = timed(device, fit)
        n_train = estimator.dims.n_train if estimator.dims.n_train else len(data)
        # the first epoch pays the warm-up (kernel selection, allocator); report both
        rows[name] = {"rows_per_second": 2 * n_train / seconds, "seconds_two_epochs": seconds}
    return rows


def npe_sampling(device: str, args) -> dict:
    moons = TwoMoons()
    prior = moons.prior()
    data = simfer.simulate(moons, prior, args.npe_rows, seed=1, executor="serial", progress=False)
    npe = simfer.PosteriorEstimator("nsf", max_epochs=3, device=device, progress=False)
    npe.fit(data, prior)
    x_obs = data.x[0]
    npe.sample(1000, x=x_obs, seed=0)  # warm-up
    draws, seconds = timed(device, lambda: npe.sample(args.draws, x=x_obs, seed=1))
    return {"draws": len(draws), "draws_per_second": len(draws) / seconds, "seconds": seconds}


def slice_sampling(device: str, args, data) -> dict:
    board = GaltonBoard()
    prior = board.prior()
    nle = simfer.LikelihoodEstimator("nle", max_epochs=3, device=device, progress=False)
    nle.fit(data, prior)
    x_obs = board.simulate(torch.full((20, 1), 0.3), seed=3)
    posterior = nle.posterior(prior, x_obs)
    _, seconds = timed(
        device,
        lambda: posterior.sample(
            args.chains * 10, seed=2, n_chains=args.chains, warmup=args.warmup
        ),
    )
    info = posterior.diagnostics
    ess = info.get("ess_min") or float("nan")
    return {
        "chains": args.chains,
        "ess_min": ess,
        "ess_per_second": ess / seconds,
        "seconds": seconds,
    }


def eig_over_designs(device: str, args) -> dict:
    sim = LinearGaussianDesign()
    prior = sim.prior()
    designs = torch.linspace(0.05, 1.0, args.designs)
    result, seconds = timed(
        device,
        lambda: simfer.design.eig(
            sim,
            prior,
            designs,
            n_outer=args.eig_n,
            n_inner=args.eig_n,
            seed=0,
            device=device,
            progress=False,
        ),
    )
    exact = torch.stack([sim.analytic_eig(d[None]) for d in designs[:, None]]).reshape(-1)
    error = (result.eig.cpu().double() - exact.double()).abs().max()
    return {"designs": args.designs, "seconds": seconds, "max_abs_error_vs_analytic": float(error)}


def sbi_npe(device: str, args, data) -> dict:
    try:
        from sbi.inference import NPE
        from sbi.neural_nets import posterior_nn
    except ImportError:
        return {"error": "sbi not installed"}
    moons = TwoMoons()
    prior = moons.prior(device=device) if "device" in moons.prior.__code__.co_varnames else None
    if prior is None:
        return {"error": "TwoMoons.prior takes no device"}
    trainer = NPE(
        prior=prior,
        density_estimator=posterior_nn(model="nsf"),
        device=device,
        show_progress_bars=False,
        tracker=NullTracker(),
    )
    moons_data = simfer.simulate(
        moons, moons.prior(), args.npe_rows, seed=1, executor="serial", progress=False
    )
    trainer.append_simulations(moons_data.theta.to(device), moons_data.x.to(device))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, seconds = timed(
            device,
            lambda: trainer.train(
                training_batch_size=args.batch, max_num_epochs=1, show_train_summary=False
            ),
        )
        posterior = trainer.build_posterior()
        x_obs = moons_data.x[0].to(device)
        posterior.sample((1000,), x=x_obs, show_progress_bars=False)
        draws, sample_seconds = timed(
            device, lambda: posterior.sample((args.draws,), x=x_obs, show_progress_bars=False)
        )
    return {
        "rows_per_second": 2 * 0.9 * args.npe_rows / seconds,  # sbi counts epochs from 0
        "draws_per_second": len(draws) / sample_seconds,
    }


#: the estimators `portability` trains on the device and reloads on the CPU
PORTABLE = ("NPE", "NLE", "ALICES", "SALLY", "NRE-B", "NPE-3 bounded", "FMPE")


def portability(device: str, args, data) -> dict:
    """Train on ``device``, save, load on the CPU: the same outputs on fixed inputs."""
    board = GaltonBoard()
    prior = board.prior()
    x = board.simulate(torch.zeros(64, 1), seed=5)
    theta = torch.linspace(-0.9, 0.9, 64)[:, None]
    differences = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, estimator, output in (
            (
                "NPE",
                simfer.PosteriorEstimator("nsf", max_epochs=1, device=device, progress=False),
                lambda e: e.log_prob(theta=theta, x=x),
            ),
            (
                "NLE",
                simfer.LikelihoodEstimator("nle", max_epochs=1, device=device, progress=False),
                lambda e: e.log_prob(x=x, theta=theta),
            ),
            (
                "ALICES",
                simfer.RatioEstimator("alices", max_epochs=1, device=device, progress=False),
                lambda e: e.log_ratio(x=x, theta=theta, reference=e.theta_ref),
            ),
            (
                "SALLY",
                simfer.ScoreEstimator(max_epochs=1, device=device, progress=False),
                lambda e: e.score(x=x),
            ),
            (
                "NRE-B",
                simfer.RatioEstimator("nre_b", max_epochs=1, device=device, progress=False),
                lambda e: e.log_ratio(x=x, theta=theta, reference=[0.0]),
            ),
            (
                "NPE-3 bounded",
                simfer.PosteriorEstimator(
                    "nsf", n_ensemble=3, bounded=True, max_epochs=1, device=device, progress=False
                ),
                lambda e: e.log_prob(theta=theta, x=x),
            ),
            (
                "FMPE",
                simfer.PosteriorEstimator(
                    method="fmpe", max_epochs=1, device=device, progress=False
                ),
                lambda e: e.log_prob(theta=theta, x=x),
            ),
        ):
            estimator.fit(data, prior)
            on_device = output(estimator).detach().cpu()
            path = Path(folder) / f"{name}.pt"
            estimator.save(path)
            on_cpu = output(simfer.load(path, device="cpu")).detach()
            differences[name] = float((on_device - on_cpu).abs().max())
    return {"max_abs_difference": differences}


# -- the table ------------------------------------------------------------------------------------
def render(rows: list[dict], meta: dict) -> str:
    by = {(r["path"], r["device"]): r for r in rows}
    devices = list(dict.fromkeys(r["device"] for r in rows))
    lines = [
        *run_header(meta),
        "",
        "| path | figure | " + " | ".join(devices) + " |",
        "| --- | --- |" + " --- |" * len(devices),
    ]

    def cell(path, device, get):
        row = by.get((path, device))
        if row is None:
            return "not run"
        if "error" in row:
            return "failed"
        try:
            return fmt(get(row))
        except (KeyError, TypeError):
            return "—"

    figures = [
        *[
            ("training", f"{n} rows/s", lambda r, n=n: r["figures"][n]["rows_per_second"])
            for n in ("NPE", "NLE", "ALICES")
        ],
        ("npe_sampling", "NPE draws/s", lambda r: r["figures"]["draws_per_second"]),
        ("slice", "slice ESS/s", lambda r: r["figures"]["ess_per_second"]),
        ("eig", "EIG seconds", lambda r: r["figures"]["seconds"]),
        ("eig", "EIG max error vs analytic", lambda r: r["figures"]["max_abs_error_vs_analytic"]),
        ("sbi", "sbi NPE rows/s", lambda r: r["figures"]["rows_per_second"]),
        ("sbi", "sbi NPE draws/s", lambda r: r["figures"]["draws_per_second"]),
        *[
            (
                "portability",
                f"{n} save→CPU load max |Δ|",
                lambda r, n=n: r["figures"]["max_abs_difference"][n],
            )
            for n in PORTABLE
        ],
    ]
    for path, label, get in figures:
        lines.append(
            f"| {path} | {label} | " + " | ".join(cell(path, d, get) for d in devices) + " |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--baseline", default="cpu", help="the device every row is compared to")
    parser.add_argument("--small", action="store_true", help="small sizes: test the paths")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "gpu.jsonl"))
    parser.add_argument("--markdown", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)
    small = args.small
    args.train_rows = 4_000 if small else 1_000_000
    args.npe_rows = 2_000 if small else 100_000
    args.batch = 256 if small else 4096
    args.draws = 20_000 if small else 1_000_000
    args.chains = 100 if small else 2000
    args.warmup = 20 if small else 100
    args.designs = 16 if small else 1024
    args.eig_n = 200 if small else 2000
    torch.set_num_threads(args.threads)
    log = JsonLines(args.results)
    if args.fresh and log.path.exists():
        log.path.unlink()
    rows = [r for r in log.rows() if r.get("small") == small]
    done = {(r["path"], r["device"]) for r in rows if "error" not in r}
    meta = {
        **run_meta("gpu.py", argv, args.threads, "sbi"),
        "status": " (running)",
        "wall_minutes": 0.0,
    }
    if torch.cuda.is_available():
        meta["machine"] += f", {torch.cuda.get_device_name(0)}"
    t0 = time.perf_counter()
    board = GaltonBoard()
    data = simfer.simulate(
        board,
        board.prior(),
        args.train_rows,
        gold=True,
        theta_ref=[0.0],
        seed=0,
        executor="serial",
        progress=False,
    )
    paths = {
        "training": lambda d: training_throughput(d, args, data),
        "npe_sampling": lambda d: npe_sampling(d, args),
        "slice": lambda d: slice_sampling(d, args, data),
        "eig": lambda d: eig_over_designs(d, args),
        "sbi": lambda d: sbi_npe(d, args, data),
        "portability": lambda d: portability(d, args, data),
    }
    devices = list(dict.fromkeys([args.device, args.baseline]))
    for path, measure in paths.items():
        for device in devices:
            if (path, device) in done or (
                path == "portability" and device == "cpu" and args.device != "cpu"
            ):
                continue
            row = {"path": path, "device": device, "small": small}
            try:
                row["figures"] = measure(device)
                if "error" in row["figures"]:
                    row["error"] = row["figures"]["error"]
            except Exception as error:  # a failure is reported, never faked
                row["error"] = f"{type(error).__name__}: {error}"
            print(row, flush=True)
            log.append(row)
            rows.append(row)
            meta["wall_minutes"] = (time.perf_counter() - t0) / 60
            write_markdown(Path(args.markdown), render(rows, meta), NAME, HEADING)
    meta["status"] = ""
    write_markdown(Path(args.markdown), render(rows, meta), NAME, HEADING)
    print(render(rows, meta))
    failed = [r for r in rows if "error" in r and r["path"] != "sbi"]
    if failed:
        sys.exit(f"{len(failed)} GPU paths failed: " + "; ".join(r["error"] for r in failed))
    if not math.isfinite(meta["wall_minutes"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
