"""The user's own data: `SimulationData` built by hand, `simfer.load_simulations` on files
simfer did not write (.npz, folders and mappings of .npy files, plain HDF5, MadMiner's
training samples), and ``simfer.simulate(..., theta=points)`` at explicit θ points."""

from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch
from conftest import PRIOR, assert_same_data
from shard_helpers import FlakyBoard

import simfer
from simfer import ShapeError, StoreError, SupportError
from simfer.data import RaggedSets
from simulators import GaltonBoard


@pytest.fixture(scope="module")
def flaky_run():
    """A gold run with a reference class and failed rows (NaN x, and a row that raised)."""
    with pytest.warns(simfer.InvalidSimulationWarning):
        return simfer.simulate(
            FlakyBoard(n_rows=8),
            PRIOR,
            120,
            gold=True,
            theta_ref=[0.0],
            seed=4,
            chunk_size=30,
            executor="serial",
            progress=False,
        )


def as_arrays(data: simfer.SimulationData) -> dict[str, np.ndarray]:
    return {name: value.numpy() for name, value in data.columns().items()}


# -- SimulationData by hand --------------------------------------------------------------------
def test_simulation_data_from_arrays_checks_shapes_and_names_the_column():
    rng = np.random.default_rng(0)
    theta = rng.uniform(-1, 1, (50, 2))
    x = theta + 0.1 * rng.normal(size=(50, 2))
    data = simfer.SimulationData(theta=theta, x=x)
    assert data.theta.dtype == torch.float32 and data.x.dtype == torch.float32  # not float64
    assert data.valid.all() and not data.has_gold and data.theta_dim == 2
    kept = simfer.SimulationData(theta=torch.as_tensor(theta), x=torch.as_tensor(x))
    assert kept.theta.dtype == torch.float64  # tensors are kept as they are

    with pytest.raises(ShapeError, match=r"theta must be \[n, theta_dim\].*theta\[:, None\]"):
        simfer.SimulationData(theta=theta[:, 0], x=x)
    with pytest.raises(ShapeError, match=r"'joint_score' must have shape \[50, 2\], got \[50, 1\]"):
        simfer.SimulationData(theta=theta, x=x, joint_score=theta[:, :1])
    with pytest.raises(ShapeError, match=r"'joint_log_ratio' must have shape \[50\]"):
        simfer.SimulationData(theta=theta, x=x, joint_log_ratio=theta[:, :1])
    with pytest.raises(ShapeError, match=r"'from_reference' must be bool.*values != 0"):
        simfer.SimulationData(theta=theta, x=x, from_reference=np.zeros(50, dtype=int))
    with pytest.raises(ShapeError, match=r"'x' has 49 rows, theta has 50"):
        simfer.SimulationData(theta=theta, x=x[:49])
    with pytest.raises(ShapeError, match="'theta_ref' must be floating point"):
        simfer.SimulationData(theta=theta, x=x, theta_ref=torch.zeros(50, 2, dtype=torch.int64))


def test_own_arrays_train_an_estimator():
    rng = np.random.default_rng(1)
    theta = rng.uniform(-1, 1, (300, 1))
    data = simfer.SimulationData(theta=theta, x=theta + 0.1 * rng.normal(size=(300, 1)))
    npe = simfer.PosteriorEstimator(max_epochs=2, progress=False, hidden=16, n_transforms=1)
    npe.fit(data, prior=PRIOR)
    samples = npe.posterior(PRIOR, x_obs=data.x[0]).sample(20)
    assert samples.shape == (20, 1) and bool(((samples > -1) & (samples < 1)).all())


# -- .npz, .npy, HDF5 --------------------------------------------------------------------------
def test_npz_npy_and_hdf5_files_give_back_the_table(flaky_run, tmp_path):
    arrays = as_arrays(flaky_run)
    np.savez(tmp_path / "run.npz", **arrays)
    assert_same_data(simfer.load_simulations(tmp_path / "run.npz"), flaky_run)

    folder = tmp_path / "npy"
    folder.mkdir()
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)
    assert_same_data(simfer.load_simulations(folder), flaky_run)
    pair = {"theta": folder / "theta.npy", "x": folder / "x.npy"}
    plain = simfer.load_simulations(pair)
    assert plain.columns().keys() == {"theta", "x", "valid"}
    assert torch.equal(plain.valid, flaky_run.x.isfinite().all(1))

    with h5py.File(tmp_path / "plain.h5", "w") as file:
        for name, array in arrays.items():
            file[name] = array
    assert_same_data(simfer.load_simulations(tmp_path / "plain.h5"), flaky_run)


