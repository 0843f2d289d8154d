"""The README's quickstart commands and every Python snippet in it stay true."""

import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)


def read_readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


SNIPPETS = re.findall(r"```python\n(.*?)```", read_readme(), re.S)


def test_readme_opens_with_the_two_commands():
    first_block = re.search(r"```sh\n(.*?)```", read_readme(), re.S).group(1).strip().splitlines()
    assert len(first_block) == 2
    assert first_block[0].startswith("pip install") and "jaxctl " in first_block[0]
    assert first_block[1].startswith("pip install") and first_block[1].endswith("pytest")


def test_readme_has_snippets():
    assert len(SNIPPETS) >= 3


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs(index):
    """Each ```python block runs unchanged, on its own, in a fresh namespace."""
    namespace = {"__name__": f"readme_snippet_{index}"}
    exec(compile(SNIPPETS[index], f"README.md[python block {index}]", "exec"), namespace)
    # Snippets that end in a result name it `result`; it must be finite where it is a number.
    if "result" in namespace:
        import numpy as np

        assert np.all(np.isfinite(np.asarray(namespace["result"], dtype=float)))
