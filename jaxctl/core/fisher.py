"""Fisher matrices from score matrices, clipped inverses and natural gradients.

Notation: `G` is the (T, P) score matrix whose row t is the score
`g_t = d log pi(a_t | s_t) / d theta`; the (empirical) Fisher is
`F = G^T G / T`; the policy gradient is `g = G^T A / T` for advantages `A`;
the natural gradient is `F^+ g` (pseudo-inverse) or `(F + lambda I)^-1 g`.

The pseudo-inverse follows DeWolf's (2018) rule: eigenvalues of `F` at or
below `rtol * max eigenvalue` are treated as exactly zero, which also removes
the tiny negative eigenvalues that rounding produces (they made `g^T F^-1 g`
negative and the square root of the normalized step NaN).

Integer inputs are promoted to float; `rtol` and the dampings may be traced
(checked on the host when concrete).

Methods for `F^+ g`:
- `"eigh"`: dense `eigh` of the (P, P) Fisher; cost O(T P^2 + P^3).
- `"gram"`: `eigh` of the (T, T) Gram matrix `G G^T / T`, whose non-zero
  eigenvalues are those of `F`; cost O(T^2 P + T^3), cheap when T < P.
- `"svd"`: thin SVD of `G` itself. Forming `F` or the Gram matrix squares the
  condition number: in float32 an eigenvalue at 1e-6 of the largest carries a
  ~10% error, while the singular values of `G` carry ~1e-4.
- `"qr"`: Householder QR of the long side (`G^T = Q R` when T < P, `G = Q R`
  otherwise), then the SVD of the small square factor `R`. Orthogonal
  transformations keep the singular values as accurate as `"svd"`'s, and
  the factorisation is cheaper: the accurate choice and the default for
  dense shapes (`benchmarks/curvature.py` measures all four).
- `"chol"`: the damped solve `(F + lambda I)^-1 g` by Cholesky, with
  `lambda > 0` required: when T < P through the T x T system (Woodbury),
  `(g - G^T (T lambda I + G G^T)^-1 G g) / lambda`, otherwise on `F +
  lambda I`; the largest eigenvalue for `rel_damping` comes from 32
  Lanczos steps (`jaxctl.core.lanczos`). No eigendecomposition: the
  cheapest dense route. Its float32 error grows like `eps * lambda_max /
  lambda`, so it is accurate for `lambda >= 1e-3 lambda_max` (e.g.
  `rel_damping=0.01`). It does not clip: an eigenvalue `e <= rtol *
  lambda_max` changes its direction's weight `1 / (e + lambda)` by at most
  `rtol * lambda_max / lambda` relative to the clipped `1 / lambda`.
- `"cg"`: matrix-free conjugate gradient on `v -> G^T (G v) / T`; no clipping,
  early stopping regularises instead.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxctl.core.cg import cg
from jaxctl.core.jacobians import leading_size
from jaxctl.core.lanczos import largest_eigenvalue
from jaxctl.util.checks import (
    PyTree,
    as_float,
    check_choice,
    check_nonnegative,
    concrete_scalar,
    tree_all_finite,
    tree_as_float,
)

HIGHEST = lax.Precision.HIGHEST
METHODS = ("auto", "eigh", "gram", "svd", "qr", "chol", "cg")
# Above this many rows and columns a dense factorisation is not worth it.
DENSE_LIMIT = 4096


def _check_scores(G: jax.Array) -> jax.Array:
    """`G` as a float (T, P) matrix with T, P >= 1."""
    G = as_float("G", G)
    if G.ndim != 2:
        raise ValueError(f"G must be a (T, P) score matrix, got shape {G.shape}")
    if min(G.shape) < 1:
        raise ValueError(f"G must have T >= 1 rows and P >= 1 columns, got shape {G.shape}")
    return G


def _check_vector(name: str, v: jax.Array, P: int) -> jax.Array:
    v = as_float(name, v)
    if v.shape != (P,):
        raise ValueError(f"{name} must have shape ({P},) to match G's P columns, got {v.shape}")
    return v


def fisher_matrix(G: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Empirical Fisher `F = G^T diag(w) G / T` from a (T, P) score matrix.

    Args:
      G: score matrix, shape (T, P), row t = score of sample t.
      weights: optional per-sample weights, shape (T,); uniform (all ones)
        by default.

    Returns:
      The symmetric (P, P) Fisher matrix.

    Example:
      >>> print(fisher_matrix(jnp.array([[1.0, 0.0], [0.0, 2.0]])))
      [[0.5 0. ]
       [0.  2. ]]
    """
    G = _check_scores(G)
    T = G.shape[0]
    if weights is not None:
        weights = as_float("weights", weights)
        if weights.shape != (T,):
            raise ValueError(f"weights must have shape ({T},) to match G's T rows, got {weights.shape}")
        Gw = G * weights[:, None]
    else:
        Gw = G
    F = jnp.matmul(Gw.T, G, precision=HIGHEST) / T
    return 0.5 * (F + F.T)