def test_hand_made_files_follow_the_documented_conventions(tmp_path):
    theta = np.linspace(-1, 1, 6)  # one parameter, 1-D, float64
    np.savez(
        tmp_path / "mine.npz",
        theta=theta,
        x=2 * theta,
        theta_ref=np.array([0.5]),  # one point for every row
        from_reference=np.array([0, 1, 0, 1, 0, 1]),  # 0/1 numbers
        joint_log_ratio=np.array([[0.1], [-np.inf], [np.nan], [0.3], [0.4], [0.5]]),
        joint_score=theta**2,
    )
    data = simfer.load_simulations(tmp_path / "mine.npz")
    assert data.theta.shape == (6, 1) and data.x.shape == (6, 1)
    assert data.theta.dtype == torch.float32  # torch's default dtype
    torch.testing.assert_close(data.theta_ref, torch.full((6, 1), 0.5))
    assert data.from_reference.tolist() == [False, True, False, True, False, True]
    assert data.joint_log_ratio.shape == (6,) and data.joint_score.shape == (6, 1)
    assert data.valid.tolist() == [True, True, False, True, True, True]  # NaN gold, not −inf
    double = simfer.load_simulations(tmp_path / "mine.npz", dtype=torch.float64)
    assert double.theta.dtype == torch.float64 and double.from_reference.dtype == torch.bool


def test_set_valued_x_in_files(tmp_path):
    sets = RaggedSets.from_list([torch.full((k, 3), float(k)) for k in (2, 0, 5, 1)])
    np.savez(
        tmp_path / "sets.npz",
        theta=np.arange(4.0)[:, None],
        **{"x.values": sets.values.numpy(), "x.ends": sets.offsets[1:].numpy()},
    )
    data = simfer.load_simulations(tmp_path / "sets.npz")
    assert data.is_set and data.x.equal(sets)
    with h5py.File(tmp_path / "sets.h5", "w") as file:
        file["theta"] = np.arange(4.0)[:, None]
        file["x.values"] = sets.values.numpy()
        file["x.ends"] = sets.offsets[1:].numpy()
    assert simfer.load_simulations(tmp_path / "sets.h5").x.equal(sets)


