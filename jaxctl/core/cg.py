"""Preconditioned conjugate gradient on pytrees, inside `lax.while_loop`.

Solves `A x = b` for a symmetric positive (semi-)definite linear operator
given only as a matvec `A(v)`. Vectors are arbitrary pytrees of arrays (a
flat array is the simplest pytree), so curvature operators on parameter
pytrees plug in directly.

Notation: `r = b - A x` residual, `z = M^-1 r` preconditioned residual,
`p` search direction.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

PyTree = Any


class CGResult(NamedTuple):
    """Solution and statistics of a conjugate-gradient solve.

    Attributes:
      x: the last iterate (same pytree structure as `b`).
      num_steps: int32, CG iterations taken.
      residual_norm: `||b - A x||` as tracked by the recurrence (recomputed
        exactly every `refresh_every` steps when that is set).
      converged: bool, `residual_norm <= max(tol * ||b||, atol)`.
      breakdown: bool, the solve stopped because `p^T A p <= 0` or became
        non-finite (the operator is not positive definite along `p`); `x` is
        the last iterate before that direction, never NaN.
    """

    x: PyTree
    num_steps: jax.Array
    residual_norm: jax.Array
    converged: jax.Array
    breakdown: jax.Array


def tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
    """Inner product `sum_i <a_i, b_i>` of two pytrees with the same structure."""
    leaves = jax.tree.map(
        lambda x, y: jnp.vdot(x, y, precision=lax.Precision.HIGHEST), a, b
    )
    return sum(jax.tree.leaves(leaves), jnp.zeros((), jnp.result_type(*jax.tree.leaves(a))))


def tree_axpy(alpha: jax.Array, x: PyTree, y: PyTree) -> PyTree:
    """`alpha * x + y` leaf by leaf."""
    return jax.tree.map(lambda xi, yi: alpha * xi + yi, x, y)


def _check_same_structure(name: str, tree: PyTree, reference: PyTree) -> None:
    ref_shapes = jax.tree.map(jnp.shape, reference)
    shapes = jax.tree.map(jnp.shape, tree)
    if jax.tree.structure(tree) != jax.tree.structure(reference) or shapes != ref_shapes:
        raise ValueError(
            f"{name} must have the structure and shapes of b {ref_shapes}, got {shapes}"
        )


class _Start(NamedTuple):
    x0: PyTree
    r0: PyTree
    z0: PyTree
    rz0: jax.Array
    precond: Callable[[PyTree], PyTree]
    dtype: Any


def _start(matvec, b, x0, preconditioner) -> _Start:
    """Checks the inputs and sets up `x0`, `r0 = b - A x0`, `z0 = M^-1 r0`, `r0^T z0`."""
    if not jax.tree.leaves(b):
        raise ValueError("b must hold at least one array")
    x0 = jax.tree.map(jnp.zeros_like, b) if x0 is None else x0
    _check_same_structure("x0", x0, b)
    precond = (lambda r: r) if preconditioner is None else preconditioner
    Ax0 = matvec(x0)
    _check_same_structure("matvec(x)", Ax0, b)
    r0 = jax.tree.map(jnp.subtract, b, Ax0)
    z0 = precond(r0)
    _check_same_structure("preconditioner(r)", z0, b)
    return _Start(x0, r0, z0, tree_vdot(r0, z0), precond, jnp.result_type(*jax.tree.leaves(b)))


def _cg_iteration(matvec, precond, x, r, p, rz, dtype, fix_residual=None):
    """One (preconditioned) CG iteration; returns `(x, r, z, p, r^T z, breakdown)`.

    `breakdown` is true when `p^T A p <= 0` or non-finite: negative or zero
    curvature along `p` means A is not PD on this direction, so the step is
    not taken (alpha = 0) instead of dividing by `p^T A p <= 0`. The caller
    keeps its previous iterate in that case. `fix_residual(x_new, r_new)`
    may replace the recurrence residual (e.g. by the exact `b - A x`).
    """
    Ap = matvec(p)
    pAp = tree_vdot(p, Ap)
    broke = ~(jnp.isfinite(pAp) & (pAp > 0)) | ~jnp.isfinite(rz)
    alpha = jnp.where(broke, 0.0, rz / jnp.where(broke, 1.0, pAp)).astype(dtype)
    x_new = tree_axpy(alpha, p, x)
    r_new = tree_axpy(-alpha, Ap, r)
    if fix_residual is not None:
        r_new = fix_residual(x_new, r_new)
    z_new = precond(r_new)
    rz_new = tree_vdot(r_new, z_new)
    beta = jnp.where(broke, 0.0, rz_new / jnp.where(rz == 0, 1.0, rz)).astype(dtype)
    p_new = tree_axpy(beta, p, z_new)
    return x_new, r_new, z_new, p_new, rz_new, broke


def cg(
    matvec: Callable[[PyTree], PyTree],
    b: PyTree,
    *,
    x0: PyTree | None = None,
    maxiter: int,
    tol: float = 1e-5,
    atol: float = 0.0,
    preconditioner: Callable[[PyTree], PyTree] | None = None,
    refresh_every: int | None = None,
) -> CGResult:
    """Solves `A x = b` by preconditioned conjugate gradient.

    Each step: `alpha = r^T z / p^T A p`, `x += alpha p`, `r -= alpha A p`,
    `z = M^-1 r`, `beta = r_new^T z_new / r^T z`, `p = z + beta p`.
    The loop stops when `||r|| <= max(tol ||b||, atol)`, after `maxiter`
    steps, or on breakdown (`p^T A p <= 0` or non-finite), which is reported
    rather than raised and never lets NaN into `x`. On a singular PSD system
    whose `b` lies in the range of `A`, starting from `x0 = 0` CG converges
    to the minimum-norm solution `A^+ b`.

    Args:
      matvec: the linear operator `v -> A v` (symmetric positive
        semi-definite), mapping pytrees like `b` to pytrees like `b`.
      b: right-hand side, a pytree of arrays.
      x0: initial guess (default zeros), same structure as `b`.
      maxiter: iteration budget (static, >= 0).
      tol: relative residual tolerance.
      atol: absolute residual tolerance.
      preconditioner: optional `r -> M^-1 r`, symmetric positive definite.
      refresh_every: if set, every that many steps the residual is
        recomputed exactly as `b - A x` (one extra matvec) to stop rounding
        drift of the recurrence in long solves. Under `vmap` the refresh
        branch is evaluated every step, so leave it off for short solves.

    Returns:
      A `CGResult(x, num_steps, residual_norm, converged, breakdown)`.

    Example:
      >>> A = jnp.array([[4.0, 1.0], [1.0, 3.0]])
      >>> res = cg(lambda v: A @ v, jnp.array([1.0, 2.0]), maxiter=10)
      >>> bool(res.converged)
      True

    References:
      Hestenes & Stiefel (1952), "Methods of conjugate gradients for solving
      linear systems"; Shewchuk (1994), "An introduction to the conjugate
      gradient method without the agonizing pain".
    """
    if not isinstance(maxiter, int) or maxiter < 0:
        raise ValueError(f"maxiter must be a non-negative Python int, got {maxiter!r}")
    if refresh_every is not None and (not isinstance(refresh_every, int) or refresh_every < 1):
        raise ValueError(f"refresh_every must be None or a positive int, got {refresh_every!r}")
    if tol < 0 or atol < 0:
        raise ValueError(f"tol and atol must be >= 0, got tol={tol}, atol={atol}")
    x0, r0, z0, rz0, precond, dtype = _start(matvec, b, x0, preconditioner)
    b_norm = jnp.sqrt(tree_vdot(b, b))
    threshold = jnp.maximum(tol * b_norm, atol).astype(dtype)
    r_norm0 = jnp.sqrt(tree_vdot(r0, r0))

    # carry: x, r, z, p, r^T z, ||r||, step, breakdown
    init = (x0, r0, z0, z0, rz0, r_norm0, jnp.zeros((), jnp.int32), jnp.zeros((), bool))

    def cond_fn(carry):
        _, _, _, _, _, r_norm, step, broke = carry
        return (step < maxiter) & (r_norm > threshold) & ~broke

    def body_fn(carry):
        x, r, z, p, rz, _, step, _ = carry
        fix = None
        if refresh_every is not None:
            def fix(x_new, r_new):
                return lax.cond((step + 1) % refresh_every == 0,
                                lambda: jax.tree.map(jnp.subtract, b, matvec(x_new)),
                                lambda: r_new)
        x_new, r_new, z_new, p_new, rz_new, broke = _cg_iteration(
            matvec, precond, x, r, p, rz, dtype, fix)
        r_norm = jnp.sqrt(tree_vdot(r_new, r_new))
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(broke, o, n), new, old)
        return (
            keep(x_new, x), keep(r_new, r), keep(z_new, z), keep(p_new, p),
            jnp.where(broke, rz, rz_new), jnp.where(broke, jnp.sqrt(tree_vdot(r, r)), r_norm),
            step + jnp.where(broke, 0, 1).astype(jnp.int32), broke,
        )

    x, _, _, _, _, r_norm, steps, broke = lax.while_loop(cond_fn, body_fn, init)
    return CGResult(x=x, num_steps=steps, residual_norm=r_norm,
                    converged=r_norm <= threshold, breakdown=broke)


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
      breakdown: bool, `p^T A p <= 0` or non-finite; `x` is the last iterate
        before that direction, never NaN.
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
    if not isinstance(first, int) or first < 1:
        raise ValueError(f"first must be a positive int, got {first!r}")
    if not ratio > 1.0:
        raise ValueError(f"ratio must be > 1, got {ratio!r}")
    steps, k = [], first
    while k < maxiter:
        steps.append(k)
        k = max(k + 1, int(k * ratio))
    return tuple(steps)


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
    `r^T z` reaches 0; no NaN reaches the iterates.

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
    if not isinstance(maxiter, int) or maxiter < 0:
        raise ValueError(f"maxiter must be a non-negative Python int, got {maxiter!r}")
    if not isinstance(min_gap, int) or min_gap < 1:
        raise ValueError(f"min_gap must be a positive int, got {min_gap!r}")
    if tol < 0 or gap_fraction < 0:
        raise ValueError(f"tol and gap_fraction must be >= 0, got {tol}, {gap_fraction}")
    schedule = martens_schedule(maxiter, store_first, store_ratio)
    num_slots = len(schedule) + 1
    x0, r0, z0, rz0, precond, dtype = _start(matvec, b, x0, preconditioner)

    def phi_of(x, r):
        return -0.5 * tree_vdot(x, jax.tree.map(jnp.add, b, r))

    # phis[i] = phi(x_i); one slot per step so the window k can reach back.
    phis = jnp.zeros((maxiter + 1,), dtype).at[0].set(phi_of(x0, r0))
    buf = jax.tree.map(lambda leaf: jnp.zeros((num_slots,) + leaf.shape, leaf.dtype), b)
    buf_steps = jnp.full((num_slots,), -1, jnp.int32)
    buf_phi = jnp.full((num_slots,), jnp.inf, dtype)
    sched = jnp.asarray(schedule if schedule else (-1,), jnp.int32)
    zero_i = jnp.zeros((), jnp.int32)
    false = jnp.zeros((), bool)

    def body_fn(carry):
        x, r, p, rz, phis, buf, buf_steps, buf_phi, n_stored, step, _, _ = carry
        x_new, r_new, _, p_new, rz_new, broke = _cg_iteration(matvec, precond, x, r, p, rz, dtype)
        new_step = step + 1
        phi = phi_of(x_new, r_new)
        phis = phis.at[new_step].set(jnp.where(broke, 0.0, phi))

        gap = jnp.maximum(min_gap, (gap_fraction * new_step).astype(jnp.int32))
        phi_back = phis[jnp.maximum(new_step - gap, 0)]
        progress = (phi - phi_back) / jnp.where(phi < 0, phi, -1.0)
        stopped = (new_step > gap) & (phi < 0) & (progress < tol * gap) & ~broke

        # Schedule hits arrive in order, so the next free slot is the right one.
        store = jnp.any(sched == new_step) & ~broke
        buf = jax.tree.map(
            lambda bl, xl: bl.at[n_stored].set(jnp.where(store, xl, bl[n_stored])), buf, x_new)
        buf_steps = buf_steps.at[n_stored].set(jnp.where(store, new_step, buf_steps[n_stored]))
        buf_phi = buf_phi.at[n_stored].set(jnp.where(store, phi, buf_phi[n_stored]))
        n_stored = n_stored + store.astype(jnp.int32)

        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(broke, o, n), new, old)
        return (keep(x_new, x), keep(r_new, r), keep(p_new, p), jnp.where(broke, rz, rz_new),
                phis, buf, buf_steps, buf_phi, n_stored,
                jnp.where(broke, step, new_step), stopped, broke)

    # carry: x, r, p, r^T z, phis, buffer, buffer steps, buffer phis, n_stored,
    # step, stopped, breakdown (the first direction p_0 is z_0)
    init = (x0, r0, z0, rz0, phis, buf, buf_steps, buf_phi, zero_i, zero_i, false, false)

    def cond(carry):
        rz, step, stopped, broke = carry[3], carry[9], carry[10], carry[11]
        return (step < maxiter) & ~stopped & ~broke & (rz > 0)

    x, r, _, _, phis, buf, buf_steps, buf_phi, n_stored, steps, stopped, broke = lax.while_loop(
        cond, body_fn, init)

    # The last iterate always closes the buffer unless it is already there.
    last_stored = buf_steps[jnp.maximum(n_stored - 1, 0)]
    add_last = (n_stored == 0) | (last_stored != steps)
    phi_last = phis[steps]
    buf = jax.tree.map(
        lambda bl, xl: bl.at[n_stored].set(jnp.where(add_last, xl, bl[n_stored])), buf, x)
    buf_steps = buf_steps.at[n_stored].set(jnp.where(add_last, steps, buf_steps[n_stored]))
    buf_phi = buf_phi.at[n_stored].set(jnp.where(add_last, phi_last, buf_phi[n_stored]))
    n_stored = n_stored + add_last.astype(jnp.int32)
    return MartensCGResult(x=x, iterates=buf, iterate_steps=buf_steps, iterate_phi=buf_phi,
                           num_iterates=n_stored, num_steps=steps, phi=phi_last,
                           stopped=stopped, breakdown=broke)
