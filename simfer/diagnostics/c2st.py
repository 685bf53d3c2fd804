r"""Diagnostics of a learnt posterior: classifier two-sample test (C2ST).

C2ST (Lopez-Paz & Oquab, ICLR 2017, arXiv:1610.06545), in the form of the SBI
benchmark (Lueckmann et al., AISTATS 2021, arXiv:2101.04653; ``sbibm.metrics.c2st``):
label the reference sample P with 0 and the sample Q with 1, z-score both by P's mean and
standard deviation, and report the cross-validated accuracy of a classifier that tells
them apart.  With equally many points of each, the Bayes-optimal accuracy is

    ½ + ½ TV(P, Q),

½ when P = Q (the classifier can only guess) and 1 when their supports are disjoint.  A
finite sample of 2N points estimates it with a standard deviation of about
√(¼ / 2N) under P = Q (each held-out prediction a fair coin).

The classifier is sbibm's: an MLP with two ReLU hidden layers of 10·d units, Adam with
learning rate 10⁻³, mini-batches of 200 and an L2 penalty of 10⁻⁴ (scikit-learn's
``MLPClassifier`` defaults), trained until the training loss has not improved by
``tol`` for ``n_iter_no_change`` epochs in a row (scikit-learn's rule) or for at most
``max_epochs``; then KFold cross-validation with ``n_folds`` shuffled folds.  It is
written in torch (scikit-learn is not a dependency of simfer) and trains the fold
classifiers together, as one batched ensemble; each stops on its own criterion.  It
trains in float32, and in float64 (scikit-learn's precision) when a point lies more than
10⁶ standard units out, where float32 overflows: a diverged MCMC chain at 10³⁸ once made
every classifier NaN, and NaN logits predict one class, an accuracy of exactly ½.  Beyond
10¹⁰⁰ it raises ``FloatingPointError``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ShapeError
from ..nn.mlp import EnsembleLinear

__all__ = ["c2st"]

# How many standard units out each precision trains soundly: Adam squares gradients that
# grow with the input, and a float32 classifier on a sample at 10^38 scored exactly 0.5
# (NaN logits all vote "P"); a float64 one stops learning near 10^154.
_REACH = {torch.float32: 1e6, torch.float64: 1e100}


class _FoldClassifiers(nn.Module):
    """E independent ReLU MLPs ``[E, batch, d]`` → logits ``[E, batch]``."""

    def __init__(self, n_members: int, features: int, hidden: tuple[int, ...]):
        super().__init__()
        sizes = [features, *hidden, 1]
        self.layers = nn.ModuleList(
            EnsembleLinear(n_members, a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )

    def forward(self, h: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = F.relu(h)
        return h[..., 0]


def _as_sample(name: str, value) -> Tensor:
    value = torch.as_tensor(value)
    if not value.is_floating_point():
        value = value.to(torch.get_default_dtype())
    if value.ndim == 1:
        value = value[:, None]
    if value.ndim != 2:
        raise ShapeError(f"{name} must have shape [n, d], got {list(value.shape)}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} holds NaN or inf values")
    return value


def _standardised(p: Tensor, q: Tensor, z_score: bool) -> Tensor:
    """P and Q stacked ``[n + m, d]``, z-scored by P's moments when ``z_score``."""
    if z_score:
        mean, std = p.mean(0), p.std(0)
        std = torch.where(std > 0, std, torch.ones_like(std))
        p, q = (p - mean) / std, (q - mean) / std
    return torch.cat([p, q])


