"""The config file of the ``simfer`` command: every bad config is one line naming the file,
the key and the problem; targets resolve relative to the config's folder."""

import textwrap

import pytest
import torch
from click.testing import CliRunner

from simfer import BoxUniform, Simulator
from simfer.cli import cli
from simfer.config import ConfigError, MissingFileError, load_config

BASE = """
[simulator]
target = "simulators:GaltonBoard"
n_rows = 8

[prior]
low = [-1.0]
high = [1.0]

[simulate]
n = 100
workers = 0
"""


def write(folder, text, name="config.toml"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path, **overrides):
    with pytest.raises(ConfigError) as caught:
        config = load_config(path, **overrides)
        config.simulator()
        config.prior()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


def test_a_good_config_builds_the_simulator_and_the_prior(tmp_path):
    config = load_config(write(tmp_path, BASE))
    simulator = config.simulator()
    assert type(simulator).__name__ == "GaltonBoard" and simulator.n_rows == 8
    prior = config.prior()
    assert isinstance(prior, BoxUniform)
    assert prior.low.tolist() == [-1.0] and prior.high.tolist() == [1.0]
    assert config.stages() == ["simulate"]
    assert config.out == tmp_path / "config-output"
    assert config.store_path() == tmp_path / "config-output" / "simulate" / "simulations.h5"
    assert config.store_path((1, 4)).name == "simulations.shard1-of-4.h5"


def test_without_a_prior_section_the_simulators_own_prior_is_used(tmp_path):
    text = BASE.replace("[prior]\nlow = [-1.0]\nhigh = [1.0]\n", "")
    prior = load_config(write(tmp_path, text)).prior()
    assert prior.low.tolist() == [-1.0]  # GaltonBoard.prior() is U(-1, 1)


def test_command_line_overrides_win_over_the_file(tmp_path):
    text = 'out = "from-file"\nseed = 3\ndevice = "meta"\n' + BASE.replace(
        "workers = 0", "workers = 0\nseed = 11"
    )
    path = write(tmp_path, text)
    config = load_config(path)
    assert config.out == tmp_path / "from-file" and config.device == "meta"
    assert config.stage_seed("simulate") == 11 and config.stage_seed("train") == 3
    config = load_config(path, out=tmp_path / "cli", seed=5, device="cpu")
    assert config.out == tmp_path / "cli" and config.device == "cpu"
    assert config.stage_seed("simulate") == 5 and config.stage_seed("train") == 5


USER_MODULE = """
import torch
import simfer


class Shifted(simfer.Simulator):
    def __init__(self, shift: float, scale: float = 1.0):
        super().__init__(theta_dim=2, x_shape=(2,), name="Shifted")
        self.shift, self.scale = shift, scale

    def sample(self, theta, design, generator):
        noise = torch.randn(theta.shape, generator=generator, dtype=theta.dtype)
        return theta + self.shift + self.scale * noise


def make(shift=0.0):
    return Shifted(shift)


def not_a_simulator():
    return 42


prior = simfer.BoxUniform([-2.0, -2.0], [2.0, 2.0])


def wide_prior(width):
    return simfer.BoxUniform([-width, -width], [width, width])
"""


def test_a_users_module_is_found_beside_the_config_whatever_the_working_directory(
    tmp_path, monkeypatch
):
    folder = tmp_path / "project"
    write(folder, USER_MODULE, name="mysim.py")
    path = write(
        folder,
        """
        [simulator]
        target = "mysim:Shifted"
        shift = 3.0

        [prior]
        target = "mysim.py:wide_prior"
        width = 4.0
        """,
    )
    monkeypatch.chdir(tmp_path)  # not the config's folder
    config = load_config(path)
    simulator = config.simulator()
    assert isinstance(simulator, Simulator) and simulator.shift == 3.0
    assert config.prior().high.tolist() == [4.0, 4.0]
    assert config.code_files() == [folder / "mysim.py"]
    x = simulator.simulate(torch.zeros(5, 2), seed=0)
    assert x.shape == (5, 2)


