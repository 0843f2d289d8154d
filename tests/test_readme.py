"""The README's quickstart commands and its API tour stay true."""

import os
import re

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)


def read_readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def test_readme_opens_with_the_two_commands():
    first_block = re.search(r"```sh\n(.*?)```", read_readme(), re.S).group(1).strip().splitlines()
    assert len(first_block) == 2
    assert first_block[0].startswith("pip install") and "jaxctl " in first_block[0]
    assert first_block[1].startswith("pip install") and first_block[1].endswith("pytest")


def test_readme_api_tour_runs():
    code = re.search(r"```python\n(.*?)```", read_readme(), re.S).group(1)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert float(namespace["size"]) > 0
