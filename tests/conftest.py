"""Fixtures shared by the test modules."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run a module on one torch thread: small networks and thousands of tiny MCMC chains
    are far faster (and steadier on a shared machine) without intra-op threading."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_markdown_examples(path) -> None:
    """Run every ```python block of the markdown file ``path`` in order, in one namespace,
    padded so that a traceback names the line in the file; the global torch generator is
    left as it was (the examples may seed it)."""
    import re
    from pathlib import Path

    text = Path(path).read_text()
    blocks = [
        (text.count("\n", 0, match.start(1)), match.group(1))
        for match in re.finditer(r"```python\n(.*?)```", text, flags=re.S)
    ]
    assert blocks, f"{path} holds no python example"
    namespace: dict = {}
    with torch.random.fork_rng():
        for first_line, block in blocks:
            exec(compile("\n" * first_line + block, str(path), "exec"), namespace)