def _clipped_reciprocal(eigs: jax.Array, rtol: float | jax.Array,
                        damping: float | jax.Array) -> jax.Array:
    """`1 / (e + damping)` for eigenvalues above `rtol * max(e)`, else the value for e = 0."""
    cut = rtol * jnp.maximum(jnp.max(eigs), 0.0)
    keep = eigs > cut
    kept = jnp.where(keep, eigs, 0.0)
    denom = kept + damping
    safe = jnp.where(denom > 0, denom, 1.0)
    return jnp.where(denom > 0, 1.0 / safe, 0.0)


def clipped_inverse(F: jax.Array, rtol: float = 1e-6) -> jax.Array:
    """Eigenvalue-clipped pseudo-inverse of a symmetric PSD matrix.

    `F = V diag(e) V^T` after symmetrising; `F^+ = V diag(c) V^T` with
    `c_i = 1 / e_i` if `e_i > rtol * max(e)` and `c_i = 0` otherwise, so tiny
    negative eigenvalues from rounding are dropped, never inverted.
    A non-finite input gives the zero matrix (a documented safe fallback:
    the natural step built from it is zero).

    Args:
      F: symmetric positive semi-definite matrix, shape (P, P).
      rtol: relative eigenvalue cut-off (DeWolf 2018 used 1e-6).

    Returns:
      The (P, P) clipped pseudo-inverse, symmetric PSD, always finite.

    Example:
      >>> print(clipped_inverse(jnp.diag(jnp.array([2.0, 1e-9]))))
      [[0.5 0. ]
       [0.  0. ]]
    """
    F = as_float("F", F)
    if F.ndim != 2 or F.shape[0] != F.shape[1] or F.shape[0] < 1:
        raise ValueError(f"F must be a square (P, P) matrix with P >= 1, got shape {F.shape}")
    check_nonnegative("rtol", rtol)
    finite = tree_all_finite(F)
    Fs = jnp.where(finite, 0.5 * (F + F.T), 0.0)
    eigs, V = jnp.linalg.eigh(Fs)
    c = _clipped_reciprocal(eigs, rtol, 0.0)
    inv = jnp.matmul(V * c, V.T, precision=HIGHEST)
    return jnp.where(finite, 0.5 * (inv + inv.T), 0.0)


def fisher_vector_product(G: jax.Array, v: jax.Array,
                          damping: float | jax.Array = 0.0) -> jax.Array:
    """`(F + damping I) v = G^T (G v) / T + damping v` without forming `F`.

    Args:
      G: score matrix, shape (T, P).
      v: vector, shape (P,).
      damping: Tikhonov damping added to the Fisher (>= 0).

    Returns:
      The (P,) product; cost O(T P).

    Example:
      >>> print(fisher_vector_product(jnp.eye(2), jnp.array([1.0, 2.0])))
      [0.5 1. ]
    """
    G = _check_scores(G)
    T, P = G.shape
    v = _check_vector("v", v, P)
    check_nonnegative("damping", damping)
    Gv = jnp.matmul(G, v, precision=HIGHEST)
    return jnp.matmul(Gv, G, precision=HIGHEST) / T + damping * v


