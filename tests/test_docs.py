"""Every ```python block of docs/*.md and README.md runs.

Each page's python blocks run in order, in one namespace (``__name__ == "__main__"``, so a
block guarded for process pools runs too), in a fresh Python process whose working
directory is an empty temporary folder, with matplotlib on the Agg backend.  A block is
padded with blank lines before it is compiled, so a traceback names the line of the page.

A block that cannot run here is marked in the page, visibly, by a title on its fence that
starts with "Not run:" and gives the reason, which the docs site shows above the block::

    ```python title="Not run: needs a SLURM cluster and dask-jobqueue"

The site itself (these pages, the tutorials through docs/hooks/repo_pages.py, the API
reference) is built by ``mkdocs build --strict`` in ``make docs``, which ``make test`` runs
before the tests; here the hook's conversion of a tutorial is tested on its own.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]

#: An opening or closing fence (backticks at the start of a line) and its info string.
FENCE = re.compile(r"^```(?P<info>[^`\n]*)$", re.M)
#: The visible mark of a block that the tests do not run: ``title="Not run: <reason>"``.
NOT_RUN = re.compile(r'title="not run:\s*(?P<reason>[^"]*)"', re.I)


@dataclass(frozen=True)
class Block:
    """One fenced code block of a markdown page."""

    line: int  #: 0-based line of the page where the code starts (after the opening fence)
    language: str  #: the first word of the fence's info string ("" when it has none)
    info: str  #: the whole info string
    code: str

    @property
    def skip_reason(self) -> str | None:
        """Why the block is not run (the reason of its "Not run:" title), or None."""
        match = NOT_RUN.search(self.info)
        return None if match is None else match.group("reason").strip()


def code_blocks(text: str, name: str = "<page>") -> list[Block]:
    """The fenced code blocks of the markdown ``text``, in page order.

    Raises ValueError for a fence that is never closed, naming the page and its line."""
    blocks = []
    fences = list(FENCE.finditer(text))
    if len(fences) % 2:
        line = text.count("\n", 0, fences[-1].start()) + 1
        raise ValueError(f"{name}:{line}: a code fence is opened and never closed")
    for opening, closing in zip(fences[::2], fences[1::2], strict=True):
        info = opening.group("info").strip()
        start = opening.end() + 1
        blocks.append(
            Block(
                line=text.count("\n", 0, start),
                language=info.split(maxsplit=1)[0] if info else "",
                info=info,
                code=text[start : closing.start()],
            )
        )
    return blocks


def python_blocks(path: Path) -> list[Block]:
    return [
        block
        for block in code_blocks(path.read_text(), path.name)
        if block.language in {"python", "py"}
    ]


#: Runs the blocks listed in the JSON file argv[1] as the page argv[2]: one namespace,
#: ``__name__ == "__main__"``, each block padded to its line in the page.
RUNNER = """
import json, sys
import torch
torch.set_num_threads(1)
page, blocks = sys.argv[2], json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
if __name__ == "__main__":
    for line, code in blocks:
        exec(compile("\\n" * line + code, page, "exec"), namespace)
"""


def run_page(path: Path, workdir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the runnable python blocks of ``path`` in a fresh interpreter in ``workdir``."""
    blocks = [(block.line, block.code) for block in python_blocks(path) if not block.skip_reason]
    listing = workdir.parent / f"{path.stem}.blocks.json"
    listing.write_text(json.dumps(blocks))
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=python_path, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-c", RUNNER, str(listing), str(path)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def runnable(path: Path) -> bool:
    return any(not block.skip_reason for block in python_blocks(path))


#: Pages run with ``-m slow`` only (all of them take ~90 s of CPU, each page 3-15 s): those
#: whose examples take over 8 s of CPU, and those whose examples the default run already
#: executes through their module's own test (tests/test_design.py, test_flows.py,
#: test_inference.py, test_set_embeddings.py run them in-process).
SLOW_PAGES = {
    "diagnostics.md",  # ~12 s: slice-sampling draws for 200 observations, four posteriors
    "simulate.md",  # ~11 s: local process pools and a Dask LocalCluster
    "design.md",
    "embeddings.md",
    "flows.md",
    "inference.md",
}


def page_param(path: Path):
    marks = [pytest.mark.slow] if path.name in SLOW_PAGES else []
    return pytest.param(path, id=path.name, marks=marks)


@pytest.mark.parametrize("page", [page_param(path) for path in PAGES if runnable(path)])
def test_the_python_blocks_of_the_page_run(page, tmp_path):
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    result = run_page(page, workdir)
    assert result.returncode == 0, (
        f"a python block of {page.relative_to(ROOT)} failed (the traceback names its line):\n"
        f"--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-5000:]}"
    )


