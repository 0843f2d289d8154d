"""One compilation cache per test run, shared by the workers and their subprocesses.

Many tests compile the same programs in different processes: the xdist
workers, the notebook kernels and the `jaxctl` subprocesses run the same
trainers and planners. Before the workers start, the controlling process
points `JAX_COMPILATION_CACHE_DIR` at a fresh empty directory; every process
inherits it, so a program compiled once is loaded by the next process that
needs it. The directory is removed when the run ends, so each run starts
cold and its times stay the real cost of the suite. A cache directory set by
the user is used as it is and kept.
"""

import os
import shutil
import sys
import tempfile

_OWN = "_jaxctl_test_compilation_cache"


def pytest_configure(config):
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
