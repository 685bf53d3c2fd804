"""The one training loop every simfer estimator uses.

`fit_network(network, loss_fn, tensors, config)` minimises ``loss_fn`` by Adam on
mini-batches of the row-aligned ``tensors``, for an ensemble of E members at
once (E = 1 for a single network): ``loss_fn(network, batch, training)`` returns
the mean loss of each member, ``[E]``; their sum is differentiated, and since
members share no parameter each receives the gradient of its own loss.

* Validation: a seeded split holds out ``validation_fraction`` of the rows.
* Early stopping per member on validation loss: the best weights are *copied*
  (``clone()``, never a reference into the live parameters) and restored at the
  end, so the returned model is the best epoch's.
* Optional smoothing of that loss (``smoothing`` β > 0): early stopping, the
  ``"plateau"`` schedule and the choice of the best epoch then follow each member's
  exponential moving average s_k = β s_{k−1} + (1 − β) v_k (s_0 = v_0) of its validation
  losses v_k, for losses that are themselves noisy Monte Carlo estimates (flow matching,
  score matching: random times and noise), whose raw minimum is often a lucky epoch.
* Gradient clipping per member (the norm of each member's gradient), so one
  member's outlier batch does not shrink the others' steps.
* The learning rate halves whenever the validation loss stalls (``schedule="plateau"``,
  the default) or decays over ``max_epochs`` (``"cosine"``); a plateau fit that has sat at
  the floor rate for ``patience`` epochs without a relative gain of 10⁻⁴ ends there.
* Checkpoint after every epoch (written to a temporary file and renamed, loaded
  with ``weights_only=True``): a killed fit called again with the same
  checkpoint continues from the last finished epoch.
* The data stay on the device: batches are gathered there by index, with no
  per-batch host copies.
* Set-valued columns (`simfer.data.RaggedSets`) stay ragged; each batch is padded to
  its own largest set and handed to ``loss_fn`` packed (`simfer.nn.pack_sets`:
  ``[batch, max_n, features + 1]``, the mask in the last channel).

Where the rows come from.  ``tensors`` is a dict of row-aligned columns held in memory
(`InMemoryRows`: a seeded permutation splits off the validation rows, another per epoch
orders the training rows), or any `RowSource`, such as `simfer.streaming.StreamedRows`,
which streams the rows of a store larger than memory a buffer at a time.  The loop itself
(optimiser, clipping, early stopping, checkpoints) is the same for both.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .data import RaggedSets
from .nn.sets import pack_sets

__all__ = ["InMemoryRows", "RowSource", "TrainingConfig", "TrainingHistory", "fit_network"]

LossFunction = Callable[[nn.Module, dict[str, Tensor], bool], Tensor]


@dataclass
class TrainingConfig:
    """Settings of `fit_network` (the defaults suit 10^3–10^5 rows on a CPU).

    ``max_memory``: the bytes a fit on a store (``fit(path)`` or
    ``fit(simfer.StoredSimulations(path))``) may take to hold the table in memory,
    estimated as `simfer.streaming.TRAINING_MEMORY_FACTOR` times the table; a larger store
    is streamed a buffer at a time (`simfer.streaming`).  None: half the machine's memory;
    0: always stream.  A `SimulationData` is in memory already and never streamed.

    ``schedule``: the learning rate's.  ``"plateau"`` (the default) halves it whenever the
    validation loss (the mean over ensemble members) has not improved for
    ``max(1, patience // 4)`` epochs, down to 10⁻³ of its start: the learning rate falls
    when the data say the fit has stalled, not on a clock set by ``max_epochs``, so a fit
    that stops early still ends at a small learning rate.  ``"cosine"`` anneals it to 0
    over ``max_epochs`` (the default before simfer 0.3).  Early stopping is the same for
    both: ``patience`` epochs without a better validation loss; and with ``"plateau"``, a
    fit whose rate has sat at the floor for ``patience`` epochs ends once those epochs
    gained less than `FLOOR_GAIN` (10⁻⁴) of the validation loss's size.

    ``smoothing``: β ∈ [0, 1), the weight of the past in an exponential moving average of
    each member's validation loss v_k, s_k = β s_{k−1} + (1 − β) v_k with s_0 = v_0.  With
    β > 0, early stopping, the ``"plateau"`` schedule and the best epoch (the weights
    returned) all use s_k instead of v_k: a single lucky epoch no longer sets a record the
    next ``patience`` epochs must beat.  The average remembers about 1/(1 − β) epochs and
    lags a steady trend by about β/(1 − β) epochs.  0 (the default) is the raw loss, as
    without smoothing.  (sbi's ``ema_loss_decay=0.1``, the weight of the newest epoch, is
    β = 0.9.)
    """

    max_epochs: int = 200
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    validation_fraction: float = 0.1
    patience: int = 20
    clip_norm: float | None = 5.0
    seed: int = 0
    device: str = "cpu"
    checkpoint: str | None = None
    progress: bool = True
    max_memory: int | None = None
    schedule: str = "plateau"
    smoothing: float = 0.0

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        valid = isinstance(self.smoothing, int | float) and not isinstance(self.smoothing, bool)
        if not (valid and 0 <= self.smoothing < 1):
            raise ValueError(
                f"smoothing must be a number in [0, 1), the weight of the past epochs in the "
                f"moving average of the validation loss (0: the raw loss; 0.9: about the last "
                f"10 epochs), got {self.smoothing!r}"
            )


#: The learning-rate schedules of `TrainingConfig.schedule`.
SCHEDULES = ("cosine", "plateau")
#: ``"plateau"``: the factor of each cut and the floor, relative to the starting rate.
PLATEAU_FACTOR, PLATEAU_FLOOR = 0.5, 1e-3
#: ``"plateau"``: once the rate has sat at its floor for ``patience`` epochs, the fit ends if
#: those epochs lowered the mean validation loss by less than this fraction of its size.
FLOOR_GAIN = 1e-4


def _floor_rate(config: TrainingConfig) -> float:
    """The lowest learning rate of the ``"plateau"`` schedule."""
    return config.learning_rate * PLATEAU_FLOOR


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig):
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            factor=PLATEAU_FACTOR,
            patience=max(1, config.patience // 4),
            min_lr=_floor_rate(config),
        )
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.max_epochs)


def smooth(previous: Tensor | None, validation: Tensor, smoothing: float) -> Tensor:
    """The moving average of the validation losses ``[E]`` after this epoch's ``validation``
    ``[E]``: s_k = β s_{k−1} + (1 − β) v_k, and s_0 = v_0 (``previous`` None); β = 0 returns
    ``validation`` itself."""
    if previous is None or smoothing == 0:
        return validation
    return smoothing * previous + (1 - smoothing) * validation


@dataclass
class TrainingHistory:
    """Per-epoch mean losses of every member, ``[epochs][E]``, each member's best epoch, and
    the learning rate of each epoch ``[epochs]``.

    ``smoothed_validation_loss`` ``[epochs][E]`` is the moving average of the validation loss
    that early stopping follows (`TrainingConfig.smoothing`; the raw loss when it is 0), and
    ``best_validation_loss`` ``[E]`` its best value, at ``best_epoch``."""

    train_loss: list[list[float]] = field(default_factory=list)
    validation_loss: list[list[float]] = field(default_factory=list)
    best_epoch: list[int] = field(default_factory=list)
    best_validation_loss: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    smoothed_validation_loss: list[list[float]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _members(network: nn.Module) -> int:
    return int(getattr(network, "n_members", 1))


def _clip_per_member(parameters: list[nn.Parameter], n_members: int, max_norm: float) -> None:
    """Scale each member's gradient to a norm of at most ``max_norm``."""
    if n_members == 1:  # one fused norm over all tensors instead of three ops per tensor
        torch.nn.utils.clip_grad_norm_(parameters, max_norm, foreach=True)  # reads p.grad
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    squared = sum(g.reshape(n_members, -1).pow(2).sum(1) for g in grads)
    scale = (max_norm / (squared.sqrt() + 1e-12)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.reshape(n_members, *([1] * (g.ndim - 1))))


def gather(tensors: dict[str, Tensor | RaggedSets], index: Tensor) -> dict[str, Tensor]:
    """The rows ``index`` of every column; sets padded to the batch's largest and packed."""
    return {
        k: pack_sets(*v[index].padded()) if isinstance(v, RaggedSets) else v[index]
        for k, v in tensors.items()
    }


Batches = Iterable[tuple[dict[str, Tensor], int]]


@runtime_checkable
class RowSource(Protocol):
    """Where `fit_network` draws its minibatches from: batches as dicts of ``[batch, …]``
    tensors on the fit's device, each with its number of rows."""

    kind: str  # written to checkpoints: a checkpoint resumes only a fit of the same kind

    def prepare(self, config: TrainingConfig, device: torch.device) -> None:
        """Take the fit's settings before the first batch."""

    def training_batches(self, epoch: int) -> Batches:
        """The training rows of epoch ``epoch`` in minibatches of ``config.batch_size``."""

    def validation_batches(self) -> Batches:
        """The validation rows (the same every epoch)."""

    def state(self) -> Tensor:
        """What a checkpoint must keep to continue the source's random order."""

    def restore(self, state: Tensor) -> None:
        """Continue from a `state` read from a checkpoint."""


class InMemoryRows:
    """Row-aligned columns held in memory (on the fit's device): a seeded permutation holds
    out ``validation_fraction`` of the rows, and each epoch visits the others in a fresh
    permutation of the same generator."""

    kind = "memory"

    def __init__(self, tensors: dict[str, Tensor | RaggedSets]):
        self.tensors = tensors

    def prepare(self, config: TrainingConfig, device: torch.device) -> None:
        self.tensors = {k: v.to(device) for k, v in self.tensors.items()}
        self.batch_size = config.batch_size
        self.device = device
        n = len(next(iter(self.tensors.values())))
        self.generator = torch.Generator(device).manual_seed(config.seed)
        order = torch.randperm(n, generator=self.generator, device=device)
        n_validation = max(1, int(round(config.validation_fraction * n))) if n > 1 else 0
        self.validation_rows, self.train_rows = order[:n_validation], order[n_validation:]
        if len(self.train_rows) == 0:
            raise ValueError(f"{n} rows are too few to train on; simulate more")

    def training_batches(self, epoch: int) -> Iterator[tuple[dict[str, Tensor], int]]:
        order = torch.randperm(len(self.train_rows), generator=self.generator, device=self.device)
        permutation = self.train_rows[order]
        for start in range(0, len(permutation), self.batch_size):
            index = permutation[start : start + self.batch_size]
            yield gather(self.tensors, index), len(index)

    def validation_batches(self) -> Iterator[tuple[dict[str, Tensor], int]]:
        return _row_batches(self.tensors, self.validation_rows, self.batch_size)

    def state(self) -> Tensor:
        return self.generator.get_state()

    def restore(self, state: Tensor) -> None:
        self.generator.set_state(state.to(self.generator.get_state().device))


def _row_batches(tensors, rows: Tensor, batch_size: int):
    for start in range(0, len(rows), batch_size):
        index = rows[start : start + batch_size]
        yield gather(tensors, index), len(index)


def _mean_loss(network, loss_fn, batches: Batches, n_members: int, device) -> Tensor:
    """Mean loss of every member over the rows of ``batches`` ``[E]`` (no update)."""
    total = torch.zeros(n_members, device=device)
    count = 0
    for batch, size in batches:
        total += loss_fn(network, batch, False).detach() * size
        count += size
    return total / max(count, 1)


def _evaluate(network, loss_fn, tensors, rows: Tensor, batch_size: int, n_members: int) -> Tensor:
    """Mean loss of every member over ``rows`` ``[E]`` (no parameter update)."""
    batches = _row_batches(tensors, rows, batch_size)
    return _mean_loss(network, loss_fn, batches, n_members, rows.device)


def fit_network(
    network: nn.Module,
    loss_fn: LossFunction,
    tensors: dict[str, Tensor | RaggedSets] | RowSource,
    config: TrainingConfig,
) -> TrainingHistory:
    """Train ``network`` in place on ``tensors``: columns all with the same number of rows
    (a `RaggedSets` column reaches ``loss_fn`` padded per batch and packed), or a
    `RowSource` that streams them."""
    device = torch.device(config.device)
    network.to(device)
    source = tensors if isinstance(tensors, RowSource) else InMemoryRows(tensors)
    n_members = _members(network)
    source.prepare(config, device)

    parameters = [p for p in network.parameters() if p.requires_grad]
    optimizer = _adam(parameters, config)
    scheduler = _scheduler(optimizer, config)
    history = TrainingHistory(
        best_epoch=[-1] * n_members, best_validation_loss=[math.inf] * n_members
    )
    best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    start_epoch = 0
    checkpoint = Path(config.checkpoint) if config.checkpoint else None
    if checkpoint is not None and checkpoint.exists():
        saved = torch.load(checkpoint, map_location=device, weights_only=True)
        if saved.get("rows", InMemoryRows.kind) != source.kind:
            raise ValueError(
                f"the checkpoint '{checkpoint}' was written by a fit whose rows were "
                f"{_KINDS[saved.get('rows', InMemoryRows.kind)]}, this fit's are "
                f"{_KINDS.get(source.kind, source.kind)}: it cannot continue it. Fit as "
                f"before (the same data, max_memory), or remove the checkpoint to start anew."
            )
        network.load_state_dict(saved["network"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        best_state = saved["best_state"]
        history = TrainingHistory(**saved["history"])
        source.restore(saved["generator"])
        start_epoch = int(saved["epoch"]) + 1
    smoothed = _last_smoothed(history, config.smoothing, device)

    member_axis = {k for k, v in best_state.items() if v.ndim >= 1 and v.shape[0] == n_members}
    bar = tqdm(
        range(start_epoch, config.max_epochs),
        initial=start_epoch,
        total=config.max_epochs,
        unit="epoch",
        disable=not config.progress,
    )
    floor = _floor_rate(config)
    for epoch in bar:
        if _patience_exhausted(history, epoch, config.patience):
            break
        if config.schedule == "plateau" and _settled_at_floor(history, config.patience, floor):
            break
        network.train()
        history.learning_rate.append(optimizer.param_groups[0]["lr"])
        running = torch.zeros(n_members, device=device)
        seen = 0
        for batch, size in source.training_batches(epoch):
            losses = loss_fn(network, batch, True)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            if config.clip_norm is not None:
                _clip_per_member(parameters, n_members, config.clip_norm)
            optimizer.step()
            running += losses.detach() * size
            seen += size
        if config.schedule == "cosine":
            scheduler.step()
        network.eval()
        validation = _mean_loss(network, loss_fn, source.validation_batches(), n_members, device)
        smoothed = smooth(smoothed, validation, config.smoothing)
        if config.schedule == "plateau":
            scheduler.step(float(smoothed.mean()))
        train_loss = (running / seen).tolist()
        history.train_loss.append(train_loss)
        history.validation_loss.append(validation.tolist())
        history.smoothed_validation_loss.append(smoothed.tolist())
        improved = [
            s < best
            for s, best in zip(smoothed.tolist(), history.best_validation_loss, strict=True)
        ]
        if any(improved):
            mask = torch.tensor(improved, device=device)
            for name, value in network.state_dict().items():
                if name in member_axis:
                    best_state[name][mask] = value.detach()[mask].clone()
                elif all(improved):
                    best_state[name] = value.detach().clone()
            for member, better in enumerate(improved):
                if better:
                    history.best_epoch[member] = epoch
                    history.best_validation_loss[member] = smoothed[member].item()
        bar.set_postfix(train=f"{sum(train_loss) / n_members:.4g}", val=f"{validation.mean():.4g}")
        if checkpoint is not None:
            _save_checkpoint(
                checkpoint, network, optimizer, scheduler, best_state, history, source, epoch
            )
    bar.close()
    network.load_state_dict(best_state)
    network.eval()
    return history


def _adam(parameters: list[nn.Parameter], config: TrainingConfig) -> torch.optim.Adam:
    """Adam, fused into one kernel per step where this torch build has it for these
    parameters (CPU and CUDA floats in torch ≥ 2.4): a flow has ~100 small parameter
    tensors, and the per-tensor update costs about a fifth of a training step."""
    options = {"lr": config.learning_rate, "weight_decay": config.weight_decay}
    try:
        return torch.optim.Adam(parameters, fused=True, **options)
    except (RuntimeError, TypeError):  # older torch, or a device without the fused kernel
        return torch.optim.Adam(parameters, **options)


def _last_smoothed(history: TrainingHistory, smoothing: float, device) -> Tensor | None:
    """The moving average after the last finished epoch of a resumed fit (None for a fresh
    one): the history holds it, or for a checkpoint written before smoothing was recorded,
    the average is run again over the raw validation losses it holds."""
    if not history.validation_loss:
        return None
    if len(history.smoothed_validation_loss) != len(history.validation_loss):
        history.smoothed_validation_loss = []
        previous = None
        for validation in history.validation_loss:
            previous = smooth(previous, torch.tensor(validation, device=device), smoothing)
            history.smoothed_validation_loss.append(previous.tolist())
    return torch.tensor(history.smoothed_validation_loss[-1], device=device)


def _patience_exhausted(history: TrainingHistory, epoch: int, patience: int) -> bool:
    return all(best >= 0 and epoch - best > patience for best in history.best_epoch)


def _settled_at_floor(history: TrainingHistory, patience: int, floor: float) -> bool:
    """Whether the last ``patience`` epochs all ran at the plateau schedule's ``floor`` and
    lowered the mean (smoothed) validation loss v by less than `FLOOR_GAIN` · |v|.

    Early stopping alone waits for ``patience`` epochs with no new best at all.  A loss with
    no noise in its targets (exact gold, say) can set a new best by 10⁻⁶ of itself in every
    epoch at the floor, whose steps are 10³ times smaller than the first ones, and never
    stop; such a fit has settled, and its best weights are returned as usual."""
    rates = history.learning_rate[-patience:]
    if len(history.smoothed_validation_loss) <= patience or max(rates) > floor * (1 + 1e-6):
        return False
    means = [sum(v) / len(v) for v in history.smoothed_validation_loss[-patience - 1 :]]
    return means[0] - min(means[1:]) < FLOOR_GAIN * abs(means[0])


_KINDS = {"memory": "held in memory", "stream": "streamed from a store"}


def _save_checkpoint(path, network, optimizer, scheduler, best_state, history, source, epoch):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            "network": network.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "best_state": best_state,
            "history": history.as_dict(),
            "generator": source.state(),
            "rows": source.kind,
            "epoch": epoch,
        },
        tmp,
    )
    os.replace(tmp, path)