def fisher_operator(
    log_prob: Callable[..., jax.Array],
    params: PyTree,
    *samples: PyTree,
    damping: float | jax.Array = 0.0,
) -> Callable[[PyTree], PyTree]:
    """Matrix-free Fisher-vector product for a log-probability function.

    With `J` the (T, P) Jacobian of the per-sample log-probabilities
    `l_t(theta) = log_prob(theta, *sample_t)`, returns `v -> J^T (J v) / T +
    damping v` on parameter pytrees: one forward-mode product `J v`
    (`jax.linearize`, computed once and reused) and its transpose. Neither
    `J` nor `F` is ever materialised: memory is O(P + T), so it serves
    networks far too large for a dense Fisher.

    Args:
      log_prob: `log_prob(params, *sample) -> scalar` for ONE sample.
      params: parameter pytree at which the Fisher is taken (integer leaves
        are promoted to float).
      *samples: pytrees of arrays with a shared leading axis T >= 1.
      damping: Tikhonov damping added to the Fisher (>= 0).

    Returns:
      A linear function `v -> (F + damping I) v` mapping params-like pytrees
      to params-like pytrees; pass it to `jaxctl.cg` as the matvec.

    Example:
      >>> fvp = fisher_operator(lambda w, x: x @ w, jnp.zeros(2), jnp.eye(2))
      >>> print(fvp(jnp.array([1.0, 2.0])))
      [0.5 1. ]
    """
    if not samples:
        raise ValueError("fisher_operator needs at least one batched sample argument")
    T = leading_size("samples", samples)
    check_nonnegative("damping", damping)
    params = tree_as_float("params", params)

    def one_log_prob(p, s):
        out = log_prob(p, *s)
        if jnp.shape(out) != ():
            raise ValueError("log_prob must return a scalar log-probability for one sample, "
                             f"got shape {jnp.shape(out)}")
        return out

    def all_log_probs(p):
        return jax.vmap(lambda s: one_log_prob(p, s))(samples)

    _, jvp_fn = jax.linearize(all_log_probs, params)
    vjp_fn = jax.linear_transpose(jvp_fn, params)

    def matvec(v: PyTree) -> PyTree:
        # The tangent must carry the primal dtypes exactly (x64, integer inputs).
        v = jax.tree.map(lambda a, p: jnp.asarray(a, p.dtype), v, params)
        (JtJv,) = vjp_fn(jvp_fn(v) / T)
        return jax.tree.map(lambda a, b: a + damping * b, JtJv, v)

    return matvec


def _eigenbasis_eigh(G):
    eigs, V = jnp.linalg.eigh(fisher_matrix(G))
    return V, eigs


def _eigenbasis_gram(G):
    T = G.shape[0]
    K = jnp.matmul(G, G.T, precision=HIGHEST) / T
    eigs, U = jnp.linalg.eigh(0.5 * (K + K.T))
    # Non-zero eigenpairs of G G^T / T map to unit eigenvectors of F:
    # v_i = G^T u_i / sqrt(T e_i); null directions get a zero column.
    positive = eigs > 0
    scale = jnp.where(positive, 1.0 / jnp.sqrt(T * jnp.where(positive, eigs, 1.0)), 0.0)
    V = jnp.matmul(G.T, U, precision=HIGHEST) * scale
    return V, jnp.where(positive, eigs, 0.0)


def _eigenbasis_svd(G):
    T, P = G.shape
    # LAPACK's divide-and-conquer SVD is faster on the tall orientation.
    if T < P:
        V, s, _ = jnp.linalg.svd(G.T, full_matrices=False)
    else:
        _, s, Vt = jnp.linalg.svd(G, full_matrices=False)
        V = Vt.T
    return V, s * s / T


def _eigenbasis_qr(G):
    T, P = G.shape
    if T < P:
        # G^T = Q R and R = W S X^T give G^T = (Q W) S X^T: V = Q W.
        Q, R = jnp.linalg.qr(G.T)
        W, s, _ = jnp.linalg.svd(R, full_matrices=False)
        V = jnp.matmul(Q, W, precision=HIGHEST)
    else:
        # G = Q R and R = W S V^T give G = (Q W) S V^T: Q is never needed.
        _, s, Vt = jnp.linalg.svd(jnp.linalg.qr(G, mode="r"), full_matrices=False)
        V = Vt.T
    return V, s * s / T


_EIGENBASIS = {"eigh": _eigenbasis_eigh, "gram": _eigenbasis_gram, "svd": _eigenbasis_svd,
               "qr": _eigenbasis_qr}


def _damped_cholesky(G, g, damping, rel_damping, need_top):
    """`(F + lambda I)^-1 g`, `lambda = damping + rel_damping * lambda_max(F)`, by Cholesky."""
    T, P = G.shape
    # The smaller of G G^T / T and F (they share the non-zero spectrum).
    M = jnp.matmul(G, G.T, precision=HIGHEST) / T if T < P else fisher_matrix(G)
    lam = damping
    if need_top:
        lam = lam + rel_damping * largest_eigenvalue(lambda v: jnp.matmul(M, v, precision=HIGHEST),
                                                     M[0])
    L = jnp.linalg.cholesky(M + lam * jnp.eye(M.shape[0], dtype=M.dtype))
    if T < P:
        y = jax.scipy.linalg.cho_solve((L, True), jnp.matmul(G, g, precision=HIGHEST)) / T
        x = (g - jnp.matmul(y, G, precision=HIGHEST)) / lam
    else:
        x = jax.scipy.linalg.cho_solve((L, True), g)
    return jnp.where(lam > 0, x, 0.0)


