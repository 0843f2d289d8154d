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
    if not jax.tree.leaves(b):
        raise ValueError("b must hold at least one array")

    x0 = jax.tree.map(jnp.zeros_like, b) if x0 is None else x0
    _check_same_structure("x0", x0, b)
    precond = (lambda r: r) if preconditioner is None else preconditioner

    dtype = jnp.result_type(*jax.tree.leaves(b))
    b_norm = jnp.sqrt(tree_vdot(b, b))
    threshold = jnp.maximum(tol * b_norm, atol).astype(dtype)

    r0 = jax.tree.map(jnp.subtract, b, matvec(x0))
    _check_same_structure("matvec(x)", r0, b)
    z0 = precond(r0)
    _check_same_structure("preconditioner(r)", z0, b)
    rz0 = tree_vdot(r0, z0)
    r_norm0 = jnp.sqrt(tree_vdot(r0, r0))

    # carry: x, r, z, p, r^T z, ||r||, step, breakdown
    init = (x0, r0, z0, z0, rz0, r_norm0, jnp.zeros((), jnp.int32), jnp.zeros((), bool))

    def cond_fn(carry):
        _, _, _, _, _, r_norm, step, broke = carry
        return (step < maxiter) & (r_norm > threshold) & ~broke

    def body_fn(carry):
        x, r, z, p, rz, _, step, _ = carry
        Ap = matvec(p)
        pAp = tree_vdot(p, Ap)
        # Negative or zero curvature along p means A is not PD on this
        # direction: stop before the step instead of dividing by pAp <= 0.
        broke = ~(jnp.isfinite(pAp) & (pAp > 0)) | ~jnp.isfinite(rz)
        alpha = jnp.where(broke, 0.0, rz / jnp.where(broke, 1.0, pAp)).astype(dtype)
        x_new = tree_axpy(alpha, p, x)
        r_new = tree_axpy(-alpha, Ap, r)
        if refresh_every is not None:
            r_new = lax.cond(
                (step + 1) % refresh_every == 0,
                lambda: jax.tree.map(jnp.subtract, b, matvec(x_new)),
                lambda: r_new,
            )
        z_new = precond(r_new)
        rz_new = tree_vdot(r_new, z_new)
        beta = jnp.where(broke, 0.0, rz_new / jnp.where(rz == 0, 1.0, rz)).astype(dtype)
        p_new = tree_axpy(beta, p, z_new)
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
