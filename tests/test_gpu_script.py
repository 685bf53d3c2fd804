"""benchmarks/gpu.py runs every one of its paths on a CPU at small sizes, so the script a
GPU session runs in one call is known to work before the device is lent."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_gpu_path_runs_on_the_cpu(tmp_path):
    results, markdown = tmp_path / "gpu.jsonl", tmp_path / "gpu.md"
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--small"]
    command += ["--results", str(results), "--markdown", str(markdown)]
    subprocess.run(command, check=True, cwd=tmp_path, timeout=600)
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    paths = {row["path"] for row in rows if "error" not in row}
    assert {"training", "npe_sampling", "slice", "eig", "portability"} <= paths
    portability = next(row for row in rows if row["path"] == "portability")
    assert all(d == 0.0 for d in portability["figures"]["max_abs_difference"].values())
    assert "| training | NPE rows/s |" in markdown.read_text()
