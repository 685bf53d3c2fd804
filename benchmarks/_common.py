"""What the benchmark scripts share: versions and machine for the table header, sbi's
no-op tracker, number formatting, the JSON-lines log and the markdown block writer."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import sys
from datetime import datetime
from pathlib import Path

import torch

__all__ = [
    "JsonLines",
    "NullTracker",
    "cell_text",
    "fmt",
    "library_versions",
    "machine",
    "run_header",
    "run_meta",
    "write_markdown",
]


def library_versions(*modules: str) -> str:
    """ "Python 3.11.x, torch 2.x, sbi 0.27.0, …" as installed (or "… not installed")."""
    versions = [f"Python {platform.python_version()}", f"torch {torch.__version__}"]
    for module in modules:
        try:
            versions.append(f"{module} {importlib.metadata.version(module)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{module} not installed")
    return ", ".join(versions)


def machine(threads: int) -> str:
    gpu = "a GPU present (unused)" if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores, {gpu}, {threads} torch threads"


class NullTracker:
    """sbi's tracker protocol, logging nothing (its default writes ./sbi-logs/)."""

    log_dir = None

    def log_metric(self, name, value, step=None):
        pass

    def log_metrics(self, metrics, step=None):
        pass

    def log_params(self, params):
        pass

    def add_figure(self, name, figure, step=None):
        pass

    def flush(self):
        pass


def fmt(value: float | None) -> str:
    """3 significant digits; "—" for None, "inf" for non-finite values."""
    if value is None:
        return "—"
    if not math.isfinite(value):
        return "inf"
    return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def cell_text(row: dict | None, describe) -> str:
    """A table cell for one result row: "not run", "failed" (the row holds an error), or
    ``describe(row)``."""
    if row is None:
        return "not run"
    if "error" in row:
        return "failed"
    return describe(row)


class JsonLines:
    """An append-only JSON-lines file of results: every row is flushed as it is written,
    so a killed run keeps what it finished, and `rows()` reads them back to resume."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
        return rows

    def append(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()


def run_meta(script: str, argv: list[str] | None, threads: int, *libraries: str) -> dict:
    """The header facts of a run: the command as typed (``argv``, or the process's own
    arguments), date, machine and the versions of ``libraries``."""
    arguments = sys.argv[1:] if argv is None else argv
    return {
        "command": " ".join([".venv/bin/python", f"benchmarks/{script}", *arguments]),
        "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": machine(threads),
        "versions": library_versions(*libraries),
    }


def sitting(n_resumed: int) -> str:
    """The wall-time qualifier of a run that resumed ``n_resumed`` finished cells: it times
    only this sitting, and the cells it resumed carry their own times ("" for a new run)."""
    return f" in this sitting, which resumed {n_resumed} finished cells" if n_resumed else ""


def run_header(meta: dict) -> list[str]:
    """The two lines every table starts with: the command, then date, machine, versions
    and wall time (``meta`` holds command, date, machine, versions, wall_minutes, status)."""
    return [
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; machine: {meta['machine']}; {meta['versions']}; "
        f"total wall time {meta['wall_minutes']:.1f} min{meta['status']}.",
    ]


def write_markdown(path: Path, table: str, name: str, heading: str) -> None:
    """Put ``table`` between the ``<!-- name:begin -->``/``<!-- name:end -->`` markers of
    the markdown file at ``path``, keeping the text around them; a missing block is
    appended under ``heading`` (a missing file is created)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{table}\n{end}"
    if path.exists():
        text = path.read_text()
        if begin in text and end in text:
            before, rest = text.split(begin, 1)
            after = rest.split(end, 1)[1]
            path.write_text(before + block + after)
            return
        path.write_text(text.rstrip("\n") + f"\n\n## {heading}\n\n" + block + "\n")
        return
    path.write_text(f"# Benchmarks\n\n## {heading}\n\n" + block + "\n")
