"""Per-sample gradients and their flattening into a score matrix.

For a scalar function of parameters and one sample, `fn(params, *sample)`,
and T samples stacked along a leading axis, the per-sample gradients are
`g_t = d fn(params, *sample_t) / d params`, t = 1..T. Stacked and flattened
they form the score matrix `G` of shape (T, P), the input of every Fisher
computation in `jaxctl.core.fisher`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from jaxctl.util.checks import PyTree, check_positive_int, tree_as_float


def leading_size(name: str, tree: PyTree) -> int:
    """The shared leading sample axis T >= 1 of every array in `tree` (ValueError naming `name` otherwise)."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError(f"{name} must hold at least one array with a leading sample axis")
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in leaves}
    if None in sizes or len(sizes) != 1:
        shapes = [jnp.shape(leaf) for leaf in leaves]
        raise ValueError(
            f"{name}: every array must share one leading sample axis T, got shapes {shapes}"
        )
    T = sizes.pop()
    if T < 1:
        raise ValueError(f"{name} must hold at least one sample (T >= 1), got T = 0")
    return T


def per_sample_grads(
    fn: Callable[..., jax.Array],
    params: PyTree,
    *args: PyTree,
    chunk_size: int | None = None,
) -> PyTree:
    """Gradients of `fn` with respect to `params`, one per sample.

    `g_t = grad_params fn(params, *[a[t] for a in args])`, computed with
    `jax.vmap(jax.grad(fn))` over the leading axis of every array in `args`.
    With `chunk_size`, `lax.map(..., batch_size=chunk_size)` vmaps over
    chunks in sequence, so peak memory is that of `chunk_size` samples
    while the result is the same.

    Args:
      fn: `fn(params, *sample) -> scalar`, written for ONE sample.
      params: parameter pytree (integer leaves are promoted to float).
      *args: pytrees of arrays, each with the same leading axis T.
      chunk_size: optional number of samples per vectorised chunk.

    Returns:
      A pytree like `params` whose leaves have a leading axis T.

    Example:
      >>> log_prob = lambda w, x, y: -0.5 * (x @ w - y) ** 2
      >>> g = per_sample_grads(log_prob, jnp.ones(3), jnp.ones((5, 3)), jnp.zeros(5))
      >>> g.shape
      (5, 3)
    """
    if not args:
        raise ValueError("per_sample_grads needs at least one batched argument after params")
    leading_size("args", args)
    if chunk_size is not None:
        chunk_size = check_positive_int("chunk_size", chunk_size)
    params = tree_as_float("params", params)
    grad_fn = jax.grad(fn)

    def one(sample):
        return grad_fn(params, *sample)

    if chunk_size is None:
        return jax.vmap(one)(args)
    return lax.map(one, args, batch_size=chunk_size)


def ravel_per_sample(grads: PyTree) -> tuple[jax.Array, Callable[[jax.Array], PyTree]]:
    """Flattens per-sample gradients into the score matrix `G` (T, P).

    Row t of `G` is `ravel(g_t)` in `jax.flatten_util.ravel_pytree` order.

    Args:
      grads: pytree whose leaves have a leading axis T (as returned by
        `per_sample_grads`).

    Returns:
      `(G, unravel)`: `G` of shape (T, P), and `unravel` mapping a (P,)
      vector back to a single-sample pytree (e.g. a natural-gradient
      direction back to the parameter structure).

    Example:
      >>> G, unravel = ravel_per_sample({"w": jnp.ones((5, 3)), "b": jnp.ones((5,))})
      >>> G.shape, unravel(G[0])["w"].shape
      ((5, 4), (3,))
    """
    num = leading_size("grads", grads)
    first = jax.tree.map(lambda leaf: leaf[0], grads)
    _, unravel = ravel_pytree(first)
    # Reshape-and-concatenate equals vmap(ravel_pytree) row by row (same leaf
    # order) without a per-row gather.
    leaves = jax.tree.leaves(grads)
    dtype = jnp.result_type(*leaves)
    G = jnp.concatenate([jnp.reshape(leaf, (num, -1)).astype(dtype) for leaf in leaves], axis=1)
    return G, unravel