@pytest.mark.parametrize("page", PAGES, ids=[path.name for path in PAGES])
def test_every_block_names_its_language_and_every_skip_its_reason(page):
    """A fence without a language could hide python that nobody runs; a "Not run" mark
    without a reason tells the reader nothing."""
    for block in code_blocks(page.read_text(), page.name):
        where = f"{page.name}:{block.line}"
        assert block.language, f"{where}: the code fence names no language (```python, ```text …)"
        if block.language in {"python", "py"} and NOT_RUN.search(block.info):
            assert block.skip_reason, f'{where}: title="Not run: …" must give the reason'


def test_the_block_reader_on_a_known_page(tmp_path):
    """Line numbers, languages, the "Not run" mark and an unclosed fence."""
    page = (
        "# A page\n"
        "\n"
        "```python\n"
        "x = 1\n"
        "```\n"
        "text\n"
        '```python title="Not run: needs a SLURM cluster"\n'
        "import dask_jobqueue\n"
        "```\n"
        "```text\n"
        "out\n"
        "```\n"
        "```python\n"
        "assert x == 1\n"
        "raise RuntimeError('line 14')\n"
        "```\n"
    )
    blocks = code_blocks(page)
    assert [(b.line, b.language, b.skip_reason) for b in blocks] == [
        (3, "python", None),
        (7, "python", "needs a SLURM cluster"),
        (10, "text", None),
        (13, "python", None),
    ]
    assert blocks[0].code == "x = 1\n"
    with pytest.raises(ValueError, match="page.md:17: a code fence is opened and never closed"):
        code_blocks(page + "```python\nopen\n", "page.md")

    path = tmp_path / "page.md"
    path.write_text(page)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    result = run_page(path, workdir)  # the marked block is skipped; the last one raises
    assert result.returncode != 0
    assert f'File "{path}", line 15' in result.stderr and "RuntimeError: line 14" in result.stderr
    assert "dask_jobqueue" not in result.stderr


def load_hook():
    spec = importlib.util.spec_from_file_location("repo_pages", ROOT / "docs/hooks/repo_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_percent_script_becomes_a_page():
    pytest.importorskip("mkdocs")
    hook = load_hook()
    script = (
        "# %% [markdown]\n"
        "# # Title\n"
        "#\n"
        "# Some *text*.\n"
        "\n"
        "# %%\n"
        "import torch\n"
        "\n"
        "x = torch.zeros(3)  # a comment stays code\n"
        "\n"
        "# %% [markdown]\n"
        "# ## Next\n"
        "# %%\n"
        "\n"
    )
    assert hook.percent_to_markdown(script) == (
        "# Title\n\nSome *text*.\n\n"
        "```python\nimport torch\n\nx = torch.zeros(3)  # a comment stays code\n```\n\n"
        "## Next\n"
    )
    # every tutorial: each code line of the script is on its page, inside a python block
    for repo_path in hook.rendered_sources(ROOT):
        if not repo_path.endswith(".py"):
            continue
        source = (ROOT / repo_path).read_text()
        blocks = code_blocks(hook.percent_to_markdown(source), repo_path)
        code = "\n".join(block.code for block in blocks if block.language == "python")
        for line in source.splitlines():
            if line.strip() and not line.startswith("#"):
                assert line in code, f"{repo_path}: {line!r} is missing from its page"


def test_links_to_rendered_repository_files_point_at_their_pages():
    pytest.importorskip("mkdocs")
    hook = load_hook()
    sources = hook.rendered_sources(ROOT)
    assert sources["tutorials/02_mining_gold.py"] == "tutorials/02_mining_gold.md"
    index = (
        "[t](../tutorials/02_mining_gold.py), [b](../benchmarks/README.md#vs_sbipy), "
        "[p](flows.md#c2st), [w](https://example.org/x.py), [s](../simfer/losses.py)"
    )
    assert hook.relink(index, "index.md", sources) == (
        "[t](tutorials/02_mining_gold.md), [b](benchmark_scripts.md#vs_sbipy), "
        "[p](flows.md#c2st), [w](https://example.org/x.py), [s](../simfer/losses.py)"
    )
    # from a rendered page back into docs/ (benchmarks/README.md links ../docs/benchmarks.md)
    back = "[r](../docs/benchmarks.md#gold) and [t](../tutorials/01_wrap_your_simulator.py)"
    assert hook.relink(back, "benchmark_scripts.md", sources) == (
        "[r](benchmarks.md#gold) and [t](tutorials/01_wrap_your_simulator.md)"
    )
    assert hook.relink("[i](../index.md)", "tutorials/02_mining_gold.md", sources) == (
        "[i](../index.md)"
    )
