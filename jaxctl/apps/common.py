"""Shared plumbing for the `jaxctl` experiments and benchmarks.

Run folders and `results.json`, markdown tables, and the timing discipline every benchmark follows: compile time
measured apart, both sides of a comparison interleaved in one process, the
minimum over many repeats reported (this machine is shared and noisy).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import sys
import time
from typing import Any, Callable, Mapping, Sequence

from jaxctl.util.checkpoint import atomic_write_bytes

SINGLE_THREAD_XLA_FLAGS = (
    "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)


def request_single_thread() -> None:
    """Pins XLA and BLAS to one thread.

    XLA reads its flags when the first backend is created, so this works
    after `import jax` but must run before the first computation. Whether a
    backend has started is asked of jax's public config: updating
    `jax_num_cpu_devices` raises once a backend exists (the value is put
    back unchanged).
    """
    import jax

    current = jax.config.jax_num_cpu_devices
    try:
        jax.config.update("jax_num_cpu_devices", 1 if current != 1 else 2)
    except RuntimeError as exc:
        raise RuntimeError("single-thread mode must be requested before jax runs anything") from exc
    jax.config.update("jax_num_cpu_devices", current)
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = (flags + " " + SINGLE_THREAD_XLA_FLAGS).strip()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"


def make_run_dir(out: str | None, command: str) -> str:
    """Returns `out` (created) or a fresh folder `runs/<command>-<timestamp>`."""
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = os.path.join("runs", f"{command}-{stamp}")
        suffix = 1
        while os.path.exists(out):
            suffix += 1
            out = os.path.join("runs", f"{command}-{stamp}-{suffix}")
    os.makedirs(out, exist_ok=True)
    return out


def environment_info() -> dict[str, Any]:
    """Versions and hardware, recorded with every result."""
    import jax
    import jaxlib
    import numpy as np
    import optax

    from jaxctl import __version__

    return {
        "jaxctl": __version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "optax": optax.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def to_jsonable(value: Any) -> Any:
    """Converts numpy / jax scalars and arrays inside nested containers to JSON types."""
    import numpy as np

    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "__array__") and not isinstance(value, (str, bytes)):
        arr = np.asarray(value)
        if arr.ndim == 0:
            return arr.item()
        return arr.tolist()
    if isinstance(value, float) and not np.isfinite(value):
        return None if np.isnan(value) else (1e308 if value > 0 else -1e308)
    return value


def write_results(out_dir: str, command: str, settings: Mapping[str, Any],
                  results: Mapping[str, Any]) -> str:
    """Writes `results.json` (figures, settings, versions) atomically; returns its path."""
    payload = {
        "command": command,
        "settings": to_jsonable(dict(settings)),
        "environment": environment_info(),
        "results": to_jsonable(dict(results)),
    }
    path = os.path.join(out_dir, "results.json")
    atomic_write_bytes(path, json.dumps(payload, indent=2, allow_nan=False).encode())
    return path


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats get 4 significant digits."""

    def fmt(x: Any) -> str:
        if isinstance(x, float):
            return f"{x:.4g}"
        return str(x)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def block(tree: Any) -> Any:
    """Waits for every array in `tree` (timings must include the device work)."""
    import jax

    return jax.block_until_ready(tree)


def compile_seconds(fn: Callable[..., Any], *args: Any) -> float:
    """Seconds spent by the first call of a jitted `fn` (trace + compile + one run)."""
    start = time.perf_counter()
    block(fn(*args))
    return time.perf_counter() - start


def interleaved_min_seconds(calls: Mapping[str, Callable[[], Any]], repeats: int,
                            min_total: float = 0.0) -> dict[str, float]:
    """Minimum wall time of each zero-argument call, the calls interleaved.

    Each round runs every call once, in turn, so a slow patch on the shared
    machine hits all sides of a comparison alike; the minimum over rounds is
    the figure least disturbed by other load. Rounds continue past `repeats`
    until `min_total` seconds have passed.
    """
    best = {name: float("inf") for name in calls}
    start = time.perf_counter()
    rounds = 0
    while rounds < repeats or time.perf_counter() - start < min_total:
        for name, call in calls.items():
            t0 = time.perf_counter()
            block(call())
            best[name] = min(best[name], time.perf_counter() - t0)
        rounds += 1
    return best


# ------------------------------------------------------------------ Ctrl-C

_INTERRUPT = {"defer": False, "requested": False}


def _on_sigint(signum, frame) -> None:
    if _INTERRUPT["defer"] and not _INTERRUPT["requested"]:
        _INTERRUPT["requested"] = True
        return
    sys.stdout.flush()
    sys.stderr.write("\ninterrupted; the last checkpoint written, if any, is intact\n")
    sys.stderr.flush()
    # No Python teardown: XLA may be compiling or running on its own threads,
    # and unwinding through them crashed the process (SIGSEGV).
    os._exit(130)


@contextlib.contextmanager
def interrupt_handler():
    """Ctrl-C ends the command at once with exit code 130 and one line.

    Inside `deferred_interrupts()` it only sets a flag that the loop checks at
    a safe point (`interrupt_requested()`); a second Ctrl-C ends at once.
    The previous handler is restored on exit.
    """
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def deferred_interrupts():
    """Within this block a Ctrl-C sets `interrupt_requested()` instead of ending."""
    _INTERRUPT.update(defer=True, requested=False)
    try:
        yield
    finally:
        _INTERRUPT.update(defer=False, requested=False)


def interrupt_requested() -> bool:
    """True once Ctrl-C was pressed inside `deferred_interrupts()`."""
    return _INTERRUPT["requested"]
