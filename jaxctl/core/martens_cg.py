"""Martens' conjugate gradient: Hessian-free's inner solver, iterates kept for backtracking.

Minimises the quadratic model `phi(x) = x^T A x / 2 - b^T x` with the CG
iteration of `jaxctl.core.cg` (same setup, breakdown guard and scaling), but
stops on relative progress of `phi` and stores iterates on a geometric
schedule (Martens 2010, sections 4.4-4.6).

Notation: `r = b - A x` residual, `phi_i = phi(x_i)`, `k` the progress window.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxctl.core.cg import _cg_iteration, _rescale, _start, _Vectors
from jaxctl.util import checks
from jaxctl.util.checks import PyTree


class MartensCGResult(NamedTuple):
    """Iterates and statistics of `martens_cg`.

    Attributes:
      x: the last iterate (the warm start of the next Hessian-free solve).
      iterates: pytree like `b` with a leading axis of size `K` (static):
        the iterates stored on the geometric schedule, in increasing step
        order, then the last iterate; slots past `num_iterates` are zero.
      iterate_steps: int32 `(K,)`, the CG step of each stored iterate
        (`-1` in unused slots).
      iterate_phi: `(K,)`, the quadratic model value `phi` of each stored
        iterate (`+inf` in unused slots).
      num_iterates: int32, how many slots are filled (>= 1).
      num_steps: int32, CG iterations taken.
      phi: the model value `phi(x)` of the last iterate.
      stopped: bool, Martens' relative-progress rule stopped the solve.
      breakdown: bool, `p^T A p <= 0` or non-finite, or the starting
        residual is not finite; `x` is the last iterate before that, never
        NaN unless `x0` is.
    """

    x: PyTree
    iterates: PyTree
    iterate_steps: jax.Array
    iterate_phi: jax.Array
    num_iterates: jax.Array
    num_steps: jax.Array
    phi: jax.Array
    stopped: jax.Array
    breakdown: jax.Array


def martens_schedule(maxiter: int, first: int = 5, ratio: float = 1.3) -> tuple[int, ...]:
    """CG steps `< maxiter` at which `martens_cg` stores an iterate.

    `k_0 = first`, `k_{j+1} = max(k_j + 1, floor(ratio k_j))`: 5, 6, 7, 9,
    11, 14, 18, 23, 29, 37, 48, 62, 80, 104, ... for the defaults.
    """
    first = checks.check_positive_int("store_first", first)
    checks.check_scalar("store_ratio", ratio, low=1.0, low_open=True)
    steps, k = [], first
    while k < maxiter:
        steps.append(k)
        k = max(k + 1, int(k * ratio))
    return tuple(steps)


class _Stored(NamedTuple):
    """`martens_cg`'s buffer of iterates for backtracking."""

    iterates: PyTree
    steps: jax.Array
    phi: jax.Array
    count: jax.Array


def _store(buf: _Stored, store: jax.Array, x: PyTree, step: jax.Array,
           phi: jax.Array) -> _Stored:
    """Writes `(x, step, phi)` into the next free slot when `store` holds."""
    n = buf.count

    def put(slots, value):
        return slots.at[n].set(jnp.where(store, value, slots[n]))

    return _Stored(jax.tree.map(put, buf.iterates, x), put(buf.steps, step),
                   put(buf.phi, phi), n + store.astype(jnp.int32))


class _MartensCarry(NamedTuple):
    vectors: _Vectors
    phis: jax.Array
    stored: _Stored
    step: jax.Array
    stopped: jax.Array
    breakdown: jax.Array


