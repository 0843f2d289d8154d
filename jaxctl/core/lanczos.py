"""The largest eigenvalue of a symmetric PSD operator by Lanczos with full reorthogonalisation.

`k` steps build an orthonormal basis `Q = [q_1 ... q_k]` of the Krylov space
`span{v, A v, ..., A^(k-1) v}` and the tridiagonal `T_k = Q^T A Q`; the
largest eigenvalue of `T_k` (a Ritz value) approaches `lambda_max(A)` from
below, with an error that falls like `exp(-4 k sqrt(gap))` for a relative
gap `gap` to the next eigenvalue (Saad 2011, Sec. 6.6), far faster than
power iteration's `(lambda_2 / lambda_1)^(2k)`. Every new vector is
orthogonalised against all earlier ones (k is small), so rounding never
produces spurious copies of converged eigenvalues. The start vector is fixed
(no PRNG key), so the result is deterministic.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

HIGHEST = lax.Precision.HIGHEST


def largest_eigenvalue(matvec: Callable[[jax.Array], jax.Array], like: jax.Array,
                       steps: int = 32) -> jax.Array:
    """`lambda_max` of the symmetric PSD linear map `matvec` on vectors shaped like `like` `(n,)`.

    Args:
      matvec: `v -> A v` for a symmetric positive semi-definite `A`, `(n,) -> (n,)`.
      like: a vector fixing `n` and the dtype (its values are not used).
      steps: Krylov dimension `k` (static; capped at n).

    Returns:
      `()` the largest Ritz value of `T_k`; exact (up to rounding) when
      `k = n`; 0 for the zero map.

    Example:
      >>> A = jnp.diag(jnp.array([1.0, 5.0, 2.0]))
      >>> round(float(largest_eigenvalue(lambda v: A @ v, jnp.zeros(3))), 4)
      5.0
    """
    n = like.shape[0]
    k = max(1, min(int(steps), n))
    dtype = like.dtype
    v0 = 1.0 + 0.5 * jnp.sin(jnp.arange(n, dtype=dtype) + 1.0) + jnp.zeros_like(like)
    v0 = v0 / jnp.linalg.norm(v0)
    Q = jnp.zeros((k, n), dtype).at[0].set(v0)
    tiny = jnp.finfo(dtype).tiny

    def body(j, carry):
        Q, alpha, beta = carry
        w = matvec(Q[j])
        a = jnp.dot(Q[j], w, precision=HIGHEST)
        # Orthogonalise against every stored vector (twice: Kahan's "twice is enough");
        # the rows of Q past j are still zero, so all of Q can be used.
        for _ in range(2):
            w = w - jnp.matmul(jnp.matmul(Q, w, precision=HIGHEST), Q, precision=HIGHEST)
        b = jnp.linalg.norm(w)
        nxt = jnp.where(b > tiny, w / jnp.where(b > tiny, b, 1.0), 0.0)
        Q = jnp.where(j + 1 < k, Q.at[jnp.minimum(j + 1, k - 1)].set(nxt), Q)
        return Q, alpha.at[j].set(a), beta.at[j].set(jnp.where(b > tiny, b, 0.0))

    zeros = jnp.zeros(k, dtype) + jnp.zeros_like(like[0])
    _, alpha, beta = lax.fori_loop(0, k, body, (Q, zeros, zeros))
    T = jnp.diag(alpha) + jnp.diag(beta[:-1], 1) + jnp.diag(beta[:-1], -1)
    return jnp.maximum(jnp.linalg.eigvalsh(T)[-1], 0.0)