def solve_in_eigenbasis(V, eigs, g, rtol, damping):
    """`F^+ g` (or damped) from orthonormal eigenvectors `V` (P, k) of F's range.

    Directions orthogonal to `V` have eigenvalue 0: with damping they are
    scaled by `1 / damping`, without it dropped (pseudo-inverse).
    """
    c = _clipped_reciprocal(eigs, rtol, damping)
    coeff = jnp.matmul(g, V, precision=HIGHEST)
    inside = jnp.matmul(V, c * coeff, precision=HIGHEST)
    outside = g - jnp.matmul(V, coeff, precision=HIGHEST)
    safe = jnp.where(damping > 0, damping, 1.0)
    return inside + jnp.where(damping > 0, outside / safe, 0.0)


def natural_gradient(
    G: jax.Array,
    g: jax.Array,
    *,
    rtol: float | jax.Array = 1e-6,
    damping: float | jax.Array = 0.0,
    rel_damping: float | jax.Array = 0.0,
    method: str = "auto",
    maxiter: int = 100,
    tol: float = 1e-6,
) -> jax.Array:
    """Natural gradient `F^+ g`, or `(F + lambda I)^-1 g`, for `F = G^T G / T`.

    Eigenvalues of `F` at or below `rtol * max eigenvalue` count as zero
    (DeWolf's 2018 clipping rule); the damping is
    `lambda = damping + rel_damping * max eigenvalue` (Tikhonov damping
    relative to the largest eigenvalue keeps the step scale-free). With
    `lambda = 0` the clipped pseudo-inverse is applied. Non-finite inputs
    give a zero direction (so the normalized step built on it is zero).

    Args:
      G: score matrix, shape (T, P).
      g: gradient, shape (P,) (typically `G^T A / T`).
      rtol: relative eigenvalue cut-off for the dense methods (>= 0).
      damping: absolute Tikhonov damping (>= 0).
      rel_damping: damping relative to the largest Fisher eigenvalue (>= 0);
        dense methods only (`"cg"` gives a zero direction for a traced
        non-zero value).
      method: `"auto"` (`"qr"` unless both T and P exceed 4096, then
        `"cg"`), `"eigh"`, `"gram"`, `"svd"`, `"qr"`, `"chol"` (damped
        only) or `"cg"`; see the module docstring for costs and float32
        accuracy.
      maxiter, tol: iteration budget and relative tolerance of `"cg"`.

    Returns:
      The (P,) natural-gradient direction.

    Example:
      >>> G = jnp.array([[1.0, 0.0], [0.0, 2.0], [1.0, 2.0]])
      >>> natural_gradient(G, jnp.array([1.0, 1.0]), method="qr").shape
      (2,)

    References:
      Kakade (2001), "A natural policy gradient"; Rajeswaran et al. (2017),
      "Towards generalization and simplicity in continuous control".
    """
    G = _check_scores(G)
    T, P = G.shape
    g = _check_vector("g", g, P)
    check_choice("method", method, METHODS)
    for name, value in (("rtol", rtol), ("damping", damping), ("rel_damping", rel_damping)):
        check_nonnegative(name, value)
    if method == "auto":
        method = "cg" if min(T, P) > DENSE_LIMIT else "qr"
    dtype = jnp.result_type(G, g)
    G = G.astype(dtype)
    g = g.astype(dtype)
    finite = tree_all_finite((G, g))
    G = jnp.where(finite, G, 0.0)
    g = jnp.where(finite, g, 0.0)

    if method == "cg":
        rel = concrete_scalar("rel_damping", rel_damping)
        if rel is not None and rel != 0:
            raise ValueError("rel_damping needs the largest eigenvalue: use a dense method "
                             "('svd', 'gram', 'eigh') or an absolute damping with 'cg'")
        x = cg(lambda v: fisher_vector_product(G, v, damping), g, maxiter=maxiter, tol=tol).x
        finite = finite & (jnp.asarray(rel_damping) == 0)
    elif method == "chol":
        values = [concrete_scalar(n, v) for n, v in (("damping", damping), ("rel_damping", rel_damping))]
        if values == [0.0, 0.0]:
            raise ValueError("method='chol' needs damping > 0 or rel_damping > 0 (it solves "
                             "(F + lambda I) x = g with lambda > 0)")
        x = _damped_cholesky(G, g, jnp.asarray(damping, dtype), jnp.asarray(rel_damping, dtype),
                             need_top=values[1] != 0.0)
    else:
        V, eigs = _EIGENBASIS[method](G)
        lam = damping + rel_damping * jnp.maximum(jnp.max(eigs), 0.0)
        x = solve_in_eigenbasis(V, eigs, g, rtol, jnp.asarray(lam, dtype))
    return jnp.where(finite & tree_all_finite(x), x, 0.0)
