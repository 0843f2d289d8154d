"""Preconditioned conjugate gradient on pytrees, inside `lax.while_loop`.

Solves `A x = b` for a symmetric positive (semi-)definite linear operator
given only as a matvec `A(v)`. Vectors are arbitrary pytrees of arrays (a
flat array is the simplest pytree), so curvature operators on parameter
pytrees plug in directly.

Notation: `r = b - A x` residual, `z = M^-1 r` preconditioned residual,
`p` search direction.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxctl.util import checks
from jaxctl.util.checks import PyTree


class CGResult(NamedTuple):
    """Solution and statistics of a conjugate-gradient solve.

    Attributes:
      x: the last iterate (same pytree structure as `b`).
      num_steps: int32, CG iterations taken.
      residual_norm: `||b - A x||` as tracked by the recurrence (recomputed
        exactly every `refresh_every` steps when that is set).
      converged: bool, `residual_norm` is finite and `<= max(tol * ||b||, atol)`.
      breakdown: bool, the solve stopped because `p^T A p <= 0` or became
        non-finite (the operator is not positive definite along `p`), the
        starting residual `b - A x0` is not finite (an inf or NaN in `b`,
        `x0` or the operator), or rounding made the iteration diverge (the
        residual grew `DIVERGENCE` times past the smallest one seen, as on a
        singular system once its range is exhausted in float32); `x` is then
        the iterate of the smallest residual, never NaN unless `x0` is.
    """

    x: PyTree
    num_steps: jax.Array
    residual_norm: jax.Array
    converged: jax.Array
    breakdown: jax.Array


class _Vectors(NamedTuple):
    """The CG vectors: iterate, residual, preconditioned residual, direction, `r^T z`."""

    x: PyTree
    r: PyTree
    z: PyTree
    p: PyTree
    rz: jax.Array


class _Start(NamedTuple):
    b: PyTree
    vectors: _Vectors
    scale: jax.Array
    precond: Callable[[PyTree], PyTree]


def _power_of_two_scale(b: PyTree) -> jax.Array:
    """`2^e` with `max |b| = m 2^e`, `m in [0.5, 1)`, when `max |b|` is finite and
    outside `[tiny^(1/4), max^(1/4)]` of its dtype; else 1.

    CG on `A y = b / s` and `x = s y` performs the same roundings as CG on
    `A x = b` when `s` is a power of two (for a linear `A`, barring
    underflow), but `r^T z` stays near 1 and `p^T A p` near `||A||`, far from
    float overflow (a loss scaled by 1e15 overflows `p^T A p` in float32
    otherwise). Inside that range `|b|^2` leaves `sqrt(max)` of headroom for
    `||A||` and nothing is scaled, so well-scaled solves stay bit-identical.
    """
    amax = jnp.max(jnp.stack([jnp.max(jnp.abs(leaf)) for leaf in jax.tree.leaves(b)]))
    info = jnp.finfo(amax.dtype)
    _, e = jnp.frexp(amax)
    ok = jnp.isfinite(amax) & ((amax > info.max ** 0.25) | (amax < info.tiny ** 0.25)) & (amax > 0)
    return jnp.where(ok, jnp.ldexp(jnp.ones_like(amax), e), jnp.ones_like(amax))


def _rescale(factor: jax.Array, tree: PyTree) -> PyTree:
    """`factor * tree` behind an optimization barrier: XLA cannot fuse the
    product into its neighbours (where it would change how they contract into
    fused multiply-adds), so a factor of 1 leaves every rounding unchanged."""
    return lax.optimization_barrier(optax.tree.scale(factor, tree))


def _start(matvec, b, x0, preconditioner) -> _Start:
    """Checks the inputs and sets up `r0 = b - A x0`, `z0 = M^-1 r0`, `r0^T z0`,
    all scaled by `1 / s` (`_power_of_two_scale`)."""
    if not jax.tree.leaves(b):
        raise ValueError("b must hold at least one array")
    b = checks.tree_as_float("b", b)
    x0 = optax.tree.zeros_like(b) if x0 is None else checks.tree_as_float("x0", x0)
    checks.check_same_structure("x0", x0, b, "b")
    precond = (lambda r: r) if preconditioner is None else preconditioner
    scale = _power_of_two_scale(b)
    Ax0 = matvec(x0)
    checks.check_same_structure("matvec(x)", Ax0, b, "b")
    # An operator that promotes (a float64 matrix on float32 b under x64) sets
    # the dtype of the whole solve, so the loop carries keep one type.
    b, x0, Ax0 = (jax.tree.map(lambda t, a: t.astype(jnp.promote_types(t.dtype, a.dtype)),
                               tree, Ax0) for tree in (b, x0, Ax0))
    b, x0, Ax0 = _rescale(1 / scale, (b, x0, Ax0))
    r0 = optax.tree.sub(b, Ax0)
    z0 = precond(r0)
    checks.check_same_structure("preconditioner(r)", z0, b, "b")
    return _Start(b, _Vectors(x0, r0, z0, z0, optax.tree.vdot(r0, z0)), scale, precond)


def _cg_iteration(matvec, precond, v: _Vectors, fix_residual=None) -> tuple[_Vectors, jax.Array]:
    """One (preconditioned) CG iteration; returns the new vectors and `breakdown`.

    `breakdown` is true when `p^T A p <= 0` or non-finite: negative or zero
    curvature along `p` means A is not PD on this direction, so the step is
    not taken (alpha = 0) instead of dividing by `p^T A p <= 0`. The caller
    keeps its previous vectors in that case. `fix_residual(x_new, r_new)`
    may replace the recurrence residual (e.g. by the exact `b - A x`).
    """
    Ap = matvec(v.p)
    pAp = optax.tree.vdot(v.p, Ap)
    broke = ~(jnp.isfinite(pAp) & (pAp > 0)) | ~jnp.isfinite(v.rz)
    alpha = jnp.where(broke, 0.0, v.rz / jnp.where(broke, 1.0, pAp)).astype(v.rz.dtype)
    x = optax.tree.add_scale(v.x, alpha, v.p)
    r = optax.tree.add_scale(v.r, -alpha, Ap)
    if fix_residual is not None:
        r = fix_residual(x, r)
    z = precond(r)
    rz = optax.tree.vdot(r, z)
    beta = jnp.where(broke, 0.0, rz / jnp.where(v.rz == 0, 1.0, v.rz)).astype(v.rz.dtype)
    return _Vectors(x, r, z, optax.tree.add_scale(z, beta, v.p), rz), broke


def _norm(tree: PyTree) -> jax.Array:
    return jnp.sqrt(optax.tree.vdot(tree, tree))


# Residual growth past the smallest residual seen that counts as divergence.
# CG residuals are not monotone (CG minimises the A-norm of the error), but on
# well-posed problems they do not grow by four decades; on a singular PSD
# system in float32 they do, once the range of A is exhausted and rounding
# noise in its null space is amplified without bound.
DIVERGENCE = 1e4


class _CGCarry(NamedTuple):
    vectors: _Vectors
    r_norm: jax.Array
    step: jax.Array
    breakdown: jax.Array
    best_x: PyTree
    best_norm: jax.Array


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
    to the minimum-norm solution `A^+ b`. Integer or boolean `b` and `x0`
    are promoted to float. The solve runs on `b / s` for a power of two `s`
    (same roundings, no overflow of `p^T A p` for badly scaled systems).

    Args:
      matvec: the linear operator `v -> A v` (symmetric positive
        semi-definite), mapping pytrees like `b` to pytrees like `b`.
      b: right-hand side, a pytree of arrays.
      x0: initial guess (default zeros), same structure as `b`.
      maxiter: iteration budget (static, >= 0).
      tol: relative residual tolerance (>= 0).
      atol: absolute residual tolerance (>= 0).
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
    maxiter = checks.check_int("maxiter", maxiter, low=0)
    if refresh_every is not None:
        refresh_every = checks.check_positive_int("refresh_every", refresh_every)
    checks.check_nonnegative("tol", tol)
    checks.check_nonnegative("atol", atol)
    b, v0, scale, precond = _start(matvec, b, x0, preconditioner)
    dtype = v0.rz.dtype
    threshold = jnp.maximum(tol * _norm(b), atol / scale).astype(dtype)
    r_norm0 = _norm(v0.r)
    # The step counter and flag come from the inputs, so under shard_map they
    # carry the inputs' varying axes (and under x64 their dtype follows).
    init = _CGCarry(v0, r_norm0, jnp.zeros_like(r_norm0, jnp.int32),
                    ~(jnp.isfinite(r_norm0) & jnp.isfinite(v0.rz)), v0.x, r_norm0)

    def cond_fn(c: _CGCarry):
        return (c.step < maxiter) & (c.r_norm > threshold) & ~c.breakdown

    def body_fn(c: _CGCarry) -> _CGCarry:
        fix = None
        if refresh_every is not None:
            def fix(x_new, r_new):
                return lax.cond((c.step + 1) % refresh_every == 0,
                                lambda: optax.tree.sub(b, matvec(x_new)), lambda: r_new)
        vectors, broke = _cg_iteration(matvec, precond, c.vectors, fix)
        r_norm = jnp.where(broke, c.r_norm, _norm(vectors.r))
        better = ~broke & (r_norm < c.best_norm)
        diverged = ~broke & ~(r_norm <= DIVERGENCE * c.best_norm)
        return _CGCarry(checks.tree_where(broke, c.vectors, vectors), r_norm,
                        c.step + (~broke).astype(jnp.int32), broke | diverged,
                        checks.tree_where(better, vectors.x, c.best_x),
                        jnp.where(better, r_norm, c.best_norm))

    out = lax.while_loop(cond_fn, body_fn, init)
    # The last iterate, unless the residual diverged: then the best one seen.
    diverged = out.breakdown & (out.r_norm > DIVERGENCE * out.best_norm)
    x = checks.tree_where(diverged, out.best_x, out.vectors.x)
    r_norm = jnp.where(diverged, out.best_norm, out.r_norm)
    return CGResult(x=_rescale(scale, x), num_steps=out.step,
                    residual_norm=_rescale(scale, r_norm),
                    converged=jnp.isfinite(r_norm) & (r_norm <= threshold),
                    breakdown=out.breakdown)
