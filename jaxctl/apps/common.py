"""Shared plumbing for the `jaxctl` experiments and benchmarks.

Run folders and `results.json`, a progress bar, markdown tables, atomic
writes, and the timing discipline every benchmark follows: compile time
measured apart, both sides of a comparison interleaved in one process, the
minimum over many repeats reported (this machine is shared and noisy).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from typing import Any, Callable, Mapping, Sequence

SINGLE_THREAD_XLA_FLAGS = (
    "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)


def request_single_thread() -> None:
    """Pins XLA and BLAS to one thread.

    XLA reads its flags when the first backend is created, so this works
    after `import jax` but must run before the first computation.
    """
    if "jax" in sys.modules:
        from jax._src import xla_bridge

        if xla_bridge._backends:
            raise RuntimeError("single-thread mode must be requested before jax runs anything")
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


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Writes `data` to `path` so that a reader sees the old file or the new one, never half."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


class Progress:
    """A one-line progress bar on stderr with live metrics.

    On a terminal it redraws in place; otherwise (logs, CI) it prints a line
    about every tenth of the work so long runs still show they are alive.
    """

    def __init__(self, total: int, desc: str = "", width: int = 24, stream=None):
        self.total = max(int(total), 1)
        self.desc = desc
        self.width = width
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.perf_counter()
        self.count = 0
        self._tty = getattr(self.stream, "isatty", lambda: False)()
        self._last_decile = -1

    def update(self, count: int, **metrics: Any) -> None:
        self.count = count
        frac = min(count / self.total, 1.0)
        elapsed = time.perf_counter() - self.start
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        shown = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
        )
        line = f"{self.desc} [{bar}] {count}/{self.total} {elapsed:6.1f}s {shown}"
        if self._tty:
            self.stream.write("\r" + line + "\033[K")
            self.stream.flush()
        else:
            decile = int(frac * 10)
            if decile != self._last_decile:
                self._last_decile = decile
                self.stream.write(line + "\n")
                self.stream.flush()

    def close(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()


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
