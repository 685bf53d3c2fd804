"""The simfer command: every stage from a config file, up-to-date skipping, sharded
simulation runs in real processes, and the small commands (--version, inspect, help)."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import simfer
from simfer.cli import cli, main

GALTON = """
seed = 1

[simulator]
target = "simulators:GaltonBoard"
n_rows = 8

[simulate]
n = 600
gold = true
theta_ref = [0.0]
workers = 0

[train]
estimator = "ratio"
method = "alices"
hidden = [16, 16]
max_epochs = 3
batch_size = 128
progress = false

[posterior]
x_obs = "x_obs.npy"
samples = 200
method = "slice"
n_chains = 20
warmup = 20
theta_true = [0.3]
"""

DIAGNOSE = """
[diagnose]
n = 30
samples = 10
warmup = 10
"""


def write_config(folder, text, name="config.toml"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    np.save(folder / "x_obs.npy", np.array([[1.0], [2.0], [0.0]]))
    return path


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def summary(out, stage):
    return json.loads((out / stage / "summary.json").read_text())


# -- the small commands ----------------------------------------------------------------------------
def test_inspect_reports_a_foreign_file_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not a store")
    assert main(["inspect", str(bad)]) == 2
    assert "not a readable HDF5 file" in capsys.readouterr().err


def test_inspect_on_a_missing_file_says_so(tmp_path, capsys):
    missing = tmp_path / "nowhere.h5"
    assert main(["inspect", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"simfer: no such file '{missing}'"
    assert "corrupt" not in err


def test_version_comes_from_the_package():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"simfer {simfer.__version__}"
    process = subprocess.run(
        [sys.executable, "-m", "simfer.cli", "--version"], capture_output=True, text=True
    )
    assert process.returncode == 0 and process.stdout.strip() == f"simfer {simfer.__version__}"


def test_help_shows_no_docstring_markup():
    texts = [invoke("--help").output]
    texts += [invoke(name, "--help").output for name in cli.commands]
    for text in texts:
        assert "`" not in text and "``" not in text
    assert all(name in texts[0] for name in ("simulate", "run", "merge", "design", "inspect"))


def test_a_usage_error_exits_with_2(tmp_path, capsys):
    assert main(["simulate"]) == 2  # no CONFIG
    assert "Missing argument 'CONFIG'" in capsys.readouterr().err
    path = write_config(tmp_path, GALTON)
    assert main(["simulate", str(path), "--shard", "3/2"]) == 2
    assert "need 0 <= I < N" in capsys.readouterr().err


# -- the stages ------------------------------------------------------------------------------------
def test_simulate_train_posterior_diagnose_from_one_file(tmp_path):
    path = write_config(tmp_path, GALTON + DIAGNOSE)
    out = tmp_path / "out"
    for stage in ("simulate", "train", "posterior", "diagnose"):
        result = invoke(stage, path, "--out", out)
        assert result.exit_code == 0, result.output
        assert f"{stage}: done" in result.stderr
        assert (out / stage / "summary.md").read_text().startswith(f"# simfer {stage}")

    store = out / "simulate" / "simulations.h5"
    assert summary(out, "simulate")["results"]["rows"] == 600
    assert len(simfer.load_simulations(store)) == 600

    model = simfer.load(out / "train" / "model.pt")
    assert type(model).__name__ == "RatioEstimator" and model.method == "alices"
    assert model.hidden == (16, 16) or list(model.hidden) == [16, 16]
    trained = summary(out, "train")
    assert trained["results"]["epochs"] <= 3
    assert str(store) in trained["inputs"]
    assert (out / "train" / "loss.png").stat().st_size > 0

    samples = np.load(out / "posterior" / "samples.npz")
    assert samples["samples"].shape == (200, 1)
    assert np.all(np.abs(samples["samples"]) <= 1.0)  # inside the prior box
    assert samples["x_obs"].shape == (3, 1)
    posterior = summary(out, "posterior")["results"]
    assert posterior["observations"] == 3
    assert posterior["mean"][0] == pytest.approx(samples["samples"].mean(), abs=1e-6)
    assert (out / "posterior" / "corner.png").stat().st_size > 0

    diagnosed = summary(out, "diagnose")["results"]
    assert diagnosed["pairs"] == 30 and diagnosed["samples_per_pair"] == 10
    assert len(diagnosed["sbc"]["p_values"]) == 1
    assert 0 <= diagnosed["coverage"]["max_error"] <= 1
    assert -0.5 <= diagnosed["tarp"]["atc"] <= 0.5
    for plot in ("sbc.png", "coverage.png"):
        assert (out / "diagnose" / plot).stat().st_size > 0


def test_an_embedding_from_the_users_file_is_trained_and_rebuilt_to_load(tmp_path):
    (tmp_path / "nets.py").write_text(
        "import torch\n\n\ndef summary():\n"
        "    return torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.Tanh())\n"
    )
    text = GALTON.replace('estimator = "ratio"\nmethod = "alices"', 'estimator = "posterior"')
    text = text.replace(
        "hidden = [16, 16]", 'hidden = 16\nn_transforms = 2\nembedding = "nets:summary"'
    )
    text = text.replace('method = "slice"\n', "")
    path = write_config(tmp_path, text)
    result = invoke("run", path)
    assert result.exit_code == 0, result.output
    out = tmp_path / "config-output"
    trained = summary(out, "train")
    assert trained["results"]["hyperparameters"]["embedding"] == {"class": "Sequential"}
    assert str(tmp_path / "nets.py") in trained["inputs"]
    assert np.load(out / "posterior" / "samples.npz")["samples"].shape == (200, 1)
    assert summary(out, "posterior")["results"]["sampler"]["method"] == "slice"  # 3 iid x

    with open(tmp_path / "nets.py", "a") as file:
        file.write("# edited\n")
    again = invoke("run", path)
    assert "simulate: up to date" in again.stderr  # the embedding is not simulator code
    assert "train: done" in again.stderr


POINTS = """
[simulator]
target = "simulators:GaltonBoard"
n_rows = 8

