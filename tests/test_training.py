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
    config = TrainingConfig(schedule="cosine", **settings)
    history = fit_network(network, regression_loss, noisy_rows(), config)
    epochs = range(len(history.learning_rate))
    expected = [1.5e-3 * (1 + math.cos(math.pi * t / 150)) for t in epochs]
    assert history.learning_rate == pytest.approx(expected)
    with pytest.raises(ValueError, match="schedule must be one of"):
        TrainingConfig(schedule="linear")


# A scripted validation curve: one lucky epoch (1), then a slow real descent towards 4 and a
# rise from epoch 10.  Dyadic numbers and β = ½ keep every average exact in float32.
SCRIPT = [8.0, 2.0, 8.0, 6.0, 5.0, 4.0, 4.0, 4.0, 4.0, 4.0] + [6.0] * 10
# s_k = ½ s_{k−1} + ½ v_k: 8, 5, 6.5, 6.25, 5.625, 4.8125 (below 5: a record at epoch 5),
# then 4.40625, …, 4.05078125 at epoch 9, decreasing to there and rising after
SMOOTHED = [8.0, 5.0, 6.5, 6.25, 5.625, 4.8125, 4.40625, 4.203125, 4.1015625, 4.05078125]


def scripted_fit(
    smoothing, patience, schedule="cosine", checkpoint=None, kill_at=None, script=SCRIPT
):
    """Train a tiny network on real rows, but report script[epoch] as its validation loss;
    the weights at the end of every epoch are kept to check which ones are returned."""
    torch.manual_seed(6)
    network = EnsembleMLP(1, 1, hidden=(8,))
    snapshots = []

    def loss(network, batch, training):
        if training:
            return regression_loss(network, batch, training)
        if kill_at is not None and len(snapshots) == kill_at:
            raise KeyboardInterrupt
        snapshots.append({k: v.clone() for k, v in network.state_dict().items()})
        return torch.full((1,), script[len(snapshots) - 1 + resumed_at])

    resumed_at = 0
    if checkpoint is not None and checkpoint.exists():
        resumed_at = torch.load(checkpoint, weights_only=True)["epoch"] + 1
    config = TrainingConfig(
        max_epochs=len(script),
        batch_size=16,
        validation_fraction=0.25,  # 16 validation rows: one batch, so the mean is exact
        patience=patience,
        smoothing=smoothing,
        schedule=schedule,
        progress=False,
        checkpoint=None if checkpoint is None else str(checkpoint),
    )
    history = fit_network(network, loss, noisy_rows(), config)
    return network, history, snapshots


def test_early_stopping_follows_the_moving_average():
    """Raw loss (β = 0): the lucky epoch 1 is a record no later epoch beats, so a patience
    of 4 stops before epoch 1 + 4 + 1 = 6 and returns epoch 1's weights.  β = ½: the
    average falls to a record at epoch 5 (4 epochs after the last, within the patience) and
    keeps falling to epoch 9, then rises; the fit stops before epoch 9 + 4 + 1 = 14 and
    returns epoch 9's weights."""
    network, history, snapshots = scripted_fit(smoothing=0.0, patience=4)
    assert len(history.validation_loss) == 6 and history.best_epoch == [1]
    assert history.smoothed_validation_loss == history.validation_loss
    assert history.best_validation_loss == [2.0]
    for name, value in network.state_dict().items():
        assert torch.equal(value, snapshots[1][name])

    network, history, snapshots = scripted_fit(smoothing=0.5, patience=4)
    assert len(history.validation_loss) == 14 and history.best_epoch == [9]
    assert [v[0] for v in history.validation_loss] == SCRIPT[:14]
    assert [s[0] for s in history.smoothed_validation_loss[:10]] == SMOOTHED
    assert history.best_validation_loss == [SMOOTHED[9]]
    for name, value in network.state_dict().items():
        assert torch.equal(value, snapshots[9][name])


def test_the_plateau_schedule_follows_the_moving_average():
    """The learning rates of a "plateau" fit are those of torch's ReduceLROnPlateau fed the
    moving average (and differ from those it gives fed the raw loss)."""

    def expected(losses):
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=0.5, patience=2, min_lr=1e-6
        )
        rates = []
        for loss in losses:
            rates.append(optimizer.param_groups[0]["lr"])
            scheduler.step(loss)
        return rates

    _, history, _ = scripted_fit(smoothing=0.5, patience=8, schedule="plateau")
    smoothed = [s[0] for s in history.smoothed_validation_loss]
    assert history.learning_rate == expected(smoothed)
    assert min(history.learning_rate) < 1e-3
    assert history.learning_rate != expected(SCRIPT[: len(smoothed)])


def test_a_plateau_fit_that_only_creeps_at_the_floor_rate_ends():
    """Validation losses that set a new best in every epoch, each by 2⁻²⁰ (10⁻⁶ of their
    size), as a loss with noise-free targets can: early stopping alone would never end the
    fit.  The plateau schedule counts each epoch as a stall (under its 10⁻⁴ relative
    threshold) and halves the rate down to its floor, 10⁻³ of the start; ``patience`` epochs
    there end the fit, whose last epoch is its best.  The cosine schedule has no floor and
    runs to ``max_epochs``."""
    creep = [1 + (400 - k) * 2**-20 for k in range(400)]  # exact in float32

    _, history, _ = scripted_fit(0.0, patience=4, schedule="plateau", script=creep)
    n, rates = len(history.validation_loss), history.learning_rate
    assert history.best_epoch == [n - 1]  # every epoch was a new best
    assert rates[-4:] == [pytest.approx(1e-6)] * 4 and rates[-5] > 1.5e-6
    assert n < 60  # ten halvings, two stalled epochs each, then four at the floor
    _, history, _ = scripted_fit(0.0, patience=4, schedule="cosine", script=creep)
    assert len(history.validation_loss) == len(creep)


def test_a_killed_smoothed_fit_resumes_as_if_never_stopped(tmp_path):
    """The moving average is carried by the checkpoint: a fit killed in epoch 7 and resumed
    records the same averages, stops at the same epoch and returns the same weights."""
    straight, straight_history, _ = scripted_fit(smoothing=0.5, patience=4)
    checkpoint = tmp_path / "fit.pt"
    with pytest.raises(KeyboardInterrupt):
        scripted_fit(smoothing=0.5, patience=4, checkpoint=checkpoint, kill_at=7)
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 6
    saved = torch.load(checkpoint, weights_only=True)
    resumed, history, _ = scripted_fit(smoothing=0.5, patience=4, checkpoint=checkpoint)
    assert history.as_dict() == straight_history.as_dict()
    for a, b in zip(resumed.parameters(), straight.parameters(), strict=True):
        assert torch.equal(a, b)
    # a checkpoint written before the average was recorded: it is recomputed from the raw
    # validation losses the history holds, to the same result
    del saved["history"]["smoothed_validation_loss"]
    torch.save(saved, checkpoint)
    resumed, history, _ = scripted_fit(smoothing=0.5, patience=4, checkpoint=checkpoint)
    assert history.as_dict() == straight_history.as_dict()


@pytest.mark.parametrize("smoothing", [-0.1, 1.0, 1.5, math.nan, True, "0.9"])
def test_a_bad_smoothing_is_named(smoothing):
    with pytest.raises(ValueError, match=r"smoothing must be a number in \[0, 1\)"):
        TrainingConfig(smoothing=smoothing)
