"""Every tutorial runs to the end and writes its figures.

Each ``tutorials/*.py`` is executed as a script by this interpreter, in a fresh
process (no state shared with the other tests), in an empty working directory,
with ``SIMFER_TUTORIAL_OUT`` pointing at a temporary folder and matplotlib on the
Agg backend.  The tutorials make their own assertions, so a broken simfer fails
them here.  New tutorials are picked up without touching this file.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = sorted((ROOT / "tutorials").glob("*.py"))


@pytest.mark.parametrize("script", TUTORIALS, ids=[path.name for path in TUTORIALS])
def test_tutorial_runs_and_writes_figures(script, tmp_path):
    out = tmp_path / "figures"
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(
        os.environ,
        SIMFER_TUTORIAL_OUT=str(out),
        MPLBACKEND="Agg",
        PYTHONPATH=python_path,
        OMP_NUM_THREADS="1",
    )
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (
        f"{script.name} failed:\n--- stdout ---\n{result.stdout[-4000:]}"
        f"\n--- stderr ---\n{result.stderr[-4000:]}"
    )
    figures = sorted(out.glob("**/*.png"))
    assert figures, f"{script.name} wrote no PNG to SIMFER_TUTORIAL_OUT ({out})"
    assert all(figure.stat().st_size > 0 for figure in figures)
    assert not (workdir / "tutorial_output").exists(), "the tutorial ignored SIMFER_TUTORIAL_OUT"
