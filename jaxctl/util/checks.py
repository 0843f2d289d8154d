"""Argument checks and pytree predicates shared by every layer.

One place for the rules every public entry point follows:

- A hyper-parameter may be a Python, numpy or jax scalar. A *concrete* one
  is checked at once and a bad value raises `ValueError` naming the argument
  and what was expected. A *traced* one (inside the caller's `jit`, or from
  `optax.inject_hyperparams` and schedules) cannot be checked on the host and
  passes through; the numerical code then guards it (e.g. a non-positive
  trust region gives a zero step).
- Integer and boolean arrays entering float computations are promoted to
  the default float dtype (float32, or float64 under `jax_enable_x64`);
  integer arithmetic would silently truncate.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any


def is_concrete(x: Any) -> bool:
    """True when `x` holds a value on the host (not a tracer)."""
    return not isinstance(x, jax.core.Tracer)


def concrete_scalar(name: str, value: Any) -> float | None:
    """`value` as a Python float when it is a concrete real scalar; None when traced.

    Raises:
      ValueError: `value` is not a real scalar (a string, a complex number, a
        bool, or an array with shape other than ()).
    """
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a real number, got the boolean {value!r}")
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        if np.shape(value) != ():
            raise ValueError(f"{name} must be a scalar, got an array of shape {np.shape(value)}")
        dtype = np.dtype(value.dtype)
        if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
            raise ValueError(f"{name} must be a real number, got dtype {dtype}")
        if not is_concrete(value):
            return None
        return float(np.asarray(value))
    raise ValueError(f"{name} must be a real number, got {type(value).__name__} {value!r}")


def check_scalar(name: str, value: Any, *, low: float | None = None,
                 high: float | None = None, low_open: bool = False,
                 high_open: bool = False) -> Any:
    """Checks a real scalar against an interval and returns it unchanged.

    NaN always fails. Traced values pass (see the module docstring).
    Infinity passes only where the interval allows it.
    """
    v = concrete_scalar(name, value)
    if v is None:
        return value
    ok = not np.isnan(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        want = " and ".join(p for p in (lo, hi) if p) or "a number"
        raise ValueError(f"{name} must be {want}, got {v!r}")
    return value


def static_float(name: str, value: Any, *, low: float | None = None, low_open: bool = False,
                 high: float = float("inf"), high_open: bool = True) -> float:
    """A concrete real scalar in the interval (as `check_scalar`) as a Python float.

    For values that fix a program's structure (time steps, time constants,
    neuron parameters): a traced value is rejected, not passed. The upper
    end defaults to `< inf`.
    """
    if concrete_scalar(name, value) is None:
        raise ValueError(f"{name} must be a concrete number (it is static), got a traced value")
    return float(check_scalar(name, value, low=low, low_open=low_open, high=high,
                              high_open=high_open))


def check_positive(name: str, value: Any) -> Any:
    """`value > 0` (finite or inf), for a concrete scalar; traced values pass."""
    return check_scalar(name, value, low=0.0, low_open=True)


def check_nonnegative(name: str, value: Any) -> Any:
    """`value >= 0`, for a concrete scalar; traced values pass."""
    return check_scalar(name, value, low=0.0)


def check_finite_positive(name: str, value: Any) -> Any:
    """`0 < value < inf`, for a concrete scalar; traced values pass."""
    return check_scalar(name, value, low=0.0, low_open=True, high=float("inf"), high_open=True)


def check_finite(name: str, value: Any) -> Any:
    """`-inf < value < inf` (not NaN), for a concrete scalar; traced values pass."""
    return check_scalar(name, value, low=-float("inf"), low_open=True, high=float("inf"),
                        high_open=True)


def check_int(name: str, value: Any, *, low: int | None = None) -> int:
    """A static integer (Python, numpy or 0-d concrete jax integer) `>= low`, as `int`.

    Floats are rejected even when whole (`3.0`): a size or a count that
    arrives as a float is almost always a bug upstream.
    """
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be an integer, got the boolean {value!r}")
    if isinstance(value, (np.ndarray, jax.Array)) and np.shape(value) == () and \
            np.issubdtype(np.dtype(value.dtype), np.integer):
        if not is_concrete(value):
            raise ValueError(f"{name} must be a static integer, got a traced value")
        value = int(np.asarray(value))
    if not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value}")
    return value


def check_positive_int(name: str, value: Any) -> int:
    """A static integer `>= 1`, as `int`."""
    return check_int(name, value, low=1)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """One of `choices`."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def as_float(name: str, x: Any) -> jax.Array:
    """`x` as a jax array with a floating dtype; integers and bools are promoted.

    Raises:
      ValueError: `x` is complex or not numeric.
    """
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.floating):
        return x
    if jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_:
        return x.astype(jnp.result_type(float))
    raise ValueError(f"{name} must be a real array, got dtype {x.dtype}")


def tree_as_float(name: str, tree: PyTree) -> PyTree:
    """`as_float` on every leaf."""
    return jax.tree.map(lambda leaf: as_float(name, leaf), tree)


def tree_all_finite(tree: PyTree) -> jax.Array:
    """A boolean scalar: every entry of every leaf is finite (True for an empty tree)."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def tree_where(pred: jax.Array, x: PyTree, y: PyTree) -> PyTree:
    """`x` where the scalar `pred` holds, else `y`, leaf by leaf."""
    return optax.tree.where(pred, x, y)


def check_same_structure(name: str, tree: PyTree, reference: PyTree, ref_name: str) -> None:
    """`tree` has the structure and leaf shapes of `reference`."""
    if jax.tree.structure(tree) != jax.tree.structure(reference):
        raise ValueError(f"{name} must have the pytree structure of {ref_name}: "
                         f"got {jax.tree.structure(tree)}, expected {jax.tree.structure(reference)}")
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(reference)):
        if np.shape(a) != np.shape(b):
            raise ValueError(f"{name} must have the leaf shapes of {ref_name}: "
                             f"got {np.shape(a)}, expected {np.shape(b)}")