def martens_cg(
    matvec: Callable[[PyTree], PyTree],
    b: PyTree,
    *,
    x0: PyTree | None = None,
    maxiter: int,
    preconditioner: Callable[[PyTree], PyTree] | None = None,
    tol: float = 5e-6,
    min_gap: int = 10,
    gap_fraction: float = 0.1,
    store_first: int = 5,
    store_ratio: float = 1.3,
) -> MartensCGResult:
    """Minimises `phi(x) = x^T A x / 2 - b^T x` by CG, keeping iterates for backtracking.

    The Hessian-free inner solver of Martens (2010), section 4. Preconditioned
    CG as in `cg`, with two differences:

    * Stopping on relative progress of the quadratic model rather than on the
      residual: with `phi_i = phi(x_i) = -(b + r_i)^T x_i / 2` (exact for the
      true residual `r_i = b - A x_i`) and `k = max(min_gap,
      floor(gap_fraction i))`, the solve stops after step `i` when
      `i > k`, `phi_i < 0` and `(phi_i - phi_{i-k}) / phi_i < tol k`.
    * Iterates are stored on the geometric schedule `martens_schedule`
      (steps 5, 6, 7, 9, 11, ...) in a fixed-size buffer, plus the last
      iterate, so the caller can backtrack (section 4.6): later iterates
      minimise the quadratic model better but may be worse for the true
      objective.

    The loop stops early on breakdown (`p^T A p <= 0` or non-finite) or when
    `r^T z` reaches 0; no NaN reaches the iterates. Integer inputs are
    promoted to float, and the solve runs on `b / 2^k` like `cg`'s.

    Args:
      matvec: `v -> A v`, symmetric positive definite on the search space.
      b: right-hand side, a pytree of arrays (for Hessian-free: `-gradient`).
      x0: initial guess (default zeros), same structure as `b`.
      maxiter: iteration budget (static, >= 0).
      preconditioner: optional `r -> M^-1 r`, symmetric positive definite.
      tol: Martens' relative-progress tolerance per step of gap (Martens
        2010 used 5e-4; the `hessianfree` library 5e-6).
      min_gap, gap_fraction: the progress window `k = max(min_gap,
        floor(gap_fraction i))`.
      store_first, store_ratio: the storage schedule.

    Returns:
      A `MartensCGResult`; the buffer has `K = len(martens_schedule(maxiter,
      store_first, store_ratio)) + 1` slots.

    Example:
      >>> A = jnp.array([[4.0, 1.0], [1.0, 3.0]])
      >>> res = martens_cg(lambda v: A @ v, jnp.array([1.0, 2.0]), maxiter=10)
      >>> res.iterates.shape[0] == len(martens_schedule(10)) + 1
      True

    References:
      J. Martens (2010), "Deep learning via Hessian-free optimization", ICML,
      sections 4.4-4.6.
    """
    maxiter = checks.check_int("maxiter", maxiter, low=0)
    min_gap = checks.check_positive_int("min_gap", min_gap)
    checks.check_nonnegative("tol", tol)
    checks.check_nonnegative("gap_fraction", gap_fraction)
    schedule = martens_schedule(maxiter, store_first, store_ratio)
    b, v0, scale, precond = _start(matvec, b, x0, preconditioner)
    dtype = v0.rz.dtype

    def phi_of(v: _Vectors):
        return -0.5 * optax.tree.vdot(v.x, optax.tree.add(b, v.r))

    phi0 = phi_of(v0)
    # Every buffer starts from the inputs, so it carries their dtype (x64) and
    # their varying axes (shard_map): phis[i] = phi(x_i), one slot per step so
    # the window k can reach back; `len(schedule) + 1` stored iterates.
    num_slots = len(schedule) + 1
    zero = jnp.zeros_like(phi0)
    stored = _Stored(
        iterates=jax.tree.map(lambda leaf: jnp.zeros_like(leaf, shape=(num_slots,) + leaf.shape),
                              v0.x),
        steps=jnp.full_like(zero, -1, jnp.int32, shape=(num_slots,)),
        phi=jnp.full_like(zero, jnp.inf, shape=(num_slots,)),
        count=jnp.zeros_like(zero, jnp.int32))
    sched = jnp.asarray(schedule if schedule else (-1,), jnp.int32)
    init = _MartensCarry(v0, jnp.zeros_like(zero, shape=(maxiter + 1,)).at[0].set(phi0), stored,
                         step=jnp.zeros_like(zero, jnp.int32), stopped=zero > 0,
                         breakdown=~jnp.isfinite(v0.rz))

    def body_fn(c: _MartensCarry) -> _MartensCarry:
        vectors, broke = _cg_iteration(matvec, precond, c.vectors)
        step = c.step + 1
        phi = phi_of(vectors)
        phis = c.phis.at[step].set(jnp.where(broke, 0.0, phi))

        gap = jnp.maximum(min_gap, (gap_fraction * step).astype(jnp.int32))
        phi_back = phis[jnp.maximum(step - gap, 0)]
        progress = (phi - phi_back) / jnp.where(phi < 0, phi, -1.0)
        stopped = (step > gap) & (phi < 0) & (progress < tol * gap) & ~broke
        # Schedule hits arrive in order, so the next free slot is the right one.
        store = jnp.any(sched == step) & ~broke
        return _MartensCarry(checks.tree_where(broke, c.vectors, vectors), phis,
                             _store(c.stored, store, vectors.x, step, phi),
                             jnp.where(broke, c.step, step), stopped, broke)

    def cond(c: _MartensCarry):
        return (c.step < maxiter) & ~c.stopped & ~c.breakdown & (c.vectors.rz > 0)

    out = lax.while_loop(cond, body_fn, init)
    # The last iterate always closes the buffer unless it is already there.
    last_stored = out.stored.steps[jnp.maximum(out.stored.count - 1, 0)]
    add_last = (out.stored.count == 0) | (last_stored != out.step)
    phi_last = out.phis[out.step]
    stored = _store(out.stored, add_last, out.vectors.x, out.step, phi_last)
    # Back from the scaled system: x = s y, phi(x) = s^2 phi(y).
    x, iterates, iterate_phi, phi_last = _rescale(
        scale, (out.vectors.x, stored.iterates, scale * stored.phi, scale * phi_last))
    return MartensCGResult(x=x, iterates=iterates, iterate_steps=stored.steps,
                           iterate_phi=iterate_phi, num_iterates=stored.count, num_steps=out.step,
                           phi=phi_last, stopped=out.stopped,
                           breakdown=out.breakdown)
