"""The shared training loop: best-epoch restore, checkpoint resume, independent ensemble members."""

import math

import pytest
import torch

from simfer.nn import EnsembleMLP
from simfer.training import TrainingConfig, _evaluate, fit_network


def regression_loss(network, batch, training):
    predicted = network(batch["x"])[..., 0]  # [E, batch]
    return ((predicted - batch["y"]) ** 2).mean(-1)


def noisy_rows(n=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=generator) * 4 - 2
    y = torch.sin(2 * x[:, 0]) + 0.5 * torch.randn(n, generator=generator)
    return {"x": x, "y": y}


def test_early_stopping_restores_a_copy_of_the_best_epoch():
    """A wide network on 64 noisy rows overfits: the returned weights must be the best
    epoch's, not the last one's (a reference to the live state_dict would give the last)."""
    torch.manual_seed(0)
    network = EnsembleMLP(1, 1, hidden=(256, 256), n_members=1)
    rows = noisy_rows()
    config = TrainingConfig(
        max_epochs=150,
        batch_size=16,
        learning_rate=3e-3,
        patience=1000,
        validation_fraction=0.25,
        progress=False,
        clip_norm=None,
    )
    history = fit_network(network, regression_loss, rows, config)
    validation = [v[0] for v in history.validation_loss]
    best_epoch = history.best_epoch[0]
    assert best_epoch < len(validation) - 20  # it did overfit after the best epoch
    assert validation[-1] > 1.2 * min(validation)
    order = torch.randperm(64, generator=torch.Generator().manual_seed(config.seed))
    validation_rows = order[:16]
    restored = _evaluate(network, regression_loss, rows, validation_rows, 16, 1)
    torch.testing.assert_close(restored[0].item(), min(validation), rtol=1e-5, atol=1e-6)


def test_patience_stops_training():
    torch.manual_seed(1)
    network = EnsembleMLP(1, 1, hidden=(256, 256))
    config = TrainingConfig(
        max_epochs=300,
        batch_size=16,
        learning_rate=3e-3,
        patience=5,
        validation_fraction=0.25,
        progress=False,
    )
    history = fit_network(network, regression_loss, noisy_rows(), config)
    assert len(history.validation_loss) == history.best_epoch[0] + 6 < 300


def test_ensemble_members_train_as_if_alone():
    """Members share no parameter and are clipped separately: member e of an ensemble ends
    exactly where the same network trained alone from the same start ends."""
    torch.manual_seed(2)
    ensemble = EnsembleMLP(1, 1, hidden=(32,), n_members=3)
    alone = EnsembleMLP(1, 1, hidden=(32,), n_members=1)
    with torch.no_grad():
        for a, e in zip(alone.parameters(), ensemble.parameters(), strict=True):
            a.copy_(e[1:2])
    config = TrainingConfig(
        max_epochs=15, batch_size=16, patience=1000, progress=False, clip_norm=0.5
    )
    rows = noisy_rows(seed=3)
    fit_network(ensemble, regression_loss, rows, config)
    history = fit_network(alone, regression_loss, rows, config)
    assert history.best_epoch[0] >= 0
    for a, e in zip(alone.parameters(), ensemble.parameters(), strict=True):
        torch.testing.assert_close(a[0], e[1], rtol=1e-4, atol=1e-6)


def test_a_killed_fit_resumes_from_its_checkpoint(tmp_path):
    rows = noisy_rows(seed=4)
    checkpoint = tmp_path / "fit.pt"

    def run(path, loss):
        torch.manual_seed(5)
        network = EnsembleMLP(1, 1, hidden=(32,), n_members=2)
        config = TrainingConfig(
            max_epochs=12,
            batch_size=16,
            patience=1000,
            progress=False,
            checkpoint=str(path) if path else None,
        )
        return network, fit_network(network, loss, rows, config)

    straight, straight_history = run(None, regression_loss)
    calls = []

    def killed_in_epoch_5(network, batch, training):
        calls.append(1)
        if len(calls) == 5 * 5 + 2:  # 58 training rows = 4 batches, + 1 validation batch
            raise KeyboardInterrupt
        return regression_loss(network, batch, training)

    with pytest.raises(KeyboardInterrupt):
        run(checkpoint, killed_in_epoch_5)
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 4
    resumed, history = run(checkpoint, regression_loss)
    assert len(history.train_loss) == 12
    torch.testing.assert_close(history.train_loss, straight_history.train_loss)
    for a, b in zip(resumed.parameters(), straight.parameters(), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("n_members", [1, 3])
def test_clipping_scales_each_members_gradient_to_the_bound(n_members):
    """After clipping at 0.5, a member whose gradient norm exceeded 0.5 has norm 0.5 (its
    direction kept); a member below the bound is untouched."""
    from simfer.training import _clip_per_member

    network = EnsembleMLP(2, 1, hidden=(8,), n_members=n_members)
    parameters = list(network.parameters())
    generator = torch.Generator().manual_seed(n_members)
    for parameter in parameters:
        parameter.grad = torch.randn(parameter.shape, generator=generator)
    if n_members > 1:  # member 1 small enough to pass unclipped
        for parameter in parameters:
            parameter.grad[1] *= 1e-3

    def member_norms():
        return sum(p.grad.reshape(n_members, -1).pow(2).sum(1) for p in parameters).sqrt()

    before = [p.grad.clone() for p in parameters]
    norms = member_norms()
    _clip_per_member(parameters, n_members, 0.5)
    after = member_norms()
    for member in range(n_members):
        expected = min(norms[member].item(), 0.5)
        assert after[member].item() == pytest.approx(expected, rel=1e-5)
        scale = after[member] / norms[member]
        for old, parameter in zip(before, parameters, strict=True):
            torch.testing.assert_close(parameter.grad[member], old[member] * scale)


def test_the_plateau_schedule_halves_the_rate_when_validation_stalls():
    """The wide network overfits 64 noisy rows, so the validation loss stalls early: under
    "plateau" every change of the learning rate is a halving that comes only after
    patience // 4 epochs without a better validation loss, and the fit ends below its
    starting rate; "cosine" follows ½ lr (1 + cos(π t / max_epochs)) exactly."""
    settings = dict(
        max_epochs=150,
        batch_size=16,
        learning_rate=3e-3,
        patience=16,
        validation_fraction=0.25,
        progress=False,
    )
    torch.manual_seed(0)
    network = EnsembleMLP(1, 1, hidden=(256, 256))
    history = fit_network(
        network, regression_loss, noisy_rows(), TrainingConfig(schedule="plateau", **settings)
    )
    rates = history.learning_rate
    validation = [v[0] for v in history.validation_loss]
    assert rates[0] == 3e-3 and rates[-1] < 3e-3
    for epoch in range(1, len(rates)):
        if rates[epoch] != rates[epoch - 1]:
            assert rates[epoch] == pytest.approx(rates[epoch - 1] / 2)
            # the last 4 epochs before the cut (patience // 4) did not beat the best before
            best_before = min(validation[: epoch - 4])
            assert min(validation[epoch - 4 : epoch]) >= best_before * (1 - 1e-4)

    torch.manual_seed(0)
    network = EnsembleMLP(1, 1, hidden=(256, 256))
    history = fit_network(network, regression_loss, noisy_rows(), TrainingConfig(**settings))
    epochs = range(len(history.learning_rate))
    expected = [1.5e-3 * (1 + math.cos(math.pi * t / 150)) for t in epochs]
    assert history.learning_rate == pytest.approx(expected)
    with pytest.raises(ValueError, match="schedule must be one of"):
        TrainingConfig(schedule="linear")
