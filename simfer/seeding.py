"""Seeds and random-number generators: the one place simfer turns a seed into randomness.

Code draws random numbers in one of three ways, and each has its tool here:

* from an explicit ``torch.Generator`` that it is handed (a simulator's
  ``sample(theta, design, generator)``, simfer's own sampling and splitting):
  `make_generator` turns the ``seed`` a user passes (an int, a generator or None) into one;
* from torch's *global* generators because it takes no generator (nflows' initial weights
  and base samples, ``torch.nn`` initialisation, a prior's ``sample``): `seeded` seeds them
  for one block and restores them afterwards, so the block is reproducible and the caller's
  random stream is left as it was;
* from whatever global generator a user's black box happens to use (torch, numpy's
  legacy ``np.random`` or Python's ``random``): `seeded_global_rngs` seeds all three for
  the block and restores all three.

`derived_seed` draws a fresh int seed from a generator, for handing a generator's
randomness to code that takes an int (or a numpy generator).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["Seed", "derived_seed", "make_generator", "seeded", "seeded_global_rngs"]

Seed = int | torch.Generator | None


def derived_seed(generator: torch.Generator) -> int:
    """A 62-bit int seed drawn from ``generator`` (on the generator's own device)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))


def make_generator(seed: Seed, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` from an int seed, a generator or None (fresh).

    A generator already on ``device``'s type is returned as it is (drawing from the result
    advances the caller's generator); one on another device seeds a new generator with
    `derived_seed`.  The same int seed always gives the same stream on the same device."""
    device = torch.device(device)
    if isinstance(seed, torch.Generator):
        if seed.device.type == device.type:
            return seed
        return torch.Generator(device).manual_seed(derived_seed(seed))
    generator = torch.Generator(device)
    if seed is None:
        generator.seed()
    elif isinstance(seed, int | np.integer) and not isinstance(seed, bool):
        generator.manual_seed(int(seed))
    else:
        raise TypeError(
            f"seed must be an int, a torch.Generator or None, got {type(seed).__name__}"
        )
    return generator


def _cuda_devices(device: torch.device | str | None) -> list[int]:
    """The CUDA devices whose generator state a seeded block must save and restore."""
    if device is None:
        return list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    device = torch.device(device)
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global generators (CPU and CUDA) seeded by ``seed``,
    restoring their states afterwards.

    For code that draws from the global generators and takes no generator of its own:
    nflows' initial weights and base samples, ``torch.nn`` layer initialisation, a torch
    distribution's ``sample``.  Nesting is fine; each block restores what it found."""
    with torch.random.fork_rng(devices=_cuda_devices(None)):
        torch.manual_seed(seed)
        yield


@contextmanager
def seeded_global_rngs(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Run the block with the global generators of torch, numpy (``np.random``) and Python's
    ``random`` seeded by ``seed``; restore all three afterwards.

    For a user's black-box simulator that takes no generator and draws from whichever global
    generator it likes (simfer's `FunctionSimulator` and `PyroSimulator`).  ``device``: the
    one CUDA device whose torch state to save and restore (None: every initialised one)."""
    numpy_state = np.random.get_state()  # noqa: NPY002 (the user's global RNG)
    python_state = random.getstate()
    with torch.random.fork_rng(devices=_cuda_devices(device)):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)  # noqa: NPY002
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)  # noqa: NPY002
            random.setstate(python_state)