def c2st(
    samples_p,
    samples_q,
    *,
    seed: int = 0,
    n_folds: int = 5,
    z_score: bool = True,
    hidden: tuple[int, ...] | None = None,
    max_epochs: int = 1000,
    batch_size: int = 200,
    learning_rate: float = 1e-3,
    l2: float = 1e-4,
    tol: float = 1e-4,
    n_iter_no_change: int = 10,
    device: str | torch.device = "cpu",
) -> float:
    """Cross-validated accuracy of a classifier between ``samples_p`` (the reference,
    ``[n, d]``) and ``samples_q`` (``[m, d]``): 0.5 for one distribution, 1 for disjoint
    ones.  See the module docstring for the protocol (sbibm's) and its defaults."""
    p = _as_sample("samples_p", samples_p)
    q = _as_sample("samples_q", samples_q)
    if p.shape[1] != q.shape[1]:
        raise ShapeError(f"the samples have {p.shape[1]} and {q.shape[1]} dimensions")
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    n = p.shape[0] + q.shape[0]
    if min(p.shape[0], q.shape[0]) < 1 or n < 2 * n_folds:
        raise ValueError(f"{p.shape[0]} and {q.shape[0]} points are too few for {n_folds} folds")
    for dtype, reach in _REACH.items():
        data = _standardised(p.to(device, dtype), q.to(device, dtype), z_score)
        if float(data.abs().max()) <= reach:
            break
    else:
        raise FloatingPointError(
            f"the samples reach {float(data.abs().max()):.3g} standard deviations of "
            "samples_p, too far for the classifier's arithmetic; a sample this far from the "
            "reference (a diverged MCMC chain?) is no posterior to score"
        )
    d = p.shape[1]
    hidden = (10 * d, 10 * d) if hidden is None else tuple(int(h) for h in hidden)
    labels = torch.cat([torch.zeros(p.shape[0]), torch.ones(q.shape[0])]).to(device, data.dtype)

    generator = torch.Generator(device).manual_seed(seed)
    folds = torch.tensor_split(torch.randperm(n, generator=generator, device=device), n_folds)
    train_rows = [torch.cat(folds[:e] + folds[e + 1 :]) for e in range(n_folds)]
    n_train = min(len(rows) for rows in train_rows)
    batch = min(batch_size, n_train)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = _FoldClassifiers(n_folds, d, hidden).to(device, data.dtype)
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate)
    weights = [layer.weight for layer in network.layers]
    best = torch.full((n_folds,), math.inf, device=device)
    stalled = torch.zeros(n_folds, dtype=torch.long, device=device)
    done = torch.zeros(n_folds, dtype=torch.bool, device=device)
    final = {k: v.detach().clone() for k, v in network.state_dict().items()}
    for _ in range(max_epochs):
        order = torch.stack(
            [
                rows[torch.randperm(len(rows), generator=generator, device=device)[:n_train]]
                for rows in train_rows
            ]
        )
        total = torch.zeros(n_folds, device=device)
        for start in range(0, n_train, batch):
            index = order[:, start : start + batch]  # [E, B]
            logits = network(data[index])
            loss = F.binary_cross_entropy_with_logits(logits, labels[index], reduction="none").mean(
                1
            )
            penalty = sum((w**2).sum(dim=(1, 2)) for w in weights)
            loss = loss + 0.5 * l2 * penalty / index.shape[1]
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            optimizer.step()
            total += loss.detach() * index.shape[1]
        epoch_loss = total / n_train
        stalled = torch.where(epoch_loss > best - tol, stalled + 1, torch.zeros_like(stalled))
        best = torch.minimum(best, epoch_loss)
        newly_done = (stalled > n_iter_no_change) & ~done
        if bool(newly_done.any()):  # freeze these folds' classifiers as they are now
            for name, value in network.state_dict().items():
                final[name][newly_done] = value.detach()[newly_done]
            done |= newly_done
        if bool(done.all()):
            break
    for name, value in network.state_dict().items():
        final[name][~done] = value.detach()[~done]
    network.load_state_dict(final)

    with torch.no_grad():
        accuracies = []
        for e, rows in enumerate(folds):
            logits = network(data[rows].expand(n_folds, -1, -1))[e]
            accuracies.append(float(((logits > 0).float() == labels[rows]).float().mean()))
    return sum(accuracies) / n_folds
