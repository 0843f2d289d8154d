"""Device meshes and placement helpers for data parallelism on `jax.sharding`.

Notation: a 1-D mesh of `N` devices with one named axis (`"data"` by
default); an array is *sharded along* `dim` when that dimension is split in
`N` equal blocks, block `i` living on device `i`, and *replicated* when every
device holds all of it. Sharded code in jaxctl takes the mesh and the axis
name as arguments and runs unchanged on one device (`N = 1`), on fake CPU
devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8`) and on GPUs.

`data_mesh` builds meshes with `AxisType.Auto`: XLA's SPMD partitioner then
propagates the placement of the inputs through code written for one device
(a batch mean becomes a local sum plus an all-reduce). Meshes of type
`Explicit` (the default of `jax.make_mesh` from jax 0.9 on) work with every
helper here too; pieces that need an exact communication pattern use
`jax.shard_map`, which behaves the same on both. One exception within the
supported jax releases: `jax.vmap` of the CG solvers over a batch sharded on
an `Explicit` mesh, which jax's batching of `select` rejects before 0.10.2
(the release that fixed it is excluded for a CPU miscompile); use an `Auto`
mesh or `shard_map` there.

References:
  JAX documentation, "Distributed arrays and automatic parallelization" and
  "Manual parallelism with shard_map".
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxctl.util.checks import PyTree, check_int, check_positive_int

# The one place where supported jax versions differ: marking a replicated
# value as device-varying is `lax.pvary` up to jax 0.8 and `lax.pcast` after.
_PCAST = getattr(lax, "pcast", None)


def pvary(x: PyTree, axis: str) -> PyTree:
    """Marks `x` (inside `jax.shard_map`) as varying over the mesh axis `axis`.

    A loop carry that starts replicated but is updated from per-device data
    must carry the varying type from the start (`check_vma`).
    """
    if _PCAST is not None:
        return _PCAST(x, axis, to="varying")
    return lax.pvary(x, axis)


def data_mesh(n: int | None = None, axis: str = "data", *,
              devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D `Mesh` of the first `n` devices (all by default) with the axis `axis`.

    Args:
      n: number of devices N >= 1 (default: every device of `devices`).
      axis: the name of the mesh axis.
      devices: the devices to use (default `jax.devices()`, every process's).

    Returns:
      A `jax.sharding.Mesh` of shape `{axis: n}` with `AxisType.Auto`.

    Example:
      >>> mesh = data_mesh(1)
      >>> dict(mesh.shape)
      {'data': 1}
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices) if n is None else check_positive_int("n", n)
    if n > len(devices):
        raise ValueError(f"n must be <= the {len(devices)} available devices, got {n}")
    return jax.make_mesh((n,), (axis,), axis_types=(AxisType.Auto,), devices=devices[:n])


def axis_size(mesh: Mesh, axis: str) -> int:
    """The number of devices along `axis` of `mesh` (ValueError if it has no such axis)."""
    if axis not in mesh.shape:
        raise ValueError(f"axis must be one of the mesh axes {tuple(mesh.shape)}, got {axis!r}")
    return mesh.shape[axis]


def check_divisible(name: str, size: int, mesh: Mesh, axis: str) -> int:
    """`size` unchanged if the devices along `axis` divide it, else a ValueError naming `name`."""
    n = axis_size(mesh, axis)
    if size % n:
        raise ValueError(f"{name} ({size}) must be a multiple of the {n} devices on mesh "
                         f"axis {axis!r}")
    return size


def spec_along(ndim: int, axis: str, dim: int = 0) -> PartitionSpec:
    """The `PartitionSpec` splitting dimension `dim` of an `ndim`-array over `axis`."""
    dim = check_int("dim", dim, low=0)
    if dim >= ndim:
        raise ValueError(f"dim must be < the array rank {ndim}, got {dim}")
    return PartitionSpec(*([None] * dim + [axis]))


def _place(x, sharding: NamedSharding):
    if isinstance(x, jax.core.Tracer):
        if sharding.mesh.axis_types and all(t == AxisType.Explicit
                                            for t in sharding.mesh.axis_types):
            return jax.sharding.reshard(x, sharding)
        return lax.with_sharding_constraint(x, sharding)
    return jax.device_put(x, sharding)


def shard_along(tree: PyTree, mesh: Mesh, axis: str = "data", dim: int = 0) -> PyTree:
    """Every array of `tree` split along `dim` over the mesh axis `axis`.

    Outside `jit` the arrays are moved (`jax.device_put`); inside, the
    placement is a constraint for the partitioner (`with_sharding_constraint`,
    or `jax.sharding.reshard` on an explicit mesh). Dimension `dim` of each
    array must be a multiple of the number of devices along `axis`.

    Example:
      >>> x = shard_along(jax.numpy.arange(8.0), data_mesh(1))
      >>> x.sharding.spec == PartitionSpec("data")
      True
    """
    def one(x):
        x = x if isinstance(x, jax.core.Tracer) else jax.numpy.asarray(x)
        spec = spec_along(x.ndim, axis, dim)
        check_divisible(f"dimension {dim} of an array of shape {x.shape}", x.shape[dim], mesh, axis)
        return _place(x, NamedSharding(mesh, spec))

    return jax.tree.map(one, tree)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Every array of `tree` held whole by every device of `mesh`.

    Example:
      >>> replicate(jax.numpy.ones(3), data_mesh(1)).sharding.is_fully_replicated
      True
    """
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda x: _place(x, sharding), tree)


COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def hlo_collectives(hlo: str) -> dict[str, list[str]]:
    """The result shapes (`"f32[64,32]"`) of each collective in an optimized HLO text.

    `hlo` is `jax.jit(f).lower(...).compile().as_text()`; tuple results (XLA
    combines small all-reduces) are flattened. An op inside a loop appears
    once here and runs once per iteration.

    Example:
      >>> hlo_collectives("%a = f32[8]{0} all-reduce(%x), to_apply=%add")["all-reduce"]
      ['f32[8]']
    """
    out = {}
    for op in COLLECTIVES:
        results = re.findall(r"= (\([^)]*\)|\w+\[[\d,]*\])\S* " + op + r"(?:-start)?\(", hlo)
        out[op] = [shape for r in results for shape in re.findall(r"\w+\[[\d,]*\]", r)]
    return out


_HLO_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
              "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO array shape such as `"f32[64,32]"`.

    Example:
      >>> shape_bytes("f32[64,32]")
      8192
    """
    dtype, dims = re.fullmatch(r"(\w+)\[([\d,]*)\]", shape).groups()
    return _HLO_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d]))