def test_bad_files_name_the_file_the_key_and_what_is_there(tmp_path):
    theta, x = np.zeros((5, 1)), np.ones((5, 2))
    np.savez(tmp_path / "typo.npz", theta=theta, x=x, joint_scores=theta)
    with pytest.raises(
        StoreError,
        match=r"typo.npz': 'joint_scores' is not a SimulationData field \(did you "
        r"mean 'joint_score'\?\).*\(it holds: joint_scores, theta, x\)",
    ):
        simfer.load_simulations(tmp_path / "typo.npz")
    np.savez(tmp_path / "no_x.npz", theta=theta, y=x[:, 0])
    with pytest.raises(StoreError, match=r"no_x.npz' has no 'x' \(it holds: theta, y\)"):
        simfer.load_simulations(tmp_path / "no_x.npz")
    np.savez(tmp_path / "short.npz", theta=theta, x=x[:4])
    with pytest.raises(StoreError, match=r"short.npz': .*'x' has 4 rows, theta has 5"):
        simfer.load_simulations(tmp_path / "short.npz")
    np.savez(tmp_path / "flags.npz", theta=theta, x=x, valid=np.array([0, 1, 2, 1, 1]))
    with pytest.raises(StoreError, match=r"flags.npz': 'valid' must be bool or 0/1"):
        simfer.load_simulations(tmp_path / "flags.npz")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(StoreError, match="objects.npy' is not a numeric .npy array"):
        simfer.load_simulations({"theta": tmp_path / "objects.npy", "x": tmp_path / "objects.npy"})
    np.save(tmp_path / "alone.npy", x)
    with pytest.raises(StoreError, match=r"alone.npy' is a single .npy file.*theta.npy and x.npy"):
        simfer.load_simulations(tmp_path / "alone.npy")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StoreError, match=r"holds no theta.npy and x.npy.*its .npy files: none"):
        simfer.load_simulations(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        simfer.load_simulations(tmp_path / "nowhere.npz")

    with h5py.File(tmp_path / "other.h5", "w") as file:
        file["data"] = x
    with pytest.raises(StoreError, match=r"other.h5' is not a simfer simulation store.*lacks the "):
        simfer.load_simulations(tmp_path / "other.h5")
    with h5py.File(tmp_path / "grouped.h5", "w") as file:
        file["theta"], file["x"], file["meta/date"] = theta, x, [1]
    with pytest.raises(StoreError, match=r"grouped.h5' holds a group 'meta'"):
        simfer.load_simulations(tmp_path / "grouped.h5")


# -- MadMiner's samples ------------------------------------------------------------------------
def write_madminer_ratio_sample(folder, data, name="train"):
    """``data`` written as MadMiner's ``SampleAugmenter.sample_train_more_ratios`` writes a
    sample: θ0, θ1, x, y ``(n, 1)``, r(x,z|θ0,θ1) ``(n, 1)``, t(x,z|θ0), t(x,z|θ1)."""
    folder.mkdir(exist_ok=True)
    quantities = {
        "theta0": data.theta,
        "theta1": data.theta_ref,
        "x": data.x,
        "y": data.from_reference.to(torch.float32)[:, None],
        "r_xz": data.joint_log_ratio.exp()[:, None],
        "t_xz0": data.joint_score,
        "t_xz1": data.joint_score_ref,
    }
    for quantity, value in quantities.items():
        np.save(folder / f"{quantity}_{name}.npy", value.numpy())


def test_madminer_samples_map_to_gold_columns(small_board_run, tmp_path):
    folder = tmp_path / "samples"
    data = small_board_run
    write_madminer_ratio_sample(folder, data)
    for source in (folder, folder / "r_xz_train.npy"):
        loaded = simfer.load_simulations(source)
        for name in ("theta", "theta_ref", "x", "from_reference", "joint_score", "joint_score_ref"):
            assert torch.equal(getattr(loaded, name), getattr(data, name)), name
        torch.testing.assert_close(loaded.joint_log_ratio, data.joint_log_ratio)
        assert loaded.valid.all()

    # a second sample, MadMiner's sample_train_local (θ, x, t(x,z|θ)): the folder is ambiguous
    np.save(folder / "theta_local.npy", data.theta.numpy())
    np.save(folder / "x_local.npy", data.x.numpy())
    np.save(folder / "t_xz_local.npy", data.joint_score.numpy())
    with pytest.raises(StoreError, match=r"2 MadMiner samples \(local, train\).*x_local.npy"):
        simfer.load_simulations(folder)
    local = simfer.load_simulations(folder / "t_xz_local.npy")
    assert local.columns().keys() == {"theta", "x", "joint_score", "valid"}
    assert torch.equal(local.joint_score, data.joint_score)

    # morphing can give negative weights, so r < 0: those rows are invalid, r = 0 is not
    r = data.joint_log_ratio.exp()[:, None].numpy()
    r[3], r[5] = -0.5, 0.0
    np.save(folder / "r_xz_train.npy", r)
    loaded = simfer.load_simulations(folder / "x_train.npy")
    assert (~loaded.valid).nonzero().flatten().tolist() == [3]
    assert loaded.joint_log_ratio[5] == -torch.inf

    (folder / "x_train.npy").unlink()
    with pytest.raises(StoreError, match=r"sample 'train' .* has no x_train.npy \(it holds: "):
        simfer.load_simulations(folder / "theta0_train.npy")


def test_madminer_samples_train_a_gold_estimator(small_board_run, tmp_path):
    write_madminer_ratio_sample(tmp_path / "samples", small_board_run)
    data = simfer.load_simulations(tmp_path / "samples")
    ratio = simfer.RatioEstimator(method="alices", max_epochs=2, progress=False, hidden=(16,))
    ratio.fit(data)
    log_r = ratio.log_ratio(x=data.x[:5], theta=data.theta[:5], reference=ratio.theta_ref)
    assert log_r.shape == (5,) and bool(log_r.isfinite().all())


def test_a_madminer_event_file_is_refused_with_the_way_forward(tmp_path):
    with h5py.File(tmp_path / "events.h5", "w") as file:  # MadMiner's layout, a few events
        file["benchmarks/names"] = np.array([b"sm", b"bsm"])
        file["benchmarks/values"] = np.array([[0.0], [1.0]])
        file["samples/observations"] = np.ones((4, 2))
        file["samples/weights"] = np.ones((4, 2))
    with pytest.raises(StoreError, match=r"MadMiner event file.*SampleAugmenter"):
        simfer.load_simulations(tmp_path / "events.h5")


# -- explicit θ points ----------------------------------------------------------------------
def test_simulate_at_explicit_points_reproduces_the_prior_run_at_its_own_draws(small_board_run):
    """θ points equal to a prior run's draws give that run's x and gold: the points replace
    the prior, the simulator's random numbers still come from (seed, chunk)."""
    data = small_board_run
    at_points = simfer.simulate(
        GaltonBoard(n_rows=8),
        theta=data.theta,
        gold=True,
        theta_ref=[0.0],
        seed=42,
        chunk_size=40,
        executor="serial",
        progress=False,
    )
    assert_same_data(at_points, data)


def test_explicit_points_are_resumable_and_checked(tmp_path):
    board = GaltonBoard(n_rows=8)
    grid = torch.linspace(-0.9, 0.9, 7).repeat_interleave(20)[:, None]  # 20 events per point
    path = tmp_path / "grid.h5"
    run = dict(gold=True, seed=5, chunk_size=30, executor="serial", progress=False)
    data = simfer.simulate(board, PRIOR, theta=grid, path=path, compression="gzip", **run)
    assert torch.equal(data.theta, grid) and data.has_gold and len(data) == 140
    assert_same_data(simfer.load_simulations(path), data)

    class Forbidden(GaltonBoard):
        def sample_with_latent(self, theta, design, generator):
            raise AssertionError("a finished grid must not be simulated again")

    forbidden = Forbidden(n_rows=8)
    forbidden.describe = board.describe
    assert_same_data(simfer.simulate(forbidden, PRIOR, theta=grid, path=path, **run), data)
    with pytest.raises(StoreError, match="theta"):
        simfer.simulate(board, PRIOR, theta=grid + 0.01, path=path, **run)
    with pytest.raises(StoreError, match="prior"):  # the prior is part of the run
        simfer.simulate(board, theta=grid, path=path, **run)

    with pytest.raises(ValueError, match="n=10 but theta holds 140 points"):
        simfer.simulate(board, theta=grid, n=10)
    with pytest.raises(SupportError, match="outside the prior's support; first: row 0"):
        simfer.simulate(board, simfer.BoxUniform([0.0], [1.0]), theta=grid)
    with pytest.raises(ShapeError, match=r"theta must have shape \[batch, theta_dim\]"):
        simfer.simulate(board, theta=grid[:, 0])
    with pytest.raises(TypeError, match="needs a prior to draw θ from, or explicit points"):
        simfer.simulate(board, n=10)


@pytest.mark.parametrize(
    "make",
    [
        lambda: simfer.PosteriorEstimator(max_epochs=2, progress=False),
        lambda: simfer.LikelihoodEstimator("nle", max_epochs=2, progress=False),
        lambda: simfer.RatioEstimator("alices", max_epochs=2, progress=False),
        lambda: simfer.ScoreEstimator(max_epochs=2, progress=False),
    ],
)
def test_a_float64_table_trains_every_estimator(small_board_run, make):
    double = small_board_run.to(dtype=torch.float64)
    assert double.theta.dtype == torch.float64
    estimator = make().fit(double)
    assert estimator.network is not None


def test_ratio_samples_without_the_reference_score_train_alices(small_board_run):
    # MadMiner's sample_train_ratio writes r_xz and t_xz but no t_xz1
    data = replace(small_board_run, joint_score_ref=None)
    estimator = simfer.RatioEstimator("alices", max_epochs=2, progress=False).fit(data)
    assert len(estimator.history.train_loss) == 2
