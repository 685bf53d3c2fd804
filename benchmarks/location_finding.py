r"""Location finding (Deep Adaptive Design's benchmark): simfer's greedy loop against random.

The model is `simulators.LocationFinding` with DAD's settings: K = 2 sources in the plane,
θ ∈ R^4 ~ N(0, I), y = log(0.1 + Σ_k 1/(10⁻⁴ + ‖θ_k − ξ‖²)) + N(0, 0.5²), T = ``--steps``
measurements per rollout.  A policy's score is its total EIG over the T designs, bracketed
by sPCE (lower) and sNMC (upper) with L = ``--inner`` contrastive θ fresh per rollout
(`simfer.design.sequential_bounds`, exact likelihood), over ``--rollouts`` rollouts.

Policies, all run on the same true θ per rollout, the same measurement noise ε_{r,t}
(y_t = μ(θ, ξ_t) + σ ε_{r,t}: common random numbers) and scored with the same contrastive θ,
so that their differences are paired comparisons:

* ``random``: ξ_t ~ N(0, I₂) independently (DAD's ``RandomDesignBaseline``);
* ``greedy``: at each step the design with the largest one-step EIG under the current
  posterior, from the exact likelihood.  The posterior is ``--particles`` weighted particles
  (sequential Monte Carlo: after each outcome the weights are raised by adaptive tempering,
  each stage bringing the effective sample size down to half, then resampled and moved by
  ``--moves`` random-walk Metropolis steps on the exact tempered posterior, with a step size
  adapted per rollout).  The EIG of a candidate ξ is the nested estimate over the particles,

      EIG(ξ) ≈ (1/n) Σ_i [ log p(y_i|θ_i, ξ) − log Σ_m w_m p(y_i|θ_m, ξ) ],

  with n = ``--outer`` particles θ_i drawn by weight, y_i = μ(θ_i, ξ) + σ ε_i and the same
  ε_i for every candidate (common random numbers, so candidates are compared on the same
  noise).  Candidates: a ``--grid`` × ``--grid`` grid over [−3, 3]² and
  ``--source-candidates`` source positions of particles drawn by weight (where the signal,
  and the information, is); then two zoom stages of ``--refine`` points around the best
  (spread 0.3 and 0.1).  Greedy is myopic: each step is optimal for one more measurement.

(A greedy loop on a likelihood surrogate trained on simulations only is not here: its EIG
needs the surrogate at every (outcome, particle) pair, ~10⁷ network evaluations per step
and rollout at these sizes, where the exact likelihood is one subtraction.)

Published (DAD, Foster et al. ICML 2021, L = 5·10⁵, 2048 rollouts, T = 30): random
designs ≈ 8.3 nats, DAD's trained policy ≈ 11.2; learned-static and greedy variational
baselines lie between.  L defaults to DAD's 5·10⁵: sPCE ≤ log(L + 1), which is 11.5 at
L = 10⁵, below what a good policy gathers in 30 measurements.

Cost (one torch thread of a shared 2-core CPU, process time): a greedy rollout of T = 30
at the default sizes takes ~1.1 s; the bounds take ~0.05 s per rollout at L = 10⁵ and
~0.25 s at L = 5·10⁵, per policy.  2048 rollouts: ~40 min (L = 10⁵) to ~55 min (L = 5·10⁵)
of CPU time.  On a GPU pass ``--chunk 256`` or more (rollouts batched; blocks of 2^26
elements).

Every (policy, chunk of ``--chunk`` rollouts) is one cell appended to a JSON-lines file
with its per-rollout terms, and skipped when the script runs again with the same settings
(``--fresh`` starts over); the table is written between markers in ``--markdown``.

    .venv/bin/python benchmarks/location_finding.py --device cuda          # the full run
    .venv/bin/python benchmarks/location_finding.py --rollouts 4 --steps 3 --inner 1000 \
        --results /tmp/lf.jsonl --markdown /tmp/lf.md                      # a smoke test
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import JsonLines, fmt, run_header, run_meta, write_markdown  # noqa: E402
from simfer.design import sequential_bounds  # noqa: E402
from simfer.design.nmc import logsumexp_last  # noqa: E402
from simulators import LocationFinding  # noqa: E402

POLICIES = ("random", "greedy")
PUBLISHED = {"random": "≈ 8.3", "greedy": "—", "DAD": "≈ 11.2"}
NAME = "location-finding"


@dataclass
class GreedySettings:
    """Sizes of the greedy policy (see the module docstring)."""

    particles: int = 512
    outer: int = 128
    grid: int = 9
    source_candidates: int = 48
    refine: int = 16
    moves: int = 5
    block: int = 2**22  # elements of one [pairs, outer, particles] EIG block


# -- the environment ----------------------------------------------------------------------
def true_theta(sim: LocationFinding, chunk: int, size: int, seed: int, device) -> Tensor:
    """The hidden θ ``[size, 4]`` of a chunk's rollouts (the same for every policy)."""
    generator = torch.Generator(device).manual_seed(1_000_003 * seed + 2 * chunk)
    return sim.prior_std * torch.randn(size, sim.theta_dim, generator=generator, device=device)


