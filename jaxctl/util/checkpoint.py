"""Save and restore any state pytree: one atomic, checksummed `.npz` file.

A checkpoint holds the leaves of a pytree (`HFState`, `NPGState`, optax
states, `DynamicsModel`, dicts of arrays, typed PRNG keys) and a JSON header:

    header = {format, version, paths, shapes, dtypes, metadata, sha256}
    sha256 = SHA-256(header without sha256 || leaf_0 bytes || leaf_1 bytes || ...)

`restore_checkpoint(path, template)` reads it back into the structure of
`template` after checking the checksum, the leaf paths, shapes and dtypes,
so a truncated, bit-flipped, foreign or mismatched file raises a
`CheckpointError` naming what is wrong instead of restoring garbage. The
file is written to a temporary file in the same folder, flushed to disk and
renamed over the old one, so an interruption at any moment (Ctrl-C, a
crash) leaves the previous checkpoint intact.

Why not orbax-checkpoint (`benchmarks/checkpoint.py`, jax 0.10.2, 2 CPUs
shared): on the reach training state this format saves in 11 ms and
restores in 10 ms where orbax's `StandardCheckpointer` takes 146 ms and
31 ms; `import orbax.checkpoint` adds 0.3-1.4 s to a command (three runs); orbax restores
a flipped bit in its data silently (this format's SHA-256 rejects it); and
a writer killed while overwriting (`force=True`) left orbax unrestorable in
4 of 5 tries, this format restorable in 5 of 5. It holds states that fit in
host memory, which is every state in this package.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from typing import Any

import jax
import numpy as np

from jaxctl.util.checks import PyTree

FORMAT = "jaxctl-checkpoint"
VERSION = 1
_HEADER = "__header__"


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable, corrupt, foreign or does not fit the template."""


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


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _host(leaf: Any) -> tuple[np.ndarray, str]:
    """A leaf as a host array and its dtype tag (`key<impl>` for typed PRNG keys)."""
    if _is_key(leaf):
        return np.asarray(jax.random.key_data(leaf)), f"key<{jax.random.key_impl(leaf)}>"
    array = np.asarray(leaf)
    return array, str(array.dtype)


def _digest(header: dict, arrays: list[np.ndarray]) -> str:
    h = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def save_checkpoint(path: str, tree: PyTree, metadata: dict | None = None) -> None:
    """Writes `tree` (and JSON-serialisable `metadata`) atomically to `path`.

    Args:
      path: the file to write (conventionally `.npz`); its folder must exist.
      tree: any pytree of arrays, numpy / Python scalars and typed PRNG keys.
      metadata: a JSON-serialisable dict stored with the leaves
        (`checkpoint_metadata` reads it back).

    Raises:
      TypeError: `metadata` is not JSON-serialisable.

    Example:
      >>> import tempfile, os, jax.numpy as jnp
      >>> path = os.path.join(tempfile.mkdtemp(), "state.npz")
      >>> save_checkpoint(path, {"w": jnp.ones(3), "step": jnp.int32(7)}, {"note": "demo"})
      >>> restore_checkpoint(path, {"w": jnp.zeros(3), "step": jnp.int32(0)})["step"]
      Array(7, dtype=int32)
      >>> checkpoint_metadata(path)
      {'note': 'demo'}
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    hosted = [_host(leaf) for _, leaf in flat]
    arrays = [a for a, _ in hosted]
    header = {"format": FORMAT, "version": VERSION,
              "paths": [jax.tree_util.keystr(p) for p, _ in flat],
              "shapes": [list(a.shape) for a in arrays],
              "dtypes": [tag for _, tag in hosted],
              "metadata": {} if metadata is None else metadata}
    json.dumps(header)  # raises TypeError before anything is written
    header["sha256"] = _digest(header, arrays)
    entries = {f"leaf{i:05d}": a for i, a in enumerate(arrays)}
    entries[_HEADER] = np.asarray(json.dumps(header))
    buffer = io.BytesIO()
    np.savez(buffer, **entries)
    atomic_write_bytes(path, buffer.getvalue())


def _read(path: str) -> tuple[dict, list[np.ndarray]]:
    """The verified header and leaves of the checkpoint at `path`."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            entries = {name: f[name] for name in f.files}
        header = json.loads(str(entries.pop(_HEADER, "null")))
    except Exception as exc:  # zip, CRC, npy header and JSON errors all mean "corrupt"
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt "
                              f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a jaxctl checkpoint")
    if header.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {header.get('version')}; "
                              f"this jaxctl reads version {VERSION}")
    arrays = [entries.get(f"leaf{i:05d}") for i in range(len(header.get("paths", [])))]
    saved = header.pop("sha256", None)
    if any(a is None for a in arrays) or _digest(header, arrays) != saved:
        raise CheckpointError(f"checkpoint {path} is corrupt (SHA-256 mismatch)")
    return header, arrays


def checkpoint_metadata(path: str) -> dict:
    """The `metadata` dict stored by `save_checkpoint` (after verifying the checksum)."""
    return _read(path)[0]["metadata"]


def _restore_leaf(path: str, name: str, value: np.ndarray, tag: str, leaf: Any) -> Any:
    want, want_tag = _host(leaf)
    if tuple(value.shape) != want.shape or tag != want_tag:
        raise CheckpointError(f"checkpoint {path}: leaf {name} is {tag}{list(value.shape)}, "
                              f"the template expects {want_tag}{list(want.shape)}")
    if _is_key(leaf):
        return jax.random.wrap_key_data(value, impl=jax.random.key_impl(leaf))
    if isinstance(leaf, jax.Array):
        return jax.numpy.asarray(value)
    if isinstance(leaf, np.ndarray):
        return value
    return value.item() if isinstance(leaf, (bool, int, float, complex)) else value[()]


def restore_checkpoint(path: str, template: PyTree) -> PyTree:
    """Reads the checkpoint at `path` into the structure of `template`.

    Args:
      path: a file written by `save_checkpoint`.
      template: a pytree with the expected structure, leaf shapes and dtypes
        (e.g. a freshly initialised state); its values are not used. Leaves
        come back as the template's kind: jax arrays, numpy arrays, Python
        scalars or typed PRNG keys.

    Returns:
      The saved tree, bit for bit.

    Raises:
      CheckpointError: the file is missing, unreadable, truncated or altered
        (checksum), of another format or version, or its leaf paths, shapes
        or dtypes differ from the template's (the message names the leaf).
    """
    header, arrays = _read(path)
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    names = [jax.tree_util.keystr(p) for p, _ in flat]
    if names != header["paths"]:
        missing = sorted(set(names) - set(header["paths"]))
        extra = sorted(set(header["paths"]) - set(names))
        raise CheckpointError(f"checkpoint {path} does not have the template's structure: "
                              f"missing {missing[:5]}, unexpected {extra[:5]}"
                              + ("" if missing or extra else " (leaves in another order)"))
    leaves = [_restore_leaf(path, name, value, tag, leaf) for name, value, tag, (_, leaf)
              in zip(names, arrays, header["dtypes"], flat)]
    return jax.tree_util.tree_unflatten(treedef, leaves)
