"""Checkpoint formats for `jaxctl reach`: `jaxctl.util.checkpoint` against orbax-checkpoint.

Measured in one process on the same trees (the reach `ReachState` of the
default run, and a 16 MB tree of float32 arrays), correctness first (both
restore bit-exactly), then:

- import time (a fresh interpreter: `import jax` alone, `+ jaxctl.util.checkpoint`,
  `+ orbax.checkpoint`), best of 5;
- save and restore seconds, minimum over repeats, the two formats interleaved;
- robustness: a flipped bit in the stored data, a truncated file, and a writer
  killed (SIGKILL) at random moments while it overwrites the checkpoint, after
  which the checkpoint on disk must still restore.

Run: `python benchmarks/checkpoint.py [--repeats 20] [--kills 6]`.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _import_seconds(statement: str) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], check=True, cwd=ROOT)
        best = min(best, time.perf_counter() - t0)
    return best


def _trees():
    import jax
    import jax.numpy as jnp

    import jaxctl.experiments.reach_train as train
    from jaxctl.experiments.reach_model import ReachSettings

    state = train.ReachTrainer(ReachSettings()).initial_state()
    reach = {"params": state.params, "hf_state": state.hf_state, "key": state.key}
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    big = {f"w{i}": jax.random.normal(k, (1024, 1024), jnp.float32) for i, k in enumerate(keys)}
    return {"reach ReachState": reach, "16 MB of float32": big}


class Ours:
    name = "jaxctl.util.checkpoint"

    def __init__(self, folder):
        from jaxctl.util import checkpoint

        self.ck, self.path = checkpoint, os.path.join(folder, "state.npz")

    def save(self, tree):
        self.ck.save_checkpoint(self.path, tree)

    def restore(self, template):
        return self.ck.restore_checkpoint(self.path, template)

    def data_files(self):
        return [self.path]


class Orbax:
    name = "orbax StandardCheckpointer"

    def __init__(self, folder):
        import orbax.checkpoint as ocp

        self.ocp, self.path = ocp, os.path.join(folder, "orbax")
        self.checkpointer = ocp.StandardCheckpointer()

    def save(self, tree):
        self.checkpointer.save(self.path, tree, force=True)
        self.checkpointer.wait_until_finished()

    def restore(self, template):
        import jax

        return self.checkpointer.restore(self.path, jax.tree.map(
            self.ocp.utils.to_shape_dtype_struct, template))

    def data_files(self):
        found = [os.path.join(d, f) for d, _, files in os.walk(self.path)
                 if os.path.basename(d) == "d" for f in files]  # tensorstore's data chunks
        return sorted(found, key=os.path.getsize, reverse=True)


def _same(a, b) -> bool:
    import jax
    import numpy as np

    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _timings(fmt, tree, repeats):
    import jax

    fmt.save(tree)
    assert _same(fmt.restore(tree), tree), f"{fmt.name} does not round-trip"
    save = restore = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fmt.save(tree)
        save = min(save, time.perf_counter() - t0)
        t0 = time.perf_counter()
        jax.block_until_ready(fmt.restore(tree))
        restore = min(restore, time.perf_counter() - t0)
    return save, restore


def _flip_detected(fmt, tree) -> str:
    """Flips one bit in the largest data file: 'detected' (an error) or 'silent' (restored)."""
    import numpy as np

    fmt.save(tree)
    target = fmt.data_files()[0]
    data = bytearray(open(target, "rb").read())
    leaf = np.asarray(tree[sorted(tree)[0]] if isinstance(tree, dict) else tree)
    raw = leaf.tobytes()[:64]
    offset = data.find(raw) if raw in data else len(data) // 2
    data[offset + 8] ^= 0x01
    open(target, "wb").write(bytes(data))
    try:
        out = fmt.restore(tree)
    except Exception as exc:  # noqa: BLE001 (any error counts as detection)
        return f"detected ({type(exc).__name__})"
    return "silent, restored different values" if not _same(out, tree) else "no effect"


def _truncate_detected(fmt, tree) -> str:
    fmt.save(tree)
    target = fmt.data_files()[0]
    data = open(target, "rb").read()
    open(target, "wb").write(data[: len(data) // 2])
    try:
        fmt.restore(tree)
    except Exception as exc:  # noqa: BLE001
        return f"detected ({type(exc).__name__})"
    return "silent"


WRITER = """
import sys, jax
sys.path.insert(0, {root!r})
sys.argv = ['x']
import benchmarks.checkpoint as b
fmt = b.{cls}({folder!r})
tree = b._trees()["16 MB of float32"]
print("ready", flush=True)
i = 0
while True:
    fmt.save(jax.tree.map(lambda a: a + i, tree)); i += 1
"""


def _kill_survives(cls, folder, kills, tree) -> str:
    ok = 0
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", WRITER.format(root=ROOT, cls=cls.__name__,
                                                                     folder=folder)],
                                stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5 + random.random())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        try:
            cls(folder).restore(tree)
            ok += 1
        except Exception:  # noqa: BLE001
            pass
    return f"{ok}/{kills} restorable"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--kills", type=int, default=6)
    args = parser.parse_args()
    import jax

    print(f"jax {jax.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    base = _import_seconds("import jax")
    ours = _import_seconds("import jax, jaxctl.util.checkpoint")
    orbax = _import_seconds("import jax, orbax.checkpoint")
    print(f"import: jax alone {base:.2f} s; + jaxctl (whole package) {ours - base:+.2f} s; "
          f"+ orbax.checkpoint {orbax - base:+.2f} s")
    trees = _trees()
    for label, tree in trees.items():
        for cls in (Ours, Orbax):
            folder = tempfile.mkdtemp()
            fmt = cls(folder)
            save, restore = _timings(fmt, tree, args.repeats)
            print(f"{label:18s} {fmt.name:28s} save {1e3 * save:8.2f} ms  restore "
                  f"{1e3 * restore:8.2f} ms  files {len(fmt.data_files())}")
            shutil.rmtree(folder)
    tree = trees["16 MB of float32"]
    for cls in (Ours, Orbax):
        folder = tempfile.mkdtemp()
        flip = _flip_detected(cls(folder), tree)
        cut = _truncate_detected(cls(folder), tree)
        shutil.rmtree(folder)
        folder = tempfile.mkdtemp()
        cls(folder).save(tree)
        killed = _kill_survives(cls, folder, args.kills, tree)
        shutil.rmtree(folder)
        print(f"{cls.name:28s} flipped bit: {flip}; truncated file: {cut}; "
              f"writer killed mid-save: {killed}")


if __name__ == "__main__":
    main()
