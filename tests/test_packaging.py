"""simfer installs from a built wheel into a fresh virtual environment, and works there.

The wheel is built from a copy of the package's sources (the repository is left as it
is), without build isolation (this environment's setuptools builds it, offline).  The
fresh environment sees none of this one's packages: it gets torch 2.13.0 (the CPU wheel
that pip finds on local disk here; on another machine, whatever pip's index gives) and
then the wheel with its declared dependencies from the package index, so a dependency
missing from setup.cfg fails here.  Then, from a folder outside the repository: import,
``simfer --version``, ``simfer --help``, a small simulation of a ready simulator, and
the core install's promise: no Dask, no sbi.

About a minute, most of it pip installing the dependencies.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: What the wheel is built from (setup.cfg reads README.md for the long description).
SOURCES = ["setup.cfg", "pyproject.toml", "README.md", "simfer", "simulators"]
#: torch for the fresh environment: the release this project's Makefile installs.
TORCH = "torch==2.13.0"


def source_version() -> str:
    """``simfer.__version__`` as written in simfer/__init__.py, read without importing it."""
    tree = ast.parse((ROOT / "simfer" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "__version__" for target in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError("simfer/__init__.py assigns no __version__")


def run(command: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(map(str, command))} failed ({result.returncode}):\n"
        f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
    )
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel of simfer built from a copy of its sources."""
    work = tmp_path_factory.mktemp("build")
    source = work / "source"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    run([*command, "--wheel-dir", str(work / "dist"), str(source)], cwd=work)
    (built,) = (work / "dist").glob("simfer-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """The bin/ folder of a fresh virtual environment with torch and the wheel installed."""
    home = tmp_path_factory.mktemp("venv") / "env"
    run([sys.executable, "-m", "venv", str(home)], cwd=home.parent)
    python = home / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--quiet", TORCH, str(wheel)], cwd=home.parent)
    return home / "bin"


def test_the_wheel_has_one_version_and_a_light_core(wheel):
    """The wheel's version is ``simfer.__version__`` (setup.cfg reads it with ``attr:``),
    and Dask and the comparison peers are extras, not requirements."""
    version = source_version()
    assert wheel.name.startswith(f"simfer-{version}-"), wheel.name
    with zipfile.ZipFile(wheel) as archive:
        (metadata_name,) = [name for name in archive.namelist() if name.endswith("/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
        packages = {name.split("/")[0] for name in archive.namelist()}
    assert metadata["Version"] == version
    assert {"simfer", "simulators"} <= packages
    assert "tests" not in packages
    required = [req for req in metadata.get_all("Requires-Dist") if "extra ==" not in req]
    names = {re.match(r"[A-Za-z0-9._-]+", req)[0].lower() for req in required}
    assert {"torch", "click", "h5py", "nflows", "pyro-ppl"} <= names
    assert not names & {"dask", "distributed", "sbi", "scikit-learn"}, names
    extras = set(metadata.get_all("Provides-Extra"))
    assert {"dask", "compare", "test"} <= extras


def test_the_installed_wheel_imports_and_runs(venv, tmp_path):
    """Outside the repository, the installed package imports (from the environment, not
    from the sources), its command answers, and a small simulation runs."""
    version = source_version()
    script = (
        "import importlib.util, sys\n"
        "import simfer, simulators\n"
        "print(simfer.__version__)\n"
        "print(simfer.__file__)\n"
        "board = simulators.GaltonBoard(n_rows=4)\n"
        "data = simfer.simulate(board, board.prior(), 16, gold=True, theta_ref=[0.0], seed=0,\n"
        "                       executor='serial', progress=False)\n"
        "assert data.theta.shape == (16, 1) and data.joint_score.shape == (16, 1)\n"
        "peers = ('dask', 'distributed', 'sbi')\n"
        "present = [name for name in peers if importlib.util.find_spec(name)]\n"
        "assert not present, f'the core install pulled in {present}'\n"
        "assert 'dask' not in sys.modules\n"
    )
    result = run([str(venv / "python"), "-c", script], cwd=tmp_path)
    printed_version, location = result.stdout.split()[:2]
    assert printed_version == version
    assert Path(location).resolve().is_relative_to(venv.parent.resolve()), location

    answer = run([str(venv / "simfer"), "--version"], cwd=tmp_path)
    assert answer.stdout.strip() == f"simfer {version}"
    help_text = run([str(venv / "simfer"), "--help"], cwd=tmp_path).stdout
    assert "demo" in help_text and "inspect" in help_text
