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
* Gradient clipping per member (the norm of each member's gradient), so one
  member's outlier batch does not shrink the others' steps.
* Cosine learning-rate decay over ``max_epochs``.
* Checkpoint after every epoch (written to a temporary file and renamed, loaded
  with ``weights_only=True``): a killed fit called again with the same
  checkpoint continues from the last finished epoch.
* The data stay on the device: batches are gathered there by index, with no
  per-batch host copies.
* Set-valued columns (`simfer.data.RaggedSets`) stay ragged; each batch is padded to
  its own largest set and handed to ``loss_fn`` packed (`simfer.nn.pack_sets`:
  ``[batch, max_n, features + 1]``, the mask in the last channel).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .data import RaggedSets
from .nn.sets import pack_sets

__all__ = ["TrainingConfig", "TrainingHistory", "fit_network"]

LossFunction = Callable[[nn.Module, dict[str, Tensor], bool], Tensor]


@dataclass
class TrainingConfig:
    """Settings of `fit_network` (the defaults suit 10^3–10^5 rows on a CPU)."""

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


@dataclass
class TrainingHistory:
    """Per-epoch mean losses of every member, ``[epochs][E]``, and each member's best epoch."""

    train_loss: list[list[float]] = field(default_factory=list)
    validation_loss: list[list[float]] = field(default_factory=list)
    best_epoch: list[int] = field(default_factory=list)
    best_validation_loss: list[float] = field(default_factory=list)

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


def _evaluate(network, loss_fn, tensors, rows: Tensor, batch_size: int, n_members: int) -> Tensor:
    """Mean loss of every member over ``rows`` ``[E]`` (no parameter update)."""
    total = torch.zeros(n_members, device=rows.device)
    for start in range(0, len(rows), batch_size):
        index = rows[start : start + batch_size]
        batch = gather(tensors, index)
        total += loss_fn(network, batch, False).detach() * len(index)
    return total / max(len(rows), 1)


def fit_network(
    network: nn.Module,
    loss_fn: LossFunction,
    tensors: dict[str, Tensor | RaggedSets],
    config: TrainingConfig,
) -> TrainingHistory:
    """Train ``network`` in place on ``tensors`` (all with the same number of rows; a
    `RaggedSets` column reaches ``loss_fn`` padded per batch and packed)."""
    device = torch.device(config.device)
    network.to(device)
    tensors = {k: v.to(device) for k, v in tensors.items()}
    n = len(next(iter(tensors.values())))
    n_members = _members(network)
    generator = torch.Generator(device).manual_seed(config.seed)
    order = torch.randperm(n, generator=generator, device=device)
    n_validation = max(1, int(round(config.validation_fraction * n))) if n > 1 else 0
    validation_rows, train_rows = order[:n_validation], order[n_validation:]
    if len(train_rows) == 0:
        raise ValueError(f"{n} rows are too few to train on; simulate more")

    parameters = [p for p in network.parameters() if p.requires_grad]
    optimizer = _adam(parameters, config)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.max_epochs)
    history = TrainingHistory(
        best_epoch=[-1] * n_members, best_validation_loss=[math.inf] * n_members
    )
    best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    start_epoch = 0
    checkpoint = Path(config.checkpoint) if config.checkpoint else None
    if checkpoint is not None and checkpoint.exists():
        saved = torch.load(checkpoint, map_location=device, weights_only=True)
        network.load_state_dict(saved["network"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        best_state = saved["best_state"]
        history = TrainingHistory(**saved["history"])
        generator.set_state(saved["generator"].to(generator.get_state().device))
        start_epoch = int(saved["epoch"]) + 1

    member_axis = {k for k, v in best_state.items() if v.ndim >= 1 and v.shape[0] == n_members}
    bar = tqdm(
        range(start_epoch, config.max_epochs),
        initial=start_epoch,
        total=config.max_epochs,
        unit="epoch",
        disable=not config.progress,
    )
    for epoch in bar:
        if _patience_exhausted(history, epoch, config.patience):
            break
        network.train()
        permutation = train_rows[
            torch.randperm(len(train_rows), generator=generator, device=device)
        ]
        running = torch.zeros(n_members, device=device)
        for start in range(0, len(permutation), config.batch_size):
            index = permutation[start : start + config.batch_size]
            batch = gather(tensors, index)
            losses = loss_fn(network, batch, True)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            if config.clip_norm is not None:
                _clip_per_member(parameters, n_members, config.clip_norm)
            optimizer.step()
            running += losses.detach() * len(index)
        scheduler.step()
        network.eval()
        validation = _evaluate(
            network, loss_fn, tensors, validation_rows, config.batch_size, n_members
        )
        train_loss = (running / len(permutation)).tolist()
        history.train_loss.append(train_loss)
        history.validation_loss.append(validation.tolist())
        improved = [
            v < best
            for v, best in zip(validation.tolist(), history.best_validation_loss, strict=True)
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
                    history.best_validation_loss[member] = validation[member].item()
        bar.set_postfix(train=f"{sum(train_loss) / n_members:.4g}", val=f"{validation.mean():.4g}")
        if checkpoint is not None:
            _save_checkpoint(
                checkpoint, network, optimizer, scheduler, best_state, history, generator, epoch
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


def _patience_exhausted(history: TrainingHistory, epoch: int, patience: int) -> bool:
    return all(best >= 0 and epoch - best > patience for best in history.best_epoch)


def _save_checkpoint(path, network, optimizer, scheduler, best_state, history, generator, epoch):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            "network": network.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "best_state": best_state,
            "history": history.as_dict(),
            "generator": generator.get_state(),
            "epoch": epoch,
        },
        tmp,
    )
    os.replace(tmp, path)