def nature_noise(chunk: int, size: int, steps: int, seed: int, device) -> Tensor:
    """ε ``[size, steps]`` of the measurements (the same for every policy)."""
    generator = torch.Generator(device).manual_seed(1_000_003 * seed + 2 * chunk + 1)
    return torch.randn(size, steps, generator=generator, device=device)


def measure(sim: LocationFinding, theta: Tensor, design: Tensor, noise: Tensor) -> Tensor:
    """y = μ(θ, ξ) + σ ε ``[R]`` for θ ``[R, 4]``, ξ ``[R, 2]``, ε ``[R]``."""
    return sim.mean_signal(theta, design) + sim.noise_std * noise


# -- policies -----------------------------------------------------------------------------
def run_random(sim, theta, noise, generator) -> tuple[Tensor, Tensor]:
    """ξ_t ~ N(0, I) for every rollout and step: designs ``[R, T, 2]``, outcomes ``[R, T]``."""
    designs = torch.randn(*noise.shape, sim.design_dim, generator=generator, device=noise.device)
    outcomes = measure(sim, theta[:, None, :], designs, noise)
    return designs, outcomes


class ParticleBelief:
    """p(θ | h_t) as weighted particles ``[R, N, 4]`` for R rollouts at once (SMC)."""

    def __init__(self, sim, prior, n_rollouts, settings, generator):
        self.sim, self.prior, self.settings, self.generator = sim, prior, settings, generator
        device = generator.device
        shape = (n_rollouts, settings.particles, sim.theta_dim)
        self.theta = sim.prior_std * torch.randn(shape, generator=generator, device=device)
        self.log_w = torch.zeros(shape[:2], device=device)
        self.step = torch.full((n_rollouts,), 0.5, device=device)  # RW scale, per rollout
        self.designs: list[Tensor] = []
        self.outcomes: list[Tensor] = []

    def weights(self) -> Tensor:
        return torch.softmax(self.log_w, -1)

    def log_target(self, theta: Tensor, beta: Tensor, new_log_lik_of) -> Tensor:
        """log p(θ) + Σ_{s<t} log p(y_s|θ) + β log p(y_t|θ) ``[R, N]``."""
        total = self.prior.log_prob(theta)
        for design, y in zip(self.designs[:-1], self.outcomes[:-1], strict=True):
            total = total + self.sim.log_density(y[:, None], self.sim.mean_signal(theta, design))
        return total + beta[:, None] * new_log_lik_of(theta)

    def observe(self, design: Tensor, y: Tensor) -> None:
        """Add (ξ_t ``[R, 2]``, y_t ``[R]``): adaptive tempering, resampling, moves."""
        self.designs.append(design[:, None, :])
        self.outcomes.append(y)

        def new_log_lik_of(theta: Tensor) -> Tensor:
            return self.sim.log_density(y[:, None], self.sim.mean_signal(theta, design[:, None]))

        beta = torch.zeros_like(y)
        log_lik = new_log_lik_of(self.theta)
        for _stage in range(50):
            todo = beta < 1.0
            if not bool(todo.any()):
                break
            delta, limited = _tempering_step(self.log_w, log_lik, 1.0 - beta)
            delta = torch.where(todo, delta, 0.0)
            self.log_w = self.log_w + delta[:, None] * log_lik
            beta = torch.where(todo & ~limited, 1.0, (beta + delta).clamp(max=1.0))
            resample = (limited | (_ess(self.log_w) < 0.5 * self.settings.particles)) & todo
            if bool(resample.any()):
                self._resample(resample)
                self._move(resample, beta, new_log_lik_of)
                log_lik = new_log_lik_of(self.theta)
        else:  # the last stage goes straight to β = 1
            self.log_w = self.log_w + (1.0 - beta)[:, None] * log_lik

    def _resample(self, rows: Tensor) -> None:
        """Multinomial resampling of the rollouts in ``rows`` (weights reset to equal)."""
        index = torch.multinomial(
            self.weights()[rows],
            self.settings.particles,
            replacement=True,
            generator=self.generator,
        )
        chosen = torch.gather(
            self.theta[rows], 1, index[..., None].expand(-1, -1, self.sim.theta_dim)
        )
        self.theta[rows] = chosen
        self.log_w[rows] = 0.0

    def _move(self, rows: Tensor, beta: Tensor, new_log_lik_of) -> None:
        """Random-walk Metropolis on the tempered posterior for the rollouts in ``rows``;
        the step is (scale × the particles' per-coordinate std), the scale adapted per
        rollout towards an acceptance of about 0.3."""
        mask = rows[:, None]
        current = self.log_target(self.theta, beta, new_log_lik_of)
        spread = self.theta.std(1, keepdim=True).clamp(min=1e-3)  # [R, 1, 4]
        for _ in range(self.settings.moves):
            noise = torch.randn(
                self.theta.shape, generator=self.generator, device=self.theta.device
            )
            proposal = self.theta + self.step[:, None, None] * spread * noise
            proposed = self.log_target(proposal, beta, new_log_lik_of)
            u = torch.rand(current.shape, generator=self.generator, device=current.device)
            accept = (u.log() < proposed - current) & mask
            self.theta = torch.where(accept[..., None], proposal, self.theta)
            current = torch.where(accept, proposed, current)
            rate = accept.float().mean(1)
            adapt = torch.exp(2.0 * (rate - 0.3)).clamp(0.5, 2.0)
            self.step = torch.where(rows, (self.step * adapt).clamp(1e-3, 3.0), self.step)


