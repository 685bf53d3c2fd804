"""mkdocs hook: pages of the site whose source lives outside docs/.

* Each tutorial ``tutorials/NN_name.py``, a percent-format script (``# %%`` code cells,
  ``# %% [markdown]`` text cells), becomes the page ``tutorials/NN_name.md``: its markdown
  cells as text, its code cells as python blocks.  Nothing is executed (the test suite
  runs the tutorials; ``tests/test_tutorials.py``).
* ``benchmarks/README.md`` (how to run the benchmark scripts) becomes ``benchmark_scripts.md``.

A relative link in any page that points at one of these repository files (from
docs/index.md, ``../tutorials/02_mining_gold.py``), or from a rendered file back into
docs/ (``../docs/benchmarks.md``), is pointed at the page the site renders, so the same
markdown reads right on a repository browser and in the site; every other link is left
for mkdocs to check.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

__all__ = ["percent_to_markdown", "relink", "rendered_sources"]

#: A cell marker of the percent format, with its optional title and ``[cell type]``.
CELL = re.compile(r"^# %%(?P<rest>.*)$")
#: An inline markdown link or image: ``](target#anchor)`` or ``](target "title")``.
LINK = re.compile(r"\]\((?P<target>[^)\s#]*)(?P<tail>(?:#[^)\s]*)?(?:\s+\"[^\"]*\")?)\)")


def rendered_sources(root: Path) -> dict[str, str]:
    """Repository files outside docs/ that the site renders: repository path → page path."""
    pages = {
        f"tutorials/{script.name}": f"tutorials/{script.stem}.md"
        for script in sorted((root / "tutorials").glob("[0-9]*.py"))
    }
    if (root / "benchmarks" / "README.md").is_file():
        pages["benchmarks/README.md"] = "benchmark_scripts.md"
    return pages


def percent_to_markdown(source: str) -> str:
    """The markdown of a percent-format script: text cells as markdown, code cells as
    ```python blocks (blank lines at a cell's ends dropped, empty cells left out)."""
    cells: list[tuple[str, list[str]]] = [("code", [])]
    for line in source.splitlines():
        marker = CELL.match(line)
        if marker:
            kind = "markdown" if re.search(r"\[(markdown|md)\]", marker["rest"]) else "code"
            cells.append((kind, []))
        else:
            cells[-1][1].append(line)
    parts = []
    for kind, lines in cells:
        if kind == "markdown":
            lines = [re.sub(r"^# ?", "", line) if line.startswith("#") else line for line in lines]
        text = "\n".join(lines).strip("\n")
        if not text.strip():
            continue
        parts.append(text if kind == "markdown" else f"```python\n{text}\n```")
    return "\n\n".join(parts) + "\n"


def _tutorial_page(repo_path: str, source: str) -> str:
    """The site page of the tutorial ``repo_path``: its title, a note on how to run it, and
    its cells."""
    header = (
        f'!!! note "A script you can run"\n'
        f"    This page is `{repo_path}`, shown without its outputs: run it with\n"
        f"    `python {repo_path}`, or open it as a notebook with jupytext.\n"
    )
    body = percent_to_markdown(source)
    title, _, rest = body.partition("\n")
    if title.startswith("# "):  # keep the tutorial's own title first, the note below it
        return f"{title}\n\n{header}\n{rest.lstrip()}"
    return f"{header}\n{body}"


_sources: dict[str, str] = {}


def on_files(files: Files, config) -> Files:
    """Add the rendered repository files to the site's files."""
    root = Path(config.config_file_path).resolve().parent
    _sources.clear()
    _sources.update(rendered_sources(root))
    for repo_path, page in _sources.items():
        source = (root / repo_path).read_text(encoding="utf-8")
        content = _tutorial_page(repo_path, source) if repo_path.endswith(".py") else source
        files.append(File.generated(config, page, content=content))
    return files


def relink(markdown: str, page_uri: str, sources: dict[str, str]) -> str:
    """``markdown`` of the site page ``page_uri`` with its links to the repository files in
    ``sources`` (repository path → page path) pointed at their pages, and, on a page rendered
    from such a file, its links into docs/ pointed at the site's pages."""
    origins = {rendered: repo_path for repo_path, rendered in sources.items()}
    origin = origins.get(page_uri, f"docs/{page_uri}")

    def replace(match: re.Match) -> str:
        target = match["target"]
        if not target or "://" in target or target.startswith(("/", "mailto:")):
            return match[0]
        repo_path = posixpath.normpath(posixpath.join(posixpath.dirname(origin), target))
        if repo_path in sources:
            site_path = sources[repo_path]
        elif repo_path.startswith("docs/") and page_uri in origins:
            site_path = repo_path.removeprefix("docs/")
        else:
            return match[0]
        relative = posixpath.relpath(site_path, posixpath.dirname(page_uri) or ".")
        return f"]({relative}{match['tail']})"

    return LINK.sub(replace, markdown)


def on_page_markdown(markdown: str, page, config, files: Files) -> str:
    """Point links to rendered repository files at the site's pages (see `relink`)."""
    return relink(markdown, page.file.src_uri, _sources)
