"""Model FLOPs of a jitted function, counted on its jaxpr.

XLA's `cost_analysis` counts a loop body once and LAPACK calls not at all,
so it cannot say what fraction of the matmul rate a scan over time or a QR
reaches. This counter walks the jaxpr instead:

- `dot_general`: `2 * batch * M * N * K`; `conv_general_dilated`:
  `2 * output size * (kernel size / output features)`;
- `scan` bodies times their length; `while` bodies times `while_trips`
  (the caller knows the trip count of a fixed-budget loop; a sequence
  gives the trips of successive `while` loops in the order the jaxpr meets
  them, 1 for any further loop);
  `cond` the most expensive branch; other sub-jaxprs (`pjit`, `custom_jvp`,
  `shard_map`, ...) once;
- dense linear algebra by the textbook counts (Golub & Van Loan 2013):
  QR `2 m n^2 - 2 n^3 / 3` (as much again to form Q), thin SVD with vectors
  `4 m n^2 + 22 n^3`, symmetric eigenproblem with vectors `9 n^3`, Cholesky
  `n^3 / 3`, triangular solve `n^2` per right-hand side;

elementwise work is left out, so the count is the matmul-class work whose
rate a matmul measured in the same run bounds.
"""

from __future__ import annotations

from math import prod
from typing import Any, Callable, Iterator, Sequence

import jax


def _dot_flops(eqn) -> float:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = (v.aval.shape for v in eqn.invars)
    contract = prod(lhs[i] for i in lc)
    batch = prod(lhs[i] for i in lb)
    free_l = prod(d for i, d in enumerate(lhs) if i not in lc and i not in lb)
    free_r = prod(d for i, d in enumerate(rhs) if i not in rc and i not in rb)
    return 2.0 * batch * free_l * free_r * contract


def _conv_flops(eqn) -> float:
    out = eqn.outvars[0].aval.shape
    kernel = eqn.invars[1].aval.shape
    spec = eqn.params["dimension_numbers"]
    out_features = kernel[spec.rhs_spec[0]] if spec is not None else kernel[0]
    return 2.0 * prod(out) * prod(kernel) / out_features


def _linalg_flops(name: str, eqn, used: set) -> float:
    shape = eqn.invars[0].aval.shape
    batch = prod(shape[:-2])
    m, n = shape[-2], shape[-1]
    big, small = max(m, n), min(m, n)
    householder = batch * (2.0 * big * small ** 2 - 2.0 * small ** 3 / 3)
    if name in ("geqrf", "householder_product"):
        return householder
    if name == "qr":  # R, and as much again when the thin Q is used
        return householder * (2.0 if id(eqn.outvars[0]) in used else 1.0)
    if name == "svd":
        return batch * (4.0 * big * small ** 2 + 22.0 * small ** 3)
    if name == "eigh":
        return batch * 9.0 * n ** 3
    if name == "cholesky":
        return batch * n ** 3 / 3.0
    if name == "triangular_solve":
        a, b = (v.aval.shape for v in eqn.invars)
        rhs = b[-1] if eqn.params.get("left_side", False) else b[-2]
        return prod(b[:-2]) * a[-1] ** 2 * rhs
    return 0.0


LINALG = ("qr", "geqrf", "householder_product", "svd", "eigh", "cholesky", "triangular_solve")


def _sub_jaxprs(eqn):
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                yield item.jaxpr
            elif hasattr(item, "eqns"):
                yield item


def _trips(while_trips: int | Sequence[int]) -> Iterator[int]:
    if isinstance(while_trips, int):
        while True:
            yield while_trips
    yield from while_trips
    while True:
        yield 1


def jaxpr_flops(jaxpr, while_trips: int | Sequence[int] | Iterator[int] = 1) -> float:
    """Matmul-class FLOPs of a (closed or open) jaxpr; see the module docstring."""
    if not isinstance(while_trips, Iterator):
        while_trips = _trips(while_trips)
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    used = {id(v) for e in jaxpr.eqns for v in e.invars} | {id(v) for v in jaxpr.outvars}
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "scan":
            total += eqn.params["length"] * jaxpr_flops(eqn.params["jaxpr"], while_trips)
        elif name == "while":
            total += next(while_trips) * jaxpr_flops(eqn.params["body_jaxpr"], while_trips)
        elif name == "cond":
            total += max(jaxpr_flops(b, while_trips) for b in eqn.params["branches"])
        elif name in LINALG:
            total += _linalg_flops(name, eqn, used)
        else:
            total += sum(jaxpr_flops(sub, while_trips) for sub in _sub_jaxprs(eqn))
    return total


def model_flops(fn: Callable[..., Any], *args: Any,
                while_trips: int | Sequence[int] = 1) -> float:
    """Matmul-class FLOPs of one call `fn(*args)`.

    Example:
      >>> import jax.numpy as jnp
      >>> model_flops(jnp.matmul, jnp.ones((2, 3)), jnp.ones((3, 4)))
      48.0
    """
    return jaxpr_flops(jax.make_jaxpr(fn)(*args), while_trips)