[simulate]
theta = "points.npy"
workers = 0
compression = "gzip"
"""


def test_simulate_at_explicit_points_into_a_compressed_store(tmp_path):
    points = np.repeat(np.array([[-0.5], [0.0], [0.5]]), 4, axis=0)
    np.save(tmp_path / "points.npy", points)
    path = write_config(tmp_path, POINTS)
    result = invoke("simulate", path)
    assert result.exit_code == 0, result.output
    store = tmp_path / "config-output" / "simulate" / "simulations.h5"
    data = simfer.load_simulations(store)
    assert len(data) == 12
    assert torch.allclose(data.theta.double(), torch.as_tensor(points))
    import h5py

    with h5py.File(store) as file:
        assert file["x"].compression == "gzip"

    (tmp_path / "points.npy").write_bytes(b"not an array")
    result = invoke("simulate", path, "--out", tmp_path / "again")
    assert result.exit_code == 2
    assert "[simulate] theta: not a readable .npy array" in result.stderr


DESIGN = """
seed = 0

[simulator]
target = "simulators:LinearGaussianDesign"
n_obs = 3

[design]
low = [0.05]
high = [1.5]
n_grid = 7
n_outer = 200
n_inner = 200
"""


def test_design_over_a_grid_and_by_search_with_the_exact_likelihood(tmp_path):
    path = write_config(tmp_path, DESIGN)
    result = invoke("design", path)
    assert result.exit_code == 0, result.output
    out = tmp_path / "config-output" / "design"
    curve = json.loads((out / "eig.json").read_text())
    assert len(curve["designs"]) == 7 and curve["method"] == "nmc"
    results = summary(tmp_path / "config-output", "design")["results"]
    assert results["source"] == "simulator" and results["candidates"] == 7
    best = int(np.nanargmax(curve["eig"]))
    assert results["best_design"] == pytest.approx(curve["designs"][best])
    # the grid agrees with the analytic EIG of the linear Gaussian model within 4 stderr
    from simulators import LinearGaussianDesign

    exact = LinearGaussianDesign(n_obs=3).analytic_eig(torch.tensor(curve["designs"]))
    error = np.abs(np.array(curve["eig"]) - exact.numpy())
    assert np.all(error < 4 * np.array(curve["stderr"]) + 0.05)
    assert (out / "eig.png").stat().st_size > 0

    path = write_config(tmp_path, DESIGN + "search = true\nn_zoom = 1\n", name="search.toml")
    result = invoke("design", path)
    assert result.exit_code == 0, result.output
    curve = json.loads((tmp_path / "search-output" / "design" / "eig.json").read_text())
    assert len(curve["designs"]) == 14  # two stages of 7
    assert any("grid zoom" in note for note in curve["notes"])


def test_a_design_stage_needs_a_source_that_takes_a_design(tmp_path):
    path = write_config(
        tmp_path,
        GALTON + '\n[design]\nsource = "simulator"\ndesigns = [[0.1], [0.2]]\n',
    )
    result = invoke("design", path)
    assert result.exit_code == 2
    assert "[design] source: the simulator GaltonBoard needs an exact likelihood and a design" in (
        result.stderr
    )


def documented_config(title):
    """The ```toml block titled ``title`` of docs/cli.md."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
    match = re.search(rf'```toml title="{title}"\n(.*?)```', page, re.S)
    assert match, f"docs/cli.md has no toml block titled {title}"
    return match.group(1)


#: The complete config of docs/cli.md with budgets a test can afford.
SMALL_BUDGETS = [
    ('out = "runs/oscillator"', 'out = "runs"'),
    ("n = 20000", "n = 1500"),
    ("workers = 2", "workers = 0"),
    ("hidden = 64", "hidden = 16"),
    ("n_transforms = 4", "n_transforms = 2"),
    ("max_epochs = 100", "max_epochs = 4"),
    ("samples = 5000", "samples = 100"),
    ("n_chains = 100", "n_chains = 10"),
    ("warmup = 200", "warmup = 10"),
    ("n = 200 ", "n = 20 "),
    ("samples = 100 ", "samples = 8 "),
    ("n_grid = 31", "n_grid = 5"),
    ("n_outer = 1000", "n_outer = 50"),
    ("n_inner = 1000", "n_inner = 50"),
]


def test_the_documented_config_runs_from_simulation_to_an_eig_curve(tmp_path):
    text = documented_config("config.toml")
    for old, new in SMALL_BUDGETS:
        assert old in text, old
        text = text.replace(old, new)
    path = write_config(tmp_path, text)
    np.save(tmp_path / "observed.npy", np.array([0.5, -0.2, 0.1]))
    result = invoke("run", path)
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs"
    for stage in ("simulate", "train", "posterior", "diagnose", "design"):
        assert f"{stage}: done" in result.stderr
    assert simfer.load(out / "train" / "model.pt").design_dim == 1
    assert np.load(out / "posterior" / "samples.npz")["samples"].shape == (100, 2)
    assert "coverage" not in summary(out, "diagnose")["results"]
    design = summary(out, "design")["results"]
    assert design["source"] == "model" and design["candidates"] == 5
    assert 0.1 <= design["best_design"][0] <= 1.2 + 0.3 + 1e-6
    for plot in ("train/loss.png", "posterior/corner.png", "diagnose/sbc.png", "design/eig.png"):
        assert (out / plot).stat().st_size > 0


def test_the_documented_simulator_file_runs_in_worker_processes(tmp_path, monkeypatch):
    page = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
    module = re.search(r"```python\n(# mysim.py.*?)```", page, re.S).group(1)
    (tmp_path / "mysim.py").write_text(module)
    text = '[simulator]\ntarget = "mysim:Shifted"\nshift = 1.0\n\n[simulate]\nn = 64\nworkers = 2\n'
    path = write_config(tmp_path, text)
    monkeypatch.chdir(tmp_path.parent)  # the module is found beside the config, not here
    result = invoke("simulate", path)
    assert result.exit_code == 0, result.output
    data = simfer.load_simulations(tmp_path / "config-output" / "simulate" / "simulations.h5")
    assert len(data) == 64 and bool((data.theta.abs() <= 2).all())  # the simulator's prior
    assert abs(float((data.x - data.theta).mean()) - 1.0) < 0.5  # x = θ + 1 + ε


def test_the_documented_galton_config_is_valid(tmp_path):
    from simfer.config import load_config

    path = write_config(tmp_path, documented_config("galton.toml"))
    config = load_config(path)
    assert config.stages() == ["simulate", "train", "posterior", "diagnose"]
    assert config.prior().low.tolist() == [-1.0]
    config.estimator_class()(**config.estimator_settings())


# -- run: what is up to date is skipped ------------------------------------------------------------
def test_run_skips_stages_that_are_up_to_date_and_reruns_what_changed(tmp_path):
    path = write_config(tmp_path, GALTON)
    out = tmp_path / "config-output"
    first = invoke("run", path)
    assert first.exit_code == 0, first.output
    assert [line.split(":")[0] for line in first.stderr.splitlines() if "done" in line] == [
        "simulate",
        "train",
        "posterior",
    ]
    stamps = {s: (out / s / "summary.json").stat().st_mtime_ns for s in ("simulate", "train")}

    again = invoke("run", path)
    assert again.exit_code == 0
    for stage in ("simulate", "train", "posterior"):
        assert f"{stage}: up to date" in again.stderr
    assert "running" not in again.stderr

    path.write_text(path.read_text().replace("samples = 200", "samples = 150"))
    changed = invoke("run", path)
    assert "simulate: up to date" in changed.stderr and "train: up to date" in changed.stderr
    assert "posterior: done" in changed.stderr
    assert np.load(out / "posterior" / "samples.npz")["samples"].shape == (150, 1)

    path.write_text(path.read_text().replace("max_epochs = 3", "max_epochs = 2"))
    changed = invoke("run", path)
    assert "simulate: up to date" in changed.stderr
    assert "train: done" in changed.stderr and "posterior: done" in changed.stderr

    (out / "train" / "model.pt").unlink()  # a missing output is remade
    changed = invoke("run", path)
    assert "train: done" in changed.stderr and "simulate: up to date" in changed.stderr
    assert (out / "simulate" / "summary.json").stat().st_mtime_ns == stamps["simulate"]

    forced = invoke("run", path, "--force")
    assert all(f"{s}: done" in forced.stderr for s in ("simulate", "train", "posterior"))


def test_a_changed_simulator_file_is_not_resumed_from_the_old_store(tmp_path):
    (tmp_path / "board.py").write_text(
        "from simulators import GaltonBoard\n\n\n"
        "def make(n_rows=8):\n    return GaltonBoard(n_rows)\n"
    )
    path = write_config(
        tmp_path,
        GALTON.replace('"simulators:GaltonBoard"', '"board:make"').split("[train]")[0],
    )
    assert invoke("run", path).exit_code == 0
    with open(tmp_path / "board.py", "a") as file:
        file.write("# a change to the simulator's code\n")
    result = invoke("run", path)
    assert result.exit_code == 2
    assert "board.py' changed since the store" in result.stderr
    assert "move the store aside" in result.stderr


# -- cluster runs: shards in separate processes ----------------------------------------------------
SLOW_SIMULATOR = """
import time

import torch
import simfer


class Slow(simfer.Simulator):
    def __init__(self, marker: str = "", delay: float = 0.0):
        super().__init__(theta_dim=1, x_shape=(2,), name="Slow")
        self.marker, self.delay = marker, delay

    def sample(self, theta, design, generator):
        if self.marker:
            with open(self.marker, "a") as file:
                file.write("chunk\\n")
        time.sleep(self.delay)
        noise = torch.randn(theta.shape[0], 2, generator=generator, dtype=theta.dtype)
        return theta.repeat(1, 2) + noise
"""

SHARDED = """
seed = 7

[simulator]
target = "slow:Slow"
{options}

[prior]
low = [-1.0]
high = [1.0]

[simulate]
n = 120
chunk_size = 10
workers = 0
"""


def run_simfer(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "simfer.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


@pytest.mark.slow
def test_shards_killed_and_rerun_merge_into_the_unsharded_store(tmp_path):
    (tmp_path / "slow.py").write_text(SLOW_SIMULATOR)
    marker = tmp_path / "calls.txt"
    fast = write_config(tmp_path, SHARDED.format(options=""), name="fast.toml")
    slow = write_config(
        tmp_path, SHARDED.format(options=f'marker = "{marker}"\ndelay = 0.4'), name="slow.toml"
    )
    shards = tmp_path / "shards"

    reference = run_simfer("simulate", fast, "--out", tmp_path / "whole", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    done = run_simfer("simulate", fast, "--shard", "0/2", "--out", shards, cwd=tmp_path)
    assert done.returncode == 0, done.stderr

    # shard 1 is killed once it has committed at least one chunk, then run again
    killed = subprocess.Popen(
        [sys.executable, "-m", "simfer.cli", "simulate", str(slow), "--shard", "1/2"]
        + ["--out", str(shards)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (marker.exists() and len(marker.read_text().splitlines()) >= 3):
        assert killed.poll() is None and time.monotonic() < deadline, "shard 1 never started"
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    calls_before = len(marker.read_text().splitlines())
    rerun = run_simfer("simulate", slow, "--shard", "1/2", "--out", shards, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    calls_after = len(marker.read_text().splitlines()) - calls_before
    assert calls_after < 6  # the shard has 6 chunks; the committed ones were not redone

    parts = sorted((shards / "simulate").glob("simulations.shard*-of-2.h5"))
    assert [p.name for p in parts] == ["simulations.shard0-of-2.h5", "simulations.shard1-of-2.h5"]
    merged = tmp_path / "merged.h5"
    result = run_simfer("merge", merged, *parts, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    whole = simfer.load_simulations(tmp_path / "whole" / "simulate" / "simulations.h5")
    combined = simfer.load_simulations(merged)
    assert len(combined) == len(whole) == 120
    assert torch.equal(combined.theta, whole.theta) and torch.equal(combined.x, whole.x)

    # a shard of another run (another seed) is refused, in one line
    other = run_simfer(
        "simulate",
        fast,
        "--shard",
        "1/2",
        "--seed",
        "99",
        "--out",
        tmp_path / "other",
        cwd=tmp_path,
    )
    assert other.returncode == 0, other.stderr
    foreign = tmp_path / "other" / "simulate" / "simulations.shard1-of-2.h5"
    refused = run_simfer("merge", tmp_path / "bad.h5", parts[0], foreign, cwd=tmp_path)
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    assert not (tmp_path / "bad.h5").exists()


def test_merge_names_a_missing_shard(tmp_path):
    result = invoke("merge", tmp_path / "out.h5", tmp_path / "absent.h5")
    assert result.exit_code == 2
    assert f"no such file: {tmp_path / 'absent.h5'}" in result.stderr


def test_inspect_reads_any_table_load_simulations_reads(tmp_path, capsys):
    np.savez(tmp_path / "mine.npz", theta=np.zeros((5, 1)), x=np.ones((5, 2)))
    assert main(["inspect", str(tmp_path / "mine.npz")]) == 0
    out = capsys.readouterr().out
    assert "n=5" in out and "fingerprint" not in out  # not a store: no run to show


def test_the_readme_config_is_a_valid_config(tmp_path):
    import re
    from pathlib import Path

    from simfer.config import load_config

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    toml = re.search(r"```toml\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "config.toml").write_text(toml)
    np.save(tmp_path / "observed.npy", np.zeros((5, 1), dtype=np.float32))
    config = load_config(tmp_path / "config.toml")
    assert {"simulator", "simulate", "train", "posterior"} <= set(config.sections)
