"""MCMC on the same posterior: simfer's samplers against sbi's, in effective samples per second.

Every sampler gets the same unnormalised log posterior, a simfer `Posterior.log_prob`
(an exact likelihood, or a trained NLE surrogate), and draws the same number of samples
with the same number of chains and warm-up sweeps:

* simfer ``slice`` with its default moves (``mixed``: a coordinate sweep and a
  differential ensemble move per sweep), and with each kind of move alone;
* sbi 0.27 ``MCMCPosterior(potential_fn, method="slice_np_vectorized")``, its vectorised
  coordinate-wise slice sampler, with the potential wrapped as sbi expects.

Targets: GaussianLinear (10-d, one observation, exact likelihood; analytic posterior),
SLCP (5-d, four modes, exact likelihood), TwoMoons through a simfer NLE trained on 5000
simulations (the same surrogate for both tools).  Reported per sampler: wall time, the
minimum over θ's coordinates of the bulk effective sample size (split chains, Geyer's
initial monotone sequence: ``simfer.inference.effective_sample_size``, applied to both
tools' chains), ESS per second, the largest split R̂, and an accuracy check (C2ST against
the analytic posterior, or against the other tool's draws).

    .venv/bin/python benchmarks/sampling.py            # writes docs/benchmarks.md's table
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import simfer  # noqa: E402
from benchmarks._common import (  # noqa: E402
    library_versions,
    machine,
    run_header,
    write_markdown,
)
from simfer.diagnostics import c2st  # noqa: E402
from simfer.inference import (  # noqa: E402
    effective_sample_size,
    posterior_from_likelihood,
    split_r_hat,  # noqa: E402
)
from simulators import SLCP, GaussianLinear, TwoMoons  # noqa: E402

N_C2ST = 1000  # draws per side in the accuracy check (random subsets of the draws)


def targets(quick: bool):
    """(name, simfer Posterior, analytic reference or None) for each benchmark target."""
    gaussian = GaussianLinear(dim=10)
    x = gaussian.simulate(torch.full((1, 10), 0.1), seed=1)
    yield (
        "GaussianLinear 10-d (exact)",
        posterior_from_likelihood(gaussian.log_likelihood, gaussian.prior(), x[0]),
        gaussian.posterior(x),
    )
    slcp = SLCP()
    x = slcp.simulate(torch.tensor([[0.7, -2.9, -1.0, -0.9, 0.6]]), seed=2)
    yield "SLCP (exact)", posterior_from_likelihood(slcp.log_likelihood, slcp.prior(), x[0]), None
    moons = TwoMoons()
    data = simfer.simulate(moons, moons.prior(), 5000, seed=0, executor="serial", progress=False)
    nle = simfer.LikelihoodEstimator(
        "nle", progress=False, seed=0, max_epochs=10 if quick else 60
    ).fit(data)
    x = moons.simulate(torch.zeros(1, 2), seed=3)
    yield "TwoMoons (NLE surrogate)", nle.posterior(moons.prior(), x[0]), None


def run_simfer(posterior, n, chains, warmup, move):
    start = time.perf_counter()
    draws = posterior.sample(n, seed=0, n_chains=chains, warmup=warmup, move=move)
    seconds = time.perf_counter() - start
    per_chain = draws.reshape(-1, chains, draws.shape[-1]).transpose(0, 1)  # draw-major
    return draws, per_chain, seconds


def run_sbi(posterior, n, chains, warmup):
    from sbi.inference import MCMCPosterior

    def potential(theta, x_o=None, track_gradients=False):
        return posterior.log_prob(torch.as_tensor(theta, dtype=torch.float32))

    sampler = MCMCPosterior(
        potential,
        proposal=posterior.prior,
        method="slice_np_vectorized",
        num_chains=chains,
        warmup_steps=warmup,
        init_strategy="resample",
    )
    start = time.perf_counter()
    torch.manual_seed(0)
    draws = sampler.sample((n,), x=torch.zeros(1), show_progress_bars=False)
    seconds = time.perf_counter() - start
    per_chain = draws.reshape(chains, -1, draws.shape[-1])  # sbi returns chain-major
    return draws, per_chain, seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer draws, short training")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small batches: one thread is fastest, and leaves a core free
    n, chains, warmup = (2000, 40, 50) if args.quick else (10_000, 100, 200)
    rows, began = [], time.perf_counter()
    for name, posterior, exact in targets(args.quick):
        results = {}
        samplers = [
            ("simfer slice (mixed, default)", run_simfer, {"move": "mixed"}),
            ("simfer slice (differential)", run_simfer, {"move": "differential"}),
            ("simfer slice (coordinate)", run_simfer, {"move": "coordinate"}),
            ("sbi slice_np_vectorized", run_sbi, {}),
        ]
        for label, run, extra in samplers:
            draws, per_chain, seconds = run(posterior, n, chains, warmup, **extra)
            ess = float(effective_sample_size(per_chain).min())
            r_hat = float(split_r_hat(per_chain).max())
            results[label] = draws
            if exact is not None:
                check = c2st(exact.sample((N_C2ST,)), draws[torch.randperm(n)[:N_C2ST]], seed=0)
                accuracy = f"C2ST vs analytic {check:.3f}"
            elif label.startswith("sbi"):
                reference = results["simfer slice (mixed, default)"][torch.randperm(n)[:N_C2ST]]
                check = c2st(reference, draws[torch.randperm(n)[:N_C2ST]], seed=0)
                accuracy = f"C2ST vs simfer mixed {check:.3f}"
            else:
                accuracy = "—"
            rows.append((name, label, seconds, ess, ess / seconds, r_hat, accuracy))
            print(
                f"{name:28s} {label:28s} {seconds:7.1f} s  ESS {ess:7.0f}  "
                f"ESS/s {ess / seconds:7.1f}  R̂ {r_hat:.3f}  {accuracy}",
                flush=True,
            )
    meta = {
        "command": "python benchmarks/sampling.py" + (" --quick" if args.quick else ""),
        "date": f"{datetime.now():%Y-%m-%d %H:%M}",
        "machine": machine(torch.get_num_threads()),
        "versions": library_versions("sbi"),
        "wall_minutes": (time.perf_counter() - began) / 60,
        "status": "",
    }
    lines = [
        *run_header(meta),
        "",
        f"{n} draws from {chains} chains after {warmup} warm-up sweeps, every sampler on the same "
        "log posterior. ESS: minimum over θ's coordinates (split chains, Geyer), same estimator "
        "for both tools.",
        "",
        "| target | sampler | wall time | ESS | ESS / s | max R̂ | accuracy |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, label, seconds, ess, rate, r_hat, accuracy in rows:
        lines.append(
            f"| {name} | {label} | {seconds:.1f} s | {ess:.0f} | {rate:.1f} | {r_hat:.3f} "
            f"| {accuracy} |"
        )
    lines += ["", "Ratios (ESS/s of simfer's default slice / sbi slice_np_vectorized):", ""]
    for name in dict.fromkeys(r[0] for r in rows):
        rate = {r[1]: r[4] for r in rows if r[0] == name}
        ratio = rate["simfer slice (mixed, default)"] / rate["sbi slice_np_vectorized"]
        lines.append(f"- {name}: {ratio:.2f}×")
    path = Path(args.out)
    write_markdown(path, "\n".join(lines), "sampling", "Sampling: simfer vs sbi MCMC")
    print(f"table written to {path}")


if __name__ == "__main__":
    main()
