"""Compiling for the test run: one cache shared by all its processes, and a fast XLA level.

Many tests compile the same programs in different processes: the xdist
workers, the notebook kernels and the `jaxctl` subprocesses run the same
trainers and planners. Before the workers start, the controlling process
points `JAX_COMPILATION_CACHE_DIR` at a fresh empty directory; every process
inherits it, so a program compiled once is loaded by the next process that
needs it. The directory is removed when the run ends, so each run starts
cold and its times stay the real cost of the suite. A cache directory set by
the user is used as it is and kept.

The tests also compile with XLA's backend optimisation level 0
(`--xla_backend_optimization_level=0`, appended to `XLA_FLAGS` for every
process of the run): their problems are small, so compiling dominates, and
the suite takes about a quarter less time. The arithmetic is the same up to
rounding, which every test tolerates. `JAXCTL_TEST_XLA_DEFAULT_OPT=1` keeps
XLA's default level; CI's float64 pass uses it, so both levels are tested.
"""

import os
import shutil
import sys
import tempfile

_OWN = "_jaxctl_test_compilation_cache"
_FAST_COMPILE = "--xla_backend_optimization_level=0"


def pytest_configure(config):
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("JAXCTL_TEST_XLA_DEFAULT_OPT") != "1" and _FAST_COMPILE not in flags:
        os.environ["XLA_FLAGS"] = (flags + " " + _FAST_COMPILE).strip()
    if hasattr(config, "workerinput") or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return  # an xdist worker (it inherited the variable) or the user's own cache
    path = tempfile.mkdtemp(prefix="jaxctl-tests-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    # Programs that compile in under 0.3 s are not worth a disk round trip.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
    if "jax" in sys.modules:  # imported before this hook (it reads the variables on import)
        sys.modules["jax"].config.update("jax_compilation_cache_dir", path)
    setattr(config, _OWN, path)


def pytest_unconfigure(config):
    path = getattr(config, _OWN, None)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
        del os.environ["JAX_COMPILATION_CACHE_DIR"]