def _ess(log_w: Tensor) -> Tensor:
    """Effective sample size 1/Σ w² ``[R]`` of log-weights ``[R, N]``."""
    return torch.exp(2 * torch.logsumexp(log_w, -1) - torch.logsumexp(2 * log_w, -1))


def _tempering_step(log_w: Tensor, log_lik: Tensor, room: Tensor) -> tuple[Tensor, Tensor]:
    """Per rollout the largest Δ ≤ ``room`` with ESS(log_w + Δ·log_lik) ≥ N/2 (bisection),
    and whether it is less than ``room`` (the stage stops short of β = 1)."""
    target = 0.5 * log_w.shape[-1]
    full = _ess(log_w + room[:, None] * log_lik) >= target
    low, high = torch.zeros_like(room), room.clone()
    for _ in range(30):
        middle = 0.5 * (low + high)
        ok = _ess(log_w + middle[:, None] * log_lik) >= target
        low, high = torch.where(ok, middle, low), torch.where(ok, high, middle)
    return torch.where(full, room, low.clamp(min=1e-4).minimum(room)), ~full


def particle_eig(
    sim, belief: ParticleBelief, candidates: Tensor, outer: Tensor, eps: Tensor, block: int
) -> Tensor:
    """The nested EIG estimate ``[R, C]`` of candidates ``[R, C, 2]`` under the particles,
    with outer particle indices ``[R, n]`` and their noise ε ``[R, n]`` shared by all
    candidates (common random numbers)."""
    n_rollouts, n_candidates = candidates.shape[:2]
    n_particles, n_outer = belief.theta.shape[1], outer.shape[1]
    log_w = torch.log_softmax(belief.log_w, -1)  # [R, N]
    mean = sim.mean_signal(belief.theta[:, None], candidates[:, :, None])  # [R, C, N]
    mean_outer = torch.gather(mean, 2, outer[:, None, :].expand(-1, n_candidates, -1))
    y = mean_outer + sim.noise_std * eps[:, None, :]  # [R, C, n]
    result = torch.empty(n_rollouts, n_candidates, device=candidates.device)
    pairs = max(1, block // (n_outer * n_particles))
    flat_mean, flat_y = mean.reshape(-1, n_particles), y.reshape(-1, n_outer)
    flat_log_w = log_w[:, None].expand(-1, n_candidates, -1).reshape(-1, n_particles)
    flat_eps = eps[:, None].expand(-1, n_candidates, -1).reshape(-1, n_outer)
    flat_result = result.view(-1)
    for a in range(0, flat_mean.shape[0], pairs):
        b = min(a + pairs, flat_mean.shape[0])
        # log w_m + log p(y_i|θ_m) (the Gaussian's constant cancels against log p(y_i|θ_i))
        matrix = flat_y[a:b, :, None] - flat_mean[a:b, None, :]
        matrix.mul_(1.0 / sim.noise_std).square_().mul_(-0.5).add_(flat_log_w[a:b, None, :])
        marginal = logsumexp_last(matrix, overwrite=True)  # [pairs, n]
        flat_result[a:b] = (-0.5 * flat_eps[a:b].square() - marginal).mean(-1)
    return result


def greedy_design(sim, belief: ParticleBelief, grid: Tensor, settings: GreedySettings) -> Tensor:
    """The candidate with the largest particle EIG ``[R, 2]``, after two zoom stages."""
    generator = belief.generator
    n_rollouts, device = belief.theta.shape[0], belief.theta.device
    weights = belief.weights()
    outer = torch.multinomial(weights, settings.outer, replacement=True, generator=generator)
    eps = torch.randn(n_rollouts, settings.outer, generator=generator, device=device)
    which = torch.multinomial(
        weights, settings.source_candidates, replacement=True, generator=generator
    )
    sources = belief.theta.unflatten(-1, (sim.n_sources, sim.space_dim))  # [R, N, K, 2]
    k = torch.randint(sim.n_sources, which.shape, generator=generator, device=device)
    picked = sources[torch.arange(n_rollouts, device=device)[:, None], which, k]  # [R, S, 2]
    candidates = torch.cat([grid.expand(n_rollouts, -1, -1), picked], 1)
    best = _best(sim, belief, candidates, outer, eps, settings)
    for spread in (0.3, 0.1):
        jitter = torch.randn(
            n_rollouts, settings.refine, sim.space_dim, generator=generator, device=device
        )
        local = torch.cat([best[:, None], best[:, None] + spread * jitter], 1)
        best = _best(sim, belief, local, outer, eps, settings)
    return best


def _best(sim, belief, candidates, outer, eps, settings) -> Tensor:
    values = particle_eig(sim, belief, candidates, outer, eps, settings.block)
    index = values.argmax(1)
    return candidates[torch.arange(candidates.shape[0], device=candidates.device), index]


def run_greedy(sim, prior, theta, noise, generator, settings) -> tuple[Tensor, Tensor]:
    """The greedy loop for every rollout at once: designs ``[R, T, 2]``, outcomes ``[R, T]``."""
    n_rollouts, steps = noise.shape
    axis = torch.linspace(-3.0, 3.0, settings.grid, device=noise.device)
    grid = torch.cartesian_prod(axis, axis)[None]  # [1, G², 2]
    belief = ParticleBelief(sim, prior, n_rollouts, settings, generator)
    designs, outcomes = [], []
    for t in range(steps):
        design = greedy_design(sim, belief, grid, settings)
        y = measure(sim, theta, design, noise[:, t])
        belief.observe(design, y)
        designs.append(design)
        outcomes.append(y)
    return torch.stack(designs, 1), torch.stack(outcomes, 1)


# -- cells and the table ------------------------------------------------------------------
def settings_key(args) -> dict:
    """What makes two cells comparable (a cell is reused only when these match)."""
    return {
        "steps": args.steps,
        "inner": args.inner,
        "chunk_size": args.chunk,
        "seed": args.seed,
        "particles": args.particles,
        "outer": args.outer,
        "grid": args.grid,
        "source_candidates": args.source_candidates,
        "refine": args.refine,
        "moves": args.moves,
    }


def run_cell(policy: str, chunk: int, size: int, args) -> dict:
    device = torch.device(args.device)
    sim = LocationFinding()
    prior = sim.prior(device)
    theta = true_theta(sim, chunk, size, args.seed, device)
    noise = nature_noise(chunk, size, args.steps, args.seed, device)
    generator = torch.Generator(device).manual_seed(7919 * args.seed + chunk)
    start = time.perf_counter()
    if policy == "random":
        designs, outcomes = run_random(sim, theta, noise, generator)
    else:
        settings = GreedySettings(
            particles=args.particles,
            outer=args.outer,
            grid=args.grid,
            source_candidates=args.source_candidates,
            refine=args.refine,
            moves=args.moves,
            block=args.max_memory,
        )
        designs, outcomes = run_greedy(sim, prior, theta, noise, generator, settings)
    policy_seconds = time.perf_counter() - start
    start = time.perf_counter()
    bounds = sequential_bounds(
        sim,
        prior,
        theta,
        designs,
        outcomes[..., None],
        n_inner=args.inner,
        seed=104_729 * args.seed + chunk,  # the same contrastive θ for every policy
        max_memory=args.max_memory,
        device=device,
    )
    return {
        "policy": policy,
        "chunk": chunk,
        "rollouts": size,
        **settings_key(args),
        "spce_terms": bounds.spce_terms.tolist(),
        "snmc_terms": bounds.snmc_terms.tolist(),
        "policy_seconds": policy_seconds,
        "eval_seconds": time.perf_counter() - start,
        "device": str(device),
        "mean_distance": float(
            (designs[:, :, None, :] - theta.view(size, 1, 2, 2)).norm(dim=-1).min(-1).values.mean()
        ),
    }


def _mean_se(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    se = statistics.stdev(finite) / math.sqrt(len(finite)) if len(finite) > 1 else math.nan
    return statistics.mean(finite), se


def table(rows: list[dict], args, meta: dict) -> str:
    key = settings_key(args)
    mine = [r for r in rows if all(r.get(k) == v for k, v in key.items())]
    by_policy = {
        p: sorted((r for r in mine if r["policy"] == p), key=lambda r: r["chunk"]) for p in POLICIES
    }
    lines = [
        *run_header(meta),
        "",
        f"Total EIG of T = {args.steps} designs [nats], lower (sPCE) and upper (sNMC) bounds with "
        f"L = {args.inner:g} contrastive samples per rollout; ± one standard error over rollouts. "
        f"Paired: the policy's sPCE minus random's on the same rollouts (same θ, noise and "
        f"contrastive samples).",
        "",
        "| policy | rollouts | sPCE (lower) | sNMC (upper) | paired vs random "
        "| mean distance design–nearest source | policy s / rollout "
        "| published (DAD, L = 5·10⁵) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    random_terms = {
        (r["chunk"], i): v for r in by_policy["random"] for i, v in enumerate(r["spce_terms"])
    }
    saturated = []
    for policy in POLICIES:
        cells = by_policy[policy]
        if not cells:
            continue
        spce = [v for r in cells for v in r["spce_terms"]]
        snmc = [v for r in cells for v in r["snmc_terms"]]
        lower, lower_se = _mean_se(spce)
        upper, upper_se = _mean_se(snmc)
        paired = [
            v - random_terms[(r["chunk"], i)]
            for r in cells
            for i, v in enumerate(r["spce_terms"])
            if (r["chunk"], i) in random_terms
        ]
        diff, diff_se = _mean_se(paired) if policy != "random" and paired else (None, None)
        seconds = sum(r["policy_seconds"] for r in cells) / len(spce)
        distance = sum(r["mean_distance"] * r["rollouts"] for r in cells) / len(spce)
        paired_text = "—" if diff is None else f"{diff:.2f} ± {diff_se:.2f}"
        if lower >= 0.9 * math.log(args.inner + 1):
            saturated.append(policy)
        lines.append(
            f"| {policy} | {len(spce)} | {lower:.2f} ± {lower_se:.2f} | {upper:.2f} ± "
            f"{upper_se:.2f} | {paired_text} | {distance:.2f} | {fmt(seconds)} | "
            f"{PUBLISHED[policy]} |"
        )
    lines.append(f"| DAD (trained policy) | 2048 | — | — | — | — | — | {PUBLISHED['DAD']} |")
    cap = math.log(args.inner + 1)
    if saturated:
        lines += [
            "",
            f"sPCE of {', '.join(saturated)} is within 10 % of its cap log(L + 1) = {cap:.2f}: "
            f"it says only that the information is at least about that; raise --inner.",
        ]
    lines += [
        "",
        f"Greedy: {args.particles} particles, {args.outer} outer samples per EIG, "
        f"{args.grid}×{args.grid} grid + {args.source_candidates} particle-source candidates, "
        f"2 zoom stages of {args.refine}, {args.moves} Metropolis moves per tempering stage.",
    ]
    return "\n".join(lines)


def parse(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=2048)
    parser.add_argument("--chunk", type=int, default=64, help="rollouts per cell")
    parser.add_argument("--steps", type=int, default=30, help="T, measurements per rollout")
    parser.add_argument(
        "--inner", type=int, default=500_000, help="L, contrastive samples (sPCE ≤ log(L + 1))"
    )
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--particles", type=int, default=GreedySettings.particles)
    parser.add_argument("--outer", type=int, default=GreedySettings.outer)
    parser.add_argument("--grid", type=int, default=GreedySettings.grid)
    parser.add_argument("--source-candidates", type=int, default=GreedySettings.source_candidates)
    parser.add_argument("--refine", type=int, default=GreedySettings.refine)
    parser.add_argument("--moves", type=int, default=GreedySettings.moves)
    parser.add_argument(
        "--max-memory",
        type=int,
        default=None,
        help="elements of one block (bounds: θ of rollouts × inner; greedy: its EIG matrix)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--results", default=str(ROOT / "benchmarks/results/location_finding.jsonl")
    )
    parser.add_argument("--markdown", default=str(ROOT / "docs/benchmarks.md"))
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args(argv)
    args.policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in args.policies if p not in POLICIES]
    if unknown:
        parser.error(f"unknown policies {unknown}; choose from {', '.join(POLICIES)}")
    if args.max_memory is None:
        args.max_memory = 2**26 if args.device.startswith("cuda") else 2**22
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    log = JsonLines(args.results)
    if args.fresh and log.path.exists():
        log.path.unlink()
    meta = run_meta("location_finding.py", argv, args.threads)
    key = settings_key(args)
    done = {
        (r["policy"], r["chunk"])
        for r in log.rows()
        if "spce_terms" in r and all(r.get(k) == v for k, v in key.items())
    }
    start = time.perf_counter()
    chunks = [
        (c, min(args.chunk, args.rollouts - c * args.chunk))
        for c in range(math.ceil(args.rollouts / args.chunk))
    ]
    for chunk, size in chunks:
        for policy in args.policies:
            if (policy, chunk) in done:
                continue
            row = run_cell(policy, chunk, size, args)
            log.append(row)
            lower, _ = _mean_se(row["spce_terms"])
            upper, _ = _mean_se(row["snmc_terms"])
            print(
                f"{policy:7s} chunk {chunk + 1}/{len(chunks)}: sPCE {lower:.3f}, sNMC {upper:.3f} "
                f"(policy {row['policy_seconds']:.1f} s, bounds {row['eval_seconds']:.1f} s)",
                flush=True,
            )
    meta.update(wall_minutes=(time.perf_counter() - start) / 60, status="")
    text = table(log.rows(), args, meta)
    print(text)
    write_markdown(
        Path(args.markdown), text, NAME, "Location finding: greedy sequential design against random"
    )


if __name__ == "__main__":
    main()
