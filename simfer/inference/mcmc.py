r"""Hamiltonian Monte Carlo (NUTS or fixed-length HMC) on a posterior, with Pyro.

HMC needs an unbounded space: θ is written as T(u) with T = ``biject_to(prior.support)``
(e.g. a scaled sigmoid for a box), and the chains move in u with the potential

    U(u) = −log p(T(u) | x) − log |det ∂T/∂u|,

so that the kept T(u) are draws of p(θ|x).  Step size and mass matrix adapt during
warm-up (Pyro's dual averaging and diagonal mass-matrix adaptation); chains run one
after the other (Pyro's parallel chains need one process each), each from its own start.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution, biject_to

from ..errors import SimferError
from .chains import effective_sample_size, split_r_hat

__all__ = ["pyro_mcmc"]


class _OutOfTime(Exception):
    pass


def pyro_mcmc(
    log_target: Callable[[Tensor], Tensor],
    prior: Distribution,
    init: Tensor,
    n: int,
    *,
    kernel: str = "nuts",
    warmup: int = 300,
    thin: int = 1,
    max_seconds: float | None = None,
    progress: bool = False,
    max_tree_depth: int = 8,
    n_steps: int = 10,
) -> tuple[Tensor, dict]:
    """n draws ``[n, theta_dim]`` from ``init.shape[0]`` chains started at ``init``
    ``[n_chains, theta_dim]``; returns the draws and R̂, ESS, divergences, timings."""
    from pyro.infer.mcmc import HMC, MCMC, NUTS

    transform = biject_to(prior.support)
    n_chains, dim = init.shape

    def potential(params: dict[str, Tensor]) -> Tensor:
        u = params["u"]
        theta = transform(u)
        return -(log_target(theta[None])[0] + transform.log_abs_det_jacobian(u, theta).sum())

    probe = transform.inv(init[0]).detach().requires_grad_(True)
    if not potential({"u": probe}).requires_grad:
        raise SimferError(
            "NUTS/HMC needs a log-likelihood that is differentiable in θ; use method='slice'"
        )

    per_chain = math.ceil(n / n_chains) * thin
    start = time.perf_counter()

    def hook(kernel_, samples, stage, i):
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            raise _OutOfTime(f"{stage} iteration {i}")

    chains, divergences, accept = [], 0, []
    for c in range(n_chains):
        if kernel == "nuts":
            k = NUTS(potential_fn=potential, max_tree_depth=max_tree_depth, full_mass=False)
        else:
            k = HMC(potential_fn=potential, num_steps=n_steps, full_mass=False)
        mcmc = MCMC(
            k,
            num_samples=per_chain,
            warmup_steps=warmup,
            initial_params={"u": transform.inv(init[c]).detach()},
            disable_progbar=not progress,
            hook_fn=hook,
        )
        try:
            mcmc.run()
        except _OutOfTime as where:
            raise SimferError(
                f"{kernel.upper()} ran out of its time budget ({max_seconds:g} s) in chain "
                f"{c + 1} of {n_chains} at {where}; raise max_seconds, or use "
                f"method='slice' (many chains at once)"
            ) from None
        u = mcmc.get_samples()["u"][::thin]
        chains.append(transform(u).detach())
        info = mcmc.diagnostics()
        divergences += len(info.get("divergences", {}).get("chain 0", []))
        accept.append(float(info.get("acceptance rate", {}).get("chain 0", float("nan"))))
    stacked = torch.stack(chains)  # [chains, draws, d]
    summary = {
        "n_chains": n_chains,
        "draws_per_chain": stacked.shape[1],
        "divergences": divergences,
        "acceptance_rate": sum(accept) / len(accept),
        "seconds": time.perf_counter() - start,
    }
    if stacked.shape[1] >= 4:
        summary["r_hat_max"] = float(split_r_hat(stacked).max())
        summary["ess_min"] = float(effective_sample_size(stacked).min())
    return stacked.transpose(0, 1).reshape(-1, dim)[:n], summary
