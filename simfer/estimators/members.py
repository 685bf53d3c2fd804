"""The E members of an ensemble of density estimators, trained one after another.

An NLE or NPE ensemble is E networks q_e fitted on the same data, each by `fit_network`
with its own early stopping, whose equal-weight mixture (1/E) Σ_e q_e is the estimate.
The members differ by their seed: member 0 keeps the fit's own seed (so ``n_ensemble=1``
is the single network it always was), the others get seeds drawn from a generator seeded
by it (`member_seeds`).  Every member holds out the same validation rows, so their held-out
losses compare, and visits the training rows in its own order (`MemberRows` in memory,
`MemberStream` from a store).  A draw from the mixture picks its member uniformly
(`mixture_draws`), so member e makes about n/E of n draws.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import torch
from torch import Tensor, nn

from ..seeding import derived_seed
from ..streaming import StoredSimulations, StreamedRows
from ..training import InMemoryRows, RowSource, TrainingConfig, TrainingHistory, fit_network

__all__ = ["MemberRows", "MemberStream", "fit_members", "mixture_draws", "member_seeds"]

# A streamed member e ≥ 1 visits the blocks in the order of epoch k + e·2³² at its epoch k.
_MEMBER_EPOCH_OFFSET = 2**32


def member_seeds(seed: int, n_ensemble: int) -> list[int]:
    """The seeds of the E members' initial weights and batch orders: the fit's own seed for
    the first, then seeds drawn from a generator seeded by it (not seed + e, which another
    fit's seed would repeat)."""
    generator = torch.Generator().manual_seed(seed)
    return [seed] + [derived_seed(generator) for _ in range(n_ensemble - 1)]


class MemberRows(InMemoryRows):
    """The rows of member e ≥ 1 in memory: the validation rows split off by the fit's seed
    (the first member's, so every member's held-out loss is over the same rows), and the
    training rows visited in an order drawn from the member's own seed."""

    def __init__(self, tensors: dict[str, Tensor], order_seed: int):
        super().__init__(tensors)
        self.order_seed = order_seed

    def prepare(self, config: TrainingConfig, device: torch.device) -> None:
        super().prepare(config, device)
        self.generator.manual_seed(self.order_seed)


class MemberStream(StreamedRows):
    """The rows of member e ≥ 1 streamed from a store: the same held-out rows (a hash of
    the fit's seed), and at epoch k the block order of epoch k + e·2³² (each epoch's order
    is a hash of its number, so the members' orders are independent)."""

    def __init__(self, source: StoredSimulations, transform: Callable, member: int):
        super().__init__(source, transform)
        self.member = member

    def training_batches(self, epoch: int) -> Iterator[tuple[dict[str, Tensor], int]]:
        return super().training_batches(epoch + self.member * _MEMBER_EPOCH_OFFSET)


def fit_members(
    members: list[nn.Module],
    loss_fn: Callable,
    rows: Callable[[int, int], dict[str, Tensor] | RowSource],
    config: TrainingConfig,
) -> list[TrainingHistory]:
    """Train the members one after another by `fit_network`, member e on ``rows(e,
    seed_e)``, each with its own early stopping (and its own checkpoint file,
    ``<checkpoint>.member<e>`` for e ≥ 1); their histories in order."""
    seeds = member_seeds(config.seed, len(members))
    histories = []
    for e, (member, seed) in enumerate(zip(members, seeds, strict=True)):
        member_config = config
        if e and config.checkpoint:
            member_config = replace(config, checkpoint=f"{config.checkpoint}.member{e}")
        histories.append(fit_network(member, loss_fn, rows(e, seed), member_config))
    return histories


def mixture_draws(
    n_members: int, n_rows: int, n: int, draw: Callable[[int, Tensor], Tensor], device=None
) -> Tensor:
    """n draws ``[n_rows, n, D]`` from the equal-weight mixture of ``n_members`` members at
    each of ``n_rows`` conditions: each draw picks its member uniformly, and
    ``draw(e, rows)`` returns member e's draws ``[len(rows), D]``, one at each condition
    ``rows`` (repeated where several of a row's draws picked e)."""
    pick = torch.randint(n_members, (n_rows, n), device=device)
    draws = None
    for e in range(n_members):
        rows, slots = torch.nonzero(pick == e, as_tuple=True)
        if len(rows) == 0:
            continue
        drawn = draw(e, rows)
        if draws is None:
            draws = drawn.new_empty(n_rows, n, drawn.shape[-1])
        draws[rows, slots] = drawn.to(draws.dtype)
    return draws