def test_a_factory_and_a_distribution_object_are_targets_too(tmp_path):
    write(tmp_path, USER_MODULE, name="mysim.py")
    path = write(
        tmp_path,
        """
        [simulator]
        target = "mysim:make"
        shift = 1.5

        [prior]
        target = "mysim:prior"
        """,
    )
    config = load_config(path)
    assert config.simulator().shift == 1.5
    assert config.prior().low.tolist() == [-2.0, -2.0]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ('"simulators:GaltonBoard"', '"nosuchmodule:Board"'),
            "[simulator] target: unknown module 'nosuchmodule': no file nosuchmodule.py in",
        ),
        (
            ('"simulators:GaltonBoard"', '"simulators:GaltonBord"'),
            "[simulator] target: 'simulators' has no attribute 'GaltonBord' (did you mean "
            "'GaltonBoard'?)",
        ),
        (
            ('"simulators:GaltonBoard"', '"GaltonBoard"'),
            "[simulator] target: 'GaltonBoard' is not of the form 'module:attr'",
        ),
        (
            ('"simulators:GaltonBoard"', '"missing.py:Board"'),
            "[simulator] target: no such file",
        ),
        (("n_rows = 8", "n_row = 8"), "[simulator] n_row: unknown key; did you mean 'n_rows'?"),
        (
            ("high = [1.0]", "high = [-2.0]"),
            "[prior] high: must exceed low in every dimension; in dimension 0 low = -1.0 and "
            "high = -2.0 (bounds reversed?)",
        ),
        (("high = [1.0]", "high = [1.0, 2.0]"), "[prior] high: has 2 values but low has 1"),
        (
            ("low = [-1.0]\nhigh = [1.0]", "low = [-1.0, -1.0]\nhigh = [1.0, 1.0]"),
            "[prior] low: the prior is over 2 parameters but the simulator expects theta_dim=1",
        ),
        (("high = [1.0]", "hihg = [1.0]"), "[prior] hihg: unknown key; did you mean 'high'?"),
        (("n = 100", 'n = "100"'), '[simulate] n: must be an integer, got a string ("100")'),
        (("n = 100", "n = -5"), "[simulate] n: must be positive, got -5"),
        (("n = 100", ""), "[simulate] n: missing: give n, or theta (a .npy file of points)"),
        (("n = 100", 'theta = "points.npy"'), "[simulate] theta: no such file"),
        (
            ("n = 100", 'n = 100\ncompression = "zip"'),
            "[simulate] compression: unknown value 'zip' (did you mean 'gzip'?)",
        ),
        (("n = 100", "n = 100\nnn = 3"), "[simulate] nn: unknown key; did you mean 'n'?"),
        (("workers = 0", "worker = 0"), "[simulate] worker: unknown key; did you mean 'workers'?"),
        (
            ("n = 100", "n = 100\ngold = 1"),
            "[simulate] gold: must be true or false, got an integer",
        ),
        (("[simulate]", "[simualte]"), "[simualte]: unknown section; did you mean [simulate]?"),
    ],
)
def test_each_bad_config_gets_one_line_naming_the_key(tmp_path, change, expected):
    path = write(tmp_path, BASE.replace(*change))
    assert expected in error_of(path)


@pytest.mark.parametrize(
    ("train", "expected"),
    [
        ('estimator = "ratio"\nmax_epoch = 3', "[train] max_epoch: unknown key; did you mean "),
        (
            'estimator = "ratios"',
            "[train] estimator: unknown value 'ratios' (did you mean 'ratio'?)",
        ),
        ('estimator = "ratio"\nhidden = "64"', "[train] hidden: must be an integer or a list of "),
        ('estimator = "ratio"\nlearning_rate = "fast"', "[train] learning_rate: must be a number"),
        ('estimator = "ratio"\ndevice = "cuda"', "[train] device: set the device at the top"),
        ('estimator = "posterior"\nmethod = "carl"', "[train] method: the posterior estimator"),
        ('method = "carl"', "[train] estimator: missing: this key is required"),
        ('estimator = "ratio"\ndata = "nowhere.h5"', "[train] data: no such file"),
    ],
)
def test_training_settings_are_checked_against_the_estimators_signature(tmp_path, train, expected):
    path = write(tmp_path, BASE + "\n[train]\n" + train + "\n")
    assert expected in error_of(path)
    if "max_epoch" in train:
        assert "'max_epochs'" in error_of(path)


def test_estimator_settings_that_fit_pass_through(tmp_path):
    path = write(
        tmp_path,
        BASE
        + '\n[train]\nestimator = "ratio"\nmethod = "carl"\nhidden = [16, 16]\nmax_epochs = 2\n',
    )
    config = load_config(path)
    assert config.estimator_class().__name__ == "RatioEstimator"
    settings = config.estimator_settings()
    assert settings == {"method": "carl", "hidden": [16, 16], "max_epochs": 2}
    config.estimator_class()(**settings)  # the constructor accepts them


def test_a_missing_observation_file_and_bad_design_boxes_are_named(tmp_path):
    path = write(tmp_path, BASE + '\n[posterior]\nx_obs = "x_obs.npy"\n')
    assert f"[posterior] x_obs: no such file '{tmp_path / 'x_obs.npy'}'" in error_of(path)
    path = write(tmp_path, BASE + "\n[design]\nlow = [1.0]\nhigh = [0.5]\n")
    assert "[design] high: must exceed low" in error_of(path)
    path = write(tmp_path, BASE + "\n[design]\nn_outer = 10\n")
    assert "[design] designs: missing: give candidate designs, or low and high" in error_of(path)


def test_a_target_that_is_no_simulator_or_raises_is_reported(tmp_path):
    write(tmp_path, USER_MODULE, name="mysim.py")
    text = '[simulator]\ntarget = "mysim:not_a_simulator"\n'
    message = error_of(write(tmp_path, text))
    assert (
        "[simulator] target: mysim:not_a_simulator(...) returned a int, not a simfer.Simulator"
        in (message)
    )
    text = '[simulator]\ntarget = "mysim:Shifted"\n'
    assert "[simulator] shift: missing: the target needs this option" in error_of(
        write(tmp_path, text)
    )
    text = '[simulator]\ntarget = "mysim:prior"\n'
    assert "is a BoxUniform, not a simfer.Simulator" in error_of(write(tmp_path, text))
    write(tmp_path, "raise RuntimeError('broken on import')\n", name="broken.py")
    text = '[simulator]\ntarget = "broken:Board"\n'
    assert "raised RuntimeError: broken on import" in error_of(write(tmp_path, text))


def test_unreadable_toml_and_a_missing_config_file(tmp_path):
    path = write(tmp_path, "[simulator\ntarget = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(MissingFileError, match="no such file"):
        load_config(tmp_path / "absent.toml")


def test_the_command_prints_a_config_error_as_one_line_with_exit_code_2(tmp_path):
    path = write(tmp_path, BASE.replace("high = [1.0]", "high = [-3.0]"))
    result = CliRunner().invoke(cli, ["simulate", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [lines[0]] and "Traceback" not in result.output
    assert lines[0].startswith(f"simfer: {path}: [prior] high: must exceed low")
