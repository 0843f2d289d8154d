"""Curvature benchmark: `python benchmarks/curvature.py [--quick] [--single-thread] [--out DIR]`.

The same program as `jaxctl bench` (see jaxctl/apps/bench.py for what it
measures); kept here so every benchmark lives in benchmarks/.
"""

import sys

from jaxctl.apps.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
